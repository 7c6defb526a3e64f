"""Weight tiling for CIM arrays: matrix views of the integer matrix ops, tile plans, placements.

Matrix view (:func:`weight_matrix`): the constant weight of ``q.conv`` / ``q.gemm`` / ``q.matmul``
as ``m[g, k, n]``: ``g`` the conv group, ``k`` the reduction row (a word line; im2col order
``(cin, kh, kw)`` within the group, as ``vec.im2col`` builds the rows), ``n`` the group's output
channel. ``q.gemm`` w ``[N, K]`` is ``m[0] = w.T``; ``q.matmul`` w ``[K, N]`` is ``m[0] = w``.
Weights become cells by an :class:`cimc.cim.encoding.Encoding` (``S`` slices per weight).

Tiling (:func:`plan`): each group's ``[K, N]`` matrix is cut into row tiles of ``rows`` rows and
column tiles of ``cols // S`` channels, every tile holding all ``S`` slices of its channels
(:class:`cimc.cim.tilemap.TileMap`; a channel's slices are adjacent columns, channel-major). Tiles
are enumerated group, row tile, column tile (the column tiles of one row tile are adjacent: macros
loaded together cover the same input rows, so a round of tiles reads one slice of the input and
yields partial sums for many channels, added digitally across row tiles) and dealt round-robin
onto arrays from ``first_array``; replica ``r`` of a tile goes to the ``r``-th array after it.
Placement is the identity; :func:`place_randomly` gives each tile random row and column
permutations inside the array, spares included, and complements random channels' columns (a placement any
mapping pass may choose).

Recoding (:func:`written_matrix`): a mapping pass may write some weights as other values (``tile.recode``:
closest-value mapping onto stuck cells); the lowering packs those.

Skipping (:func:`zero_blocks`): a tile drives the physical row blocks (``rows_per_op`` physical
rows) that hold some of its rows; a driven block whose weights are all zero (so are its cells,
except in offset encoding) need not be: its ``(tile, block)`` pair is listed for skipping.
"""

from __future__ import annotations

import math

import numpy as np

from cimc.cim.encoding import Encoding
from cimc.cim.tilemap import TileMap
from cimc.errors import CimcError
from cimc.ir.core import Node

__all__ = ["place_randomly", "plan", "tile_image", "weight_bits", "weight_matrix", "written_matrix", "zero_blocks"]


def weight_matrix(node: Node) -> np.ndarray:
    """The constant weight of a ``q.conv``/``q.gemm``/``q.matmul`` node as ``[G, K, N]`` (a view of it, in
    its own integer type)."""
    w = node.inputs[1].const if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if w is None:
        raise CimcError(f"node {node.name!r} ({node.op}): its weight (operand 1) is not a constant; "
                        f"run fold-constants before tile")
    if node.op == "q.conv":
        g = int(node.attrs.get("group", 1))
        if w.ndim < 2 or g < 1 or w.shape[0] % g:
            raise CimcError(f"node {node.name!r} ({node.op}): group = {g} does not divide the weight's "
                            f"{w.shape[0] if w.ndim else 0} output channels")
        n, k = w.shape[0] // g, math.prod(w.shape[1:])
        return w.reshape(g, n, k).transpose(0, 2, 1)
    if node.op == "q.gemm":
        return w.T[None]
    if node.op == "q.matmul":
        return w[None]
    raise CimcError(f"node {node.name!r}: {node.op} is not an array op (q.conv, q.gemm, q.matmul)")


def written_matrix(node: Node) -> np.ndarray:
    """The weights the arrays are written with, ``[G, K, N]``: :func:`weight_matrix`, except where the node's
    ``tile.recode`` (int64 ``[n, 4]``, rows ``(group, row, channel, value)``; closest-value mapping onto stuck
    cells, chosen by ``map-errors``) writes a weight as another value. Without it, the weights themselves."""
    m = weight_matrix(node)
    recode = node.attrs.get("tile.recode")
    if recode is None or not np.size(recode):
        return m
    r = np.asarray(recode, np.int64).reshape(-1, 4)
    info = np.iinfo(m.dtype)
    if ((r[:, :3] < 0) | (r[:, :3] >= np.asarray(m.shape))).any() or (r[:, 3] < info.min).any() \
            or (r[:, 3] > info.max).any():
        raise CimcError(f"node {node.name!r}: tile.recode has an entry outside its [{', '.join(map(str, m.shape))}] "
                        f"weight matrix or its {m.dtype} values")
    out = m.copy()
    out[r[:, 0], r[:, 1], r[:, 2]] = r[:, 3]
    return out


def weight_bits(node: Node) -> int:
    """Bits of the node's weight: its type's quantization bits, else 8."""
    q = node.operand(1).type.quant
    return int(q.bits) if q is not None else 8


def plan(m: np.ndarray, enc: Encoding, rows: int, cols: int, first_array: int, arrays: int,
         replicate: int = 1, *, layer: str = "", spares: tuple[int, int] = (0, 0)) -> TileMap:
    """The tile map of matrices ``m`` ``[G, K, N]`` (module docstring), identity placement."""
    G, K, N = m.shape
    S = enc.slices
    per = cols // S
    if per < 1:
        raise CimcError(f"a weight needs {enc.slices} columns ({enc.kind}, {enc.bits} bits, {enc.cell_bits}-bit "
                        f"cells) but the array has {cols}")
    out, a = [], first_array
    for g in range(G):
        for k0 in range(0, K, rows):
            for ch0 in range(0, N, per):
                for r in range(replicate):
                    out.append((g, k0, min(k0 + rows, K), ch0, min(ch0 + per, N), 0, S, (a + r) % arrays, r))
                a += replicate
    return TileMap(layer, (G, K, N), S, arrays, (rows, cols), np.asarray(out, np.int64).reshape(-1, 9),
                   spares=spares)


