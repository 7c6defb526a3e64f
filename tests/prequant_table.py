"""The agreement table of pre-quantized zoo models: ``python tests/prequant_table.py [N]``.

Every zoo model quantized by onnxruntime's ``quantize_static`` (QDQ and QOperator, per tensor and per
channel, the zoo calibration set), compiled for every target with ``--verify`` on the first ``N`` (default
all 450) test images: exactness against the integer reference, onnxruntime agreement in integers (all
quantized values, and those the outputs read), top-1 of the program and of onnxruntime on the labels, and
the weight layers left off the arrays.
"""

from __future__ import annotations

import sys

from test_prequant import TARGETS, _weight_layers_in_float, ort_quantized

from cimc import zoo
from cimc.driver import compile


def main(n: int) -> None:
    print("| model | form | weights | target | exact | equal (all) | max LSB | equal (outputs) | max LSB (outputs) "
          "| top-1 program | top-1 onnxruntime | weight layers off the arrays |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in zoo.NAMES:
        m = zoo.load(name)
        for fmt in ("QDQ", "QOperator"):
            for per_channel in (False, True):
                model = ort_quantized(name, fmt, per_channel)
                for target in TARGETS:
                    c = compile(model, target, verify=True, inputs=m.x_test[:n], labels=m.y_test[:n])
                    v, a = c.report["verify"], c.report["verify"]["onnxruntime_agreement"]
                    off = ", ".join(_weight_layers_in_float(c.program)) or "none"
                    print(f"| {name} | {fmt} | {'per channel' if per_channel else 'per tensor'} | {target} | "
                          f"{'yes' if v['reference_exact'] else 'NO'} | {100 * a['equal']:.4f}% | {a['max_lsb']} | "
                          f"{100 * a['outputs_equal']:.4f}% | {a['outputs_max_lsb']} | {100 * v['top1_program']:.2f}% "
                          f"| {100 * v['top1_float']:.2f}% | {off} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 450)
