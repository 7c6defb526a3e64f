"""Tensor and shape ops: type rules (symbolic dims, constant and non-constant operands), numerics,
and error messages.

Numerics are checked against numpy formulas and against ONNX's own reference evaluator
(``onnx.reference``) on the same single node, including Slice's and Pad's edge cases.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from cimc.errors import UnsupportedOpError, VerifyError
from cimc.interpreter import ExecutionError, run
from cimc.ir.core import Graph
from cimc.ir.types import ONNX_CODE_OF_DTYPE, ONNX_DTYPE_CODES, DType, QuantParams, TensorType
from cimc.ir.verifier import verify

F32, I64 = DType.f32, DType.i64


class C:
    """Marks an operand that is a graph constant (so type rules can read it)."""

    def __init__(self, value, dtype=np.int64) -> None:
        self.array = np.asarray(value, dtype=dtype)


def _node(op: str, operands: list, attrs: dict | None = None, outputs: int = 1):
    """One ``op`` node over operands that are ``TensorType`` inputs, ``C`` constants or ``None``."""
    g = Graph()
    ins = []
    for i, x in enumerate(operands):
        if x is None:
            ins.append(None)
        elif isinstance(x, C):
            ins.append(g.add_constant(x.array, f"c{i}"))
        else:
            ins.append(g.add_input(f"x{i}", x))
    node = g.add_node(op, ins, attrs or {}, outputs=outputs)
    g.outputs.extend(node.outputs)
    verify(g)
    return g, node


def _types(op: str, operands: list, attrs: dict | None = None, outputs: int = 1) -> list:
    """The inferred result shapes (``None`` for an unknown rank)."""
    return [v.type.shape for v in _node(op, operands, attrs, outputs)[1].outputs]


def _shape(op: str, operands: list, attrs: dict | None = None):
    return _types(op, operands, attrs)[0]


def _run(op: str, operands: list, attrs: dict | None = None, outputs: int = 1) -> list[np.ndarray]:
    """Run one node; arrays are graph inputs, ``C`` constants. Checks results fit their types."""
    g = Graph()
    ins, feed = [], {}
    for i, x in enumerate(operands):
        if x is None:
            ins.append(None)
        elif isinstance(x, C):
            ins.append(g.add_constant(x.array, f"c{i}"))
        else:
            x = np.asarray(x)
            ins.append(g.add_input(f"x{i}", TensorType.of(x)))
            feed[f"x{i}"] = x
    node = g.add_node(op, ins, attrs or {}, outputs=outputs)
    g.outputs.extend(node.outputs)
    got = run(g, feed)
    res = [got[v.name] for v in node.outputs]
    for v, r in zip(node.outputs, res, strict=True):
        assert v.type.accepts(r) is None, f"{v.type}: {v.type.accepts(r)}"
    return res


def _reference(op: str, operands: list[np.ndarray | None], attrs: dict | None = None,
               opset: int = 21) -> np.ndarray:
    """ONNX's reference evaluator on one node."""
    names = ["" if a is None else f"x{i}" for i, a in enumerate(operands)]
    while names and not names[-1]:
        names.pop()
    node = helper.make_node(op, names, ["y"], **(attrs or {}))
    ins = [helper.make_tensor_value_info(f"x{i}", helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for i, a in enumerate(operands) if a is not None]
    out = helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)
    graph = helper.make_graph([node], "g", ins, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    feed = {f"x{i}": a for i, a in enumerate(operands) if a is not None}
    return ReferenceEvaluator(model).run(None, feed)[0]


X = TensorType(F32, ("N", 3, 4, 5))


# ---- type rules with symbolic dims --------------------------------------------------------------
@pytest.mark.parametrize(("spec", "want"), [
    ([0, -1], ("N", 60)),
    ([-1, 60], ("N", 60)),
    ([0, 12, -1], ("N", 12, 5)),
    ([0, 0, -1], ("N", 3, 20)),
    ([-1, 20], ("3*N", 20)),   # what is left of the element count is a product dim
    ([2, -1], (2, "30*N")),
    ([0, 3, 4, 5, 1], ("N", 3, 4, 5, 1)),
])
def test_reshape_symbolic_batch(spec, want):
    assert _shape("Reshape", [X, C(spec)]) == want


def test_reshape_allowzero_and_static():
    assert _shape("Reshape", [TensorType(F32, (2, 0, 3)), C([0, 5])], {"allowzero": 1}) == (0, 5)
    assert _shape("Reshape", [TensorType(F32, (2, 3, 4)), C([4, -1])]) == (4, 6)
    assert _shape("Reshape", [TensorType(F32, (1, 1)), C([])]) == ()
    # an unknown dim copied by 0 cancels against itself
    assert _shape("Reshape", [TensorType(F32, (None, 3, 4)), C([0, -1])]) == (None, 12)


def test_reshape_non_constant_shape():
    assert _shape("Reshape", [X, TensorType(I64, (3,))]) == (None, None, None)
    assert _shape("Reshape", [X, TensorType(I64, ("K",))]) is None


@pytest.mark.parametrize(("spec", "allowzero", "message"), [
    ([5, 5], 0, "cannot reshape"),
    ([-1, -1], 0, "at most one -1"),
    ([0, -1], 1, "both 0 and -1"),
    ([7, -1], 0, "not a multiple"),
])
def test_reshape_errors(spec, allowzero, message):
    with pytest.raises(VerifyError, match=message):
        _shape("Reshape", [TensorType(F32, (2, 3, 4)), C(spec)], {"allowzero": allowzero})


def test_shape_of_symbolic_input():
    node = _node("Shape", [X])[1]
    assert node.output.type == TensorType(I64, (4,))
    assert _shape("Shape", [X], {"start": 1, "end": -1}) == (2,)
    assert _shape("Shape", [X], {"start": -10, "end": 10}) == (4,)
    assert _shape("Shape", [X], {"start": 3, "end": 1}) == (0,)
    assert _shape("Shape", [TensorType(F32, None)]) == (None,)
    assert list(_run("Shape", [np.zeros((2, 3, 4), np.float32)], {"start": -2})[0]) == [3, 4]


@pytest.mark.parametrize(("axis", "want"), [(1, ("N", 60)), (0, (1, None)), (2, (None, 20)),
                                            (-1, (None, 5)), (4, (None, 1))])
def test_flatten_symbolic(axis, want):
    assert _shape("Flatten", [X], {"axis": axis}) == want


def test_flatten_keeps_a_lone_named_dim():
    assert _shape("Flatten", [TensorType(F32, (1, "N", 1, 1))], {"axis": 2}) == ("N", 1)


def test_concat_along_symbolic_axis():
    assert _shape("Concat", [X, X], {"axis": 0}) == (None, 3, 4, 5)
    assert _shape("Concat", [X, TensorType(F32, (0, 3, 4, 5))], {"axis": 0}) == ("N", 3, 4, 5)
    assert _shape("Concat", [X, TensorType(F32, ("N", 2, 4, 5))], {"axis": 1}) == ("N", 5, 4, 5)
    y = TensorType(F32, (None, 3, None, 5))
    assert _shape("Concat", [X, y], {"axis": -1}) == ("N", 3, 4, 10)


def test_concat_errors():
    with pytest.raises(VerifyError, match="dim 2 of the operands differs"):
        _shape("Concat", [X, TensorType(F32, ("N", 3, 7, 5))], {"axis": 1})
    with pytest.raises(VerifyError, match="different element types"):
        _shape("Concat", [X, TensorType(DType.f16, ("N", 3, 4, 5))], {"axis": 1})
    with pytest.raises(VerifyError, match="different ranks"):
        _shape("Concat", [X, TensorType(F32, (3, 4, 5))], {"axis": 1})


def test_slice_types():
    big = 2**63 - 1
    assert _shape("Slice", [X, C([0]), C([big]), C([0])]) == ("N", 3, 4, 5)
    assert _shape("Slice", [X, C([1]), C([big]), C([0])]) == (None, 3, 4, 5)
    assert _shape("Slice", [X, C([1, -1]), C([big, -big]), C([1, 3]), C([1, -2])]) == ("N", 2, 4, 3)
    assert _shape("Slice", [X, C([-1]), C([-big]), C([0]), C([-1])]) == (None, 3, 4, 5)
    assert _shape("Slice", [X, C([0]), C([2]), C([-2])]) == ("N", 3, 2, 5)
    # non-constant bounds: the sliced axes become unknown, others stay
    i1 = TensorType(I64, (1,))
    assert _shape("Slice", [X, i1, i1, C([2])]) == ("N", 3, None, 5)
    assert _shape("Slice", [X, i1, i1]) == (None, 3, 4, 5)
    assert _shape("Slice", [X, C([0]), C([1]), TensorType(I64, (1,))]) == (None, None, None, None)
    with pytest.raises(VerifyError, match="repeat an axis"):
        _shape("Slice", [X, C([0, 0]), C([1, 1]), C([1, -3])])


def test_split_types():
    t = TensorType(F32, ("N", 7))
    assert _types("Split", [t], {"axis": 1, "num_outputs": 4}, 4) == [("N", 2)] * 3 + [("N", 1)]
    assert _types("Split", [t, C([3, 4])], {"axis": -1}, 2) == [("N", 3), ("N", 4)]
    assert _types("Split", [t], {"num_outputs": 2}, 2) == [(None, 7)] * 2
    with pytest.raises(VerifyError, match="would be -1"):
        _types("Split", [TensorType(F32, (5,))], {"num_outputs": 4}, 4)
    with pytest.raises(VerifyError, match="sum to 6"):
        _types("Split", [t, C([3, 3])], {"axis": 1}, 2)
    with pytest.raises(VerifyError, match="not both"):
        _types("Split", [t, C([3, 4])], {"axis": 1, "num_outputs": 2}, 2)


def test_squeeze_unsqueeze_types():
    t = TensorType(F32, ("N", 1, 4, 1))
    assert _shape("Squeeze", [t, C([1, -1])]) == ("N", 4)
    assert _shape("Squeeze", [t]) is None  # N might be 1
    assert _shape("Squeeze", [TensorType(F32, (1, 3, 1))]) == (3,)
    assert _shape("Squeeze", [t, TensorType(I64, (1,))]) == (None, None, None)
    with pytest.raises(VerifyError, match="size is 4, not 1"):
        _shape("Squeeze", [t, C([2])])
    assert _shape("Unsqueeze", [t, C([0, -1])]) == (1, "N", 1, 4, 1, 1)
    assert _shape("Unsqueeze", [TensorType(F32, ("N", 3)), C([2, 0])]) == (1, "N", 1, 3)
    assert _shape("Unsqueeze", [t, TensorType(I64, (2,))]) == (None,) * 6
    with pytest.raises(VerifyError, match="repeat an axis"):
        _shape("Unsqueeze", [t, C([0, -6])])


def test_transpose_gather_expand_pad_types():
    assert _shape("Transpose", [X]) == (5, 4, 3, "N")
    assert _shape("Transpose", [X], {"perm": (0, 2, 3, 1)}) == ("N", 4, 5, 3)
    with pytest.raises(VerifyError, match="not a permutation"):
        _shape("Transpose", [X], {"perm": (0, 1, 1, 2)})
    assert _shape("Gather", [X, TensorType(I64, ("B", 2))], {"axis": 2}) == ("N", 3, "B", 2, 5)
    assert _shape("Gather", [X, C(1)], {"axis": -1}) == ("N", 3, 4)
    assert _shape("Expand", [TensorType(F32, ("N", 1)), C([2, 1, 6])]) == (2, "N", 6)
    assert _shape("Expand", [TensorType(F32, ("N", 1)), TensorType(I64, (3,))]) == (None,) * 3
    with pytest.raises(VerifyError, match="cannot expand"):
        _shape("Expand", [TensorType(F32, (3, 2)), C([3, 4])])
    assert _shape("Pad", [X, C([0, 0, 1, 0, 0, 0, 2, -1])]) == ("N", 3, 7, 4)
    assert _shape("Pad", [X, C([1, 1]), None, C([-1])]) == ("N", 3, 4, 7)
    assert _shape("Pad", [X, C([1, 1]), None, C([0])]) == (None, 3, 4, 5)
    assert _shape("Pad", [X, TensorType(I64, (8,))]) == (None,) * 4
    with pytest.raises(VerifyError, match="2 numbers per padded axis"):
        _shape("Pad", [X, C([1, 1, 1])])


def test_constant_of_shape_cast_dropout_types():
    node = _node("ConstantOfShape", [C([2, 3])], {"value": np.array([7], np.int32)})[1]
    assert node.output.type == TensorType(DType.i32, (2, 3))
    assert _node("ConstantOfShape", [C([])])[1].output.type == TensorType(F32, ())
    assert _shape("ConstantOfShape", [TensorType(I64, (3,))]) == (None, None, None)
    assert _node("Cast", [X], {"to": 7})[1].output.type == TensorType(I64, X.shape)
    assert _node("Cast", [X], {"to": 16})[1].output.type.dtype is DType.bf16
    with pytest.raises(UnsupportedOpError, match="float8e4m3fn is not supported"):
        _node("Cast", [X], {"to": TensorProto.FLOAT8E4M3FN})
    outs = _node("Dropout", [X], {}, 2)[1].outputs
    assert [o.type for o in outs] == [X, TensorType(DType.bool, X.shape)]


def test_layout_ops_keep_per_tensor_quantization():
    q = QuantParams((0.5,), (3,))
    t = TensorType(DType.u8, ("N", 4, 4), q)
    assert _node("Reshape", [t, C([0, -1])])[1].output.type.quant == q
    assert _node("Transpose", [t])[1].output.type.quant == q
    per_channel = TensorType(DType.i8, (4, 4), QuantParams((0.5,) * 4, (0,) * 4, axis=0))
    assert _node("Transpose", [per_channel])[1].output.type.quant is None
    assert _node("Cast", [t], {"to": 1})[1].output.type.quant is None


def test_onnx_dtype_codes_match_onnx():
    for code, dtype in ONNX_DTYPE_CODES.items():
        assert ONNX_CODE_OF_DTYPE[dtype] == code
        if dtype not in (DType.i4, DType.u4, DType.str):
            assert np.dtype(helper.tensor_dtype_to_np_dtype(code)) == dtype.numpy, dtype


# ---- numerics -----------------------------------------------------------------------------------
def test_reshape_flatten_transpose_run():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(_run("Reshape", [x, C([0, -1])])[0], x.reshape(2, 12))
    np.testing.assert_array_equal(_run("Reshape", [x, np.array([4, 0, -1])])[0], x.reshape(4, 3, 2))
    z = np.zeros((0, 3), np.float32)
    assert _run("Reshape", [z, C([3, 0])], {"allowzero": 1})[0].shape == (3, 0)
    np.testing.assert_array_equal(_run("Flatten", [x], {"axis": -1})[0], x.reshape(6, 4))
    np.testing.assert_array_equal(_run("Flatten", [x], {"axis": 0})[0], x.reshape(1, 24))
    got = _run("Transpose", [x], {"perm": (1, 0, 2)})[0]
    np.testing.assert_array_equal(got, x.transpose(1, 0, 2))


def test_concat_split_run():
    a, b = np.ones((2, 3), np.int32), np.zeros((2, 0), np.int32)
    got = _run("Concat", [a, b, a], {"axis": -1})[0]
    np.testing.assert_array_equal(got, np.concatenate([a, b, a], 1))
    x = np.arange(7, dtype=np.float32)
    parts = _run("Split", [x], {"num_outputs": 4}, 4)
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3], [4, 5], [6]]
    parts = _run("Split", [x, np.array([3, 0, 4])], {}, 3)
    assert [p.shape for p in parts] == [(3,), (0,), (4,)]
    with pytest.raises(ExecutionError, match=r"do not fit: .*split sizes \[3, 3\] sum to 6, not to dim 0 = 7"):
        _run("Split", [x, np.array([3, 3])], {}, 2)


