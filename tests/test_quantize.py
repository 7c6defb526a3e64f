"""The quantize pass: zoo accuracy (float vs W8A8/W4A8/W4A4), the structure it emits, options and
their error messages, calibration checks, determinism, text round trip and calibration speed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimc import zoo
from cimc.errors import CimcError, PassError
from cimc.interpreter import run
from cimc.ir.core import Graph
from cimc.ir.equality import graph_difference
from cimc.ir.types import DType
from cimc.ir.verifier import verify
from cimc.onnx_io import load_model
from cimc.passes.quantize import QuantizePass, parse_overrides
from cimc.passmanager import PassContext, PassManager
from cimc.pipeline import Pipeline, PipelineError
from cimc.quant.fixedpoint import quantize_multiplier, quantize_multipliers
from cimc.quant.params import quantize_weights
from cimc.text import parse_graph, print_graph

PRE = "fold-constants,fuse-batchnorm"


def _float(name: str) -> Graph:
    g = load_model(zoo.path(name))
    PassManager(PRE).run(g)
    return g


def _quantize(g: Graph, options: str = "", calibration=None, **ctx) -> Graph:
    g = g.copy()
    calib = {g.inputs[0].name: zoo.calibration_set()} if calibration is None else calibration
    PassManager(f"quantize{{{options}}}", PassContext(calibration=calib, verify_each=True, **ctx)).run(g)
    return g


def _top1(g: Graph, m: zoo.ZooModel) -> float:
    out = run(g, {g.inputs[0].name: m.x_test})[g.outputs[0].name]
    return 100.0 * float((out.argmax(1) == m.y_test).mean())


# ---- accuracy on the digits test split -----------------------------------------------------------------
@pytest.mark.parametrize("name", zoo.NAMES)
def test_zoo_top1_float_w8a8_w4a8_w4a4(name):
    """Goals: W8A8 within 0.5 points of float, W4A8 within 2; W4A4 has no goal (guarded at 6)."""
    m, g = zoo.load(name), _float(name)
    ref = _top1(g, m)
    assert abs(ref - 100 * m.float_top1) < 0.5  # the interpreter reproduces onnxruntime's figure
    w8a8 = _top1(_quantize(g, "weight-bits=8 act-bits=8"), m)
    w4a8 = _top1(_quantize(g, "weight-bits=4 act-bits=8"), m)
    w4a4 = _top1(_quantize(g, "weight-bits=4 act-bits=4"), m)
    print(f"{name}: float {ref:.2f} W8A8 {w8a8:.2f} W4A8 {w4a8:.2f} W4A4 {w4a4:.2f}")
    assert w8a8 >= ref - 0.5
    assert w4a8 >= ref - 2.0
    assert w4a4 >= ref - 6.0


@pytest.mark.parametrize("options", ["requant=float", "calibration=percentile percentile=99.9",
                                     "calibration=mse", "per-channel=false"])
def test_other_options_keep_w8a8_accuracy(options):
    m, g = zoo.load("resnet_tiny"), _float("resnet_tiny")
    assert _top1(_quantize(g, options), m) >= _top1(g, m) - 1.0


# ---- what the pass emits ----------------------------------------------------------------------------
def test_resnet_structure_is_integer_between_input_and_logits():
    g = _quantize(_float("resnet_tiny"))
    ops = g.ops()
    assert not {"Conv", "Gemm", "Relu", "Add"} & set(ops), ops  # all integer; Relu fused into clamps
    assert ops["q.conv"] == 6 and ops["q.gemm"] == 1 and ops["q.add"] == 2
    assert g.metadata["quant.requant"] == "fixed"
    assert all(n.attrs["mode"] == "fixed" for n in g.nodes if n.op in ("q.requant", "q.add"))
    assert [str(v.type) for v in g.inputs] == ["f32[batch,1,8,8]"] and [v.name for v in g.outputs] == ["logits"]
    assert g.outputs[0].type.dtype is DType.f32 and g.outputs[0].producer.op == "q.dequantize"
    assert g.outputs[0].producer.inputs[0].type.dtype is DType.i32  # logits straight from the accumulator
    for n in g.nodes:
        if n.op in ("q.conv", "q.gemm"):
            w = n.inputs[1]
            assert w.type.dtype is DType.i8 and w.type.quant.axis == 0 and np.abs(w.const).max() <= 127
            assert n.outputs[0].type.quant.scale == pytest.approx(
                [n.inputs[0].type.quant.scale[0] * s for s in w.type.quant.scale])


def test_bias_holds_the_zero_point_term():
    """bias = round(b / (sx*sw)) - zx * sum(w); a conv reading a zx != 0 input proves the fold."""
    g = _quantize(_float("hybrid_vit"))
    n = next(n for n in g.nodes if n.op == "q.matmul" and n.attrs["x_zero_point"] != 0)
    # the four Linear biases folded into q.matmul, the residual adds integer (q.add); the position add stays float
    assert g.ops().get("Add", 0) == 1 and g.ops().get("q.add", 0) == 2
    x = np.random.default_rng(0).integers(0, 256, (1, 4, n.inputs[1].type.shape[0])).astype(np.uint8)
    gm = Graph()
    xi = gm.add_input("x", n.inputs[0].type.with_shape(x.shape))
    w, b = gm.add_constant(n.inputs[1].const, "w"), gm.add_constant(n.inputs[2].const, "b")
    node = gm.add_node("q.matmul", [xi, w, b], n.attrs)
    gm.outputs.append(node.output)
    got = run(gm, {"x": x})[node.output.name].astype(np.int64)
    w, b, zx = n.inputs[1].const.astype(np.int64), n.inputs[2].const.astype(np.int64), n.attrs["x_zero_point"]
    round_b = b + zx * w.sum(0)
    np.testing.assert_array_equal(got, (x.astype(np.int64) - zx) @ w + round_b)


def convt_model(group: int = 2) -> onnx.ModelProto:
    """A float Conv -> ConvTranspose (stride 2, pads, output_padding, bias, ``group``) -> Relu model."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), k) for k, a in {
        "w1": rng.normal(0, 0.3, (4, 3, 3, 3)), "b1": rng.normal(0, 0.1, 4),
        "w2": rng.normal(0, 0.3, (4, 6 // group, 3, 3)), "b2": rng.normal(0, 0.1, 6)}.items()]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["c", "w2", "b2"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1],
                              output_padding=[1, 1], group=group),
             helper.make_node("Relu", ["t"], ["y"])]
    graph = helper.make_graph(nodes, "convt", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 12, 12])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_becomes_an_integer_op(group):
    from cimc.onnx_io import import_model

    f = import_model(convt_model(group))
    rng = np.random.default_rng(1)
    q = _quantize(f, "weight-bits=8 act-bits=8", calibration={"x": rng.normal(size=(16, 3, 6, 6)).astype(np.float32)})
    ops = q.ops()
    assert ops.get("q.conv_transpose") == 1 and "ConvTranspose" not in ops and "Relu" not in ops
    n = next(n for n in q.nodes if n.op == "q.conv_transpose")
    assert len(n.inputs[1].type.quant.scale) == 6 and n.inputs[2].type.dtype is DType.i32
    assert n.outputs[0].users[0].op == "q.requant" and n.outputs[0].users[0].attrs.get("lo", 0) >= 0
    x = rng.normal(size=(8, 3, 6, 6)).astype(np.float32)
    ref, got = run(f, {"x": x})["y"].reshape(-1), run(q, {"x": x})["y"].reshape(-1)
    assert got.min() >= 0 and ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got)) > 0.99


