"""Chips (cimc.cim.chip): sampling at given fault rates with a seed, the chip file round trip, bad chip files."""

from __future__ import annotations

import numpy as np
import pytest

from cimc.cim import CellDevice, Chip
from cimc.cim.chip import SA0, SA1
from cimc.errors import InputError
from cimc.npzio import write_npz


def test_sampled_rates_are_the_given_ones():
    chip = Chip.sample(16, 130, 128, p_sa0=0.01, p_sa1=0.02, seed=3)
    n = chip.stuck.size
    for level, p in ((SA0, 0.01), (SA1, 0.02)):
        k = int((chip.stuck == level).sum())
        assert abs(k - n * p) < 3 * np.sqrt(n * p * (1 - p)), (level, k)  # within 3 sigma of the binomial
    z = chip.variation.astype(np.float64)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01


def test_a_chip_is_reproducible_from_seed_and_index():
    a = Chip.sample(2, 8, 8, p_sa0=0.2, seed=(5, 1))
    assert np.array_equal(a.stuck, Chip.sample(2, 8, 8, p_sa0=0.2, seed=(5, 1)).stuck)
    assert not np.array_equal(a.stuck, Chip.sample(2, 8, 8, p_sa0=0.2, seed=(5, 2)).stuck)
    assert a.token == Chip.sample(2, 8, 8, p_sa0=0.2, seed=(5, 1)).token


def test_chip_file_round_trip(tmp_path):
    chip = Chip(Chip.sample(3, 5, 7, p_sa0=0.1, p_sa1=0.1, seed=1).stuck,
                np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float32),
                {"drift_nu": np.full((3, 5, 7), 0.05, np.float32)})
    path = tmp_path / "chip.npz"
    chip.save(path)
    back = Chip.load(path)
    assert back.token == chip.token and back.shape == (3, 5, 7) and set(back.cells) == {"drift_nu"}
    first = path.read_bytes()
    back.save(path)
    assert path.read_bytes() == first  # deterministic bytes


@pytest.mark.parametrize(("members", "message"), [
    ({"stuck": np.zeros((1, 2, 2), np.int8)}, "not a chip file"),
    ({"cimc_chip": np.asarray(9), "stuck": np.zeros((1, 2, 2), np.int8)}, "version"),
    ({"cimc_chip": np.asarray(1), "stuck": np.full((1, 2, 2), 3, np.int8)}, "integers 0..2"),
    ({"cimc_chip": np.asarray(1), "stuck": np.zeros((1, 2, 2), np.int8),
      "variation": np.full((1, 2, 2), np.nan, np.float32)}, "finite"),
    ({"cimc_chip": np.asarray(1), "stuck": np.zeros((1, 2, 2), np.int8), "extra": np.zeros(3)},
     "unknown chip file members"),
])
def test_bad_chip_files_are_one_clear_error(tmp_path, members, message):
    path = tmp_path / "bad.npz"
    with open(path, "wb") as f:
        write_npz(f, members)
    with pytest.raises(InputError, match=message):
        Chip.load(path)


def test_bad_rates_and_a_chip_that_does_not_fit():
    with pytest.raises(InputError, match=r"p_sa0 = 1.5 is out of range"):
        Chip.sample(1, 2, 2, p_sa0=1.5)
    with pytest.raises(InputError, match="the program needs 4 arrays of 8 x 8"):
        CellDevice(Chip.sample(2, 8, 8), 2).check(4, 8, 8)
