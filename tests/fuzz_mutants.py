"""Mutation fuzzing of what users hand cimc: printed ``.cimir`` programs and serialized ONNX models.

A mutant is a seed (a real program or model) with one to three random edits, drawn by hypothesis
(so a failure shrinks to a small one). :func:`run_cli` runs ``cimc run MUTANT --random`` in-process
and classifies the outcome; :func:`check` asserts the contract every mutant must keep:

- exit status 0 (it ran) or 2 (refused), never anything else;
- a refusal is exactly one line ``cimc: error: ...``, not an internal error, no traceback, and not an
  out-of-memory (mutants run under a small tensor size limit, :data:`LIMIT`: what would allocate more
  must be refused by it; a long run by hand goes under ``ulimit -v`` so that such a mutant is a
  ``MemoryError`` there, not the machine's out-of-memory killer);
- a mutant that ran is one the verifier accepts (checked independently of the run).

:data:`COUNTS` tallies outcomes (ran, refused, and the failures, which must stay 0) across a run;
``CIMC_FUZZ_REPORT=path`` makes the fuzz tests write them there as JSON; ``CIMC_FUZZ_FAILURES=folder``
keeps failing mutants there instead of failing (for a long run by hand).
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from hypothesis import strategies as st

from cimc.cli import main

COUNTS: Counter[str] = Counter()

LIMIT = ["--max-tensor-size", "64M"]
"""Mutants run under a small tensor limit: a mutant asking for gigabytes is refused quickly."""

# ---- running one mutant ---------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``cimc ARGV`` in-process: (exit status, what it wrote to standard error)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 2
    return code, err.getvalue()


FAILURES = os.environ.get("CIMC_FUZZ_FAILURES")
"""For a long run by hand: a folder where each failing mutant is kept (its files and ``failures.jsonl``)
instead of failing the test, so that one run finds them all; :data:`COUNTS` counts them."""


def check(kind: str, argv: list[str], verified: Any, detail: Any = lambda: "") -> None:
    """Run a mutant and assert the contract (see the module docstring); ``verified()`` raises if the
    verifier rejects the mutant (called only when it ran); ``detail()`` says how the mutant differs from
    its seed, for the message of a failure."""
    try:
        _check(kind, argv, verified)
    except AssertionError as e:
        message = f"{e}\n--- the mutant, against its seed:\n{detail()}"
        if not FAILURES:
            raise AssertionError(message) from None
        _keep(kind, argv, message)


def _keep(kind: str, argv: list[str], message: str) -> None:
    """Keep a failing mutant in :data:`FAILURES`: its files as ``N.NAME`` and a line of ``failures.jsonl``."""
    folder = Path(str(FAILURES))
    folder.mkdir(parents=True, exist_ok=True)
    COUNTS[f"{kind} failures"] += 1
    n = COUNTS[f"{kind} failures"]
    kept = []
    for arg in argv:
        path = Path(arg)
        for p in (path, path.with_suffix(".npz")) if path.suffix in (".cimir", ".onnx") else ():
            if p.is_file():
                shutil.copyfile(p, folder / f"{kind}{n}.{p.name}")
                kept.append(f"{kind}{n}.{p.name}")
    with open(folder / "failures.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": kind, "files": kept, "message": message}) + "\n")


def diff(seed: str, mutant: str) -> str:
    """The changed lines of ``mutant`` against ``seed`` (each cut to 300 characters)."""
    lines = difflib.unified_diff(seed.splitlines(), mutant.splitlines(), lineterm="", n=0)
    return "\n".join(line[:300] for line in list(lines)[2:40])


def onnx_text(data: bytes) -> str:
    """A model's text form (onnx.printer), or a note that its bytes do not parse."""
    try:
        return onnx.printer.to_text(onnx.ModelProto.FromString(data))
    except Exception as e:
        return f"(does not parse: {type(e).__name__})"


