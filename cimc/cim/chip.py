"""Chips: one draw of a device's static effects, per array and physical cell, as data.

A :class:`Chip` holds, for ``A`` arrays of ``R`` x ``C`` physical cells (spares included):

- ``stuck`` (int8 ``[A, R, C]``): 0 a working cell, 1 stuck at its lowest level (SA0), 2 stuck at
  its highest level (SA1);
- ``variation`` (float32 ``[A, R, C]``): one standard-normal draw per cell, which a device model
  scales into its programming variation (:class:`cimc.cim.device.CellDevice`: relative, ``sigma * z``);
- ``cells``: further float32 ``[A, R, C]`` per-cell quantities a device model defines (drift
  exponents, ...), by name.

Sampled (:class:`ChipDraw`, :meth:`Chip.sample`) from fault rates with a seed: every cell is
independently SA0 with probability ``p_sa0`` and SA1 with ``p_sa1``, then (optionally) one standard-normal
``variation`` draw and one per named cell quantity. Array ``a`` is drawn from its own stream,
``numpy.random.default_rng((*seed, a, TAG))``, in that order (uniforms for the faults, then the variation
draws, then each named quantity in the order given), so chip ``index`` of a Monte Carlo run
(``seed = (S, index)``) is reproducible from those numbers alone, a chip of ``A`` arrays is the first
``A`` arrays of any larger one with the same seed, and a device can draw just the arrays a program uses,
when it uses them (:meth:`ChipDraw.array`).

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
from typing import NamedTuple, Protocol

import numpy as np

from cimc.errors import InputError
from cimc.fileio import write_atomic
from cimc.npzio import read_npz, write_npz

__all__ = ["FORMAT", "OK", "SA0", "SA1", "ArrayState", "Chip", "ChipDraw", "ChipSource", "chip_for"]

FORMAT, VERSION = "cimc_chip", 1
"""The member that marks a chip file, and the format version it holds."""
OK, SA0, SA1 = 0, 1, 2
"""Values of :attr:`Chip.stuck`: a working cell, stuck at the lowest level, stuck at the highest level."""
TAG = 0x43484950
"""The last word of every array's seed (``"CHIP"``): chip streams never coincide with other seeded streams."""


class ArrayState(NamedTuple):
    """The static state of one array of a chip: ``stuck`` int8 ``[R, C]``, ``variation`` float32 ``[R, C]`` (or
    ``None``) and the named per-cell quantities, float32 ``[R, C]`` each."""

    stuck: np.ndarray
    variation: np.ndarray | None
    cells: Mapping[str, np.ndarray]


class ChipSource(Protocol):
    """What a device reads a chip through: a :class:`Chip` (every array as data) or a :class:`ChipDraw` (arrays
    drawn on demand)."""

    @property
    def token(self) -> bytes:
        """Bytes identifying the chip (a cache key)."""
        ...

    def array(self, a: int) -> ArrayState:
        """The static state of array ``a``."""
        ...

    def fits(self, arrays: int, rows: int, cols: int) -> str | None:
        """Why the chip cannot serve ``arrays`` arrays of ``rows`` x ``cols`` physical cells, or ``None``."""
        ...


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
               seed: int | Sequence[int] = 0, variation: bool = True, cells: Sequence[str] = ()) -> Chip:
        """A chip of ``arrays`` arrays drawn with ``seed`` (an int, or ``(seed, index)``; :class:`ChipDraw`):
        independent stuck cells at the rates, a standard-normal variation draw per cell if ``variation``, and
        one per cell for each name in ``cells``."""
        return ChipDraw(rows, cols, p_sa0=p_sa0, p_sa1=p_sa1, seed=seed, variation=variation, cells=cells).chip(arrays)

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

    def array(self, a: int) -> ArrayState:
        """The static state of array ``a`` (views of the chip's data)."""
        return ArrayState(self.stuck[a], None if self.variation is None else self.variation[a],
                          {k: v[a] for k, v in self.cells.items()})

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


@dataclass(frozen=True)
class ChipDraw:
    """How a chip is drawn (module docstring): arrays of ``rows`` x ``cols`` physical cells, stuck-at rates,
    a seed (an int or a sequence, e.g. ``(seed, index)``), whether each cell has a ``variation`` draw and which
    further named standard-normal draws it has. Any number of arrays: :meth:`array` draws one on demand."""

    rows: int
    cols: int
    p_sa0: float = 0.0
    p_sa1: float = 0.0
    seed: int | Sequence[int] = 0
    variation: bool = True
    cells: Sequence[str] = ()

    def __post_init__(self) -> None:
        for name, p in (("p_sa0", self.p_sa0), ("p_sa1", self.p_sa1)):
            if not (isinstance(p, int | float) and 0.0 <= p <= 1.0):
                raise InputError(f"chip: {name} = {p!r} is out of range: expected a probability in [0, 1]")
        if self.p_sa0 + self.p_sa1 > 1.0:
            raise InputError(f"chip: p_sa0 + p_sa1 = {self.p_sa0 + self.p_sa1!r} is more than 1")
        if len(set(self.cells)) != len(self.cells) or "variation" in self.cells:
            raise InputError(f"chip: cell quantity names {list(self.cells)} must be distinct and not 'variation'")
        object.__setattr__(self, "seed", tuple(int(v) for v in np.atleast_1d(np.asarray(self.seed, np.int64))))
        object.__setattr__(self, "cells", tuple(self.cells))

    @property
    def token(self) -> bytes:
        """A digest of how the chip is drawn (the device's cache key)."""
        return hashlib.sha256(repr(("draw", self.rows, self.cols, self.p_sa0, self.p_sa1, self.seed, self.variation,
                                    self.cells)).encode()).digest()

    def array(self, a: int) -> ArrayState:
        """Array ``a``, drawn from its own stream (module docstring)."""
        rng = np.random.default_rng([*self.seed, int(a), TAG])  # type: ignore[misc]
        shape = (self.rows, self.cols)
        u = rng.random(shape, np.float32)
        stuck = np.zeros(shape, np.int8)
        if self.p_sa0 or self.p_sa1:
            stuck[u < self.p_sa0] = SA0
            stuck[(u >= self.p_sa0) & (u < self.p_sa0 + self.p_sa1)] = SA1
        z = rng.standard_normal(shape, np.float32) if self.variation else None
        return ArrayState(stuck, z, {name: rng.standard_normal(shape, np.float32) for name in self.cells})

    def chip(self, arrays: int) -> Chip:
        """The first ``arrays`` arrays as a :class:`Chip` (data: what a chip file holds and mapping passes read)."""
        shape = (arrays, self.rows, self.cols)
        parts = [self.array(a) for a in range(arrays)]
        stuck = np.stack([p.stuck for p in parts]) if parts else np.zeros(shape, np.int8)
        z = None
        if self.variation:
            z = np.stack([p.variation for p in parts if p.variation is not None]) if parts else \
                np.zeros(shape, np.float32)
        cells = {k: np.stack([p.cells[k] for p in parts]) if parts else np.zeros(shape, np.float32)
                 for k in self.cells}
        return Chip(stuck, z, cells)

    def fits(self, arrays: int, rows: int, cols: int) -> str | None:
        """Why drawn arrays cannot serve ``arrays`` arrays of ``rows`` x ``cols`` physical cells (any number of
        arrays can be drawn), or ``None``."""
        if (self.rows, self.cols) != (rows, cols):
            return (f"the chip's arrays have {self.rows} x {self.cols} cells, the program needs {rows} x {cols} "
                    f"physical cells")
        return None


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
