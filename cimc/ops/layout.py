"""Built-in ops: more layout and generator ops (newest ONNX schemas).

Tile, Range, CumSum/CumProd, ReverseSequence, DepthToSpace/SpaceToDepth, Trilu, EyeLike, Size,
CastLike and CenterCropPad: numpy reshapes, transposes, ``np.tile``/``np.arange``/``np.cumsum`` and
masks. Type rules read constant operands (``repeats``, ``shape``, Range's bounds) for the result
shape; otherwise the affected dims are ``None``. Integer scans wrap like C.
"""

from __future__ import annotations

import math

import numpy as np

from cimc.errors import CimcError, VerifyError
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, define_op
from cimc.ir.types import SHAPE_VALUE_LIMIT, Dim, DType, ShapeValue, TensorType, dtype_from_onnx_code
from cimc.ops._infer import dim_mul, normalize_axis, require
from cimc.ops.tensor import _cast, _vector


def _where(ctx: InferContext) -> str:
    return f"node {ctx.node.name!r} ({ctx.node.op})"


# ---- Tile ---------------------------------------------------------------------------------------
def _tile_type(ctx: InferContext) -> list[TensorType]:
    """Each dim times its repeat count, where both are known (a dim repeated once or none times is known
    whatever it is; the counts may be computed from shapes, ``InferContext.value``)."""
    x = require(ctx, 0)
    known = ctx.value(1)
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    if known is None or known.scalar:
        return [TensorType(x.dtype, tuple(d if d == 0 else None for d in x.shape))]
    reps = known.elems
    if len(reps) != len(x.shape) or any(isinstance(r, int) and r < 0 for r in reps):
        raise VerifyError(f"{_where(ctx)}: repeats {list(reps)} must hold one non-negative count per dim of {x}")
    return [TensorType(x.dtype, tuple(0 if d == 0 or r == 0 else d if r == 1 else r if d == 1 else dim_mul([d, r])
                                      for d, r in zip(x.shape, reps, strict=True)))]


@define_op("Tile", inputs=2, infer=_tile_type)
def tile(ctx, x, repeats):
    """x repeated ``repeats[i]`` times along each dim i."""
    return np.tile(x, _vector(repeats))


# ---- Range --------------------------------------------------------------------------------------
def _range_type(ctx: InferContext) -> list[TensorType]:
    types = [require(ctx, i) for i in range(3)]
    if len({t.dtype for t in types}) != 1:
        raise VerifyError(f"{_where(ctx)}: start, limit and delta must have one element type")
    start, limit, delta = (ctx.const(i) for i in range(3))
    if start is not None and limit is not None and delta is not None:
        return [TensorType(types[0].dtype, (_range_count(start, limit, delta),))]
    return [TensorType(types[0].dtype, (_range_length(ctx),))]


def _range_operands(ctx: InferContext) -> tuple[Dim, Dim, Dim] | None:
    """Start, limit and delta where shape values know them (each an int or a symbolic dim), else None."""
    known = [ctx.value(i) for i in range(3)]
    if any(v is None or len(v.elems) != 1 for v in known):
        return None
    s, l, d = (v.elems[0] for v in known if v is not None)
    return s, l, d


def _range_length(ctx: InferContext) -> Dim:
    """The length of a Range computed from shapes: ``ceil((limit - start) / delta)`` when the three are known
    ints; ``limit`` itself when it is a symbolic dim counted from 0 by 1 (``arange(seq)``); else unknown."""
    ops = _range_operands(ctx)
    if ops is None:
        return None
    s, l, d = ops
    if isinstance(s, int) and isinstance(l, int) and isinstance(d, int):
        return _range_count(np.asarray(s), np.asarray(l), np.asarray(d))
    return l if s == 0 and d == 1 and isinstance(l, str) else None


def _range_value(ctx: InferContext) -> ShapeValue | None:
    """A Range's elements when start, limit and delta are known ints (a shape computation's ``arange``)."""
    ops = _range_operands(ctx)
    if ops is None or not all(isinstance(x, int) for x in ops):
        return None
    s, l, d = (int(x) for x in ops if isinstance(x, int))
    if d == 0 or _range_count(np.asarray(s), np.asarray(l), np.asarray(d)) > SHAPE_VALUE_LIMIT:
        return None
    return ShapeValue(tuple(range(s, l, d)))


def _range_count(start: np.ndarray, limit: np.ndarray, delta: np.ndarray) -> int:
    s, l, d = (np.asarray(v).reshape(()).item() for v in (start, limit, delta))
    if d == 0:
        raise CimcError("Range delta is 0")
    return max(math.ceil((l - s) / d), 0)


@define_op("Range", inputs=3, infer=_range_type, value=_range_value)
def range_(ctx, start, limit, delta):
    """start, start + delta, ... up to (not including) limit; ceil((limit - start) / delta) elements."""
    n = _range_count(start, limit, delta)
    s, d = np.asarray(start).reshape(()), np.asarray(delta).reshape(())
    return (s + np.arange(n, dtype=np.int64).astype(start.dtype) * d).astype(start.dtype) if n else \
        np.zeros(0, start.dtype)


