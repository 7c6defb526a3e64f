"""Weight-to-cell encoding: how a signed integer weight becomes unsigned cells, and how cells pack.

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

Packing (:meth:`Encoding.pack`): the cells of one weight, concatenated slice 0 first, each
``cell_bits`` wide, little-endian, fill ``ceil(slices * cell_bits / 8)`` bytes: the *code* of the
weight. Program constants hold a layer's cells packed so (``[G, K, N, bytes]``; with 1-bit cells and
two's complement a weight's code is its own ``bits``-bit two's-complement pattern), eight times
smaller than one cell per byte; :meth:`Encoding.unpack` gives the cells back.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cimc.errors import CimcError

__all__ = ["ENCODINGS", "Encoding", "codes", "contiguous", "decode_cells", "unpack_cells"]

ENCODINGS = ("twos-complement", "differential", "offset")


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

    @property
    def code_bytes(self) -> int:
        """Bytes of one packed weight: ``ceil(slices * cell_bits / 8)``."""
        return -(-self.slices * self.cell_bits // 8)

    def pack(self, w: np.ndarray) -> np.ndarray:
        """Packed cells (codes, module docstring) of integer weights ``w``: uint8 ``w.shape + (code_bytes,)``."""
        w = np.asarray(w)
        if self.cell_bits == 1:  # the code is an integer formula of w: no per-slice work
            lim = (1 << (self.bits - 1)) - 1
            if w.size and (w.min() < -lim - (self.kind == "twos-complement") or w.max() > lim):
                raise CimcError(f"weights in [{w.min()}, {w.max()}] do not fit {self.bits} signed bits")
            narrow = w.dtype == np.int8 and self.code_bytes == 1
            if narrow:  # bytes in, bytes out: the one reordering copy (of a transposed view) is of the bytes
                wb = contiguous(w)
                if self.kind == "twos-complement":
                    return (wb.view(np.uint8) & np.uint8((1 << self.bits) - 1))[..., None]
            wi = wb.astype(np.int16) if narrow else w.astype(np.int32)
            if self.kind == "twos-complement":
                code = wi & ((1 << self.bits) - 1)
            elif self.kind == "differential":
                code = np.maximum(wi, 0) | (np.maximum(-wi, 0) << (self.bits - 1))
            else:
                code = wi + self.offset
        else:
            cells = self.encode(w)
            code = np.zeros(w.shape, np.int64)
            for s in range(self.slices):
                code |= cells[..., s].astype(np.int64) << (s * self.cell_bits)
        if self.code_bytes == 1:
            return np.ascontiguousarray(code.astype(np.uint8)[..., None])
        le = np.ascontiguousarray(code, "<u8").view(np.uint8).reshape(*w.shape, 8)
        return np.ascontiguousarray(le[..., :self.code_bytes])

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        """Cells ``[..., slices]`` (uint8) of packed cells (the inverse of :meth:`pack`)."""
        return unpack_cells(packed, self.slices, self.cell_bits)

    def decode_packed(self, packed: np.ndarray) -> np.ndarray:
        """Integer weights (int32) of packed cells: ``decode(unpack(packed))`` without the cells."""
        return decode_cells(packed, self.significance, self.cell_bits, self.offset)


_BLOCK = 128
"""Side of the square blocks :func:`contiguous` copies a matrix's transpose in."""


def contiguous(m: np.ndarray) -> np.ndarray:
    """``m`` (an array or a view) as a C-contiguous array, the same values: a matrix view ``[G, K, N]`` of a few
    groups, both matrix dims at least ``_BLOCK``, is copied block by block (the transposed view of ``[G, N, K]``
    weights that :func:`cimc.tiling.weight_matrix` gives copies about twice as fast so: each block's rows stay in
    cache); anything else as ``np.ascontiguousarray`` copies it."""
    if m.flags.c_contiguous or m.ndim != 3 or m.shape[0] > 4 or min(m.shape[1:]) < _BLOCK:
        return np.ascontiguousarray(m)
    out = np.empty(m.shape, m.dtype)
    for g in range(m.shape[0]):
        for j in range(0, m.shape[1], _BLOCK):
            for i in range(0, m.shape[2], _BLOCK):
                out[g, j:j + _BLOCK, i:i + _BLOCK] = m[g, j:j + _BLOCK, i:i + _BLOCK]
    return out


def codes(packed: np.ndarray) -> np.ndarray:
    """The integer codes (int64) of packed cells ``[..., bytes]`` (little-endian bytes)."""
    packed = np.asarray(packed, np.uint8)
    code = packed[..., 0].astype(np.int64)
    for b in range(1, packed.shape[-1]):
        code |= packed[..., b].astype(np.int64) << (8 * b)
    return code


def unpack_cells(packed: np.ndarray, slices: int, cell_bits: int) -> np.ndarray:
    """Cells ``[..., slices]`` (uint8) of packed cells ``[..., bytes]`` holding ``slices`` cells of ``cell_bits``."""
    code, mask = codes(packed), (1 << cell_bits) - 1
    out = np.empty((*code.shape, slices), np.uint8)
    for s in range(slices):
        out[..., s] = (code >> (s * cell_bits)) & mask
    return out


def decode_cells(packed: np.ndarray, significance, cell_bits: int, offset: int = 0) -> np.ndarray:
    """Integer weights (int32) ``sum_s significance[s] * cell[s] - offset`` of packed cells, through a table
    of every code's weight (codes of up to 20 bits; wider ones cell by cell)."""
    sig = np.asarray(significance, np.int64)
    if len(sig) * cell_bits > 20:
        return (unpack_cells(packed, len(sig), cell_bits).astype(np.int64) @ sig - offset).astype(np.int32)
    return _code_table(tuple(sig.tolist()), cell_bits, offset)[codes(packed)]


@functools.lru_cache(maxsize=256)
def _code_table(significance: tuple[int, ...], cell_bits: int, offset: int) -> np.ndarray:
    """The weight (int32) of every code of ``len(significance)`` cells of ``cell_bits`` (read-only: it is shared)."""
    width = len(significance) * cell_bits
    every = np.arange(1 << width, dtype="<u4").view(np.uint8).reshape(-1, 4)[:, :-(-width // 8)]
    table = (unpack_cells(every, len(significance), cell_bits).astype(np.int64) @ np.asarray(significance, np.int64)
             - offset).astype(np.int32)
    table.flags.writeable = False
    return table
