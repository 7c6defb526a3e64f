"""map-errors: its cost against slow loops and brute force, exactness of any placement it picks, the error it
removes on real models with stuck cells, determinism, the chip-file round trip and bad input."""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import cimc
from cimc import zoo
from cimc.cim.chip import Chip
from cimc.cim.device import CellDevice
from cimc.cim.encoding import Encoding, decode_cells
from cimc.cli import main
from cimc.interpreter import run
from cimc.ir.core import Graph
from cimc.ir.types import DType, QuantParams, TensorType
from cimc.montecarlo import run_seed
from cimc.passes import map_errors
from cimc.passes.calibrate_adc import CalibrateAdcPass
from cimc.passes.map_errors import MapErrorsPass, _error, _Errs, _recode, _Tile, _unique_ints, error_maps
from cimc.passmanager import PassContext, PassManager
from cimc.report import report_text
from cimc.targets import get_target
from cimc.targets.sram_cim import SramCimTarget
from cimc.text import print_graph
from cimc.tiling import place_randomly, plan, weight_matrix


def _faulty(p: float, **spec) -> SramCimTarget:
    return SramCimTarget().with_spec(p_sa0=p * 5 / 6, p_sa1=p / 6, spare_rows=2, **spec)


def test_error_maps_are_what_the_device_stores():
    chip = Chip.sample(2, 6, 5, p_sa0=0.2, p_sa1=0.2, seed=4)
    E = error_maps(CellDevice(chip, 2), 1, 2, (6, 5))
    stuck = chip.stuck[1]
    assert np.array_equal(E[0], np.where(stuck == 2, 1.0, 0.0))  # writing 0: an SA1 cell reads 1
    assert np.array_equal(E[1], np.where(stuck == 1, -1.0, 0.0))  # writing 1: an SA0 cell reads 0


def _random_tile(rng, k=4, C=3, R=6, P=5, levels=2):
    img = rng.integers(0, levels, (k, C))
    sig2 = rng.uniform(1, 10, C)
    w = np.stack([(img == lv) * sig2[None, :] for lv in range(levels)]).astype(np.float64)
    E2 = rng.uniform(0, 1, (levels, R, P)) * (rng.random((levels, R, P)) < 0.4)
    return _Tile(None, 0, w, rng.uniform(0.5, 2, k), img, np.sqrt(sig2), 1), img, sig2, E2


def test_cost_is_the_slow_sum_and_row_assignment_is_the_best_permutation():
    rng = np.random.default_rng(0)
    for _ in range(10):
        t, img, sig2, E2 = _random_tile(rng)
        rows, cols = rng.permutation(6)[:4], rng.permutation(5)[:3]
        slow = sum(t.m2[i] * sig2[c] * E2[img[i, c], rows[i], cols[c]] for i in range(4) for c in range(3))
        assert t.cost(E2, rows, cols) == pytest.approx(slow)
        # rows by assignment given the columns: no injective choice of 4 of the 6 rows is better
        best = min(t.cost(E2, np.asarray(p), cols) for p in itertools.permutations(range(6), 4))
        placed = MapErrorsPass(iterations=0)._place(t, E2, rows, cols)
        assert placed[3] == pytest.approx(min(best, t.cost(E2, rows, cols)))
        # and the alternation never ends worse than it began, with or without complemented columns
        for flips in (False, True):
            assert MapErrorsPass(iterations=3, flips=flips)._place(t, E2, rows, cols)[3] <= placed[3] + 1e-12


@functools.cache
def _compiled(name: str, p: float, mapped: bool, seed: int = 1, options: str = ""):
    t = _faulty(p)
    pipe = t.default_pipeline() + options if mapped else t.default_pipeline().replace(",map-errors", "")
    x, y = zoo.test_set()
    return cimc.compile(f"zoo:{name}", target=t, pipeline=pipe, verify=True, inputs=np.array(x[:200]),
                        labels=np.array(y[:200]), progress=False, seed=seed)


def test_faulty_chip_puts_map_errors_in_the_default_pipeline():
    assert SramCimTarget().default_pipeline().endswith(",tile")
    assert _faulty(0.05).default_pipeline().endswith(",tile,map-errors")


@pytest.mark.parametrize("name", ["resnet_tiny", "mlp"])
def test_map_errors_recovers_top1_and_lowers_the_error(name):
    naive, mapped = _compiled(name, 0.1, False), _compiled(name, 0.1, True)
    q = naive.verify["top1_quantized"]
    lost = q - naive.verify["top1_program"]
    assert lost > 0.02, "10 % stuck cells should cost top-1 without error-aware placement"
    assert q - mapped.verify["top1_program"] <= 0.25 * lost
    assert mapped.verify["quantized_max_abs_error"] < naive.verify["quantized_max_abs_error"]
    rep = mapped.report["passes"]["map-errors"]["layers"]
    assert all(r["expected_sq_error_after"] <= r["expected_sq_error_before"] for r in rep.values())
    assert sum(r["expected_sq_error_after"] for r in rep.values()) < \
        0.1 * sum(r["expected_sq_error_before"] for r in rep.values())


