"""Weight quantizers: one layer's integer weights by a published post-training method.

A layer's weight is seen as matrices ``m[g, k, n]`` (the view of :mod:`cimc.sparsity`: ``g`` the
conv group, ``k`` the reduction row in im2col order, ``n`` the group's output channel, global
channel ``g*N + n``) and quantized per output channel (or per tensor) to ``b``-bit signed symmetric
narrow-range integers, ``qmax = 2**(b-1) - 1``, ``m ~= s * q``, in three steps chosen by a
:class:`WeightMethod`:

1. Scales (``clip``):

   - ``max``: ``s = max|w| / qmax``, as :func:`cimc.quant.params.quantize_weights` (no clipping);
   - ``mse``: per channel, ``s = a * max|w| / qmax`` with the clipping ratio ``a`` on the grid
     ``1, 0.99, ..., 0.20`` whose round-to-nearest error ``sum_k (w - s q)^2`` is least (the widest
     on ties). MSE range setting of weights: Nagel et al., "A White Paper on Neural Network
     Quantization", arXiv:2106.08295 (2021), sec. 3.4; the same grid search as the reference GPTQ
     code's quantizer.

2. Rounding (``rounding``):

   - ``nearest``: ``q = clip(round_half_even(w / s), -qmax, qmax)``;
   - ``gptq``: GPTQ (Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training
     Quantization for Generative Pre-trained Transformers", ICLR 2023, Algorithm 1), which rounds
     so that the layer's outputs on its calibration inputs ``x`` move least rather than its weights:
     with ``H = E[x x^T] + d I`` (``d = GPTQ_DAMP * mean(diag H)``) and ``U`` the upper Cholesky
     factor of ``H^-1``, rows ``k`` are quantized one at a time, in order of decreasing ``H[k, k]``
     (the reference code's ``act-order``), and each row's rounding error ``e = (w_k - s q_k) /
     U[k, k]`` is taken out of the rows not yet quantized, ``w_j -= e U[k, j]`` (in blocks of
     ``GPTQ_BLOCK`` rows, the later rows updated once per block). Scales are fixed before (step 1).
     Unlike the reference code, rows that never see a nonzero input keep their rounded weights
     instead of being zeroed (inputs outside the calibration set may reach them).

3. Bias correction (``bias_correction``): the expected output shift ``E[x] (m - s q)`` over the
   calibration inputs is added to the float bias, so every output channel keeps the float
   layer's mean (Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization Through Weight
   Equalization and Bias Correction", ICCV 2019, sec. 4.2, in its empirical form with data).

GPTQ and bias correction need the layer's input statistics ``E[x x^T]`` and ``E[x]``
(:class:`InputStats`, gathered during calibration from the rows of :func:`cimc.sparsity.input_rows`);
the float activations of the calibration set are used for every layer. Everything sums in float64
and is deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cimc.errors import CimcError
from cimc.ir.core import Node
from cimc.quant.params import max_scales, weight_qmax
from cimc.sparsity import WeightView, grams, input_rows

__all__ = ["AUTO_BELOW", "CLIP_GRID", "GPTQ_BLOCK", "GPTQ_DAMP", "InputStats", "WeightMethod", "gptq", "mse_scales",
           "quantize_matrix"]

CLIP_GRID = np.round(np.arange(100, 19, -1) / 100, 2)
"""Clipping ratios ``a`` the ``mse`` scale search tries, widest first."""
AUTO_BELOW = 8
"""The ``auto`` options of ``quantize`` use mse scales, GPTQ and bias correction for layers with fewer
weight bits than this (measured better on every zoo model at 2 to 7 bits), and leave 8-bit layers
as they were."""
GPTQ_DAMP = 0.01
"""Damping of GPTQ's Hessian, relative to its mean diagonal (the paper's default)."""
GPTQ_BLOCK = 64
"""Rows GPTQ quantizes between two lazy updates of the rest (the paper uses 128; the result is the
same up to float rounding, the time is least near 64 here)."""


@dataclass(frozen=True)
class WeightMethod:
    """How one layer's weights become integers: scale choice, rounding, and bias correction."""

    clip: Literal["max", "mse"] = "max"
    rounding: Literal["nearest", "gptq"] = "nearest"
    bias_correction: bool = False

    @classmethod
    def choose(cls, bits: int, clip: str = "auto", rounding: str = "auto", bias_correction: str = "auto"
               ) -> WeightMethod:
        """The method for a layer of ``bits``-bit weights given the ``quantize`` options, where ``auto``
        is ``mse``/``gptq``/``on`` below :data:`AUTO_BELOW` bits and ``max``/``nearest``/``off`` else."""
        low = bits < AUTO_BELOW

        def pick(value: str, below: str, at_8: str) -> Any:
            return (below if low else at_8) if value == "auto" else value

        return cls(pick(clip, "mse", "max"), pick(rounding, "gptq", "nearest"),
                   pick(bias_correction, "on", "off") == "on")

    @property
    def needs_stats(self) -> bool:
        """Whether the method reads the layer's calibration input statistics."""
        return self.rounding == "gptq" or self.bias_correction

    def __str__(self) -> str:
        parts = [f"{self.clip} scales", f"{self.rounding} rounding"] + ["bias correction"] * self.bias_correction
        return ", ".join(parts)


