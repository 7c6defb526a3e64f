"""Speed of ``cimc.compile`` and of running compiled programs, on onnx's light models.

Usage: ``python benchmarks/bench_compile.py [--parts light,compile,run,lossy] [--models a,b]
[--repeat N] [--json out.json]``. In one run:

- light: every light model (static batch 1) compiled for sram-cim and npu (no verify; calibration:
  2 seeded random inputs), each in a fresh process: compile seconds, program ops, cycles, energy,
  peak RSS of the process; a failure is reported with its error, not raised;
- compile: ``cimc.compile(light_resnet50, "sram-cim")`` (default pipeline, 2 random calibration
  inputs) vs ``onnxruntime.InferenceSession`` creation on the same file. Goal: ratio <= 5;
- run: the sram-cim program of light_resnet50 at batch 8 (the batch-8 surgery of ``bench_core``;
  compiled with 8 calibration inputs, the batch being fixed) with the default lossless ADC, run by
  the reference interpreter, vs ``InferenceSession.run`` of the float batch-8 model. Goal: ratio
  <= 3. The npu program's time is reported beside it (no goal);
- lossy: the sram-cim program of light_resnet50 (batch 1) with a 5-bit ADC (bit-serial, every
  partial sum through the ADC): the bit-level multiply-accumulates the ``sram.mvm`` ops simulate
  (positions x active rows x columns x input chunks, the op's docstring) per second of those ops,
  vs the float32 BLAS rate of a big ``np.matmul`` of the same shape class measured in this run.
  Goal: ratio >= 0.5.

Times are medians of ``--repeat`` runs after a warm-up (compile: ``--compile-repeat``, default 1,
as one compile takes seconds); onnxruntime keeps its default threads.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import LIGHT_MODELS, light_path, machine, median_times, samples, session, with_batch

import cimc
from cimc.interpreter import Interpreter

TARGETS = ("sram-cim", "npu")
GOALS = {"compile_ratio": 5.0, "run_ratio": 3.0, "lossy_rate_ratio": 0.5}
LOSSY_ADC = 5


def compile_light(name: str, target: str, spec: dict[str, Any] | None = None, batch: int = 1,
                  n_calib: int = 2) -> Any:
    """``cimc.compile`` of light model ``name`` (at ``batch``) with seeded random calibration inputs."""
    proto = onnx.load(light_path(name))
    if batch != 1:
        proto = with_batch(proto, batch)
    return cimc.compile(proto if batch != 1 else light_path(name), target=target, spec=spec,
                        calibration=samples(proto, n_calib), progress=False)


def light_probe(name: str, target: str) -> dict[str, Any]:
    """(Fresh process.) Compile one light model for one target: time, ops, cost, peak RSS."""
    t = time.perf_counter()
    try:
        r = compile_light(name, target)
    except Exception as e:  # reported in the table, not raised
        return {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",
                "seconds": time.perf_counter() - t,
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    out = {"ok": True, "seconds": time.perf_counter() - t, "ops": len(r.program.nodes),
           "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if r.cost is not None:
        out.update(cycles=float(r.cost.per_inference.cycles), energy_pj=float(r.cost.per_inference.energy_pj),
                   latency_us=float(r.cost.latency_us))
    return out


def in_subprocess(*args: str) -> dict[str, Any]:
    """Run ``--probe args`` in a fresh Python process and return its JSON answer."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", *args],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"ok": False, "error": f"process failed ({done.returncode}): {done.stderr.strip()[-300:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_light(models: list[str]) -> list[dict[str, Any]]:
    """Every model for both targets, one fresh process each."""
    rows = []
    for name in models:
        for target in TARGETS:
            r = {"model": name, "target": target, **in_subprocess("light", name, target)}
            print(f"  light {name} {target}: " + (f"{r['seconds']:.1f} s" if r["ok"] else r["error"]),
                  file=sys.stderr, flush=True)
            rows.append(r)
    return rows


def bench_compile(repeat: int, compile_repeat: int) -> dict[str, Any]:
    """(a) compile light_resnet50 for sram-cim vs onnxruntime session creation."""
    path = light_path("resnet50")
    session(light_path("squeezenet"))  # warm-up: lazy initialisation is not counted
    compile_light("squeezenet", "sram-cim")
    ts = []
    for _ in range(compile_repeat):
        gc.collect()
        t = time.perf_counter()
        compile_light("resnet50", "sram-cim")
        ts.append(time.perf_counter() - t)
    ort_s = median_times([partial(session, path)], repeat)[0]
    c = statistics.median(ts)
    return {"compile_s": c, "ort_session_s": ort_s, "compile_ratio": c / ort_s}


