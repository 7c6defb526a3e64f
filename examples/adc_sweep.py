"""What an ADC-resolution sweep costs and buys on sram-cim: energy, latency, area and top-1 per ``adc_bits``.

Usage: ``python examples/adc_sweep.py [--models lenet_bn resnet_tiny] [--bits 3 4 5 6 7 8] [--no-verify]``.

For each zoo model and each ``adc_bits``, the model is compiled for sram-cim with that ADC
(``cimc.compile(..., spec={"adc_bits": b})``) and, unless ``--no-verify``, run on the zoo's test split
(top-1 of the program, the lossy ADC included). One row per (model, bits): per-inference energy,
latency, energy per MAC, TOPS/W, the ADC's share of the energy, total and ADC area, and the one-time
programming energy, reported apart (a model that fits the macros programs them once; a larger one
reloads them per inference, and the reload column says how much of the per-inference energy that is).

Then the calibration check: one layer that fills the macros (a 128 x 16 fully connected layer of
8-b weights on 8-b inputs: 128 rows in two full 64-row blocks, 16 channels x 8 slices = 128 columns)
gives the macro's energy per 8b x 8b MAC (cells, word-line DACs, ADCs, shift-add: what a macro paper
measures) and all-in (with buffers, interconnect and the vector unit), compared with the published
macros the spec's defaults cite (docs/hw-parameters.md §2.1, §2.3, §6): NeuroSim's SRAM 22 nm, 64 rows,
4-b ADC, 17.13 TOPS/W, and Wang et al. (VLSI 2022) 8b/8b at 22 nm, 16.4 TOPS/W at 1.0 V.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import cimc

PUBLISHED = (("NeuroSim V1.4 SRAM 22 nm, 64 rows, 4-b ADC (Table VII)", 17.13),
             ("Wang et al., VLSI 2022, 22 nm 8b x 8b at 1.0 V", 16.4),
             ("Wang et al., VLSI 2022, 22 nm 8b x 8b at 0.7 V", 32.2))
MACRO = ("arrays", "dac", "adc", "shift_add")
"""The components a macro measurement covers."""


def sweep(models: list[str], bits: list[int], verify: bool) -> list[dict]:
    """One row per (model, adc_bits)."""
    rows = []
    for model in models:
        for b in bits:
            c = cimc.compile(f"zoo:{model}", target="sram-cim", spec={"adc_bits": b}, verify=verify, progress=False)
            d = c.cost.to_dict()
            per, one, area = d["per_inference"], d["one_time"], d["area_mm2"]
            comp = per["energy_nj_by_component"]
            rows.append({"model": model, "adc_bits": b, "lossless": c.target.capabilities().adc_lossless,
                         "energy_nj": per["energy_nj"], "latency_us": per["latency_us"],
                         "fj_per_mac": per["energy_fj_per_mac"], "tops_per_w": per["tops_per_w"],
                         "adc_share": comp.get("adc", 0.0) / per["energy_nj"],
                         "reload_nj": per["weight_reloads"]["energy_nj"], "one_time_nj": one["energy_nj"],
                         "area_mm2": area["total"], "adc_area_mm2": area["by_component"]["adc"],
                         "top1": c.verify["top1_program"] if c.verify else None})
    return rows


def _full_layer() -> object:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, 128)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], "full_macro",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 128])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def macro_check(bits: list[int]) -> list[dict]:
    """Energy per 8b x 8b MAC of a layer that fills a macro, per ADC resolution."""
    x = np.abs(np.random.default_rng(1).normal(size=(64, 128))).astype(np.float32)
    out = []
    for b in bits:
        c = cimc.compile(_full_layer(), target="sram-cim", spec={"adc_bits": b}, calibration=x, progress=False)
        layer = {l["name"]: l for l in c.cost.to_dict()["per_inference"]["layers"]}["fc"]
        comp, macs = layer["energy_nj_by_component"], layer["macs"]
        macro = 1e6 * sum(comp.get(k, 0.0) for k in MACRO) / macs
        out.append({"adc_bits": b, "macs": macs, "macro_fj_per_mac": macro, "macro_tops_per_w": 2000 / macro,
                    "all_in_fj_per_mac": 1e6 * layer["energy_nj"] / macs,
                    "all_in_tops_per_w": 2000 / (1e6 * layer["energy_nj"] / macs)})
    return out


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = [h for _, h, _ in cols]
    body = [[("-" if r[k] is None else format(r[k], f)) for k, _, f in cols] for r in rows]
    w = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    line = lambda cells: "  ".join(c.rjust(n) for c, n in zip(cells, w, strict=True))  # noqa: E731
    return "\n".join([line(head), line(["-" * n for n in w]), *map(line, body)])


def main(argv: list[str] | None = None) -> int:
    """Print the sweep table and the calibration check."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["lenet_bn", "resnet_tiny"])
    ap.add_argument("--bits", nargs="+", type=int, default=[3, 4, 5, 6, 7, 8])
    ap.add_argument("--no-verify", action="store_true", help="skip the top-1 runs (cost only)")
    args = ap.parse_args(argv)
    rows = sweep(args.models, args.bits, not args.no_verify)
    print("sram-cim (default spec: 16 macros of 128 x 128, 64 rows per op, 1-b inputs, 8 columns per ADC), "
          "per inference = one sample")
    print(_table(rows, [("model", "model", "s"), ("adc_bits", "ADC b", "d"), ("lossless", "lossless", ""),
                        ("energy_nj", "energy nJ", ".2f"), ("latency_us", "latency us", ".2f"),
                        ("fj_per_mac", "fJ/MAC", ".1f"), ("tops_per_w", "TOPS/W", ".2f"),
                        ("adc_share", "ADC share", ".1%"), ("reload_nj", "reload nJ", ".1f"),
                        ("area_mm2", "area mm2", ".4f"), ("adc_area_mm2", "ADC mm2", ".4f"),
                        ("one_time_nj", "one-time nJ", ".1f"), ("top1", "top-1", ".2%")]))
    print("\nthe macro at full utilisation (a 128 x 16 layer: 2 full 64-row blocks x 128 columns), "
          "8b x 8b MACs")
    print(_table(macro_check(args.bits), [("adc_bits", "ADC b", "d"), ("macro_fj_per_mac", "macro fJ/MAC", ".1f"),
                                          ("macro_tops_per_w", "macro TOPS/W", ".2f"),
                                          ("all_in_fj_per_mac", "all-in fJ/MAC", ".1f"),
                                          ("all_in_tops_per_w", "all-in TOPS/W", ".2f")]))
    print("published: " + "; ".join(f"{name}: {t} TOPS/W = {2000 / t:.1f} fJ/MAC" for name, t in PUBLISHED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
