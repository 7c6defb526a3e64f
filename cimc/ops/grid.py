"""Built-in ops: sampling at computed positions and block rearrangement (GridSample, AffineGrid,
DeformConv, Col2Im).

``GridSample``: the grid's last axis holds normalized coordinates in [-1, 1], innermost spatial axis
first; they map to pixels as ``(g + 1) / 2 * (n - 1)`` (``align_corners``) or ``((g + 1) * n - 1) / 2``.
Coordinates outside the border box (pixel centers with ``align_corners``, else the pixel edges) are
clamped (``border``) or reflected (``reflection``) first; samples then read the ``2^r`` (linear) or
``4^r`` (cubic, Keys a = -0.75) neighbours, or the rounded-half-to-even pixel (nearest), each
neighbour outside the image being 0 (``zeros``), the edge (``border``) or reflected (``reflection``).
``AffineGrid`` makes such a grid: ``theta`` times the base coordinates (pixel centers in [-1, 1]).
``DeformConv`` (2-D): a convolution whose every kernel tap reads the input bilinearly at its regular
position plus a learned offset (0 outside), scaled by an optional mask, then one matmul per group.
``Col2Im``: sums each column of ``[N, C*prod(block), L]`` into its sliding-block position of the
(padded) image and crops the pads.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from cimc.errors import CimcError, VerifyError
from cimc.ir.opdef import AttrSpec, InferContext, define_op
from cimc.ir.types import TensorType
from cimc.ops._infer import require
from cimc.ops.nn import _CONV_ATTRS, exact_matmul, float_compute_dtype


def _where(ctx: InferContext) -> str:
    return f"node {ctx.node.name!r} ({ctx.node.op})"


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``x`` reflected at the borders ``lo``/``hi`` until it lies between them."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    below, above = x < lo, x > hi
    dx = np.where(below, lo - x, x - hi)
    n = np.trunc(dx / span)
    r = dx - n * span
    even = n % 2 == 0
    return np.where(below, np.where(even, lo + r, hi - r), np.where(above, np.where(even, hi - r, lo + r), x))


def _keys(t: np.ndarray) -> list[np.ndarray]:
    """Keys' cubic weights (a = -0.75) of the 4 taps at offsets -1, 0, 1, 2 for fractions ``t``."""
    a = -0.75

    def near(d):
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _gs_verify(node) -> str | None:
    a = node.attrs
    if a.get("mode", "linear") not in ("linear", "nearest", "cubic", "bilinear", "bicubic"):
        return f"mode is {a['mode']!r}, expected linear, nearest or cubic"
    if a.get("padding_mode", "zeros") not in ("zeros", "border", "reflection"):
        return f"padding_mode is {a['padding_mode']!r}, expected zeros, border or reflection"
    return None


def _grid_sample_type(ctx: InferContext) -> list[TensorType]:
    x, grid = require(ctx, 0), require(ctx, 1)
    if x.shape is None or grid.shape is None:
        return [TensorType(x.dtype, None)]
    if len(grid.shape) != len(x.shape) or (isinstance(grid.shape[-1], int) and grid.shape[-1] != len(x.shape) - 2):
        raise VerifyError(f"{_where(ctx)}: grid {grid} does not fit X {x} (it needs [N, *out, {len(x.shape) - 2}])")
    return [TensorType(x.dtype, (x.shape[0], x.shape[1], *grid.shape[1:-1]))]


@define_op("GridSample", inputs=2, infer=_grid_sample_type, verify=_gs_verify, attrs={
    "align_corners": AttrSpec("int", 0, "1: -1 and 1 are the corner pixels' centers, 0: their outer edges"),
    "mode": AttrSpec("str", "linear", "linear, nearest or cubic"),
    "padding_mode": AttrSpec("str", "zeros", "zeros, border or reflection: what lies outside the image")})
