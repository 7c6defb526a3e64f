"""tile: map the weights of the integer matrix ops onto CIM arrays (tiling, bit slicing, placement).

For each node whose op the target runs on its arrays (``capabilities().array_ops``) with a constant
weight, the weight's matrices ``[G, K, N]`` (:func:`cimc.tiling.weight_matrix`) are bit-sliced by
the encoding and cut into ``rows`` x ``cols`` tiles (:func:`cimc.tiling.plan`); tiles are dealt onto
the arrays round-robin in graph order across all layers (so layers that fit together get distinct
arrays, and a model larger than all arrays reuses them: the lowering then emits weight reloads).
Each tile sits in its array at the identity placement, or (``placement=random``) at random distinct
physical rows and columns, spares included, with random channels' columns complemented
(:func:`cimc.tiling.place_randomly`, seeded with the pipeline seed): any placement computes the same with an
ideal device and a lossless ADC.

Geometry: ``ctx.target.capabilities()`` (rows, cols, cell_bits, rows_per_op, arrays, spare rows and
columns); the pass needs a target. An option may use less of the hardware than it has (fewer rows
or arrays, fewer bits per cell, fewer word lines on at once, fewer spares), never more: each is
checked against the target's value before any pass runs (a different array is a different spec,
``--spec-set``). ``encoding`` defaults to two's complement.

Layers that read one weight constant (the steps of an unrolled recurrent layer) share its tiles when all
the model's weights fit the arrays at once: the later ones carry the first one's annotations and
``tile.shared`` (its name), and the lowering loads the tiles once; otherwise each is tiled on its own.

Postconditions, per tiled node (annotations only; the graph still runs as before):
``tile.map`` (:class:`cimc.cim.tilemap.TileMap`: every tile and replica with its array and
placement), ``tile.util`` float64 ``[T]`` (logical cells / physical cells of the array),
``tile.skip`` int64 ``[n, 2]`` (tile index, physical row block) of the driven blocks whose weights
are all zero (:func:`cimc.tiling.zero_blocks`; none in offset encoding), ``tile.cell_bits``,
``tile.weight_bits``, ``tile.encoding``, ``tile.rows_per_op``. ``graph.metadata["tile"]``
summarises tiles and arrays used. The array images themselves are built by the lowering (the
layer's packed cells, :meth:`cimc.cim.encoding.Encoding.pack`) as program constants.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from cimc.cim.encoding import ENCODINGS, Encoding
from cimc.cim.tilemap import TileMap
from cimc.errors import CimcError
from cimc.ir.core import Graph, Node
from cimc.passmanager import Pass, PassContext, PassResult, option
from cimc.target import ARRAY_OPS, Target
from cimc.tiling import place_randomly, plan, weight_bits, weight_matrix, zero_blocks

__all__ = ["TilePass", "mapping_table"]

logger = logging.getLogger(__name__)

GEOMETRY = ("rows", "cols", "cell_bits", "rows_per_op", "arrays")
"""The capabilities the pass tiles by, each an option that may lower the target's value."""
SPARES = ("spare_rows", "spare_cols")
"""The spare rows and columns per array, each an option that may lower the target's value (to 0)."""
PLACEMENTS = ("identity", "random")