def test_gather_run():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    idx = np.array([[0, -1], [2, 1]])
    np.testing.assert_array_equal(_run("Gather", [x, idx], {"axis": 1})[0], np.take(x, idx, axis=1))
    np.testing.assert_array_equal(_run("Gather", [x, np.array(-1, np.int32)])[0], x[-1])
    with pytest.raises(ExecutionError, match=r"outside \[-3, 2\]"):
        _run("Gather", [x, np.array([3])])


def test_squeeze_unsqueeze_expand_constant_of_shape_run():
    x = np.arange(3, dtype=np.float32).reshape(1, 3, 1)
    assert _run("Squeeze", [x])[0].shape == (3,)
    assert _run("Squeeze", [x, np.array([-1])])[0].shape == (1, 3)
    with pytest.raises(ExecutionError, match=r"do not fit: .*cannot squeeze axis 1 of shape \[1, 3, 1\]: its size"):
        _run("Squeeze", [x, np.array([1])])
    assert _run("Unsqueeze", [x, np.array([4, 0])])[0].shape == (1, 1, 3, 1, 1)
    y = _run("Expand", [x, np.array([2, 1, 1, 4])])[0]
    np.testing.assert_array_equal(y, x * np.ones((2, 1, 1, 4), np.float32))
    assert _run("ConstantOfShape", [np.array([2, 0])])[0].dtype == np.float32
    got = _run("ConstantOfShape", [C([2])], {"value": np.array([5], np.int64)})[0]
    np.testing.assert_array_equal(got, [5, 5])