# ---- CumSum / CumProd ---------------------------------------------------------------------------
def _scan_type(ctx: InferContext) -> list[TensorType]:
    x, axis = require(ctx, 0), require(ctx, 1)
    if axis.dtype not in (DType.i32, DType.i64):
        raise VerifyError(f"{_where(ctx)}: axis must be i32 or i64, not {axis.dtype.value}")
    return [TensorType(x.dtype, x.shape)]


_SCAN_ATTRS = {"exclusive": AttrSpec("int", 0, "1: each result leaves out its own element"),
               "reverse": AttrSpec("int", 0, "1: scan from the end")}


def _scan(fn, identity: int):
    def impl(ctx, x, axis):
        a = int(np.asarray(axis).reshape(-1)[0]) % max(x.ndim, 1)
        u = np.flip(x, a) if ctx.attrs["reverse"] else x
        acc = np.dtype(np.float32) if x.dtype.name in ("float16", "bfloat16") else x.dtype
        with np.errstate(over="ignore"):
            y = fn(u, axis=a, dtype=acc)
            if ctx.attrs["exclusive"]:
                pad = np.full((*u.shape[:a], 1, *u.shape[a + 1:]), identity, acc)
                y = np.concatenate([pad, np.take(y, np.arange(u.shape[a] - 1), axis=a)], axis=a)
        y = np.flip(y, a) if ctx.attrs["reverse"] else y
        return np.ascontiguousarray(y).astype(x.dtype, copy=False)

    return impl


define_op("CumSum", inputs=2, infer=_scan_type, attrs=_SCAN_ATTRS,
          doc="Running sum along an axis (optionally exclusive or reversed).")(_scan(np.cumsum, 0))
define_op("CumProd", inputs=2, infer=_scan_type, attrs=_SCAN_ATTRS,
          doc="Running product along an axis (optionally exclusive or reversed).")(_scan(np.cumprod, 1))


# ---- ReverseSequence ----------------------------------------------------------------------------
@define_op("ReverseSequence", inputs=2, infer=lambda ctx: [require(ctx, 0)], attrs={
    "batch_axis": AttrSpec("int", 1, "axis of the batch (0 or 1)"),
    "time_axis": AttrSpec("int", 0, "axis of time (1 or 0)")})
def reverse_sequence(ctx, x, lens):
    """For each batch entry b, its first lens[b] time steps reversed, the rest unchanged."""
    b_ax, t_ax = ctx.attrs["batch_axis"], ctx.attrs["time_axis"]
    u = np.moveaxis(x, (b_ax, t_ax), (0, 1))
    t = np.arange(u.shape[1])[None, :]
    n = lens.astype(np.int64)[:, None]
    src = np.where(t < n, n - 1 - t, t)  # (batch, time)
    out = np.take_along_axis(u, src.reshape(*src.shape, *(1,) * (u.ndim - 2)), axis=1)
    return np.ascontiguousarray(np.moveaxis(out, (0, 1), (b_ax, t_ax)))


# ---- DepthToSpace / SpaceToDepth ----------------------------------------------------------------
def _block_type(ctx: InferContext) -> list[TensorType]:
    x, b = require(ctx, 0), ctx.attrs["blocksize"]
    if b < 1:
        raise VerifyError(f"{_where(ctx)}: blocksize must be >= 1, is {b}")
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    if len(x.shape) != 4:
        raise VerifyError(f"{_where(ctx)}: X must be 4-D (NCHW), is {x}")
    n, c, h, w = x.shape

    def dim(d, factor: int):  # d * factor, exactly; None when unknown or not a whole number
        if not isinstance(d, int):
            return None
        if factor < 0 and d % -factor:
            raise VerifyError(f"{_where(ctx)}: dim {d} of {x} is not divisible by {-factor}")
        return d * factor if factor > 0 else d // -factor

    if ctx.node.op == "SpaceToDepth":
        return [TensorType(x.dtype, (n, dim(c, b * b), dim(h, -b), dim(w, -b)))]
    return [TensorType(x.dtype, (n, dim(c, -b * b), dim(h, b), dim(w, b)))]


_BLOCK_ATTRS = {"blocksize": AttrSpec("int", REQUIRED, "side of the spatial block", lo=1),
                "mode": AttrSpec("str", "DCR", "channel order: DCR (depth-column-row) or CRD (column-row-depth); "
                                               "SpaceToDepth has it since opset 28", choices=("DCR", "CRD"))}


