"""The sram-cim lowering pass ``lower-sram-cim``: tiled matrix ops to ``sram.load`` / ``sram.mvm`` rounds.

With ``allow_reload = false`` a model whose tiles outnumber the macros is rejected, naming its
weight cells and the capacity. Each node with ``tile.map`` becomes ``vec.im2col`` (q.conv) -> per
*round* of tiles on distinct macros (consecutive tiles of its map, a tile's replicas in one round;
tiles are ordered row tile by row tile) one ``sram.load`` and one ``sram.mvm`` summing into the
previous round's result -> ``Add`` bias -> ``vec.col2im`` (q.conv); the result takes the node's
result type and name. Both instructions of a round carry the round's part of the tile map, with its
placement. The ADC of every ``sram.mvm`` is the worst-case range (:meth:`cimc.cim.adc.Adc.default`),
written as attributes a calibration may change. A model that fits the macros has one round per
layer and loads every image once (layers sharing a weight's tiles, ``tile.shared``, read the first one's
loads); a larger one reloads macros round after round. Digital ops after
it (``q.requant``, ...) are left as they are. A ResNet-50 is about 1,800 ops. A lossy ADC or a
device that is not ideal (stuck cells, read noise) is recorded in ``graph.metadata[LOSSY]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar

import numpy as np

from cimc.cim.adc import Adc
from cimc.cim.encoding import Encoding
from cimc.cim.tilemap import TileMap
from cimc.errors import PassError
from cimc.ir.core import Graph, Node, Value
from cimc.ir.opdef import is_annotation
from cimc.ir.types import DType, TensorType
from cimc.passmanager import Pass, PassContext, PassResult, option
from cimc.target import ARRAY_OPS, LOSSY, Spec, Target, lossless_adc_bits
from cimc.targets.sram_cim.spec import SramCimSpec
from cimc.tiling import weight_matrix

__all__ = ["LowerSramCimPass", "rounds"]


@dataclass(frozen=True)
class LowerSramCimPass(Pass):
    """Lower tiled q.conv/q.gemm/q.matmul nodes into sram.load/sram.mvm rounds and vec ops."""

    name: ClassVar[str] = "lower-sram-cim"
    spec_type: ClassVar[type[Spec]] = SramCimSpec
    adc_bits: int | None = option(None, "ADC resolution, 1 up to the target's adc_bits (a coarser conversion "
                                        "of the same ADC); none = the target's.")

    def check(self, target: Target | None) -> None:
        """An sram-cim target, and an ``adc-bits`` its ADCs can give."""
        super().check(target)  # so the target is an sram-cim one
        spec = target.spec if target is not None else None
        if isinstance(spec, SramCimSpec):
            self.option_limit("adc_bits", self.adc_bits, 1, spec.adc_bits,
                              f"the target's ADCs have adc_bits = {spec.adc_bits}; a finer ADC is a different "
                              f"spec: --spec-set adc_bits=N")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Replace every tiled node of ``graph`` by its instruction sequence; an array op with a constant
        weight but no tile map is an error (``tile`` must run first). A lossy ADC, stuck cells or read
        noise are recorded in ``graph.metadata[LOSSY]``."""
        target = ctx.require_target(self)
        target.register_ops()  # the instructions it emits
        spec = target.spec
        assert isinstance(spec, SramCimSpec)
        adc_bits = spec.adc_bits if self.adc_bits is None else self.adc_bits
        nodes = []
        for n in graph.nodes:
            if "tile.map" in n.attrs:
                nodes.append(n)
            elif n.op in ARRAY_OPS and len(n.inputs) > 1 and n.inputs[1] is not None and n.inputs[1].const is not None:
                raise PassError(f"{n.op} {n.name!r} has no tile map, so it cannot run on the macros: run 'tile' "
                                f"before '{self.name}' in the pipeline (the target's default pipeline "
                                f"ends with it)")
        if not spec.allow_reload:
            _check_fits(graph, nodes, spec)
        lossy = set()
        loads: dict[str, list[Value]] = {}  # a layer's round tokens, for the layers sharing its tiles
        for node in nodes:
            a = node.attrs
            need = lossless_adc_bits(int(a["tile.rows_per_op"]), spec.dac_bits, int(a["tile.cell_bits"]))
            if adc_bits < need:
                lossy.add(f"adc_bits = {adc_bits} < {need}")
            loads[node.name] = _lower(graph, node, spec, adc_bits, loads.get(str(node.attrs.get("tile.shared"))))
        notes = ["ADC: " + ", ".join(sorted(lossy)) + " bits (lossless)"] if lossy else []
        chip = target.chip(ctx.seed)
        if chip is not None and chip.stuck.any():
            rates = chip.rates()
            notes.append(f"stuck cells: {100 * rates['sa0']:.3g} % at 0, {100 * rates['sa1']:.3g} % at 1")
        if spec.read_noise:
            notes.append(f"read noise {spec.read_noise} LSB")
        if notes:
            graph.metadata[LOSSY] = "sram-cim " + "; ".join(notes)
        graph.remove_dead()
        return PassResult(bool(nodes))