class InputStats:
    """``E[x]`` and, when ``second``, ``E[x x^T]`` over the rows ``x`` a layer's weight matrices multiply
    (:func:`cimc.sparsity.input_rows`), gathered one calibration batch at a time."""

    CHUNK = 1 << 22
    """Input elements whose im2col rows are made at once for a convolution's ``E[x]``."""

    def __init__(self, node: Node, view: WeightView, second: bool = True) -> None:
        self.node, self.view, self.second = node, view, second
        self.total: np.ndarray | None = None  # second: [G, K + 1, K + 1] of the rows with a 1 appended; else [G, K]
        self.count = 0  # second: samples (each batch's mean weighted by its samples); else rows
        self._cached: np.ndarray | None = None

    def observe(self, x: np.ndarray) -> None:
        """Add one batch of the layer's first operand."""
        if x.size == 0:
            return
        x = np.asarray(x, np.float32)
        if self.second:
            part, count = grams(self.node, self.view, x, ones=True)[0], len(x)
            part *= count  # in place, like the sum below: a layer of K rows holds [G, K + 1, K + 1] of these
        else:
            conv = self.node.op in ("Conv", "ConvTranspose")
            step = max(1, self.CHUNK // (x[0].size * math.prod(self.view.shape[2:]))) if conv else len(x)
            part, count = np.zeros((), np.float64), 0
            for i in range(0, len(x), step):
                rows = input_rows(self.node, self.view, x[i:i + step])
                if rows is None:
                    raise CimcError(f"node {self.node.name!r} ({self.node.op}): no input rows for a batched B")
                part, count = part + rows.sum(axis=1, dtype=np.float64), count + rows.shape[1]
        if self.total is None:
            self.total = part
        else:
            self.total += part
        self.count += count
        self._cached = None

    @property
    def gram(self) -> np.ndarray:
        """``E[x x^T]``, float64 ``[G, K, K]`` (only when gathered with ``second``)."""
        if not self.second:
            raise CimcError(f"node {self.node.name!r}: its input's second moments were not gathered")
        return self._mean()[:, :-1, :-1]

    @property
    def mean(self) -> np.ndarray:
        """``E[x]``, float64 ``[G, K]``."""
        return self._mean()[:, -1, :-1] if self.second else self._mean()

    def _mean(self) -> np.ndarray:
        if self.total is None:
            raise CimcError(f"node {self.node.name!r}: its input was never observed during calibration")
        if self._cached is None:
            self._cached = self.total / self.count
        return self._cached


def mse_scales(m: np.ndarray, bits: int, per_channel: bool = True) -> np.ndarray:
    """Scales ``[G * N]`` (or ``[1]``) of ``m`` ``[G, K, N]`` with the least round-to-nearest squared
    error among ``a * max|w| / qmax`` for ``a`` in :data:`CLIP_GRID` (float32, 1 for all-zero channels).
    Channels are searched a cache-sized block at a time."""
    w = np.asarray(m, np.float32).transpose(0, 2, 1).reshape(-1, m.shape[1]) if per_channel \
        else np.asarray(m, np.float32).reshape(1, -1)
    rows = max(1, _MSE_BLOCK // w.shape[1])
    return np.concatenate([_mse_search(w[i:i + rows], bits) for i in range(0, len(w), rows)])


_MSE_BLOCK = 1 << 15
"""Weights per block of :func:`mse_scales` (float32 and float64 temporaries that stay in cache)."""


def _mse_search(w: np.ndarray, bits: int) -> np.ndarray:
    """:func:`mse_scales` of the rows (channels) of ``w``."""
    qmax = weight_qmax(bits)
    w64 = w.astype(np.float64)
    amax = np.abs(w).max(axis=1).astype(np.float64)
    best, best_err = None, None
    t = np.empty(w.shape, np.float32)
    d = np.empty(w.shape, np.float64)
    for a in CLIP_GRID:
        s = max_scales(amax * a, bits)
        np.divide(w, s[:, None], out=t)
        np.rint(t, out=t)
        np.clip(t, -qmax, qmax, out=t)
        np.multiply(t, s[:, None].astype(np.float64), out=d)
        np.subtract(w64, d, out=d)
        err = np.einsum("ij,ij->i", d, d)
        if best is None:
            best, best_err = s, err
        else:
            better = err < best_err
            best, best_err = np.where(better, s, best), np.where(better, err, best_err)
    assert best is not None
    return best


def _inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """The upper triangular ``U`` with ``h^-1 = U^T U`` for each of the positive definite ``h`` ``[G, K, K]``.

    With ``J`` the exchange matrix and ``J h J = L L^T`` (lower Cholesky factor ``L``), ``h = (J L J)
    (J L J)^T`` with ``J L J`` upper triangular, so ``U = (J L J)^-1 = J L^-1 J``: one Cholesky
    factorization and one triangular inverse, no general inverse."""
    from scipy.linalg.lapack import dtrtri

    try:
        lower = np.linalg.cholesky(h[:, ::-1, ::-1])
    except np.linalg.LinAlgError as e:
        raise CimcError(f"GPTQ: the damped input Hessian is not positive definite ({e})") from e
    for g in range(len(lower)):
        # L^T is Fortran-ordered upper: LAPACK inverts it in place, leaving L^-1 in C order in lower[g]
        inv_t, info = dtrtri(lower[g].T, lower=0, overwrite_c=1)
        if info:
            raise CimcError(f"GPTQ: the Cholesky factor of the input Hessian is singular (LAPACK info {info})")
        if not np.may_share_memory(inv_t, lower[g]):
            lower[g] = inv_t.T
    return np.ascontiguousarray(lower[:, ::-1, ::-1])


def gptq(m: np.ndarray, gram: np.ndarray, scales: np.ndarray, bits: int, block: int = GPTQ_BLOCK) -> np.ndarray:
    """GPTQ's integers ``[G, K, N]`` (int8) for ``m`` ``[G, K, N]`` given ``E[x x^T]`` ``[G, K, K]`` of its
    input rows and fixed ``scales`` (``[G * N]`` or ``[1]``), ``block`` rows between lazy updates; see the
    module doc."""
    G, K, N = m.shape
    qmax = weight_qmax(bits)
    s = np.broadcast_to(np.asarray(scales, np.float64).reshape(-1), (G * N,)).reshape(G, 1, N)
    gram = np.asarray(gram, np.float64)  # no copy: the statistics' own [G, K, K] view
    if not np.isfinite(gram).all():
        raise CimcError("GPTQ: the calibration inputs of the layer are not finite")
    idx = np.arange(K)
    diag = gram[:, idx, idx]
    diag = np.where(diag > 0, diag, 1.0)  # rows no input reaches: plain rounding, no spread
    order = np.argsort(-diag, axis=1, kind="stable")  # act-order: the largest inputs first
    gsel = np.arange(G)[:, None]
    w = np.asarray(m, np.float64)[gsel, order]  # [G, K, N]: row k of every group, in its order
    h = gram[gsel[:, :, None], order[:, :, None], order[:, None, :]]  # the one copy of [G, K, K]
    diag = diag[gsel, order]
    h[:, idx, idx] = diag + GPTQ_DAMP * diag.mean(axis=1, keepdims=True)
    u = _inverse_cholesky(h)
    q = np.empty((G, K, N), np.float64)
    err, part = np.empty((G, block, N)), np.empty((G, block, N))  # row errors of a block; an update's product
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        for i in range(i1, i2):  # the same operations as the formulas, in place on preallocated rows
            row, qi, e = w[:, i:i + 1], q[:, i:i + 1], err[:, i - i1:i - i1 + 1]  # [G, 1, N]
            np.divide(row, s, out=qi)
            np.rint(qi, out=qi)
            np.clip(qi, -qmax, qmax, out=qi)
            np.multiply(qi, s, out=e)
            np.subtract(row, e, out=e)
            np.divide(e, u[:, i, i, None, None], out=e)  # e = (w_k - s q_k) / U[k, k]
            if i + 1 < i2:
                rest, prod = w[:, i + 1:i2], part[:, :i2 - i - 1]
                np.multiply(u[:, i, i + 1:i2, None], e, out=prod)
                np.subtract(rest, prod, out=rest)  # w_j -= e U[k, j] within the block
        if i2 < K:
            w[:, i2:] -= u[:, i1:i2, i2:].transpose(0, 2, 1) @ err[:, :i2 - i1]
    out = np.empty((G, K, N), np.int8)
    out[gsel, order] = q
    return out


def quantize_matrix(m: np.ndarray, bits: int, per_channel: bool, method: WeightMethod,
                    stats: InputStats | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(q int8 [G, K, N], scales float32 [G*N] or [1], bias shift float64 [G*N] or None)`` of the
    weight matrices ``m`` by ``method``; ``stats`` are required when ``method.needs_stats``."""
    if method.needs_stats and stats is None:
        raise CimcError(f"weight method '{method}' needs the layer's calibration input statistics")
    if method.clip == "mse":
        scales = mse_scales(m, bits, per_channel)
    else:
        w = np.abs(np.asarray(m, np.float32))
        scales = max_scales(w.max(axis=1).reshape(-1) if per_channel else w.max().reshape(1), bits)
    G, N = m.shape[0], m.shape[2]
    s = np.broadcast_to(scales.reshape(-1), (G * N,)).reshape(G, 1, N)
    if method.rounding == "gptq":
        assert stats is not None
        q = gptq(m, stats.gram, scales, bits)
    else:
        qmax = weight_qmax(bits)
        q = np.clip(np.rint(np.asarray(m, np.float32) / s), -qmax, qmax).astype(np.int8)
    shift = None
    if method.bias_correction:
        assert stats is not None
        diff = np.asarray(m, np.float64) - q * s.astype(np.float64)  # [G, K, N]
        shift = np.einsum("gk,gkn->gn", stats.mean, diff).reshape(-1)
    return q, scales, shift
