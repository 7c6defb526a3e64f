"""Elementwise, reduce and quantization ops: type rules (with symbolic dims) and numerics.

Numerics are compared with numpy formulas and with onnxruntime running the same single node.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper

from cimc.errors import UnsupportedOpError, VerifyError
from cimc.interpreter import run
from cimc.ir.core import Graph
from cimc.ir.types import DType, TensorType
from cimc.ir.verifier import verify
from cimc.ops.elementwise import erf

F32 = DType.f32


def _typed(op: str, types: list[TensorType | None], attrs: dict | None = None,
           consts: dict[int, np.ndarray] | None = None) -> TensorType:
    """The inferred result type of one ``op`` node over inputs of ``types`` (or constants)."""
    g = Graph()
    ins = []
    for i, t in enumerate(types):
        if consts and i in consts:
            ins.append(g.add_constant(consts[i], f"c{i}"))
        else:
            ins.append(None if t is None else g.add_input(f"x{i}", t))
    return g.add_node(op, ins, attrs or {}).outputs[0].type


def _run(op: str, arrays: list[np.ndarray | None], attrs: dict | None = None,
         types: dict[int, TensorType] | None = None) -> np.ndarray:
    """Run one ``op`` node on ``arrays`` (graph inputs typed by ``types`` or exactly; ``None`` = absent)."""
    g = Graph()
    ins = [None if a is None else g.add_input(f"x{i}", (types or {}).get(i) or TensorType.of(a))
           for i, a in enumerate(arrays)]
    node = g.add_node(op, ins, attrs or {})
    g.outputs.append(node.outputs[0])
    verify(g)
    out = run(g, {f"x{i}": a for i, a in enumerate(arrays) if a is not None})[node.outputs[0].name]
    assert node.outputs[0].type.accepts(out) is None, node.outputs[0].type.accepts(out)
    return out


def _ort(op: str, arrays: list[np.ndarray | None], attrs: dict | None, out: np.dtype,
         opset: int = 21) -> np.ndarray:
    """Run one ``op`` node on ``arrays`` in onnxruntime; its result has element type ``out``."""
    import onnxruntime as ort

    names = ["" if a is None else f"x{i}" for i, a in enumerate(arrays)]
    while names and not names[-1]:
        names.pop()
    node = helper.make_node(op, names, ["y"], **(attrs or {}))
    inputs = [helper.make_tensor_value_info(f"x{i}", helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for i, a in enumerate(arrays) if a is not None]
    result = helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(out), None)
    graph = helper.make_graph([node], "g", inputs, [result])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {f"x{i}": a for i, a in enumerate(arrays) if a is not None})[0]


# ---- type rules ----------------------------------------------------------------------------


@pytest.mark.parametrize("a, b, want", [
    (("N", 3), (3,), ("N", 3)),
    (("N", 1), (1, "M"), ("N", "M")),
    (("N", 4), ("N", 1), ("N", 4)),
    (("N",), ("M",), (None,)),
    ((2, None), (1, 5), (2, 5)),
    ((), ("B", 7), ("B", 7)),
])
def test_broadcast_types_carry_symbolic_dims(a, b, want) -> None:
    for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum"):
        assert _typed(op, [TensorType(F32, a), TensorType(F32, b)]) == TensorType(F32, want)


def test_variadic_and_unknown_rank() -> None:
    t = _typed("Sum", [TensorType(F32, ("N", 1)), TensorType(F32, (1, 8)), TensorType(F32, (8,))])
    assert t.shape == ("N", 8)
    assert _typed("Max", [TensorType(F32, ("N",))]).shape == ("N",)
    assert _typed("Add", [TensorType(F32, None), TensorType(F32, (3,))]).shape is None


def test_broadcast_type_errors() -> None:
    with pytest.raises(VerifyError, match="do not broadcast"):
        _typed("Add", [TensorType(F32, (2, 3)), TensorType(F32, (4,))])
    with pytest.raises(VerifyError, match="insert a Cast"):
        _typed("Mul", [TensorType(F32, (3,)), TensorType(DType.i32, (3,))])
    with pytest.raises(VerifyError, match="numeric"):
        _typed("Add", [TensorType(DType.bool, (3,)), TensorType(DType.bool, (3,))])


def test_pow_result_has_base_type() -> None:
    t = _typed("Pow", [TensorType(DType.i64, ("N", 3)), TensorType(F32, (3,))])
    assert t == TensorType(DType.i64, ("N", 3))


@pytest.mark.parametrize("op", ["Sqrt", "Erf", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid",
                                "HardSwish", "Gelu", "Softmax"])
def test_float_unary_types(op: str) -> None:
    assert _typed(op, [TensorType(DType.f16, ("N", "C", 7))]) == TensorType(DType.f16, ("N", "C", 7))
    with pytest.raises(VerifyError, match="expected a float type"):
        _typed(op, [TensorType(DType.i32, (3,))])


def test_softmax_and_clip_type_errors() -> None:
    with pytest.raises(VerifyError, match="out of range"):
        _typed("Softmax", [TensorType(F32, ("N", 4))], {"axis": 2})
    assert _typed("Clip", [TensorType(DType.i8, ("N",)), None, TensorType(DType.i8, ())]).shape == ("N",)
    with pytest.raises(VerifyError, match="bound operand 1"):
        _typed("Clip", [TensorType(F32, ("N",)), TensorType(DType.f64, ())])
    with pytest.raises(VerifyError, match="must be a scalar"):
        _typed("Clip", [TensorType(F32, ("N",)), TensorType(F32, (3,))])


def test_gelu_checks_approximate() -> None:
    g = Graph()
    n = g.add_node("Gelu", [g.add_input("x", TensorType(F32, (2,)))], {"approximate": "fast"})
    g.outputs.append(n.outputs[0])
    with pytest.raises(VerifyError, match="approximate"):
        verify(g)


@pytest.mark.parametrize("axes, keepdims, noop, want", [
    ([1], 1, 0, ("N", 1, "W")),
    ([1], 0, 0, ("N", "W")),
    ([-1, 0], 0, 0, ("C",)),
    (None, 1, 0, (1, 1, 1)),
    (None, 0, 0, ()),
    ([], 1, 1, ("N", "C", "W")),
    (None, 0, 1, ("N", "C", "W")),
])
def test_reduce_types_with_constant_axes(axes, keepdims, noop, want) -> None:
    types = [TensorType(F32, ("N", "C", "W")), None if axes is None else TensorType(DType.i64, (len(axes),))]
    consts = None if axes is None else {1: np.asarray(axes, np.int64)}
    for op in ("ReduceSum", "ReduceMean"):
        t = _typed(op, types, {"keepdims": keepdims, "noop_with_empty_axes": noop}, consts)
        assert t == TensorType(F32, want)


def test_reduce_types_with_runtime_axes() -> None:
    x, axes = TensorType(F32, ("N", 1, 5)), TensorType(DType.i64, (2,))
    assert _typed("ReduceSum", [x, axes]).shape == (None, 1, None)
    assert _typed("ReduceSum", [x, axes], {"keepdims": 0}).shape == (None,)
    assert _typed("ReduceMean", [x, TensorType(DType.i64, ("K",))], {"keepdims": 0}).shape is None
    with pytest.raises(VerifyError, match="1-D i64"):
        _typed("ReduceSum", [x, TensorType(DType.i32, (1,))])
    with pytest.raises(VerifyError, match="out of range"):
        _typed("ReduceSum", [x, axes], consts={1: np.asarray([3], np.int64)})


def test_quantize_types() -> None:
    x, s = TensorType(F32, ("N", 4)), TensorType(F32, ())
    assert _typed("QuantizeLinear", [x, s]) == TensorType(DType.u8, ("N", 4))
    assert _typed("QuantizeLinear", [x, s, TensorType(DType.i8, ())]).dtype is DType.i8
    assert _typed("QuantizeLinear", [x, s], {"output_dtype": TensorProto.INT16}).dtype is DType.i16
    assert _typed("QuantizeLinear", [x, s], {"output_dtype": TensorProto.INT4}).dtype is DType.i4
    per_axis = TensorType(F32, (4,))
    assert _typed("QuantizeLinear", [x, per_axis], {"axis": 1}).shape == ("N", 4)
    with pytest.raises(VerifyError, match="per-axis scale has shape"):
        _typed("QuantizeLinear", [x, TensorType(F32, (3,))], {"axis": 1})
    blocked = TensorType(F32, ("N", 2))
    assert _typed("QuantizeLinear", [x, blocked], {"axis": 1, "block_size": 3}).shape == ("N", 4)
    with pytest.raises(VerifyError, match="blocked scale"):
        _typed("QuantizeLinear", [x, TensorType(F32, ("N", 3))], {"axis": 1, "block_size": 3})
    with pytest.raises(VerifyError, match="must agree"):
        _typed("QuantizeLinear", [x, s, TensorType(DType.u8, ())], {"output_dtype": TensorProto.INT8})
    with pytest.raises(UnsupportedOpError, match="float8e4m3fn"):
        _typed("QuantizeLinear", [x, s], {"output_dtype": TensorProto.FLOAT8E4M3FN})


def test_dequantize_types() -> None:
    x = TensorType(DType.i8, ("N", 3))
    assert _typed("DequantizeLinear", [x, TensorType(DType.f16, ())]) == TensorType(DType.f16, ("N", 3))
    assert _typed("DequantizeLinear", [x, TensorType(F32, (3,))], {"output_dtype": TensorProto.BFLOAT16}
                  ).dtype is DType.bf16
    with pytest.raises(VerifyError, match="zero point has element type"):
        _typed("DequantizeLinear", [x, TensorType(F32, ()), TensorType(DType.u8, ())])
    with pytest.raises(VerifyError, match="input has element type"):
        _typed("DequantizeLinear", [TensorType(F32, (3,)), TensorType(F32, ())])


def test_int4_quantize_needs_output_dtype() -> None:
    g = Graph()
    x, s, z = (g.add_input("x", TensorType(F32, (4,))), g.add_input("s", TensorType(F32, ())),
               g.add_input("z", TensorType(DType.i4, ())))
    g.outputs.append(g.add_node("QuantizeLinear", [x, s, z]).outputs[0])
    with pytest.raises(VerifyError, match="output_dtype=22"):
        verify(g)


# ---- numerics ------------------------------------------------------------------------------

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 4, 5)).astype(np.float32) * 3


@pytest.mark.parametrize("op, attrs, ref", [
    ("Sqrt", {}, lambda x: np.sqrt(np.abs(x))),
    ("Sigmoid", {}, lambda x: 1 / (1 + np.exp(-x))),
    ("Tanh", {}, np.tanh),
    ("Relu", {}, lambda x: np.maximum(x, 0)),
    ("LeakyRelu", {"alpha": 0.1}, lambda x: np.where(x < 0, 0.1 * x, x)),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, lambda x: np.clip(0.3 * x + 0.4, 0, 1)),
    ("HardSwish", {}, lambda x: x * np.clip(x / 6 + 0.5, 0, 1)),
    ("Erf", {}, np.vectorize(math.erf)),
    ("Gelu", {}, lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))),
    ("Gelu", {"approximate": "tanh"},
     lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))),
    ("Softmax", {"axis": 1}, lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)),
])
def test_float_ops_match_formula_and_keep_dtype(op, attrs, ref) -> None:
    x = np.abs(X) if op == "Sqrt" else X
    for dtype, rtol in ((np.float32, 1e-6), (np.float64, 1e-12), (np.float16, 2e-3)):
        got = _run(op, [x.astype(dtype)], attrs)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref(x.astype(np.float64)), rtol=rtol, atol=rtol)


def test_stable_for_extreme_inputs() -> None:
    x = np.array([-1e4, -100.0, 0.0, 100.0, 1e4], np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        np.testing.assert_allclose(_run("Sigmoid", [x]), [0, 0, 0.5, 1, 1], atol=1e-40)
        np.testing.assert_allclose(_run("Softmax", [x]), [0, 0, 0, 0, 1])


def test_erf_accuracy() -> None:
    x = np.concatenate([np.linspace(-6, 6, 2001), [1e-30, -1e-8, 0.0]])
    want = np.vectorize(math.erf)(x)
    np.testing.assert_allclose(erf(x), want, rtol=1e-15, atol=0)
    np.testing.assert_allclose(erf(x.astype(np.float32)), want.astype(np.float32), rtol=1.2e-7, atol=0)


@pytest.mark.parametrize("op, arrays, attrs", [
    ("Div", [np.array([-7, 7, -7, 7, -6, 5], np.int32), np.array([2, 2, -2, -2, 3, 7], np.int32)], {}),
    ("Div", [np.array([-128, 100, -5], np.int8), np.array([-1, -3, 4], np.int8)], {}),
    ("Div", [np.array([200, 7], np.uint8), np.array([3, 2], np.uint8)], {}),
    ("Pow", [np.array([2, -3, 4, 5], np.int32), np.array([0.5, 3, 2.5, 1], np.float32)], {}),
    ("Pow", [np.array([1.5, -2.0, 3.0], np.float32), np.array([2, 3, -1], np.int64)], {}),
    ("Pow", [np.array([2, -3, 1, 7], np.int64), np.array([10, 3, -2, 0], np.int64)], {}),
    ("Clip", [np.array([-100, -3, 0, 9, 120], np.int8), np.array(-5, np.int8), None], {}),
    ("Clip", [X, np.array(-1, np.float32), np.array(0.5, np.float32)], {}),
    ("Clip", [X, np.array(1, np.float32), np.array(-1, np.float32)], {}),
    ("Max", [X[0], X[1, :1], X[2, 0]], {}),
    ("Min", [np.array([[1, 9]], np.uint32), np.array([[3], [0]], np.uint32)], {}),
    ("Sum", [X[0], X[1], X[2, 0]], {}),
    ("Sub", [np.array([0, 5], np.uint8), np.array([1, 6], np.uint8)], {}),
    ("ReduceMean", [np.array([[-3, 0, 5], [3, 1, -8]], np.int32), np.array([1], np.int64)], {"keepdims": 0}),
    ("ReduceMean", [X.astype(np.float16), np.array([0, 2], np.int64)], {}),
    ("ReduceSum", [X, np.array([-1], np.int64)], {"keepdims": 0}),
    ("ReduceSum", [X, np.zeros(0, np.int64)], {"noop_with_empty_axes": 1}),
    ("QuantizeLinear", [np.array([0.5, 1.5, 2.5, -0.5, -1.5, 300, -300, 3.49], np.float32),
                        np.array(1, np.float32), np.array(3, np.int8)], {}),
    ("QuantizeLinear", [X[0], np.array([0.1, 0.2, 0.3, 0.4], np.float32),
                        np.array([0, 10, 128, 255], np.uint8)], {"axis": 0}),
    ("QuantizeLinear", [X[0] * 1000, np.array([[0.5, 2.0], [1, 3], [4, 5], [0.1, 0.2]], np.float32)],
     {"axis": 1, "block_size": 3, "output_dtype": TensorProto.INT16}),
    ("DequantizeLinear", [np.array([[0, 255, 7], [128, 1, 2]], np.uint8), np.array([0.5, 2], np.float32),
                          np.array([128, 3], np.uint8)], {"axis": 0}),
    ("DequantizeLinear", [np.array([-2**31, 5, 2**31 - 1], np.int32), np.array(0.25, np.float32)], {}),
    ("DequantizeLinear", [np.array([[-128, 5, 127, 0]], np.int8), np.array([[0.5, 2]], np.float32),
                          np.array([[1, -1]], np.int8)], {"axis": 1, "block_size": 2}),
])
def test_matches_onnxruntime(op, arrays, attrs) -> None:
    got = _run(op, arrays, attrs)
    want = _ort(op, arrays, attrs, got.dtype)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=1e-3 if
                               got.dtype == np.float16 else 1e-6, atol=1e-6)


def test_quantize_int4_saturates_to_4_bits() -> None:
    x = np.array([-100, -8.4, 0.5, 1.5, 6.6, 100], np.float32)
    got = _run("QuantizeLinear", [x, np.array(1, np.float32), np.array(1, np.int8)],
               {"output_dtype": TensorProto.INT4}, types={2: TensorType(DType.i4, ())})
    np.testing.assert_array_equal(got, [-8, -7, 1, 3, 7, 7])
    assert got.dtype == np.int8
    got = _run("QuantizeLinear", [x, np.array(2, np.float32)], {"output_dtype": TensorProto.UINT4})
    np.testing.assert_array_equal(got, [0, 0, 0, 1, 3, 15])


def test_quantize_precision_and_half_scale() -> None:
    x = np.array([1.0, 2.0, 1000.0], np.float32)
    s = np.array(1 / 3, np.float16)  # the division runs in f16 unless precision says otherwise
    f16 = _run("QuantizeLinear", [x, s], {"output_dtype": TensorProto.UINT16})
    f32 = _run("QuantizeLinear", [x, s], {"output_dtype": TensorProto.UINT16, "precision": TensorProto.FLOAT})
    np.testing.assert_array_equal(f16, np.rint(x.astype(np.float16) / s).astype(np.uint16))
    np.testing.assert_array_equal(f32, np.rint(x / s.astype(np.float32)).astype(np.uint16))


def test_float_results_keep_float32() -> None:
    x = X.astype(np.float32)
    q, s = np.array([1], np.uint8), np.array(0.5, np.float32)
    for op, arrays in [("Add", [x, x]), ("Div", [x, x + 100]), ("Pow", [np.abs(x), np.array(2.0)]),
                       ("ReduceMean", [x]), ("DequantizeLinear", [q, s])]:
        assert _run(op, arrays).dtype == np.float32, op