def bench_run(repeat: int) -> dict[str, Any]:
    """(b) the batch-8 light_resnet50 programs in the interpreter vs onnxruntime on the float model."""
    proto = with_batch(onnx.load(light_path("resnet50")), 8)
    sess = session(proto.SerializeToString())
    x = samples(proto, 8, seed=1)
    out: dict[str, Any] = {}
    for target in TARGETS:
        r = compile_light("resnet50", target, batch=8, n_calib=8)
        r.target.register_ops()
        interp = Interpreter(r.program)
        feeds = {r.program.inputs[0].name: x}
        t_prog, t_ort = median_times([partial(interp.run, feeds), partial(sess.run, None, feeds)], repeat)
        key = target.replace("-", "_")
        out[f"{key}_run_s"], out[f"{key}_ops"] = t_prog, len(r.program.nodes)
        out["ort_run_s"] = min(out.get("ort_run_s", t_ort), t_ort)
        if target == "sram-cim":
            out["sram_cim_adc_lossless"] = bool(r.target.capabilities().adc_lossless)
        del r, interp
        gc.collect()
    out["run_ratio"] = out["sram_cim_run_s"] / out["ort_run_s"]
    out["npu_run_ratio"] = out["npu_run_s"] / out["ort_run_s"]
    return out


class _Timed:
    """Stands in for an op definition in an interpreter plan: times its ``impl``."""

    def __init__(self, opdef: Any, total: list[float]) -> None:
        self.opdef, self.total = opdef, total

    def impl(self, ctx: Any, *operands: Any) -> Any:
        t = time.perf_counter()
        y = self.opdef.impl(ctx, *operands)
        self.total[0] += time.perf_counter() - t
        return y


def bit_macs(node: Any) -> int:
    """Bit-level MACs one ``sram.mvm`` simulates: per tile, its share of the positions x active rows x columns x
    input chunks (:func:`cimc.cim.work.work`)."""
    from cimc.cim.work import work

    a, xs = node.attrs, node.inputs[0].type.shape
    P = int(xs[1] * xs[3]) if a["layout"] == "cols" else int(np.prod(xs[:-1]))
    J = -(-a.get("act_bits", 8) // a.get("dac_bits", 1))
    w = work(a["tiles"], a["skip"], a["rows_per_op"], P, J)
    return round(float((w.share * P * J * w.rows * w.columns).sum()))


def bench_lossy(repeat: int) -> dict[str, Any]:
    """(c) simulated bit-MAC rate of the lossy sram.mvm ops vs the float32 BLAS rate."""
    r = compile_light("resnet50", "sram-cim", spec={"adc_bits": LOSSY_ADC})
    r.target.register_ops()
    interp = Interpreter(r.program)
    total = [0.0]
    # the interpreter's plan holds (node, opdef, attrs, frees); time the sram.mvm entries only
    interp._plan = [(n, _Timed(o, total) if n.op == "sram.mvm" else o, *rest) for n, o, *rest in interp._plan]
    macs = sum(bit_macs(n) for n in r.program.nodes if n.op == "sram.mvm")
    feeds = {r.program.inputs[0].name: samples(r.source.onnx, 1, seed=1)}
    interp.run(feeds)  # warm-up
    times = []
    for _ in range(repeat):
        total[0] = 0.0
        interp.run(feeds)
        times.append(total[0])
    mvm_s = statistics.median(times)
    rng = np.random.default_rng(0)  # the same shape class: [blocks, chunks*positions, rows] @ [blocks, rows, cols]
    a = rng.integers(0, 2, (2, 8 * 3136, 64)).astype(np.float32)
    b = rng.integers(0, 2, (2, 64, 128)).astype(np.float32)
    blas_s = median_times([partial(np.matmul, a, b)], repeat)[0]
    blas_rate = a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2] / blas_s
    rate = macs / mvm_s
    return {"adc_bits": LOSSY_ADC, "bit_macs": macs, "mvm_s": mvm_s, "sim_rate": rate, "blas_rate": blas_rate,
            "lossy_rate_ratio": rate / blas_rate}