def test_moves_and_activations_run_on_integers():
    g = _quantize(_float("lenet_bn"))
    assert g.ops().get("BatchNormalization") is None
    pool = next(n for n in g.nodes if n.op == "MaxPool")
    assert pool.inputs[0].type.dtype is DType.u8 and pool.outputs[0].type.quant == pool.inputs[0].type.quant
    mob = _quantize(_float("mobilenet_tiny"))
    assert "Clip" not in mob.ops()  # ReLU6 is the clamp of its requant
    for n in mob.nodes:
        if n.op == "q.requant":  # each covers ReLU6's output range: [0, <= 6]
            q = n.outputs[0].type.quant
            assert q.zero_point == (0,) and 255 * q.scale[0] <= 6.0 + q.scale[0]


def test_relu_of_an_integer_value_is_an_integer_clip():
    text = """graph @g(%x: f32[N,1,6,6]) {
      %w: f32[2,1,3,3] = const [0.5, -0.25, 0.1, 0.3, -0.7, 0.2, 0.05, 0.4, -0.3,
                                -0.2, 0.6, 0.1, 0.3, -0.4, 0.2, 0.1, 0.0, -0.5]
      %c: f32[N,2,4,4] = Conv(%x, %w) loc("conv")
      %p: f32[N,2,2,2] = MaxPool(%c) {kernel_shape = [2, 2], strides = [2, 2]} loc("pool")
      %r: f32[N,2,2,2] = Relu(%p) loc("relu")
      %f: f32[N,8] = Flatten(%r) loc("flat")
      %wf: f32[8,3] = const [0.1, 0.2, -0.3, 0.4, -0.5, 0.6, 0.7, 0.8, -0.9, 1.0, 1.1, 1.2,
                             0.3, -0.1, 0.2, 0.5, 0.4, 0.3, -0.2, 0.1, 0.0, 0.9, 0.8, 0.7]
      %y: f32[N,3] = Gemm(%f, %wf) loc("fc")
      return %y, %p
    }"""
    g = parse_graph(text)
    x = np.random.default_rng(0).uniform(-1, 1, (16, 1, 6, 6)).astype(np.float32)
    q = _quantize(g, calibration={"x": x})
    ops = [n.op for n in q.nodes]
    assert ops == ["q.quantize", "q.conv", "q.requant", "MaxPool", "Clip", "Flatten", "q.gemm", "q.dequantize",
                   "q.dequantize"]
    clip = q.nodes[4]
    assert clip.inputs[1].const == clip.inputs[0].type.quant.zero_point[0]  # Relu: clamp at the zero point
    ref, got = run(g, {"x": x}), run(q, {"x": x})
    step = clip.inputs[0].type.quant.scale[0]
    assert clip.inputs[0].type.quant.zero_point[0] > 0 and np.abs(ref["p"] - got["p"]).max() <= 1.5 * step
    assert np.abs(ref["y"] - got["y"]).max() < 0.05 * np.abs(ref["y"]).max()


