"""Standard-normal draws addressed by index: the read noise of a conversion depends on which conversion it is,
not on how the crossbar batches the conversions.

A stream is a 128-bit ``key`` (drawn once per crossbar call from the run's generator) and a ``stream`` number
(one per batch of conversions that share a layout, e.g. a row block and input chunk). Its draws come in pages of
``PAGE`` (1024): page ``q`` is a fixed function of ``(key, stream, q)``:

- bits: numpy's PCG64DXSM whose 128-bit state and increment are the two halves of the BLAKE2b-256 hash of ``(key,
  stream)`` (the increment made odd), advanced by ``q * PAGE / 2`` outputs, gives ``PAGE / 2`` 64-bit words, i.e.
  ``PAGE`` 32-bit halves (low half first); each half's top 23 bits are the mantissa of a float32 ``1 + u``, ``u``
  uniform in ``[0, 1)``: the first ``PAGE / 2`` are ``a``, the others ``b``;
- Box-Muller, in float32: ``r = sqrt(-2 ln(1 - u_a))`` (``1 - u_a = 2 - a`` in ``(0, 1]``, exact), draws ``0 ..
  PAGE/2`` of the page are ``r cos(2 pi b)``, draws ``PAGE/2 .. PAGE`` are ``r sin(2 pi b)`` (``2 pi b = 2 pi u_b
  + 2 pi``: the same angle).

So :func:`normals` fills any range ``start .. start + n`` of a stream with the same values whatever the ranges
asked before. With 23-bit uniforms the tails stop at ``sqrt(46 ln 2) = 5.65`` standard deviations (probability
``2e-8`` beyond). Every step is a vectorized numpy loop (the generator's words, a shift, a conversion, ``log``,
``sqrt``, ``cos``, ``sin``), a fraction of numpy's ziggurat per value; a counter-based generator (Philox) would
do as well for the addressing, but its words cost twice PCG64DXSM's.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

__all__ = ["PAGE", "draw_key", "normals"]

PAGE = 1024
"""Draws per page (module docstring)."""
_HALF = PAGE // 2
_GROUP = 32
"""Pages computed per pass (32 K draws: the work arrays stay in cache)."""
_TWO_PI = np.float32(2 * np.pi)
_ONE = np.uint32(0x3F800000)
"""The bits of float32 1.0."""


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


def _pages(bits: np.random.PCG64DXSM, pages: int, out: np.ndarray, f: np.ndarray) -> None:
    """The next ``pages`` pages of ``bits`` into ``out`` (float32 ``[pages * PAGE]``); ``f`` a float32 work array
    of the same size."""
    raw = bits.random_raw(pages * _HALF).view(np.uint32)
    u = f.view(np.uint32)
    np.right_shift(raw, 9, out=u)
    np.bitwise_or(u, _ONE, out=u)  # 1 + u in [1, 2)
    fp = f.reshape(pages, 2, _HALF)
    r, t = fp[:, 0], fp[:, 1]
    np.subtract(np.float32(2), r, out=r)  # 1 - u in (0, 1]
    np.log(r, out=r)
    r *= np.float32(-2)
    np.sqrt(r, out=r)
    t *= _TWO_PI
    op = out.reshape(pages, 2, _HALF)
    np.cos(t, out=op[:, 0])
    np.sin(t, out=op[:, 1])
    op[:, 0] *= r
    op[:, 1] *= r


def normals(key: tuple[int, int], stream: int, start: int, out: np.ndarray,
            scratch: np.ndarray | None = None) -> np.ndarray:
    """Fill ``out`` (float32, contiguous, any shape) with standard normals ``start .. start + out.size`` of stream
    ``stream`` under ``key`` (module docstring). ``scratch``: float32 work space of at least ``2 * 32 * PAGE``
    values, reused between calls (allocated when absent or smaller)."""
    n = out.size
    if n == 0:
        return out
    if scratch is None or scratch.size < 2 * _GROUP * PAGE:
        scratch = np.empty(2 * _GROUP * PAGE, np.float32)
    q0, q1 = start // PAGE, -(-(start + n) // PAGE)
    bits = _bits(key, stream, q0)
    z = out.reshape(-1)
    at = 0  # draws of out written
    for g0 in range(q0, q1, _GROUP):
        pages = min(_GROUP, q1 - g0)
        lo = max(start, g0 * PAGE) - g0 * PAGE  # the first draw of these pages that out takes
        take = min(pages * PAGE - lo, n - at)
        f = scratch[:pages * PAGE]
        if lo == 0 and take == pages * PAGE:
            _pages(bits, pages, z[at:at + take], f)
        else:
            tmp = scratch[_GROUP * PAGE:_GROUP * PAGE + pages * PAGE]
            _pages(bits, pages, tmp, f)
            z[at:at + take] = tmp[lo:lo + take]
        at += take
    return out
