"""cimc: compiles ONNX neural networks for compute-in-memory hardware and checks the result by
running it.

The public Python API: :func:`compile` (the compile driver, :mod:`cimc.driver`), ``cimc.ir`` (the
IR), ``cimc.onnx_io`` (ONNX in and out), ``cimc.text`` (the ``.cimir`` format),
``cimc.passmanager`` and ``cimc.passes`` (passes and pipelines), ``cimc.interpreter`` (the
reference interpreter), ``cimc.targets`` (the hardware targets), ``cimc.zoo`` (the bundled
example models).

Importing ``cimc`` defines the built-in ops (:mod:`cimc.ops`), so every graph can be verified and
run. ``cimc.passes``, ``cimc.targets`` and ``cimc.zoo`` live in the repository's ``passes/``,
``targets/`` and ``examples/zoo/`` folders, mapped into the package by ``pyproject.toml``; develop
with an editable install (``pip install -e .``), which maps them the same way.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from cimc import ops  # noqa: F401  (defines the built-in ops)
from cimc.driver import CompiledModel, compile

try:
    __version__ = version("cimc")
except PackageNotFoundError:  # not installed: running from a copy of the source
    __version__ = "0.0.0+unknown"

__all__ = ["CompiledModel", "__version__", "compile"]