def _check(kind: str, argv: list[str], verified: Any) -> None:
    code, err = run_cli(argv)
    COUNTS[f"{kind} mutants"] += 1
    if code == 0:
        COUNTS[f"{kind} ran"] += 1
        assert "Traceback" not in err, err
        try:
            verified()
        except Exception as e:
            COUNTS[f"{kind} ran but the verifier rejects"] += 1
            raise AssertionError(f"the mutant ran, but the verifier rejects it: {e}") from e
        return
    COUNTS[f"{kind} refused"] += 1
    if "internal error" in err:
        COUNTS[f"{kind} internal errors"] += 1
    if "Traceback" in err:
        COUNTS[f"{kind} tracebacks"] += 1
    if "out of memory" in err:
        COUNTS[f"{kind} out of memory"] += 1
    assert code == 2, (code, err)
    assert err.startswith("cimc: error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert "internal error" not in err and "Traceback" not in err, err
    assert "out of memory" not in err, f"the size limit {LIMIT[1]} let the mutant run out of memory: {err}"


# ---- .cimir mutations -----------------------------------------------------------------------------------

_TOKEN = re.compile(r'%"[^"\n]*"|%[\w.]+|-?\d+\.\d*(?:[eE][-+]?\d+)?|-?\d+|[A-Za-z_][\w.]*|"[^"\n]*"|[\[\]{}(),:<>=*?]')
_NUMBERS = ["0", "1", "-1", "2", "7", "8", "9", "16", "255", "256", "-129", "2147483647", "2147483648",
            "-2147483649", "9223372036854775807", "99999999999999999999", "0.0", "-0.0", "0.5", "1e-45", "1e38",
            "3.5e38", "1e308", "nan", "inf", "-inf"]
_DTYPES = ["f16", "bf16", "f32", "f64", "i4", "u4", "i8", "u8", "i16", "i32", "i64", "u16", "u32", "u64", "bool",
           "str", "f8"]
_OPS = ["Relu", "Add", "Gemm", "MatMul", "Conv", "Reshape", "Concat", "Softmax", "Identity", "Transpose", "Gather",
        "Slice", "ConstantOfShape", "Expand", "Tile", "Range", "Cast", "MaxPool", "q.requant", "q.quantize",
        "q.dequantize", "q.gemm", "q.add", "npu.gemm", "npu.dma_in", "npu.dma_out", "sram.mvm", "sram.load",
        "vec.im2col", "Nope"]
_SNIPPETS = ["[", "]", "{", "}", "(", ")", ",", "%x", "none", "= const", "tensor<f32[2]: [1.0, 2.0]>",
             '"é"', "[[[[1]]]]", "[*]", "[?]", "<q scale=[0.5] zero_point=[0] bits=8>", 'loc("n")', "hex \"00\"",
             "resource \"nope\"", "\n", "# c\n", "\udcff"]


@st.composite
def cimir_mutant(draw: st.DrawFn, text: str) -> str:
    """``text`` with one to three random edits of its tokens or lines."""
    for _ in range(draw(st.integers(1, 3))):
        text = draw(_one_edit(text))
    return text


@st.composite
def _one_edit(draw: st.DrawFn, text: str) -> str:
    tokens = list(_TOKEN.finditer(text))
    lines = text.split("\n")
    kind = draw(st.sampled_from(["number", "number", "dtype", "op", "value", "token", "token", "line", "dim",
                                 "snippet", "attr"]))
    if kind in ("line",) or not tokens:
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["delete", "duplicate", "swap"]))
        if how == "delete":
            del lines[i]
        elif how == "duplicate":
            lines.insert(j, lines[i])
        else:
            lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    pick = {
        "number": [t for t in tokens if t.group()[0].isdigit() or t.group()[:2].lstrip("-")[:1].isdigit()],
        "dtype": [t for t in tokens if t.group() in _DTYPES],
        "op": [t for t in tokens if t.group() in _OPS or ("." in t.group() and not t.group().startswith("%"))],
        "value": [t for t in tokens if t.group().startswith("%")],
        "dim": [t for t in tokens if t.group() in ("batch", "?")],
        "attr": [t for t in tokens if t.group() == "{"],
    }.get(kind, tokens) or tokens
    t = draw(st.sampled_from(pick))
    if kind == "number":
        new = draw(st.sampled_from(_NUMBERS))
    elif kind == "dtype":
        new = draw(st.sampled_from(_DTYPES))
    elif kind == "op":
        new = draw(st.sampled_from(_OPS))
    elif kind == "value":
        new = draw(st.sampled_from([v.group() for v in pick] + ["%nope"]))
    elif kind == "dim":
        new = draw(st.sampled_from(["0", "1", "-1", "65", "?", "4294967296", "batch", "other"]))
    elif kind == "attr":
        key = draw(st.sampled_from(["axis", "bits", "adc_bits", "rows_per_op", "strides", "pads", "group", "scale",
                                    "multiplier", "zero_point", "channels", "bogus", "tiles", "layout"]))
        value = draw(st.sampled_from([*_NUMBERS, "[]", "[0, 0]", "[-1, 5]", '"x"', "[1.5]", "[[1], [2]]"]))
        new = "{" + f"{key} = {value}, "
    elif kind == "snippet":
        new = t.group() + draw(st.sampled_from(_SNIPPETS))
    else:
        new = draw(st.sampled_from(["", t.group() * 2, "x", "0"]))
    return text[:t.start()] + new + text[t.end():]


