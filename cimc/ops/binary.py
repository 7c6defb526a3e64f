"""Built-in ops: comparison, logic, bitwise and the other broadcasting ops beyond plain arithmetic.

All broadcast their operands numpy-style (multidirectionally; ``PRelu``'s slope broadcasts to X).
Comparisons (``Equal`` also on strings and bools) and logic ops give bool; ``Where`` picks from X
or Y by a bool condition. ``Mod`` with ``fmod=0`` takes the divisor's sign (integers only, as the
spec requires) and with ``fmod=1`` the dividend's (C ``fmod``); an integer modulo by 0 gives 0.
``BitShift`` shifts integers (signed ones arithmetically to the right; a shift out of ``[0, width)``
leaves the sign fill). ``Mean`` sums
in the operand type then divides once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cimc.errors import VerifyError
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, define_op
from cimc.ir.types import DType, ShapeValue, TensorType
from cimc.ops._infer import broadcast_shapes, require
from cimc.ops._values import broadcast_values, compare_equal

Rule = Callable[[InferContext], list[TensorType]]


def _where(ctx: InferContext) -> str:
    return f"node {ctx.node.name!r} ({ctx.node.op})"


def _operands(ctx: InferContext, ok: Callable[[DType], bool], what: str) -> list[TensorType]:
    types = [require(ctx, i) for i in range(len(ctx.types))]
    for i, t in enumerate(types):
        if not ok(t.dtype):
            raise VerifyError(f"{_where(ctx)}: operand {i} has element type {t.dtype.value}, expected {what}")
        if t.dtype is not types[0].dtype:
            raise VerifyError(f"{_where(ctx)}: operand {i} has element type {t.dtype.value} but operand 0 has "
                              f"{types[0].dtype.value}; insert a Cast so they agree")
    return types


def _rule(ok: Callable[[DType], bool], what: str, result: DType | None = None) -> Rule:
    """Type rule: operands of one element type accepted by ``ok``, broadcast; the result is of type
    ``result`` (bool for comparisons) or the operands'."""

    def rule(ctx: InferContext) -> list[TensorType]:
        types = _operands(ctx, ok, what)
        return [TensorType(result or types[0].dtype, broadcast_shapes(*(t.shape for t in types)))]

    return rule


def _numeric(d: DType) -> bool:
    return d.is_float or d.is_int


def _any_value(d: DType) -> bool:
    return True


def _boolean(d: DType) -> bool:
    return d is DType.bool


def _integer(d: DType) -> bool:
    return d.is_int


_COMPARISONS: dict[str, tuple[Callable[..., np.ndarray], Callable[[DType], bool], str]] = {
    "Equal": (np.equal, _any_value, "any type"),
    "Less": (np.less, _numeric, "a numeric type"),
    "Greater": (np.greater, _numeric, "a numeric type"),
    "LessOrEqual": (np.less_equal, _numeric, "a numeric type"),
    "GreaterOrEqual": (np.greater_equal, _numeric, "a numeric type"),
    "And": (np.logical_and, _boolean, "bool"),
    "Or": (np.logical_or, _boolean, "bool"),
    "Xor": (np.logical_xor, _boolean, "bool"),
}

_BITWISE: dict[str, Callable[..., np.ndarray]] = {
    "BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or, "BitwiseXor": np.bitwise_xor,
}