def test_concat_inputs_share_the_result_parameters_so_it_runs_on_integers():
    text = """graph @g(%x: f32[N,2,5,5]) {
      %w1: f32[3,2,1,1] = const [0.5, -0.25, 0.1, 0.3, -0.7, 0.2]
      %w2: f32[2,2,1,1] = const [2.5, 1.5, -3.0, 0.7]
      %w3: f32[1,7,1,1] = const [0.1, 0.2, 0.3, -0.4, 0.5, 0.6, -0.7]
      %a: f32[N,3,5,5] = Conv(%x, %w1) loc("a")
      %ra: f32[N,3,5,5] = Relu(%a) loc("ra")
      %b: f32[N,2,5,5] = Conv(%x, %w2) loc("b")
      %d: f32[N,2,5,5] = Conv(%x, %w2) loc("d")
      %p: f32[N,2,5,5] = MaxPool(%d) {kernel_shape = [3, 3], pads = [1, 1, 1, 1]} loc("p")
      %c: f32[N,7,5,5] = Concat(%ra, %b, %p) {axis = 1} loc("cat")
      %y: f32[N,1,5,5] = Conv(%c, %w3) loc("y")
      return %y
    }"""
    g = parse_graph(text)
    x = np.random.default_rng(1).uniform(-1, 1, (8, 2, 5, 5)).astype(np.float32)
    q = _quantize(g, calibration={"x": x})
    cat = next(n for n in q.nodes if n.op == "Concat")
    assert len({v.type.quant for v in cat.inputs}) == 1 and cat.outputs[0].type.dtype is DType.u8
    assert [n.op for n in q.nodes].count("q.quantize") == 1  # x; the max pool runs on d requantized
    ref, got = run(g, {"x": x})["y"], run(q, {"x": x})["y"]
    assert np.abs(ref - got).max() < 0.03 * np.abs(ref).max()