# ---- ONNX mutations -------------------------------------------------------------------------------------

_INTS = [0, 1, -1, 2, 3, 7, 64, -2**31, 2**31 - 1, 2**40, -2**62]
_FLOATS = [0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf")]
_ONNX_OPS = ["Relu", "Add", "Mul", "Gemm", "MatMul", "Conv", "Reshape", "Flatten", "Concat", "Softmax", "Identity",
             "Transpose", "Gather", "Slice", "Cast", "MaxPool", "AveragePool", "BatchNormalization", "Expand",
             "ConstantOfShape", "Tile", "Range", "Pad", "Split", "Squeeze", "Unsqueeze", "Resize", "LSTM", "Einsum",
             "TopK", "OneHot", "NonZero", "Where", "ReduceSum", "Clip", "Sqrt", "NoSuchOp"]
_ATTR_NAMES = ["axis", "axes", "perm", "strides", "pads", "kernel_shape", "dilations", "group", "transA", "transB",
               "alpha", "beta", "to", "keepdims", "epsilon", "mode", "allowzero", "bogus"]


@st.composite
def onnx_mutant(draw: st.DrawFn, data: bytes) -> bytes:
    """The serialized model ``data`` with one to three random edits of its protobuf (or its bytes)."""
    model = onnx.ModelProto.FromString(data)
    raw = False
    for _ in range(draw(st.integers(1, 3))):
        raw = _edit_model(draw, model) or raw
    out = model.SerializeToString()
    if raw:  # byte-level damage on top
        out = bytearray(out)
        for _ in range(draw(st.integers(1, 4))):
            how = draw(st.sampled_from(["flip", "cut", "insert"]))
            i = draw(st.integers(0, max(len(out) - 1, 0)))
            if how == "flip" and out:
                out[i] ^= 1 << draw(st.integers(0, 7))
            elif how == "cut":
                del out[i:i + draw(st.integers(1, 64))]
            else:
                out[i:i] = bytes(draw(st.lists(st.integers(0, 255), min_size=1, max_size=8)))
        out = bytes(out)
    return out


def _edit_model(draw: st.DrawFn, model: onnx.ModelProto) -> bool:
    """One edit of ``model`` in place; ``True`` to damage the serialized bytes instead."""
    g = model.graph
    kind = draw(st.sampled_from(["attr", "attr", "attr", "op", "input", "drop_node", "dup_node", "elem_type", "dims",
                                 "opset", "init_data", "init_dims", "output", "add_attr", "bytes"]))
    nodes = list(g.node)
    if kind == "bytes":
        return True
    if kind == "attr" and any(n.attribute for n in nodes):
        node = draw(st.sampled_from([n for n in nodes if n.attribute]))
        a = draw(st.sampled_from(list(node.attribute)))
        if a.type == onnx.AttributeProto.INT:
            a.i = draw(st.sampled_from(_INTS))
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = draw(st.sampled_from(_FLOATS))
        elif a.type == onnx.AttributeProto.INTS:
            del a.ints[:]
            a.ints.extend(draw(st.lists(st.sampled_from(_INTS), max_size=5)))
        elif a.type == onnx.AttributeProto.STRING:
            a.s = draw(st.sampled_from([b"", b"SAME", b"bogus", b"\xff\xfe", b"linear", b"constant"]))
        elif a.type == onnx.AttributeProto.TENSOR:
            a.t.dims[:] = draw(st.lists(st.sampled_from([0, 1, 2, -1, 3]), max_size=3))
        return False
    if kind == "add_attr" and nodes:
        node = draw(st.sampled_from(nodes))
        name = draw(st.sampled_from(_ATTR_NAMES))
        value = draw(st.one_of(st.sampled_from(_INTS), st.lists(st.sampled_from(_INTS), min_size=1, max_size=4),
                               st.sampled_from(_FLOATS), st.sampled_from(["x", "NOTSET", "DCR"])))
        del node.attribute[:]  # one new attribute, none of the old
        node.attribute.append(onnx.helper.make_attribute(name, value))
        return False
    if kind == "op" and nodes:
        draw(st.sampled_from(nodes)).op_type = draw(st.sampled_from(_ONNX_OPS))
        return False
    names = [i.name for i in g.input] + [t.name for t in g.initializer] + [o for n in nodes for o in n.output]
    if kind == "input" and nodes and names:
        node = draw(st.sampled_from(nodes))
        if node.input:
            i = draw(st.integers(0, len(node.input) - 1))
            node.input[i] = draw(st.sampled_from([*names, "", "nope"]))
        else:
            node.input.append(draw(st.sampled_from(names)))
        return False
    if kind == "drop_node" and nodes:
        g.node.remove(draw(st.sampled_from(nodes)))
        return False
    if kind == "dup_node" and nodes:
        g.node.append(draw(st.sampled_from(nodes)))
        return False
    values = [*g.input, *g.output, *g.value_info]
    if kind == "elem_type" and values:
        vi = draw(st.sampled_from(values))
        vi.type.tensor_type.elem_type = draw(st.integers(0, 26))
        return False
    if kind == "dims" and values:
        vi = draw(st.sampled_from(values))
        dims = vi.type.tensor_type.shape.dim
        if dims:
            d = draw(st.sampled_from(list(dims)))
            choice = draw(st.sampled_from([0, 1, -3, 65, 1 << 40, "N", None]))
            if choice is None:
                d.Clear()
            elif isinstance(choice, str):
                d.dim_param = choice
            else:
                d.dim_value = choice
        return False
    if kind == "opset":
        model.opset_import[0].version = draw(st.sampled_from([1, 6, 7, 9, 11, 13, 17, 21, 27, 99]))
        return False
    inits = list(g.initializer)
    if kind == "init_data" and inits:
        t = draw(st.sampled_from(inits))
        if t.raw_data:
            cut = draw(st.integers(0, len(t.raw_data)))
            t.raw_data = t.raw_data[:cut] + bytes(draw(st.lists(st.integers(0, 255), max_size=8)))
        t.data_type = draw(st.sampled_from([t.data_type, 0, 1, 2, 7, 11, 14, 17, 22, 30]))
        return False
    if kind == "init_dims" and inits:
        t = draw(st.sampled_from(inits))
        t.dims[:] = draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, -1, 64, 1 << 33]), max_size=4))
        return False
    if kind == "output" and g.output:
        g.output[0].name = draw(st.sampled_from([*names, "nope", ""]))
        return False
    return False


