"""float32 ``ln`` and ``exp`` from correctly rounded operations only: the same bits on every CPU and numpy build.

numpy's own ``log``, ``exp`` and ``power`` loops are not: their float32 and float64 results differ in the last bits
between the baseline, AVX2 and AVX-512 kernels numpy dispatches to, and between numpy releases. The device model's
random quantities (read noise, drift) go through these functions instead, so a seeded run is the same bits anywhere.
Every step is a float32 add, subtract, multiply, divide or square root (IEEE: correctly rounded, whatever the SIMD
width), an integer bit operation, or an exact conversion; each is one vectorized numpy loop.

- :func:`ln`: ``x = 2**k z`` with ``z`` in ``[sqrt(1/2), sqrt(2))`` split off by the float's bits, ``ln z = 2
  atanh(s)``, ``s = (z - 1) / (z + 1)`` (``|s| <= 0.172``), ``2 atanh(s) = s (2 + s2 (c0 + s2 (c1 + s2 c2)))``
  (``LN_POLY``, least squares, within 2e-9 of ``ln z``), plus ``k ln 2``;
- :func:`exp`: ``y = k ln 2 + r``, ``k`` the nearest integer to ``y / ln 2``, ``r`` by Cody and Waite's two-part
  ``ln 2`` (the first part's product with ``k`` exact), ``e**r = 1 + r + r**2 (c0 + r (c1 + ...))`` (``EXP_POLY``,
  within 3e-8 for ``|r| <= ln(2) / 2``), times ``2**k`` (exact).

Both are within a few float32 units in the last place of the true values.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EXP_POLY", "LN_POLY", "SQRT_HALF_BITS", "exp", "ln"]

_F = np.float32
LN_POLY = (_F(0.666666797484987), _F(0.3999083184618934), _F(0.294912735743161))
"""``2 atanh(s) = s (2 + s2 (c0 + s2 (c1 + s2 c2)))``, ``s2 = s**2`` (module docstring)."""
EXP_POLY = (_F(0.5000000009331004), _F(0.1666659836338156), _F(0.04166650367420639), _F(0.008359856068330325),
            _F(0.0013929573086969426))
"""``e**r = 1 + r + r**2 (c0 + r (c1 + r (c2 + r (c3 + r c4))))`` (module docstring)."""
SQRT_HALF_BITS = np.int32(0x3F3504F3)
"""The bits of float32 sqrt(1/2): a positive float's bits less these, shifted right by 23, are ``k`` of ``2**k z``."""
LN2 = _F(0.6931471805599453)
_LN2_HI = _F(0.693115234375)
"""ln 2 to 12 significant bits: ``k * _LN2_HI`` is exact for ``|k| < 2**12``."""
_LN2_LO = _F(0.6931471805599453 - 0.693115234375)
_INV_LN2 = _F(1.4426950408889634)


def ln(x: np.ndarray | np.floating | float) -> np.ndarray:
    """float32 natural logarithm of positive, finite, normal float32 ``x`` (module docstring)."""
    x = np.array(x, np.float32, ndmin=1)
    bits = x.view(np.int32)
    k = np.subtract(bits, SQRT_HALF_BITS)
    k >>= 23
    bits -= k << 23  # x is now z, in [sqrt(1/2), sqrt(2))
    s = x - _F(1)
    x += _F(1)
    s /= x
    y = np.multiply(s, s, out=x)
    p = np.multiply(y, LN_POLY[2])
    p += LN_POLY[1]
    p *= y
    p += LN_POLY[0]
    p *= y
    p += _F(2)
    p *= s
    kf = k.astype(np.float32)
    kf *= LN2
    p += kf
    return p


def exp(y: np.ndarray | np.floating | float) -> np.ndarray:
    """float32 ``e**y`` of finite float32 ``y``, ``-87 < y < 88`` (module docstring)."""
    y = np.array(y, np.float32, ndmin=1)
    k = np.multiply(y, _INV_LN2)
    np.rint(k, out=k)
    r = np.multiply(k, _LN2_HI)
    np.subtract(y, r, out=r)
    t = np.multiply(k, _LN2_LO)
    r -= t
    p = np.multiply(r, EXP_POLY[4], out=t)
    for c in EXP_POLY[3::-1]:
        p += c
        p *= r
    p *= r
    p += r
    p += _F(1)
    return np.ldexp(p, k.astype(np.int32)).astype(np.float32, copy=False)
