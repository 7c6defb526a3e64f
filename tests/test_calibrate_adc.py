"""calibrate-adc: partial-sum histograms against a slow count, the fit, and the pass on real models (the zoo and a
held-out attention model): lossy ADCs recover lossless top-1, lossless ones stay exact, and the results are
deterministic."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import numpy as np
import pytest

import cimc
from cimc import zoo
from cimc.cim.adc import Adc
from cimc.cim.calibration import Histogram, column_histograms, fit
from cimc.errors import CimcError
from cimc.interpreter import run
from cimc.targets.sram_cim import SramCimTarget
from cimc.text import print_graph

HELDOUT = Path(__file__).resolve().parent.parent / "examples" / "heldout"


def _slow_counts(x, img, row_at, col_at, blocks, rpo, dac, act, pairs):
    """Every partial sum counted in Python loops, from the crossbar's definition (docs/array-model.md)."""
    counts: dict[tuple[int, int], int] = {}
    phys = {int(r): i for i, r in enumerate(row_at)}
    sensed = [(c, None) for c in range(len(col_at))] if pairs is None else [tuple(p) for p in pairs]
    for p, j, b in itertools.product(range(x.shape[0]), range(-(-act // dac)), blocks):
        for k, (plus, minus) in enumerate(sensed):
            v = 0.0
            for r in range(b * rpo, (b + 1) * rpo):
                if r in phys:
                    xr = (int(x[p, phys[r]]) >> (j * dac)) & ((1 << dac) - 1)
                    v += xr * img[r, col_at[plus]] - (0 if minus is None else xr * img[r, col_at[minus]])
            counts[(k, int(v))] = counts.get((k, int(v)), 0) + 1
    return counts


@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("dac", [1, 2])
def test_histograms_count_every_partial_sum(pairs, dac):
    rng = np.random.default_rng(3)
    R, C, k, rpo, cell_bits = 12, 10, 9, 4, 2
    img = rng.integers(0, 4, (R, C)).astype(np.float32)
    row_at = rng.permutation(R)[:k]
    col_at = rng.permutation(C)[:8]
    x = rng.integers(0, 256, (5, k)).astype(np.uint8)
    blocks = np.unique(row_at // rpo)[:2]  # one block left undriven (skipped)
    pr = np.asarray([[0, 2], [1, 3], [4, 6], [5, 7]]) if pairs else None
    h = column_histograms(x, img, row_at, col_at, blocks, rows_per_op=rpo, dac_bits=dac, act_bits=8,
                          cell_bits=cell_bits, column_weight=np.arange(1, 5 if pairs else 9, dtype=np.float64),
                          pairs=pr)
    want = _slow_counts(x, img, row_at, col_at, blocks, rpo, dac, 8, pr)
    got = {(c, int(v)): int(n) for c in range(h.counts.shape[0]) for v, n in zip(h.centres, h.counts[c], strict=True)
           if n}
    assert got == want
    assert h.least == (-rpo * ((1 << dac) - 1) * 3 if pairs else 0)
    # the weighted histogram weighs each chunk j by 4^(j*dac) and each column by its weight squared
    assert h.weighted.sum() > h.counts.sum()


def _mse(counts, centres, bits, step, offset, rounding="half-even"):
    conv = Adc(bits, np.asarray(step), np.asarray(offset), 0, rounding).convert(centres)
    return float(((conv - centres) ** 2 * counts).sum())


@pytest.mark.parametrize("rounding", ["half-even", "floor"])
@pytest.mark.parametrize("signed", [False, True])
def test_fit_beats_the_worst_case_and_is_near_the_best_range(rounding, signed):
    rng = np.random.default_rng(0)
    least, width, bins = Histogram.geometry(64, 1, 1, signed)
    centres = least + width * np.arange(bins, dtype=np.float64)
    for trial in range(20):
        lam = rng.uniform(1, 20)
        v = rng.poisson(lam, 5000) * (rng.choice([-1, 1], 5000) if signed else 1)
        counts = np.bincount(np.clip(v - least, 0, bins - 1), minlength=bins).astype(np.float64)
        for bits in (3, 4, 5):
            step, off = fit(counts, counts, centres, bits=bits, rows_per_op=64, dac_bits=1, cell_bits=1,
                            signed=signed, rounding=rounding, method="mse")
            d = Adc.default(bits, 64, 1, 1, signed)
            got = _mse(counts, centres, bits, step, off, rounding)
            assert got <= _mse(counts, centres, bits, int(d.step), int(d.offset), rounding)
            best = min(_mse(counts, centres, bits, 1 << e, o, rounding) for e in range(0, 8 - bits + signed)
                       for o in range(least - (1 << e) * (1 << bits), 65))
            assert got <= 1.25 * best + 1e-9, (trial, bits, step, off)
    # a distribution inside 2^bits codes converts exactly
    counts = np.zeros(bins)
    counts[-least + 3:-least + 19] = 1
    step, off = fit(counts, counts, centres, bits=4, rows_per_op=64, dac_bits=1, cell_bits=1, signed=signed,
                    rounding=rounding, method="mse")
    assert _mse(counts, centres, 4, step, off, rounding) == 0


def test_percentile_covers_the_central_share():
    _, _, bins = Histogram.geometry(64, 1, 1, False)
    centres = np.arange(bins, dtype=np.float64)
    counts = np.zeros(bins)
    counts[10:40] = 1
    assert fit(counts, counts, centres, bits=4, rows_per_op=64, dac_bits=1, cell_bits=1, signed=False,
               rounding="half-even", method="percentile", percentile=100) == (2, 10)  # 15 codes x 2 >= 29
    assert fit(np.zeros(bins), np.zeros(bins), centres, bits=4, rows_per_op=64, dac_bits=1, cell_bits=1,
               signed=False, rounding="half-even", method="mse") == (8, 0)  # nothing seen: the worst case


@functools.cache
def _zoo(name: str, bits: int, calibrate: str = ""):
    target = SramCimTarget().with_spec(adc_bits=bits)
    pipe = target.default_pipeline() + ",lower-sram-cim,calibrate-adc" + (f"{{{calibrate}}}" if calibrate else "")
    return cimc.compile(f"zoo:{name}", target=target, pipeline=pipe, verify=True, progress=False)


@pytest.mark.parametrize("sense", ["columns", "pairs"])
def test_exactness_is_judged_as_every_partial_sum_converts(sense):
    """The pass's exactness test (arithmetic on the attributes, not Adc.exact) says lossless exactly when every
    partial sum ``least..most`` converts to itself, for default ranges and given ones."""
    from cimc.cim.adc import max_partial_sum
    from cimc.passes.calibrate_adc import _exact

    seen = set()
    for rpo, dac, cell, bits in itertools.product([1, 3, 21, 63, 64, 65], [1, 2], [1, 2], range(1, 10)):
        a = {"rows_per_op": rpo, "dac_bits": dac, "cell_bits": cell, "adc_bits": bits, "sense": sense}
        most = max_partial_sum(rpo, dac, cell)
        v = np.arange(-most if sense == "pairs" else 0, most + 1)
        ranges = [{}, {"adc_step": np.int64(1), "adc_offset": np.int64(v[0])},
                  {"adc_step": np.int64(1), "adc_offset": np.int64(v[0] + 1)},
                  {"adc_step": np.ones((2, 3), np.int64), "adc_offset": np.full((2, 3), v[0] - 1, np.int64)},
                  {"adc_step": np.full((2, 3), 2, np.int64), "adc_offset": np.zeros((2, 3), np.int64)}]
        for r in ranges:
            adc = Adc.from_attrs({**a, **r})
            pairs = zip(adc.step.flat, adc.offset.flat, strict=True)
            want = all((Adc(bits, s, o).convert(v) == v).all() for s, o in pairs)
            assert _exact({**a, **r}) == want, (a, r)
            seen.add(want)
    assert seen == {True, False}


def test_five_bit_adc_recovers_lossless_top1():
    lossless = _zoo("lenet_bn", 7)
    naive = _zoo("lenet_bn", 5, "method=none")
    cal = _zoo("lenet_bn", 5)
    assert lossless.verify["reference_exact"]
    assert naive.verify["top1_program"] < lossless.verify["top1_program"] - 0.3  # the worst case collapses
    assert cal.verify["top1_program"] >= lossless.verify["top1_program"] - 0.01
    rep = cal.report["passes"]["adc-calibration"]
    assert rep["method"] == "mse" and set(rep["layers"]) == {n.attrs["cim.layer"] for n in cal.program.nodes
                                                             if n.op == "sram.mvm"}
    assert all(r["calibrated_rms"] < r["worst_case_rms"] for r in rep["layers"].values())
    assert "ADC ranges calibrated" in cal.verify["lossy"] and "worst-case" in naive.verify["lossy"]
    mvm = next(n for n in cal.program.nodes if n.op == "sram.mvm")
    assert mvm.attrs["adc_step"].shape == (len(mvm.attrs["tiles"]), 128 // 8) and mvm.attrs["adc_group"] == 8
    # the check catches a broken calibration: each range moved one code too high loses the small sums
    broken = cal.program.copy()
    for n in broken.nodes:
        if n.op == "sram.mvm":
            n.attrs["adc_offset"] = n.attrs["adc_offset"] + n.attrs["adc_step"] * 8
    x, y = zoo.test_set()
    out = run(broken, {zoo.load("lenet_bn").input_name: x}, machine={})
    assert (next(iter(out.values())).argmax(-1) == y).mean() < lossless.verify["top1_program"] - 0.05


def test_lossless_stays_exact_and_untouched():
    c = _zoo("resnet_tiny", 7)
    assert c.verify["reference_exact"] and c.verify["lossy"] is None
    assert all(n.attrs["adc_step"].shape == () for n in c.program.nodes if n.op == "sram.mvm")
    assert c.report["passes"]["adc-calibration"]["status"].startswith("every ADC is lossless")


@pytest.mark.parametrize("granularity", ["array", "layer"])
def test_granularities(granularity):
    c = _zoo("mlp", 4, f"granularity={granularity}")
    for n in c.program.nodes:
        if n.op == "sram.mvm":
            want = (len(n.attrs["tiles"]), 1) if granularity == "array" else ()
            assert n.attrs["adc_step"].shape == want and n.attrs["adc_group"] == 0
    assert c.verify["top1_program"] > _zoo("mlp", 4, "method=none").verify["top1_program"]


def test_heldout_attention_model_recovers():
    """A model the calibration was not developed on (torch dynamo export, attention): 5-bit ADCs."""
    model = HELDOUT / "conv_mha_dynamo.onnx"
    x, y = zoo.test_set()
    out = {}
    for bits, cal in ((7, "method=none"), (5, "method=none"), (5, "method=mse")):
        t = SramCimTarget().with_spec(adc_bits=bits)
        c = cimc.compile(model, target=t, pipeline=f"{t.default_pipeline()},lower-sram-cim,calibrate-adc{{{cal}}}",
                         calibration=zoo.calibration_set(), verify=True, inputs=np.array(x[:300]),
                         labels=np.array(y[:300]), progress=False)
        out[(bits, cal)] = c.verify["top1_program"]
    assert out[(5, "method=mse")] >= out[(7, "method=none")] - 0.015
    assert out[(5, "method=none")] < out[(7, "method=none")] - 0.05


def test_deterministic_and_round_trips():
    a, b = _zoo("mlp", 4), _zoo.__wrapped__("mlp", 4)
    assert print_graph(a.program) == print_graph(b.program)


def test_errors():
    with pytest.raises(CimcError, match="but no array MVM instructions: it runs on a lowered program"):
        cimc.compile("zoo:mlp", target=SramCimTarget().with_spec(adc_bits=5),
                     pipeline="fold-constants,fuse-batchnorm,quantize,tile,calibrate-adc", progress=False)
    for bad in ("columns=0", "percentile=0", "inputs=0", "method=best", "granularity=row"):
        with pytest.raises(CimcError):
            cimc.compile("zoo:mlp", target="sram-cim", pipeline=f"fold-constants,quantize,tile,lower-sram-cim,"
                                                                 f"calibrate-adc{{{bad}}}", progress=False)
