"""fuse-batchnorm: each producer pattern checked numerically (interpreter before and after, and
onnxruntime on the original ONNX model), the Mul+Add fallback, the rejection reasons, and the
zoo's lenet_bn and onnx's light ResNet-50 / DenseNet-121 end to end."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from light_models import LIGHT, randomize
from onnx import TensorProto, helper, numpy_helper

from cimc import zoo
from cimc.interpreter import run
from cimc.ir import DType, Graph, TensorType, verify
from cimc.onnx_io import import_model, load_model
from cimc.passes import get_pass
from cimc.passes.fuse_batchnorm import FuseBatchNormPass, bn_scale_shift, explain
from cimc.passmanager import PassContext, PassManager
from cimc.pipeline import Pipeline, PipelineError


# ---- helpers ------------------------------------------------------------------------------------
def _model(nodes, inputs: dict[str, list], inits: dict[str, np.ndarray], outputs: list[str],
           opset: int = 21) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _bn(x: str, y: str, c: int, rng: np.random.Generator, inits: dict, prefix: str = "bn", **attrs):
    """A BatchNormalization node on ``x`` with random parameters (some variances tiny or zero)."""
    var = rng.uniform(0.1, 2.0, c) * rng.choice([1.0, 1e-6, 0.0], c, p=[0.7, 0.2, 0.1])
    inits.update({f"{prefix}_g": rng.standard_normal(c), f"{prefix}_b": rng.standard_normal(c),
                  f"{prefix}_m": rng.standard_normal(c), f"{prefix}_v": var})
    return helper.make_node("BatchNormalization", [x, *(f"{prefix}_{k}" for k in "gbmv")], [y], name=prefix,
                            epsilon=1e-5, **attrs)


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fusion of its own
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def _close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Equal to float32 rounding; the absolute tolerance is relative to the output's scale
    (a sum of K products carries about K ulps of its terms, whoever computes it)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(1.0, float(np.abs(want).max())))


def _fuse(model: onnx.ModelProto, feeds: dict[str, np.ndarray], **options) -> tuple[Graph, object]:
    """Import, run the pass, verify; check the result against the interpreter before the pass and
    against onnxruntime on the original model; return the graph and the pass result."""
    g = import_model(model)
    names = [v.name for v in g.outputs]
    before = run(g, feeds)
    result = FuseBatchNormPass(**options).run(g, PassContext())
    verify(g)
    assert [v.name for v in g.outputs] == names
    after, want = run(g, feeds), _ort(model, feeds)
    for k in names:
        _close(after[k], before[k])
        _close(after[k], want[k])
    return g, result


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---- numeric helpers ----------------------------------------------------------------------------
def test_bn_scale_shift() -> None:
    s, t = bn_scale_shift(np.float32([2, -1]), np.float32([0.5, 1]), np.float32([1, 2]), np.float32([3, 0]), 1.0)
    np.testing.assert_allclose(s, [1.0, -1.0])
    np.testing.assert_allclose(t, [-0.5, 3.0])
    assert s.dtype == t.dtype == np.float64


# ---- one test per producer pattern (hypothesis over shapes and parameters) -----------------------
@settings(max_examples=25, deadline=None)
@given(groups=st.integers(1, 3), cg=st.integers(1, 3), mg=st.integers(1, 3), k=st.integers(1, 3),
       stride=st.integers(1, 2), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_bn(groups: int, cg: int, mg: int, k: int, stride: int, bias: bool, seed: int) -> None:
    rng = _rng(seed)
    cin, m = groups * cg, groups * mg
    inits = {"w": rng.standard_normal((m, cg, k, k)) / np.sqrt(cg * k * k)}
    if bias:
        inits["b"] = rng.standard_normal(m)
    nodes = [helper.make_node("Conv", ["x", "w", *(["b"] if bias else [])], ["c"], name="conv", group=groups,
                              strides=[stride, stride], pads=[1, 0, 1, 0]),
             _bn("c", "y", m, rng, inits)]
    feeds = {"x": rng.uniform(-1, 1, (2, cin, 5, 6)).astype(np.float32)}
    g, result = _fuse(_model(nodes, {"x": ["N", cin, 5, 6]}, inits, ["y"]), feeds)
    assert g.ops() == {"Conv": 1} and [o.action for o in result.outcomes] == ["fused"]
    assert set(g.constants) == {"w_bn", "b_bn" if bias else "conv_bias"}  # the old constants are gone


@settings(max_examples=25, deadline=None)
@given(groups=st.integers(1, 3), cg=st.integers(1, 3), mg=st.integers(1, 3), k=st.integers(1, 3),
       stride=st.integers(1, 2), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_transpose_bn(groups: int, cg: int, mg: int, k: int, stride: int, bias: bool, seed: int) -> None:
    rng = _rng(seed)
    cin, m = groups * cg, groups * mg
    inits = {"w": rng.standard_normal((cin, mg, k, k)) / np.sqrt(cg)}  # [C, M/group, k, k]
    if bias:
        inits["b"] = rng.standard_normal(m)
    nodes = [helper.make_node("ConvTranspose", ["x", "w", *(["b"] if bias else [])], ["c"], group=groups,
                              strides=[stride, stride]),
             _bn("c", "y", m, rng, inits)]
    feeds = {"x": rng.uniform(-1, 1, (2, cin, 4, 3)).astype(np.float32)}
    g, result = _fuse(_model(nodes, {"x": [2, cin, 4, 3]}, inits, ["y"]), feeds)
    assert g.ops() == {"ConvTranspose": 1} and result.modified


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), k=st.integers(1, 6), trans_b=st.booleans(), alpha=st.sampled_from([1.0, 0.5, -2.0]),
       beta=st.sampled_from([1.0, 0.0, 3.0]), c=st.sampled_from([None, "n", "1n", "mn", "m1", "scalar"]),
       seed=st.integers(0, 2**16))
def test_gemm_bn(n: int, k: int, trans_b: bool, alpha: float, beta: float, c: str | None, seed: int) -> None:
    rng, m = _rng(seed), 3
    inits = {"w": rng.standard_normal((n, k) if trans_b else (k, n))}
    if c is not None:
        inits["c"] = rng.standard_normal({"n": (n,), "1n": (1, n), "mn": (m, n), "m1": (m, 1), "scalar": ()}[c])
    nodes = [helper.make_node("Gemm", ["a", "w", *(["c"] if c else [])], ["p"], transB=int(trans_b),
                              alpha=alpha, beta=beta),
             _bn("p", "y", n, rng, inits)]
    feeds = {"a": rng.uniform(-1, 1, (m, k)).astype(np.float32)}
    g, _ = _fuse(_model(nodes, {"a": [m, k]}, inits, ["y"]), feeds)
    (gemm,) = g.nodes
    assert gemm.op == "Gemm" and "alpha" not in gemm.attrs and "beta" not in gemm.attrs


@settings(max_examples=20, deadline=None)
@given(k=st.integers(1, 6), n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_matmul_bn_becomes_gemm(k: int, n: int, seed: int) -> None:
    rng = _rng(seed)
    inits = {"w": rng.standard_normal((k, n))}
    nodes = [helper.make_node("MatMul", ["a", "w"], ["p"]), _bn("p", "y", n, rng, inits)]
    feeds = {"a": rng.uniform(-1, 1, (4, k)).astype(np.float32)}
    g, result = _fuse(_model(nodes, {"a": ["N", k]}, inits, ["y"]), feeds)
    assert g.ops() == {"Gemm": 1} and "now Gemm" in result.outcomes[0].detail


# ---- the Mul+Add fallback and the reasons ---------------------------------------------------------
def _affine_case(nodes, inputs, inits, feeds, reason: str, **options) -> Graph:
    """The BN became Mul+Add (bit-exact with the BN itself) and the reason says why."""
    model = _model(nodes, inputs, inits, ["y"])
    g = import_model(model)
    assert any(reason in line for line in explain(g, **options)), explain(g)
    assert "BatchNormalization" in g.ops()  # explain leaves the graph alone
    before = run(g, feeds)
    g, result = _fuse(model, feeds, **options)
    assert np.array_equal(run(g, feeds)["y"], before["y"])
    assert "BatchNormalization" not in g.ops() and g.ops().get("Mul") and g.ops().get("Add")
    assert any(o.action == "affine" and reason in o.detail for o in result.outcomes), result.outcomes
    return g


def test_bn_on_graph_input() -> None:
    rng, inits = _rng(1), {}
    feeds = {"x": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)}
    _affine_case([_bn("x", "y", 3, rng, inits)], {"x": [2, 3, 4, 4]}, inits, feeds,
                 "its input %x is a graph input, not a node result")


def test_bn_on_rank2_input_uses_channel_vector() -> None:
    rng, inits = _rng(2), {}
    feeds = {"x": rng.standard_normal((5, 3)).astype(np.float32)}
    g = _affine_case([_bn("x", "y", 3, rng, inits)], {"x": ["N", 3]}, inits, feeds, "graph input")
    assert g.constants["bn_scale"].const.shape == (3,)


def test_bn_after_concat() -> None:
    rng, inits = _rng(3), {}
    nodes = [helper.make_node("Concat", ["x", "x"], ["c"], name="cat", axis=1), _bn("c", "y", 4, rng, inits)]
    feeds = {"x": rng.standard_normal((1, 2, 3, 3)).astype(np.float32)}
    g = _affine_case(nodes, {"x": [1, 2, 3, 3]}, inits, feeds,
                     "its input comes from Concat 'cat', which has no weights to fold into")
    assert g.constants["bn_scale"].const.shape == (4, 1, 1)


def test_conv_result_shared() -> None:
    rng = _rng(4)
    inits = {"w": rng.standard_normal((2, 2, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), _bn("c", "b1", 2, rng, inits),
             helper.make_node("Add", ["b1", "c"], ["y"])]
    feeds = {"x": rng.standard_normal((1, 2, 3, 3)).astype(np.float32)}
    _affine_case(nodes, {"x": [1, 2, 3, 3]}, inits, feeds, "the Conv result %c is also read elsewhere (2 uses)")


def test_conv_weight_not_constant() -> None:
    rng, inits = _rng(5), {}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "y", 2, rng, inits)]
    feeds = {"x": rng.standard_normal((1, 2, 3, 3)).astype(np.float32),
             "w": rng.standard_normal((2, 2, 1, 1)).astype(np.float32)}
    _affine_case(nodes, {"x": [1, 2, 3, 3], "w": [2, 2, 1, 1]}, inits, feeds, "the Conv weight %w is not a constant")


def test_matmul_rank3_is_not_fused() -> None:
    rng = _rng(6)
    inits = {"w": rng.standard_normal((4, 5))}
    nodes = [helper.make_node("MatMul", ["a", "w"], ["p"]), _bn("p", "y", 3, rng, inits)]
    feeds = {"a": rng.standard_normal((2, 3, 4)).astype(np.float32)}
    _affine_case(nodes, {"a": [2, 3, 4]}, inits, feeds,
                 "BN normalizes axis 1 of the rank-3 MatMul result, but the MatMul's features are on its last axis")


def test_producers_option() -> None:
    rng = _rng(7)
    inits = {"w": rng.standard_normal((4, 3))}
    nodes = [helper.make_node("Gemm", ["a", "w"], ["p"], name="fc"), _bn("p", "y", 3, rng, inits)]
    feeds = {"a": rng.standard_normal((2, 4)).astype(np.float32)}
    _affine_case(nodes, {"a": [2, 4]}, inits, feeds,
                 "its input comes from Gemm 'fc', which is not in producers=['Conv']", producers=("Conv",))


def _kept(nodes, inputs, inits, reason: str, **options) -> None:
    g = import_model(_model(nodes, inputs, inits, ["y"]))
    result = FuseBatchNormPass(**options).run(g, PassContext())
    verify(g)
    assert not result.modified and g.ops().get("BatchNormalization") == 1
    (o,) = result.outcomes
    assert o.action == "kept" and reason in o.detail, o
    assert reason in str(o) and str(o).startswith("BatchNormalization 'bn' kept: ")


def test_training_mode_is_kept() -> None:
    rng, inits = _rng(8), {}
    _kept([_bn("x", "y", 3, rng, inits, training_mode=1)], {"x": [2, 3, 4]}, inits, "training_mode=1")


def test_non_constant_bn_parameters_are_kept() -> None:
    rng, inits = _rng(9), {}
    node = _bn("x", "y", 3, rng, inits)
    del inits["bn_v"]
    _kept([node], {"x": [2, 3, 4], "bn_v": [3]}, inits, "its input_var operand %bn_v is not a constant")


def test_affine_false_keeps_unfusable_bn() -> None:
    rng, inits = _rng(10), {}
    _kept([_bn("x", "y", 3, rng, inits)], {"x": [2, 3, 4]}, inits, "(and affine=false)", affine=False)


# ---- structure ------------------------------------------------------------------------------------
def test_shared_weight_is_never_mutated() -> None:
    rng = _rng(11)
    inits = {"w": rng.standard_normal((3, 2, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"]), _bn("c1", "y1", 3, rng, inits, "bn1"),
             helper.make_node("Conv", ["x", "w"], ["c2"]), _bn("c2", "y2", 3, rng, inits, "bn2"),
             helper.make_node("Add", ["y1", "y2"], ["y"])]
    model = _model(nodes, {"x": [1, 2, 3, 3]}, inits, ["y"])
    g = import_model(model)
    w = g.constants["w"].const
    w_copy = w.copy()
    feeds = {"x": rng.standard_normal((1, 2, 3, 3)).astype(np.float32)}
    g, result = _fuse(model, feeds)
    assert [o.action for o in result.outcomes] == ["fused", "fused"] and g.ops() == {"Conv": 2, "Add": 1}
    assert np.array_equal(w, w_copy) and "w" not in g.constants
    c1, c2 = (n for n in g.nodes if n.op == "Conv")
    assert c1.inputs[1] is not c2.inputs[1]


def test_chained_bns_and_graph_output_name() -> None:
    rng = _rng(12)
    inits = {"w": rng.standard_normal((3, 2, 3, 3))}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), _bn("c", "m", 3, rng, inits, "bn1"),
             _bn("m", "y", 3, rng, inits, "bn2")]
    feeds = {"x": rng.standard_normal((1, 2, 5, 5)).astype(np.float32)}
    g, result = _fuse(_model(nodes, {"x": [1, 2, 5, 5]}, inits, ["y"]), feeds)
    assert g.ops() == {"Conv": 1} and [o.action for o in result.outcomes] == ["fused", "fused"]
    assert g.nodes[0].outputs[0].name == "y" and g.outputs[0] is g.nodes[0].outputs[0]


def test_registered_and_pipeline_text() -> None:
    assert get_pass("fuse-batchnorm") is FuseBatchNormPass
    p = Pipeline.parse("fold-constants,fuse-batchnorm{producers=[Conv,Gemm] affine=false}")
    assert p.passes[1] == FuseBatchNormPass(producers=("Conv", "Gemm"), affine=False)
    assert Pipeline.parse(str(p)) == p
    with pytest.raises(PipelineError, match=r"producers names 'conv', .*choose among Conv, ConvTranspose, Gemm"):
        Pipeline.parse("fuse-batchnorm{producers=[conv]}")


def test_float16_weights_keep_their_dtype() -> None:
    rng = _rng(13)
    g = Graph()
    x = g.add_input("x", TensorType(DType.f16, (1, 2, 4, 4)))
    w = g.add_constant(rng.standard_normal((3, 2, 3, 3)).astype(np.float16), "w")
    conv = g.add_node("Conv", [x, w], name="conv")
    params = [g.add_constant(a.astype(np.float16), "p") for a in (rng.standard_normal(3), rng.standard_normal(3),
                                                                rng.standard_normal(3), rng.uniform(0.5, 2, 3))]
    g.outputs = [g.add_node("BatchNormalization", [conv.outputs[0], *params]).outputs[0]]
    feeds = {"x": rng.standard_normal((1, 2, 4, 4)).astype(np.float16)}
    before = run(g, feeds)
    assert FuseBatchNormPass().run(g, PassContext()).modified
    verify(g)
    (fused,) = g.nodes
    assert fused.inputs[1].const.dtype == fused.inputs[2].const.dtype == np.float16
    (a,), (b,) = run(g, feeds).values(), before.values()
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=1e-2, atol=1e-2)


def test_no_bn_is_not_modified() -> None:
    g = import_model(_model([helper.make_node("Relu", ["x"], ["y"])], {"x": [2]}, {}, ["y"]))
    result = FuseBatchNormPass().run(g, PassContext())
    assert not result.modified and result.outcomes == ()


# ---- models -------------------------------------------------------------------------------------
def test_lenet_bn_zoo_model() -> None:
    m = zoo.load("lenet_bn")
    g = load_model(m.path)
    assert g.ops()["BatchNormalization"] == 2
    before = run(g, {m.input_name: m.x_test})[m.output_name]
    result = PassManager("fuse-batchnorm", PassContext(verify_each=True)).run(g)
    assert result.modified and "BatchNormalization" not in g.ops() and g.ops()["Conv"] == 2
    after = run(g, {m.input_name: m.x_test})[m.output_name]
    want = _ort(m.onnx(), {m.input_name: m.x_test})[m.output_name]
    assert np.abs(after - want).max() < 1e-5
    assert np.array_equal(after.argmax(1), before.argmax(1))
    assert (after.argmax(1) == m.y_test).mean() == (want.argmax(1) == m.y_test).mean()


@pytest.mark.parametrize(("name", "fused", "affine"), [("resnet50", 53, 0), ("densenet121", 59, 62)])
def test_light_model(name: str, fused: int, affine: int) -> None:
    model = randomize(onnx.load(LIGHT / f"light_{name}.onnx"))
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    if softmax:  # compare logits: random weights saturate the softmax
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info(softmax[0].input[0], TensorProto.FLOAT, None))
        model.graph.node.remove(softmax[0])
    g = import_model(model)
    PassManager("fold-constants,fuse-batchnorm", PassContext(verify_each=True)).run(g)
    assert "BatchNormalization" not in g.ops()
    assert g.ops()["Conv"] == {"resnet50": 53, "densenet121": 121}[name]
    (x,) = g.inputs
    feeds = {x.name: np.random.default_rng(0).standard_normal(x.type.shape, dtype=np.float32)}
    (got,), (want,) = run(g, feeds).values(), _ort(model, feeds).values()
    # random He-scaled weights give logits up to ~1e5: float32 rounding scales with them
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=max(1e-4, 1e-5 * float(np.abs(want).max())))
    assert np.ptp(want) > 1e-2  # the outputs are not uniform
    if name == "densenet121":  # BN after Concat / pooling: Mul+Add, each preceded by the reason
        g2 = import_model(model)
        PassManager("fold-constants").run(g2)
        lines = explain(g2)
        assert sum(" fused into Conv " in s for s in lines) == fused
        assert sum("became Mul+Add: its input comes from Concat" in s for s in lines) > 0
        assert sum("became Mul+Add" in s for s in lines) == affine
