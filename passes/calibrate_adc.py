"""calibrate-adc: set each ADC's range to the partial sums that occur, on a lowered program.

A lossy ADC (fewer bits than the lossless resolution) at its worst-case range ``[0, M]`` spends most of
its codes on sums that never occur: with bit-serial inputs and one-bit cells most partial sums are a
small part of ``M``. This pass runs on a lowered program (after the target's lowering; it is in the
default pipeline of the targets with array ADCs) and, for every MVM instruction whose ADC is not exact,
chooses ``adc_step`` and ``adc_offset`` (:mod:`cimc.cim.adc`) from the partial sums of the calibration
inputs:

1. run a copy of the program on the calibration inputs (the first ``inputs`` of them) with every ADC
   lossless, on the target's machine (chip ``ctx.chip`` of the compile seed), watching each MVM's input;
2. per MVM instruction, sample ``positions`` input positions (seeded) and histogram the partial sums every
   converted column sees as the crossbar makes them from the cells its array holds
   (:func:`cimc.cim.calibration.column_histograms`);
3. join the histograms at the ``granularity``: ``column-group`` (a range per tile, i.e. per array, and
   per ``columns`` physical columns: by default the target's columns per ADC, so one range per ADC),
   ``array`` (one per tile) or ``layer`` (one for all the layer's instructions), and fit each with
   ``method`` (``mse``: least squared error weighted by each sum's place in the result; ``percentile``)
   (:func:`cimc.cim.calibration.fit`).

Postconditions: every MVM with a lossy ADC carries ``adc_step``/``adc_offset`` of shape ``[tiles, groups]``
(``[]`` at layer granularity) and ``adc_group``; an exact (lossless) ADC is left as it is, so a lossless
program stays bit-exact. The program's ``cim.lossy`` note says the ranges are calibrated, and
``graph.metadata["report.adc-calibration"]`` (JSON; ``report.json``'s ``passes``) gives per layer the
squared error its ADCs add to the result per sampled position (accumulator LSB^2), at the worst-case
range and at the calibrated one. ``method=none`` keeps the worst-case ranges (and says so in the note).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from cimc.cim.adc import Adc, lossless_adc_bits, max_partial_sum
from cimc.cim.calibration import Histogram, column_histograms, fit
from cimc.cim.device import IDEAL
from cimc.cim.machine import DEVICE, Written, _inputs, stored
from cimc.cim.tilemap import TileMap
from cimc.errors import CimcError, PassError
from cimc.ir.core import Graph, Node, Value
from cimc.passmanager import Pass, PassContext, PassResult, option
from cimc.target import LOSSY, Target

__all__ = ["CalibrateAdcPass", "mvm_nodes"]

logger = logging.getLogger(__name__)

REPORT = "report.adc-calibration"
"""Graph metadata key of the pass's per-layer report (JSON)."""


def mvm_nodes(graph: Graph) -> list[Node]:
    """The array MVM instructions of a program: nodes with a tile map and an ADC (:data:`cimc.cim.ops.MVM_ATTRS`)."""
    return [n for n in graph.nodes if isinstance(n.attrs.get("tiles"), TileMap) and "adc_bits" in n.attrs]


def _signed(a: dict[str, Any]) -> bool:
    return a.get("sense", "columns") == "pairs"


def _need(a: dict[str, Any]) -> int:
    return lossless_adc_bits(int(a["rows_per_op"]), int(a.get("dac_bits", 1)), int(a.get("cell_bits", 1))) + \
        _signed(a)


def _exact(a: dict[str, Any]) -> bool:
    """Whether the instruction's ADC converts every partial sum exactly, from the arithmetic of its attributes
    alone: step 1, and the codes ``offset .. offset + 2**adc_bits - 1`` cover the sums ``least .. most``; with
    the default range (no ``adc_step``/``adc_offset``) that is ``adc_bits >= need``. Deliberately not
    :meth:`Adc.exact`: the conversion this pass would leave alone must not be judged by the code it runs, or a
    wrong ADC there (a top code off by one) would be taken for a lossy one, calibrated and excused as lossy."""
    bits = int(a["adc_bits"])
    if a.get("adc_step") is None and a.get("adc_offset") is None:
        return bits >= _need(a)
    most = max_partial_sum(int(a["rows_per_op"]), int(a.get("dac_bits", 1)), int(a.get("cell_bits", 1)))
    step, offset = a.get("adc_step"), a.get("adc_offset")
    if step is None or offset is None:  # the range's arrays (one given, the other default)
        adc = Adc.from_attrs(a)
        step, offset = adc.step, adc.offset
    step, offset = np.asarray(step, np.int64), np.asarray(offset, np.int64)
    return bool((step == 1).all() and (offset <= (-most if _signed(a) else 0)).all()
                and (offset + (1 << bits) - 1 >= most).all())


