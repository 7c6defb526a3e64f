"""npu instructions: ``npu.dma_in``, ``npu.gemm`` and ``npu.dma_out``, their definitions and executor
implementations.

Instructions (namespace ``npu.``; everything else in a lowered program is a shared digital op run
by the vector unit: ``q.requant``, ``q.add``, ``q.quantize``, ``q.dequantize``, pools, layout, and
the float ops the quantizer left in float):

``npu.dma_in(x) -> x``  attrs ``buffer`` ("weight" | "act"), ``bytes``: copies ``bytes`` from DRAM
    into the weight or activation buffer; identity on the value. A weight load is an operand
    dependency (the loaded tile is the value the ``npu.gemm`` ops that use it read), not hidden
    state, so the graph shows which gemm uses which load and a reused load is one value with
    several readers. Activation ``bytes`` are per batch element (the rows of the input a position
    chunk needs), weight ``bytes`` are the tile's size.
``npu.gemm(x: u8, w: i8 [k_len, n_len], acc: i32?, bias: i32 [n_len]?) -> i32``  one weight tile
    on the MAC array over every output position of a chunk, attrs ``k_range`` (k0, k1: the rows of
    the layer's [K, N] weight matrix the tile holds), ``n_range`` (n0, n1: its columns),
    ``positions`` (p0, p1: per-sample output positions; empty = all rows of a flat ``x``), and for
    a convolution (``kernel_shape`` set) ``strides``, ``pads`` (explicit, begins then ends),
    ``dilations``, ``out_spatial``, ``x_zero_point``:
    ``out = acc + bias + cols[..., p0:p1, k0:k1] @ w`` in exact integers wrapped to int32, where
    ``cols`` is ``x`` itself (flat: ``[..., K]``; rows: ``[..., P, K]``) or, for a convolution, the
    im2col of NCHW ``x`` padded with ``x_zero_point`` (the array's input feeder reads the activation
    buffer in window order: ``K`` index = ``c * kh*kw + i*kw + j``, position = ``oh * OW + ow``), giving
    ``[N, p1-p0, n_len]``. Grouped convolutions use the block-diagonal ``[C*kh*kw, M]`` weight
    matrix (the zero blocks contribute nothing). Annotations ``npu.passes`` (R x C array passes with
    a nonzero weight) and ``npu.cells`` (weights in those passes) price it.
``npu.matmul(a: u8 [..., M, K], b: u8 [..., K, N]) -> i32 [..., M, N]``  attrs ``a_zero_point``,
    ``b_zero_point``: a matmul of two activations (attention's ``Q K^T`` and ``P V``) on the MAC
    array: ``b`` (loaded by an ``npu.dma_in`` into the weight buffer on every inference, since it is
    computed) is held in the PEs one ``R x C`` block at a time and the rows of ``a`` stream through;
    ``out = (a - a_zero_point) @ (b - b_zero_point)`` in exact integers wrapped to int32 (leading dims
    broadcast as ``MatMul``'s), equal to ``q.act_matmul``. The array multiplies the codes; the
    zero-point terms (``za * colsum(b)``, ``zb * rowsum(a)``, ``K * za * zb``) are added by the
    vector unit, which the cost counts.
``npu.dma_out(t0, t1, ...) -> i32``  attrs ``p_ranges``/``n_ranges`` (one (begin, end) pair per
    operand, flattened; ``p_ranges`` empty for flat layers), ``positions`` (P), ``channels`` (N),
    ``spatial`` (conv: the output's spatial shape): drains accumulator tiles from the output buffer
    to DRAM, each at its place of the layer's result ``[..., P, N]`` (flat: ``[..., N]``); a
    convolution's result is then NCHW ``[B, N, *spatial]``. So ``dma_out`` of the tiles of one layer
    equals the ``q.conv``/``q.gemm``/``q.matmul`` result exactly.
"""

from __future__ import annotations

import math

import numpy as np

