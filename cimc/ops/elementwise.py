"""Built-in ops: elementwise arithmetic and activations (numpy broadcasting semantics).

Results keep the element type of the first operand (Pow: of the base): float constants are made
in the operand's type so numpy never promotes f32 to f64. Transcendental functions of f16/bf16
operands are computed in f32 and rounded once at the end. Integer ``Div`` truncates toward zero
(C semantics, as onnxruntime and ONNX's ``test_div_int32_trunc``); integer overflow wraps.
``Erf`` and ``Gelu`` use ``scipy.special`` erf/erfc when scipy is importable, libm (``math``) otherwise
(both correctly rounded to well under one f32 ulp).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from cimc.errors import VerifyError
from cimc.ir.opdef import AttrSpec, InferContext, define_op
from cimc.ir.types import TensorType
from cimc.ops._infer import broadcast_shapes, normalize_axis, require
from cimc.ops._values import arithmetic

__all__ = ["erf"]

_NUMERIC = "numeric"


def _check_dtype(ctx: InferContext, t: TensorType, kind: str, index: int = 0) -> None:
    ok = t.dtype.is_float if kind == "float" else (t.dtype.is_float or t.dtype.is_int)
    if not ok:
        raise VerifyError(f"node {ctx.node.name!r} ({ctx.node.op}): operand {index} has element type "
                          f"{t.dtype.value}, expected a {'float' if kind == 'float' else 'numeric'} type")


def _broadcast(ctx: InferContext) -> list[TensorType]:
    """Type rule: operands of one numeric element type, broadcast together."""
    types = [require(ctx, i) for i in range(len(ctx.types))]
    for i, t in enumerate(types):
        _check_dtype(ctx, t, _NUMERIC, i)
        if t.dtype is not types[0].dtype:
            raise VerifyError(f"node {ctx.node.name!r} ({ctx.node.op}): operand {i} has element type "
                              f"{t.dtype.value} but operand 0 has {types[0].dtype.value}; "
                              "insert a Cast so they agree")
    return [TensorType(types[0].dtype, broadcast_shapes(*(t.shape for t in types)))]


def _unary(kind: str = "float") -> Callable[[InferContext], list[TensorType]]:
    """Type rule: one result typed like operand 0, which must be of ``kind`` (float or numeric)."""

    def rule(ctx: InferContext) -> list[TensorType]:
        t = require(ctx, 0)
        _check_dtype(ctx, t, kind)
        return [TensorType(t.dtype, t.shape)]

    return rule


def _up(x: np.ndarray) -> np.ndarray:
    """``x`` in the type transcendental functions are computed in (f16/bf16 widen to f32)."""
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def _c(value: float, like: np.ndarray) -> np.ndarray:
    """A scalar constant in the element type of ``like``."""
    return np.asarray(value, like.dtype)


# ---- arithmetic ----------------------------------------------------------------------------


def spare_out(ctx, *operands: np.ndarray, dtype=None) -> np.ndarray | None:
    """An operand the op may overwrite (``ctx.spare``) that can hold its elementwise result: C-contiguous, of the
    operands' broadcast shape and of ``dtype`` (default: numpy's result type of the operands); else ``None``."""
    if not ctx.spare:
        return None
    shape = np.broadcast_shapes(*(x.shape for x in operands))
    want = np.result_type(*operands) if dtype is None else np.dtype(dtype)
    for i in ctx.spare:
        x = operands[i]
        if x.shape == shape and x.dtype == want and x.flags.c_contiguous:
            return x
    return None


@define_op("Add", inputs=2, infer=_broadcast, value=arithmetic)
def add(ctx, a, b):
    """a + b with broadcasting (into an operand that dies here, when the interpreter offers one)."""
    return np.asarray(np.add(a, b, out=spare_out(ctx, a, b)))


@define_op("Sub", inputs=2, infer=_broadcast, value=arithmetic)
def sub(ctx, a, b):
    """a - b with broadcasting."""
    return np.asarray(np.subtract(a, b))


@define_op("Mul", inputs=2, infer=_broadcast, value=arithmetic)
def mul(ctx, a, b):
    """a * b with broadcasting."""
    return np.asarray(np.multiply(a, b))


@define_op("Div", inputs=2, infer=_broadcast, value=arithmetic)
def div(ctx, a, b):
    """a / b with broadcasting; integers truncate toward zero (division by zero gives 0)."""
    if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(np.divide(a, b))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q, r = np.divmod(a, b)
        if a.dtype.kind == "i":  # floor -> trunc where the signs differ and the division is inexact
            q = q + ((r != 0) & ((a < 0) != (b < 0))).astype(q.dtype)
    return np.asarray(q, a.dtype)


def _pow_type(ctx: InferContext) -> list[TensorType]:
    base, exponent = require(ctx, 0), require(ctx, 1)
    _check_dtype(ctx, base, _NUMERIC, 0)
    _check_dtype(ctx, exponent, _NUMERIC, 1)
    return [TensorType(base.dtype, broadcast_shapes(base.shape, exponent.shape))]


@define_op("Pow", inputs=2, infer=_pow_type)
def pow_(ctx, x, y):
    """x ** y with broadcasting; the result has the base's element type (the exponent's may differ)."""
    with np.errstate(all="ignore"):
        if x.dtype.kind in "iu" and y.dtype.kind in "iu":
            exact = np.power(x.astype(np.int64), np.maximum(y, 0).astype(np.int64))
            frac = np.power(x.astype(np.float64), y.astype(np.float64))  # negative exponents
            out = np.where(y < 0, np.nan_to_num(frac, posinf=0, neginf=0).astype(np.int64), exact)
        elif x.dtype.kind in "iu":
            out = np.power(x.astype(np.float64), y.astype(np.float64))
        else:
            out = np.power(_up(x), y if y.dtype.kind in "iu" else y.astype(_up(x).dtype))
        return np.asarray(out).astype(x.dtype)


@define_op("Sum", inputs=(1, None), infer=_broadcast)
def sum_(ctx, *xs):
    """Elementwise sum of one or more operands, broadcast together (added left to right)."""
    return _variadic(np.add, xs)


@define_op("Max", inputs=(1, None), infer=_broadcast)
def max_(ctx, *xs):
    """Elementwise maximum of one or more operands, broadcast together (NaN propagates)."""
    return _variadic(np.maximum, xs)


@define_op("Min", inputs=(1, None), infer=_broadcast)
def min_(ctx, *xs):
    """Elementwise minimum of one or more operands, broadcast together (NaN propagates)."""
    return _variadic(np.minimum, xs)


def _variadic(fn: np.ufunc, xs: tuple[np.ndarray, ...]) -> np.ndarray:
    out = xs[0] if len(xs) > 1 else np.array(xs[0])
    for x in xs[1:]:
        out = fn(out, x)
    return np.asarray(out)


# ---- activations ---------------------------------------------------------------------------


@define_op("Relu", infer=_unary(_NUMERIC))
def relu(ctx, x):
    """max(x, 0)."""
    return np.maximum(x, np.zeros((), x.dtype))


@define_op("LeakyRelu", infer=_unary(), attrs={"alpha": AttrSpec("float", 0.01, "slope for x < 0")})
def leaky_relu(ctx, x):
    """x for x >= 0, alpha * x otherwise."""
    return np.where(x < 0, x * _c(ctx.attrs["alpha"], x), x)


def _clip_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    _check_dtype(ctx, t, _NUMERIC)
    for i in (1, 2):
        b = ctx.types[i] if i < len(ctx.types) else None
        if b is None:
            continue
        if b.dtype is not t.dtype:
            raise VerifyError(f"node {ctx.node.name!r} (Clip): bound operand {i} has element type "
                              f"{b.dtype.value}, expected {t.dtype.value} like the input")
        if b.shape is not None and not (len(b.shape) == 0 or (len(b.shape) == 1 and b.shape[0] in (1, None))):
            raise VerifyError(f"node {ctx.node.name!r} (Clip): bound operand {i} must be a scalar, "
                              f"found shape {list(b.shape)}")
    return [TensorType(t.dtype, t.shape)]


@define_op("Clip", inputs=(1, 3), infer=_clip_type)
def clip(ctx, x, lo=None, hi=None):
    """min(max(x, lo), hi) with optional scalar bounds; lo > hi gives hi everywhere."""
    out = x
    if lo is not None:
        out = np.maximum(out, np.asarray(lo, x.dtype).reshape(()))
    if hi is not None:
        out = np.minimum(out, np.asarray(hi, x.dtype).reshape(()))
    return np.array(out, x.dtype)


@define_op("Sqrt", infer=_unary())
def sqrt(ctx, x):
    """Square root (NaN for negative inputs)."""
    with np.errstate(invalid="ignore"):
        return np.sqrt(x)


def _sigmoid(u: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(u))  # never overflows
    one = _c(1, u)
    return np.where(u >= 0, one / (one + e), e / (one + e))


@define_op("Sigmoid", infer=_unary())
def sigmoid(ctx, x):
    """1 / (1 + exp(-x)), evaluated without overflow for large |x|."""
    return _sigmoid(_up(x)).astype(x.dtype)


@define_op("Tanh", infer=_unary())
def tanh(ctx, x):
    """Hyperbolic tangent."""
    return np.tanh(_up(x)).astype(x.dtype)


@define_op("HardSigmoid", infer=_unary(), attrs={"alpha": AttrSpec("float", 0.2, "slope"),
                                                  "beta": AttrSpec("float", 0.5, "offset")})
def hard_sigmoid(ctx, x):
    """max(0, min(1, alpha * x + beta))."""
    u = _up(x)
    y = u * _c(ctx.attrs["alpha"], u) + _c(ctx.attrs["beta"], u)
    return np.clip(y, _c(0, u), _c(1, u)).astype(x.dtype)


@define_op("HardSwish", infer=_unary())
def hard_swish(ctx, x):
    """x * max(0, min(1, x / 6 + 1/2))."""
    u = _up(x)
    return (u * np.clip(u * _c(1 / 6, u) + _c(0.5, u), _c(0, u), _c(1, u))).astype(x.dtype)


def _special(name: str, u: np.ndarray) -> np.ndarray:
    """``scipy.special.<name>`` (fast) if scipy is importable, else libm's ``math.<name>``."""
    try:
        import scipy.special as sc
        fn = getattr(sc, name)
    except ImportError:  # pragma: no cover - scipy is optional
        fn = np.frompyfunc(getattr(math, name), 1, 1)
    return np.asarray(fn(u), dtype=u.dtype)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function of a float array, in the array's element type."""
    return _special("erf", _up(x)).astype(x.dtype)


