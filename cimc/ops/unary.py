"""Built-in ops: unary math functions and the pointwise activations not in ``elementwise``.

Each op maps every element on its own, so one numpy ufunc expression gives it. Float functions of
f16/bf16 operands are computed in f32 and rounded once to the operand type (as ``elementwise``
does); results keep the operand's element type, except the predicates ``IsNaN``/``IsInf`` (bool).
Integer ``Abs``/``Neg`` wrap like C (``Abs(INT_MIN) = INT_MIN``). ``Round`` rounds half to even.

Activations, with ONNX's defaults: ``Elu`` ``x<0: alpha*(e^x-1)``; ``Selu`` ``gamma*(x<=0:
alpha*(e^x-1), else x)``; ``Celu`` ``max(0,x) + min(0, alpha*(e^(x/alpha)-1))``; ``ThresholdedRelu``
``x>alpha: x, else 0``; ``Softplus`` ``log(1+e^x)`` (as ``logaddexp(x, 0)``, no overflow);
``Softsign`` ``x/(1+|x|)``; ``Mish`` ``x*tanh(softplus(x))``; ``Swish`` ``x*sigmoid(alpha*x)``;
``Shrink`` ``x<-lambd: x+bias; x>lambd: x-bias; else 0`` (any numeric type). Also ``Det`` (the
determinant of each square matrix in the last two dims) and ``BitCast`` (the same bits as another
type of the same width).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cimc.errors import VerifyError
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, define_op
from cimc.ir.types import DType, TensorType, dtype_from_onnx_code
from cimc.ops._infer import require

__all__ = ["FLOAT_FUNCTIONS"]


def _check(ctx: InferContext, ok: Callable[[DType], bool], what: str) -> TensorType:
    t = require(ctx, 0)
    if not ok(t.dtype):
        raise VerifyError(f"node {ctx.node.name!r} ({ctx.node.op}): operand 0 has element type {t.dtype.value}, "
                          f"expected {what}")
    return t


def _same(ok: Callable[[DType], bool], what: str) -> Callable[[InferContext], list[TensorType]]:
    def rule(ctx: InferContext) -> list[TensorType]:
        t = _check(ctx, ok, what)
        return [TensorType(t.dtype, t.shape)]

    return rule


def _is_float(d: DType) -> bool:
    return d.is_float


def _is_numeric(d: DType) -> bool:
    return d.is_float or d.is_int


def _is_signed(d: DType) -> bool:
    return d.is_float or d.value.startswith("i")


_FLOAT = _same(_is_float, "a float type")
_NUMERIC = _same(_is_numeric, "a numeric type")


def _up(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def _c(value: float, like: np.ndarray) -> np.ndarray:
    return np.asarray(value, like.dtype)


def _float_op(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    def impl(ctx, x):
        with np.errstate(all="ignore"):
            return np.asarray(fn(_up(x))).astype(x.dtype, copy=False)

    return impl


FLOAT_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Exp": np.exp, "Log": np.log, "Reciprocal": lambda u: _c(1, u) / u,
    "Sin": np.sin, "Cos": np.cos, "Tan": np.tan, "Asin": np.arcsin, "Acos": np.arccos, "Atan": np.arctan,
    "Sinh": np.sinh, "Cosh": np.cosh, "Asinh": np.arcsinh, "Acosh": np.arccosh, "Atanh": np.arctanh,
    "Ceil": np.ceil, "Floor": np.floor, "Round": np.round,
    "Softsign": lambda u: u / (_c(1, u) + np.abs(u)),
    "Softplus": lambda u: np.logaddexp(u, _c(0, u)),
    "Mish": lambda u: u * np.tanh(np.logaddexp(u, _c(0, u))),
}
"""The float-only elementwise functions, by op name (computed in at least f32)."""

for _name, _fn in FLOAT_FUNCTIONS.items():
    define_op(_name, infer=_FLOAT, doc=f"Elementwise {_name} of a float tensor.")(_float_op(_fn))


@define_op("Abs", infer=_NUMERIC)
def abs_(ctx, x):
    """|x| (integers wrap: the most negative value stays itself)."""
    return np.abs(x) if x.dtype.kind != "u" else np.array(x)


@define_op("Neg", infer=_same(_is_signed, "a signed numeric type"))
def neg(ctx, x):
    """-x (integers wrap)."""
    with np.errstate(over="ignore"):
        return np.negative(x)


@define_op("Sign", infer=_NUMERIC)
def sign(ctx, x):
    """-1, 0 or 1 by the sign of x, in x's type (NaN stays NaN)."""
    return np.sign(x).astype(x.dtype, copy=False)


def _predicate(ctx: InferContext) -> list[TensorType]:
    t = _check(ctx, _is_float, "a float type")
    return [TensorType(DType.bool, t.shape)]


@define_op("IsNaN", infer=_predicate)
def is_nan(ctx, x):
    """Whether each element is NaN."""
    return np.isnan(_up(x))


