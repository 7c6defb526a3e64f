"""The compile driver: model in, a target's program out, with its cost report and (optionally) checks.

:func:`compile` runs, on one graph:

1. import: a path (``.onnx`` or ``.cimir``), ``zoo:NAME``, an ``onnx.ModelProto`` or a ``Graph`` (an ONNX
   model's symbolic input dims named in ``dims`` fixed at their size first);
2. the target's :meth:`~cimc.target.Target.default_pipeline` (or the user's ``pipeline``, cut before
   the first of the target's lowering passes it names, :func:`split_lowering`): cleanup,
   quantization, tiling. The graph after it is ``quantized``, the integer reference;
3. ``target.register_ops()``, then the target's ``lowering_passes`` and ``program_passes`` (ADC
   calibration): the result is the ``program``
   (if a target lowers nothing yet, the program is the quantized graph); :func:`check_lowered` then
   rejects array ops the lowering left, and :func:`check_supported` any op the target's
   capabilities do not run (every pass's :meth:`~cimc.passmanager.Pass.check` runs first, before
   any work: a pass that needs a target, or options beyond the target's spec, fail at once);
4. cost: ``target.op_cost`` for every program op (:func:`cimc.cost.program_cost`), and the
   weight mapping table of the tiled layers;
5. with ``verify``: runs the program on sample inputs and compares it with onnxruntime on the
   original float model (max abs error, cosine, top-1 agreement) and with the quantized graph run
   by the reference interpreter (:func:`cimc.verify.check_exact`: exact equality expected unless the
   lowering marked the program lossy, ``graph.metadata[cimc.target.LOSSY]``; the first layer that
   differs; the verifier's self-checks).

Every pass sees a :class:`~cimc.passmanager.PassContext` with the Target instance, the seed and the
calibration inputs: given ones, the zoo's calibration set for zoo models, else 8 inputs drawn from a
standard normal with the seed (a warning says so: quantization ranges from random data are a
placeholder, give real samples). Verification inputs: given ones, the zoo test split for zoo
models, else the given calibration inputs, and only when no real data was given 8 seeded random
inputs (a warning says so). Top-1 on labels (``top1_program``, ``top1_quantized``, ``top1_float``
in the verify results) needs labels: given ones (one integer class index per verification input,
checked by :func:`cimc.verify.check_labels`), or the zoo test split's. :meth:`CompiledModel.save`
writes the output directory atomically (see :mod:`cimc.report`).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from cimc.errors import InputError
from cimc.interpreter import random_inputs
from cimc.passmanager import Pass, PassContext, PassInstrument, PassManager, PassTiming
from cimc.quant.prequant import is_prequantized

if TYPE_CHECKING:
    import onnx

    from cimc.cost import CostReport
    from cimc.ir.core import Graph, Node
    from cimc.pipeline import Pipeline
    from cimc.target import Spec, Target

__all__ = ["WEIGHT_MACS", "CompiledModel", "ModelSource", "check_float_macs", "check_lowered", "check_supported",
           "compile", "float_macs", "load_source", "placement", "resolve_target", "split_lowering"]

logger = logging.getLogger(__name__)

SAMPLES = 8
"""How many random inputs stand in for calibration or verification data when none is given."""
WEIGHT_MACS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN", "DeformConv",
               "CausalConvWithState")
"""Float ops that are weight-carrying multiply-accumulates when they read a constant weight (operand 1, or any
operand of MatMul and Einsum): compiling refuses to run them in float unless asked (``allow_float``)."""
_MOVES = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather",
                    "Expand", "Identity", "Concat", "Split", "Shape", "Size", "ConstantOfShape", "q.quantize",
                    "q.dequantize"})
"""Ops that move, reshape or convert values rather than compute: not "left in float" in the placement."""


@dataclass
class ModelSource:
    """A model to compile: the imported graph, the float ONNX model it came from (the onnxruntime
    reference; ``None`` for a ``.cimir`` file or a ``Graph``), its name and, for zoo models, the zoo entry."""

    graph: Graph
    onnx: onnx.ModelProto | None
    name: str
    label: str
    """How the model was given, without absolute paths (``zoo:lenet_bn``, ``model.onnx``, ``<Graph main>``)."""
    zoo: Any = None


def load_source(model: str | os.PathLike[str] | onnx.ModelProto | Graph,
                dims: Mapping[str, int] | None = None) -> ModelSource:
    """Import ``model``: a ``.onnx``/``.cimir`` path, ``zoo:NAME``, an ``onnx.ModelProto`` or a ``Graph`` (verified,
    then copied). ``dims``: symbolic dims of an ONNX model's inputs fixed at a size before import
    (:func:`cimc.onnx_io.dims.fix_dims`); the source's ``onnx`` is the model with them fixed."""
    from cimc.ir.core import Graph

    src = _load_source(model, dims or {})
    if dims and src.onnx is None:
        kind = "Graph" if isinstance(model, Graph) else ".cimir file"
        raise InputError(f"dims ({', '.join(f'{k}={v}' for k, v in dims.items())}) fix an ONNX model's symbolic "
                         f"input dims before import; {src.label} is a {kind}, whose dims are already its own")
    return src


