"""Speed of the ``quantize`` pass against the reference interpreter on light_resnet50.

Usage: ``python benchmarks/bench_quantize.py [--model resnet50] [--samples 8] [--repeat N]
[--options "weight-bits=4"] [--json out.json]``. The light model is imported and put through
``fold-constants,fuse-batchnorm``; then, on copies of that graph, the ``quantize`` pass (defaults:
minmax calibration, W8A8, per channel) calibrated on ``--samples`` seeded random inputs is timed against the reference
interpreter running the same graph on the same inputs (one run per sample: the model's batch is
fixed at 1, as calibration runs it). Calibration is one interpreter run per sample plus the
observers and the rewrite, so the goal is: ratio <= 3. Medians of ``--repeat`` runs after a warm-up.
``--options`` passes quantize options (the goal is for the defaults; with 4-bit weights the default
weight methods add GPTQ's ``O(K^3)`` per layer, measured but without a goal).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import light_path, machine, median_times, samples

from cimc.interpreter import Interpreter
from cimc.onnx_io import load_model
from cimc.passmanager import PassContext, PassManager

GOAL = 3.0


def bench(model: str, n: int, repeat: int, options: str = "") -> dict[str, Any]:
    """Quantize time vs interpreter time on ``n`` samples."""
    graph = load_model(light_path(model))
    PassManager("fold-constants,fuse-batchnorm").run(graph)
    x = samples(onnx.load(light_path(model)), n)
    name = graph.inputs[0].name
    batch = graph.inputs[0].type.shape[0] if isinstance(graph.inputs[0].type.shape[0], int) else n
    interp = Interpreter(graph)

    def reference() -> None:
        for i in range(0, n, batch):
            interp.run({name: x[i:i + batch]})

    def quantize() -> None:
        PassManager(f"quantize{{{options}}}", PassContext(calibration={name: x})).run(graph.copy())

    q_s, ref_s = median_times([quantize, reference], repeat)
    return {"model": model, "samples": n, "options": options, "quantize_s": q_s, "interpreter_s": ref_s,
            "ratio": q_s / ref_s}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the ratio (and write JSON if asked)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--options", default="", help="quantize options, e.g. 'weight-bits=4' (the goal is for none)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    r = bench(args.model.removeprefix("light_"), args.samples, max(1, args.repeat), args.options)
    goal = f"goal <= {GOAL}: {'met' if r['ratio'] <= GOAL else 'MISSED'}" if not args.options else "no goal"
    print(f"quantize{{{args.options}}} light_{r['model']} on {r['samples']} inputs {r['quantize_s']:.2f} s vs "
          f"interpreter {r['interpreter_s']:.2f} s: ratio {r['ratio']:.2f} ({goal}); load average (1 min) "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if args.json:
        args.json.write_text(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"),
                                         "machine": machine(), "goal": GOAL, **r}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
