"""The outputs of ``cimc compile``: ``report.json``, the readable ``report.txt``, and the output
directory, written atomically and deterministically.

Directory contents: ``program.cimir`` (+ ``program.npz``: the array images and large constants),
``quantized.cimir`` (+ ``quantized.npz``), ``report.json``, ``report.txt``, ``timings.json``, and the marker
``.cimc-output``. It is built in a temporary directory beside the destination and moved into place with one
``os.rename`` (:func:`cimc.fileio.write_directory`); ``force`` replaces an earlier cimc output, never another
directory.
The same inputs, options and seed give byte-identical files: no timestamps (zip members get the
fixed date 1980-01-01), no absolute paths, JSON keys sorted. The one exception is ``timings.json``
(wall-clock seconds per pass, of verification and in total: :attr:`cimc.driver.CompiledModel.timings`),
kept out of the reports so that they stay reproducible.

``report.json`` (``REPORT_VERSION`` 2): ``model`` (name, source), ``target`` (name, spec), ``pipeline``
(the text run, and the lowering part), ``seed``, ``calibration``, ``dims`` (the model's symbolic dims:
``fixed`` by ``--dim``, and those the per-inference counts took as 1: ``batch``, ``other``, ``unknown`` (a
count of values); when ``other`` is not empty ``report.txt`` opens with a ``DIMS:`` line saying so), ``program`` (node
count, ops by name), ``cost`` (:meth:`cimc.cost.CostReport.to_dict`, ``null`` if the target has no cost model):
``per_inference`` (cycles, latency_us, energy_nj, macs, by_unit, energy_nj_by_component, dram_bytes,
energy_fj_per_mac, tops_per_w, weight_reloads, and the same per layer in ``layers``), ``one_time``
(programming the arrays before inference: energy_nj, time_us, cell_writes_by_array, per layer),
``area_mm2`` (total, by_component, parts with their sources), ``latency`` (how op latencies combine),
``array_busy_fraction`` (array cycles over per-inference cycles), ``mapping`` (per-layer tiles, arrays and
cell utilisation, or ``null``), ``float_layers`` (the weight-carrying multiply-accumulates compiled to run in
float with ``allow_float``: layer, op, reason; empty otherwise; when not empty ``report.txt`` opens with a
``FLOAT:`` line naming them), ``passes`` (what passes reported, by name: ``adc-calibration``, the
per-layer ADC error before and after ``calibrate-adc``; ``map-errors``, the per-layer expected error before and
after error-aware placement), ``placement`` (per layer: layer, op, runs_on (the target's arrays or
``vector unit``), float: whether it computes on float values; :func:`cimc.driver.placement`), ``verify``
(``null`` unless asked: reference_exact, exact_expected,
lossy (why exactness is not expected, or ``null``), quantized_max_abs_error, first_difference (the
first layer that differs: layer, op, value, program_ops, sample, differing, elements,
max_abs_error; or ``null``), self_check (``null``, or why the verifier refused its result),
max_abs_error, cosine, top1_agreement, float_reference, inputs, samples, top1_program /
top1_quantized / top1_float when labels are known, for a pre-quantized model
onnxruntime_agreement: :func:`cimc.onnx_io.qdq.source_agreement` of the quantized graph, and with ``--mc``
``mc``: :func:`cimc.montecarlo.summarise` over the chips, ``compiled_per_chip`` when each chip's program was
compiled for it; and ``mc_naive``, the same for each chip's program compiled without error-aware mapping, when
the pipeline has it), ``versions``.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cimc.cost import REPORT_KEYS

if TYPE_CHECKING:
    from cimc.driver import CompiledModel

__all__ = ["PASS_REPORT", "REPORT_VERSION", "build_report", "cost_summary", "default_output_dir", "dims_line",
           "dims_warning", "float_line", "pass_reports", "report_text", "verify_failed", "verify_summary",
           "write_output"]

REPORT_VERSION = 2


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # JSON has no inf/nan
    return x


def build_report(c: CompiledModel) -> dict[str, Any]:
    """The ``report.json`` content of a compile (see the module docstring for the keys)."""
    import onnx

    import cimc

    array = c.cost.per_inference.by_unit.get("array", {}).get("cycles", 0.0) if c.cost else 0.0
    busy = array / c.cost.per_inference.cycles if c.cost and c.cost.per_inference.cycles else None
    return _jsonable({
        "report_version": REPORT_VERSION,
        "model": {"name": c.source.name, "source": c.source.label},
        "target": {"name": c.target.name, "spec": c.target.spec.to_dict()},
        "pipeline": {"run": c.pipeline, "lowering": c.lowering},
        "seed": c.seed,
        "calibration": c.calibration,
        "dims": c.dims,
        "program": {"nodes": len(c.program.nodes), "ops": dict(sorted(Counter(n.op for n in c.program.nodes).items()))},
        "cost": c.cost.to_dict() if c.cost else None,
        "array_busy_fraction": busy,
        "mapping": c.mapping,
        "float_layers": c.float_layers,
        "placement": c.placement,
        "verify": c.verify,
        "passes": pass_reports(c.program),
        "versions": {"cimc": cimc.__version__, "numpy": np.__version__, "onnx": onnx.__version__,
                     "python": "{}.{}".format(*sys.version_info[:2])},
    })


PASS_REPORT = "report."
"""Prefix of the graph metadata keys under which passes leave a report (JSON) for ``report.json``'s ``passes``."""


