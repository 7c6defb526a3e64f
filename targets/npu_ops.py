"""The npu target's instructions, its lowering pass ``lower-npu``, and their cost.

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
``npu.dma_out(t0, t1, ...) -> i32``  attrs ``p_ranges``/``n_ranges`` (one (begin, end) pair per
    operand, flattened; ``p_ranges`` empty for flat layers), ``positions`` (P), ``channels`` (N),
    ``spatial`` (conv: the output's spatial shape): drains accumulator tiles from the output buffer
    to DRAM, each at its place of the layer's result ``[..., P, N]`` (flat: ``[..., N]``); a
    convolution's result is then NCHW ``[B, N, *spatial]``. So ``dma_out`` of the tiles of one layer
    equals the ``q.conv``/``q.gemm``/``q.matmul`` result exactly.

Tiling (``lower-npu``), for a layer with weight matrix ``W [K, N]``: a weight tile is ``k_len x
n_len`` with ``k_len`` a multiple of ``mac_rows`` (or all of K) and ``n_len`` a multiple of
``mac_cols`` (or all of N), as large as the weight buffer holds (full K first, so most layers need
no partial sums). Positions are split into chunks so that a chunk's input rows fit the activation
buffer and its ``p_len x n_len`` int32 accumulators fit the output buffer. Loop order: chunks,
then N tiles, then K tiles (partial sums chained through ``acc``, the bias added by the first);
weight tiles are loaded once per layer when there is one chunk (or ``allow_reload = false``, which
also requires all weights to fit the weight buffer at once), else once per chunk; an all-zero
tile (pruned by ``sparsify``) is skipped (the first K tile of an N range is kept, for the bias).
Op count per layer: ``chunks * (1 + 2 * tiles) + 1``, never per position.

Cost (``op_cost``; static shapes only, symbolic dims counted as 1, i.e. per sample):
  ``npu.gemm``: cycles = passes * (P + R + C - 2) (weight-stationary systolic: each R x C pass
    streams the P positions through, plus fill and drain), passes = ceil(k/R) * ceil(n/C) dense;
    macs = P * cells; energy = macs * (mac_pj + pe_reg_pj) + buffer bytes * buffer_pj_per_byte,
    buffer bytes = activation reads P*k*ceil(n/C) + weight reads cells + accumulator read and
    write 2*4*P*n*ceil(k/R).
  ``npu.dma_in``/``npu.dma_out``: cycles = bytes / dma_bytes_per_cycle, energy = bytes *
    (dram_pj_per_byte + buffer_pj_per_byte); weight loads are unit "load" (with ``cim.bytes``).
  Float ``MatMul``/``Gemm`` (attention: two activations, which the quantizer leaves in float)
    and ``LSTM`` stay the shared float ops and are charged to the array as fp work: the same
    systolic cycles with the second operand held stationary, energy macs * fp_mac_pj. They are not
    rewritten to integers: the program must equal the quantized graph bit for bit.
  Other ops: the vector unit, ``ceil(elements / vec_lanes) * vec_op_cycles`` cycles and
    ``elements * vec_mul_pj`` (multiplying ops) or ``vec_op_pj`` pJ, as ``cimc.cost.vector_cost``
    counts elements; layout ops are free.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from cimc.cost import Cost, num_elements, vector_cost
from cimc.errors import PassError, VerifyError
from cimc.ir.core import Graph, Node, Value
from cimc.ir.opdef import AttrSpec, InferContext, define_op, lookup
from cimc.ir.types import DType, TensorType
from cimc.ops._infer import require
from cimc.ops.nn import exact_matmul, to_dtype, window_geometry
from cimc.passes import register_pass
from cimc.passmanager import Pass, PassContext, PassResult

__all__ = ["LowerNpuPass", "op_cost", "register"]

logger = logging.getLogger(__name__)

ARRAY = ("q.conv", "q.gemm", "q.matmul")
FP_ARRAY = ("MatMul", "Gemm", "LSTM")
_MUL_OPS = frozenset({"q.requant", "q.add", "q.quantize", "q.dequantize", "Mul", "Div", "Softmax",
                      "LayerNormalization", "Erf", "Exp", "Sigmoid", "Tanh", "Pow", "Sqrt", "Reciprocal",
                      "ReduceMean", "AveragePool", "GlobalAveragePool", "BatchNormalization", "Gelu"})
_registered = False


# ---- ops ---------------------------------------------------------------------------------------
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
    (k0, k1), n = tuple(a["k_range"]), w.shape[1]
    if isinstance(w.shape[0], int) and w.shape[0] != k1 - k0:
        raise VerifyError(f"{_where(ctx)}: k_range {k0}..{k1} has {k1 - k0} rows but the tile is {w}")
    pos = tuple(a["positions"])
    xs = x.shape
    if a["kernel_shape"]:
        if not pos:
            raise VerifyError(f"{_where(ctx)}: a convolution tile needs positions (p0, p1)")
        shape = (xs[0] if xs else None, pos[1] - pos[0], n)
    elif xs is None:
        shape = None
    elif pos:
        shape = (*xs[:-2], pos[1] - pos[0], n)
    else:
        shape = (*xs[:-1], n)
    return [TensorType(DType.i32, shape)]


def _dma_out_type(ctx: InferContext) -> list[TensorType]:
    a, t = ctx.attrs, require(ctx, 0)
    n = a["channels"]
    if len(_pairs(a["n_ranges"])) != len(ctx.types):
        raise VerifyError(f"{_where(ctx)}: {len(ctx.types)} tiles but {len(_pairs(a['n_ranges']))} n_ranges")
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
    "kernel_shape": AttrSpec("ints", (), "convolution window (empty: x is already a matrix)"),
    "strides": AttrSpec("ints", (1, 1), "convolution strides"),
    "pads": AttrSpec("ints", (0, 0, 0, 0), "explicit pads, begins then ends"),
    "dilations": AttrSpec("ints", (1, 1), "convolution dilations"),
    "out_spatial": AttrSpec("ints", (), "output spatial shape (OH, OW) of the convolution"),
    "x_zero_point": AttrSpec("int", 0, "zero point of x: the value padding cells take"),
}


def register() -> None:
    """Define the ``npu.*`` ops (idempotent)."""
    global _registered
    if _registered or lookup("npu.gemm") is not None:
        _registered = True
        return
    _registered = True

    @define_op("npu.dma_in", infer=_dma_in_type, side_effects=True, attrs={
        "buffer": AttrSpec("str", "act", "destination buffer: weight or act"),
        "bytes": AttrSpec("int", 0, "bytes moved (activations: per batch element)")})
    def dma_in(ctx, x):
        """Copy from DRAM into a buffer: identity on the value."""
        return x

    @define_op("npu.gemm", inputs=(2, 4), infer=_gemm_type, attrs={
        "k_range": AttrSpec("ints", (0, 0), "rows k0, k1 of the layer's [K, N] weight matrix this tile holds"),
        "n_range": AttrSpec("ints", (0, 0), "columns n0, n1 of the layer's weight matrix this tile holds"),
        "positions": AttrSpec("ints", (), "per-sample output positions p0, p1 (empty: every row)"),
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

    @define_op("npu.dma_out", inputs=(1, None), infer=_dma_out_type, attrs={
        "p_ranges": AttrSpec("ints", (), "per operand: its positions (begin, end), flattened; empty for flat"),
        "n_ranges": AttrSpec("ints", (), "per operand: its channels (begin, end), flattened"),
        "positions": AttrSpec("int", 0, "positions P per sample"),
        "channels": AttrSpec("int", 0, "channels N of the result"),
        "spatial": AttrSpec("ints", (), "convolution: output spatial shape (result NCHW)")})
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


# ---- lowering ----------------------------------------------------------------------------------
def _spec(ctx: PassContext):
    from cimc.targets.npu import NpuSpec

    spec = getattr(ctx.target, "spec", None)
    return spec if isinstance(spec, NpuSpec) else NpuSpec()


def _weight_matrix(node: Node) -> np.ndarray:
    """The layer's weights as the [K, N] matrix the array holds (block-diagonal for groups)."""
    w = node.inputs[1].const
    if node.op == "q.gemm":
        return w.T
    if node.op == "q.matmul":
        return w
    m, cg = w.shape[0], w.shape[1]
    g = node.attrs.get("group", 1)
    khw = math.prod(w.shape[2:])
    flat = w.reshape(m, cg * khw)
    if g == 1:
        return flat.T
    mat = np.zeros((cg * g * khw, m), np.int8)
    mg = m // g
    for gi in range(g):  # one block per group: O(groups) numpy calls at compile time
        mat[gi * cg * khw:(gi + 1) * cg * khw, gi * mg:(gi + 1) * mg] = flat[gi * mg:(gi + 1) * mg].T
    return mat


