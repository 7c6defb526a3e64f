"""Figures that say how close cimc's outputs are to a reference (onnxruntime, or another graph).

``compare`` gives, per output and overall: the largest absolute error, the cosine similarity of
the flattened outputs, top-1 agreement (the share of rows whose arg-max over the last axis is the
same; for outputs of rank >= 2) and whether they are exactly equal. ``top1_accuracy`` scores
logits against labels, which ``check_labels`` validates first (a plain integer array, one class
index per input). These are the numbers ``cimc run --compare-onnxruntime`` prints and
``cimc compile --verify`` records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from cimc.errors import InputError

__all__ = ["Comparison", "check_labels", "compare", "top1_accuracy"]


@dataclass(frozen=True)
class Comparison:
    """How one set of outputs compares with a reference."""

    max_abs_error: float
    cosine: float
    top1_agreement: float | None
    exact: bool

    def as_dict(self) -> dict[str, float | bool | None]:
        """The figures as a JSON-ready dict."""
        return asdict(self)

    def __str__(self) -> str:
        top1 = "n/a" if self.top1_agreement is None else f"{100 * self.top1_agreement:.2f}%"
        return (f"max abs error {self.max_abs_error:.3g}, cosine {self.cosine:.6f}, "
                f"top-1 agreement {top1}, exact {'yes' if self.exact else 'no'}")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def compare(outputs: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> Comparison:
    """Compare ``outputs`` with ``reference`` over the outputs they share by name (all of them)."""
    missing = sorted(set(reference) - set(outputs))
    if missing:
        raise InputError(f"outputs {missing} of the reference are missing")
    errors, ours_all, ref_all, agree, rows, exact = [], [], [], 0, 0, True
    for name, ref in reference.items():
        ours = np.asarray(outputs[name])
        ref = np.asarray(ref)
        if ours.shape != ref.shape:
            raise InputError(f"output {name!r}: shape {list(ours.shape)} where the reference has {list(ref.shape)}")
        exact = exact and np.array_equal(ours, ref)
        a, b = ours.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
        errors.append(float(np.max(np.abs(a - b))) if a.size else 0.0)
        ours_all.append(a)
        ref_all.append(b)
        if ref.ndim >= 2 and ref.shape[-1] > 1:
            agree += int(np.sum(ours.argmax(-1) == ref.argmax(-1)))
            rows += ref[..., 0].size
    cosine = _cosine(np.concatenate(ours_all), np.concatenate(ref_all)) if ours_all else 1.0
    return Comparison(max(errors, default=0.0), cosine, agree / rows if rows else None, exact)


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """The share of rows whose arg-max over the last axis equals the label."""
    return float(np.mean(np.asarray(logits).argmax(-1) == np.asarray(labels)))


def check_labels(labels: np.ndarray, samples: int, classes: int | None = None, what: str = "labels") -> np.ndarray:
    """``labels`` as an int64 vector after checking it is one integer class index per input:
    1-D, an integer dtype, ``samples`` long, and each in ``[0, classes)`` when ``classes`` is known.
    An ``InputError`` naming ``what`` (e.g. ``--labels y.npy``) says what is wrong otherwise."""
    a = np.asarray(labels)
    if a.dtype.kind not in "iu":
        raise InputError(f"{what}: labels are {a.dtype} values; expected an integer array of class indices "
                         "(e.g. numpy.save(path, y.astype(numpy.int64)))")
    if a.ndim != 1:
        raise InputError(f"{what}: labels have shape {list(a.shape)}; expected a 1-D array, one label per input")
    if a.shape[0] != samples:
        raise InputError(f"{what}: {a.shape[0]} labels for {samples} inputs; give one label per input "
                         "(in the order of the inputs' batch axis)")
    if a.size and classes is not None and (a.min() < 0 or a.max() >= classes):
        bad = int(a.min()) if a.min() < 0 else int(a.max())
        raise InputError(f"{what}: label {bad} is not a class index of the model's first output, "
                         f"which has {classes} classes (0..{classes - 1})")
    return a.astype(np.int64)
