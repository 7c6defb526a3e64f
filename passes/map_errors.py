"""map-errors: place each tile on a chip where its faults cost least (row and column permutations, spares, arrays).

Runs after ``tile`` on the tiled graph (its ``tile.map`` annotations), for a target whose chip is known
(:meth:`cimc.target.Target.chip`: its chip file, or drawn from its fault models with the compile seed; chip
``ctx.chip`` of it, so a Monte Carlo run places every chip's program for that chip) and whose device
(:meth:`cimc.target.Target.machine`) says what each cell holds after a write.

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
   other, so the cost never grows. A step's result depends on the step before alone, so the alternation stops
   once a step gives what the step two before gave (the rest would repeat) or the cost is zero; and tiles alike
   (the same levels, significance, input moments, array and starting placement) are placed once, their
   placement (and expected error) shared: the same result as placing each.

   That full search costs about ten milliseconds per 128 x 128 tile (five assignments and their cost products),
   so with ``effort=bounded`` (the default) it goes to the ``full_tiles`` tiles of each layer with the largest
   expected error before placement (all of a layer's tiles when it has no more: the zoo's models but
   mobilenet_tiny), and every other tile gets the **bounded placement**: its columns, given its rows, by
   assignments of the most significant columns first (the columns of one slice significance at a time, each a
   least-cost assignment to the physical columns left: the slices' costs differ 16 times from one to the next, so
   those of the top slice decide most of the cost), then its rows, given those columns, by ``rounds`` rounds of
   exchanges (swaps of two rows, moves to a free row; the disjoint best ones each round), never raising the cost;
   no column is complemented. Its costs, when the error maps are a few terms ``f[j, l] V[j, r, p]`` but at a
   few cells (programming variation with one draw per cell; cells stuck at 0, at the top), come from a product
   of ``[k, C]`` by ``[C, R]`` per term plus a sum over those cells, found in the maps themselves (the one-hot
   products otherwise: one per level). On
   light_resnet50 with random weights at 5 % stuck cells it leaves about 11 % more expected squared error than the
   full search in a quarter of its time (benchmarks/README.md). ``effort=full`` places every tile by the full
   search. The report says per layer how many tiles each got (``tiles_full_search``, ``tiles_bounded``).

3. closest-value mapping (``closest``): a cell is stuck when what it holds does not depend on the level written
   (``E[a, l, r, p] + l`` the same for every ``l``). A weight ``w`` with cells on stuck cells (in any of its
   replicas; cells of skipped blocks are not read and do not count) is written as the value ``v`` whose
   encoding, with those cells stuck, holds the value closest to ``w`` (squared distance summed over the
   replicas, which share one image); ``w`` itself when nothing is closer. Candidates are the encodings of every
   value of the weight's bits (all codes in two's complement; the canonical ones in differential and offset
   encodings). Weights of one stuck pattern are solved together (one table per pattern and value).

The result is a placement in the typed tile map (``row_at``, ``col_at``, arrays), which the executor honours:
with an ideal device and a lossless ADC any placement computes the same bits; and ``tile.recode`` (int64
``[n, 4]``: ``(group, row, channel, value)`` of each weight written as another value, packed by the lowering
through :func:`cimc.tiling.written_matrix`), which on an ideal device computes those values instead: the program
is for its chip. ``tile.skip`` is recomputed for the new rows (from the weights: a recoded weight is never in a
skipped block). Layers reading one weight's tiles (``tile.shared``) take their first layer's placement, the
input moments of all of them summed. ``graph.metadata["report.map-errors"]`` gives per layer the expected
squared error of the result, ``sum_i m2[i] sum_ch (sum_s sig[s] E[...])^2`` over each tile's driven rows (the
errors of one weight's slices in a tile add before squaring), before (the identity placement on the arrays
``tile`` chose, the weights as they are) and after, and how many weights were recoded. ``strategy=none``
keeps the placement (and says so); a chip with no faults or variation keeps it too (the report says there was
nothing to avoid).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, ClassVar, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix

from cimc.cim.device import IDEAL, Device
from cimc.cim.encoding import Encoding
from cimc.cim.machine import DEVICE
from cimc.cim.tilemap import TileMap
from cimc.errors import CimcError, PassError
from cimc.ir.core import Graph, Node, Value
from cimc.passmanager import Pass, PassContext, PassResult, option
from cimc.target import ARRAY_OPS
from cimc.tiling import weight_matrix, written_matrix, zero_blocks

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

    node: Node | None
    index: int
    w: np.ndarray
    """``[levels, k, C]``: ``sig[c]^2`` where logical cell ``(i, c)`` holds that level, else 0 (as written: a
    complemented column holds ``top - l`` where this says ``l``)."""
    m2: np.ndarray
    """``[k]``: mean square input of each logical row."""
    img: np.ndarray
    """``[k, C]``: the level of each logical cell."""
    sig: np.ndarray
    """``[C]``: the significance of each logical column's slice."""
    slices: int
    """Slices of a channel in the tile (``s1 - s0``)."""
    flip: np.ndarray | None = None
    """bool ``[C]``: the logical columns written complemented (their cells hold level ``top - l``)."""
    _rows: np.ndarray | None = None
    _cols: np.ndarray | None = None

    def set_flip(self, flip: np.ndarray) -> None:
        """Complement the columns ``flip`` (bool ``[C]``)."""
        self.flip = flip

    def _by_row(self) -> np.ndarray:
        """``[k, levels * C]``: the one-hot weights, row by row (levels, then columns)."""
        if self._rows is None:
            self._rows = self.w.transpose(1, 0, 2).reshape(self.w.shape[1], -1)
        return self._rows

    def _by_col(self) -> np.ndarray:
        """``[C, levels * k]``: the one-hot weights times the rows' input moments, column by column."""
        if self._cols is None:
            cols = (self.w * self.m2[:, None]).astype(self.w.dtype)
            self._cols = cols.transpose(2, 0, 1).reshape(self.w.shape[2], -1)
        return self._cols

    def _read(self, at: np.ndarray, axis: int) -> np.ndarray:
        """Error maps ``at`` (levels first) as the tile's columns see them, the columns along ``axis``: a
        complemented column holding level ``l`` is written ``top - l``, so it reads the maps in reverse order."""
        if self.flip is None or not self.flip.any():
            return at
        shape = [1] * at.ndim
        shape[axis] = len(self.flip)
        return np.where(self.flip.reshape(shape), at[::-1], at)

    def row_cost(self, E2: np.ndarray, col_at: np.ndarray) -> np.ndarray:
        """``[k, R]``: cost of logical row ``i`` on physical row ``r`` with the columns at ``col_at`` (one product
        over levels and columns together)."""
        at = self._read(E2[:, :, col_at].transpose(0, 2, 1), 1)  # [levels, C, R]
        return self.m2[:, None] * (self._by_row() @ at.reshape(-1, at.shape[2]))

    def col_cost(self, E2: np.ndarray, row_at: np.ndarray, both: bool = False) -> np.ndarray:
        """``[C, P]``: cost of logical column ``c`` on physical column ``p`` with the rows at ``row_at``, the columns
        written as they are; with ``both``, ``[2, C, P]``: as they are and complemented (one product)."""
        at = E2[:, row_at]  # [levels, k, P]
        P = at.shape[2]
        if both:
            at = np.concatenate([at, at[::-1]], axis=2)
        out = self._by_col() @ at.reshape(-1, at.shape[2])
        return np.stack([out[:, :P], out[:, P:]]) if both else out

    def cost(self, E2: np.ndarray, row_at: np.ndarray, col_at: np.ndarray) -> float:
        """Expected squared error of the tile at this placement."""
        at = self._read(E2[:, row_at[:, None], col_at[None, :]], 2)  # [levels, k, C]
        return float((self.w * at).sum(axis=(0, 2)) @ self.m2)

    def error(self, E: np.ndarray, row_at: np.ndarray, col_at: np.ndarray, driven: np.ndarray,
              img: np.ndarray | None = None, moved: np.ndarray | None = None, flip: np.ndarray | None = None
              ) -> float:
        """Expected squared error of the tile's result (module docstring, the report) at this placement, with
        its cells at levels ``img`` (default: its own) that encode its weights plus ``moved`` (``[k, channels]``,
        a recoding), the columns ``flip`` complemented, over the ``driven`` rows (bool ``[k]``)."""
        img = self.img if img is None else img
        sig = self.sig
        if flip is not None and len(flip):  # stored at top - l: the error read back is minus the stored one's
            img = img.copy()
            img[:, flip] = (len(E) - 1) - img[:, flip]
            sig = sig.copy()
            sig[flip] *= -1
        e = E[img, row_at[:, None], col_at[None, :]].astype(np.float64) * sig  # [k, C]
        per = e.reshape(len(img), -1, self.slices).sum(axis=2)  # [k, channels]: one weight's slices add
        if moved is not None:
            per += moved
        return float(self.m2[driven] @ (per[driven] ** 2).sum(axis=1))


