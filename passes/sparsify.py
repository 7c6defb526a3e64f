"""sparsify: structured magnitude pruning aligned to CIM arrays (MARS-style block sparsity).

Each prunable weight (the constant W of ``Conv``/``ConvTranspose``, the constant B of ``Gemm``
and ``MatMul``) is viewed as the matrices an array holds: rows = the reduction dim, columns = the
output channels, one matrix per conv group (:mod:`cimc.sparsity` defines the views). The unit
pruned is a *block* (``granularity=block``): ``rows-per-op`` consecutive rows (the word lines on
at once) of one ``array-rows`` row tile (blocks never straddle tiles) by one column group of
``group-channels`` output channels; or a whole output channel (``granularity=channel``). A target
skips the word-line operations of an all-zero block, or the columns of an all-zero channel.

Geometry: the target's (``PassContext.target``: its ``rows_per_op``, ``rows``, and the output
channels one array's columns hold, ``cols / ceil(weight_bits_max / cell_bits)``), each lowered by an
option (``1..`` the target's value; ``group-channels`` up to ``cols``, for narrower weights).
Without a target all three options must be given: the pass has no geometry of its own.

Algorithm:
1. Layers: every prunable node, less those ``skip-first``/``skip-last``/``min-params`` exclude
   and those ``per-layer`` sets to 0 (a ``per-layer`` entry wins over the skips).
2. Ratios: ``per-layer`` layers get theirs; the others share ``ratio``. ``mode=magnitude``: each
   gets ``ratio``, except a layer where that would zero every unit, which is left alone (so the
   global ratio is not met then). ``mode=sensitivity`` (needs ``PassContext.calibration``): the
   budget is ``ceil(ratio * their weights)``; a layer's points are the unit prefixes of step 3 up to
   ``max-layer-ratio`` of it (never a whole layer), its walk steps those nearest ratios 0.1 .. 0.9.
   A lazy greedy walk, starting unpruned, takes the step (one layer to its next point) with the
   least loss increase per pruned weight, loss measured by running the calibration set with the
   steps taken so far: the fraction of top-1 predictions (first graph output) that differ from
   the unpruned model's, plus ``0.1 *`` its relative output MSE as a tie-breaker. Weight beyond
   the budget counts as no gain; the last step stops at that layer's first prefix on the budget;
   then, while some layer can give back its last unit and the budget stays met, the one whose
   loss is then lowest does, so the total exceeds the budget by less than the last unit of every
   pruned layer. A step is refused when it cuts the network: the output stops varying with the
   input, or the loss exceeds :data:`COLLAPSE`; the ratio is then not met (a warning). The
   ``per-layer`` layers are pruned throughout.
3. Pruning (:func:`cimc.sparsity.prune_mask`): a layer zeroes its units, lowest mean squared
   weight first, until the weights in all-zero units reach ``ceil(r * its weights)``; so ``r <=
   achieved < r + one unit``, unless more units were all zero before.
4. Refit (``refit``; by default when calibration inputs are given): in graph order, each layer's
   kept weights (and float bias) are refit by least squares (:func:`cimc.sparsity.refit`) so that,
   on the rows it sees with the earlier layers already pruned, its outputs match the unpruned
   model's. Pruned units stay exactly zero; the sensitivity walk refits each probe alone. A layer of
   more input rows than ``refit-max-rows`` (refit's memory and time grow with their square and cube)
   is pruned without refit under the default, said in a warning and in the pass report; with
   ``refit=true`` it is an error.

Precondition: float weight layers to prune; a graph already quantized (integer layers only: sparsify
placed after ``quantize``) is an error saying so, since the pass would do nothing there.

Postconditions, each considered layer: its weight (and refit bias) is a new constant (keeping
the old name when nothing else reads the old one) and the node carries ``sparsity.granularity``
(str), ``sparsity.rows_per_op``, ``sparsity.array_rows``, ``sparsity.group_channels`` (int),
``sparsity.ratio`` (float: the fraction of its weights in all-zero units of the granularity),
``sparsity.blocks`` (int64 ``[n, 3]``: every all-zero block ``(g, b, c)``, sorted) and
``sparsity.channels`` (int64 ``[n]``: every all-zero output channel ``g * N + n``, sorted). The
lists describe the final weight exactly, whatever the granularity, including units that were all
zero before. ``graph.metadata["sparsity"]`` is a JSON summary: options, achieved ratio, each
layer's ratio, skipped layers with the reason.
"""