@dataclass(frozen=True)
class TilePass(Pass):
    """Tile and bit-slice the weights of array ops onto the target's arrays (annotations)."""

    name: ClassVar[str] = "tile"
    needs_target: ClassVar[bool] = True
    rows: int | None = option(None, "Rows (word lines) of one array to use, 1 up to the target's; none = the "
                                    "target's.")
    cols: int | None = option(None, "Columns (bit lines) of one array to use, 1 up to the target's; none = the "
                                    "target's.")
    cell_bits: int | None = option(None, "Bits stored per cell, 1 up to the target's; none = the target's.")
    rows_per_op: int | None = option(None, "Word lines on at once (row block), 1 up to the target's and to rows; "
                                           "none = the target's.")
    arrays: int | None = option(None, "Number of arrays to use, 1 up to the target's; none = the target's.")
    encoding: str | None = option(None, "Signed weights in cells: twos-complement, differential or offset; "
                                        "none = twos-complement.")
    replicate: int = option(1, "Copies of every tile on distinct arrays (throughput).")
    spare_rows: int | None = option(None, "Spare physical rows per array (beyond rows) to place onto, 0 up to the "
                                          "target's; none = the target's.")
    spare_cols: int | None = option(None, "Spare physical columns per array (beyond cols) to place onto, 0 up to "
                                          "the target's; none = the target's.")
    placement: str = option("identity", "Where a tile's rows and columns sit in its array: identity, or random "
                                        "(seeded permutations over the physical rows and columns, spares included).")

    def __post_init__(self) -> None:
        if self.encoding is not None and self.encoding not in ENCODINGS:
            raise CimcError(f"option encoding={self.encoding!r} of pass 'tile' must be one of {', '.join(ENCODINGS)}")
        if self.placement not in PLACEMENTS:
            raise CimcError(f"option placement={self.placement!r} of pass 'tile' must be one of "
                            f"{', '.join(PLACEMENTS)}")
        for key in GEOMETRY:
            if (v := getattr(self, key)) is not None and v < 1:
                raise CimcError(f"option {key.replace('_', '-')}={v} of pass 'tile' must be >= 1")
        for key in ("spare_rows", "spare_cols"):
            if (v := getattr(self, key)) is not None and v < 0:
                raise CimcError(f"option {key.replace('_', '-')}={v} of pass 'tile' must be >= 0")
        if self.replicate < 1:
            raise CimcError(f"option replicate={self.replicate} of pass 'tile' must be >= 1")

    def check(self, target: Target | None) -> None:
        """A target, and geometry options within its capabilities (``1..`` its value; rows-per-op also up
        to rows; spares ``0..`` its value)."""
        super().check(target)
        assert target is not None  # the pass needs a target: the base check has raised otherwise
        caps = target.capabilities()
        for key in GEOMETRY + SPARES:
            have = getattr(caps, key)
            self.option_limit(key, getattr(self, key), 0 if key in SPARES else 1, have,
                              f"the target '{target.name}' has {key} = {have}; to map onto other "
                              f"arrays, change the target's spec (--spec, --spec-set)")
        rows = caps.rows if self.rows is None else self.rows
        self.option_limit("rows_per_op", self.rows_per_op, 1, rows, f"word lines on at once within rows = {rows}")

    def geometry(self, target: Target | None) -> dict[str, int]:
        """rows, cols, cell_bits, rows_per_op, arrays, spare_rows, spare_cols: the target's capabilities,
        lowered by the options."""
        self.check(target)
        assert target is not None  # the pass needs a target: check has raised otherwise
        caps = target.capabilities()
        geo = {k: getattr(caps, k) if getattr(self, k) is None else getattr(self, k) for k in GEOMETRY + SPARES}
        geo["rows_per_op"] = min(geo["rows_per_op"], geo["rows"])
        return geo

    def _fits_shared(self, layers: list[Node], geo: dict[str, int], kind: str) -> bool:
        """Whether the tiles of ``layers`` (one per weight) fit the arrays at once: only then may layers that
        read one weight share its tiles (no other layer's load overwrites them between their MVMs)."""
        tiles = 0
        for n in layers:
            enc = Encoding(kind, weight_bits(n), geo["cell_bits"])
            tiles += len(plan(weight_matrix(n), enc, geo["rows"], geo["cols"], 0, geo["arrays"], self.replicate,
                              layer=n.name, spares=(geo["spare_rows"], geo["spare_cols"])))
        return tiles <= geo["arrays"]

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Annotate every array op of ``graph`` with its tile mapping."""
        geo = self.geometry(ctx.target)
        ops = ctx.require_target(self).capabilities().array_ops
        kind = self.encoding or "twos-complement"
        layers = [n for n in graph.nodes if n.op in ops and n.op in ARRAY_OPS and n.operand(1).const is not None]
        firsts: dict[tuple, Node] = {}  # layers reading one weight (a recurrent layer's steps) share its tiles
        for n in layers:
            firsts.setdefault((id(n.inputs[1]), n.op, n.attrs.get("group", 1)), n)
        share = len(set(firsts.values())) < len(layers) and self._fits_shared(list(firsts.values()), geo, kind)
        rng = np.random.default_rng([ctx.seed, 0x54494C45]) if self.placement == "random" else None
        nxt, count = 0, 0
        for node in layers:
            first = firsts[(id(node.inputs[1]), node.op, node.attrs.get("group", 1))]
            if share and first is not node:
                node.attrs.update({k: v for k, v in first.attrs.items() if k.startswith("tile.")}
                                  | {"tile.shared": first.name})
                logger.info("tile: %s (%s) reads the tiles of %s", node.name, node.op, first.name)
                continue
            m, enc = weight_matrix(node), Encoding(kind, weight_bits(node), geo["cell_bits"])
            tiles = plan(m, enc, geo["rows"], geo["cols"], nxt, geo["arrays"], self.replicate, layer=node.name,
                         spares=(geo["spare_rows"], geo["spare_cols"]))
            if rng is not None:
                tiles = place_randomly(tiles, rng)
            nxt += len(tiles)
            skip = zero_blocks(m, tiles, geo["rows_per_op"]) if enc.offset == 0 else np.zeros((0, 2), np.int64)
            t = tiles.table
            util = (t[:, 2] - t[:, 1]) * (t[:, 4] - t[:, 3]) * (t[:, 6] - t[:, 5]) / np.prod(tiles.physical)
            node.attrs.update({
                "tile.map": tiles, "tile.util": util.astype(np.float64), "tile.skip": skip,
                "tile.cell_bits": geo["cell_bits"], "tile.weight_bits": enc.bits, "tile.encoding": kind,
                "tile.rows_per_op": geo["rows_per_op"]})
            count += len(tiles)
            logger.info("tile: %s (%s): %d tiles, %d skippable row blocks", node.name, node.op, len(tiles), len(skip))
        if not count:
            return PassResult(False)
        graph.metadata["tile"] = json.dumps({"tiles": count, "array_slots": nxt, "arrays": geo["arrays"],
                                             "fits": nxt <= geo["arrays"], "encoding": kind,
                                             "placement": self.placement, **geo})
        return PassResult(True)


def mapping_table(graph: Graph) -> list[dict]:
    """One dict per tile of every tiled node (layer, array, replica, rows, channels, slices, utilisation,
    skipped blocks, whether it is placed off the identity), from its ``tile.map`` (the tiled graph) or,
    in a lowered program, the ``tiles`` of its MVM ops (with ``tile.util`` and ``skip``)."""
    out: list[dict] = []
    for node in graph.nodes:
        tiles = node.attrs.get("tile.map", node.attrs.get("tiles"))
        if not isinstance(tiles, TileMap) or "tile.util" not in node.attrs:
            continue
        util = node.attrs["tile.util"]
        skip = np.asarray(node.attrs.get("tile.skip", node.attrs.get("skip", np.zeros((0, 2), np.int64))))
        skip = skip.reshape(-1, 2)
        for i, t in enumerate(tiles):
            out.append({"layer": tiles.layer or node.name, "op": node.op, "group": t.group, "array": t.array,
                        "replica": t.replica, "rows": (t.k0, t.k1), "channels": (t.ch0, t.ch1),
                        "slices": (t.s0, t.s1), "utilisation": float(util[i]),
                        "skipped_blocks": int((skip[:, 0] == i).sum()),
                        "placed": tiles.row_at[i] is not None or tiles.col_at[i] is not None})
    return out
