"""The array model's executor (``cimc.cim.machine``: load and MVM, the crossbar, the ADC, the shift-add)
against the independent slow reference of ``cim_reference.py``, written from the formulas of
docs/array-model.md.

The property test draws every encoding, 1-4 bit cells, 1-4 bit DACs, ADCs from 1 bit to one bit past
lossless (default ranges, and random per-array/per-column-group steps and offsets with both roundings),
``rows_per_op`` of any size (most not powers of two), spare rows and columns, random row and column
placements, split slices, replicas, skipped blocks (also skips of nonzero blocks, which change the
result), both layouts, saturated inputs, and stuck cells.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from cim_reference import reference
from hypothesis import given, settings
from hypothesis import strategies as st

from cimc.cim import Adc, CellDevice, Chip, Encoding, TileMap
from cimc.cim.machine import DEVICE, load, mvm
from cimc.cim.ops import MVM_ATTRS
from cimc.errors import CimcError
from cimc.ir.opdef import REQUIRED

KINDS = ("twos-complement", "differential", "offset")


# ---- random cases --------------------------------------------------------------------------------------
def cuts(rng: np.random.Generator, n: int, most: int) -> list[tuple[int, int]]:
    """``0..n`` cut into random ranges of at most ``most``."""
    out, a = [], 0
    while a < n:
        b = min(n, a + int(rng.integers(1, most + 1)))
        out.append((a, b))
        a = b
    return out


def _flips(rng, cols, S, pairs):
    mask = rng.random(cols) < rng.random()
    if pairs:
        j = np.arange(cols).reshape(-1, S)
        mask[j[:, S // 2:]] = mask[j[:, :S // 2]]
    return np.flatnonzero(mask)


def random_case(rng, kind, bits, cell_bits, dac_bits, act_bits, rows_per_op, layout, placed, spares, split,
                replicas, flips=""):
    G = 1 if layout == "rows" else int(rng.integers(1, 3))
    K, N = int(rng.integers(1, 40)), int(rng.integers(1, 7))
    lim = 2 ** (bits - 1) - 1
    m = rng.integers(-lim - (kind == "twos-complement"), lim + 1, (G, K, N))
    m[rng.random(m.shape) < rng.random() * 0.9] = 0
    if rng.random() < 0.3:  # whole zero row groups, which the program may skip
        m[:, int(rng.integers(0, K)):int(rng.integers(0, K + 1))] = 0
    enc = Encoding(kind, bits, cell_bits)
    S = enc.slices
    rows_cap = int(rng.integers(max(1, rows_per_op // 2), 48))
    sr, sc = spares
    row_parts = cuts(rng, K, rows_cap)
    ch_most = int(rng.integers(1, 5))
    slice_parts = cuts(rng, S, int(rng.integers(1, S + 1))) if split else [(0, S)]
    table = []
    for g in range(G):
        for k0, k1 in row_parts:
            for c0, c1 in cuts(rng, N, ch_most):
                for s0, s1 in slice_parts:
                    for r in range(replicas if rng.random() < 0.5 else 1):
                        table.append([g, k0, k1, c0, c1, s0, s1, 0, r])
    table = np.asarray(table, np.int64)
    cols_cap = int(((table[:, 4] - table[:, 3]) * (table[:, 6] - table[:, 5])).max()) + int(rng.integers(0, 3))
    rows_cap = max(rows_cap, int((table[:, 2] - table[:, 1]).max()))
    arrays = len(table) + int(rng.integers(0, 3))
    table[:, 7] = rng.permutation(arrays)[:len(table)]
    tiles = TileMap("layer", (G, K, N), S, arrays, (rows_cap, cols_cap), table, spares=(sr, sc))
    if placed:
        R, C = tiles.physical
        tiles = tiles.replace(row_at=[rng.permutation(R)[:t.rows] if rng.random() < 0.8 else None for t in tiles],
                              col_at=[rng.permutation(C)[:t.cols] if rng.random() < 0.8 else None for t in tiles])
        if flips:  # complemented columns; with sense=pairs both columns of a pair or neither
            tiles = tiles.replace(flip=[_flips(rng, t.cols, t.s1 - t.s0, flips == "pairs") if rng.random() < 0.5
                                        else None for t in tiles])
    return m, enc, tiles


def inputs(rng, layout, G, K, act_bits, saturate):
    top = 2 ** act_bits - 1
    if layout == "rows":
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), K)
    else:
        shape = (G, int(rng.integers(1, 3)), K, int(rng.integers(1, 4)))
    x = np.full(shape, top) if saturate else rng.integers(0, top + 1, shape)
    return x.astype(np.uint8)


def positions(x, layout):
    """Per group, the inputs as ``[P, K]`` in the executor's position order."""
    if layout == "rows":
        return [x.reshape(-1, x.shape[-1])]
    return [np.moveaxis(x[g], 1, 2).reshape(-1, x.shape[2]) for g in range(x.shape[0])]


