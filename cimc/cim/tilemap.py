"""Typed tile maps: which part of a layer's weight matrix sits on which array, and where in it.

A layer's weights are matrices ``m[g, k, n]`` (``[G, K, N]``, :func:`cimc.tiling.weight_matrix`), each
weight spread over ``S`` slices (cells, :class:`cimc.cim.encoding.Encoding`). A :class:`TileMap`
lists the layer's tiles; tile ``t`` holds, on array ``array``, slices ``s0:s1`` of the weights of
group ``group``, logical rows ``k0:k1`` and channels ``ch0:ch1``; ``replica`` numbers the copies of
one part of the matrix on different arrays (positions are split between them). A tile's logical
columns are channel-major: column ``(c - ch0) * (s1 - s0) + (s - s0)`` holds slice ``s`` of channel
``c``.

Placement: an array has ``rows + spare_rows`` physical rows and ``cols + spare_cols`` physical
columns (``shape`` and ``spares``); a tile holds at most ``rows`` x ``cols`` logical cells. Its
``row_at[i]`` is the physical row of logical row ``k0 + i``, its ``col_at[j]`` the physical column
of logical column ``j``: injective maps into the array (a permutation of its rows or columns, of which
the tile uses the first ``k1 - k0`` entries; unused physical rows and columns, spares included, hold
zero cells). ``None`` is the identity (row ``i`` at physical row ``i``).

Complemented columns: ``flip`` lists the tile's logical columns written complemented, each cell at level
``top - L`` instead of ``L`` (``top = 2**cell_bits - 1``; a column sign flip, so that the cells' stuck
values match): the MVM reads such a column's sum ``v'`` and takes ``top * sum(x) - v'`` over the rows it
drives (both columns of a differential pair sensed together are flipped or neither: their signed sum is then
negated). ``None`` (or empty) is no column complemented. With an ideal device it computes the same bits.

Invariants (:meth:`TileMap.problems`): ranges inside the matrix and the slices, tiles inside the
array's logical size, arrays inside ``arrays``, placements injective and inside the physical array,
``flip`` increasing logical columns of the tile, and every (weight, slice) of the matrix held by exactly one
tile of each replica (checked on the
layer's whole map; an instruction carries part of it).

Text (``.cimir``; printed and parsed by :mod:`cimc.text`)::

    tiles<"conv1" matrix=[1, 27, 16] slices=8 arrays=16 shape=[128, 128] spares=[2, 0]> [
      {group=0 rows=0:27 channels=0:16 slices=0:8 array=0 replica=0},
      {group=0 rows=0:27 channels=0:16 slices=0:8 array=1 replica=1 row_at=[5, 0:5, 6:27] col_at=[0:128]
       flip=[7, 15]}]

where ``a:b`` is the run ``a, a+1, ..., b-1``, an omitted ``row_at``/``col_at`` is the identity and an
omitted ``flip`` none.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from cimc.errors import CimcError
from cimc.ir.core import AttrValue, Node

__all__ = ["FIELDS", "Tile", "TileMap", "runs"]

FIELDS = ("group", "k0", "k1", "ch0", "ch1", "s0", "s1", "array", "replica")
"""Columns of :attr:`TileMap.table`."""
_G, _K0, _K1, _C0, _C1, _S0, _S1, _A, _R = range(len(FIELDS))


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileMap` (module docstring); ``row_at``/``col_at`` are never ``None`` here."""

    group: int
    k0: int
    k1: int
    ch0: int
    ch1: int
    s0: int
    s1: int
    array: int
    replica: int
    row_at: np.ndarray
    col_at: np.ndarray
    flip: np.ndarray
    """Logical columns written complemented (module docstring); empty for none."""

    @property
    def window(self) -> tuple[int, int, int, int, int, int, int]:
        """``(group, k0, k1, ch0, ch1, s0, s1)``: the part of the layer's cells the tile holds."""
        return self.group, self.k0, self.k1, self.ch0, self.ch1, self.s0, self.s1

    @property
    def rows(self) -> int:
        """Logical rows ``k1 - k0``."""
        return self.k1 - self.k0

    @property
    def cols(self) -> int:
        """Logical columns ``(ch1 - ch0) * (s1 - s0)``."""
        return (self.ch1 - self.ch0) * (self.s1 - self.s0)