def _tiles(k: int, n: int, s) -> tuple[int, int]:
    """(k_len, n_len) of a weight tile: full K when a mac_cols-wide strip fits, as wide as fits."""
    r, c, buf = s.mac_rows, s.mac_cols, s.weight_buffer_bytes
    k_len = k if k * min(n, c) <= buf else max(r, buf // c // r * r)
    n_len = min(n, max(c, buf // k_len // c * c))
    return k_len, n_len


def _passes(tile: np.ndarray, r: int, c: int) -> tuple[int, int]:
    """(array passes with a nonzero weight, weights in them) of one tile."""
    passes = cells = 0
    for i in range(0, tile.shape[0], r):
        for j in range(0, tile.shape[1], c):
            sub = tile[i:i + r, j:j + c]
            if sub.any():
                passes += 1
                cells += sub.size
    return passes, cells


def _check_fits(graph: Graph, s) -> None:
    """With ``allow_reload = false``: all weights stay in the weight buffer, so they must fit it."""
    layers = [n for n in graph.nodes if n.op in ARRAY and n.inputs[1].const is not None]
    need = sum(_weight_matrix(n).size for n in layers)  # one byte per (mac_bits <= 8) weight
    if need > s.weight_buffer_bytes:
        raise PassError(f"model {graph.name!r} does not fit the weight buffer with allow_reload = false: its "
                        f"{len(layers)} array layers hold {need} weight bytes, but the npu weight buffer holds "
                        f"{s.weight_buffer_bytes} bytes; allow reloads from DRAM (--spec-set allow_reload=true) or "
                        f"enlarge the buffer (--spec-set weight_buffer_bytes={need})")


@register_pass
@dataclass(frozen=True)
class LowerNpuPass(Pass):
    """Lower q.conv/q.gemm/q.matmul to npu.dma_in / npu.gemm / npu.dma_out tiles; annotate the rest."""

    name: ClassVar[str] = "lower-npu"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Rewrite every array layer with a constant weight; every other op stays, run by the vector unit."""
        register()
        s = _spec(ctx)
        if not s.allow_reload:
            _check_fits(graph, s)
        changed = False
        for node in list(graph.nodes):
            if node.op in ARRAY and node.inputs[1].const is not None:
                self._lower(graph, node, s)
                changed = True
            elif node.op.startswith("npu."):
                continue
            elif "cim.layer" not in node.attrs:
                node.attrs["cim.layer"] = node.name
                changed = True
        graph.remove_dead()
        graph.metadata["npu.lowered"] = "1"
        return PassResult(changed)

    def _lower(self, g: Graph, node: Node, s) -> None:
        x, out = node.inputs[0], node.outputs[0]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        wm = _weight_matrix(node)
        k, n = wm.shape
        layer = node.name
        geom: dict[str, Any] = {}
        xs = x.type.shape
        if node.op == "q.conv":
            if xs is None or len(xs) != 4 or not all(isinstance(d, int) for d in xs[1:]):
                raise PassError(f"lower-npu: {layer} (q.conv) needs a 2-D NCHW input with static C, H, W, "
                                f"found {x.type}")
            kern = tuple(node.inputs[1].const.shape[2:])
            o, pb, pe, _, st, dl = window_geometry(xs[2:], kern, node.attrs)
            geom = {"kernel_shape": kern, "strides": tuple(st), "dilations": tuple(dl), "pads": (*pb, *pe),
                    "out_spatial": tuple(o), "x_zero_point": node.attrs["x_zero_point"]}
            p_total = o[0] * o[1]
            row_bytes = xs[1] * xs[3]  # one input row of every channel
            eh = (kern[0] - 1) * dl[0] + 1

            def footprint(p0: int, p1: int) -> int:
                r0, r1 = p0 // o[1], (p1 - 1) // o[1] + 1
                lo, hi = max(0, r0 * st[0] - pb[0]), min(xs[2], (r1 - 1) * st[0] + eh - pb[0])
                return max(0, hi - lo) * row_bytes
        elif xs is not None and len(xs) >= 3 and isinstance(xs[-2], int):
            p_total = xs[-2]

            def footprint(p0: int, p1: int) -> int:
                return (p1 - p0) * k
        else:
            p_total = None

            def footprint(p0: int, p1: int) -> int:
                return k
        k_len, n_len = _tiles(k, n, s)
        if p_total is None:
            chunks = [None]
        else:
            p_len = max(1, min(p_total, s.out_buffer_bytes // (4 * n_len)))
            while p_len > 1 and footprint(0, p_len) > s.act_buffer_bytes:
                p_len = (p_len + 1) // 2
            chunks = [(p, min(p + p_len, p_total)) for p in range(0, p_total, p_len)]
        kt = [(k0, min(k0 + k_len, k)) for k0 in range(0, k, k_len)]
        nt = [(n0, min(n0 + n_len, n)) for n0 in range(0, n, n_len)]
        bias_c = bias.const if bias is not None else None
        consts: dict[tuple, tuple[Value, int, int]] = {}
        for ni, (n0, n1) in enumerate(nt):
            for ki, (k0, k1) in enumerate(kt):
                tile = np.ascontiguousarray(wm[k0:k1, n0:n1])
                if ki > 0 and not tile.any():
                    continue  # pruned: nothing to add
                passes, cells = _passes(tile, s.mac_rows, s.mac_cols)
                consts[(ni, ki)] = (g.add_constant(tile, f"{layer}/w{n0}_{k0}"), passes, cells)
        bias_tiles = {ni: g.add_constant(np.ascontiguousarray(bias_c[n0:n1]), f"{layer}/b{n0}")
                      if bias_c is not None else None for ni, (n0, n1) in enumerate(nt)}
        if bias is not None and bias_c is None:
            raise PassError(f"lower-npu: {layer}: the bias must be a constant")
        ann = {"cim.layer": layer}
        loads: dict[tuple, Value] = {}
        tiles, p_ranges, n_ranges = [], [], []
        for chunk in chunks:
            xin = g.add_node("npu.dma_in", [x], {"buffer": "act", "bytes": int(footprint(*chunk) if chunk
                                                                              else footprint(0, 1)), **ann},
                             name=f"{layer}/dma_x", before=node).outputs[0]
            for ni, (n0, n1) in enumerate(nt):
                acc = None
                for ki, (k0, k1) in enumerate(kt):
                    if (ni, ki) not in consts:
                        continue
                    wc, passes, cells = consts[(ni, ki)]
                    key = (ni, ki) if len(chunks) == 1 or not s.allow_reload else (ni, ki, chunk)
                    if key not in loads:
                        nbytes = (k1 - k0) * (n1 - n0)
                        loads[key] = g.add_node("npu.dma_in", [wc], {"buffer": "weight", "bytes": nbytes,
                                                                     "cim.bytes": nbytes, **ann},
                                                name=f"{layer}/load_w", before=node).outputs[0]
                    attrs = {"k_range": (k0, k1), "n_range": (n0, n1), "positions": tuple(chunk or ()),
                             **geom, "npu.passes": passes, "npu.cells": cells, **ann}
                    ops = [xin, loads[key], acc, bias_tiles[ni] if acc is None else None]
                    while ops[-1] is None:
                        ops.pop()
                    acc = g.add_node("npu.gemm", ops, attrs, name=f"{layer}/gemm", before=node).outputs[0]
                tiles.append(acc)
                n_ranges += [n0, n1]
                if chunk is not None:
                    p_ranges += list(chunk)
        attrs = {"p_ranges": tuple(p_ranges), "n_ranges": tuple(n_ranges), "positions": p_total or 0,
                 "channels": n, "spatial": tuple(geom.get("out_spatial", ())), **ann}
        res = g.add_node("npu.dma_out", tiles, attrs, outputs=[out.type], name=f"{layer}/dma_out", before=node)
        g.replace_all_uses_with(out, res.outputs[0])
        g.remove_node(node)
        g.rename_value(res.outputs[0], out.name)


# ---- cost --------------------------------------------------------------------------------------
def _systolic(p: int, k: int, n: int, s) -> float:
    return math.ceil(k / s.mac_rows) * math.ceil(n / s.mac_cols) * (p + s.mac_rows + s.mac_cols - 2)


def _dma(nbytes: float, s, unit: str) -> Cost:
    return Cost(nbytes / s.dma_bytes_per_cycle, nbytes * (s.dram_pj_per_byte + s.buffer_pj_per_byte), unit)


def op_cost(node: Node, s) -> Cost:
    """Cost of one program op on the npu with spec ``s`` (module docstring: the formulas)."""
    a, op = node.attrs, node.op
    if op == "npu.gemm":
        out = node.outputs[0]
        p = max(1, num_elements(out) // max(1, out.type.shape[-1]))
        (k0, k1), n = a["k_range"], node.inputs[1].type.shape[1]
        k = k1 - k0
        dense = math.ceil(k / s.mac_rows) * math.ceil(n / s.mac_cols)
        passes, cells = a.get("npu.passes", dense), a.get("npu.cells", k * n)
        macs = p * cells
        buf = p * k * math.ceil(n / s.mac_cols) + cells + 8 * p * n * math.ceil(k / s.mac_rows)
        return Cost(float(passes * (p + s.mac_rows + s.mac_cols - 2)),
                    macs * (s.mac_pj + s.pe_reg_pj) + buf * s.buffer_pj_per_byte, "array", macs)
    if op == "npu.dma_in":
        weight = a.get("buffer", "act") == "weight"
        nbytes = a.get("bytes", 0)
        if not weight:  # per batch element: times a static batch
            shape = node.inputs[0].type.shape or ()
            nbytes *= shape[0] if shape and isinstance(shape[0], int) else 1
        return _dma(float(nbytes), s, "load" if weight else "dma")
    if op == "npu.dma_out":
        return _dma(4.0 * num_elements(node.outputs[0]), s, "dma")
    if op in FP_ARRAY:
        shapes = [v.type.shape if v is not None else None for v in node.inputs]
        if op == "LSTM" and shapes[1] is not None and shapes[0] is not None:
            hidden4, inp = shapes[1][1], shapes[1][2]
            hid = hidden4 // 4 if isinstance(hidden4, int) else 1
            p = math.prod(d if isinstance(d, int) else 1 for d in shapes[0][:2]) * (shapes[1][0] or 1)
            k, n = (inp if isinstance(inp, int) else 1) + hid, hidden4 if isinstance(hidden4, int) else 1
        elif shapes[0] is not None and shapes[1] is not None and len(shapes[1]) >= 2:
            k = shapes[0][-1] if isinstance(shapes[0][-1], int) else 1
            rows = math.prod(d if isinstance(d, int) else 1 for d in shapes[0][:-1])
            n = num_elements(node.outputs[0]) // max(1, rows)
            p = max(1, num_elements(node.outputs[0]) // max(1, n))
        else:
            return _vector(node, s)
        macs = p * k * n
        return Cost(_systolic(p, k, n, s), macs * s.fp_mac_pj + (p * k + k * n + 4 * p * n) * s.buffer_pj_per_byte,
                    "array", macs)
    return _vector(node, s)


def _vector(node: Node, s) -> Cost:
    """The shared vector-unit model, with the multiplier's energy for ops that multiply."""
    pj = s.vec_mul_pj if node.op in _MUL_OPS else s.vec_op_pj
    return vector_cost(node, lanes=s.vec_lanes, cycles_per_op=s.vec_op_cycles, pj_per_op=pj)