def test_fixed_and_float_requant_agree_to_one_step():
    g, m = _float("mobilenet_tiny"), zoo.load("mobilenet_tiny")
    a = run(_quantize(g, "requant=fixed"), {"input": m.x_test})["logits"]
    b = run(_quantize(g, "requant=float"), {"input": m.x_test})["logits"]
    assert (a.argmax(1) == b.argmax(1)).mean() > 0.99
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()


def test_text_round_trip_runs_bit_identically():
    g = _quantize(_float("resnet_tiny"), "calibration=percentile")
    res: dict = {}
    back = parse_graph(print_graph(g, resources=res), resources=res)
    assert graph_difference(g, back) is None
    x = zoo.load("resnet_tiny").x_test[:64]
    np.testing.assert_array_equal(run(g, {"input": x})["logits"], run(back, {"input": x})["logits"])


def test_deterministic():
    g = _float("hybrid_vit")
    a, b = (_quantize(g, "calibration=mse act-bits=6") for _ in range(2))
    assert graph_difference(a, b) is None


# ---- per-layer overrides -------------------------------------------------------------------------------
def test_overrides_set_bits_per_node_and_op_type():
    g = _float("resnet_tiny")
    first = next(n.name for n in g.nodes if n.op == "Conv")
    q = _quantize(g, f'overrides="{first}:weight-bits=3,Gemm:act-bits=5,Gemm:weight-bits=6"')
    convs = [n for n in q.nodes if n.op == "q.conv"]
    assert convs[0].inputs[1].type.quant.bits == 3 and np.abs(convs[0].inputs[1].const).max() <= 3
    assert all(n.inputs[1].type.quant.bits == 8 for n in convs[1:])
    gemm = next(n for n in q.nodes if n.op == "q.gemm")
    assert gemm.inputs[1].type.quant.bits == 6 and gemm.inputs[0].type.quant.bits == 5


def test_parse_overrides_syntax():
    assert parse_overrides("") == {}
    assert parse_overrides("a/b:c:weight-bits=4, Conv:act-bits=6,Conv:weight-bits=2") == {
        "a/b:c": {"weight-bits": 4}, "Conv": {"act-bits": 6, "weight-bits": 2}}
    for bad, msg in [("conv1", "not SELECTOR:KEY=VALUE"), ("conv1:bits=4", "the keys are weight-bits, act-bits"),
                     ("conv1:act-bits=9", "expected 2..8 bits"), ("c:act-bits=4,c:act-bits=5", "given twice")]:
        with pytest.raises(CimcError, match=msg):
            parse_overrides(bad)


def test_override_selector_must_match_a_node_or_op_type():
    with pytest.raises(PassError, match=r"'Gemn' is neither a node name nor an op type .*did you mean 'Gemm'"
                                        r"\? \(its op types: Gemm, Relu, Reshape\)"):
        _quantize(_float("mlp"), 'overrides="Gemn:weight-bits=4"')


