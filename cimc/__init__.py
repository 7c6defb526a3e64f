"""cimc: compiles ONNX neural networks for compute-in-memory hardware and checks the result by
running it.

The public Python API: ``cimc.ir`` (the IR), ``cimc.onnx_io`` (ONNX in and out), ``cimc.text``
(the ``.cimir`` format), ``cimc.passmanager`` and ``cimc.passes`` (passes and pipelines),
``cimc.interpreter`` (the reference interpreter).
"""

from __future__ import annotations

__version__ = "0.1.0"