def report(res: dict[str, Any]) -> str:
    """Plain-text tables and ratios."""
    lines = []
    if "light" in res:
        lines += ["light models, compile (no verify; 2 random calibration inputs)",
                  f"{'model':<14} {'target':<9} {'s':>7} {'ops':>7} {'Mcycles':>9} {'energy uJ':>10} {'RSS MiB':>8}"]
        for r in res["light"]:
            head = f"{r['model']:<14} {r['target']:<9}"
            if r["ok"]:
                lines.append(f"{head} {r['seconds']:>7.1f} {r['ops']:>7} {r.get('cycles', 0) / 1e6:>9.2f} "
                             f"{r.get('energy_pj', 0) / 1e6:>10.1f} {r['peak_rss'] / 2**20:>8.0f}")
            else:
                lines.append(f"{head} FAILED: {r['error']}")
        lines.append("")

    def goal(key: str, v: float, le: bool = True) -> str:
        ok = v <= GOALS[key] if le else v >= GOALS[key]
        return f"{v:.2f} (goal {'<=' if le else '>='} {GOALS[key]}: {'met' if ok else 'MISSED'})"

    if "compile" in res:
        c = res["compile"]
        lines.append(f"compile light_resnet50 sram-cim {c['compile_s']:.2f} s vs onnxruntime session "
                     f"{c['ort_session_s']:.3f} s: ratio {goal('compile_ratio', c['compile_ratio'])}")
    if "run" in res:
        r = res["run"]
        lines.append(f"run light_resnet50 batch 8: sram-cim program {r['sram_cim_run_s']:.3f} s (lossless ADC: "
                     f"{r['sram_cim_adc_lossless']}), npu program {r['npu_run_s']:.3f} s, onnxruntime "
                     f"{r['ort_run_s']:.3f} s: ratio {goal('run_ratio', r['run_ratio'])}; npu ratio "
                     f"{r['npu_run_ratio']:.2f}")
    if "lossy" in res:
        r = res["lossy"]
        lines.append(f"lossy sram.mvm ({r['adc_bits']}-b ADC, light_resnet50 batch 1): {r['bit_macs'] / 1e9:.1f} G "
                     f"bit-MACs in {r['mvm_s']:.2f} s = {r['sim_rate'] / 1e9:.1f} G/s vs float32 BLAS "
                     f"{r['blas_rate'] / 1e9:.1f} GMAC/s: "
                     f"ratio {goal('lossy_rate_ratio', r['lossy_rate_ratio'], False)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the parts asked for, print the figures (and write JSON if asked)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="light,compile,run,lossy", help="comma-separated: light, compile, run, lossy")
    ap.add_argument("--models", default=",".join(LIGHT_MODELS), help="light models for the light part")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per figure (median reported)")
    ap.add_argument("--compile-repeat", type=int, default=1, help="timed compiles of light_resnet50")
    ap.add_argument("--json", type=Path, help="also write the results here as JSON")
    ap.add_argument("--probe", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.probe:
        print(json.dumps(light_probe(*args.probe[1:])))
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    res: dict[str, Any] = {}
    load_start = os.getloadavg()[0]
    repeat = max(1, args.repeat)
    for part in parts:
        print(f"benchmarking {part} ...", file=sys.stderr, flush=True)
        if part == "light":
            res["light"] = bench_light([m.strip().removeprefix("light_") for m in args.models.split(",") if m.strip()])
        elif part == "compile":
            res["compile"] = bench_compile(repeat, max(1, args.compile_repeat))
        elif part == "run":
            res["run"] = bench_run(repeat)
        elif part == "lossy":
            res["lossy"] = bench_lossy(repeat)
        else:
            ap.error(f"unknown part {part!r}; choose from light, compile, run, lossy")
        gc.collect()
    res["load_average"] = {"start": load_start, "end": os.getloadavg()[0], "cores": os.cpu_count()}
    print(report(res))
    print(f"load average (1 min) at start {load_start:.2f}, at end {res['load_average']['end']:.2f}, on "
          f"{os.cpu_count()} cores: anything well above 0 means other work shared the cores and the times are inflated")
    if args.json:
        args.json.write_text(json.dumps({"date": datetime.now(UTC).isoformat(timespec="seconds"),
                                         "machine": machine(), "goals": GOALS, **res}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
