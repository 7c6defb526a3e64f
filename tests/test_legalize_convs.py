"""legalize-convs and convolutions of every rank on every target: 1-D, 2-D and 3-D convolutions (grouped,
depthwise, dilated, strided) and transposed convolutions compile for each target, the program equals the
quantized graph (the integer reference) and follows onnxruntime's float model; the rewrites are exact on
the quantized graph, and the check that says so catches a broken rewrite."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from cimc.driver import compile
from cimc.interpreter import Interpreter, run
from cimc.onnx_io import import_model
from cimc.passmanager import PassContext, PassManager
from cimc.targets import all_targets

TARGETS = sorted(all_targets())
SPECS = {"memristor": {"ideal": True}}  # a device model's ideal device: its programs must equal the reference
RNG = np.random.default_rng(0)


def _model(op: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...], **attrs) -> onnx.ModelProto:
    """One float Conv or ConvTranspose (with a bias) then Relu, seeded weights."""
    w = RNG.normal(0, 0.3, w_shape).astype(np.float32)
    m = w_shape[0] if op == "Conv" else w_shape[1] * attrs.get("group", 1)
    b = RNG.normal(0, 0.1, m).astype(np.float32)
    node = helper.make_node(op, ["x", "w", "b"], ["y"], name="layer", **attrs)
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch"] + [None] * (len(x_shape) - 1))
    g = helper.make_graph([node, helper.make_node("Relu", ["y"], ["out"])], "conv",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *x_shape[1:]])], [out],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


CASES = {
    "conv1d": ("Conv", (2, 6, 40), (8, 6, 5), {"pads": [2, 2], "strides": [2]}),
    "conv1d_depthwise_dilated": ("Conv", (2, 8, 32), (8, 1, 3), {"group": 8, "dilations": [2], "pads": [2, 2]}),
    "conv2d_grouped": ("Conv", (2, 4, 9, 9), (6, 2, 3, 3), {"group": 2, "pads": [1, 0, 1, 2]}),
    "conv3d": ("Conv", (2, 3, 5, 6, 7), (4, 3, 3, 2, 3), {"pads": [1, 0, 1, 1, 1, 1], "strides": [1, 2, 1]}),
    "convt1d": ("ConvTranspose", (2, 4, 10), (4, 3, 4), {"strides": [2], "pads": [1, 1]}),
    "convt2d": ("ConvTranspose", (2, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "output_padding": [1, 0],
                                                               "pads": [1, 0, 0, 1]}),
    "convt2d_grouped_dilated": ("ConvTranspose", (2, 4, 5, 5), (4, 2, 3, 2),
                                {"group": 2, "dilations": [2, 1], "strides": [3, 1], "pads": [0, 1, 2, 0]}),
    "convt3d": ("ConvTranspose", (2, 3, 3, 4, 3), (3, 2, 2, 3, 2), {"strides": [2, 1, 2]}),
    "convt2d_same_upper": ("ConvTranspose", (2, 3, 5, 4), (3, 2, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    "convt1d_output_shape": ("ConvTranspose", (2, 3, 6), (3, 2, 4), {"strides": [3], "output_shape": [20]}),
    "convt2d_crop": ("ConvTranspose", (2, 2, 4, 4), (2, 2, 3, 3), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
}


def _inputs(shape: tuple[int, ...], n: int = 16) -> dict[str, np.ndarray]:
    return {"x": RNG.normal(size=(n, *shape[1:])).astype(np.float32)}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_conv_compiles_on_every_target_and_equals_the_integer_reference(case, target):
    op, xs, ws, attrs = CASES[case]
    model = _model(op, xs, ws, **attrs)
    x = _inputs(xs)
    c = compile(model, target, spec=SPECS.get(target), calibration=x, inputs=x, verify=True, progress=False)
    ops = c.program.ops()
    assert not {"q.conv", "q.conv_transpose", "q.matmul", "Conv", "ConvTranspose"} & set(ops), ops
    v = c.verify
    assert v["reference_exact"] and v["exact_expected"], v
    assert v["cosine"] > 0.99, v
    runs = {p["runs_on"] for p in c.placement if p["layer"].startswith("layer")}
    assert c.target.capabilities().array_name in runs, c.placement
    assert not c.float_layers


def _quantized(case: str):
    op, xs, ws, attrs = CASES[case]
    g = import_model(_model(op, xs, ws, **attrs))
    x = _inputs(xs, 8)
    PassManager("fold-constants,quantize", PassContext(calibration=x)).run(g)
    return g, {"x": x["x"]}


def layer_outputs(g, x) -> dict[str, np.ndarray]:
    """Every value the graph computes on ``x``, by name."""
    seen: dict[str, np.ndarray] = {}
    Interpreter(g).run(x, observe=lambda v, a: seen.__setitem__(v.name, np.array(a)))
    return seen


def _legalized(g, target: str):
    out = g.copy()
    PassManager("legalize-convs", PassContext(target=all_targets()[target](), verify_each=True)).run(out)
    return out


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_rewrites_are_exact_on_the_quantized_graph(case, target):
    """Every accumulator of the rewritten graph equals the original's bit for bit, on codes over the full
    uint8 range (the zero point term, the flipped kernel, the crops and pads all matter)."""
    g, _ = _quantized(case)
    after = _legalized(g, target)
    assert "q.conv_transpose" not in after.ops()
    x = {"x": RNG.normal(0, 3, g.inputs[0].type.shape[1:]).astype(np.float32)[None].repeat(3, 0)}
    np.testing.assert_array_equal(run(after, x)["out"], run(g, x)["out"])
    acc = next(n.outputs[0].name for n in g.nodes if n.op in ("q.conv", "q.conv_transpose"))
    np.testing.assert_array_equal(layer_outputs(after, x)[acc], layer_outputs(g, x)[acc])


@pytest.mark.parametrize("case", ["convt2d", "conv3d"])
def test_a_broken_rewrite_is_caught(case):
    """The same comparison fails for a rewrite that forgets the zero-point term or flips a weight's sign."""
    g, _ = _quantized(case)
    after = _legalized(g, "npu")
    x = {"x": RNG.normal(0, 3, g.inputs[0].type.shape[1:]).astype(np.float32)[None].repeat(3, 0)}
    w = next(v for n in after.nodes if n.op in ("q.conv", "q.matmul") for v in n.inputs[1:2])
    broken = w.const.copy()
    i = np.flatnonzero(broken)[0]
    broken.flat[i] = -broken.flat[i]
    w.const = broken
    acc = next(n.outputs[0].name for n in g.nodes if n.op in ("q.conv", "q.conv_transpose"))
    assert not np.array_equal(layer_outputs(after, x)[acc], layer_outputs(g, x)[acc])