# ---- seeds ----------------------------------------------------------------------------------------------

def _model(nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    from onnx import helper, numpy_helper

    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def convs_model() -> onnx.ModelProto:
    """A small convolution net of the kinds legalize-convs and the targets' lowerings rewrite: a 2-D
    convolution, a grouped one with a residual add, a transposed convolution (strided, output padding), an
    average pool, and a 1-D convolution (the npu's arrays window 2-D inputs only)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(1)

    def w(*shape: int) -> np.ndarray:
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)

    n = helper.make_node
    return _model(
        [n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv"), n("Relu", ["c1"], ["r1"], name="relu"),
         n("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=2, name="dwconv"),
         n("Add", ["c2", "r1"], ["a"], name="residual"),
         n("ConvTranspose", ["a", "wt", "bt"], ["up"], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1],
           name="up"),
         n("Relu", ["up"], ["ur"], name="relu2"),
         n("AveragePool", ["ur"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
         n("Reshape", ["p", "s3"], ["rows"], name="rows"),
         n("Conv", ["rows", "w3", "b3"], ["c3"], pads=[1, 1], name="conv1d"),
         n("Flatten", ["c3"], ["y"], axis=1, name="flat")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 48])],
        {"w1": w(2, 2, 3, 3), "b1": w(2), "w2": w(2, 1, 3, 3), "b2": w(2), "wt": w(2, 3, 3, 3), "bt": w(3),
         "s3": np.array([0, 3, 16], np.int64), "w3": w(3, 3, 3), "b3": w(3)})


def attention_model() -> onnx.ModelProto:
    """A small attention block: projections, scores and their weighted sum (matmuls of two activations), a
    softmax, a sigmoid gate multiplied in, a residual add and an erf (lookup tables)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(2)

    def w(*shape: int) -> np.ndarray:
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)

    n = helper.make_node
    return _model(
        [n("MatMul", ["x", "wq"], ["q"], name="q"), n("MatMul", ["x", "wk"], ["k"], name="k"),
         n("MatMul", ["x", "wv"], ["v"], name="v"), n("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="kt"),
         n("MatMul", ["q", "kt"], ["s"], name="scores"), n("Softmax", ["s"], ["a"], axis=-1, name="softmax"),
         n("MatMul", ["a", "v"], ["o"], name="mix"), n("Sigmoid", ["v"], ["g"], name="gate"),
         n("Mul", ["o", "g"], ["m"], name="gated"), n("Add", ["m", "x"], ["r"], name="residual"),
         n("Erf", ["r"], ["e"], name="erf"), n("MatMul", ["e", "wo"], ["y"], name="out")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 3])],
        {"wq": w(6, 6), "wk": w(6, 6), "wv": w(6, 6), "wo": w(6, 3)})


