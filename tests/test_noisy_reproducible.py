"""A seeded noisy memristor run is the same bits whatever BLAS kernel, BLAS thread count or numpy SIMD kernel computes
it: its analog column sums are exact by construction (cells on a fine grid, each op's sums proven below float32's or
float64's integer range: ``cimc.cim.machine.exact_sum_dtype``) and its read noise and drift use correctly rounded
operations only (``cimc.cim.gauss``, ``cimc.cim.fmath``).

Each configuration runs in a child process (OpenBLAS and numpy read these variables when they load), in an empty
folder so that the installed package is imported, not the checkout's ``cimc/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from cimc.cim.machine import exact_sum_dtype
from cimc.errors import CimcError

CHILD = """
import hashlib
import numpy as np
import cimc
from cimc import zoo
from cimc.cim.gauss import normals
from cimc.cim.noise import drift_exponent, drift_factor
from cimc.interpreter import Interpreter

out = []
z = normals((3, 4), 5, 7, np.empty(300_000, np.float32))
out.append(hashlib.sha256(z.tobytes()).hexdigest())
g = np.linspace(0.5, 40, 100_000, dtype=np.float32)
nu = drift_exponent("pcm-aihwkit", g, 40.0, z[:100_000])
out.append(hashlib.sha256(nu.tobytes() + drift_factor(nu, 86400.0, 20.0).tobytes()).hexdigest())
m = zoo.load("mlp")
c = cimc.compile("zoo:mlp", target="memristor", spec={"p_sa0": 0.01, "p_sa1": 0.002}, seed=1)
c.target.register_ops()
y = Interpreter(c.program, seed=1, machine=c.target.machine(1)).run({m.input_name: np.array(zoo.test_set()[0][:32])})
out.append(hashlib.sha256(b"".join(np.asarray(y[k]).tobytes() for k in sorted(y))).hexdigest())
print(" ".join(out))
"""


def cpu_features() -> tuple[list[str], list[str], set[str]]:
    """numpy's dispatched SIMD features this CPU has, those of them at the AVX-512 level (names as the installed
    numpy spells them), and every CPU feature numpy found (``AVX2``, ``FMA3``, ``AVX512F``, ...)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    found = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    avx512 = [f for f in found if f.startswith("AVX512") or f == "X86_V4"]
    return found, avx512, {k for k, v in __cpu_features__.items() if v}


def openblas_kernels(cpu: set[str]) -> dict[str, dict[str, str]]:
    """OpenBLAS kernel sets to force (``OPENBLAS_CORETYPE``), with thread counts: Prescott (SSE3) always, and
    Sandybridge (AVX), Haswell (AVX2, FMA) and SkylakeX (AVX-512) where the CPU has what they need; a kernel set the
    CPU lacks dies of an illegal instruction."""
    configs = {"OpenBLAS Prescott, 2 threads": {"OPENBLAS_CORETYPE": "Prescott", "OPENBLAS_NUM_THREADS": "2"}}
    for core, needs, threads in (("Sandybridge", {"AVX"}, "1"), ("Haswell", {"AVX2", "FMA3"}, "1"),
                                 ("SkylakeX", {"AVX512F", "AVX512BW", "AVX512DQ", "AVX512VL", "AVX512CD"}, "2")):
        if needs <= cpu:
            configs[f"OpenBLAS {core}, {threads} thread(s)"] = {"OPENBLAS_CORETYPE": core,
                                                                "OPENBLAS_NUM_THREADS": threads}
    return configs


def test_openblas_kernels_are_those_the_cpu_can_run():
    assert list(openblas_kernels({"SSE3"})) == ["OpenBLAS Prescott, 2 threads"]
    avx2 = openblas_kernels({"AVX", "AVX2", "FMA3"})
    assert [c["OPENBLAS_CORETYPE"] for c in avx2.values()] == ["Prescott", "Sandybridge", "Haswell"]
    assert "SkylakeX" in str(openblas_kernels({"AVX", "AVX2", "FMA3", "AVX512F", "AVX512BW", "AVX512DQ", "AVX512VL",
                                               "AVX512CD"}))


def child(tmp_path, **env: str) -> str:
    run = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1", **env})
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.strip()


def test_noisy_runs_are_the_same_bits_on_any_blas_and_simd_kernel(tmp_path):
    found, avx512, cpu = cpu_features()
    configs = openblas_kernels(cpu)
    if avx512:
        configs["numpy without AVX-512"] = {"NPY_DISABLE_CPU_FEATURES": " ".join(avx512)}
    if found:
        configs["numpy's baseline kernels"] = {"NPY_DISABLE_CPU_FEATURES": " ".join(found)}
    got = {name: child(tmp_path, **env) for name, env in configs.items()}
    first = next(iter(got.values()))
    assert len(first.split()) == 3
    assert all(v == first for v in got.values()), "\n".join(f"{k}: {v}" for k, v in got.items())


def exact_sums(cells: np.ndarray, x: np.ndarray) -> list[Fraction]:
    return [sum((Fraction(int(a)) * Fraction(float(b)) for a, b in zip(x, col, strict=True)), Fraction(0))
            for col in cells[0].T]


@pytest.mark.parametrize("grid", [0, 3, 14])
def test_exact_sum_dtype_is_float32_exactly_while_the_sums_fit_it(grid):
    rows = 64
    unit = 2.0 ** -grid
    # the largest column sum of inputs up to 255 is 255 * rows * top units: just below and at 2**24
    for top, want in (((1 << 24) - 1) // (255 * rows), np.float32), (-(-(1 << 24) // (255 * rows)), np.float64):
        cells = np.full((1, rows, 3), top * unit)
        cells[0, ::2, 1] = -(top - 1) * unit
        cells[0, 5, 2] = unit
        assert exact_sum_dtype(cells, np.full(3, grid), 255) == want, (grid, top)
        dt = exact_sum_dtype(cells, np.full(3, grid), 255)
        x = np.random.default_rng(grid).integers(0, 256, rows)
        x[:4] = 255
        got = x.astype(dt) @ cells[0].astype(dt)
        assert [Fraction(float(v)) for v in got] == exact_sums(cells, x)
    with pytest.raises(CimcError, match="off the grid"):
        exact_sum_dtype(np.full((1, 2, 1), unit / 2), np.full(1, grid), 1)