@define_op("Erf", infer=_unary())
def erf_op(ctx, x):
    """The Gauss error function."""
    return erf(x)


@define_op("Gelu", infer=_unary(), attrs={"approximate": AttrSpec("str", "none", "'none' or 'tanh'")},
           verify=lambda n: None if n.attrs.get("approximate", "none") in ("none", "tanh")
           else f"attribute approximate is {n.attrs['approximate']!r}, expected 'none' or 'tanh'")
def gelu(ctx, x):
    """x * Phi(x), exactly with erf or with the tanh approximation.

    Evaluated as ``x/2 * erfc(-x/sqrt2)`` and ``x * sigmoid(2 * inner)`` (the same functions as
    ONNX's ``x/2 * (1 + erf(x/sqrt2))`` and ``x/2 * (1 + tanh(inner))``) so the tail for large
    negative x does not cancel to 0.
    """
    u = _up(x)
    if ctx.attrs["approximate"] == "tanh":
        inner = _c(math.sqrt(2 / math.pi), u) * (u + _c(0.044715, u) * u * u * u)
        return (u * _sigmoid(inner + inner)).astype(x.dtype)
    return (_c(0.5, u) * u * _special("erfc", -u * _c(1 / math.sqrt(2), u))).astype(x.dtype)


def _softmax_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    _check_dtype(ctx, t, "float")
    if t.rank is not None:
        normalize_axis(ctx.attrs["axis"], max(t.rank, 1), f"Softmax axis (node {ctx.node.name!r})")
    return [TensorType(t.dtype, t.shape)]


@define_op("Softmax", infer=_softmax_type, attrs={"axis": AttrSpec("int", -1, "axis normalized over")})
def softmax(ctx, x):
    """exp(x) / sum(exp(x)) along ``axis`` (opset-13 form), shifted by the max for stability."""
    u = _up(x)
    axis = ctx.attrs["axis"] if x.ndim else None
    with np.errstate(invalid="ignore"):
        e = np.exp(u - np.max(u, axis=axis, keepdims=True))
        return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype)