def pass_reports(graph: Any) -> dict[str, Any]:
    """What passes reported on the program (``graph.metadata["report.NAME"]``, JSON), by ``NAME``."""
    return {k[len(PASS_REPORT):]: json.loads(v) for k, v in sorted(graph.metadata.items())
            if k.startswith(PASS_REPORT)}


def pass_report_lines(rep: dict[str, Any]) -> list[str]:
    """A pass's report as lines: its scalar entries on one line, then one line per layer (``layers``)."""
    head = ", ".join(f"{k} {_fmt(v)}" for k, v in rep.items() if not isinstance(v, dict | list))
    lines = [f"  {head}"] if head else []
    for layer, row in rep.get("layers", {}).items():
        lines.append(f"  {layer}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()))
    return lines


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x)


def report_text(c: CompiledModel) -> str:
    """The readable report: what was compiled how, the cost table, the mapping, the checks."""
    r = c.report
    lines = [float_line(c.float_layers)] if c.float_layers else []
    warn = dims_warning(r.get("dims") or {}) if c.cost is not None else None
    lines += [f"DIMS: {warn}"] if warn else []
    lines += [f"cimc compile report: {r['model']['source']} for target {r['target']['name']}",
             f"pipeline: {r['pipeline']['run']}", f"calibration: {r['calibration']}; seed {r['seed']}",
             dims_line(r.get("dims") or {}),
             f"program: {r['program']['nodes']} ops ("
             + ", ".join(f"{k} x{v}" for k, v in r["program"]["ops"].items()) + ")", ""]
    if c.cost is not None:
        lines += [*cost_summary(c.cost.to_dict(), _fmt(r["array_busy_fraction"])), "", c.cost.table(), ""]
    else:
        lines += ["cost: the target has no cost model (op_cost)", ""]
    if c.mapping:
        keys = [k for k in c.mapping[0] if k != "arrays"]
        lines += ["mapping:", *_columns([keys, *[[_fmt(m[k]) for k in keys] for m in c.mapping]]), ""]
    if c.placement:
        rows = [[p["layer"], p["op"], p["runs_on"], "float" if p["float"] else ""] for p in c.placement]
        lines += ["placement (where each layer runs; float: it computes on float values):",
                  *_columns([["layer", "op", "runs on", "float"], *rows]), ""]
    for name, rep in r.get("passes", {}).items():
        lines += [f"{name}:", *pass_report_lines(rep), ""]
    if c.verify is not None:
        lines += ["verify:", verify_summary(c.verify), ""]
    lines.append("target spec: " + ", ".join(f"{k}={v}" for k, v in r["target"]["spec"].items()))
    return "\n".join(lines) + "\n"


def _columns(rows: list[list[str]]) -> list[str]:
    """Rows of cells as left-aligned text columns."""
    w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(v.ljust(w[i]) for i, v in enumerate(row)).rstrip() for row in rows]


