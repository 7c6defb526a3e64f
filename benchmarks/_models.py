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
           "with_batch", "with_random_weights"]

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


def with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """``model`` with every Conv/Gemm/MatMul weight that a ConstantOfShape builds (the light models' weights are
    one constant each) replaced by seeded He-normal values of its shape, as a trained model's differ from one
    another: work that is shared between tiles of equal weights is not shared there."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    weights = {n.input[1] for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1}
    rng = np.random.default_rng(seed)
    keep = []
    for n in g.node:
        if n.op_type == "ConstantOfShape" and n.output[0] in weights and n.input[0] in inits:
            shape = [int(d) for d in inits[n.input[0]]]
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            w = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
            g.initializer.append(onnx.numpy_helper.from_array(w, n.output[0]))
            if out.ir_version < 4:  # initializers were graph inputs too before IR 4
                g.input.append(onnx.helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, shape))
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    dead = {t.name for t in g.initializer if t.name not in used}  # the replaced nodes' shape constants
    kept_inits = [t for t in g.initializer if t.name not in dead]
    kept_inputs = [i for i in g.input if i.name not in dead]
    del g.initializer[:], g.input[:]
    g.initializer.extend(kept_inits)
    g.input.extend(kept_inputs)
    return out
