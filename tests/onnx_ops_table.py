"""Writes ``docs/onnx-ops.md``: every default-domain ONNX op of the installed onnx, how cimc imports it,
and how many of ONNX's node test cases for it run (``tests/test_onnx_conformance.py`` runs them all).

    python tests/onnx_ops_table.py --write     # regenerate the table
    python tests/onnx_ops_table.py             # print it

``tests/test_onnx_ops_table.py`` checks that the committed table is what this script writes.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))

from conformance_skips import SKIPS
from test_onnx_conformance import _primary_op, cases, skip_reason, unsupported_cases

from cimc.onnx_io.coverage import onnx_ops, op_status

TABLE = Path(__file__).resolve().parent.parent / "docs" / "onnx-ops.md"


def header_version() -> str:
    """The onnx version a table is written with, as its header names it."""
    return f"onnx {onnx.__version__} (opsets 7 to {onnx.defs.onnx_opset_version()})"


def render() -> str:
    """The table's text for the installed onnx."""
    run, skipped, refused, not_run = Counter(), Counter(), Counter(), 0
    reasons: dict[str, int] = defaultdict(int)
    for name, case in cases().items():
        op = _primary_op(case)
        why = skip_reason(name)
        if why is None:
            run[op] += 1
        else:
            skipped[op] += 1
            reasons[why] += 1
            not_run += name in SKIPS
    for op, _case in unsupported_cases().values():
        refused[op] += 1
    ops = onnx_ops()
    statuses = [op_status(op) for op in ops]
    supported = sum(s.supported for s in statuses)
    lines = [
        "# ONNX operators in cimc",
        "",
        f"Written by `python tests/onnx_ops_table.py --write` with {header_version()}; do not edit by hand.",
        "",
        f"**{supported} of the {len(ops)} default-domain ops import.** Of ONNX's node test cases for them, "
        f"{sum(run.values())} run and pass (`tests/test_onnx_conformance.py`); {sum(skipped.values())} are not "
        f"run for the reasons below, of which {sum(skipped.values()) - not_run} (types and run-time control flow "
        f"cimc does not have) are checked to fail to import with one clear error and {not_run} are skipped. The "
        f"{sum(refused.values())} cases of the ops cimc does not import are checked to fail with one clear error "
        "naming the op.",
        "",
        "| op | imports | node cases run | skipped | note |",
        "|---|---|---|---|---|",
    ]
    for s in statuses:
        cell = "yes" if s.supported else "no"
        note = s.note if s.note else ""
        lines.append(f"| {s.op} | {cell} | {run[s.op] or ''} | {skipped[s.op] or ''} | {note} |")
    lines += ["", "## Why cases are skipped", "", "| reason | cases |", "|---|---|"]
    for why, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"| {why} | {n} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--write" in argv:
        TABLE.parent.mkdir(exist_ok=True)
        TABLE.write_text(text)
        print(f"wrote {TABLE}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