def test_cast_run():
    x = np.array([-9.7, -8.0, -0.5, 0.0, 0.5, 7.9, 8.0, np.nan], np.float32)
    assert _run("Cast", [x[:-1]], {"to": TensorProto.INT4})[0].tolist() == [7, -8, 0, 0, 0, 7, -8]
    assert _run("Cast", [x[:-1]], {"to": TensorProto.UINT4})[0].tolist() == [7, 8, 0, 0, 0, 7, 8]
    assert _run("Cast", [x[:-1]], {"to": TensorProto.INT32})[0].tolist() == [-9, -8, 0, 0, 0, 7, 8]
    wide = np.array([200, -1], np.int16)
    assert _run("Cast", [wide], {"to": TensorProto.INT8})[0].tolist() == [-56, -1]
    assert _run("Cast", [x], {"to": TensorProto.BOOL})[0].tolist() == [1, 1, 1, 0, 1, 1, 1, 1]
    s = np.array(["1.5", "-INF", "NaN", "1e-5"], dtype=object)
    got = _run("Cast", [s], {"to": TensorProto.FLOAT})[0]
    np.testing.assert_array_equal(got, np.array([1.5, -np.inf, np.nan, 1e-5], np.float32))
    bf = _run("Cast", [np.array([1.00390625, 3.0], np.float32)], {"to": TensorProto.BFLOAT16})[0]
    assert bf.dtype.name == "bfloat16" and bf.astype(np.float32).tolist() == [1.0, 3.0]


