"""Tests of cimc.tiling, the encodings and the tile pass: bit slicing, tile plans, placements, annotations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimc.cim.encoding import ENCODINGS, Encoding, contiguous
from cimc.cim.tilemap import TileMap
from cimc.errors import CimcError
from cimc.ir.core import Graph
from cimc.ir.types import DType, QuantParams, TensorType
from cimc.passes.tile import TilePass, mapping_table
from cimc.passmanager import PassContext, PassManager
from cimc.targets.sram_cim import SramCimTarget
from cimc.tiling import place_randomly, plan, tile_image, weight_matrix, zero_blocks


def zero_row_blocks(image: np.ndarray, rows_per_op: int) -> list[int]:
    """Indices of the ``rows_per_op``-row blocks of a tile image whose cells are all zero (the brute-force
    definition :func:`cimc.tiling.zero_blocks` is checked against)."""
    k = image.shape[0]
    starts = np.arange(0, k, rows_per_op)
    nz = np.add.reduceat(image.any(axis=1).astype(np.int64), starts) if k else np.zeros(0, np.int64)
    return [int(b) for b in np.flatnonzero(nz == 0)]


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(ENCODINGS), bits=st.integers(2, 8), cell_bits=st.integers(1, 3), seed=st.integers(0, 99))
def test_slices_reconstruct_weights(kind, bits, cell_bits, seed):
    lim = (1 << (bits - 1)) - 1
    w = np.random.default_rng(seed).integers(-lim, lim + 1, (7, 5))
    enc = Encoding(kind, bits, cell_bits)
    cells = enc.encode(w)
    assert cells.shape == (7, 5, enc.slices) and cells.max(initial=0) < (1 << cell_bits)
    assert np.array_equal(enc.decode(cells), w)
    if kind != "offset":  # zero weights are zero cells: all-zero blocks can be skipped exactly
        assert not enc.encode(np.zeros(3, np.int64)).any()


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(ENCODINGS), bits=st.integers(2, 8), cell_bits=st.integers(1, 3), seed=st.integers(0, 99))
def test_packed_cells_round_trip(kind, bits, cell_bits, seed):
    """Packed cells (program constants) unpack to exactly the cells, and decode to the weights."""
    lim = (1 << (bits - 1)) - 1
    w = np.random.default_rng(seed).integers(-lim - (kind == "twos-complement"), lim + 1, (6, 9)).astype(np.int8)
    enc = Encoding(kind, bits, cell_bits)
    packed = enc.pack(w.T)  # a strided view, as weight_matrix gives
    assert packed.dtype == np.uint8 and packed.shape == (9, 6, enc.code_bytes) and packed.flags.c_contiguous
    assert np.array_equal(enc.unpack(packed), enc.encode(w.T))
    assert np.array_equal(enc.decode_packed(packed), w.T)


@pytest.mark.parametrize("shape", [(1, 300, 520), (2, 128, 129), (3, 257, 128), (1, 130, 40), (6, 200, 200)])
def test_contiguous_copies_a_transposed_weight_matrix_exactly(shape):
    """The block-by-block copy of the [G, K, N] view of [G, N, K] weights (and the plain copy it falls back on)
    holds every value, in C order."""
    w = np.random.default_rng(0).integers(-128, 128, shape, dtype=np.int8)
    view = w.transpose(0, 2, 1)
    c = contiguous(view)
    assert c.flags.c_contiguous and c.dtype == np.int8 and np.array_equal(c, view)


def test_packed_twos_complement_is_the_weight_byte():
    w = np.arange(-128, 128, dtype=np.int8)
    assert np.array_equal(Encoding("twos-complement", 8, 1).pack(w)[:, 0], w.view(np.uint8))
    assert Encoding("differential", 8, 1).code_bytes == 2 and Encoding("twos-complement", 4, 1).code_bytes == 1


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 999), rows=st.integers(4, 40), rpo=st.integers(1, 12), groups=st.integers(1, 3),
       placed=st.booleans())
def test_zero_blocks_equal_the_all_zero_cell_blocks(seed, rows, rpo, groups, placed):
    """The skippable blocks are the driven physical row blocks whose cells (at the tile's placement) are all zero."""
    rng = np.random.default_rng(seed)
    m = rng.integers(-7, 8, (groups, int(rng.integers(1, 90)), int(rng.integers(1, 30)))).astype(np.int8)
    m[rng.random(m.shape) < 0.8] = 0
    enc = Encoding("twos-complement", 4, 1)
    rpo = min(rpo, rows)
    tiles = plan(m, enc, rows, 16, 0, 4, spares=(3, 0))
    if placed:  # most tiles placed, some left at the identity
        tiles = place_randomly(tiles, rng)
        tiles = tiles.replace(row_at=[None if rng.random() < 0.3 else r for r in tiles.row_at])
    cells = enc.encode(m)
    want = []
    for i in range(len(tiles)):
        image = np.zeros((tiles.physical[0], tile_image(cells, tiles, i).shape[1]), np.uint8)
        image[tiles.rows_of(i)] = tile_image(cells, tiles, i)
        held = sorted(set((tiles.rows_of(i) // rpo).tolist()))
        want += [[i, b] for b in zero_row_blocks(image, rpo) if b in held]
    assert zero_blocks(m, tiles, rpo).tolist() == want
    held = [(i, int(b), int(n)) for i in range(len(tiles))
            for b, n in zip(*np.unique(tiles.rows_of(i) // rpo, return_counts=True), strict=True)]
    assert list(zip(*(x.tolist() for x in tiles.blocks(rpo)), strict=True)) == held  # the blocks a tile drives


def test_twos_complement_msb_slice_is_negative():
    enc = Encoding("twos-complement", 8, 1)
    assert enc.significance == (1, 2, 4, 8, 16, 32, 64, -128) and enc.slices == 8
    assert enc.encode(np.asarray([-1]))[0].tolist() == [1] * 8
    assert Encoding("differential", 4, 1).significance == (1, 2, 4, -1, -2, -4)
    assert Encoding("offset", 4, 2).offset == 8
    with pytest.raises(CimcError, match="encoding"):
        Encoding("sign-magnitude", 8, 1)


@settings(max_examples=30, deadline=None)
@given(G=st.integers(1, 3), K=st.integers(1, 300), N=st.integers(1, 40), rows=st.sampled_from([16, 64, 128]),
       cols=st.sampled_from([8, 32, 128]), kind=st.sampled_from(ENCODINGS), replicate=st.integers(1, 2))
def test_plan_covers_every_weight_once(G, K, N, rows, cols, kind, replicate):
    m = np.random.default_rng(K * N).integers(-7, 8, (G, K, N))
    enc = Encoding(kind, 4, 1)
    if cols < enc.slices:
        with pytest.raises(CimcError, match="columns"):
            plan(m, enc, rows, cols, 0, 4)
        return
    tiles = plan(m, enc, rows, cols, 0, 4, replicate)
    assert tiles.problems() == [] and tiles.coverage_problems() == []
    back = np.zeros_like(m)
    for i, t in enumerate(tiles):
        img = tile_image(enc.encode(m), tiles, i)
        assert img.shape[0] <= rows and img.shape[1] <= cols and img.shape[1] == t.cols
        if t.replica == 0:
            back[t.group, t.k0:t.k1, t.ch0:t.ch1] += enc.decode(img.reshape(img.shape[0], -1, enc.slices))
    assert np.array_equal(back, m)
    assert set(tiles.column("array").tolist()) <= set(range(4))
    assert (np.bincount(tiles.column("replica")) == len(tiles) // replicate).all()


def test_zero_row_blocks():
    img = np.zeros((70, 8), np.uint8)
    img[20, 3] = 1
    assert zero_row_blocks(img, 16) == [0, 2, 3, 4]
    assert zero_row_blocks(img, 64) == [1]


def _gemm_graph(K: int = 200, N: int = 20) -> Graph:
    g = Graph("gemm")
    x = g.add_input("x", TensorType(DType.u8, ("n", K), QuantParams((0.1,), (3,), 8)))
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (N, K)).astype(np.int8)
    w[:, :64] = 0  # the first row block of every tile is pruned
    wv = g.add_constant(w, "w")
    b = g.add_constant(rng.integers(-1000, 1000, N).astype(np.int32), "b")
    y = g.add_node("q.gemm", [x, wv, b], {"x_zero_point": 3}, name="fc").outputs[0]
    g.outputs.append(y)
    return g


def test_tile_pass_annotations_and_mapping_table():
    g = _gemm_graph()
    PassManager("tile", PassContext(target=SramCimTarget(), verify_each=True)).run(g)
    a = g.node("fc").attrs
    # K=200 -> 2 row tiles of 128; N=20 channels x 8 slices -> 2 column tiles of 16 channels
    tiles = a["tile.map"]
    assert isinstance(tiles, TileMap) and len(tiles) == 4 and a["tile.encoding"] == "twos-complement"
    assert tiles.layer == "fc" and tiles.matrix == (1, 200, 20) and tiles.physical == (128, 128)
    assert a["tile.cell_bits"] == 1 and a["tile.weight_bits"] == 8 and a["tile.rows_per_op"] == 64
    assert tiles.column("array").tolist() == [0, 1, 2, 3] and not tiles.placed
    # tiles run row tile by row tile: (rows 0-127, ch 0-15), (rows 0-127, ch 16-19), (rows 128-199, ...)
    assert a["tile.skip"].tolist() == [[0, 0], [1, 0]]  # block 0 of the row-0 tiles
    assert np.allclose(a["tile.util"], [1.0, 0.25, 72 / 128, 72 / 128 * 0.25])
    rows = mapping_table(g)
    assert len(rows) == 4 and rows[0]["layer"] == "fc" and rows[2]["rows"] == (128, 200)
    assert rows[1]["channels"] == (16, 20) and rows[1]["slices"] == (0, 8) and rows[0]["skipped_blocks"] == 1


def test_tile_options_override_target():
    g = _gemm_graph()
    TilePass(rows=64, cols=64, rows_per_op=16, encoding="differential", replicate=2).run(
        g, PassContext(target=SramCimTarget()))
    a = g.node("fc").attrs
    tiles = a["tile.map"]
    assert a["tile.encoding"] == "differential" and a["tile.rows_per_op"] == 16
    assert tiles.column("array").tolist()[:4] == [0, 1, 2, 3] and tiles.column("replica").tolist()[:4] == [0, 1, 0, 1]
    assert str(TilePass(rows=64)) .startswith("tile{")
    with pytest.raises(CimcError, match="encoding"):
        TilePass(encoding="bogus")
    with pytest.raises(CimcError, match="placement"):
        TilePass(placement="diagonal")


def test_random_placement_is_seeded_and_uses_the_spares():
    def placed(seed):
        g = _gemm_graph()
        PassManager("tile{placement=random spare-rows=4 spare-cols=2}",
                    PassContext(target=SramCimTarget().with_spec(spare_rows=4, spare_cols=3), seed=seed,
                                verify_each=True)).run(g)
        return g.node("fc").attrs["tile.map"]
    a, b, c = placed(1), placed(1), placed(2)
    assert a == b and a != c and a.physical == (132, 130) and a.placed
    assert max(int(a.rows_of(i).max()) for i in range(len(a))) >= 128  # some rows on spares
    assert all(sorted(a.rows_of(i).tolist()) != list(range(a[i].rows)) for i in range(len(a)))


def test_weight_matrix_conv_im2col_order():
    g = Graph("c")
    x = g.add_input("x", TensorType(DType.u8, (1, 4, 5, 5)))
    w = np.arange(2 * 2 * 3 * 3).reshape(2, 2, 3, 3).astype(np.int8)  # group 2: 2 out, 2 in per group
    node = g.add_node("q.conv", [x, g.add_constant(w, "w")], {"x_zero_point": 0, "group": 2, "pads": (1, 1, 1, 1)})
    m = weight_matrix(node)
    assert m.shape == (2, 18, 1) and m[1, :, 0].tolist() == w[1].ravel().tolist()
