"""The crossbar MVM: bit-serial inputs on row blocks of an array, every partial sum through the ADC.

For one array (or several side by side that read the same inputs) with ``R`` physical rows, stored
cell values ``img[R, C]`` (columns in the tiles' logical order, read at their physical columns),
inputs ``x[P, R]`` already on their physical rows (unused rows 0), ``rows_per_op`` word lines on
at once, and a set of driven physical row blocks ``b`` (rows ``b*rows_per_op ..``):

1. input chunks ``xc_j = (x >> j*dac_bits) & (2**dac_bits - 1)``, ``j < J = ceil(act_bits / dac_bits)``;
2. per driven block ``b`` and chunk ``j`` the analog partial sums
   ``v[b, j, p, c] = sum_{r in b} xc_j[p, r] * img[r, c]``, plus the cells' read noise
   ``sqrt(sum_{r in b} xc_j[p, r]**2) * sigma[c] * N(0, 1)`` (independent reads of ``sigma`` each, summed),
   then perturbed by the device's read hook;
3. the ADC (:class:`cimc.cim.adc.Adc`) converts each ``v`` of a column with that column's range; a
   block a column's tile does not drive is not converted for it (``driven``: its value is 0);
4. shift-add: ``acc[p, c] = sum_{b, j} 2**(j*dac_bits) * value[b, j, p, c]``.

:func:`convert_planes` computes ``acc`` the fast way: the bit planes of a chunk of positions go
through one batched matmul ``[A, J*n, rpo] @ [A, rpo, C]`` (float32 while every partial sum stays
below ``2**24``, else float64; exact for integer cells), the ADC in place, one weighted sum over the
``A*J`` conversions. With an ideal device the cells come divided by each column's step (exact for a
power of two), so the matmul yields ``v / step`` directly.

The weights of a tile (``w[k, ch] = sum_s sig[s] * cell[k, ch, s] - offset``) then follow by the
significance of each column's slice (:func:`shift_add`). With an exact ADC and an ideal device the
bit-serial sum equals ``x @ w``, so the executor computes that instead (:mod:`cimc.cim.exact`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cimc.cim.adc import Adc
from cimc.cim.gauss import SCRATCH, draw_key, normals

__all__ = ["CHUNK_BYTES", "convert_planes", "physical_rows", "shift_add"]

CHUNK_BYTES = 1 << 20
"""Bytes of partial sums per chunk of positions (cache sized)."""
AHEAD = True
"""Whether a helper thread prepares each next chunk's bit planes and read noise while the current one converts
(numpy and the bit generator release the GIL; the results are the same either way)."""


def physical_rows(x: np.ndarray, row_at: np.ndarray | None, rows: int) -> np.ndarray:
    """Inputs ``x[P, k]`` (logical rows) on ``rows`` physical rows: ``out[:, row_at[i]] = x[:, i]``, others 0."""
    k = x.shape[1]
    if row_at is not None and len(row_at) == k and (k == 0 or (row_at[0] == 0 and (np.diff(row_at) == 1).all())):
        row_at = None  # the identity placement
    if row_at is None and k == rows:
        return x
    out = np.zeros((x.shape[0], rows), x.dtype)
    if row_at is None:
        out[:, :x.shape[1]] = x
    else:
        out[:, row_at] = x
    return out


_HELPER: ThreadPoolExecutor | None = None


def _helper() -> ThreadPoolExecutor:
    """The helper thread (one worker, started on first use)."""
    global _HELPER
    if _HELPER is None:
        _HELPER = ThreadPoolExecutor(1, thread_name_prefix="cimc-crossbar")
    return _HELPER


def _stop_helper() -> None:
    """Stop the helper thread (it starts again when next needed)."""
    global _HELPER
    if _HELPER is not None:
        _HELPER.shutdown(wait=True)
        _HELPER = None


os.register_at_fork(before=_stop_helper)  # a forked process (a Monte Carlo worker) starts with one thread


def convert_planes(x: np.ndarray, blocks_img: np.ndarray, blocks: np.ndarray, *, rows_per_op: int, dac_bits: int,
                   act_bits: int, adc: Adc, driven: np.ndarray | None = None, prescaled: bool = True,
                   read: Callable[..., None] | None = None,
                   most: float | None = None, least: float = 0.0, sigma: np.ndarray | None = None,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """``acc[P, C]`` of the module docstring (steps 1-4).

    ``x``: u8 ``[P, R]`` on physical rows (``R >= (max(blocks) + 1) * rows_per_op`` or padded here);
    ``blocks_img``: the driven blocks' cells ``[A, rows_per_op, C]`` (float32 or float64; a differential pair
    sensed as one signed sum is one column holding the difference of its two cells), divided by the columns'
    steps when ``prescaled``; ``blocks``: their physical block numbers ``[A]``; ``adc``: per-column ranges (or
    one); ``driven``: bool ``[A, C]`` or ``None`` (every block for every column); ``sigma``: ``[C]`` the noise of
    one cell read per column: each partial sum gets ``sqrt(sum_r chunk_r**2) * sigma * N(0, 1)`` (the sum of its
    rows' independent reads), the normal of conversion ``(a, j, p, c)`` being draw ``p * C + c`` of stream ``a * J +
    j`` under a key drawn once per call from ``rng`` (:mod:`cimc.cim.gauss`: the same whatever the chunking);
    ``read(ps, block_numbers, first, J, key)``: the device's read hook on ``ps[A', J * n, C]`` (positions ``first ..
    first + n``; ``key`` another per-call key, or ``None`` without ``rng``) after that (with either, ``prescaled``
    must be false); ``most``, ``least``: the largest and
    least partial sum a conversion can see (noiseless), to skip clips no sum reaches.
    """
    P = x.shape[0]
    A, rpo, C = blocks_img.shape
    J = -(-act_bits // dac_bits)
    need_rows = (int(blocks.max(initial=-1)) + 1) * rpo
    if x.shape[1] < need_rows:
        x = np.pad(x, ((0, 0), (0, need_rows - x.shape[1])))
    acc_dtype = blocks_img.dtype
    if A == 0 or P == 0:
        return adc.values(np.zeros((P, C), acc_dtype), 0.0)
    noisy = sigma is not None or read is not None
    if noisy and rng is None and sigma is not None:
        raise ValueError("convert_planes: read noise (sigma) needs the run's generator")
    if A == 1 or (np.diff(blocks) == 1).all():  # consecutive blocks: a view
        r0 = int(blocks[0]) * rpo
        xg = x[:, r0:r0 + A * rpo].reshape(P, A, rpo).transpose(1, 0, 2)  # u8 [A, P, rpo]
    else:
        rows = (blocks[:, None] * rpo + np.arange(rpo)[None, :]).reshape(-1)
        xg = x[:, rows].reshape(P, A, rpo).transpose(1, 0, 2)
    whole = J == 1 and dac_bits >= 8  # one chunk of every bit of a u8 input: no shift, no mask
    shifts = (np.arange(J, dtype=np.uint8) * dac_bits)[None, :, None, None]
    mask = np.uint8((1 << dac_bits) - 1)
    step_weights = [float(1 << (j * dac_bits)) for j in range(J)]
    weight = sum(step_weights)
    fold = adc.folded()
    span = adc.top if fold is None else max(abs(int(fold.min())), abs(int(fold.max()) + adc.top))
    bound = weight * A * span  # the largest |sum of codes|
    if bound >= 1 << 24:
        acc_dtype = np.dtype(np.float64)
    wts = np.tile(np.asarray(step_weights, acc_dtype), A)
    scale = None if prescaled or (adc.step == 1).all() else adc.scale(blocks_img.dtype)
    bounds = None if noisy or most is None else \
        (least * float(adc.scale(np.float64).max()), most * float(adc.scale(np.float64).max()))
    mask_d = None if driven is None else driven[:, None, :].astype(blocks_img.dtype)
    sig = None if sigma is None else np.asarray(sigma, blocks_img.dtype)
    acc = np.empty((P, C), acc_dtype)
    pc = min(P, max(16, CHUNK_BYTES // max(1, A * J * C * blocks_img.dtype.itemsize)))
    starts = range(0, P, pc)
    ahead = len(starts) > 1 and AHEAD  # prepare the next chunk on the helper thread while this one converts
    slots = 2 if ahead else 1
    work8 = np.empty(0 if whole else A * J * pc * rpo, np.uint8)  # work arrays reused by every chunk
    work = [np.empty(A * J * pc * rpo, blocks_img.dtype) for _ in range(slots)]
    direct = A * J == 1 and acc_dtype == blocks_img.dtype  # one conversion batch: its codes are the sums
    psum = None if direct else np.empty(A * J * pc * C, blocks_img.dtype)
    draws = [np.empty(A * J * pc * C, np.float32) for _ in range(slots)] if sig is not None else []
    scratch = np.empty(0, np.float32)
    key = draw_key(rng) if sig is not None and rng is not None else None
    sq_dtype = None if rpo * int(mask) ** 2 < 1 << 24 else np.float64  # sums of squared inputs, exact
    read_key = draw_key(rng) if read is not None and rng is not None else None

    def prepare(p0: int, slot: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The bit planes of the chunk at position ``p0`` and, with read noise, its noise (``[A, J*n, rpo]``,
        ``[A, J*n, C]``), in the work arrays of ``slot``."""
        nonlocal scratch
        xc = xg[:, p0:p0 + pc]
        n = xc.shape[1]
        planes = work[slot][:A * J * n * rpo].reshape(A, J * n, rpo)
        if whole:
            np.copyto(planes, xc)
        else:
            bits = work8[:A * J * n * rpo].reshape(A, J, n, rpo)
            np.right_shift(xc[:, None], shifts, out=bits)
            np.bitwise_and(bits, mask, out=bits)
            np.copyto(planes, bits.reshape(A, J * n, rpo))
        if sig is None or key is None:
            return planes, None
        norm = np.sqrt(planes.sum(axis=2) if dac_bits == 1 else
                       np.einsum("amr,amr->am", planes, planes, dtype=sq_dtype))
        z = draws[slot][:A * J * n * C].reshape(A, J, n * C)
        if scratch.size == 0:
            scratch = np.empty(SCRATCH, np.float32)
        for a in range(A):  # conversion (a, j, p, c) is draw p * C + c of stream a * J + j
            for j in range(J):
                normals(key, a * J + j, p0 * C, z[a, j], scratch)
        z = z.reshape(A, J * n, C)
        z *= norm[:, :, None]
        z *= sig
        return planes, z

    pending = _helper().submit(prepare, 0, 0) if ahead else None
    for k, p0 in enumerate(starts):
        if pending is not None:
            planes, z = pending.result()
            pending = _helper().submit(prepare, starts[k + 1], (k + 1) % 2) if k + 1 < len(starts) else None
        else:
            planes, z = prepare(p0, 0)
        n = planes.shape[1] // J
        ps = np.matmul(planes, blocks_img, out=(acc[p0:p0 + n] if psum is None else psum[:A * J * n * C]).reshape(
            A, J * n, C))
        if z is not None:
            ps += z
        if read is not None:
            read(ps, blocks, p0, J, read_key)
        if scale is not None:
            ps *= scale
        adc.quantize(ps, bounds, fold)
        if mask_d is not None:
            ps *= mask_d
        if psum is not None:
            np.matmul(wts, ps.reshape(A * J, n * C).astype(acc_dtype, copy=False), out=acc[p0:p0 + n].reshape(n * C))
    per_column = weight * (driven.sum(axis=0) if driven is not None else A)
    return adc.values(acc, per_column, fold is not None)


def shift_add(acc: np.ndarray, significance: np.ndarray) -> np.ndarray:
    """Weights' products from column sums: ``acc[P, ch * S]`` (channel-major, ``S`` slices each) dotted
    with the slices' ``significance`` ``[S]``: int64 ``[P, ch]``."""
    S = len(significance)
    P, C = acc.shape
    if S == 1:  # one slice: its sums times its significance
        one = acc.astype(np.int64)
        if int(significance[0]) != 1:
            one *= int(significance[0])
        return one
    y = acc.reshape(P, C // S, S).astype(np.float64) @ np.asarray(significance, np.float64)
    return y.astype(np.int64)
