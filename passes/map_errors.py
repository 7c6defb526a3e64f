"""map-errors: place each tile on a chip where its faults cost least (row and column permutations, spares, arrays).

Runs after ``tile`` on the tiled graph (its ``tile.map`` annotations), for a target whose chip is known
(:meth:`cimc.target.Target.chip`: its chip file, or sampled from its fault models with the compile seed) and
whose device (:meth:`cimc.target.Target.machine`) says what each cell holds after a write.

Error model: for array ``a``, level ``l`` and physical cell ``(r, p)``, ``E[a, l, r, p] = stored - l``, what the
device holds when ``l`` is written there (a stuck cell: ``0 - l`` or ``top - l``; programming variation:
``l * sigma * z``), from the device's own ``program`` hook. A tile whose logical cell ``(i, c)`` holds level
``L[i, c]`` of a slice of significance ``sig[c]`` adds to the layer's result, at input ``x``, the error
``sum_i x_i sig[c] E[a, L[i, c], row_at[i], col_at[c]]`` per channel; with inputs independent across rows, its
expected square is ``sum_i m2[i] sum_c sig[c]^2 E[...]^2``, ``m2[i]`` the mean square of the (unsigned) input of
logical row ``i`` on the calibration inputs (1 without them). That is the cost minimised:

1. arrays: the tiles of all layers keep their arrays' roles (which tiles share an array, so rounds and reloads
   are unchanged), but which physical array plays each role is a permutation chosen by
   ``scipy.optimize.linear_sum_assignment`` on the cost of every role's tiles on every array (per level, the
   tiles' summed weight ``m2 * sig^2`` of the cells at that level times the array's mean squared error at
   that level): the most significant slices go to the most reliable arrays;
2. rows, then columns, then rows again (``iterations``): each an assignment (``linear_sum_assignment``) of the
   tile's logical rows to the array's physical rows (spare rows included) given its columns, and of its logical
   columns to the physical columns (spare columns included) given its rows; each step is optimal given the
   other, so the cost never grows.

The result is a placement in the typed tile map (``row_at``, ``col_at``, arrays), which the executor honours:
with an ideal device and a lossless ADC any placement computes the same bits. ``tile.skip`` is recomputed for
the new rows. ``graph.metadata["report.map-errors"]`` gives per layer the expected squared error before (the
identity placement on the arrays ``tile`` chose) and after. ``strategy=none`` keeps the placement (and says
so); a chip with no faults or variation keeps it too (the report says there was nothing to avoid).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from cimc.cim.device import IDEAL, Device
from cimc.cim.encoding import Encoding
from cimc.cim.machine import DEVICE
from cimc.cim.tilemap import TileMap
from cimc.errors import CimcError, PassError
from cimc.ir.core import Graph, Node, Value
from cimc.passmanager import Pass, PassContext, PassResult, option
from cimc.tiling import tile_image, weight_matrix, zero_blocks

__all__ = ["MapErrorsPass", "error_maps"]

logger = logging.getLogger(__name__)

REPORT = "report.map-errors"
"""Graph metadata key of the pass's per-layer report (JSON)."""


def error_maps(device: Device, array: int, levels: int, shape: tuple[int, int]) -> np.ndarray:
    """``E[l, r, p]``: what the device holds minus ``l`` when level ``l`` is written to every cell of ``array``
    (float64 ``[levels, R, C]``)."""
    out = np.zeros((levels, *shape), np.float64)
    for lv in range(levels):
        out[lv] = np.asarray(device.program(array, np.full(shape, lv, np.uint8)), np.float64) - lv
    return out


@dataclass
class _Tile:
    """One tile's part of the cost: its levels as one-hot weights per level, and its rows' input moments."""

    node: Node
    index: int
    w: np.ndarray
    """``[levels, k, C]``: ``sig[c]^2`` where logical cell ``(i, c)`` holds that level, else 0."""
    m2: np.ndarray
    """``[k]``: mean square input of each logical row."""

    def row_cost(self, E2: np.ndarray, col_at: np.ndarray) -> np.ndarray:
        """``[k, R]``: cost of logical row ``i`` on physical row ``r`` with the columns at ``col_at``."""
        c = sum(self.w[lv] @ E2[lv][:, col_at].T for lv in range(len(self.w)))
        return self.m2[:, None] * c

    def col_cost(self, E2: np.ndarray, row_at: np.ndarray) -> np.ndarray:
        """``[C, P]``: cost of logical column ``c`` on physical column ``p`` with the rows at ``row_at``."""
        return sum((self.w[lv] * self.m2[:, None]).T @ E2[lv][row_at] for lv in range(len(self.w)))

    def cost(self, E2: np.ndarray, row_at: np.ndarray, col_at: np.ndarray) -> float:
        """Expected squared error of the tile at this placement."""
        return float(sum((self.m2[:, None] * self.w[lv] * E2[lv][np.ix_(row_at, col_at)]).sum()
                         for lv in range(len(self.w))))