from __future__ import annotations

import difflib
import heapq
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from cimc.errors import CimcError, PassError
from cimc.interpreter import run as run_graph
from cimc.ir.core import Graph, Node
from cimc.passmanager import Pass, PassContext, PassResult, option
from cimc.sparsity import (
    Geometry,
    Granularity,
    WeightView,
    bias_matrix,
    expand,
    grams,
    input_rows,
    prune_mask,
    refit,
    unit_stats,
    weight_view,
    zero_blocks,
    zero_channels,
    zero_count,
)
from cimc.target import Target
from cimc.tiling import Encoding

__all__ = ["SparsifyPass", "parse_per_layer"]

logger = logging.getLogger(__name__)

CANDIDATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Layer ratios whose unit prefixes are the sensitivity walk's steps."""
MSE_WEIGHT = 0.1
"""Weight of the relative output MSE in the sensitivity loss (the tie-breaker)."""
COLLAPSE = 0.5
"""The sensitivity walk refuses a step whose loss exceeds this (more than half the calibration
predictions changed): the pruned network no longer computes what the model did."""
GEOMETRY = ("rows_per_op", "array_rows", "group_channels")
"""The block geometry options: each the target's value unless given."""
_CAPABILITY = {"rows_per_op": "rows_per_op", "array_rows": "rows", "group_channels": "cols"}
_QUANTIZED_LAYERS = frozenset({"q.conv", "q.conv_transpose", "q.gemm", "q.matmul"})
"""Integer weight layers: in a graph that has them and no float ones left, sparsify comes too late."""
"""The target capability that bounds each geometry option."""


def parse_per_layer(text: str) -> dict[str, float]:
    """``"conv1=0.3,fc=0"`` as ``{"conv1": 0.3, "fc": 0.0}``; a ``CimcError`` naming the bad item."""
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, eq, value = item.rpartition("=")
        try:
            r = float(value)
        except ValueError:
            r = math.nan
        if not eq or not name.strip() or not 0 <= r < 1:
            raise CimcError(f"option per-layer: item {item!r} should be name=ratio with 0 <= ratio "
                            f'< 1, e.g. per-layer="conv1=0.3,fc=0"')
        out[name.strip()] = r
    return out


@dataclass
class _Layer:
    """One prunable node and its per-run state."""

    node: Node
    view: WeightView
    matrix: np.ndarray  # the unpruned weight as [G, K, N]
    ratio: float = 0.0
    fixed: bool = False  # ratio set by per-layer
    act: np.ndarray | None = None  # its first operand in the unpruned model on the calibration set
    gram: np.ndarray | None = None  # E[x x^T] of the rows it multiplies there (refit)
    bias: tuple[np.ndarray, float] | None = None  # bias_matrix(), when refit


