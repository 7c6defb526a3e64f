"""The npu lowering pass ``lower-npu``: array layers to DMA and tiled GEMM instructions.

For a layer with weight matrix ``W [K, N]``: a weight tile is ``k_len x
n_len`` with ``k_len`` a multiple of ``mac_rows`` (or all of K) and ``n_len`` a multiple of
``mac_cols`` (or all of N), as large as the weight buffer holds (full K first, so most layers need
no partial sums). Positions are split into chunks so that a chunk's input rows fit the activation
buffer and its ``p_len x n_len`` int32 accumulators fit the output buffer. Loop order: chunks,
then N tiles, then K tiles (partial sums chained through ``acc``, the bias added by the first);
weight tiles are loaded once per layer when there is one chunk or when all the model's weights fit
the weight buffer at once (they then stay resident, each at its own ``npu.offset``, and their loads
are one-time; ``allow_reload = false`` requires that), else once per chunk; an all-zero
tile (pruned by ``sparsify``) is skipped (the first K tile of an N range is kept, for the bias).
Op count per layer: ``chunks * (1 + 2 * tiles) + 1``, never per position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from cimc.errors import PassError
from cimc.ir.core import Graph, Node, Value
from cimc.ir.types import dim_per_sample
from cimc.ops.nn import window_geometry
from cimc.passmanager import Pass, PassContext, PassResult
from cimc.target import ARRAY_OPS, Spec
from cimc.targets.npu.spec import NpuSpec

__all__ = ["LowerNpuPass"]


@dataclass(frozen=True)
class _Reads:
    """The input bytes (per sample) that a chunk of output positions ``p0:p1`` reads into the activation
    buffer: a convolution reads the input rows its windows cover (every channel), a row-wise layer
    ``x [..., P, K]`` its ``p1 - p0`` rows, a flat one ``x [..., K]`` one row."""

    k: int
    conv: tuple[int, int, int, int, int, int] | None = None
    """For a convolution: output width, stride and begin pad along H, window extent along H, input height,
    bytes of one input row of every channel."""
    rows: bool = False

    def bytes(self, p0: int, p1: int) -> int:
        """Bytes read for output positions ``p0:p1``."""
        if self.conv is not None:
            ow, st, pb, eh, h, row_bytes = self.conv
            r0, r1 = p0 // ow, (p1 - 1) // ow + 1
            lo, hi = max(0, r0 * st - pb), min(h, (r1 - 1) * st + eh - pb)
            return max(0, hi - lo) * row_bytes
        return (p1 - p0) * self.k if self.rows else self.k


def _weight_matrix(node: Node) -> np.ndarray:
    """The layer's weights as the [K, N] matrix the array holds (block-diagonal for groups)."""
    w = node.operand(1).array
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


def _matrix_bytes(node: Node) -> int:
    """Bytes of :func:`_weight_matrix` (one per weight, block-diagonal zeros included), without building it."""
    w = node.operand(1).array
    return w.size * (int(node.attrs.get("group", 1)) if node.op == "q.conv" else 1)


def _tiles(k: int, n: int, s: NpuSpec) -> tuple[int, int]:
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


def _weight_layers(graph: Graph) -> list[Node]:
    """The array layers with a constant weight, one per weight (layers reading one weight, the steps of a
    recurrent layer, share its tiles)."""
    seen: set[int] = set()
    out = []
    for n in graph.nodes:
        if n.op in ARRAY_OPS and n.operand(1).const is not None and id(n.inputs[1]) not in seen:
            seen.add(id(n.inputs[1]))
            out.append(n)
    return out


def _check_fits(graph: Graph, s: NpuSpec) -> None:
    """With ``allow_reload = false``: all weights stay in the weight buffer, so they must fit it."""
    layers = _weight_layers(graph)
    need = sum(_matrix_bytes(n) for n in layers)  # one byte per (mac_bits <= 8) weight
    if need > s.weight_buffer_bytes:
        raise PassError(f"model {graph.name!r} does not fit the weight buffer with allow_reload = false: its "
                        f"{len(layers)} array layers hold {need} weight bytes, but the npu weight buffer holds "
                        f"{s.weight_buffer_bytes} bytes; allow reloads from DRAM (--spec-set allow_reload=true) or "
                        f"enlarge the buffer (--spec-set weight_buffer_bytes={need})")


