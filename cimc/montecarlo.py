"""Monte Carlo verification over chips: run a program on ``N`` chips of a target and summarise the spread.

Chip ``i`` of a run with seed ``S`` is the target's machine ``target.machine(S, chip=i)`` (its static effects:
programming variation, stuck cells, drift factors, drawn from ``(S, i)``), and the program runs on it with the
interpreter seeded by :func:`run_seed` ``(S, i)`` (the per-MVM read noise): chip ``i``'s outputs depend on ``(S,
i)`` alone, whichever process computes them and however many there are. The program is one for every chip, or
one per chip (each compiled for its chip, as a deployment flow would: :func:`cimc.driver.compile` with ``mc``
when a pass reads the chip). A :class:`Backend` maps chip indices to
outputs; :class:`LocalPool` (the default) runs them in a local process pool (``workers`` processes, default
``min(2, cores)``; 1: in this process). A distributed backend implements :meth:`Backend.map` the same way.

Per chip, against the exact (noiseless, lossless) integer outputs ``r`` of the quantized graph, the relative
error ``||y - r||_2 / ||r||_2`` over the first output, and top-1: the share of inputs whose arg-max equals the
label (with labels), else the arg-max of the float reference (onnxruntime). :func:`summarise` gives ``n``,
``top1_mean``, ``top1_std`` (over chips, ``ddof = 0``), ``top1_p5``, ``top1_p95`` (linear percentiles),
``rel_error_mean``, ``rel_error_std`` and the per-chip figures, ordered by chip: the same seed gives the same
summary, byte for byte, with any number of workers.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cimc.errors import InputError
from cimc.ir.core import Graph
from cimc.target import Target

__all__ = ["Backend", "ChipJob", "LocalPool", "default_workers", "monte_carlo", "run_chip", "run_seed", "summarise"]

READ_TAG = 0x52454144
"""The last word of a chip run's interpreter seed (``"READ"``): read-noise streams never coincide with chip draws."""


