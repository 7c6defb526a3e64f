"""Helpers shared by the value rules of the built-in ops (``OpDef.value``): element-wise arithmetic and
comparison of :class:`~cimc.ir.types.ShapeValue` operands, each element a known int, a symbolic dim
name or unknown (``None``).

A symbolic name stands for a dim's size, so it is never negative; an element is known only where the
result is exact whatever size the name has (``N + 0`` is ``N``, ``N * 0`` is 0, ``N * 16`` is the product
dim ``16*N`` and ``16*N / 4`` is ``4*N``, ``N == -1`` is false).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cimc.ir.opdef import InferContext
from cimc.ir.types import Dim, DType, ShapeValue, dim_factors, dim_product

__all__ = ["arithmetic", "broadcast_values", "compare_equal", "fit_dtype"]


def broadcast_values(*values: ShapeValue | None) -> tuple[list[tuple[Dim, ...]], bool] | None:
    """The elements of ``values`` repeated to one length (scalars and one-element vectors broadcast),
    and whether the result is a scalar; ``None`` if any is unknown or the lengths do not broadcast."""
    if any(v is None for v in values):
        return None
    known = [v for v in values if v is not None]
    n = max(len(v.elems) for v in known)
    if any(len(v.elems) not in (1, n) for v in known):
        return None
    return [v.elems * n if len(v.elems) == 1 else v.elems for v in known], all(v.scalar for v in known)


def _trunc_div(a: int, b: int) -> int:
    """C's integer division (toward zero); 0 for a division by 0, as the ``Div`` implementation gives."""
    if b == 0:
        return 0
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


_INT_OPS: dict[str, Callable[[int, int], int]] = {
    "Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b, "Div": _trunc_div,
}


def _symbolic(op: str, a: Dim, b: Dim) -> Dim:
    """``a op b`` where at least one is not a known int: the name where the other operand is neutral."""
    if op == "Mul" and (a == 0 or b == 0):
        return 0
    if (op in ("Add", "Sub") and b == 0) or (op in ("Mul", "Div") and b == 1):
        return a
    if op in ("Add", "Mul") and a == (0 if op == "Add" else 1):
        return b
    if op == "Sub" and isinstance(a, str) and a == b:
        return 0
    if a is None or b is None:
        return None
    (ca, na), (cb, nb) = dim_factors(a), dim_factors(b)
    if op == "Mul" and ca > 0 and cb > 0:
        return dim_product(ca * cb, na + nb)  # a product of sizes: 16 * N is 16*N
    if op == "Div" and not nb and cb > 0 and ca % cb == 0:
        return dim_product(ca // cb, na)  # exact: 16*N / 4 is 4*N whatever N is
    return None


def fit_dtype(d: Dim, dtype: DType) -> Dim:
    """``d`` if it is not a known int outside ``dtype``'s range (the op would wrap it), else ``None``."""
    if isinstance(d, int) and dtype.is_int:
        info = np.iinfo(dtype.numpy)
        return d if info.min <= d <= info.max else None
    return d


def arithmetic(ctx: InferContext) -> ShapeValue | None:
    """Value rule of ``Add``/``Sub``/``Mul``/``Div`` on integers: element by element, with broadcasting."""
    t = ctx.types[0]
    both = broadcast_values(ctx.value(0), ctx.value(1))
    if t is None or not t.dtype.is_int or both is None:
        return None
    (xs, ys), scalar = both
    op = ctx.node.op
    out = [fit_dtype(_INT_OPS[op](a, b), t.dtype) if isinstance(a, int) and isinstance(b, int)
           else _symbolic(op, a, b) for a, b in zip(xs, ys, strict=True)]
    return ShapeValue(tuple(out), scalar)


def compare_equal(ctx: InferContext) -> ShapeValue | None:
    """Value rule of ``Equal`` (1 true, 0 false): known where both elements are, or where a name meets a
    negative int (a size is never negative) or the same name."""
    both = broadcast_values(ctx.value(0), ctx.value(1))
    if both is None:
        return None
    (xs, ys), scalar = both
    out: list[Dim] = []
    for a, b in zip(xs, ys, strict=True):
        if isinstance(a, int) and isinstance(b, int):
            out.append(int(a == b))
        elif a is not None and b is not None and (a == b or (isinstance(a, int) and a < 0)
                                                  or (isinstance(b, int) and b < 0)):
            out.append(int(a == b))
        else:
            out.append(None)
    return ShapeValue(tuple(out), scalar)
