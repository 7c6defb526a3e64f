"""Shared digital helper ops of lowered programs (``vec.*``), run by every target's vector unit.

``vec.im2col(x: u8 [N, C, *S]) -> u8 [G, N, L, K]``  attrs of ``Conv`` plus ``pad_value``:
    the rows a grouped convolution multiplies: ``L = prod(out spatial)`` output positions (row
    major), ``K = C/G * prod(kernel)`` in im2col order ``(cin, kh, kw, ...)`` within group ``g``;
    ``x`` is padded with ``pad_value`` (the activation's zero point, so pads contribute
    ``w * (zx - zx) = 0`` once the zero-point term sits in the bias, as in ``q.conv``). Then
    ``q.conv(x, w)[n, g*M/G + m, o] == sum_k im2col(x)[g, n, o, k] * W_g[k, m]``.
``vec.col2im(y: [N, L, M]) -> [N, M, *spatial]``  attr ``spatial`` (ints, ``prod == L``):
    the rows of a lowered convolution back to channel-first layout (a transpose and reshape; no
    overlap-add, since each output position is one row).
``vec.shift_add(a, b) -> int32``  attr ``shift`` (int >= 0): ``a + (b << shift)`` in int64,
    wrapped to int32 like C (digital accumulation of partial sums of different significance;
    ``shift=0`` is the sum of row-tile partial sums).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cimc.errors import VerifyError
from cimc.ir.opdef import AttrSpec, InferContext, define_op
from cimc.ir.types import DType, TensorType
from cimc.ops._infer import broadcast_shapes, dim_mul, require
from cimc.ops.nn import _CONV_ATTRS, _auto_pad, _ints, _out_dim, _pads_attr, to_dtype, window_geometry

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
    return [TensorType(x.dtype, (group, x.shape[0], dim_mul(out), k))]


@define_op("vec.im2col", infer=_im2col_type, attrs={
    **_CONV_ATTRS, "pad_value": AttrSpec("int", 0, "value of the padding cells (the zero point)")})
def im2col(ctx, x):
    """Rows [G, N, L, K] of a grouped convolution's input, padded with pad_value."""
    a, nsp = ctx.attrs, x.ndim - 2
    kernel = _kernel(a, nsp)
    out, pb, pe, _, strides, dils = window_geometry(x.shape[2:], kernel, a)
    if any(pb) or any(pe):
        x = np.pad(x, [(0, 0), (0, 0), *zip(pb, pe, strict=True)], constant_values=x.dtype.type(a["pad_value"]))
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dils, strict=True)]
    win = sliding_window_view(x, eff, axis=tuple(range(2, x.ndim)))  # [N, C, *O_full, *eff]
    sel = (slice(None), slice(None), *(slice(0, o * s, s) for o, s in zip(out, strides, strict=True)),
           *(slice(None, None, d) for d in dils))
    win = win[sel]  # [N, C, *O, *K]
    n, c, g = x.shape[0], x.shape[1], a["group"]
    L, kk = math.prod(out), math.prod(kernel)
    win = win.reshape(n, g, c // g, L, kk).transpose(1, 0, 3, 2, 4)
    return np.ascontiguousarray(win).reshape(g, n, L, c // g * kk)


def _col2im_type(ctx: InferContext) -> list[TensorType]:
    y = require(ctx, 0)
    sp = tuple(int(s) for s in ctx.attrs["spatial"])
    if y.shape is None:
        return [TensorType(y.dtype, None, y.quant)]
    if len(y.shape) != 3:
        raise VerifyError(f"vec.col2im: operand must be [N, L, M], is {y}")
    if isinstance(y.shape[1], int) and y.shape[1] != math.prod(sp):
        raise VerifyError(f"vec.col2im: {y.shape[1]} rows per image but spatial {list(sp)} has {math.prod(sp)}")
    return [TensorType(y.dtype, (y.shape[0], y.shape[2], *sp))]


@define_op("vec.col2im", infer=_col2im_type, attrs={
    "spatial": AttrSpec("ints", (), "output spatial shape (its product is L)")})
def col2im(ctx, y):
    """[N, L, M] rows back to [N, M, *spatial]."""
    sp = tuple(ctx.attrs["spatial"])
    return np.ascontiguousarray(y.transpose(0, 2, 1)).reshape(y.shape[0], y.shape[2], *sp)


def _shift_add_type(ctx: InferContext) -> list[TensorType]:
    a, b = require(ctx, 0), require(ctx, 1)
    if not (a.dtype.is_int and b.dtype.is_int):
        raise VerifyError(f"vec.shift_add: operands must be integers, are {a} and {b}")
    if ctx.attrs["shift"] < 0:
        raise VerifyError(f"vec.shift_add: shift={ctx.attrs['shift']} must be >= 0")
    return [TensorType(DType.i32, broadcast_shapes(a.shape, b.shape))]


@define_op("vec.shift_add", inputs=2, infer=_shift_add_type, attrs={
    "shift": AttrSpec("int", 0, "left shift of the second operand (its significance)")})
def shift_add(ctx, a, b):
    """a + (b << shift), int64 then wrapped to int32."""
    return to_dtype(a.astype(np.int64) + (b.astype(np.int64) << ctx.attrs["shift"]), np.dtype(np.int32))
