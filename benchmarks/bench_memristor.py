"""Speed of memristor programs with their device model, against onnxruntime and BLAS measured in the same run.

Usage: ``python benchmarks/bench_memristor.py [--parts aihwkit,bitlevel,mc,layer] [--model resnet50] [--repeat N]
[--json out.json]``. On the onnx light model (static batch 8, the batch surgery of ``bench_core``; 8 seeded
calibration inputs):

- aihwkit: an aihwkit-like configuration (whole 8-bit weights in one cell pair: ``cell_bits = 8``; the whole input
  at once: ``dac_bits = 8``; one conversion per column pair per MVM: ``rows_per_op = 128``, the crossbar's rows)
  with the default device (ReRAM programming variation, 1 % read noise per cell read, stuck cells): the program
  on a programmed chip (a second run on the same machine: read noise drawn afresh per MVM, the programmed
  conductances kept, as aihwkit's inference tiles keep theirs) vs ``InferenceSession.run`` of the float model.
  Goal: ratio <= 3. The first run on a fresh chip (programming included) is reported beside it;
- bitlevel: the default memristor spec (bit-serial 1-bit inputs, 2-bit cells, differential pairs sensed as one
  signed sum, 128 rows per conversion) with the default device, batch 1: the bit-level multiply-accumulates the
  ``xbar.mvm`` ops simulate (positions x active rows x converted columns x input chunks; a sensed pair counts as
  one column) per second of those ops on a programmed chip, vs the float32 BLAS rate of a matmul of the same
  shape class measured in this run. Goal: ratio >= 0.5;
- mc: one more Monte Carlo chip of the aihwkit-like program (:func:`cimc.montecarlo.run_chip` on a fresh chip
  index: drawing and programming the chip, then the noisy run) vs one noise-free run of the same program (the
  ideal device, on a warm interpreter). Goal: ratio <= 1.5.

A quicker diagnostic, not a goal (``--parts layer``): one ``xbar.mvm`` of a ResNet-50-sized layer (1152 inputs, 128
channels, 6272 positions: a 3x3 convolution of 128 channels at 28x28, batch 8) in the aihwkit-like configuration on
a programmed chip (8-bit cells and inputs, pairs sensed as one, 1 % read noise, ReRAM variation, stuck cells) vs
the float32 matmul of the same product, no compile needed.

Times are medians of ``--repeat`` runs after a warm-up; onnxruntime and numpy's BLAS keep their default threads.
The load average is printed beside the figures: other work on the cores inflates the times.
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

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import light_path, machine, median_times, samples, session, with_batch
from bench_compile import _Timed

import cimc
from cimc.interpreter import Interpreter
from cimc.montecarlo import ChipJob, run_chip, run_seed

GOALS = {"aihwkit_ratio": 3.0, "bit_rate_ratio": 0.5, "mc_chip_ratio": 1.5}
AIHWKIT = {"cell_bits": 8, "dac_bits": 8, "rows_per_op": 128}


def compiled(name: str, spec: dict[str, Any], batch: int) -> tuple[Any, dict[str, np.ndarray]]:
    """The memristor compile of light model ``name`` at ``batch`` (8 seeded calibration inputs) and its inputs."""
    proto = with_batch(onnx.load(light_path(name)), batch) if batch != 1 else onnx.load(light_path(name))
    r = cimc.compile(proto, "memristor", spec=spec, calibration=samples(proto, 8), progress=False)
    r.target.register_ops()
    return r, {r.program.inputs[0].name: samples(proto, batch, seed=1)}


def bench_aihwkit(name: str, repeat: int) -> tuple[dict[str, Any], Any, dict[str, np.ndarray]]:
    """The aihwkit-like program on a programmed chip vs onnxruntime's float run (module docstring)."""
    r, feeds = compiled(name, AIHWKIT, 8)
    proto = with_batch(onnx.load(light_path(name)), 8)
    sess = session(proto.SerializeToString())
    interp = Interpreter(r.program, seed=run_seed(0, 0), machine=r.target.machine(0, 0))
    t = time.perf_counter()
    interp.run(feeds)  # programs the chip
    first = time.perf_counter() - t
    prog_s, ort_s = median_times([partial(interp.run, feeds), partial(sess.run, None, feeds)], repeat)
    return ({"program_s": prog_s, "first_run_s": first, "ort_s": ort_s, "ops": len(r.program.nodes),
             "aihwkit_ratio": prog_s / ort_s}, r, feeds)


