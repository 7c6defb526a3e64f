"""The analog (memristive) device of the array model (``cimc.cim.analog``, ``cimc.cim.noise``) and per-array chip
streams (``cimc.cim.chip.ChipDraw``): each non-ideality matches its parameters statistically on >= 10^5 cells, and
each statistical check rejects a device whose parameter is off by a little more than its tolerance.

Tolerances (docs/array-model.md): sampled sigma within 5 % of the model's, stuck-cell counts within 3 sigma of
the binomial, the drift exponent recovered by a least-squares fit within 5 %.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_cim_crossbar import run

from cimc.cim import Encoding, TileMap
from cimc.cim.analog import AnalogDevice, AnalogModel, Conductance
from cimc.cim.chip import SA0, SA1, Chip, ChipDraw
from cimc.cim.machine import Written, full_scales
from cimc.cim.noise import WAN2022_1S, ir_drop
from cimc.errors import InputError

R = C = 128
ARRAYS = 8  # 8 x 128 x 128 = 131,072 cells


def program_all(model: AnalogModel, levels: np.ndarray, full: float, *, p_sa0=0.0, p_sa1=0.0, seed=1,
                cell_levels=4) -> np.ndarray:
    """Every array of an 8-array chip drawn for ``model`` programmed with ``levels`` (``[R, C]``): ``[A, R, C]``."""
    draw = ChipDraw(R, C, p_sa0=p_sa0, p_sa1=p_sa1, seed=(seed, 0), cells=model.cells)
    dev = AnalogDevice(model, draw, cell_levels)
    F = np.full(C, full, np.float32)
    return np.stack([dev.program(a, levels, F) for a in range(ARRAYS)]).astype(np.float64)


def within(measured: float, expected: float, tol: float = 0.05) -> bool:
    return abs(measured / expected - 1) <= tol


def test_ideal_analog_device_holds_the_levels_exactly():
    levels = np.random.default_rng(0).integers(0, 4, (R, C)).astype(np.uint8)
    got = program_all(AnalogModel(prog_scale=0.0), levels, 3.0)
    np.testing.assert_array_equal(got, np.broadcast_to(levels, got.shape))
    m = Conductance(4.0, 40.0)
    np.testing.assert_allclose(m.levels(m.conductance(levels, np.float32(3)), np.float32(3)), levels, atol=1e-5)


@pytest.mark.parametrize("model, sigma_us", [
    (AnalogModel(prog_model="relative", prog_sigma=0.1), 0.1 * 40.0),
    (AnalogModel(prog_model="reram-wan2022"), sum(WAN2022_1S)),  # x = 1: the sum of the coefficients (µS at 40 µS)
    (AnalogModel(prog_model="pcm-nandakumar2019"), (0.26348 + 1.9650 - 1.1731) * 40.0 / 25.0),
])
def test_programming_variation_has_its_sigma(model, sigma_us):
    """Cells programmed to g_max (level 3 of 3): the sampled sigma of what they hold is the model's."""
    levels = np.full((R, C), 3, np.uint8)
    gain = 3.0 / (model.g_max - model.g_min)
    held = program_all(model, levels, 3.0)
    assert within(held.std(), sigma_us * gain), (held.std(), sigma_us * gain)
    scaled = program_all(AnalogModel(**{**model.__dict__, "prog_scale": 1.07}), levels, 3.0)
    assert not within(scaled.std(), sigma_us * gain)  # a 7 % wrong sigma is caught


@pytest.mark.parametrize("p_sa0, p_sa1", [(0.001, 0.001), (0.05, 0.01), (0.0, 0.1)])
def test_stuck_cell_rates_are_binomial(p_sa0, p_sa1):
    """Stuck cells hold exactly g_min (level 0) or g_max (the full scale): their counts are within 3 sigma."""
    levels = np.full((R, C), 1, np.uint8)
    held = program_all(AnalogModel(prog_scale=0.0), levels, 3.0, p_sa0=p_sa0, p_sa1=p_sa1)
    n = held.size

    def ok(count: int, p: float) -> bool:
        return abs(count - n * p) <= 3 * math.sqrt(n * p * (1 - p)) + (p == 0)

    assert ok(int((held == 0).sum()), p_sa0) and ok(int((held == 3).sum()), p_sa1)
    assert int((held == 1).sum()) + int((held == 0).sum()) + int((held == 3).sum()) == n
    if p_sa0 >= 0.05:  # a rate 10 % off is caught
        assert not ok(int((held == 0).sum()), p_sa0 * 1.1)


