"""The ADC: how an analog column partial sum becomes a digital value.

A partial sum ``v`` is counted in units of one input LSB times one cell level (the noiseless sum of
``rows_per_op`` rows of ``dac_bits`` inputs times ``cell_bits`` cells is an integer in ``0..M``,
``M = rows_per_op * (2**dac_bits - 1) * (2**cell_bits - 1)``; a device may make it any real). An
ADC of ``bits`` bits with ``step = 2**e`` (``e >= 0``) and integer ``offset`` converts it so::

    code  = clip(round((v - offset) / step), 0, 2**bits - 1)     round: half to even, or floor
    value = offset + step * code

Its range is ``[offset, offset + step * (2**bits - 1)]``; the digital periphery shifts the code by
``e`` and adds the offset, so every value is an integer. ``step`` and ``offset`` may differ per
array and per group of columns (``group`` physical columns share a range), so that a calibration
can fit each ADC to the partial sums that actually occur; ``rounding`` is ``half-even`` (a flash
ADC's nearest level, ties to even) or ``floor`` (a SAR ADC that truncates).

Exactness: the ADC converts every noiseless partial sum exactly when ``step == 1``, ``offset <= 0``
and ``offset + 2**bits - 1 >= M`` (:meth:`Adc.exact`). The default range (:meth:`Adc.default`) is
``[0, M]`` cut into ``2**bits`` codes: ``step = 2**max(0, need - bits)`` with ``need =
lossless_adc_bits(...)``, offset 0, so it is exact exactly when ``bits >= need``. A differential
pair sensed as one column (``sense = pairs``) sums to ``-M..M``: its default range is ``[-M, M]``,
``need`` one bit more, ``offset = -step * 2**(bits - 1)`` (zero converts to zero).

The conversion is computed as the crossbar runs it (:mod:`cimc.cim.crossbar`): the partial sums are
made already divided by the step (the cells of each column scaled by ``1/step``, exact for a power of
two), then :meth:`Adc.quantize` subtracts ``offset/step``, rounds and clips in place, and the codes
summed by significance become values through :meth:`Adc.values`; when ``offset/step`` is an integer (even, for
half-even rounding) the codes carry it instead (:meth:`Adc.folded`: round, then clip to ``[offset/step,
offset/step + 2**bits - 1]``), which saves the subtraction and the addition of the offset. :meth:`Adc.convert`
is the same sequence on given partial sums.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from cimc.errors import InputError

__all__ = ["ROUNDINGS", "Adc", "lossless_adc_bits"]

ROUNDINGS = ("half-even", "floor")
"""How a conversion rounds ``(v - offset) / step``: to the nearest code (ties to even) or down."""


def lossless_adc_bits(rows_per_op: int, dac_bits: int, cell_bits: int) -> int:
    """ADC resolution that converts every partial sum exactly: a column with ``rows_per_op`` word
    lines on, inputs of ``dac_bits`` and cells of ``cell_bits`` (both unsigned slices) sums to at
    most ``M = rows_per_op * (2**dac_bits - 1) * (2**cell_bits - 1)``, and the ``M + 1`` values
    ``0..M`` need ``ceil(log2(M + 1))`` bits. E.g. 64 rows, 1-b inputs, 1-b cells: 7 bits."""
    if min(rows_per_op, dac_bits, cell_bits) < 1:
        raise InputError(f"lossless_adc_bits needs positive arguments, got rows_per_op={rows_per_op}, "
                         f"dac_bits={dac_bits}, cell_bits={cell_bits}")
    return max_partial_sum(rows_per_op, dac_bits, cell_bits).bit_length()  # == ceil(log2(M+1))


def max_partial_sum(rows_per_op: int, dac_bits: int, cell_bits: int) -> int:
    """``M``, the largest noiseless partial sum of one conversion (module docstring)."""
    return rows_per_op * ((1 << dac_bits) - 1) * ((1 << cell_bits) - 1)


@dataclass(frozen=True, eq=False)
class Adc:
    """The ADCs of one instruction: resolution, rounding, and a range per array and column group.

    ``step`` and ``offset`` are int64 arrays of shape ``[]`` (one range for every ADC) or ``[T, groups]``
    (per tile of the instruction, i.e. per array, and per ``group`` physical columns); :meth:`columns`
    gives the per-column ranges of some columns of a tile, shaped ``[C]`` (the crossbar's view).
    """

    bits: int
    step: np.ndarray
    offset: np.ndarray
    group: int = 0
    """Physical columns sharing one range (0: the whole array)."""
    rounding: str = "half-even"

    def __post_init__(self) -> None:
        object.__setattr__(self, "step", np.asarray(self.step, np.int64))
        object.__setattr__(self, "offset", np.asarray(self.offset, np.int64))
        if problems := self.problems():
            raise InputError("ADC: " + "; ".join(problems))

    @classmethod
    def default(cls, bits: int, rows_per_op: int, dac_bits: int, cell_bits: int, signed: bool = False) -> Adc:
        """The worst-case range in ``2**bits`` codes: ``[0, M]``, or ``[-M, M]`` for ``signed`` sums (a differential
        pair sensed as one column); exact when ``bits`` reaches the lossless bits (one more when signed)."""
        need = lossless_adc_bits(rows_per_op, dac_bits, cell_bits) + signed
        step = 1 << max(0, need - bits)
        return cls(bits, np.asarray(step, np.int64), np.asarray(-step << (bits - 1) if signed else 0, np.int64))

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Adc:
        """The ADC an instruction's attributes describe (``adc_bits``, ``adc_step``, ``adc_offset``,
        ``adc_group``, ``adc_rounding``; a missing step or offset is the default range)."""
        base = cls.default(int(attrs["adc_bits"]), int(attrs["rows_per_op"]), int(attrs["dac_bits"]),
                           int(attrs["cell_bits"]), attrs.get("sense", "columns") == "pairs")
        step, offset = attrs.get("adc_step"), attrs.get("adc_offset")
        return cls(int(attrs["adc_bits"]), base.step if step is None else step,
                   base.offset if offset is None else offset, int(attrs.get("adc_group", 0)),
                   str(attrs.get("adc_rounding", "half-even")))

    def attrs(self) -> dict[str, Any]:
        """The instruction attributes describing this ADC (the inverse of :meth:`from_attrs`)."""
        return {"adc_bits": self.bits, "adc_step": self.step, "adc_offset": self.offset, "adc_group": self.group,
                "adc_rounding": self.rounding}

    def problems(self, tiles: int | None = None, columns: int | None = None) -> list[str]:
        """What is wrong with these parameters (for ``tiles`` tiles of ``columns`` physical columns, if given)."""
        out = []
        if not 1 <= self.bits <= 24:
            out.append(f"adc_bits = {self.bits} is out of range: expected 1..24")
        if self.rounding not in ROUNDINGS:
            out.append(f"adc_rounding = {self.rounding!r} is not one of {', '.join(ROUNDINGS)}")
        if self.group < 0:
            out.append(f"adc_group = {self.group} must be >= 0 (physical columns per range; 0: all)")
        if self.step.shape != self.offset.shape or self.step.ndim > 2 or (tiles is not None and self.step.ndim == 1):
            out.append(f"adc_step {list(self.step.shape)} and adc_offset {list(self.offset.shape)} must both be "
                       f"[] or both [tiles, column groups]")
        elif self.step.size and ((self.step < 1) | (self.step & (self.step - 1) != 0)).any():
            bad = self.step[(self.step < 1) | (self.step & (self.step - 1) != 0)].reshape(-1)[0]
            out.append(f"adc_step holds {int(bad)}: a step is a power of two >= 1 (the periphery shifts codes)")
        elif self.step.ndim == 2 and tiles is not None and columns is not None:
            groups = -(-columns // (self.group or columns))
            if self.step.shape != (tiles, groups):
                out.append(f"adc_step is {list(self.step.shape)}, the instruction's {tiles} tiles of {columns} "
                           f"physical columns in groups of {self.group or columns} need [{tiles}, {groups}]")
        return out

    @property
    def top(self) -> int:
        """The largest code, ``2**bits - 1``."""
        return (1 << self.bits) - 1

    def exact(self, most: int, least: int = 0) -> bool:
        """Whether every integer partial sum in ``least..most`` converts to itself (module docstring)."""
        return bool((self.step == 1).all() and (self.offset <= least).all() and (self.offset + self.top >= most).all())

    def columns(self, tile: int, cols: np.ndarray) -> Adc:
        """The ranges of physical columns ``cols`` of tile ``tile`` (``[C]`` step and offset arrays)."""
        if self.step.ndim == 0:
            return self
        group = self.group or max(1, int(cols.max(initial=0)) + 1)
        g = np.asarray(cols, np.int64) // group
        return Adc(self.bits, self.step[tile, g], self.offset[tile, g], 1, self.rounding)

    @staticmethod
    def join(parts: list[Adc]) -> Adc:
        """Column ranges of several tiles side by side (each from :meth:`columns`)."""
        first = parts[0]
        if len(parts) == 1 or all(p is first for p in parts):
            return first
        n = [1 if p.step.ndim == 0 else 0 for p in parts]
        if any(n):
            raise ValueError("Adc.join takes per-column ranges (Adc.columns of per-tile ranges)")
        return Adc(first.bits, np.concatenate([p.step for p in parts]), np.concatenate([p.offset for p in parts]),
                   1, first.rounding)

    def scale(self, dtype: DTypeLike = np.float32) -> np.ndarray:
        """``1 / step`` per column (or one value), exact in float: multiply the cells or sums by it."""
        return (1.0 / self.step.astype(np.float64)).astype(dtype)

    def folded(self) -> np.ndarray | None:
        """``offset / step`` (int64) when the codes can carry it: when it is an integer (and even, for half-even
        rounding, whose ties go to the even neighbour), ``round(u - s) + s == round(u)``, so :meth:`quantize` with
        ``folded`` yields each code plus ``s`` without subtracting, and :meth:`values` adds no offset. ``None``
        otherwise, or with no offset."""
        if not self.offset.any():
            return None
        q, r = np.divmod(self.offset, self.step)
        if r.any() or (self.rounding == "half-even" and (q % 2).any()):
            return None
        return q

    def quantize(self, u: np.ndarray, bounds: tuple[float, float] | None = None,
                 folded: np.ndarray | None = None) -> np.ndarray:
        """Codes of partial sums already divided by the step (``u = v / step``, columns last), in place:
        ``clip(round(u - offset / step), 0, 2**bits - 1)``, or with ``folded`` (:meth:`folded`) those codes plus
        it, ``clip(round(u), s, s + 2**bits - 1)``. ``bounds``: the least and largest ``u`` can be, if known (a
        clip that no value reaches is skipped: same codes, less work)."""
        if folded is not None:
            return self._quantize_folded(u, bounds, folded)
        sub = self.offset / self.step
        if self.offset.any():
            u -= sub.astype(u.dtype)
        if self.rounding == "half-even":
            np.rint(u, out=u)
        else:
            np.floor(u, out=u)
        if bounds is None:
            return np.clip(u, 0, self.top, out=u)
        if bounds[0] - float(np.max(sub)) < 0:
            np.maximum(u, 0, out=u)
        if math.floor(bounds[1] - float(np.min(sub)) + 0.5) > self.top:
            np.minimum(u, self.top, out=u)
        return u

    def _quantize_folded(self, u: np.ndarray, bounds: tuple[float, float] | None, s: np.ndarray) -> np.ndarray:
        if self.rounding == "half-even":
            np.rint(u, out=u)
        else:
            np.floor(u, out=u)
        lo, hi = s.astype(u.dtype), (s + self.top).astype(u.dtype)
        if bounds is None:
            return np.clip(u, lo, hi, out=u)
        if bounds[0] < float(np.max(s)):
            np.maximum(u, lo, out=u)
        if math.floor(bounds[1] + 0.5) > float(np.min(s)) + self.top:
            np.minimum(u, hi, out=u)
        return u

    def values(self, code_sum: np.ndarray, weight: float | np.ndarray, folded: bool = False) -> np.ndarray:
        """Values of codes summed with significances whose total is ``weight`` (one number, or one per
        column): ``sum_i w_i * code_i`` becomes ``sum_i w_i * (offset + step * code_i)``, columns last, in place
        (``folded``: the codes carry ``offset / step`` already, :meth:`folded`)."""
        if not (self.step == 1).all():
            code_sum *= self.step.astype(code_sum.dtype)
        if self.offset.any() and not folded:
            code_sum += (self.offset * weight).astype(code_sum.dtype)
        return code_sum

    def convert(self, v: np.ndarray) -> np.ndarray:
        """Values of partial sums ``v`` (columns last; float64 copy): the module docstring's formula."""
        u = np.asarray(v, np.float64) * self.scale(np.float64)
        return self.values(self.quantize(u), 1.0)