from cimc.errors import VerifyError
from cimc.ir.opdef import AttrSpec, InferContext, op_def
from cimc.ir.types import DType, Shape, TensorType
from cimc.ops._infer import broadcast_shapes, require
from cimc.ops.nn import exact_matmul, to_dtype, window_geometry
from cimc.ops.quantized import act_matmul_codes

__all__ = ["OPS", "dma_in", "dma_out", "gemm"]


def _pairs(v) -> list[tuple[int, int]]:
    v = tuple(v or ())
    return [(int(v[i]), int(v[i + 1])) for i in range(0, len(v), 2)]


def _where(ctx: InferContext) -> str:
    return f"node {ctx.node.name!r} ({ctx.node.op})"


def _dma_in_type(ctx: InferContext) -> list[TensorType]:
    if ctx.attrs["buffer"] not in ("weight", "act"):
        raise VerifyError(f"{_where(ctx)}: buffer={ctx.attrs['buffer']!r}, expected 'weight' or 'act'")
    return [require(ctx, 0)]


def _gemm_type(ctx: InferContext) -> list[TensorType]:
    x, w, a = require(ctx, 0), require(ctx, 1), ctx.attrs
    if x.dtype is not DType.u8 or w.dtype is not DType.i8:
        raise VerifyError(f"{_where(ctx)}: operands are {x} and {w}, expected u8 activations and an i8 tile")
    if w.shape is None or len(w.shape) != 2:
        raise VerifyError(f"{_where(ctx)}: the weight tile {w} must be 2-D [k_len, n_len]")
    _check_ranges(ctx, x.shape)
    (k0, k1), n = tuple(a["k_range"]), w.shape[1]
    if isinstance(w.shape[0], int) and w.shape[0] != k1 - k0:
        raise VerifyError(f"{_where(ctx)}: k_range {k0}..{k1} has {k1 - k0} rows but the tile is {w}")
    pos = tuple(a["positions"])
    xs = x.shape
    if a["kernel_shape"]:
        shape: Shape | None = (xs[0] if xs else None, pos[1] - pos[0], n)
    elif xs is None:
        shape = None
    elif pos:
        shape = (*xs[:-2], pos[1] - pos[0], n)
    else:
        shape = (*xs[:-1], n)
    acc, bias = (ctx.types[i] if i < len(ctx.types) else None for i in (2, 3))
    if acc is not None and (acc.dtype is not DType.i32 or _conflict(acc.shape, shape)):
        raise VerifyError(f"{_where(ctx)}: the accumulator {acc} must be i32 of the result's shape {shape}")
    if bias is not None and (bias.dtype is not DType.i32 or bias.shape is None or len(bias.shape) != 1
                             or _conflict(bias.shape, (n,))):
        raise VerifyError(f"{_where(ctx)}: the bias {bias} must be an i32 vector of the tile's {n} columns")
    return [TensorType(DType.i32, shape)]