def test_any_placement_it_picks_is_exact_on_an_ideal_chip():
    c = _compiled("resnet_tiny", 0.1, True, options="{closest=false}")
    maps = [n.attrs["tiles"] for n in c.program.nodes if n.op == "sram.mvm"]
    assert any(m.placed for m in maps) and any(f is not None for m in maps for f in m.flip)
    x = {zoo.load("resnet_tiny").input_name: zoo.test_set()[0][:16]}
    want, got = run(c.quantized, x), run(c.program, x, machine={})  # the same program on a chip with no faults
    assert all(np.array_equal(want[k], got[k]) for k in want)


def test_layers_sharing_tiles_read_them_where_they_were_written():
    """The steps of an unrolled LSTM read one weight's tiles (tile.shared): they take its placement, so the program
    is exact on a chip with no faults (placed one by one, a step read cells where another placement wrote them)."""
    t = _faulty(0.05)
    c = cimc.compile("zoo:lstm_rows", target=t, pipeline=t.default_pipeline() + "{closest=false}", progress=False,
                     seed=1)
    maps = [n.attrs["tiles"] for n in c.program.nodes if n.op == "sram.mvm" and "gates" in n.attrs["tiles"].layer]
    assert len(maps) > 1 and maps[0].placed and all(m == maps[0] for m in maps)
    x = {zoo.load("lstm_rows").input_name: zoo.test_set()[0][:16]}
    want, got = run(c.quantized, x), run(c.program, x, machine={})
    assert all(np.array_equal(want[k], got[k]) for k in want)


def _with_weights(graph, layers: dict[str, np.ndarray]):
    """A copy of the quantized ``graph`` whose array layers hold the weights ``[G, K, N]`` given by name."""
    g = graph.copy()
    for n in g.nodes:
        if n.name in layers:
            m, w = layers[n.name], n.inputs[1].const
            full = (m.transpose(0, 2, 1).reshape(w.shape) if n.op == "q.conv" else m[0].T if n.op == "q.gemm"
                    else m[0])
            n.set_input(1, g.add_constant(np.ascontiguousarray(full.astype(w.dtype)), n.name + ".written"))
    return g


def _written(program) -> dict[str, np.ndarray]:
    """Per layer, the weights ``[G, K, N]`` the program's loads write (its packed cells, decoded)."""
    mvm = {n.attrs["cim.layer"]: n.attrs for n in program.nodes if n.op == "sram.mvm"}
    out = {}
    for n in program.nodes:
        if n.op == "sram.load":
            a = mvm[n.attrs["cim.layer"]]
            out[n.attrs["cim.layer"]] = decode_cells(n.inputs[0].const, a["significance"], a["cell_bits"], a["offset"])
    return out


def test_closest_value_writes_exactly_its_recoded_weights():
    """On a chip with no faults, a program with closest-value mapping computes what the quantized graph (the
    integer reference, no arrays) computes with the weights its loads write in place; those differ from the
    model's in as many weights as the report says were recoded, so the program is not the model's on that chip."""
    c = _compiled("resnet_tiny", 0.1, True)
    rep = c.report["passes"]["map-errors"]["layers"]
    written = _written(c.program)
    moved = {n.name: int((written[n.name] != weight_matrix(n)).sum()) for n in c.quantized.nodes if n.name in written}
    assert moved == {k: r["recoded"] for k, r in rep.items()} and sum(moved.values()) > 0
    x = {zoo.load("resnet_tiny").input_name: zoo.test_set()[0][:16]}
    want, got = run(_with_weights(c.quantized, written), x), run(c.program, x, machine={})
    assert all(np.array_equal(want[k], got[k]) for k in want)
    plain = run(c.quantized, x)
    assert not all(np.array_equal(plain[k], got[k]) for k in plain)


def test_flips_and_closest_value_lower_the_error_beyond_placement():
    """Each step lowers the expected error map-errors reports and the largest output error measured."""
    steps = [_compiled("resnet_tiny", 0.1, True, options=o) for o in ("{flips=false closest=false}",
                                                                        "{closest=false}", "")]
    after = [sum(r["expected_sq_error_after"] for r in c.report["passes"]["map-errors"]["layers"].values())
             for c in steps]
    measured = [c.verify["quantized_max_abs_error"] for c in steps]
    assert after[1] < 0.9 * after[0] and after[2] < 0.9 * after[1], after
    assert measured[2] < measured[0], measured


def _slow_recode_check(m, enc, pat, chosen):
    """Brute force: each weight's written value holds, with its cells stuck (``pat[r, g, k, n, s]`` >= 0), a value
    at least as close to it (summed over replicas) as every other value's encoding; the weight itself when it ties."""
    sig = np.asarray(enc.significance)
    lo = -(1 << (enc.bits - 1)) + (enc.kind != "twos-complement")
    values = list(range(lo, 1 << (enc.bits - 1)))

    def err(v, where):
        cells = enc.encode(np.asarray([v]))[0].astype(np.int64)
        total = 0
        for p in pat[(slice(None), *where)]:
            held = np.where(p >= 0, p, cells) @ sig - enc.offset
            total += (held - m[where]) ** 2
        return total

    for where in np.ndindex(m.shape):
        best = min(err(v, where) for v in values)
        assert err(chosen[where], where) == best, (where, chosen[where], best)
        if err(m[where], where) == best:
            assert chosen[where] == m[where]


