"""Accuracy of every zoo model on the memristor target under its non-idealities: Monte Carlo over chips.

For each zoo model and configuration, ``cimc.compile(..., target="memristor", verify=True, mc=N, seed=S)`` on the
digits test split (450 images, their labels): top-1 over ``N`` chips as mean +- std (p5 .. p95) and the relative
output error against the exact integer program. Configurations (the spec's switches; rows that study one effect
switch the others off):

- ideal: ``ideal = true`` (one run: the ideal crossbar has no chip-to-chip spread);
- default: the default device (ReRAM programming variation of Wan et al. 2022, 1 % read noise, stuck cells at
  0.1 % / 0.1 %);
- 2x noise: the default with ``prog_scale = 2`` and ``read_noise = 0.02`` (faults as default);
- stuck p: stuck cells alone at rate p (1, 2, 5, 10 %), SA0 : SA1 = 5 : 1 (docs/hw-parameters.md §5.4);
- drift t: PCM drift alone (aihwkit's exponents, ``drift = pcm-aihwkit``) at 1 hour, 1 day and 1 year, without
  and with global drift compensation.

Where the chip's cells are fixed before the program runs (stuck cells, programming variation, drift), the default
pipeline places the weights for each chip (``map-errors``); the last two columns are the same chips running the
program compiled without it (``verify.mc_naive``).

Usage: ``python examples/memristor_accuracy.py [--mc 20] [--seed 1] [--models a,b] [--configs c,d] [--workers W]``;
prints a Markdown table. Deterministic: the same arguments give the same table, and each row depends on its model,
configuration, ``--mc`` and ``--seed`` alone (rows computed by separate runs with ``--configs`` are the same rows).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import cimc
from cimc import zoo

QUIET = {"noise": False, "p_sa0": 0.0, "p_sa1": 0.0}
DRIFT = {"prog_scale": 0.0, "read_noise": 0.0, "p_sa0": 0.0, "p_sa1": 0.0, "drift": "pcm-aihwkit"}
HOUR, DAY, YEAR = 3600.0, 86400.0, 3.15576e7
CONFIGS: dict[str, dict] = {
    "ideal": {"ideal": True},
    "default": {},
    "2x noise": {"prog_scale": 2.0, "read_noise": 0.02},
    **{f"stuck {p:g} %": {**QUIET, "p_sa0": p / 100 * 5 / 6, "p_sa1": p / 100 / 6} for p in (1, 2, 5, 10)},
    **{f"drift {name}{' comp.' if comp else ''}": {**DRIFT, "t_inference": t, "drift_compensation": comp}
       for name, t in (("1 h", HOUR), ("1 day", DAY), ("1 year", YEAR)) for comp in (False, True)},
}


def row(model: str, config: str, spec: dict, n: int, seed: int, workers: int | None) -> str:
    """One table row: the compile, verified on the test split, over ``n`` chips (one run when ideal)."""
    r = cimc.compile(f"zoo:{model}", "memristor", spec=spec, verify=True, seed=seed, progress=False,
                     mc=None if spec.get("ideal") else n, workers=None if spec.get("ideal") else workers)
    v = r.verify
    if "mc" not in v:
        return f"| {model} | {config} | {100 * v['top1_program']:.2f} (1 run) | - | 0 | - | - |"
    m, naive = v["mc"], v.get("mc_naive")
    unmapped = (f"{100 * naive['top1_mean']:.2f} +- {100 * naive['top1_std']:.2f} | {naive['rel_error_mean']:.4f}"
                if naive else "- | -")
    return (f"| {model} | {config} | {100 * m['top1_mean']:.2f} +- {100 * m['top1_std']:.2f} | "
            f"{100 * m['top1_p5']:.1f} .. {100 * m['top1_p95']:.1f} | {m['rel_error_mean']:.4f} | {unmapped} |")


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mc", type=int, default=20, help="chips per configuration")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--models", default=",".join(zoo.NAMES))
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help="comma-separated configuration names, as in the table (default: all)")
    ap.add_argument("--workers", type=int, default=None, help="Monte Carlo processes (default min(2, cores))")
    args = ap.parse_args(argv)
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configurations {unknown}; choose from {', '.join(CONFIGS)}")
    logging.basicConfig(level=logging.ERROR)
    load, start = os.getloadavg()[0], time.perf_counter()
    print(f"Top-1 (%) on the digits test split, {args.mc} chips per row (seed {args.seed}); relative error: "
          f"||y - exact|| / ||exact|| of the logits' integers.\n")
    print("| model | configuration | top-1 mean +- std | p5 .. p95 | rel. error | unmapped top-1 | "
          "unmapped rel. error |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for config in configs:
            print(row(model, config, CONFIGS[config], args.mc, args.seed, args.workers), flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s; load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end, "
          f"{os.cpu_count()} cores)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