def _load_source(model: str | os.PathLike[str] | onnx.ModelProto | Graph, dims: Mapping[str, int]) -> ModelSource:
    from cimc.ir.core import Graph
    from cimc.onnx_io import import_model

    def fixed(proto: onnx.ModelProto) -> onnx.ModelProto:
        from cimc.onnx_io.dims import fix_dims

        return fix_dims(proto, dims) if dims else proto

    if isinstance(model, Graph):
        from cimc.ir.verifier import verify

        verify(model)  # a graph built in Python comes in unchecked, like a file
        return ModelSource(model.copy(), None, model.name or "model", f"<Graph {model.name}>")
    if isinstance(model, str | os.PathLike):
        text = os.fspath(model)
        if text.startswith("zoo:"):
            from cimc import zoo

            z = zoo.load(text[4:])
            proto = fixed(z.onnx())
            return ModelSource(import_model(proto), proto, z.name, text, z)
        path = Path(text)
        if path.suffix == ".onnx":
            from cimc.onnx_io.importer import read_model

            proto = fixed(read_model(path))
            return ModelSource(import_model(proto, source=str(path)), proto, path.stem, path.name)
        if path.suffix == ".cimir":
            from cimc.text import load_graph

            return ModelSource(load_graph(path), None, path.stem, path.name)  # its reader says what a path is
        raise InputError(f"{path}: unknown file type {path.suffix or '(none)'!r}; expected .onnx or .cimir "
                         f"(or zoo:NAME for a bundled model)")
    if type(model).__name__ == "ModelProto":
        model = fixed(model)
        return ModelSource(import_model(model), model, model.graph.name or "model", f"<ModelProto {model.graph.name}>")
    raise InputError(f"cannot compile a {type(model).__name__}: give a path, zoo:NAME, an onnx.ModelProto or a Graph")


def resolve_target(target: str | Target,
                   spec: Spec | str | os.PathLike[str] | Mapping[str, Any] | None = None) -> Target:
    """The Target instance for a name or instance, with ``spec`` applied: a Spec, a TOML file (or
    TOML text), or a dict of parameter overrides."""
    from cimc.target import Spec, Target
    from cimc.targets import get_target

    if isinstance(target, str):
        target = get_target(target)()
    elif not isinstance(target, Target):
        raise InputError(f"target should be a target name or a Target, got a {type(target).__name__}")
    if spec is None:
        return target
    if isinstance(spec, Spec):
        return type(target)(spec=spec)
    if isinstance(spec, Mapping):
        return target.with_spec(**spec)
    return type(target)(spec=type(target).Spec.from_toml(spec))


def _named(arrays: Mapping[str, np.ndarray] | np.ndarray, graph: Graph, what: str) -> dict[str, np.ndarray]:
    if isinstance(arrays, np.ndarray):
        if len(graph.inputs) != 1:
            raise InputError(f"{what}: one array given, but the model has {len(graph.inputs)} inputs; "
                             f"give a dict by input name")
        return {graph.inputs[0].name: arrays}
    names = {v.name for v in graph.inputs}
    if missing := sorted(names - set(arrays)):
        raise InputError(f"{what}: no arrays for inputs {missing} (given: {sorted(arrays)})")
    if extra := sorted(set(arrays) - names):
        raise InputError(f"{what}: arrays {extra} name no graph input (the graph takes {sorted(names)})")
    return {k: np.asarray(arrays[k]) for k in sorted(names)}


