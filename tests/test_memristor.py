"""The memristor target: the ideal crossbar equals the integer reference bit for bit (zoo, W8A8 and W4A8, dense
and 50 % sparse, both signed encodings, random placement); the device's non-idealities move the outputs as
seeded, reproducible draws; the switches ``noise`` and ``ideal``; Monte Carlo over chips (reproducible per chip,
the same with 1 and 2 workers); bad input as one clear error; the cost of programming."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

import cimc
from cimc import zoo
from cimc.interpreter import run
from cimc.ir.verifier import verify
from cimc.montecarlo import ChipJob, LocalPool, run_chip, run_seed, summarise
from cimc.onnx_io import import_model
from cimc.passmanager import PassContext, PassManager
from cimc.target import LOSSY
from cimc.targets import load_target
from cimc.targets.memristor import MemristorTarget

IDEAL = MemristorTarget().with_spec(ideal=True)
N_IMAGES = 64


def _x(name: str, n: int = N_IMAGES) -> dict[str, np.ndarray]:
    return {zoo.load(name).input_name: zoo.test_set()[0][:n]}


@functools.cache
def _compiled(name: str, wb: int, sparse: bool, target=IDEAL, tile: str = ""):
    """(quantized graph, lowered program) of zoo model ``name`` on ``target``."""
    m = zoo.load(name)
    g = import_model(m.onnx())
    ctx = PassContext(target=target, calibration={m.input_name: zoo.calibration_set()}, seed=7)
    sp = "sparsify{ratio=0.5 granularity=block}," if sparse else ""
    tile = tile or f"tile{{encoding={target.spec.signed}}}"
    PassManager(f"fold-constants,fuse-batchnorm,{sp}quantize{{weight-bits={wb} act-bits=8}},{tile}", ctx).run(g)
    q = g.copy()
    target.register_ops()
    PassManager(target.lowering(), ctx).run(g)
    return q, g


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse50"])
@pytest.mark.parametrize("wb", [8, 4], ids=["W8A8", "W4A8"])
@pytest.mark.parametrize("name", zoo.NAMES)
def test_ideal_crossbar_is_exact(name, wb, sparse):
    q, prog = _compiled(name, wb, sparse)
    verify(prog)
    assert LOSSY not in prog.metadata
    assert not any(n.op in ("q.conv", "q.gemm", "q.matmul") for n in prog.nodes)
    mvms = [n for n in prog.nodes if n.op == "xbar.mvm"]
    assert mvms and all(n.attrs["sense"] == "pairs" for n in mvms)
    x = _x(name)
    want, got = run(q, x), run(prog, x)
    for k in want:
        assert np.array_equal(want[k], got[k]), f"{name} W{wb} sparse={sparse}: output {k} differs"


@pytest.mark.parametrize("spec", [dict(signed="offset"), dict(cell_bits=8, dac_bits=8),
                                  dict(cell_bits=1, rows_per_op=37, spare_rows=3, spare_cols=5)],
                         ids=["offset", "whole-weights", "bit-sliced-placed"])
def test_ideal_crossbar_is_exact_in_every_configuration(spec):
    target = IDEAL.with_spec(**spec)
    placed = " placement=random" if "spare_rows" in spec else ""
    tile = f"tile{{encoding={target.spec.signed}{placed}}}"
    q, prog = _compiled("resnet_tiny", 8, False, target, tile)
    x = _x("resnet_tiny")
    want, got = run(q, x), run(prog, x)
    assert all(np.array_equal(want[k], got[k]) for k in want)


def test_layers_over_many_crossbar_rounds_are_one_product_with_the_bit_level_bits():
    """Two small crossbars: every layer takes several rounds, a chain of xbar.mvm handing its exact sum on (one
    product per chain), with the bits of the bit-serial model and of the integer reference, also when every
    result is observed (each round then a product of its own box of the weights)."""
    from cimc.cim.machine import BIT_LEVEL
    from cimc.interpreter import Interpreter

    q, prog = _compiled("resnet_tiny", 8, False, IDEAL.with_spec(crossbars=2, rows=32, cols=32, rows_per_op=32))
    plan = [e for e in Interpreter(prog)._plan if e[0].op == "xbar.mvm"]
    assert sum(e[5] for e in plan) > len(plan) // 2, "the xbar.mvm chains do not hand their sums on"
    x = _x("resnet_tiny", 16)
    want = run(q, x)
    for got in (Interpreter(prog).run(x), Interpreter(prog, machine={BIT_LEVEL: True}).run(x),
                Interpreter(prog).run(x, observe=lambda v, a: None)):
        assert all(np.array_equal(want[k], got[k]) for k in want)


def test_the_device_moves_outputs_reproducibly():
    """Default noise: not exact, recorded as lossy; same seed, same bits; another seed, other bits; and the
    outputs stay meaningful (top-1 well above chance, below the exact program's)."""
    x = next(iter(_x("lenet_bn").values()))
    r = cimc.compile("zoo:lenet_bn", "memristor", verify=True, seed=3)
    assert not r.verify["reference_exact"] and not r.verify["exact_expected"]
    assert "read noise 0.01 g_max" in r.verify["lossy"] and "stuck cells" in r.verify["lossy"]
    a, b = r.run(x), r.run(x)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    other = cimc.compile("zoo:lenet_bn", "memristor", seed=4).run(x)
    assert not all(np.array_equal(a[k], other[k]) for k in a)
    assert 0.6 < r.verify["top1_program"] < r.verify["top1_quantized"]


def test_noise_and_ideal_switches():
    """noise = false and no fault rates: the ideal machine (exact); noise = false with faults: the faults alone
    (not exact); ideal = true overrides fault rates and a lossy ADC setting."""
    x = next(iter(_x("mlp").values()))
    quiet = MemristorTarget().with_spec(noise=False, p_sa0=0.0, p_sa1=0.0)
    assert quiet.machine(0) == {}
    faults = MemristorTarget().with_spec(noise=False, p_sa0=0.02)
    dev = faults.machine(0)["cim.device"]
    assert dev.model.prog_scale == 0 and dev.model.read_noise == 0 and not dev.model.drifts
    r = cimc.compile("zoo:mlp", faults, verify=True, inputs=x)
    assert not r.verify["reference_exact"] and "stuck cells p_sa0 = 0.02" in r.verify["lossy"]
    ideal = MemristorTarget().with_spec(ideal=True, adc_bits=4, p_sa0=0.5)
    assert ideal.machine(0) == {}
    r = cimc.compile("zoo:mlp", ideal, verify=True, inputs=x)
    assert r.verify["reference_exact"]


def test_a_corrupted_array_image_is_caught():
    """Mutants of a lowered program: a flipped cell bit, a flipped significance sign, a dropped bias: each makes
    the ideal program differ from the integer reference."""
    q, prog = _compiled("lenet_bn", 8, False)
    x = _x("lenet_bn")
    want = run(q, x)

    def differs(g) -> bool:
        got = run(g, x)
        return not all(np.array_equal(want[k], got[k]) for k in want)

    g = prog.copy()
    load = next(n for n in g.nodes if n.op == "xbar.load")
    cells = load.inputs[0].const.copy()
    cells.reshape(-1)[cells.size // 3] ^= 1
    load.inputs[0].const = cells
    assert differs(g)
    g = prog.copy()
    mvm = next(n for n in g.nodes if n.op == "xbar.mvm")
    mvm.attrs["significance"] = [-s for s in mvm.attrs["significance"]]
    assert differs(g)
    g = prog.copy()
    add = next(n for n in g.nodes if n.op == "Add" and n.inputs[1].const is not None)
    add.inputs[1].const = np.zeros_like(add.inputs[1].const)
    assert differs(g)


def test_monte_carlo_is_reproducible_per_chip_and_with_any_workers():
    x, y = zoo.test_set()
    x, y = x[:40], y[:40]
    spec = {"p_sa0": 0.02, "p_sa1": 0.004}
    one = cimc.compile("zoo:lenet_bn", "memristor", spec=spec, verify=True, inputs=x, labels=y, seed=5, mc=4,
                       workers=1)
    two = cimc.compile("zoo:lenet_bn", "memristor", spec=spec, verify=True, inputs=x, labels=y, seed=5, mc=4,
                       workers=2)
    assert json.dumps(one.report, sort_keys=True) == json.dumps(two.report, sort_keys=True)
    mc = one.verify["mc"]
    assert mc["n"] == 4 and mc["top1_of"] == "labels" and len(mc["chips"]) == 4
    assert 0 < mc["rel_error_mean"] < 1 and mc["top1_p5"] <= mc["top1_mean"] <= mc["top1_p95"]
    assert len({c["rel_error"] for c in mc["chips"]}) == 4  # each chip is another draw
    assert mc["compiled_per_chip"] and one.verify["mc_naive"]["n"] == 4  # map-errors: each chip's own program
    own = cimc.compile("zoo:lenet_bn", "memristor", spec=spec, seed=5, chip=2).program  # chip 2's, compiled alone
    job = ChipJob(own, one.target, {"input": x} if "input" in own.inputs else {own.inputs[0].name: x}, 5,
                  next(iter(one.run(x))))
    chip2 = run_chip(job, 2)  # chip 2 alone, from (seed, 2)
    ref = run(one.quantized, job.inputs)[job.output]
    alone = summarise([chip2], ref, y, "labels")
    assert alone["rel_error_mean"] == mc["chips"][2]["rel_error"]
    assert np.array_equal(LocalPool(2).map(job, [2])[0], chip2)


def test_chips_of_one_job_reuse_its_verified_program_and_each_runs_alone():
    m = zoo.load("lenet_bn")
    c = cimc.compile("zoo:lenet_bn", "memristor", spec={"p_sa0": 0.02, "p_sa1": 0.004}, seed=3)
    c.target.register_ops()
    job = ChipJob(c.program, c.target, _x("lenet_bn", 16), 3, c.program.outputs[0].name)
    got = [run_chip(job, i) for i in (0, 1, 0)]  # one interpreter, rebound per chip
    want = [run(c.program, job.inputs, seed=run_seed(3, i), machine=c.target.machine(3, i))[job.output]
            for i in (0, 1)]
    assert m.input_name in job.inputs and not np.array_equal(want[0], want[1])
    for g, w in zip(got, [want[0], want[1], want[0]], strict=True):
        np.testing.assert_array_equal(g, w)


def test_monte_carlo_summary_is_the_formula():
    exact = np.asarray([[1.0, 0.0], [0.0, 2.0]])
    outs = [exact, exact * 1.5, exact[:, ::-1]]
    s = summarise(outs, exact, np.asarray([0, 1]), "labels")
    assert s["top1_mean"] == pytest.approx(2 / 3) and s["top1_std"] == pytest.approx(np.std([1, 1, 0]))
    assert s["rel_error_mean"] == pytest.approx((0 + 0.5 + np.sqrt(10) / np.sqrt(5)) / 3)
    assert s["top1_p5"] == pytest.approx(np.percentile([1, 1, 0], 5))


def test_seeds_configurations_are_expressible():
    """Keyword spotting on ReRAM (5-bit inputs, 6-bit array outputs, 8-bit digital) and per-layer mixed precision
    compile and run; without device noise (the quantization of the configuration alone: 10 rows of 2-bit cells per
    conversion, so a pair's signed sum fits 6 bits) they keep accuracy near the float model's on the digits test
    split."""
    x, y = zoo.test_set()
    quiet = {"noise": False, "p_sa0": 0.0, "p_sa1": 0.0}
    kws = cimc.compile("zoo:resnet_tiny", "memristor", spec={"adc_bits": 6, "rows_per_op": 10, **quiet},
                       pipeline="fold-constants,fuse-batchnorm,quantize{weight-bits=8 act-bits=5},"
                                "tile{encoding=differential}", verify=True, inputs=x[:200], labels=y[:200])
    assert all(n.attrs["act_bits"] == 5 and n.attrs["adc_bits"] == 6 for n in kws.program.nodes if n.op == "xbar.mvm")
    assert kws.verify["top1_program"] > kws.verify["top1_float"] - 0.1
    mixed = cimc.compile("zoo:mlp", "memristor", spec={"ideal": True}, verify=True, inputs=x[:100],
                         pipeline="quantize{weight-bits=8 act-bits=8 overrides=\"Gemm:weight-bits=4\"},"
                              "tile{encoding=differential}")
    bits = {n.attrs["tiles"].slices for n in mixed.program.nodes if n.op == "xbar.mvm"}
    assert mixed.verify["reference_exact"] and bits


def test_programming_is_a_one_time_cost_with_cell_writes():
    r = cimc.compile("zoo:lenet_bn", "memristor", spec={"ideal": True})
    c = r.cost
    assert c.one_time.energy_pj > 0 and c.per_inference.energy_pj > 0
    loads = [n for n in r.program.nodes if n.op == "xbar.load"]
    cells = sum(int(((t.table[:, 2] - t.table[:, 1]) * (t.table[:, 4] - t.table[:, 3])
                     * (t.table[:, 6] - t.table[:, 5])).sum()) for t in (n.attrs["tiles"] for n in loads))
    assert c.one_time.energy_pj >= cells * r.target.spec.write_cell_pj
    assert {p.component for p in r.target.area()} >= {"arrays", "adc", "dac"}


@pytest.mark.parametrize("args, message", [
    (["--spec-set", "p_sa0=1.5"], "p_sa0"),
    (["--spec-set", "g_min=50"], "g_min"),
    (["--verify", "--mc", "0"], "--mc"),
    (["--mc", "2"], "--verify"),
    (["--verify", "--mc", "2", "--spec-set", "ideal=true"], "no device that varies"),
    (["--spec-set", "prog_model=lognormal"], "prog_model"),
    (["--verify", "--workers", "2"], "--mc"),
    (["--spec-set", "ideal=true", "-p", "quantize,tile{encoding=differential},lower-memristor{adc-bits=5}"],
     "ideal = true"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    from cimc.cli import main

    out = tmp_path / "out"
    try:
        code = main(["compile", "zoo:mlp", "--target", "memristor", "-o", str(out), *args])
    except SystemExit as e:  # a usage error, from argparse
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not out.exists()


def test_a_chip_file_that_does_not_fit_is_one_line_and_exit_2(tmp_path, capsys):
    from cimc.cim import Chip
    from cimc.cli import main

    Chip.sample(64, 100, 128, seed=1).save(tmp_path / "small.npz")
    out = tmp_path / "out"
    code = main(["compile", "zoo:mlp", "--target", "memristor", "-o", str(out), "--spec-set",
                 f"chip={tmp_path / 'small.npz'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "100 x 128" in err and not out.exists()
    target = load_target("memristor", overrides=["spare_rows=2"])
    Chip.sample(64, 130, 128, seed=1).save(tmp_path / "fits.npz")
    assert target.with_spec(chip=str(tmp_path / "fits.npz")).machine(0)