def bit_macs(node: Any) -> int:
    """Bit-level MACs one ``xbar.mvm`` simulates: per tile, its share of the positions x active rows x converted
    columns (a sensed pair is one) x input chunks (:func:`cimc.cim.work.work`)."""
    from cimc.cim.work import work

    a, xs = node.attrs, node.inputs[0].type.shape
    P = int(xs[1] * xs[3]) if a["layout"] == "cols" else int(np.prod(xs[:-1]))
    J = -(-a.get("act_bits", 8) // a.get("dac_bits", 1))
    w = work(a["tiles"], a["skip"], a["rows_per_op"], P, J, a.get("sense", "columns"))
    return round(float((w.share * P * J * w.rows * w.conversions / np.maximum(w.passes, 1)).sum()))


def bench_bitlevel(name: str, repeat: int) -> dict[str, Any]:
    """Simulated bit-MAC rate of the noisy bit-serial xbar.mvm ops vs the float32 BLAS rate (module docstring)."""
    r, feeds = compiled(name, {}, 1)
    interp = Interpreter(r.program, seed=run_seed(0, 0), machine=r.target.machine(0, 0))
    total = [0.0]
    # the interpreter's plan holds (node, opdef, attrs, frees); time the xbar.mvm entries only
    interp._plan = [(n, _Timed(o, total) if n.op == "xbar.mvm" else o, *rest) for n, o, *rest in interp._plan]
    macs = sum(bit_macs(n) for n in r.program.nodes if n.op == "xbar.mvm")
    interp.run(feeds)  # warm-up: programs the chip
    times = []
    for _ in range(repeat):
        total[0] = 0.0
        interp.run(feeds)
        times.append(total[0])
    mvm_s = statistics.median(times)
    rng = np.random.default_rng(0)  # the same shape class: [blocks, chunks*positions, rows] @ [blocks, rows, cols]
    a = rng.integers(0, 2, (1, 8 * 3136, 128)).astype(np.float32)
    b = rng.integers(-3, 4, (1, 128, 64)).astype(np.float32)
    blas_s = median_times([partial(np.matmul, a, b)], repeat)[0]
    blas_rate = a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2] / blas_s
    rate = macs / mvm_s
    return {"bit_macs": macs, "mvm_s": mvm_s, "sim_rate": rate, "blas_rate": blas_rate,
            "bit_rate_ratio": rate / blas_rate}


def bench_mc(r: Any, feeds: dict[str, np.ndarray], repeat: int) -> dict[str, Any]:
    """One more Monte Carlo chip vs one noise-free run of the same program (module docstring)."""
    ideal = Interpreter(r.program, seed=0)
    ideal.run(feeds)  # warm-up
    job = ChipJob(r.program, r.target, feeds, 0, r.program.outputs[0].name)
    run_chip(job, 100)  # warm-up of the crossbar path's caches of program constants
    chips = iter(range(1, 1000))
    chip_s, ideal_s = median_times([lambda: run_chip(job, next(chips)), partial(ideal.run, feeds)], repeat)
    return {"chip_s": chip_s, "noise_free_s": ideal_s, "mc_chip_ratio": chip_s / ideal_s}


def bench_layer(repeat: int) -> dict[str, Any]:
    """One aihwkit-like xbar.mvm of a ResNet-50-sized layer vs the float32 matmul of its product (module docstring)."""
    from cimc.cim import Encoding, TileMap
    from cimc.cim.adc import lossless_adc_bits
    from cimc.cim.analog import AnalogDevice, AnalogModel
    from cimc.cim.chip import ChipDraw
    from cimc.cim.machine import DEVICE, load, mvm
    from cimc.cim.ops import MVM_ATTRS
    from cimc.ir.opdef import REQUIRED

    K, N, P, R = 1152, 128, 6272, 128
    rng = np.random.default_rng(0)
    m = rng.integers(-127, 128, (1, K, N))
    enc = Encoding("differential", 8, 8)
    per = R // enc.slices  # weights per crossbar
    table = [[0, k0, min(k0 + R, K), c0, min(c0 + per, N), 0, enc.slices, 0, 0]
             for k0 in range(0, K, R) for c0 in range(0, N, per)]
    for i, t in enumerate(table):
        t[7] = i
    tiles = TileMap("layer", (1, K, N), enc.slices, len(table), (R, R), np.asarray(table))
    x = rng.integers(0, 256, (P, K)).astype(np.uint8)
    dev = AnalogDevice(AnalogModel(read_noise=0.01), ChipDraw(R, R, p_sa0=0.001, p_sa1=0.001, seed=(1, 0)), 256)
    state: dict[str, Any] = {DEVICE: dev}
    load(state, enc.pack(m), {"tiles": tiles, "cell_bits": 8})
    bits = lossless_adc_bits(R, 8, 8) + 1
    attrs = {**{k: v.default for k, v in MVM_ATTRS.items() if v.default is not REQUIRED}, "tiles": tiles,
             "layout": "rows", "channels": N, "significance": enc.significance, "offset": enc.offset,
             "rows_per_op": R, "dac_bits": 8, "act_bits": 8, "cell_bits": 8, "sense": "pairs", "adc_bits": bits,
             "adc_step": np.asarray(1), "adc_offset": np.asarray(-(1 << (bits - 1)))}
    gen = np.random.default_rng(1)
    mvm(state, gen, x, None, attrs)  # programs the chip
    xf, wf = x.astype(np.float32), m[0].astype(np.float32)
    mvm_s, mm_s = median_times([partial(mvm, state, gen, x, None, attrs), partial(np.matmul, xf, wf)], repeat)
    return {"mvm_s": mvm_s, "matmul_s": mm_s, "layer_ratio": mvm_s / mm_s}


