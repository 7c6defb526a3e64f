"""The cimc model zoo: small ONNX networks trained on scikit-learn's digits.

Each model classifies 8x8 handwritten digits (10 classes). Every model takes the same
input, a float32 tensor ``(batch, 1, 8, 8)`` with pixels in ``[0, 1]`` and a symbolic batch
dimension, and returns logits ``(batch, 10)``. The held-back test split and a small
calibration set ship with the models::

    from cimc import zoo

    m = zoo.load("lenet_bn")
    model = m.onnx()                      # onnx.ModelProto
    x, y = m.x_test, m.y_test             # (450, 1, 8, 8) float32, (450,) int64
    calib = zoo.calibration_set()         # (64, 1, 8, 8) float32, from the training split

The files are rebuilt by ``examples/zoo/train.py`` (needs ``pip install -e .[zoo]``); this
package only reads them and imports neither torch nor scikit-learn.
"""

from __future__ import annotations

import difflib
import functools
import json
import pathlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cimc.errors import CimcError

if TYPE_CHECKING:
    import onnx

__all__ = [
    "NAMES",
    "UnknownModelError",
    "ZooModel",
    "calibration_set",
    "load",
    "manifest",
    "path",
    "test_set",
]

NAMES: tuple[str, ...] = (
    "lenet_bn",
    "resnet_tiny",
    "mobilenet_tiny",
    "hybrid_vit",
    "lstm_rows",
    "mlp",
)
"""Names of the zoo models, in build order."""

_HERE = pathlib.Path(__file__).resolve().parent
_TEST_FILE = "digits_test.npz"
_CALIB_FILE = "digits_calib.npz"
_MANIFEST_FILE = "manifest.json"


class UnknownModelError(CimcError, KeyError):
    """Raised for a name that is not in :data:`NAMES`; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0]) if self.args else ""


def _check_name(name: str) -> str:
    if name in NAMES:
        return name
    close = difflib.get_close_matches(str(name), NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownModelError(f"unknown zoo model {name!r}{hint} (known models: {', '.join(NAMES)})")


def _file(name: str) -> pathlib.Path:
    p = _HERE / name
    if not p.is_file():
        raise FileNotFoundError(
            f"zoo file {p} is missing; rebuild the zoo with `python examples/zoo/train.py`"
        )
    return p


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@functools.cache
def manifest() -> dict[str, Any]:
    """The parsed ``manifest.json``: dataset notes and one entry per model.

    The returned dict is shared; do not modify it.
    """
    return json.loads(_file(_MANIFEST_FILE).read_text(encoding="utf-8"))


def _entry(name: str) -> dict[str, Any]:
    for m in manifest()["models"]:
        if m["name"] == name:
            return m
    raise FileNotFoundError(f"manifest.json has no entry for {name!r}; rebuild the zoo")


@functools.cache
def test_set() -> tuple[np.ndarray, np.ndarray]:
    """The held-back test split ``(x, y)``: float32 ``(N, 1, 8, 8)`` and int64 ``(N,)``.

    Arrays are cached and read-only; copy them before modifying.
    """
    with np.load(_file(_TEST_FILE), allow_pickle=False) as f:
        return _readonly(f["x"]), _readonly(f["y"])


@functools.cache
def calibration_set() -> np.ndarray:
    """Calibration images from the training split: float32 ``(64, 1, 8, 8)`` in ``[0, 1]``.

    The array is cached and read-only; copy it before modifying.
    """
    with np.load(_file(_CALIB_FILE), allow_pickle=False) as f:
        return _readonly(f["x"])


def path(name: str) -> pathlib.Path:
    """Path of the ``.onnx`` file of zoo model ``name``.

    Raises :class:`UnknownModelError` (a ``KeyError``) for an unknown name.
    """
    return _HERE / f"{_check_name(name)}.onnx"


@dataclass(frozen=True)
class ZooModel:
    """One zoo model: its ONNX file and the shared digits test split.

    ``x_test`` (float32, ``(N, 1, 8, 8)``) and ``y_test`` (int64, ``(N,)``) are read-only.
    """

    name: str
    path: pathlib.Path
    x_test: np.ndarray = field(repr=False, compare=False)
    y_test: np.ndarray = field(repr=False, compare=False)

    def onnx(self) -> onnx.ModelProto:
        """Load and return the model as an ``onnx.ModelProto`` (a fresh copy each call)."""
        import onnx

        return onnx.load(str(self.path))

    @property
    def info(self) -> dict[str, Any]:
        """This model's ``manifest.json`` entry (exporter, opset, shapes, op types, ...)."""
        return _entry(self.name)

    @property
    def input_name(self) -> str:
        """Name of the graph input (a float32 ``(batch, 1, 8, 8)`` tensor)."""
        return str(self.info["inputs"][0]["name"])

    @property
    def output_name(self) -> str:
        """Name of the graph output (float32 logits ``(batch, 10)``)."""
        return str(self.info["output"]["name"])

    @property
    def exporter(self) -> str:
        """Which torch exporter produced the file: ``"torchscript"`` or ``"dynamo"``."""
        return str(self.info["exporter"])

    @property
    def opset(self) -> int:
        """The default-domain ONNX opset version of the file."""
        return int(self.info["opset"])

    @property
    def float_top1(self) -> float:
        """Top-1 accuracy of the float model on the test split, measured with onnxruntime."""
        return float(self.info["float_top1"])


def load(name: str) -> ZooModel:
    """Return zoo model ``name`` with the test split.

    Raises :class:`UnknownModelError` (a ``KeyError``) with the known names and a
    did-you-mean suggestion for an unknown name, and ``FileNotFoundError`` if the zoo files
    have not been built.
    """
    p = _file(path(name).name)
    x, y = test_set()
    return ZooModel(name=name, path=p, x_test=x, y_test=y)
