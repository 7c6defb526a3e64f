"""Stuck cells over many chips: top-1 and output error with the placement ``tile`` gives vs ``map-errors``.

Usage: ``python examples/fault_mapping.py [--models lenet_bn resnet_tiny] [--rates 0.01 0.05 0.1] [--chips 20]
[--spares 2] [--images 450] [--target sram-cim]``.

For each model, stuck-at rate ``p`` (SA0 : SA1 = 5 : 1, docs/hw-parameters.md §5.4) and chip ``i < chips``, the
model is compiled for a chip of that target with ``p_sa0``, ``p_sa1`` and ``spare_rows`` spare rows per array
(2 of 128: 1.6 % extra cells) drawn with seed ``i``, once without error-aware placement (the target's pipeline
without ``map-errors``) and once with it (the default pipeline on a faulty chip), and each program is run on that
chip on the zoo's test images. Per (model, rate): the quantized graph's top-1 (no faults), the mean and the worst
top-1 of each over the chips, the share of the lost top-1 that ``map-errors`` recovers (``(mapped - naive) /
(quantized - naive)``, from the means), and the mean relative output error ``||y - y_q|| / ||y_q||`` of each
against the quantized graph's outputs, with its reduction factor. No retraining: the same weights throughout.
"""

from __future__ import annotations

import argparse

import numpy as np

import cimc
from cimc import zoo
from cimc.interpreter import run
from cimc.targets import get_target


def measure(model: str, target: str, rate: float, seed: int, spares: int, images: int, mapped: bool
            ) -> tuple[float, float, float]:
    """``(top-1 of the program, top-1 of the quantized graph, relative output error)`` on chip ``seed``."""
    t = get_target(target)().with_spec(p_sa0=rate * 5 / 6, p_sa1=rate / 6, spare_rows=spares)
    pipe = t.default_pipeline()
    if not mapped:
        pipe = pipe.replace(",map-errors", "")
    c = cimc.compile(f"zoo:{model}", target=t, pipeline=pipe, seed=seed, progress=False)
    x, y = zoo.test_set()
    inputs = {zoo.load(model).input_name: np.array(x[:images])}
    out = next(iter(c.run(inputs).values()))
    ref = next(iter(run(c.quantized, inputs).values()))
    err = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))
    return float((out.argmax(-1) == y[:images]).mean()), float((ref.argmax(-1) == y[:images]).mean()), err


def main(argv: list[str] | None = None) -> None:
    """Print the table (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=["lenet_bn", "resnet_tiny"])
    ap.add_argument("--rates", nargs="*", type=float, default=[0.01, 0.05, 0.1])
    ap.add_argument("--chips", type=int, default=20)
    ap.add_argument("--spares", type=int, default=2)
    ap.add_argument("--images", type=int, default=450)
    ap.add_argument("--target", default="sram-cim")
    args = ap.parse_args(argv)
    print("| model | stuck | chips | quantized top-1 | naive top-1 mean (worst) | map-errors top-1 mean (worst) | "
          "recovered | naive rel. error | map-errors rel. error | error reduction |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        for rate in args.rates:
            rows = {m: [measure(model, args.target, rate, i, args.spares, args.images, m) for i in range(args.chips)]
                    for m in (False, True)}
            q = rows[False][0][1]
            naive, mapped = (np.asarray([r[0] for r in rows[m]]) for m in (False, True))
            en, em = (np.mean([r[2] for r in rows[m]]) for m in (False, True))
            lost = q - naive.mean()
            rec = (mapped.mean() - naive.mean()) / lost if lost > 0 else float("nan")
            print(f"| {model} | {100 * rate:g}% | {args.chips} | {100 * q:.2f}% | {100 * naive.mean():.2f}% "
                  f"({100 * naive.min():.2f}%) | {100 * mapped.mean():.2f}% ({100 * mapped.min():.2f}%) | "
                  f"{100 * rec:.1f}% | {en:.4f} | {em:.4f} | {f'{en / em:.1f}x' if em > 0 else 'exact'} |", flush=True)


if __name__ == "__main__":
    main()