@dataclass(frozen=True)
class SparsifyPass(Pass):
    """Zero whole CIM blocks (or output channels) of the weights, lowest magnitude first."""

    name: ClassVar[str] = "sparsify"
    ratio: float = option(0.5, "Fraction of the weights of the pruned layers to zero, 0 <= ratio < 1.")
    granularity: Literal["block", "channel"] = option(
        "block", "Pruning unit: block (rows-per-op rows x group-channels channels) or channel.")
    mode: Literal["magnitude", "sensitivity"] = option(
        "magnitude", "magnitude: ratio in every layer; sensitivity: spend the same total where the "
        "calibration set (PassContext.calibration) shows it costs least.")
    per_layer: str = option("", 'Fixed ratios by node (or weight) name, quoted: "conv1=0.3,fc=0"; '
                                "0 leaves a layer alone.")
    rows_per_op: int | None = option(None, "Word lines on at once, the rows of a block (1 .. "
                                           "array-rows, at most the target's); none = the target's.")
    array_rows: int | None = option(None, "Rows of one array (blocks never straddle two), at most the "
                                          "target's; none = the target's.")
    group_channels: int | None = option(None, "Output channels sharing one array's columns, the "
                                              "columns of a block, at most the target's columns; none = "
                                              "the target's: array columns / columns per weight (its widest "
                                              "weight in two's complement, as tile).")
    min_params: int = option(0, "Leave layers with fewer weights than this alone.")
    skip_first: bool = option(False, "Leave the first prunable layer (in graph order) alone.")
    skip_last: bool = option(False, "Leave the last prunable layer (in graph order) alone.")
    refit: bool | None = option(None, "Refit kept weights and biases by least squares on the "
                                      "calibration inputs; none = when they are given.")
    max_layer_ratio: float = option(0.9, "mode=sensitivity: the most of any one layer's weights the "
                                         "walk may zero, 0 < max-layer-ratio < 1.")
    refit_max_rows: int = option(
        8192, "Most input rows per group a layer may have to be refit (refit holds about four float64 matrices "
              "of rows + 1 squared: 8192 rows, 2 GiB); by default a larger layer is pruned without refit and "
              "the report says so; refit=true fails.")

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise CimcError(f"option ratio={self.ratio} must be in [0, 1): the fraction of the "
                            "weights to zero, e.g. ratio=0.5")
        if not 0 < self.max_layer_ratio < 1:
            raise CimcError(f"option max-layer-ratio={self.max_layer_ratio} must be in (0, 1): the "
                            "largest fraction of one layer mode=sensitivity may zero, e.g. 0.9")
        if self.min_params < 0:
            raise CimcError(f"option min-params={self.min_params} must be >= 0")
        if not isinstance(self.refit_max_rows, int) or self.refit_max_rows < 1:
            raise CimcError(f"option refit-max-rows={self.refit_max_rows!r} must be >= 1")
        for key in ("rows_per_op", "array_rows", "group_channels"):  # the rest once the target is known
            if (v := getattr(self, key)) is not None and v < 1:
                raise CimcError(f"option {key.replace('_', '-')}={v} must be >= 1")
        if self.rows_per_op is not None and self.array_rows is not None:
            Geometry(self.rows_per_op, self.array_rows)
        parse_per_layer(self.per_layer)

    def check(self, target: Target | None) -> None:
        """A target, or all three geometry options; given options within the target's geometry."""
        given = {k: getattr(self, k) for k in GEOMETRY}
        if target is None:
            if None in given.values():
                missing = ", ".join(k.replace("_", "-") for k, v in given.items() if v is None)
                raise PassError(f"pass 'sparsify' needs a target to align its blocks to (or every geometry "
                                f"option; {missing} not given): name one with --target NAME (`cimc targets` lists "
                                f"them), or from Python PassContext(target=load_target(NAME))")
            return
        caps = target.capabilities()  # at most one channel per column (narrower weights than the widest)
        have = {"rows_per_op": caps.rows_per_op, "array_rows": caps.rows, "group_channels": caps.cols}
        for key, value in given.items():
            self.option_limit(key, value, 1, have[key],
                              f"the target '{target.name}' has {_CAPABILITY[key]} = "
                              f"{have[key]}; to align to other arrays, change the target's spec (--spec, --spec-set)")

    @staticmethod
    def _target_geometry(target: Target) -> dict[str, int]:
        caps = target.capabilities()
        slices = Encoding("twos-complement", caps.weight_bits_max, caps.cell_bits).slices
        return {"rows_per_op": caps.rows_per_op, "array_rows": caps.rows,
                "group_channels": max(1, caps.cols // slices)}

    def geometry(self, target: Target | None = None) -> Geometry:
        """The array geometry blocks align to: the options, else the capabilities of ``target``
        (``PassContext.target``); checked by :meth:`check`."""
        self.check(target)
        fill = self._target_geometry(target) if target is not None else {}
        return Geometry(**{k: fill[k] if getattr(self, k) is None else getattr(self, k) for k in GEOMETRY})

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Prune ``graph``'s weights in place and annotate the pruned nodes."""
        calib, geom, gran = ctx.calibration, self.geometry(ctx.target), self.granularity
        layers, skipped = self._select(graph, geom)
        refitting = self.refit if self.refit is not None else calib is not None
        if (self.mode == "sensitivity" or refitting) and calib is None:
            why = "mode=sensitivity" if self.mode == "sensitivity" else "refit=true"
            raise CimcError(f"sparsify{{{why}}} needs calibration inputs: set PassContext.calibration "
                            "(graph input name -> array, batch on axis 0), or use mode=magnitude "
                            "refit=false")
        if not layers:
            if done := sum(n.op in _QUANTIZED_LAYERS for n in graph.nodes):
                raise CimcError(f"the graph is already quantized ({done} integer layers), and sparsify prunes float "
                                f"weights: it would do nothing here; put sparsify before quantize in the pipeline")
            logger.info("sparsify: no layer to prune (%s)", skipped or "no prunable weights")
            return PassResult(False)
        if refitting and calib is not None:  # (calib is never None here: checked above)
            fit = self._refit_within_memory(graph, layers)
            for ly, operand in zip(fit, _capture(graph, fit, calib) if fit else [], strict=True):
                _prepare_refit(ly, operand)
        if self.mode == "sensitivity" and calib is not None and self.ratio > 0 and not all(ly.fixed for ly in layers):
            self._allocate(graph.copy(), layers, calib, geom)
        pruned, summary = 0, {}
        for i, ly in enumerate(layers):
            # the rows this layer sees once the layers before it are pruned (none changed before i=0)
            # (a layer has refit data, ly.gram, only when there is calibration)
            act = _capture(graph, [ly], calib)[0] if ly.gram is not None and i and calib is not None else None
            m, bias = self._pruned(ly, ly.ratio, geom, act)
            count = zero_count(m, geom, gran)
            pruned, summary[ly.node.name] = pruned + count, round(count / ly.view.size, 6)
            _replace_operand(graph, ly.node, 1, ly.view.from_matrix(m))
            if bias is not None:
                _replace_operand(graph, ly.node, 2, bias)
            ly.node.attrs.update({
                "sparsity.granularity": gran, "sparsity.rows_per_op": geom.rows_per_op,
                "sparsity.array_rows": geom.array_rows, "sparsity.group_channels": geom.group_channels,
                "sparsity.ratio": count / ly.view.size, "sparsity.blocks": zero_blocks(m, geom),
                "sparsity.channels": zero_channels(m)})
            logger.info("sparsify: %s (%s %s): target %.3f, pruned %.3f", ly.node.name, ly.node.op,
                        list(ly.view.shape), ly.ratio, count / ly.view.size)
        graph.metadata["sparsity"] = json.dumps({
            "ratio": self.ratio, "achieved": round(pruned / sum(ly.view.size for ly in layers), 6),
            "mode": self.mode, "granularity": gran, "rows_per_op": geom.rows_per_op,
            "array_rows": geom.array_rows, "group_channels": geom.group_channels,
            "refit": refitting, "layers": summary, "skipped": skipped})
        return PassResult(True)

    def _refit_within_memory(self, graph: Graph, layers: list[_Layer]) -> list[_Layer]:
        """The layers refit may take: one of ``K`` input rows holds about four float64 ``(K + 1) x (K + 1)``
        matrices per group (its Gram and cross matrices, a kept-rows system and its solver's copy), and solves
        one such system per pruning pattern of its columns. A larger layer than ``refit-max-rows`` fails when
        ``refit=true`` was asked for, and is pruned without refit otherwise, named in a warning and in the
        report (``report.sparsify``). A fixed option, not the machine's memory, so that the same options give
        the same program on every machine."""
        from cimc.limits import format_bytes
        from cimc.report import PASS_REPORT

        kept: list[_Layer] = []
        skipped: dict[str, dict[str, str]] = {}
        for ly in layers:
            rows = ly.view.rows
            if rows <= self.refit_max_rows:
                kept.append(ly)
                continue
            why = (f"its {rows} input rows are more than refit-max-rows={self.refit_max_rows} (refit would hold "
                   f"about {format_bytes(4 * 8 * (rows + 1) ** 2)} of {rows + 1} x {rows + 1} matrices)")
            if self.refit:
                raise CimcError(f"sparsify: {ly.node.op} {ly.node.name!r}: {why}; raise refit-max-rows or "
                                f"use refit=false (by default such layers are pruned without refit)")
            skipped[ly.node.name] = {"refit": "none, pruned by magnitude only", "why": why}
            logger.warning("sparsify: %s %r pruned without refit: %s", ly.node.op, ly.node.name, why)
        if skipped:
            graph.metadata[PASS_REPORT + "sparsify"] = json.dumps(
                {"note": f"{len(skipped)} layer(s) pruned without refit (refit-max-rows)", "layers": skipped},
                sort_keys=True)
        return kept

    def _select(self, graph: Graph, geom: Geometry) -> tuple[list[_Layer], dict[str, str]]:
        """The layers to prune, in graph order, with their ratios (``ratio`` for the free ones),
        and the prunable layers left alone with the reason."""
        prunable: list[_Layer] = []
        for node in graph.nodes:
            view = weight_view(node)
            if isinstance(view, str):
                if node.op in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
                    logger.debug("sparsify: not pruning %s (%s): %s", node.name, node.op, view)
                continue
            prunable.append(_Layer(node, view, view.to_matrix(node.operand(1).array)))
        fixed = parse_per_layer(self.per_layer)
        names = {ly.node.name: ly.node.name for ly in prunable}
        names.update({ly.node.operand(1).name: ly.node.name for ly in prunable
                      if ly.node.operand(1).name not in names})
        for key in list(fixed):
            if key not in names:
                close = difflib.get_close_matches(key, sorted(names), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise CimcError(f"option per-layer: {key!r} names no prunable node{hint} (prunable "
                                f"nodes: {', '.join(ly.node.name for ly in prunable) or 'none'})")
            fixed.setdefault(names[key], fixed[key])
        skipped: dict[str, str] = {}
        for i, ly in enumerate(prunable):
            name, ly.fixed = ly.node.name, ly.node.name in fixed
            ly.ratio = fixed.get(name, self.ratio)
            if ly.fixed:
                if ly.ratio == 0:
                    skipped[name] = "per-layer ratio 0"
            elif self.skip_first and i == 0:
                skipped[name] = "skip-first"
            elif self.skip_last and i == len(prunable) - 1:
                skipped[name] = "skip-last"
            elif ly.view.size < self.min_params:
                skipped[name] = f"{ly.view.size} weights < min-params={self.min_params}"
            elif self.mode == "magnitude" and prune_mask(ly.matrix, ly.ratio, geom,
                                                         self.granularity).all():
                skipped[name] = f"ratio {ly.ratio} would zero all its {self.granularity}s"
        return [ly for ly in prunable if ly.node.name not in skipped], skipped

    def _pruned(self, ly: _Layer, ratio: float, geom: Geometry, act: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Layer ``ly``'s matrix pruned at ``ratio``, and its new bias in the bias operand's shape
        and type (``None`` when unchanged). A layer with refit data is refit: on the unpruned
        model's rows, or, given ``act`` (its operand with the earlier layers pruned), from the
        rows of ``act`` to the unpruned outputs."""
        gran = self.granularity
        mask = prune_mask(ly.matrix, ratio, geom, gran)
        if ly.gram is None or (act is None and not mask.any()):
            full = expand(mask, ly.matrix.shape, geom, gran)
            return np.where(full, np.zeros((), ly.matrix.dtype), ly.matrix), None
        b, back = ly.bias if ly.bias is not None else (None, 1.0)
        gram, cross = (ly.gram, None) if act is None else grams(ly.node, ly.view, act, ly.act,
                                                                  ones=ly.bias is not None)
        m, nb = refit(ly.matrix, mask, gram, geom, gran, b, cross)
        if nb is None:
            return m, None
        old = ly.node.operand(2).array
        return m, (nb * back).reshape(old.shape).astype(old.dtype)

    def _allocate(self, work: Graph, layers: list[_Layer], calibration: Mapping[str, np.ndarray],
                  geom: Geometry) -> None:
        """Set the ratios of the layers ``per-layer`` does not fix so that together they prune
        ``ratio`` of their weights where the calibration loss grows least (the lazy greedy walk
        of the module doc, on ``work``, a copy of the graph, with the fixed layers pruned)."""
        gran = self.granularity
        reference = _output(work, calibration)
        nodes = [work.node(ly.node.name) for ly in layers]
        originals = [list(n.inputs) for n in nodes]
        cache: dict[tuple[int, float], tuple[np.ndarray, np.ndarray | None]] = {}

        def set_ratio(i: int, r: float) -> None:
            """Make layer ``i`` of ``work`` read its weight (and bias) pruned at ``r``."""
            node = nodes[i]
            for k, v in enumerate(originals[i]):
                old = node.inputs[k]
                node.set_input(k, v)
                if old is not v and old is not None:
                    work.remove_constant(old)
            if r > 0:
                if (i, r) not in cache:
                    m, bias = self._pruned(layers[i], r, geom)
                    cache[i, r] = (layers[i].view.from_matrix(m), bias)
                for k, a in zip((1, 2), cache[i, r], strict=True):
                    if a is not None:
                        node.set_input(k, work.add_constant(a, "sparsify_probe",
                                                            type=node.operand(k).type))

        bounds: dict[int, np.ndarray] = {}  # free layer -> its unit prefixes (weights in zero units)
        points: dict[int, np.ndarray] = {}  # free layer -> the walk's points, a subset of bounds
        for i, ly in enumerate(layers):
            if ly.fixed:
                set_ratio(i, ly.ratio)
                continue
            b = _prefixes(ly.matrix, geom, gran)
            bounds[i] = b = np.append(b[0], b[1:][(b[1:] < ly.view.size)
                                                   & (b[1:] <= self.max_layer_ratio * ly.view.size)])
            want = [math.ceil(r * ly.view.size - 1e-9) for r in CANDIDATES]
            points[i] = np.unique(np.append(b[np.minimum(np.searchsorted(b, want), len(b) - 1)], b[0]))
        cur = {i: int(b[0]) for i, b in bounds.items()}
        total, version = sum(cur.values()), 0
        budget = math.ceil(self.ratio * sum(layers[i].view.size for i in bounds) - 1e-9)
        loss = _loss(_output(work, calibration), reference) if len(bounds) < len(layers) else 0.0
        heap: list[tuple[float, int, int, float]] = []  # (loss per weight, layer, version, loss after)

        def probe(i: int, w: int) -> float | None:
            """The loss with layer ``i`` at ``w`` zero weights (the rest as they are), or ``None``
            when that disconnects the output from the input."""
            set_ratio(i, w / layers[i].view.size)
            out = _output(work, calibration)
            set_ratio(i, cur[i] / layers[i].view.size)
            after = _loss(out, reference)
            if after > COLLAPSE or _disconnected(out, reference):
                logger.debug("sparsify: %s at %d zero weights cuts the network (loss %.3f)",
                             layers[i].node.name, w, after)
                return None
            return after

        def measure(i: int) -> None:
            """Queue layer ``i``'s next step, measured on the current state."""
            nxt = points[i][points[i] > cur[i]]
            if nxt.size and (after := probe(i, int(nxt[0]))) is not None:
                gain = min(int(nxt[0]) - cur[i], budget - total)
                heapq.heappush(heap, ((after - loss) / gain, i, version, after))
                logger.debug("sparsify: step %s %d -> %d: loss %.4f -> %.4f", layers[i].node.name,
                             cur[i], nxt[0], loss, after)

        for i in bounds if total < budget else ():
            measure(i)
        while total < budget and heap:
            _, i, seen, after = heapq.heappop(heap)
            if seen != version:  # measured before the last step taken: measure again
                measure(i)
                continue
            w1 = int(points[i][points[i] > cur[i]][0])
            if total + w1 - cur[i] >= budget:  # the last step stops part-way: the first prefix on the budget
                w1 = int(bounds[i][np.searchsorted(bounds[i], cur[i] + budget - total)])
            total, cur[i], version = total + w1 - cur[i], w1, version + 1
            set_ratio(i, w1 / layers[i].view.size)
            loss = after if total < budget else _loss(_output(work, calibration), reference)
            if total < budget:
                measure(i)
        while total > budget:  # give back whole units while the budget stays met, the cheapest first
            best: tuple[float, int, int] | None = None
            for i, b in bounds.items():
                below = b[b < cur[i]]
                if below.size and total - (cur[i] - int(below[-1])) >= budget:
                    probed = probe(i, int(below[-1]))
                    if probed is not None and (best is None or probed < best[0]):
                        best = (probed, i, int(below[-1]))
            if best is None:
                break
            loss, i, w = best
            total, cur[i] = total - (cur[i] - w), w
            set_ratio(i, w / layers[i].view.size)
        if total < budget:
            logger.warning("sparsify: ratio=%s is out of reach without zeroing more than max-layer-ratio="
                           "%s of a layer or cutting the network; pruned %d of %d weights",
                           self.ratio, self.max_layer_ratio, total, budget)
        for i, w in cur.items():
            layers[i].ratio = w / layers[i].view.size


def _prefixes(m: np.ndarray, geom: Geometry, gran: Granularity) -> np.ndarray:
    """The weights in all-zero units of every prefix :func:`prune_mask` can give ``m``, ascending:
    the units already all zero, then one more unit at a time in its order."""
    size, sq, nz = unit_stats(m, geom, gran)
    size, zero = size.ravel(), (nz == 0).ravel()
    rest = np.flatnonzero(~zero)
    order = rest[np.argsort((sq.ravel() / size)[rest], kind="stable")]
    return np.concatenate([[0], np.cumsum(size[order])]).astype(np.int64) + int(size[zero].sum())


def _run(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    try:
        return run_graph(graph, inputs, reproducible=True)  # pruning choices that do not depend on the CPU
    except CimcError as e:
        raise CimcError(f"sparsify: running the calibration inputs failed: {e}") from e


def _output(graph: Graph, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The first graph output on ``inputs``, as float64 ``[batch, -1]``."""
    out = _run(graph, inputs)[graph.outputs[0].name]
    return np.asarray(out, np.float64).reshape(len(out), -1)


def _loss(out: np.ndarray, ref: np.ndarray) -> float:
    """Top-1 disagreement with the unpruned model plus a small relative-MSE tie-breaker."""
    flips = float(np.mean(out.argmax(-1) != ref.argmax(-1)))
    return flips + MSE_WEIGHT * float(np.mean((out - ref) ** 2) / max(np.mean(ref**2), 1e-30))


def _disconnected(out: np.ndarray, ref: np.ndarray) -> bool:
    """Whether ``out`` no longer depends on the input: (almost) the same for every calibration
    input, where the unpruned model's output ``ref`` varies."""
    return float(np.var(out, axis=0).sum()) <= 1e-6 * float(np.var(ref, axis=0).sum())


def _replace_operand(graph: Graph, node: Node, index: int, array: np.ndarray) -> None:
    """Make ``node`` read the new constant ``array`` as operand ``index``; keep the old name when
    nothing else reads the old constant."""
    old = node.inputs[index]
    assert old is not None
    new = graph.add_constant(array, f"{old.name}_sparse", type=old.type)
    node.set_input(index, new)
    if not old.uses and not graph.is_output(old):
        graph.remove_constant(old)
        graph.rename_value(new, old.name)


def _capture(graph: Graph, layers: list[_Layer], calibration: Mapping[str, np.ndarray]
             ) -> list[np.ndarray]:
    """The first operand of each layer's node on the calibration inputs (one run of ``graph``)."""
    values = [graph.node(ly.node.name).operand(0) for ly in layers]
    saved = list(graph.outputs)
    graph.outputs = saved + values
    try:
        env = _run(graph, calibration)
    finally:
        graph.outputs = saved
    return [np.asarray(env[v.name]) for v in values]


def _prepare_refit(ly: _Layer, act: np.ndarray) -> None:
    """Record what refitting a float layer needs: its operand, bias and Gram matrix."""
    if ly.matrix.dtype.kind != "f" or input_rows(ly.node, ly.view, act[:1]) is None:
        logger.debug("sparsify: no refit for %s (integer weight or batched MatMul)", ly.node.name)
        return
    ly.act, ly.bias = act, bias_matrix(ly.node, ly.view)
    ly.gram = grams(ly.node, ly.view, act, ones=ly.bias is not None)[0]