def _to_bool(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def impl(ctx, a, b):
        return np.asarray(fn(a, b), dtype=bool)

    return impl


def _same_type(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def impl(ctx, a, b):
        return np.asarray(fn(a, b)).astype(a.dtype, copy=False)

    return impl


for _name, (_fn, _ok, _what) in _COMPARISONS.items():
    define_op(_name, inputs=2, infer=_rule(_ok, _what, DType.bool),
              value=compare_equal if _name == "Equal" else None,
              doc=f"Elementwise {_name} with broadcasting; a bool result.")(_to_bool(_fn))

for _name, _fn in _BITWISE.items():
    define_op(_name, inputs=2, infer=_rule(_integer, "an integer type"),
              doc=f"Elementwise {_name} of integers with broadcasting.")(_same_type(_fn))


@define_op("Not", infer=_rule(_boolean, "bool", DType.bool))
def not_(ctx, x):
    """Logical negation."""
    return np.logical_not(x)


@define_op("BitwiseNot", infer=_rule(_integer, "an integer type"))
def bitwise_not(ctx, x):
    """Bitwise complement."""
    return np.invert(x)


@define_op("BitShift", inputs=2, infer=_rule(_integer, "an integer type"),
           attrs={"direction": AttrSpec("str", REQUIRED, "LEFT or RIGHT")},
           verify=lambda n: None if n.attrs.get("direction") in ("LEFT", "RIGHT")
           else f"attribute direction is {n.attrs.get('direction')!r}, expected 'LEFT' or 'RIGHT'")
def bit_shift(ctx, x, y):
    """x shifted left or right by y bits; signed right shifts extend the sign (opset 28). A shift by
    a negative amount or by the type's width or more leaves only the sign fill: -1 for a right shift
    of a negative x, else 0."""
    bits = x.dtype.itemsize * 8
    wide = y.astype(np.int64) if y.dtype.kind == "i" else y.astype(np.uint64).astype(np.int64)
    amount = np.clip(wide, 0, bits - 1).astype(x.dtype)
    out = np.left_shift(x, amount) if ctx.attrs["direction"] == "LEFT" else np.right_shift(x, amount)
    fill = np.zeros((), x.dtype)
    if ctx.attrs["direction"] == "RIGHT" and x.dtype.kind == "i":
        fill = np.where(x < 0, np.asarray(-1, x.dtype), fill)
    return np.asarray(np.where((wide < 0) | (wide >= bits), fill, out)).astype(x.dtype, copy=False)


@define_op("Mod", inputs=2, infer=_rule(_numeric, "a numeric type"),
           attrs={"fmod": AttrSpec("int", 0, "0: the result has the divisor's sign (integers); "
                                             "1: the dividend's (C fmod)")},
           verify=lambda n: None if n.attrs.get("fmod", 0) in (0, 1) else "attribute fmod must be 0 or 1")
def mod(ctx, a, b):
    """Remainder of a / b, with the sign of b (fmod=0) or of a (fmod=1)."""
    fmod = bool(ctx.attrs["fmod"])
    if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
        u = a.astype(np.float32) if a.dtype.itemsize < 4 else a
        with np.errstate(all="ignore"):
            out = np.fmod(u, b.astype(u.dtype)) if fmod else np.mod(u, b.astype(u.dtype))
        return np.asarray(out).astype(a.dtype, copy=False)
    with np.errstate(all="ignore"):
        out = np.fmod(a, b) if fmod else np.mod(a, b)
    return np.where(b == 0, np.zeros((), a.dtype), out).astype(a.dtype, copy=False)


def _where_type(ctx: InferContext) -> list[TensorType]:
    c, x, y = require(ctx, 0), require(ctx, 1), require(ctx, 2)
    if c.dtype is not DType.bool:
        raise VerifyError(f"{_where(ctx)}: the condition has element type {c.dtype.value}, expected bool")
    if x.dtype is not y.dtype:
        raise VerifyError(f"{_where(ctx)}: X is {x.dtype.value} but Y is {y.dtype.value}; insert a Cast")
    return [TensorType(x.dtype, broadcast_shapes(c.shape, x.shape, y.shape))]


def _where_value(ctx: InferContext) -> ShapeValue | None:
    """X's element where the condition's is known true, Y's where known false, either where they agree."""
    each = broadcast_values(ctx.value(0), ctx.value(1), ctx.value(2))
    if each is None:
        return None
    (cs, xs, ys), scalar = each
    return ShapeValue(tuple(x if c == 1 else y if c == 0 else (x if x == y else None)
                            for c, x, y in zip(cs, xs, ys, strict=True)), scalar)


@define_op("Where", inputs=3, infer=_where_type, value=_where_value)
def where(ctx, cond, x, y):
    """X where the condition holds, Y elsewhere (all three broadcast)."""
    return np.asarray(np.where(cond, x, y)).astype(x.dtype, copy=False)


def _prelu_type(ctx: InferContext) -> list[TensorType]:
    x, slope = _operands(ctx, _numeric, "a numeric type")
    shape = broadcast_shapes(x.shape, slope.shape)
    if shape is not None and x.shape is not None and len(shape) != len(x.shape):
        raise VerifyError(f"{_where(ctx)}: slope {slope} must broadcast to X {x}")
    return [TensorType(x.dtype, x.shape)]


@define_op("PRelu", inputs=2, infer=_prelu_type)
def prelu(ctx, x, slope):
    """x for x >= 0, slope * x otherwise (slope broadcast to x)."""
    return np.asarray(np.where(x < 0, x * slope, x)).astype(x.dtype, copy=False)


@define_op("Mean", inputs=(1, None), infer=_rule(lambda d: d.is_float, "a float type"))
def mean(ctx, *xs):
    """Elementwise mean of one or more operands, broadcast together."""
    u = [x.astype(np.float32) if x.dtype.itemsize < 4 else x for x in xs]
    out = u[0] if len(u) > 1 else np.array(u[0])
    for x in u[1:]:
        out = out + x
    return np.asarray(out / np.asarray(len(xs), out.dtype)).astype(xs[0].dtype, copy=False)
