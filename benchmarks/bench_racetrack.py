"""Speed of the racetrack target on light_resnet50, against onnxruntime in the same run.

Usage: ``python benchmarks/bench_racetrack.py [--repeat N] [--compile-repeat N] [--json out.json]``.

- compile: ``cimc.compile(light_resnet50, "racetrack")`` (default pipeline and spec, 2 seeded random
  calibration inputs) vs ``onnxruntime.InferenceSession`` creation on the same file. Goal: ratio <= 10.
- run: the racetrack program of light_resnet50 at batch 8 (the batch-8 surgery of ``bench_core``,
  compiled with 8 calibration inputs, no shift faults) in the reference interpreter vs
  ``InferenceSession.run`` of the float batch-8 model. Goal: ratio <= 5.

Times are medians of ``--repeat`` runs after a warm-up (compile: ``--compile-repeat``). The load average
is printed beside the figures: other work on the two cores inflates them. Both runtimes get the same threads:
onnxruntime as many intra-op threads as ``OPENBLAS_NUM_THREADS`` gives numpy's BLAS (unset: each its
default, one per core). On a busy machine, ``OPENBLAS_NUM_THREADS=1`` gives both one thread: a BLAS call
waiting for a second thread that another process holds then no longer stalls, and the ratio stays a
comparison of the two runtimes rather than of their thread pools under contention.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import light_path, machine, median_times, samples, session, with_batch

import cimc
from cimc.interpreter import Interpreter

GOALS = {"compile_ratio": 10.0, "run_ratio": 5.0}
THREADS = int(os.environ.get("OPENBLAS_NUM_THREADS") or 0)
"""onnxruntime's intra-op threads: numpy's BLAS threads when set (0: onnxruntime's default)."""


def _compile(proto_or_path: Any, proto: onnx.ModelProto, n_calib: int) -> cimc.CompiledModel:
    return cimc.compile(proto_or_path, target="racetrack", calibration=samples(proto, n_calib), progress=False)


def bench_compile(repeat: int, compile_repeat: int) -> dict[str, Any]:
    """Compile light_resnet50 for racetrack vs onnxruntime session creation."""
    path = light_path("resnet50")
    proto = onnx.load(path)
    session(light_path("squeezenet"), THREADS)  # warm-up: lazy initialisation is not counted
    _compile(light_path("squeezenet"), onnx.load(light_path("squeezenet")), 2)
    ts = []
    for _ in range(compile_repeat):
        gc.collect()
        t = time.perf_counter()
        c = _compile(path, proto, 2)
        ts.append(time.perf_counter() - t)
    ort_s = median_times([partial(session, path, THREADS)], repeat)[0]
    s = statistics.median(ts)
    return {"compile_s": s, "ort_session_s": ort_s, "compile_ratio": s / ort_s, "ops": len(c.program.nodes),
            "lowering_s": next(p["seconds"] for p in c.timings["passes"] if p["pass"] == "lower-racetrack")}


def bench_run(repeat: int) -> dict[str, Any]:
    """The batch-8 program in the interpreter vs onnxruntime on the float model."""
    proto = with_batch(onnx.load(light_path("resnet50")), 8)
    sess = session(proto.SerializeToString(), THREADS)
    x = samples(proto, 8, seed=1)
    c = _compile(proto, proto, 8)
    c.target.register_ops()
    interp = Interpreter(c.program)
    feeds = {c.program.inputs[0].name: x}
    t_prog, t_ort = median_times([partial(interp.run, feeds), partial(sess.run, None, feeds)], repeat)
    return {"run_s": t_prog, "ort_run_s": t_ort, "run_ratio": t_prog / t_ort, "ops": len(c.program.nodes)}


def main(argv: list[str] | None = None) -> int:
    """Run both parts, print the figures and the load average (and write JSON if asked)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per figure (median reported)")
    ap.add_argument("--compile-repeat", type=int, default=3, help="timed compiles of light_resnet50")
    ap.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    load_start = os.getloadavg()[0]
    res = {"compile": bench_compile(max(1, args.repeat), max(1, args.compile_repeat))}
    gc.collect()
    res["run"] = bench_run(max(1, args.repeat))
    load_end = os.getloadavg()[0]

    def goal(key: str, v: float) -> str:
        return f"{v:.2f} (goal <= {GOALS[key]}: {'met' if v <= GOALS[key] else 'MISSED'})"

    c, r = res["compile"], res["run"]
    print(f"compile light_resnet50 racetrack {c['compile_s']:.2f} s ({c['ops']} ops, lower-racetrack "
          f"{c['lowering_s']:.2f} s) vs onnxruntime session {c['ort_session_s']:.3f} s: ratio "
          f"{goal('compile_ratio', c['compile_ratio'])}")
    print(f"run light_resnet50 batch 8: racetrack program {r['run_s']:.3f} s vs onnxruntime {r['ort_run_s']:.3f} s: "
          f"ratio {goal('run_ratio', r['run_ratio'])}")
    print(f"load average (1 min) at start {load_start:.2f}, at end {load_end:.2f}, on {os.cpu_count()} cores: "
          f"anything well above 0 means other work shared the cores and the times are inflated; threads: "
          f"{THREADS or 'default'} (BLAS and onnxruntime)")
    if args.json:
        args.json.write_text(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"),
                                         "machine": machine(), "goals": GOALS, "threads": THREADS,
                                         "load_average": [load_start, load_end],
                                         **res}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
