"""tile: map the weights of the integer matrix ops onto CIM arrays (tiling and bit slicing).

For each node whose op the target runs on its arrays (``capabilities().array_ops``) with a constant
weight, the weight's matrices ``[G, K, N]`` (:func:`cimc.tiling.weight_matrix`) are bit-sliced by
the encoding and cut into ``rows`` x ``cols`` tiles (:func:`cimc.tiling.plan`); tiles are dealt onto
the arrays round-robin in graph order across all layers (so layers that fit together get distinct
arrays, and a model larger than all arrays reuses them: the lowering then emits weight reloads).

Geometry: ``ctx.target.capabilities()`` (rows, cols, cell_bits, rows_per_op, arrays); the pass
needs a target. An option may use less of the hardware than it has (fewer rows or arrays, fewer
bits per cell, fewer word lines on at once), never more: each is checked against ``1..`` the
target's value before any pass runs (a different array is a different spec, ``--spec-set``).
``encoding`` defaults to two's complement.

Postconditions, per tiled node (annotations only; the graph still runs as before):
``tile.map`` int64 ``[T, 11]`` (columns :data:`cimc.tiling.TILE_COLUMNS`), ``tile.util``
float64 ``[T]`` (cells used / rows*cols), ``tile.skip`` int64 ``[n, 2]`` (tile index, row block)
of all-zero ``rows_per_op`` row blocks, ``tile.cell_bits``, ``tile.weight_bits``,
``tile.encoding``, ``tile.rows_per_op``, ``tile.rows``, ``tile.cols``, ``tile.arrays``,
``tile.replicas``. ``graph.metadata["tile"]`` summarises tiles and arrays used.
The array images themselves are built by the lowering (the layer's packed cells,
:meth:`cimc.tiling.Encoding.pack`) as program constants.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from cimc.errors import CimcError
from cimc.ir.core import Graph, Node
from cimc.passmanager import Pass, PassContext, PassResult, option
from cimc.target import ARRAY_OPS, Target
from cimc.tiling import ENCODINGS, TILE_COLUMNS, Encoding, plan, weight_bits, weight_matrix, zero_blocks

__all__ = ["TilePass", "mapping_table"]

logger = logging.getLogger(__name__)

GEOMETRY = ("rows", "cols", "cell_bits", "rows_per_op", "arrays")
"""The capabilities the pass tiles by, each an option that may lower the target's value."""


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

    def __post_init__(self) -> None:
        if self.encoding is not None and self.encoding not in ENCODINGS:
            raise CimcError(f"option encoding={self.encoding!r} of pass 'tile' must be one of {', '.join(ENCODINGS)}")
        for key in GEOMETRY:
            if (v := getattr(self, key)) is not None and v < 1:
                raise CimcError(f"option {key.replace('_', '-')}={v} of pass 'tile' must be >= 1")
        if self.replicate < 1:
            raise CimcError(f"option replicate={self.replicate} of pass 'tile' must be >= 1")

    def check(self, target: Target | None) -> None:
        """A target, and geometry options within its capabilities (``1..`` its value; rows-per-op also up
        to rows)."""
        super().check(target)
        caps = target.capabilities()  # type: ignore[union-attr]
        for key in GEOMETRY:
            have = getattr(caps, key)
            self.option_limit(key, getattr(self, key), 1, have,
                              f"the target '{target.name}' has {key} = {have}; to map onto other "  # type: ignore[union-attr]
                              f"arrays, change the target's spec (--spec, --spec-set)")
        rows = caps.rows if self.rows is None else self.rows
        self.option_limit("rows_per_op", self.rows_per_op, 1, rows, f"word lines on at once within rows = {rows}")

    def geometry(self, target: Target | None) -> dict[str, int]:
        """rows, cols, cell_bits, rows_per_op, arrays: the target's capabilities, lowered by the options."""
        self.check(target)
        caps = target.capabilities()  # type: ignore[union-attr]
        geo = {k: getattr(caps, k) if getattr(self, k) is None else getattr(self, k) for k in GEOMETRY}
        geo["rows_per_op"] = min(geo["rows_per_op"], geo["rows"])
        return geo

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Annotate every array op of ``graph`` with its tile mapping."""
        geo = self.geometry(ctx.target)
        ops = ctx.require_target(self).capabilities().array_ops
        kind = self.encoding or "twos-complement"
        nxt, count = 0, 0
        for node in graph.nodes:
            if node.op not in ops or node.op not in ARRAY_OPS or node.inputs[1].const is None:
                continue
            m, enc = weight_matrix(node), Encoding(kind, weight_bits(node), geo["cell_bits"])
            table = plan(m, enc, geo["rows"], geo["cols"], nxt, geo["arrays"], self.replicate)
            nxt += len(table) * self.replicate
            skip = zero_blocks(m, table, geo["rows_per_op"]) if enc.offset == 0 else np.zeros((0, 2), np.int64)
            util = (table[:, 5] - table[:, 4]) * (table[:, 7] - table[:, 6]) / (geo["rows"] * geo["cols"])
            node.attrs.update({
                "tile.map": table, "tile.util": util.astype(np.float64),
                "tile.skip": skip,
                "tile.cell_bits": geo["cell_bits"], "tile.weight_bits": enc.bits, "tile.encoding": kind,
                "tile.rows_per_op": geo["rows_per_op"], "tile.rows": geo["rows"], "tile.cols": geo["cols"],
                "tile.arrays": geo["arrays"], "tile.replicas": self.replicate})
            count += len(table)
            logger.info("tile: %s (%s): %d tiles, %d skippable row blocks", node.name, node.op, len(table), len(skip))
        if not count:
            return PassResult(False)
        graph.metadata["tile"] = json.dumps({"tiles": count, "array_slots": nxt, "arrays": geo["arrays"],
                                             "fits": nxt <= geo["arrays"], "encoding": kind, **geo})
        return PassResult(True)


def _table(node: Node) -> list[dict]:
    table = node.attrs["tile.map"] if "tile.map" in node.attrs else node.attrs["tiles"]
    util = node.attrs["tile.util"]
    skip = node.attrs.get("tile.skip", np.zeros((0, 2), np.int64))
    rows = []
    for i, row in enumerate(table):
        t = dict(zip(TILE_COLUMNS, (int(v) for v in row), strict=True))
        rows.append({"layer": node.name, "op": node.op, "group": t["group"], "array": t["array"],
                     "rows": (t["k0"], t["k1"]), "cols": (t["col0"], t["col1"]), "channels": (t["ch0"], t["ch1"]),
                     "slices": t["slices"], "utilisation": float(util[i]),
                     "skipped_blocks": int((skip[:, 0] == i).sum())})
    return rows


def mapping_table(graph: Graph) -> list[dict]:
    """One dict per tile of every tiled node (layer, array, rows, cols, slices, utilisation, ...).

    Works on the tiled graph and on a lowered program (whose ``sram.mvm`` ops carry their rows of the
    table as ``tiles``, with ``tile.util`` and ``tile.skip``, under ``cim.layer``)."""
    out: list[dict] = []
    for node in graph.nodes:
        if "tile.map" in node.attrs or ("tiles" in node.attrs and "tile.util" in node.attrs):
            out += _table(node)
    return out