@define_op("IsInf", infer=_predicate, attrs={
    "detect_negative": AttrSpec("int", 1, "1: -inf counts"),
    "detect_positive": AttrSpec("int", 1, "1: +inf counts")})
def is_inf(ctx, x):
    """Whether each element is an infinity of a detected sign."""
    u = _up(x)
    neg_, pos = bool(ctx.attrs["detect_negative"]), bool(ctx.attrs["detect_positive"])
    return (np.isneginf(u) & neg_) | (np.isposinf(u) & pos)


def _elu(u: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(u < 0, _c(alpha, u) * np.expm1(np.minimum(u, _c(0, u))), u)


@define_op("Elu", infer=_FLOAT, attrs={"alpha": AttrSpec("float", 1.0, "scale of the negative part")})
def elu(ctx, x):
    """x for x >= 0, alpha * (exp(x) - 1) otherwise."""
    return _elu(_up(x), ctx.attrs["alpha"]).astype(x.dtype, copy=False)


@define_op("Selu", infer=_FLOAT, attrs={
    "alpha": AttrSpec("float", 1.67326319217681884765625, "scale of the negative part"),
    "gamma": AttrSpec("float", 1.05070102214813232421875, "scale of the result")})
def selu(ctx, x):
    """gamma * (x for x > 0, alpha * (exp(x) - 1) otherwise)."""
    u = _up(x)
    y = np.where(u > 0, u, _c(ctx.attrs["alpha"], u) * np.expm1(np.minimum(u, _c(0, u))))
    return (_c(ctx.attrs["gamma"], u) * y).astype(x.dtype, copy=False)


@define_op("Celu", infer=_FLOAT, attrs={"alpha": AttrSpec("float", 1.0, "scale of the negative part")})
def celu(ctx, x):
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1))."""
    u, alpha = _up(x), ctx.attrs["alpha"]
    if alpha == 0:
        raise VerifyError(f"Celu node {ctx.node_name!r}: alpha must not be 0")
    neg_part = _c(alpha, u) * np.expm1(np.minimum(u, _c(0, u)) / _c(alpha, u))
    return (np.maximum(u, _c(0, u)) + np.minimum(neg_part, _c(0, u))).astype(x.dtype, copy=False)


@define_op("ThresholdedRelu", infer=_FLOAT, attrs={"alpha": AttrSpec("float", 1.0, "threshold")})
def thresholded_relu(ctx, x):
    """x for x > alpha, 0 otherwise."""
    return np.where(x > _c(ctx.attrs["alpha"], x), x, _c(0, x))


@define_op("Swish", infer=_FLOAT, attrs={"alpha": AttrSpec("float", 1.0, "slope inside the sigmoid")})
def swish(ctx, x):
    """x * sigmoid(alpha * x)."""
    u = _up(x)
    v = _c(ctx.attrs["alpha"], u) * u
    with np.errstate(over="ignore"):
        return (u * (_c(0.5, u) * (np.tanh(_c(0.5, u) * v) + _c(1, u)))).astype(x.dtype, copy=False)


@define_op("Shrink", infer=_NUMERIC, attrs={"bias": AttrSpec("float", 0.0, "moved toward zero by this"),
                                            "lambd": AttrSpec("float", 0.5, "half-width of the zero band")})
def shrink(ctx, x):
    """x + bias below -lambd, x - bias above lambd, 0 in between."""
    lambd, bias = ctx.attrs["lambd"], ctx.attrs["bias"]
    u = x.astype(np.float64)
    y = np.where(u < -lambd, u + bias, np.where(u > lambd, u - bias, 0.0))
    return y.astype(x.dtype)


def _det_type(ctx: InferContext) -> list[TensorType]:
    t = _check(ctx, _is_float, "a float type")
    if t.shape is not None and len(t.shape) < 2:
        raise VerifyError(f"node {ctx.node.name!r} (Det): X must have rank >= 2, is {t}")
    return [TensorType(t.dtype, None if t.shape is None else t.shape[:-2])]


@define_op("Det", infer=_det_type)
def det(ctx, x):
    """The determinants of the square matrices in the last two dims (LU in float64)."""
    return np.asarray(np.linalg.det(x.astype(np.float64))).astype(x.dtype)


def _bitcast_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    to = dtype_from_onnx_code(ctx.attrs["to"], f"node {ctx.node.name!r} (BitCast)")
    if to.numpy.itemsize != t.dtype.numpy.itemsize or DType.str in (to, t.dtype) or \
            DType.i4 in (to, t.dtype) or DType.u4 in (to, t.dtype):
        raise VerifyError(f"node {ctx.node.name!r} (BitCast): {t.dtype.value} and {to.value} differ in width")
    return [TensorType(to, t.shape)]


@define_op("BitCast", infer=_bitcast_type,
           attrs={"to": AttrSpec("int", REQUIRED, "ONNX element-type code of the result (same bit width)")})
def bitcast(ctx, x):
    """The same bits read as another element type of the same width (little endian)."""
    return np.array(x, order="C").view(dtype_from_onnx_code(ctx.attrs["to"]).numpy)
