"""CPU seconds of each stage of ``cimc.compile(light_resnet50, TARGET)``: where a compile's time goes.

Usage: ``OPENBLAS_NUM_THREADS=1 python benchmarks/compile_stages.py [--target racetrack] [--repeat 7]``.

Each stage is timed with ``time.process_time`` around it (CPU time moves far less than wall time when other work
shares the cores; one BLAS thread keeps it the compile's own), in whole compiles (default pipeline and spec, 2
seeded random calibration inputs, no verify) after a warm-up compile of light_squeezenet and one of
light_resnet50; the median and the least of ``--repeat`` compiles. Indented rows are parts of the stage above
them; the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import light_path, samples

import cimc
import cimc.cost
import cimc.driver
import cimc.quant.calibrate
import cimc.report
from cimc.passes import get_pass

PASSES = ("fold-constants", "fuse-batchnorm", "quantize", "legalize-convs", "tile", "lower-racetrack",
          "lower-sram-cim", "calibrate-adc")
"""The passes timed (those the default pipelines of racetrack and sram-cim run)."""


def _timed(acc: collections.Counter[str], owner: Any, name: str, label: str) -> None:
    f: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(f)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.process_time()
        try:
            return f(*args, **kwargs)
        finally:
            acc[label] += time.process_time() - t

    setattr(owner, name, timed)


def stages(target: str, repeat: int) -> tuple[dict[str, list[float]], list[float]]:
    """Per stage label, its CPU seconds in each of ``repeat`` compiles; and each compile's CPU seconds."""
    acc: collections.Counter[str] = collections.Counter()
    _timed(acc, cimc.driver, "load_source", "load and import")
    for p in PASSES:
        try:
            _timed(acc, get_pass(p), "run", p)
        except Exception:  # a pass this installation does not have
            continue
    _timed(acc, cimc.quant.calibrate, "calibrate", "  calibration (in quantize)")
    _timed(acc, cimc.cost, "program_cost", "cost report")
    for name in ("check_float_macs", "check_supported", "check_lowered", "_mapping", "placement"):
        _timed(acc, cimc.driver, name, "driver checks, mapping, placement")
    _timed(acc, cimc.report, "build_report", "report")
    path = light_path("resnet50")
    proto = onnx.load(path)
    small = light_path("squeezenet")
    cimc.compile(small, target=target, calibration=samples(onnx.load(small), 2), progress=False)
    cimc.compile(path, target=target, calibration=samples(proto, 2), progress=False)
    rows: dict[str, list[float]] = collections.defaultdict(list)
    total = []
    for _ in range(repeat):
        acc.clear()
        gc.collect()
        t = time.process_time()
        cimc.compile(path, target=target, calibration=samples(proto, 2), progress=False)
        total.append(time.process_time() - t)
        for k, v in acc.items():
            rows[k].append(v)
    return rows, total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="racetrack")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    load0 = os.getloadavg()[0]
    rows, total = stages(args.target, max(1, args.repeat))
    print(f"light_resnet50 on {args.target}: CPU s per stage, median (least) of {args.repeat} compiles, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    for k, v in rows.items():
        print(f"{k:36s} {statistics.median(v):.4f} ({min(v):.4f})")
    print(f"{'whole compile':36s} {statistics.median(total):.4f} ({min(total):.4f})")
    print(f"load average (1 min) {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end, on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
