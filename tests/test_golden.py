"""Golden-output tests: every zoo model, quantized (W8A8, W4A8) and compiled (npu, sram-cim, racetrack, the ideal
memristor crossbar; racetrack with seeded shift faults, a seeded noisy memristor with faults), must reproduce the
stored outputs in ``tests/golden/`` exactly.

Integer tensors compare exactly; float outputs compare bit for bit too (``float32`` equality, no
tolerance), because each is a fixed dequantize of integers that compare exactly. See
``tests/golden/README.md``; regenerate with ``python tests/regenerate_golden.py``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from regenerate_golden import COMMAND, PIPELINES, TARGETS, compute, encode_inputs, golden_inputs, path

from cimc import zoo
from cimc.npzio import read_npz

HOW = (f"If the change is intended, regenerate with `{COMMAND}` and review the diff of tests/golden/ "
       f"like code (see tests/golden/README.md).")


@functools.cache
def stored(name: str) -> dict[str, np.ndarray]:
    """The golden arrays of ``name`` as written by the regenerate command."""
    p = path(name)
    if not p.is_file():
        pytest.fail(f"{p} is missing. Create it with `{COMMAND}`.")
    return read_npz(p)


def describe(key: str, want: np.ndarray, got: np.ndarray) -> str:
    """What differs between a stored and a recomputed array, in one line."""
    if want.dtype != got.dtype or want.shape != got.shape:
        return f"{key}: stored {want.dtype}{list(want.shape)}, now {got.dtype}{list(got.shape)}"
    bad = want != got
    i = np.unravel_index(np.argmax(bad), bad.shape)
    diff = np.abs(want.astype(np.float64) - got.astype(np.float64)).max()
    return (f"{key}: {int(bad.sum())} of {bad.size} elements differ (max abs diff {diff:.6g}); "
            f"first at {tuple(int(j) for j in i)}: stored {want[i].item()!r}, now {got[i].item()!r}")


def test_inputs_are_the_zoo_test_images():
    """The fixed input set is still the first images of the zoo's test split."""
    want = read_npz(path("inputs").with_name("inputs.npz"))["x16"]
    assert np.array_equal(want, encode_inputs(golden_inputs())), (
        f"the zoo's digits test split changed, so every golden output is stale. {HOW}")


@functools.cache
def recomputed(name: str) -> dict[str, np.ndarray]:
    """The golden arrays of ``name`` computed now (quantized graphs and compiled programs run afresh)."""
    return compute(name)


@pytest.mark.parametrize("name", zoo.NAMES)
def test_golden(name: str):
    """Recomputed outputs and their integers equal the stored ones, bit for bit."""
    want, got = stored(name), recomputed(name)
    problems = [f"{k}: stored but no longer produced" for k in sorted(want.keys() - got.keys())]
    problems += [f"{k}: produced but not stored" for k in sorted(got.keys() - want.keys())]
    problems += [describe(k, want[k], got[k]) for k in sorted(want.keys() & got.keys())
                 if want[k].dtype != got[k].dtype or not np.array_equal(want[k], got[k])]
    assert not problems, f"golden outputs of zoo model {name!r} changed:\n  " + "\n  ".join(problems) + f"\n{HOW}"


@pytest.mark.parametrize("name", zoo.NAMES)
def test_lossless_executors_match_reference(name: str):
    """With the lossless configurations every target's program, compiled and run now, gives the W8A8
    reference, quantized and run now, exactly (outputs and the integers they are made of)."""
    g = recomputed(name)
    keys = [k for k in g if k.startswith("w8a8/")]
    assert "w8a8" in PIPELINES and keys
    for target in TARGETS:
        for key in keys:
            other = target + key[len("w8a8"):]
            assert other in g, f"{other}: the {target} program has no such output"
            assert g[key].dtype == g[other].dtype and np.array_equal(g[key], g[other]), (
                f"{other} differs from {key}, both computed now")