def place_randomly(tiles: TileMap, rng: np.random.Generator) -> TileMap:
    """``tiles`` with each tile's logical rows and columns at random distinct physical rows and columns of
    its array (spares included), and the columns of about half its channels complemented (all of a channel's
    slices, so a differential pair's two columns together): a placement the executor must honour."""
    R, C = tiles.physical
    row_at = [rng.permutation(R)[:t.rows] for t in tiles]
    col_at = [rng.permutation(C)[:t.cols] for t in tiles]
    flip = [np.flatnonzero(np.repeat(rng.random(t.ch1 - t.ch0) < 0.5, t.s1 - t.s0)) for t in tiles]
    return tiles.replace(row_at=row_at, col_at=col_at, flip=flip)


def tile_image(cells: np.ndarray, tiles: TileMap, i: int) -> np.ndarray:
    """Logical cells of tile ``i`` cut from a layer's encoded matrices ``cells`` (``enc.encode(m)``,
    ``[G, K, N, S]``): uint8 ``[k1 - k0, (ch1 - ch0) * (s1 - s0)]``, channel-major."""
    g, k0, k1, c0, c1, s0, s1 = tiles[i].window
    sub = cells[g, k0:k1, c0:c1, s0:s1]
    return np.ascontiguousarray(sub).reshape(sub.shape[0], -1)


def zero_blocks(m: np.ndarray, tiles: TileMap, rows_per_op: int) -> np.ndarray:
    """``(tile, physical block)`` pairs (int64 ``[n, 2]``, sorted) of the blocks each tile drives whose weights
    in ``m`` ``[G, K, N]`` are all zero (module docstring)."""
    t = tiles.table
    if not len(t) or not m.size:
        return np.zeros((0, 2), np.int64)
    tile, block, count = tiles.blocks(rows_per_op)
    live = np.zeros(len(tile), bool)
    ident = np.asarray([p is None for p in tiles.row_at], bool)
    # identity placement: block b of tile i holds rows r0 = k0 + b*rpo .. r1 of the tile's channels c0..c1; the
    # matrix is cut at every block's rows and every tile's channels, reduced to "any nonzero" per piece (rows
    # first, as they shrink most), and each block's pieces summed through 2-D prefix counts
    r0 = t[tile, 1] + block * rows_per_op
    r1 = r0 + count
    for g in np.unique(t[:, 0]).tolist():
        sel = np.flatnonzero(ident[tile] & (t[tile, 0] == g))
        if not len(sel):
            continue
        c0, c1 = t[tile[sel], 3], t[tile[sel], 4]
        rc = np.unique(np.concatenate([r0[sel], r1[sel]]))
        cc = np.unique(np.concatenate([c0, c1]))
        rows = np.logical_or.reduceat(m[g, :rc[-1]] != 0, rc[:-1], axis=0)
        pieces = np.logical_or.reduceat(rows[:, :cc[-1]], cc[:-1], axis=1).astype(np.int64)  # cuts are distinct
        prefix = np.zeros((len(rc), len(cc)), np.int64)
        prefix[1:, 1:] = pieces.cumsum(axis=0).cumsum(axis=1)
        a, b = np.searchsorted(rc, r0[sel]), np.searchsorted(rc, r1[sel])
        c, d = np.searchsorted(cc, c0), np.searchsorted(cc, c1)
        live[sel] = prefix[b, d] - prefix[a, d] - prefix[b, c] + prefix[a, c] > 0
    placed = np.flatnonzero(~ident)
    if len(placed):
        # a placed tile's block is live when one of the rows it holds has a nonzero weight in the tile's channels:
        # the rows reduced to "any nonzero" per piece between the tiles' channel cuts, told apart by prefix counts
        k = t[placed, 2] - t[placed, 1]
        which = np.repeat(placed, k)
        row = t[which, 1] + np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
        nonzero = np.zeros(len(which), bool)
        for g in np.unique(t[placed, 0]).tolist():
            on = np.flatnonzero(t[which, 0] == g)
            c0, c1 = t[which[on], 3], t[which[on], 4]
            cc = np.unique(np.concatenate([c0, c1]))
            pieces = np.logical_or.reduceat(m[g, :, :cc[-1]] != 0, cc[:-1], axis=1).astype(np.int64)
            prefix = np.zeros((len(pieces), len(cc)), np.int64)
            prefix[:, 1:] = pieces.cumsum(axis=1)
            nonzero[on] = prefix[row[on], np.searchsorted(cc, c1)] > prefix[row[on], np.searchsorted(cc, c0)]
        at = np.concatenate([tiles.row_at[i] for i in placed.tolist()]) // rows_per_op
        nb = int(max(at.max(), block.max())) + 1
        held = np.flatnonzero(~ident[tile])
        live[held] = np.isin(tile[held] * nb + block[held], which[nonzero] * nb + at[nonzero])
    return np.stack([tile[~live], block[~live]], axis=1).astype(np.int64).reshape(-1, 2)