@dataclass(frozen=True)
class CalibrateAdcPass(Pass):
    """Fit every lossy ADC's range (step, offset) to the partial sums of the calibration inputs."""

    name: ClassVar[str] = "calibrate-adc"
    needs_target: ClassVar[bool] = True
    per_chip: ClassVar[bool] = True
    method: Literal["mse", "percentile", "none"] = option(
        "mse", "How a range is chosen: mse (least squared error of the result), percentile (the central "
               "share of the sums), or none (keep the worst-case ranges).")
    granularity: Literal["column-group", "array", "layer"] = option(
        "column-group", "Which ADCs share a range: column-group (per array and per group of columns), array, "
                        "or layer.")
    columns: int | None = option(None, "Physical columns per range at granularity column-group; none = the "
                                       "target's columns per ADC.")
    percentile: float = option(99.99, "Share of the partial sums (percent) the range covers, method percentile.")
    inputs: int = option(32, "Calibration inputs run (the first ones).")
    positions: int = option(2048, "Input positions sampled per instruction.")

    def __post_init__(self) -> None:
        if self.columns is not None and self.columns < 1:
            raise CimcError(f"option columns={self.columns} of pass 'calibrate-adc' must be >= 1")
        if not 0 < self.percentile <= 100:
            raise CimcError(f"option percentile={self.percentile} of pass 'calibrate-adc' must be in (0, 100]")
        if self.inputs < 1 or self.positions < 1:
            raise CimcError(f"options inputs={self.inputs} and positions={self.positions} of pass 'calibrate-adc' "
                            f"must be >= 1")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Calibrate the lossy ADCs of ``graph``'s MVM instructions (module docstring)."""
        target = ctx.require_target(self)
        mvms = mvm_nodes(graph)
        if not mvms:
            if any("tile.map" in n.attrs for n in graph.nodes):
                raise PassError("calibrate-adc found tiled layers but no array MVM instructions: it runs on a "
                                "lowered program, after the target's lowering (the driver places it so when the "
                                "pipeline does not name it)")
            graph.metadata[REPORT] = json.dumps({"status": "no array MVM instructions: nothing to calibrate"})
            return PassResult(False)
        lossy = [n for n in mvms if not _exact(n.attrs)]
        if not lossy:
            graph.metadata[REPORT] = json.dumps({"status": "every ADC is lossless: ranges kept (exact)"})
            return PassResult(False)
        if self.method == "none":
            _note(graph, "ADC ranges worst-case (calibrate-adc{method=none})")
            return PassResult(False)
        calib = ctx.calibration
        if not calib:
            logger.warning("calibrate-adc: no calibration inputs, so the lossy ADCs keep their worst-case ranges; "
                           "give calibration inputs (--calibration x.npz)")
            _note(graph, "ADC ranges worst-case (no calibration inputs)")
            return PassResult(False)
        hists = self._histograms(graph, lossy, target, {k: np.asarray(v)[:self.inputs] for k, v in calib.items()},
                                 ctx.seed, ctx.chip)
        report = self._apply(graph, hists, target)
        graph.metadata[REPORT] = json.dumps({"method": self.method, "granularity": self.granularity,
                                             "layers": report}, sort_keys=True)
        _note(graph, f"ADC ranges calibrated ({self.method}, per {self.granularity})")
        return PassResult(True)

    # -- statistics ---------------------------------------------------------------------------------------
    def _histograms(self, graph: Graph, lossy: list[Node], target: Target, calib: dict[str, np.ndarray],
                    seed: int, chip: int = 0) -> dict[int, list[tuple[Histogram, np.ndarray]]]:
        """Per lossy instruction (by position in ``graph.nodes``), per tile: its histograms and the physical
        column of each converted column."""
        from cimc.interpreter import Interpreter

        index = {id(n): i for i, n in enumerate(graph.nodes)}
        want = {index[id(n)] for n in lossy}
        run = graph.copy()
        watch: dict[int, list[tuple[int, Node]]] = {}
        for i, n in enumerate(run.nodes):
            if "adc_bits" in n.attrs and isinstance(n.attrs.get("tiles"), TileMap):
                a = n.attrs
                n.attrs.update(Adc.default(_need(a), int(a["rows_per_op"]), int(a.get("dac_bits", 1)),
                                           int(a.get("cell_bits", 1)), _signed(a)).attrs())
                if i in want:
                    watch.setdefault(id(n.inputs[0]), []).append((i, n))
        machine = target.machine(seed, chip)
        device = machine.get(DEVICE, IDEAL)
        out: dict[int, list[tuple[Histogram, np.ndarray]]] = {}

        from cimc.quant.calibrate import batches

        runs = batches(run, calib, int(next(iter(calib.values())).shape[0]))
        per_run = -(-self.positions // max(1, len(runs)))

        def observe(v: Value, array: np.ndarray) -> None:
            for i, node in watch.get(id(v), ()):
                rng = np.random.default_rng([seed, i, len(done.get(i, ())), 0x41444331])
                done.setdefault(i, []).append(self._instruction(node, array, device, rng, per_run))

        done: dict[int, list[list[tuple[Histogram, np.ndarray]]]] = {}
        target.register_ops()
        interp = Interpreter(run, seed=seed, machine=machine)
        for inputs in runs:
            interp.run(inputs, observe=observe)
        for i, parts in done.items():  # each tile's histograms summed over the runs
            out[i] = [(Histogram(np.sum([p[t][0].counts for p in parts], axis=0),
                                 np.sum([p[t][0].weighted for p in parts], axis=0),
                                 parts[0][t][0].least, parts[0][t][0].width), parts[0][t][1])
                      for t in range(len(parts[0]))]
        return out

    def _instruction(self, node: Node, x: np.ndarray, device: Any, rng: np.random.Generator, positions: int
                     ) -> list[tuple[Histogram, np.ndarray]]:
        a = node.attrs
        tiles: TileMap = a["tiles"]
        token = node.inputs[1]
        load = token.producer if token is not None else None
        cells = load.inputs[0] if load is not None and load.inputs else None
        if load is None or not isinstance(load.attrs.get("tiles"), TileMap) or cells is None or cells.const is None:
            raise PassError(f"calibrate-adc: the token of {node.op} {node.name!r} does not come from a load of "
                            f"constant cells")
        held: TileMap = load.attrs["tiles"]
        at = {arr: j for j, arr in enumerate(held.array_list)}
        cols = a.get("layout", "rows") == "cols"
        rpo, sig = int(a["rows_per_op"]), np.asarray(a["significance"], np.int64)
        skip = np.asarray(a.get("skip", np.zeros((0, 2), np.int64)), np.int64).reshape(-1, 2)
        pairs_sense = _signed(a)
        window = [tuple(r) for r in tiles.table[:, :7].tolist()]
        copies = {w: window.count(w) for w in set(window)}
        rank = [window[:i].count(w) for i, w in enumerate(window)]
        out = []
        for i, t in enumerate(tiles):
            w = Written(cells.const, int(load.attrs["cell_bits"]), held, at[t.array],
                        str(load.attrs.get("full_scale", "cell")))
            xt = _inputs(x, t.group, t.k0, t.k1, cols)
            P, n = xt.shape[0], copies[window[i]]
            q0, q1 = rank[i] * P // n, (rank[i] + 1) * P // n
            pick = np.sort(rng.choice(q1 - q0, size=min(positions, q1 - q0), replace=False)) + q0 \
                if q1 - q0 > positions else np.arange(q0, q1)
            blocks = np.unique(t.row_at // rpo)
            blocks = blocks[~np.isin(blocks, skip[skip[:, 0] == i, 1])]
            S = t.s1 - t.s0
            logical = np.arange(t.cols)
            pairs = None
            if pairs_sense:
                j = logical.reshape(-1, S)
                pairs = np.stack([j[:, :S // 2].reshape(-1), j[:, S // 2:].reshape(-1)], axis=1)
                logical = pairs[:, 0]
            hist = column_histograms(xt[pick], stored(w, device), t.row_at, t.col_at, blocks, rows_per_op=rpo,
                                     dac_bits=int(a.get("dac_bits", 1)), act_bits=int(a.get("act_bits", 8)),
                                     cell_bits=int(a.get("cell_bits", 1)),
                                     column_weight=sig[t.s0 + logical % S].astype(np.float64), pairs=pairs)
            out.append((hist, t.col_at[logical]))
        return out

    # -- fitting ------------------------------------------------------------------------------------------
    def _apply(self, graph: Graph, hists: dict[int, list[tuple[Histogram, np.ndarray]]],
               target: Target) -> dict[str, dict[str, float]]:
        """Fit and write each instruction's ranges; per layer, the RMS error the ADCs add per conversion
        (weighted by its place in the result) at the worst-case and the calibrated ranges."""
        group = self.columns or max(1, target.capabilities().cols_per_adc)
        layers: dict[str, list[tuple[Node, list[tuple[Histogram, np.ndarray]]]]] = {}
        for i in sorted(hists):
            node = graph.nodes[i]
            layers.setdefault(str(node.attrs.get("cim.layer", node.attrs["tiles"].layer)), []).append((node, hists[i]))
        report = {}
        for layer, parts in layers.items():
            if self.granularity == "layer":
                every = [h for _, hs in parts for h, _ in hs]
                step, off = self._fit(parts[0][0].attrs, sum(h.counts.sum(axis=0) for h in every),
                                      sum(h.weighted.sum(axis=0) for h in every), every[0].centres)
                for node, _ in parts:
                    node.attrs.update(adc_step=np.asarray(step, np.int64), adc_offset=np.asarray(off, np.int64),
                                      adc_group=0)
            else:
                for node, hs in parts:
                    self._fit_tiles(node, hs, group if self.granularity == "column-group" else 0)
            before = after = count = 0.0
            for node, hs in parts:
                a = node.attrs
                default = Adc.default(int(a["adc_bits"]), int(a["rows_per_op"]), int(a.get("dac_bits", 1)),
                                      int(a.get("cell_bits", 1)), _signed(a))
                adc = Adc.from_attrs(a)
                for t, (h, pcols) in enumerate(hs):
                    before += float((_errors(default, h.centres, len(pcols)) * h.weighted).sum())
                    after += float((_errors(adc.columns(t, pcols), h.centres, len(pcols)) * h.weighted).sum())
                    count += float(h.counts.sum())
            report[layer] = {"worst_case_rms": float(np.sqrt(before / max(count, 1.0))),
                             "calibrated_rms": float(np.sqrt(after / max(count, 1.0)))}
        return report

    def _fit_tiles(self, node: Node, hs: list[tuple[Histogram, np.ndarray]], group: int) -> None:
        """One range per tile and group of ``group`` physical columns (0: the whole array)."""
        a = node.attrs
        width = a["tiles"].physical[1]
        ngroups = -(-width // (group or width))
        steps = np.zeros((len(hs), ngroups), np.int64)
        offs = np.zeros((len(hs), ngroups), np.int64)
        for t, (h, pcols) in enumerate(hs):
            c = np.zeros((ngroups, h.counts.shape[1]))
            wt = np.zeros_like(c)
            np.add.at(c, pcols // (group or width), h.counts)
            np.add.at(wt, pcols // (group or width), h.weighted)
            for k in range(ngroups):
                steps[t, k], offs[t, k] = self._fit(a, c[k], wt[k], h.centres)
        a.update(adc_step=steps, adc_offset=offs, adc_group=group)

    def _fit(self, a: dict[str, Any], counts: np.ndarray, weighted: np.ndarray, centres: np.ndarray
             ) -> tuple[int, int]:
        return fit(counts, weighted, centres, bits=int(a["adc_bits"]), rows_per_op=int(a["rows_per_op"]),
                   dac_bits=int(a.get("dac_bits", 1)), cell_bits=int(a.get("cell_bits", 1)), signed=_signed(a),
                   rounding=str(a.get("adc_rounding", "half-even")), method=self.method, percentile=self.percentile)


def _errors(adc: Adc, centres: np.ndarray, columns: int) -> np.ndarray:
    """Squared conversion error of every bin centre in each of ``columns`` columns (``[C, bins]``)."""
    v = np.repeat(centres[:, None], columns, axis=1)
    return ((adc.convert(v) - v) ** 2).T


def _note(graph: Graph, text: str) -> None:
    """Add ``text`` to the program's lossy note (why it is not bit-exact)."""
    old = graph.metadata.get(LOSSY)
    graph.metadata[LOSSY] = f"{old}; {text}" if old else text
