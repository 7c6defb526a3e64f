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
``requantize`` (what ``q.requant`` runs) adds the zero point and clamps, in cache-sized blocks.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from cimc.errors import CimcError

__all__ = ["BLOCK", "MAX_SHIFT", "blocks", "quantize_multiplier", "quantize_multipliers", "requantize", "rescale",
           "shared_multipliers"]

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


def quantize_multipliers(multipliers: ArrayLike) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """:func:`quantize_multiplier` of each of ``multipliers`` as ``(M0s, shifts)`` tuples of ints, vectorized (the
    same bits: frexp and scaling by powers of two are exact, ``rint`` rounds half to even like ``round``)."""
    ms = np.asarray(multipliers, np.float64)
    if ms.size == 0:
        return (), ()
    if not (ms.min() >= 0.0 and ms.max() < 2.0**30):  # NaN fails too: raise quantize_multiplier's error
        quantize_multiplier(next(m for m in ms.tolist() if not 0.0 <= m < 2.0**30))
    f, e = np.frexp(ms)
    m0 = np.rint(f * 2.0**31)
    carry = m0 == 2.0**31
    m0[carry], e[carry] = 2.0**30, e[carry] + 1
    shift = 31 - e
    tiny = shift > MAX_SHIFT
    m0[tiny], shift[tiny] = np.rint(ms[tiny] * 2.0**MAX_SHIFT), MAX_SHIFT
    zero = ms == 0.0
    m0[zero], shift[zero] = 0.0, 31
    return tuple(m0.astype(np.int64).tolist()), tuple(shift.astype(np.int64).tolist())


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


BLOCK = 1 << 18
"""Elements per block of ``blocks``: few numpy calls per op, and the 64-bit temporaries stay in cache."""