@pytest.mark.parametrize("kind,bits,cell_bits,reps", [("twos-complement", 4, 1, 1), ("twos-complement", 5, 2, 2),
                                                     ("differential", 4, 1, 1), ("offset", 4, 2, 2)])
def test_recode_is_the_closest_value_by_brute_force(kind, bits, cell_bits, reps):
    rng = np.random.default_rng(bits * 10 + reps)
    enc = Encoding(kind, bits, cell_bits)
    lim = (1 << (bits - 1)) - 1
    m = rng.integers(-lim - (kind == "twos-complement"), lim + 1, (1, 6, 3))
    tm = plan(m, enc, 8, 8 * enc.slices, 0, 2 * reps, reps, spares=(0, 0))
    tm = place_randomly(tm, rng)
    stuck = np.where(rng.random((2 * reps, 8, 8 * enc.slices)) < 0.3,
                     rng.integers(0, 1 << cell_bits, (2 * reps, 8, 8 * enc.slices)), -1).astype(np.int16)
    r = _recode(m, enc, tm, stuck, np.zeros((0, 2), np.int64), 8)
    chosen = m.copy()
    chosen[r[:, 0], r[:, 1], r[:, 2]] = r[:, 3]
    assert len(r) and (chosen[r[:, 0], r[:, 1], r[:, 2]] != m[r[:, 0], r[:, 1], r[:, 2]]).all()
    pat = np.full((reps, *m.shape, enc.slices), -1)
    for t in tm:
        sub = stuck[t.array][np.ix_(t.row_at, t.col_at)].astype(np.int64)
        top = (1 << cell_bits) - 1  # a complemented column's cell stuck at v holds, for the weight, top - v
        sub[:, t.flip] = np.where(sub[:, t.flip] >= 0, top - sub[:, t.flip], -1)
        pat[t.replica, t.group, t.k0:t.k1, t.ch0:t.ch1, t.s0:t.s1] = sub.reshape(t.rows, t.ch1 - t.ch0, -1)
    _slow_recode_check(m, enc, pat, chosen)


def test_a_recode_that_is_not_the_closest_is_caught():
    """The brute-force check above fails for a broken recode: one that takes the farthest value."""
    rng = np.random.default_rng(0)
    enc = Encoding("twos-complement", 4, 1)
    m = rng.integers(-8, 8, (1, 6, 3))
    tm = plan(m, enc, 8, 32, 0, 1)
    stuck = np.where(rng.random((1, 8, 32)) < 0.3, rng.integers(0, 2, (1, 8, 32)), -1).astype(np.int16)
    r = _recode(m, enc, tm, stuck, np.zeros((0, 2), np.int64), 8)
    broken = m.copy()
    broken[r[:, 0], r[:, 1], r[:, 2]] = -r[:, 3] - 1  # another value where it recoded
    pat = np.full((1, *m.shape, enc.slices), -1)
    pat[0, 0, :, :, :] = stuck[0][:6, :12].reshape(6, 3, 4)
    with pytest.raises(AssertionError):
        _slow_recode_check(m, enc, pat, broken)


def test_error_is_the_slow_sum_per_weight():
    rng = np.random.default_rng(3)
    k, ch, S, R, P = 4, 3, 2, 6, 7
    img = rng.integers(0, 2, (k, ch * S))
    sig = np.tile([1.0, -2.0], ch)
    E = rng.normal(size=(2, R, P)) * (rng.random((2, R, P)) < 0.5)
    m2 = rng.uniform(0.5, 2, k)
    t = _Tile(None, 0, np.zeros((2, k, ch * S)), m2, img, sig, S)
    rows, cols = rng.permutation(R)[:k], rng.permutation(P)[:ch * S]
    driven = np.array([True, False, True, True])
    moved = rng.integers(-2, 3, (k, ch))
    for shift in (None, moved):
        slow = sum(m2[i] * (sum(sig[c * S + s] * E[img[i, c * S + s], rows[i], cols[c * S + s]] for s in range(S))
                            + (0 if shift is None else shift[i, c])) ** 2
                   for i in range(k) if driven[i] for c in range(ch))
        assert t.error(E, rows, cols, driven, moved=shift) == pytest.approx(slow)


def test_a_placement_that_seeks_faults_is_caught():
    """The check above fails for a broken pass: one that maximises the error (the negated cost)."""
    t = _faulty(0.1)
    original = _Tile.row_cost
    try:
        _Tile.row_cost = lambda self, E2, col_at: -original(self, E2, col_at)  # type: ignore[method-assign]
        x = zoo.test_set()[0]
        broken = cimc.compile("zoo:mlp", target=t,
                              pipeline=t.default_pipeline() + "{iterations=0 arrays=false flips=false closest=false}",
                              verify=True, inputs=np.array(x[:200]), progress=False, seed=1)
    finally:
        _Tile.row_cost = original  # type: ignore[method-assign]
    naive = _compiled("mlp", 0.1, False)
    assert broken.verify["quantized_max_abs_error"] >= naive.verify["quantized_max_abs_error"]