def run_seed(seed: int, chip: int) -> int:
    """The interpreter seed of chip ``chip``'s run: 63 bits of ``numpy.random.SeedSequence((seed, chip, READ_TAG))``."""
    return int(np.random.SeedSequence([seed, chip, READ_TAG]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class ChipJob:
    """What every chip runs: the program (one for every chip, or a tuple: chip ``i``'s at ``i``), its target, the
    inputs, the seed, and which output to keep."""

    program: Graph | tuple[Graph, ...]
    target: Target
    inputs: Mapping[str, np.ndarray]
    seed: int
    output: str


def run_chip(job: ChipJob, chip: int) -> np.ndarray:
    """The program's output ``job.output`` on chip ``chip`` (module docstring). A job with one program for every
    chip verifies and plans it once per process (:meth:`cimc.interpreter.Interpreter.rebound`)."""
    from cimc.interpreter import Interpreter

    job.target.register_ops()
    seed, machine = run_seed(job.seed, chip), job.target.machine(job.seed, chip)
    if isinstance(job.program, Graph):
        hit = _INTERPRETERS.get(id(job))
        if hit is None or hit[0]() is not job:
            hit = (weakref.ref(job, functools.partial(_forget_job, id(job))), Interpreter(job.program))
            _INTERPRETERS[id(job)] = hit
        interp = hit[1].rebound(seed=seed, machine=machine)
    else:
        interp = Interpreter(job.program[chip], seed=seed, machine=machine)
    return np.asarray(interp.run(dict(job.inputs))[job.output])


_INTERPRETERS: dict[int, tuple[weakref.ref[ChipJob], Any]] = {}
"""Per live job with one program, its verified interpreter."""


def _forget_job(key: int, _ref: weakref.ref[ChipJob]) -> None:
    _INTERPRETERS.pop(key, None)


class Backend(Protocol):
    """Runs chips: ``map(job, chips)`` returns :func:`run_chip` ``(job, i)`` for each ``i`` of ``chips``, in order."""

    def map(self, job: ChipJob, chips: Sequence[int]) -> list[np.ndarray]:
        """Each chip's output, in the order of ``chips``."""
        ...


def default_workers() -> int:
    """``min(2, cores this process may use)``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


_JOB: ChipJob | None = None
"""The job of a pool worker (set once per worker by its initializer)."""


def _init_worker(job: ChipJob) -> None:
    global _JOB
    _JOB = job


def _run_in_worker(chip: int) -> np.ndarray:
    assert _JOB is not None
    return run_chip(_JOB, chip)


class LocalPool:
    """Chips on a local process pool of ``workers`` processes (``None``: :func:`default_workers`; 1: in this
    process). Workers start by ``fork`` where the platform has it, so the program is shared, not copied."""

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise InputError(f"workers = {workers}: need at least 1 worker process")
        self.workers = default_workers() if workers is None else int(workers)

    def map(self, job: ChipJob, chips: Sequence[int]) -> list[np.ndarray]:
        """Each chip's output, in the order of ``chips`` (module docstring)."""
        n = min(self.workers, len(chips))
        if n <= 1:
            return [run_chip(job, i) for i in chips]
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context(method), initializer=_init_worker,
                                 initargs=(job,)) as pool:
            return list(pool.map(_run_in_worker, chips))


def summarise(outputs: Sequence[np.ndarray], exact: np.ndarray, truth: np.ndarray, truth_of: str) -> dict[str, Any]:
    """The Monte Carlo figures (module docstring) of chips' ``outputs`` against the ``exact`` outputs and the
    ``truth`` class per input (``truth_of``: what it is, e.g. ``labels``)."""
    ref = np.asarray(exact, np.float64)
    norm = float(np.linalg.norm(ref)) or 1.0
    rel = np.asarray([float(np.linalg.norm(np.asarray(y, np.float64) - ref)) / norm for y in outputs])
    top1 = np.asarray([float(np.mean(np.asarray(y).argmax(-1) == truth)) for y in outputs])
    return {"n": len(outputs), "top1_of": truth_of, "top1_mean": float(top1.mean()), "top1_std": float(top1.std()),
            "top1_p5": float(np.percentile(top1, 5)), "top1_p95": float(np.percentile(top1, 95)),
            "rel_error_mean": float(rel.mean()), "rel_error_std": float(rel.std()),
            "chips": [{"chip": i, "top1": float(t), "rel_error": float(e)}
                      for i, (t, e) in enumerate(zip(top1, rel, strict=True))]}


def monte_carlo(program: Graph | Sequence[Graph], target: Target, inputs: Mapping[str, np.ndarray], *, n: int,
                seed: int, exact: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                labels: np.ndarray | None, backend: Backend | None = None) -> dict[str, Any]:
    """Run ``program`` (one for every chip, or a list: chip ``i``'s program at ``i``) on chips ``0 .. n-1`` of
    ``seed`` and summarise (module docstring): ``exact`` are the quantized graph's outputs, ``reference`` the
    float model's (its arg-max is the truth without ``labels``)."""
    programs = (program,) if isinstance(program, Graph) else tuple(program)
    if len(programs) not in (1, n):
        raise InputError(f"--mc {n}: {len(programs)} programs given, need one or one per chip")
    if n < 1:
        raise InputError(f"--mc {n}: the number of Monte Carlo chips must be at least 1")
    if not target.machine(seed, 0) and not target.machine(seed, 1):
        raise InputError(f"--mc: target {target.name!r} with this spec has no device that varies from chip to chip "
                         f"(every chip is the ideal one); give it non-idealities (e.g. fault rates or noise) or drop "
                         f"--mc")
    name = next(iter(exact))
    truth = np.asarray(labels) if labels is not None else np.asarray(reference[name]).argmax(-1)
    job = ChipJob(programs[0] if len(programs) == 1 else programs, target, inputs, seed, name)
    outs = (backend or LocalPool()).map(job, list(range(n)))
    return summarise(outs, np.asarray(exact[name]), truth, "labels" if labels is not None else "float reference")
