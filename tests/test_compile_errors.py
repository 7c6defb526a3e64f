"""Bad input to `cimc compile`, `cimc opt` and `cimc run`: each gives ONE line ``cimc: error: ...`` that
names what, where, expected vs found and the fix, exit status 2, and leaves nothing behind (no output
file or directory, no temporary one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc.cli import main


def _deconv_model(path: Path) -> None:
    """Conv -> ConvTranspose -> Relu: the quantizer makes ConvTranspose a q.conv_transpose, which neither
    the sram-cim arrays (q.conv, q.gemm, q.matmul only) nor its vector unit run."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    wt = numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "wt")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
         helper.make_node("ConvTranspose", ["c", "wt"], ["l"], pads=[1, 1, 1, 1], name="deconv1"),
         helper.make_node("Relu", ["l"], ["y"], name="relu1")], "deconvnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], [w, wt])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A current directory holding the inputs the cases name."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "unknown.toml").write_text('target = "sram-cim"\nmacroz = 4\n')
    (tmp_path / "range.toml").write_text('target = "sram-cim"\nadc_bits = 40\n')
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", input=rng.standard_normal((4, 1, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "empty.npz", input=np.zeros((0, 1, 8, 8), np.float32))
    np.savez(tmp_path / "shape.npz", input=np.zeros((4, 1, 7, 8), np.float32))
    np.savez(tmp_path / "x.npz", x=rng.standard_normal((4, 1, 8, 8)).astype(np.float32))
    _deconv_model(tmp_path / "deconv.onnx")
    assert main(["import", "zoo:mlp", "-o", "mlp.cimir"]) == 0
    text = (tmp_path / "mlp.cimir").read_text()
    (tmp_path / "syntax.cimir").write_text(text.replace("= Gemm(%view", "= Gemm((%view"))
    (tmp_path / "unknown_op.cimir").write_text(text.replace("= Relu(", "= Relux("))
    for stem in ("syntax", "unknown_op"):
        (tmp_path / f"{stem}.npz").write_bytes((tmp_path / "mlp.npz").read_bytes())
    return tmp_path


