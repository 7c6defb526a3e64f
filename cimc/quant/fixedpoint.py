"""Fixed-point requantization: a real multiplier ``m`` as an int32 ``M0`` and a right ``shift``.

``m = M0 * 2**-shift`` with ``M0`` in ``[2**30, 2**31)`` (31 significant bits) and
``1 <= shift <= 62``: from ``m = f * 2**e`` (``f`` in ``[0.5, 1)``, ``math.frexp``),
``M0 = round_half_even(f * 2**31)`` (if that reaches ``2**31``, ``M0 = 2**30`` and ``e += 1``) and
``shift = 31 - e``. Multipliers below ``2**-32`` keep ``shift = 62`` and a smaller ``M0``
(``round(m * 2**62)``, possibly 0); multipliers of ``2**30`` or more are an error.

Applying it is integer-only, with round half up (toward +inf) at the one rounding step::

    rescale(acc) = (acc * M0 + (1 << (shift - 1))) >> shift      # int64, arithmetic shift

Exact in int64 for ``|acc| < 2**31`` (the product stays below ``2**62``). Two multipliers that
feed one sum (``q.add``) share one shift, chosen for the larger, so the sum rounds once.
"""

from __future__ import annotations

import math

import numpy as np

from cimc.errors import CimcError

__all__ = ["MAX_SHIFT", "quantize_multiplier", "rescale", "shared_multipliers"]

MAX_SHIFT = 62
"""Largest right shift; keeps ``acc * M0 + rounding`` inside int64."""


def quantize_multiplier(m: float) -> tuple[int, int]:
    """``(M0, shift)`` with ``m ~= M0 * 2**-shift`` (see the module doc); ``m`` must be in ``[0, 2**30)``."""
    m = float(m)
    if not 0.0 <= m < 2.0**30 or math.isnan(m):
        raise CimcError(f"requantization multiplier {m!r} is outside [0, 2**30); the scales are degenerate "
                        "(check the calibration ranges)")
    if m == 0.0:
        return 0, 31
    f, e = math.frexp(m)
    m0 = round(f * 2.0**31)
    if m0 == 2**31:
        m0, e = 2**30, e + 1
    shift = 31 - e
    if shift > MAX_SHIFT:
        return round(m * 2.0**MAX_SHIFT), MAX_SHIFT
    return m0, shift


def shared_multipliers(ma: float, mb: float) -> tuple[int, int, int]:
    """``(Na, Nb, shift)`` with ``ma ~= Na * 2**-shift`` and ``mb ~= Nb * 2**-shift``; the shift is
    that of the larger multiplier, so both ``N`` stay below ``2**31``."""
    _, shift = quantize_multiplier(max(ma, mb))
    return round(float(ma) * 2.0**shift), round(float(mb) * 2.0**shift), shift


def rescale(acc: np.ndarray, m0: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """``(acc * m0 + 2**(shift-1)) >> shift`` in int64 (``m0``/``shift`` broadcast against ``acc``)."""
    m0 = np.asarray(m0, np.int64)
    shift = np.asarray(shift, np.int64)
    v = acc.astype(np.int64)  # a fresh array: the steps below work in place on it
    v *= m0
    v += np.int64(1) << (shift - 1)
    v >>= shift
    return v
