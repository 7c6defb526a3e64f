"""onnxruntime as the oracle: runs an ONNX model (file or proto) on named inputs."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import onnx

from cimc.errors import InputError

__all__ = ["run_onnxruntime"]


def run_onnxruntime(model: onnx.ModelProto | str | os.PathLike[str],
                    inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of onnxruntime (CPU) for ``inputs``, by graph output name."""
    import onnxruntime as ort

    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    ort.set_default_logger_severity(3)  # its warnings would print before cimc's own lines
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise InputError(f"onnxruntime cannot load the model: {e}") from None
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(inputs)), strict=True))