def grid_sample(ctx, x, grid):
    """X sampled at the grid's normalized positions."""
    a = ctx.attrs
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(a["mode"], a["mode"])
    pad, corners = a["padding_mode"], bool(a["align_corners"])
    dims = x.shape[2:]
    r = len(dims)
    g = grid.astype(np.float32)[..., ::-1]  # outermost spatial axis first
    coords = []
    for k, n in enumerate(dims):
        u = g[..., k].astype(np.float64)
        c = (u + 1) / 2 * (n - 1) if corners else ((u + 1) * n - 1) / 2
        c = c.astype(np.float32).astype(np.float64)
        if mode == "nearest":
            c = np.rint(c)
        lo, hi = (0.0, n - 1.0) if corners else (-0.5, n - 0.5)
        if pad == "border":
            c = np.where((c < lo) | (c > hi), np.clip(c, 0, n - 1), c)
        elif pad == "reflection":
            c = _reflect(c, lo, hi)
        coords.append((c, lo, hi))

    def fetch(idx: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """Integer indices per dim made readable by the padding mode, and where they read 0."""
        out, inside = [], np.ones(idx[0].shape, bool)
        for i, (n, (_, lo, hi)) in zip(idx, zip(dims, coords, strict=True), strict=True):
            if pad == "zeros":
                inside &= (i >= 0) & (i < n)
                i = np.clip(i, 0, n - 1)
            elif pad == "border":
                i = np.clip(i, 0, n - 1)
            else:
                i = np.clip(np.trunc(_reflect(i.astype(np.float64), lo, hi)).astype(np.int64), 0, n - 1)
            out.append(i)
        return out, inside

    if mode == "nearest":
        taps: list[tuple[list[np.ndarray], Any]] = [([c.astype(np.int64) for c, _, _ in coords], None)]
    else:
        base = [np.floor(c).astype(np.int64) for c, _, _ in coords]
        frac = [c - b for (c, _, _), b in zip(coords, base, strict=True)]
        offsets = (0, 1) if mode == "linear" else (-1, 0, 1, 2)
        weights = [[1 - f, f] if mode == "linear" else _keys(f) for f in frac]
        taps = [([b + o for b, o in zip(base, combo, strict=True)],
                 math.prod(weights[k][offsets.index(o)] for k, o in enumerate(combo)))
                for combo in itertools.product(offsets, repeat=r)]
    out = np.zeros((x.shape[0], x.shape[1], *grid.shape[1:-1]), np.float64)
    for b in range(x.shape[0]):
        xb = x[b].astype(np.float64)
        for idx, w in taps:
            where, inside = fetch([i[b] for i in idx])
            v = xb[(slice(None), *where)] * inside
            out[b] += v if w is None else v * w[b]
    return out.astype(x.dtype)


def _affine_type(ctx: InferContext) -> list[TensorType]:
    theta = require(ctx, 0)
    size = ctx.const(1)
    if size is None:
        n = ctx.types[1].shape[0] if ctx.types[1] is not None and ctx.types[1].shape else None
        return [TensorType(theta.dtype, None if not isinstance(n, int) else (None,) * (n - 1))]
    s = [int(v) for v in size]
    return [TensorType(theta.dtype, (s[0], *s[2:], len(s) - 2))]


@define_op("AffineGrid", inputs=2, infer=_affine_type,
           attrs={"align_corners": AttrSpec("int", 0, "1: -1 and 1 are the corner pixels' centers")})
def affine_grid(ctx, theta, size):
    """The sampling grid [N, *spatial, r] of affine maps theta [N, r, r+1] over a base grid."""
    s = [int(v) for v in size]
    spatial = s[2:]
    axes = [np.linspace(-1, 1, n) if ctx.attrs["align_corners"] else (np.arange(n) * 2 + 1) / n - 1
            for n in spatial]
    mesh = np.meshgrid(*axes, indexing="ij")  # outermost axis first
    base = np.stack([*mesh[::-1], np.ones(mesh[0].shape)], axis=-1)  # (x, y[, z], 1)
    out = np.einsum("...k,njk->n...j", base, theta.astype(np.float64))
    return out.astype(theta.dtype)


def _col2im_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    image, block = ctx.const(1), ctx.const(2)
    if image is None or block is None or x.shape is None:
        it = ctx.types[1]
        r = it.shape[0] if it is not None and it.shape is not None and len(it.shape) == 1 else None
        return [TensorType(x.dtype, None if not isinstance(r, int) else (None,) * (r + 2))]
    c = x.shape[1] // math.prod(int(b) for b in block) if isinstance(x.shape[1], int) else None
    return [TensorType(x.dtype, (x.shape[0], c, *(int(v) for v in image)))]


@define_op("Col2Im", inputs=3, infer=_col2im_type, attrs={
    "dilations": _CONV_ATTRS["dilations"], "pads": _CONV_ATTRS["pads"], "strides": _CONV_ATTRS["strides"]})
def col2im(ctx, x, image_shape, block_shape):
    """Sliding-block columns summed back into an image (the inverse layout of im2col)."""
    image, block = [int(v) for v in image_shape], [int(v) for v in block_shape]
    r = len(image)
    a = ctx.attrs
    strides, dils = a["strides"] or (1,) * r, a["dilations"] or (1,) * r
    pads = a["pads"] or (0,) * (2 * r)
    padded = [n + pads[i] + pads[i + r] for i, n in enumerate(image)]
    out_dims = [(p - ((k - 1) * d + 1)) // s + 1 for p, k, d, s in zip(padded, block, dils, strides, strict=True)]
    if math.prod(out_dims) != x.shape[2]:
        raise CimcError(f"Col2Im: {x.shape[2]} blocks given, the geometry makes {math.prod(out_dims)}")
    c = x.shape[1] // math.prod(block)
    cols = x.reshape(x.shape[0], c, *block, *out_dims)
    y = np.zeros((x.shape[0], c, *padded), np.float64 if x.dtype.kind == "f" else x.dtype)
    for kpos in np.ndindex(*block):
        sl = tuple(slice(k * d, k * d + (o - 1) * s + 1, s) for k, d, s, o in zip(kpos, dils, strides, out_dims,
                                                                                strict=True))
        y[(slice(None), slice(None), *sl)] += cols[(slice(None), slice(None), *kpos)]
    crop = tuple(slice(pads[i], pads[i] + n) for i, n in enumerate(image))
    return np.ascontiguousarray(y[(slice(None), slice(None), *crop)]).astype(x.dtype)


def _deform_type(ctx: InferContext) -> list[TensorType]:
    x, w, off = require(ctx, 0), require(ctx, 1), require(ctx, 2)
    if x.rank is not None and x.rank != 4:
        raise VerifyError(f"{_where(ctx)}: only 2-D deformable convolution is supported, X is {x}")
    m = w.shape[0] if w.shape is not None else None
    spatial = off.shape[2:] if off.shape is not None else (None, None)
    return [TensorType(x.dtype, (x.shape[0] if x.shape else None, m, *spatial))]


@define_op("DeformConv", inputs=(3, 5), infer=_deform_type, attrs={
    "dilations": _CONV_ATTRS["dilations"], "group": AttrSpec("int", 1, "channel groups of the weights"),
    "kernel_shape": _CONV_ATTRS["kernel_shape"], "offset_group": AttrSpec("int", 1, "channel groups of the offsets"),
    "pads": _CONV_ATTRS["pads"], "strides": _CONV_ATTRS["strides"]})
def deform_conv(ctx, x, w, offset, bias=None, mask=None):
    """2-D convolution whose taps read X at learned offsets (bilinear, 0 outside), times the mask."""
    a = ctx.attrs
    n, c, height, width = x.shape
    m, cg, kh, kw = w.shape
    sh, sw = a["strides"] or (1, 1)
    dh, dw = a["dilations"] or (1, 1)
    pt, pl = (a["pads"] or (0, 0, 0, 0))[:2]
    oh, ow = offset.shape[2:]
    group, og = a["group"], a["offset_group"]
    dt = float_compute_dtype(x.dtype)
    off = offset.astype(np.float64).reshape(n, og, kh * kw, 2, oh, ow)
    msk = np.ones((n, og, kh * kw, oh, ow)) if mask is None else mask.astype(np.float64).reshape(n, og, kh * kw, oh, ow)
    base_y = (np.arange(oh) * sh - pt)[:, None] + 0 * np.arange(ow)[None, :]
    base_x = (np.arange(ow) * sw - pl)[None, :] + 0 * np.arange(oh)[:, None]
    cols = np.zeros((n, c, kh * kw, oh, ow), np.float64)
    per = c // og
    for b in range(n):
        for gidx in range(og):
            xs = x[b, gidx * per:(gidx + 1) * per].astype(np.float64).reshape(per, -1)
            for t, (i, j) in enumerate(np.ndindex(kh, kw)):
                y = base_y + i * dh + off[b, gidx, t, 0]
                xx = base_x + j * dw + off[b, gidx, t, 1]
                y0, x0 = np.floor(y).astype(np.int64), np.floor(xx).astype(np.int64)
                acc = np.zeros((per, oh, ow))
                for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                    for xi, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
                        ok = (yy >= 0) & (yy < height) & (xi >= 0) & (xi < width)
                        idx = np.clip(yy, 0, height - 1) * width + np.clip(xi, 0, width - 1)
                        acc += xs[:, idx] * (wy * wx * ok)
                cols[b, gidx * per:(gidx + 1) * per, t] = acc * msk[b, gidx, t]
    cols = cols.reshape(n, group, cg * kh * kw, oh * ow).astype(dt)
    wg = w.reshape(group, m // group, cg * kh * kw).astype(dt)
    y = exact_matmul(wg, cols, dt).reshape(n, m, oh, ow)
    if bias is not None:
        y = y + bias.astype(dt).reshape(m, 1, 1)
    return y.astype(x.dtype)
