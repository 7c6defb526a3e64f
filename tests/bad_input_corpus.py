"""The bad-input corpus: every way a user can hand cimc bad input that we know of, as a table of cases
(command line, a fragment the one error line must hold), the files they read, and a runner.

:func:`make_files` writes the inputs into a folder; :func:`run_cases` runs each case in-process with
``cimc.cli.main`` in that folder, capturing file descriptors 1 and 2 (so C-level writes, such as
onnxruntime's log, are caught too), and reports per case: exit status, what reached standard error,
seconds, and the files that appeared or changed. ``python bad_input_corpus.py DIR`` runs the whole
corpus in a fresh process and prints the report as JSON, with the process's peak memory.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N = "batch"  # the zoo models' symbolic batch dim

# ---- the cases: id -> (argv, fragment of the one error line, or fragments it must all hold) --------------
OPT = ["opt", "zoo:mlp", "-o", "out.cimir", "-p"]
CASES: dict[str, tuple[list[str], str | list[str]]] = {
    # silently wrong before: now an error
    "calibration-nan": ([*OPT, "quantize", "--calibration", "nan.npz"], "calibration input 'input' holds"),
    "calibration-inf": (["compile", "zoo:mlp", "--calibration", "inf.npz", "-o", "out"], "non-finite value(s)"),
    "cimir-wrong-dtype": (["run", "wrong_dtype.cimir", "--random"], "element type differs"),
    "cimir-wrong-shape": (["run", "wrong_shape.cimir", "--random"], "a dim differs"),
    "cimir-requant-multiplier": (["run", "bad_multiplier.cimir", "--random"], "is not the fixed-point form"),
    "cimir-unknown-attribute": (["run", "unknown_attr.cimir", "--random"], "has unknown attribute 'bogus'"),
    "cimir-instruction-attr-range": (["run", "npu_bytes.cimir", "--random"], "attribute 'bytes' is -64, out of range"),
    "cimir-array-adc-bits-0": (["run", "sram_adc0.cimir", "--random"],
                               "attribute 'adc_bits' is 0, out of range; expected an integer in 1..24"),
    "cimir-attr-beyond-64-bits": (["run", "sram_significance.cimir", "--random"],
                                  "99999999999999999999 does not fit 64 bits"),
    "cimir-tile-field-beyond-64-bits": (["run", "sram_tile_channels.cimir", "--random"],
                                        "tile 0: 99999999999999999999 does not fit 64 bits"),
    "cimir-tile-rows-huge-range": (["run", "sram_tile_rows.cimir", "--random"],
                                   "tile 0: field row_at lists more than 1048576 entries"),
    "cimir-load-mvm-array-shape": (["run", "sram_spares.cimir", "--random"],
                                   "as 128 x 128 physical rows x columns, but its load wrote it as 383 x 128"),
    "cimir-npu-conv-window": (["run", "npu_dilation.cimir", "--random"],
                              "does not fit input dim 4 padded by (0, 0)"),
    "cimir-quant-no-scale": (["run", "no_scale.cimir", "--random"],
                             "%x (graph input): its quantization has no scale (one, or one per channel)"),
    "cimir-empty-tensor-huge-dim": (["run", "huge_empty.cimir", "--random"],
                                    "constant %c: shape [0, 9223372036854775807] cannot be an array"),
    "cimir-racetrack-sweep-states": (["run", "rt_states.cimir", "--random"],
                                     "a sweep of 2147483647 states 1 domains apart does not stay on tracks of 64"),
    "cimir-racetrack-shift-faults-huge": (["run", "rt_distance.cimir", "--random"],
                                          ["the shift faults of an instruction: shape [1, 2147483648,",
                                           "limit on one tensor"]),
    "cimir-tile-map-group": (["run", "tile_map_group.cimir", "--random"],
                             "attribute 'tile.map': node 'q_conv' (q.conv): group = 2 does not divide the weight's "
                             "3 output channels"),
    "cimir-npu-dma-out-positions": (["run", "npu_dma_positions.cimir", "--random"],
                                    "needs p_ranges and positions = 4, has positions = 44"),
    "cimir-quant-scale-negative": (["run", "scale_negative.cimir", "--random"],
                                   ["%relu_q (node 'relu_requant' (q.requant)): its quantization scale -0.0",
                                    "is not a positive finite number"]),
    "cimir-instruction-attr-choice": (["run", "npu_buffer.cimir", "--random"],
                                      "attribute 'buffer' is 'cache'; expected one of 'weight', 'act'"),
    "cimir-attr-kind": (["run", "attr_kind.cimir", "--random"], "attribute 'axis' is 1.5; expected an integer"),
    "cimir-instruction-tile-width": (["run", "npu_dma_out.cimir", "--random"],
                                     "tile 0 i32[batch,10] does not fill channels 0..12 of 12"),
    "onnx-string-attribute-not-utf8": (["run", "latin1_attr.onnx", "--random"],
                                       "attribute 'auto_pad': the string b'\\xe9' is not UTF-8"),
    "onnx-op-type-not-utf8": (["run", "latin1_op.onnx", "--random"],
                              "model.graph.node[0].op_type is not UTF-8 text (b'Re\\xefu'"),
    "second-quantize": ([*OPT, "quantize,quantize{weight-bits=4}"], "already quantized"),
    "sparsify-after-quantize": ([*OPT, "quantize,sparsify{ratio=0.5}", "-t", "npu"], "put sparsify before quantize"),
    "compile-empty-output": (["compile", "zoo:mlp", "-o", ""], "the output path is empty"),
    "opt-empty-output": ([*OPT[:2], "-o", "", "-p", "fold-constants"], "the output path is empty"),
    "run-empty-output": (["run", "zoo:mlp", "--random", "-o", ""], "the output path is empty"),
    "import-empty-output": (["import", "zoo:mlp", "-o", ""], "the output path is empty"),
    "verify-zero-samples": (["compile", "zoo:mlp", "--verify", "--inputs", "empty.npz", "-o", "out"],
                            "input 'input' has no samples"),
    "onnx-gemm-f32-f64": (["run", "gemm_f64.onnx", "--random"], "operand 1 has element type f64 but operand 0 has f32"),
    "onnx-expand-int32-shape": (["run", "expand_i32.onnx", "--random"],
                                "operand 1 (shape, 's') is tensor(int32), which Expand does not take"),
    "onnx-output-declared-type": (["run", "out_type.onnx", "--random"],
                                  "graph output 'y' declares element type double, but the graph computes f32"),
    # data loss before: now an error, nothing touched
    "force-non-cimc-directory": (["compile", "zoo:mlp", "-o", "my_src", "--force"],
                                 "my_src is not a cimc output directory"),
    "force-a-file": (["compile", "zoo:mlp", "-o", "notes.txt", "--force"], "is a file, not a cimc output"),
    "existing-output": (["compile", "zoo:mlp", "-o", "my_src"], "my_src already exists"),
    "output-is-a-directory": (["run", "zoo:mlp", "--random", "-o", "my_src"], "is a directory; give a file name"),
    "output-dir-missing": (["import", "zoo:mlp", "-o", "no/such/m.cimir"], "directory no/such does not exist"),
    "output-parent-is-a-file": (["compile", "zoo:mlp", "-o", "notes.txt/out"], "notes.txt is not a directory"),
    # internal errors before: now a message
    "npz-truncated": (["run", "zoo:mlp", "--inputs", "trunc.npz"], "not an .npz archive of arrays"),
    "npz-bad-crc": (["run", "zoo:mlp", "--inputs", "crc.npz"], "array 'input': corrupt or truncated (Bad CRC-32"),
    "npz-huge-shape": (["run", "zoo:mlp", "--inputs", "huge.npz"], "needs 256.0 TiB, over the"),
    "npz-negative-shape": (["run", "zoo:mlp", "--inputs", "negative.npz"], "has a negative dim"),
    "npz-pickle": (["run", "zoo:mlp", "--inputs", "pickle.npz"], "holds Python objects (a pickle)"),
    "npz-not-zip": (["run", "zoo:mlp", "--inputs", "text.npz"], "not an .npz archive of arrays"),
    "npz-single-npy": (["run", "zoo:mlp", "--inputs", "single.npy"], "a single .npy array, not an .npz"),
    "calibration-0d": ([*OPT, "quantize", "--calibration", "zerod.npz"], "calibration input 'input' is empty"),
    "calibration-empty": ([*OPT, "quantize", "--calibration", "empty.npz"], "calibration input 'input' is empty"),
    "calibration-f64": ([*OPT, "quantize", "--calibration", "f64.npz"], "element type f64 where f32 was expected"),
    "calibration-extra": ([*OPT, "quantize", "--calibration", "extra.npz"], "unknown ['other']"),
    "inputs-f64": (["run", "zoo:mlp", "--inputs", "f64.npz"], "element type f64 where f32 was expected"),
    "sidecar-empty": (["run", "side_empty.cimir", "--random"], "sidecar side_empty.npz: not an .npz archive"),
    "sidecar-truncated": (["run", "side_trunc.cimir", "--random"], "sidecar side_trunc.npz: not an .npz archive"),
    "sidecar-not-zip": (["run", "side_text.cimir", "--random"], "sidecar side_text.npz: not an .npz archive"),
    "sidecar-missing-array": (["run", "side_missing.cimir", "--random"], "is missing (not among the resources)"),
    "cimir-not-utf8": (["run", "latin1.cimir", "--random"], "latin1.cimir:2:8: not UTF-8 text: byte e9"),
    "spec-not-utf8": (["compile", "zoo:mlp", "--spec", "latin1.toml", "-o", "out"],
                      "latin1.toml:2:6: not UTF-8 text: byte e9"),
    "cimir-deep-nesting": (["run", "deep.cimir", "--random"], "nests too deeply"),
    "cimir-conv-strides-0": (["run", "conv_strides.cimir", "--random"], "attribute 'strides' is (0, 0), out of range"),
    "onnx-conv-strides-0": (["run", "conv_strides.onnx", "--random"], "attribute 'strides' is (0, 0), out of range"),
    "onnx-conv-pads-negative": (["run", "conv_pads.onnx", "--random"], "attribute 'pads' is (-1, -1, -1, -1)"),
    "onnx-conv-group-0": (["run", "conv_group.onnx", "--random"], "attribute 'group' is 0, out of range"),
    "onnx-negative-dim": (["run", "negative_dim.onnx", "--random"], "declares shape [-2, 3] with a negative dim"),
    "cimir-negative-dim": (["run", "negative_dim.cimir", "--random"], "dim -64 is negative"),
    "batch-negative": (["run", "zoo:mlp", "--random", "--batch", "-1"], "argument --batch: -1 is not allowed"),
    "batch-not-an-integer": (["run", "zoo:mlp", "--random", "--batch", "1e7"], "argument --batch: '1e7' is not an"),
    "batch-zero": (["run", "zoo:mlp", "--random", "--batch", "0"], "argument --batch: 0 is not allowed"),
    "seed-negative": (["run", "zoo:mlp", "--random", "--seed", "-1"], "argument --seed: -1 is negative"),
    "onnx-no-outputs": (["run", "no_outputs.onnx", "--random"], "the graph has no outputs"),
    "cimir-no-outputs": (["run", "no_outputs.cimir", "--random"], "has no outputs: running it would compute nothing"),
    "onnx-no-nodes-no-outputs": (["import", "empty.onnx"], "the graph has no outputs"),
    # memory: refused before allocating
    "batch-huge": (["run", "zoo:mlp", "--random", "--batch", "10000000"], "random input 'input': shape [10000000"),
    "constant-of-shape-4g": (["run", "cos4g.onnx", "--random"], "needs 4.0 GiB, over the"),
    "npz-bomb": (["--max-tensor-size", "64M", "run", "zoo:mlp", "--inputs", "bomb.npz"],
                 "inflate to 100.0 MiB in all, over the 64.0 MiB size limit"),
    "dim-2-to-40": (["run", "dim40.onnx", "--random"], "random input 'x': shape [1099511627776] needs"),
    "dim-2-to-40-inputs": (["run", "dim40.cimir", "--inputs", "small_x.npz"],
                           "result %y of node 'cos' (ConstantOfShape): shape [1099511627776] needs 4.0 TiB"),
    "max-tensor-size-bad": (["--max-tensor-size", "lots", "run", "zoo:mlp", "--random"],
                            "size 'lots' should be a positive number"),
    # security: external data stays in the model's folder
    "external-data-symlink": (["run", "ext/link.onnx", "--random"], "goes through the symbolic link"),
    "external-data-absolute": (["run", "ext/abs.onnx", "--random"], "is an absolute path"),
    "external-data-dotdot": (["run", "ext/up.onnx", "--random"], "leaves the model's folder"),
    "external-data-beyond-file": (["run", "ext/long.onnx", "--random"], "are not within the file"),
    # messages
    "weights-non-finite": (["compile", "nan_weight.onnx", "-o", "out"], "weight of node 'gemm' (Gemm) holds"),
    "model-is-a-directory": (["run", "dir.onnx", "--random"], "dir.onnx: is a directory, not a file"),
    "model-is-a-fifo": (["run", "fifo.onnx", "--random"], "fifo.onnx: is a FIFO, not a regular file"),
    "cimir-is-a-fifo": (["run", "fifo.cimir", "--random"], "fifo.cimir: is a FIFO, not a regular file"),
    "cimir-is-a-directory": (["run", "dir.cimir", "--random"], "dir.cimir: is a directory, not a file"),
    "cimir-missing": (["run", "missing.cimir", "--random"], "missing.cimir: no such file"),
    "long-pass-name": ([*OPT, "x" * 100_000], "... (100000 characters)"),
    "long-option-name": ([*OPT, "quantize{" + "y" * 100_000 + "=1}"], "... (100000 characters)"),
    "long-zoo-name": (["run", "zoo:" + "z" * 100_000, "--random"], "... (100002 characters) (known models:"),
    "long-spec-key": (["compile", "zoo:mlp", "--spec-set", "k" * 100_000 + "=3", "-o", "out"],
                      "has no parameter 'kkkk"),
    "spec-name-with-equals-missing": (["compile", "zoo:mlp", "--spec", "adc_bits=3", "-o", "out"],
                                      "the sram-cim spec file adc_bits=3: no such file"),
    "plugin-exits": (["--plugin", "exits.py", "passes"], "--plugin exits.py: loading it failed: it called exit(3)"),
    "plugin-base-exception": (["--plugin", "base.py", "passes"], "loading it failed: PluginBaseError: boom"),
    "plugin-raises": (["--plugin", "raises.py", "passes"], "loading it failed: ValueError: bad plugin"),
    "plugin-missing": (["--plugin", "nope.py", "passes"], "--plugin nope.py: no such file"),
    "plugin-pass-exits": (["--plugin", "pass_exits.py", *OPT, "exit-test"], "pass 'exit-test' failed"),
    # what already worked, kept working
    "onnx-random-bytes": (["run", "random.onnx", "--random"], "not an ONNX model"),
    "onnx-truncated": (["run", "truncated.onnx", "--random"], "truncated.onnx"),
    "onnx-unsupported-op": (["run", "unsupported.onnx", "--random"], "RandomNormalLike"),
    "onnx-opset-too-old": (["run", "opset6.onnx", "--random"], "the model uses opset 6"),
    "onnx-custom-domain": (["run", "custom.onnx", "--random"], "domain 'com.example'"),
    "onnx-undefined-input": (["run", "undefined.onnx", "--random"], "input 'nope' of node"),
    "onnx-output-not-produced": (["run", "unproduced.onnx", "--random"], "Graph output 'z' is not an output of any"),
    "onnx-external-missing-file": (["run", "ext/gone.onnx", "--random"], "does not exist in the model's folder"),
    "cimir-gemm-f32-f64": (["run", "gemm_f64.cimir", "--random"], "operand 1 has element type f64 but operand 0"),
    "cimir-empty-file": (["run", "blank.cimir", "--random"], "blank.cimir:1:1: expected 'graph'"),
    "cimir-duplicate-value": (["run", "dup.cimir", "--random"], "value %y is defined twice"),
    "cimir-bad-hex": (["run", "hex.cimir", "--random"], "hex data has 2 bytes, f32[2] needs 8"),
    "cimir-int-overflow": (["run", "overflow.cimir", "--random"], "element 0 is '99999999999', not a i8 number"),
    "opt-unknown-output-type": ([*OPT[:2], "-o", "out.bin", "-p", "fold-constants"], "unknown output type '.bin'"),
    "compile-output-dot": (["compile", "zoo:mlp", "-o", "."], "names no file or directory to write"),
    "plugin-syntax-error": (["--plugin", "syntax_error.py", "passes"], "loading it failed: SyntaxError"),
    "run-labels-without-inputs": (["run", "zoo:mlp", "--random", "--labels", "labels.npy"],
                                  "--labels goes with --inputs"),
    "compile-verify-inputs-missing-name": (["compile", "zoo:mlp", "--verify", "--inputs", "wrong_name.npz", "-o",
                                            "out"], "no arrays for inputs ['input']"),
    "opt-calibration-pickle": ([*OPT, "quantize", "--calibration", "pickle.npz"], "never loads pickles"),
    "quantize-needs-calibration": (["opt", "mlp.cimir", "-o", "out.cimir", "-p", "quantize"],
                                   "quantize needs a calibration set"),
    "opt-lowering-without-target": (["opt", "zoo:mlp", "-o", "out.cimir", "-p", "tile"], "needs a target"),
    "unknown-command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "onnx-missing": (["run", "missing.onnx", "--random"], "missing.onnx: no such file"),
    "unknown-suffix": (["run", "model.txt", "--random"], "unknown file type '.txt'"),
    "pipeline-syntax": ([*OPT, "quantize{"], "syntax error"),
    "pipeline-unknown-pass": ([*OPT, "fold-constant"], "did you mean 'fold-constants'"),
    "pipeline-unknown-option": ([*OPT, "quantize{weight-bitz=4}"], "did you mean 'weight-bits'"),
    "pipeline-bad-value": ([*OPT, "quantize{weight-bits=9}"], "expected 2..8"),
    "spec-toml-syntax": (["compile", "zoo:mlp", "--spec", "syntax.toml", "-o", "out"], "invalid TOML"),
    "spec-unknown-field": (["compile", "zoo:mlp", "--spec", "unknown.toml", "-o", "out"], "did you mean 'macros'"),
    "spec-set-range": (["compile", "zoo:mlp", "--spec-set", "adc_bits=40", "-o", "out"], "adc_bits = 40 is out of"),
    "unknown-target": (["compile", "zoo:mlp", "-t", "nup", "-o", "out"], "did you mean 'npu'"),
    "unknown-zoo-model": (["run", "zoo:mlpx", "--random"], "did you mean 'mlp'"),
    "inputs-missing-name": (["run", "zoo:mlp", "--inputs", "wrong_name.npz"], "missing 'input'"),
    "inputs-wrong-shape": (["run", "zoo:mlp", "--inputs", "badshape.npz"], "shape [4, 1, 8, 7]"),
    "cimir-syntax": (["run", "syntax.cimir", "--random"], "expected ')', 'none' or a value (%name) but found '('"),
    "cimir-unknown-op": (["run", "unknown_op.cimir", "--random"], "unknown op 'Relux'; did you mean 'Relu'"),
    "cimir-undefined-value": (["run", "undefined.cimir", "--random"], "%nope is not defined"),
    "unsupported-on-target": (["compile", "deconv.onnx", "-t", "sram-cim", "--calibration", "x.npz",
                               "-p", "fold-constants,quantize", "-o", "out"],
                              "cannot run q.conv_transpose 'deconv1' on its arrays: add 'legalize-convs'"),
    "labels-without-verify": (["compile", "zoo:mlp", "--labels", "labels.npy", "-o", "out"], "verify"),
}

# the cases of the target helpers and the pass options (one error per limit a spec or pass declares)
OPT_CAL = ["opt", "zoo:mlp", "-o", "out.cimir", "--calibration", "calib.npz", "-p"]
FRONT = "fold-constants,fuse-batchnorm,quantize"
TARGET_CASES: dict[str, tuple[list[str], str | list[str]]] = {
    "spec-unknown-field-in-file": (["compile", "zoo:mlp", "--spec", "unknown.toml"],
                           ["unknown.toml", "no parameter 'macroz'", "did you mean 'macros'"]),
    "spec-out-of-range": (["compile", "zoo:mlp", "--spec", "range.toml"],
                          ["range.toml", "adc_bits = 40 is out of range", "expected an integer in 1..16"]),
    "sram-too-large": (["compile", "zoo:mlp", "--spec-set", "macros=2", "--spec-set", "allow_reload=false"],
                       ["allow_reload = false", "37888 cells in 5 tiles", "2 macros (32768 cells",
                        "--spec-set allow_reload=true", "macros=5"]),
    "npu-too-large": (["compile", "zoo:mlp", "-t", "npu", "--spec-set", "weight_buffer_bytes=4096",
                       "--spec-set", "allow_reload=false"],
                      ["allow_reload = false", "4736 weight bytes", "holds 4096 bytes",
                       "--spec-set allow_reload=true", "weight_buffer_bytes=4736"]),
    "unsupported-op": (["compile", "matmulint.onnx", "-t", "sram-cim", "-p", "fold-constants"],
                       ["target 'sram-cim' cannot run op MatMulInteger (node 'mmi'): an integer matmul that a "
                        "pre-quantized model leaves", "q.conv, q.gemm, q.matmul", "`cimc ops --target sram-cim` lists",
                        "sram.*", "compile for a target that runs it (npu)"]),
    "program-syntax": (["run", "syntax.cimir", "--random", "-o", "out.npz"],
                       ["syntax.cimir:10:33:", "expected ')'"]),
    "program-unknown-op": (["run", "unknown_op.cimir", "--random", "-o", "out.npz"],
                           ["unknown_op.cimir:11:26:", "unknown op 'Relux'", "did you mean 'Relu'"]),
    "weight-bits": ([*OPT_CAL, "quantize{weight-bits=9}"], ["weight-bits", "is 9; expected 2..8"]),
    "empty-calibration": (["opt", "zoo:mlp", "-o", "out.cimir", "--calibration", "empty.npz", "-p", "quantize"],
                          ["calibration input 'input' is empty", "give at least one sample"]),
    "calibration-shape": (["opt", "zoo:mlp", "-o", "out.cimir", "--calibration", "shape.npz", "-p", "quantize"],
                          ["shape [4, 1, 7, 8]", "[batch,1,8,8] was expected"]),
    "sparsity-ratio-1": ([*OPT_CAL, "sparsify{ratio=1.0}"], ["ratio=1.0 must be in [0, 1)"]),
    "sparsity-ratio-negative": ([*OPT_CAL, "sparsify{ratio=-0.1}"], ["ratio=-0.1 must be in [0, 1)"]),
    "quantize-override-no-node": ([*OPT_CAL, 'quantize{overrides="nosuch:weight-bits=4"}'],
                                  ["'nosuch' is neither a node name nor an op type", "Gemm"]),
    "sparsify-per-layer-no-node": ([*OPT_CAL, 'sparsify{per-layer="nosuch=0.3"}', "--target", "sram-cim"],
                                   ["'nosuch' names no prunable node", "node_linear"]),
    "tile-cell-bits-beyond-the-target": (["compile", "zoo:mlp", "-p", f"{FRONT},tile{{cell-bits=9}}"],
                                         ["pass 'tile': option cell-bits=9 is out of range: expected 1..1",
                                          "the target 'sram-cim' has cell_bits = 1"]),
    "lowering-adc-bits-0": (["compile", "zoo:mlp", "-p", f"{FRONT},tile,lower-sram-cim{{adc-bits=0}}"],
                            ["pass 'lower-sram-cim': option adc-bits=0 is out of range: expected 1..7",
                             "the target's ADCs have adc_bits = 7"]),
    "pipeline-without-tile": (["compile", "zoo:mlp", "-p", FRONT],
                              ["pass 'lower-sram-cim' failed after [fold-constants, fuse-batchnorm, quantize]",
                               "q.gemm 'node_linear' has no tile map", "run 'tile' before 'lower-sram-cim'"]),
    "opt-lowering-without-target": ([*OPT_CAL, "quantize,tile,lower-sram-cim"],
                                    ["pass 'tile' needs a target and none is given", "--target NAME"]),
    "opt-lowering-alone-without-target": ([*OPT_CAL, "lower-sram-cim"],
                                          ["pass 'lower-sram-cim' needs a target and none is given"]),
    "opt-lowering-for-another-target": ([*OPT_CAL, "lower-npu", "--target", "sram-cim"],
                                        ["pass 'lower-npu' lowers for target 'npu', but the target is 'sram-cim'"]),
    "opt-spec-without-target": ([*OPT_CAL, "quantize", "--spec-set", "adc_bits=5"],
                                ["--spec and --spec-set describe a target's hardware", "--target NAME"]),
    "sparsify-without-target": ([*OPT_CAL, "sparsify"], ["pass 'sparsify' needs a target to align its blocks to"]),
}
CASES.update(TARGET_CASES)

SUCCESS: dict[str, tuple[list[str], list[str]]] = {
    # id -> (argv, the files it may write): exit 0 and nothing at all on standard error
    "onnxruntime-says-nothing": (["run", "unused_init.onnx", "--random", "--compare-onnxruntime"], []),
    "inputs-big-endian": (["run", "zoo:mlp", "--inputs", "be.npz"], []),
    "calibration-big-endian": ([*OPT[:2], "-o", "be.cimir", "-p", "quantize", "--calibration", "be.npz"],
                               ["be.cimir", "be.npz"]),
    "graph-without-nodes": (["run", "identity.onnx", "--random"], []),
    "spec-file-name-with-equals": (["compile", "zoo:mlp", "--spec", "a=b.toml", "-o", "eq.cimc"], ["eq.cimc"]),
    "force-replaces-a-cimc-output": (["compile", "zoo:mlp", "-o", "npu.cimc", "-t", "npu", "--force"], ["npu.cimc"]),
}


# ---- the files the cases read ----------------------------------------------------------------------------

def _save(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString())


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[onnx.TensorProto] = (), opset: int = 17) -> onnx.ModelProto:  # type: ignore[assignment]
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name: str, dims: list | None, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def _conv_model(**attrs: object) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)], [_vi("x", [1, 1, 6, 6])],
                  [_vi("y", [1, 2, None, None])], [w])


def _external(folder: Path, name: str, location: str, length: int | None = None) -> None:
    """A model whose weight 'w' (2x2 float) lives in external data at ``location``."""
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(16 if length is None else length))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [_vi("x", [1, 2])], [_vi("y", [1, 2])],
               [w])
    _save(m, folder / name)


def make_files(d: Path) -> None:
    """Write every input the cases read into the folder ``d``."""
    from cimc.cli import main
    from cimc.zoo import calibration_set

    rng = np.random.default_rng(0)
    x = calibration_set()[:4].copy()
    np.savez(d / "nan.npz", input=np.where(x > 0.3, np.nan, x))
    np.savez(d / "inf.npz", input=np.where(x > 0.3, np.inf, x))
    np.savez(d / "zerod.npz", input=np.float32(1.0))
    np.savez(d / "empty.npz", input=np.zeros((0, 1, 8, 8), np.float32))
    np.savez(d / "f64.npz", input=x.astype(np.float64))
    np.savez(d / "extra.npz", input=x, other=x)
    np.savez(d / "be.npz", input=x.astype(">f4"))
    (d / "a=b.toml").write_text('target = "sram-cim"\nadc_bits = 6\n')
    np.savez(d / "wrong_name.npz", image=x)
    np.savez(d / "badshape.npz", input=np.zeros((4, 1, 8, 7), np.float32))
    np.save(d / "single.npy", x)
    np.save(d / "labels.npy", np.zeros(4, np.int64))
    ok = d / "ok.npz"
    np.savez(ok, input=x)
    data = ok.read_bytes()
    (d / "trunc.npz").write_bytes(data[: len(data) // 2])
    i = data.index(b"\x93NUMPY") + 300
    (d / "crc.npz").write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    ok.unlink()
    for name, shape in (("huge", "(1099511627776, 1, 8, 8)"), ("negative", "(-4, 1, 8, 8)")):
        header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".encode()
        with zipfile.ZipFile(d / f"{name}.npz", "w") as z:
            z.writestr("input.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
    with zipfile.ZipFile(d / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:  # 100 MiB of zeros in ~100 KiB
        header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (409600, 1, 8, 8), }"
        with z.open("input.npy", "w") as f:
            f.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
            for _ in range(100):
                f.write(bytes(1 << 20))
    np.savez(d / "pickle.npz", input=np.array([{"a": 1}], dtype=object))
    (d / "text.npz").write_text("hello")
    (d / "latin1.cimir").write_bytes(b"graph @main(%x: f32[2]) {\n  # caf\xe9\n  return %x\n}\n")
    (d / "latin1.toml").write_bytes(b'target = "sram-cim"\n# caf\xe9\n')
    (d / "syntax.toml").write_text("adc_bits = = 3\n")
    (d / "unknown.toml").write_text('target = "sram-cim"\nmacroz = 4\n')
    (d / "range.toml").write_text('target = "sram-cim"\nadc_bits = 40\n')
    np.savez(d / "calib.npz", input=x)
    np.savez(d / "shape.npz", input=np.zeros((4, 1, 7, 8), np.float32))
    (d / "model.txt").write_text("x")
    (d / "notes.txt").write_text("keep me")
    (d / "my_src").mkdir()
    (d / "my_src" / "main.c").write_text("int main(void) { return 0; }\n")
    (d / "dir.onnx").mkdir()
    os.mkfifo(d / "fifo.onnx")
    os.mkfifo(d / "fifo.cimir")
    (d / "dir.cimir").mkdir()

    # .cimir files: the zoo MLP as text, its compiled npu and sram-cim programs, and edits of them
    with open(os.devnull, "w") as null, _redirect(null.fileno(), 1):
        assert main(["import", "zoo:mlp", "-o", str(d / "mlp.cimir")]) == 0
        assert main(["compile", "zoo:mlp", "-t", "npu", "-o", str(d / "npu.cimc")]) == 0
        assert main(["compile", "zoo:mlp", "-t", "sram-cim", "-o", str(d / "sram.cimc")]) == 0
        assert main(["compile", "zoo:mlp", "-t", "racetrack", "--spec-set", "shift_fault_rate=0.001", "-o",
                     str(d / "rt.cimc")]) == 0
    sources = {name: ((d / f"{stem}.cimir").read_text(), d / f"{stem}.npz") for name, stem in (
        ("mlp", "mlp"), ("prog", "npu.cimc/program"), ("quant", "npu.cimc/quantized"), ("sram", "sram.cimc/program"),
        ("rt", "rt.cimc/program"))}
    edits = {  # stem -> (source, old, new)
        "wrong_dtype": ("mlp", "%view: f32[batch,64] = Reshape", "%view: f64[batch,64] = Reshape"),
        "wrong_shape": ("mlp", "%view: f32[batch,64] = Reshape", "%view: f32[batch,65] = Reshape"),
        "negative_dim": ("mlp", "%view: f32[batch,64] = Reshape", "%view: f32[batch,-64] = Reshape"),
        "unknown_attr": ("mlp", "{allowzero = 1", "{bogus = 1, allowzero = 1"),
        "unknown_op": ("mlp", "= Relu(", "= Relux("),
        "undefined": ("mlp", "= Relu(%", "= Relu(%nope, %"),
        "syntax": ("mlp", "= Gemm(%view", "= Gemm((%view"),
        "bad_multiplier": ("quant", "multiplier = [11", "multiplier = [10"),
        "scale_negative": ("quant", "%relu_q: u8[batch,64]<q scale=[", "%relu_q: u8[batch,64]<q scale=[-"),
        "npu_bytes": ("prog", "bytes = 64,", "bytes = -64,"),
        "npu_buffer": ("prog", 'buffer = "act"', 'buffer = "cache"'),
        "npu_dma_out": ("prog", "n_ranges = [0, 10], positions = 0, channels = 10",
                        "n_ranges = [0, 12], positions = 0, channels = 12"),
        "sram_adc0": ("sram", "adc_bits = 7", "adc_bits = 0"),
        "sram_significance": ("sram", "significance = [1, 2,", "significance = [1, 99999999999999999999,"),
        "sram_tile_channels": ("sram", "channels=0:16 slices", "channels=0:99999999999999999999 slices"),
        "sram_tile_rows": ("sram", "channels=0:16 slices=0:8 array=0 replica=0}",
                           "channels=0:16 slices=0:8 array=0 replica=0 row_at=[0:9999999999999]}"),
        "sram_spares": ("sram", "spares=[0, 0]>", "spares=[255, 0]>"),  # the first load's map, not its MVM's
        "rt_states": ("rt", "start = 0, states = 3,", "start = 0, states = 2147483647,"),
        "rt_distance": ("rt", "distance = -2,", "distance = -2147483647,"),
    }
    for stem, (source, old, new) in edits.items():
        text, side = sources[source]
        (d / f"{stem}.cimir").write_text(_replace(text, old, new))
        (d / f"{stem}.npz").write_bytes(side.read_bytes())
    (d / "attr_kind.cimir").write_text(
        "graph @main(%x: f32[2,3]) {\n  %y: f32[2,3] = Softmax(%x) {axis = 1.5}\n  return %y\n}\n")
    (d / "npu_dilation.cimir").write_text(
        "graph @main(%x: u8[1,1,4,4]) {\n  %w: i8[9,1] = const shape [9,1] [" + ", ".join(["1"] * 9) + "]\n"
        "  %y: i32[1,4,1] = npu.gemm(%x, %w) {k_range = [0, 9], n_range = [0, 1], positions = [0, 4], "
        "kernel_shape = [3, 3], dilations = [1, 2147483647], out_spatial = [2, 2]}\n  return %y\n}\n")
    (d / "no_scale.cimir").write_text("graph @main(%x: u8[2]<q scale=[] zero_point=[0] bits=8>) {\n  return %x\n}\n")
    (d / "huge_empty.cimir").write_text("graph @main() {\n  %c: i64[0,9223372036854775807] = const []\n"
                                        "  return %c\n}\n")
    (d / "tile_map_group.cimir").write_text(
        "graph @main(%x: u8[1,2,4,4]<q scale=[0.1] zero_point=[0] bits=8>) {\n"
        "  %w: i8[3,2,3,3]<q scale=[0.01] zero_point=[0] bits=8> = const shape [3,2,3,3] [" + ", ".join(["1"] * 54)
        + "]\n  %y: i32[1,3,2,2]<q scale=[0.001] zero_point=[0] bits=32> = q.conv(%x, %w) {group = 2, "
        "x_zero_point = 0, "
        '"tile.map" = tiles<"c" matrix=[1, 18, 3] slices=8 arrays=16 shape=[128, 128] spares=[0, 0]> '
        "[{group=0 rows=0:18 channels=0:3 slices=0:8 array=0 replica=0}]}\n  return %y\n}\n")
    (d / "npu_dma_positions.cimir").write_text(
        "graph @main(%t: i32[1,4,2]) {\n  %y: i32[1,2,2,2] = npu.dma_out(%t) {p_ranges = [0, 4], n_ranges = [0, 2], "
        "positions = 44, channels = 2, spatial = [2, 2]}\n  return %y\n}\n")
    (d / "no_outputs.cimir").write_text("graph @main(%x: f32[2,3]) {\n  %y: f32[2,3] = Relu(%x)\n  return\n}\n")
    (d / "gemm_f64.cimir").write_text("graph @main(%x: f32[2,3]) {\n  %b: f64[3,4] = const shape [3,4] ["
                                      + ", ".join(["1.0"] * 12) + "]\n  %y: f32[2,4] = Gemm(%x, %b)\n  return %y\n}\n")
    (d / "blank.cimir").write_text("")
    (d / "dup.cimir").write_text("graph @main(%x: f32[2]) {\n  %y: f32[2] = Relu(%x)\n  %y: f32[2] = Relu(%x)\n"
                                 "  return %y\n}\n")
    (d / "hex.cimir").write_text('graph @main() {\n  %c: f32[2] = const hex "0000"\n  return %c\n}\n')
    (d / "overflow.cimir").write_text("graph @main() {\n  %c: i8[1] = const [99999999999]\n  return %c\n}\n")
    (d / "dim40.cimir").write_text("graph @main(%x: f32[2]) {\n  %s: i64[1] = const [1099511627776]\n"
                                   "  %y: f32[?] = ConstantOfShape(%s) loc(\"cos\")\n  return %y\n}\n")
    np.savez(d / "small_x.npz", x=np.zeros(2, np.float32))
    (d / "deep.cimir").write_text("graph @main(%x: f32[2]) {\n  %y: f32[2] = Relu(%x) {a = " + "[" * 100_000
                                  + "]" * 100_000 + "}\n  return %y\n}\n")
    (d / "conv_strides.cimir").write_text(
        "graph @main(%x: f32[1,1,6,6]) {\n  %w: f32[2,1,3,3] = const shape [2,1,3,3] [" + ", ".join(["1.0"] * 18)
        + "]\n  %y: f32[1,2,?,?] = Conv(%x, %w) {strides = [0, 0]}\n  return %y\n}\n")
    for stem, sidecar in (("side_empty", b""), ("side_trunc", (d / "mlp.npz").read_bytes()[:500]),
                          ("side_text", b"not a zip"), ("side_missing", None)):
        (d / f"{stem}.cimir").write_text(sources["mlp"][0])
        if sidecar is None:
            np.savez(d / f"{stem}.npz", other=np.zeros(1))
        else:
            (d / f"{stem}.npz").write_bytes(sidecar)

    # ONNX models
    x23, y = _vi("x", [2, 3]), _vi("y", [2, 4])
    _save(_model([helper.make_node("Gemm", ["x", "b"], ["y"], name="gemm")], [x23], [y],
                 [numpy_helper.from_array(np.zeros((3, 4)), "b")]), d / "gemm_f64.onnx")
    _save(_model([helper.make_node("Expand", ["x", "s"], ["y"])], [x23], [_vi("y", [2, 3])],
                 [numpy_helper.from_array(np.array([2, 3], np.int32), "s")]), d / "expand_i32.onnx")
    _save(_model([helper.make_node("Relu", ["x"], ["y"])], [x23], [_vi("y", [2, 3], TensorProto.DOUBLE)]),
          d / "out_type.onnx")
    _save(_model([helper.make_node("Gemm", ["x", "b"], ["y"], name="gemm")], [x23], [y],
                 [numpy_helper.from_array(np.where(rng.random((3, 4)) > 0.5, np.nan, 1.0).astype(np.float32), "b")]),
          d / "nan_weight.onnx")
    _save(_conv_model(strides=[0, 0]), d / "conv_strides.onnx")
    _save(_conv_model(pads=[-1, -1, -1, -1]), d / "conv_pads.onnx")
    _save(_conv_model(group=0), d / "conv_group.onnx")
    _save(_conv_model(auto_pad=b"\xe9"), d / "latin1_attr.onnx")
    (d / "latin1_op.onnx").write_bytes(_model([helper.make_node("Relu", ["x"], ["y"], name="n")], [x23],
                                              [_vi("y", [2, 3])]).SerializeToString().replace(b"Relu", b"Re\xefu"))
    _save(_model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [-2, 3])], [_vi("y", [None, 3])]),
          d / "negative_dim.onnx")
    _save(_model([helper.make_node("Relu", ["x"], ["y"])], [x23], []), d / "no_outputs.onnx")
    _save(_model([], [x23], []), d / "empty.onnx")
    _save(_model([], [x23], [x23]), d / "identity.onnx")
    _save(_model([helper.make_node("Relu", ["x"], ["y"])], [x23], [_vi("y", [2, 3])],
                 [numpy_helper.from_array(np.ones(3, np.float32), "unused")]), d / "unused_init.onnx")
    shape = numpy_helper.from_array(np.array([1 << 30], np.int64), "s")
    _save(_model([helper.make_node("ConstantOfShape", ["s"], ["y"])], [x23], [_vi("y", [1 << 30])], [shape]),
          d / "cos4g.onnx")
    _save(_model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [1 << 40])], [_vi("y", [1 << 40])]),
          d / "dim40.onnx")
    _save(_model([helper.make_node("RandomNormalLike", ["x"], ["y"])], [x23], [_vi("y", [2, 3])]),
          d / "unsupported.onnx")
    _save(_model([helper.make_node("Relu", ["x"], ["y"])], [x23], [_vi("y", [2, 3])], opset=6), d / "opset6.onnx")
    custom = _model([helper.make_node("Frob", ["x"], ["y"], domain="com.example")], [x23], [_vi("y", [2, 3])])
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    _save(custom, d / "custom.onnx")
    _save(_model([helper.make_node("Add", ["x", "nope"], ["y"])], [x23], [_vi("y", [2, 3])]), d / "undefined.onnx")
    _save(_model([helper.make_node("Relu", ["x"], ["y"])], [x23], [_vi("z", [2, 3])]), d / "unproduced.onnx")
    (d / "random.onnx").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    good = _model([helper.make_node("Relu", ["x"], ["y"])], [x23], [_vi("y", [2, 3])]).SerializeToString()
    (d / "truncated.onnx").write_bytes(good[: len(good) // 2])
    ext = d / "ext"
    ext.mkdir()
    secret = d / "secret.bin"
    secret.write_bytes(b"S3CRET!!" * 2)
    (ext / "w.bin").symlink_to(secret)
    (ext / "short.bin").write_bytes(bytes(16))
    _external(ext, "link.onnx", "w.bin")
    _external(ext, "abs.onnx", str(secret))
    _external(ext, "up.onnx", "../secret.bin")
    _external(ext, "long.onnx", "short.bin", length=4096)
    _external(ext, "gone.onnx", "gone.bin")
    rng2 = np.random.default_rng(1)
    w = numpy_helper.from_array(rng2.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    wt = numpy_helper.from_array(rng2.standard_normal((4, 4, 3, 3)).astype(np.float32), "wt")
    _save(_model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
                  helper.make_node("ConvTranspose", ["c", "wt"], ["y"], pads=[1, 1, 1, 1], name="deconv1")],
                 [_vi("x", ["N", 1, 8, 8])], [_vi("y", ["N", 4, 8, 8])], [w, wt], opset=18), d / "deconv.onnx")
    np.savez(d / "x.npz", x=rng2.standard_normal((4, 1, 8, 8)).astype(np.float32))
    wi = numpy_helper.from_array(rng2.integers(0, 255, (4, 3)).astype(np.uint8), "wi")
    _save(_model([helper.make_node("MatMulInteger", ["x", "wi"], ["y"], name="mmi")],
                 [_vi("x", ["N", 4], TensorProto.UINT8)], [_vi("y", ["N", 3], TensorProto.INT32)], [wi]),
          d / "matmulint.onnx")

    # plugins
    (d / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (d / "base.py").write_text("class PluginBaseError(BaseException):\n    pass\n\nraise PluginBaseError('boom')\n")
    (d / "raises.py").write_text("raise ValueError('bad plugin')\n")
    (d / "syntax_error.py").write_text("def broken(:\n")
    (d / "pass_exits.py").write_text(
        "import sys\nfrom dataclasses import dataclass\nfrom typing import ClassVar\n"
        "from cimc.passes import register_pass\nfrom cimc.passmanager import Pass\n\n\n"
        "@register_pass\n@dataclass(frozen=True)\nclass ExitTestPass(Pass):\n    name: ClassVar[str] = 'exit-test'\n\n"
        "    def run(self, graph, ctx):\n        sys.exit(4)\n")


# ---- running them ----------------------------------------------------------------------------------------

class _redirect:
    """Point file descriptor ``target`` at ``fd`` for the block (C-level writes included)."""

    def __init__(self, fd: int, target: int) -> None:
        self.fd, self.target = fd, target

    def __enter__(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = os.dup(self.target)
        os.dup2(self.fd, self.target)

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved, self.target)
        os.close(self.saved)


def _listing(d: Path) -> dict[str, float]:
    out = {}
    for root, dirs, files in os.walk(d):
        for name in dirs + files:
            p = Path(root) / name
            out[str(p.relative_to(d))] = p.lstat().st_mtime
    return out


def run_cases(d: Path, cases: dict[str, tuple[list[str], Any]]) -> dict[str, dict]:
    """Run each case in the folder ``d`` (made by :func:`make_files`); the report by case id."""
    from cimc.cli import main

    report: dict[str, dict] = {}
    old = os.getcwd()
    os.chdir(d)
    try:
        for case, (argv, _) in cases.items():
            before = _listing(d)
            with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
                start = time.perf_counter()
                with _redirect(err.fileno(), 2), _redirect(out.fileno(), 1):
                    try:
                        code = main(argv)
                    except SystemExit as e:  # argparse's exit
                        code = e.code if isinstance(e.code, int) else 2
                seconds = time.perf_counter() - start
                err.seek(0)
                stderr = err.read().decode("utf-8", "replace")
            after = _listing(d)
            changed = sorted(k for k in after if before.get(k) != after[k]) + sorted(set(before) - set(after))
            report[case] = {"code": code, "stderr": stderr, "seconds": seconds, "changed": changed}
    finally:
        os.chdir(old)
    return report


def peak_memory_bytes() -> int:
    """The peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    make_files(folder)
    result = run_cases(folder, CASES)
    success = run_cases(folder, SUCCESS)
    json.dump({"cases": result, "success": success, "peak_memory_bytes": peak_memory_bytes()}, sys.stdout)
