"""Shared helpers of the benchmarks: the onnx light models, their data input, seeded samples.

The batch-8 surgery (:func:`with_batch`), session creation and machine description live in
``bench_core.py`` and are re-exported here so every benchmark uses the same ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from bench_core import LIGHT, machine, median_times, session, with_batch  # noqa: E402

__all__ = ["LIGHT", "LIGHT_MODELS", "data_input", "light_path", "machine", "median_times", "samples", "session",
           "with_batch"]

LIGHT_MODELS = tuple(sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx")))
"""The onnx light models (static batch 1, weights built by ConstantOfShape)."""


def light_path(name: str) -> Path:
    """The file of light model ``name`` (with or without the ``light_`` prefix)."""
    return LIGHT / f"light_{name.removeprefix('light_')}.onnx"


def data_input(model: onnx.ModelProto) -> tuple[str, list[int]]:
    """Name and static shape of the model's one data input (graph inputs that are not initializers)."""
    inits = {t.name for t in model.graph.initializer}
    (vi,) = [i for i in model.graph.input if i.name not in inits]
    return vi.name, [d.dim_value for d in vi.type.tensor_type.shape.dim]


def samples(model: onnx.ModelProto, n: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded standard-normal float32 samples of the data input, stacked on axis 0."""
    _, shape = data_input(model)
    return np.random.default_rng(seed).standard_normal((n, *shape[1:]), dtype=np.float32)