def executor_y(y, layout, G, N):
    if layout == "rows":
        return [y.reshape(-1, N)]
    return [np.moveaxis(y[:, g * N:(g + 1) * N, :], 1, 2).reshape(-1, N) for g in range(G)]


def run(m, enc, load_map, read_map, x, layout, attrs, device=None, rng=None):
    state = {} if device is None else {DEVICE: device}
    load(state, enc.pack(m), {"tiles": load_map, "cell_bits": enc.cell_bits})
    G, _, N = m.shape
    a = {**{k: s.default for k, s in MVM_ATTRS.items() if s.default is not REQUIRED}, "tiles": read_map,
         "layout": layout, "channels": G * N, "significance": enc.significance, "offset": enc.offset, **attrs}
    return mvm(state, rng or np.random.default_rng(0), x, None, a)


CASES = {"n": 0, "lossy": 0, "placed": 0, "spares": 0, "skips": 0, "calibrated": 0, "npot_rpo": 0, "pairs": 0,
         "flipped": 0}


@settings(max_examples=520, deadline=None, derandomize=True)
@given(kind=st.sampled_from(KINDS), bits=st.integers(2, 8), cell_bits=st.integers(1, 4), dac_bits=st.integers(1, 4),
       act_bits=st.integers(2, 8), rows_per_op=st.integers(1, 40), adc_delta=st.integers(-9, 1),
       layout=st.sampled_from(["rows", "cols"]), placed=st.booleans(),
       spares=st.tuples(st.integers(0, 3), st.integers(0, 3)), split=st.booleans(), replicas=st.integers(1, 2),
       ranges=st.sampled_from(["default", "per-tile", "per-group"]), rounding=st.sampled_from(["half-even", "floor"]),
       skips=st.sampled_from(["none", "zero", "any"]), saturate=st.booleans(), pairs=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_executor_equals_the_reference(kind, bits, cell_bits, dac_bits, act_bits, rows_per_op, adc_delta, layout,
                                       placed, spares, split, replicas, ranges, rounding, skips, saturate, pairs, seed):
    pairs = pairs and kind == "differential"  # sensing pairs: a differential encoding, every tile all slices
    split = split and not pairs
    rng = np.random.default_rng(seed)
    m, enc, tiles = random_case(rng, kind, bits, cell_bits, dac_bits, act_bits, rows_per_op, layout, placed, spares,
                                split, replicas, "pairs" if pairs else "columns")
    G, K, N = m.shape
    most = rows_per_op * (2 ** dac_bits - 1) * (2 ** cell_bits - 1)
    need = math.ceil(math.log2(most + 1)) + pairs  # a pair's sum is signed: -most..most
    adc_bits = max(1, need + adc_delta)
    C = tiles.physical[1]
    if ranges == "default":
        step, group, rounding = np.asarray(2 ** max(0, need - adc_bits)), 0, "half-even"
        offset = -step * 2 ** (adc_bits - 1) if pairs else np.asarray(0)
    else:
        group = 0 if ranges == "per-tile" else int(rng.integers(1, C + 1))
        ng = 1 if group == 0 else math.ceil(C / group)
        step = 2 ** rng.integers(0, max(1, need - adc_bits + 2), (len(tiles), ng))
        offset = rng.integers(-most // 4 - 1 - most * pairs, most // 2 + 1, (len(tiles), ng))
    skip = set()
    if skips != "none":
        for i in range(len(tiles)):
            for b in set((tiles.rows_of(i) // rows_per_op).tolist()):
                g, k0, _, c0, c1 = (int(v) for v in tiles.table[i, :5])
                rows = [k0 + kk for kk, r in enumerate(tiles.rows_of(i)) if r // rows_per_op == b]
                if (skips == "any" and rng.random() < 0.3) or not m[g, rows][:, c0:c1].any():
                    skip.add((i, b))
    x = inputs(rng, layout, G, K, act_bits, saturate)
    attrs = {"rows_per_op": rows_per_op, "dac_bits": dac_bits, "act_bits": act_bits, "cell_bits": cell_bits,
             "adc_bits": adc_bits, "adc_step": step, "adc_offset": offset, "adc_group": group, "adc_rounding": rounding,
             "skip": np.asarray(sorted(skip), np.int64).reshape(-1, 2), "sense": "pairs" if pairs else "columns"}
    got = executor_y(run(m, enc, tiles, tiles, x, layout, attrs), layout, G, N)
    want = reference(m, kind, bits, cell_bits, positions(x, layout), tiles, tiles, rows_per_op=rows_per_op,
                     dac_bits=dac_bits, act_bits=act_bits, adc_bits=adc_bits, adc_step=step, adc_offset=offset,
                     adc_group=group, rounding=rounding, skip=skip, pairs=pairs)
    for g in range(G):
        np.testing.assert_array_equal(got[g], want[g].astype(np.int32))
    CASES["n"] += 1
    CASES["lossy"] += adc_bits < need
    CASES["placed"] += tiles.placed
    CASES["spares"] += any(spares)
    CASES["skips"] += bool(skip)
    CASES["calibrated"] += ranges != "default"
    CASES["npot_rpo"] += rows_per_op & (rows_per_op - 1) != 0
    CASES["pairs"] += pairs
    CASES["flipped"] += any(f is not None for f in tiles.flip)


def test_the_property_covered_the_ranges():
    """The property test above ran (in this session) at least 500 cases, most lossy, many placed and so on."""
    if CASES["n"] == 0:
        pytest.skip("run together with test_executor_equals_the_reference")
    assert CASES["n"] >= 500, CASES
    assert min(v for k, v in CASES.items() if k != "pairs") >= 100 and CASES["pairs"] >= 50, CASES


def _simple(kind="twos-complement", bits=8, cell_bits=1, seed=0, K=50, N=6, spares=(0, 0)):
    rng = np.random.default_rng(seed)
    m = rng.integers(-127, 128, (1, K, N))
    enc = Encoding(kind, bits, cell_bits)
    table = np.asarray([[0, k0, min(k0 + 30, K), 0, N, 0, enc.slices, i, 0] for i, k0 in enumerate(range(0, K, 30))])
    return m, enc, TileMap("fc", (1, K, N), enc.slices, 4, (30, N * enc.slices), table, spares=spares)


def test_lossless_program_is_the_exact_product_for_any_placement():
    m, enc, tiles = _simple(spares=(3, 2))
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (5, 50)).astype(np.uint8)
    placed = tiles.replace(row_at=[rng.permutation(33)[:t.rows] for t in tiles],
                           col_at=[rng.permutation(tiles.physical[1])[:t.cols] for t in tiles])
    attrs = {"rows_per_op": 7, "dac_bits": 1, "act_bits": 8, "cell_bits": 1, "adc_bits": 3}
    for t in (tiles, placed):
        y = run(m, enc, t, t, x, "rows", attrs)
        np.testing.assert_array_equal(y, x.astype(np.int64) @ m[0])


def test_a_read_placement_other_than_the_written_one_is_a_wrong_result():
    """The executor reads cells where they are: an MVM whose row (or column) permutation differs from its
    load's reads other cells, and equals the reference that reads them so."""
    m, enc, tiles = _simple()
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (4, 50)).astype(np.uint8)
    attrs = {"rows_per_op": 7, "dac_bits": 1, "act_bits": 8, "cell_bits": 1, "adc_bits": 3}
    rows = tiles.rows_of(0).copy()
    rows[[0, 1]] = rows[[1, 0]]
    for wrong in (tiles.replace(row_at=[rows, None]), tiles.replace(col_at=[np.roll(tiles.cols_of(0), 1), None])):
        y = run(m, enc, tiles, wrong, x, "rows", attrs)
        assert not np.array_equal(y, x.astype(np.int64) @ m[0])
        want = reference(m, enc.kind, 8, 1, [x], tiles, wrong, rows_per_op=7, dac_bits=1, act_bits=8, adc_bits=3,
                         adc_step=1, adc_offset=0, adc_group=0, rounding="half-even", skip=set())
        np.testing.assert_array_equal(y, want[0])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(kind=st.sampled_from(KINDS), cell_bits=st.integers(1, 3), adc_delta=st.integers(-3, 0),
       rate=st.sampled_from([0.01, 0.1, 0.4]), seed=st.integers(0, 2**31 - 1))
def test_stuck_cells_equal_the_reference(kind, cell_bits, adc_delta, rate, seed):
    """A chip's stuck cells hold the lowest or highest level wherever the tiles sit."""
    rng = np.random.default_rng(seed)
    m, enc, tiles = random_case(rng, kind, 6, cell_bits, 2, 6, 9, "rows", True, (1, 2), False, 1, "columns")
    chip = Chip.sample(tiles.arrays, *tiles.physical, p_sa0=rate / 2, p_sa1=rate / 2, seed=seed, variation=False)
    most = 9 * 3 * (2 ** cell_bits - 1)
    adc_bits = max(1, math.ceil(math.log2(most + 1)) + adc_delta)
    step = 2 ** max(0, math.ceil(math.log2(most + 1)) - adc_bits)
    x = inputs(rng, "rows", 1, m.shape[1], 6, False)
    attrs = {"rows_per_op": 9, "dac_bits": 2, "act_bits": 6, "cell_bits": cell_bits, "adc_bits": adc_bits}
    got = run(m, enc, tiles, tiles, x, "rows", attrs, CellDevice(chip, 2 ** cell_bits))
    want = reference(m, kind, 6, cell_bits, positions(x, "rows"), tiles, tiles, rows_per_op=9, dac_bits=2, act_bits=6,
                     adc_bits=adc_bits, adc_step=step, adc_offset=0, adc_group=0, rounding="half-even", skip=set(),
                     stuck=chip.stuck)
    np.testing.assert_array_equal(got.reshape(-1, m.shape[2]), want[0])


def test_read_noise_has_its_sigma_and_the_seed_fixes_the_bits():
    """Read noise of sigma 0.5 LSB on a lossless ADC: the error of each conversion is the rounded noise, so the
    output error has the variance the formula gives; the same generator seed gives the same bits."""
    m, enc, tiles = _simple(cell_bits=1)
    x = np.random.default_rng(3).integers(0, 256, (400, 50)).astype(np.uint8)
    chip = Chip.sample(4, *tiles.physical, seed=1)
    dev = CellDevice(chip, 2, read_noise=0.5)
    attrs = {"rows_per_op": 7, "dac_bits": 8, "act_bits": 8, "cell_bits": 1, "adc_bits": 12}
    y1 = run(m, enc, tiles, tiles, x, "rows", attrs, dev, np.random.default_rng(5))
    y2 = run(m, enc, tiles, tiles, x, "rows", attrs, dev, np.random.default_rng(5))
    np.testing.assert_array_equal(y1, y2)
    err = (y1 - x.astype(np.int64) @ m[0]).astype(np.float64)
    # each conversion's error e = round(n), n ~ N(0, 0.25): Var(e) = sum_k k^2 P(k); summed over the 8 slices'
    # significances (sum of squares) and the ceil(30/7) + ceil(20/7) = 8 row groups of the two tiles
    ks = np.arange(-5, 6)
    from scipy.stats import norm
    pk = norm.cdf((ks + 0.5) / 0.5) - norm.cdf((ks - 0.5) / 0.5)
    var_e = float((ks ** 2 * pk).sum())
    want = var_e * sum(s * s for s in enc.significance) * 8
    assert abs(err.var() / want - 1) < 0.1


def test_variation_changes_results_and_is_deterministic():
    m, enc, tiles = _simple(cell_bits=2)
    x = np.random.default_rng(4).integers(0, 256, (50, 50)).astype(np.uint8)
    dev = CellDevice(Chip.sample(4, *tiles.physical, seed=7), 4, variation=0.2)
    attrs = {"rows_per_op": 7, "dac_bits": 1, "act_bits": 8, "cell_bits": 2, "adc_bits": 5}
    y1 = run(m, enc, tiles, tiles, x, "rows", attrs, dev)
    y2 = run(m, enc, tiles, tiles, x, "rows", attrs, dev)
    np.testing.assert_array_equal(y1, y2)
    exact = x.astype(np.int64) @ m[0]
    rel = np.abs(y1 - exact).mean() / np.abs(exact).mean()
    assert 0.01 < rel < 0.5


def test_reading_an_unwritten_array_is_an_error():
    _, enc, tiles = _simple()
    with pytest.raises(CimcError, match="no load has written it"):
        mvm({}, None, np.zeros((1, 50), np.uint8), None, {
            "tiles": tiles, "layout": "rows", "channels": 6, "significance": enc.significance, "offset": 0,
            "rows_per_op": 7, "dac_bits": 1, "act_bits": 8, "cell_bits": 1, "adc_bits": 3, "skip": np.zeros((0, 2))})


def test_adc_formula_and_exactness():
    adc = Adc(5, np.asarray(4), np.asarray(0))
    v = np.asarray([0.0, 1.0, 2.0, 3.0, 6.0, 7.0, 10.0, 127.0, 124.0])
    assert adc.convert(v).tolist() == [0, 0, 0, 4, 8, 8, 8, 124, 124]
    assert Adc.default(7, 64, 1, 1).exact(64) and not Adc.default(6, 64, 1, 1).exact(64)
    assert Adc(6, np.asarray(1), np.asarray(0)).exact(63) and not Adc(6, np.asarray(1), np.asarray(0)).exact(64)
    assert Adc(4, np.asarray(1), np.asarray(-3), rounding="floor").convert(np.asarray([-5.0, 0.5, 20.0])).tolist() \
        == [-3, 0, 12]
    with pytest.raises(CimcError, match="power of two"):
        Adc(4, np.asarray(3), np.asarray(0))


@pytest.mark.parametrize(("rows_per_op", "dac_bits", "cell_bits"),
                         [(63, 1, 1), (21, 2, 1), (7, 2, 2), (9, 3, 1), (64, 1, 1), (32, 1, 1)],
                         ids=["63x1x1", "21x3x1", "7x3x3", "9x7x1", "64x1x1", "32x1x1"])
@pytest.mark.parametrize("below", [0, 1, 2])
@pytest.mark.parametrize("unit_step", [False, True], ids=["default-range", "step-1"])
def test_adc_at_the_top_code(rows_per_op, dac_bits, cell_bits, below, unit_step):
    """Saturated inputs on all-ones cells reach the largest partial sum M in every conversion, at M = 63 (row
    groups that are not a power of two; M is the top code of a 6-bit ADC) and M = 64 or 32 (one past a top
    code): a clip one code off, at the lossless resolution or one or two bits below it (with the default range,
    or a range of step 1 that clips at its top code), changes the result."""
    K = 2 * rows_per_op + 5
    m = np.full((1, K, 3), -1)  # two's complement -1: every cell at its top level
    enc = Encoding("twos-complement", 8, cell_bits)
    table = np.asarray([[0, 0, K, 0, 3, 0, enc.slices, 0, 0]])
    tiles = TileMap("fc", (1, K, 3), enc.slices, 1, (K, 3 * enc.slices), table)
    x = np.full((2, K), 255, np.uint8)
    x[1, ::3] = 254
    most = rows_per_op * (2 ** dac_bits - 1) * (2 ** cell_bits - 1)
    need = most.bit_length()
    bits = need - below
    step = 1 if unit_step else 2 ** below
    attrs = {"rows_per_op": rows_per_op, "dac_bits": dac_bits, "act_bits": 8, "cell_bits": cell_bits,
             "adc_bits": bits, "adc_step": np.asarray(step), "adc_offset": np.asarray(0)}
    y = run(m, enc, tiles, tiles, x, "rows", attrs)
    want = reference(m, enc.kind, 8, cell_bits, [x], tiles, tiles, rows_per_op=rows_per_op, dac_bits=dac_bits,
                     act_bits=8, adc_bits=bits, adc_step=step, adc_offset=0, adc_group=0, rounding="half-even",
                     skip=set())
    np.testing.assert_array_equal(y, want[0])
    assert np.array_equal(y, x.astype(np.int64) @ m[0]) == (below == 0)


def test_differential_pairs_sensed_as_one_signed_sum():
    """sense=pairs: each slice's positive and negative column converted once as v+ - v-; the default range
    [-M, M] is exact at one bit more than the columns need, and a range that leaves out the negative sums is not."""
    m, enc, tiles = _simple("differential", cell_bits=2, K=40)
    x = np.random.default_rng(6).integers(0, 256, (6, 40)).astype(np.uint8)
    most = 7 * 1 * 3
    need = most.bit_length() + 1
    base = {"rows_per_op": 7, "dac_bits": 1, "act_bits": 8, "cell_bits": 2, "sense": "pairs"}
    exact = run(m, enc, tiles, tiles, x, "rows", {**base, "adc_bits": need})
    np.testing.assert_array_equal(exact, x.astype(np.int64) @ m[0])
    for bits, step, offset in ((need - 2, None, None), (need, 1, -2)):
        attrs = {**base, "adc_bits": bits}
        if step is not None:
            attrs |= {"adc_step": np.asarray(step), "adc_offset": np.asarray(offset)}
        else:
            step, offset = 4, -4 * 2 ** (bits - 1)
        y = run(m, enc, tiles, tiles, x, "rows", attrs)
        want = reference(m, "differential", 8, 2, [x], tiles, tiles, rows_per_op=7, dac_bits=1, act_bits=8,
                         adc_bits=bits, adc_step=step, adc_offset=offset, adc_group=0, rounding="half-even",
                         skip=set(), pairs=True)
        np.testing.assert_array_equal(y, want[0])
        assert not np.array_equal(y, exact)
    assert Adc(need, np.asarray(1), np.asarray(-most // 2)).exact(most) \
        and not Adc(need, np.asarray(1), np.asarray(-most // 2)).exact(most, -most)


def test_complemented_columns_read_back_exactly_and_split_pairs_are_refused():
    """Columns written complemented (flip) give the exact product through a lossless ADC; with sense=pairs a flip
    that takes one column of a pair is refused by the instruction's check, and one that takes both is exact."""
    from types import SimpleNamespace

    from cimc.cim.ops import mvm_problem

    m, enc, tiles = _simple("differential", cell_bits=2, K=40)
    x = np.random.default_rng(7).integers(0, 256, (6, 40)).astype(np.uint8)
    S = enc.slices
    base = {"rows_per_op": 7, "dac_bits": 1, "act_bits": 8, "cell_bits": 2, "sense": "pairs",
            "adc_bits": (7 * 3).bit_length() + 1}
    whole = tiles.replace(flip=[np.r_[0:S, 2 * S + 1, 2 * S + 1 + S // 2], None])
    np.testing.assert_array_equal(run(m, enc, whole, whole, x, "rows", base), x.astype(np.int64) @ m[0])
    node = SimpleNamespace(attrs={**{k: s.default for k, s in MVM_ATTRS.items() if s.default is not REQUIRED},
                                  **base, "tiles": whole, "layout": "rows", "channels": 6,
                                  "significance": enc.significance, "offset": 0})
    assert mvm_problem(node) is None
    node.attrs["tiles"] = tiles.replace(flip=[[1], None])
    assert f"complements column 1 but not its differential partner {1 + S // 2}" in mvm_problem(node)


@pytest.mark.parametrize("device", ["analog", "cells"])
def test_noisy_reads_do_not_depend_on_the_chunking(monkeypatch, device):
    """The read noise of a conversion is fixed by the seed and which conversion it is: the same outputs whether the
    crossbar converts 16, 37 or all 400 positions per chunk, prepared ahead on its helper thread or in line
    (bit-serial inputs, two row blocks of two tiles: A * J = 16 conversion batches per chunk). Integer cells, so the
    matmuls are exact whatever their shapes."""
    from cimc.cim import crossbar
    from cimc.cim.analog import AnalogDevice, AnalogModel
    from cimc.cim.chip import ChipDraw

    m, enc, tiles = _simple(kind="differential", cell_bits=2)
    x = np.random.default_rng(8).integers(0, 256, (400, 50)).astype(np.uint8)
    attrs = {"rows_per_op": 16, "dac_bits": 1, "act_bits": 8, "cell_bits": 2, "adc_bits": 5}
    if device == "analog":
        dev = AnalogDevice(AnalogModel(prog_scale=0.0, read_noise=0.02), ChipDraw(*tiles.physical, seed=3), 4)
    else:
        dev = CellDevice(Chip.sample(4, *tiles.physical, seed=1), 4, read_noise=0.7)
    outs = []
    for chunk_bytes, ahead in ((1, True), (1, False), (37 * 16 * 12 * 4, True), (1 << 30, False)):
        monkeypatch.setattr(crossbar, "CHUNK_BYTES", chunk_bytes)  # 16, 37 and 400 positions per chunk
        monkeypatch.setattr(crossbar, "AHEAD", ahead)  # chunks prepared on the helper thread or in line
        outs.append(run(m, enc, tiles, tiles, x, "rows", attrs, dev, np.random.default_rng(5)))
    exact = run(m, enc, tiles, tiles, x, "rows", attrs)
    assert not np.array_equal(outs[0], exact)  # the noise is there
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])
    other = run(m, enc, tiles, tiles, x, "rows", attrs, dev, np.random.default_rng(6))
    assert not np.array_equal(other, outs[0])  # and the seed draws it


def test_no_helper_thread_is_running_when_the_process_forks():
    """The crossbar's helper thread is stopped before a fork, so no thread runs while the process forks (the child,
    such as a Monte Carlo worker, converts noisy reads with its own helper, to the same bits)."""
    import os
    import threading

    from cimc.cim.analog import AnalogDevice, AnalogModel
    from cimc.cim.chip import ChipDraw

    m, enc, tiles = _simple(kind="differential", cell_bits=2)
    x = np.random.default_rng(8).integers(0, 256, (3000, 50)).astype(np.uint8)  # several chunks: the helper runs
    attrs = {"rows_per_op": 16, "dac_bits": 1, "act_bits": 8, "cell_bits": 2, "adc_bits": 5}
    dev = AnalogDevice(AnalogModel(prog_scale=0.0, read_noise=0.02), ChipDraw(*tiles.physical, seed=3), 4)
    want = run(m, enc, tiles, tiles, x, "rows", attrs, dev, np.random.default_rng(5))
    assert any(t.name.startswith("cimc-crossbar") for t in threading.enumerate())
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one thread, and the same noisy result
        ok = np.array_equal(
            run(m, enc, tiles, tiles, x, "rows", attrs, dev, np.random.default_rng(5)), want)
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    helpers = [t for t in threading.enumerate() if t.name.startswith("cimc-crossbar") and t.is_alive()]
    got = os.read(r, 1)
    os.waitpid(pid, 0)
    assert helpers == [] and got == b"1", (helpers, got)