def test_strategy_none_and_no_faults_keep_the_placement():
    t = _faulty(0.05)
    c = cimc.compile("zoo:mlp", target=t, pipeline=t.default_pipeline() + "{strategy=none}", progress=False)
    assert not any(n.attrs["tiles"].placed for n in c.program.nodes if n.op == "sram.mvm")
    assert c.report["passes"]["map-errors"]["status"].startswith("strategy=none")
    ideal = SramCimTarget()
    c = cimc.compile("zoo:mlp", target=ideal, pipeline=ideal.default_pipeline() + ",map-errors", progress=False)
    assert "no faults" in c.report["passes"]["map-errors"]["status"]


def test_deterministic_and_chip_file_round_trip(tmp_path):
    t = _faulty(0.05)
    a, b = (cimc.compile("zoo:mlp", target=t, progress=False, seed=3) for _ in range(2))
    assert print_graph(a.program) == print_graph(b.program)
    path = tmp_path / "chip.npz"
    a.target.chip(3).save(path)
    t = SramCimTarget().with_spec(chip=str(path), spare_rows=2)
    c = cimc.compile("zoo:mlp", target=t, progress=False, seed=3)
    assert "map-errors" in c.pipeline
    assert print_graph(c.program) == print_graph(a.program)
    assert json.dumps(c.report["passes"]) == json.dumps(a.report["passes"])


_PROGRAM_HASH = """
import hashlib, numpy as np, cimc
from cimc import zoo
from cimc.targets import get_target
from cimc.text import print_graph
t = get_target("memristor")().with_spec(p_sa0=0.05 * 5 / 6, p_sa1=0.05 / 6, spare_rows=2)
c = cimc.compile("zoo:resnet_tiny", target=t, calibration=np.array(zoo.test_set()[0][:8]), progress=False, seed=3)
print(hashlib.sha256(print_graph(c.program).encode()).hexdigest())
"""