# ---- options and calibration errors ------------------------------------------------------------------
def test_pipeline_text_and_option_errors():
    p = Pipeline.parse("quantize{weight-bits=4 calibration=mse requant=float}")
    assert str(p) == ('quantize{weight-bits=4 act-bits=8 calibration=mse percentile=99.99 requant=float '
                      'overrides="" per-channel=true weight-clip=auto weight-rounding=auto gptq-max-rows=8192 '
                      'bias-correction=auto vector-bits=8 out-bits=0}')
    assert Pipeline.parse(str(p)) == p
    for text, msg in [("quantize{weight-bits=9}", "option 'weight-bits' of pass 'quantize' is 9; expected 2..8"),
                      ("quantize{act-bits=1}", "option 'act-bits' of pass 'quantize' is 1; expected 2..8"),
                      ("quantize{vector-bits=9}", "option 'vector-bits' of pass 'quantize' is 9; expected 2..8"),
                      ("quantize{out-bits=1}", r"option 'out-bits' of pass 'quantize' is 1; expected 2..8, or 0"),
                      ("quantize{calibration=kl}", "expects one of 'minmax', 'percentile', 'mse'"),
                      ("quantize{percentile=20}", "option 'percentile'"),
                      ("quantize{requant=double}", "expects one of 'auto', 'fixed', 'float'"),
                      ("quantize{weight-rounding=adaround}", "expects one of 'auto', 'nearest', 'gptq'"),
                      ("quantize{bias-correction=true}", "expects one of 'auto', 'on', 'off'"),
                      ('quantize{overrides="conv:w=4"}', "the keys are")]:
        with pytest.raises(PipelineError, match=msg):
            Pipeline.parse(text)
    with pytest.raises(CimcError, match="option 'weight-bits'"):
        QuantizePass(weight_bits=1)


def test_calibration_errors_say_what_to_do():
    g = _float("mlp")
    with pytest.raises(PassError, match=r"quantize needs a calibration set \(--calibration x.npz or calibration= "):
        PassManager("quantize", PassContext()).run(g.copy())
    cases = [({"input": np.zeros((0, 1, 8, 8), np.float32)}, "calibration input 'input' is empty"),
             ({"input": np.zeros((4, 8, 8), np.float32)}, "calibration input 'input' does not fit .*rank 3"),
             ({"input": np.zeros((4, 1, 8, 7), np.float32)}, "does not fit"),
             ({"image": np.zeros((4, 1, 8, 8), np.float32)}, r"missing \['input'\]; unknown \['image'\]"),
             # the rules of graph inputs: the exact element type, no extra arrays; and finite values
             ({"input": zoo.calibration_set().astype(np.float64)}, "element type f64 where f32 was expected"),
             ({"input": np.zeros((4, 1, 8, 8), np.float32), "x": np.zeros(1)}, r"unknown \['x'\]"),
             ({"input": np.full((4, 1, 8, 8), np.nan, np.float32)},
              r"'input' holds 256 non-finite value\(s\) \(the first, nan, at index \[0, 0, 0, 0\]\)")]
    for calib, msg in cases:
        with pytest.raises(PassError, match=msg):
            _quantize(g, calibration=calib)
    _quantize(g, calibration={"input": zoo.calibration_set().astype(">f4")})  # byte order is no type


# ---- vectorized helpers: the same bits as the one-value / one-pass forms -----------------------------
@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.floats(0.0, 2.0**30, exclude_max=True), st.sampled_from(
    [0.0, 0.5, 1 - 2.0**-40, 2.0**-40, 2.0**-32, 2.0**-33, 5e-324])), min_size=1, max_size=40))
def test_vectorized_multipliers_match_quantize_multiplier(ms):
    m0, shift = quantize_multipliers(np.array(ms, np.float64))
    assert list(zip(m0, shift, strict=True)) == [quantize_multiplier(m) for m in ms]
    assert all(type(x) is int for x in (*m0, *shift))
    with pytest.raises(CimcError, match="outside"):
        quantize_multipliers(np.array([*ms, np.nan]))


