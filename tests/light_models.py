"""Helpers shared by the tests that run onnx's light models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
"""Where the onnx package keeps its light models (weights built by ConstantOfShape)."""


def randomize(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """``model`` with each ConstantOfShape weight fill replaced by a seeded random initializer:
    He-scaled normal weights (rank > 1), values in [0.5, 1.5) for per-channel parameters (so
    variances stay positive)."""
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            if len(shape) > 1:
                w = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / np.prod(shape[1:])))
            else:
                w = rng.uniform(0.5, 1.5, shape).astype(np.float32)
            out.graph.initializer.append(numpy_helper.from_array(w, node.output[0]))
        else:
            out.graph.node.append(node)
    return out