def ort_quantized(model: onnx.ModelProto, fmt: str) -> onnx.ModelProto:
    """``model`` quantized by onnxruntime's ``quantize_static`` (``fmt`` QDQ or QOperator) on 16 seeded random
    inputs: the pre-quantized models cimc adopts (QLinearConv, QLinearAveragePool, ...)."""
    import logging
    import tempfile

    from onnxruntime import quantization as q

    shape = [1 if isinstance(d, str) or not d else d
             for d in (x.dim_param or x.dim_value for x in model.graph.input[0].type.tensor_type.shape.dim)]
    rng = np.random.default_rng(3)
    batches = iter([{model.graph.input[0].name: rng.standard_normal(shape).astype(np.float32)} for _ in range(16)])

    class Reader(q.CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's advice on pre-processing
    try:
        with tempfile.TemporaryDirectory() as tmp:
            onnx.save(model, f"{tmp}/m.onnx")
            q.quantize_static(f"{tmp}/m.onnx", f"{tmp}/q.onnx", Reader(), quant_format=getattr(q.QuantFormat, fmt))
            return onnx.load(f"{tmp}/q.onnx")
    finally:
        logging.getLogger().setLevel(level)


SEED_COMPILES: dict[str, tuple[str, str, list[str]]] = {
    "lossy-adc": ("convs", "sram-cim", ["--spec-set", "adc_bits=4"]),
    "placed": ("mlp", "sram-cim", ["-p", "fold-constants,quantize,tile{placement=random encoding=differential}",
                                   "--spec-set", "spare_rows=5", "--spec-set", "spare_cols=3"]),
    "shift-faults": ("mlp", "racetrack", ["--spec-set", "shift_fault_rate=0.001", "--spec-set", "guard_interval=16",
                                          "--spec-set", "placement=serpentine"]),
    "split-k": ("mlp", "npu", ["--spec-set", "weight_buffer_bytes=256"]),
    "prequantized": ("qdq", "sram-cim", []),
}
"""Compiles beyond every model on every target's default, by name: (model, target, options) for the
attributes a default compile leaves out (calibrated ADC ranges, random placements on spares, differential
cells, shift faults with a guard, weights split over K) and a model quantized by onnxruntime."""


def cimir_seeds(d: Path) -> dict[str, tuple[str, bytes | None]]:
    """Printed .cimir seeds (text, sidecar bytes): the zoo MLP as imported; the zoo MLP, :func:`convs_model`
    and :func:`attention_model` compiled for every built-in target (their programs and quantized graphs);
    the compiles of :data:`SEED_COMPILES`; the convolutions quantized but not legalized; and a small float
    convolution net. A target other than npu, sram-cim and racetrack that refuses a hand-made model (status
    2) goes without it (the zoo MLP it must compile; ``test_fuzz`` checks its instructions are reached)."""
    from cimc.targets import all_targets

    seeds: dict[str, tuple[str, bytes | None]] = {}
    code, err = run_cli(["import", "zoo:mlp", "-o", str(d / "mlp.cimir")])
    assert code == 0, err
    seeds["mlp"] = ((d / "mlp.cimir").read_text(), (d / "mlp.npz").read_bytes())
    models = {"mlp": "zoo:mlp"}
    for name, model in (("convs", convs_model()), ("attention", attention_model()),
                        ("qdq", ort_quantized(convs_model(), "QDQ"))):
        onnx.save(model, d / f"{name}.onnx")
        models[name] = str(d / f"{name}.onnx")
    compiles = {f"{m}/{t}": (m, t, []) for m in ("mlp", "convs", "attention") for t in all_targets()}
    for name, (model, target, options) in {**compiles, **SEED_COMPILES}.items():
        out = d / f"{name.replace('/', '.')}.cimc"
        code, err = run_cli(["compile", models[model], "-t", target, "-o", str(out), *options])
        if code == 2 and model != "mlp" and target not in ("npu", "sram-cim", "racetrack"):
            continue
        assert code == 0, (name, err)
        for stem in ("program", "quantized"):
            side = out / f"{stem}.npz"
            seeds[f"{name}/{stem}"] = ((out / f"{stem}.cimir").read_text(),
                                       side.read_bytes() if side.exists() else None)
    np.savez(d / "calibration.npz", x=np.random.default_rng(4).standard_normal((8, 2, 4, 4)).astype(np.float32))
    code, err = run_cli(["opt", models["convs"], "-p", "fold-constants,quantize", "--calibration",
                         str(d / "calibration.npz"), "-o", str(d / "convs_q.cimir")])
    assert code == 0, err
    seeds["convs/quantized-only"] = ((d / "convs_q.cimir").read_text(), (d / "convs_q.npz").read_bytes())
    rng = np.random.default_rng(0)
    w = ", ".join(f"{v:.3f}" for v in rng.standard_normal(2 * 1 * 3 * 3))
    seeds["conv"] = ("graph @main(%x: f32[N,1,6,6]) {\n"
                     f"  %w: f32[2,1,3,3] = const shape [2,1,3,3] [{w}]\n"
                     "  %b: f32[2] = const [0.5, -0.5]\n"
                     "  %c: f32[N,2,6,6] = Conv(%x, %w, %b) {pads = [1, 1, 1, 1], strides = [1, 1]} loc(\"conv\")\n"
                     "  %r: f32[N,2,6,6] = Relu(%c) loc(\"relu\")\n"
                     "  %p: f32[N,2,3,3] = MaxPool(%r) {kernel_shape = [2, 2], strides = [2, 2]} loc(\"pool\")\n"
                     "  %s: i64[2] = const [-1, 18]\n"
                     "  %f: f32[N,18] = Reshape(%p, %s) loc(\"flat\")\n"
                     "  %y: f32[N,18] = Softmax(%f) {axis = 1} loc(\"softmax\")\n"
                     "  return %y\n}\n", None)
    return seeds


def onnx_seeds() -> dict[str, bytes]:
    """Serialized ONNX seeds: the zoo's MLP, LeNet and LSTM, :func:`convs_model` and :func:`attention_model`
    (float, and the convolutions quantized by onnxruntime as QDQ and as QOperator), and small hand-made
    models of the common ops."""
    from onnx import TensorProto, helper

    from cimc import zoo

    seeds = {name: zoo.load(name).onnx().SerializeToString() for name in ("mlp", "lenet_bn", "lstm_rows")}
    seeds["convs"] = convs_model().SerializeToString()
    seeds["attention"] = attention_model().SerializeToString()
    for fmt in ("QDQ", "QOperator"):
        seeds[f"convs-{fmt}"] = ort_quantized(convs_model(), fmt).SerializeToString()
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    seeds["convnet"] = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1], name="conv"),
         helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"], axis=1),
         helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1, name="fc")],
        [x], [y], {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "b": np.zeros(4, np.float32),
                   "fc": rng.standard_normal((4, 4)).astype(np.float32), "fb": np.ones(4, np.float32)}
    ).SerializeToString()
    v = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
    seeds["tensor_ops"] = _model(
        [helper.make_node("Reshape", ["x", "s"], ["a"]), helper.make_node("Transpose", ["a"], ["t"], perm=[1, 0, 2]),
         helper.make_node("Slice", ["t", "st", "en", "ax"], ["sl"]),
         helper.make_node("Concat", ["sl", "sl"], ["cc"], axis=2),
         helper.make_node("Gather", ["cc", "ix"], ["g"], axis=2),
         helper.make_node("ReduceSum", ["g", "rx"], ["y"], keepdims=0)],
        [v], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        {"s": np.array([2, 2, 3], np.int64), "st": np.array([0], np.int64), "en": np.array([2], np.int64),
         "ax": np.array([2], np.int64), "ix": np.array([0, 3, 1], np.int64), "rx": np.array([1], np.int64)}
    ).SerializeToString()
    return seeds
