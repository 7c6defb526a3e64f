"""Helpers shared by the type rules of the built-in ops (symbolic-dim aware)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import overload

from cimc.errors import VerifyError
from cimc.ir.opdef import InferContext
from cimc.ir.types import Dim, DType, Shape, TensorType

__all__ = [
    "broadcast_shapes",
    "dim_add",
    "dim_mul",
    "normalize_axis",
    "require",
    "same_as",
    "same_dtype",
]


def require(ctx: InferContext, index: int) -> TensorType:
    """The type of operand ``index``; an error if it is absent."""
    t = ctx.types[index] if index < len(ctx.types) else None
    if t is None:
        raise VerifyError(f"node {ctx.node.name!r} ({ctx.node.op}): operand {index} is required")
    return t


def same_as(index: int = 0) -> Callable[[InferContext], list[TensorType]]:
    """Type rule: one result of the same type as operand ``index`` (quantization dropped)."""

    def rule(ctx: InferContext) -> list[TensorType]:
        t = require(ctx, index)
        return [TensorType(t.dtype, t.shape)]

    return rule


def same_dtype(ctx: InferContext, *indices: int) -> None:
    """An error unless the present operands at ``indices`` have one element type (an ONNX type
    constraint shared by them, as onnxruntime checks it)."""
    types = [(i, t) for i in indices if i < len(ctx.types) and (t := ctx.types[i]) is not None]
    for i, t in types[1:]:
        if t.dtype is not types[0][1].dtype:
            raise VerifyError(f"node {ctx.node.name!r} ({ctx.node.op}): operand {i} has element type "
                              f"{t.dtype.value} but operand {types[0][0]} has {types[0][1].dtype.value}; "
                              "insert a Cast so they agree")


@overload
def broadcast_shapes(*shapes: Shape) -> Shape: ...
@overload
def broadcast_shapes(*shapes: Shape | None) -> Shape | None: ...
def broadcast_shapes(*shapes: Shape | None) -> Shape | None:
    """Numpy-style multidirectional broadcast of shapes that may hold symbolic dims."""
    known = [s for s in shapes if s is not None]
    if len(known) != len(shapes):
        return None
    rank = max((len(s) for s in known), default=0)
    out: list[Dim] = []
    for axis in range(rank):
        dims = [s[len(s) - rank + axis] for s in known if len(s) - rank + axis >= 0]
        ints = {d for d in dims if isinstance(d, int) and d != 1}
        if len(ints) > 1:
            raise VerifyError(f"shapes {[list(s) for s in known]} do not broadcast")
        if ints:
            out.append(ints.pop())
            continue
        names = {d for d in dims if not isinstance(d, int)}
        if not names:
            out.append(1)
        elif len(names) == 1:
            out.append(names.pop())
        else:
            out.append(None)
    return tuple(out)


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    """``axis`` made non-negative, or an error if it is outside ``[-rank, rank)``."""
    if not -rank <= axis < rank:
        raise VerifyError(f"{what} {axis} is out of range for rank {rank}")
    return axis % rank


def dim_mul(dims: Sequence[Dim]) -> Dim:
    """Product of dims; ``None`` unless all are known ints (``1`` for none)."""
    out = 1
    for d in dims:
        if not isinstance(d, int):
            return None
        out *= d
    return out


def dim_add(a: Dim, b: Dim) -> Dim:
    """Sum of two dims; ``None`` unless both are known ints."""
    return a + b if isinstance(a, int) and isinstance(b, int) else None


def result(dtype: DType, shape: Shape | None) -> list[TensorType]:
    """A one-result type list."""
    return [TensorType(dtype, shape)]
