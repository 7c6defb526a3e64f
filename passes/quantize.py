"""quantize: post-training integer quantization of a float graph into ``q.*`` ops.

Algorithm:
1. Calibrate: run the float graph on ``PassContext.calibration`` with the reference interpreter,
   one run per batch, observing every f32 activation in that run (``cimc.quant.calibrate``;
   observers ``minmax``, ``percentile``, ``mse``).
   In the same runs, the layers whose weight method needs them gather their input statistics
   ``E[x]`` and ``E[x x^T]`` (``cimc.quant.weights.InputStats``).
2. Bits: ``weight-bits``/``act-bits``, overridden per node name or op type by ``overrides``.
   ``act-bits`` of a layer is the width of what it reads; a tensor read by several integer layers
   gets the largest request. Weight method per layer (``cimc.quant.weights``): ``weight-clip``
   (``max``/``mse`` scales), ``weight-rounding`` (``nearest``/``gptq``) and ``bias-correction``;
   ``auto`` is ``mse``, ``gptq`` and on for layers below 8 weight bits, plain rounding at 8; a layer of more
   input rows than ``gptq-max-rows`` is rounded to nearest under ``auto`` (GPTQ's memory), said in a warning
   and in the pass report.
3. Rewrite (``cimc.quant.lower``): Conv/ConvTranspose/Gemm/MatMul with constant weights become
   ``q.conv``/``q.conv_transpose``/``q.gemm``/``q.matmul`` (int8 weights per output channel by the
   layer's weight method, int32 bias holding the zero-point term, except ``q.conv_transpose``
   which subtracts it from x) giving
   int32 accumulators; Relu/Clip become the clamp of the ``q.requant`` to uint8;
   Add/Sum of integer values become ``q.add``; moves (MaxPool, Reshape, Concat, ...) run on uint8;
   all else runs in float between ``q.dequantize`` and ``q.quantize``. Graph inputs and outputs
   stay float (an accumulator output is dequantized directly, so logits keep full precision).
The requantization mode (``fixed``: int32 multiplier and shift; ``float``: float32 multiply,
round half to even; ``auto``: fixed here) is recorded in ``graph.metadata["quant.requant"]`` and on
each op; the weight methods used, when any layer is not max-scaled and rounded to nearest, in
``graph.metadata["quant.weight-methods"]`` (JSON: method -> node names).

A pre-quantized graph (QDQ or QOperator ONNX ops, ``cimc.quant.prequant.is_prequantized``) is not
calibrated: it keeps the model's own scales, zero points and bit widths
(:func:`cimc.quant.prequant.adopt_quantized`; ``requant=auto`` is ``float`` there, onnxruntime's
arithmetic). ``weight-bits``/``act-bits`` are then limits its widths must respect (an error names
the layer otherwise), the calibration, weight-method, ``overrides`` and ``per-channel`` options have
nothing to act on and are an error when not at their defaults, and weight layers the model left in
float are named in a warning (``graph.metadata["quant.float_layers"]``).

Preconditions: the graph is not quantized yet (a second ``quantize`` would do nothing, and is an
error that says so); constants folded (weights must be constants); BatchNormalization fused into the
convolutions for best accuracy (otherwise it runs in float). Postconditions: the graph verifies,
graph input and output names and types are unchanged, and it runs in the reference interpreter
with exact integer semantics (``cimc.ops.quantized``).
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar, Literal

from cimc.errors import CimcError, InputError
from cimc.ir.core import Graph, Node
from cimc.ir.types import DType
from cimc.limits import format_bytes
from cimc.passmanager import Pass, PassContext, PassResult, option
from cimc.pipeline import options_of

if TYPE_CHECKING:
    from cimc.quant.weights import WeightMethod

__all__ = ["QuantizePass", "parse_overrides"]

logger = logging.getLogger(__name__)

_KEYS = ("weight-bits", "act-bits")
_MVM_OPS = frozenset({"q.conv", "q.conv_transpose", "q.gemm", "q.matmul"})


def parse_overrides(text: str) -> dict[str, dict[str, int]]:
    """``"conv1:weight-bits=4,Gemm:act-bits=6"`` as ``{"conv1": {"weight-bits": 4}, "Gemm": {...}}``.

    Entries are separated by commas; each is ``SELECTOR:KEY=VALUE``, the selector a node name or
    an op type (text up to the last colon), the key ``weight-bits`` or ``act-bits``, the value 2..8.
    """
    out: dict[str, dict[str, int]] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        sel, colon, setting = entry.rpartition(":")
        key, eq, value = setting.partition("=")
        key = key.strip()
        if not colon or not sel.strip() or not eq:
            raise CimcError(f"option 'overrides': entry {entry!r} is not SELECTOR:KEY=VALUE "
                            f"(e.g. 'conv1:weight-bits=4,Gemm:act-bits=6')")
        if key not in _KEYS:
            raise CimcError(f"option 'overrides': entry {entry!r} sets {key!r}; the keys are {', '.join(_KEYS)}")
        if not value.strip().isdigit() or not 2 <= int(value) <= 8:
            raise CimcError(f"option 'overrides': entry {entry!r} sets {value!r}; expected 2..8 bits")
        if key in out.setdefault(sel.strip(), {}):
            raise CimcError(f"option 'overrides': {sel.strip()}:{key} is given twice")
        out[sel.strip()][key] = int(value)
    return out


@dataclass(frozen=True)
class QuantizePass(Pass):
    """Quantize weights and activations to integers (calibrated post-training quantization)."""

    name: ClassVar[str] = "quantize"
    weight_bits: int = option(8, "Bits of weights (2..8): signed, symmetric, narrow range.")
    act_bits: int = option(8, "Bits (2..8) of the activations array ops read (Conv, Gemm, MatMul, the steps of "
                              "LSTM/GRU/RNN): unsigned with a zero point; one the vector unit reads too is kept at "
                              "vector-bits and narrowed for them.")
    calibration: Literal["minmax", "percentile", "mse"] = option("minmax", "How activation ranges are chosen.")
    percentile: float = option(99.99, "Percentile kept by calibration=percentile (50 < p <= 100).")
    requant: Literal["auto", "fixed", "float"] = option(
        "auto", "Requantization: fixed-point multiplier and shift, or float32 multiply with round half to even; "
                "auto: fixed, except float for a pre-quantized model (what onnxruntime computes).")
    overrides: str = option("", "Per-layer bits: 'SELECTOR:KEY=VALUE,...', selector a node name or op type, "
                                "key weight-bits or act-bits; e.g. \"conv1:weight-bits=4,Gemm:act-bits=6\".")
    per_channel: bool = option(True, "One weight scale per output channel (false: one per tensor).")
    weight_clip: Literal["auto", "max", "mse"] = option(
        "auto", "Weight scales: max|w| (max), or per channel the clipping with the least squared rounding error "
                "(mse); auto: mse for layers below 8 weight bits, else max.")
    weight_rounding: Literal["auto", "nearest", "gptq"] = option(
        "auto", "Weight rounding: to nearest, or GPTQ error compensation on the calibration inputs (gptq); "
                "auto: gptq for layers below 8 weight bits, else nearest.")
    gptq_max_rows: int = option(
        8192, "Most input rows per group GPTQ takes (it holds about six float64 matrices of rows + 1 squared: 8192 "
              "rows, 3 GiB); weight-rounding=auto rounds a larger layer to nearest and says so, gptq fails.")
    bias_correction: Literal["auto", "on", "off"] = option(
        "auto", "Add the mean output shift of the weight rounding on the calibration inputs to the bias; "
                "auto: on for layers below 8 weight bits.")
    vector_bits: int = option(8, "Bits (2..8) of the activations the integer vector-unit ops read (q.add, q.mul, "
                                 "q.lut, q.softmax: residual adds, gates, nonlinearities).")
    out_bits: int = option(0, "Bits (2..8) of an array op's result where only vector-unit ops read it (the "
                              "array's output, before the digital ops); 0: what its readers ask.")

    def __post_init__(self) -> None:
        for key, bits in (("weight-bits", self.weight_bits), ("act-bits", self.act_bits),
                          ("vector-bits", self.vector_bits)):
            if not isinstance(bits, int) or not 2 <= bits <= 8:
                raise CimcError(f"option '{key}' of pass 'quantize' is {bits!r}; expected 2..8")
        if not isinstance(self.out_bits, int) or not (self.out_bits == 0 or 2 <= self.out_bits <= 8):
            raise CimcError(f"option 'out-bits' of pass 'quantize' is {self.out_bits!r}; expected 2..8, or 0 (unset)")
        if not 50 < self.percentile <= 100:
            raise CimcError(f"option 'percentile' of pass 'quantize' is {self.percentile}; expected 50 < p <= 100")
        parse_overrides(self.overrides)
        if not isinstance(self.gptq_max_rows, int) or self.gptq_max_rows < 1:
            raise CimcError(f"option 'gptq-max-rows' of pass 'quantize' is {self.gptq_max_rows!r}; expected >= 1")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Calibrate on ``ctx.calibration``, then rewrite ``graph`` into integer ops (or adopt the
        quantization a pre-quantized graph carries)."""
        from cimc.quant.calibrate import calibrate, check_calibration
        from cimc.quant.lower import Settings, act_matmul, adopt, lower, quantizable
        from cimc.quant.prequant import is_prequantized
        from cimc.quant.recurrent import unroll_recurrent
        from cimc.quant.weights import InputStats, WeightMethod
        from cimc.sparsity import require_view

        if is_prequantized(graph):
            return self._adopt(graph)
        done = sum(n.op.startswith("q.") for n in graph.nodes)
        if done and not any(quantizable(n) for n in graph.nodes):
            raise InputError(f"the graph is already quantized ({done} q.* ops, weight-bits="
                             f"{graph.metadata.get('quant.weight-bits', '?')} act-bits="
                             f"{graph.metadata.get('quant.act-bits', '?')}), so this quantize would do nothing and "
                             f"its options would be ignored; quantize once, with all its options in that one "
                             f"quantize{{...}}")
        requant = "fixed" if self.requant == "auto" else self.requant
        settings = Settings(self.weight_bits, self.act_bits, requant, self.per_channel, self._overrides(graph),
                            vector_bits=self.vector_bits, out_bits=self.out_bits)
        check_calibration(graph, ctx.calibration)
        left = unroll_recurrent(graph)
        if left:  # recurrent layers that stay float ops, and why
            graph.metadata["quant.float_reasons"] = json.dumps(left, sort_keys=True)
        layers = [n for n in graph.nodes if quantizable(n)]
        if not layers and not any(act_matmul(n) for n in graph.nodes):
            logger.info("quantize: no Conv, Gemm or MatMul with constant weights; nothing to do")
            return PassResult(False)
        methods = {n.name: WeightMethod.choose(settings.bits(n, "weight-bits"), self.weight_clip,
                                               self.weight_rounding, self.bias_correction) for n in layers}
        self._gptq_within_memory(graph, layers, methods)
        stats: dict[str, InputStats] = {}
        shared: dict[tuple, InputStats] = {}  # layers reading one weight (a recurrent layer's steps) pool theirs
        for n in layers:
            if methods[n.name].needs_stats:
                key = (id(n.inputs[1]), str(methods[n.name]))
                if key not in shared:
                    shared[key] = InputStats(n, require_view(n), second=methods[n.name].rounding == "gptq")
                stats[n.name] = shared[key]
        readers: dict[int, list[InputStats]] = {}
        for n in layers:
            if n.name in stats and stats[n.name] not in readers.get(id(n.inputs[0]), []):
                readers.setdefault(id(n.inputs[0]), []).append(stats[n.name])

        def observe(v, a) -> None:
            for st in readers.get(id(v), ()):
                st.observe(a)

        watch = [v for v in graph.values() if v.const is None and v.type.dtype is DType.f32]
        observers = calibrate(graph, ctx.calibration, watch, self.calibration, percentile=self.percentile,
                              seed=ctx.seed, also=observe if readers else None)
        settings = replace(settings, methods=methods, stats=stats)
        adopt(graph, lower(graph, observers, settings))
        graph.metadata.update({"quant.requant": requant, "quant.weight-bits": str(self.weight_bits),
                               "quant.act-bits": str(self.act_bits), "quant.calibration": self.calibration})
        used: dict[str, list[str]] = {}
        for name, m in methods.items():
            used.setdefault(str(m), []).append(name)
        if list(used) != [str(WeightMethod())]:  # only when some layer is not max-scaled and rounded to nearest
            graph.metadata["quant.weight-methods"] = json.dumps(used)
        for text, names in used.items():
            logger.info("quantize: weights by %s: %d layer(s)", text, len(names))
        logger.info("quantize: %s", ", ".join(f"{k} x{n}" for k, n in graph.ops().items()))
        return PassResult(True)

    def _gptq_within_memory(self, graph: Graph, layers: list[Node], methods: dict[str, WeightMethod]) -> None:
        """GPTQ holds about six float64 ``(K + 1) x (K + 1)`` matrices per group of a layer of ``K`` input rows at
        once (the input statistics, the Hessian, its factors): a layer of more than ``gptq-max-rows`` rows fails
        when ``weight-rounding=gptq`` was asked for, and is rounded to nearest under ``auto``, named in a warning
        and in the report (``report.quantize``). A fixed option, not the machine's memory, so that the same
        options give the same program on every machine."""
        from cimc.report import PASS_REPORT
        from cimc.sparsity import require_view

        skipped: dict[str, dict[str, str]] = {}
        for n in layers:
            m = methods[n.name]
            rows = require_view(n).rows
            if m.rounding != "gptq" or rows <= self.gptq_max_rows:
                continue
            why = (f"its {rows} input rows are more than gptq-max-rows={self.gptq_max_rows} (GPTQ would hold "
                   f"about {format_bytes(6 * 8 * (rows + 1) ** 2)} of {rows + 1} x {rows + 1} matrices)")
            if self.weight_rounding == "gptq":
                raise InputError(f"quantize: {n.op} {n.name!r}: {why}; raise gptq-max-rows or use "
                                 f"weight-rounding=nearest (auto rounds such layers to nearest)")
            methods[n.name] = replace(m, rounding="nearest")
            skipped[n.name] = {"rounding": "nearest, not gptq", "why": why}
            logger.warning("quantize: %s %r rounded to nearest, not GPTQ: %s", n.op, n.name, why)
        if skipped:
            graph.metadata[PASS_REPORT + "quantize"] = json.dumps(
                {"note": f"{len(skipped)} layer(s) rounded to nearest instead of GPTQ (gptq-max-rows)",
                 "layers": skipped}, sort_keys=True)

    def _adopt(self, graph: Graph) -> PassResult:
        """Rewrite a pre-quantized graph into ``q.*`` ops with its own parameters (module doc)."""
        from cimc.quant.lower import adopt
        from cimc.quant.prequant import adopt_quantized

        unused = [f"{s.name}={getattr(self, s.field)!r}" for s in options_of(type(self))
                  if s.name in ("calibration", "percentile", "overrides", "per-channel", "weight-clip",
                                "weight-rounding", "bias-correction")
                  and getattr(self, s.field) != s.default]
        if unused:
            raise InputError(f"graph {graph.name!r} is already quantized (QDQ or QOperator ops with its own scales "
                             f"and zero points), so pass 'quantize' keeps them and does not calibrate: options "
                             f"{', '.join(unused)} have nothing to act on; drop them, or quantize the float model")
        new = adopt_quantized(graph, requant="float" if self.requant == "auto" else self.requant)
        for n in new.nodes:
            for i, key in ((1, "weight-bits"), (0, "act-bits")):
                v = n.inputs[i] if n.op.startswith("q.") and len(n.inputs) > i else None
                q = v.type.quant if v is not None else None
                limit = self.weight_bits if key == "weight-bits" else self.act_bits
                if q is not None and q.bits <= 8 and q.bits > limit and (key == "act-bits" or n.op in _MVM_OPS):
                    raise InputError(f"node {n.name!r} ({n.op}) of the pre-quantized graph {graph.name!r} reads "
                                     f"{q.bits}-bit {'weights' if key == 'weight-bits' else 'activations'}, more than "
                                     f"{key}={limit} allows (the target's limit, or the pass option); keeping the "
                                     "model's own scales needs a target that takes them")
        adopt(graph, new)
        if new.metadata.get("quant.float_layers"):
            logger.warning("quantize: the pre-quantized graph %r leaves weight layers in float (they run as float "
                           "ops, not on the arrays): %s", graph.name, new.metadata["quant.float_layers"])
        graph.metadata.update(new.metadata)
        logger.info("quantize: adopted the model's own quantization: %s",
                    ", ".join(f"{k} x{n}" for k, n in graph.ops().items()))
        return PassResult(True)

    def _overrides(self, graph: Graph) -> dict[str, dict[str, int]]:
        """Overrides checked against ``graph``: each selector must name a node or an op type."""
        table = parse_overrides(self.overrides)
        names, ops = {n.name for n in graph.nodes}, {n.op for n in graph.nodes}
        for sel in table:
            if sel not in names and sel not in ops:
                close = difflib.get_close_matches(sel, sorted(names | ops), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise InputError(f"option 'overrides' of pass 'quantize': {sel!r} is neither a node name nor an "
                                 f"op type of graph {graph.name!r}{hint} (its op types: {', '.join(sorted(ops))})")
        return table
