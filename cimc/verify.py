"""Figures that say how close cimc's outputs are to a reference (onnxruntime, or another graph).

``compare`` gives, per output and overall: the largest absolute error, the cosine similarity of
the flattened outputs, top-1 agreement (the share of rows whose arg-max over the last axis is the
same; for outputs of rank >= 2) and whether they are exactly equal. ``top1_accuracy`` scores
logits against labels, which ``check_labels`` validates first (a plain integer array, one class
index per input). These are the numbers ``cimc run --compare-onnxruntime`` prints and
``cimc compile --verify`` records.

:func:`check_exact` is ``--verify``'s exactness check of a lowered program against its integer
reference (the quantized graph). It runs both and compares every output; when they differ it finds
the first layer that differs: it reruns both graphs on the first sample that differs, watching
every node result, and walks the reference's nodes in order to the first whose result differs from
the program's value of the same name (a lowering gives the value that replaces a node's result
that result's name, and marks its ops with ``cim.layer``, the node's name). It also checks itself,
so that a broken verifier cannot report a match: the two graphs must be distinct objects (with
distinct op sets when the program was lowered), and ``compare`` must call the program's outputs and
a copy of them with one element changed different (a comparison that ignores what it is given fails).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cimc.errors import InputError

if TYPE_CHECKING:
    from cimc.ir.core import Graph, Value

__all__ = ["Comparison", "ExactCheck", "LayerDifference", "check_exact", "check_labels", "compare", "first_difference",
           "top1_accuracy"]


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


@dataclass(frozen=True)
class LayerDifference:
    """The first layer whose result differs between a program and its reference, on one sample."""

    layer: str
    """The reference node's name (the program's ``cim.layer`` for the ops that implement it)."""
    op: str
    """The reference node's op."""
    value: str
    """The name of the result compared (the same in both graphs)."""
    program_ops: tuple[str, ...]
    """The ops the program runs for the layer, in program order, each named once."""
    sample: int
    """Index of the input sample (batch row) it was found on: the first whose outputs differ."""
    differing: int
    elements: int
    max_abs_error: float

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)

    def __str__(self) -> str:
        ops = ", ".join(self.program_ops) or "none"
        return (f"layer {self.layer!r} ({self.op}; program ops {ops}), result %{self.value}: {self.differing} of "
                f"{self.elements} elements differ on sample {self.sample}, max abs error {self.max_abs_error:.6g}")


@dataclass(frozen=True)
class ExactCheck:
    """The result of :func:`check_exact`."""

    exact: bool
    """The program's outputs equal the reference's, bit for bit (and the verifier passed its self-checks)."""
    max_abs_error: float
    first_difference: LayerDifference | None
    """The first layer that differs (``None`` when exact, or when no layer result with a shared name differs)."""
    self_check: str | None
    """Why the verifier refuses its own result (``None``: its self-checks passed)."""
    outputs: dict[str, np.ndarray] = field(repr=False)
    """The program's outputs."""
    reference_outputs: dict[str, np.ndarray] = field(repr=False)
    """The reference's outputs."""


