"""sram-cim instructions: ``sram.load`` and ``sram.mvm``, their definitions and executor implementations.

A layer's weights are one program constant, its *cells*: the ``tile`` pass's bit-sliced cells of the
layer's ``[G, K, N]`` weight matrix, packed per weight (``u8 [G, K, N, bytes]``,
:meth:`cimc.tiling.Encoding.pack`). A tile (a row of the layer's ``tile.map`` table) is the window
``cells[g, k0:k1, ch0:ch1]``; its *image* is that window unpacked to ``[k1 - k0, (ch1 - ch0) * S]``
cells, channel-major (the ``S`` slice columns of a channel are adjacent).

``sram.load(cells) -> token: i32 []``  attrs ``tiles`` (rows of the tile table), ``replicas``,
    ``macros``: writes each tile's image into macro ``array`` (and its replicas into the next
    macros, modulo ``macros``); machine state ``state["sram.macros"][macro]``, a side effect. The
    token (the number of tiles written) orders the ``sram.mvm`` reading them after the write.
``sram.mvm(x: u8, token, acc: i32?) -> i32``  attrs ``tiles``, ``layout``, ``channels`` (the
    layer's output channels, all groups), ``significance`` (one per slice), ``offset``,
    ``rows_per_op``, ``dac_bits``, ``act_bits``, ``cell_bits``, ``adc_bits``, ``skip`` (``(tile,
    row block)`` pairs not driven), ``replicas`` (cost only). Layout ``rows``: ``x [..., K]``,
    result ``[..., channels]``; layout ``cols``: ``x [G, N, K, L]`` (``vec.im2col``), result ``[N,
    channels, L]``. The tiles run at once, each on the macro holding its image (an error if the
    macro holds anything else). For each tile with ``xt`` the rows ``k0:k1`` of ``x`` (of group ``g``)
    flattened to positions ``[P, k]`` and ``img`` its image ``[k, C]``:
    1. input chunks ``xc_j = (xt >> j*dac_bits) & (2**dac_bits - 1)``, ``j < ceil(act_bits/dac_bits)``;
    2. row blocks ``b`` of ``rows_per_op`` rows, except the skipped ones; partial sums
       ``ps[b, j, p, col] = sum_{k in b} xc_j[p, k] * img[k, col]`` (at most
       ``M = rows_per_op * (2**dac_bits - 1) * (2**cell_bits - 1)``);
    3. ADC: with ``need = lossless_adc_bits(rows_per_op, dac_bits, cell_bits)``, exact when
       ``adc_bits >= need``; else ``step = 2**(need - adc_bits)`` and
       ``ps -> clip(round_half_even(ps / step), 0, 2**adc_bits - 1) * step`` (deterministic, no noise);
    4. shift-add: ``acc[p, col] = sum_{b, j} 2**(j*dac_bits) * ps[b, j, p, col]``, then
       ``t[p, c] = sum_s significance[s] * acc[p, c*S + s] - offset * sum_k xt[p, k]``;
    and the result is ``acc`` (zeros if absent) plus each tile's ``t`` at the layer's channels
    ``g * channels/G + ch0 .. + ch1``, int32 wrapping like C. A skipped block's cells are all zero,
    so skipping never changes the result. With a lossless ADC the tile's sum is ``xt @ W`` for its
    decoded weights ``W``, which the executor computes directly (tiles joined into larger exact
    float32 GEMMs); a lossy ADC goes bit plane by bit plane (:func:`crossbar`).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import numpy as np

from cimc.errors import CimcError, VerifyError
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, op_def
from cimc.ir.types import DType, TensorType
from cimc.ops._infer import require
from cimc.ops.nn import f32_chunk, to_dtype
from cimc.target import lossless_adc_bits
from cimc.tiling import TILE_COLUMNS, decode_cells, tile_window, unpack_cells

__all__ = ["OPS", "STATE", "adc", "crossbar", "sram_load", "sram_mvm"]

logger = logging.getLogger(__name__)
STATE = "sram.macros"
"""Key of the macros' contents in the interpreter's machine state: macro index -> (cells, tile window)."""


# ---- semantics ------------------------------------------------------------------------------------
def adc(v: np.ndarray, adc_bits: int, need: int) -> np.ndarray:
    """Convert partial sums ``v`` (``0..2**need - 1``): exact if ``adc_bits >= need``, else
    ``clip(round_half_even(v / step), 0, 2**adc_bits - 1) * step`` with ``step = 2**(need - adc_bits)``."""
    if adc_bits >= need:
        return v
    step = float(1 << (need - adc_bits))
    return np.clip(np.rint(v / step), 0, (1 << adc_bits) - 1) * step


def crossbar(xt: np.ndarray, img: np.ndarray, *, significance, offset: int = 0, rows_per_op: int,
             dac_bits: int, act_bits: int, cell_bits: int, adc_bits: int, skip=()) -> np.ndarray:
    """One tile's MVM ``[..., k] x [k, C] -> int64 [..., C / S]`` as the module docstring defines it.

    With a lossless ADC the bit-serial sum equals ``xt @ W`` for the decoded integer weights ``W``,
    so that is computed (one exact matmul). Otherwise the bit planes of ``P`` chunks of rows go
    through one batched float32 matmul per chunk against the row blocks ``[A, rows_per_op, C]``
    (exact: partial sums are small integers), the ADC in place, then one weighted sum.
    """
    lead, k = xt.shape[:-1], xt.shape[-1]
    need = lossless_adc_bits(rows_per_op, dac_bits, cell_bits)
    if adc_bits >= need:  # skipped blocks are all-zero cells: dropping the skip is exact
        w, dt = _decoded(img, significance, offset, act_bits)
        y = np.matmul(xt.astype(dt, copy=False), w)
        return y.astype(np.int64)
    xt = xt.reshape(-1, k)
    P, C, S = xt.shape[0], img.shape[1], len(significance)
    R, J = -(-k // rows_per_op), -(-act_bits // dac_bits)
    keep = tuple(b for b in range(R) if b not in set(skip))
    acc = np.zeros((P, C), np.float32)
    if keep:
        step = 1 << (need - adc_bits)
        im = _blocks(img, rows_per_op, keep, step)  # [A, rows_per_op, C] float32, pre-divided by step
        A = len(keep)
        pad = R * rows_per_op - k
        xg = np.pad(xt, ((0, 0), (0, pad))) if pad else xt
        xg = np.ascontiguousarray(xg.reshape(P, R, rows_per_op)[:, list(keep)].transpose(1, 0, 2))  # u8 [A, P, rpo]
        shifts = (np.arange(J, dtype=np.uint8) * dac_bits)[None, :, None, None]
        mask, top = np.uint8((1 << dac_bits) - 1), float((1 << adc_bits) - 1)
        most = rows_per_op * ((1 << dac_bits) - 1) * ((1 << cell_bits) - 1)
        clips = round(most / step) > top  # else no partial sum reaches the top code
        wts = np.tile(np.asarray([float(step << (j * dac_bits)) for j in range(J)], np.float32), A)
        pc = min(P, max(16, _CHUNK // (A * J * C * 4)))
        work8, work32 = np.empty(A * J * pc * rows_per_op, np.uint8), np.empty(A * J * pc * rows_per_op, np.float32)
        psum = np.empty(A * J * pc * C, np.float32)  # work arrays reused by every chunk: no allocation per chunk
        for p0 in range(0, P, pc):
            xc = xg[:, p0:p0 + pc]
            n = xc.shape[1]
            bits = work8[:A * J * n * rows_per_op].reshape(A, J, n, rows_per_op)
            np.right_shift(xc[:, None], shifts, out=bits)
            np.bitwise_and(bits, mask, out=bits)
            planes = work32[:bits.size].reshape(A, J * n, rows_per_op)
            np.copyto(planes, bits.reshape(A, J * n, rows_per_op))
            ps = np.matmul(planes, im, out=psum[:A * J * n * C].reshape(A, J * n, C))  # partial sums / step
            np.rint(ps, out=ps)  # round half to even, as the ADC
            if clips:
                np.minimum(ps, top, out=ps)  # partial sums are >= 0: only the top clips
            np.matmul(wts, ps.reshape(A * J, n * C), out=acc[p0:p0 + n].reshape(n * C))
    y = (acc.reshape(P, C // S, S).astype(np.float64) @ np.asarray(significance, np.float64)).astype(np.int64)
    y = y - offset * xt.astype(np.int64).sum(axis=1, keepdims=True) if offset else y
    return y.reshape(*lead, C // S)


_CHUNK = 1 << 20
"""Bytes of float32 partial sums per chunk of the lossy path (cache sized)."""
_CACHE: dict[tuple, tuple[Any, np.ndarray, Any]] = {}
"""Per image array (while it lives): its decoded weights or its scaled row blocks."""


def _cached(img: np.ndarray, key: tuple, make):
    """``make()`` for ``img`` and ``key``, computed once while ``img`` lives (images are constants)."""
    k = (id(img), *key)
    hit = _CACHE.get(k)
    if hit is not None and hit[0]() is img:
        return hit[1], hit[2]
    val, extra = make()
    try:
        ref = weakref.ref(img, lambda _r, k=k, cache=_CACHE: cache.pop(k, None))
    except TypeError:
        return val, extra
    _CACHE[k] = (ref, val, extra)
    return val, extra


def _decoded(img: np.ndarray, significance, offset: int, act_bits: int) -> tuple[np.ndarray, Any]:
    """The tile's integer weights ``W[k, c] = sum_s significance[s] * img[k, c*S+s] - offset`` in
    the float type in which ``x @ W`` is exact (float32 below 2**24, else float64)."""
    def make():
        S = len(significance)
        w = (img.reshape(img.shape[0], -1, S).astype(np.int64) * np.asarray(significance, np.int64)).sum(-1) - offset
        bound = ((1 << act_bits) - 1) * int(np.abs(w).sum(axis=0).max(initial=0))
        dt = np.float32 if bound < 1 << 24 else np.float64
        return w.astype(dt), dt
    return _cached(img, ("w", tuple(significance), offset, act_bits), make)


def _blocks(img: np.ndarray, rows_per_op: int, keep: tuple, step: int) -> np.ndarray:
    """The image's driven row blocks ``[A, rows_per_op, C]`` in float32, divided by ``step`` (exact)."""
    def make():
        k, C = img.shape
        R = -(-k // rows_per_op)
        im = np.pad(img.astype(np.float32), ((0, R * rows_per_op - k), (0, 0))).reshape(R, rows_per_op, C)
        return np.ascontiguousarray(im[list(keep)]) * np.float32(1.0 / step), None
    return _cached(img, ("b", rows_per_op, keep, step), make)[0]


# ---- ops ----------------------------------------------------------------------------------------------
_TILES = AttrSpec("tensor", REQUIRED, "rows of the layer's tile.map table (cimc.tiling.TILE_COLUMNS) this op covers")


def _load_type(ctx: InferContext) -> list[TensorType]:
    cells = require(ctx, 0)
    if cells.dtype is not DType.u8 or (cells.shape is not None and len(cells.shape) != 4):
        raise VerifyError(f"sram.load: the cells must be packed u8 [G, K, N, bytes], are {cells}")
    _check_tiles(ctx.attrs["tiles"], "sram.load")
    return [TensorType(DType.i32, ())]


def _check_tiles(tiles: Any, op: str) -> None:
    t = np.asarray(tiles)
    if t.ndim != 2 or t.shape[1] != len(TILE_COLUMNS) or not len(t) or t.dtype.kind not in "iu":
        raise VerifyError(f"{op}: tiles must be a non-empty integer table [n, {len(TILE_COLUMNS)}] "
                          f"({', '.join(TILE_COLUMNS)}), is {t.dtype} {list(t.shape)}")


@op_def("sram.load", infer=_load_type, side_effects=True, attrs={
    "tiles": _TILES, "replicas": AttrSpec("int", 1, "copies of each tile, on the next macros (cost)"),
    "macros": AttrSpec("int", REQUIRED, "macros of the machine (replica r of a tile goes to (array + r) % macros)")})
def sram_load(ctx, cells):
    """Write each tile's window of the layer's cells into its macro; the result is a token (tiles written)."""
    macros = ctx.state.setdefault(STATE, {})
    tiles = ctx.attrs["tiles"]
    for row in tiles:
        for r in range(ctx.attrs["replicas"]):
            macros[(int(row[3]) + r) % ctx.attrs["macros"]] = (cells, tile_window(row))
    return np.asarray(len(tiles), np.int32)


def _mvm_type(ctx: InferContext) -> list[TensorType]:
    x, a = require(ctx, 0), ctx.attrs
    if x.dtype is not DType.u8:
        raise VerifyError(f"sram.mvm: x must be u8, is {x}")
    _check_tiles(a["tiles"], "sram.mvm")
    t = np.asarray(a["tiles"])
    if (t[:, 4] >= t[:, 5]).any() or (t[:, 8] >= t[:, 9]).any():
        raise VerifyError("sram.mvm: a tile has an empty row or channel range")
    if a["layout"] not in _LAYOUTS:
        raise VerifyError(f"sram.mvm: layout={a['layout']!r} is not one of {', '.join(_LAYOUTS)}")
    if x.shape is None:
        return [TensorType(DType.i32, None)]
    cols = a["layout"] == "cols"
    if cols and len(x.shape) != 4:
        raise VerifyError(f"sram.mvm: layout 'cols' takes x [G, N, K, L] (vec.im2col), is {x}")
    k = x.shape[2] if cols else x.shape[-1]
    if isinstance(k, int) and int(t[:, 5].max()) > k:
        raise VerifyError(f"sram.mvm: x {x} has {k} rows (K), a tile reads up to row {int(t[:, 5].max())}")
    G = x.shape[0] if cols else 1
    if isinstance(G, int) and (int(t[:, 0].max()) >= G or a["channels"] % G):
        raise VerifyError(f"sram.mvm: {a['channels']} channels in {G} groups, tiles of group {int(t[:, 0].max())}")
    out = TensorType(DType.i32, (x.shape[1], a["channels"], x.shape[3]) if cols else (*x.shape[:-1], a["channels"]))
    if ctx.has(2):
        acc = ctx.types[2]
        if acc is not None and (acc.dtype is not DType.i32
                                or (acc.shape is not None and len(acc.shape) != len(out.shape))):
            raise VerifyError(f"sram.mvm: the accumulator must be i32 {list(out.shape)}, is {acc}")
    return [out]


_LAYOUTS = ("rows", "cols")
_MVM_ATTRS = {
    "tiles": _TILES,
    "layout": AttrSpec("str", "rows", "rows: x [..., K] -> [..., channels]; cols: x [G, N, K, L] -> [N, channels, L]"),
    "channels": AttrSpec("int", REQUIRED, "output channels of the layer (all groups)"),
    "significance": AttrSpec("ints", REQUIRED, "signed significance of each slice column of a channel"),
    "offset": AttrSpec("int", 0, "offset subtracted per weight (offset encoding): y -= offset * sum(x)"),
    "rows_per_op": AttrSpec("int", REQUIRED, "word lines on at once (a row block)"),
    "dac_bits": AttrSpec("int", 1, "input bits per pass"),
    "act_bits": AttrSpec("int", 8, "bits of x"),
    "cell_bits": AttrSpec("int", 1, "bits per cell"),
    "adc_bits": AttrSpec("int", REQUIRED, "ADC resolution"),
    "skip": AttrSpec("tensor", np.zeros((0, 2), np.int64), "(tile, row block) pairs not driven (all-zero cells)"),
    "replicas": AttrSpec("int", 1, "copies of each tile on other macros, splitting the positions (cost only)"),
}


@op_def("sram.mvm", inputs=(2, 3), infer=_mvm_type, attrs=_MVM_ATTRS, accumulator=2)
def sram_mvm(ctx, x, token, acc=None):
    """The tiles' bit-serial MVMs of x with the images their macros hold, ADC, shift-add, summed into acc."""
    a = ctx.attrs
    tiles = np.asarray(a["tiles"])
    cells = _held_cells(ctx.state.get(STATE, {}), tiles)
    cols = a["layout"] == "cols"
    G = x.shape[0] if cols else 1
    shape = (x.shape[1], a["channels"], x.shape[3]) if cols else (*x.shape[:-1], a["channels"])
    y = (acc if ctx.donated else acc.copy()) if acc is not None else np.zeros(shape, np.int32)
    if y.shape != shape:
        raise CimcError(f"sram.mvm: the accumulator is {list(y.shape)}, expected {list(shape)}")
    per = a["channels"] // G
    if a["adc_bits"] >= lossless_adc_bits(a["rows_per_op"], a["dac_bits"], a["cell_bits"]):
        fresh = np.full(a["channels"], acc is None)  # channels still zero: written, not added to
        for g, k0, k1, c0, c1, w in _lossless_blocks(cells, tiles, a, per):
            xs = _rows_float32(ctx.state, x, g if cols else None, k0, k1)
            r = np.matmul(w, xs) if cols else np.matmul(xs, w)
            r = r if r.dtype == np.float32 else to_dtype(r, np.dtype(np.int32))  # float32 sums are exact int32
            dst = y[:, c0:c1, :] if cols else y[..., c0:c1]
            if fresh[c0:c1].all():
                np.copyto(dst, r, casting="unsafe")
            else:
                dst += r.astype(np.int32, copy=False)  # wraps like C
            fresh[c0:c1] = False
        return y
    enc = dict(significance=a["significance"], offset=a["offset"], rows_per_op=a["rows_per_op"],
               dac_bits=a["dac_bits"], act_bits=a["act_bits"], cell_bits=a["cell_bits"], adc_bits=a["adc_bits"])
    # tiles reading the same input rows run as one wide crossbar (their images side by side): a block
    # is left out only if every one of them skips it, and a skipped block's cells are zero, whose
    # partial sums are 0 through the ADC: the same bits as tile by tile
    skipped = {(int(t), int(b)) for t, b in np.asarray(a["skip"]).reshape(-1, 2)}
    rows: dict[tuple[int, int, int], list[int]] = {}
    for i, row in enumerate(tiles):
        g, k0, k1, _, _ = tile_window(row)
        rows.setdefault((g, k0, k1), []).append(i)
    for (g, k0, k1), idx in rows.items():
        windows = tuple(tile_window(tiles[i]) for i in idx)
        img = _image(cells, windows, len(a["significance"]), a["cell_bits"])
        blocks = range(-(-(k1 - k0) // a["rows_per_op"]))
        skip = [b for b in blocks if all((i, b) in skipped for i in idx)]
        xt = np.moveaxis(x[g, :, k0:k1, :], -2, -1) if cols else x[..., k0:k1]
        r = crossbar(xt, img, skip=skip, **enc)
        at = 0
        for _, _, _, ch0, ch1 in windows:
            part = r[..., at:at + ch1 - ch0]
            dst = y[:, g * per + ch0:g * per + ch1, :] if cols else y[..., g * per + ch0:g * per + ch1]
            dst += to_dtype(np.moveaxis(part, -1, -2) if cols else part, np.dtype(np.int32))  # wraps like C
            at += ch1 - ch0
    return y


def _held_cells(macros: dict, tiles: np.ndarray) -> np.ndarray:
    """The packed cells the tiles' macros hold, checking each macro holds its tile's window."""
    cells = None
    for row in tiles:
        held, want = macros.get(int(row[3])), tile_window(row)
        if held is None or held[1] != want:
            raise CimcError(f"sram.mvm reads macro {int(row[3])} for the tile (group, k0, k1, ch0, ch1) = {want}, "
                            + ("which no sram.load has written in this run" if held is None else
                               f"which holds {held[1]}: the program lost a load"))
        if cells is not None and held[0] is not cells:
            raise CimcError("sram.mvm: its tiles come from the cells of different layers")
        cells = held[0]
    return cells


def _image(cells: np.ndarray, windows: tuple, slices: int, cell_bits: int) -> np.ndarray:
    """The images of tiles on the same rows side by side, ``[k1 - k0, sum of (ch1 - ch0) * slices]``
    (unpacked cells, channel-major), cached."""
    def make():
        g, k0, k1 = windows[0][:3]
        parts = [unpack_cells(cells[g, k0:k1, ch0:ch1], slices, cell_bits).reshape(k1 - k0, -1)
                 for _, _, _, ch0, ch1 in windows]
        return np.ascontiguousarray(np.concatenate(parts, axis=1)), None
    return _cached(cells, ("img", windows, slices, cell_bits), make)[0]


def _lossless_blocks(cells: np.ndarray, tiles: np.ndarray, a, per: int) -> list[tuple]:
    """The op's tiles as matmul blocks ``(group, k0, k1, c0, c1, W)`` (cached per program): tiles of one
    group and row range with adjacent channels are joined, then blocks of one channel range with
    adjacent rows while ``x @ W`` stays exact in float32 (:func:`cimc.ops.nn.f32_chunk`; a block beyond
    that is float64). ``W`` is the decoded integer weights ``[k, ch]`` (layout
    cols: ``[ch, k]``), ``c0:c1`` the layer's output channels."""
    sig, off, act = tuple(int(v) for v in a["significance"]), int(a["offset"]), int(a["act_bits"])

    def make():
        rows: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
        for row in tiles:
            g, k0, k1, ch0, ch1 = tile_window(row)
            rows.setdefault((g, k0, k1), []).append((ch0, ch1))
        spans: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
        for (g, k0, k1), chs in rows.items():
            for ch0, ch1 in _joined(sorted(chs)):
                spans.setdefault((g, ch0, ch1), []).append((k0, k1))
        out = []
        for (g, ch0, ch1), ks in spans.items():
            lo, hi = min(k for k, _ in ks), max(k for _, k in ks)
            w = decode_cells(cells[g, lo:hi, ch0:ch1], sig, a["cell_bits"], off)  # [rows, ch] int32
            most = f32_chunk((1 << act) - 1, int(np.abs(w).max(initial=0)), hi - lo)
            exact32 = lambda k0, k1, most=most: most is not None and k1 - k0 <= most  # noqa: E731
            for k0, k1 in _joined(sorted(ks), exact32):
                blk = w[k0 - lo:k1 - lo].astype(np.float32 if exact32(k0, k1) else np.float64)
                out.append((g, k0, k1, g * per + ch0, g * per + ch1,
                            np.ascontiguousarray(blk.T) if a["layout"] == "cols" else blk))
        return out, None
    return _cached(cells, ("blocks", tiles.tobytes(), sig, off, act, a["layout"], per), make)[0]


def _joined(ranges: list[tuple[int, int]], fits=lambda lo, hi: True) -> list[tuple[int, int]]:
    """Sorted ranges with adjacent ones joined while ``fits(lo, hi)`` holds for the joined range."""
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if out and out[-1][1] == lo and fits(out[-1][0], hi):
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _rows_float32(state: dict, x: np.ndarray, g: int | None, k0: int, k1: int) -> np.ndarray:
    """Rows ``k0:k1`` of ``x`` (of group ``g`` in layout cols) in float32, exact for u8; the last slice is
    kept for the next op (the rounds of one row tile read the same rows)."""
    hit = state.get("sram.xs")
    if hit is not None and hit[0] is x and hit[1:4] == (g, k0, k1):
        return hit[4]
    xs = (x[g, :, k0:k1, :] if g is not None else x[..., k0:k1]).astype(np.float32)
    state["sram.xs"] = (x, g, k0, k1, xs)
    return xs


OPS = (sram_load, sram_mvm)
"""The sram-cim instructions, as the target lists them."""
