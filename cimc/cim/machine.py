"""Executing array instructions: what the arrays hold during a run, loads, and the MVM of a round of tiles.

A target's load and MVM instructions (``sram.load``, ``sram.mvm``; a memristor's alike) call
:func:`load` and :func:`mvm`; their attributes, type rules and checks are :mod:`cimc.cim.ops`. Machine state of one run:
``state[ARRAYS]``, an :class:`Arrays` holding, per array, the record of the last write (the layer's
packed cells, and which tile of which map, with its placement) and the run's :class:`Device`
(``state[DEVICE]`` when the caller gives one, else the ideal device).

load(cells, tiles, full_scale): for each tile of the map, array ``array`` now holds that tile's cells at
its physical placement (every other cell of the array 0; a complemented column, ``flip``, at ``top - L``), as
the device programs them, each physical column with its full-scale level (:func:`full_scales`: the level the
device's top state stands for).

mvm(x, acc, tiles, ...): each tile of the instruction's map drives the rows ``k0:k1`` of ``x`` (of
its group) onto the physical rows ``row_at`` of its array and reads the physical columns
``col_at``, converting every driven physical row block (a block holding some of its rows that is not
in ``skip``) with the ADC (each column alone, or a differential pair's two columns as one signed sum
with ``sense = pairs``); the column sums are weighted by the significance of their slices
(:mod:`cimc.cim.crossbar`), a complemented column's sum ``v'`` read as ``top * sum_k x - v'`` over its driven
rows (a differential pair's signed sum negated), minus ``offset * sum_k x`` on the tile holding slice 0
(offset encoding),
and added into the layer's channels ``g * channels/G + ch0 .. ch1`` of ``acc`` (zeros if absent),
int32 wrapping like C. Tiles holding the same part of the matrix (replicas) split the positions:
replica ``r`` of ``n`` takes positions ``r*P//n .. (r+1)*P//n`` (flattened in ``x``'s order).
Layout ``rows``: ``x [..., K]``, result ``[..., channels]``; layout ``cols``: ``x [G, N, K, L]``
(``vec.im2col``), result ``[N, channels, L]``.

How it runs: when the device is ideal and the ADC exact for every partial sum (:meth:`Adc.exact`),
the result is ``x @ W`` for the weights each tile reads from its array (:func:`tile_weights`: the
cells at the tile's physical rows and columns, those of skipped blocks left out): the MVM is a round
of an exact sum (:mod:`cimc.cim.exact`) that a chain of MVMs hands on, and the last of the chain
computes as one exact product per layer and group (the rounds' weights joined, cached per program and
what the arrays hold; u8 by int8 in int32 where this machine's integer kernel is exact, else float32
within a bound proven for the run). ``state[BIT_LEVEL]`` turns that path
off. Otherwise each group of tiles reading the same inputs runs as one wide crossbar on the cells
as the arrays store them, read at their physical rows and columns (a differential pair sensed as one signed
sum as the difference of its two columns' cells, one column of the crossbar), with the device's read noise
per cell (:meth:`~cimc.cim.device.Device.read_sigma`) and per conversion. Either way a read placement that
differs from the write, a skipped block that holds nonzero cells or a stuck cell changes the result. What a
non-ideal device's cells and crossbars derive to is kept in the device's ``memo`` (freed with the device).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from cimc.cim.adc import Adc, max_partial_sum
from cimc.cim.crossbar import convert_planes, physical_rows, shift_add
from cimc.cim.device import IDEAL, Device, ReadSite
from cimc.cim.encoding import decode_cells, unpack_cells
from cimc.cim.exact import ExactSum, Joined, Round, Window, join
from cimc.cim.tilemap import TileMap
from cimc.errors import CimcError
from cimc.ops.nn import to_dtype

__all__ = ["ARRAYS", "BIT_LEVEL", "DEVICE", "Arrays", "Written", "full_scales", "levels", "load", "mvm", "stored",
           "tile_weights"]

ARRAYS = "cim.arrays"
"""Machine-state key of the run's :class:`Arrays`."""
DEVICE = "cim.device"
"""Machine-state key of the run's :class:`~cimc.cim.device.Device` (absent: the ideal device)."""
BIT_LEVEL = "cim.bit_level"
"""Machine-state key: when true, every MVM runs the bit-serial model on the crossbar, even where the exact path
gives the same bits (to check the one against the other)."""

# ---- machine state ------------------------------------------------------------------------------------------
class Written(NamedTuple):
    """What one array holds: tile number ``tile`` of the load's map ``tiles``, cut from the layer's packed ``cells``,
    with the load's ``full_scale`` (:func:`full_scales`)."""

    cells: np.ndarray
    cell_bits: int
    tiles: TileMap
    tile: int
    full_scale: str = "cell"