def _changed(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """A copy of ``outputs`` with one element of the first non-empty output changed, or ``None``."""
    for name, a in outputs.items():
        a = np.asarray(a)
        if a.size:
            b = a.copy()
            flat = b.reshape(-1)
            if b.dtype.kind == "f":
                # the direction in the array's own type: numpy 1.x would step in float64, which float32 rounds away
                flat[0] = np.nextafter(flat[0], b.dtype.type(-np.inf if flat[0] == np.inf else np.inf))
            elif b.dtype.kind == "b":
                flat[0] = not flat[0]
            else:
                flat[0] ^= 1
            return {**outputs, name: b}
    return None


def check_exact(program: Graph, reference: Graph, inputs: Mapping[str, np.ndarray], *, seed: int = 0,
                lowered: bool = True, machine: Mapping[str, Any] | None = None) -> ExactCheck:
    """Run ``program`` and ``reference`` on ``inputs`` and say whether they agree exactly, where they first
    differ, and whether the check itself is sound (module docstring). ``lowered``: the program is a target's
    lowering of the reference, so their op sets must differ. The target's ops must be defined; the program
    runs on ``machine`` (:meth:`cimc.target.Target.machine`)."""
    from cimc.interpreter import run

    problems = []
    if program is reference:
        problems.append("the program and the reference are one graph object")
    elif lowered and {n.op for n in program.nodes} == {n.op for n in reference.nodes}:
        problems.append("the program runs exactly the reference's ops: it was not lowered, or is the reference")
    ours = run(program, inputs, seed=seed, machine=machine)
    ref = run(reference, inputs, seed=seed)
    c = compare(ours, ref)
    changed = _changed(ours)
    if changed is not None and compare(changed, ours).exact:
        problems.append("compare() calls the program's outputs with one element changed equal to them: it does "
                        "not compare what it is given")
    first = None if c.exact else first_difference(program, reference, inputs, ours, ref, seed=seed, machine=machine)
    self_check = "; ".join(problems) or None
    return ExactCheck(c.exact and self_check is None, c.max_abs_error, first, self_check, ours, ref)


def first_difference(program: Graph, reference: Graph, inputs: Mapping[str, np.ndarray],
                     ours: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray], *,
                     seed: int = 0, machine: Mapping[str, Any] | None = None) -> LayerDifference | None:
    """The first reference node (in order) whose result differs from the program's value of the same name,
    found by rerunning both graphs on the first sample whose outputs differ (module docstring)."""
    from cimc.interpreter import Interpreter

    n = {np.asarray(a).shape[0] if np.asarray(a).ndim else -1 for a in (*inputs.values(), *ours.values(),
                                                                         *ref.values())}
    sample, one = 0, dict(inputs)
    symbolic = all(v.type.shape and not isinstance(v.type.shape[0], int) for v in (*program.inputs, *reference.inputs))
    if len(n) == 1 and min(n) > 1 and symbolic:  # every input and output has the batch on axis 0: rerun one sample
        rows = np.zeros(min(n), bool)
        for k in ref:
            a, b = np.asarray(ours[k]), np.asarray(ref[k])
            rows |= (a != b).reshape(len(rows), -1).any(axis=1) if a.shape == b.shape else True
        sample = int(np.argmax(rows))
        one = {k: np.asarray(v)[sample:sample + 1] for k, v in inputs.items()}
    produced = {v.name for node in program.nodes for v in node.outputs}
    wanted = {v.name for node in reference.nodes for v in node.outputs} & produced
    seen: dict[str, dict[str, np.ndarray]] = {"program": {}, "reference": {}}

    def watcher(which: str):
        def observe(value: Value, array: np.ndarray) -> None:
            if value.name in wanted:
                seen[which][value.name] = np.array(array)  # a copy: later ops may update arrays in place
        return observe

    Interpreter(program, seed=seed, machine=machine).run(one, observe=watcher("program"))
    Interpreter(reference, seed=seed).run(one, observe=watcher("reference"))
    for node in reference.nodes:
        for v in node.outputs:
            got, want = seen["program"].get(v.name), seen["reference"].get(v.name)
            if got is None or want is None or (got.shape == want.shape and np.array_equal(got, want)):
                continue
            ops = dict.fromkeys(p.op for p in program.nodes if (p.attrs.get("cim.layer") or p.name) == node.name)
            if got.shape != want.shape:
                return LayerDifference(node.name, node.op, v.name, tuple(ops), sample, want.size, want.size,
                                       float("inf"))
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            return LayerDifference(node.name, node.op, v.name, tuple(ops), sample, int((got != want).sum()),
                                   int(got.size), float(np.nanmax(diff)) if diff.size else 0.0)
    return None
