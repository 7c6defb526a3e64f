"""Control flow resolved at import: If folds, Loop and Scan unroll; results equal onnxruntime's."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc.errors import UnsupportedOpError
from cimc.interpreter import run
from cimc.onnx_io import import_model

F = TensorProto.FLOAT


def _vi(name: str, shape, elem=F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "cf", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _same_as_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    graph = import_model(model)
    assert not any(n.op in ("If", "Loop", "Scan") for n in graph.nodes)
    got = run(graph, feeds)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    for name, w in want.items():
        np.testing.assert_allclose(got[name], w, rtol=1e-6, atol=1e-6, err_msg=name)
    return got


def _branch(op: str, name: str, rows: int = 2) -> onnx.GraphProto:
    return helper.make_graph([helper.make_node(op, ["x"], [f"{name}_y"])], name, [], [_vi(f"{name}_y", [rows, 3])])


@pytest.mark.parametrize("static_dim, taken", [(2, "Relu"), (5, "Neg")])
def test_if_on_a_shape_known_at_import_folds(static_dim: int, taken: str) -> None:
    # cond = (Shape(x)[0] == 2): known at import because x's shape is static
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["d0"], axis=0),
             helper.make_node("Equal", ["d0", "two"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=_branch("Relu", "then", static_dim),
                              else_branch=_branch("Neg", "else", static_dim))]
    inits = [numpy_helper.from_array(np.asarray(0, np.int64), "zero"),
             numpy_helper.from_array(np.asarray(2, np.int64), "two")]
    model = _model(nodes, [_vi("x", [static_dim, 3])], [_vi("y", [static_dim, 3])], inits)
    x = np.random.default_rng(0).standard_normal((static_dim, 3)).astype(np.float32)
    ops = [n.op for n in import_model(model).nodes]
    assert ops[-1] == taken and ({"Relu", "Neg"} - {taken}).isdisjoint(ops)  # the branch not taken is gone
    _same_as_ort(model, {"x": x})


def test_if_on_a_graph_input_is_one_clear_error() -> None:
    nodes = [helper.make_node("If", ["c"], ["y"], name="branchy", then_branch=_branch("Relu", "then"),
                              else_branch=_branch("Neg", "else"))]
    model = _model(nodes, [_vi("c", [], TensorProto.BOOL), _vi("x", [2, 3])], [_vi("y", [2, 3])])
    with pytest.raises(UnsupportedOpError, match=r"^the model uses 1 unsupported op: If \(opset 17; node 'branchy'\): "
                                                 r"its condition is computed at run time"):
        import_model(model)


def _loop_body() -> onnx.GraphProto:
    # carried: acc; scan output: acc * i
    nodes = [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
             helper.make_node("Add", ["acc_in", "x"], ["acc_out"]),
             helper.make_node("Cast", ["i"], ["fi"], to=F),
             helper.make_node("Mul", ["acc_out", "fi"], ["scan_out"])]
    return helper.make_graph(nodes, "body", [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL),
                                             _vi("acc_in", [3])],
                             [_vi("cond_out", [], TensorProto.BOOL), _vi("acc_out", [3]), _vi("scan_out", [3])])


def test_loop_with_static_trip_count_unrolls() -> None:
    nodes = [helper.make_node("Loop", ["trip", "", "acc0"], ["acc", "scans"], name="loop", body=_loop_body())]
    inits = [numpy_helper.from_array(np.asarray(4, np.int64), "trip")]
    model = _model(nodes, [_vi("x", [3]), _vi("acc0", [3])], [_vi("acc", [3]), _vi("scans", [4, 3])], inits)
    rng = np.random.default_rng(1)
    got = _same_as_ort(model, {"x": rng.standard_normal(3).astype(np.float32),
                               "acc0": rng.standard_normal(3).astype(np.float32)})
    assert got["scans"].shape == (4, 3)


def test_loop_with_a_run_time_trip_count_is_one_clear_error() -> None:
    nodes = [helper.make_node("Loop", ["trip", "", "acc0"], ["acc", "scans"], name="loop", body=_loop_body())]
    model = _model(nodes, [_vi("trip", [], TensorProto.INT64), _vi("x", [3]), _vi("acc0", [3])],
                   [_vi("acc", [3]), _vi("scans", [None, 3])])
    with pytest.raises(UnsupportedOpError, match=r"Loop \(opset 17; node 'loop'\): its trip count is computed at run"):
        import_model(model)


@pytest.mark.parametrize("reverse", [0, 1])
def test_scan_unrolls_over_its_static_length(reverse: int) -> None:
    body = helper.make_graph([helper.make_node("Add", ["s_in", "e"], ["s_out"]),
                              helper.make_node("Mul", ["s_out", "e"], ["o"])], "body",
                             [_vi("s_in", [2]), _vi("e", [2])], [_vi("s_out", [2]), _vi("o", [2])])
    nodes = [helper.make_node("Scan", ["s0", "xs"], ["s", "os"], body=body, num_scan_inputs=1,
                              scan_input_directions=[reverse], scan_output_axes=[1])]
    model = _model(nodes, [_vi("s0", [2]), _vi("xs", [5, 2])], [_vi("s", [2]), _vi("os", [2, 5])])
    rng = np.random.default_rng(2)
    _same_as_ort(model, {"s0": rng.standard_normal(2).astype(np.float32),
                         "xs": rng.standard_normal((5, 2)).astype(np.float32)})


def test_unsupported_ops_inside_a_body_are_listed() -> None:
    body = helper.make_graph([helper.make_node("RandomNormalLike", ["x"], ["r"], name="noise")], "then", [],
                             [_vi("r", [2, 3])])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body)]
    inits = [numpy_helper.from_array(np.asarray(True), "c")]
    model = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 3])], inits)
    with pytest.raises(UnsupportedOpError, match=r"RandomNormalLike \(opset 17; nodes 'noise', 'noise'\): random ops"):
        import_model(model)