@dataclass(frozen=True)
class MapErrorsPass(Pass):
    """Error-aware placement of the tiles on the target's chip (module docstring)."""

    name: ClassVar[str] = "map-errors"
    needs_target: ClassVar[bool] = True
    strategy: Literal["assign", "none"] = option(
        "assign", "assign: arrays, rows and columns by linear assignment on the expected error; none: keep the "
                  "placement tile gave.")
    iterations: int = option(2, "Rounds of (rows, columns) assignment per tile, after a first row assignment.")
    arrays: bool = option(True, "Also permute which physical array holds each array's tiles (most significant "
                                "slices on the most reliable arrays).")
    inputs: int = option(8, "Calibration inputs run to measure each row's input (the first ones).")

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.inputs < 0:
            raise CimcError(f"options iterations={self.iterations} and inputs={self.inputs} of pass 'map-errors' "
                            f"must be >= 0")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Place every tiled layer of ``graph`` (module docstring)."""
        target = ctx.require_target(self)
        nodes = [n for n in graph.nodes if isinstance(n.attrs.get("tile.map"), TileMap)]
        if not nodes:
            raise PassError("map-errors found no tiled layers: run 'tile' before it")
        if self.strategy == "none":
            graph.metadata[REPORT] = json.dumps({"status": "strategy=none: the placement of 'tile' is kept"})
            return PassResult(False)
        device = target.machine(ctx.seed).get(DEVICE, IDEAL)
        if device.ideal:
            graph.metadata[REPORT] = json.dumps({"status": "the chip has no faults or variation: placement kept"})
            return PassResult(False)
        first: TileMap = nodes[0].attrs["tile.map"]
        A, shape = first.arrays, first.physical
        levels = 1 << int(nodes[0].attrs["tile.cell_bits"])
        E2 = np.stack([error_maps(device, a, levels, shape) ** 2 for a in range(A)])  # [A, levels, R, C]
        m2 = _input_moments(graph, nodes, ctx.calibration, self.inputs, ctx.seed)
        perm = self._array_permutation(nodes, m2, E2) if self.arrays else np.arange(A)
        report = {}
        for node in nodes:
            tm: TileMap = node.attrs["tile.map"]
            table = tm.table.copy()
            table[:, 7] = perm[table[:, 7]]
            row_at, col_at, before, after = [], [], 0.0, 0.0
            for i in range(len(tm)):  # one tile at a time: a tile's cost terms are large
                t = _tile(node, i, m2.get(id(node)))
                before += t.cost(E2[tm.array_list[i]], tm.rows_of(i), tm.cols_of(i))
                r, c, cost = self._place(t, E2[table[i, 7]], tm.rows_of(i), tm.cols_of(i))
                row_at.append(r)
                col_at.append(c)
                after += cost
            placed = tm.replace(table=table, row_at=row_at, col_at=col_at)
            node.attrs["tile.map"] = placed
            if Encoding(node.attrs["tile.encoding"], int(node.attrs["tile.weight_bits"]),
                        int(node.attrs["tile.cell_bits"])).offset == 0:
                node.attrs["tile.skip"] = zero_blocks(weight_matrix(node), placed, int(node.attrs["tile.rows_per_op"]))
            report[node.name] = {"expected_sq_error_before": before, "expected_sq_error_after": after}
        graph.metadata[REPORT] = json.dumps({"strategy": self.strategy, "arrays_permuted": bool(self.arrays),
                                             "layers": report}, sort_keys=True)
        return PassResult(True)

    def _array_permutation(self, nodes: list[Node], m2: dict[int, np.ndarray], E2: np.ndarray) -> np.ndarray:
        """``perm[a]``: the physical array that plays array ``a``'s role (module docstring, step 1), by the cost of
        each role's tiles on each array: per level, the tiles' weight of that level times the array's mean
        squared error at that level."""
        A, levels = E2.shape[:2]
        weight = np.zeros((A, levels))
        for node in nodes:
            tm: TileMap = node.attrs["tile.map"]
            for i in range(len(tm)):
                t = _tile(node, i, m2.get(id(node)))
                weight[tm.array_list[i]] += (t.w * t.m2[None, :, None]).sum(axis=(1, 2))
        slot, phys = linear_sum_assignment(weight @ E2.mean(axis=(2, 3)).T)
        perm = np.empty(A, np.int64)
        perm[slot] = phys
        return perm

    def _place(self, t: _Tile, E2: np.ndarray, row_at: np.ndarray, col_at: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, float]:
        """Rows, then (columns, rows) ``iterations`` times, each by linear assignment; the best placement seen."""
        best = (t.cost(E2, row_at, col_at), row_at, col_at)
        rows, cols = row_at, col_at
        for step in range(1 + 2 * self.iterations):
            if step % 2 == 0:
                _, rows = linear_sum_assignment(t.row_cost(E2, cols))
            else:
                _, cols = linear_sum_assignment(t.col_cost(E2, rows))
            cost = t.cost(E2, rows, cols)
            if cost < best[0] - 1e-9 * max(1.0, best[0]):
                best = (cost, rows.astype(np.int64), cols.astype(np.int64))
        return best[1], best[2], best[0]


def _tile(node: Node, i: int, m2: np.ndarray | None) -> _Tile:
    a = node.attrs
    tm: TileMap = a["tile.map"]
    enc = Encoding(a["tile.encoding"], int(a["tile.weight_bits"]), int(a["tile.cell_bits"]))
    cells = _cells(node, enc)
    img = tile_image(cells, tm, i)  # uint8 [k, C] logical levels
    t = tm[i]
    sig2 = np.asarray(enc.significance, np.float64)[t.s0 + np.arange(t.cols) % (t.s1 - t.s0)] ** 2
    levels = 1 << enc.cell_bits
    w = np.stack([(img == lv) * sig2[None, :] for lv in range(levels)])
    rows = np.ones(t.rows) if m2 is None else m2[t.group, t.k0:t.k1]
    return _Tile(node, i, w, rows)


_CELLS: dict[int, tuple[Any, np.ndarray]] = {}


def _cells(node: Node, enc: Encoding) -> np.ndarray:
    """The layer's cells ``[G, K, N, S]`` (encoded once per node)."""
    hit = _CELLS.get(id(node))
    if hit is None or hit[0] is not node:
        _CELLS.clear()
        hit = _CELLS[id(node)] = (node, enc.encode(weight_matrix(node)))
    return hit[1]