def test_without_the_pass_a_transposed_conv_is_refused_naming_it():
    """A pipeline that leaves q.conv_transpose gets one error naming the node and the pass to add."""
    from cimc.errors import CimcError

    op, xs, ws, attrs = CASES["convt2d"]
    for target in TARGETS:
        with pytest.raises(CimcError, match=r"q.conv_transpose 'layer'.*legalize-convs"):
            compile(_model(op, xs, ws, **attrs), target, pipeline="fold-constants,quantize", progress=False)


def _qconv_graph(op: str, x_shape, w, bias, zx: int, attrs: dict):
    """One integer convolution node on a u8 input (zero point ``zx``), typed as the quantizer types it."""
    from cimc.ir.core import Graph
    from cimc.ir.types import DType, QuantParams, TensorType

    g = Graph("conv")
    m = w.shape[1] * attrs.get("group", 1) if op == "q.conv_transpose" else w.shape[0]
    x = g.add_input("x", TensorType(DType.u8, x_shape, QuantParams((0.05,), (zx,), 8)))
    wq = QuantParams(tuple(0.01 * (1 + i % 3) for i in range(m)), (0,) * m, 8, 1 if op == "q.conv_transpose" else 0)
    wv = g.add_constant(w, "w", TensorType(DType.i8, w.shape, wq))
    bv = g.add_constant(bias, "b", TensorType(DType.i32, bias.shape, QuantParams(
        tuple(0.05 * s for s in wq.scale), (0,) * m, 32, 0)))
    node = g.add_node(op, [x, wv, bv], {**attrs, "x_zero_point": zx}, name="layer")
    g.outputs = [node.outputs[0]]
    return g


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_transposed_convolutions_legalize_exactly_for_any_geometry(data):
    """Random 1-D/2-D transposed convolutions (groups, strides, dilations, pads that crop, output_padding,
    output_shape): the legalized graph equals q.conv_transpose bit for bit on random codes, for the npu
    (whose 1-D convs become matmuls too) and sram-cim."""
    rank = data.draw(st.integers(1, 2))
    group = data.draw(st.sampled_from([1, 2]))
    cg, mg = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    kernel = [data.draw(st.integers(1, 4)) for _ in range(rank)]
    strides = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    dils = [data.draw(st.integers(1, 2)) for _ in range(rank)]
    spatial = [data.draw(st.integers(1, 6)) for _ in range(rank)]
    pads = [data.draw(st.integers(0, (k - 1) * d + 1)) for k, d in zip(kernel * 2, dils * 2, strict=True)]
    opad = [data.draw(st.integers(0, max(s, d) - 1)) for s, d in zip(strides, dils, strict=True)]
    attrs = {"kernel_shape": tuple(kernel), "strides": tuple(strides), "dilations": tuple(dils), "group": group,
             "pads": tuple(pads), "output_padding": tuple(opad)}
    full = [(n - 1) * s + o + (k - 1) * d + 1 - b - e for n, s, o, k, d, b, e in
            zip(spatial, strides, opad, kernel, dils, pads[:rank], pads[rank:], strict=True)]
    if min(full) < 1:
        return
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    w = rng.integers(-127, 128, (cg * group, mg, *kernel)).astype(np.int8)
    bias = rng.integers(-1000, 1000, mg * group).astype(np.int32)
    zx = int(rng.integers(0, 256))
    g = _qconv_graph("q.conv_transpose", (2, cg * group, *spatial), w, bias, zx, attrs)
    x = {"x": rng.integers(0, 256, (2, cg * group, *spatial)).astype(np.uint8)}
    want = run(g, x)
    for target in TARGETS:
        after = _legalized(g, target)
        assert "q.conv_transpose" not in after.ops()
        np.testing.assert_array_equal(run(after, x)[g.outputs[0].name], want[g.outputs[0].name])


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_convolutions_of_other_ranks_become_exact_matmuls(data):
    """Random 1-D and 3-D convolutions (groups, strides, dilations, pads): on the npu, whose MAC array windows
    2-D inputs only, the legalized graph (im2col rows by one block-diagonal matmul) equals q.conv bit for bit."""
    rank = data.draw(st.sampled_from([1, 3]))
    group = data.draw(st.sampled_from([1, 2, 3]))
    cg, mg = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    kernel = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    strides = [data.draw(st.integers(1, 2)) for _ in range(rank)]
    dils = [data.draw(st.integers(1, 2)) for _ in range(rank)]
    pads = [data.draw(st.integers(0, 2)) for _ in range(2 * rank)]
    spatial = [data.draw(st.integers((k - 1) * d + 1, 7)) for k, d in zip(kernel, dils, strict=True)]
    attrs = {"kernel_shape": tuple(kernel), "strides": tuple(strides), "dilations": tuple(dils), "group": group,
             "pads": tuple(pads)}
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    w = rng.integers(-127, 128, (mg * group, cg, *kernel)).astype(np.int8)
    bias = rng.integers(-1000, 1000, mg * group).astype(np.int32)
    g = _qconv_graph("q.conv", (2, cg * group, *spatial), w, bias, int(rng.integers(0, 256)), attrs)
    x = {"x": rng.integers(0, 256, (2, cg * group, *spatial)).astype(np.uint8)}
    after = _legalized(g, "npu")
    assert "q.conv" not in after.ops() and after.ops()["q.matmul"] == 1
    np.testing.assert_array_equal(run(after, x)[g.outputs[0].name], run(g, x)[g.outputs[0].name])
