"""Imperfect chips, many of them: top-1 and output error without and with error-aware mapping (``map-errors``).

Usage: ``python examples/fault_mapping.py [--target sram-cim|memristor] [--models lenet_bn resnet_tiny]
[--stuck 0.01 0.05 0.1] [--variation 1 2 4] [--chips 20] [--spares 2] [--images 450] [--seed 0] [--workers 2]``.

Each configuration is one Monte Carlo run, ``cimc.compile(f"zoo:{model}", target, verify=True, mc=chips)`` on the
zoo's first ``images`` test images with their labels: chip ``i`` is drawn from ``(seed, i)``, and each chip runs
its own program, compiled for it (``map-errors`` places and writes the weights for that chip), beside the same
chip's program compiled without ``map-errors`` (``naive``: the placement ``tile`` gives). Configurations:

- ``stuck p``: stuck cells at rate ``p`` (SA0 : SA1 = 5 : 1, docs/hw-parameters.md §5.4) and nothing else (on
  memristor, ``noise = false``: no programming variation, read noise or drift);
- ``variation k`` (memristor): programming variation alone at ``k`` times the default (``prog_scale = k``; no
  stuck cells, no read noise, which is drawn per read and no placement avoids).

Every array has ``spares`` spare rows (2 of 128: 1.6 % extra cells). Per configuration: the quantized graph's
top-1 (no faults), the naive and the mapped top-1 over the chips as mean (worst chip), the share of the lost
top-1 that ``map-errors`` recovers (``(mapped - naive) / (quantized - naive)``, from the means), and the mean
relative output error ``||y - y_q|| / ||y_q||`` against the quantized graph of each, with its reduction. No
retraining: the same weights throughout. Deterministic: the same arguments print the same table.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

import cimc
from cimc import zoo
from cimc.targets import get_target


def configurations(target: str, stuck: list[float], variation: list[float]) -> list[tuple[str, dict]]:
    """``(name, spec overrides)`` of each configuration (module docstring)."""
    quiet = {"noise": False} if target == "memristor" else {}
    out = [(f"stuck {100 * p:g}%", {**quiet, "p_sa0": p * 5 / 6, "p_sa1": p / 6}) for p in stuck]
    if target == "memristor":
        out += [(f"variation {k:g}x", {"p_sa0": 0.0, "p_sa1": 0.0, "read_noise": 0.0, "prog_scale": k})
                for k in variation]
    return out


def main(argv: list[str] | None = None) -> None:
    """Print the table (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="sram-cim")
    ap.add_argument("--models", nargs="*", default=["lenet_bn", "resnet_tiny"])
    ap.add_argument("--stuck", nargs="*", type=float, default=[0.01, 0.05, 0.1])
    ap.add_argument("--variation", nargs="*", type=float, default=[1.0, 2.0, 4.0])
    ap.add_argument("--chips", type=int, default=20)
    ap.add_argument("--spares", type=int, default=2)
    ap.add_argument("--images", type=int, default=450)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args(argv)
    logging.getLogger("cimc").setLevel(logging.ERROR)
    x, y = zoo.test_set()
    x, y = np.asarray(x[:args.images]), np.asarray(y[:args.images])
    print(f"| model | {args.target} | chips | quantized top-1 | naive top-1 mean (worst) | map-errors top-1 mean "
          f"(worst) | recovered | naive rel. error | map-errors rel. error | error reduction |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        for name, spec in configurations(args.target, args.stuck, args.variation):
            t = get_target(args.target)().with_spec(spare_rows=args.spares, **spec)
            c = cimc.compile(f"zoo:{model}", target=t, verify=True, inputs=x, labels=y, mc=args.chips,
                             workers=args.workers, seed=args.seed, progress=False)
            v = c.verify
            mapped, naive = v["mc"], v.get("mc_naive", v["mc"])
            q = v["top1_quantized"]
            worst = {k: min(ch["top1"] for ch in m["chips"]) for k, m in (("naive", naive), ("mapped", mapped))}
            lost = q - naive["top1_mean"]
            rec = (mapped["top1_mean"] - naive["top1_mean"]) / lost if lost > 0 else float("nan")
            en, em = naive["rel_error_mean"], mapped["rel_error_mean"]
            print(f"| {model} | {name} | {args.chips} | {100 * q:.2f}% | {100 * naive['top1_mean']:.2f}% "
                  f"({100 * worst['naive']:.2f}%) | {100 * mapped['top1_mean']:.2f}% ({100 * worst['mapped']:.2f}%) | "
                  f"{100 * rec:.1f}% | {en:.4f} | {em:.4f} | {f'{en / em:.1f}x' if em > 0 else 'exact'} |",
                  flush=True)


if __name__ == "__main__":
    main()
