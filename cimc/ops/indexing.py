"""Built-in ops: gathers, scatters and selections by index (newest ONNX schemas).

GatherElements/ScatterElements index one axis element by element (``np.take_along_axis`` and a
fancy-indexed write); GatherND/ScatterND index leading dims by index tuples; negative indices
count from the end and out-of-range ones are an error. A scatter with ``reduction='none'`` writes
in index order, so the last of duplicate indices wins; ``add``/``mul``/``max``/``min`` combine
through the ufunc's unbuffered ``at``. TensorScatter writes an update block into a cache at per-batch
positions (``linear``, or ``circular`` modulo the cache length). OneHot puts ``values[1]`` at
``indices`` (negative ones wrap once) along a new axis; TopK picks the k largest or smallest (ties:
lower index first); Unique, NonZero and Compress have data-dependent result shapes (``None`` dims).
TfIdfVectorizer counts the n-grams of a pool (integers or strings) in each row, items ``skip + 1``
apart, and weights the counts.
"""

from __future__ import annotations

import itertools

import numpy as np

from cimc.errors import CimcError, VerifyError
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, define_op
from cimc.ir.types import DType, TensorType
from cimc.ops._infer import normalize_axis, require


def _where(ctx: InferContext) -> str:
    return f"node {ctx.node.name!r} ({ctx.node.op})"


def _index_type(ctx: InferContext, index: int) -> TensorType:
    t = require(ctx, index)
    if t.dtype not in (DType.i32, DType.i64):
        raise VerifyError(f"{_where(ctx)}: indices must be i32 or i64, not {t.dtype.value}")
    return t


def _normalized(indices: np.ndarray, n: int | np.ndarray, what: str) -> np.ndarray:
    """``indices`` with negative entries counted from the end of a dim of size ``n``; an error for any
    outside ``[-n, n)``."""
    idx = indices.astype(np.int64)
    if idx.size and (np.any(idx < -n) or np.any(idx >= n)):
        raise CimcError(f"{what} indices range over [{idx.min()}, {idx.max()}], outside the dim of size(s) {n}")
    return np.where(idx < 0, idx + n, idx)


# ---- GatherElements / ScatterElements ----------------------------------------------------------
def _gather_elements_type(ctx: InferContext) -> list[TensorType]:
    data, idx = require(ctx, 0), _index_type(ctx, 1)
    if data.shape is not None and idx.shape is not None and len(data.shape) != len(idx.shape):
        raise VerifyError(f"{_where(ctx)}: data {data} and indices {idx} must have the same rank")
    return [TensorType(data.dtype, idx.shape)]


@define_op("GatherElements", inputs=2, infer=_gather_elements_type,
           attrs={"axis": AttrSpec("int", 0, "axis the indices select along")})
def gather_elements(ctx, data, indices):
    """out[i][j][k] = data[index[i][j][k]][j][k] (for axis 0; likewise for the others)."""
    axis = ctx.attrs["axis"] % data.ndim
    return np.take_along_axis(data, _normalized(indices, data.shape[axis], "GatherElements"), axis=axis)


_REDUCTIONS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _verify_reduction(node) -> str | None:
    r = node.attrs.get("reduction", "none")
    return None if r == "none" or r in _REDUCTIONS else f"reduction is {r!r}, expected none, add, mul, max or min"


def _scatter_type(ctx: InferContext) -> list[TensorType]:
    data = require(ctx, 0)
    _index_type(ctx, 1)
    upd = require(ctx, 2)
    if upd.dtype is not data.dtype:
        raise VerifyError(f"{_where(ctx)}: updates are {upd.dtype.value} but data is {data.dtype.value}")
    return [TensorType(data.dtype, data.shape)]