@dataclass(frozen=True)
class LowerNpuPass(Pass):
    """Lower q.conv/q.gemm/q.matmul to npu.dma_in / npu.gemm / npu.dma_out tiles; annotate the rest."""

    name: ClassVar[str] = "lower-npu"
    spec_type: ClassVar[type[Spec]] = NpuSpec

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Rewrite every array layer with a constant weight; every other op stays, run by the vector unit."""
        target = ctx.require_target(self)
        target.register_ops()  # the instructions it emits
        s = target.spec
        assert isinstance(s, NpuSpec)
        if not s.allow_reload:
            _check_fits(graph, s)
        layers = _weight_layers(graph)
        # weights that fit the weight buffer together stay in it: each tile loaded once, at its own offset
        resident = not s.allow_reload or sum(_matrix_bytes(n) for n in layers) <= s.weight_buffer_bytes
        offset = [0] if resident else None
        shared: dict[int, tuple[dict, dict]] = {}  # resident weight -> its tiles and loads, for every reader
        changed = False
        for node in list(graph.nodes):
            if node.op in ARRAY_OPS and node.operand(1).const is not None:
                self._lower(graph, node, s, offset, shared)
                changed = True
            elif node.op == "q.act_matmul":
                _lower_act_matmul(graph, node)
                changed = True
            elif node.op.startswith("npu."):
                continue
            elif "cim.layer" not in node.attrs:
                node.attrs["cim.layer"] = node.name
                changed = True
        graph.remove_dead()
        graph.metadata["npu.lowered"] = "1"
        return PassResult(changed)

    def _lower(self, g: Graph, node: Node, s: NpuSpec, offset: list[int] | None,
               shared: dict[int, tuple[dict, dict]]) -> None:
        """Rewrite one layer; ``offset`` (a one-item list, advanced here) is the next free byte of the weight
        buffer when the weights stay resident, else ``None``; ``shared`` holds the tiles and loads of the
        resident weights lowered so far (a layer reading one of them uses its loads)."""
        x, out = node.operand(0), node.outputs[0]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        wm = _weight_matrix(node)
        k, n = wm.shape
        layer = node.name
        geom: dict[str, Any] = {}
        xs = x.type.shape
        if node.op == "q.conv":
            chw = [d for d in (xs[1:] if xs is not None and len(xs) == 4 else ()) if isinstance(d, int)]
            if len(chw) != 3:
                raise PassError(f"lower-npu: {layer} (q.conv) needs a 2-D NCHW input with static C, H, W, "
                                f"found {x.type}; 'legalize-convs' before lower-npu rewrites a convolution of "
                                f"another rank into a q.matmul")
            c_in, h_in, w_in = chw
            kern = tuple(node.operand(1).array.shape[2:])
            o, pb, pe, _, st, dl = window_geometry((h_in, w_in), kern, node.attrs)
            geom = {"kernel_shape": kern, "strides": tuple(st), "dilations": tuple(dl), "pads": (*pb, *pe),
                    "out_spatial": tuple(o), "x_zero_point": node.attrs["x_zero_point"]}
            p_total = o[0] * o[1]
            reads = _Reads(k, conv=(o[1], st[0], pb[0], (kern[0] - 1) * dl[0] + 1, h_in, c_in * w_in))
        elif xs is not None and len(xs) >= 3 and isinstance(xs[-2], int):
            p_total, reads = xs[-2], _Reads(k, rows=True)
        else:
            p_total, reads = None, _Reads(k)
        k_len, n_len = _tiles(k, n, s)
        chunks: list[tuple[int, int] | None]
        if p_total is None:
            chunks = [None]
        else:
            p_len = max(1, min(p_total, s.out_buffer_bytes // (4 * n_len)))
            while p_len > 1 and reads.bytes(0, p_len) > s.act_buffer_bytes:
                p_len = (p_len + 1) // 2
            chunks = [(p, min(p + p_len, p_total)) for p in range(0, p_total, p_len)]
        kt = [(k0, min(k0 + k_len, k)) for k0 in range(0, k, k_len)]
        nt = [(n0, min(n0 + n_len, n)) for n0 in range(0, n, n_len)]
        bias_c = bias.const if bias is not None else None
        reuse = shared.get(id(node.inputs[1])) if offset is not None else None
        consts: dict[tuple, tuple[Value, int, int]] = {} if reuse is None else reuse[0]
        for ni, (n0, n1) in enumerate(nt):
            for ki, (k0, k1) in enumerate(kt):
                tile = np.ascontiguousarray(wm[k0:k1, n0:n1])
                if (ki > 0 and not tile.any()) or reuse is not None:
                    continue  # pruned: nothing to add; or the weight's tiles exist already
                passes, cells = _passes(tile, s.mac_rows, s.mac_cols)
                consts[(ni, ki)] = (g.add_constant(tile, f"{layer}/w{n0}_{k0}"), passes, cells)
        bias_tiles = {ni: g.add_constant(np.ascontiguousarray(bias_c[n0:n1]), f"{layer}/b{n0}")
                      if bias_c is not None else None for ni, (n0, n1) in enumerate(nt)}
        if bias is not None and bias_c is None:
            raise PassError(f"lower-npu: {layer}: the bias must be a constant")
        ann = {"cim.layer": layer}
        loads: dict[tuple, Value] = {} if reuse is None else reuse[1]
        if offset is not None and reuse is None:
            shared[id(node.inputs[1])] = (consts, loads)
        tiles: list[Value | None] = []
        p_ranges: list[int] = []
        n_ranges: list[int] = []
        for chunk in chunks:
            xin = g.add_node("npu.dma_in", [x], {"buffer": "act", "bytes": reads.bytes(*(chunk or (0, 1))),
                                                               **ann},
                             name=f"{layer}/dma_x", before=node).outputs[0]
            for ni, (n0, n1) in enumerate(nt):
                acc = None
                for ki, (k0, k1) in enumerate(kt):
                    if (ni, ki) not in consts:
                        continue
                    wc, passes, cells = consts[(ni, ki)]
                    key = (ni, ki) if len(chunks) == 1 or offset is not None else (ni, ki, chunk)
                    if key not in loads:
                        nbytes = (k1 - k0) * (n1 - n0)
                        at = {} if offset is None else {"npu.offset": offset[0]}
                        loads[key] = g.add_node("npu.dma_in", [wc], {"buffer": "weight", "bytes": nbytes,
                                                                     "cim.bytes": nbytes, **at, **ann},
                                                name=f"{layer}/load_w", before=node).outputs[0]
                        if offset is not None:
                            offset[0] += nbytes
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


def _lower_act_matmul(g: Graph, node: Node) -> None:
    """``q.act_matmul`` -> ``npu.dma_in`` of both operands (``b`` into the weight buffer, on every inference:
    it is computed) and one ``npu.matmul`` on the MAC array."""
    a, b = node.operand(0), node.operand(1)
    out, layer = node.outputs[0], node.name
    ann = {"cim.layer": layer}
    ain = g.add_node("npu.dma_in", [a], {"buffer": "act", "bytes": _sample_bytes(a), **ann}, name=f"{layer}/dma_a",
                     before=node).outputs[0]
    bin_ = g.add_node("npu.dma_in", [b], {"buffer": "weight", "bytes": _sample_bytes(b), **ann},
                      name=f"{layer}/load_b", before=node).outputs[0]
    res = g.add_node("npu.matmul", [ain, bin_], {"a_zero_point": node.attrs["a_zero_point"],
                                                 "b_zero_point": node.attrs["b_zero_point"], **ann},
                     outputs=[out.type], name=f"{layer}/matmul", before=node)
    g.replace_all_uses_with(out, res.outputs[0])
    g.remove_node(node)
    g.rename_value(res.outputs[0], out.name)


def _sample_bytes(v: Value) -> int:
    """Bytes of one sample of uint8 value ``v`` (a symbolic dim counts as 1, a product dim as its number)."""
    return math.prod(dim_per_sample(d) for d in (v.type.shape or ()))
