"""Top-1 of every zoo model on sram-cim with lossy ADCs, with and without ADC range calibration.

Usage: ``python examples/adc_calibration.py [--models lenet_bn mlp] [--bits 5 4] [--method mse]``.

Each model is compiled for sram-cim (``cimc.compile("zoo:NAME", target="sram-cim", spec={"adc_bits": b})``)
at the lossless resolution and at each ``--bits``, once with the worst-case ADC ranges
(``calibrate-adc{method=none}``) and once with the default pipeline's calibration (``calibrate-adc``,
the zoo's calibration set; ``--method``/``--granularity`` change it), and run on the zoo's test split.
One row per (model, bits): top-1 of the program with each, and the points below lossless.
"""

from __future__ import annotations

import argparse

import cimc
from cimc import zoo
from cimc.targets import get_target


def top1(model: str, bits: int, calibrate: str) -> float:
    """Top-1 on the zoo test split of ``model`` compiled for sram-cim with ``bits``-bit ADCs."""
    target = get_target("sram-cim")().with_spec(adc_bits=bits)
    front = target.default_pipeline() + f",lower-sram-cim,calibrate-adc{{{calibrate}}}"
    c = cimc.compile(f"zoo:{model}", target=target, pipeline=front, verify=True, progress=False)
    return float(c.verify["top1_program"])


def main(argv: list[str] | None = None) -> None:
    """Print the table (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=list(zoo.NAMES))
    ap.add_argument("--bits", nargs="*", type=int, default=[5, 4])
    ap.add_argument("--method", default="mse")
    ap.add_argument("--granularity", default="column-group")
    args = ap.parse_args(argv)
    lossless = get_target("sram-cim")().capabilities().lossless_adc_bits()
    print("| model | lossless top-1 | ADC bits | worst-case ranges | calibrated | calibrated vs lossless (points) |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        base = top1(model, lossless, "method=none")
        for b in args.bits:
            naive = top1(model, b, "method=none")
            cal = top1(model, b, f"method={args.method} granularity={args.granularity}")
            print(f"| {model} | {100 * base:.2f}% | {b} | {100 * naive:.2f}% | {100 * cal:.2f}% | "
                  f"{100 * (cal - base):+.2f} |", flush=True)


if __name__ == "__main__":
    main()