def test_the_program_does_not_depend_on_the_blas_threads(tmp_path):
    """The placement's scores are BLAS products: with one thread and with two they must give the same program (in
    single precision they did not, and a score's last bit decided between equal assignments). The child runs in an
    empty folder: ``python -c`` puts its folder first on the path, and the checkout's ``cimc/`` is not the package
    as installed (``passes/``, ``targets/`` and the zoo are mapped into it by the install)."""
    out = []
    for n in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n}
        r = subprocess.run([sys.executable, "-c", _PROGRAM_HASH], env=env, capture_output=True, text=True,
                           timeout=900, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        out.append(r.stdout.split()[-1])
    assert out[0] == out[1]


def test_bad_chip_and_rates_are_one_clear_line(tmp_path, capsys):
    path = tmp_path / "small.npz"
    Chip.sample(16, 64, 64, p_sa0=0.1, seed=0).save(path)  # a chip for another array size
    out = tmp_path / "out"
    assert main(["compile", "zoo:mlp", "--target", "sram-cim", "--spec-set", f"chip={path}", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "64 x 64" in err and "128" in err, err
    assert not out.exists()
    for bad in ("p_sa0=1.5", "p_sa1=-0.1"):
        assert main(["compile", "zoo:mlp", "--target", "sram-cim", "--spec-set", bad, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "out of range" in err


def test_memristor_runs_map_errors_and_calibrate_adc_where_they_apply():
    """memristor: map-errors in the default pipeline when its chip's cells are fixed before it runs (stuck cells,
    programming variation, drift), not on the ideal crossbar nor for read noise alone; calibrate-adc after the
    lowering; one ADC per cols_per_adc columns."""
    m = get_target("memristor")
    assert m.program_passes == (CalibrateAdcPass,)
    assert m().with_spec(cols_per_adc=8).capabilities().cols_per_adc == 8
    quiet = {"noise": False, "p_sa0": 0.0, "p_sa1": 0.0}
    assert "map-errors" in m().default_pipeline()  # the default device: variation and stuck cells
    for spec, mapped in (({"ideal": True}, False), (quiet, False), ({**quiet, "p_sa0": 0.01}, True),
                         ({"p_sa0": 0.0, "p_sa1": 0.0, "read_noise": 0.0}, True),  # programming variation
                         ({"p_sa0": 0.0, "p_sa1": 0.0, "prog_scale": 0.0}, False)):  # read noise alone
        assert ("map-errors" in m().with_spec(**spec).default_pipeline()) == mapped, spec


def test_monte_carlo_compiles_each_chip_and_compares_naive_and_mapped():
    """--mc with map-errors: chip i runs the program compiled for chip i (the same as compiling with chip=i), and
    the report has each chip's program without map-errors beside it; map-errors recovers what stuck cells cost."""
    t = get_target("memristor")().with_spec(noise=False, p_sa0=0.05 * 5 / 6, p_sa1=0.05 / 6, spare_rows=2)
    x, y = zoo.test_set()
    c = cimc.compile("zoo:mlp", target=t, verify=True, inputs=x[:200], labels=y[:200], mc=3, workers=1, seed=2,
                     progress=False)
    mc, naive = c.verify["mc"], c.verify["mc_naive"]
    assert mc["compiled_per_chip"] and naive["n"] == mc["n"] == 3
    q = c.verify["top1_quantized"]
    assert q - mc["top1_mean"] <= 0.1 * (q - naive["top1_mean"]) and q - naive["top1_mean"] > 0.02
    assert mc["rel_error_mean"] < 0.1 * naive["rel_error_mean"]
    for i in (0, 1):  # chip i's figures are those of the program compiled for chip i alone, run on chip i
        own = cimc.compile("zoo:mlp", target=t, seed=2, chip=i, progress=False)
        out = next(iter(run(own.program, {own.program.inputs[0].name: x[:200]}, seed=run_seed(2, i),
                            machine=t.machine(2, i)).values()))
        assert float((out.argmax(-1) == y[:200]).mean()) == mc["chips"][i]["top1"]
    text = report_text(c)
    assert "naive (no error-aware mapping)" in text and "each chip's program compiled for it" in text
    with pytest.raises(cimc.errors.InputError, match="give mc or chip, not both"):
        cimc.compile("zoo:mlp", target=t, verify=True, mc=2, chip=1, progress=False)


def test_no_layer_on_the_arrays_is_nothing_to_place_and_an_untiled_one_an_error():
    t = _faulty(0.05)
    q = Graph("gemm")
    x = q.add_input("x", TensorType(DType.u8, ("n", 8), QuantParams((0.1,), (3,), 8)))
    w = q.add_constant(np.ones((4, 8), np.int8), "w")
    q.outputs.append(q.add_node("q.gemm", [x, w], {"x_zero_point": 3}, name="fc").outputs[0])
    with pytest.raises(cimc.errors.PassError, match=r"q.gemm 'fc' has no tile map\): run 'tile' before it"):
        PassManager("map-errors", PassContext(target=t)).run(q)
    g = Graph("empty")
    x = g.add_input("x", TensorType(DType.f32, (1, 4)))
    g.outputs.append(g.add_node("Relu", [x], {}).outputs[0])
    assert not PassManager("map-errors", PassContext(target=t)).run(g).modified
    assert "nothing to place" in g.metadata["report.map-errors"]


def test_error_from_the_erring_cells_alone_is_the_same_bits():
    """With whole-number error maps a tile's error is summed over the cells that err alone: the same float as over
    all of them, with complemented columns, a recoding's moves and undriven rows."""
    rng = np.random.default_rng(5)
    A, levels, R, P, k, ch, S = 3, 4, 12, 11, 9, 4, 2
    E = (rng.integers(-3, 4, (A, levels, R, P)) * (rng.random((A, 1, R, P)) < 0.3)).astype(np.float32)
    errs = _Errs.of(E)
    assert errs is not None and _Errs.of(E + np.float32(0.25)) is None
    for _ in range(30):
        a = int(rng.integers(A))
        img = rng.integers(0, levels, (k, ch * S)).astype(np.uint8)
        sig = np.tile([1.0, 4.0], ch) * rng.choice([-1.0, 1.0], ch * S)
        m2 = rng.uniform(0.1, 3, k)
        rows, cols = rng.permutation(R)[:k], rng.permutation(P)[:ch * S]
        driven = rng.random(k) < 0.8
        moved = rng.integers(-2, 3, (k, ch)) * (rng.random((k, ch)) < 0.2) if rng.random() < 0.5 else None
        flip = np.flatnonzero(rng.random(ch * S) < 0.3)
        want = _Tile(None, 0, np.zeros(0), m2, img, sig, S).error(E[a], rows, cols, driven, None, moved, flip)
        assert _error(E, errs, a, img, sig, S, m2, rows, cols, driven, moved, flip) == want
        assert _error(E, None, a, img, sig, S, m2, rows, cols, driven, moved, flip) == want
        memo: dict = {}
        assert _error(E, errs, a, img, sig, S, m2, rows, cols, driven, moved, flip, memo=memo) == want
        assert _error(E, errs, a, img, sig, S, m2, rows, cols, driven, moved, flip, memo=memo) == want and memo


def test_errors_of_many_tiles_are_each_tiles_error_to_the_bit():
    """The report's errors computed a batch of tiles at a time (error maps that are not whole numbers, as with
    programming variation) are :func:`_error`'s of each tile, bit for bit: tiles of several arrays, shapes and slice
    counts, with complemented columns, a recoding's moves and undriven rows, some of them alike (the memo)."""
    rng = np.random.default_rng(7)
    A, levels, R, P = 3, 4, 12, 20
    E = (rng.normal(size=(A, levels, R, P)) * rng.uniform(0.01, 3, (A, 1, R, P))).astype(np.float32)
    assert _Errs.of(E) is None
    jobs = []
    for _ in range(150):
        k, ch, S = int(rng.integers(3, 10)), int(rng.integers(1, 3)), int(rng.choice([1, 2, 4, 8]))
        S = min(S, P // ch)
        a = int(rng.integers(A))
        img = rng.integers(0, levels, (k, ch * S)).astype(np.uint8)
        sig = np.tile(2.0 ** np.arange(S), ch) * rng.choice([-1.0, 1.0], ch * S)
        m2 = rng.uniform(0.1, 3, k)
        rows, cols = rng.permutation(R)[:k], rng.permutation(P)[:ch * S]
        driven = rng.random(k) < 0.8
        moved = rng.integers(-2, 3, (k, ch)) if rng.random() < 0.5 else None
        flip = np.flatnonzero(rng.random(ch * S) < 0.3) if rng.random() < 0.7 else None
        jobs.append((a, img, sig, S, m2, rows, cols, driven, moved, flip))
    jobs += jobs[:20]  # tiles alike
    want = [_error(E, None, *job) for job in jobs]
    memo: dict = {}
    got = map_errors._errors(E, None, jobs, memo)
    assert [float(x).hex() for x in got] == [float(x).hex() for x in want]
    assert memo and map_errors._errors(E, None, jobs, memo) == got


def test_unique_ints_is_np_unique():
    rng = np.random.default_rng(0)
    for size in (1, 50, 1 << 25):
        x = rng.integers(0, size, 200)
        u, inv = np.unique(x, return_inverse=True)
        got = _unique_ints(x, size)
        assert np.array_equal(got[0], u) and np.array_equal(got[1], inv.reshape(-1))


def _place_every_step(p: MapErrorsPass, t, E2, row_at, col_at, pairs=0):
    """The alternation of :meth:`MapErrorsPass._place` with every step taken (no stop when steps repeat)."""
    C = len(col_at)
    t.set_flip(np.zeros(C, bool))
    first = t.row_cost(E2, col_at)
    best = (float(first[np.arange(len(row_at)), row_at].sum()), row_at, col_at, np.zeros(C, bool))
    rows, cols = row_at, col_at
    for step in range(1 + 2 * p.iterations):
        if step % 2 == 0:
            c = first if step == 0 else t.row_cost(E2, cols)
            rows = map_errors._assign(c)
            cost = float(c[np.arange(len(rows)), rows].sum())
        else:
            keep, inv = t.col_cost(E2, rows, both=True)
            cols = map_errors._assign(np.minimum(keep, inv))
            gain = keep[np.arange(C), cols] - inv[np.arange(C), cols]
            if pairs:
                g = gain.reshape(-1, 2, pairs // 2).sum(axis=1) > 0
                t.set_flip(np.repeat(g[:, None, :], 2, axis=1).reshape(-1))
            else:
                t.set_flip(gain > 0)
            cost = float(np.where(t.flip[:, None], inv, keep)[np.arange(C), cols].sum())
        if cost < best[0] - 1e-9 * max(1.0, best[0]):
            best = (cost, rows.astype(np.int64), cols.astype(np.int64), t.flip.copy())
    return best[1], best[2], best[3], best[0]


def test_placement_stops_only_where_the_steps_would_repeat(monkeypatch):
    """The alternation stops once a step gives what the step two before gave (or nothing can be gained): the same
    placement as taking every step, on tiles with many equal costs (rows alike) and on random ones."""
    rng = np.random.default_rng(2)
    stopped = 0
    calls: list[int] = []
    original = map_errors._assign
    monkeypatch.setattr(map_errors, "_assign", lambda c: calls.append(1) or original(c))
    for trial in range(40):
        levels, k, C, R, P = 4, 10, 8, 12, 8
        img = np.broadcast_to(rng.integers(0, levels, C), (k, C)).copy() if trial % 2 else \
            rng.integers(0, levels, (k, C)).astype(np.uint8)
        sig = np.tile([1.0, 4.0, -1.0, -4.0], C // 4)
        m2 = np.repeat(rng.uniform(0.5, 2, k // 2), 2)
        E2 = (rng.integers(0, 4, (levels, R, P)) * (rng.random((levels, R, P)) < 0.3)).astype(np.float64) ** 2
        if trial % 4 == 3:
            E2 *= 0  # nothing to avoid
        t = map_errors._with_weights(_Tile(None, 0, np.zeros(0), m2, img, sig, 4), 2)
        u = map_errors._with_weights(_Tile(None, 0, np.zeros(0), m2, img, sig, 4), 2)
        p = MapErrorsPass(iterations=int(rng.integers(1, 6)))
        calls.clear()
        got = p._place(t, E2, np.arange(k), np.arange(C), 4)
        n = len(calls)
        want = _place_every_step(p, u, E2, np.arange(k), np.arange(C), 4)
        stopped += n < len(calls) - n
        assert all(np.array_equal(x, y) for x, y in zip(got[:3], want[:3], strict=True)) and got[3] == want[3]
    assert stopped >= 10


def _constant_matmul(path) -> None:
    """A MatMul whose weights are all alike (300 x 64): its tiles' levels are alike, their rows' inputs are not."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((300, 64), 0.05, np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "alike",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 300])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_tiles_alike_are_placed_once_with_the_same_result(tmp_path, monkeypatch):
    """Tiles alike (the same levels, inputs, array and starting placement) share one placement and one error: the
    program is the one that placing each tile on its own gives, in fewer placements."""
    path = tmp_path / "alike.onnx"
    _constant_matmul(path)
    t = get_target("memristor")().with_spec(p_sa0=0.1 * 5 / 6, p_sa1=0.1 / 6, spare_rows=2, crossbars=2)
    x = np.random.default_rng(0).uniform(0, 1, (4, 300)).astype(np.float32)
    x[:, 150:] *= 3  # the second row tile's inputs are larger: its placements are its own

    class Forgetful(dict):
        def get(self, key, default=None):
            return default

    calls = []
    place = MapErrorsPass._place
    monkeypatch.setattr(MapErrorsPass, "_place", lambda self, *a: calls.append(1) or place(self, *a))
    shared = cimc.compile(path, target=t, calibration=x, progress=False, seed=1)
    n_shared = len(calls)
    layer = MapErrorsPass._place_layer
    monkeypatch.setattr(MapErrorsPass, "_place_layer", lambda self, node, m2, E, E2, perm, stuck, memos, *rest:
                        layer(self, node, m2, E, E2, perm, stuck, (Forgetful(), Forgetful()), *rest))
    alone = cimc.compile(path, target=t, calibration=x, progress=False, seed=1)
    assert n_shared < len(calls) - n_shared  # 12 tiles (3 row tiles x 4 channel tiles) on 2 crossbars
    assert print_graph(shared.program) == print_graph(alone.program)


def _variation_and_stuck(rng, levels=4, R=40, P=36, f=None):
    """Squared error maps of programming variation whose sigma is a function of the level (``f[l] * V``, one draw
    per cell), cells stuck at either end (``(s - l)^2``): the device's own form; and a few cells of their own."""
    f = np.array([0.3, 1.0, 2.2, 3.1])[:levels] if f is None else f
    E2 = f[:, None, None] * rng.uniform(0, 0.05, (R, P))[None]
    stuck = rng.random((R, P))
    lv = np.arange(levels, dtype=np.float64)[:, None]
    for s, at in ((0, stuck < 0.08), (levels - 1, stuck > 0.95)):
        E2[:, at] = (s - lv) ** 2
    odd = (rng.integers(0, R, 5), rng.integers(0, P, 5))
    E2[:, odd[0], odd[1]] = rng.uniform(0, 2, (levels, 5))
    return E2


def test_separable_costs_are_the_one_hot_costs():
    """The bounded placement's costs (a product of the variation's factor plus the stuck cells' corrections) are the
    one-hot products' (themselves checked against loops over cells): rows and columns, partial tiles, spares."""
    rng = np.random.default_rng(5)
    for trial in range(12):
        levels = (2, 4)[trial % 2]
        E2 = _variation_and_stuck(rng, levels)
        sep = map_errors._Separable.of(E2)
        assert sep is not None and len(sep.f) == 3 and 0 < len(sep.er) <= 5  # variation, stuck at 0, at the top
        k, C = int(rng.integers(3, 40)), int(rng.integers(2, 36))
        img = rng.integers(0, levels, (k, C)).astype(np.uint8)
        sig = rng.choice([1.0, -2.0, 4.0, -8.0], C)
        m2 = rng.uniform(0.1, 3, k)
        t = map_errors._with_weights(_Tile(None, 0, np.zeros(0), m2, img, sig, 1), int(np.log2(levels)))
        t.set_flip(np.zeros(C, bool))
        rows, cols = rng.permutation(40)[:k], rng.permutation(36)[:C]
        work = map_errors._Work()
        for _ in range(2):  # the scratch arrays reused
            np.testing.assert_allclose(sep.col_cost(img, sig ** 2, m2, rows, work), t.col_cost(E2, rows), rtol=1e-9,
                                       atol=1e-12)
            np.testing.assert_allclose(sep.row_cost(img, sig ** 2, m2, cols, work), t.row_cost(E2, cols), rtol=1e-9,
                                       atol=1e-12)


def test_maps_that_are_not_separable_take_the_one_hot_costs():
    rng = np.random.default_rng(1)
    assert map_errors._Separable.of(rng.uniform(0, 1, (4, 10, 10))) is None  # every cell its own profile
    assert map_errors._Separable.of(np.zeros((4, 10, 10))) is not None  # nothing errs: no exceptions


def _moves(cost, at):
    """Every swap of two rows' columns and every move of a row to a column no row holds, with its new cost."""
    k, n = cost.shape
    for i in range(k):
        for j in range(n):
            b = at.copy()
            if j in at:
                o = int(np.flatnonzero(at == j)[0])
                b[i], b[o] = at[o], at[i]
            else:
                b[i] = j
            yield cost[np.arange(k), b].sum()


def test_exchanges_lower_the_cost_to_a_local_optimum():
    """_descend keeps an injective assignment, never raises the cost, and given rounds enough ends where no single
    swap or move (enumerated here) lowers it."""
    rng = np.random.default_rng(3)
    for trial in range(30):
        k, n = int(rng.integers(2, 9)), 0
        n = k + int(rng.integers(0, 3))
        cost = rng.uniform(0, 1, (k, n)) * (rng.random((k, n)) < 0.7) if trial % 3 else \
            np.outer(rng.uniform(0, 1, k), rng.uniform(0, 1, n))
        start = rng.permutation(n)[:k]
        one = map_errors._descend(cost, start, 1)
        end = map_errors._descend(cost, start, 100)
        for got in (one, end):
            assert len(set(got.tolist())) == k and got.min() >= 0 and got.max() < n
        c0, c1, c2 = (cost[np.arange(k), a].sum() for a in (start, one, end))
        assert c2 <= c1 <= c0
        assert min(_moves(cost, end)) >= c2 - 1e-12


def test_significance_groups_are_each_assigned_at_least_cost():
    """Columns of the largest significance first, each group's assignment the cheapest of the columns left (brute
    force over them); and with costs that scale by the group's significance as much as slices' do, as cheap as
    one assignment of all within a few percent."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        C, P = 6, int(rng.integers(6, 8))
        sig2 = np.repeat([1.0, 16.0, 256.0], 2)[rng.permutation(6)]
        cost = rng.uniform(0, 1, (C, P)) * sig2[:, None]
        got = map_errors._assign_by_significance(cost, sig2)
        assert len(set(got.tolist())) == C
        left = set(range(P))
        for s in (256.0, 16.0, 1.0):
            rows = np.flatnonzero(sig2 == s)
            best = min(cost[rows, list(p)].sum() for p in itertools.permutations(sorted(left), len(rows)))
            assert cost[rows, got[rows]].sum() == pytest.approx(best)
            left -= set(got[rows].tolist())


def test_bounded_effort_places_the_costliest_tiles_fully_and_reports_it():
    """effort=bounded: per layer the full_tiles tiles of largest error by the full search, the others by the bounded
    placement, which the report counts per layer; it removes most of the error (not as much as the full search on
    stuck cells alone: 10 % stuck cells on mlp, 2.1e6 left of 5.7e10, the full search 2.1e5); effort=full places
    every tile fully; the program is the same from run to run."""
    def go(options):
        return _compiled("mlp", 0.1, True, options=options).report["passes"]["map-errors"]
    full, bounded, some = go("{effort=full}"), go("{full_tiles=0}"), go("{full_tiles=1}")
    assert full["effort"] == "full" and bounded["effort"] == "bounded"
    for name, r in full["layers"].items():
        n = r["tiles_full_search"] + r["tiles_bounded"]
        assert r["tiles_bounded"] == 0 and bounded["layers"][name]["tiles_full_search"] == 0
        assert some["layers"][name]["tiles_full_search"] == 1 and some["layers"][name]["tiles_bounded"] == n - 1
        b = bounded["layers"][name]
        assert b["expected_sq_error_after"] < 1e-3 * b["expected_sq_error_before"]  # the full search: 4e-6 and 0
    again = _compiled.__wrapped__("mlp", 0.1, True, 1, "{full_tiles=0}")  # compiled anew
    first = _compiled("mlp", 0.1, True, options="{full_tiles=0}")
    assert json.dumps(again.report["passes"]) == json.dumps(first.report["passes"])
    assert print_graph(again.program) == print_graph(first.program)


def test_full_search_goes_to_the_tiles_of_largest_error():
    assert map_errors._full_search([1.0, 5.0, 5.0, 2.0], 2).tolist() == [False, True, True, False]
    assert map_errors._full_search([3.0, 1.0, 3.0, 3.0], 2).tolist() == [True, False, True, False]  # first of ties
    assert map_errors._full_search([1.0], 4).tolist() == [True]


def test_bounded_placement_never_ends_worse_than_it_began():
    """The bounded placement's cost (as the full search's costs count it: the one-hot products) is at most its
    starting placement's, on random tiles and where the most significant columns' best columns are the ones the
    others need most (assigned one significance at a time, they would cost 100 where the start costs 1)."""
    cc = np.array([[0.0, 1.0], [0.0, 100.0]])
    rows, cols, flips, cost = MapErrorsPass(rounds=0)._place_bounded(lambda r: cc, lambda c: None,
                                                                     np.array([2.0, 1.0]), np.arange(3),
                                                                     np.array([1, 0]))
    assert cols.tolist() == [1, 0] and cost == 1.0 and not flips.any() and rows.tolist() == [0, 1, 2]
    rng = np.random.default_rng(6)
    for trial in range(20):
        t, _, sig2, E2 = _random_tile(rng, k=5, C=4, R=7, P=5, levels=(2, 4)[trial % 2])
        t.set_flip(np.zeros(4, bool))
        start_r, start_c = rng.permutation(7)[:5], rng.permutation(5)[:4]
        r, c, _, cost = MapErrorsPass()._place_bounded(functools.partial(t.col_cost, E2),
                                                       functools.partial(t.row_cost, E2), sig2, start_r, start_c)
        assert cost == pytest.approx(t.cost(E2, r, c))
        assert cost <= t.cost(E2, start_r, start_c) + 1e-12
