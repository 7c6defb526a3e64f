"""Built-in ops: convolution, pooling, normalization and matrix products (NC* layout, any spatial rank).

Conv is im2col plus one BLAS matmul: the padded input is viewed without copying (``as_strided``)
as windows ``(N, G, C/G, *K, *O)``, copied once to a contiguous ``(N, G, C/G*prod(K), prod(O))``
array and multiplied by ``W`` reshaped to ``(G, M/G, C/G*prod(K))``, so ``Y`` comes out NCHW with no
transpose. The columns (``prod(K)`` times the input for stride 1) are built for a chunk of images, or
of one image's first output dim, at a time and each chunk's matmul writes into its slice of ``Y``, so
the workspace stays within max(48 MiB, a quarter of the conv's input + output). A float 1x1 stride-1
unpadded conv multiplies the input directly (no im2col; for integers the "columns" are the input
converted to float32); a depthwise conv (one input channel per
group) accumulates over kernel positions with broadcasting. ConvTranspose is
one matmul followed by a scatter-add over kernel positions (col2im). Pools loop over kernel
positions (a handful) on strided slices of the padded input; averages divide by per-window counts
built per dim (separable). Float32 stays float32; float16/bfloat16 compute in float32.

Float matrix products (Conv, ConvTranspose, Gemm, MatMul, the recurrent layers) sum in float32
through BLAS, like onnxruntime, unless :func:`reproducible_floats` is on: then they sum in float64
and round once to the result type. BLAS kernels for different CPUs add float32 terms in different
orders, so float32 sums differ in their last bits from one machine to the next; float64 sums
rounded to float32 agree on every machine (except when two float64 sums straddle a float32
rounding boundary, about once in 2**29 results). The interpreter turns it on for graphs that hold
cimc's own (quantized or target) ops and for calibration, so that the integer reference, and the
quantization scales taken from float activations, do not depend on the CPU. It costs about twice
the time of a float32 product.

Integer operands are multiplied exactly through float BLAS: in float32 products of ``c`` of the
``K`` terms at a time, ``max|a| * max|b| * c <= 2**24`` (every partial sum is an exact float32
integer, whatever order BLAS adds in), summed with the bias in int32 that wraps like C (int64 for
64-bit results); if such chunks would be shorter than 128 terms, with ``bound = max|a| * max|b| * K``
(plus ``max|bias|``) in float64 while ``bound < 2**53``, else in int64 numpy matmul (slow, wraps
like C). Results are cast to the result type with C wrap-around.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from numpy.lib.stride_tricks import as_strided
from numpy.typing import DTypeLike

from cimc.errors import InputError, VerifyError
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, define_op
from cimc.ir.types import Dim, DType, TensorType, static_dims
from cimc.ops._infer import broadcast_shapes, normalize_axis, require, same_as, same_dtype

__all__ = ["compute_dtype", "conv", "exact_matmul", "f32_chunk", "float_compute_dtype", "reproducible_floats",
           "to_dtype", "window_geometry"]

_SAME = ("SAME_UPPER", "SAME_LOWER")
_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


# ---- exact arithmetic helpers -----------------------------------------------------------------
_F32_EXACT = 1 << 24  # float32 holds every integer of at most this magnitude
_MIN_CHUNK = 128  # float32 K-chunks shorter than this lose to one float64 product


def _amax(a: np.ndarray | None) -> int:
    if a is None or a.size == 0:
        return 0
    if a.dtype.kind in "ub":
        return int(a.max())
    return max(abs(int(a.min())), abs(int(a.max())))


_REPRODUCIBLE = contextvars.ContextVar("cimc_reproducible_floats", default=False)


@contextlib.contextmanager
def reproducible_floats(enabled: bool = True) -> Iterator[None]:
    """Within the block, float matrix products sum in float64 and round once (see module doc), so
    their results are the same on every CPU; ``enabled=False`` restores float32 sums."""
    token = _REPRODUCIBLE.set(enabled)
    try:
        yield
    finally:
        _REPRODUCIBLE.reset(token)


def float_compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype float matrix products of ``dtype`` operands sum in: float64 for float64 or under
    :func:`reproducible_floats`, else float32 (float16 and bfloat16 included)."""
    if _REPRODUCIBLE.get() or np.dtype(dtype) == np.float64:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def compute_dtype(a: np.ndarray, b: np.ndarray, k: int, bias: np.ndarray | None = None) -> np.dtype:
    """The dtype a product of ``a`` and ``b`` summing ``k`` terms is computed in (see module doc)."""
    dt = np.result_type(a.dtype, b.dtype) if a.dtype.kind in "fiub" and b.dtype.kind in "fiub" else None
    if dt is None or dt.kind == "f":  # float16, bfloat16 (ml_dtypes) and mixes with them too
        return float_compute_dtype(np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32))
    bound = _amax(a) * _amax(b) * k + _amax(bias)
    if bound < 2**24:
        return np.dtype(np.float32)
    return np.dtype(np.float64) if bound < 2**53 else np.dtype(np.int64)


