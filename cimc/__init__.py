"""cimc: compiles ONNX neural networks for compute-in-memory hardware and checks the result by
running it.

The public Python API: ``cimc.ir`` (the IR), ``cimc.onnx_io`` (ONNX in and out), ``cimc.text``
(the ``.cimir`` format), ``cimc.passmanager`` and ``cimc.passes`` (passes and pipelines),
``cimc.interpreter`` (the reference interpreter), ``cimc.zoo`` (the bundled example models).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

_SOURCE_TREE_PACKAGES = {"cimc.passes": "passes", "cimc.targets": "targets", "cimc.zoo": "examples/zoo"}
"""pyproject's package-dir mapping, repeated for running from a source checkout."""


class _SourceTreeFinder(importlib.abc.MetaPathFinder):
    """Finds ``cimc.passes``, ``cimc.targets`` and ``cimc.zoo`` beside ``cimc/`` in a checkout, as
    the installed package maps them (an installed cimc never needs this)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        folder = _SOURCE_TREE_PACKAGES.get(name)
        if folder is None or not (self.root / folder / "__init__.py").is_file():
            return None
        where = self.root / folder
        return importlib.util.spec_from_file_location(name, where / "__init__.py",
                                                      submodule_search_locations=[str(where)])


def _install_source_tree_finder() -> None:
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and not (Path(__file__).parent / "passes").exists():
        sys.meta_path.append(_SourceTreeFinder(root))


_install_source_tree_finder()


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """``cimc.compile``, imported on first use: the driver module, callable as its ``compile`` function
    (``cimc.compile(model, target, ...)``; see :mod:`cimc.compile`)."""
    if name == "compile":
        import importlib

        return importlib.import_module("cimc.compile")
    raise AttributeError(f"module 'cimc' has no attribute {name!r}")
