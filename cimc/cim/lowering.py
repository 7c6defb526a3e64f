"""Lowering tiled layers onto an array target's load and MVM instructions (shared by sram-cim and memristor).

Each node with ``tile.map`` becomes ``vec.im2col`` (q.conv) -> per *round* of tiles on distinct arrays
(consecutive tiles of its map, a tile's replicas in one round; tiles are ordered row tile by row tile,
:func:`rounds`) one load and one MVM summing into the previous round's result -> ``Add`` bias ->
``vec.col2im`` (q.conv); the result takes the node's result type and name. Both instructions of a round carry
the round's part of the tile map, with its placement; the load writes the layer's weights packed into cells,
as written (a mapping pass may write some as other values, ``tile.recode``: :func:`cimc.tiling.written_matrix`).
The ADC of every MVM is the worst-case range
(:meth:`cimc.cim.adc.Adc.default`, signed for differential pairs sensed as one sum), written as attributes a
calibration may change. A model that fits the arrays has one round per layer and loads every image once
(layers sharing a weight's tiles, ``tile.shared``, read the first one's loads); a larger one reloads arrays
round after round (:func:`check_fits` rejects it when a target allows no reloads). Digital ops after it
(``q.requant``, ...) are left as they are. A ResNet-50 is about 1,800 ops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from cimc.cim.adc import Adc
from cimc.cim.encoding import Encoding
from cimc.cim.tilemap import TileMap
from cimc.errors import PassError
from cimc.ir.core import Graph, Node, Value
from cimc.ir.opdef import is_annotation
from cimc.ir.types import DType, TensorType
from cimc.target import ARRAY_OPS
from cimc.tiling import weight_matrix, written_matrix

__all__ = ["Instructions", "check_fits", "lower_node", "lower_nodes", "rounds", "tiled_nodes"]


@dataclass(frozen=True)
class Instructions:
    """How a target's rounds look: its load and MVM op names, input bits per pass, how pairs are sensed,
    extra load attributes (e.g. the conductance mapping's ``full_scale``) and the pass's name."""

    load: str
    mvm: str
    dac_bits: int
    sense: str = "columns"
    load_attrs: Mapping[str, Any] = field(default_factory=dict)
    pass_name: str = "lowering"
    """The lowering pass, named in errors."""


def tiled_nodes(graph: Graph, pass_name: str, where: str = "arrays") -> list[Node]:
    """The nodes of ``graph`` with a tile map; an array op with a constant weight but none is an error (``tile``
    must run first)."""
    nodes = []
    for n in graph.nodes:
        if "tile.map" in n.attrs:
            nodes.append(n)
        elif n.op in ARRAY_OPS and len(n.inputs) > 1 and n.inputs[1] is not None and n.inputs[1].const is not None:
            raise PassError(f"{n.op} {n.name!r} has no tile map, so it cannot run on the {where}: run 'tile' "
                            f"before '{pass_name}' in the pipeline (the target's default pipeline ends with it)")
    return nodes


def check_fits(graph: Graph, nodes: list[Node], target: str, arrays: int, rows: int, cols: int, what: str) -> None:
    """For a target without reloads: every tile (and replica) needs an array of its own (``what``: the arrays'
    name, e.g. ``macros``), loaded once; a ``PassError`` naming the model's cells and the capacity otherwise."""
    maps = [n.attrs["tile.map"] for n in nodes if "tile.shared" not in n.attrs]
    tiles = sum(len(t) for t in maps)
    if tiles <= arrays:
        return
    cells = sum(int(((t.table[:, 2] - t.table[:, 1]) * (t.table[:, 4] - t.table[:, 3])
                     * (t.table[:, 6] - t.table[:, 5])).sum()) for t in maps)
    raise PassError(f"model {graph.name!r} does not fit the arrays with allow_reload = false: its "
                    f"weights take {cells} cells in {tiles} tiles of {rows} x {cols}, but {target} has "
                    f"{arrays} {what} ({arrays * rows * cols} cells, one tile each); allow "
                    f"reloads (--spec-set allow_reload=true) or use more {what} (--spec-set {what}={tiles})")


def rounds(tiles: TileMap) -> list[tuple[int, int]]:
    """Consecutive runs ``[i0, i1)`` of tiles on distinct arrays, each tile's replicas in one run."""
    t = tiles.table
    starts = [0, *(np.flatnonzero((t[1:, :7] != t[:-1, :7]).any(axis=1)) + 1).tolist(), len(t)]
    arrays = tiles.array_list
    out: list[tuple[int, int]] = []
    first, used = 0, set[int]()
    for i, j in pairwise(starts):  # one part of the matrix and its replicas
        mine = set(arrays[i:j])
        if used & mine:
            out.append((first, i))
            first, used = i, set()
        used |= mine
    if first < len(t):
        out.append((first, len(t)))
    return out


def lower_nodes(graph: Graph, nodes: list[Node], isa: Instructions, adc_bits: int) -> None:
    """:func:`lower_node` for each of ``nodes`` in order, a layer sharing another's tiles (``tile.shared``) reading
    that layer's loads."""
    loads: dict[str, list[Value]] = {}
    for node in nodes:
        loads[node.name] = lower_node(graph, node, isa, adc_bits, loads.get(str(node.attrs.get("tile.shared"))))


def lower_node(graph: Graph, node: Node, isa: Instructions, adc_bits: int,
               shared: list[Value] | None = None) -> list[Value]:
    """Replace the tiled ``node`` by its instruction sequence (module docstring), its MVMs' ADCs of ``adc_bits``;
    ``shared``: the round tokens of the layer whose tiles it shares (``tile.shared``), already loaded. Returns its
    round tokens."""
    a = node.attrs
    x = node.operand(0)
    layer = {"cim.layer": node.name}
    m = weight_matrix(node)
    enc = Encoding(a["tile.encoding"], int(a["tile.weight_bits"]), int(a["tile.cell_bits"]))
    act_bits = int(x.type.quant.bits) if x.type.quant is not None else 8
    tiles: TileMap = a["tile.map"]
    skip = np.asarray(a["tile.skip"], np.int64).reshape(-1, 2)
    add = lambda op, ins, attrs, **kw: graph.add_node(op, ins, {**attrs, **layer}, before=node, **kw).outputs[0]  # noqa: E731
    conv = node.op == "q.conv"
    final = node.outputs[0].type
    spatial: tuple[int, ...] = ()
    if conv:
        given = final.shape[2:] if final.shape is not None else (None,)
        dims = tuple(d for d in given if isinstance(d, int))
        if len(dims) != len(given):
            raise PassError(f"{isa.pass_name}: {node.name} (q.conv) needs a result with static spatial dims, found "
                            f"{final}: the model computes them at run time (export it with a static input size)")
        spatial = dims
    shape = final.shape
    if shape is None:
        raise PassError(f"{isa.pass_name}: {node.name} ({node.op}) needs a result of known rank, found {final}")
    channels = m.shape[0] * m.shape[2]
    cells = graph.add_constant(enc.pack(written_matrix(node)), f"{node.name}.cells") if shared is None else None
    if conv:
        attrs = {k: v for k, v in a.items() if not is_annotation(k) and k != "x_zero_point"}
        attrs["kernel_shape"] = tuple(int(s) for s in node.operand(1).array.shape[2:])
        x = add("vec.im2col", [x], {**attrs, "pad_value": int(a["x_zero_point"])})
    rpo = int(a["tile.rows_per_op"])
    adc = Adc.default(adc_bits, rpo, isa.dac_bits, enc.cell_bits, isa.sense == "pairs")
    mvm_attrs = {"layout": "cols" if conv else "rows", "channels": channels, "significance": enc.significance,
                 "offset": enc.offset, "rows_per_op": rpo, "dac_bits": isa.dac_bits, "act_bits": act_bits,
                 "cell_bits": enc.cell_bits, **adc.attrs()}
    if isa.sense != "columns":
        mvm_attrs["sense"] = isa.sense
    acc = None
    out_type = TensorType(DType.i32, (shape[0], channels, math.prod(spatial)) if conv else (*shape[:-1], channels))
    t = tiles.table
    tokens = []
    for i, (r0, r1) in enumerate(rounds(tiles)):
        part = tiles.take(slice(r0, r1))
        nbytes = int((((t[r0:r1, 2] - t[r0:r1, 1]) * (t[r0:r1, 4] - t[r0:r1, 3]) * (t[r0:r1, 6] - t[r0:r1, 5])
                       * enc.cell_bits + 7) // 8).sum())
        token = shared[i] if shared is not None else add(isa.load, [cells], {
            "tiles": part, "cell_bits": enc.cell_bits, **dict(isa.load_attrs), "cim.bytes": nbytes})
        tokens.append(token)
        mine = skip[(skip[:, 0] >= r0) & (skip[:, 0] < r1)] - np.asarray([r0, 0], np.int64)
        ys = [x, token] if acc is None else [x, token, acc]
        acc = add(isa.mvm, ys, {**mvm_attrs, "tiles": part, "skip": mine,
                                "tile.util": np.asarray(a["tile.util"])[r0:r1]}, outputs=[out_type])
    if acc is None:
        raise PassError(f"{node.op} {node.name!r}: its tile map has no tiles")
    finish_layer(graph, node, acc, spatial if conv else None)
    return tokens


def finish_layer(graph: Graph, node: Node, acc: Value, spatial: tuple[int, ...] | None) -> None:
    """Replace the tiled ``node`` by ``acc``, the i32 sums its array instructions leave: the bias added (a column per
    channel for a convolution), a convolution's columns folded back to ``spatial`` (``None``: not a convolution),
    the result keeping the layer's name, since ``--verify`` compares layers by it."""
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    final = node.outputs[0].type
    add = lambda op, ins, attrs, **kw: graph.add_node(  # noqa: E731
        op, ins, {**attrs, "cim.layer": node.name}, before=node, **kw).outputs[0]
    conv = spatial is not None
    y = acc
    if bias is not None:
        b = bias
        if conv:
            if bias.const is not None:
                b = graph.add_constant(bias.const.reshape(-1, 1), f"{node.name}.bias")
            else:
                b = add("Reshape", [bias, graph.add_constant(np.asarray([-1, 1], np.int64), f"{node.name}.col")], {})
        y = add("Add", [y, b], {}, outputs=None if conv else [final])
    if spatial is not None:
        y = add("vec.col2im", [y], {"spatial": spatial}, outputs=[final])
    elif bias is None:
        y = add("Identity", [y], {}, outputs=[final])
    name = node.outputs[0].name
    graph.replace_all_uses_with(node.outputs[0], y)
    graph.remove_node(node)
    graph.rename_value(y, name)