@dataclass(frozen=True)
class MapErrorsPass(Pass):
    """Error-aware placement of the tiles on the target's chip (module docstring)."""

    name: ClassVar[str] = "map-errors"
    needs_target: ClassVar[bool] = True
    per_chip: ClassVar[bool] = True
    strategy: Literal["assign", "none"] = option(
        "assign", "assign: arrays, rows and columns by linear assignment on the expected error; none: keep the "
                  "placement tile gave.")
    iterations: int = option(2, "Rounds of (rows, columns) assignment per tile, after a first row assignment.")
    effort: Literal["bounded", "full"] = option(
        "bounded", "full: every tile by the full search (the assignments of step 2 with flips); bounded: the "
                   "full_tiles tiles of each layer with the largest expected error by the full search, the others by "
                   "the bounded placement (columns by a rank-one order and exchanges, then rows by exchanges; no "
                   "flips). The report gives each layer's count of each.")
    full_tiles: int = option(8, "With effort=bounded, how many tiles of each layer (those with the largest expected "
                                "error before placement) get the full search.")
    rounds: int = option(2, "Rounds of exchanges of rows of the bounded placement (0: its rows are kept).")
    arrays: bool = option(True, "Also permute which physical array holds each array's tiles (most significant "
                                "slices on the most reliable arrays).")
    inputs: int = option(8, "Calibration inputs run to measure each row's input (the first ones).")
    flips: bool = option(True, "Column sign flips: a column whose cells' stuck values match its complement better is "
                               "written complemented (top - level) and read back as top * sum(x) less its sum.")
    closest: bool = option(True, "Closest-value mapping: a weight with cells on stuck cells is written as the value "
                                 "whose encoding, with those cells stuck, holds the value closest to it.")

    def __post_init__(self) -> None:
        if min(self.iterations, self.inputs, self.full_tiles, self.rounds) < 0:
            raise CimcError(f"options iterations={self.iterations}, inputs={self.inputs}, full_tiles={self.full_tiles} "
                            f"and rounds={self.rounds} of pass 'map-errors' must be >= 0")

    def chip_blind(self) -> MapErrorsPass:
        """``strategy=none``: the placement ``tile`` gives, the weights as they are."""
        return replace(self, strategy="none")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Place every tiled layer of ``graph`` (module docstring)."""
        target = ctx.require_target(self)
        nodes = [n for n in graph.nodes if isinstance(n.attrs.get("tile.map"), TileMap)]
        if not nodes:
            untiled = [n for n in graph.nodes if n.op in ARRAY_OPS and len(n.inputs) > 1 and n.inputs[1] is not None
                       and n.inputs[1].const is not None]
            if untiled:
                raise PassError(f"map-errors found no tiled layers ({untiled[0].op} {untiled[0].name!r} has no tile "
                                f"map): run 'tile' before it")
            graph.metadata[REPORT] = json.dumps({"status": "no layer on the arrays: nothing to place"})
            return PassResult(False)
        if self.strategy == "none":
            graph.metadata[REPORT] = json.dumps({"status": "strategy=none: the placement of 'tile' is kept"})
            return PassResult(False)
        device = target.machine(ctx.seed, ctx.chip).get(DEVICE, IDEAL)
        if device.ideal:
            graph.metadata[REPORT] = json.dumps({"status": "the chip has no faults or variation: placement kept"})
            return PassResult(False)
        first: TileMap = nodes[0].attrs["tile.map"]
        A, shape = first.arrays, first.physical
        levels = 1 << int(nodes[0].attrs["tile.cell_bits"])
        E = np.stack([error_maps(device, a, levels, shape).astype(np.float32) for a in range(A)])  # [A, levels, R, C]
        E2 = E.astype(np.float64) ** 2
        stuck = _stuck(E) if self.closest else None
        errs = _Errs.of(E)
        owners = [n for n in nodes if "tile.shared" not in n.attrs]
        m2 = _shared_moments(nodes, _input_moments(graph, nodes, ctx.calibration, self.inputs, ctx.seed))
        perm = self._array_permutation(owners, m2, E2) if self.arrays else np.arange(A)
        report = {}
        E2c = E2.astype(_COSTS)
        seps: dict[int, _Separable | None] = {}  # per physical array, its maps' split (the bounded placement's)
        solved: dict[tuple[Any, ...], Any] = {}  # placements of tiles placed so far
        errors: dict[tuple[Any, ...], Any] = {}  # and expected errors
        try:
            for node in owners:
                report[node.name] = self._place_layer(node, m2.get(id(node)), E, E2c, perm, stuck, (solved, errors),
                                                      errs, seps)
        finally:
            _CELLS.clear()  # the encoded cells of the last layer placed: not kept alive past the pass
        for node in nodes:  # layers reading another layer's tiles take its placement and recoding
            if node not in owners:
                src = next(n for n in owners if n.name == node.attrs["tile.shared"])
                node.attrs.update({k: v for k, v in src.attrs.items() if k in ("tile.map", "tile.skip", "tile.recode")})
        graph.metadata[REPORT] = json.dumps({"strategy": self.strategy, "effort": self.effort,
                                             "full_tiles": self.full_tiles if self.effort == "bounded" else None,
                                             "arrays_permuted": bool(self.arrays),
                                             "closest_value": bool(self.closest), "layers": report}, sort_keys=True)
        return PassResult(True)

    def _place_layer(self, node: Node, m2: np.ndarray | None, E: np.ndarray, E2: np.ndarray, perm: np.ndarray,
                     stuck: np.ndarray | None, memos: tuple[dict[tuple[Any, ...], Any], dict[tuple[Any, ...], Any]],
                     errs: _Errs | None, seps: dict[int, _Separable | None]) -> dict[str, float | int]:
        """Place one layer's tiles (steps 2 and 3 of the module docstring); its report entry. ``memos``: the
        placements and the errors of tiles placed so far, by everything that computes them (tiles alike share
        them); ``errs``: the cells that err when the error maps are whole numbers (:class:`_Errs`), else ``None``;
        ``seps``: each physical array's :class:`_Separable` split (filled as arrays are first met)."""
        solved, errors = memos
        a = node.attrs
        tm: TileMap = a["tile.map"]
        enc = Encoding(a["tile.encoding"], int(a["tile.weight_bits"]), int(a["tile.cell_bits"]))
        rpo = int(a["tile.rows_per_op"])
        skip0 = np.asarray(a["tile.skip"], np.int64).reshape(-1, 2)
        table = tm.table.copy()
        table[:, 7] = perm[table[:, 7]]
        row_at, col_at = [], []
        jobs: list[tuple[Any, ...]] = []
        flips: list[np.ndarray | None] = []
        pairs = enc.kind == "differential"  # a pair's columns are complemented together (they may be sensed so)
        blocks0 = _skipped(skip0, len(tm))
        cells = _cells(node, enc)
        hot: dict[tuple[Any, ...], _Tile] = {}  # one-hot weights [k, levels, C] float64: 16 at most
        sig_all = np.asarray(enc.significance, np.float64)
        sigs: dict[tuple[int, int, int], np.ndarray] = {}
        parts: list[tuple[np.ndarray, np.ndarray, int]] = []
        tiles = []
        for i, (g, k0, k1, c0, c1, s0, s1, arr, _) in enumerate(tm.table.tolist()):
            img = np.ascontiguousarray(cells[g, k0:k1, c0:c1, s0:s1]).reshape(k1 - k0, -1)  # tile_image's
            C = img.shape[1]
            sig = sigs.get((s0, s1, C))
            if sig is None:
                sig = sigs[s0, s1, C] = sig_all[s0 + np.arange(C) % (s1 - s0)]
            rows2 = np.ones(k1 - k0) if m2 is None else m2[g, k0:k1]
            parts.append((sig, rows2, s1 - s0))
            rows, cols = tm.rows_of(i), tm.cols_of(i)
            jobs.append((arr, img, sig, s1 - s0, rows2, rows, cols, _driven(blocks0[i], rows, rpo), None, None))
            tiles.append((img, sig, rows2, rows, cols, s1 - s0))
        before_each = _errors(E, errs, jobs, errors)
        full = _full_search(before_each, len(tm) if self.effort == "full" else self.full_tiles)
        work = _Work()
        for i, (img, sig, rows2, rows, cols, S) in enumerate(tiles):
            arg = (enc.slices if pairs else 0) if S == enc.slices or not pairs else -1
            a_phys = int(table[i, 7])
            # _place is a function of these alone (its options are the pass's): tiles alike share one result
            key = (bool(full[i]), a_phys, arg, img.shape, img.tobytes(), sig.tobytes(), rows2.tobytes(),
                   rows.tobytes(), cols.tobytes())
            hit = solved.get(key)
            if hit is None and not full[i]:
                if a_phys not in seps:
                    seps[a_phys] = _Separable.of(E2[a_phys])
                sep = seps[a_phys]
                if sep is not None:
                    hit = _put(solved, key, self._place_bounded(partial(sep.col_cost, img, sig ** 2, rows2, work=work),
                                                                partial(sep.row_cost, img, sig ** 2, rows2, work=work),
                                                                sig ** 2, rows, cols))
            if hit is None:  # tiles of the same levels share their one-hot weights
                t = _Tile(node, i, _NO_WEIGHTS, rows2, img, sig, S)
                w = hot.get(key[3:6])
                if w is None:
                    w = _put(hot, key[3:6], _with_weights(t, enc.cell_bits), 16)
                t = replace(t, w=w.w, _rows=w._rows)
                if full[i]:
                    hit = _put(solved, key, self._place(t, E2[a_phys], rows, cols, arg))
                else:
                    t.set_flip(np.zeros(len(cols), bool))
                    hit = _put(solved, key, self._place_bounded(partial(t.col_cost, E2[a_phys]),
                                                                partial(t.row_cost, E2[a_phys]), sig ** 2, rows, cols))
            r, c, f, _ = hit
            row_at.append(r)
            col_at.append(c)
            flips.append(np.flatnonzero(f) if f.any() else None)
        before = 0.0
        for x in before_each:  # summed in the order of the tiles
            before += x
        placed = tm.replace(table=table, row_at=row_at, col_at=col_at, flip=flips)
        a["tile.map"] = placed
        m = weight_matrix(node)
        skip = zero_blocks(m, placed, rpo) if enc.offset == 0 else skip0
        a["tile.skip"] = skip
        recode = np.zeros((0, 4), np.int64) if stuck is None else _recode(m, enc, placed, stuck, skip, rpo)
        if len(recode):
            a["tile.recode"] = recode
        else:
            a.pop("tile.recode", None)
        written = written_matrix(node)
        cells = _cells(node, enc)
        if len(recode):  # the written weights' cells: those of the recoded weights encoded again
            cells = cells.copy()
            cells[recode[:, 0], recode[:, 1], recode[:, 2]] = enc.encode(recode[:, 3])
        moved = written.astype(np.int64) - m
        blocks = _skipped(skip, len(placed))
        jobs = []
        for i, (g, k0, k1, c0, c1, s0, s1, arr, _) in enumerate(table.tolist()):
            sig, rows2, S = parts[i]
            rows = placed.rows_of(i)
            shift = moved[g, k0:k1, c0:c1] if len(recode) and s0 == 0 else None  # a weight's move counts once
            img = np.ascontiguousarray(cells[g, k0:k1, c0:c1, s0:s1]).reshape(k1 - k0, -1)
            jobs.append((arr, img, sig, S, rows2, rows, placed.cols_of(i), _driven(blocks[i], rows, rpo), shift,
                         placed.flips_of(i)))
        after = 0.0
        for x in _errors(E, errs, jobs, errors):
            after += x
        return {"expected_sq_error_before": before, "expected_sq_error_after": after, "recoded": len(recode),
                "flipped_columns": sum(len(placed.flips_of(i)) for i in range(len(placed))),
                "tiles_full_search": int(full.sum()), "tiles_bounded": int(len(full) - full.sum())}

    def _array_permutation(self, nodes: list[Node], m2: dict[int, np.ndarray], E2: np.ndarray) -> np.ndarray:
        """``perm[a]``: the physical array that plays array ``a``'s role (module docstring, step 1), by the cost of
        each role's tiles on each array: per level, the tiles' weight of that level times the array's mean
        squared error at that level."""
        A, levels = E2.shape[:2]
        weight = np.zeros((A, levels))
        sums: dict[tuple[Any, ...], np.ndarray] = {}
        for node in nodes:
            a = node.attrs
            tm: TileMap = a["tile.map"]
            enc = Encoding(a["tile.encoding"], int(a["tile.weight_bits"]), int(a["tile.cell_bits"]))
            cells = _cells(node, enc)
            sig2 = np.asarray(enc.significance, np.float64) ** 2
            rows = m2.get(id(node))
            for g, k0, k1, c0, c1, s0, s1, arr, _ in tm.table.tolist():  # per tile, summed as its cells come
                m = np.ones(k1 - k0) if rows is None else rows[g, k0:k1]
                img = np.ascontiguousarray(cells[g, k0:k1, c0:c1, s0:s1])
                key = (img.shape, s0, img.tobytes(), m.tobytes())
                hit = sums.get(key)  # tiles alike (the same levels, inputs and slices) have the same sums
                if hit is None:
                    w = np.broadcast_to(m[:, None, None] * sig2[None, None, s0:s1], img.shape)
                    hit = _put(sums, key, np.bincount(img.reshape(-1), w.reshape(-1), minlength=levels))
                weight[arr] += hit
        slot, phys = linear_sum_assignment(weight @ E2.mean(axis=(2, 3)).T)
        perm = np.empty(A, np.int64)
        perm[slot] = phys
        return perm

    def _place(self, t: _Tile, E2: np.ndarray, row_at: np.ndarray, col_at: np.ndarray, pairs: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Rows, then (columns, rows) ``iterations`` times, each by linear assignment; the best placement seen:
        rows, columns, the complemented columns (bool) and its cost. With ``flips``, each column step assigns
        every column at the better of written and complemented, then complements those it gains on (``pairs``
        slices per channel: a differential pair's two columns together, by their summed gain; -1: none)."""
        C = len(col_at)
        t.set_flip(np.zeros(C, bool))
        first = t.row_cost(E2, col_at)  # step 0's costs, which also give the placement's own
        best = (float(first[np.arange(len(row_at)), row_at].sum()), row_at, col_at, np.zeros(C, bool))
        rows, cols = row_at, col_at
        # a step's result is a function of the previous step's alone, so once a step gives what the step two
        # before gave, the steps after repeat the last two (their costs too, none lower than the best); and
        # no step beats a best whose margin below is negative (the costs are sums of squares times weights)
        seen: list[tuple[np.ndarray, ...]] = [(col_at, np.zeros(C, bool))]
        for step in range(1 + 2 * self.iterations):
            if 0 <= best[0] < 1e-9 * max(1.0, best[0]):
                break
            if step % 2 == 0:
                c = first if step == 0 else t.row_cost(E2, cols)
                rows = _assign(c)
                cost = float(c[np.arange(len(rows)), rows].sum())
                seen.append((rows,))
            elif self.flips and pairs >= 0:
                keep, inv = t.col_cost(E2, rows, both=True)
                cols = _assign(np.minimum(keep, inv))
                gain = keep[np.arange(C), cols] - inv[np.arange(C), cols]
                if pairs:
                    g = gain.reshape(-1, 2, pairs // 2).sum(axis=1) > 0  # [channels, S/2]: a pair's summed gain
                    t.set_flip(np.repeat(g[:, None, :], 2, axis=1).reshape(-1))
                else:
                    t.set_flip(gain > 0)
                assert t.flip is not None
                cost = float(np.where(t.flip[:, None], inv, keep)[np.arange(C), cols].sum())
                seen.append((cols, t.flip))
            else:
                c = t.col_cost(E2, rows)
                cols = _assign(c)
                cost = float(c[np.arange(C), cols].sum())
                seen.append((cols, np.zeros(C, bool)))
            if cost < best[0] - 1e-9 * max(1.0, best[0]):
                assert t.flip is not None
                best = (cost, rows.astype(np.int64), cols.astype(np.int64), t.flip.copy())
            if len(seen) > 2 and all(np.array_equal(x, y) for x, y in zip(seen[-1], seen[-3], strict=True)):
                break
        return best[1], best[2], best[3], best[0]

    def _place_bounded(self, col_cost: Callable[[np.ndarray], np.ndarray], row_cost: Callable[[np.ndarray], np.ndarray],
                       sig2: np.ndarray, row_at: np.ndarray, col_at: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """The bounded placement (``effort=bounded``): the columns, given the rows ``row_at``, by
        :func:`_assign_by_significance` (``col_at`` where that costs more); then, with ``rounds``, the rows given
        those columns by ``rounds`` rounds of :func:`_descend` from ``row_at``. No step raises the cost (as its
        costs count it), so the placement costs at most what ``row_at``, ``col_at`` do; no columns are
        complemented. ``col_cost(rows)`` and ``row_cost(cols)``: the steps' cost matrices; ``sig2``: each logical
        column's significance squared."""
        cc = col_cost(row_at)
        ac = np.arange(len(col_at))
        cols = _assign_by_significance(cc, sig2)
        cost = float(cc[ac, cols].sum())
        if cost > float(cc[ac, col_at].sum()):
            cols, cost = np.asarray(col_at, np.int64), float(cc[ac, col_at].sum())
        rows = np.asarray(row_at, np.int64)
        if self.rounds:
            cr = row_cost(cols)
            rows = _descend(cr, row_at, self.rounds)
            cost = float(cr[np.arange(len(rows)), rows].sum())
        return rows, cols, np.zeros(len(cols), bool), cost

def _full_search(before: list[float], n: int) -> np.ndarray:
    """bool per tile: the ``n`` tiles of largest expected error ``before`` (the first of equal ones)."""
    out = np.zeros(len(before), bool)
    out[np.argsort(-np.asarray(before, np.float64), kind="stable")[:n]] = True
    return out


def _assign(cost: np.ndarray) -> np.ndarray:
    """The column of each row in a least-cost assignment of the rows of ``cost`` ``[k, n]`` (``k <= n``) to distinct
    columns (``linear_sum_assignment``). Within a few rows of square, the problem is solved square (zero rows added)
    with each column's least cost over the rows subtracted: every assignment of the square problem changes by the
    same sum, so its optima are the same, and the solver, which starts from zero potentials, reaches them in far
    fewer steps on the costs of a tile (rows or columns alike but for a scale: the slices' significance, the rows'
    inputs), where it otherwise walks long augmenting paths."""
    k, n = cost.shape
    if n - k > _SQUARE_WITHIN:
        return linear_sum_assignment(cost)[1]
    full = np.zeros((n, n))
    full[:k] = cost
    full -= cost.min(axis=0)
    return linear_sum_assignment(full)[1][:k]


_SQUARE_WITHIN = 8
"""Rows short of square up to which :func:`_assign` solves the square problem."""


_NO_WEIGHTS = np.zeros((0, 0, 0))

_COSTS = np.float64
"""The type of the one-hot weights and squared error maps whose products score placements. Double: OpenBLAS's
single-precision products of these shapes round differently with one thread and with two, and a score that
moves in its last bit can change which of two equal assignments is taken, so the program would depend on the
BLAS thread count; the double ones agree bit for bit."""


@dataclass(frozen=True)
class _Errs:
    """The cells that err (``E[a, l, r, p] != 0`` for some level) of error maps that are whole numbers: a tile's
    error is then a sum over those cells alone, with the same bits as over all (every partial sum is an integer
    well below 2**53, so exact in any order)."""

    at: list[tuple[np.ndarray, ...]]
    """Per array, the erring cells' physical rows and columns."""

    @staticmethod
    def of(E: np.ndarray) -> _Errs | None:
        """Those of ``E`` ``[A, levels, R, C]``, or ``None`` when some error is not a whole number (or too large)."""
        if not (np.isfinite(E).all() and np.array_equal(E, np.rint(E))) or np.abs(E).max(initial=0) > 1 << 20:
            return None
        return _Errs([np.nonzero(e) for e in (E != 0).any(axis=1)])


def _error(E: np.ndarray, errs: _Errs | None, a: int, img: np.ndarray, sig: np.ndarray, slices: int, m2: np.ndarray,
           row_at: np.ndarray, col_at: np.ndarray, driven: np.ndarray, moved: np.ndarray | None = None,
           flip: np.ndarray | None = None, memo: dict[tuple[Any, ...], Any] | None = None) -> float:
    """:meth:`_Tile.error` of a tile (levels ``img``, significance ``sig``, rows' input moments ``m2``) on array ``a``,
    from its erring cells alone when ``errs`` has them (the same bits). ``memo``: the errors of tiles alike (every
    argument the same) computed before, and this one's when it is new."""
    if memo is not None:
        key = ("error", a, slices, *((x.shape, x.dtype.str, x.tobytes()) if x is not None else None
                                     for x in (img, sig, m2, row_at, col_at, driven, moved, flip)))
        hit = memo.get(key)
        if hit is None:
            hit = _put(memo, key, _error(E, errs, a, img, sig, slices, m2, row_at, col_at, driven, moved, flip))
        return float(hit)
    if errs is None:
        return _Tile(None, 0, _NO_WEIGHTS, m2, img, sig, slices).error(E[a], row_at, col_at, driven, None, moved,
                                                                        flip)
    fr, fp = errs.at[a]
    R, P = E.shape[2:]
    k, C = img.shape
    inv_r = np.full(R, -1, np.int64)
    inv_r[row_at] = np.arange(k)
    inv_c = np.full(P, -1, np.int64)
    inv_c[col_at] = np.arange(C)
    li, lc = inv_r[fr], inv_c[fp]
    on = (li >= 0) & (lc >= 0)
    li, lc, r, p = li[on], lc[on], fr[on], fp[on]
    lev, sg = img[li, lc], sig[lc]
    if flip is not None and len(flip):  # stored at top - l: the error read back is minus the stored one's
        f = np.zeros(C, bool)
        f[flip] = True
        lev = np.where(f[lc], (E.shape[1] - 1) - lev, lev)
        sg = np.where(f[lc], -sg, sg)
    ch = C // slices
    e = E[a, lev, r, p].astype(np.float64) * sg
    per = np.bincount(li * ch + lc // slices, e, minlength=k * ch).reshape(k, ch)
    if moved is not None:
        per += moved
    return float(m2[driven] @ (per[driven] ** 2).sum(axis=1))


def _errors(E: np.ndarray, errs: _Errs | None, jobs: list[tuple[Any, ...]], memo: dict[tuple[Any, ...], Any]
            ) -> list[float]:
    """:func:`_error` of each job (its arguments after ``errs``, in order, ``moved`` and ``flip`` included): the same
    floats. Without ``errs`` (error maps that are not whole numbers, every cell erring a little), the tiles of one
    shape and array that ``memo`` does not hold are computed together, each tile's error with the operations of
    :meth:`_Tile.error` on its own rows (one gather of the cells of many tiles from one array's maps, then per tile
    the dot product that ends it)."""
    if errs is not None:
        return [_error(E, errs, a, img, sig, S, m2, rows, cols, driven, moved, flip, memo)
                for a, img, sig, S, m2, rows, cols, driven, moved, flip in jobs]
    out: list[float | None] = [None] * len(jobs)
    keys: list[tuple[Any, ...]] = []
    todo: dict[tuple[int, int, int, int], list[int]] = {}
    for j, job in enumerate(jobs):
        a, img, sig, slices = job[:4]
        key = ("error", a, slices, *((x.shape, x.dtype.str, x.tobytes()) if x is not None else None
                                     for x in (img, sig, *job[4:])))
        keys.append(key)
        hit = memo.get(key)
        if hit is None:
            todo.setdefault((int(a), *img.shape, slices), []).append(j)
        else:
            out[j] = float(hit)
    levels, P = E.shape[1], E.shape[3]
    top = levels - 1
    by_cell: dict[int, np.ndarray] = {}
    for (a, k, C, S), idx in todo.items():
        maps = by_cell.get(a)
        if maps is None:  # [R, P, levels]: a cell's levels side by side
            maps = by_cell[a] = np.ascontiguousarray(E[a].transpose(1, 2, 0)).reshape(-1)
        for c0 in range(0, len(idx), _BATCH):
            part = idx[c0:c0 + _BATCH]
            img = np.stack([jobs[j][1] for j in part])  # [n, k, C]
            sig = np.stack([jobs[j][2] for j in part]).astype(np.float64)  # [n, C]
            flip = np.zeros((len(part), C), bool)
            for x, j in enumerate(part):
                f = jobs[j][9]
                if f is not None and len(f):
                    flip[x, f] = True
            if flip.any():  # stored at top - l: the error read back is minus the stored one's
                img = np.where(flip[:, None, :], top - img, img)
                sig = np.where(flip, -sig, sig)
            rows = np.stack([jobs[j][5] for j in part])
            cols = np.stack([jobs[j][6] for j in part])
            at = (rows[:, :, None] * (P * levels) + cols[:, None, :] * levels) + img
            e = maps.take(at).astype(np.float64) * sig[:, None, :]  # [n, k, C]
            per = _slice_sums(e.reshape(len(part), k, -1, S))  # [n, k, channels]: one weight's slices add
            for x, j in enumerate(part):
                moved = jobs[j][8]
                if moved is not None:
                    per[x] += moved
            sq = (per ** 2).sum(axis=2)  # [n, k]
            for x, j in enumerate(part):
                m2, driven = jobs[j][4], jobs[j][7]
                out[j] = float(_put(memo, keys[j], float(m2[driven] @ sq[x][driven])))
    return [float(x) for x in out]  # type: ignore[arg-type]


def _slice_sums(x: np.ndarray) -> np.ndarray:
    """``x.sum(axis=-1)`` with the same bits, faster for 8 slices: numpy sums 8 contiguous values as a tree of
    pairs, ``((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7))``, added here the same way slice by slice."""
    if x.shape[-1] != 8:
        return x.sum(axis=-1)
    return ((x[..., 0] + x[..., 1]) + (x[..., 2] + x[..., 3])) + ((x[..., 4] + x[..., 5]) + (x[..., 6] + x[..., 7]))


_BATCH = 64
"""Tiles whose errors :func:`_errors` computes together (their cells gathered at once: 8 MB for 128 x 128)."""


_MEMO = 4096
"""Entries a memo of placements or errors holds before it is emptied (each holds a tile's levels: memory)."""


def _put(memo: dict[tuple[Any, ...], Any], key: tuple[Any, ...], value: Any, limit: int = _MEMO) -> Any:
    """``memo[key] = value`` (the memo emptied first when it holds ``limit`` entries); ``value``."""
    if len(memo) >= limit:
        memo.clear()
    memo[key] = value
    return value


def _with_weights(t: _Tile, cell_bits: int) -> _Tile:
    """``t`` with its one-hot weights (:class:`_Tile`), built row by row (``[k, levels, C]``, the layout of the row
    step's product; ``w`` is a view of it)."""
    k, C = t.img.shape
    levels = 1 << cell_bits
    one_hot = np.zeros((k, levels, C), _COSTS)
    at = (np.arange(0, k * levels * C, levels * C)[:, None] + np.arange(C)[None, :]) + t.img.astype(np.int64) * C
    one_hot.reshape(-1)[at] = np.broadcast_to(t.sig ** 2, at.shape)
    return replace(t, w=one_hot.transpose(1, 0, 2), _rows=one_hot.reshape(k, levels * C))


def _skipped(skip: np.ndarray, n: int) -> list[np.ndarray]:
    """Per tile of ``n``, its skipped blocks (from ``skip`` ``[m, 2]``: ``(tile, block)``)."""
    order = np.argsort(skip[:, 0], kind="stable")
    return np.split(skip[order, 1], np.searchsorted(skip[order, 0], np.arange(1, n)))


def _driven(blocks: np.ndarray, row_at: np.ndarray, rows_per_op: int) -> np.ndarray:
    """bool ``[k]``: which logical rows of a tile are driven (not in one of its skipped ``blocks``)."""
    return ~np.isin(row_at // rows_per_op, blocks) if len(blocks) else np.ones(len(row_at), bool)


def _stuck(E: np.ndarray) -> np.ndarray:
    """int16 ``[A, R, C]``: the level a stuck cell holds (what it holds whatever is written, rounded to a level),
    -1 for a cell that holds what is written (maybe with variation)."""
    top = E.shape[1] - 1
    lo, hi = E[:, 0], E[:, top] + top  # what each cell holds after writing level 0 and the top level
    held = np.clip(np.rint(lo), 0, top).astype(np.int16)
    return np.where(np.abs(hi - lo) <= 1e-6, held, np.int16(-1))


def _recode(m: np.ndarray, enc: Encoding, tm: TileMap, stuck: np.ndarray, skip: np.ndarray, rows_per_op: int
            ) -> np.ndarray:
    """Closest-value mapping (module docstring, step 3): ``[n, 4]`` rows ``(group, row, channel, value)`` of the
    weights of ``m`` written as another value with the placement ``tm`` on cells ``stuck`` (:func:`_stuck`)."""
    _, K, N = m.shape
    S = enc.slices
    reps = int(tm.table[:, 8].max()) + 1
    top = np.int16((1 << enc.cell_bits) - 1)
    R, P = stuck.shape[1:]
    t = tm.table
    at = [np.nonzero(s >= 0) for s in stuck]  # per array, its stuck cells
    first = np.cumsum([0] + [len(r) for r, _ in at])
    sr, sp = (np.concatenate([c[j] for c in at]) for j in (0, 1))
    nb = -(-R // rows_per_op)
    skipped = skip[:, 0] * nb + skip[:, 1]
    where: list[list[np.ndarray]] = [[] for _ in range(6)]  # (replica, group, row, channel, slice, level) of each
    step = 512
    for c0 in range(0, len(tm), step):  # the stuck cells of every tile's array, as the tile holds them
        tiles = np.arange(c0, min(c0 + step, len(tm)))
        inv_r, inv_c = np.full((len(tiles), R), -1, np.int64), np.full((len(tiles), P), -1, np.int64)
        flipped = np.zeros((len(tiles), P), bool)
        for x, i in enumerate(tiles.tolist()):
            inv_r[x, tm.rows_of(i)] = np.arange(t[i, 2] - t[i, 1])
            col_at = tm.cols_of(i)
            inv_c[x, col_at] = np.arange(len(col_at))
            flipped[x, tm.flips_of(i)] = True
        n = first[t[tiles, 7] + 1] - first[t[tiles, 7]]
        j = np.repeat(np.arange(len(tiles)), n)
        cell = np.repeat(first[t[tiles, 7]], n) + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        r, p = sr[cell], sp[cell]
        li, lc = inv_r[j, r], inv_c[j, p]
        on = (li >= 0) & (lc >= 0)
        j, li, lc, r, p = j[on], li[on], lc[on], r[on], p[on]
        on = ~np.isin(tiles[j] * nb + r // rows_per_op, skipped)  # cells of skipped blocks are not read
        j, li, lc, r, p = j[on], li[on], lc[on], r[on], p[on]
        lev = stuck[t[tiles[j], 7], r, p]
        lev = np.where(flipped[j, lc], top - lev, lev)  # as the weight sees it
        row = t[tiles[j]]
        S_t = row[:, 6] - row[:, 5]
        for w, v in zip(where, (row[:, 8], row[:, 0], row[:, 1] + li, row[:, 3] + lc // S_t, row[:, 5] + lc % S_t,
                                lev), strict=True):
            w.append(v)
    rep, gg, kk, nn, ss, lev = (np.concatenate(w) for w in where)
    if not len(rep):
        return np.zeros((0, 4), np.int64)
    # per weight with a stuck cell (in the order of the weights), each replica's slices: the level stuck or -1
    flat, inv = _unique_ints((gg * K + kk) * N + nn, len(m.reshape(-1)))
    g, k, n = flat // (K * N), flat // N % K, flat % N
    rows = np.full((len(flat), reps * S), -1, np.int16)
    rows[inv, rep * S + ss] = lev
    base = int(top) + 2  # each cell -1..top as one digit: a pattern as one integer, ordered as the rows are
    if base ** (reps * S) < 1 << 62:
        digit = base ** np.arange(reps * S - 1, -1, -1, dtype=np.int64)
        codes, inv = _unique_ints((rows.astype(np.int64) + 1) @ digit, base ** (reps * S))
        keys = (codes[:, None] // digit % base - 1).astype(np.int16)
    else:
        keys, inv = np.unique(rows, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
    lo = -(1 << (enc.bits - 1)) + (enc.kind != "twos-complement")
    values = np.arange(lo, 1 << (enc.bits - 1))
    cand = enc.encode(values).astype(np.int16)  # [V, S]: the encoding of every value
    sig = np.asarray(enc.significance, np.int64)
    w = m[g, k, n].astype(np.int64)
    pairs, back = _unique_ints(inv * len(values) + (w - lo), len(keys) * len(values))  # each (pattern, weight) once
    pu, pw = pairs // len(values), pairs % len(values)
    best = np.empty(len(pairs), np.int64)
    # value held = the encoding's value plus, on each stuck cell, (stuck level - the encoding's level) * significance:
    # per pattern and replica, a constant less a product with the candidates' cells (small whole numbers, so the
    # double products are exact)
    sig_f = sig.astype(np.float64)
    cand_sig = (cand * sig_f).T  # [S, V]
    held0 = (cand @ sig_f) - enc.offset  # [V]: the value each candidate holds on cells that are not stuck
    stuck_at = keys >= 0  # [patterns, reps * S]
    on_stuck = (np.where(stuck_at, keys, 0).reshape(-1, reps, S) @ sig_f).reshape(len(keys), reps)  # [patterns, reps]
    step = max(1, (1 << 20) // (reps * len(values)))
    for c0 in range(0, len(pairs), step):
        u, wv = pu[c0:c0 + step], pw[c0:c0 + step]
        mask = stuck_at[u].reshape(-1, S).astype(np.float64)  # [n * reps, S]
        held = (on_stuck[u].reshape(-1, 1) - mask @ cand_sig + held0).reshape(-1, reps, len(values))  # [n, reps, V]
        err = ((held - values[wv][:, None, None]) ** 2).sum(axis=1)  # [n, V]
        pick = err.argmin(axis=1)
        keep = err[np.arange(len(wv)), wv] <= err[np.arange(len(wv)), pick]  # the weight itself unless beaten
        best[c0:c0 + step] = np.where(keep, wv, pick)
    chosen = values[best[back]]
    moved = chosen != w
    return np.stack([g[moved], k[moved], n[moved], chosen[moved]], axis=1).astype(np.int64)


def _unique_ints(x: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(x, return_inverse=True)`` of integers ``0 <= x < size``, by marks in a table of ``size`` when that
    is small (no sort)."""
    if size > 1 << 24:
        u, inv = np.unique(x, return_inverse=True)
        return u, inv.reshape(-1)
    mark = np.zeros(size, bool)
    mark[x] = True
    u = np.flatnonzero(mark)
    pos = np.zeros(size, np.int64)
    pos[u] = np.arange(len(u))
    return u, pos[x]


def _shared_moments(nodes: list[Node], m2: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """``m2`` with each layer that reads another's tiles (``tile.shared``) summed into that layer's."""
    owner = {n.name: n for n in nodes if "tile.shared" not in n.attrs}
    out = dict(m2)
    for n in nodes:
        src = owner.get(str(n.attrs.get("tile.shared")))
        if src is not None and id(n) in m2:
            out[id(src)] = out[id(src)] + m2[id(n)] if id(src) in out else m2[id(n)]
    return out


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


@dataclass(frozen=True)
class _Separable:
    """One array's squared error maps as a few terms ``E2[l, r, p] = sum_j f[j, l] V[j, r, p]`` except at a few
    cells, where ``D[l, e]`` is what the maps hold: programming variation whose sigma is a function of the level
    written times one draw per cell (the relative model's ``f[l] ~ l^2``, the ReRAM and PCM models' polynomials)
    is the first term, and cells alike but for a scale (stuck at the lowest level: ``l^2``; at the top: ``(top -
    l)^2``) the next ones; all found in the maps themselves (:meth:`of`), whatever the device. The bounded
    placement's costs are then a few products of ``[k, C]`` by ``[C, R]`` (the one-hot product is ``levels`` of
    them) plus a sum over the exceptions: the one-hot costs up to :data:`_SEPARABLE_TOL` of each cell's errors (the
    grid a device stores values on moves them a little), exactly those when the maps are exactly so."""

    f: np.ndarray
    """``[T, levels]``: each term's factor per level."""
    V: np.ndarray
    """``[T, R, P]``: each term's scale per cell (0 off the term's cells)."""
    VT: np.ndarray
    """``V`` with its cells' axes swapped (``[T, P, R]``)."""
    er: np.ndarray
    """``[n]``: the exceptions' physical rows (ordered by row, then column)."""
    ep: np.ndarray
    """``[n]``: their physical columns."""
    by_col: np.ndarray
    """The exceptions' order by column, then row."""
    D_by_cell: np.ndarray
    """Their maps, exception by exception (``E2[l, er[e], ep[e]]`` at ``e * levels + l``)."""

    @staticmethod
    def of(E2: np.ndarray) -> _Separable | None:
        """That split of one array's maps ``E2`` ``[levels, R, P]``, or ``None`` when more than
        :data:`_SEPARABLE_MOST` of the cells are exceptions. A cell's profile is its maps over their sum; the first
        term's factor is the median profile, the next ones those of the :data:`_TERMS` most common profiles of the
        cells it does not fit (each of :data:`_TERM_CELLS` cells at least), their scales the sums."""
        levels = E2.shape[0]
        V = E2.sum(axis=0)
        top = E2.max(axis=0)
        on = V > 0
        f0 = np.median(E2[:, on] / V[on], axis=1) if on.any() else np.zeros(levels)
        tol = _SEPARABLE_TOL * np.maximum(top, np.median(top) if top.size else 0.0)
        off = np.abs(E2 - f0[:, None, None] * V).max(axis=0) > tol
        fs, Vs = [f0], [np.where(off, 0.0, V)]
        ro, co = np.nonzero(off)
        rest = np.ones(len(ro), bool)
        if len(ro):
            prof = E2[:, ro, co] / V[ro, co]  # an off cell errs somewhere, so its sum is > 0
            _, kind, counts = np.unique(np.rint(prof / _SEPARABLE_TOL).astype(np.int64), axis=1, return_inverse=True,
                                        return_counts=True)
            kind = kind.reshape(-1)
            for j in np.argsort(-counts, kind="stable")[:_TERMS]:
                if counts[j] < _TERM_CELLS:
                    break
                fj = np.median(prof[:, kind == j], axis=1)
                at = (kind == j) & (np.abs(E2[:, ro, co] - fj[:, None] * V[ro, co]).max(axis=0) <= tol[ro, co])
                Vj = np.zeros_like(V)
                Vj[ro[at], co[at]] = V[ro[at], co[at]]
                fs.append(fj)
                Vs.append(Vj)
                rest &= ~at
        if rest.sum() > _SEPARABLE_MOST * E2[0].size:
            return None
        er, ep = ro[rest], co[rest]
        f, Vt = np.stack(fs), np.stack(Vs)
        return _Separable(f, Vt, np.ascontiguousarray(Vt.transpose(0, 2, 1)), er, ep, np.lexsort((er, ep)),
                          np.ascontiguousarray(E2[:, er, ep].T).reshape(-1))

    def col_cost(self, img: np.ndarray, sig2: np.ndarray, m2: np.ndarray, row_at: np.ndarray,
                 work: _Work | None = None) -> np.ndarray:
        """``[C, P]``: the cost of the tile's logical column ``c`` (levels ``img`` ``[k, C]``, significance squared
        ``sig2``, rows' input moments ``m2``) on physical column ``p``, its rows at ``row_at``, written as they are
        (:meth:`_Tile.col_cost`); ``work``: scratch arrays to reuse."""
        work = _Work() if work is None else work
        L = img.astype(np.int64)
        R, P = self.V.shape[1:]
        out = (m2[:, None] * self.f[0][L]).T @ self.V[0][row_at]  # [C, P]
        for j in range(1, len(self.f)):
            out += (m2[:, None] * self.f[j][L]).T @ self.V[j][row_at]
        inv = np.full(R, -1, np.int64)
        inv[row_at] = np.arange(len(row_at))
        e = self.by_col[inv[self.er[self.by_col]] >= 0]
        if len(e):
            i = inv[self.er[e]]
            out += self._sums(L, i, e, m2[i], self.ep[e], P, work).T
        return out * sig2[:, None]

    def row_cost(self, img: np.ndarray, sig2: np.ndarray, m2: np.ndarray, col_at: np.ndarray,
                 work: _Work | None = None) -> np.ndarray:
        """``[k, R]``: the cost of the tile's logical row ``i`` on physical row ``r``, its columns at ``col_at``, as
        written (:meth:`_Tile.row_cost`); ``work``: scratch arrays to reuse."""
        work = _Work() if work is None else work
        L = img.astype(np.int64)
        R, P = self.V.shape[1:]
        out = (self.f[0][L] * sig2) @ self.VT[0][col_at]  # [k, R]
        for j in range(1, len(self.f)):
            out += (self.f[j][L] * sig2) @ self.VT[j][col_at]
        inv = np.full(P, -1, np.int64)
        inv[col_at] = np.arange(len(col_at))
        e = np.flatnonzero(inv[self.ep] >= 0)
        if len(e):
            c = inv[self.ep[e]]
            out += self._sums(np.ascontiguousarray(L.T), c, e, sig2[c], self.er[e], R, work).T
        return out * m2[:, None]

    def _sums(self, L: np.ndarray, own: np.ndarray, e: np.ndarray, weight: np.ndarray, line: np.ndarray, lines: int,
              work: _Work) -> np.ndarray:
        """``[lines, m]``: per physical line, the sum over its exceptions ``e`` (ordered by ``line``, each on logical
        line ``own`` of ``L`` ``[*, m]``, the levels along the other axis) of ``weight * D[level, e]`` for each of
        the ``m`` levels' logical lines."""
        at = work.get("index", (len(e), L.shape[1]), np.int64)
        np.take(L, own, axis=0, out=at)
        at += (e * self.f.shape[1])[:, None]
        z = self.D_by_cell.take(at, out=work.get("z", at.shape, np.float64))
        by_line = csr_matrix((weight, np.arange(len(e)), np.searchsorted(line, np.arange(lines + 1))),
                             shape=(lines, len(e)))
        return by_line @ z


class _Work:
    """Scratch arrays reused from tile to tile: a fresh array of a megabyte costs its page faults on every
    allocation (about a millisecond here), more than the work done in it."""

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """An uninitialised array ``shape`` of ``dtype``, the scratch ``name``'s memory (grown when too small)."""
        need = int(np.prod(shape))
        key = (name, np.dtype(dtype).str)
        buf = self._arrays.get(key)
        if buf is None or buf.size < need:
            buf = self._arrays[key] = np.empty(need, dtype)
        return buf[:need].reshape(shape)


_SEPARABLE_TOL = 1e-2
"""A cell is an exception of :class:`_Separable` when some level's squared error differs from ``l^2`` times level
1's by more than this fraction of its largest (the grid a device stores values on moves them a little)."""

_SEPARABLE_MOST = 0.25
"""Most exceptions (a fraction of the cells) for which :class:`_Separable` is used."""

_TERMS = 3
"""Most terms of :class:`_Separable` beyond the first (stuck at either end, and one more kind of cell)."""

_TERM_CELLS = 16
"""Fewest cells of a term of :class:`_Separable` beyond the first (fewer are exceptions)."""


def _descend(cost: np.ndarray, at: np.ndarray, rounds: int) -> np.ndarray:
    """``at`` (distinct columns of ``cost`` ``[k, n]``, one per row) improved by up to ``rounds`` rounds of exchanges:
    in each, every row finds its best exchange (swapping columns with another row, or moving to a column no row
    holds), and the exchanges that are the best (largest gain, then first row) of every exchange found that
    touches either of their two rows or columns are made: they are disjoint and each lowers the cost, so the cost
    never grows. Stops when a round makes none."""
    k, n = cost.shape
    at = np.asarray(at, np.int64).copy()
    ar = np.arange(k)
    for _ in range(rounds):
        held = np.zeros(n, bool)
        held[at] = True
        free = np.flatnonzero(~held)
        cur = cost[ar, at]
        x = cost[:, at]  # x[i, j]: row i on row j's column
        gain = cur[:, None] + cur[None, :] - x - x.T
        if len(free):
            gain = np.concatenate([gain, cur[:, None] - cost[:, free]], axis=1)
        best = gain.argmax(axis=1)  # the other end of each row's exchange: a row, or k + a free column
        g = gain[ar, best]
        src = np.flatnonzero(g > _GAIN * max(float(cur.sum()), 1e-300))
        if not len(src):
            break
        rank = np.empty(k, np.int64)
        rank[src[np.lexsort((src, -g[src]))]] = np.arange(len(src))  # 0: the best exchange
        low = np.full(k + len(free), len(src), np.int64)  # per row or free column, the best exchange touching it
        np.minimum.at(low, src, rank[src])
        np.minimum.at(low, best[src], rank[src])
        made = src[(low[src] == rank[src]) & (low[best[src]] == rank[src])]
        swap, move = made[best[made] < k], made[best[made] >= k]
        other = best[swap]
        at[swap], at[other] = at[other], at[swap].copy()
        at[move] = free[best[move] - k]
    return at


_GAIN = 1e-12
"""Least gain (a fraction of the assignment's cost) for which :func:`_descend` makes an exchange."""


def _assign_by_significance(cost: np.ndarray, sig2: np.ndarray) -> np.ndarray:
    """The column of each row of ``cost`` ``[C, P]`` (``C <= P``): the rows of the largest ``sig2`` first, by a
    least-cost assignment (:func:`_assign`) to the columns, then each next value of ``sig2`` to the columns left. With
    the slices of a weight on a tile's columns, their costs differ by their significance squared (16 times from one
    2-bit slice to the next), so the most significant columns' assignment is most of the cost: a few assignments of
    a quarter of the rows, each far cheaper than one of all."""
    out = np.empty(len(cost), np.int64)
    left = np.ones(cost.shape[1], bool)
    for s in np.unique(sig2)[::-1]:
        rows, cols = np.flatnonzero(sig2 == s), np.flatnonzero(left)
        got = cols[_assign(cost[np.ix_(rows, cols)])]
        out[rows] = got
        left[got] = False
    return out
