"""ADC range calibration: the partial sums an MVM instruction's ADCs see, and the range that fits them.

Statistics (:func:`column_histograms`): for one tile of an MVM instruction, the inputs ``x`` it reads
(positions sampled), and the cells its array holds (as the device stores them), every analog partial
sum the crossbar converts (:mod:`cimc.cim.crossbar`: each driven row block, each input chunk, each
converted column, a differential pair as one signed sum) is counted into a histogram per converted
column over ``least..most`` (``0..M``, or ``-M..M`` for pairs) in bins of ``width`` (a power of two,
1 unless ``M`` is large). Each count also goes, weighted by the square of what an error in that sum
weighs in the layer's result (``(2**(j*dac_bits) * significance)**2``: the input chunk's and the slice's
place), into a second histogram: the mean squared error of a range on it is the error it adds to the
result.

Fitting (:func:`fit`): the ADC's range is ``[offset, offset + step * (2**bits - 1)]`` with ``step`` a
power of two (:mod:`cimc.cim.adc`). Two methods:

- ``mse``: for every step ``2**e``, ``e = 0 .. need - bits`` (no larger step can help a noiseless
  sum), the weighted squared error of converting every bin centre (rounding and clipping as the ADC
  does) at offsets on a grid of 64 from ``min - span`` to ``max`` (``span = step * (2**bits - 1)``),
  at the histogram's low quantiles ``0, 1e-5, 1e-4, 1e-3, 1e-2`` and high quantiles less the span and at
  the worst-case range's offset, then at every integer offset within one grid stride of the best; the
  least error wins (ties: the smaller step and offset, so the result is deterministic);
- ``percentile``: the range covers the central ``p`` of the counts (from quantile ``(1 - p) / 2`` to
  ``(1 + p) / 2``) with the smallest step that spans it, offset at the low quantile.

Both give the worst-case range (:meth:`Adc.default`) for an empty histogram. A range that already
converts every noiseless sum exactly is never asked for: calibration is for lossy ADCs only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cimc.cim.adc import Adc, lossless_adc_bits, max_partial_sum
from cimc.cim.crossbar import physical_rows

__all__ = ["METHODS", "Histogram", "column_histograms", "fit"]

METHODS = ("mse", "percentile")
"""How :func:`fit` chooses a range (module docstring)."""
MAX_BINS = 4096
"""Most bins of a histogram: wider bins (a power of two) beyond."""
_LOW_Q = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
_GRID = 64
"""Offsets tried per step on the coarse grid (then every offset around the best one)."""


@dataclass(frozen=True)
class Histogram:
    """Partial-sum histograms of ``C`` converted columns over ``least .. least + width * (bins - 1)``."""

    counts: np.ndarray
    """float64 ``[C, bins]``: how many sums fell in each bin."""
    weighted: np.ndarray
    """float64 ``[C, bins]``: the same, each sum weighted by the square of its weight in the result."""
    least: int
    width: int

    @staticmethod
    def geometry(rows_per_op: int, dac_bits: int, cell_bits: int, signed: bool) -> tuple[int, int, int]:
        """``(least, width, bins)`` of the histograms of such sums."""
        most = max_partial_sum(rows_per_op, dac_bits, cell_bits)
        least = -most if signed else 0
        span = most - least + 1
        width = 1 << max(0, (span - 1) // MAX_BINS).bit_length() if span > MAX_BINS else 1
        return least, width, -(-span // width)

    @property
    def centres(self) -> np.ndarray:
        """The value each bin stands for."""
        return self.least + self.width * np.arange(self.counts.shape[-1], dtype=np.float64)


def column_histograms(x: np.ndarray, stored: np.ndarray, row_at: np.ndarray, col_at: np.ndarray, blocks: np.ndarray,
                      *, rows_per_op: int, dac_bits: int, act_bits: int, cell_bits: int,
                      column_weight: np.ndarray, pairs: np.ndarray | None = None) -> Histogram:
    """Histograms of the partial sums of one tile (module docstring).

    ``x``: u8 ``[P, k]``, the tile's input rows at the sampled positions; ``stored``: the array's cells as held
    (``[R, C_phys]``, level units); ``row_at``/``col_at``: the tile's placement; ``blocks``: the physical row
    blocks it drives; ``column_weight``: ``[C']`` the significance of each converted column's slice;
    ``pairs``: ``[C', 2]`` logical columns sensed together as (positive, negative), or ``None``.
    """
    R = stored.shape[0]
    xp = physical_rows(x, row_at, max(R, (int(blocks.max(initial=0)) + 1) * rows_per_op))
    img = np.asarray(stored[:, col_at], np.float64)
    signed = pairs is not None
    least, width, bins = Histogram.geometry(rows_per_op, dac_bits, cell_bits, signed)
    C = len(col_at) if pairs is None else len(pairs)
    counts = np.zeros(C * bins, np.float64)
    weighted = np.zeros(C * bins, np.float64)
    J = -(-act_bits // dac_bits)
    mask = np.uint8((1 << dac_bits) - 1)
    base = np.arange(C, dtype=np.int64) * bins
    w2 = np.asarray(column_weight, np.float64) ** 2
    for b in blocks.tolist():
        rows = slice(b * rows_per_op, min((b + 1) * rows_per_op, R))
        cells = img[rows]
        xb = xp[:, rows]
        for j in range(J):
            plane = ((xb >> np.uint8(j * dac_bits)) & mask).astype(np.float64)
            ps = plane @ cells
            if pairs is not None:
                ps = ps[:, pairs[:, 0]] - ps[:, pairs[:, 1]]
            idx = np.clip(np.rint((ps - least) / width), 0, bins - 1).astype(np.int64) + base[None, :]
            flat = idx.reshape(-1)
            counts += np.bincount(flat, minlength=C * bins)
            weighted += np.bincount(flat, weights=np.broadcast_to(w2 * float(1 << (2 * j * dac_bits)),
                                                                 ps.shape).reshape(-1), minlength=C * bins)
    return Histogram(counts.reshape(C, bins), weighted.reshape(C, bins), least, width)


def _quantile(cum: np.ndarray, centres: np.ndarray, q: float) -> float:
    """The first bin centre at which the cumulative share of counts reaches ``q`` (and some count is held)."""
    t = q * cum[-1] * (1 - 1e-12)
    i = int(np.searchsorted(cum, t, side="left")) if t > 0 else int(np.searchsorted(cum, 0.0, side="right"))
    return float(centres[min(i, len(centres) - 1)])


def fit(counts: np.ndarray, weighted: np.ndarray, centres: np.ndarray, *, bits: int, rows_per_op: int,
        dac_bits: int, cell_bits: int, signed: bool, rounding: str, method: str, percentile: float = 99.99
        ) -> tuple[int, int]:
    """``(step, offset)`` of the range of ``bits`` bits that fits one histogram (module docstring)."""
    default = Adc.default(bits, rows_per_op, dac_bits, cell_bits, signed)
    fallback = int(default.step), int(default.offset)
    total = float(counts.sum())
    if total <= 0:
        return fallback
    top = (1 << bits) - 1
    cum = np.cumsum(counts)
    need = lossless_adc_bits(rows_per_op, dac_bits, cell_bits) + signed
    if method == "percentile":
        p = percentile / 100.0
        lo = int(np.floor(_quantile(cum, centres, (1 - p) / 2)))
        hi = int(np.ceil(_quantile(cum, centres, (1 + p) / 2)))
        e = 0
        while (1 << e) * top < hi - lo and e < max(0, need - bits):
            e += 1
        return 1 << e, lo
    live = (counts > 0) | (weighted > 0)
    v, wt = centres[live], weighted[live]
    if not wt.any():
        wt = counts[live]
    least, most = float(v.min()), float(v.max())
    best = (np.inf, fallback)
    for e in range(0, max(0, need - bits) + 1):
        step = 1 << e
        span = step * top
        default_offset = fallback[1] if step == fallback[0] else (-step << (bits - 1) if signed else 0)
        coarse = np.unique(np.concatenate([
            np.floor(np.linspace(least - span, most, _GRID)),
            [np.floor(_quantile(cum, centres, q)) for q in _LOW_Q],
            [np.ceil(_quantile(cum, centres, 1 - q)) - span for q in _LOW_Q],
            [default_offset]]))
        err = _errors(v, wt, step, coarse, top, rounding)
        at = float(coarse[int(np.argmin(err))])
        stride = max(1.0, float(np.ceil((most - least + span) / _GRID)))
        fine = np.unique(np.concatenate([coarse, np.arange(at - stride, at + stride + 1)]))
        err = _errors(v, wt, step, fine, top, rounding)
        k = int(np.argmin(err))
        if err[k] < best[0]:
            best = (float(err[k]), (step, int(fine[k])))
    return best[1]


def _errors(v: np.ndarray, wt: np.ndarray, step: int, offsets: np.ndarray, top: int, rounding: str) -> np.ndarray:
    """Weighted squared conversion error of the values ``v`` for each offset (one step)."""
    u = (v[None, :] - offsets[:, None]) / step
    code = np.clip(np.rint(u) if rounding == "half-even" else np.floor(u), 0, top)
    return ((offsets[:, None] + step * code - v[None, :]) ** 2 * wt[None, :]).sum(axis=1)