def test_blocked_weight_quantization_matches_one_pass():
    """``quantize_weights`` works in blocks of rows; the result is that of the plain formula."""
    def one_pass(w, bits, axis, per_channel):
        qmax, w32 = (1 << (bits - 1)) - 1, np.asarray(w, np.float32)
        others = tuple(i for i in range(w32.ndim) if i != axis % w32.ndim) if per_channel else None
        amax = np.maximum(w32.max(axis=others), -w32.min(axis=others)).reshape(-1)
        scales = (amax.astype(np.float64) / qmax).astype(np.float32)
        scales[scales == 0] = 1.0
        shape = [-1 if i == axis % w32.ndim else 1 for i in range(w32.ndim)] if per_channel else [1] * w32.ndim
        return np.clip(np.rint(w32 / scales.reshape(shape)), -qmax, qmax).astype(np.int8), scales

    rng = np.random.default_rng(0)
    for shape, axis in [((300, 64, 3, 3), 0), ((4096, 40), 1), ((40, 4096), 0), ((5,), 0)]:
        w = (rng.standard_normal(shape) * 3).astype(np.float32)
        w.reshape(len(w), -1)[1] = 0.0  # an all-zero channel gets scale 1
        for x, bits, per_channel in [(w, 8, True), (np.asfortranarray(w), 4, True), (w.astype(np.float64), 2, False)]:
            got, want = quantize_weights(x, bits, axis, per_channel), one_pass(x, bits, axis, per_channel)
            assert got[0].flags.c_contiguous and got[0].dtype == np.int8
            np.testing.assert_array_equal(got[0], want[0])
            assert got[1].tobytes() == want[1].tobytes()


def test_quantize_light_resnet50():
    """light_resnet50 (batch fixed at 1) calibrated on 8 random inputs: every Conv becomes q.conv and the
    graph verifies. Its speed against the interpreter is ``benchmarks/bench_quantize.py``'s figure."""
    g = load_model(Path(onnx.__file__).parent / "backend/test/data/light/light_resnet50.onnx")
    PassManager(PRE).run(g)
    name = g.inputs[0].name
    x = np.random.default_rng(0).random((8, 3, 224, 224), dtype=np.float32)
    PassManager("quantize", PassContext(calibration={name: x})).run(g)
    verify(g)
    assert g.ops()["q.conv"] == 53 and "Conv" not in g.ops()


