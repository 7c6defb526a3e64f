"""Writes ``docs/corpus.md``: every file of the corpus of real architectures (``examples/corpus``), its
op count, and the status and figures of each check ``tests/corpus_models.py`` runs on it.

    python tests/corpus_table.py --write     # run every check and rewrite the table
    python tests/corpus_table.py             # print it

``tests/test_corpus.py`` checks that each status in the committed table is today's (the figures are
the generating run's; they move with numpy, onnxruntime and BLAS builds in the last digits).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import corpus_models as cm

TABLE = Path(__file__).resolve().parent.parent / "docs" / "corpus.md"
_STAGE_HEADS = {"run": "run vs onnxruntime"}


def _versions() -> str:
    import numpy
    import onnx
    import onnxruntime

    return f"numpy {numpy.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}"


def _cell(outcome: cm.Outcome, stage: str) -> str:
    f = outcome.figures or {}
    if not outcome.ok:
        return "fails"
    if stage == "run":
        return f"ok ({f['max_abs_error']:.1e})"
    left = ", ".join(f"{n} {op}" for op, n in f["float_macs"].items())
    return f"ok (cos {f['cosine']:.4f}, {f['max_abs_error']:.2g}{'; float: ' + left if left else ''})"


def _shortened(error: str, limit: int = 300) -> str:
    """``error`` cut at a word boundary before ``limit`` characters (a target's error lists every op it runs)."""
    return error if len(error) <= limit else error[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."


def collect(progress: bool = False) -> dict[str, dict[str, cm.Outcome]]:
    """Every stage of every file: ``{name: {stage: Outcome}}``."""
    results: dict[str, dict[str, cm.Outcome]] = {}
    for name in cm.entries():
        t0 = time.perf_counter()
        results[name] = {"run": cm.check_run(name)}
        for target in cm.TARGETS:
            results[name][f"compile:{target}"] = cm.check_compile(name, target)
        if progress:
            marks = " ".join(f"{s}={'ok' if o.ok else 'FAILS'}" for s, o in results[name].items())
            print(f"{name:32s} {time.perf_counter() - t0:5.1f}s {marks}", file=sys.stderr, flush=True)
    return results


def render(results: dict[str, dict[str, cm.Outcome]]) -> str:
    """The page's text for ``results``."""
    entries = cm.entries()
    stages = ["run", *(f"compile:{t}" for t in cm.TARGETS)]
    models = {e["model"]: e for e in entries.values()}
    libraries = sorted({e["library"] for e in models.values()})
    passed = {s: sum(results[n][s].ok for n in results) for s in stages}
    built = cm.manifest()["built_with"]
    lines = [
        "# Corpus of real architectures",
        "",
        f"Written by `python tests/corpus_table.py --write` with {_versions()}; do not edit by hand.",
        "",
        f"{len(models)} architectures from {', '.join(libraries)} in small configurations (reduced widths, depths, "
        f"resolution, vocabulary and sequence length; seeded random weights), each exported by both torch "
        f"exporters (TorchScript, opset 17; dynamo, opset 18): {len(entries)} ONNX files in `examples/corpus/`, "
        f"built by `examples/corpus/build.py` with torch {built['torch']}, torchvision {built['torchvision']}, "
        f"timm {built['timm']}, transformers {built['transformers']} (see `examples/corpus/README.md`).",
        "",
        "Checks (`tests/test_corpus.py`, with `tests/corpus_models.py`):",
        "",
        f"- **run**: the file imports, and cimc's interpreter gives onnxruntime's outputs on {cm.RUN_BATCH} seeded "
        f"inputs of the model's kind within rtol {cm.RTOL:g}, atol {cm.ATOL:g} (element-wise); the cell gives the "
        f"largest absolute difference. The outputs must vary between samples by at least {cm.MIN_SPREAD:g}, or "
        f"the comparison would be vacuous.",
        f"- **compile** for each target (default pipeline and spec, the memristor's ideal crossbar "
        f"(`ideal = true`), W8A8, calibrated on {cm.CALIB_BATCH} seeded inputs): "
        f"`--verify` on {cm.VERIFY_BATCH} other inputs finds the program equal to the integer reference (the "
        f"quantized graph) bit for bit. The cell gives the program's cosine similarity and largest absolute "
        f"difference against onnxruntime on the float model: what 8-bit quantization calibrated on "
        f"{cm.CALIB_BATCH} random inputs costs, measured, not bounded.",
        "",
        "| stage | passes |",
        "|---|---|",
        *(f"| {_STAGE_HEADS.get(s, s)} | {passed[s]} of {len(results)} |" for s in stages),
        "",
        "| file | library | exporter | nodes | params | KiB | import | " + " | ".join(
            _STAGE_HEADS.get(s, s) for s in stages) + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(stages),
    ]
    for name, entry in entries.items():
        r = results[name]
        imported = "fails" if r["run"].error.startswith("import:") else "ok"
        lines.append(f"| {name} | {entry['library']} | {entry['exporter']} | {sum(entry['op_types'].values())} | "
                     f"{entry['num_params']} | {entry['bytes'] / 1024:.0f} | {imported} | "
                     + " | ".join(_cell(r[s], s) for s in stages) + " |")
    failures = [(n, s, results[n][s].error) for n in results for s in stages if not results[n][s].ok]
    lines += ["", "## Failures", ""]
    if not failures:
        lines.append("None.")
    for name, stage, error in failures:
        lines.append(f"- `{name}` {stage}: {_shortened(error)}")
    floats = [(n, s, results[n][s].figures["float_macs"]) for n in results for s in stages[1:]  # type: ignore[index]
              if results[n][s].ok and results[n][s].figures["float_macs"]]  # type: ignore[index]
    lines += ["", "## Multiply-accumulates left in float", "",
              "Programs that compile and equal their integer reference, but still run these multiply-accumulate ops "
              "in float (not on the arrays or the MAC array):", ""]
    if not floats:
        lines.append("None.")
    for name, stage, ops in floats:
        lines.append(f"- `{name}` {stage}: " + ", ".join(f"{k} x{v}" for k, v in ops.items()))
    lines += ["", "## The models", "", "| model | library | what it is |", "|---|---|---|"]
    lines += [f"| {m} | {e['library']} | {e['description']} |" for m, e in models.items()]
    return "\n".join(lines) + "\n"


def read_statuses(path: Path = TABLE) -> dict[str, dict[str, str]]:
    """The committed table's status per file and stage (``ok`` or ``fails``)."""
    stages = ["run", *(f"compile:{t}" for t in cm.TARGETS)]
    out: dict[str, dict[str, str]] = {}
    header: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "file":
            header = cells
        elif header and line.startswith("| ") and cells[0] in cm.entries() and len(cells) == len(header):
            row = dict(zip(header, cells, strict=True))
            out[cells[0]] = {s: row.get(_STAGE_HEADS.get(s, s), "").split(" ")[0] for s in stages}
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help=f"write {TABLE.name} (default: print)")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    text = render(collect(progress=True))
    if args.write:
        TABLE.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
