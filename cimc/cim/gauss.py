"""Standard-normal draws addressed by index: the read noise of a conversion depends on which conversion it is,
not on how the crossbar batches the conversions.

A stream is a 128-bit ``key`` (drawn once per crossbar call from the run's generator) and a ``stream`` number
(one per batch of conversions that share a layout, e.g. a row block and input chunk). Its draws come in pages of
``PAGE`` (1024): page ``q`` is a fixed function of ``(key, stream, q)``:

- bits: numpy's PCG64DXSM whose 128-bit state and increment are the two halves of the BLAKE2b-256 hash of ``(key,
  stream)`` (the increment made odd), advanced by ``q * PAGE / 2`` outputs, gives ``PAGE / 2`` 64-bit words; word
  ``i``'s low 32 bits are ``a``, its high 32 bits ``b``; the top 23 bits of each are the mantissa of a float32 ``1 +
  u`` (``u_a``, ``u_b`` uniform in ``[0, 1)``) and bit 0 of each is a sign;
- Box-Muller on a quarter circle with random signs: ``r = sqrt(-2 ln v)`` with ``v = 1 - u_a = 2 - (1 + u_a)`` in
  ``(0, 1]`` (exact), the angle ``phi = pi / 2 * u_b``; draw ``i`` of the page is ``+-r cos(phi)``, draw ``PAGE / 2
  + i`` is ``+-r sin(phi)``, signed by bit 0 of ``a`` and of ``b``. Reflections keep the pair's distribution, so the
  pair is two independent standard normals as with a whole circle.

Every step is an IEEE operation that rounds correctly (add, subtract, multiply, divide, square root, integer bit
operations, small integers to float32), so a draw is the same bits on any CPU, numpy build or SIMD kernel: numpy's
own ``log``, ``cos`` and ``sin`` are not (their float32 loops differ between the baseline, AVX2 and AVX-512 kernels,
and between numpy releases). In float32: ``ln v`` as :func:`cimc.cim.fmath.ln` computes it (inlined on the work
arrays); the angle as ``phi = pi / 4 + psi``, ``|psi| <= pi / 4``, ``sin(psi)`` a
polynomial (``SIN_POLY``, within 1e-8), ``cos(psi) = sqrt(1 - sin(psi)**2)``, and ``r cos(phi) = r / sqrt(2)
(cos(psi) - sin(psi))``, ``r sin(phi) = r / sqrt(2) (cos(psi) + sin(psi))`` with ``r / sqrt(2) = sqrt(-ln v)``.

So :func:`normals` fills any range ``start .. start + n`` of a stream with the same values whatever the ranges
asked before. With 23-bit uniforms the tails stop at ``sqrt(46 ln 2) = 5.65`` standard deviations (probability
``2e-8`` beyond). Every step is a vectorized numpy loop on contiguous float32 arrays of a group of pages; a
counter-based generator (Philox) would do as well for the addressing, but its words cost twice PCG64DXSM's.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from cimc.cim.fmath import LN2, LN_POLY, SQRT_HALF_BITS

__all__ = ["PAGE", "SCRATCH", "draw_key", "normals"]

PAGE = 1024
"""Draws per page (module docstring)."""
_HALF = PAGE // 2
_GROUP = 32
"""Pages computed per pass (32 K draws: the work arrays stay in cache)."""
_F = np.float32
_ONE = np.uint32(0x3F800000)
"""The bits of float32 1.0."""
SIN_POLY = (_F(-0.16666664659127417), _F(0.008332748116784566), _F(-0.00019587865979338843))
"""``sin(psi) = psi (1 + p2 (c0 + p2 (c1 + p2 c2)))``, ``p2 = psi**2``: least squares on ``|psi| <= pi / 4``."""
_MINUS_LN2 = -LN2
_HALF_PI = _F(np.pi / 2)
_THREE_QUARTER_PI = _F(3 * np.pi / 4)
_WORK = 5
"""float32 work arrays of ``_GROUP * _HALF`` values each that :func:`_pages` uses."""
SCRATCH = (_WORK * _HALF + PAGE) * _GROUP
"""float32 values of the work space :func:`normals` uses."""


def draw_key(rng: np.random.Generator) -> tuple[int, int]:
    """A fresh 128-bit stream key from the run's generator (two 64-bit draws)."""
    k = rng.integers(0, 1 << 64, size=2, dtype=np.uint64)
    return int(k[0]), int(k[1])


def _bits(key: tuple[int, int], stream: int, page: int) -> np.random.PCG64DXSM:
    """The generator of stream ``stream`` under ``key``, at the first word of page ``page``."""
    h = hashlib.blake2b(struct.pack("<QQQ", key[0], key[1], stream), digest_size=32).digest()
    bits = np.random.PCG64DXSM(0)
    bits.state = {"bit_generator": "PCG64DXSM", "state": {"state": int.from_bytes(h[:16], "little"),
                                                          "inc": int.from_bytes(h[16:], "little") | 1},
                  "has_uint32": 0, "uinteger": 0}
    if page:
        bits.advance(page * _HALF)
    return bits


