"""The lossless sram-cim run's exact products: the integer kernel against the float products, alternated.

Usage: ``python benchmarks/bench_exact.py [--repeat N]``. Compiles the batch-8 sram-cim program of
light_resnet50 as ``bench_compile.py --parts run`` does, checks that both paths give the same outputs, then
runs it ``N`` times each way, alternated in one process (the float path: :func:`cimc.cim.igemm.kernel` made to
give ``None``, as on a machine without an exact integer kernel), and prints the least and median CPU seconds
(``time.process_time``: every thread of the process) and wall seconds of each, with the load average at the
start and end. CPU seconds with ``OPENBLAS_NUM_THREADS=1`` move least with other work on the cores.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import light_path, samples, with_batch
from bench_compile import compile_light

from cimc.cim import igemm
from cimc.interpreter import Interpreter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    start = os.getloadavg()[0]
    r = compile_light("resnet50", "sram-cim", batch=8, n_calib=8)
    r.target.register_ops()
    interp = Interpreter(r.program)
    feeds = {r.program.inputs[0].name: samples(with_batch(onnx.load(light_path("resnet50")), 8), 8, seed=1)}
    real = igemm.kernel
    paths = {"integer": real, "float": lambda: None}
    outs = {}
    for name, k in paths.items():  # also the warm-up
        igemm.kernel = k
        outs[name] = interp.run(feeds)
    if real() is None:
        print("this machine has no exact integer kernel: both rows are the float path")
    assert all(np.array_equal(outs["integer"][k], outs["float"][k]) for k in outs["float"]), "the paths differ"
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for _ in range(args.repeat):
        for name, k in paths.items():
            igemm.kernel = k
            gc.collect()
            t, w = time.process_time(), time.perf_counter()
            interp.run(feeds)
            times[name].append((time.process_time() - t, time.perf_counter() - w))
    igemm.kernel = real
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"light_resnet50 batch 8, sram-cim lossless, BLAS threads {threads}, {args.repeat} runs each")
    for name, ts in times.items():
        cpu, wall = sorted(c for c, _ in ts), sorted(w for _, w in ts)
        print(f"  {name:8s} CPU s least {cpu[0]:.3f} median {cpu[len(cpu) // 2]:.3f}   "
              f"wall s least {wall[0]:.3f} median {wall[len(wall) // 2]:.3f}")
    print(f"load average (1 min) at start {start:.2f}, at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