@pytest.mark.parametrize("drift, nu", [("constant", 0.05), ("pcm-aihwkit", 0.049)])
def test_drift_exponent_is_recovered_by_a_fit(drift, nu):
    """``G(t) = G0 ((t0 + t) / t0)^-nu``: the least-squares slope of mean log G against log((t0 + t) / t0) over
    1 hour, 1 day and 1 year is -E[nu] (E|N(0.05, 0.01)| = 0.05; pcm-aihwkit at g_max: E|N(0.049, 0.008)|)."""
    levels = np.full((R, C), 3, np.uint8)
    gain = 3.0 / 36.0
    xs, ys = [], []
    for t in (3600.0, 86400.0, 3.15e7):
        m = AnalogModel(prog_scale=0.0, drift=drift, nu_mean=0.05, nu_std=0.01, t_inference=t)
        g = 4.0 + program_all(m, levels, 3.0) / gain
        xs.append(math.log((m.t0 + t) / m.t0))
        ys.append(float(np.log(g / 40.0).mean()))
    slope = np.polyfit(xs, ys, 1)[0]
    assert within(-slope, nu), (-slope, nu)
    assert not within(-slope, nu * 1.06)


def test_drift_compensation_restores_the_array_sum():
    levels = np.random.default_rng(2).integers(0, 4, (R, C)).astype(np.uint8)
    base = dict(prog_scale=0.0, drift="constant", nu_mean=0.05, nu_std=0.01, t_inference=86400.0)
    raw = program_all(AnalogModel(**base), levels, 3.0)[0]
    fixed = program_all(AnalogModel(**base, compensate=True), levels, 3.0)[0]
    assert raw.sum() < 0.8 * levels.sum()
    assert abs(fixed.sum() / levels.sum() - 1) < 1e-4
    assert np.abs(fixed - levels).mean() < 0.4 * np.abs(raw - levels).mean()  # g_min drifts too: not all


def test_ir_drop_is_the_series_formula():
    """Each cell in series with R - i + j + 1 wire segments, written here cell by cell."""
    g = np.random.default_rng(3).uniform(4, 40, (5, 7)).astype(np.float32)
    got = ir_drop(g, 2.82)
    for i in range(5):
        for j in range(7):
            r = 1e6 / g[i, j] + 2.82 * (5 - i + j + 1)
            assert got[i, j] == pytest.approx(1e6 / r, rel=1e-5)
    dev = AnalogDevice(AnalogModel(prog_scale=0.0, r_wire=2.82), ChipDraw(5, 7, variation=False), 4)
    held = dev.program(0, np.full((5, 7), 3, np.uint8), np.full(7, 3, np.float32))
    assert (held < 3).all() and held[4, 0] > held[0, 6]  # the cell nearest both drivers loses least


