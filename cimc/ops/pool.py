"""Built-in ops: the pools beyond Max/Average (GlobalMaxPool, LpPool, GlobalLpPool, MaxUnpool).

``LpPool``: ``(sum over the window of |x|^p)^(1/p)``, pads counting as 0, the window geometry as
MaxPool's (``nn.window_geometry``, separable sums). The global pools reduce every spatial axis
(kept as size 1). ``MaxUnpool`` scatters X into zeros at the flat indices MaxPool gave (over the
whole tensor), shaped ``(in - 1) * stride - pads + kernel`` per spatial axis or as ``output_shape``
says (the unpooled block in its leading corner).
"""

from __future__ import annotations

import numpy as np

from cimc.errors import CimcError, VerifyError
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, define_op
from cimc.ir.types import TensorType
from cimc.ops._infer import require
from cimc.ops.nn import _POOL_ATTRS, _global_infer, _pad, _pool_infer, _pool_setup, _separable


def _cdt(x: np.ndarray) -> np.dtype:
    return np.dtype(np.float64 if x.dtype == np.float64 else np.float32)


@define_op("GlobalMaxPool", infer=_global_infer)
def global_max_pool(ctx, x):
    """Maximum over all spatial dims, kept as size-1 dims."""
    return np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)


@define_op("GlobalLpPool", infer=_global_infer, attrs={"p": AttrSpec("int", 2, "the norm's order")})
def global_lp_pool(ctx, x):
    """The p-norm over all spatial dims, kept as size-1 dims."""
    u, p = np.abs(x.astype(_cdt(x), copy=False)), ctx.attrs["p"]
    return (np.sum(u ** p, axis=tuple(range(2, x.ndim)), keepdims=True) ** (1 / p)).astype(x.dtype)


@define_op("LpPool", infer=_pool_infer, attrs={
    **_POOL_ATTRS, "p": AttrSpec("int", 2, "the norm's order")})
def lp_pool(ctx, x):
    """The p-norm of each sliding window (pads count as 0)."""
    kernel, out, pb, pe, over, strides, dils = _pool_setup(ctx, x)
    p = ctx.attrs["p"]
    u = np.abs(x.astype(_cdt(x), copy=False)) ** p
    up = _pad(u, pb, [e + o for e, o in zip(pe, over, strict=True)])
    return (_separable(up, kernel, dils, strides, out, np.add) ** (1 / p)).astype(x.dtype)


def _unpool_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    shape = ctx.const(2) if ctx.has(2) else None
    if shape is not None:
        return [TensorType(x.dtype, tuple(int(d) for d in shape))]
    if ctx.has(2) or x.shape is None:
        return [TensorType(x.dtype, None if x.shape is None else (None,) * len(x.shape))]
    return [TensorType(x.dtype, tuple(_unpooled(x.shape, ctx.attrs)))]


def _unpooled(shape, attrs) -> list:
    kernel = attrs["kernel_shape"]
    n = len(kernel)
    if len(shape) != n + 2:
        raise VerifyError(f"MaxUnpool: kernel_shape {list(kernel)} does not fit X of rank {len(shape)}")
    strides = attrs["strides"] or (1,) * n
    pads = attrs["pads"] or (0,) * (2 * n)
    return [*shape[:2], *((d - 1) * s - (pads[i] + pads[i + n]) + k if isinstance(d, int) else None
                          for i, (d, s, k) in enumerate(zip(shape[2:], strides, kernel, strict=True)))]


@define_op("MaxUnpool", inputs=(2, 3), infer=_unpool_type, attrs={
    "kernel_shape": AttrSpec("ints", REQUIRED, "the pool's window", lo=1),
    "pads": AttrSpec("ints", None, "the pool's pads", lo=0),
    "strides": AttrSpec("ints", None, "the pool's strides", lo=1)})
def max_unpool(ctx, x, indices, output_shape=None):
    """Zeros with X's values written back where MaxPool found them."""
    inferred = _unpooled(x.shape, ctx.attrs)
    y = np.zeros(int(np.prod(inferred)), x.dtype)
    flat = indices.reshape(-1).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= y.size):
        raise CimcError(f"MaxUnpool indices reach {flat.max()}, outside the {y.size} unpooled elements")
    y[flat] = x.reshape(-1)
    y = y.reshape(inferred)
    if output_shape is None:
        return y
    out = np.zeros([int(d) for d in output_shape], x.dtype)
    out[tuple(slice(0, d) for d in inferred)] = y
    return out