OPT = ["opt", "zoo:mlp", "-o", "out.cimir", "--calibration", "calib.npz", "-p"]
FRONT = "fold-constants,fuse-batchnorm,quantize"
CASES = {
    "spec-unknown-field": (["compile", "zoo:mlp", "--spec", "unknown.toml"],
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
    "unsupported-op": (["compile", "deconv.onnx", "-t", "sram-cim", "--calibration", "x.npz"],
                       ["target 'sram-cim' cannot run op q.conv_transpose (node 'deconv1')", "q.conv, q.gemm, q.matmul",
                        "Softmax", "sram.*", "compile for a target that runs it (npu)"]),
    "program-syntax": (["run", "syntax.cimir", "--random", "-o", "out.npz"],
                       ["syntax.cimir:10:33:", "expected ')'"]),
    "program-unknown-op": (["run", "unknown_op.cimir", "--random", "-o", "out.npz"],
                           ["unknown_op.cimir:11:26:", "unknown op 'Relux'", "did you mean 'Relu'"]),
    "weight-bits": ([*OPT, "quantize{weight-bits=9}"], ["weight-bits", "is 9; expected 2..8"]),
    "empty-calibration": (["opt", "zoo:mlp", "-o", "out.cimir", "--calibration", "empty.npz", "-p", "quantize"],
                          ["calibration input 'input' is empty", "give at least one sample"]),
    "calibration-shape": (["opt", "zoo:mlp", "-o", "out.cimir", "--calibration", "shape.npz", "-p", "quantize"],
                          ["shape [4, 1, 7, 8]", "[batch,1,8,8] was expected"]),
    "sparsity-ratio-1": ([*OPT, "sparsify{ratio=1.0}"], ["ratio=1.0 must be in [0, 1)"]),
    "sparsity-ratio-negative": ([*OPT, "sparsify{ratio=-0.1}"], ["ratio=-0.1 must be in [0, 1)"]),
    "quantize-override-no-node": ([*OPT, 'quantize{overrides="nosuch:weight-bits=4"}'],
                                  ["'nosuch' is neither a node name nor an op type", "Gemm"]),
    "sparsify-per-layer-no-node": ([*OPT, 'sparsify{per-layer="nosuch=0.3"}', "--target", "sram-cim"],
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
    "opt-lowering-without-target": ([*OPT, "quantize,tile,lower-sram-cim"],
                                    ["pass 'tile' needs a target and none is given", "--target NAME"]),
    "opt-lowering-alone-without-target": ([*OPT, "lower-sram-cim"],
                                          ["pass 'lower-sram-cim' needs a target and none is given"]),
    "opt-lowering-for-another-target": ([*OPT, "lower-npu", "--target", "sram-cim"],
                                        ["pass 'lower-npu' lowers for target 'npu', but the target is 'sram-cim'"]),
    "opt-spec-without-target": ([*OPT, "quantize", "--spec-set", "adc_bits=5"],
                                ["--spec and --spec-set describe a target's hardware", "--target NAME"]),
    "sparsify-without-target": ([*OPT, "sparsify"], ["pass 'sparsify' needs a target to align its blocks to"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(work: Path, capsys: pytest.CaptureFixture[str],
                                                         case: str) -> None:
    argv, expected = CASES[case]
    before = sorted(p.name for p in work.iterdir())
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cimc: error: ") and err.count("\n") == 1, err
    assert "internal error" not in err and "Traceback" not in err, err
    for part in expected:
        assert part in err, (part, err)
    assert sorted(p.name for p in work.iterdir()) == before  # no output, no temporary file or directory


def test_existing_output_dir_is_refused_unless_force(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = work / "out.cimc"
    out.mkdir()
    (out / "mine").write_text("keep")
    before = sorted(p.name for p in work.iterdir())
    assert main(["compile", "zoo:mlp", "-o", "out.cimc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out.cimc already exists" in err and "--force" in err, err
    assert sorted(p.name for p in work.iterdir()) == before and (out / "mine").read_text() == "keep"
    assert main(["compile", "zoo:mlp", "-o", "out.cimc", "--force"]) == 2  # not a cimc output: kept
    err = capsys.readouterr().err
    assert "out.cimc is not a cimc output directory (it has no .cimc-output file)" in err, err
    assert sorted(p.name for p in work.iterdir()) == before and (out / "mine").read_text() == "keep"
    (out / "mine").unlink()
    assert main(["compile", "zoo:mlp", "-o", "out.cimc"]) == 2
    assert main(["compile", "zoo:mlp", "-o", "out.cimc", "--force"]) == 0  # an empty directory: nothing to lose
    (out / "report.txt").write_text("edited")
    assert main(["compile", "zoo:mlp", "-o", "out.cimc", "--force"]) == 0  # an earlier cimc output
    assert (out / "report.txt").read_text() != "edited" and (out / "timings.json").is_file()
    assert sorted(p.name for p in work.iterdir()) == before


def test_compiled_program_runs_from_its_file(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`cimc run` knows the targets' instructions, so a compiled program.cimir runs as it is."""
    for target in ("sram-cim", "npu"):
        assert main(["compile", "zoo:mlp", "-t", target, "-o", f"{target}.cimc"]) == 0
        assert main(["run", f"{target}.cimc/program.cimir", "--random", "-o", f"{target}.npz"]) == 0
    with np.load("sram-cim.npz") as a, np.load("npu.npz") as b:
        assert a["logits"].shape == (1, 10) and b["logits"].shape == (1, 10)


def test_allow_reload_false_compiles_a_model_that_fits(work: Path) -> None:
    from cimc.driver import compile as compile_model

    for target, spec in (("sram-cim", {"allow_reload": False}), ("npu", {"allow_reload": False})):
        c = compile_model("zoo:mlp", target, spec=spec)
        loads = [n for n in c.program.nodes if n.attrs.get("cim.bytes")]
        keys = [n.inputs[0].name for n in loads]
        assert len(keys) == len(set(keys))  # every weight image is loaded once
