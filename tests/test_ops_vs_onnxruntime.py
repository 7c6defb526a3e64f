"""Ops added for ONNX coverage, checked against onnxruntime on seeded random inputs (beside ONNX's own
node cases, which the conformance test runs): one single-node model per row, run by both."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from cimc.interpreter import run
from cimc.onnx_io import import_model

R = np.random.default_rng(0)


def _f(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype(np.float32)


def _i(values, dtype=np.int64) -> np.ndarray:
    return np.asarray(values, dtype)


# (op, runtime inputs, constant inputs, attributes, number of outputs)
CASES = [
    ("MaxRoiPool", {"x": _f(1, 3, 8, 8)}, {"rois": np.asarray([[0, 1, 1, 6, 5], [0, 0, 0, 7, 7]], np.float32)},
     {"pooled_shape": [2, 3], "spatial_scale": 1.0}, 1),
    ("GroupNormalization", {"x": _f(2, 6, 4, 4)}, {"s": _f(6), "b": _f(6)}, {"num_groups": 3, "epsilon": 1e-5}, 1),
    ("RMSNormalization", {"x": _f(2, 5, 8)}, {"s": _f(8)}, {"axis": -1}, 1),
    ("InstanceNormalization", {"x": _f(2, 3, 5, 5)}, {"s": _f(3), "b": _f(3)}, {}, 1),
    ("Resize", {"x": _f(1, 2, 5, 7)}, {"roi": np.zeros(0, np.float32), "scales": np.asarray([1, 1, 1.6, 0.6],
                                                                                          np.float32)},
     {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}, 1),
    ("Resize", {"x": _f(1, 2, 5, 7)}, {"roi": np.zeros(0, np.float32), "scales": np.asarray([1, 1, 2, 3],
                                                                                          np.float32)},
     {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, 1),
    ("Resize", {"x": _f(1, 1, 6, 6)}, {"roi": np.zeros(0, np.float32), "scales": np.zeros(0, np.float32),
                                       "sizes": _i([1, 1, 9, 4])},
     {"mode": "cubic", "coordinate_transformation_mode": "pytorch_half_pixel"}, 1),
    ("Einsum", {"a": _f(2, 3, 4), "b": _f(2, 4, 5)}, {}, {"equation": "bij,bjk->bik"}, 1),
    ("TopK", {"x": _f(3, 7)}, {"k": _i([3])}, {"axis": 1, "largest": 1}, 2),
    ("CumSum", {"x": _f(4, 5)}, {"axis": _i(1)}, {"exclusive": 1, "reverse": 1}, 1),
    ("GridSample", {"x": _f(1, 2, 5, 6), "g": (R.random((1, 4, 3, 2)) * 2.4 - 1.2).astype(np.float32)}, {},
     {"mode": "linear", "padding_mode": "reflection", "align_corners": 0}, 1),
    ("GRU", {"x": _f(4, 2, 3)}, {"w": _f(1, 15, 3), "r": _f(1, 15, 5), "b": _f(1, 30)},
     {"hidden_size": 5, "linear_before_reset": 1}, 2),
    ("RNN", {"x": _f(4, 2, 3)}, {"w": _f(2, 5, 3), "r": _f(2, 5, 5), "b": _f(2, 10)},
     {"hidden_size": 5, "direction": "bidirectional"}, 2),
    ("Mod", {"a": _i([[5, -5, 7], [-9, 4, 0]], np.int32), "b": _i([[3, 3, -2], [4, -3, 5]], np.int32)}, {}, {}, 1),
    ("LogSoftmax", {"x": _f(3, 4, 5)}, {}, {"axis": 1}, 1),
    ("DepthToSpace", {"x": _f(1, 8, 2, 3)}, {}, {"blocksize": 2, "mode": "CRD"}, 1),
    ("ScatterND", {"x": _f(4, 3)}, {"i": _i([[1], [3]]), "u": _f(2, 3)}, {"reduction": "add"}, 1),
    ("GatherND", {"x": _f(2, 3, 4)}, {"i": _i([[[0, 1], [2, 3]], [[1, 0], [0, 2]]])}, {"batch_dims": 1}, 1),
]

OPSET = {"RMSNormalization": 23}
"""The opset of a row's model when not 21 (onnxruntime has kernels for the op's newest version there)."""


def _model(op: str, feeds: dict, consts: dict, attrs: dict, n_out: int) -> onnx.ModelProto:
    names = list(feeds) + list(consts)
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for k, v in feeds.items()]
    graph = helper.make_graph([node], "g", inputs, [helper.make_empty_tensor_value_info(o) for o in outs],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    opsets = [helper.make_opsetid("", OPSET.get(op, 21))]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


@pytest.mark.parametrize(("op", "feeds", "consts", "attrs", "n_out"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_onnxruntime(op, feeds, consts, attrs, n_out) -> None:
    model = _model(op, feeds, consts, attrs, n_out)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    got = run(import_model(model), feeds)
    for i, w in enumerate(want):
        have = got[f"y{i}"]
        assert have.shape == w.shape and have.dtype == w.dtype
        np.testing.assert_allclose(have, w, rtol=1e-4, atol=1e-5, err_msg=f"{op} output {i}")


@pytest.mark.parametrize("attrs, scales, sizes", [
    ({"mode": "nearest"}, [1, 1, 2, 2], None),  # nn.Upsample(scale_factor=2)
    ({"mode": "linear"}, [1, 1, 1.5, 0.5], None),
    ({"mode": "nearest"}, None, [3, 4, 5, 7]),  # sizes for every axis: the batch too
    ({"mode": "nearest", "axes": [3, 2]}, None, [6, 5]),
    ({"mode": "nearest", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}, None, [9, 5]),
    ({"mode": "nearest", "axes": [0, 3]}, [2, 1.5], None),
])
def test_resize_result_dims_with_a_symbolic_batch(attrs, scales, sizes) -> None:
    """A Resize with constant scales or sizes on an input of symbolic batch: the imported result's dims
    are those onnxruntime's result has at two batch sizes (a symbolic dim as the batch; an unknown dim
    only where the batch decides it). They were all unknown, so a Conv after ``nn.Upsample`` could not
    be lowered."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4, 4, 6])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.asarray(scales, np.float32), "scales")] if scales else \
        [numpy_helper.from_array(np.asarray(sizes, np.int64), "sizes")]
    names = ["x", "", "scales"] if scales else ["x", "", "", "sizes"]
    node = helper.make_node("Resize", names, ["y"], **attrs)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 19)])
    dims = import_model(model).outputs[0].type.shape
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (2, 3):
        (got,) = sess.run(None, {"x": _f(n, 4, 4, 6)})
        assert len(dims) == got.ndim
        for d, g in zip(dims, got.shape, strict=True):
            assert d == g if isinstance(d, int) else d in ("N", None) and (d is None or g == n), (dims, got.shape)
    assert sum(d is None for d in dims) == (1 if scales == [2, 1.5] else 0), dims