class ProgressInstrument(PassInstrument):
    """One status line per pass on a terminal (rewritten in place), cleared at the end."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream, self.total, self.index = stream, total, 0

    def before_pass(self, pass_: Any, graph: Graph, ctx: PassContext) -> None:
        """Show which pass runs now."""
        self.index += 1
        self.stream.write(f"\r\x1b[Kcimc: [{self.index}/{self.total}] {pass_.name} ({len(graph.nodes)} nodes)")
        self.stream.flush()

    def done(self) -> None:
        """Clear the status line."""
        self.stream.write("\r\x1b[K")
        self.stream.flush()


@dataclass
class CompiledModel:
    """The result of :func:`compile`: the lowered ``program``, the ``quantized`` graph (the integer
    reference), the ``report`` and what produced them."""

    program: Graph
    quantized: Graph
    target: Target
    source: ModelSource
    pipeline: str
    """The whole pipeline run (default or user's, then lowering), as canonical text."""
    lowering: str
    cost: CostReport | None
    mapping: Any = None
    float_layers: list[dict[str, str]] = field(default_factory=list)
    """The weight-carrying multiply-accumulates that run in float (``allow_float``): layer, op, reason."""
    placement: list[dict[str, Any]] = field(default_factory=list)
    """Per layer of the program: where it runs (the arrays, or the vector unit) and whether it computes
    in float (:func:`placement`)."""
    verify: dict[str, Any] | None = None
    calibration: str = ""
    """Where the calibration inputs came from, e.g. ``zoo calibration set (64 samples)``."""
    seed: int = 0
    dims: dict[str, Any] = field(default_factory=dict)
    """The model's symbolic dims: ``fixed`` (given ``dims``, by name), and of the program's, those per-inference
    counts took as 1: ``batch``, ``other`` (not the batch: a line the report opens with says so), ``unknown``
    (how many values have a dim of unknown size) (:func:`cimc.cost.sample_dims`)."""
    report: dict[str, Any] = field(default_factory=dict)
    """The ``report.json`` content (cost, mapping, verify results, pipeline, target spec, versions)."""
    timings: dict[str, Any] = field(default_factory=dict)
    """Wall-clock seconds (``timings.json``, the one output file that differs between runs): per pass
    (``passes``: pass, seconds, modified), ``passes_seconds``, ``verify_seconds`` (``None`` without
    verify) and ``total_seconds`` (passes, cost, mapping and verify; not import or saving)."""

    def run(self, inputs: Mapping[str, np.ndarray] | np.ndarray, *, seed: int | None = None) -> dict[str, np.ndarray]:
        """Run the program in the reference interpreter (the target's ops registered); outputs by name."""
        from cimc.interpreter import run

        self.target.register_ops()
        return run(self.program, _named(inputs, self.program, "inputs"), seed=self.seed if seed is None else seed,
                   machine=self.target.machine(self.seed))

    def save(self, directory: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Write the output directory atomically (see :func:`cimc.report.write_output`); returns its path."""
        from cimc.report import write_output

        return write_output(self, Path(directory), force=force)


def _chip_programs(before: Graph, rest: tuple[Pass, ...], ctx: PassContext, program: Graph, n: int
                   ) -> dict[str, list[Graph]]:
    """Each of ``n`` chips' program, compiled from ``before`` (the graph before the first pass that reads the
    chip) by the passes ``rest`` with ``PassContext.chip`` that chip (chip 0's is ``program``): ``mapped``; and,
    when a pass of ``rest`` uses the chip to place or write weights (:meth:`Pass.chip_blind` differs), the same
    with those passes blind to it: ``naive``, each chip's program as it would be without error-aware mapping."""
    from cimc.pipeline import Pipeline

    blind = tuple(p.chip_blind() for p in rest)
    out: dict[str, list[Graph]] = {"mapped": [program]}
    kinds = [("mapped", rest, range(1, n))]
    if blind != rest:
        out["naive"] = []
        kinds.append(("naive", blind, range(n)))
    for kind, passes, chips in kinds:
        for i in chips:
            g = before.copy()
            PassManager(Pipeline(passes), replace(ctx, chip=i, instruments=[])).run(g)
            out[kind].append(g)
    return out


def _verify(program: Graph, quantized: Graph, float_graph: Graph, src: ModelSource, target: Target,
            inputs: dict[str, np.ndarray], seed: int, where: str, labels: np.ndarray | None,
            mc: int | None = None, workers: int | None = None, per_chip: dict[str, list[Graph]] | None = None
            ) -> dict[str, Any]:
    from cimc.interpreter import run
    from cimc.target import LOSSY
    from cimc.verify import check_exact, check_labels, compare, top1_accuracy

    target.register_ops()
    check = check_exact(program, quantized, inputs, seed=seed, lowered=bool(type(target).lowering_passes),
                        machine=target.machine(seed))
    ours, ref_q = check.outputs, check.reference_outputs
    if src.onnx is not None:
        from cimc.onnx_io.runtime import run_onnxruntime

        ref_f, by = run_onnxruntime(src.onnx, inputs), "onnxruntime"
        if "quant.onnx_values" in quantized.metadata:  # a pre-quantized model: onnxruntime runs it quantized
            by = "onnxruntime (the quantized model)"
    else:  # no ONNX model to give onnxruntime: the float graph in the reference interpreter
        ref_f, by = run(float_graph, inputs, seed=seed), "interpreter"
    c = compare(ours, ref_f)
    lossy = program.metadata.get(LOSSY)
    out: dict[str, Any] = {
        "inputs": where, "samples": int(next(iter(inputs.values())).shape[0]) if inputs else 0,
        "reference_exact": check.exact, "exact_expected": lossy is None, "lossy": lossy,
        "quantized_max_abs_error": check.max_abs_error,
        "first_difference": check.first_difference.as_dict() if check.first_difference else None,
        "self_check": check.self_check,
        "float_reference": by, "max_abs_error": c.max_abs_error, "cosine": c.cosine,
        "top1_agreement": c.top1_agreement}
    if src.onnx is not None and "quant.onnx_values" in quantized.metadata:
        from cimc.onnx_io.qdq import source_agreement

        out["onnxruntime_agreement"] = source_agreement(src.onnx, quantized, inputs)
    y = None
    if labels is not None:
        first = next(iter(ref_f))
        logits = np.asarray(ref_f[first])
        y = check_labels(labels, out["samples"], logits.shape[-1] if logits.ndim >= 2 else None)
        out["top1_program"] = top1_accuracy(ours[first], y)
        out["top1_quantized"] = top1_accuracy(ref_q[first], y)
        out["top1_float"] = top1_accuracy(logits, y)
    if mc is not None:
        from cimc.montecarlo import LocalPool, monte_carlo

        programs = per_chip or {"mapped": [program]}
        out["mc"] = monte_carlo(programs["mapped"], target, inputs, n=mc, seed=seed, exact=ref_q, reference=ref_f,
                                labels=y, backend=LocalPool(workers))
        out["mc"]["compiled_per_chip"] = per_chip is not None
        if "naive" in programs:
            out["mc_naive"] = monte_carlo(programs["naive"], target, inputs, n=mc, seed=seed, exact=ref_q,
                                          reference=ref_f, labels=y, backend=LocalPool(workers))
    return out


def compile(model: str | os.PathLike[str] | onnx.ModelProto | Graph, target: str | Target = "sram-cim",
            pipeline: str | Pipeline | None = None,
            spec: Spec | str | os.PathLike[str] | Mapping[str, Any] | None = None,
            calibration: Mapping[str, np.ndarray] | np.ndarray | None = None, seed: int = 0, verify: bool = False,
            inputs: Mapping[str, np.ndarray] | np.ndarray | None = None, *, labels: np.ndarray | None = None,
            progress: bool | None = None, verify_each: bool = False, allow_float: bool = False,
            mc: int | None = None, workers: int | None = None, chip: int = 0,
            dims: Mapping[str, int] | None = None) -> CompiledModel:
    """Compile ``model`` for ``target`` (see the module docstring for the steps and defaults).

    ``labels``: with ``verify``, one integer class index per verification input, for top-1 on labels.
    ``allow_float``: run weight-carrying multiply-accumulates that are not quantized (:data:`WEIGHT_MACS`) in
    float on the target instead of refusing to (:func:`check_float_macs`); the report's first line says so.
    ``mc``: with ``verify``, also run the program on ``mc`` chips of the target (chip ``i`` from ``(seed, i)``) and
    report their spread (:mod:`cimc.montecarlo`) under ``verify["mc"]``; ``workers``: its local processes. When a
    pass reads the chip (``Pass.per_chip``: ``map-errors``, ``calibrate-adc``), chip ``i`` runs its own program,
    compiled for it from that pass on, as a deployment flow would; with error-aware mapping in the pipeline, also
    each chip's program compiled without it (``verify["mc_naive"]``), side by side.
    ``chip``: compile for chip ``chip`` of ``seed`` (what the passes that read the chip see; chip 0 by default,
    the chip ``--mc`` runs first).
    ``progress``: a per-pass status line on standard error (default: when it is a terminal).
    ``verify_each``: run the IR verifier after every pass.
    ``dims``: symbolic dims of the model's inputs fixed at a size (``{"seq": 128}``, ``--dim seq=128``) before
    import, so that costs count them at that size (a symbolic dim counts as 1 per inference: right for the batch,
    not for a sequence; the report lists the dims it counted as 1) and random inputs have it.
    """
    from cimc.cost import program_cost, sample_dims
    from cimc.pipeline import Pipeline

    tgt = resolve_target(target, spec)
    front = Pipeline.parse(tgt.default_pipeline()) if pipeline is None else (
        Pipeline.parse(pipeline) if isinstance(pipeline, str) else pipeline)
    front, lowering = split_lowering(front, tgt)
    for pass_ in (*front.passes, *lowering.passes):  # before any work: a missing target, options beyond it
        pass_.check(tgt)
    src = load_source(model, dims)
    graph = src.graph
    float_graph = graph.copy() if verify and src.onnx is None else graph

    given = None if calibration is None else _named(calibration, graph, "calibration")
    if labels is not None and not verify:
        raise InputError("labels are for verification; pass verify=True (--verify) with them")
    if mc is not None and not verify:
        raise InputError("Monte Carlo runs verify the program on many chips; pass verify=True (--verify) with mc")
    if mc is not None and mc < 1:
        raise InputError(f"mc = {mc}: the number of Monte Carlo chips must be at least 1")
    if chip < 0 or (chip and mc is not None):
        raise InputError(f"chip = {chip}: " + ("a chip index is >= 0" if chip < 0 else "a Monte Carlo run compiles for "
                                               "chips 0 .. mc-1 itself; give mc or chip, not both"))
    if workers is not None and mc is None:
        raise InputError("workers are the processes of a Monte Carlo run; pass mc (--mc N) with them")
    if workers is not None and workers < 1:
        raise InputError(f"workers = {workers}: need at least 1 worker process")
    sample, where, labels = _verify_inputs(src, graph, given, inputs, labels, seed) if verify \
        else (None, "", None)
    if given is not None:
        calib, calib_from = given, "given"
    elif src.zoo is not None:
        from cimc import zoo

        calib, calib_from = _named(zoo.calibration_set(), graph, "calibration"), "zoo calibration set"
    elif is_prequantized(graph):  # it keeps its own scales: nothing to calibrate
        calib, calib_from = {}, "none (the model is pre-quantized)"
    else:
        calib, calib_from = random_inputs(graph, seed, SAMPLES), "random (seeded)"
        logger.warning("no calibration inputs given for %s: calibrating on %s; give real samples "
                       "(calibration=..., --calibration x.npz) for meaningful ranges", src.label, _random_count(calib))
    n_calib = int(next(iter(calib.values())).shape[0]) if calib else 0
    calib_text = calib_from if not calib else f"{calib_from} ({n_calib} sample{'s' if n_calib != 1 else ''})"

    total = len(front.passes) + len(lowering.passes)
    show = sys.stderr.isatty() if progress is None else progress
    bar = ProgressInstrument(sys.stderr, total) if show and total else None
    ctx = PassContext(target=tgt, calibration=calib, seed=seed, chip=chip, verify_each=verify_each,
                      instruments=[bar] if bar else [])
    start = time.perf_counter()
    timings: list[PassTiming] = []

    def run_passes(part: Pipeline) -> None:
        pm = PassManager(part, ctx, before=[t.name for t in timings])
        pm.run(graph)
        timings.extend(pm.timings)

    # a Monte Carlo run compiles every chip's program from the first pass that reads the chip (per_chip) on
    every = (*front.passes, *lowering.passes)
    cut = next((i for i, p in enumerate(every) if p.per_chip), None) if mc is not None else None
    before_chip: Graph | None = None

    def run_part(part: tuple[Pass, ...], offset: int) -> None:
        nonlocal before_chip
        if cut is not None and offset <= cut < offset + len(part):
            run_passes(Pipeline(part[:cut - offset]))
            before_chip = graph.copy()
            part = part[cut - offset:]
        run_passes(Pipeline(part))

    try:
        run_part(front.passes, 0)
        floats = check_float_macs(graph, tgt, allow_float)
        check_supported(graph, tgt)  # before the lowering's work
        quantized = graph.copy()
        tgt.register_ops()
        run_part(lowering.passes, len(front.passes))
        check_lowered(graph, tgt)
        check_supported(graph, tgt)
    finally:
        if bar:
            bar.done()
    program = graph
    per_chip = None
    if mc is not None and before_chip is not None and cut is not None and sample is not None:
        per_chip = _chip_programs(before_chip, every[cut:], ctx, program, mc)
    cost = program_cost(program, tgt)
    mapping = _mapping(program, quantized, tgt)
    seen = sample_dims(program)
    dims_warning = seen.warning() if cost is not None else None
    if dims_warning:
        logger.warning("%s: %s", src.label, dims_warning)

    checks, verify_s = None, None
    if sample is not None:
        t0 = time.perf_counter()
        checks = _verify(program, quantized, float_graph, src, tgt, sample, seed, where, labels, mc, workers,
                         per_chip)
        verify_s = time.perf_counter() - t0
        from cimc.report import verify_failed

        if verify_failed(checks):
            logger.warning("%s on %s: the program differs from the integer reference where it must equal it (%s)",
                           src.label, tgt.name, checks["self_check"] or f"first at layer "
                           f"{(checks['first_difference'] or {}).get('layer', '?')!r}")

    result = CompiledModel(program, quantized, tgt, src, str(Pipeline((*front.passes, *lowering.passes))),
                           str(lowering), cost, mapping, floats, placement(program, quantized, tgt, cost), checks,
                           calib_text, seed, {"fixed": dict(dims or {}), "batch": list(seen.batch),
                                              "other": list(seen.other), "unknown": seen.unknown})
    result.timings = {"passes": [{"pass": r.name, "seconds": r.seconds, "modified": r.modified} for r in timings],
                      "passes_seconds": sum(r.seconds for r in timings), "verify_seconds": verify_s,
                      "total_seconds": time.perf_counter() - start}
    from cimc.report import build_report

    result.report = build_report(result)
    return result


def _random_count(arrays: Mapping[str, np.ndarray]) -> str:
    """How many seeded random samples ``arrays`` hold, for the warnings: fewer than asked for when the graph
    fixes its batch dimension."""
    n = int(next(iter(arrays.values())).shape[0]) if arrays and next(iter(arrays.values())).ndim else 1
    if n == SAMPLES:
        return f"{n} seeded random inputs"
    return f"{n} seeded random input{'s' if n != 1 else ''} (the graph fixes its batch at {n})"


def _verify_inputs(src: ModelSource, graph: Graph, calibration: dict[str, np.ndarray] | None,
                   inputs: Mapping[str, np.ndarray] | np.ndarray | None, labels: np.ndarray | None, seed: int
                   ) -> tuple[dict[str, np.ndarray], str, np.ndarray | None]:
    """``(inputs, where they come from, labels)`` for verification: given inputs, else the zoo test
    split (with its labels), else the given calibration inputs, else seeded random inputs (only when
    no real data was given, and never with labels). Labels are checked against the input count here,
    before any work."""
    from cimc.verify import check_labels

    if inputs is not None:
        sample, where = _named(inputs, graph, "inputs"), "given"
    elif src.zoo is not None:
        sample, where = {src.zoo.input_name: np.asarray(src.zoo.x_test)}, "zoo test split"
        labels = src.zoo.y_test if labels is None else labels
    elif calibration is not None:
        sample, where = calibration, "calibration set"
    elif labels is not None:
        raise InputError("labels need the inputs they belong to: give the verification inputs (inputs=..., "
                         "--inputs x.npz) or calibration inputs")
    else:
        sample, where = random_inputs(graph, seed + 1, SAMPLES), "random (seeded)"
        logger.warning("no verification inputs given for %s: verifying on %s; give real samples (inputs=..., "
                       "--inputs x.npz) for meaningful figures", src.label, _random_count(sample))
    for name, a in sample.items():
        if a.ndim == 0 or a.shape[0] == 0:
            raise InputError(f"verification inputs ({where}): input {name!r} has no samples (shape "
                             f"{list(a.shape)}); give at least one, batch on axis 0")
    if labels is not None:
        samples = int(next(iter(sample.values())).shape[0]) if sample else 0
        labels = check_labels(labels, samples)
    return sample, where, labels


def split_lowering(pipeline: Pipeline, target: Target) -> tuple[Pipeline, Pipeline]:
    """``(front, lowering)``: a pipeline that names one of the target's lowering passes (to give it options,
    ``lower-sram-cim{adc-bits=5}``) is cut before it, so that the quantized graph, the integer reference,
    is taken before any lowering; the lowering part is the rest of the pipeline plus any of the target's
    lowering passes it does not name (default options), then any of its program passes (``calibrate-adc``) it
    does not name after the cut. A pipeline naming none keeps all of it in front."""
    from cimc.pipeline import Pipeline

    classes = type(target).lowering_passes
    passes = pipeline.passes
    cut = next((i for i, p in enumerate(passes) if type(p) in classes), len(passes))
    rest = passes[cut:]
    missing = tuple(cls() for cls in (*classes, *type(target).program_passes)
                    if not any(type(p) is cls for p in rest))
    return Pipeline(passes[:cut]), Pipeline((*rest, *missing))


def check_lowered(program: Graph, target: Target) -> None:
    """Raise ``PassError`` if the program still holds ops the target runs on its arrays (``q.conv``, ``q.gemm``,
    ``q.matmul`` with a constant weight, and the target's other array ops such as the npu's ``q.act_matmul``):
    its lowering left them, so the program would run them as reference ops and cost them as nothing. The
    message names the ops and the target's lowering passes."""
    from cimc.errors import PassError
    from cimc.target import ARRAY_OPS

    caps = target.capabilities()
    left = [n for n in program.nodes if caps.unit_of(n.op) == "array" and (
        n.op not in ARRAY_OPS or (len(n.inputs) > 1 and n.inputs[1] is not None and n.inputs[1].const is not None))]
    if left:
        names = ", ".join(f"{n.op} {n.name!r}" for n in left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3
                                                                    else "")
        passes = ", ".join(p.name for p in type(target).lowering_passes) or "none"
        raise PassError(f"target '{target.name}': {len(left)} array ops were not lowered to its instructions "
                        f"({names}); its lowering passes ({passes}) did not take them: check the pipeline runs "
                        f"what they need first (`{target.default_pipeline()}` is the default)")


def float_macs(graph: Graph) -> list[dict[str, str]]:
    """The weight-carrying multiply-accumulates of ``graph`` (:data:`WEIGHT_MACS` reading a constant weight)
    that compute in float, in graph order: ``{"layer", "op", "reason"}``, the reason the quantizer gave
    (or why the ones it takes were not taken)."""
    import json

    reasons = json.loads(graph.metadata.get("quant.float_reasons", "{}"))
    quantized = "quant.requant" in graph.metadata
    out = []
    for n in graph.nodes:
        if n.op not in WEIGHT_MACS or not n.outputs or not n.outputs[0].type.dtype.is_float:
            continue
        weights = n.inputs if n.op in ("MatMul", "Einsum") else n.inputs[1:2]
        if not any(v is not None and v.const is not None for v in weights):
            continue
        out.append({"layer": n.name, "op": n.op, "reason": reasons.get(n.name) or _float_reason(n, quantized)})
    return out


def _float_reason(n: Node, quantized: bool) -> str:
    if not quantized:
        return "the pipeline does not quantize it (no quantize pass ran)"
    if "quant.source" in (n.graph.metadata if n.graph is not None else {}):
        return "the pre-quantized model leaves it in float (no quantized weight or input around it)"
    if n.op == "MatMul" and n.inputs[0] is not None and n.inputs[0].const is not None:
        return "its constant is the first operand (W @ x); the quantizer takes x @ W"
    if n.op == "Gemm":
        return "the quantizer takes Gemm with transA = 0, a constant 2-D B and a constant vector C"
    return f"the quantizer does not take this {n.op} (its input is not a float activation, or its weight's shape)"


def check_float_macs(graph: Graph, target: Target, allow_float: bool) -> list[dict[str, str]]:
    """:func:`float_macs` of the graph the target is about to lower: an ``InputError`` naming them, unless
    ``allow_float`` (then they are returned, for the report, and logged)."""
    floats = float_macs(graph)
    if not floats:
        return []
    names = "; ".join(f"node {f['layer']!r} ({f['op']}): {f['reason']}" for f in floats[:3]) + (
        f"; and {len(floats) - 3} more" if len(floats) > 3 else "")
    where = target.capabilities().array_name
    if not allow_float:
        raise InputError(f"{len(floats)} weight-carrying multiply-accumulate(s) would run in float on target "
                         f"'{target.name}', not on its {where}: {names}. Quantize them, or pass --allow-float "
                         f"(allow_float=True) to run them in float")
    logger.warning("%d weight-carrying multiply-accumulate(s) run in float on target '%s' (allow_float): %s",
                   len(floats), target.name, names)
    return floats


def placement(program: Graph, quantized: Graph, target: Target, cost: CostReport | None) -> list[dict[str, Any]]:
    """Per layer of ``program`` (its ops grouped by their ``cim.layer``, else by their name), in program order:
    ``{"layer", "op", "runs_on", "float"}``: ``op`` the quantized graph's op of that name (else the first
    program op), ``runs_on`` the target's arrays (:attr:`~cimc.target.Capabilities.array_name`) if any of its
    ops spends array time, else ``"vector unit"``; ``float``: whether one of its ops computes on float values
    (moves and conversions aside). Layers of moves only are left out."""
    caps = target.capabilities()
    ops_of = {n.name: n.op for n in quantized.nodes}
    array_time = {l.name for l in cost.layers if "array" in l.per_inference.by_unit or "array" in l.one_time.by_unit} \
        if cost is not None else set()
    groups: dict[str, list[Node]] = {}
    for n in program.nodes:
        groups.setdefault(str(n.attrs.get("cim.layer") or n.name), []).append(n)
    rows = []
    for layer, nodes in groups.items():
        compute = [n for n in nodes if n.op not in _MOVES and n.op not in ("npu.dma_in", "npu.dma_out", "sram.load")]
        if not compute:
            continue
        on_array = layer in array_time if cost is not None else any(caps.unit_of(n.op) == "array" for n in nodes)
        is_float = any(v is not None and v.const is None and v.type.dtype.is_float
                       for n in compute for v in (*n.inputs, *n.outputs))
        rows.append({"layer": layer, "op": ops_of.get(layer, compute[0].op),
                     "runs_on": caps.array_name if on_array else "vector unit", "float": is_float})
    return rows


def check_supported(program: Graph, target: Target) -> None:
    """Raise ``UnsupportedOpError`` for the first op of ``program`` that ``target`` cannot run: one that
    is neither an array op (and, unless the arrays take two activations, one with a constant weight),
    nor a vector-unit op, nor the target's own instruction (:meth:`cimc.target.Capabilities.unit_of`)."""
    from cimc.errors import UnsupportedOpError
    from cimc.target import NOT_RUN
    from cimc.targets import all_targets

    caps = target.capabilities()
    for node in program.nodes:  # a weight-carrying integer op no target's arrays take as it is
        if node.op == "q.conv_transpose":
            raise UnsupportedOpError(
                f"target '{target.name}' cannot run q.conv_transpose {node.name!r} on its {caps.array_name}: add "
                f"'legalize-convs' after 'quantize' in the pipeline (it rewrites it into a q.conv, given static "
                f"spatial input dims; the target's default pipeline has it: `{target.default_pipeline()}`)")
    units = {op: caps.unit_of(op) for op in {n.op for n in program.nodes}}  # once per op, not per node
    for node in program.nodes:
        unit = units[node.op]
        dynamic = unit == "array" and len(node.inputs) > 1 and node.inputs[1] is not None \
            and node.inputs[1].const is None and not caps.dynamic_matmul
        if unit is not None and not dynamic:
            continue
        why = ("its arrays hold constant weights only, and this matmul multiplies two activations" if dynamic
               else NOT_RUN.get(node.op, "it is neither an array op nor a vector-unit op nor one of the target's "
                                         "instructions"))
        runs = "every op" if "*" in caps.vector_ops else (
            f"{len(caps.vector_ops)} ops (`cimc ops --target {target.name}` lists them)")
        own = ", ".join(o + "*" if o.endswith(".") else o for o in caps.own_ops) or "none"
        others = [name for name, cls in all_targets().items() if name != target.name
                  and cls().capabilities().unit_of(node.op) is not None]
        raise UnsupportedOpError(
            f"target '{target.name}' cannot run op {node.op} (node {node.name!r}): {why}; it runs on its arrays: "
            f"{', '.join(caps.array_ops)}; on its vector unit: {runs}; its instructions: "
            f"{own}. Replace {node.op} in the model with ops these run"
            + (f", or compile for a target that runs it ({', '.join(others)})" if others else ""))


def _mapping(program: Graph, quantized: Graph, target: Target) -> list[dict[str, Any]] | None:
    """The weight mapping table: one row per node carrying a tile map (tiles, arrays, cell utilisation: used
    cells over the physical cells of the arrays its tiles occupy, spares included; tiles placed off the
    identity), or ``None`` if none does."""
    from cimc.cim.tilemap import TileMap

    rows = []
    for node in quantized.nodes:
        tiles = node.attrs.get("tile.map")
        if not isinstance(tiles, TileMap) or "tile.shared" in node.attrs:  # another layer's tiles, counted there
            continue
        t = tiles.table
        used = int(((t[:, 2] - t[:, 1]) * (t[:, 4] - t[:, 3]) * (t[:, 6] - t[:, 5])).sum())
        rows.append({"layer": node.name, "op": node.op, "tiles": len(t),
                     "arrays": sorted({int(a) for a in t[:, 7]}), "cells_used": used,
                     "utilization": used / (len(t) * math.prod(tiles.physical)) if len(t) else 0.0,
                     "placed": sum(tiles.row_at[i] is not None or tiles.col_at[i] is not None for i in range(len(t)))})
    return rows or None