def dims_line(dims: dict[str, Any]) -> str:
    """The report's line on the model's symbolic dims: those fixed (``--dim``) and those counted as 1 per inference."""
    fixed = ", ".join(f"{k}={v}" for k, v in dims.get("fixed", {}).items()) or "none"
    as_one = [*(f"{n} (the batch)" for n in dims.get("batch", [])), *dims.get("other", [])]
    if dims.get("unknown"):
        as_one.append(f"{dims['unknown']} value(s) of unknown size")
    return f"dims: fixed {fixed}; counted as 1 per inference: {', '.join(as_one) or 'none'}"


def dims_warning(dims: dict[str, Any]) -> str | None:
    """What the report opens with when per-inference costs took a symbolic dim other than the batch as 1
    (``report.json``'s ``dims``; :meth:`cimc.cost.SampleDims.warning`), else None."""
    from cimc.cost import SampleDims

    return SampleDims(tuple(dims.get("batch", ())), tuple(dims.get("other", ())), int(dims.get("unknown", 0))).warning()


def float_line(floats: list[dict[str, str]]) -> str:
    """The line that opens the report when weight-carrying multiply-accumulates run in float (``allow_float``)."""
    names = ", ".join(f"{f['layer']!r} ({f['op']})" for f in floats)
    return (f"FLOAT: {len(floats)} weight-carrying multiply-accumulate layer(s) run in float, not on the hardware's "
            f"integer arrays (allow_float): {names}")


def cost_summary(cost: dict[str, Any], busy: str = "n/a") -> list[str]:
    """The cost section's headline lines from ``report.json``'s ``cost``: per inference, one-time
    programming, how latency combines, area by component."""
    per, one, area = cost["per_inference"], cost["one_time"], cost["area_mm2"]
    clock = cost["clock_mhz"]
    lat = per["latency_us"]
    lines = [f"per inference: {per['cycles']:.0f} cycles"
             + (f" = {lat:.3f} us at {clock:g} MHz" if lat is not None else "")
             + f", {per['energy_nj']:.3f} nJ, {per['macs']} MACs"
             + (f" ({per['energy_fj_per_mac']:.1f} fJ/MAC, {per['tops_per_w']:.3g} TOPS/W)" if per["macs"] else "")
             + f", arrays busy {busy}",
             "  DRAM bytes: " + ", ".join(f"{k} {v:.0f}" for k, v in per["dram_bytes"].items()),
             f"  weight reloads: {per['weight_reloads']['note']}"
             + (f" ({per['weight_reloads']['energy_nj']:.3f} nJ)" if per["weight_reloads"]["ops"] else ""),
             f"  latency: {cost['latency']['combine']}",
             *(f"  {note}" for note in cost["latency"].get("target_notes", []))]
    events = {k: v for k, v in per.items() if k not in REPORT_KEYS}
    if events:
        lines.insert(1, "  events: " + ", ".join(f"{k} {v:.0f}" for k, v in events.items()))
    if one["ops"]:
        t = one["time_us"]
        lines.append(f"one-time programming (before inference): {one['energy_nj']:.3f} nJ, {one['cycles']:.0f} cycles"
                     + (f" = {t:.3f} us" if t is not None else "")
                     + f", {one['cell_writes_total']} cell writes over {len(one['cell_writes_by_array'])} arrays")
    else:
        lines.append("one-time programming: none")
    if area is not None:
        lines.append(f"area: {area['total']:.4f} mm^2 ("
                     + ", ".join(f"{k} {v:.4f}" for k, v in area["by_component"].items()) + ")")
    else:
        lines.append("area: the target has no area model")
    return lines


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def verify_failed(v: dict[str, Any] | None) -> bool:
    """Whether a verify result is a failure: the program differs from the integer reference where it
    should equal it (no lossy step), or the verifier's self-check failed. ``cimc compile`` exits 1 then."""
    return v is not None and not v["reference_exact"] and (v["exact_expected"] or v["self_check"] is not None)


