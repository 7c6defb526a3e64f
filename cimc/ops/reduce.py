"""Built-in ops: reductions over axes given as an optional int64 operand (ReduceSum, ReduceMean).

Absent or empty ``axes`` reduce over every axis, unless ``noop_with_empty_axes=1``, which makes
the op the identity. ``keepdims=1`` keeps reduced axes as size 1. f16/bf16 accumulate in f32;
integer sums wrap in the element type; integer means truncate toward zero (as onnxruntime).
Reducing an empty axis gives 0 for a sum and NaN for a float mean.
"""

from __future__ import annotations

import numpy as np

from cimc.errors import VerifyError
from cimc.ir.opdef import AttrSpec, InferContext, define_op
from cimc.ir.types import DType, Shape, TensorType
from cimc.ops._infer import normalize_axis, require

_ATTRS = {
    "keepdims": AttrSpec("int", 1, "keep reduced axes as size-1 dims"),
    "noop_with_empty_axes": AttrSpec("int", 0, "empty axes mean identity instead of reduce-all"),
}


def _reduce_type(ctx: InferContext) -> list[TensorType]:
    """Type rule: the reduced shape when ``axes`` is known, the best bound on it otherwise."""
    t = require(ctx, 0)
    where = f"node {ctx.node.name!r} ({ctx.node.op})"
    if not (t.dtype.is_float or t.dtype.is_int):
        raise VerifyError(f"{where}: operand 0 has element type {t.dtype.value}, expected a numeric type")
    keep, noop = bool(ctx.attrs["keepdims"]), bool(ctx.attrs["noop_with_empty_axes"])
    at = ctx.types[1] if ctx.has(1) else None
    if at is not None and (at.dtype is not DType.i64 or (at.shape is not None and len(at.shape) != 1)):
        raise VerifyError(f"{where}: axes operand must be a 1-D i64 tensor, found {at}")
    count = None if at is None or at.shape is None else at.shape[0]
    axes = ctx.const(1)
    if at is not None and axes is None and count != 0:  # axes computed at run time
        if t.shape is None or (not keep and not isinstance(count, int)):
            return [TensorType(t.dtype, None)]
        if keep:
            return [TensorType(t.dtype, tuple(1 if d == 1 else None for d in t.shape))]
        return [TensorType(t.dtype, (None,) * (len(t.shape) - count))]
    if t.shape is None:
        return [TensorType(t.dtype, None)]
    reduced = _normalize(axes, len(t.shape), noop, where)
    if reduced is None:
        return [TensorType(t.dtype, t.shape)]
    shape: Shape = tuple(1 if i in reduced else d for i, d in enumerate(t.shape)
                         if keep or i not in reduced)
    return [TensorType(t.dtype, shape)]


def _normalize(axes: np.ndarray | None, rank: int, noop: bool, where: str) -> set[int] | None:
    """The reduced axes as a set, or ``None`` when the op is the identity."""
    if axes is None or axes.size == 0:
        return None if noop else set(range(rank))
    return {normalize_axis(int(a), rank, f"{where}: axis") for a in axes.reshape(-1)}


def _prepare(ctx, x: np.ndarray, axes: np.ndarray | None) -> tuple[int, ...] | None:
    noop = bool(ctx.attrs["noop_with_empty_axes"])
    reduced = _normalize(axes, x.ndim, noop, f"node {ctx.node_name!r}")
    return None if reduced is None else tuple(sorted(reduced))


def _acc_dtype(x: np.ndarray) -> np.dtype:
    return np.dtype(np.float32) if x.dtype.itemsize < 4 and x.dtype.kind not in "iu" else x.dtype


@define_op("ReduceSum", inputs=(1, 2), infer=_reduce_type, attrs=_ATTRS)
def reduce_sum(ctx, x, axes=None):
    """Sum over ``axes``."""
    reduced = _prepare(ctx, x, axes)
    if reduced is None:
        return np.array(x)
    out = np.sum(x, axis=reduced, keepdims=bool(ctx.attrs["keepdims"]), dtype=_acc_dtype(x))
    return np.asarray(out).astype(x.dtype)


@define_op("ReduceMean", inputs=(1, 2), infer=_reduce_type, attrs=_ATTRS)
def reduce_mean(ctx, x, axes=None):
    """Arithmetic mean over ``axes``."""
    reduced = _prepare(ctx, x, axes)
    if reduced is None:
        return np.array(x)
    keep = bool(ctx.attrs["keepdims"])
    n = int(np.prod([x.shape[a] for a in reduced]))
    if x.dtype.kind in "iu":
        wide = np.int64 if x.dtype.kind == "i" else np.uint64
        total = np.sum(x, axis=reduced, keepdims=keep, dtype=wide)
        if n == 0:
            return np.zeros_like(total, x.dtype)
        q = np.abs(total) // n if x.dtype.kind == "i" else total // n
        return np.asarray(np.sign(total) * q if x.dtype.kind == "i" else q).astype(x.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.sum(x, axis=reduced, keepdims=keep, dtype=_acc_dtype(x)) / np.asarray(n, _acc_dtype(x))
    return np.asarray(out).astype(x.dtype)
