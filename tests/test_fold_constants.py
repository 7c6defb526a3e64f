"""fold-constants: small graphs in ``.cimir`` text, checked structurally and by running them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from cimc.interpreter import run
from cimc.ir.opdef import AttrSpec, define_op, lookup
from cimc.ir.types import DType, TensorType
from cimc.ir.verifier import verify
from cimc.passes.fold_constants import FoldConstantsPass
from cimc.passmanager import PassContext
from cimc.text import parse_graph, print_graph

if lookup("test.effect") is None:
    @define_op("test.effect", infer=lambda ctx: [TensorType(DType.f32, (2,))] * ctx.num_outputs,
               inputs=(0, 1), outputs=(0, 1), side_effects=True, attrs={"tag": AttrSpec("int", 0, "")})
    def _effect(ctx, x=None):
        """A side-effecting op that must never be folded away."""
        return (np.zeros(2, np.float32),) * ctx.num_outputs


def fold(text: str, inputs: dict[str, np.ndarray] | None = None, **options: object):
    """Parse, fold and verify; check the outputs before and after agree; return the graph."""
    g = parse_graph(text)
    verify(g)
    names = [v.name for v in g.outputs]
    before = run(g, inputs or {})
    result = FoldConstantsPass(**options).run(g, PassContext())  # type: ignore[arg-type]
    verify(g)
    assert [v.name for v in g.outputs] == names, "graph output names must not change"
    after = run(g, inputs or {})
    for k in before:
        assert before[k].dtype == after[k].dtype and np.array_equal(before[k], after[k]), k
    g.modified = result.modified  # type: ignore[attr-defined]
    return g


X = {"x": np.arange(24, dtype=np.float32).reshape(2, 3, 4)}


def test_constant_arithmetic_folds_and_keeps_names():
    g = fold("""graph @main() {
      %a: f32[2] = const [1.0, 2.0]
      %b: f32[2] = const [3.0, 4.0]
      %s: f32[2] = Add(%a, %b) loc("add")
      %y: f32[2] = Relu(%s) loc("relu")
      return %y
    }""")
    assert g.modified and not g.nodes and list(g.constants) == ["y"]
    assert g.constants["y"].const.tolist() == [4.0, 6.0]


def test_nothing_to_do_is_unmodified():
    g = fold("""graph @main(%x: f32[2,3,4]) {
      %y: f32[2,3,4] = Relu(%x) loc("relu")
      return %y
    }""", X)
    assert not g.modified and g.ops() == {"Relu": 1}


SHAPES = """graph @main(%x: f32[N,3,4]) {
  %i0: i64[] = const [0]
  %i1: i64[] = const [1]
  %ax: i64[1] = const [0]
  %m1: i64[1] = const [-1]
  %s: i64[3] = Shape(%x) loc("shape")
  %n: i64[] = Gather(%s, %i0) loc("batch")
  %c: i64[] = Gather(%s, %i1) loc("channels")
  %nu: i64[1] = Unsqueeze(%n, %ax) loc("unsqueeze")
  %spec: i64[2] = Concat(%nu, %m1) {axis = 0} loc("concat")
  %flat: f32[?,?] = Reshape(%x, %spec) loc("flatten")
  return %flat, %c, %n
}"""


def test_static_dim_of_symbolic_shape_folds_and_batch_stays():
    g = fold(SHAPES, X)
    assert g.constants["c"].const.tolist() == 3 and g.constants["c"].const.shape == ()
    assert "n" not in g.constants and g.value("n").producer.op == "Gather"
    assert g.value("flat").type.shape == ("N", 12)  # symbolic dims cancel through Shape
    assert g.ops() == {"Shape": 1, "Gather": 1, "Unsqueeze": 1, "Concat": 1, "Reshape": 1}
    assert not FoldConstantsPass().run(g, PassContext()).modified  # a fixed point


def test_shape_chain_of_static_input_folds_into_reshape():
    g = fold(SHAPES.replace("f32[N,3,4]", "f32[2,3,4]"), X)
    assert g.ops() == {"Reshape": 1}
    spec = g.value("flat").producer.inputs[1]
    assert spec.const.tolist() == [2, -1] and g.value("flat").type.shape == (2, 12)
    assert g.constants["n"].const.tolist() == 2


def test_constant_of_shape_and_expand_get_symbolic_dims():
    g = fold("""graph @main(%x: f32[N,3,4]) {
      %i0: i64[] = const [0]
      %ax: i64[1] = const [0]
      %one: i64[1] = const [1]
      %h: i64[1] = const [32]
      %small: f32[4] = const [1.0, 2.0, 3.0, 4.0]
      %s: i64[3] = Shape(%x) loc("shape")
      %n: i64[] = Gather(%s, %i0) loc("batch")
      %nu: i64[1] = Unsqueeze(%n, %ax) loc("unsqueeze")
      %spec: i64[3] = Concat(%one, %nu, %h) {axis = 0} loc("concat")
      %h0: f32[?,?,?] = ConstantOfShape(%spec) loc("h0")
      %e: f32[?,?,?] = Expand(%small, %s) loc("expand")
      return %h0, %e
    }""", X)
    assert g.value("h0").type.shape == (1, "N", 32) and g.value("e").type.shape == ("N", 3, 4)


def test_slice_of_shape_and_shape_start_end():
    g = fold("""graph @main(%x: f32[N,3,4]) {
      %st: i64[1] = const [1]
      %en: i64[1] = const [100]
      %m1: i64[1] = const [-1]
      %s: i64[3] = Shape(%x) loc("shape")
      %tail: i64[2] = Slice(%s, %st, %en) loc("slice")
      %spec: i64[3] = Concat(%m1, %tail) {axis = 0} loc("concat")
      %y: f32[?,?,?] = Reshape(%x, %spec) loc("reshape")
      %s2: i64[2] = Shape(%x) {start = -2} loc("shape2")
      return %y, %s2
    }""", X)
    assert g.ops() == {"Reshape": 1}
    assert g.constants["s2"].const.tolist() == [3, 4]
    assert g.value("y").type.shape == ("N", 3, 4)


def test_exporter_shape_subgraph_with_constant_of_shape_cast_expand():
    g = fold("""graph @main(%x: f32[2,3,4]) {
      %i2: i64[1] = const [2]
      %s: i64[3] = Shape(%x) loc("shape")
      %last: i64[1] = Gather(%s, %i2) loc("gather")
      %z: f32[4] = ConstantOfShape(%last) {value = tensor<f32[1]: [0.5]>} loc("cos")
      %zi: i32[4] = Cast(%z) {to = 6} loc("cast")
      %zf: f32[4] = Cast(%zi) {to = 1} loc("cast2")
      %e: f32[2,3,4] = Expand(%zf, %s) loc("expand")
      %y: f32[2,3,4] = Add(%x, %e) loc("add")
      return %y
    }""", X)
    assert g.ops() == {"Add": 1} and g.constants["e"].const.shape == (2, 3, 4)


def test_max_size_limits_folds():
    text = """graph @main(%x: f32[2,3,4]) {
      %s: i64[3] = Shape(%x) loc("shape")
      %z: f32[2,3,4] = ConstantOfShape(%s) loc("cos")
      %y: f32[2,3,4] = Add(%x, %z) loc("add")
      return %y
    }"""
    assert fold(text, X, max_size=10).ops() == {"ConstantOfShape": 1, "Add": 1}
    assert fold(text, X, max_size=24).ops() == {"Add": 1}


def test_dequantize_of_constant_weights_is_kept_unless_asked():
    text = """graph @main(%x: f32[2,3,4]) {
      %w: i8[4] = const [-3, 0, 5, 127]
      %s: f32[] = const [0.5]
      %wf: f32[4] = DequantizeLinear(%w, %s) loc("dq")
      %y: f32[2,3,4] = Mul(%x, %wf) loc("mul")
      return %y
    }"""
    assert fold(text, X).ops() == {"DequantizeLinear": 1, "Mul": 1}
    g = fold(text, X, keep_ops=())
    assert g.ops() == {"Mul": 1} and g.constants["wf"].const.tolist() == [-1.5, 0.0, 2.5, 63.5]


IDENTITY = """graph @main(%x: f32[2,3,4]) {
  %r: f32[2,3,4] = Relu(%x) loc("relu")
  %i: f32[2,3,4] = Identity(%r) loc("id1")
  %t: f32[2,3,4] = Tanh(%i) loc("tanh")
  %out: f32[2,3,4] = Identity(%t) loc("id2")
  %same: f32[2,3,4] = Identity(%x) loc("id3")
  return %out, %same
}"""


def test_identity_is_bypassed_and_output_names_stay():
    g = fold(IDENTITY, X)
    assert g.ops() == {"Relu": 1, "Tanh": 1, "Identity": 1}  # id3 keeps input %x apart from %same
    assert g.value("out").producer.op == "Tanh"
    assert "t" not in {v.name for v in g.values()} and "i" not in {v.name for v in g.values()}


def test_dropout_in_inference_is_bypassed_but_not_in_training():
    g = fold("""graph @main(%x: f32[2,3,4]) {
      %f: bool[] = const [false]
      %t: bool[] = const [true]
      %r: f32[] = const [0.5]
      %a: f32[2,3,4] = Dropout(%x) loc("d1")
      %b: f32[2,3,4] = Dropout(%a, %r, %f) loc("d2")
      %c: f32[2,3,4], %m: bool[2,3,4] = Dropout(%b, %r, %f) loc("d3")
      %d: f32[2,3,4] = Dropout(%c, %r, %t) loc("d4")
      %y: f32[2,3,4] = Relu(%d) loc("relu")
      return %y, %m
    }""", X)
    assert g.ops() == {"Dropout": 2, "Relu": 1}  # d3's mask is read; d4 trains
    assert g.value("y").producer.inputs[0].producer.name == "d4"


def test_side_effect_ops_are_neither_folded_nor_removed():
    g = fold("""graph @main() {
      %a: f32[2] = const [1.0, 2.0]
      %e: f32[2] = test.effect() loc("effect")
      test.effect(%a) {tag = 1} loc("effect2")
      return %e
    }""")
    assert g.ops() == {"test.effect": 2} and "a" in g.constants


def test_op_failing_on_its_constants_is_left_for_run_time(caplog):
    g = parse_graph("""graph @main() {
      %a: f32[2] = const [1.0, 2.0]
      %i: i64[1] = const [5]
      %y: f32[1] = Gather(%a, %i) loc("oob")
      return %y
    }""")
    with caplog.at_level("DEBUG", logger="cimc.passes.fold_constants"):
        assert not FoldConstantsPass().run(g, PassContext()).modified
    assert g.ops() == {"Gather": 1}
    assert "not folding node 'oob' (Gather): evaluation failed" in caplog.text


def test_folded_graph_output_keeps_name_and_prints_back():
    g = fold("""graph @main(%x: f32[2,3,4]) {
      %s: i64[3] = Shape(%x) loc("shape")
      %y: i64[3] = Identity(%s) loc("id")
      return %y
    }""", X)
    assert list(g.constants) == ["y"] and not g.nodes
    assert print_graph(parse_graph(print_graph(g))) == print_graph(g)


def _onnx_flatten_model() -> onnx.ModelProto:
    """What torch.onnx exports for ``x.view(x.size(0), -1)`` followed by a linear layer."""
    c = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)  # noqa: E731
    w = helper.make_tensor("w", TensorProto.FLOAT, [12, 5], np.linspace(-1, 1, 60).tolist())
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("", TensorProto.INT64, [], [0])),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax"], ["nu"]),
        helper.make_node("Concat", ["nu", "m1"], ["spec"], axis=0),
        helper.make_node("Reshape", ["x", "spec"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [c("ax", [0]), c("m1", [-1]), w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_exported_flatten_gets_a_static_inner_dim():
    """The Reshape's type rule reads its computed shape operand element by element on import already
    (``[N, -1]`` of ``[N, 3, 4]``); the fold keeps it and the results."""
    onnx_io = pytest.importorskip("cimc.onnx_io")
    g = onnx_io.import_model(_onnx_flatten_model())
    assert g.value("flat").type.shape == ("N", 12)
    x = {"x": np.random.default_rng(0).standard_normal((3, 3, 4)).astype(np.float32)}
    before = run(g, x)
    FoldConstantsPass().run(g, PassContext())
    verify(g)
    assert g.value("flat").type.shape == ("N", 12)
    assert g.value("y").type.shape[1:] == (5,)
    np.testing.assert_array_equal(run(g, x)["y"], before["y"])


@settings(max_examples=40, deadline=None)
@given(dims=st.lists(st.integers(1, 4) | st.sampled_from(["N", "M"]), min_size=1, max_size=4),
       data=st.data())
def test_gather_of_shape_folds_exactly_the_static_dims(dims, data):
    i = data.draw(st.integers(-len(dims), len(dims) - 1))
    j = data.draw(st.integers(0, len(dims)))
    shape = ",".join(map(str, dims))
    g = fold(f"""graph @main(%x: f32[{shape}]) {{
      %i: i64[] = const [{i}]
      %st: i64[1] = const [{j}]
      %en: i64[1] = const [{len(dims)}]
      %s: i64[{len(dims)}] = Shape(%x) loc("shape")
      %d: i64[] = Gather(%s, %i) loc("gather")
      %t: i64[{len(dims) - j}] = Slice(%s, %st, %en) loc("slice")
      return %d, %t
    }}""", {"x": np.zeros([d if isinstance(d, int) else 2 for d in dims], np.float32)})
    assert ("d" in g.constants) == isinstance(dims[i], int)
    assert ("t" in g.constants) == all(isinstance(d, int) for d in dims[j:])


def test_shape_arithmetic_and_a_reshape_to_given_dims_keep_static_dims():
    """timm's MobileViT as TorchScript exports it: patches unfolded by Reshape(x, [N*C*nh, ph, nw, pw])
    with the first element computed by Mul on Shape(x), then folded back by Reshape(y, [N, C, H, W]).
    The products of static dims fold, a product with N is the product dim 12*N, and the fold-back's dims
    come from its shape vector alone although its input's dims are unknown."""
    g = fold("""graph @main(%x: f32[N,6,4,4]) {
      %i0: i64[] = const [0]
      %i1: i64[] = const [1]
      %two: i64[] = const [2]
      %ax: i64[1] = const [0]
      %tail: i64[3] = const [2, 2, 2]
      %hw: i64[2] = const [4, 4]
      %s: i64[4] = Shape(%x) loc("shape")
      %n: i64[] = Gather(%s, %i0) loc("batch")
      %c: i64[] = Gather(%s, %i1) loc("channels")
      %nc: i64[] = Mul(%n, %c) loc("nc")
      %nch: i64[] = Mul(%nc, %two) loc("nch")
      %half: i64[] = Div(%c, %two) loc("half")
      %cc: i64[] = Add(%half, %half) loc("cc")
      %first: i64[1] = Unsqueeze(%nch, %ax) loc("u1")
      %spec: i64[4] = Concat(%first, %tail) {axis = 0} loc("spec")
      %p: f32[?,?,?,?] = Reshape(%x, %spec) loc("unfold")
      %q: f32[?,?,?,?] = Transpose(%p) {perm = [0, 3, 2, 1]} loc("swap")
      %nu: i64[1] = Unsqueeze(%n, %ax) loc("u2")
      %ccu: i64[1] = Unsqueeze(%cc, %ax) loc("u3")
      %back: i64[4] = Concat(%nu, %ccu, %hw) {axis = 0} loc("back_spec")
      %y: f32[?,?,?,?] = Reshape(%q, %back) loc("fold")
      return %y
    }""", {"x": np.arange(2 * 96, dtype=np.float32).reshape(2, 6, 4, 4)})
    assert g.value("p").type.shape == ("12*N", 2, 2, 2)
    assert g.value("y").type.shape == ("N", 6, 4, 4)
    assert "Div" not in g.ops() and "Add" not in g.ops() and g.ops()["Mul"] == 2  # folded where known


def test_a_resize_to_sizes_taken_from_another_tensor_gets_static_dims():
    """``F.interpolate(x, size=y.shape[-2:])`` (torchvision's LR-ASPP, FPNs) with a symbolic batch: the
    sizes are Concat(Shape(x)[:2], Shape(y)[2:]), not constant, and the Resize's result takes its dims
    from them (the Conv after it was f32[?,5,?,?], which no target lowers)."""
    g = fold("""graph @main(%x: f32[N,4,2,2], %y: f32[N,3,8,8]) {
      %nc: i64[2] = Shape(%x) {end = 2} loc("nc")
      %hw: i64[2] = Shape(%y) {start = 2} loc("hw")
      %sizes: i64[4] = Concat(%nc, %hw) {axis = 0} loc("sizes")
      %r: f32[?,?,?,?] = Resize(%x, none, none, %sizes) {mode = "linear"} loc("up")
      return %r
    }""", {"x": np.arange(32, dtype=np.float32).reshape(2, 4, 2, 2), "y": np.zeros((2, 3, 8, 8), np.float32)})
    assert g.value("r").type.shape == ("N", 4, 8, 8)
