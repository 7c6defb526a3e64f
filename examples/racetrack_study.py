"""Racetrack figures: shifts, energy and latency per placement, and top-1 against the shift-fault rate.

Usage::

    python examples/racetrack_study.py shifts [--models lenet_bn ... light_resnet50 ...] [--no-check]
                                             [--weight-bits 4] [--quantize-options "weight-rounding=nearest"]
                                             [--placements optimized ...]
    python examples/racetrack_study.py faults [--models resnet_tiny ...] [--rates 1e-6 ... 1e-2]
                                             [--seeds 5] [--guard 8]

``shifts``: every model (default: the zoo and the onnx ``light_*`` models) compiled for racetrack with each
placement (naive, serpentine, optimized; default spec otherwise): shifts per inference (one-domain steps
summed over tracks, ``cost.per_inference.shifts``), energy and latency per inference, and, unless
``--no-check``, whether the program equals the integer reference bit for bit (the zoo's test split; one
seeded random input for a light model). Then per model the ratios optimized / naive and optimized /
serpentine, and their mean over the models (the goal: at most 0.4 and 0.8). Zoo models are calibrated on
the zoo's calibration set; light models (random weights, see ``tests/light_models.py``) on 2 seeded
random inputs, and their fixed batch is 1. ``--weight-bits`` quantizes the weights to that many bits (W4A8
with 4); ``--quantize-options`` adds options of the quantize pass (``weight-rounding=nearest`` skips GPTQ,
which takes minutes per large layer below 8 bits: the placement, and so the shifts, depend on the layers'
shapes and bits, not on the weights' values); ``--placements`` restricts the placements (the ratios need all
three).

``faults``: each model compiled with ``shift_fault_rate`` = each rate, without and with the guard
(``guard_interval``), run on the digits test split with ``--seeds`` seeds (Monte Carlo: each seed draws
other faults): top-1 mean and spread, and what the guard costs per inference (its checks, energy and
latency over the unguarded program).
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import numpy as np

import cimc
from cimc import zoo
from cimc.interpreter import Interpreter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
PLACEMENTS = ("naive", "serpentine", "optimized")


def _light(name: str):
    import onnx
    from light_models import LIGHT, randomize

    return randomize(onnx.load(LIGHT / f"{name}.onnx"))


def _input(model, n: int, seed: int) -> np.ndarray:
    inits = {t.name for t in model.graph.initializer}
    (vi,) = [i for i in model.graph.input if i.name not in inits]
    shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    return np.random.default_rng(seed).standard_normal((n, *shape[1:]), dtype=np.float32)


def compile_model(name: str, weight_bits: int = 8, quantize_options: str = "", **spec) -> cimc.CompiledModel:
    """``name`` (a zoo model or ``light_*``) compiled for racetrack with spec overrides ``spec`` (and more options
    of the quantize pass, ``"weight-rounding=nearest"``)."""
    pipeline = f"fold-constants,fuse-batchnorm,quantize{{weight-bits={weight_bits} act-bits=8 {quantize_options}}}"
    if name.startswith("light_"):
        m = _light(name)
        return cimc.compile(m, target="racetrack", pipeline=pipeline, spec=spec or None, calibration=_input(m, 2, 0),
                            progress=False)
    return cimc.compile(f"zoo:{name}", target="racetrack", pipeline=pipeline, spec=spec or None, progress=False)


def _collect() -> None:
    """Free the programs no longer referenced: a graph's nodes and values refer to each other, so a dropped program,
    its constants and the racetrack executor's caches tied to them (every weight each port reads, the GEMM blocks)
    wait for a full garbage collection, which allocating large numpy arrays does not bring about; over the models
    and placements of a study they add up to many GB."""
    gc.collect()


def exact(c: cimc.CompiledModel, name: str) -> bool:
    """Whether the program gives the quantized graph's outputs bit for bit (test split / a random input)."""
    x = _input(_light(name), 1, 7) if name.startswith("light_") else zoo.test_set()[0]
    feed = {c.program.inputs[0].name: x}
    ours, ref = c.run(feed), Interpreter(c.quantized).run(feed)
    return all(np.array_equal(ours[k], ref[k]) for k in ref)