def verify_summary(v: dict[str, Any]) -> str:
    """The verify results in a few lines (what ``cimc compile --verify`` prints)."""
    if v["reference_exact"]:
        verdict = "EXACT"
    elif v["self_check"] is not None:
        verdict = f"DIFFERENT: the verifier failed its self-check ({v['self_check']})"
    elif v["exact_expected"]:
        verdict = "DIFFERENT, where it must be exact (no lossy step)"
    else:
        verdict = f"DIFFERENT, as expected ({v['lossy']})"
    out = [f"  on {v['samples']} input{'s' if v['samples'] != 1 else ''} ({v['inputs']})",
           f"  vs quantized graph (interpreter): {verdict} (max abs error {_fmt(v['quantized_max_abs_error'])})"]
    if (d := v.get("first_difference")) is not None:
        ops = ", ".join(d["program_ops"]) or "none"
        out.append(f"  first differs at layer {d['layer']!r} ({d['op']}; program ops {ops}), result %{d['value']}: "
                   f"{d['differing']} of {d['elements']} elements on sample {d['sample']}, max abs error "
                   f"{_fmt(d['max_abs_error'])}")
    kind = "source" if "onnxruntime_agreement" in v else "float"
    out.append(f"  vs {kind} model ({v['float_reference']}): max abs error {_fmt(v['max_abs_error'])}, "
               f"cosine {_fmt(v['cosine'])}, top-1 agreement {_pct(v['top1_agreement'])}")
    if "onnxruntime_agreement" in v:
        a = v["onnxruntime_agreement"]
        out.append(f"  vs onnxruntime in integers: {100 * a['equal']:.4f}% of {a['elements']} elements of "
                   f"{a['values']} quantized values equal, max difference {a['max_lsb']} LSB"
                   + (f" ({a['worst']})" if a["worst"] else "") + f"; outputs {100 * a['outputs_equal']:.4f}% equal, "
                   f"max {a['outputs_max_lsb']} LSB")
    if "top1_program" in v:
        out.append(f"  top-1 on labels: program {_pct(v['top1_program'])}, quantized {_pct(v['top1_quantized'])}, "
                   f"{'source' if 'onnxruntime_agreement' in v else 'float'} {_pct(v['top1_float'])}")
    for key, what in (("mc_naive", "naive (no error-aware mapping)"), ("mc", "as compiled")):
        if (mc := v.get(key)) is None:
            continue
        how = (", each chip's program compiled for it" if mc.get("compiled_per_chip") else "") if key == "mc" else \
            ", each compiled for its chip without error-aware mapping"
        label = f" {what}" if "mc_naive" in v else ""
        out.append(f"  Monte Carlo over {mc['n']} chips{label}{how}: top-1 (vs {mc['top1_of']}) "
                   f"{_pct(mc['top1_mean'])} +- {_pct(mc['top1_std'])} (p5 {_pct(mc['top1_p5'])}, p95 "
                   f"{_pct(mc['top1_p95'])}); relative output error vs the quantized graph "
                   f"{_fmt(mc['rel_error_mean'])} +- {_fmt(mc['rel_error_std'])}")
    return "\n".join(out)


def default_output_dir(c: CompiledModel) -> Path:
    """``<model stem>.<target>.cimc`` in the current directory."""
    return Path(f"{c.source.name}.{c.target.name}.cimc")


def _write_files(c: CompiledModel, d: Path) -> None:
    from cimc.text import save_graph

    for stem, graph in (("program", c.program), ("quantized", c.quantized)):
        save_graph(graph, d / f"{stem}.cimir")
    (d / "report.json").write_text(json.dumps(c.report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (d / "report.txt").write_text(report_text(c), encoding="utf-8")
    (d / "timings.json").write_text(json.dumps(_jsonable(c.timings), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_output(c: CompiledModel, directory: Path, *, force: bool = False) -> Path:
    """Write the output directory atomically (:func:`cimc.fileio.write_directory`: built beside it,
    then renamed into place, with a marker file). An existing one is an error unless ``force``,
    which replaces it only if it is a cimc output directory (or empty)."""
    from cimc.fileio import write_directory

    return write_directory(directory, lambda d: _write_files(c, d), force=force)