def test_identity_and_dropout_run():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(_run("Identity", [x])[0], x)
    y, mask = _run("Dropout", [x, np.array(0.3, np.float32)], {}, 2)
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == np.bool_ and mask.all()
    y, mask = _run("Dropout", [x, np.array(0.0, np.float32), np.array(True)], {}, 2)
    np.testing.assert_array_equal(y, x)
    # training mode with a seed reproduces ONNX's reference (numpy RandomState(seed))
    y, mask = _run("Dropout", [x, np.array(0.5, np.float32), np.array(True)], {"seed": 0}, 2)
    want = np.random.RandomState(0).uniform(0, 1, x.shape) >= 0.5
    np.testing.assert_array_equal(mask, want)
    np.testing.assert_allclose(y, x * want * 2)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes_match_reference(mode):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    pads = np.array([1, 2, 2, 1])
    got = _run("Pad", [x, pads, np.array(7.0, np.float32)], {"mode": mode})[0]
    want = _reference("Pad", [x, pads, np.array(7.0, np.float32)], {"mode": mode})
    np.testing.assert_array_equal(got, want)
    got = _run("Pad", [x, C([1, 2]), None, C([-1])], {"mode": mode})[0]
    np.testing.assert_array_equal(got, np.pad(x, [(0, 0), (1, 2)], mode=mode))


