"""What one MVM instruction does, counted per tile: what a cost model prices.

For tile ``t`` of an instruction's map, with ``P`` input positions, ``J = ceil(act_bits / dac_bits)``
input chunks and ``rows_per_op`` word lines per physical row block:

- ``blocks[t]``: driven row blocks: physical blocks holding some of its rows, less its skipped ones;
- ``rows[t]``: its logical rows in driven blocks (word lines switched on);
- ``columns[t]``: its logical columns (bit lines read, one ADC conversion each per pass);
- ``share[t]``: the share of the positions it computes (``1 / n`` for each of ``n`` replicas);
- ``passes[t] = share * P * J * blocks``: array operations (one block, one input chunk, all columns);
- ``conversions[t] = passes * columns`` ADC conversions (``columns / 2`` with differential pairs sensed as
  one column, ``sense = pairs``);
- ``macs[t] = share * P * rows * channels * (s1 - s0) / S``: multiply-accumulates of whole weights it
  performs (a tile holding some of the ``S`` slices does that share of each);
- ``corrections[t] = share * P * (flipped + rows)`` digital adds of its complemented columns (``flipped`` of
  them, ``flip``; a pair sensed together counts once and needs no input sum): per position, the sum of its
  driven inputs (``rows`` adds, once for all its complemented columns) and one subtraction per column; 0
  without complemented columns.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from cimc.cim.tilemap import TileMap

__all__ = ["Work", "work"]


@dataclass(frozen=True)
class Work:
    """Per-tile counts of one MVM instruction (module docstring); float arrays ``[T]``."""

    blocks: np.ndarray
    rows: np.ndarray
    columns: np.ndarray
    channels: np.ndarray
    share: np.ndarray
    passes: np.ndarray
    conversions: np.ndarray
    macs: np.ndarray
    corrections: np.ndarray


def work(tiles: TileMap, skip: np.ndarray, rows_per_op: int, positions: int, chunks: int,
         sense: str = "columns") -> Work:
    """The counts of an instruction over ``tiles`` with ``skip`` ((tile, block) pairs) at ``positions``
    input positions and ``chunks`` input chunks, its columns sensed one by one or in pairs (``sense``)."""
    T = len(tiles)
    skip = np.asarray(skip, np.int64).reshape(-1, 2)
    tile, block, count = tiles.blocks(rows_per_op)
    driven = np.ones(len(tile), bool)
    if len(skip):
        B = -(-tiles.physical[0] // rows_per_op)
        driven = ~np.isin(tile * B + block, skip[:, 0] * B + skip[:, 1])
    blocks = np.bincount(tile, weights=driven, minlength=T)
    rows = np.bincount(tile, weights=count * driven, minlength=T)
    t = tiles.table
    keys = list(map(tuple, t[:, :7].tolist()))
    window = Counter(keys)
    share = np.ones(T) if len(window) == T else np.asarray([1.0 / window[w] for w in keys])
    columns = ((t[:, 4] - t[:, 3]) * (t[:, 6] - t[:, 5])).astype(np.float64)
    channels = (t[:, 4] - t[:, 3]).astype(np.float64)
    passes = share * positions * chunks * blocks
    part = (t[:, 6] - t[:, 5]) / tiles.slices
    pairs = sense == "pairs"
    flipped = np.asarray([0 if f is None else len(f) for f in tiles.flip], np.float64) / (2 if pairs else 1)
    corrections = share * positions * (flipped + np.where(flipped > 0, 0.0 if pairs else rows, 0.0))
    return Work(blocks, rows, columns, channels, share, passes, passes * columns / (2 if pairs else 1),
                share * positions * rows * channels * part, corrections)
