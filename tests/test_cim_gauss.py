"""Indexed standard-normal draws (``cimc.cim.gauss``): any range of a stream is the same values, streams and keys
differ, and the values are standard normal (moments and tail frequencies on 2 * 10^6 draws, within limits that a
draw off by 2 % in scale, or a Box-Muller pair whose angle is not spread over the whole circle, fails); and
``cimc.cim.fmath``'s logarithm and exponential are within a few float32 units of the true values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cimc.cim import fmath
from cimc.cim.gauss import PAGE, draw_key, normals


def draws(n, key=(5, 7), stream=0, start=0):
    return normals(key, stream, start, np.empty(n, np.float32))


def test_any_range_of_a_stream_is_the_same_draws():
    whole = draws(600)
    for start in range(0, 40):
        for n in (1, 2, 3, 7, 8, 9, 64, 101):
            np.testing.assert_array_equal(draws(n, start=start), whole[start:start + n], err_msg=f"{start} {n}")
    scratch = np.empty(300, np.float32)
    np.testing.assert_array_equal(normals((5, 7), 0, 13, np.empty((4, 5), np.float32), scratch),
                                  whole[13:33].reshape(4, 5))
    big = draws(3 * 32 * PAGE + 100)  # ranges across pages and groups of pages
    for start, n in ((0, 70000), (PAGE, 32 * PAGE), (33333, 60000), (PAGE - 1, 2), (32 * PAGE - 5, 10)):
        np.testing.assert_array_equal(draws(n, start=start), big[start:start + n], err_msg=f"{start} {n}")
    assert not np.array_equal(draws(600, stream=1), whole)
    assert not np.array_equal(draws(600, key=(5, 8)), whole)
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    assert draw_key(rng1) == draw_key(rng2) != draw_key(rng1)


def standard_normal_problems(z: np.ndarray) -> list[str]:
    """What about ``z`` is not standard normal: mean, variance, kurtosis, and the frequency beyond 1, 2 and 3
    (limits of 6 standard errors at 2 * 10^6 draws), and the correlation of neighbouring draws."""
    z = z.astype(np.float64)
    n = z.size
    out = []
    if abs(z.mean()) > 6 / math.sqrt(n):
        out.append(f"mean {z.mean()}")
    if abs(z.var() - 1) > 6 * math.sqrt(2 / n):
        out.append(f"variance {z.var()}")
    if abs((z ** 4).mean() - 3) > 6 * math.sqrt(96 / n):
        out.append(f"fourth moment {(z ** 4).mean()}")
    for t in (1.0, 2.0, 3.0):
        p = math.erfc(t / math.sqrt(2))
        if abs((np.abs(z) > t).mean() - p) > 6 * math.sqrt(p * (1 - p) / n):
            out.append(f"P(|z| > {t}) = {(np.abs(z) > t).mean()} (want {p})")
    if abs(np.corrcoef(z[:-1], z[1:])[0, 1]) > 6 / math.sqrt(n):
        out.append("neighbours correlate")
    return out


def test_the_draws_are_standard_normal():
    z = draws(2_000_000, key=(11, 12))
    assert standard_normal_problems(z) == []
    assert np.isfinite(z).all() and np.abs(z).max() < 5.8
    assert standard_normal_problems(z * np.float32(1.02))  # 2 % too wide
    u = np.random.default_rng(0).random(1_000_000)
    r = np.sqrt(-2 * np.log1p(-u))
    half = np.concatenate([r * np.cos(np.pi * u[::-1]), r * np.sin(np.pi * u[::-1])])  # angles on half the circle
    assert standard_normal_problems(half)


@pytest.mark.parametrize("start", [0, 3])
def test_a_shaped_output_is_filled_in_order(start):
    out = normals((1, 2), 9, start, np.empty((3, 2, 5), np.float32))
    np.testing.assert_array_equal(out.reshape(-1), draws(30, key=(1, 2), stream=9, start=start))


def test_fmath_ln_and_exp_are_within_a_few_float32_units():
    x = np.concatenate([np.random.default_rng(0).random(200_000, np.float32) * 50 + np.float32(1e-7),
                        np.float32([2.0 ** -126, 1e-7, 0.5, 1.0, 1.0 + 2.0 ** -23, 2.0, 40.0])])
    want = np.log(x.astype(np.float64))
    err = np.abs(fmath.ln(x).astype(np.float64) - want) / np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    assert err.max() <= 4 and fmath.ln(np.float32(1))[0] == 0
    y = np.concatenate([np.random.default_rng(1).random(200_000, np.float32) * 60 - 40, np.float32([-87, 0, 1, 88])])
    want = np.exp(y.astype(np.float64))
    assert (np.abs(fmath.exp(y).astype(np.float64) / want - 1) < 3e-7).all() and fmath.exp(np.float32(0))[0] == 1
    assert fmath.exp(np.float32([[0.5, -1]])).shape == (1, 2)
