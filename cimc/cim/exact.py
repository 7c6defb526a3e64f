"""The lossless MVM path: exact rounds kept as terms of a sum, one matrix product per layer.

When an MVM's ADC converts every noiseless partial sum exactly (:meth:`cimc.cim.adc.Adc.exact`) and the
device is ideal, the bit-serial model (:mod:`cimc.cim.crossbar`) sums to ``x @ W`` for the integer weights
``W`` each tile reads from its array (:func:`cimc.cim.machine.tile_weights`), bit for bit. The executor
then keeps such an MVM as one :class:`Round` of an :class:`ExactSum`: its input and the weight windows its
tiles read. Within a chain of MVMs (a layer's rounds, each summing into the previous one's result) the sum
is handed on (``OpContext.partial``); the last MVM of the chain, or the first that must run the bit-serial
model, evaluates it: the rounds reading one input are joined into one weight matrix per group
(:class:`Joined`, overlapping windows summed), multiplied once, and added to the chain's starting
accumulator in int32, wrapping like C.

The product is exact by a bound proven for the run, not by the data's luck: every partial sum of
``x @ W[:, c]``, in any order BLAS adds, is at most ``max(x) * ||W[:, c]||_1`` in magnitude. One float32
product while that is at most ``2**24`` for every column (float32 holds every integer up to it); else float32
products over K chunks that each keep within it, summed in int32; one float64 product (exact to ``2**53``)
when those chunks would be short; int64 beyond. Inputs (u8) and a matrix within int8 need no bound where
this machine multiplies them exactly in integers (:mod:`cimc.cim.igemm`): one int32 product, wrapping like C.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cimc.cim import igemm
from cimc.ops.nn import _scratch, to_dtype

__all__ = ["CHUNK_BYTES", "ExactSum", "Joined", "Round", "join"]

CHUNK_BYTES = 8 << 20
"""Bytes of float inputs, and of products, of the positions multiplied at once."""

_F32 = 1 << 24
"""float32 holds every integer of at most this magnitude."""
_F64 = 1 << 53
"""float64 holds every integer of at most this magnitude."""
_MIN_CHUNK = 128
"""float32 K chunks shorter than this (on average) lose to one float64 product."""
_WIDE = 256
"""Positions per image from which a layer of layout cols is multiplied image by image."""

Window = tuple[int, int, int, int, int, int, int]
"""A tile's part of the weight matrix: ``(group, k0, k1, c0, c1, s0, s1)`` (channels within the group)."""


@dataclass(frozen=True)
class Round:
    """One exact MVM: its input ``x`` (layout ``rows`` ``[..., K]`` or ``cols`` ``[G, N, K, L]``) and its
    tiles' weights. ``key`` names the weights (the same key, the same weights) and ``refs`` keeps alive every
    object whose identity the key holds; ``windows()`` gives them, each window of the matrix once (replicas
    read the same weights) with its integer weights ``[k1 - k0, c1 - c0]``."""

    x: np.ndarray
    cols: bool
    key: tuple
    refs: tuple
    windows: Callable[[], dict[Window, np.ndarray]]