def _odd_series(x: np.ndarray, x2: np.ndarray, coeffs, lead: np.float32, out: np.ndarray) -> None:
    """``out = x * (lead + x2 * (c0 + x2 * (c1 + ...)))`` in place, always in this order of float32 operations
    (Horner from the last coefficient), so its bits are the same on every machine; ``x2`` is ``x * x``."""
    np.multiply(x2, coeffs[-1], out=out)
    for c in coeffs[-2::-1]:
        out += c
        out *= x2
    out += lead
    out *= x


def _pages(bits: np.random.PCG64DXSM, pages: int, out: np.ndarray, work: np.ndarray) -> None:
    """The next ``pages`` pages of ``bits`` into ``out`` (float32 ``[pages * PAGE]``); ``work`` float32 of at least
    ``_WORK * pages * PAGE / 2`` values (module docstring)."""
    n = pages * _HALF
    raw = bits.random_raw(n).view(np.uint32)
    a, b = raw[0::2], raw[1::2]
    r, t, s, y, z = (work[i * n:(i + 1) * n] for i in range(_WORK))
    ru, ri, yi, zi = r.view(np.uint32), r.view(np.int32), y.view(np.int32), z.view(np.int32)
    np.right_shift(a, 9, out=ru)
    np.bitwise_or(ru, _ONE, out=ru)  # 1 + u_a in [1, 2)
    np.subtract(_F(2), r, out=r)  # v = 1 - u_a in (0, 1]
    np.subtract(ri, SQRT_HALF_BITS, out=yi)
    np.right_shift(yi, 23, out=yi)  # k
    np.left_shift(yi, 23, out=zi)
    np.subtract(ri, zi, out=ri)  # z = v / 2**k in [sqrt(1/2), sqrt(2))
    np.copyto(z, yi, casting="unsafe")  # k, exactly
    np.subtract(r, _F(1), out=s)
    np.add(r, _F(1), out=y)
    np.divide(s, y, out=s)  # s = (z - 1) / (z + 1)
    np.multiply(s, s, out=y)
    _odd_series(s, y, LN_POLY, _F(2), r)  # ln z
    z *= _MINUS_LN2
    np.subtract(z, r, out=r)  # -ln v
    np.sqrt(r, out=r)  # r / sqrt(2)
    tu = t.view(np.uint32)
    np.right_shift(b, 9, out=tu)
    np.bitwise_or(tu, _ONE, out=tu)  # 1 + u_b
    t *= _HALF_PI
    t -= _THREE_QUARTER_PI  # psi = pi / 2 * u_b - pi / 4
    np.multiply(t, t, out=y)
    _odd_series(t, y, SIN_POLY, _F(1), s)  # sin(psi)
    np.multiply(s, s, out=y)
    np.subtract(_F(1), y, out=y)
    np.sqrt(y, out=y)  # cos(psi)
    np.subtract(y, s, out=t)
    y += s
    t *= r  # r cos(phi)
    y *= r  # r sin(phi)
    zu = z.view(np.uint32)
    np.left_shift(a, 31, out=zu)
    np.bitwise_xor(t.view(np.uint32), zu, out=t.view(np.uint32))
    np.left_shift(b, 31, out=zu)
    np.bitwise_xor(y.view(np.uint32), zu, out=y.view(np.uint32))
    op = out.reshape(pages, 2, _HALF)
    op[:, 0] = t.reshape(pages, _HALF)
    op[:, 1] = y.reshape(pages, _HALF)


def normals(key: tuple[int, int], stream: int, start: int, out: np.ndarray,
            scratch: np.ndarray | None = None) -> np.ndarray:
    """Fill ``out`` (float32, contiguous, any shape) with standard normals ``start .. start + out.size`` of stream
    ``stream`` under ``key`` (module docstring). ``scratch``: float32 work space of at least ``SCRATCH`` values,
    reused between calls (allocated when absent or smaller)."""
    n = out.size
    if n == 0:
        return out
    if scratch is None or scratch.size < SCRATCH:
        scratch = np.empty(SCRATCH, np.float32)
    q0, q1 = start // PAGE, -(-(start + n) // PAGE)
    bits = _bits(key, stream, q0)
    z = out.reshape(-1)
    at = 0  # draws of out written
    work, tmp = scratch[:_WORK * _HALF * _GROUP], scratch[_WORK * _HALF * _GROUP:SCRATCH]
    for g0 in range(q0, q1, _GROUP):
        pages = min(_GROUP, q1 - g0)
        lo = max(start, g0 * PAGE) - g0 * PAGE  # the first draw of these pages that out takes
        take = min(pages * PAGE - lo, n - at)
        if lo == 0 and take == pages * PAGE:
            _pages(bits, pages, z[at:at + take], work)
        else:
            _pages(bits, pages, tmp[:pages * PAGE], work)
            z[at:at + take] = tmp[lo:lo + take]
        at += take
    return out
