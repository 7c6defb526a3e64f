"""Chips: one draw of a device's static effects, per array and physical cell, as data.

A :class:`Chip` holds, for ``A`` arrays of ``R`` x ``C`` physical cells (spares included):

- ``stuck`` (int8 ``[A, R, C]``): 0 a working cell, 1 stuck at its lowest level (SA0), 2 stuck at
  its highest level (SA1);
- ``variation`` (float32 ``[A, R, C]``): one standard-normal draw per cell, which a device model
  scales into its programming variation (:class:`cimc.cim.device.CellDevice`: relative, ``sigma * z``);
- ``cells``: further float32 ``[A, R, C]`` per-cell quantities a device model defines (drift
  exponents, ...), by name.

Sampled (:meth:`Chip.sample`) from fault rates with a seed: every cell is independently SA0 with
probability ``p_sa0`` and SA1 with ``p_sa1``, from ``numpy.random.default_rng`` seeded with
``(seed, index)``, so chip ``index`` of a Monte Carlo run is reproducible from those two numbers.

Chip file (``.npz``, written by :meth:`Chip.save` through :func:`cimc.npzio.write_npz`, read by
:meth:`Chip.load` through :func:`cimc.npzio.read_npz`, never pickles): members ``cimc_chip`` (int64
scalar, the format version: 1), ``stuck`` (int8 ``[A, R, C]``, values 0..2), optional ``variation``
(float32 ``[A, R, C]``, finite) and optional ``cell.NAME`` (float32 ``[A, R, C]``, finite) for each
entry of ``cells``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cimc.errors import InputError
from cimc.fileio import write_atomic
from cimc.npzio import read_npz, write_npz

__all__ = ["FORMAT", "OK", "SA0", "SA1", "Chip", "chip_for"]

FORMAT, VERSION = "cimc_chip", 1
"""The member that marks a chip file, and the format version it holds."""
OK, SA0, SA1 = 0, 1, 2
"""Values of :attr:`Chip.stuck`: a working cell, stuck at the lowest level, stuck at the highest level."""


@dataclass(frozen=True, eq=False)
class Chip:
    """Static per-cell state of ``A`` arrays of ``R`` x ``C`` physical cells (module docstring)."""

    stuck: np.ndarray
    variation: np.ndarray | None = None
    cells: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        stuck = np.asarray(self.stuck)
        if stuck.ndim != 3 or stuck.dtype.kind not in "iu" or (stuck.size and (stuck.min() < 0 or stuck.max() > 2)):
            raise InputError(f"chip: stuck must be integers 0..2 shaped [arrays, rows, cols], is {stuck.dtype} "
                             f"{list(stuck.shape)}" + (f" holding {int(stuck.min())}..{int(stuck.max())}"
                                                       if stuck.size and stuck.dtype.kind in "iu" else ""))
        object.__setattr__(self, "stuck", _frozen(stuck.astype(np.int8)))
        more = {"variation": self.variation} if self.variation is not None else {}
        for name, a in {**more, **{f"cell.{k}": v for k, v in self.cells.items()}}.items():
            a = np.asarray(a)
            if a.shape != stuck.shape or a.dtype.kind != "f" or not np.isfinite(a).all():
                raise InputError(f"chip: {name} must be finite floats shaped like stuck {list(stuck.shape)}, is "
                                 f"{a.dtype} {list(a.shape)}")
        if self.variation is not None:
            object.__setattr__(self, "variation", _frozen(np.asarray(self.variation, np.float32)))
        object.__setattr__(self, "cells", {k: _frozen(np.asarray(v, np.float32)) for k, v in self.cells.items()})

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(arrays, rows, cols)``."""
        a, r, c = self.stuck.shape
        return int(a), int(r), int(c)

    @classmethod
    def sample(cls, arrays: int, rows: int, cols: int, *, p_sa0: float = 0.0, p_sa1: float = 0.0,
               seed: int | Sequence[int] = 0, variation: bool = True) -> Chip:
        """A chip drawn with ``seed`` (an int, or ``(seed, index)``): independent stuck cells at the rates,
        and a standard-normal variation draw per cell if ``variation``."""
        for name, p in (("p_sa0", p_sa0), ("p_sa1", p_sa1)):
            if not 0.0 <= p <= 1.0:
                raise InputError(f"chip: {name} = {p!r} is out of range: expected a probability in [0, 1]")
        if p_sa0 + p_sa1 > 1.0:
            raise InputError(f"chip: p_sa0 + p_sa1 = {p_sa0 + p_sa1!r} is more than 1")
        rng = np.random.default_rng([*np.atleast_1d(np.asarray(seed, np.int64)).tolist(), 0x43484950])
        shape = (arrays, rows, cols)
        u = rng.random(shape, np.float32)
        stuck = np.zeros(shape, np.int8)
        stuck[u < p_sa0] = SA0
        stuck[(u >= p_sa0) & (u < p_sa0 + p_sa1)] = SA1
        z = rng.standard_normal(shape, np.float32) if variation else None
        return cls(stuck, z)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Chip:
        """Read a chip file (module docstring); an ``InputError`` naming what does not fit."""
        data = read_npz(path, "chip file")
        where = Path(path).name
        version = data.get(FORMAT)
        if version is None:
            raise InputError(f"{where}: not a chip file (it has no {FORMAT!r} member); write one with "
                             f"cimc.cim.Chip.save")
        if version.shape != () or version.dtype.kind not in "iu" or int(version) != VERSION:
            raise InputError(f"{where}: chip file version {version.tolist()!r}, this cimc reads version {VERSION}")
        known = {FORMAT, "stuck", "variation"}
        unknown = [k for k in data if k not in known and not k.startswith("cell.")]
        if unknown:
            raise InputError(f"{where}: unknown chip file members {unknown} (known: stuck, variation, cell.NAME)")
        if "stuck" not in data:
            raise InputError(f"{where}: the chip file has no 'stuck' member")
        try:
            return cls(data["stuck"], data.get("variation"),
                       {k[5:]: v for k, v in data.items() if k.startswith("cell.")})
        except InputError as e:
            raise InputError(f"{where}: {e}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the chip file (module docstring)."""
        arrays = {FORMAT: np.asarray(VERSION, np.int64), "stuck": self.stuck}
        if self.variation is not None:
            arrays["variation"] = self.variation
        arrays.update({f"cell.{k}": v for k, v in sorted(self.cells.items())})
        write_atomic(path, lambda f: write_npz(f, arrays))

    def fits(self, arrays: int, rows: int, cols: int) -> str | None:
        """Why this chip cannot serve ``arrays`` arrays of ``rows`` x ``cols`` physical cells, or ``None``."""
        a, r, c = self.shape
        if a < arrays or (r, c) != (rows, cols):
            return (f"the chip has {a} arrays of {r} x {c} cells, the program needs {arrays} arrays of "
                    f"{rows} x {cols} physical cells")
        return None

    @property
    def token(self) -> bytes:
        """A digest of the chip's contents (the device's cache key)."""
        h = hashlib.sha256(self.stuck.tobytes())
        for a in ([self.variation] if self.variation is not None else []) + [self.cells[k] for k in sorted(self.cells)]:
            h.update(a.tobytes())
        return h.digest()

    def rates(self) -> dict[str, float]:
        """The share of cells stuck at each level."""
        n = max(1, self.stuck.size)
        return {"sa0": float((self.stuck == SA0).sum()) / n, "sa1": float((self.stuck == SA1).sum()) / n}


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def chip_for(path: str, arrays: int, rows: int, cols: int, *, p_sa0: float = 0.0, p_sa1: float = 0.0,
             variation: bool = False, seed: int | Sequence[int] = 0) -> Chip | None:
    """The chip a target's spec describes for ``arrays`` arrays of ``rows`` x ``cols`` physical cells: its chip file
    ``path`` if one is given (checked against that shape), else sampled at the fault rates with ``seed``
    (``variation``: with per-cell variation draws); ``None`` when nothing is given and nothing can fail."""
    if path:
        chip = Chip.load(path)
        why = chip.fits(arrays, rows, cols)
        if why:
            raise InputError(f"{Path(path).name}: {why}")
        return chip
    if not (p_sa0 or p_sa1 or variation):
        return None
    return Chip.sample(arrays, rows, cols, p_sa0=p_sa0, p_sa1=p_sa1, seed=seed, variation=variation)
