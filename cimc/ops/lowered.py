"""Shared digital helper ops of lowered programs (``vec.*``), run by every target's vector unit.

``vec.im2col(x: [N, C, *S]) -> [G, N, K, L]``  attrs of ``Conv`` plus ``pad_value``:
    the columns a grouped convolution multiplies: ``K = C/G * prod(kernel)`` rows in im2col order
    ``(cin, kh, kw, ...)`` within group ``g``, by ``L = prod(out spatial)`` output positions (row
    major); ``x`` is padded with ``pad_value`` (the activation's zero point, so pads contribute
    ``w * (zx - zx) = 0`` once the zero-point term sits in the bias, as in ``q.conv``). Then
    ``q.conv(x, w)[n, g*M/G + m, o] == sum_k W_g[k, m] * im2col(x)[g, n, k, o]``. A 1x1 convolution
    with unit strides and no padding needs no copy (the result is a view of ``x``).
``vec.col2im(y: [N, M, L]) -> [N, M, *spatial]``  attr ``spatial`` (ints, ``prod == L``):
    a lowered convolution's result back to its spatial shape (a reshape: each output position is
    one column, so there is no overlap-add).
``vec.dilate(x: [N, C, *S]) -> [N, C, *S']``  attrs ``strides`` (one per spatial dim), ``pads``
    (begins then ends; a negative pad crops), ``pad_value``: ``x``'s cells spread ``strides``
    apart with ``pad_value`` between them, then padded (or cropped) with ``pad_value``:
    ``out[n, c, pb + i*s] = x[n, c, i]``, ``S' = (S - 1)*s + 1 + pb + pe``. A transposed convolution
    is a convolution of this (see the ``legalize-convs`` pass); ``pad_value`` is the zero point, so
    the inserted cells contribute ``w * (zx - zx) = 0``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cimc.errors import VerifyError
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, define_op
from cimc.ir.types import TensorType
from cimc.ops._infer import dim_mul, require
from cimc.ops.nn import _CONV_ATTRS, _auto_pad, _ints, _out_dim, _pads_attr, window_geometry

__all__: list[str] = []


def _kernel(ctx_attrs, rank: int) -> tuple[int, ...]:
    k = ctx_attrs.get("kernel_shape")
    if not k or len(k) != rank:
        raise VerifyError(f"vec.im2col: kernel_shape {k} must give one size per spatial dim ({rank})")
    return tuple(int(v) for v in k)


def _im2col_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    if x.shape is None:
        return [TensorType(x.dtype, (None, None, None, None))]
    if len(x.shape) < 3:
        raise VerifyError(f"vec.im2col: x must be [N, C, spatial...], is {x}")
    nsp, a = len(x.shape) - 2, ctx.attrs
    kernel, group = _kernel(a, nsp), a["group"]
    strides, dils = _ints(a, "strides", nsp, 1), _ints(a, "dilations", nsp, 1)
    pads, auto = _pads_attr(a, nsp), _auto_pad(a)
    out = [_out_dim(s, k, st, d, pads[i], pads[i + nsp], auto, False)
           for i, (s, k, st, d) in enumerate(zip(x.shape[2:], kernel, strides, dils, strict=True))]
    c = x.shape[1]
    if isinstance(c, int) and c % group:
        raise VerifyError(f"vec.im2col: {c} channels do not split into group={group}")
    k = c // group * math.prod(kernel) if isinstance(c, int) else None
    return [TensorType(x.dtype, (group, x.shape[0], k, dim_mul(out)))]


@define_op("vec.im2col", infer=_im2col_type, attrs={
    **_CONV_ATTRS, "pad_value": AttrSpec("int", 0, "value of the padding cells (the zero point)")})
def im2col(ctx, x):
    """Columns [G, N, K, L] of a grouped convolution's input, padded with pad_value."""
    a, nsp = ctx.attrs, x.ndim - 2
    kernel = _kernel(a, nsp)
    out, pb, pe, _, strides, dils = window_geometry(x.shape[2:], kernel, a)
    n, c, g = x.shape[0], x.shape[1], a["group"]
    L, kk = math.prod(out), math.prod(kernel)
    if kk == 1 and not any(pb) and not any(pe) and tuple(out) == x.shape[2:]:
        return x.reshape(n, g, c // g, L).transpose(1, 0, 2, 3)
    if any(pb) or any(pe):
        x = np.pad(x, [(0, 0), (0, 0), *zip(pb, pe, strict=True)], constant_values=x.dtype.type(a["pad_value"]))
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dils, strict=True)]
    win = sliding_window_view(x, eff, axis=tuple(range(2, x.ndim)))  # [N, C, *O_full, *eff]
    sel = (slice(None), slice(None), *(slice(0, o * s, s) for o, s in zip(out, strides, strict=True)),
           *(slice(None, None, d) for d in dils))
    win = win[sel].transpose(0, 1, *range(2 + nsp, 2 + 2 * nsp), *range(2, 2 + nsp))  # [N, C, *K, *O]
    return np.ascontiguousarray(win).reshape(n, g, c // g * kk, L).transpose(1, 0, 2, 3)


def _col2im_type(ctx: InferContext) -> list[TensorType]:
    y = require(ctx, 0)
    sp = tuple(int(s) for s in ctx.attrs["spatial"])
    if y.shape is None:
        return [TensorType(y.dtype, None, y.quant)]
    if len(y.shape) != 3:
        raise VerifyError(f"vec.col2im: operand must be [N, M, L], is {y}")
    if isinstance(y.shape[2], int) and y.shape[2] != math.prod(sp):
        raise VerifyError(f"vec.col2im: {y.shape[2]} positions per image but spatial {list(sp)} has {math.prod(sp)}")
    return [TensorType(y.dtype, (y.shape[0], y.shape[1], *sp))]


@define_op("vec.col2im", infer=_col2im_type, attrs={
    "spatial": AttrSpec("ints", (), "output spatial shape (its product is L)", lo=0)})
def col2im(ctx, y):
    """[N, M, L] to [N, M, *spatial]."""
    return y.reshape(*y.shape[:2], *ctx.attrs["spatial"])


def _dilate_geometry(spatial, attrs) -> tuple[list[int], list[int], list[int]]:
    """``(strides, pads_begin, pads_end)`` of ``vec.dilate`` for ``spatial``, checked."""
    n = len(spatial)
    strides, pads = [int(v) for v in attrs["strides"]], [int(v) for v in attrs["pads"]]
    if len(strides) != n or len(pads) != 2 * n:
        raise VerifyError(f"vec.dilate: strides {strides} and pads {pads} must give 1 and 2 entries per spatial "
                          f"dim ({n})")
    return strides, pads[:n], pads[n:]


def _dilate_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    if x.shape is None:
        return [TensorType(x.dtype, None, x.quant)]
    if len(x.shape) < 3:
        raise VerifyError(f"vec.dilate: x must be [N, C, spatial...], is {x}")
    strides, pb, pe = _dilate_geometry(x.shape[2:], ctx.attrs)
    out = [(d - 1) * s + 1 + b + e if isinstance(d, int) else None
           for d, s, b, e in zip(x.shape[2:], strides, pb, pe, strict=True)]
    if any(o is not None and o < 1 for o in out):
        raise VerifyError(f"vec.dilate: pads {list(ctx.attrs['pads'])} crop {x} to nothing")
    return [TensorType(x.dtype, (*x.shape[:2], *out), x.quant)]


@define_op("vec.dilate", infer=_dilate_type, attrs={
    "strides": AttrSpec("ints", REQUIRED, "spacing of the input cells per spatial dim", lo=1),
    "pads": AttrSpec("ints", REQUIRED, "pads after the spacing, begins then ends (negative: crop)"),
    "pad_value": AttrSpec("int", 0, "value of the inserted and padding cells (the zero point)")})
def dilate(ctx, x):
    """x's cells ``strides`` apart, then padded or cropped, every new cell pad_value."""
    strides, pb, pe = _dilate_geometry(x.shape[2:], ctx.attrs)
    full = [(d - 1) * s + 1 for d, s in zip(x.shape[2:], strides, strict=True)]
    out = np.full((*x.shape[:2], *(f + b + e for f, b, e in zip(full, pb, pe, strict=True))),
                  x.dtype.type(ctx.attrs["pad_value"]), x.dtype)
    # cells of x, as placed in the uncropped frame, and the part of them the output keeps
    src = [np.arange(d) * s + b for d, s, b in zip(x.shape[2:], strides, pb, strict=True)]
    keep = [(i >= 0) & (i < o) for i, o in zip(src, out.shape[2:], strict=True)]
    sel = np.ix_(*(np.flatnonzero(k) for k in keep))
    dst = np.ix_(*(i[k] for i, k in zip(src, keep, strict=True)))
    out[(slice(None), slice(None), *dst)] = x[(slice(None), slice(None), *sel)]
    return out