class Arrays:
    """The arrays of one run: the last write of each, and the device that holds them."""

    def __init__(self, device: Device = IDEAL) -> None:
        self.device = device
        self.held: dict[int, Written] = {}
        self.keys: dict[int, tuple[int, int, int, str]] = {}
        """Per array, what it holds as ``(id(cells), id(tiles), index, full_scale)`` (program constants: a cache
        key)."""
        self._checked: set[tuple[int, int, int]] = set()

    def write(self, cells: np.ndarray, cell_bits: int, tiles: TileMap, full_scale: str = "cell") -> None:
        """Each tile of ``tiles`` into its array."""
        shape = (tiles.arrays, *tiles.physical)
        if shape not in self._checked:
            self.device.check(*shape)
            self._checked.add(shape)
        held, keys, c, t = self.held, self.keys, id(cells), id(tiles)
        for i, a in enumerate(tiles.array_list):
            held[a] = Written(cells, cell_bits, tiles, i, full_scale)
            keys[a] = (c, t, i, full_scale)

    def read(self, tiles: TileMap) -> tuple[list[Written], tuple]:
        """What the arrays of the tiles hold, and a key of that (an error if a load has not written one in
        this run)."""
        try:
            held = [self.held[a] for a in tiles.array_list]
        except KeyError:
            i = next(i for i, a in enumerate(tiles.array_list) if a not in self.held)
            raise CimcError(f"array {tiles.array_list[i]} is read for tile {i} of layer {tiles.layer!r} but no load "
                            f"has written it in this run") from None
        for i, w in enumerate(held):
            if w.tiles.physical != tiles.physical:
                raise CimcError(f"array {tiles.array_list[i]} is read for tile {i} of layer {tiles.layer!r} as "
                                f"{' x '.join(map(str, tiles.physical))} physical rows x columns, but its load wrote "
                                f"it as {' x '.join(map(str, w.tiles.physical))} (the tile maps' shape and spares "
                                f"differ)")
        return held, tuple([self.keys[a] for a in tiles.array_list])


def arrays_of(state: dict[str, Any]) -> Arrays:
    """The run's :class:`Arrays` (made on first use with the run's device)."""
    arrays = state.get(ARRAYS)
    if arrays is None:
        arrays = state[ARRAYS] = Arrays(state.get(DEVICE, IDEAL))
    return arrays