def _check_fits(graph: Graph, nodes: list[Node], spec: SramCimSpec) -> None:
    """With ``allow_reload = false``: every tile (and replica) needs a macro of its own, loaded once."""
    maps = [n.attrs["tile.map"] for n in nodes if "tile.shared" not in n.attrs]
    tiles = sum(len(t) for t in maps)
    if tiles <= spec.macros:
        return
    cells = sum(int(((t.table[:, 2] - t.table[:, 1]) * (t.table[:, 4] - t.table[:, 3])
                     * (t.table[:, 6] - t.table[:, 5])).sum()) for t in maps)
    raise PassError(f"model {graph.name!r} does not fit the arrays with allow_reload = false: its "
                    f"weights take {cells} cells in {tiles} tiles of {spec.rows} x {spec.cols}, but sram-cim has "
                    f"{spec.macros} macros ({spec.macros * spec.rows * spec.cols} cells, one tile each); allow "
                    f"reloads (--spec-set allow_reload=true) or use more macros (--spec-set macros={tiles})")


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


def _lower(graph: Graph, node: Node, spec: SramCimSpec, adc_bits: int, shared: list[Value] | None) -> list[Value]:
    """Rewrite one tiled node; ``shared``: the round tokens of the layer whose tiles it shares (``tile.shared``),
    already loaded. Returns its round tokens."""
    a = node.attrs
    x, bias = node.operand(0), node.inputs[2] if len(node.inputs) > 2 else None
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
            raise PassError(f"lower-sram-cim: {node.name} (q.conv) needs a result with static spatial dims, found "
                            f"{final}: the model computes them at run time (export it with a static input size)")
        spatial = dims
    shape = final.shape
    if shape is None:
        raise PassError(f"lower-sram-cim: {node.name} ({node.op}) needs a result of known rank, found {final}")
    channels = m.shape[0] * m.shape[2]
    cells = graph.add_constant(enc.pack(m), f"{node.name}.cells") if shared is None else None
    if conv:
        attrs = {k: v for k, v in a.items() if not is_annotation(k) and k != "x_zero_point"}
        attrs["kernel_shape"] = tuple(int(s) for s in node.operand(1).array.shape[2:])
        x = add("vec.im2col", [x], {**attrs, "pad_value": int(a["x_zero_point"])})
    rpo = int(a["tile.rows_per_op"])
    adc = Adc.default(adc_bits, rpo, spec.dac_bits, enc.cell_bits)
    mvm_attrs = {"layout": "cols" if conv else "rows", "channels": channels, "significance": enc.significance,
                 "offset": enc.offset, "rows_per_op": rpo, "dac_bits": spec.dac_bits, "act_bits": act_bits,
                 "cell_bits": enc.cell_bits, **adc.attrs()}
    acc = None
    out_type = TensorType(DType.i32, (shape[0], channels, math.prod(spatial)) if conv else (*shape[:-1], channels))
    t = tiles.table
    tokens = []
    for i, (r0, r1) in enumerate(rounds(tiles)):
        part = tiles.take(slice(r0, r1))
        nbytes = int((((t[r0:r1, 2] - t[r0:r1, 1]) * (t[r0:r1, 4] - t[r0:r1, 3]) * (t[r0:r1, 6] - t[r0:r1, 5])
                       * enc.cell_bits + 7) // 8).sum())
        token = shared[i] if shared is not None else add("sram.load", [cells], {
            "tiles": part, "cell_bits": enc.cell_bits, "cim.bytes": nbytes})
        tokens.append(token)
        mine = skip[(skip[:, 0] >= r0) & (skip[:, 0] < r1)] - np.asarray([r0, 0], np.int64)
        ys = [x, token] if acc is None else [x, token, acc]
        acc = add("sram.mvm", ys, {**mvm_attrs, "tiles": part, "skip": mine,
                                   "tile.util": np.asarray(a["tile.util"])[r0:r1]}, outputs=[out_type])
    if acc is None:
        raise PassError(f"{node.op} {node.name!r}: its tile map has no tiles")
    y = acc
    if bias is not None:
        if conv:
            if bias.const is not None:
                b = graph.add_constant(bias.const.reshape(-1, 1), f"{node.name}.bias")
            else:
                b = add("Reshape", [bias, graph.add_constant(np.asarray([-1, 1], np.int64), f"{node.name}.col")], {})
        y = add("Add", [y, b if conv else bias], {}, outputs=None if conv else [final])
    if conv:
        y = add("vec.col2im", [y], {"spatial": spatial}, outputs=[final])
    elif bias is None:
        y = add("Identity", [y], {}, outputs=[final])
    name = node.outputs[0].name
    graph.replace_all_uses_with(node.outputs[0], y)
    graph.remove_node(node)
    graph.rename_value(y, name)  # the layer's result keeps its name: --verify compares layers by it
    return tokens