def _region_model(kind: str) -> onnx.ModelProto:
    """A Gemm, then SiLU (x * sigmoid(x)) or torch's erf GELU (x * (1 + erf(x / sqrt 2)) / 2), then a Gemm."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w1, w2 = (numpy_helper.from_array(rng.normal(0, 0.5, s).astype(np.float32), n)
              for s, n in (((8, 16), "w1"), ((16, 4), "w2")))
    consts = [numpy_helper.from_array(np.float32(v), n) for v, n in ((np.sqrt(2), "c"), (1.0, "one"), (0.5, "half"))]
    region = {"silu": [helper.make_node("Sigmoid", ["h"], ["s"]), helper.make_node("Mul", ["h", "s"], ["a"])],
              "gelu": [helper.make_node("Div", ["h", "c"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                       helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["h", "p"], ["m"]),
                       helper.make_node("Mul", ["m", "half"], ["a"])]}[kind]
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w1"], ["h"]), *region,
                           helper.make_node("MatMul", ["a", "w2"], ["y"])], kind,
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w1, w2, *consts])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("kind", ["silu", "gelu"])
def test_an_elementwise_function_of_one_value_is_one_table(kind):
    """SiLU and GELU, products of a value and a function of it, become one q.lut of that value (not a table
    per operand and a q.mul of two rounded codes). Its table agrees with onnxruntime running the region's
    float ops on each input code's real value, to the nearest output step (one step at a tie); a table one
    entry off fails that comparison."""
    from onnx import TensorProto, helper

    from cimc.onnx_io import import_model
    from cimc.onnx_io.runtime import run_onnxruntime

    model = _region_model(kind)
    calib = {"x": np.random.default_rng(6).normal(size=(64, 8)).astype(np.float32)}
    g = _quantize(import_model(model), calibration=calib)
    assert "q.mul" not in g.ops() and g.ops()["q.lut"] == 1, g.ops()
    lut = next(n for n in g.nodes if n.op == "q.lut")
    pin, pout = lut.inputs[0].type.quant, lut.outputs[0].type.quant
    real = (np.float32(pin.scale[0]) * (np.arange(256) - pin.zero_point[0]).astype(np.float32)).reshape(16, 16)
    sub = onnx.helper.make_graph([n for n in model.graph.node if n.output[0] not in ("h", "y")], "region",
                                 [helper.make_tensor_value_info("h", TensorProto.FLOAT, [16, 16])],
                                 [helper.make_tensor_value_info("a", TensorProto.FLOAT, [16, 16])],
                                 [t for t in model.graph.initializer if t.name in ("c", "one", "half")])
    want = run_onnxruntime(helper.make_model(sub, opset_imports=[helper.make_opsetid("", 17)]), {"h": real})["a"]
    codes = np.clip(np.rint(want.reshape(-1) / np.float32(pout.scale[0])) + pout.zero_point[0], 0, 255)
    table = np.asarray(lut.attrs["table"])
    assert np.abs(table - codes).max() <= 1 and (table == codes).mean() > 0.98
    broken = table.copy()
    broken[200] += 2
    assert np.abs(broken - codes).max() > 1


def test_out_bits_that_change_nothing_say_so(caplog):
    """out-bits narrows an array op's result that only the vector unit reads; where every array result feeds
    another array op (mlp: Gemm, Relu fused, Gemm) the option does nothing, and the pass says so."""
    import logging

    with caplog.at_level(logging.WARNING, logger="cimc.quant.lower"):
        _quantize(_float("mlp"), "out-bits=6")
    assert "quantize: out-bits=6 changes nothing in graph" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cimc.quant.lower"):
        _quantize(_float("lstm_rows"), "out-bits=6")
    assert "out-bits" not in caplog.text


@pytest.mark.parametrize("op", ["HardSwish", "HardSigmoid", "Sigmoid"])
def test_a_table_input_is_not_spent_where_its_function_is_flat(op):
    """HardSwish is 0 below -3, HardSigmoid (alpha 0.2) 0 below -2.5 and 1 above 2.5: the grid of the value
    their table reads covers only the part that varies (its end codes within a step of the bounds), so the
    codes are finer there; Sigmoid varies everywhere, and its input keeps the calibrated range."""
    from onnx import TensorProto, helper, numpy_helper

    from cimc.onnx_io import import_model

    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.normal(0, 2.0, (8, 16)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node(op, ["h"], ["y"])], op,
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])], [w])
    calib = {"x": rng.normal(size=(64, 8)).astype(np.float32)}
    q = _quantize(import_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])),
                  calibration=calib)
    p = next(n for n in q.nodes if n.op == "q.lut").inputs[0].type.quant
    step, lo, hi = p.scale[0], -p.zero_point[0] * p.scale[0], (255 - p.zero_point[0]) * p.scale[0]
    h = calib["x"] @ numpy_helper.to_array(w)
    assert h.min() < -4 and h.max() > 4  # the calibrated range reaches into the flat parts
    if op == "Sigmoid":
        assert lo <= h.min() + step and hi >= h.max() - step
    else:
        bound = 3.0 if op == "HardSwish" else 2.5
        assert abs(lo + bound) <= step and (op == "HardSwish" or abs(hi - bound) <= step), (lo, hi, step)