def report(res: dict[str, Any]) -> str:
    """The figures with their goals."""
    def goal(key: str, v: float, le: bool = True) -> str:
        ok = v <= GOALS[key] if le else v >= GOALS[key]
        return f"{v:.2f} (goal {'<=' if le else '>='} {GOALS[key]}: {'met' if ok else 'MISSED'})"

    lines, m = [], res["model"]
    if "layer" in res:
        r = res["layer"]
        lines.append(f"aihwkit-like xbar.mvm of a 1152 x 128 layer at 6272 positions (programmed chip): "
                     f"{r['mvm_s']:.4f} s vs float32 matmul {r['matmul_s']:.4f} s: {r['layer_ratio']:.2f}x (no goal)")
    if "aihwkit" in res:
        r = res["aihwkit"]
        lines.append(f"aihwkit-like light_{m} batch 8 with the default device: program on a programmed chip "
                     f"{r['program_s']:.3f} s (first run with programming {r['first_run_s']:.3f} s) vs onnxruntime "
                     f"float {r['ort_s']:.3f} s: ratio {goal('aihwkit_ratio', r['aihwkit_ratio'])}")
    if "bitlevel" in res:
        r = res["bitlevel"]
        lines.append(f"bit-serial, bit-sliced xbar.mvm (light_{m} batch 1, default device): {r['bit_macs'] / 1e9:.2f} "
                     f"G bit-MACs in {r['mvm_s']:.3f} s = {r['sim_rate'] / 1e9:.2f} G/s vs float32 BLAS "
                     f"{r['blas_rate'] / 1e9:.2f} GMAC/s: ratio {goal('bit_rate_ratio', r['bit_rate_ratio'], False)}")
    if "mc" in res:
        r = res["mc"]
        lines.append(f"one more Monte Carlo chip (aihwkit-like, batch 8) {r['chip_s']:.3f} s vs one noise-free run "
                     f"{r['noise_free_s']:.3f} s: ratio {goal('mc_chip_ratio', r['mc_chip_ratio'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the parts asked for, print the figures (and write JSON if asked)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="aihwkit,bitlevel,mc", help="comma-separated: aihwkit, bitlevel, mc, layer")
    ap.add_argument("--model", default="resnet50", help="the light model (default resnet50)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per figure (median reported)")
    ap.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"aihwkit", "bitlevel", "mc", "layer"}
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}; choose from aihwkit, bitlevel, mc, layer")
    name, repeat = args.model.removeprefix("light_"), max(1, args.repeat)
    res: dict[str, Any] = {"model": name}
    load_start = os.getloadavg()[0]
    if "aihwkit" in parts or "mc" in parts:
        print("benchmarking aihwkit ...", file=sys.stderr, flush=True)
        out, r, feeds = bench_aihwkit(name, repeat)
        if "aihwkit" in parts:
            res["aihwkit"] = out
        if "mc" in parts:
            print("benchmarking mc ...", file=sys.stderr, flush=True)
            res["mc"] = bench_mc(r, feeds, repeat)
        del r
        gc.collect()
    if "layer" in parts:
        print("benchmarking layer ...", file=sys.stderr, flush=True)
        res["layer"] = bench_layer(repeat)
    if "bitlevel" in parts:
        print("benchmarking bitlevel ...", file=sys.stderr, flush=True)
        res["bitlevel"] = bench_bitlevel(name, repeat)
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
