"""Calibration: run the float graph once per batch and observe every activation in that one run.

The reference interpreter calls back with each value it computes (``Interpreter.run(...,
observe=...)``); one observer per watched tensor keeps what its method needs:

- ``minmax``: the running minimum and maximum.
- ``percentile``: the ``p``-th and ``(100 - p)``-th percentiles of the observed values.
- ``mse``: the range ``[a * min, a * max]``, ``a`` in ``(0, 1]``, whose ``bits``-bit quantization has
  the least mean squared error over a 2048-bin histogram of the values (ties: the widest).

Percentile and mse observers keep a sample of at most ``SAMPLE`` (2**17) values per tensor over
the whole set: each of the ``b`` batches contributes all its values up to ``SAMPLE / b``, else
that many positions drawn with a generator seeded from the compile seed, so results are
deterministic. Exact minimum and maximum are always kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np

from cimc.errors import InputError
from cimc.interpreter import Interpreter
from cimc.ir.core import Graph, Value

__all__ = ["METHODS", "SAMPLE", "Observer", "calibrate", "check_calibration", "make_observer"]

logger = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "mse")
SAMPLE = 1 << 17
BATCH = 32
"""Calibration images per interpreter run (when the graph's batch dim is not fixed)."""


class Observer:
    """The minimum and maximum of one tensor; subclasses also keep a sample and refine the range."""

    sampled = False

    def __init__(self, rng: np.random.Generator, per_batch: int = SAMPLE) -> None:
        self.lo, self.hi = np.inf, -np.inf
        self.rng, self.per_batch = rng, per_batch
        self.samples: list[np.ndarray] = []

    def observe(self, a: np.ndarray) -> None:
        """Record one batch of values."""
        if a.size == 0:
            return
        self.lo, self.hi = min(self.lo, float(a.min())), max(self.hi, float(a.max()))
        if self.sampled:
            flat = a.reshape(-1)
            k = self.per_batch
            pick = flat if flat.size <= k else flat[self.rng.integers(0, flat.size, k)]
            self.samples.append(pick.astype(np.float32))

    def range(self, bits: int) -> tuple[float, float]:
        """The real range ``[lo, hi]`` a ``bits``-bit quantization of this tensor should cover."""
        if self.lo > self.hi:  # never observed (empty tensors)
            return 0.0, 0.0
        return self.lo, self.hi


class PercentileObserver(Observer):
    """Range between the ``(100 - p)``-th and ``p``-th percentiles."""

    sampled = True

    def __init__(self, rng: np.random.Generator, per_batch: int, percentile: float) -> None:
        super().__init__(rng, per_batch)
        self.p = percentile

    def range(self, bits: int) -> tuple[float, float]:
        """Percentiles of the sample."""
        if not self.samples:
            return super().range(bits)
        lo, hi = np.percentile(np.concatenate(self.samples), [100.0 - self.p, self.p])
        return float(lo), float(hi)


class MSEObserver(Observer):
    """Range with the least quantization mean squared error among shrunken min/max ranges."""

    sampled = True
    BINS, STEPS = 2048, 100

    def range(self, bits: int) -> tuple[float, float]:
        """Grid search over ``a`` on a histogram of the sample."""
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if not self.samples or hi - lo <= 0:
            return super().range(bits)
        hist, edges = np.histogram(np.concatenate(self.samples), bins=self.BINS, range=(lo, hi))
        c = (edges[:-1] + edges[1:]) / 2
        a = np.linspace(1.0, 1.0 / self.STEPS, self.STEPS)[:, None]  # widest first: argmin keeps it on ties
        qmax = (1 << bits) - 1
        scale = (hi - lo) * a / qmax
        zp = np.clip(np.rint(-lo * a / scale), 0, qmax)
        q = np.clip(np.rint(c / scale) + zp, 0, qmax)
        err = (hist * (c - (q - zp) * scale) ** 2).sum(axis=1)
        best = float(a[int(np.argmin(err)), 0])
        return lo * best, hi * best


def make_observer(method: str, rng: np.random.Generator, percentile: float = 99.99, batches: int = 1) -> Observer:
    """A fresh observer for calibration ``method`` (one of ``METHODS``) over ``batches`` batches."""
    per_batch = max(SAMPLE // batches, 1024)
    if method == "minmax":
        return Observer(rng, per_batch)
    if method == "percentile":
        return PercentileObserver(rng, per_batch, percentile)
    if method == "mse":
        return MSEObserver(rng, per_batch)
    raise InputError(f"unknown calibration method {method!r}; expected one of {', '.join(METHODS)}")


def check_calibration(graph: Graph, data: Mapping[str, np.ndarray] | None) -> tuple[dict[str, np.ndarray], int]:
    """The calibration arrays by input name and the sample count; an ``InputError`` naming the input
    for a missing, extra, empty, misshapen, mistyped or non-finite array. The rules are those of
    graph inputs (:func:`cimc.interpreter.check_inputs`: exact element type, native byte order
    taken care of), plus finite values: a NaN or infinity would make every range meaningless."""
    if data is None:
        raise InputError("quantize needs a calibration set (--calibration x.npz or calibration= in the API)")
    want = {v.name: v for v in graph.inputs}
    missing, extra = [n for n in want if n not in data], [n for n in data if n not in want]
    if missing or extra:
        raise InputError(f"the calibration set has inputs {sorted(data)} but the graph takes {sorted(want)}"
                         + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
    arrays, counts = {}, set()
    for name, v in want.items():
        a = np.asarray(data[name])
        if a.ndim == 0 or a.shape[0] == 0:
            raise InputError(f"calibration input {name!r} is empty (shape {list(a.shape)}); give at least one "
                             f"sample, batch on axis 0")
        if not a.dtype.isnative:
            a = a.astype(a.dtype.newbyteorder("="))
        b0 = v.type.shape[0] if v.type.shape and isinstance(v.type.shape[0], int) else None
        why = v.type.accepts(a if b0 is None else a[:b0])
        if why is None and b0 is not None and a.shape[0] < b0:
            why = f"the graph's batch is fixed at {b0} but there are only {a.shape[0]} samples"
        if why:
            raise InputError(f"calibration input {name!r} does not fit the graph input {v.type}: {why} "
                             f"(calibration arrays hold samples on axis 0)")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))
            raise InputError(f"calibration input {name!r} holds {len(bad)} non-finite value(s) (the first, "
                             f"{a[tuple(bad[0])]}, at index {bad[0].tolist()}); calibration needs finite samples")
        arrays[name] = a
        counts.add(a.shape[0])
    if len(counts) > 1:
        raise InputError(f"calibration inputs have different sample counts {sorted(counts)}; they must agree")
    return arrays, counts.pop()


def calibrate(graph: Graph, data: Mapping[str, np.ndarray] | None, watch: list[Value], method: str = "minmax",
              *, percentile: float = 99.99, seed: int = 0,
              also: Callable[[Value, np.ndarray], None] | None = None) -> dict[str, Observer]:
    """Run ``graph`` on ``data`` in batches and return an observer per watched value, by name;
    ``also(value, array)``, if given, sees every value of every batch too (in the same runs)."""
    arrays, n = check_calibration(graph, data)
    runs = batches(graph, arrays, n)
    rng = np.random.default_rng(seed)
    observers = {id(v): make_observer(method, rng, percentile, len(runs)) for v in watch}

    def observe(v: Value, a: np.ndarray) -> None:
        obs = observers.get(id(v))
        if obs is not None:
            obs.observe(a)
        if also is not None:
            also(v, a)

    interp = Interpreter(graph, seed=seed, reproducible=True)  # scales that do not depend on the CPU
    for run in runs:
        interp.run(run, observe=observe)
    return {v.name: observers[id(v)] for v in watch}


def batches(graph: Graph, arrays: Mapping[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    """The ``n`` samples of ``arrays`` cut into the interpreter runs that calibrate ``graph``: batches of the graph's
    fixed batch size (the last samples that do not fill one are dropped, with a warning), else of ``BATCH``."""
    fixed = [v.type.shape[0] for v in graph.inputs if v.type.shape and isinstance(v.type.shape[0], int)]
    batch = fixed[0] if fixed else BATCH
    stop = n - n % batch if fixed else n
    if stop < n:
        logger.warning("calibration: dropping the last %d samples (the graph's batch is fixed at %d)", n - stop, batch)
    return [{k: a[start:start + batch] for k, a in arrays.items()} for start in range(0, stop, batch)]