def blocks(x: np.ndarray, out: np.ndarray, axis: int, *per: np.ndarray):
    """``(x block, out block, *per blocks)`` views covering the C-contiguous ``x`` and ``out`` in
    pieces of about ``BLOCK`` elements; each ``per`` (one value, or one per index of ``axis``) is
    shaped to broadcast against the pieces."""
    if all(p.size == 1 for p in per):
        xf, of, ones = x.reshape(1, -1), out.reshape(1, -1), [p.reshape(1, 1) for p in per]
        return ((xf[:, s:s + BLOCK], of[:, s:s + BLOCK], *ones) for s in range(0, x.size, BLOCK))
    axis %= x.ndim
    lead, n, tail = math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1:])
    flat = [np.broadcast_to(p.ravel(), (n,)) for p in per]
    if tail >= 64:  # rows of one channel, one value per row
        shape, parts = (lead * n, tail), [np.tile(p, lead).reshape(-1, 1) for p in flat]
    else:  # rows of all channels, the values repeated along the row
        shape, parts = (lead, n * tail), [np.repeat(p, tail).reshape(1, -1) for p in flat]
    x2, o2 = x.reshape(shape), out.reshape(shape)
    rows, cols = max(1, BLOCK // max(shape[1], 1)), min(shape[1], BLOCK) or 1
    return ((x2[r:r + rows, c:c + cols], o2[r:r + rows, c:c + cols],
             *(p[r:r + rows] if tail >= 64 else p[:, c:c + cols] for p in parts))
            for r in range(0, shape[0], rows) for c in range(0, shape[1], cols))


def requantize(acc: np.ndarray, m0, shift, zero_point: int, lo: int, hi: int, axis: int = 1) -> np.ndarray:
    """``clip(rescale(acc, m0, shift) + zero_point, lo, hi)`` as uint8, bit for bit, with ``m0`` and
    ``shift`` one value or one per index of ``axis``; computed block by block in cache.

    An integer accumulator of at most 32 bits (what every quantized op makes) runs :func:`_requantize_narrow`;
    wider ones, or ones that fail its bound, the formula as written, with the zero point joining the rounding
    term ``(acc*M0 + 2**(s-1) + zero_point*2**s) >> s`` while that term stays within ``2**62``.
    """
    m0, shift = np.broadcast_arrays(np.asarray(m0, np.int64), np.asarray(shift, np.int64))
    if acc.dtype.kind in "iu" and acc.dtype.itemsize <= 4 and m0.size and int(m0.min()) >= 0:
        out = _requantize_narrow(np.ascontiguousarray(acc), m0, shift, zero_point, lo, hi, axis)
        if out is not None:
            return out
    acc = np.ascontiguousarray(acc if acc.dtype.kind in "iu" and acc.dtype.itemsize <= 4 else acc.astype(np.int64))
    out = np.empty(acc.shape, np.uint8)
    info = np.iinfo(acc.dtype)
    fold = (max(-info.min, info.max) <= 2**31 and 0 <= m0.min(initial=0) and m0.max(initial=0) < 2**31
            and (abs(zero_point) + 1) << int(shift.max(initial=1)) <= 1 << 62)
    rnd = (np.int64(1) << (shift - 1)) + (np.int64(zero_point) << shift if fold else 0)
    g = np.empty(min(acc.size, BLOCK), np.int64)
    for xb, ob, mb, rb, sb in blocks(acc, out, axis, m0, rnd, shift):
        v = g[:xb.size].reshape(xb.shape)
        np.copyto(v, xb)  # then same-type products: faster than one mixed-type multiply
        v *= mb
        v += rb
        v >>= sb
        if not fold:
            v += zero_point
        np.copyto(ob, np.clip(v, lo, hi, out=v), casting="unsafe")
    return out


def _first_at_least(m0: int, shift: int, zero_point: int, level: int) -> int:
    """The least integer ``a`` with ``((a*m0 + 2**(shift-1)) >> shift) + zero_point >= level`` (``m0 > 0``)."""
    need = ((level - zero_point) << shift) - (1 << (shift - 1))  # a*m0 >= need
    return -(-need // m0)


def _requantize_narrow(acc: np.ndarray, m0: np.ndarray, shift: np.ndarray, zero_point: int, lo: int, hi: int,
                       axis: int) -> np.ndarray | None:
    """:func:`requantize` of an integer ``acc`` of at most 32 bits (C-contiguous; ``m0 >= 0``), the same bits in
    fewer and cheaper passes, or ``None`` when its int64 bound fails.

    Each channel's result ``q_c(a) = ((a*M0 + 2**(s-1)) >> s) + zero_point`` rises with ``a``: every ``a`` at or
    below ``B1_c``, the greatest with ``q_c(a) <= lo``, clamps to ``lo``, and every ``a`` at or above ``B2_c``, the
    least with ``q_c(a) >= hi``, to ``hi``. So ``acc`` is first clamped to ``[min_c B1_c, max_c B2_c]``, which
    changes no result and bounds ``|a|`` by the data's worst case; then every channel takes the largest shift
    ``S`` (``M0 << (S - s)``: the same quotient), so the rounding term and the shift are scalars; one multiplier
    when all are equal. The final clamp is left out when no channel's result can leave ``[lo, hi]`` on the
    clamped range (steps of at most 1). All of it while ``|a| * M0 + |rounding term|`` stays below ``2**63``.
    """
    info = np.iinfo(acc.dtype)
    pairs = set(zip(m0.reshape(-1).tolist(), shift.reshape(-1).tolist(), strict=True))
    S = max(s for _, s in pairs)
    if min(s for _, s in pairs) < 1:
        return None
    b1: list[int] = []
    b2: list[int] = []
    for M, s in pairs:
        if M == 0:  # a constant result: no bound on a from this channel
            c = ((1 << (s - 1)) >> s) + zero_point
            b1.append(info.max if c <= lo else info.min)
            b2.append(info.min if c >= hi else info.max)
        else:
            b1.append(_first_at_least(M, s, zero_point, lo + 1) - 1)
            b2.append(_first_at_least(M, s, zero_point, hi))
    a1, a2 = max(min(b1), info.min), min(max(b2), info.max)
    if a1 > a2:  # lo >= hi: the results clamp alike whatever a is; keep the formula as written
        return None
    rnd = (1 << (S - 1)) + (zero_point << S)
    if max(abs(a1), abs(a2)) * max(M << (S - s) for M, s in pairs) + abs(rnd) >= 1 << 63:
        return None

    def q(a: int, M: int, s: int) -> int:
        return ((a * M + (1 << (s - 1))) >> s) + zero_point

    inside = all(lo <= q(a1, M, s) and q(a2, M, s) <= hi for M, s in pairs)
    if len({M << (S - s) for M, s in pairs}) == 1:
        M, s = next(iter(pairs))
        per = np.asarray(M << (S - s), np.int64)
    else:
        per = m0 << (S - shift)
    lo1, hi1, rnd1, S1 = acc.dtype.type(a1), acc.dtype.type(a2), np.int64(rnd), np.int64(S)
    out = np.empty(acc.shape, np.uint8)
    g = np.empty(min(acc.size, BLOCK), np.int64)
    for xb, ob, mb in blocks(acc, out, axis, per):
        v = g[:xb.size].reshape(xb.shape)
        np.clip(xb, lo1, hi1, out=v)
        v *= mb
        v += rnd1
        v >>= S1
        np.copyto(ob, v if inside else np.clip(v, lo, hi, out=v), casting="unsafe")
    return out