def test_read_noise_has_its_sigma_whatever_the_placement():
    """Read noise per cell read, ``read_noise * g_max``: a differential pair sensed as one sum over ``k`` rows of
    1-bit inputs has ``sqrt(2 k)`` times that (level units ``* 255 / (g_max - g_min)``); measured on 120,000
    outputs of two tiles, at the identity placement and a random one with spares."""
    rng = np.random.default_rng(4)
    K, N = 50, 6
    m = rng.integers(-127, 128, (1, K, N))
    enc = Encoding("differential", 8, 8)
    table = np.asarray([[0, 0, 30, 0, N, 0, 2, 0, 0], [0, 30, 50, 0, N, 0, 2, 1, 0]])
    tiles = TileMap("fc", (1, K, N), 2, 2, (30, 2 * N), table, spares=(3, 2))
    Rp, Cp = tiles.physical
    placed = tiles.replace(row_at=[rng.permutation(Rp)[:t.rows] for t in tiles],
                           col_at=[rng.permutation(Cp)[:t.cols] for t in tiles])
    x = np.ones((20000, K), np.uint8)
    attrs = {"rows_per_op": 30, "dac_bits": 1, "act_bits": 1, "cell_bits": 8, "adc_bits": 14, "sense": "pairs",
             "adc_offset": np.asarray(-(1 << 13)), "adc_step": np.asarray(1)}
    want = math.sqrt(2 * K) * 0.01 * 40.0 * 255 / 36.0
    for t in (tiles, placed):
        for noise, ok in ((0.01, True), (0.0107, False)):
            dev = AnalogDevice(AnalogModel(prog_scale=0.0, read_noise=noise), ChipDraw(Rp, Cp, seed=5), 256)
            y = run(m, enc, t, t, x, "rows", attrs, dev, np.random.default_rng(6))
            err = (y - x.astype(np.int64) @ m[0]).astype(np.float64)
            assert within(err.std(), want) == ok, (err.std(), want)


def test_a_drawn_chip_is_a_prefix_of_any_larger_one_and_a_chip_file_reads_the_same(tmp_path):
    draw = ChipDraw(16, 8, p_sa0=0.1, p_sa1=0.05, seed=(7, 3), cells=("drift",))
    small, big = draw.chip(3), draw.chip(5)
    np.testing.assert_array_equal(small.stuck, big.stuck[:3])
    np.testing.assert_array_equal(small.cells["drift"], big.cells["drift"][:3])
    assert not np.array_equal(draw.chip(1).stuck, ChipDraw(16, 8, p_sa0=0.1, p_sa1=0.05, seed=(7, 4)).chip(1).stuck)
    big.save(tmp_path / "chip.npz")
    model = AnalogModel(drift="constant", nu_mean=0.05, nu_std=0.02, t_inference=3600.0)
    levels = np.random.default_rng(0).integers(0, 4, (16, 8)).astype(np.uint8)
    a = AnalogDevice(model, draw, 4).program(4, levels)
    b = AnalogDevice(model, Chip.load(tmp_path / "chip.npz"), 4).program(4, levels)
    np.testing.assert_array_equal(a, b)
    assert (a[draw.array(4).stuck == SA0] == 0).all() and (a[draw.array(4).stuck == SA1] == 3).all()


def test_full_scale_levels():
    """``cell``: the top level; ``column``: the column's largest level; ``layer``: the slice's largest level over
    the layer (at least 1 each)."""
    enc = Encoding("differential", 4, 3)
    m = np.asarray([[[1, -2], [3, 0]]])  # cells: + slice then - slice per channel
    tiles = TileMap("l", (1, 2, 2), 2, 2, (2, 2), np.asarray([[0, 0, 2, 0, 1, 0, 2, 0, 0],
                                                              [0, 0, 2, 1, 2, 0, 2, 1, 0]]))
    cells = enc.pack(m)
    w = [Written(cells, 3, tiles, i, fs) for fs in ("cell", "column", "layer") for i in range(2)]
    got = [full_scales(v).tolist() for v in w]
    assert got == [[7, 7], [7, 7], [3, 1], [1, 2], [3, 2], [3, 2]]


def test_bad_analog_parameters_are_one_clear_error():
    for kw, msg in [({"g_min": 40.0, "g_max": 4.0}, "g_min < g_max"), ({"read_noise": -1.0}, "read_noise"),
                    ({"prog_model": "x"}, "programming model"), ({"drift": "y"}, "drift model"),
                    ({"t0": 0.0}, "t0")]:
        with pytest.raises(InputError, match=msg):
            AnalogModel(**kw)
    with pytest.raises(InputError, match="p_sa0"):
        ChipDraw(4, 4, p_sa0=1.5)