def _input_moments(graph: Graph, nodes: list[Node], calibration: Any, inputs: int, seed: int
                   ) -> dict[int, np.ndarray]:
    """Per tiled node, ``m2[g, k]``: the mean square of the unsigned input of row ``k`` of group ``g`` (im2col
    order for a convolution) on the calibration inputs; empty without them."""
    if not calibration or inputs == 0:
        return {}
    from cimc.interpreter import Interpreter
    from cimc.quant.calibrate import batches, check_calibration

    watch: dict[int, list[Node]] = {}
    for n in nodes:
        watch.setdefault(id(n.inputs[0]), []).append(n)
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, float] = {}

    def observe(v: Value, x: np.ndarray) -> None:
        for n in watch.get(id(v), ()):
            G, K, _ = n.attrs["tile.map"].matrix
            sq = np.asarray(x, np.float64) ** 2
            if n.op == "q.conv":
                per_channel = sq.sum(axis=tuple(i for i in range(sq.ndim) if i != 1))  # [C]
                total, count = np.repeat(per_channel, K // (len(per_channel) // G)).reshape(G, K), sq.size / sq.shape[1]
            else:
                total, count = sq.reshape(-1, sq.shape[-1]).sum(axis=0).reshape(G, K), sq.size / sq.shape[-1]
            sums[id(n)] = sums.get(id(n), 0.0) + total
            counts[id(n)] = counts.get(id(n), 0.0) + count

    arrays, count = check_calibration(graph, calibration)
    interp = Interpreter(graph, seed=seed)
    for run in batches(graph, {k: a[:inputs] for k, a in arrays.items()}, min(count, inputs)):
        interp.run(run, observe=observe)
    return {k: sums[k] / max(counts[k], 1.0) for k in sums}