def _check_ranges(ctx: InferContext, xs: Shape | None) -> None:
    """A gemm tile's ranges are pairs (begin <= end) inside ``x`` (of shape ``xs``; dims that are not sizes are
    not checked): ``k_range`` within its K (a convolution's ``C * kh * kw``), ``positions`` within its rows (a
    convolution's ``OH * OW``), and a convolution's window geometry gives ``out_spatial`` on ``x``'s H, W."""
    a, where = ctx.attrs, _where(ctx)
    for key in ("k_range", "n_range", "positions"):
        v = tuple(a[key])
        if (len(v) != 2 and (key != "positions" or v)) or (v and v[0] > v[1]):
            raise VerifyError(f"{where}: {key}={list(v)} must be a pair (begin, end) with begin <= end"
                              + (", or empty" if key == "positions" else ""))
    (_, k1), pos = tuple(a["k_range"]), tuple(a["positions"])
    if a["kernel_shape"]:
        kern, out = tuple(a["kernel_shape"]), tuple(a["out_spatial"])
        if len(kern) != 2 or len(out) != 2:
            raise VerifyError(f"{where}: a convolution tile has a 2-D kernel_shape and out_spatial, has "
                              f"{list(kern)} and {list(out)}")
        if not pos:
            raise VerifyError(f"{where}: a convolution tile needs positions (p0, p1)")
        if xs is None:
            return
        if len(xs) != 4:
            raise VerifyError(f"{where}: a convolution tile takes an NCHW x, is of shape {list(xs)}")
        c, h, w = xs[1:]
        if isinstance(h, int) and isinstance(w, int):
            got = tuple(window_geometry((h, w), kern, a)[0])
            if got != out:
                raise VerifyError(f"{where}: its window (kernel_shape {list(kern)}, strides {list(a['strides'])}, "
                                  f"dilations {list(a['dilations'])}, pads {list(a['pads'])}) on x's {h} x {w} gives "
                                  f"{list(got)} outputs, not out_spatial {list(out)}")
        if isinstance(c, int) and k1 > c * kern[0] * kern[1]:
            raise VerifyError(f"{where}: k_range ends at {k1}, beyond x's {c} channels x {kern[0] * kern[1]} "
                              f"kernel cells")
        if pos[1] > out[0] * out[1]:
            raise VerifyError(f"{where}: positions end at {pos[1]}, beyond the {out[0] * out[1]} output positions")
        return
    if xs is None:
        return
    if not xs or (pos and len(xs) < 2):
        raise VerifyError(f"{where}: x of shape {list(xs)} has no {'rows and ' if pos else ''}columns to multiply")
    if isinstance(xs[-1], int) and k1 > xs[-1]:
        raise VerifyError(f"{where}: k_range ends at {k1}, beyond x's {xs[-1]} columns")
    if pos and isinstance(xs[-2], int) and pos[1] > xs[-2]:
        raise VerifyError(f"{where}: positions end at {pos[1]}, beyond x's {xs[-2]} rows")


def _conflict(a: tuple | None, b: tuple | None) -> bool:
    """Whether two shapes differ in rank or in a dim both know."""
    if a is None or b is None:
        return False
    return len(a) != len(b) or any(isinstance(x, int) and isinstance(y, int) and x != y
                                   for x, y in zip(a, b, strict=True))


def _dma_out_type(ctx: InferContext) -> list[TensorType]:
    a, t = ctx.attrs, require(ctx, 0)
    n = a["channels"]
    ns, ps = _pairs(a["n_ranges"]), _pairs(a["p_ranges"])
    if a["spatial"] and (not a["p_ranges"] or a["positions"] != math.prod(a["spatial"])):
        raise VerifyError(f"{_where(ctx)}: a convolution's result (spatial {list(a['spatial'])}) needs p_ranges and "
                          f"positions = {math.prod(a['spatial'])}, has positions = {a['positions']}")
    if len(ns) != len(ctx.types) or (ps and len(ps) != len(ctx.types)):
        raise VerifyError(f"{_where(ctx)}: {len(ctx.types)} tiles but {len(ns)} n_ranges and {len(ps)} p_ranges")
    for i, (tile, (n0, n1)) in enumerate(zip(ctx.types, ns, strict=True)):
        dims = tile.shape if tile is not None else None
        if not 0 <= n0 <= n1 <= n or (dims and isinstance(dims[-1], int) and dims[-1] != n1 - n0):
            raise VerifyError(f"{_where(ctx)}: tile {i} {tile} does not fill channels {n0}..{n1} of {n}")
        if ps and (not 0 <= ps[i][0] <= ps[i][1] <= a["positions"] or (
                dims and len(dims) > 1 and isinstance(dims[-2], int) and dims[-2] != ps[i][1] - ps[i][0])):
            raise VerifyError(f"{_where(ctx)}: tile {i} {tile} does not fill positions {ps[i][0]}..{ps[i][1]} of "
                              f"{a['positions']}")
    if t.shape is None:
        return [TensorType(DType.i32, None)]
    if a["spatial"]:
        return [TensorType(DType.i32, (t.shape[0], n, *a["spatial"]))]
    if a["p_ranges"]:
        return [TensorType(DType.i32, (*t.shape[:-2], a["positions"], n))]
    return [TensorType(DType.i32, (*t.shape[:-1], n))]