def _placements(ps: Sequence[Iterable[int] | np.ndarray | None] | None, n: int) -> tuple[np.ndarray | None, ...]:
    """Per-tile placements as read-only int64 vectors (``None``: the identity); frozen ones are shared."""
    if ps is None:
        return (None,) * n
    out = []
    for p in ps:
        if p is not None and not (isinstance(p, np.ndarray) and p.dtype == np.int64 and p.ndim == 1
                                  and not p.flags.writeable):
            p = np.array(p, np.int64).reshape(-1)
            p.flags.writeable = False
        out.append(p)
    return tuple(out)


class TileMap(AttrValue):
    """The tiles of one layer with their physical placement (module docstring). Immutable."""

    kind = "tiles"

    __slots__ = ("__dict__", "__weakref__", "arrays", "col_at", "flip", "layer", "matrix", "row_at", "shape",
                 "slices", "spares", "table")

    def __init__(self, layer: str, matrix: Sequence[int], slices: int, arrays: int, shape: Sequence[int],
                 table: np.ndarray, row_at: Sequence[Iterable[int] | np.ndarray | None] | None = None,
                 col_at: Sequence[Iterable[int] | np.ndarray | None] | None = None,
                 spares: Sequence[int] = (0, 0), flip: Sequence[Iterable[int] | np.ndarray | None] | None = None
                 ) -> None:
        t = np.array(table, np.int64).reshape(-1, len(FIELDS))
        t.flags.writeable = False
        self.layer = str(layer)
        self.matrix = tuple(int(v) for v in matrix)
        self.slices, self.arrays = int(slices), int(arrays)
        self.shape = tuple(int(v) for v in shape)
        self.spares = tuple(int(v) for v in spares)
        self.table = t
        self.row_at = _placements(row_at, len(t))
        self.col_at = _placements(col_at, len(t))
        self.flip = tuple(None if p is None or not len(p) else p for p in _placements(flip, len(t)))
        if len(self.row_at) != len(t) or len(self.col_at) != len(t) or len(self.flip) != len(t):
            raise ValueError(f"TileMap: {len(t)} tiles but {len(self.row_at)} row and {len(self.col_at)} column "
                             f"placements and {len(self.flip)} flips (give one per tile, None for the identity)")

    # -- access ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> Tile:
        group, k0, k1, ch0, ch1, s0, s1, array, replica = (int(v) for v in self.table[i])
        return Tile(group, k0, k1, ch0, ch1, s0, s1, array, replica, row_at=self.rows_of(i), col_at=self.cols_of(i),
                    flip=self.flips_of(i))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def physical(self) -> tuple[int, int]:
        """Physical rows and columns of one array: ``shape + spares``."""
        return self.shape[0] + self.spares[0], self.shape[1] + self.spares[1]

    def rows_of(self, i: int) -> np.ndarray:
        """Physical rows of tile ``i``'s logical rows."""
        p = self.row_at[i]
        return p if p is not None else np.arange(int(self.table[i, _K1] - self.table[i, _K0]))

    def cols_of(self, i: int) -> np.ndarray:
        """Physical columns of tile ``i``'s logical columns."""
        p = self.col_at[i]
        t = self.table[i]
        return p if p is not None else np.arange(int((t[_C1] - t[_C0]) * (t[_S1] - t[_S0])))

    def flips_of(self, i: int) -> np.ndarray:
        """Logical columns of tile ``i`` written complemented (int64, maybe empty)."""
        p = self.flip[i]
        return p if p is not None else np.zeros(0, np.int64)

    def column(self, name: str) -> np.ndarray:
        """One column of :attr:`table` by its :data:`FIELDS` name."""
        return self.table[:, FIELDS.index(name)]

    def blocks(self, rows_per_op: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The physical row blocks (``rows_per_op`` rows) that hold some of each tile's rows, as three int64
        arrays: the tile, the block number and how many of the tile's rows the block holds; tile by tile,
        blocks in increasing order."""
        t = self.table
        k = t[:, _K1] - t[:, _K0]
        ident = np.asarray([p is None for p in self.row_at], bool)
        n = np.where(ident, -(-k // rows_per_op), 0)
        tile = np.repeat(np.arange(len(t)), n)
        first = np.cumsum(n) - n
        block = np.arange(int(n.sum())) - np.repeat(first, n)
        count = np.minimum(rows_per_op, np.repeat(k, n) - block * rows_per_op)
        if ident.all():
            return tile, block, count
        placed = np.flatnonzero(~ident)
        at = np.concatenate([self.row_at[i] for i in placed.tolist()]) // rows_per_op
        nb = int(at.max()) + 1
        pairs, c = np.unique(np.repeat(placed, k[placed]) * nb + at, return_counts=True)  # per tile, by block
        tile, block, count = (np.concatenate(x) for x in ((tile, pairs // nb), (block, pairs % nb), (count, c)))
        order = np.lexsort((block, tile))
        return tile[order], block[order], count[order]

    @property
    def placed(self) -> bool:
        """Whether some tile has a placement other than the identity."""
        return any(p is not None for p in (*self.row_at, *self.col_at, *self.flip))

    @cached_property
    def array_list(self) -> list[int]:
        """The array of each tile, as Python ints."""
        return [int(a) for a in self.table[:, _A]]

    @cached_property
    def key(self) -> bytes:
        """Bytes identifying the map's geometry and placements (a cache key)."""
        parts = [repr((self.layer, self.matrix, self.slices, self.arrays, self.shape, self.spares)).encode(),
                 self.table.tobytes()]
        for i, (r, c, f) in enumerate(zip(self.row_at, self.col_at, self.flip, strict=True)):
            if r is not None or c is not None or f is not None:
                parts += [str(i).encode(), b"r", b"" if r is None else r.tobytes(), b"c",
                          b"" if c is None else c.tobytes(), b"f", b"" if f is None else f.tobytes()]
        return b"|".join(parts)

    # -- building ----------------------------------------------------------------------------------------
    def take(self, index: Sequence[int] | slice | np.ndarray) -> TileMap:
        """The map of some of the tiles (an instruction's share of the layer's map)."""
        if isinstance(index, slice):
            return TileMap(self.layer, self.matrix, self.slices, self.arrays, self.shape, self.table[index],
                           self.row_at[index], self.col_at[index], self.spares, self.flip[index])
        idx = np.asarray(index, np.int64).tolist()
        return TileMap(self.layer, self.matrix, self.slices, self.arrays, self.shape, self.table[idx],
                       [self.row_at[i] for i in idx], [self.col_at[i] for i in idx], self.spares,
                       [self.flip[i] for i in idx])

    def replace(self, *, table: np.ndarray | None = None, row_at: Sequence[np.ndarray | None] | None = None,
                col_at: Sequence[np.ndarray | None] | None = None, spares: Sequence[int] | None = None,
                flip: Sequence[np.ndarray | None] | None = None) -> TileMap:
        """A copy with some fields changed (a placement pass moves tiles so)."""
        return TileMap(self.layer, self.matrix, self.slices, self.arrays, self.shape,
                       self.table if table is None else table, self.row_at if row_at is None else row_at,
                       self.col_at if col_at is None else col_at, self.spares if spares is None else spares,
                       self.flip if flip is None else flip)

    # -- checks --------------------------------------------------------------------------------------------
    def problems(self, node: Node | None = None, key: str = "") -> list[str]:
        """Every broken invariant (module docstring); on a layer's ``tile.map`` also the matrix of the
        node's weights and the coverage of the whole matrix."""
        out = self._geometry_problems()
        if out:
            return out
        out += self._placement_problems()
        if node is not None and key == "tile.map":
            from cimc.tiling import weight_matrix

            try:
                shape = tuple(weight_matrix(node).shape)
            except CimcError as e:  # a node the map cannot sit on: say why
                return [*out, str(e)]
            if shape != self.matrix:
                out.append(f"the map is of a [{', '.join(map(str, self.matrix))}] weight matrix, the node's is "
                           f"[{', '.join(map(str, shape))}]")
            else:
                out += self.coverage_problems()
        return out[:20]

    def _geometry_problems(self) -> list[str]:
        G, K, N = self.matrix if len(self.matrix) == 3 else (0, 0, 0)
        out = []
        if len(self.matrix) != 3 or min(self.matrix) < 1:
            out.append(f"matrix={list(self.matrix)} must be [groups, rows, channels], each >= 1")
        if len(self.shape) != 2 or min(self.shape) < 1 or len(self.spares) != 2 or min(self.spares) < 0:
            return [*out, f"shape={list(self.shape)} and spares={list(self.spares)} must be [rows, cols], "
                          f"shape >= 1 and spares >= 0"]
        if self.slices < 1 or self.arrays < 1:
            out.append(f"slices={self.slices} and arrays={self.arrays} must be >= 1")
        if out:
            return out
        t = self.table
        bad = ((t[:, _G] < 0) | (t[:, _G] >= G) | (t[:, _K0] < 0) | (t[:, _K0] >= t[:, _K1]) | (t[:, _K1] > K)
               | (t[:, _C0] < 0) | (t[:, _C0] >= t[:, _C1]) | (t[:, _C1] > N) | (t[:, _S0] < 0)
               | (t[:, _S0] >= t[:, _S1]) | (t[:, _S1] > self.slices) | (t[:, _R] < 0))
        for i in np.flatnonzero(bad)[:3]:
            out.append(f"tile {i} {self._show(i)} is not inside the [{G}, {K}, {N}] matrix of {self.slices} slices")
        far = np.flatnonzero((t[:, _A] < 0) | (t[:, _A] >= self.arrays))
        for i in far[:3]:
            out.append(f"tile {i} is on array {int(t[i, _A])}, outside 0..{self.arrays - 1}")
        rows, cols = t[:, _K1] - t[:, _K0], (t[:, _C1] - t[:, _C0]) * (t[:, _S1] - t[:, _S0])
        for i in np.flatnonzero((rows > self.shape[0]) | (cols > self.shape[1]))[:3]:
            out.append(f"tile {i} {self._show(i)} is {int(rows[i])} x {int(cols[i])} cells, more than the "
                       f"{self.shape[0]} x {self.shape[1]} an array holds")
        return out

    def _placement_problems(self) -> list[str]:
        out = []
        t = self.table
        for what, places, sizes, limit in (
                ("row_at", self.row_at, t[:, _K1] - t[:, _K0], self.physical[0]),
                ("col_at", self.col_at, (t[:, _C1] - t[:, _C0]) * (t[:, _S1] - t[:, _S0]), self.physical[1])):
            unit = "row" if what == "row_at" else "column"
            for i, p in enumerate(places):
                if p is None:
                    continue
                if len(p) != sizes[i]:
                    out.append(f"tile {i}: {what} has {len(p)} entries for {int(sizes[i])} logical {unit}s")
                elif p.size and (p.min() < 0 or p.max() >= limit):
                    bad = int(p.min() if p.min() < 0 else p.max())
                    out.append(f"tile {i}: {what} holds {bad}, outside the array's {limit} physical {unit}s "
                               f"0..{limit - 1}")
                elif len(np.unique(p)) != len(p):
                    values, counts = np.unique(p, return_counts=True)
                    out.append(f"tile {i}: {what} is not a permutation: physical {unit} {int(values[counts > 1][0])} "
                               f"holds two logical {unit}s")
                if len(out) >= 3:
                    return out
        cols = (t[:, _C1] - t[:, _C0]) * (t[:, _S1] - t[:, _S0])
        for i, f in enumerate(self.flip):
            if f is not None and (f.min() < 0 or f.max() >= cols[i] or (np.diff(f) <= 0).any()):
                out.append(f"tile {i}: flip={[int(v) for v in f[:8]]}{'...' if len(f) > 8 else ''} must be "
                           f"increasing logical columns 0..{int(cols[i]) - 1} of the tile")
                if len(out) >= 3:
                    return out
        return out

    def coverage_problems(self) -> list[str]:
        """Whether each replica's tiles hold every (weight, slice) of the matrix exactly once."""
        out = []
        t = self.table
        axes = ((_K0, _K1, self.matrix[1]), (_C0, _C1, self.matrix[2]), (_S0, _S1, self.slices))
        for r in np.unique(t[:, _R]):
            sub = t[t[:, _R] == r]
            for g in range(self.matrix[0]):
                s = sub[sub[:, _G] == g]
                cuts = [np.unique(np.concatenate([[0, n], s[:, a], s[:, b]])) for a, b, n in axes]
                count = np.zeros([len(c) - 1 for c in cuts], np.int64)
                for row in s:
                    lo = [np.searchsorted(c, row[a]) for c, a in zip(cuts, (_K0, _C0, _S0), strict=True)]
                    hi = [np.searchsorted(c, row[b]) for c, b in zip(cuts, (_K1, _C1, _S1), strict=True)]
                    count[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += 1
                if (count != 1).any():
                    i = np.argwhere(count != 1)[0]
                    where = ", ".join(f"{name} {int(c[j])}" for name, c, j in zip(("row", "channel", "slice"), cuts, i,
                                                                                    strict=True))
                    n = int(count[tuple(i)])
                    out.append(f"replica {int(r)}, group {g}: the cells at {where} are held by {n} tiles, "
                               f"not 1 (tiles must cover the weight matrix once)")
                    return out
        return out

    def _show(self, i: int) -> str:
        t = [int(v) for v in self.table[i]]
        return f"(group {t[0]}, rows {t[1]}:{t[2]}, channels {t[3]}:{t[4]}, slices {t[5]}:{t[6]})"

    # -- equality ------------------------------------------------------------------------------------------
    def difference(self, other: object) -> str | None:
        """Why ``other`` is not the same map, or ``None``."""
        if not isinstance(other, TileMap):
            return f"a tile map vs {type(other).__name__}"
        for name in ("layer", "matrix", "slices", "arrays", "shape", "spares"):
            if getattr(self, name) != getattr(other, name):
                return f"{name} {getattr(self, name)!r} vs {getattr(other, name)!r}"
        if self.table.shape != other.table.shape:
            return f"{len(self)} vs {len(other)} tiles"
        if (self.table != other.table).any():
            i = int(np.argwhere(self.table != other.table)[0, 0])
            return f"tile {i}: {self._show(i)} vs {other._show(i)}"
        for i in range(len(self)):
            if not np.array_equal(self.rows_of(i), other.rows_of(i)) or not np.array_equal(self.cols_of(i),
                                                                                         other.cols_of(i)):
                return f"tile {i}: placement differs"
            if not np.array_equal(self.flips_of(i), other.flips_of(i)):
                return f"tile {i}: complemented columns differ"
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TileMap) and self.difference(other) is None

    __hash__ = None  # type: ignore[assignment]  # __eq__ compares content: unhashable

    def __repr__(self) -> str:
        return (f"TileMap({self.layer!r}, matrix={list(self.matrix)}, {len(self)} tiles on {self.arrays} arrays of "
                f"{self.shape[0]}x{self.shape[1]}" + (f" + spares {list(self.spares)}" if any(self.spares) else "")
                + (", placed" if self.placed else "") + ")")


def runs(p: np.ndarray) -> list[tuple[int, int]]:
    """``p`` as runs ``(a, b)`` of consecutive values ``a, a+1, ..., b-1`` (the text form's ``a:b``)."""
    p = np.asarray(p, np.int64)
    if not p.size:
        return []
    breaks = np.flatnonzero(np.diff(p) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(p)]])
    return [(int(p[s]), int(p[e - 1]) + 1) for s, e in zip(starts, ends, strict=True)]
