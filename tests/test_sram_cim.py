"""Tests of the sram-cim lowering, its ops and costs: exactness on the zoo, lossy ADC, .cimir, cost."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from cimc import zoo
from cimc.interpreter import run
from cimc.ir.verifier import verify
from cimc.onnx_io import import_model
from cimc.passmanager import PassContext, PassManager
from cimc.targets.sram_cim import SramCimTarget
from cimc.text import parse_graph, print_graph

LOSSLESS = SramCimTarget().with_spec(adc_bits=7)  # 64 rows, 1-b inputs, 1-b cells need 7 bits
N_IMAGES = 64


def _sparsify(wb: int) -> str:
    return f"sparsify{{ratio=0.5 granularity=block group-channels={128 // wb}}},"


@functools.cache
def _compiled(name: str, wb: int, sparse: bool, target=LOSSLESS, tile: str = "tile"):
    """(quantized graph, lowered program) of zoo model ``name``."""
    m = zoo.load(name)
    g = import_model(m.onnx())
    ctx = PassContext(target=target, calibration={m.input_name: zoo.calibration_set()}, seed=7)
    sp = _sparsify(wb) if sparse else ""
    PassManager(f"fold-constants,fuse-batchnorm,{sp}quantize{{weight-bits={wb} act-bits=8}},{tile}", ctx).run(g)
    q = g.copy()
    PassManager(target.lowering(), ctx).run(g)
    return q, g


def _x(name: str) -> dict[str, np.ndarray]:
    return {zoo.load(name).input_name: zoo.test_set()[0][:N_IMAGES]}


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse50"])
@pytest.mark.parametrize("wb", [8, 4], ids=["W8A8", "W4A8"])
@pytest.mark.parametrize("name", zoo.NAMES)
def test_lowered_program_is_exact(name, wb, sparse):
    q, prog = _compiled(name, wb, sparse)
    verify(prog)
    assert not any(n.op in ("q.conv", "q.gemm", "q.matmul") for n in prog.nodes)
    assert all("cim.layer" in n.attrs for n in prog.nodes if n.op.startswith(("sram.", "vec.")))
    x = _x(name)
    want, got = run(q, x), run(prog, x)
    for k in want:
        assert np.array_equal(want[k], got[k]), f"{name} W{wb} sparse={sparse}: output {k} differs"


RANDOM = "tile{placement=random}"
SPARES = LOSSLESS.with_spec(spare_rows=5, spare_cols=3)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse50"])
@pytest.mark.parametrize("name", zoo.NAMES)
def test_random_placement_with_spares_is_exact(name, sparse):
    """Every tile at random physical rows and columns of arrays with spare rows and columns: the program still
    equals the integer reference bit for bit (the executor reads each cell where the load put it)."""
    q, prog = _compiled(name, 8, sparse, SPARES, tile=RANDOM)
    verify(prog)
    maps = [n.attrs["tiles"] for n in prog.nodes if n.op == "sram.mvm"]
    assert all(m.physical == (133, 131) for m in maps)
    assert all(m.row_at[i] is not None and not np.array_equal(m.rows_of(i), np.arange(len(m.rows_of(i))))
               for m in maps for i in range(len(m)))
    x = _x(name)
    want, got = run(q, x), run(prog, x)
    for k in want:
        assert np.array_equal(want[k], got[k]), f"{name}: output {k} differs"


def test_program_size_is_O_rounds():
    """A layer is one load and one MVM per round of at most ``macros`` tiles, plus im2col, bias, col2im."""
    q, prog = _compiled("resnet_tiny", 8, False)
    macros = LOSSLESS.spec.macros
    tiled = [n for n in q.nodes if "tile.map" in n.attrs]
    rounds = {n.name: -(-len(n.attrs["tile.map"]) // macros) for n in tiled}
    ops = prog.ops()
    assert ops["sram.mvm"] == ops["sram.load"] == sum(rounds.values())
    loaded = sum(len(n.attrs["tiles"]) for n in prog.nodes if n.op == "sram.load")
    assert loaded == sum(len(n.attrs["tile.map"]) for n in tiled)  # every tile written once
    for layer, r in rounds.items():
        mine = [n for n in prog.nodes if n.attrs.get("cim.layer") == layer]
        assert sum(n.op == "sram.mvm" for n in mine) == r and len(mine) <= 2 * r + 3


def test_adc_clip_and_step():
    from cimc.cim import Adc

    v = np.asarray([0.0, 1, 2, 3, 5, 6, 10, 64, 200])
    assert np.array_equal(Adc.default(7, 64, 1, 1).convert(v), np.minimum(v, 127))  # lossless within 0..64
    # 5 bits of a 7-bit range: step 4, half to even, codes clipped to 0..31
    assert Adc.default(5, 64, 1, 1).convert(v).tolist() == [0, 0, 0, 4, 4, 8, 8, 64, 124]


def _top1(prog, name):
    x, y = zoo.test_set()
    out = run(prog, {zoo.load(name).input_name: x[:100]})
    return float((next(iter(out.values())).argmax(axis=1) == y[:100]).mean())


def test_lossy_adc_changes_bits_and_costs_accuracy():
    """A 5-bit ADC (two below lossless) at its worst-case range changes the program's bits, the same bits every
    run, and costs lenet_bn top-1 accuracy (below the lossless program's, above chance); calibrate-adc (which the
    driver runs after the lowering) gives back the lossless top-1: exactly the figure the zoo table stores for it
    (two-sided, on the 450 test images)."""
    import importlib.util
    from pathlib import Path

    lossy = SramCimTarget().with_spec(adc_bits=5)
    _, exact = _compiled("lenet_bn", 8, False)
    _, prog = _compiled("lenet_bn", 8, False, lossy)
    x = _x("lenet_bn")
    a, b = next(iter(run(exact, x).values())), next(iter(run(prog, x).values()))
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert prog.metadata["cim.lossy"] == "sram-cim ADC: adc_bits = 5 < 7 bits (lossless)"
    assert "cim.lossy" not in exact.metadata
    again = run(prog, x)  # deterministic: the same bits every run
    assert list(again) == list(run(prog, x)) and all(np.array_equal(u, v) for u, v in
                                                     zip(again.values(), run(prog, x).values(), strict=True))
    m = zoo.load("lenet_bn")
    cal = prog.copy()
    PassManager("calibrate-adc", PassContext(target=lossy, calibration={m.input_name: zoo.calibration_set()},
                                             seed=7)).run(cal)
    assert cal.metadata["cim.lossy"].endswith("; ADC ranges calibrated (mse, per column-group)")
    every = {m.input_name: m.x_test}
    t_exact, t_lossy, t_cal = (round(100 * float((run(g, every)[m.output_name].argmax(-1) == m.y_test).mean()), 2)
                               for g in (exact, prog, cal))
    script = Path(__file__).resolve().parent.parent / "examples" / "zoo" / "report.py"
    spec = importlib.util.spec_from_file_location("zoo_report", script)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    table = report.read_section(report.README.read_text(encoding="utf-8"))[0]["lenet_bn"]
    assert table["adc_bits"] == [7, 5] and (t_exact, t_cal) == (table["sram"], table["sram_lossy"])
    assert 10.0 < t_lossy < t_exact - 10.0 and t_cal >= t_exact - 1.0


def test_cimir_round_trip_of_a_lowered_program():
    _, prog = _compiled("lenet_bn", 8, True)
    res: dict[str, np.ndarray] = {}
    text = print_graph(prog, resources=res)
    assert "sram.mvm" in text and "sram.load" in text
    back = parse_graph(text, resources=res)
    x = _x("lenet_bn")
    for (k, a), b in zip(run(prog, x).items(), run(back, x).values(), strict=True):
        assert np.array_equal(a, b), k


def _cost(prog, target=LOSSLESS):
    from cimc.cost import program_cost

    return program_cost(prog, target)


def test_block_sparsity_lowers_cycles_and_energy():
    _, dense = _compiled("resnet_tiny", 8, False)
    _, sparse = _compiled("resnet_tiny", 8, True)
    d, s = _cost(dense).per_inference, _cost(sparse).per_inference
    assert any(len(n.attrs["skip"]) for n in sparse.nodes if n.op == "sram.mvm")
    assert s.by_unit["array"]["cycles"] < d.by_unit["array"]["cycles"]
    assert s.by_unit["array"]["energy_pj"] < d.by_unit["array"]["energy_pj"]


def _gemm_program(rows_per_op: int, macros: int = 16, adc_bits: int | None = None, zero_block: bool = False):
    from cimc.ir.core import Graph
    from cimc.ir.types import DType, QuantParams, TensorType

    g = Graph("gemm")
    x = g.add_input("x", TensorType(DType.u8, (4, 256), QuantParams((0.1,), (0,), 8)))
    w = np.random.default_rng(1).integers(-127, 128, (64, 256)).astype(np.int8)
    if zero_block:  # the first row block of the first tile only: its neighbour on the same rows keeps it
        w[:16, :rows_per_op] = 0
    y = g.add_node("q.gemm", [x, g.add_constant(w, "w")], {"x_zero_point": 0}, name="fc").outputs[0]
    g.outputs.append(y)
    t = SramCimTarget().with_spec(rows_per_op=rows_per_op, macros=macros,
                                  adc_bits=adc_bits or rows_per_op.bit_length())
    q = g.copy()
    PassManager("tile,lower-sram-cim", PassContext(target=t, verify_each=True)).run(g)
    return q, g, t


def test_more_rows_per_op_fewer_passes():
    xs = {"x": np.random.default_rng(2).integers(0, 256, (4, 256)).astype(np.uint8)}
    cycles = []
    for rpo in (16, 64, 128):
        q, prog, t = _gemm_program(rpo)
        assert np.array_equal(run(q, xs)["fc"] if "fc" in run(q, xs) else next(iter(run(q, xs).values())),
                              next(iter(run(prog, xs).values())))
        cycles.append(_cost(prog, t).per_inference.by_unit["array"]["cycles"])
    assert cycles[0] > cycles[1] > cycles[2]


def test_weights_that_do_not_fit_are_reloaded():
    xs = {"x": np.random.default_rng(3).integers(0, 256, (4, 256)).astype(np.uint8)}
    q, prog, t = _gemm_program(64, macros=2)  # 2 row tiles x 4 column tiles = 8 tiles on 2 macros
    loads = [n for n in prog.nodes if n.op == "sram.load"]
    assert len(loads) == 4 and all(sorted(n.attrs["tiles"].column("array")) == [0, 1] for n in loads)  # 4 rounds
    assert all(n.attrs["cim.bytes"] == 2 * 128 * 128 // 8 for n in loads)
    rep = _cost(prog, t)
    c = rep.per_inference.by_unit["load"]  # every macro is rewritten on every inference: no one-time loads
    assert c["cycles"] > 0 and c["energy_pj"] > 0 and c["ops"] == 4 and rep.one_time.ops == 0 and rep.reloads
    assert rep.per_inference.cell_writes == {0: 4 * 128 * 128, 1: 4 * 128 * 128}
    assert np.array_equal(next(iter(run(q, xs).values())), next(iter(run(prog, xs).values())))


def test_rounds_sum_in_place_only_into_dead_partial_sums():
    from cimc.interpreter import Interpreter

    xs = {"x": np.random.default_rng(4).integers(0, 256, (4, 256)).astype(np.uint8)}
    q, prog, _ = _gemm_program(64, macros=2)  # 8 tiles, rounds of 2: a chain of 4 sram.mvm
    donated = lambda g: [e[4] for e in Interpreter(g)._plan if e[0].op == "sram.mvm"]  # noqa: E731
    partial = lambda g: [e[5] for e in Interpreter(g)._plan if e[0].op == "sram.mvm"]  # noqa: E731
    assert donated(prog) == [False, True, True, True]
    assert partial(prog) == [True, True, True, False]  # the last round's sums are read by the bias Add
    first = next(n for n in prog.nodes if n.op == "sram.mvm")
    prog.outputs.append(first.outputs[0])  # someone else reads round 0's partial sums: no reuse
    assert donated(prog) == [False, False, True, True]
    assert partial(prog) == [False, True, True, False]  # an output is an array
    out = run(prog, xs)
    w = q.node("fc").inputs[1].const.astype(np.int64)  # [64, 256]; round 0 = rows 0-127 x channels 0-31
    want = np.zeros((4, 64), np.int64)
    want[:, :32] = xs["x"][:, :128].astype(np.int64) @ w[:32, :128].T
    assert np.array_equal(out[first.outputs[0].name], want)
    assert np.array_equal(next(iter(run(q, xs).values())), out[prog.outputs[0].name])


@pytest.mark.parametrize("zero_block", [False, True], ids=["dense", "one-skipped-block"])
@pytest.mark.parametrize("rows_per_op", [16, 48, 64])
def test_lossy_program_equals_the_reference_model(rows_per_op, zero_block):
    """A lossy program equals, round by round, the independent slow model of the arrays (cim_reference)."""
    from cim_reference import reference

    from cimc.tiling import weight_matrix

    xs = {"x": np.random.default_rng(5).integers(0, 256, (4, 256)).astype(np.uint8)}
    need = rows_per_op.bit_length()
    q, prog, _ = _gemm_program(rows_per_op, macros=3, adc_bits=need - 2, zero_block=zero_block)
    skips = np.concatenate([n.attrs["skip"] for n in prog.nodes if n.op == "sram.mvm"])
    assert len(skips) == zero_block
    m = weight_matrix(q.node("fc")).astype(np.int64)
    want = np.zeros((4, 64), np.int64)
    for n in (n for n in prog.nodes if n.op == "sram.mvm"):
        a = n.attrs
        want += reference(m, "twos-complement", 8, 1, [xs["x"]], a["tiles"], a["tiles"], rows_per_op=rows_per_op,
                          dac_bits=1, act_bits=8, adc_bits=need - 2, adc_step=4, adc_offset=0, adc_group=0,
                          rounding="half-even", skip={tuple(p) for p in a["skip"].tolist()})[0]
    got = next(iter(run(prog, xs).values()))
    assert np.array_equal(got, want) and not np.array_equal(got, next(iter(run(q, xs).values())))


def test_a_wrong_permutation_in_a_program_is_a_wrong_result():
    """Swap two physical rows (or columns) in one sram.mvm's placement, leaving its sram.load as it was: the MVM
    reads other cells than the load wrote, and the program no longer equals the integer reference."""
    q, prog = _compiled("lenet_bn", 8, False, SPARES, tile=RANDOM)
    x = _x("lenet_bn")
    want = next(iter(run(q, x).values()))
    assert np.array_equal(want, next(iter(run(prog, x).values())))
    for axis in ("row_at", "col_at"):
        bad = prog.copy()
        node = next(n for n in bad.nodes if n.op == "sram.mvm")
        tiles = node.attrs["tiles"]
        places = list(getattr(tiles, axis))
        p = places[0].copy()
        p[[0, 1]] = p[[1, 0]]
        places[0] = p
        node.attrs["tiles"] = tiles.replace(**{axis: places})
        verify(bad)  # still a well-formed program: only its result is wrong
        got = next(iter(run(bad, x).values()))
        assert not np.array_equal(want, got), axis


def test_programs_run_on_the_chip_of_the_spec(tmp_path):
    """A chip file (--spec-set chip=...) or stuck-at rates: the program runs on that chip. No stuck cell: exact;
    stuck cells: the compile reports the program lossy, its outputs move, and the same chip gives the same bits."""
    import cimc
    from cimc.cim import Chip
    from cimc.target import LOSSY

    spec = {"spare_rows": 2}
    naive = "fold-constants,fuse-batchnorm,quantize,tile"  # no map-errors: the tiles where tile put them
    healthy = tmp_path / "healthy.npz"
    Chip.sample(16, 130, 128, seed=1).save(healthy)
    faulty = tmp_path / "faulty.npz"
    broken = Chip.sample(16, 130, 128, p_sa0=0.02, p_sa1=0.01, seed=1)
    broken.save(faulty)
    rates = broken.rates()  # about 2 % and 1 % (this draw: 1.94 % and 1.02 %)
    assert abs(rates["sa0"] - 0.02) < 0.001 and abs(rates["sa1"] - 0.01) < 0.001
    x, y = zoo.test_set()
    x, y = x[:100], y[:100]
    ok = cimc.compile("zoo:lenet_bn", "sram-cim", spec={**spec, "chip": str(healthy)}, verify=True, inputs=x)
    assert ok.verify["reference_exact"] and LOSSY not in ok.program.metadata
    bad = cimc.compile("zoo:lenet_bn", "sram-cim", naive, spec={**spec, "chip": str(faulty)}, verify=True, inputs=x)
    note = f"stuck cells: {100 * rates['sa0']:.3g} % at 0, {100 * rates['sa1']:.3g} % at 1"
    assert note in bad.program.metadata[LOSSY] and not bad.verify["reference_exact"]
    a, b = bad.run(x), bad.run(x)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    sampled = cimc.compile("zoo:lenet_bn", "sram-cim", naive, spec={**spec, "p_sa0": 0.02, "p_sa1": 0.01}, seed=1)
    np.testing.assert_array_equal(sampled.target.chip(1).stuck, Chip.load(faulty).stuck)
    c = sampled.run(x, seed=1)
    assert all(np.array_equal(a[k], c[k]) for k in a)  # the chip sampled with the seed is the saved one
    top1 = float((next(iter(a.values())).argmax(-1) == y).mean())
    assert 0.1 < top1 < float((next(iter(ok.run(x).values())).argmax(-1) == y).mean())


def saturating_gemm(k: int = 126, n: int = 4):
    """An ONNX Gemm whose quantized weights are -1 (every two's-complement cell at its top level, one weight per
    channel at the scale's top) and inputs that quantize to 255: every row block's partial sum is the largest one,
    M, at every input bit."""
    import onnx
    from onnx import TensorProto, helper

    w = np.full((n, k), -1 / 127, np.float32)
    w[:, 0] = 1.0
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)], "saturate",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n])],
        [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.ones((2, k), np.float32)
    x[1, ::5] = 0.5
    return model, x


@pytest.mark.parametrize("rows_per_op", [63, 64, 21])
def test_a_lossless_adc_at_the_top_code_verifies_exact(rows_per_op):
    """Row blocks whose every partial sum is the largest one, M (63 rows: M = 63 = the 6-bit ADC's top code):
    the program at the lossless resolution equals the integer reference (one code off at the top is not)."""
    import cimc

    model, x = saturating_gemm()
    need = rows_per_op.bit_length()
    r = cimc.compile(model, "sram-cim", spec={"rows_per_op": rows_per_op, "adc_bits": need}, calibration=x,
                     verify=True, inputs=x)
    assert r.verify["reference_exact"], r.verify
    q = next(n for n in r.quantized.nodes if n.op == "q.gemm")
    assert (q.inputs[1].const[:, 1:] == -1).all()


def test_cimc_run_runs_a_program_on_the_chip_of_the_spec(tmp_path):
    """`cimc run program.cimir --target sram-cim --spec-set chip=...`: the program runs on that chip."""
    from cimc.cim import Chip
    from cimc.cli import main
    from cimc.npzio import read_npz

    assert main(["compile", "zoo:lenet_bn", "--target", "sram-cim", "--spec-set", "spare_rows=2", "-o",
                 str(tmp_path / "out")]) == 0
    Chip.sample(16, 130, 128, p_sa0=0.05, seed=2).save(tmp_path / "chip.npz")
    np.savez(tmp_path / "x.npz", **_x("lenet_bn"))
    program = str(tmp_path / "out" / "program.cimir")
    base = ["run", program, "--inputs", str(tmp_path / "x.npz"), "--target", "sram-cim", "--spec-set", "spare_rows=2"]
    assert main([*base, "-o", str(tmp_path / "ideal.npz")]) == 0
    assert main([*base, "--spec-set", f"chip={tmp_path / 'chip.npz'}", "-o", str(tmp_path / "faulty.npz")]) == 0
    ideal, faulty = read_npz(tmp_path / "ideal.npz"), read_npz(tmp_path / "faulty.npz")
    assert not np.array_equal(ideal["logits"], faulty["logits"])


def test_adc_ranges_set_in_a_program_are_checked_and_applied():
    """A pass (an ADC calibration, say) may set each MVM's ranges per array and column group: the program runs
    them; a step that is not a power of two, or ranges of the wrong shape, fail the verifier."""
    from cimc.errors import VerifyError

    _, prog = _compiled("lenet_bn", 8, False, SramCimTarget().with_spec(adc_bits=5))
    x = _x("lenet_bn")
    before = next(iter(run(prog, x).values()))
    tuned = prog.copy()
    for n in (n for n in tuned.nodes if n.op == "sram.mvm"):
        T = len(n.attrs["tiles"])
        n.attrs.update({"adc_step": np.ones((T, 16), np.int64), "adc_offset": np.zeros((T, 16), np.int64),
                        "adc_group": 8})  # step 1 from 0: a 5-bit ADC that clips at 31, finer than the default 4
    verify(tuned)
    after = next(iter(run(tuned, x).values()))
    assert not np.array_equal(before, after)
    bad = tuned.copy()
    node = next(n for n in bad.nodes if n.op == "sram.mvm")
    node.attrs["adc_step"] = node.attrs["adc_step"] * 3
    with pytest.raises(VerifyError, match="a step is a power of two"):
        verify(bad)
    node.attrs["adc_step"] = np.ones((1, 3), np.int64)
    node.attrs["adc_offset"] = np.zeros((1, 3), np.int64)
    with pytest.raises(VerifyError, match=r"need \[1, 16\]|need \[\d+, 16\]"):
        verify(bad)


def test_a_conv_with_run_time_spatial_dims_is_one_clear_error():
    """A Conv whose height and width are symbolic cannot be tiled into whole-layer MVMs: the lowering says
    so and names the layer (it raised a TypeError while multiplying the dims)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import cimc
    from cimc.errors import PassError

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv1")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    calib = np.random.default_rng(1).standard_normal((2, 1, 6, 6)).astype(np.float32)
    with pytest.raises(PassError, match=r"conv1 \(q.conv\) needs a result with static spatial dims"):
        cimc.compile(model, target="sram-cim", calibration=calib, progress=False)


FEW_MACROS = LOSSLESS.with_spec(macros=2, rows=32, cols=32, rows_per_op=32, adc_bits=6)
"""Two small macros: most layers take several rounds, a chain of sram.mvm summing into one another."""


def _counting(monkeypatch):
    """Count the exact products (one per layer and input) and the bit-serial crossbar calls of the runs that
    follow."""
    import cimc.cim.machine as machine
    from cimc.cim.exact import Joined

    calls = {"products": 0, "crossbar": 0}
    product, crossbar = Joined.add_product, machine.convert_planes

    def counted_product(self, *a, **k):
        calls["products"] += 1
        return product(self, *a, **k)

    def counted_crossbar(*a, **k):
        calls["crossbar"] += 1
        return crossbar(*a, **k)

    monkeypatch.setattr(Joined, "add_product", counted_product)
    monkeypatch.setattr(machine, "convert_planes", counted_crossbar)
    return calls


@pytest.mark.parametrize("name", zoo.NAMES)
def test_the_exact_path_gives_the_bits_of_the_bit_level_model(name, monkeypatch):
    """With a lossless ADC the executor sums a layer's rounds as one exact product (the rounds' weights joined,
    the sum handed along the chain of sram.mvm): the same bits as the bit-serial crossbar model
    (``BIT_LEVEL``) and as the integer reference, on two small macros (layers of several rounds)."""
    from cimc.cim.machine import BIT_LEVEL
    from cimc.interpreter import Interpreter

    q, prog = _compiled(name, 8, False, FEW_MACROS)
    mvms = sum(n.op == "sram.mvm" for n in prog.nodes)
    chained = sum(e[5] for e in Interpreter(prog)._plan if e[0].op == "sram.mvm")
    assert chained > 0, "no sram.mvm hands its sums on: the test would not see a chain"
    x = {k: v[:16] for k, v in _x(name).items()}
    calls = _counting(monkeypatch)
    fast = Interpreter(prog).run(x)
    assert calls == {"products": mvms - chained, "crossbar": 0}  # one product per chain, nothing bit-serial
    slow = Interpreter(prog, machine={BIT_LEVEL: True}).run(x)
    assert calls["products"] == mvms - chained and calls["crossbar"] >= mvms
    watched = Interpreter(prog).run(x, observe=lambda v, a: None)  # every result an array: no sums handed on
    assert calls["products"] == 2 * mvms - chained
    want = run(q, x)
    for k in want:
        assert np.array_equal(fast[k], slow[k]) and np.array_equal(fast[k], want[k]), f"{name}: output {k} differs"
        assert np.array_equal(watched[k], want[k]), f"{name}: output {k} differs when observed"


def _float_products(monkeypatch):
    """The exact products of the runs that follow in float (:mod:`cimc.cim.exact`'s own path), as on a machine
    without an exact integer kernel."""
    from cimc.cim import igemm

    monkeypatch.setattr(igemm, "kernel", lambda: None)


def _integer_calls(monkeypatch, signed: bool | None = None) -> list[int]:
    """Count the integer kernel's products in the runs that follow (skip where this machine has no exact one);
    ``signed``: that kernel kind (u8 x s8 or u8 x u8, :mod:`cimc.cim.igemm`) rather than the one the machine
    chose (skip where it is not exact here)."""
    from cimc.cim import igemm

    k = igemm.kernel() if signed is None else igemm.Kernel(signed)
    if k is None or (signed is not None and not igemm.exact(k)):
        kind = "u8 x s8 or u8 x u8" if signed is None else "u8 x s8" if signed else "u8 x u8"
        pytest.skip(f"onnxruntime gives no exact {kind} product on this machine")
    calls = [0]

    def counted():
        calls[0] += 1
        return k

    monkeypatch.setattr(igemm, "kernel", counted)
    return calls


@pytest.mark.parametrize("path", ["float", "integer"])
def test_the_exact_product_keeps_float32_within_its_proven_bound(path, monkeypatch):
    """Large positive weights over 2048 rows of large inputs sum past 2**25, beyond what float32 holds exactly:
    the exact path splits K where the bound ``max(x) * ||W[:, c]||_1`` says, and gives the int64 product and the
    bit-level model's bits. One float32 product over all of K (the bound ignored) cannot: some of the sums are
    not float32 numbers. The integer kernel, where the machine has one, needs no bound and gives the same bits."""
    from cimc.cim.exact import Joined
    from cimc.cim.machine import BIT_LEVEL
    from cimc.interpreter import Interpreter
    from cimc.ir.core import Graph
    from cimc.ir.types import DType, QuantParams, TensorType

    K, rng = 2048, np.random.default_rng(6)
    g = Graph("gemm")
    x = g.add_input("x", TensorType(DType.u8, (3, K), QuantParams((0.1,), (0,), 8)))
    w = rng.integers(-128, 128, (64, K)).astype(np.int8)
    w[:32] = rng.integers(100, 128, (32, K))
    y = g.add_node("q.gemm", [x, g.add_constant(w, "w")], {"x_zero_point": 0}, name="fc").outputs[0]
    g.outputs.append(y)
    PassManager("tile,lower-sram-cim", PassContext(target=LOSSLESS, verify_each=True)).run(g)
    assert sum(n.op == "sram.mvm" for n in g.nodes) == 4  # 64 tiles on 16 macros: a chain of four rounds
    xs = {"x": np.full((3, K), 255, np.uint8)}
    xs["x"][1:] = rng.integers(128, 256, (2, K))
    want = xs["x"].astype(np.int64) @ w.T.astype(np.int64)
    assert (want.astype(np.float32).astype(np.int64) != want).any()  # sums that float32 cannot hold
    integer = _integer_calls(monkeypatch) if path == "integer" else _float_products(monkeypatch)
    calls = _counting(monkeypatch)
    got = next(iter(Interpreter(g).run(xs).values()))
    slow = next(iter(Interpreter(g, machine={BIT_LEVEL: True}).run(xs).values()))
    assert calls["products"] == 1 and np.array_equal(got, want) and np.array_equal(slow, want)
    if integer is not None:
        assert integer[0] == 1
        return
    monkeypatch.setattr(Joined, "plan", lambda self, xmax: ("f32", [(0, self.K)]))  # the bound ignored
    assert not np.array_equal(next(iter(Interpreter(g).run(xs).values())), want)


def test_inputs_beyond_act_bits_run_as_the_bit_level_model_does():
    """The bit-serial inputs are ``act_bits`` wide: an input value beyond them loses its high bits on the arrays.
    The exact path does not take such inputs, so the program still gives the bit-level model's bits."""
    from cimc.cim.machine import BIT_LEVEL
    from cimc.interpreter import Interpreter
    from cimc.ir.core import Graph
    from cimc.ir.types import DType, QuantParams, TensorType

    g = Graph("gemm")
    x = g.add_input("x", TensorType(DType.u8, (4, 200), QuantParams((0.1,), (0,), 4)))
    w = np.random.default_rng(8).integers(-128, 128, (40, 200)).astype(np.int8)
    y = g.add_node("q.gemm", [x, g.add_constant(w, "w")], {"x_zero_point": 0}, name="fc").outputs[0]
    g.outputs.append(y)
    PassManager("tile,lower-sram-cim", PassContext(target=LOSSLESS, verify_each=True)).run(g)
    assert {n.attrs["act_bits"] for n in g.nodes if n.op == "sram.mvm"} == {4}
    low = np.random.default_rng(9).integers(0, 16, (4, 200)).astype(np.uint8)
    for xv, exact in ((low, True), (low | 0x30, False)):  # high bits set: the arrays drop them
        fast = next(iter(Interpreter(g).run({"x": xv}).values()))
        slow = next(iter(Interpreter(g, machine={BIT_LEVEL: True}).run({"x": xv}).values()))
        assert np.array_equal(fast, slow)
        assert np.array_equal(fast, xv.astype(np.int64) @ w.T.astype(np.int64)) == exact


def test_an_mvm_reads_each_distinct_input_row_span_once():
    """The input rows of an MVM cross the interconnect once per position, however many of its tiles (column
    ranges of one row span) read them: ``P * rows`` bytes at ``noc_pj_per_byte``, ``rows`` summed over the
    distinct ``(group, k0, k1)`` spans of its tiles."""
    import cimc

    c = cimc.compile("zoo:resnet_tiny", target="sram-cim", progress=False)
    s, shared = c.target.spec, 0
    for n in c.program.nodes:
        if n.op != "sram.mvm" or n.attrs.get("layout") != "cols":
            continue
        tiles = list(n.attrs["tiles"])
        spans = {(t.group, t.k0, t.k1) for t in tiles}
        shared += len(spans) < len(tiles)
        positions = n.outputs[0].type.shape[-1]
        want = positions * sum(k1 - k0 for _, k0, k1 in spans) * s.noc_pj_per_byte
        assert c.target.op_cost(n).parts["interconnect"] == pytest.approx(want, rel=1e-12)
    assert shared  # some ops hold several tiles of one row span: the case this checks


@pytest.mark.parametrize("cols", [False, True], ids=["rows", "cols"])
def test_a_round_joins_only_the_box_its_windows_cover(cols):
    """A round holding a part of a large matrix joins a matrix of that part alone (a layer spread over many
    rounds would otherwise keep the whole matrix per round), and its exact sum is the product of the part: zeros
    in the other channels without an accumulator, the accumulator unchanged there with one."""
    from cimc.cim.exact import ExactSum, Round, join

    rng = np.random.default_rng(11)
    K, C, N, L = 900, 70, 2, 5
    x = rng.integers(0, 256, (1, N, K, L) if cols else (N, K)).astype(np.uint8)
    w = rng.integers(-128, 128, (K, C)).astype(np.int64)
    parts = {(0, 300, 428, 20, 36, 0, 8): w[300:428, 20:36], (0, 428, 460, 20, 30, 0, 8): w[428:460, 20:30]}
    r = Round(x, cols, ("box",), (), lambda: parts)
    joined = join([r], 1, C)
    assert joined.w.shape == ((1, 16, 160) if cols else (160, 16)) and (joined.k0, joined.c0) == (300, 20)
    part = np.zeros_like(w)
    for (_, k0, k1, c0, c1, _, _), wt in parts.items():
        part[k0:k1, c0:c1] += wt
    product = (np.einsum("nkl,kc->ncl", x[0].astype(np.int64), part) if cols
               else x.astype(np.int64) @ part).astype(np.int32)
    shape = (N, C, L) if cols else (N, C)
    base = rng.integers(-1000, 1000, shape).astype(np.int32)
    for start, want in ((None, product), (base, base + product)):
        s = ExactSum(shape, start, False, lambda rs: join(rs, 1, C))
        s.add(r)
        assert np.array_equal(s.value(), want)


@pytest.mark.parametrize("signed", [True, False], ids=["u8s8", "u8u8"])
@pytest.mark.parametrize("cols", [False, True], ids=["rows", "cols"])
def test_the_integer_kernel_gives_the_int32_sum(cols, signed, monkeypatch):
    """The integer kernel's product (u8 inputs, int8 weights; layout cols through the inputs' bytes flipped to
    int8 and both zero points) at the extremes of both ranges and at random, over the box of a round, alone and
    added to an accumulator whose sums wrap int32: int64 arithmetic wrapped like C. A weight of 128 (windows
    that overlap summed past int8) takes the float path, with the same bits."""
    from cimc.cim.exact import ExactSum, Round, join

    rng = np.random.default_rng(12)
    K, C, N, L = 700, 40, 3, 9
    x = rng.integers(0, 256, (1, N, K, L) if cols else (N * L, K)).astype(np.uint8)
    x[(0, 0) if cols else slice(0, 2)] = 255  # positions of all 255 inputs
    w = rng.integers(-128, 128, (K, C)).astype(np.int64)
    w[:, :3], w[:, 3:6] = -128, 127
    base = rng.integers(-2**31, 2**31, (N, C, L) if cols else (N * L, C)).astype(np.int32)
    for top in (127, 128):
        w[60, 7] = top
        parts = {(0, 50, K, 2, C, 0, 8): w[50:, 2:]}
        r = Round(x, cols, ("int", top), (), lambda parts=parts: parts)
        part = np.zeros_like(w)
        part[50:, 2:] = w[50:, 2:]
        product = (np.einsum("nkl,kc->ncl", x[0].astype(np.int64), part) if cols
                   else x.astype(np.int64) @ part)
        assert np.abs(product).max() > 2**24  # beyond float32's integers: no luck of small sums
        calls = _integer_calls(monkeypatch, signed)
        for start in (None, base):
            want = product if start is None else start.astype(np.int64) + product
            s = ExactSum(base.shape, start, False, lambda rs: join(rs, 1, C))
            s.add(r)
            kept = None if start is None else start.copy()
            got = s.value()
            assert np.array_equal(got, ((want + 2**31) % 2**32 - 2**31).astype(np.int32)), (top, start is None)
            assert kept is None or np.array_equal(start, kept)
        assert calls[0] == (2 if top == 127 else 0)


def test_the_integer_kernel_is_checked_before_use():
    """:func:`cimc.cim.igemm.exact` passes this machine's kernel and fails one that adds two u8 x s8 products in
    a saturating int16 (x86's ``vpmaddubsw``, onnxruntime's U8S8 kernels without VNNI), one whose pairs saturate
    only at the corners of the ranges (random operands do not find it), and one that clips its sums to int32
    instead of wrapping: the exact path does not use such a kernel."""
    from cimc.cim import igemm

    k = igemm.kernel()
    if k is not None:
        assert igemm.exact(k)

    def paired(a, b, a0, b0, out=None, top=2**15 - 1):
        a, b = a.astype(np.int64), b.astype(np.int64)
        K = a.shape[-1]
        if K % 2:
            a = np.concatenate([a, np.zeros((*a.shape[:-1], 1), np.int64)], -1)
            b = np.concatenate([b, np.zeros((*b.shape[:-2], 1, b.shape[-1]), np.int64)], -2)
        ab = np.zeros((*np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1]), np.int64)
        for j in range(0, a.shape[-1], 2):
            pair = a[..., :, j, None] * b[..., None, j, :] + a[..., :, j + 1, None] * b[..., None, j + 1, :]
            ab += np.clip(pair, -top - 1, top)
        full = ab - a0 * b.sum(-2)[..., None, :] - b0 * a.sum(-1)[..., :, None] + K * a0 * b0
        return ((full + 2**31) % 2**32 - 2**31).astype(np.int32)

    def clipping(a, b, a0, b0, out=None):
        full = np.matmul(a.astype(np.int64) - a0, b.astype(np.int64) - b0)
        return np.clip(full, -2**31, 2**31 - 1).astype(np.int32)

    assert not igemm.exact(paired) and not igemm.exact(clipping)
    assert not igemm.exact(functools.partial(paired, top=65_000))  # 255 * 128 * 2 = 65,280 only at a corner


def test_a_u8_u8_kernel_multiplies_the_signed_operand_through_its_flipped_bytes():
    """onnxruntime's u8 x u8 kernels widen both operands before multiplying (no saturating pairs on any x86 CPU):
    :class:`cimc.cim.igemm.Kernel` with ``signed=False`` gives ``(a - a0) @ (b - b0)`` for int8 ``b`` from its
    bytes with the sign bit flipped (``b + 128``) and ``b0 + 128``, passes :func:`~cimc.cim.igemm.exact`, and its
    :meth:`~cimc.cim.igemm.Kernel.raw` takes the u8 operand itself. The same session without the flip fails the
    probe."""
    from cimc.cim import igemm

    k = igemm.Kernel(signed=False)
    assert not k.signed and igemm.exact(k)
    rng = np.random.default_rng(13)
    a = rng.integers(0, 256, (5, 301), dtype=np.uint8)
    b = rng.integers(-128, 128, (301, 7), dtype=np.int8)
    for a0, b0 in ((0, 0), (128, -128)):
        want = (a.astype(np.int64) - a0) @ (b.astype(np.int64) - b0)
        assert np.array_equal(k(a, b, a0, b0), want)
        assert np.array_equal(k.raw(a, (b.astype(np.int16) + 128).astype(np.uint8), a0, b0 + 128), want)

    def unflipped(a, b, a0, b0, out=None):
        return k.raw(a, np.asarray(b, np.int8).view(np.uint8), a0, b0 + 128, out)

    assert not igemm.exact(unflipped)


def _forked_kernel(parent: int) -> tuple[bool, bool, bool]:
    """(In a forked child.) Whether the child starts without a kernel, builds one that is not the parent's
    (``parent``: its id), and that one multiplies exactly."""
    from cimc.cim import igemm

    fresh = not igemm._KERNEL
    k = igemm.kernel()
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    b = np.arange(-4, 4, dtype=np.int8).reshape(4, 2)
    return fresh, id(k) != parent, k is not None and np.array_equal(k(a, b, 0, 0), a.astype(np.int64) @ b)


def test_a_forked_child_builds_its_own_integer_kernel():
    """Monte Carlo workers start by fork: a child does not use the onnxruntime session its parent built (its
    threads stayed in the parent) but builds its own, which multiplies exactly."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from cimc.cim import igemm

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    k = igemm.kernel()
    if k is None:
        pytest.skip("onnxruntime gives no exact u8 x s8 or u8 x u8 product on this machine")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        assert pool.submit(_forked_kernel, id(k)).result(timeout=120) == (True, True, True)
    assert igemm.kernel() is k


def test_u8s8_saturates_is_the_probe_of_the_u8s8_session():
    """:func:`cimc.cim.igemm.u8s8_saturates` (which tells the onnxruntime oracle to avoid those kernels) says what
    :func:`~cimc.cim.igemm.exact` finds of a fresh u8 x s8 session, and the chosen kernel is u8 x s8 exactly when it
    does not saturate."""
    from cimc.cim import igemm

    try:
        fresh = igemm.Kernel(signed=True)
    except Exception:
        pytest.skip("onnxruntime cannot build a MatMulInteger session here")
    saturates = not igemm.exact(fresh)
    assert igemm.u8s8_saturates() is saturates
    k = igemm.kernel()
    assert k is not None and k.signed is not saturates


@pytest.mark.parametrize("L", [7, 300], ids=["images-side-by-side", "image-by-image"])
def test_an_exact_sum_in_layout_cols_is_the_int32_sum(L, monkeypatch):
    """Two rounds of grouped weights over K chunks (sums past 2**25), added to a starting accumulator whose sums
    wrap int32: the exact sum is int64 arithmetic wrapped like C, the accumulator given is left as it was, and
    the same sum without one is the product alone. One float32 product over all of K is not."""
    from cimc.cim.exact import ExactSum, Joined, Round, join

    rng = np.random.default_rng(10)
    G, N, K, per = 2, 3, 1500, 5
    x = rng.integers(0, 256, (G, N, K, L)).astype(np.uint8)
    x[:, 0] = 255
    w = rng.integers(100, 128, (G, K, per)).astype(np.int64)
    rounds = [Round(x, True, (k0,), (), lambda k0=k0, k1=k1: {(g, k0, k1, 0, per, 0, 8): w[g, k0:k1]
                                                               for g in range(G)}) for k0, k1 in ((0, 700), (700, K))]
    product = np.einsum("gnkl,gkc->ngcl", x.astype(np.int64), w).reshape(N, G * per, L)
    assert (product.astype(np.float32).astype(np.int64) != product).any()  # sums that float32 cannot hold
    assert len(join(rounds, G, G * per).plan(255)[1]) > 1
    base = rng.integers(-2**31, 2**31, (N, G * per, L)).astype(np.int32)
    kept = base.copy()

    def total(start):
        s = ExactSum((N, G * per, L), start, False, lambda rs: join(rs, G, G * per))
        for r in rounds:
            s.add(r)
        return s.value()

    wrapped = ((base.astype(np.int64) + product + 2**31) % 2**32 - 2**31).astype(np.int32)
    assert (base.astype(np.int64) + product > 2**31 - 1).any()
    assert np.array_equal(total(base), wrapped) and np.array_equal(base, kept)
    assert np.array_equal(total(None), product.astype(np.int32))
    monkeypatch.setattr(Joined, "plan", lambda self, xmax: ("f32", [(0, self.K)]))  # the bound ignored
    assert not np.array_equal(total(None), product.astype(np.int32))
