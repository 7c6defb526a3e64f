"""Quantization parameters: activation scale/zero point from a range, weights per output channel.

Activations (unsigned, ``b`` bits, ``qmax = 2**b - 1``): the range is widened to hold 0 (so a
zero-padded border is exactly the zero point), then ``scale = float32((hi - lo) / qmax)`` and
``zero_point = clip(round_half_even(-lo / scale), 0, qmax)``; an all-zero range gets scale 1.

Lookup tables (``q.lut``): the result code of each of the 256 input codes ``i`` is
``clip(rint(float32(f(float32(s_in) * float32(i - z_in))) / float32(s_out)) + z_out, lo, hi)`` (NaN and
-inf give the zero point, +inf the top), ``f`` evaluated on float32 as a float program would.

Weights (signed, symmetric, narrow range, ``b`` bits, ``qmax = 2**(b-1) - 1``): per output channel
``c`` (or one for the whole tensor), ``scale[c] = float32(max|w[c]| / qmax)`` (1 for an all-zero
channel) and ``wq = clip(round_half_even(float32(w) / scale[c]), -qmax, qmax)`` stored as int8,
zero point 0.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["act_params", "lut_table", "max_scales", "quantize_weights", "weight_qmax"]

_BLOCK = 1 << 17
"""Elements of ``w`` quantized per step of :func:`quantize_weights` (a 512 KiB float32 temporary)."""


def act_params(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """``(scale, zero_point)`` of a ``bits``-bit unsigned activation covering ``[lo, hi]`` (and 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmax = (1 << bits) - 1
    if hi - lo <= 0.0 or not np.isfinite(hi - lo):
        return 1.0, 0
    scale = float(np.float32((hi - lo) / qmax))
    return scale, int(np.clip(np.rint(-lo / scale), 0, qmax))


def weight_qmax(bits: int) -> int:
    """Largest magnitude of a ``bits``-bit narrow-range signed weight."""
    return (1 << (bits - 1)) - 1


def max_scales(amax: np.ndarray, bits: int) -> np.ndarray:
    """float32 scales ``amax / qmax`` of weights whose largest magnitudes are ``amax`` (1 where 0)."""
    scales = (np.asarray(amax).astype(np.float64) / weight_qmax(bits)).astype(np.float32)
    scales[scales == 0] = 1.0
    return scales


def quantize_weights(w: np.ndarray, bits: int, axis: int, per_channel: bool = True
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(wq int8, scales float32)``: ``scales`` has one entry per slice along ``axis`` (per channel)
    or a single entry; ``w ~= wq * scale`` broadcast along ``axis``. The division is float32."""
    qmax = weight_qmax(bits)
    w32 = np.asarray(w, np.float32)
    axis = axis % w32.ndim
    others = tuple(i for i in range(w32.ndim) if i != axis) if per_channel else None
    scales = max_scales(np.maximum(w32.max(axis=others), -w32.min(axis=others)).reshape(-1), bits)
    s = scales.reshape([-1 if i == axis else 1 for i in range(w32.ndim)] if per_channel else [1] * w32.ndim)
    wq = np.empty(w32.shape, np.int8)
    rows = max(1, _BLOCK // max(1, math.prod(w32.shape[1:])))  # axis-0 blocks: the float temporary stays in cache
    tmp = np.empty((min(rows, len(w32)), *w32.shape[1:]), np.float32)
    for i in range(0, len(w32), rows):
        t = tmp[:min(rows, len(w32) - i)]
        np.divide(w32[i:i + rows], s if len(s) == 1 else s[i:i + rows], out=t)
        np.rint(t, out=t)
        np.clip(t, -qmax, qmax, out=t)
        wq[i:i + rows] = t
    return wq, scales


def lut_table(scale_in: float, zp_in: int, fn, scale_out: float, zp_out: int, lo: int, hi: int) -> tuple[int, ...]:
    """The 256 entries of a ``q.lut`` computing real function ``fn`` from the input's parameters to the
    result's, clamped to ``[lo, hi]`` (module doc)."""
    real = np.float32(scale_in) * (np.arange(256) - zp_in).astype(np.float32)
    with np.errstate(all="ignore"):
        y = np.asarray(fn(real), np.float32)
        v = np.rint(y / np.float32(scale_out))
    table = np.clip(np.nan_to_num(v, nan=0.0, posinf=hi, neginf=0.0) + zp_out, lo, hi)
    return tuple(table.astype(np.int64).tolist())
