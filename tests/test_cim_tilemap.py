"""Typed tile maps (cimc.cim.tilemap): their .cimir text, the verifier's checks, and bad maps in loaded files."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimc.cim import Encoding, TileMap
from cimc.cli import main
from cimc.errors import VerifyError
from cimc.ir.core import Graph
from cimc.ir.equality import graph_difference
from cimc.ir.types import DType, QuantParams, TensorType
from cimc.ir.verifier import verify
from cimc.text import parse_graph, print_graph
from cimc.tiling import place_randomly, plan


def _gemm(K=40, N=6, tiles: TileMap | None = None) -> Graph:
    g = Graph("g")
    x = g.add_input("x", TensorType(DType.u8, (2, K), QuantParams((0.1,), (0,), 8)))
    w = np.random.default_rng(0).integers(-7, 8, (N, K)).astype(np.int8)
    node = g.add_node("q.gemm", [x, g.add_constant(w, "w")], {"x_zero_point": 0}, name="fc")
    m = w.T[None]
    node.attrs["tile.map"] = tiles if tiles is not None else plan(m, Encoding("twos-complement", 4, 1), 16, 12, 0, 4,
                                                                   layer="fc", spares=(2, 1))
    g.outputs.append(node.outputs[0])
    return g


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), replicate=st.integers(1, 2), placed=st.booleans())
def test_text_round_trip(seed, replicate, placed):
    rng = np.random.default_rng(seed)
    m = rng.integers(-7, 8, (int(rng.integers(1, 3)), int(rng.integers(1, 60)), int(rng.integers(1, 9))))
    tiles = plan(m, Encoding("differential", 4, 2), 16, 12, int(rng.integers(0, 4)), 5, replicate, layer="a/b \"c\"",
                 spares=(int(rng.integers(0, 3)), int(rng.integers(0, 3))))
    if placed:
        tiles = place_randomly(tiles, rng)
    g = Graph("g")
    x = g.add_input("x", TensorType(DType.f32, (1,)))
    n = g.add_node("Identity", [x], {"t.map": tiles})
    g.outputs.append(n.outputs[0])
    text = print_graph(g)
    back = parse_graph(text)
    assert graph_difference(g, back) is None
    assert back.nodes[0].attrs["t.map"] == tiles and print_graph(back) == text


def test_text_form_is_readable():
    tiles = plan(np.ones((1, 20, 3), np.int8), Encoding("twos-complement", 4, 1), 16, 8, 2, 4, layer="fc")
    tiles = tiles.replace(row_at=[np.r_[3, 0:3, 4:16], None, None, None], flip=[None, [0, 1, 3], None, None])
    g = _gemm(20, 3, tiles)
    text = print_graph(g)
    assert "{group=0 rows=0:16 channels=2:3 slices=0:4 array=3 replica=0 flip=[0:2, 3]}" in text
    assert 'tiles<"fc" matrix=[1, 20, 3] slices=4 arrays=4 shape=[16, 8] spares=[0, 0]> [' in text
    assert "{group=0 rows=0:16 channels=0:2 slices=0:4 array=2 replica=0 row_at=[3, 0:3, 4:16]}" in text
    assert "{group=0 rows=16:20 channels=0:2 slices=0:4 array=0 replica=0}" in text


def _problems(g: Graph) -> str:
    with pytest.raises(VerifyError) as e:
        verify(g)
    return str(e.value)


def test_verifier_checks_the_map_against_weights_arrays_and_permutations():
    verify(_gemm())
    base = _gemm().nodes[0].attrs["tile.map"]
    t = base.table.copy()
    t[0, 2] = 17  # 17 rows on an array of 16
    assert "is 17 x 12 cells, more than the 16 x 12 an array holds" in _problems(_gemm(tiles=base.replace(table=t)))
    t = base.table.copy()
    t[1, 7] = 4
    assert "is on array 4, outside 0..3" in _problems(_gemm(tiles=base.replace(table=t)))
    rows = base.rows_of(0).copy()
    rows[3] = rows[4]
    assert "row_at is not a permutation: physical row 4 holds two logical rows" in _problems(
        _gemm(tiles=base.replace(row_at=[rows] + [None] * (len(base) - 1))))
    assert "col_at holds 13, outside the array's 13 physical columns 0..12" in _problems(
        _gemm(tiles=base.replace(col_at=[np.r_[1:12, 13]] + [None] * (len(base) - 1))))
    assert "row_at has 3 entries for 16 logical rows" in _problems(
        _gemm(tiles=base.replace(row_at=[np.arange(3)] + [None] * (len(base) - 1))))
    for bad in ([3, 12], [5, 5], [4, 2]):  # outside the tile's 12 columns, twice, not increasing
        assert "must be increasing logical columns 0..11 of the tile" in _problems(
            _gemm(tiles=base.replace(flip=[bad] + [None] * (len(base) - 1))))
    assert "held by 0 tiles, not 1" in _problems(_gemm(tiles=base.take([0, 1, 2])))
    assert "held by 2 tiles, not 1" in _problems(_gemm(tiles=base.take([0, 1, 2, 3, 3])))
    other = plan(np.ones((1, 30, 6), np.int8), Encoding("twos-complement", 4, 1), 16, 12, 0, 4, layer="fc")
    assert "the map is of a [1, 30, 6] weight matrix, the node's is [1, 40, 6]" in _problems(_gemm(tiles=other))


def test_a_loaded_program_with_a_bad_tile_map_is_one_error_line(tmp_path, capsys):
    g = _gemm()
    good = print_graph(g)
    (tmp_path / "ok.cimir").write_text(good)
    assert main(["run", str(tmp_path / "ok.cimir"), "--random"]) == 0
    capsys.readouterr()
    bad = {"nofit": good.replace("shape=[16, 12]", "shape=[8, 12]"),
           "notperm": re.sub(r"(array=0 replica=0)}", r"\1 row_at=[0:15, 3]}", good, count=1)}
    for name, text in bad.items():
        assert text != good
        path = tmp_path / f"{name}.cimir"
        path.write_text(text)
        assert main(["run", str(path), "--random"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("cimc: error: ") and "Traceback" not in err, err
        assert ("more than the 8 x 12 an array holds" if name == "nofit" else "is not a permutation") in err
