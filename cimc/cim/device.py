"""The device hook: how a target's non-idealities perturb what the arrays store and what they read.

The crossbar (:mod:`cimc.cim.crossbar`) asks the run's :class:`Device` three things:

- :meth:`Device.program`: the values the cells of array ``a`` hold after a write of the levels
  ``L`` (uint8 ``[R, C]``, the array's physical image, unused cells 0), given each physical column's
  full-scale level ``F`` (the level the device's top state stands for: see the load's ``full_scale`` in
  docs/array-model.md). Static effects go here: programming variation, stuck cells, drift to the time of
  inference, IR drop. The result is in level units (a cell programmed to level 3 that holds 2.9 reads as
  2.9 input-LSB per input LSB).
- :meth:`Device.read_sigma`: the standard deviation (level units) of the noise one cell read adds, per
  physical column of array ``a``; the crossbar adds ``sqrt(sum_r x_r**2) * sigma`` times a standard normal
  from the run's generator to each partial sum of inputs ``x_r`` (the sum of independent cell reads);
  ``None``: no cell read noise.
- :meth:`Device.read`: the analog partial sums of one batch of conversions, before the ADC, in place
  (noise per conversion: :meth:`ReadSite.normals` gives one standard normal per conversion, fixed by the
  crossbar call's key, drawn from the run's generator, and by which conversion it is, so the same seed gives the
  same bits however the crossbar batches its conversions). ``site`` says which arrays, physical columns, row
  blocks and positions the sums come from; a differential pair sensed as one signed sum is one conversion.

The ideal device (:data:`IDEAL`, the default) holds every level exactly and reads without noise;
``ideal`` lets the executor keep its exact fast path, so the default costs nothing. A device's
``token`` identifies what it computes (its parameters and chip), so stored values are computed
once per program and device.

:class:`CellDevice` is the generic non-ideal cell array: stuck cells and per-cell variation from a
:class:`cimc.cim.chip.Chip`, and Gaussian read noise::

    stored = 0 (SA0) | levels - 1 (SA1) | L * (1 + variation * z)     (z: the chip's draw per cell)
    read   = v + read_noise * N(0, 1)                                   (per conversion, in partial-sum LSB)

A target with other physics subclasses :class:`Device`: :class:`cimc.cim.analog.AnalogDevice` is the
memristive array (conductances, programming variation, drift, IR drop, read noise per cell). A non-ideal
device keeps what the executor derives from it (stored cells, prepared crossbars) in its ``memo``, so it is
freed with the device (one chip of a Monte Carlo run at a time).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from cimc.cim.chip import SA0, SA1, Chip
from cimc.cim.gauss import SCRATCH, normals
from cimc.errors import InputError

__all__ = ["GRID_BITS", "IDEAL", "READ_STREAMS", "CellDevice", "Device", "ReadSite", "fine_grid", "on_grid"]

READ_STREAMS = 1 << 32
"""The first stream number of a device's read hook (:meth:`ReadSite.normals`); the crossbar's cell read noise
uses streams below it."""


@dataclass(frozen=True)
class ReadSite:
    """Where the partial sums of one batch of conversions ``ps[A, M, C]`` come from."""

    arrays: np.ndarray
    """int64 ``[C]``: the array of each column."""
    cols: np.ndarray
    """int64 ``[C]``: the physical column of each column."""
    blocks: np.ndarray
    """int64 ``[A]``: the physical row block (``rows_per_op`` rows) of each conversion batch."""
    first: int = 0
    """The position of the batch's first conversions: row ``j * n + p`` of ``ps`` is position ``first + p`` of input
    chunk ``j`` (``n = M / chunks``)."""
    chunks: int = 1
    """The input chunks ``J`` in ``ps``'s rows."""
    key: tuple[int, int] | None = None
    """The crossbar call's key of indexed draws (:mod:`cimc.cim.gauss`), or ``None`` (no generator)."""

    def normals(self, shape: tuple[int, ...]) -> np.ndarray:
        """Standard normals shaped like ``ps`` (float32 ``[A, M, C]``), one per conversion, fixed by the key and the
        conversion (block ``a``, chunk ``j``, position, column) whatever the batch: draw ``position * C + c`` of
        stream ``READ_STREAMS + a * J + j``."""
        if self.key is None:
            raise ValueError("ReadSite.normals: this read has no generator key")
        A, M, C = shape
        J = self.chunks
        out = np.empty((A, J, M // J * C), np.float32)
        scratch = np.empty(SCRATCH, np.float32)
        for a in range(A):
            for j in range(J):
                normals(self.key, READ_STREAMS + a * J + j, self.first * C, out[a, j], scratch)
        return out.reshape(shape)


class Device:
    """The ideal device: cells hold their levels exactly, partial sums are read without noise."""

    ideal: bool = True
    token: bytes = b"ideal"

    def __init__(self) -> None:
        self.memo: dict = {}
        """What the executor derives from this device, kept while the device lives."""

    def program(self, array: int, levels: np.ndarray, full: np.ndarray | None = None) -> np.ndarray:
        """Values the cells of ``array`` hold after writing ``levels`` (uint8 ``[R, C]``) in columns of full-scale
        levels ``full`` (float32 ``[C]``; ``None``: the cell's top level); ideally the levels."""
        return levels

    def read_sigma(self, array: int, full: np.ndarray) -> np.ndarray | None:
        """Standard deviation of one cell read per physical column of ``array`` (level units), or ``None``."""
        return None

    def grid(self, full: np.ndarray) -> np.ndarray:
        """int64 ``q`` per physical column of full-scale ``full``: every value :meth:`program` stores in the column
        is a multiple of ``2**-q`` levels (0: whole levels), so the crossbar can prove its analog sums exact."""
        return np.zeros(np.shape(full), np.int64)

    def read(self, ps: np.ndarray, site: ReadSite, rng: np.random.Generator) -> None:
        """Perturb the analog partial sums ``ps`` (``[A, M, C]``) in place; ideally nothing."""

    def check(self, arrays: int, rows: int, cols: int) -> None:
        """Raise an ``InputError`` if this device cannot hold ``arrays`` arrays of ``rows`` x ``cols`` cells."""


IDEAL = Device()
"""The ideal device (the default of every run)."""


class CellDevice(Device):
    """Stuck cells and relative programming variation from a chip, and Gaussian read noise (module docstring)."""

    def __init__(self, chip: Chip, levels: int, *, variation: float = 0.0, read_noise: float = 0.0) -> None:
        if levels < 2:
            raise InputError(f"a cell device needs >= 2 levels, got {levels}")
        for name, v in (("variation", variation), ("read_noise", read_noise)):
            if not (np.isfinite(v) and v >= 0):
                raise InputError(f"{name} = {v!r} must be a finite number >= 0")
        if variation and chip.variation is None:
            raise InputError("variation > 0 needs a chip with per-cell variation draws")
        super().__init__()
        self.chip, self.levels, self.variation, self.read_noise = chip, int(levels), float(variation), float(read_noise)
        self.ideal = not (chip.stuck.any() or self.variation or self.read_noise)
        self.token = hashlib.sha256(repr((levels, self.variation, self.read_noise)).encode() + chip.token).digest()

    def check(self, arrays: int, rows: int, cols: int) -> None:
        """The chip must hold the program's arrays (same physical shape, at least as many arrays)."""
        why = self.chip.fits(arrays, rows, cols)
        if why:
            raise InputError(f"the device's chip does not match the program: {why}")

    def program(self, array: int, levels: np.ndarray, full: np.ndarray | None = None) -> np.ndarray:
        """``L * (1 + variation * z)`` for working cells (on :func:`fine_grid`'s grid of the cell's top level),
        the lowest or highest level for stuck ones."""
        v = levels.astype(np.float32)
        if self.variation and self.chip.variation is not None:
            v *= 1.0 + np.float32(self.variation) * self.chip.variation[array]
            v = on_grid(v, self.grid(np.full(v.shape[1], self.levels - 1, np.float32)))
        stuck = self.chip.stuck[array]
        v[stuck == SA0] = 0.0
        v[stuck == SA1] = float(self.levels - 1)
        return v

    def grid(self, full: np.ndarray) -> np.ndarray:
        """Whole levels without variation, else :func:`fine_grid` of the cell's top level."""
        if not self.variation:
            return super().grid(full)
        return fine_grid(np.full(np.shape(full), self.levels - 1, np.float32))

    def read(self, ps: np.ndarray, site: ReadSite, rng: np.random.Generator) -> None:
        """Add ``read_noise * N(0, 1)`` to every partial sum."""
        if self.read_noise:
            z = site.normals(ps.shape)
            z *= np.float32(self.read_noise)
            ps += z


GRID_BITS = 16
"""A non-ideal device's stored values are multiples of ``2**-(GRID_BITS - b)`` levels in a column whose full-scale
level ``F`` has ``b`` bits (:func:`fine_grid`): between ``2**-GRID_BITS`` and ``2**-(GRID_BITS - 1)`` of the
column's range from level 0 to ``F``."""


def fine_grid(full: np.ndarray) -> np.ndarray:
    """int64 ``GRID_BITS - b`` per column, ``b`` the bits of its full-scale level ``F >= 1`` (``2**(b-1) <= F <
    2**b``)."""
    return GRID_BITS - np.frexp(np.maximum(np.asarray(full, np.float32), 1))[1].astype(np.int64)


def on_grid(v: np.ndarray, q: np.ndarray) -> np.ndarray:
    """float32 ``v`` ``[R, C]`` rounded to the nearest multiple of ``2**-q[c]`` in each column (half to even; exact
    steps: a power-of-two scaling, a rounding, the inverse scaling)."""
    scale = np.ldexp(np.float32(1), np.asarray(q, np.int32)).astype(np.float32)
    out = np.multiply(v, scale, dtype=np.float32)
    np.rint(out, out=out)
    out /= scale
    return out