def _im2col(x: np.ndarray, a, p0: int, p1: int, k0: int, k1: int) -> np.ndarray:
    """Columns ``[B, p1-p0, k1-k0]`` of the zero-point-padded NCHW ``x``, computing only the
    output rows and input channels the position and K ranges touch."""
    (kh, kw), (sh, sw), (dh, dw) = a["kernel_shape"], a["strides"], a["dilations"]
    pt, pl, _, pr = a["pads"]
    ow_ = a["out_spatial"][1]
    khw = kh * kw
    r0, r1 = p0 // ow_, (p1 - 1) // ow_ + 1
    c0, c1 = k0 // khw, -(-k1 // khw)
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    lo, hi, h = r0 * sh - pt, (r1 - 1) * sh + eh - pt, x.shape[2]  # input rows the chunk reads
    xs = x[:, c0:c1, max(lo, 0):min(hi, h)]
    if max(-lo, 0) or max(hi - h, 0) or pl or pr:
        xs = np.pad(xs, [(0, 0), (0, 0), (max(-lo, 0), max(hi - h, 0)), (pl, pr)],
                    constant_values=x.dtype.type(a["x_zero_point"]))
    win = np.lib.stride_tricks.sliding_window_view(xs, (eh, ew), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    win = win[:, :, :r1 - r0, :ow_].transpose(0, 2, 3, 1, 4, 5)
    cols = win.reshape(x.shape[0], (r1 - r0) * ow_, (c1 - c0) * khw)
    return cols[:, p0 - r0 * ow_:p1 - r0 * ow_, k0 - c0 * khw:k1 - c0 * khw]


def _exact_gemm(cols: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``cols @ w`` exactly, as int64, through float32 BLAS: K is cut into chunks whose sums stay
    below 2**24 (from the operands' dtype and weight bounds), accumulated in float64 (exact)."""
    if cols.dtype.kind not in "ui" or w.dtype.kind not in "ui" or cols.dtype.itemsize > 2 or w.dtype.itemsize > 2:
        return exact_matmul(cols, w, np.int64)
    k = w.shape[0]
    xmax = max(abs(int(np.iinfo(cols.dtype).min)), int(np.iinfo(cols.dtype).max))
    wmax = int(np.abs(w.astype(np.int32)).max(initial=0)) if w.size else 0
    kc = max(1, ((1 << 24) - 1) // max(1, xmax * wmax))
    a, b = cols.astype(np.float32), w.astype(np.float32)
    if k <= kc:
        return np.matmul(a, b).astype(np.int64)
    y = np.zeros((*a.shape[:-1], b.shape[1]), np.float64)
    for k0 in range(0, k, kc):
        y += np.matmul(a[..., k0:k0 + kc], b[k0:k0 + kc])
    return y.astype(np.int64)


_CONV_GEOM = {
    "kernel_shape": AttrSpec("ints", (), "convolution window (empty: x is already a matrix)", lo=1),
    "strides": AttrSpec("ints", (1, 1), "convolution strides", lo=1),
    "pads": AttrSpec("ints", (0, 0, 0, 0), "explicit pads, begins then ends", lo=0),
    "dilations": AttrSpec("ints", (1, 1), "convolution dilations", lo=1),
    "out_spatial": AttrSpec("ints", (), "output spatial shape (OH, OW) of the convolution", lo=0),
    "x_zero_point": AttrSpec("int", 0, "zero point of x: the value padding cells take"),
}


@op_def("npu.dma_in", infer=_dma_in_type, side_effects=True, attrs={
    "buffer": AttrSpec("str", "act", "destination buffer: weight or act", choices=("weight", "act")),
    "bytes": AttrSpec("int", 0, "bytes moved (activations: per batch element)", lo=0)})
def dma_in(ctx, x):
    """Copy from DRAM into a buffer: identity on the value."""
    return x

@op_def("npu.gemm", inputs=(2, 4), infer=_gemm_type, attrs={
    "k_range": AttrSpec("ints", (0, 0), "rows k0, k1 of the layer's [K, N] weight matrix this tile holds", lo=0),
    "n_range": AttrSpec("ints", (0, 0), "columns n0, n1 of the layer's weight matrix this tile holds", lo=0),
    "positions": AttrSpec("ints", (), "per-sample output positions p0, p1 (empty: every row)", lo=0),
    **_CONV_GEOM})
def gemm(ctx, x, w, acc=None, bias=None):
    """acc + bias + cols[..., p0:p1, k0:k1] @ w, exact, wrapped to int32."""
    a = ctx.attrs
    (k0, k1), pos = tuple(a["k_range"]), tuple(a["positions"])
    if a["kernel_shape"]:
        cols = _im2col(x, a, pos[0], pos[1], k0, k1)
    else:
        cols = x[..., pos[0]:pos[1], k0:k1] if pos else x[..., k0:k1]
    y = _exact_gemm(cols, w)
    if acc is not None:
        y = y + acc.astype(np.int64)
    if bias is not None:
        y = y + bias.astype(np.int64)
    return to_dtype(y, np.dtype(np.int32))

@op_def("npu.dma_out", inputs=(1, None), infer=_dma_out_type, attrs={
    "p_ranges": AttrSpec("ints", (), "per operand: its positions (begin, end), flattened; empty for flat", lo=0),
    "n_ranges": AttrSpec("ints", (), "per operand: its channels (begin, end), flattened", lo=0),
    "positions": AttrSpec("int", 0, "positions P per sample", lo=0),
    "channels": AttrSpec("int", 0, "channels N of the result", lo=0),
    "spatial": AttrSpec("ints", (), "convolution: output spatial shape (result NCHW)", lo=0)})
def dma_out(ctx, *tiles):
    """Drain accumulator tiles to DRAM, each at its place in the layer's result."""
    a = ctx.attrs
    ns, ps = _pairs(a["n_ranges"]), _pairs(a["p_ranges"])
    if ps:
        out = np.empty((*tiles[0].shape[:-2], a["positions"], a["channels"]), np.int32)
        for t, (p0, p1), (n0, n1) in zip(tiles, ps, ns, strict=True):
            out[..., p0:p1, n0:n1] = t
    else:
        out = np.empty((*tiles[0].shape[:-1], a["channels"]), np.int32)
        for t, (n0, n1) in zip(tiles, ns, strict=True):
            out[..., n0:n1] = t
    if a["spatial"]:
        out = np.ascontiguousarray(np.moveaxis(out, -1, 1)).reshape(out.shape[0], a["channels"], *a["spatial"])
    return out


def _matmul_type(ctx: InferContext) -> list[TensorType]:
    a, b = require(ctx, 0), require(ctx, 1)
    if a.dtype is not DType.u8 or b.dtype is not DType.u8:
        raise VerifyError(f"{_where(ctx)}: operands are {a} and {b}, expected two u8 activations")
    if a.shape is None or b.shape is None:
        return [TensorType(DType.i32, None)]
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise VerifyError(f"{_where(ctx)}: both operands must have rank >= 2, are {a} and {b}")
    batch = broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2]))
    return [TensorType(DType.i32, (*batch, a.shape[-2], b.shape[-1]))]


@op_def("npu.matmul", inputs=2, infer=_matmul_type, attrs={
    "a_zero_point": AttrSpec("int", 0, "zero point of a", lo=0, hi=255),
    "b_zero_point": AttrSpec("int", 0, "zero point of b (held in the array)", lo=0, hi=255)})
def matmul(ctx, a, b):
    """(a - a_zero_point) @ (b - b_zero_point), exact, wrapped to int32: b streamed into the array."""
    return act_matmul_codes(a, b, ctx.attrs["a_zero_point"], ctx.attrs["b_zero_point"])


OPS = (dma_in, gemm, dma_out, matmul)
"""The npu instructions, as the target lists them."""
