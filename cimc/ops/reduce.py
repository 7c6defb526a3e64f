"""Built-in ops: reductions over axes given as an optional int64 operand (ReduceSum, ReduceMean,
ReduceMax/Min/Prod/L1/L2/SumSquare/LogSum/LogSumExp), and ArgMax/ArgMin along one axis.

Absent or empty ``axes`` reduce over every axis, unless ``noop_with_empty_axes=1``, which makes
the op the identity. ``keepdims=1`` keeps reduced axes as size 1. f16/bf16 accumulate in f32;
integer sums wrap in the element type; integer means truncate toward zero (as onnxruntime).
Reducing an empty axis gives 0 for a sum and NaN for a float mean, the identity of the others
(-inf for a max, 1 for a product, ...). ArgMax/ArgMin give i64 indices, the first of equal extremes
unless ``select_last_index``.
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
        if t.shape is None:
            return [TensorType(t.dtype, None)]
        if keep:
            return [TensorType(t.dtype, tuple(1 if d == 1 else None for d in t.shape))]
        if not isinstance(count, int):
            return [TensorType(t.dtype, None)]
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


def _identity_for(x: np.ndarray, kind: str) -> np.ndarray:
    """The value a max (``kind="max"``) or min reduction of nothing gives: -inf/+inf, or the integer
    type's lowest/highest value."""
    if x.dtype.kind == "b":
        return np.asarray(kind != "max")
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        return np.asarray(info.min if kind == "max" else info.max, x.dtype)
    return np.asarray(-np.inf if kind == "max" else np.inf, _acc_dtype(x))


def _extreme(kind: str):
    fn = np.max if kind == "max" else np.min

    def impl(ctx, x, axes=None):
        reduced = _prepare(ctx, x, axes)
        if reduced is None:
            return np.array(x)
        keep = bool(ctx.attrs["keepdims"])
        if any(x.shape[a] == 0 for a in reduced):
            shape = tuple(1 if i in reduced else n for i, n in enumerate(x.shape) if keep or i not in reduced)
            return np.full(shape, _identity_for(x, kind)).astype(x.dtype)
        return np.asarray(fn(x, axis=reduced, keepdims=keep)).astype(x.dtype)

    return impl


def _reduce_any_type(ctx: InferContext) -> list[TensorType]:
    """Like ``_reduce_type`` but also for bool operands (ReduceMax/ReduceMin since opset 20)."""
    t = require(ctx, 0)
    if t.dtype is DType.bool:
        cast = InferContext(ctx.node, [TensorType(DType.u8, t.shape), *ctx.types[1:]], ctx.attrs, ctx.num_outputs)
        return [TensorType(DType.bool, _reduce_type(cast)[0].shape)]
    return _reduce_type(ctx)


define_op("ReduceMax", inputs=(1, 2), infer=_reduce_any_type, attrs=_ATTRS,
          doc="Maximum over axes (-inf, or the type's lowest value, over an empty axis).")(_extreme("max"))
define_op("ReduceMin", inputs=(1, 2), infer=_reduce_any_type, attrs=_ATTRS,
          doc="Minimum over axes (+inf, or the type's highest value, over an empty axis).")(_extreme("min"))


def _folded(pre, fold, post=None):
    """A reduction computed as ``post(fold(pre(x)))`` in the accumulation type (f32 for f16/bf16)."""

    def impl(ctx, x, axes=None):
        reduced = _prepare(ctx, x, axes)
        if reduced is None:
            return np.array(x)
        u = x.astype(_acc_dtype(x), copy=False)
        with np.errstate(all="ignore"):
            v = fold(pre(u), axis=reduced, keepdims=bool(ctx.attrs["keepdims"]), dtype=u.dtype)
            return np.asarray(v if post is None else post(v)).astype(x.dtype)

    return impl


def _log_sum_exp(ctx, x, axes=None):
    """log(sum(exp(x))) over axes, shifted by the max for stability (-inf over an empty axis)."""
    reduced = _prepare(ctx, x, axes)
    if reduced is None:
        return np.array(x)
    u, keep = x.astype(_acc_dtype(x), copy=False), bool(ctx.attrs["keepdims"])
    if u.size == 0 or any(u.shape[a] == 0 for a in reduced):
        return _folded(np.exp, np.sum, np.log)(ctx, x, axes)
    with np.errstate(all="ignore"):
        m = np.max(u, axis=reduced, keepdims=True)
        m = np.where(np.isfinite(m), m, 0).astype(u.dtype)
        s = np.log(np.sum(np.exp(u - m), axis=reduced, keepdims=True)) + m
    return np.asarray(s if keep else np.squeeze(s, axis=reduced)).astype(x.dtype)


for _name, _impl, _doc in (
        ("ReduceProd", _folded(lambda u: u, np.prod), "Product over axes (1 over an empty axis)."),
        ("ReduceL1", _folded(np.abs, np.sum), "Sum of absolute values over axes."),
        ("ReduceL2", _folded(np.square, np.sum, np.sqrt), "Euclidean norm over axes."),
        ("ReduceSumSquare", _folded(np.square, np.sum), "Sum of squares over axes."),
        ("ReduceLogSum", _folded(lambda u: u, np.sum, np.log), "log of the sum over axes."),
        ("ReduceLogSumExp", _log_sum_exp, "log of the sum of exp over axes, computed stably.")):
    define_op(_name, inputs=(1, 2), infer=_reduce_type, attrs=_ATTRS, doc=_doc)(_impl)


_ARG_ATTRS = {
    "axis": AttrSpec("int", 0, "axis searched"),
    "keepdims": AttrSpec("int", 1, "keep the searched axis as size 1"),
    "select_last_index": AttrSpec("int", 0, "1: the last of equal extremes, else the first"),
}


def _arg_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    if not (t.dtype.is_float or t.dtype.is_int or t.dtype is DType.bool):
        raise VerifyError(f"node {ctx.node.name!r} ({ctx.node.op}): operand 0 has element type {t.dtype.value}, "
                          "expected a numeric type")
    if t.shape is None:
        return [TensorType(DType.i64, None)]
    axis = normalize_axis(ctx.attrs["axis"], max(len(t.shape), 1), f"node {ctx.node.name!r}: axis")
    keep = bool(ctx.attrs["keepdims"])
    return [TensorType(DType.i64, tuple(1 if i == axis else d for i, d in enumerate(t.shape) if keep or i != axis))]


def _arg(fn):
    def impl(ctx, x):
        axis = ctx.attrs["axis"] % max(x.ndim, 1)
        u = x.astype(np.float32) if (x.dtype.itemsize < 4 and x.dtype.kind == "f") or x.dtype.name == "bfloat16" else x
        if ctx.attrs["select_last_index"]:
            n = u.shape[axis]
            idx = n - 1 - fn(np.flip(u, axis=axis), axis=axis)
        else:
            idx = fn(u, axis=axis)
        idx = np.asarray(idx, np.int64)
        return np.expand_dims(idx, axis) if ctx.attrs["keepdims"] else idx

    return impl


define_op("ArgMax", infer=_arg_type, attrs=_ARG_ATTRS,
          doc="Index of the maximum along axis (i64).")(_arg(np.argmax))
define_op("ArgMin", infer=_arg_type, attrs=_ARG_ATTRS,
          doc="Index of the minimum along axis (i64).")(_arg(np.argmin))