def _write(out: np.ndarray, where: tuple, updates: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "none":
        out[where] = updates
    else:
        _REDUCTIONS[reduction].at(out, where, updates)
    return out


_SCATTER_ATTRS = {"reduction": AttrSpec("str", "none", "none, add, mul, max or min: how a write combines")}


@define_op("ScatterElements", inputs=3, infer=_scatter_type, verify=_verify_reduction, attrs={
    "axis": AttrSpec("int", 0, "axis the indices address"), **_SCATTER_ATTRS})
def scatter_elements(ctx, data, indices, updates):
    """A copy of data with out[index[i][j]][j] = updates[i][j] (axis 0; likewise for the others)."""
    axis = ctx.attrs["axis"] % data.ndim
    idx = _normalized(indices, data.shape[axis], "ScatterElements")
    where = tuple(idx if a == axis else np.arange(n).reshape((-1,) + (1,) * (idx.ndim - a - 1))
                  for a, n in enumerate(idx.shape))
    return _write(np.array(data), where, updates, ctx.attrs["reduction"])


# ---- GatherND / ScatterND ----------------------------------------------------------------------
def _gather_nd_type(ctx: InferContext) -> list[TensorType]:
    data, idx = require(ctx, 0), _index_type(ctx, 1)
    b = ctx.attrs["batch_dims"]
    if data.shape is None or idx.shape is None or not isinstance(idx.shape[-1], int):
        return [TensorType(data.dtype, None)]
    k = idx.shape[-1]
    if b + k > len(data.shape):
        raise VerifyError(f"{_where(ctx)}: index tuples of length {k} after {b} batch dims exceed data {data}")
    return [TensorType(data.dtype, (*idx.shape[:-1], *data.shape[b + k:]))]


def _nd_where(data_shape: tuple[int, ...], indices: np.ndarray, batch_dims: int, what: str) -> tuple:
    """The fancy index that addresses ``data[batch..., *indices[batch..., i, :]]`` for every i."""
    k = indices.shape[-1]
    dims = np.asarray(data_shape[batch_dims:batch_dims + k], np.int64)
    idx = _normalized(indices, dims, what)
    lead = idx.shape[:-1]
    batch = tuple(np.arange(n).reshape((-1,) + (1,) * (len(lead) - i - 1)) for i, n in enumerate(lead[:batch_dims]))
    return (*batch, *(idx[..., j] for j in range(k)))


@define_op("GatherND", inputs=2, infer=_gather_nd_type,
           attrs={"batch_dims": AttrSpec("int", 0, "leading dims shared by data and indices")})
def gather_nd(ctx, data, indices):
    """Slices of data addressed by the index tuples in the last dim of indices."""
    return np.asarray(data[_nd_where(data.shape, indices, ctx.attrs["batch_dims"], "GatherND")])


@define_op("ScatterND", inputs=3, infer=_scatter_type, verify=_verify_reduction, attrs=_SCATTER_ATTRS)
def scatter_nd(ctx, data, indices, updates):
    """A copy of data with the slices addressed by the index tuples replaced (or combined) by updates."""
    return _write(np.array(data), _nd_where(data.shape, indices, 0, "ScatterND"), updates, ctx.attrs["reduction"])


@define_op("TensorScatter", inputs=(2, 3), infer=lambda ctx: [TensorType(require(ctx, 0).dtype,
                                                                         require(ctx, 0).shape)], attrs={
    "axis": AttrSpec("int", -2, "sequence axis of the cache (not 0)"),
    "mode": AttrSpec("str", "linear", "linear, or circular (positions wrap around the cache)")},
    verify=lambda n: None if n.attrs.get("mode", "linear") in ("linear", "circular")
    else f"mode is {n.attrs['mode']!r}, expected linear or circular")
def tensor_scatter(ctx, cache, update, write_indices=None):
    """A copy of the cache with ``update`` written along ``axis`` from position write_indices[b] of
    batch entry b."""
    axis = ctx.attrs["axis"] % cache.ndim
    n, length = cache.shape[axis], update.shape[axis]
    start = np.zeros(cache.shape[0], np.int64) if write_indices is None else write_indices.astype(np.int64)
    pos = start[:, None] + np.arange(length)[None, :]  # (batch, length)
    if ctx.attrs["mode"] == "circular":
        pos = pos % n
    elif pos.size and (pos.min() < 0 or pos.max() >= n):
        raise CimcError(f"TensorScatter writes positions {pos.min()}..{pos.max()} of a cache of length {n}")
    out = np.array(cache)
    for b in range(cache.shape[0]):  # one block write per batch entry
        out[b][(slice(None),) * (axis - 1) + (pos[b],)] = update[b]
    return out


# ---- OneHot, Compress, NonZero -----------------------------------------------------------------
def _one_hot_type(ctx: InferContext) -> list[TensorType]:
    idx, values = require(ctx, 0), require(ctx, 2)
    depth = ctx.const(1)
    if idx.shape is None:
        return [TensorType(values.dtype, None)]
    rank = len(idx.shape) + 1
    axis = normalize_axis(ctx.attrs["axis"], rank, f"{_where(ctx)}: axis")
    d = int(np.asarray(depth).reshape(-1)[0]) if depth is not None else None
    shape = list(idx.shape)
    shape.insert(axis, d)
    return [TensorType(values.dtype, tuple(shape))]


@define_op("OneHot", inputs=3, infer=_one_hot_type, attrs={"axis": AttrSpec("int", -1, "the new axis")})
def one_hot(ctx, indices, depth, values):
    """values[1] where the new axis' position equals the index (negative ones count from depth),
    values[0] elsewhere; indices outside [-depth, depth) give an all-off row."""
    d = int(np.asarray(depth).reshape(-1)[0])
    idx = indices.astype(np.int64) if indices.dtype.kind != "f" else np.trunc(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + d, idx)
    axis = ctx.attrs["axis"] % (indices.ndim + 1)
    hot = np.expand_dims(idx, axis) == np.arange(d).reshape((-1,) + (1,) * (indices.ndim - axis))
    return np.where(hot, values[1], values[0]).astype(values.dtype, copy=False)


def _compress_type(ctx: InferContext) -> list[TensorType]:
    x, cond = require(ctx, 0), require(ctx, 1)
    if cond.dtype is not DType.bool:
        raise VerifyError(f"{_where(ctx)}: condition has element type {cond.dtype.value}, expected bool")
    axis = ctx.attrs["axis"]
    if axis is None or x.shape is None:
        return [TensorType(x.dtype, (None,) if axis is None else None)]
    axis = normalize_axis(axis, len(x.shape), f"{_where(ctx)}: axis")
    return [TensorType(x.dtype, tuple(None if i == axis else d for i, d in enumerate(x.shape)))]


@define_op("Compress", inputs=2, infer=_compress_type,
           attrs={"axis": AttrSpec("int", None, "axis selected along; none: the flattened input")})
def compress(ctx, x, cond):
    """The slices of x (along axis, or the flattened elements) where the condition holds."""
    axis = ctx.attrs["axis"]
    return np.compress(cond.reshape(-1), x, axis=None if axis is None else axis % x.ndim)


@define_op("NonZero", infer=lambda ctx: [TensorType(DType.i64, (require(ctx, 0).rank, None))])
def non_zero(ctx, x):
    """The indices of the nonzero elements, one column per element (shape [rank, count])."""
    if x.ndim == 0:  # a scalar has no index to list, only a count
        return np.zeros((0, int(bool(x))), np.int64)
    return np.asarray(np.nonzero(x), np.int64).reshape(x.ndim, -1)


# ---- TopK, Unique ------------------------------------------------------------------------------
def _topk_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    k = ctx.const(1)
    if x.shape is None:
        return [TensorType(x.dtype, None), TensorType(DType.i64, None)]
    axis = normalize_axis(ctx.attrs["axis"], len(x.shape), f"{_where(ctx)}: axis")
    kk = int(np.asarray(k).reshape(-1)[0]) if k is not None else None
    shape = tuple(kk if i == axis else d for i, d in enumerate(x.shape))
    return [TensorType(x.dtype, shape), TensorType(DType.i64, shape)]


def stable_order(x: np.ndarray, axis: int, descending: bool) -> np.ndarray:
    """Indices sorting ``x`` along ``axis``, equal values in index order (for either direction)."""
    if not descending:
        return np.argsort(x, axis=axis, kind="stable")
    n = x.shape[axis]
    rev = np.argsort(np.flip(x, axis=axis), axis=axis, kind="stable")
    return n - 1 - np.flip(rev, axis=axis)


@define_op("TopK", inputs=2, outputs=2, infer=_topk_type, attrs={
    "axis": AttrSpec("int", -1, "axis searched"),
    "largest": AttrSpec("int", 1, "1: the largest, 0: the smallest"),
    "sorted": AttrSpec("int", 1, "1: results in sorted order (always the case here)")})
def top_k(ctx, x, k):
    """The k largest (or smallest) elements along axis and their indices (ties: lower index first)."""
    axis = ctx.attrs["axis"] % x.ndim
    kk = int(np.asarray(k).reshape(-1)[0])
    if not 0 <= kk <= x.shape[axis]:
        raise CimcError(f"TopK k={kk} is outside [0, {x.shape[axis]}] for axis {axis} of shape {list(x.shape)}")
    u = x.astype(np.float32) if x.dtype.name in ("float16", "bfloat16") else x
    order = stable_order(u, axis, bool(ctx.attrs["largest"]))
    idx = np.take(order, np.arange(kk), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


def _unique_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    axis = ctx.attrs["axis"]
    if axis is None or x.shape is None:
        y = TensorType(x.dtype, (None,) if axis is None else None)
    else:
        a = normalize_axis(axis, len(x.shape), f"{_where(ctx)}: axis")
        y = TensorType(x.dtype, tuple(None if i == a else d for i, d in enumerate(x.shape)))
    vec = TensorType(DType.i64, (None,))
    return [y, vec, vec, vec][: ctx.num_outputs]


@define_op("Unique", outputs=(1, 4), infer=_unique_type, attrs={
    "axis": AttrSpec("int", None, "axis whose slices are compared; none: the flattened elements"),
    "sorted": AttrSpec("int", 1, "1: ascending, 0: in order of first occurrence")})
def unique(ctx, x):
    """The distinct elements (or slices along axis), first-occurrence indices, inverse indices, counts."""
    axis = ctx.attrs["axis"]
    flat = x.reshape(-1) if axis is None else x
    ax = None if axis is None else axis % x.ndim
    y, first, inverse, counts = np.unique(flat, return_index=True, return_inverse=True, return_counts=True, axis=ax)
    inverse = inverse.reshape(-1)
    if not ctx.attrs["sorted"]:
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        y = np.take(y, order, axis=0 if ax is None else ax)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    return tuple(np.asarray(a, np.int64) if i else a for i, a in enumerate((y, first, inverse, counts)))


# ---- TfIdfVectorizer ---------------------------------------------------------------------------
def _tfidf_grams(attrs) -> tuple[dict[tuple, int], int]:
    """The pool's n-grams of the counted sizes, each mapped to its output column, and the row width."""
    pool = list(attrs["pool_int64s"] or attrs["pool_strings"] or ())
    counts = [*list(attrs["ngram_counts"]), len(pool)]
    indexes = list(attrs["ngram_indexes"])
    grams: dict[tuple, int] = {}
    gram_id = 0
    for size, (lo, hi) in enumerate(itertools.pairwise(counts), start=1):
        for start in range(lo, hi - size + 1, size):
            if attrs["min_gram_length"] <= size <= attrs["max_gram_length"]:
                grams[tuple(pool[start:start + size])] = indexes[gram_id]
            gram_id += 1
    return grams, max(indexes) + 1


def _tfidf_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    width = max(ctx.attrs["ngram_indexes"]) + 1
    if x.shape is not None and len(x.shape) not in (1, 2):
        raise VerifyError(f"{_where(ctx)}: X must be [C] or [B, C], is {x}")
    return [TensorType(DType.f32, (width,) if x.shape is None or len(x.shape) == 1 else (x.shape[0], width))]


@define_op("TfIdfVectorizer", infer=_tfidf_type, attrs={
    "max_gram_length": AttrSpec("int", REQUIRED, "longest n-gram counted"),
    "max_skip_count": AttrSpec("int", REQUIRED, "most items skipped between an n-gram's items"),
    "min_gram_length": AttrSpec("int", REQUIRED, "shortest n-gram counted"),
    "mode": AttrSpec("str", REQUIRED, "TF (counts), IDF (weight if present) or TFIDF (weight * count)"),
    "ngram_counts": AttrSpec("ints", REQUIRED, "where the 1-grams, 2-grams, ... start in the pool"),
    "ngram_indexes": AttrSpec("ints", REQUIRED, "output column of each pool n-gram"),
    "pool_int64s": AttrSpec("ints", None, "the n-grams, integer items"),
    "pool_strings": AttrSpec("strs", None, "the n-grams, string items"),
    "weights": AttrSpec("floats", None, "per output column (IDF, TFIDF)")})
def tfidf_vectorizer(ctx, x):
    """Counts of the pool's n-grams in each row (items ``skip + 1`` apart, for skips up to
    ``max_skip_count``; 1-grams once), weighted by ``mode``."""
    a = ctx.attrs
    grams, width = _tfidf_grams(a)
    rows = x.reshape(1, -1) if x.ndim < 2 else x
    vals = rows.tolist()
    counts = np.zeros((rows.shape[0], width), np.float64)
    for step in range(1, a["max_skip_count"] + 2):
        shortest = a["min_gram_length"] if step == 1 else max(a["min_gram_length"], 2)
        for n in range(shortest, a["max_gram_length"] + 1):
            for r, row in enumerate(vals):
                for start in range(len(row) - (n - 1) * step):
                    col = grams.get(tuple(row[start:start + (n - 1) * step + 1:step]))
                    if col is not None:
                        counts[r, col] += 1
    w = np.asarray(a["weights"], np.float64) if a["weights"] else None
    if a["mode"] == "IDF":
        counts = np.where(counts > 0, 1.0 if w is None else w, 0.0)
    elif a["mode"] == "TFIDF" and w is not None:
        counts = counts * w
    out = counts.astype(np.float32)
    return out[0] if x.ndim < 2 else out