@define_op("DepthToSpace", infer=_block_type, attrs=_BLOCK_ATTRS)
def depth_to_space(ctx, x):
    """Move blocks of channels into b x b spatial blocks."""
    n, c, h, w = x.shape
    b = ctx.attrs["blocksize"]
    if ctx.attrs["mode"] == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return np.ascontiguousarray(y).reshape(n, c // (b * b), h * b, w * b)


@define_op("SpaceToDepth", infer=_block_type, attrs=_BLOCK_ATTRS)
def space_to_depth(ctx, x):
    """Move each b x b spatial block into channels (the inverse of DepthToSpace of the same mode)."""
    n, c, h, w = x.shape
    b = ctx.attrs["blocksize"]
    perm = (0, 3, 5, 1, 2, 4) if ctx.attrs["mode"] == "DCR" else (0, 1, 3, 5, 2, 4)
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(perm)
    return np.ascontiguousarray(y).reshape(n, c * b * b, h // b, w // b)


# ---- Trilu, EyeLike -----------------------------------------------------------------------------
@define_op("Trilu", inputs=(1, 2), infer=lambda ctx: [require(ctx, 0)],
           attrs={"upper": AttrSpec("int", 1, "1: keep the upper triangle, 0: the lower")})
def trilu(ctx, x, k=None):
    """The upper (or lower) triangle of the last two dims from diagonal k; the rest zero."""
    kk = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
    rows, cols = x.shape[-2:]
    keep = np.arange(cols)[None, :] - np.arange(rows)[:, None]
    mask = keep >= kk if ctx.attrs["upper"] else keep <= kk
    return np.where(mask, x, np.zeros((), x.dtype))


def _eye_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    if x.rank is not None and x.rank != 2:
        raise VerifyError(f"{_where(ctx)}: input must be 2-D, is {x}")
    code = ctx.attrs["dtype"]
    return [TensorType(x.dtype if code is None else dtype_from_onnx_code(code, _where(ctx)), x.shape)]


@define_op("EyeLike", infer=_eye_type, attrs={
    "dtype": AttrSpec("int", None, "ONNX element-type code of the result (default: the input's)"),
    "k": AttrSpec("int", 0, "diagonal: 0 main, > 0 above, < 0 below")})
def eye_like(ctx, x):
    """Ones on diagonal k of a matrix shaped like x, zeros elsewhere."""
    code = ctx.attrs["dtype"]
    dt = x.dtype if code is None else dtype_from_onnx_code(code).numpy
    return np.eye(x.shape[0], x.shape[1], k=ctx.attrs["k"], dtype=dt)


# ---- Size, CastLike, CenterCropPad --------------------------------------------------------------
def _size_value(ctx: InferContext) -> ShapeValue | None:
    """The element count where the dims give it: their product, or the one dim other than 1s."""
    t = ctx.types[0]
    if t is None or t.shape is None:
        return None
    rest = [d for d in t.shape if d != 1]
    return ShapeValue((0 if 0 in rest else rest[0] if len(rest) == 1 else dim_mul(rest),), True)


@define_op("Size", infer=lambda ctx: [TensorType(DType.i64, ())], value=_size_value)
def size(ctx, x):
    """The number of elements of x, as an i64 scalar."""
    return np.asarray(x.size, np.int64)


def _cast_like_type(ctx: InferContext) -> list[TensorType]:
    return [TensorType(require(ctx, 1).dtype, require(ctx, 0).shape)]


@define_op("CastLike", inputs=2, infer=_cast_like_type, attrs={
    "saturate": AttrSpec("int", 1, "float8 only (unsupported); ignored"),
    "round_mode": AttrSpec("str", "up", "float8e8m0 only (unsupported); ignored")})
def cast_like(ctx, x, target):
    """x converted to the element type of ``target`` (as Cast)."""
    return _cast(x, DType.from_numpy(target.dtype))


def _crop_pad_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    shape = _vector(ctx.const(1))
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    axes = _crop_axes(ctx.attrs["axes"], len(x.shape), _where(ctx))
    out = list(x.shape)
    for i, a in enumerate(axes):
        out[a] = None if shape is None else shape[i]
    return [TensorType(x.dtype, tuple(out))]


def _crop_axes(axes, rank: int, where: str) -> list[int]:
    return list(range(rank)) if axes is None else [normalize_axis(a, rank, f"{where}: axes") for a in axes]


@define_op("CenterCropPad", inputs=2, infer=_crop_pad_type,
           attrs={"axes": AttrSpec("ints", None, "axes the shape applies to (default all)")})
def center_crop_pad(ctx, x, shape):
    """x cropped or zero-padded to ``shape`` around its center (the extra odd cell at the end)."""
    axes = _crop_axes(ctx.attrs["axes"], x.ndim, "CenterCropPad")
    out_shape, src, dst = list(x.shape), [slice(None)] * x.ndim, [slice(None)] * x.ndim
    for a, want in zip(axes, _vector(shape), strict=True):
        have = x.shape[a]
        lo = abs(have - want) // 2
        out_shape[a] = want
        if want < have:
            src[a] = slice(lo, lo + want)
        elif want > have:
            dst[a] = slice(lo, lo + have)
    out = np.zeros(out_shape, x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return out