def shifts_table(models: list[str], check: bool, weight_bits: int = 8, placements=PLACEMENTS,
                 quantize_options: str = "") -> list[str]:
    """The shifts / energy / latency table and the ratios (markdown lines)."""
    lines = ["| model | placement | shifts | energy uJ | latency us | exact |", "|---|---|---|---|---|---|"]
    ratios = []
    for name in models:
        got = {}
        for p in placements:
            c = compile_model(name, weight_bits, quantize_options, placement=p)
            per = c.cost.per_inference
            got[p] = per.events.get("shifts", 0.0)
            ok = ("yes" if exact(c, name) else "NO") if check else "-"
            latency = c.cost.latency_us
            del c
            _collect()
            lines.append(f"| {name} | {p} | {got[p]:.4g} | {per.energy_pj / 1e6:.4g} | {latency:.4g} | {ok} |")
            print(lines[-1], flush=True)
        if set(got) == set(PLACEMENTS):
            ratios.append((name, got["optimized"] / got["naive"], got["optimized"] / got["serpentine"]))
    if not ratios:
        return lines
    lines += ["", "| model | optimized / naive | optimized / serpentine |", "|---|---|---|"]
    lines += [f"| {n} | {a:.4f} | {b:.4f} |" for n, a, b in ratios]
    lines.append(f"| mean | {np.mean([r[1] for r in ratios]):.4f} | {np.mean([r[2] for r in ratios]):.4f} |")
    return lines


def top1(c: cimc.CompiledModel, x: np.ndarray, y: np.ndarray, seed: int = 0) -> float:
    """Top-1 of the program on images ``x`` with labels ``y`` (faults drawn from ``seed``)."""
    (logits,) = c.run({c.program.inputs[0].name: x}, seed=seed).values()
    return float((logits.argmax(1) == y).mean())


def faults_table(models: list[str], rates: list[float], seeds: int, guard: int) -> list[str]:
    """Top-1 against the fault rate, without and with the guard, and the guard's cost (markdown lines)."""
    x, y = zoo.test_set()
    lines = [f"| model | fault rate | top-1 no guard | top-1 guard every {guard} | guard checks | guard energy "
             f"| guard latency |", "|---|---|---|---|---|---|---|"]
    for name in models:
        base = compile_model(name)
        ideal = top1(base, x, y)
        lines.append(f"| {name} | 0 | {ideal:.2%} | {ideal:.2%} | - | - | - |")
        for rate in rates:
            top = []
            for g in (0, guard):
                c = compile_model(name, shift_fault_rate=rate, guard_interval=g)
                acc = [top1(c, x, y, s) for s in range(seeds)]
                top.append(f"{np.mean(acc):.2%} ± {np.std(acc):.2%}")
                per = c.cost.per_inference  # the guarded program's, the last
                del c
                _collect()
            bp = base.cost.per_inference
            lines.append(f"| {name} | {rate:g} | {top[0]} | {top[1]} | {per.events.get('guard_checks', 0):.0f} "
                         f"| +{per.energy_pj / bp.energy_pj - 1:.2%} | +{per.cycles / bp.cycles - 1:.2%} |")
            print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    """Print the chosen table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=("shifts", "faults"))
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--rates", nargs="*", type=float, default=[1e-6, 1e-5, 1e-4, 1e-3, 1e-2])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--guard", type=int, default=8)
    ap.add_argument("--no-check", action="store_true", help="shifts: skip the exactness check")
    ap.add_argument("--weight-bits", type=int, default=8, help="shifts: weight bits of the quantization")
    ap.add_argument("--quantize-options", default="", help="shifts: more options of the quantize pass")
    ap.add_argument("--placements", nargs="*", default=list(PLACEMENTS), choices=PLACEMENTS)
    args = ap.parse_args(argv)
    if args.part == "shifts":
        from light_models import LIGHT

        models = args.models or [*zoo.NAMES, *sorted(p.stem for p in LIGHT.glob("light_*.onnx"))]
        lines = shifts_table(models, not args.no_check, args.weight_bits, tuple(args.placements),
                             args.quantize_options)
    else:
        models = args.models or ["resnet_tiny", "mobilenet_tiny", "hybrid_vit", "mlp", "lenet_bn"]
        lines = faults_table(models, args.rates, args.seeds, args.guard)
    print("\n".join(["", *lines]))


if __name__ == "__main__":
    main()