def test_pad_negative_pads_crop():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = _run("Pad", [x, C([-1, 1, 0, -2])])[0]
    np.testing.assert_array_equal(got, np.pad(x[1:, :2], [(0, 0), (1, 0)]))
    got = _run("Pad", [x, C([-1, 0, 0, 2])], {"mode": "edge"})[0]
    np.testing.assert_array_equal(got, np.pad(x[1:], [(0, 0), (0, 2)], mode="edge"))


def _ort(op: str, operands: list[np.ndarray], attrs: dict | None = None,
         opset: int = 21) -> np.ndarray:
    """onnxruntime on one node."""
    import onnxruntime as ort

    node = helper.make_node(op, [f"x{i}" for i in range(len(operands))], ["y"], **(attrs or {}))
    ins = [helper.make_tensor_value_info(f"x{i}", helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for i, a in enumerate(operands)]
    out = helper.make_tensor_value_info("y", ins[0].type.tensor_type.elem_type, None)
    model = helper.make_model(helper.make_graph([node], "g", ins, [out]),
                              opset_imports=[helper.make_opsetid("", opset)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {f"x{i}": a for i, a in enumerate(operands)})[0]


_BOUND = st.sampled_from([-(2**63), -(2**31), -9, -5, -4, -1, 0, 1, 3, 4, 5, 9, 2**31 - 2,
                          2**63 - 2])


@settings(max_examples=60, deadline=None)
@given(starts=st.tuples(_BOUND, _BOUND), ends=st.tuples(_BOUND, _BOUND),
       steps=st.tuples(st.sampled_from([-3, -1, 1, 2]), st.sampled_from([-2, -1, 1, 3])),
       axes=st.sampled_from([(0, 1), (1, 0), (-1, 0), (-2, -1)]))
def test_slice_matches_onnxruntime(starts, ends, steps, axes):
    # onnx.reference clamps a too-negative start with a negative step to -1 instead of 0 (the
    # spec's [0, dim-1]); onnxruntime follows the spec, so it is the oracle here
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    ops = [np.array(v, np.int64) for v in (starts, ends, axes, steps)]
    want = _ort("Slice", [x, *ops], opset=13)
    got = _run("Slice", [x, *(C(v) for v in ops)])[0]  # constant operands: exact inferred shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_run("Slice", [x, *ops])[0], want)


def test_slice_int_max_end_with_negative_step_follows_the_spec():
    # spec: end is clamped to [-1, dim-1], so INT_MAX means dim-1 (onnxruntime: "to the start")
    x = np.arange(5, dtype=np.float32)
    assert _run("Slice", [x, C([2]), C([2**63 - 1]), C([0]), C([-1])])[0].tolist() == []
    got = _run("Slice", [x, C([-1]), C([-(2**63)]), C([0]), C([-1])])[0]
    assert got.tolist() == [4, 3, 2, 1, 0]
    assert _run("Slice", [x, C([-100]), C([-100]), C([0]), C([-1])])[0].tolist() == [0]


def test_model_through_onnx_importer():
    """A reshape/transpose chain with a symbolic batch imports with exact symbolic types."""
    from cimc.onnx_io import import_model

    shape = onnx.numpy_helper.from_array(np.array([0, 4, -1], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Flatten", ["t"], ["y"], axis=1)]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 2, 6])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x_info], [y_info], [shape])
    g = import_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    assert [str(n.output.type) for n in g.nodes] == ["f32[B,4,3]", "f32[B,3,4]", "f32[B,12]"]
    x = np.arange(24, dtype=np.float32).reshape(2, 2, 6)
    want = x.reshape(2, 4, 3).transpose(0, 2, 1).reshape(2, 12)
    np.testing.assert_array_equal(run(g, {"x": x})["y"], want)
