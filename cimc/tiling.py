"""Weight tiling for CIM arrays: matrix views of the integer matrix ops, bit slicing, tile plans.

Matrix view (:func:`weight_matrix`): the constant weight of ``q.conv`` / ``q.gemm`` / ``q.matmul``
as ``m[g, k, n]``: ``g`` the conv group, ``k`` the reduction row (a word line; im2col order
``(cin, kh, kw)`` within the group, as ``vec.im2col`` builds the rows), ``n`` the group's output
channel. ``q.gemm`` w ``[N, K]`` is ``m[0] = w.T``; ``q.matmul`` w ``[K, N]`` is ``m[0] = w``.

Bit slicing (:class:`Encoding`): a signed weight of ``bits`` bits becomes ``S`` unsigned cells of
``cell_bits`` bits, one column each, with a signed significance per slice, and an optional
``offset``: ``w = sum_s sig[s] * cell[s] - offset``.
- ``twos-complement`` (default): the ``bits - 1`` low bits of the two's-complement form
  (``w mod 2**(bits-1)``) in slices of ``cell_bits``, LSB slice first (significance
  ``2**(s*cell_bits)``), then one 1-bit sign cell of significance ``-2**(bits-1)``; with 1-bit
  cells this is the plain two's-complement bit slicing whose MSB slice has negative significance.
  A zero weight is all-zero cells, so an all-zero block is skipped exactly.
- ``differential``: ``max(w, 0)`` and ``max(-w, 0)`` each in ``bits - 1`` bits, sliced the same
  way, the negative part's significances negated (a differential column pair). Zeros stay zero.
- ``offset``: ``w + 2**(bits-1)`` (unsigned, ``bits`` bits) sliced, ``offset = 2**(bits-1)``
  subtracted digitally as ``offset * sum(x)``. Zeros are not zero cells (nothing to skip).

Tiling (:func:`plan`): each group's ``[K, N]`` matrix is cut into row tiles of ``rows`` rows and
column tiles of ``cols // S`` channels (a channel's ``S`` slices are adjacent columns, channel-major:
column ``c * S + s``). Tiles are enumerated group, column tile, row tile (row tiles of one column
tile are adjacent, summed digitally) and dealt round-robin onto arrays from ``first_array``, each
tile taking ``replicate`` consecutive arrays. A row *block* is ``rows_per_op`` rows of a tile (the
word lines on at once); blocks whose cells are all zero are listed for skipping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cimc.errors import CimcError
from cimc.ir.core import Node

__all__ = ["ENCODINGS", "TILE_COLUMNS", "Encoding", "plan", "tile_image", "weight_bits", "weight_matrix",
           "zero_row_blocks"]

ENCODINGS = ("twos-complement", "differential", "offset")
TILE_COLUMNS = ("group", "row_tile", "col_tile", "array", "k0", "k1", "col0", "col1", "ch0", "ch1", "slices")
"""Columns of the ``tile.map`` table: group; row and column tile; first array; row range ``[k0, k1)``
of the group's K; physical column range ``[col0, col1)`` in the array; channel range ``[ch0, ch1)``
within the group; slices (columns) per weight."""


def weight_matrix(node: Node) -> np.ndarray:
    """The constant weight of a ``q.conv``/``q.gemm``/``q.matmul`` node as int64 ``[G, K, N]``."""
    w = node.inputs[1].const if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if w is None:
        raise CimcError(f"node {node.name!r} ({node.op}): its weight (operand 1) is not a constant; "
                        f"run fold-constants before tile")
    w = w.astype(np.int64)
    if node.op == "q.conv":
        g = int(node.attrs.get("group", 1))
        n, k = w.shape[0] // g, math.prod(w.shape[1:])
        return w.reshape(g, n, k).transpose(0, 2, 1)
    if node.op == "q.gemm":
        return w.T[None]
    if node.op == "q.matmul":
        return w[None]
    raise CimcError(f"node {node.name!r}: {node.op} is not an array op (q.conv, q.gemm, q.matmul)")


def weight_bits(node: Node) -> int:
    """Bits of the node's weight: its type's quantization bits, else 8."""
    q = node.inputs[1].type.quant
    return int(q.bits) if q is not None else 8


@dataclass(frozen=True)
class Encoding:
    """How a signed ``bits``-bit weight is spread over unsigned cells of ``cell_bits`` bits."""

    kind: str
    bits: int
    cell_bits: int

    def __post_init__(self) -> None:
        if self.kind not in ENCODINGS:
            raise CimcError(f"encoding {self.kind!r} is not one of {', '.join(ENCODINGS)}")
        if not 2 <= self.bits <= 16 or self.cell_bits < 1:
            raise CimcError(f"encoding needs 2..16 weight bits and cell_bits >= 1, got {self.bits}, {self.cell_bits}")

    def _low(self, n: int) -> list[int]:
        """Significances of ``n`` bits sliced LSB first into cells of ``cell_bits``."""
        return [1 << (s * self.cell_bits) for s in range(-(-n // self.cell_bits))]

    @property
    def significance(self) -> tuple[int, ...]:
        """Signed significance of each slice (column) of a weight, in column order."""
        if self.kind == "twos-complement":
            return (*self._low(self.bits - 1), -(1 << (self.bits - 1)))
        if self.kind == "differential":
            low = self._low(self.bits - 1)
            return (*low, *(-s for s in low))
        return tuple(self._low(self.bits))

    @property
    def slices(self) -> int:
        """Columns per weight."""
        return len(self.significance)

    @property
    def offset(self) -> int:
        """Constant subtracted from every stored weight (``offset`` encoding only)."""
        return 1 << (self.bits - 1) if self.kind == "offset" else 0

    def encode(self, w: np.ndarray) -> np.ndarray:
        """Cells of integer weights ``w``: uint8 array shaped ``w.shape + (slices,)``."""
        w = np.asarray(w)
        lim = (1 << (self.bits - 1)) - 1
        if w.size and (w.min() < -lim - (self.kind == "twos-complement") or w.max() > lim):
            raise CimcError(f"weights in [{w.min()}, {w.max()}] do not fit {self.bits} signed bits")
        w = w.astype(np.int16)  # at most 8 significant bits: small temporaries, written slice by slice
        c, mask = self.cell_bits, (1 << self.cell_bits) - 1
        out = np.empty((*w.shape, self.slices), np.uint8)

        def put(first: int, u: np.ndarray, n: int) -> int:
            """Write the ``n``-bit values ``u`` into slices ``first, first + 1, ...``; the next free slice."""
            for s in range(-(-n // c)):
                out[..., first + s] = (u >> (s * c)) & mask
            return first + -(-n // c)

        if self.kind == "twos-complement":
            out[..., put(0, w & lim, self.bits - 1)] = w < 0
        elif self.kind == "differential":
            put(put(0, np.maximum(w, 0), self.bits - 1), np.maximum(-w, 0), self.bits - 1)
        else:
            put(0, w + self.offset, self.bits)
        return out

    def decode(self, cells: np.ndarray) -> np.ndarray:
        """Integer weights from cells (the inverse of :meth:`encode`)."""
        return cells.astype(np.int64) @ np.asarray(self.significance, np.int64) - self.offset


def plan(m: np.ndarray, enc: Encoding, rows: int, cols: int, first_array: int, arrays: int,
         replicate: int = 1) -> np.ndarray:
    """The tile table (int64 ``[T, len(TILE_COLUMNS)]``) of matrices ``m`` ``[G, K, N]``."""
    G, K, N = m.shape
    per = cols // enc.slices
    if per < 1:
        raise CimcError(f"a weight needs {enc.slices} columns ({enc.kind}, {enc.bits} bits, {enc.cell_bits}-bit "
                        f"cells) but the array has {cols}")
    out, a = [], first_array
    for g in range(G):
        for ct, ch0 in enumerate(range(0, N, per)):
            ch1 = min(ch0 + per, N)
            for rt, k0 in enumerate(range(0, K, rows)):
                out.append((g, rt, ct, a % arrays, k0, min(k0 + rows, K), 0, (ch1 - ch0) * enc.slices, ch0, ch1,
                            enc.slices))
                a += replicate
    return np.asarray(out, np.int64).reshape(-1, len(TILE_COLUMNS))


def tile_image(cells: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Cells of one tile (a ``tile.map`` row) cut from a layer's encoded matrices ``cells`` (``enc.encode(m)``,
    ``[G, K, N, slices]``, encoded once per layer): uint8 ``[k1 - k0, (ch1 - ch0) * slices]``, channel-major."""
    t = dict(zip(TILE_COLUMNS, (int(v) for v in row), strict=True))
    sub = cells[t["group"], t["k0"]:t["k1"], t["ch0"]:t["ch1"]]
    return np.ascontiguousarray(sub).reshape(sub.shape[0], -1)


def zero_row_blocks(image: np.ndarray, rows_per_op: int) -> list[int]:
    """Indices of the ``rows_per_op``-row blocks of a tile image whose cells are all zero."""
    k = image.shape[0]
    starts = np.arange(0, k, rows_per_op)
    nz = np.add.reduceat(image.any(axis=1).astype(np.int64), starts) if k else np.zeros(0, np.int64)
    return [int(b) for b in np.flatnonzero(nz == 0)]