def _chunk(total: int, most: int) -> int:
    """The size of the equal chunks ``total`` splits into when no chunk may exceed ``most`` (>= 1; 1 when
    there is nothing to split: an empty batch)."""
    if total <= 0:
        return 1
    pieces = -(-total // max(1, min(total, most)))
    return -(-total // pieces)


def f32_chunk(amax_a: int, amax_b: int, k: int) -> int | None:
    """How many of the ``k`` terms of an integer dot product one float32 product may sum exactly.

    Every partial sum of ``c`` terms is at most ``amax_a * amax_b * c``, an exact float32 integer
    while that is <= 2**24, whatever order BLAS adds in. The chunks are equalized; None when they
    would be shorter than ``_MIN_CHUNK`` (one float64 or int64 product is faster then)."""
    most = _F32_EXACT // (amax_a * amax_b) if amax_a * amax_b else k
    if most >= k:
        return max(k, 1)
    return None if most < _MIN_CHUNK else _chunk(k, most)


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    """The integer type exact chunk sums accumulate in: int32 (wrapping like C, which agrees modulo
    2**32 with the final cast) for results of at most 32 bits, else int64."""
    return np.dtype(np.int32 if dtype.kind in "iub" and dtype.itemsize <= 4 else np.int64)


def _mm_into(a: np.ndarray, b: np.ndarray, dst: np.ndarray, kc: int, bias: np.ndarray | None = None,
             buf: np.ndarray | None = None, tmp: np.ndarray | None = None) -> np.ndarray:
    """``dst = a @ b (+ bias)`` for float32 ``a``, ``b`` (``b`` at least 2-D) holding integers: ``kc``
    terms at a time in float32 (exact, see ``f32_chunk``), summed in ``dst``'s integer type.
    ``buf`` (float32, the product's shape) and ``tmp`` (``dst``'s) are optional work arrays."""
    for k0 in range(0, max(a.shape[-1], 1), kc):
        p = np.matmul(a[..., k0:k0 + kc], b[..., k0:k0 + kc, :], out=buf).reshape(dst.shape)
        if k0 == 0:
            np.copyto(dst, p, casting="unsafe")
            if bias is not None:
                dst += bias
            continue
        tmp = np.empty(dst.shape, dst.dtype) if tmp is None else tmp
        np.copyto(tmp, p, casting="unsafe")  # then a plain add: faster than one mixed-type add
        dst += tmp
    return dst


def to_dtype(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``y`` (exact integers held in float, or int64) cast to ``dtype``; integers wrap like C."""
    dtype = np.dtype(dtype)
    if y.dtype == dtype:
        return y
    if dtype.kind in "iub" and y.dtype.kind == "f":
        if dtype.kind != "b" and dtype.itemsize <= 4 and y.size:  # in range: one cast, no int64 detour
            info = np.iinfo(dtype)
            if info.min <= y.min() and y.max() <= info.max:
                return y.astype(dtype)
        y = y.astype(np.int64)
    return y.astype(dtype)


def exact_matmul(a: np.ndarray, b: np.ndarray, out_dtype: DTypeLike | None = None) -> np.ndarray:
    """``np.matmul(a, b)`` through BLAS, exact for integer operands, cast to ``out_dtype``."""
    out_dtype = np.dtype(out_dtype if out_dtype is not None else np.result_type(a.dtype, b.dtype))
    k = a.shape[-1] if a.ndim else 1
    kc = f32_chunk(_amax(a), _amax(b), k) if a.dtype.kind in "iub" and b.dtype.kind in "iub" else None
    if kc is None:
        dt = compute_dtype(a, b, k)
        return to_dtype(np.matmul(a.astype(dt, copy=False), b.astype(dt, copy=False)), out_dtype)
    af, bf = a.astype(np.float32), b.astype(np.float32)
    acc = None
    for k0 in range(0, max(k, 1), kc):
        p = np.matmul(af[..., k0:k0 + kc], bf[k0:k0 + kc] if bf.ndim == 1 else bf[..., k0:k0 + kc, :])
        if acc is None:
            acc = np.asarray(p).astype(_acc_dtype(out_dtype))
        else:
            np.add(acc, p, out=acc, dtype=acc.dtype, casting="unsafe")
    assert acc is not None  # the loop runs at least once
    return to_dtype(acc, out_dtype)


# ---- window geometry (shared by Conv and the pools) -------------------------------------------
def _ints(attrs, key: str, n: int, fill: int) -> tuple[int, ...]:
    v = attrs.get(key)
    if v is None or len(v) == 0:
        return (fill,) * n
    if len(v) != n:
        raise VerifyError(f"attribute {key}={list(v)} has {len(v)} entries, expected {n} (one per spatial dim)")
    return tuple(int(e) for e in v)


def _pads_attr(attrs, n: int) -> tuple[int, ...]:
    v = attrs.get("pads")
    if v is None or len(v) == 0:
        return (0,) * (2 * n)
    if len(v) != 2 * n:
        raise VerifyError(f"attribute pads={list(v)} has {len(v)} entries, expected {2 * n} "
                          f"(begins then ends of {n} spatial dims)")
    return tuple(int(e) for e in v)


def _auto_pad(attrs) -> str:
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto not in _AUTO_PADS:
        raise VerifyError(f"auto_pad={auto!r} is not one of {', '.join(_AUTO_PADS)}")
    return auto


def _out_dim(size: Dim, k: int, s: int, d: int, pb: int, pe: int, auto: str, ceil: bool) -> Dim:
    """One output spatial dim; symbolic input dims carry through where the size is unchanged."""
    eff = (k - 1) * d + 1
    if auto in _SAME:
        if isinstance(size, int):
            return -(-size // s)
        return size if s == 1 else None
    if auto == "VALID":
        pb = pe = 0
    if not isinstance(size, int):
        return size if s == 1 and pb + pe == eff - 1 else None
    return _out_size(size, k, s, d, pb, pe, ceil)


def _out_size(size: int, k: int, s: int, d: int, pb: int, pe: int, ceil: bool) -> int:
    """One output spatial size of a window over a known input size with explicit pads."""
    eff = (k - 1) * d + 1
    span = size + pb + pe - eff
    if span < 0:
        raise VerifyError(f"window of size {eff} (kernel {k}, dilation {d}) does not fit input dim {size} "
                          f"padded by ({pb}, {pe})")
    if ceil:
        out = -(-span // s) + 1
        if (out - 1) * s >= size + pb:  # the last window must start inside the input or left pad
            out -= 1
        return out
    return span // s + 1


def window_geometry(spatial: Sequence[int], kernel: Sequence[int], attrs,
                    ceil: bool = False) -> tuple[list[int], list[int], list[int], list[int], tuple, tuple]:
    """``(out, pads_begin, pads_end, overhang, strides, dilations)`` of a sliding window.

    ``pads_*`` are the explicit or ``auto_pad`` pads; ``overhang`` is the extra end padding
    that ``ceil_mode`` windows reach past them.
    """
    n = len(spatial)
    strides, dils = _ints(attrs, "strides", n, 1), _ints(attrs, "dilations", n, 1)
    auto, pads = _auto_pad(attrs), _pads_attr(attrs, n)
    out, pb, pe, over = [], [], [], []
    for i, (size, k, s, d) in enumerate(zip(spatial, kernel, strides, dils, strict=True)):
        eff = (k - 1) * d + 1
        if auto in _SAME:
            o = -(-size // s)
            total = max(0, (o - 1) * s + eff - size)
            b = total // 2 if auto == "SAME_UPPER" else total - total // 2
            e = total - b
        else:
            b, e = (0, 0) if auto == "VALID" else (pads[i], pads[i + n])
            o = _out_size(size, k, s, d, b, e, ceil)
        out.append(o)
        pb.append(b)
        pe.append(e)
        over.append(max(0, (o - 1) * s + eff - (size + b + e)))
    return out, pb, pe, over, strides, dils


def _pad(x: np.ndarray, begin: Sequence[int], end: Sequence[int], value=0) -> np.ndarray:
    if not any(begin) and not any(end):
        return x
    if min(begin) < 0 or min(end) < 0:
        raise InputError(f"negative pads {list(begin)} {list(end)} are not supported")
    lead = x.ndim - len(begin)
    xp = np.full((*x.shape[:lead], *(s + b + e for s, b, e in zip(x.shape[lead:], begin, end, strict=True))),
                 value, x.dtype)
    inner: tuple[Any, ...] = (..., *(slice(b, b + s) for s, b in zip(x.shape[lead:], begin, strict=True)))
    xp[inner] = x
    return xp


def _kslices(kpos: Sequence[int], dils, strides, out) -> tuple[slice, ...]:
    """Spatial slices of a padded input that kernel position ``kpos`` reads for every output."""
    return tuple(slice(k * d, k * d + (o - 1) * s + 1, s) for k, d, s, o in zip(kpos, dils, strides, out, strict=True))


# ---- Conv ---------------------------------------------------------------------------------------
_WORK = threading.local()
_WORK_MAX = 256 << 20  # larger work arrays are not kept between calls
_COL_BUDGET = 48 << 20  # im2col columns built at once: at most this many bytes ...
_COL_FRACTION = 4  # ... or this fraction of the conv's own input + output bytes, if that is more
_INT_COL_BUDGET = 8 << 20  # integer convs: at most this many bytes, multiplied image by image


def _scratch(shape: Sequence[int], dtype: np.dtype, slot: str = "buf") -> np.ndarray:
    """A work array reused across calls (``buf``: im2col columns, ``out``: float32 products): a fresh
    large array costs a page fault per 4 KiB on first touch, which takes longer than the copy into it."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > _WORK_MAX:
        return np.empty(shape, dtype)
    buf = getattr(_WORK, slot, None)
    if buf is None or buf.nbytes < nbytes:
        setattr(_WORK, slot, None)  # free the old buffer before the new one exists
        buf = np.empty(nbytes, np.uint8)
        setattr(_WORK, slot, buf)
    return buf[:nbytes].view(dtype).reshape(shape)


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, strides: Sequence[int],
         dilations: Sequence[int], pads_begin: Sequence[int], pads_end: Sequence[int], out: Sequence[int],
         group: int = 1, out_dtype: np.dtype | None = None, pad_value: int | float = 0) -> np.ndarray:
    """N-D grouped convolution of ``x`` (N, C, *S) with ``w`` (M, C/group, *K), exact for integers.

    Pad cells hold ``pad_value``. The im2col columns are built for a chunk of images (or of one
    image's first output dim) at a time, so the workspace stays within ``max(_COL_BUDGET, (input +
    output bytes) / _COL_FRACTION)``; integer columns stay within ``_INT_COL_BUDGET`` (cache) and
    are multiplied image by image, in exact float32 K-chunks summed in int32 or int64."""
    n = x.shape[0]
    m, cg, kernel = w.shape[0], w.shape[1], w.shape[2:]
    ksize, osize, mg = math.prod(kernel), math.prod(out), m // group
    out_dtype = np.dtype(out_dtype if out_dtype is not None else x.dtype)
    padding = any(pads_begin) or any(pads_end)
    kc = None  # integers: exact float32 K-chunks of this size, summed in an integer accumulator
    if x.dtype.kind in "iub" and w.dtype.kind in "iub" and (b is None or b.dtype.kind in "iub") and (
            cg > 1 or group == 1):
        kc = f32_chunk(max(_amax(x), abs(int(pad_value)) if padding else 0), _amax(w), cg * ksize)
    if kc is None and pad_value != 0 and padding:  # compute_dtype must see the pad value
        x, pads_begin, pads_end = _pad(x, pads_begin, pads_end, pad_value), (0,) * len(out), (0,) * len(out)
    dt = np.dtype(np.float32) if kc is not None else compute_dtype(x, w, cg * ksize, b)
    wd = w.astype(dt, copy=False)
    padded = tuple(s + p + e for s, p, e in zip(x.shape[2:], pads_begin, pads_end, strict=True))
    if kc is None and cg == 1 and group > 1:  # depthwise: accumulate over kernel positions
        xp = _pad(x.astype(dt, copy=False), pads_begin, pads_end)
        xs = xp.reshape(n, group, 1, *xp.shape[2:])
        wk = wd.reshape(group, mg, ksize, *(1,) * len(out))
        y = tmp = None
        for i, kpos in enumerate(np.ndindex(*kernel)):
            v = xs[(slice(None),) * 3 + _kslices(kpos, dilations, strides, out)]
            if y is None:
                y = v * wk[:, :, i]
                tmp = np.empty_like(y)
            else:
                y += np.multiply(v, wk[:, :, i], out=tmp)
    elif kc is None and ksize == 1 and all(s == 1 for s in strides) and padded == tuple(out):  # 1x1: no im2col
        xp = _pad(x.astype(dt, copy=False), pads_begin, pads_end)
        y = np.matmul(wd.reshape(group, mg, cg), xp.reshape(n, group, cg, osize))
    else:
        y = np.empty((n, group, mg, osize), dt if kc is None else _acc_dtype(out_dtype))
        bias = None if kc is None or b is None else b.astype(y.dtype).reshape(group, mg, 1)
        wm, isz = wd.reshape(group, mg, cg * ksize), dt.itemsize
        per_img = max(1, group * cg * ksize * osize * isz)  # column bytes of one image
        budget = max(_COL_BUDGET, isz * (x.size + y.size) // _COL_FRACTION)
        if kc is not None:  # integers: columns of a few images, still in cache when multiplied
            budget = min(budget, _INT_COL_BUDGET)
        small = group == 1 and osize < 64  # few outputs per image: one GEMM over the images is faster
        imgs = _chunk(n, budget // per_img)
        rows = out[0] if small or per_img <= budget else _chunk(out[0], budget * out[0] // per_img)
        rest = osize // out[0] if out[0] else 0
        chunked = kc is not None and kc < cg * ksize  # more than one K-chunk: sums need an int buffer
        for i0 in range(0, n if y.size else 0, imgs):
            xp = _pad(x[i0:i0 + imgs], pads_begin, pads_end, pad_value)
            nc, st = xp.shape[0], xp.strides
            kst = tuple(a * d for a, d in zip(st[2:], dilations, strict=True))
            ost = tuple(a * s for a, s in zip(st[2:], strides, strict=True))
            if small:
                win = as_strided(xp, (cg, *kernel, nc, *out), (st[1], *kst, st[0], *ost), writeable=False)
                cols = _scratch(win.shape, dt)
                np.copyto(cols, win, casting="unsafe")
                cols = cols.reshape(cg * ksize, nc * osize)
                dst = y[i0:i0 + nc, 0].transpose(1, 0, 2)  # (M, images, outputs)
                if kc is None:
                    dst[...] = (wm[0] @ cols).reshape(dst.shape)
                else:
                    tmp = _scratch(dst.shape, y.dtype, "acc") if chunked else None
                    _mm_into(wm[0], cols, dst, kc, None if bias is None else bias.reshape(m, 1, 1),
                             _scratch((m, nc * osize), dt, "out"), tmp)
                continue
            for r0 in range(0, out[0], rows):
                r = min(rows, out[0] - r0)
                win = as_strided(xp[:, :, r0 * strides[0]:], (nc, group, cg, *kernel, r, *out[1:]),
                                 (st[0], st[1] * cg, st[1], *kst, *ost), writeable=False)
                cols = _scratch(win.shape, dt)
                np.copyto(cols, win, casting="unsafe")
                cols = cols.reshape(nc, group, cg * ksize, r * rest)
                dst = y[i0:i0 + nc, :, :, r0 * rest:(r0 + r) * rest]
                if kc is None:
                    np.matmul(wm, cols, out=dst)
                    continue
                buf = _scratch(dst.shape[1:], dt, "out")
                tmp = _scratch(dst.shape[1:], y.dtype, "acc") if chunked else None
                for j in range(nc):  # image by image: the float32 product stays in cache
                    _mm_into(wm, cols[j], dst[j], kc, bias, buf, tmp)
    y = np.ascontiguousarray(y).reshape(n, m, *out)
    if kc is None and b is not None:
        y += b.astype(dt, copy=False).reshape(m, *(1,) * len(out))
    return to_dtype(y, out_dtype)


def _conv_infer(ctx: InferContext) -> list[TensorType]:
    x, w = require(ctx, 0), require(ctx, 1)
    group, name = ctx.attrs["group"], ctx.node.op
    if x.rank is not None and x.rank < 3:
        raise VerifyError(f"{name}: X must have rank >= 3 (N, C, spatial...), has shape {x}")
    rank = x.rank if x.rank is not None else w.rank
    if rank is None:
        return [TensorType(x.dtype, None)]
    if w.rank is not None and w.rank != rank:
        raise VerifyError(f"{name}: W {w} and X {x} must have the same rank")
    nsp = rank - 2
    kernel = ctx.attrs.get("kernel_shape") or (w.shape[2:] if w.shape is not None else None)
    if kernel is not None and len(kernel) != nsp:
        raise VerifyError(f"{name}: kernel_shape {list(kernel)} has {len(kernel)} dims, X has {nsp} spatial dims")
    if kernel is not None and w.shape is not None and any(
            isinstance(a, int) and a != b for a, b in zip(w.shape[2:], kernel, strict=True)):
        raise VerifyError(f"{name}: kernel_shape {list(kernel)} does not match W {w}; drop the attribute or fix it")
    xs = x.shape if x.shape is not None else (None,) * rank
    ws = w.shape if w.shape is not None else (None,) * rank
    if group < 1:
        raise VerifyError(f"{name}: group={group} must be >= 1")
    transpose = name == "ConvTranspose"
    cin, cw = xs[1], ws[0] if transpose else ws[1] * group if isinstance(ws[1], int) else None
    if isinstance(cin, int) and isinstance(cw, int) and cin != cw:
        want = "W.shape[0]" if transpose else "W.shape[1] * group"
        raise VerifyError(f"{name}: X has {cin} channels but {want} = {cw}; fix group or the weights")
    if transpose:
        mout = ws[1] * group if isinstance(ws[1], int) else None
    else:
        mout = ws[0]
        if isinstance(mout, int) and mout % group:
            raise VerifyError(f"{name}: {mout} output channels are not divisible by group={group}")
    bt = ctx.types[2] if ctx.has(2) else None
    if bt is not None:
        if bt.shape is not None and (len(bt.shape) != 1 or (isinstance(bt.shape[0], int) and isinstance(mout, int)
                                                            and bt.shape[0] != mout)):
            raise VerifyError(f"{name}: bias B {bt} must be 1-D with {mout} entries")
    ks = None if kernel is None else static_dims(kernel)
    if ks is None:
        return [TensorType(x.dtype, (xs[0], mout, *(None,) * nsp))]
    strides, dils = _ints(ctx.attrs, "strides", nsp, 1), _ints(ctx.attrs, "dilations", nsp, 1)
    auto, pads = _auto_pad(ctx.attrs), _pads_attr(ctx.attrs, nsp)
    if transpose:
        spatial = _convt_out_dims(xs[2:], ks, strides, dils, pads, auto, ctx.attrs)
    else:
        spatial = [_out_dim(xs[2 + i], ks[i], strides[i], dils[i], pads[i], pads[i + nsp], auto, False)
                   for i in range(nsp)]
    return [TensorType(x.dtype, (xs[0], mout, *spatial))]


_CONV_ATTRS = {
    "auto_pad": AttrSpec("str", "NOTSET", "NOTSET (use pads), SAME_UPPER, SAME_LOWER or VALID",
                         choices=("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")),
    "dilations": AttrSpec("ints", None, "dilation per spatial dim (default 1)", lo=1),
    "group": AttrSpec("int", 1, "number of groups input and output channels are split into", lo=1),
    "kernel_shape": AttrSpec("ints", None, "kernel spatial shape (default: from W)", lo=1),
    "pads": AttrSpec("ints", None, "begin pads of every spatial dim, then end pads (default 0)", lo=0),
    "strides": AttrSpec("ints", None, "stride per spatial dim (default 1)", lo=1),
}


def _float_conv_infer(ctx: InferContext) -> list[TensorType]:
    """Conv and ConvTranspose: X, W and B of one element type, then the shape rule shared with q.conv."""
    same_dtype(ctx, 0, 1, 2)
    return _conv_infer(ctx)


@define_op("Conv", inputs=(2, 3), infer=_float_conv_infer, attrs=_CONV_ATTRS)
def conv_op(ctx, x, w, b=None):
    """N-D convolution (cross-correlation) with groups, dilations, strides and padding."""
    kernel = w.shape[2:]
    out, pb, pe, _, strides, dils = window_geometry(x.shape[2:], kernel, ctx.attrs)
    return conv(x, w, b, strides=strides, dilations=dils, pads_begin=pb, pads_end=pe, out=out,
                group=ctx.attrs["group"])


# ---- ConvTranspose ------------------------------------------------------------------------------
def _convt_out_dims(spatial, kernel, strides, dils, pads, auto, attrs) -> list[Dim]:
    n = len(spatial)
    oshape = attrs.get("output_shape")
    if oshape:
        return [int(v) for v in oshape[-n:]]
    opad = _ints(attrs, "output_padding", n, 0)
    out: list[Dim] = []
    for i, size in enumerate(spatial):
        if auto in _SAME:
            out.append(size * strides[i] if isinstance(size, int) else (size if strides[i] == 1 else None))
            continue
        b, e = (0, 0) if auto == "VALID" else (pads[i], pads[i + n])
        extra = opad[i] + (kernel[i] - 1) * dils[i] + 1 - b - e
        if isinstance(size, int):
            out.append(strides[i] * (size - 1) + extra)
        else:
            out.append(size if strides[i] == 1 and extra == 1 else None)
    return out


def _convt_geometry(spatial, kernel, attrs):
    n = len(spatial)
    strides, dils = _ints(attrs, "strides", n, 1), _ints(attrs, "dilations", n, 1)
    auto, pads = _auto_pad(attrs), _pads_attr(attrs, n)
    opad = _ints(attrs, "output_padding", n, 0)
    out = _convt_out_dims(spatial, kernel, strides, dils, pads, auto, attrs)
    explicit = attrs.get("pads") and auto == "NOTSET"
    pb = []
    for i, size in enumerate(spatial):
        full = strides[i] * (size - 1) + opad[i] + (kernel[i] - 1) * dils[i] + 1
        if auto == "VALID":
            pb.append(0)
        elif explicit:
            pb.append(pads[i])
        else:  # pads derived from the output size (SAME_*, or output_shape given)
            total = full - out[i]
            pb.append(total // 2 if auto == "SAME_UPPER" else total - total // 2)
    return out, pb, strides, dils


@define_op("ConvTranspose", inputs=(2, 3), infer=_float_conv_infer, attrs={
    **_CONV_ATTRS,
    "output_padding": AttrSpec("ints", None, "extra size added at the end of each spatial dim", lo=0),
    "output_shape": AttrSpec("ints", None, "spatial output shape; pads are derived from it", lo=0),
})
def conv_transpose(ctx, x, w, b=None):
    """N-D transposed convolution: matmul to columns, then scatter-add them (col2im)."""
    group = ctx.attrs["group"]
    n, spatial = x.shape[0], x.shape[2:]
    cg, mg, kernel = w.shape[0] // group, w.shape[1], w.shape[2:]
    m, ksize, isize = mg * group, math.prod(kernel), math.prod(spatial)
    out, pb, strides, dils = _convt_geometry(spatial, kernel, ctx.attrs)
    dt = compute_dtype(x, w, cg, b)
    wt = w.astype(dt, copy=False).reshape(group, cg, mg * ksize).transpose(0, 2, 1)
    cols = np.matmul(wt, x.astype(dt, copy=False).reshape(n, group, cg, isize))
    cols = cols.reshape(n, m, *kernel, *spatial)
    lo = [min(0, p) for p in pb]
    full = [(s - 1) * st + (k - 1) * d + 1 for s, st, k, d in zip(spatial, strides, kernel, dils, strict=True)]
    size = [max(f, p + o) - lo_ for f, p, o, lo_ in zip(full, pb, out, lo, strict=True)]
    buf = np.zeros((n, m, *size), dt)
    for kpos in np.ndindex(*kernel):
        sl = tuple(slice(k * d - l, k * d - l + (i - 1) * s + 1, s)
                   for k, d, l, i, s in zip(kpos, dils, lo, spatial, strides, strict=True))
        buf[(slice(None), slice(None), *sl)] += cols[(slice(None), slice(None), *kpos)]
    y = buf[(slice(None), slice(None), *(slice(p - l, p - l + o) for p, l, o in zip(pb, lo, out, strict=True)))]
    if b is not None:
        y = y + b.astype(dt, copy=False).reshape(m, *(1,) * len(out))
    return to_dtype(np.ascontiguousarray(y), x.dtype)


# ---- Gemm / MatMul -----------------------------------------------------------------------------
def _gemm_infer(ctx: InferContext) -> list[TensorType]:
    a, b = require(ctx, 0), require(ctx, 1)
    same_dtype(ctx, 0, 1, 2)
    for t, what in ((a, "A"), (b, "B")):
        if t.rank is not None and t.rank != 2:
            raise VerifyError(f"Gemm: {what} must be 2-D, is {t}")
    sa = a.shape or (None, None)
    sb = b.shape or (None, None)
    m, ka = (sa[1], sa[0]) if ctx.attrs["transA"] else sa
    kb, n = (sb[1], sb[0]) if ctx.attrs["transB"] else sb
    if isinstance(ka, int) and isinstance(kb, int) and ka != kb:
        raise VerifyError(f"Gemm: inner dims differ: A' is {m}x{ka}, B' is {kb}x{n} "
                          f"(check transA={ctx.attrs['transA']}, transB={ctx.attrs['transB']})")
    ct = ctx.types[2] if ctx.has(2) else None
    if ct is not None and ct.shape is not None:
        cs = ct.shape
        if len(cs) > 2 or broadcast_shapes(cs, (m, n)) is None:
            raise VerifyError(f"Gemm: C {ctx.types[2]} does not broadcast to ({m}, {n})")
        for dc, dy in zip(cs[::-1], (n, m), strict=False):
            if isinstance(dc, int) and isinstance(dy, int) and dc not in (1, dy):
                raise VerifyError(f"Gemm: C {ctx.types[2]} does not broadcast to [{m},{n}]")
    return [TensorType(a.dtype, (m, n))]


@define_op("Gemm", inputs=(2, 3), infer=_gemm_infer, attrs={
    "alpha": AttrSpec("float", 1.0, "scale of A'B'"),
    "beta": AttrSpec("float", 1.0, "scale of C"),
    "transA": AttrSpec("int", 0, "use A transposed"),
    "transB": AttrSpec("int", 0, "use B transposed"),
})
def gemm(ctx, a, b, c=None):
    """alpha * A' @ B' + beta * C, with A'/B' optionally transposed and C broadcast to (M, N)."""
    alpha, beta = ctx.attrs["alpha"], ctx.attrs["beta"]
    a = a.T if ctx.attrs["transA"] else a
    b = b.T if ctx.attrs["transB"] else b
    if a.dtype.kind in "iub":
        y = exact_matmul(a, b, np.int64)
        if alpha != 1 or (c is not None and beta != 1):
            y = alpha * y.astype(np.float64) + (0 if c is None else beta * c.astype(np.float64))
            return to_dtype(y, a.dtype)
        return to_dtype(y if c is None else y + c.astype(np.int64), a.dtype)
    y = exact_matmul(a, b, a.dtype)
    if alpha != 1:
        y *= np.asarray(alpha, y.dtype)
    if c is not None and beta != 0:
        y += c if beta == 1 else np.asarray(beta, y.dtype) * c
    return y


def _matmul_infer(ctx: InferContext) -> list[TensorType]:
    a, b = require(ctx, 0), require(ctx, 1)
    same_dtype(ctx, 0, 1)
    if a.shape is None or b.shape is None:
        return [TensorType(a.dtype, None)]
    if not a.shape or not b.shape:
        raise VerifyError(f"MatMul: operands must have rank >= 1, got {a} and {b}")
    sa = (1, *a.shape) if len(a.shape) == 1 else a.shape
    sb = (*b.shape, 1) if len(b.shape) == 1 else b.shape
    ka, kb = sa[-1], sb[-2]
    if isinstance(ka, int) and isinstance(kb, int) and ka != kb:
        raise VerifyError(f"MatMul: inner dims differ: {a} @ {b} ({ka} vs {kb})")
    batch = broadcast_shapes(sa[:-2], sb[:-2])
    shape = (*batch, *sa[-2:-1][: len(a.shape) - 1], *sb[-1:][: len(b.shape) - 1])
    return [TensorType(a.dtype, tuple(shape))]


@define_op("MatMul", inputs=2, infer=_matmul_infer)
def matmul(ctx, a, b):
    """numpy matmul (1-D promotion, batch broadcasting); exact for integers."""
    return exact_matmul(a, b, a.dtype)


# ---- normalization -----------------------------------------------------------------------------
def _bn_infer(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    c = x.shape[1] if x.shape is not None and len(x.shape) > 1 else None
    for i in range(1, 5):
        t = require(ctx, i)
        if t.shape is not None and (len(t.shape) != 1 or (isinstance(c, int) and t.shape[0] not in (c, None)
                                                        and isinstance(t.shape[0], int))):
            raise VerifyError(f"BatchNormalization: operand {i} {t} must be 1-D with C={c} entries")
    stat = TensorType(require(ctx, 3).dtype, (c,))
    return [TensorType(x.dtype, x.shape), stat, stat][: max(1, ctx.num_outputs)]


@define_op("BatchNormalization", inputs=5, outputs=(1, 3), infer=_bn_infer, attrs={
    "epsilon": AttrSpec("float", 1e-5, "added to the variance"),
    "momentum": AttrSpec("float", 0.9, "running-statistics decay (training mode)"),
    "training_mode": AttrSpec("int", 0, "1: normalize with batch statistics and output running ones"),
})
def batch_norm(ctx, x, scale, bias, mean, var):
    """Y = (X - mean) / sqrt(var + eps) * scale + B over channel axis 1; training_mode uses batch stats."""
    eps, shape = ctx.attrs["epsilon"], (-1, *(1,) * (x.ndim - 2))
    cdt = np.float64 if x.dtype == np.float64 else np.float32
    xc = x.astype(cdt, copy=False)
    if ctx.attrs["training_mode"]:
        axes = (0, *range(2, x.ndim))
        bmean, bvar = xc.mean(axis=axes), xc.var(axis=axes)
        mom = ctx.attrs["momentum"]
        run_mean = (mean * mom + bmean * (1 - mom)).astype(mean.dtype)
        run_var = (var * mom + bvar * (1 - mom)).astype(var.dtype)
        mean_, var_ = bmean.astype(np.float64), bvar.astype(np.float64)
    else:
        run_mean, run_var = mean, var
        mean_, var_ = mean.astype(np.float64), var.astype(np.float64)
    a = scale.astype(np.float64) / np.sqrt(var_ + eps)
    c = bias.astype(np.float64) - mean_ * a
    y = xc * a.astype(cdt).reshape(shape)
    y += c.astype(cdt).reshape(shape)
    return y.astype(x.dtype, copy=False), run_mean, run_var


def _ln_infer(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    require(ctx, 1)
    udt = DType.f32 if ctx.attrs["stash_type"] == 1 else x.dtype
    if x.shape is None:
        stat = None
    else:
        axis = normalize_axis(ctx.attrs["axis"], len(x.shape))
        stat = (*x.shape[:axis], *(1,) * (len(x.shape) - axis))
    return [TensorType(x.dtype, x.shape), TensorType(udt, stat), TensorType(udt, stat)][: max(1, ctx.num_outputs)]


@define_op("LayerNormalization", inputs=(2, 3), outputs=(1, 3), infer=_ln_infer, attrs={
    "axis": AttrSpec("int", -1, "first normalized axis; axes axis..rank-1 are normalized together"),
    "epsilon": AttrSpec("float", 1e-5, "added to the variance"),
    "stash_type": AttrSpec("int", 1, "element type of Mean/InvStdDev and the computation (1 = float32)"),
})
def layer_norm(ctx, x, scale, bias=None):
    """Y = (X - mean) / sqrt(var + eps) * Scale + B over axes [axis, rank); also Mean and InvStdDev."""
    axis = ctx.attrs["axis"] % x.ndim
    axes = tuple(range(axis, x.ndim))
    cdt = np.float64 if x.dtype == np.float64 else np.float32
    xc = x.astype(cdt, copy=False)
    mean = xc.mean(axis=axes, keepdims=True)
    d = xc - mean
    inv = 1 / np.sqrt((d * d).mean(axis=axes, keepdims=True) + np.asarray(ctx.attrs["epsilon"], cdt))
    y = d * inv * scale.astype(cdt, copy=False)
    if bias is not None:
        y += bias.astype(cdt, copy=False)
    udt = np.float32 if ctx.attrs["stash_type"] == 1 else x.dtype
    return y.astype(x.dtype, copy=False), mean.astype(udt, copy=False), inv.astype(udt, copy=False)


@define_op("LRN", infer=same_as(0), attrs={
    "alpha": AttrSpec("float", 1e-4, "scale of the square sum"),
    "beta": AttrSpec("float", 0.75, "exponent"),
    "bias": AttrSpec("float", 1.0, "offset"),
    "size": AttrSpec("int", REQUIRED, "number of channels summed over", lo=1),
})
def lrn(ctx, x):
    """Local response normalization across channels: x / (bias + alpha/size * sum x^2)^beta."""
    size = ctx.attrs.get("size")
    if not size or size < 1:
        raise InputError(f"LRN node {ctx.node_name!r} needs attribute size >= 1, has {size}")
    cdt = np.float64 if x.dtype == np.float64 else np.float32
    sq = np.square(x.astype(cdt, copy=False))
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sqp = np.pad(sq, [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2))
    acc = sqp[:, :x.shape[1]].copy()
    for i in range(1, size):
        acc += sqp[:, i:i + x.shape[1]]
    a = ctx.attrs
    return (x / (a["bias"] + (a["alpha"] / size) * acc) ** a["beta"]).astype(x.dtype, copy=False)


# ---- pooling -----------------------------------------------------------------------------------
def _pool_infer(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    kernel = ctx.attrs.get("kernel_shape")
    if not kernel:
        raise VerifyError(f"{ctx.node.op} node {ctx.node.name!r} needs attribute kernel_shape")
    if x.shape is None:
        return [TensorType(x.dtype, None), TensorType(DType.i64, None)][: max(1, ctx.num_outputs)]
    nsp = len(x.shape) - 2
    if nsp < 1 or len(kernel) != nsp:
        raise VerifyError(f"{ctx.node.op}: kernel_shape {list(kernel)} must have one entry per spatial dim "
                          f"of X {x}")
    strides, dils = _ints(ctx.attrs, "strides", nsp, 1), _ints(ctx.attrs, "dilations", nsp, 1)
    auto, pads = _auto_pad(ctx.attrs), _pads_attr(ctx.attrs, nsp)
    ceil = bool(ctx.attrs.get("ceil_mode", 0))
    spatial = [_out_dim(x.shape[2 + i], kernel[i], strides[i], dils[i], pads[i], pads[i + nsp], auto, ceil)
               for i in range(nsp)]
    shape = (*x.shape[:2], *spatial)
    return [TensorType(x.dtype, shape), TensorType(DType.i64, shape)][: max(1, ctx.num_outputs)]


_POOL_ATTRS = {
    "auto_pad": _CONV_ATTRS["auto_pad"],
    "ceil_mode": AttrSpec("int", 0, "1: round the output size up (the last window may overhang)", choices=(0, 1)),
    "dilations": _CONV_ATTRS["dilations"],
    "kernel_shape": AttrSpec("ints", REQUIRED, "window spatial shape", lo=1),
    "pads": _CONV_ATTRS["pads"],
    "strides": _CONV_ATTRS["strides"],
}


def _pool_setup(ctx, x):
    kernel = ctx.attrs.get("kernel_shape")
    if not kernel:
        raise InputError(f"pooling node {ctx.node_name!r} needs attribute kernel_shape")
    geo = window_geometry(x.shape[2:], kernel, ctx.attrs, bool(ctx.attrs.get("ceil_mode", 0)))
    return tuple(kernel), *geo


@define_op("MaxPool", outputs=(1, 2), infer=_pool_infer, attrs={
    **_POOL_ATTRS, "storage_order": AttrSpec("int", 0, "Indices layout: 0 row major, 1 column major")})
def max_pool(ctx, x):
    """Max over sliding windows; optional Indices into the flattened input (storage_order major)."""
    kernel, out, pb, pe, over, strides, dils = _pool_setup(ctx, x)
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    xp = _pad(x, pb, [e + o for e, o in zip(pe, over, strict=True)], low)
    if ctx.num_outputs < 2:
        return _separable(xp, kernel, dils, strides, out, np.maximum)
    lead = (slice(None), slice(None))
    windows = (xp[lead + _kslices(kpos, dils, strides, out)] for kpos in np.ndindex(*kernel))
    first = next(windows)
    y, arg = first.copy(), np.zeros(first.shape, np.int64)
    for i, v in enumerate(windows, start=1):  # strict: the first maximum in window order wins
        better = v > y
        y = np.where(better, v, y)
        arg[better] = i
    kidx = np.unravel_index(arg, kernel)
    spatial = x.shape[2:]
    coords = []
    for dim in range(len(kernel)):
        o = np.arange(out[dim]).reshape((-1,) + (1,) * (len(kernel) - dim - 1))
        coords.append(o * strides[dim] - pb[dim] + kidx[dim] * dils[dim])
    order: Literal["C", "F"] = "F" if ctx.attrs["storage_order"] else "C"
    flat = np.ravel_multi_index(tuple(np.broadcast_to(c, y.shape) for c in coords), spatial, order=order)
    base = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[0], x.shape[1], *(1,) * len(kernel))
    return y, flat + base * math.prod(spatial)


def _separable(xp: np.ndarray, kernel, dils, strides, out, ufunc: np.ufunc) -> np.ndarray:
    """``ufunc``-reduce every window of the padded input one spatial dim at a time (max and sum
    are separable, so a k x k window costs 2k operations instead of k*k)."""
    y = xp
    for dim, (k, d, s, o) in enumerate(zip(kernel, dils, strides, out, strict=True)):
        lead = (slice(None),) * (2 + dim)
        acc = y[(*lead, slice(0, (o - 1) * s + 1, s))].copy()
        for j in range(1, k):
            ufunc(acc, y[(*lead, slice(j * d, j * d + (o - 1) * s + 1, s))], out=acc)
        y = acc
    return y


def _window_counts(size, k, s, d, o, lo, hi) -> np.ndarray:
    """For each of ``o`` windows along one dim: how many taps fall in padded coords [lo, hi)."""
    taps = np.arange(o)[:, None] * s + np.arange(k)[None, :] * d
    return ((taps >= lo) & (taps < hi)).sum(axis=1)


@define_op("AveragePool", infer=_pool_infer, attrs={
    **_POOL_ATTRS, "count_include_pad": AttrSpec("int", 0, "1: explicit pad cells count in the divisor")})
def average_pool(ctx, x):
    """Mean over sliding windows; the divisor excludes pads unless count_include_pad (never overhang)."""
    kernel, out, pb, pe, over, strides, dils = _pool_setup(ctx, x)
    cdt = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    xp = _pad(x.astype(cdt, copy=False), pb, [e + o for e, o in zip(pe, over, strict=True)])
    acc = _separable(xp, kernel, dils, strides, out, np.add)
    incl = ctx.attrs["count_include_pad"]
    counts = np.ones((), np.int64)
    for dim, size in enumerate(x.shape[2:]):
        lo, hi = (0, pb[dim] + size + pe[dim]) if incl else (pb[dim], pb[dim] + size)
        cnt = _window_counts(size, kernel[dim], strides[dim], dils[dim], out[dim], lo, hi)
        counts = np.multiply.outer(counts, cnt)
    acc /= counts.astype(cdt)
    return acc.astype(x.dtype, copy=False)


def _global_infer(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    if len(x.shape) < 3:
        raise VerifyError(f"{ctx.node.op}: X must have rank >= 3, is {x}")
    return [TensorType(x.dtype, (*x.shape[:2], *(1,) * (len(x.shape) - 2)))]


@define_op("GlobalAveragePool", infer=_global_infer)
def global_average_pool(ctx, x):
    """Mean over all spatial dims, kept as size-1 dims."""
    return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float64 if x.dtype == np.float64
                  else np.float32).astype(x.dtype, copy=False)