@dataclass
class Joined:
    """The rounds of one input joined: the weight matrix of each group, ``[G, per, K]`` (layout cols) or
    ``[K, C]`` (rows), float32 (float64 if a weight passes ``2**24``), and each output column's L1 norm.
    The matrix is the box of rows ``k0 ..`` and channels ``c0 ..`` (within each group) that the rounds' windows
    cover, not the layer's whole matrix: a round of a layer spread over many rounds holds only its part."""

    cols: bool
    w: np.ndarray
    l1: np.ndarray
    """``[C]``: ``sum_k |W[k, c]|`` per output channel of the box (group-major)."""
    refs: tuple = ()
    k0: int = 0
    c0: int = 0
    _plans: dict[int, tuple[str, list[tuple[int, int]]]] = field(default_factory=dict)
    _int: np.ndarray | None = None
    _int_done: bool = False
    _w8u: np.ndarray | None = None
    """Layout rows: the int8 matrix as ``W + 128`` u8, for a u8 x u8 kernel (:mod:`cimc.cim.igemm`)."""

    @property
    def K(self) -> int:
        """Rows of the matrix (inputs per position)."""
        return int(self.w.shape[-1] if self.cols else self.w.shape[0])

    def plan(self, xmax: int) -> tuple[str, list[tuple[int, int]]]:
        """How to multiply inputs of at most ``xmax`` exactly: ``('f32', chunks)`` (float32 products over the K
        ranges ``chunks``, each partial sum within ``2**24``), ``('f64', [(0, K)])`` or ``('i64', [(0, K)])``."""
        hit = self._plans.get(xmax)
        if hit is not None:
            return hit
        K, whole = self.K, [(0, self.K)]
        bound = xmax * int(self.l1.max(initial=0))
        if self.w.dtype != np.float32 or bound > _F32:
            chunks = _chunks(self._abs_cumsum(), _F32 // xmax) if self.w.dtype == np.float32 else None
            if chunks is not None and K / len(chunks) >= _MIN_CHUNK:
                out = ("f32", chunks)
            else:
                out = ("f64" if bound <= _F64 else "i64", whole)
        else:
            out = ("f32", whole)
        self._plans[xmax] = out
        return out

    def _abs_cumsum(self) -> np.ndarray:
        """``S[c, k] = sum_{j <= k} |W[j, c]|`` (float64: exact for these sums), ``[C, K]``."""
        a = np.abs(self.w.reshape(-1, self.K) if self.cols else self.w.T).astype(np.float64)
        return np.cumsum(a, axis=1)

    def int8(self) -> np.ndarray | None:
        """The matrix as the integer kernel (:mod:`cimc.cim.igemm`) takes it, or ``None`` when a weight leaves
        int8 or a grouped matrix has more than one group: layout cols ``W + 128`` u8 ``[C, K]`` (the left operand,
        zero point 128), rows ``W`` s8 ``[K, C]``."""
        if not self._int_done:
            w = self.w
            fits = w.size == 0 or (-128 <= float(w.min()) and float(w.max()) <= 127)
            if fits and not (self.cols and w.shape[0] != 1):
                self._int = (w[0] + 128).astype(np.uint8) if self.cols else w.astype(np.int8)
            self._int_done = True
        return self._int

    def add_product(self, x: np.ndarray, y: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
        """``y + x @ W`` (``y`` int32 of ``shape``, updated in place; ``None``: zeros), exact (module docstring).
        u8 inputs and int8 weights go through the integer kernel (:mod:`cimc.cim.igemm`) where this machine has
        an exact one. Else positions go through in chunks whose float inputs and products take at most
        ``CHUNK_BYTES`` each, in work arrays kept between calls (a fresh large array costs a page fault per page
        on first touch)."""
        if x.dtype == np.uint8 and x.size and self.l1.size and self.K and self.int8() is not None:
            k = igemm.kernel()
            if k is not None:
                return self._int_product(k, x, y, shape)
        xmax = int(x.max()) if x.size else 0
        kind, chunks = self.plan(xmax) if xmax else ("f32", [(0, self.K)])
        dt = np.dtype({"f32": np.float32, "f64": np.float64, "i64": np.int64}[kind])
        w = self.w.astype(dt, copy=False)
        C, K = self.l1.size, self.K
        k0, c0 = self.k0, self.c0
        full = shape[1] if self.cols else shape[-1]
        fresh = y is None
        out = (np.empty if C == full else np.zeros)(shape, np.int32) if y is None else y
        step = max(1, CHUNK_BYTES // (max(K, C) * dt.itemsize))  # positions per chunk
        wide = xmax * int(self.l1.max(initial=0)) >= 1 << 31  # the product's sums may pass int32
        if self.cols:
            x, box = x[:, :, k0:k0 + K], out[:, c0:c0 + C]
            G, N, _, L = x.shape
            if L >= min(step, _WIDE):  # image by image: the product is already [channels, positions]
                for n0 in range(N):
                    for l0 in range(0, L, step):
                        xb = x[:, n0, :, l0:l0 + step]
                        xs = _scratch(xb.shape, dt, "cim.x")
                        np.copyto(xs, xb)
                        self._into(box[n0, :, l0:l0 + xb.shape[2]], xs, w, kind, chunks, fresh, wide, None)
            else:  # images side by side: [G, K, images * positions]
                nb = max(1, min(N, step // L))
                for n0 in range(0, N, nb):
                    xb = x[:, n0:n0 + nb]
                    m = xb.shape[1]
                    xs = _scratch((G, K, m * L), dt, "cim.x")
                    np.copyto(xs.reshape(G, K, m, L), xb.transpose(0, 2, 1, 3))
                    self._into(box[n0:n0 + m], xs, w, kind, chunks, fresh, wide, (C, m, L))
        else:
            xr = x.reshape(-1, x.shape[-1])[:, k0:k0 + K]
            yr = out.reshape(-1, full)[:, c0:c0 + C]  # a view: ``out`` is contiguous
            for p0 in range(0, xr.shape[0], step):
                xs = _scratch((min(step, xr.shape[0] - p0), K), dt, "cim.x")
                np.copyto(xs, xr[p0:p0 + step])
                self._into(yr[p0:p0 + step], xs, w, kind, chunks, fresh, wide, None)
        return out

    def _int_product(self, k: igemm.Kernel, x: np.ndarray, y: np.ndarray | None,
                     shape: tuple[int, ...]) -> np.ndarray:
        """:meth:`add_product` by the integer kernel: layout cols ``(W + 128 - 128) @ ((x ^ 128) + 128)``, the
        input's bytes flipped to int8 (``x - 128``, one pass) and both zero points given to the kernel (a u8 x u8
        kernel takes ``x`` itself, zero point 0); rows ``x @ W`` (u8 x u8: ``x @ ((W + 128) - 128)``). int32 sums
        wrap like C, as the float path's do."""
        w8 = self.int8()
        assert w8 is not None
        C, K, k0, c0 = self.l1.size, self.K, self.k0, self.c0
        full = shape[1] if self.cols else shape[-1]
        b: np.ndarray
        if self.cols:
            xb = x[0, :, k0:k0 + K]  # [N, K, L]
            if k.signed:
                b = _scratch(xb.shape, np.dtype(np.int8), "cim.x")
                np.bitwise_xor(xb, np.uint8(128), out=b.view(np.uint8))
            else:  # a u8 x u8 kernel takes x - 128 as x with zero point 0
                b = xb
            a, a0, b0 = w8, 128, -128 if k.signed else 0
            part: tuple[int, ...] = (xb.shape[0], C, xb.shape[2])
        else:
            a = x.reshape(-1, x.shape[-1])[:, k0:k0 + K]
            if k.signed:
                b, b0 = w8, 0
            else:  # W as W + 128 with zero point 128
                if self._w8u is None:
                    self._w8u = np.bitwise_xor(w8.view(np.uint8), np.uint8(128))
                b, b0 = self._w8u, 128
            a0 = 0
            part = (a.shape[0], C)
        if y is None and C == full:
            out = np.empty(shape, np.int32)
            k.raw(a, b, a0, b0, out.reshape(part))
            return out
        t = k.raw(a, b, a0, b0, _scratch(part, np.dtype(np.int32), "cim.t"))
        out = np.zeros(shape, np.int32) if y is None else y
        box = out[:, c0:c0 + C] if self.cols else out.reshape(-1, full)[:, c0:c0 + C]
        box += t.reshape(box.shape)  # wraps like C
        return out

    def _into(self, dst: np.ndarray, xs: np.ndarray, w: np.ndarray, kind: str, chunks: list[tuple[int, int]],
              fresh: bool, wide: bool, cmn: tuple[int, int, int] | None) -> None:
        """``dst (+)= xs @ W`` over the K ``chunks`` (``fresh``: ``dst`` holds nothing yet; ``wide``: its sums may
        pass int32 and wrap); layout cols: the product ``[channels, m images * n positions]`` goes to ``dst [m,
        channels, n]`` (``cmn``), or ``dst`` is ``[channels, n]`` of one image (``cmn`` is ``None``)."""
        for i, (k0, k1) in enumerate(chunks):
            if self.cols:
                r = _scratch((w.shape[0], w.shape[1], xs.shape[2]), xs.dtype, "cim.r")
                np.matmul(w[..., k0:k1], xs[:, k0:k1], out=r)
                v = r.reshape(dst.shape) if cmn is None else r.reshape(cmn).transpose(1, 0, 2)
            else:
                v = _scratch((xs.shape[0], w.shape[1]), xs.dtype, "cim.r")
                np.matmul(xs[:, k0:k1], w[k0:k1], out=v)
            if kind != "f32":  # float64 or int64 sums: to int32, wrapping like C
                v = to_dtype(v, np.dtype(np.int32))
            if fresh and i == 0:
                np.copyto(dst, v, casting="unsafe")  # float32 sums within 2**24: exact integers
            elif fresh and not wide:  # this product alone: int32 + float32 summed in float64, within int32
                np.add(dst, v, out=dst, casting="unsafe")
            else:
                t = _scratch(dst.shape, np.dtype(np.int32), "cim.t")
                np.copyto(t, v, casting="unsafe")
                dst += t  # wraps like C


def _chunks(cum: np.ndarray, limit: int) -> list[tuple[int, int]] | None:
    """K ranges, each as long as it can be while every column's sum of ``|W|`` over it stays within ``limit``
    (``cum``: :meth:`Joined._abs_cumsum`); ``None`` if a single row passes it."""
    C, K = cum.shape
    out: list[tuple[int, int]] = []
    a = 0
    while a < K:
        base = cum[:, a - 1] if a else np.zeros(C)
        if (cum[:, a] - base).max(initial=0) > limit:
            return None
        lo, hi = a + 1, K  # the largest b with max_c (cum[c, b - 1] - base[c]) <= limit: lo always fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if (cum[:, mid - 1] - base).max(initial=0) <= limit:
                lo = mid
            else:
                hi = mid - 1
        out.append((a, lo))
        a = lo
    return out


def join(rounds: Sequence[Round], groups: int, channels: int) -> Joined:
    """The rounds' weights summed into one matrix per group (the sum of their products is its product), over the
    box of rows and channels their windows cover (all channels of a grouped matrix)."""
    cols = rounds[0].cols
    per = channels // groups
    windows = [(w, wt) for r in rounds for w, wt in r.windows().items()]
    if not windows:
        return Joined(cols, np.zeros((groups, per, 0) if cols else (0, channels), np.float32),
                      np.zeros(channels), tuple(r.refs for r in rounds))
    k0, k1 = min(w[1] for w, _ in windows), max(w[2] for w, _ in windows)
    c0, c1 = (min(w[3] for w, _ in windows), max(w[4] for w, _ in windows)) if groups == 1 else (0, per)
    acc = np.zeros((groups, c1 - c0, k1 - k0) if cols else (k1 - k0, groups * (c1 - c0)), np.int64)
    for (g, a0, a1, b0, b1, _, _), wt in windows:
        if cols:
            acc[g, b0 - c0:b1 - c0, a0 - k0:a1 - k0] += wt.T
        else:
            acc[a0 - k0:a1 - k0, g * per + b0 - c0:g * per + b1 - c0] += wt
    mag = np.abs(acc)
    l1 = mag.sum(axis=2).reshape(-1) if cols else mag.sum(axis=0)
    big = int(mag.max(initial=0)) > _F32
    w = np.ascontiguousarray(acc.astype(np.float64 if big else np.float32))
    return Joined(cols, w, l1, tuple(r.refs for r in rounds), k0, c0)


class ExactSum:
    """A partial sum of a chain of MVMs: the chain's starting accumulator (int32, or none) plus exact rounds
    (:class:`Round`), evaluated by :meth:`value` (``joined(rounds)``: the rounds of one input joined, cached by
    the caller)."""

    def __init__(self, shape: tuple[int, ...], base: np.ndarray | None, donated: bool,
                 joined: Callable[[list[Round]], Joined]) -> None:
        self.shape = shape
        self.base, self.donated = base, donated
        self.rounds: list[Round] = []
        self._joined = joined

    def add(self, r: Round) -> None:
        """One more exact round."""
        self.rounds.append(r)

    def value(self) -> np.ndarray:
        """The sum, int32 of :attr:`shape`: the starting accumulator plus every round's product."""
        y = None if self.base is None else (self.base if self.donated and self.base.flags.c_contiguous
                                            else self.base.copy())
        by_input: dict[int, list[Round]] = {}
        for r in self.rounds:
            by_input.setdefault(id(r.x), []).append(r)
        for rounds in by_input.values():
            y = self._joined(rounds).add_product(rounds[0].x, y, self.shape)
        return y if y is not None else np.zeros(self.shape, np.int32)