def load(state: dict[str, Any], cells: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """A load instruction: write each tile of ``attrs['tiles']`` into its array; the token is the tile count."""
    tiles: TileMap = attrs["tiles"]
    if cells.ndim != 4 or tuple(cells.shape[:3]) != tiles.matrix:
        raise CimcError(f"load: the cells are {list(cells.shape)}, the tile map is of a {list(tiles.matrix)} matrix")
    arrays_of(state).write(cells, int(attrs["cell_bits"]), tiles, str(attrs.get("full_scale", "cell")))
    return np.asarray(len(tiles), np.int32)


# ---- caches: derived arrays of program constants, computed once while the constant lives ----------------
_CACHE: dict[tuple, tuple[Any, Any]] = {}


def _cached(owner: Any, key: tuple, make: Callable[[], Any], device: Device | None = None) -> Any:
    """``make()`` for ``owner`` (a constant array or a tile map) and ``key``, kept while ``owner`` lives (and,
    for a non-ideal ``device``, in its memo: while the device lives too)."""
    cache = _CACHE if device is None or device.ideal else device.memo
    k = (id(owner), *key)
    hit = cache.get(k)
    if hit is not None and hit[0]() is owner:
        return hit[1]
    val = make()
    try:
        ref = weakref.ref(owner, functools.partial(_forget, k, cache))
    except TypeError:
        return val
    cache[k] = (ref, val)
    return val


def _forget(key: tuple, cache: dict[tuple, tuple[Any, Any]], _ref: weakref.ref[Any]) -> None:
    """Drop ``key``'s entry from ``cache`` when its owner dies (``cache`` is bound early: it may outlive module
    globals)."""
    cache.pop(key, None)


def levels(w: Written) -> np.ndarray:
    """The physical image (uint8 ``[R, C]``, unused cells 0) of what ``w`` wrote."""
    def make() -> np.ndarray:
        t = w.tiles[w.tile]
        g, k0, k1, c0, c1, s0, s1 = t.window
        S = w.tiles.slices
        img = unpack_cells(w.cells[g, k0:k1, c0:c1], S, w.cell_bits)[..., s0:s1].reshape(k1 - k0, -1)
        if len(t.flip):
            img[:, t.flip] = np.uint8((1 << w.cell_bits) - 1) - img[:, t.flip]
        out = np.zeros(w.tiles.physical, np.uint8)
        out[t.row_at[:, None], t.col_at[None, :]] = img
        return out
    return _cached(w.cells, ("levels", w.tiles.key, w.tile), make)


def full_scales(w: Written) -> np.ndarray:
    """The full-scale level (float32, at least 1) of each physical column of the array ``w`` wrote: the level the
    device's top state stands for, by the load's ``full_scale``: ``cell``, the cell's top level ``2**cell_bits -
    1``; ``layer``, the largest level of the column's slice over the whole layer (a complemented column: the top
    level); ``column``, the largest level in the column. Columns the tile does not use: the cell's top level."""
    t = w.tiles[w.tile]
    top = float((1 << w.cell_bits) - 1)
    out = np.full(w.tiles.physical[1], top, np.float32)
    if w.full_scale == "cell":
        return out
    if w.full_scale == "column":
        out[t.col_at] = levels(w)[:, t.col_at].max(axis=0, initial=0)
    else:
        S = w.tiles.slices
        per_slice = _cached(w.cells, ("slice_max", S, w.cell_bits), lambda: unpack_cells(
            w.cells, S, w.cell_bits).reshape(-1, S).max(axis=0, initial=0).astype(np.float32))
        out[t.col_at] = np.tile(per_slice[t.s0:t.s1], t.ch1 - t.ch0)
        out[t.col_at[t.flip]] = top  # a complemented column holds top - L: up to the top level
    return np.maximum(out, 1, out=out)


def stored(w: Written, device: Device) -> np.ndarray:
    """What the array holds after the device programmed ``w``'s levels (computed when asked: the prepared
    crossbars that read it are what is kept)."""
    if device.ideal:
        return levels(w)
    return device.program(int(w.tiles.table[w.tile, 7]), levels(w), full_scales(w))


# ---- the MVM -----------------------------------------------------------------------------------------------
def mvm(state: dict[str, Any], rng: np.random.Generator | None, x: np.ndarray, acc: np.ndarray | ExactSum | None,
        attrs: dict[str, Any], donated: bool = False, partial: bool = False) -> np.ndarray | ExactSum:
    """An MVM instruction (module docstring): the tiles' products of ``x`` summed into ``acc``. ``partial``: the
    result is read only as the accumulator of the next MVM of the chain, so an exact sum
    (:class:`~cimc.cim.exact.ExactSum`) may be handed on instead of the array; ``acc`` may be one."""
    a = attrs
    tiles: TileMap = a["tiles"]
    arrays = arrays_of(state)
    held, fingerprint = arrays.read(tiles)
    cols = a["layout"] == "cols"
    G = x.shape[0] if cols else 1
    shape = (x.shape[1], a["channels"], x.shape[3]) if cols else (*x.shape[:-1], a["channels"])
    if acc is not None and acc.shape != shape:
        raise CimcError(f"mvm: the accumulator is {list(acc.shape)}, expected {list(shape)}")
    if tiles.matrix[0] != G or a["channels"] != G * tiles.matrix[2]:
        raise CimcError(f"mvm: x has {G} groups and the op {a['channels']} channels, the tile map is of a "
                        f"{list(tiles.matrix)} matrix")
    adc, most, exact = _adc(a)
    pending = acc if isinstance(acc, ExactSum) else None
    if exact and arrays.device.ideal and not state.get(BIT_LEVEL):
        r = _exact_round(held, fingerprint, tiles, a, x)
        if r is not None:
            s = pending if pending is not None else ExactSum(
                shape, acc if isinstance(acc, np.ndarray) else None, donated,
                lambda rounds: _joined(rounds, G, int(a["channels"])))
            s.add(r)
            return s if partial else s.value()
    if pending is not None:
        acc, donated = pending.value(), True
    assert acc is None or isinstance(acc, np.ndarray)
    y = (acc if donated else acc.copy()) if acc is not None else np.zeros(shape, np.int32)
    _run_crossbar(state, rng, arrays, held, fingerprint, x, y, adc, most, a)
    return y


_ADCS: dict[tuple, tuple[Adc, int, bool]] = {}


def _adc(a: dict[str, Any]) -> tuple[Adc, int, bool]:
    """The instruction's ADC, the largest noiseless partial sum ``M`` and whether the ADC is exact up to it
    (computed once per distinct set of ADC attributes)."""
    key = (a["adc_bits"], None if a.get("adc_step") is None else np.asarray(a["adc_step"]).tobytes(),
           None if a.get("adc_offset") is None else np.asarray(a["adc_offset"]).tobytes(),
           np.asarray(a.get("adc_step")).shape, a.get("adc_group", 0), a.get("adc_rounding", "half-even"),
           a["rows_per_op"], a["dac_bits"], a["cell_bits"], a.get("sense", "columns"))
    hit = _ADCS.get(key)
    if hit is None:
        if len(_ADCS) > 4096:
            _ADCS.clear()
        adc = Adc.from_attrs(a)
        most = max_partial_sum(a["rows_per_op"], a["dac_bits"], a["cell_bits"])
        hit = _ADCS[key] = (adc, most, adc.exact(most, -most if a.get("sense") == "pairs" else 0))
    return hit


def _skipped_rows(tiles: TileMap, skip: np.ndarray, rows_per_op: int) -> dict[int, np.ndarray]:
    """Per tile with skipped blocks, the logical rows that sit in them."""
    out: dict[int, np.ndarray] = {}
    for t in np.unique(skip[:, 0]) if len(skip) else ():
        blocks = skip[skip[:, 0] == t, 1]
        out[int(t)] = np.flatnonzero(np.isin(tiles.rows_of(int(t)) // rows_per_op, blocks))
    return out


def tile_weights(w: Written, tiles: TileMap, i: int, significance: np.ndarray, offset: int) -> np.ndarray:
    """The integer weights ``W[k, ch]`` (int64) that tile ``i`` of ``tiles`` reads from what its array holds
    (``w``): the cells at the tile's physical rows and columns, weighted by its slices' significance, minus
    ``offset`` on the tile holding slice 0; its complemented columns (``flip``) read back as ``top - cell``.
    Reading a tile back where it was written at the identity placement gives the written cells, decoded
    straight from the packed ones."""
    g, k0, k1, c0, c1, s0, s1 = (int(v) for v in tiles.table[i, :7])
    off = offset if s0 == 0 else 0
    mine = w.tiles
    if (mine.row_at[w.tile] is None and mine.col_at[w.tile] is None and tiles.row_at[i] is None
            and tiles.col_at[i] is None and mine.flip[w.tile] is None and tiles.flip[i] is None
            and (mine.table[w.tile, :7] == tiles.table[i, :7]).all()):
        part = np.zeros_like(significance)
        part[s0:s1] = significance[s0:s1]
        return decode_cells(w.cells[g, k0:k1, c0:c1], part, w.cell_bits, off).astype(np.int64)
    cells = levels(w)[np.ix_(tiles.rows_of(i), tiles.cols_of(i))].astype(np.int64)
    flip = tiles.flips_of(i)
    cells[:, flip] = ((1 << w.cell_bits) - 1) - cells[:, flip]
    return cells.reshape(k1 - k0, c1 - c0, s1 - s0) @ significance[s0:s1] - off


def _round_weights(held: list[Written], tiles: TileMap, a: dict[str, Any]) -> dict[Window, np.ndarray] | None:
    """The weight windows an exact MVM's tiles read, each once: ``{(group, k0, k1, c0, c1, s0, s1): W}`` (int64
    ``[k1 - k0, c1 - c0]``), or ``None`` when replicas of one part read different weights (then each takes its
    positions on the crossbar).

    Each tile's weights are what it reads from its array (:func:`tile_weights`), the cells of the rows in its
    skipped blocks left out (they are not driven; the offset term stays)."""
    sig = np.asarray(a["significance"], np.int64)
    off = int(a["offset"])
    zero_rows = _skipped_rows(tiles, np.asarray(a["skip"], np.int64).reshape(-1, 2), int(a["rows_per_op"]))
    weights: dict[Window, np.ndarray] = {}
    for i, t in enumerate(tiles.table.tolist()):
        w = tile_weights(held[i], tiles, i, sig, off)
        if i in zero_rows:  # not driven: no cells, only the digital offset term is left
            w[zero_rows[i]] = -off if t[5] == 0 else 0
        window: Window = tuple(t[:7])  # type: ignore[assignment]
        if window in weights:
            if not np.array_equal(weights[window], w):
                return None
        else:
            weights[window] = w
    return weights


def _exact_round(held: list[Written], fingerprint: tuple, tiles: TileMap, a: dict[str, Any],
                 x: np.ndarray) -> Round | None:
    """The instruction as a :class:`~cimc.cim.exact.Round` of an exact sum, or ``None`` when it must run on the
    crossbar: replicas of one part read different weights, or ``x`` holds bits beyond ``act_bits`` (the
    bit-serial inputs drop them)."""
    act = int(a["act_bits"])
    if act < 8 and x.size and int(x.max()) >> act:
        return None
    skip = np.asarray(a["skip"], np.int64).reshape(-1, 2)
    key = ("exact", fingerprint, skip.tobytes(), tuple(a["significance"]), int(a["offset"]), a["layout"],
           int(a["rows_per_op"]))
    if not _cached(tiles, key, lambda: _round_weights(held, tiles, a) is not None):
        return None
    return Round(x, a["layout"] == "cols", (id(tiles), *key), (tiles, held),
                 lambda: _round_weights(held, tiles, a) or {})


def _joined(rounds: list[Round], groups: int, channels: int) -> Joined:
    """The rounds' weights joined (:func:`cimc.cim.exact.join`), cached while the first round's tile map lives
    (the join holds every object the key names)."""
    key = ("joined", groups, channels, *(r.key for r in rounds))
    return _cached(rounds[0].refs[0], key, lambda: join(rounds, groups, channels))


@dataclass(frozen=True)
class _Group:
    """Tiles that read the same inputs at the same physical rows, run as one wide crossbar."""

    tiles: tuple[int, ...]
    group: int
    k0: int
    k1: int
    row_at: np.ndarray
    part: tuple[int, int]
    """Replica ``r`` of ``n``: this group takes positions ``r*P//n .. (r+1)*P//n``."""
    blocks: np.ndarray
    blocks_img: np.ndarray
    """``[A, rows_per_op, C]``: the driven blocks' cells of every converted column (a pair sensed as one signed
    sum: the difference of its two columns), divided by the columns' ADC steps when the device is ideal."""
    driven: np.ndarray | None
    adc: Adc
    arrays: np.ndarray
    cols: np.ndarray
    spans: tuple[tuple[int, int], ...]
    """Each tile's converted columns (its pairs, when sensed so) among the group's."""
    sigma: np.ndarray | None
    """``[C]``: the read noise of one cell read per converted column (a pair: of its two cells), or ``None``."""


def _groups(held: list[Written], fingerprint: tuple, tiles: TileMap, device: Device, adc: Adc,
            a: dict[str, Any]) -> list[_Group]:
    """The instruction's tiles grouped into wide crossbars, with their stored cells (cached per program, and
    for a non-ideal device in its memo)."""
    rpo = int(a["rows_per_op"])
    R = tiles.physical[0]
    B = -(-R // rpo)
    prescaled = device.ideal
    skip = np.asarray(a["skip"], np.int64).reshape(-1, 2)
    sense = a.get("sense", "columns")
    dt = np.float32 if max_partial_sum(rpo, int(a["dac_bits"]), int(a["cell_bits"])) < 1 << 23 else np.float64

    def make() -> list[_Group]:
        window = [tuple(int(v) for v in t[:7]) for t in tiles.table]
        count: dict[tuple, int] = {}
        rank = []
        for w in window:
            rank.append(count.get(w, 0))
            count[w] = rank[-1] + 1
        by: dict[tuple, list[int]] = {}
        for i, w in enumerate(window):
            by.setdefault((w[0], w[1], w[2], tiles.rows_of(i).tobytes(), rank[i], count[w]), []).append(i)
        out = []
        for (g, k0, k1, _, r, n), idx in by.items():
            row_at = tiles.rows_of(idx[0])
            has = np.zeros(B, bool)
            has[np.unique(row_at // rpo)] = True
            drives = []
            for i in idx:
                d = has.copy()
                d[skip[skip[:, 0] == i, 1]] = False
                drives.append(d)
            used = np.flatnonzero(np.any(drives, axis=0))
            imgs, arrs, pcols, spans, adcs, masks, sigmas, grids, at = [], [], [], [], [], [], [], [], 0
            for i, d in zip(idx, drives, strict=True):
                pc = tiles.cols_of(i)
                arr = int(tiles.table[i, 7])
                img = stored(held[i], device)[:, pc].astype(dt)
                sig = device.read_sigma(arr, full_scales(held[i])) if not device.ideal else None
                sig = None if sig is None else np.asarray(sig, dt)[pc]
                q = device.grid(full_scales(held[i]))[pc]
                if sense == "pairs":  # logical column c*S + s with s < S/2 is positive, c*S + s + S/2 its negative
                    S = tiles.slices
                    j = np.arange(len(pc)).reshape(-1, S)
                    pos, neg = j[:, :S // 2].reshape(-1), j[:, S // 2:].reshape(-1)
                    img = np.subtract(img[:, pos], img[:, neg])  # one signed sum: the pair's currents' difference
                    sig = None if sig is None else np.sqrt(sig[pos] ** 2 + sig[neg] ** 2)
                    q = np.maximum(q[pos], q[neg])
                    pc = pc[pos]
                imgs.append(img)
                grids.append(q)
                sigmas.append(sig)
                arrs.append(np.full(len(pc), arr))
                pcols.append(pc)
                adcs.append(adc.columns(i, pc))
                masks.append(np.repeat(d[used][:, None], len(pc), axis=1))
                spans.append((at, at + len(pc)))
                at += len(pc)
            col_adc = Adc.join(adcs)
            img = np.concatenate(imgs, axis=1)
            full = np.zeros((B * rpo, img.shape[1]), dt)
            full[:R] = img
            bi = full.reshape(B, rpo, -1)[used]
            if prescaled:
                bi = bi * col_adc.scale(dt)
            grid = np.concatenate(grids)
            if grid.any():  # cells off whole levels: the analog sums in the dtype that keeps them exact
                bi = bi.astype(exact_sum_dtype(bi, grid, (1 << min(int(a["dac_bits"]), 8)) - 1))
            sigma = None
            if any(sg is not None for sg in sigmas):
                sigma = np.concatenate([np.zeros(len(c), dt) if sg is None else sg
                                        for sg, c in zip(sigmas, pcols, strict=True)]).astype(bi.dtype)
            mask = np.concatenate(masks, axis=1)
            out.append(_Group(tuple(idx), g, k0, k1, row_at, (r, n), used, np.ascontiguousarray(bi),
                              None if mask.all() else mask, col_adc, np.concatenate(arrs), np.concatenate(pcols),
                              tuple(spans), sigma))
        return out
    key = ("groups", fingerprint, device.token, adc.bits, adc.step.tobytes(), adc.offset.tobytes(), adc.group,
           adc.rounding, skip.tobytes(), rpo, int(a["dac_bits"]), int(a["cell_bits"]), sense)
    return _cached(tiles, key, make, device)


def exact_sum_dtype(cells: np.ndarray, grid: np.ndarray, most_input: int) -> np.dtype:
    """float32 when every analog sum ``sum_r x_r * cells[a, r, c]`` of inputs ``0 <= x_r <= most_input`` is exact
    in float32 whatever the order of its additions, else float64 (the same bound at ``2**53``); an error when not even
    float64 is. ``cells``: ``[A, rows, C]``, column ``c`` holding multiples of ``2**-grid[c]`` (the device's
    :meth:`~cimc.cim.device.Device.grid`). Every partial sum of such products is a multiple of ``2**-grid[c]``
    no larger in magnitude than ``most_input * sum_r |cells[a, r, c]|``; below ``2**(24 - grid[c])`` float32
    represents it exactly, so each addition (and a fused multiply-add) is exact: the BLAS kernel, its blocking
    and its threads cannot change a bit."""
    units = cells.astype(np.float64) * np.ldexp(1.0, grid.astype(np.int32))  # whole numbers, exactly
    if not np.array_equal(units, np.rint(units)):
        raise CimcError("the device stored cell values off the grid it declares")
    most = float(most_input) * float(np.abs(units).sum(axis=1).max(initial=0.0))
    if most < 1 << 24:
        return np.dtype(np.float32)
    if most < 1 << 53:
        return np.dtype(np.float64)
    raise CimcError(f"an analog column sum of up to {most:.3g} grid units is not exact even in float64")


def _run_crossbar(state: dict[str, Any], rng: np.random.Generator | None, arrays: Arrays, held: list[Written],
                  fingerprint: tuple, x: np.ndarray, y: np.ndarray, adc: Adc, most: int, a: dict[str, Any]) -> None:
    """The tiles as wide crossbars on the stored cells (module docstring)."""
    tiles: TileMap = a["tiles"]
    device = arrays.device
    cols = a["layout"] == "cols"
    R = tiles.physical[0]
    pairs = a.get("sense") == "pairs"
    groups = _groups(held, fingerprint, tiles, device, adc, a)
    plans = _epilogues(tiles, groups, adc, a)
    P = x.shape[1] * x.shape[3] if cols else int(np.prod(x.shape[:-1]))
    total = None if all(p is None for p in plans) else np.zeros((P, y.shape[-2] if cols else y.shape[-1]), np.float64)
    for grp, plan in zip(groups, plans, strict=True):
        xt = _inputs(x, grp.group, grp.k0, grp.k1, cols)  # u8 [P, k]
        r, n = grp.part
        q0, q1 = r * P // n, (r + 1) * P // n
        xp = physical_rows(xt[q0:q1], grp.row_at, R)
        read = None
        if not device.ideal:
            if rng is None:
                raise CimcError("mvm: a noisy device needs the run's random generator")
            read = _reader(device, grp, rng)
        accs = convert_planes(xp, grp.blocks_img, grp.blocks, rows_per_op=int(a["rows_per_op"]),
                              dac_bits=int(a["dac_bits"]), act_bits=int(a["act_bits"]), adc=grp.adc,
                              driven=grp.driven, prescaled=device.ideal, read=read, most=float(most),
                              least=-float(most) if pairs else 0.0, sigma=grp.sigma, rng=rng)
        if plan is None:
            _tile_by_tile(tiles, grp, a, accs, xt, y, q0, q1, P, cols, x)
            continue
        assert total is not None
        out = total[q0:q1]
        red = accs if plan.weights is None else np.multiply(accs, plan.weights, dtype=np.float64)
        if plan.slices > 1:
            red = red.reshape(red.shape[0], red.shape[1] // plan.slices, plan.slices).sum(axis=2)
        for c0, c1, ch0, ch1 in plan.spans:
            out[:, ch0:ch1] += red[:, c0:c1]
        if plan.offset_spans:
            sx = xt[q0:q1].sum(axis=1, dtype=np.float64)[:, None] * float(a["offset"])
            for ch0, ch1 in plan.offset_spans:
                out[:, ch0:ch1] -= sx
    if total is not None:
        v = to_dtype(total, np.dtype(np.int32))
        if cols:
            N, L = x.shape[1], x.shape[3]
            y += np.moveaxis(v.reshape(N, L, -1), -1, 1)  # wraps like C
        else:
            flat = y.reshape(-1, y.shape[-1])
            np.add(flat, v, out=flat)  # wraps like C


@dataclass(frozen=True)
class _Epilogue:
    """How a wide crossbar's column sums become the layer's channels in one pass: each column times its slice's
    significance (negated where a pair was written complemented), the ``slices`` columns of a channel summed,
    spans of the result added into the channels (an MVM's exact float64 total), the offset term subtracted from
    the channels of tiles holding slice 0."""

    weights: np.ndarray | None
    """float64 ``[C]`` per converted column, or ``None`` when every one is 1."""
    slices: int
    spans: tuple[tuple[int, int, int, int], ...]
    """``(c0, c1, ch0, ch1)``: reduced columns ``c0:c1`` add into channels ``ch0:ch1`` (adjacent tiles merged)."""
    offset_spans: tuple[tuple[int, int], ...]


def _epilogues(tiles: TileMap, groups: list[_Group], adc: Adc, a: dict[str, Any]) -> list[_Epilogue | None]:
    """Each group's :class:`_Epilogue`, or ``None`` for a group whose tiles must add one by one (tiles of one group
    with different slice counts or overlapping channels, complemented single columns, or sums that could leave
    float64's integers); cached per tile map and attributes."""
    sig = np.asarray(a["significance"], np.int64)
    off = int(a["offset"])
    pairs = a.get("sense") == "pairs"
    key = ("epilogue", sig.tobytes(), off, pairs, a["layout"], np.asarray(a["skip"], np.int64).tobytes(),
           int(a["rows_per_op"]), int(a["dac_bits"]), int(a["act_bits"]), adc.bits, adc.step.tobytes(),
           adc.offset.tobytes())

    def make() -> list[_Epilogue | None]:
        per = tiles.matrix[2]
        lo, hi = adc.offset.astype(np.float64), (adc.offset + adc.step * adc.top).astype(np.float64)
        most_code = float(np.maximum(np.abs(lo), np.abs(hi)).max(initial=0.0))
        J = -(-int(a["act_bits"]) // int(a["dac_bits"]))
        weight = float(sum(1 << (j * int(a["dac_bits"])) for j in range(J)))
        out: list[_Epilogue | None] = []
        bound = 0.0
        for grp in groups:
            counts = {len(sig) // 2 if pairs else int(tiles.table[i, 6] - tiles.table[i, 5]) for i in grp.tiles}
            if len(counts) != 1 or (not pairs and any(len(tiles.flips_of(i)) for i in grp.tiles)):
                out.append(None)
                continue
            S1 = counts.pop()
            w = np.empty(grp.spans[-1][1] if grp.spans else 0, np.float64)
            spans: list[list[int]] = []
            offs: list[list[int]] = []
            for i, (c0, c1) in zip(grp.tiles, grp.spans, strict=True):
                g, _, _, ch0, ch1, s0, s1 = (int(v) for v in tiles.table[i, :7])
                part = sig[:S1] if pairs else sig[s0:s1]
                w[c0:c1] = np.tile(part.astype(np.float64), (c1 - c0) // S1)
                flip = tiles.flips_of(i)
                if len(flip):  # a complemented pair: its signed sum negated (slices s < S/2 are the positive columns)
                    half = tiles.slices // 2
                    pos = np.arange(c1 - c0) // half * tiles.slices + np.arange(c1 - c0) % half
                    w[c0:c1][np.isin(pos, flip)] *= -1
                span = [c0 // S1, c1 // S1, g * per + ch0, g * per + ch1]
                if spans and spans[-1][1] == span[0] and spans[-1][3] == span[2]:
                    spans[-1][1], spans[-1][3] = span[1], span[3]
                else:
                    spans.append(span)
                if off and s0 == 0:
                    if offs and offs[-1][1] == span[2]:
                        offs[-1][1] = span[3]
                    else:
                        offs.append(span[2:])
            chans = np.concatenate([np.arange(s[2], s[3]) for s in spans]) if spans else np.zeros(0, np.int64)
            if len(np.unique(chans)) != len(chans):
                out.append(None)
                continue
            bound += most_code * weight * len(grp.blocks) * float(np.abs(w).max(initial=0.0)) * S1 \
                + abs(off) * 255.0 * (grp.k1 - grp.k0)
            out.append(_Epilogue(None if (w == 1).all() else w, S1, tuple(map(tuple, spans)),  # type: ignore[arg-type]
                                 tuple(map(tuple, offs))))  # type: ignore[arg-type]
        if bound >= 1 << 53:  # a channel's total would not be exact in float64
            return [None] * len(groups)
        return out
    return _cached(tiles, key, make)


def _tile_by_tile(tiles: TileMap, grp: _Group, a: dict[str, Any], accs: np.ndarray, xt: np.ndarray, y: np.ndarray,
                  q0: int, q1: int, P: int, cols: bool, x: np.ndarray) -> None:
    """A group's column sums added into ``y`` tile by tile (the general case of :func:`_epilogues`)."""
    per = tiles.matrix[2]
    sig = np.asarray(a["significance"], np.int64)
    off = int(a["offset"])
    pairs = a.get("sense") == "pairs"
    undriven = _skipped_rows(tiles, np.asarray(a["skip"], np.int64).reshape(-1, 2), int(a["rows_per_op"])) \
        if any(f is not None for f in tiles.flip) else {}
    for i, (c0, c1) in zip(grp.tiles, grp.spans, strict=True):
        g, _, _, ch0, ch1, s0, s1 = (int(v) for v in tiles.table[i, :7])
        sums = accs[:, c0:c1]
        flip = tiles.flips_of(i)
        if len(flip):  # complemented columns: top * sum(x) over the driven rows less what was read
            sums = sums.astype(np.float64)
            if pairs:  # a pair's signed sum, negated (read at its positive column: slices s < S/2)
                S = tiles.slices
                pos = np.arange(c1 - c0) // (S // 2) * S + np.arange(c1 - c0) % (S // 2)
                sums[:, np.isin(pos, flip)] *= -1
            else:
                rows = np.ones(xt.shape[1], bool)
                rows[undriven.get(i, [])] = False
                sx = xt[q0:q1][:, rows].astype(np.int64).sum(axis=1, keepdims=True)
                sums[:, flip] = float((1 << int(a["cell_bits"])) - 1) * sx - sums[:, flip]
        part = shift_add(sums, sig[:len(sig) // 2] if pairs else sig[s0:s1])
        if off and s0 == 0:
            part -= off * xt[q0:q1].astype(np.int64).sum(axis=1, keepdims=True)
        _scatter(y, part, g * per + ch0, g * per + ch1, q0, q1, P, cols, x)


def _reader(device: Device, grp: _Group, rng: np.random.Generator) -> Callable[..., None]:
    """The device's read hook on a group's conversions."""
    def read(ps: np.ndarray, blocks: np.ndarray, first: int, chunks: int, key: tuple[int, int] | None) -> None:
        device.read(ps, ReadSite(grp.arrays, grp.cols, blocks, first, chunks, key), rng)
    return read


def _inputs(x: np.ndarray, g: int, k0: int, k1: int, cols: bool) -> np.ndarray:
    """Rows ``k0:k1`` of ``x`` (group ``g`` in layout cols) as ``[positions, k]``."""
    if cols:
        return np.ascontiguousarray(np.moveaxis(x[g, :, k0:k1, :], -2, -1)).reshape(-1, k1 - k0)
    return x[..., k0:k1].reshape(-1, k1 - k0)


def _scatter(y: np.ndarray, part: np.ndarray, c0: int, c1: int, q0: int, q1: int, P: int, cols: bool,
             x: np.ndarray) -> None:
    """Add ``part`` (int64 ``[q1 - q0, c1 - c0]``, positions ``q0:q1`` of ``P``) into channels ``c0:c1`` of ``y``."""
    v = to_dtype(part, np.dtype(np.int32))
    if not cols:
        y.reshape(-1, y.shape[-1])[q0:q1, c0:c1] += v  # wraps like C
        return
    N, L = x.shape[1], x.shape[3]
    if (q0, q1) != (0, P):
        full = np.zeros((P, c1 - c0), np.int32)
        full[q0:q1] = v
        v = full
    y[:, c0:c1, :] += np.moveaxis(v.reshape(N, L, c1 - c0), -1, 1)
