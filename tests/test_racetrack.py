"""The racetrack target: programs equal the integer reference, the executor equals a slow reference read by
read (faults and corrupted programs included), shift counts equal a hand count, a wrong shift is a wrong
result, faults are seeded, and bad specs are one clear error."""

from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import onnx
import pytest
import racetrack_reference
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import cimc
from cimc import zoo
from cimc.errors import InputError, PassError
from cimc.interpreter import Interpreter
from cimc.ir.core import Graph
from cimc.target import LOSSY
from cimc.targets.racetrack.ops import commanded_offsets, sweep_steps, sweep_totals

PLACEMENTS = ("naive", "serpentine", "optimized")


def _quantized(bits: int) -> str:
    return f"fold-constants,fuse-batchnorm,quantize{{weight-bits={bits} act-bits=8}}"


@functools.cache
def _compiled(name: str, bits: int = 8, **spec) -> cimc.CompiledModel:
    return cimc.compile(f"zoo:{name}", target="racetrack", pipeline=_quantized(bits), spec=spec or None,
                        progress=False)


def _images(n: int) -> np.ndarray:
    return np.array(zoo.test_set()[0][:n])


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", zoo.NAMES)
def test_programs_equal_the_integer_reference(name, bits, placement):
    """Every zoo model, W8A8 and W4A8, every placement: the program gives the quantized graph's outputs bit for
    bit on the digits test split, and leaves every track where the next inference expects it."""
    c = _compiled(name, bits, placement=placement)
    feed = {c.program.inputs[0].name: _images(120)}
    ours, ref = c.run(feed), Interpreter(c.quantized).run(feed)
    assert ours.keys() == ref.keys()
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and np.array_equal(ours[k], ref[k]), k
    offsets, problems = commanded_offsets(c.program)
    assert not problems and not any(offsets.values())
    assert LOSSY not in c.program.metadata


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", zoo.NAMES)
def test_pruned_programs_equal_the_integer_reference(name, bits):
    """50% structured sparsity: the pruned (zero) weights are placed like any other, and the result is exact."""
    c = cimc.compile(f"zoo:{name}", target="racetrack", progress=False,
                     pipeline=f"fold-constants,fuse-batchnorm,sparsify{{ratio=0.5}},quantize{{weight-bits={bits}}}")
    feed = {c.program.inputs[0].name: _images(60)}
    ours, ref = c.run(feed), Interpreter(c.quantized).run(feed)
    assert all(np.array_equal(ours[k], ref[k]) for k in ref)


@pytest.mark.parametrize("extra", [{}, {"shift_fault_rate": 0.02}, {"shift_fault_rate": 0.05, "guard_interval": 5}],
                         ids=["ideal", "faults", "faults+guard"])
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("name", ["lenet_bn", "mobilenet_tiny", "hybrid_vit"])
def test_executor_equals_the_slow_reference(name, placement, extra):
    """The executor and a reference written read by read from the instructions' definition agree bit for bit,
    with and without seeded shift faults and the guard."""
    c = _compiled(name, 8, placement=placement, **extra)
    feed = {c.program.inputs[0].name: _images(2)}
    ours = Interpreter(c.program, seed=5).run(feed)
    ref = racetrack_reference.run(c.program, feed, seed=5)
    assert all(np.array_equal(ours[k], ref[k]) for k in ref)


def _mutated(c: cimc.CompiledModel, pick, change) -> Graph:
    """A copy of the program with ``change(attrs)`` applied to the first node ``pick(node)`` selects."""
    g = c.program.copy()
    node = next(n for n in g.nodes if pick(n))
    change(node.attrs)
    return g


def _blocks(n) -> int:
    L = n.inputs[0].type.shape[3] if n.attrs.get("layout") == "cols" else 1
    return -(-L // n.attrs["block"])


@pytest.mark.parametrize(("placement", "what", "change"), [
    ("optimized", "turn", lambda a: a.update(turn=1)),  # the serpentine's turn shifts one domain too far
    ("naive", "rewind", lambda a: a.update(turn=a["turn"] + 1)),  # the rewind stops one domain short
    ("optimized", "step", lambda a: a.update(step=2)),  # the sweep shifts two domains between states
    ("serpentine", "start", lambda a: a.update(start=1)),  # the program expects the tracks one domain further
])
def test_a_wrong_shift_is_a_wrong_result(placement, what, change):
    """One shift distance of a compiled program changed: the executor reads the weights the ports are over
    then (the slow reference agrees), so the outputs change. A sweep of step 2 (every other domain, an even
    number of times) still ends home: only the outputs show it; the other changes leave the tracks where the
    static check of offsets sees them."""
    c = _compiled("lenet_bn", 8, placement=placement, mus=13)  # the MUs the layers need: sweeps of 5 to 64 states
    bad = _mutated(c, lambda n: n.op == "rt.mac" and _blocks(n) > 1 and n.attrs["states"] > 1, change)
    feed = {c.program.inputs[0].name: _images(3)}
    good, ours = Interpreter(c.program).run(feed), Interpreter(bad).run(feed)
    assert any(not np.array_equal(good[k], ours[k]) for k in good), what
    ref = racetrack_reference.run(bad, feed)
    assert all(np.array_equal(ours[k], ref[k]) for k in ref)
    offsets, problems = commanded_offsets(bad)
    assert bool(problems or any(offsets.values())) == (what != "step")


def test_a_wrong_home_shift_is_seen_by_the_offset_check():
    """The shift that brings a fully connected layer's tracks home after its one sweep: changed, this inference's
    outputs stay (nothing reads those tracks again), and the static check names the MUs left away from home."""
    c = _compiled("mlp", 8)
    shifts = [n for n in c.program.nodes if n.op == "rt.shift"]
    assert shifts and all(n.attrs["distance"] < 0 for n in shifts)
    bad = _mutated(c, lambda n: n.op == "rt.shift", lambda a: a.update(distance=a["distance"] + 1))
    offsets, problems = commanded_offsets(bad)
    assert not problems and sorted(set(offsets.values())) == [0, 1]


def test_a_write_at_another_offset_is_read_where_it_landed():
    """A write addresses domains relative to where the tracks are: shifted before the write and back after the
    sweep, a consistent program computes the same result (through the executor's general path)."""
    c = _compiled("lenet_bn", 8, mus=13)
    g = c.program.copy()
    write = next(n for n in g.nodes if n.op == "rt.write")
    mac = next(n for n in g.nodes if n.op == "rt.mac" and n.inputs[1] is write.outputs[0])
    a = {k: write.attrs[k] for k in ("mus", "domains", "tracks")}
    g.add_node("rt.shift", [g.add_constant(np.asarray(0, np.int32), "token")], {**a, "distance": 3}, before=write)
    g.add_node("rt.shift", [write.outputs[0]], {**a, "distance": -3}, after=mac)
    feed = {g.inputs[0].name: _images(3)}
    want = Interpreter(c.program).run(feed)
    got = Interpreter(g).run(feed)
    assert all(np.array_equal(want[k], got[k]) for k in want)
    ref = racetrack_reference.run(g, feed)
    assert all(np.array_equal(got[k], ref[k]) for k in ref)


# ---- shift counts against a hand count ---------------------------------------------------------------------
def _conv_model() -> onnx.ModelProto:
    """One 3x3 convolution, 2 -> 3 channels, padding 1, on a 5x5 image: K = 18 rows, N = 3 columns, L = 25."""
    w = np.random.default_rng(0).normal(size=(3, 2, 3, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "conv",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 5, 5])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _gemm_model() -> onnx.ModelProto:
    """One fully connected layer: K = 40 inputs, N = 6 outputs, one position per sample."""
    w = np.random.default_rng(1).normal(size=(6, 40)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], "fc",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 40])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _small(model: onnx.ModelProto, shape: tuple[int, ...], placement: str, mus: int) -> cimc.CompiledModel:
    calib = np.random.default_rng(2).normal(size=(8, *shape)).astype(np.float32)
    return cimc.compile(model, target="racetrack", spec={"placement": placement, "mus": mus}, calibration=calib,
                        verify=True, progress=False)


# Default spec: MUs of 32 tracks, 64 domains, 2 ports 32 domains apart; 8-bit words: 4 lanes; 16 registers.
# Conv (K = 18, N = 3, L = 25 positions), row-major: 54 weights, all in lane 0 of one MU (54 domains).
#   naive: per position 53 steps out, 53 back:              25 * 106 = 2650 steps
#   serpentine: per position 53 steps, directions alternate: 25 * 53 = 1325, and 53 home after an odd count
#   optimized: rows balanced over the 2 ports (9 each), 3 columns in 3 lanes of one MU: 9 states;
#              blocks of 16 positions: 2 blocks (16 + 9), 8 steps each, an even count ends home: 16 steps
# Gemm (K = 40, N = 6, L = 1): row-major 240 weights in lanes of 64: 4 lanes of one MU, the first full.
#   naive: 63 out, 63 back = 126; serpentine: 63, then 63 home = 126
#   optimized: 20 rows per port, 6 columns over 4 lanes: 2 MUs of 20 states: 19 out, 19 home = 38 per MU
#   optimized with 4 MUs (2 spare): rows 10 per port in 2 row tiles of 20, 2 x 2 MUs of 10 states: 9 + 9 each
# Shifts count steps times the 32 tracks of each MU that moves. The memory has as many MUs as the dense layouts
# need (1 for the convolution, 2 for the gemm) unless a case says otherwise.
HAND = {("conv", "naive", 1): 2650 * 32, ("conv", "serpentine", 1): (1325 + 53) * 32, ("conv", "optimized", 1): 16 * 32,
        ("fc", "naive", 2): 126 * 32, ("fc", "serpentine", 2): 126 * 32, ("fc", "optimized", 2): 2 * 38 * 32,
        ("fc", "optimized", 4): 4 * 18 * 32}


@pytest.mark.parametrize(("layer", "placement", "mus"), list(HAND))
def test_shift_counts_equal_the_hand_count(layer, placement, mus):
    c = (_small(_conv_model(), (2, 5, 5), placement, mus) if layer == "conv"
         else _small(_gemm_model(), (40,), placement, mus))
    assert c.verify["reference_exact"]
    assert c.report["cost"]["per_inference"]["shifts"] == HAND[(layer, placement, mus)]
    macs = [n for n in c.program.nodes if n.op == "rt.mac"]
    if layer == "conv" and placement == "optimized":
        assert [(n.attrs["states"], n.attrs["ports"], n.attrs["block"]) for n in macs] == [(9, 2, 16)]
    if layer == "conv" and placement == "naive":
        assert [(n.attrs["states"], n.attrs["ports"], n.attrs["block"], n.attrs["turn"]) for n in macs] == \
            [(54, 1, 1, -53)]


def test_optimized_needs_far_fewer_shifts_on_every_zoo_model():
    """The goal of the placement, per model: optimized at most 40% of naive and 80% of serpentine."""
    for name in zoo.NAMES:
        shifts = {p: _compiled(name, 8, placement=p).cost.per_inference.events["shifts"] for p in PLACEMENTS}
        assert shifts["optimized"] <= 0.4 * shifts["naive"] and shifts["optimized"] <= 0.8 * shifts["serpentine"], \
            (name, shifts)


# ---- faults ------------------------------------------------------------------------------------------
def test_faults_are_seeded_and_marked_lossy():
    c = _compiled("resnet_tiny", 8, shift_fault_rate=0.01)
    assert c.program.metadata[LOSSY].startswith("racetrack shift faults: 0.01 per step")
    feed = {c.program.inputs[0].name: _images(40)}
    a, b, other = c.run(feed, seed=1), c.run(feed, seed=1), c.run(feed, seed=2)
    ideal = _compiled("resnet_tiny", 8).run(feed)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], other[k]) for k in a)
    assert any(not np.array_equal(a[k], ideal[k]) for k in a)


def test_the_guard_costs_checks_and_a_zero_rate_is_exact():
    plain, guarded = _compiled("resnet_tiny", 8), _compiled("resnet_tiny", 8, guard_interval=4)
    p, g = plain.cost.per_inference, guarded.cost.per_inference
    assert "guard_checks" not in p.events and g.events["guard_checks"] > 0
    assert g.energy_pj > p.energy_pj and g.cycles > p.cycles
    assert g.events["shifts"] == p.events["shifts"]
    feed = {plain.program.inputs[0].name: _images(20)}
    assert all(np.array_equal(v, plain.run(feed)[k]) for k, v in guarded.run(feed, seed=3).items())


# ---- machine size, bad input -------------------------------------------------------------------------------
def test_a_model_larger_than_the_memory_is_rewritten_every_inference():
    c = _compiled("resnet_tiny", 8, mus=8)
    feed = {c.program.inputs[0].name: _images(20)}
    assert all(np.array_equal(v, Interpreter(c.quantized).run(feed)[k]) for k, v in c.run(feed).items())
    assert c.cost.reloads and c.report["cost"]["per_inference"]["weight_reloads"]["ops"] > 0
    with pytest.raises(PassError, match=r"does not fit the racetrack memory with allow_reload = false: its weights "
                                        r"take \d+ MUs .* the memory has mus = 8"):
        cimc.compile("zoo:resnet_tiny", target="racetrack", spec={"mus": 8, "allow_reload": False}, progress=False)


@pytest.mark.parametrize(("override", "message"), [
    ("domains_per_track=1", "racetrack spec: domains_per_track = 1 must be a multiple of ports_per_track = 2 (each "
                            "port reads an equal segment of at least one domain)"),
    ("shift_fault_rate=1.5", "racetrack spec: shift_fault_rate = 1.5 is out of range: expected a number in 0..1"),
    ("placement=optimised", "racetrack spec: placement = 'optimised' is not one of naive, serpentine, optimized; "
                            "did you mean 'optimized'?"),
    ("tracks_per_mu=4", "racetrack spec: tracks_per_mu = 4 must be >= weight_bits_max = 8"),
])
def test_bad_specs_are_one_clear_line_and_exit_2(override, message, tmp_path):
    with pytest.raises(InputError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        cimc.targets.load_target("racetrack", overrides=[override])
    r = subprocess.run([sys.executable, "-m", "cimc.cli", "compile", "zoo:mlp", "--target", "racetrack", "--spec-set",
                        override, "-o", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_cost_of_one_layer_equals_the_hand_computation():
    """The 3x3 convolution of the hand count (optimized, one MU), its rt.write and rt.mac priced by hand from the
    default spec's numbers: a change of a formula or a figure fails here."""
    c = _small(_conv_model(), (2, 5, 5), "optimized", 1)
    by_op = {n.op: c.target.op_cost(n) for n in c.program.nodes if n.op.startswith("rt.")}
    assert sorted(by_op) == ["rt.mac", "rt.write"]  # 2 blocks: the sweep ends home, no rt.shift
    w = by_op["rt.write"]  # 54 words of 8 bits; port 0 passes all 64 domains and back: 2 * 63 steps of 32 tracks
    assert w.unit == "load" and w.dram == {"weights": 54.0} and w.events == {"shifts": 126 * 32}
    assert w.parts == pytest.approx({"port_writes": 432 * 3.406, "shift": 126 * 32 * 0.609375, "dram": 54 * 64.0})
    assert w.cycles == pytest.approx(64 * 4.84522 + 126 * 2.14192)  # the DRAM fetch (54 / 16 cycles) is shorter
    m = c.program.nodes[[n.op for n in c.program.nodes].index("rt.mac")]
    mac = by_op["rt.mac"]
    # 2 blocks (16 and 9 positions) of 9 states, 8 steps each; 54 words read per block; 25 x 54 MACs of 8 adds;
    # per state the 3 lanes need rows t and 9 + t: 18 rows in all; 3 columns x 2 ports = 6 accumulator runs
    assert mac.events == {"shifts": 16 * 32} and mac.macs == 25 * 54
    assert mac.parts == pytest.approx({"shift": 512 * 0.609375, "port_reads": 2 * 54 * 8 * 2.503,
                                       "mac_cells": 25 * 54 * 8 * 0.7676, "buffers": (18 + 8 * 6) * 25 * 0.997})
    block = lambda n: 9 * 1.61338 + 8 * max(2.14192, n * 8 * 451) + n * 8 * 451  # noqa: E731  (ns at 1 GHz)
    assert mac.cycles == pytest.approx(block(16) + block(9))
    assert m.attrs["states"] == 9 and c.cost.one_time.ops == 1 and c.cost.per_inference.events["shifts"] == 512


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p.__setitem__((1, 5), p[0, 5] + 1),
     r"rt.write: piece 1 \[.*\] writes a domain another piece writes"),  # two pieces overlap on one lane
    (lambda p: p.__setitem__((0, 5), 64 - p[0, 2] + 1),
     r"rt.write: piece 0 \[.*\] is outside the MUs \[0, 1\], 4 lanes, 64 domains or the 1x18x3 weight matrix"),
])
def test_the_verifier_refuses_a_bad_placement(change, message):
    """A pieces table whose pieces overlap, or leave the track, is a malformed program: refused before it runs."""
    from cimc.errors import VerifyError
    from cimc.ir.verifier import verify

    c = _small(_conv_model(), (2, 5, 5), "naive", 1)
    g = c.program.copy()
    write = next(n for n in g.nodes if n.op == "rt.write")
    p = np.array(write.inputs[1].const)
    if len(p) < 2:  # one piece per column here: give the test two pieces on one lane
        p = np.concatenate([p, p])
    change(p)
    bad = g.add_constant(p, "pieces.bad")
    write.set_input(1, bad)
    with pytest.raises(VerifyError, match=message):
        verify(g)



@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p.__setitem__((1, 5), p[0, 5] + 1), r"rt.write: piece 1 \[.*\] writes a domain another piece writes"),
    (lambda p: p.__setitem__((0, 3), 1),
     r"rt.write: piece 0 \[.*\] is outside the MUs \[0, 1\], 4 lanes, 64 domains or the 1x18x3 weight matrix"),
])
def test_the_lowering_refuses_a_bad_placement_of_its_own(change, message):
    """The lowering checks each layer's pieces table once (its rt.write nodes are built without their type rule): a
    layout whose pieces overlap or leave its MUs is a PassError naming the layer, not a program."""
    from cimc.targets.racetrack.lowering import Layout, _lower, layer_of, layout

    c = _small(_conv_model(), (2, 5, 5), "optimized", 1)
    g = c.quantized.copy()
    node = next(n for n in g.nodes if n.op == "q.conv")
    lay = layout(layer_of(node), c.target.spec)
    p = lay.make()  # optimized, K = 18 over 2 ports: (column, port) pieces of 9 rows at domains 0 and 32
    change(p)
    with pytest.raises(PassError, match=rf"lower-racetrack placed q.conv '{node.name}' inconsistently: {message}"):
        _lower(g, node, Layout(lambda: p, lay.mus, lay.sweeps), c.target.spec, 0, None)


@pytest.mark.parametrize(("name", "placement", "mus"), [
    ("resnet_tiny", "optimized", 8),  # layers written in rounds, partial row tiles stacked
    ("resnet_tiny", "optimized", 4096),  # layers spread over the free MUs
    ("mobilenet_tiny", "naive", 3),
    ("hybrid_vit", "serpentine", 5),
    ("lstm_rows", "optimized", 4),  # shared weights rewritten
])
def test_every_rounds_pieces_pass_the_write_check(name, placement, mus):
    """Each round of a layer writes a part of the layer's checked pieces table, its MUs moved together: the verifier,
    which re-infers every rt.write (its pieces inside its MUs, lanes, domains and matrix, none overlapping), passes
    the whole program."""
    from cimc.ir.verifier import verify

    c = _compiled(name, 8, placement=placement, mus=mus)
    layers = {n.attrs["cim.layer"] for n in c.program.nodes if n.op == "rt.write"}
    assert mus > 8 or len([n for n in c.program.nodes if n.op == "rt.write"]) > len(layers)  # some layer in rounds
    verify(c.program)



def test_a_layer_in_rounds_takes_each_rounds_pieces_in_any_table_order():
    """The layouts list their pieces MU by MU, so a round's pieces are consecutive rows of the layer's table, which
    each round's rt.write reads in place; a table in another order is sorted by round first (stably): its layer,
    lowered in rounds, still gives the integer reference's outputs and a program the verifier passes."""
    from cimc.ir.verifier import verify
    from cimc.targets.racetrack.lowering import Layout, _lower, layer_of, layout

    c = _compiled("resnet_tiny", 8, mus=8)
    spec = c.target.spec
    g = c.quantized.copy()
    node = max((n for n in g.nodes if n.op == "q.conv"), key=lambda n: layout(layer_of(n), spec).mus)
    lay = layout(layer_of(node), spec)
    table = lay.make()
    shuffled = table[np.random.default_rng(0).permutation(len(table))]
    assert lay.mus > spec.mus and (np.diff(table[:, 3]) >= 0).all() and (np.diff(shuffled[:, 3]) < 0).any()
    _lower(g, node, Layout(lambda: shuffled.copy(), lay.mus, lay.sweeps), spec, 0, None)
    assert len([n for n in g.nodes if n.op == "rt.write"]) == -(-lay.mus // spec.mus)
    verify(g)
    feed = {g.inputs[0].name: _images(20)}
    ours, ref = Interpreter(g).run(feed), Interpreter(c.quantized).run(feed)
    assert all(np.array_equal(v, ref[k]) for k, v in ours.items())


def test_the_cost_reads_an_rt_mac_once_without_keeping_its_reads():
    """The cost report counts each rt.mac's reads without keeping them (a large program's reads are larger than its
    weights); the program then runs exact, working its reads out itself, and reads kept by a run are read again."""
    from cimc.cost import program_cost
    from cimc.targets.racetrack import ops

    c = cimc.compile("zoo:mobilenet_tiny", target="racetrack", pipeline=_quantized(8), spec={"mus": 6}, progress=False)
    g = c.program
    macs = [n for n in g.nodes if n.op == "rt.mac"]
    reads = lambda: [k for k in ops._CACHE if k[0] in {id(n.inputs[2].const) for n in macs} and "reads" in k]  # noqa: E731
    cost = program_cost(g, c.target)
    assert cost.per_inference.to_dict(None) == c.cost.per_inference.to_dict(None) and not reads()
    feed = {g.inputs[0].name: _images(20)}
    ref = Interpreter(c.quantized).run(feed)
    assert all(np.array_equal(v, ref[k]) for k, v in Interpreter(g).run(feed).items())
    kept = reads()
    assert len(kept) == len(macs)
    a, p = macs[0].attrs, macs[0].inputs[2].const
    assert ops.swept(p, a, keep=False) is ops.swept(p, a)


def test_long_columns_sum_exactly():
    """A fully connected layer of 1201 inputs whose weights and activations sit at their largest codes (one weight
    of each output one code lower, so the sum of the 1152 rows of full row tiles is odd): the sums pass 2**25,
    where float32 holds only multiples of 4, so the executor splits the rows into chunks that float32 adds
    exactly; the program equals the integer reference."""
    from cimc.targets.racetrack.ops import _chunks

    K = 1201
    w = np.repeat(np.asarray([[1.0], [-1.0], [1.0], [0.5]], np.float32), K, axis=1)  # one sign per output
    w[:, 0] *= 126 / 127
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], "long",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    calib = np.random.default_rng(4).random((8, K)).astype(np.float32)
    # the MUs the dense layout needs (18 row tiles of 64 rows, then 49 rows): no spreading
    c = cimc.compile(model, target="racetrack", spec={"mus": 19}, calibration=calib, progress=False)
    x = np.ones((3, K), np.float32)  # the calibrated maximum: every activation code 255
    accs: list[dict] = [{}, {}]  # the int32 accumulators (the float outputs would round a difference of 1 away)
    for graph, seen in zip((c.program, c.quantized), accs, strict=True):
        Interpreter(graph).run({"x": x}, observe=lambda v, a, seen=seen: seen.__setitem__(v.name, np.array(a)))
    assert np.array_equal(accs[0]["y_acc"], accs[1]["y_acc"])
    assert accs[1]["y_acc"][0, 0] == 255 * (126 + 127 * 1200)
    words = next(n for n in c.program.nodes if n.op == "rt.write").inputs[0].const
    assert len(_chunks(words.astype(np.float64), 0, 255)) > 1  # the split is exercised


def test_moved_mus_and_a_wrong_turn_agree_with_the_reference():
    """The program moved to MUs 5.. (MUs 0..4 never written) with one sweep's turn off by a domain: executor and
    slow reference read the same words."""
    c = _compiled("lenet_bn", 8, mus=13)
    g = c.program.copy()
    for n in g.nodes:
        if n.op.startswith("rt."):
            n.attrs["mus"] = [m + 5 for m in n.attrs["mus"]]
    for v in [v for v in g.constants.values() if v.name.endswith(".pieces")]:
        p = np.array(v.const)
        p[:, 3] += 5
        moved = g.add_constant(p, v.name + ".moved")
        for node, i in list(v.uses):
            node.set_input(i, moved)
    mac = next(n for n in g.nodes if n.op == "rt.mac" and _blocks(n) > 1 and n.attrs["states"] > 1)
    mac.attrs["turn"] += 1
    feed = {g.inputs[0].name: _images(2)}
    ours, ref = Interpreter(g).run(feed), racetrack_reference.run(g, feed)
    assert all(np.array_equal(ours[k], ref[k]) for k in ref)


def _tokens_model(batch_axis: int) -> onnx.ModelProto:
    """x [batch, 6, 16] times a [16, 24] weight, with the batch moved to ``batch_axis`` before the MatMul (as a
    sequence-first transformer has it) and back after."""
    w = np.random.default_rng(4).normal(size=(16, 24)).astype(np.float32)
    perm = [1, 0, 2] if batch_axis == 1 else [0, 1, 2]
    g = helper.make_graph([helper.make_node("Transpose", ["x"], ["xt"], perm=perm),
                           helper.make_node("MatMul", ["xt", "w"], ["h"], name="proj"),
                           helper.make_node("Relu", ["h"], ["r"]),
                           helper.make_node("Transpose", ["r"], ["y"], perm=perm)], "tokens",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6, 24])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_samples_on_another_axis_are_inferences(placement):
    """A MatMul whose input has the batch on axis 1 ([6, batch, 16]): its rt.mac takes the samples from that
    axis, so each sample is one inference of 6 positions. The program is exact, costs the shifts of the same
    layer with the batch first, and with shift faults the executor equals the slow reference (which reads
    sample by sample along that axis)."""
    calib = np.random.default_rng(5).normal(size=(4, 6, 16)).astype(np.float32)
    x = np.random.default_rng(6).normal(size=(3, 6, 16)).astype(np.float32)
    got = {}
    for axis in (0, 1):
        c = cimc.compile(_tokens_model(axis), target="racetrack", calibration=calib, progress=False,
                         spec={"placement": placement, "mus": 2})
        macs = [n for n in c.program.nodes if n.op == "rt.mac"]
        assert macs and all(n.attrs["sample_axis"] == axis for n in macs)
        assert all(np.array_equal(v, Interpreter(c.quantized).run({"x": x})[k]) for k, v in c.run({"x": x}).items())
        got[axis] = c.cost.per_inference.events["shifts"]
    assert got[0] == got[1] > 0
    c = cimc.compile(_tokens_model(1), target="racetrack", calibration=calib, progress=False,
                     spec={"placement": placement, "mus": 2, "shift_fault_rate": 0.05})
    ours = Interpreter(c.program, seed=3).run({"x": x})
    ref = racetrack_reference.run(c.program, {"x": x}, seed=3)
    assert all(np.array_equal(ours[k], ref[k]) for k in ref)
    bad = _mutated(c, lambda n: n.op == "rt.mac", lambda a: a.update(sample_axis=0))  # 6 "samples" of 3 positions
    assert any(not np.array_equal(ours[k], v) for k, v in Interpreter(bad, seed=3).run({"x": x}).items())


def test_layers_reading_one_weight_share_its_mus():
    """The unrolled LSTM's steps read one gate weight: written once into MUs the steps all sweep (one-time, no
    reloads), exact, and with shift faults equal to the slow reference. With a memory too small to keep the
    shared weights while other layers are written, each step writes its own copy (reloads), still exact."""
    c = _compiled("lstm_rows", 8)
    weights = {id(n.inputs[1]) for n in c.quantized.nodes if n.op in ("q.matmul", "q.gemm", "q.conv")}
    writes = [n for n in c.program.nodes if n.op == "rt.write"]
    macs = [n for n in c.program.nodes if n.op == "rt.mac"]
    assert len(writes) == len(weights) < len({n.attrs["cim.layer"] for n in macs})
    assert not c.cost.reloads
    feed = {c.program.inputs[0].name: _images(20)}
    ref = Interpreter(c.quantized).run(feed)
    assert all(np.array_equal(v, ref[k]) for k, v in c.run(feed).items())
    tight = _compiled("lstm_rows", 8, mus=4)
    assert tight.cost.reloads and len([n for n in tight.program.nodes if n.op == "rt.write"]) > len(writes)
    assert all(np.array_equal(v, ref[k]) for k, v in tight.run(feed).items())
    faulty = _compiled("lstm_rows", 8, shift_fault_rate=0.02)
    feed = {c.program.inputs[0].name: _images(2)}
    ours = Interpreter(faulty.program, seed=2).run(feed)
    assert all(np.array_equal(v, racetrack_reference.run(faulty.program, feed, seed=2)[k]) for k, v in ours.items())


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 9), st.integers(-3, 3), st.integers(-12, 12), st.integers(0, 1), st.integers(0, 7))
def test_sweep_totals_are_the_steps_and_drift_of_the_sweep_walked_state_by_state(states, step, turn, alternate,
                                                                                 blocks):
    """``sweep_totals`` (what the lowering, the cost and the offset check read) against the sweep as ``rt.mac``
    describes it: every block visits its states ``step`` apart (every other one backwards with ``alternate``),
    then turns by ``turn``; and ``sweep_steps`` agrees with it."""
    offset = total = 0
    for b in range(blocks):
        direction = -1 if alternate and b % 2 else 1
        for _ in range(states - 1):
            offset += direction * step
            total += abs(step)
        offset += turn
        total += abs(turn)
    assert sweep_totals(states, step, turn, alternate, blocks) == (total, offset)
    assert sweep_steps(states, step, turn, alternate, blocks)[2:] == (total, offset)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), far=st.booleans())
def test_union_length_is_the_covered_length_line_by_line(seed, far):
    """The cost's union of read intervals on each line equals a count of the covered cells, also when the line
    numbers are too far apart to number the lines by themselves (``far``: lines ``2**58`` apart)."""
    from cimc.targets.racetrack.cost import _union_length

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    key = rng.integers(-4, 4, n) * ((1 << 58) if far else 1)
    start = rng.integers(-20, 40, n)
    end = start + rng.integers(0, 12, n)
    want = sum(len(set().union(*(range(s, e) for k2, s, e in zip(key, start, end, strict=True) if k2 == k)))
               for k in set(key.tolist()))
    assert _union_length(key, start, end) == want


def _reads_walked(pieces: np.ndarray, mus: tuple[int, int], states: int, step: int, ports: int, segment: int,
                  start: int) -> list[tuple[int, ...]]:
    """The runs an ``rt.mac`` reads, walked domain by domain: port ``j`` passes domain ``b + t * step`` at state
    ``t`` (``b = j * segment + start``); each piece on the MUs that a port passes gives one run of the domains it
    passes, from its lowest: ports in order, pieces in table order."""
    runs = []
    m = abs(step) if step else 1
    for j in range(ports):
        b = j * segment + start
        at = {b + t * step: t for t in range(states)} if step else {b: 0}
        for flat, stride, n, mu, lane, d0 in pieces.tolist():
            if not mus[0] <= mu < mus[1]:
                continue
            hit = sorted(d for d in range(d0, d0 + n) if d in at)
            if hit:
                first = hit[0]
                runs.append((flat + (first - d0) * stride, stride * m, len(hit), mu, lane, first, m, j, at[first],
                             1 if step >= 0 else -1))
    return runs


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 100_000))
def test_swept_reads_are_the_domains_each_port_passes(seed):
    """``swept`` (what the executor multiplies and the cost counts) equals the reads walked domain by domain, for
    any step (backwards, still, more than one domain), ports, segment, start and MU range, pieces off the MUs
    included."""
    from cimc.targets.racetrack.ops import swept

    rng = np.random.default_rng(seed)
    k = int(rng.integers(0, 12))
    pieces = np.stack([rng.integers(0, 100, k), rng.choice([1, 3, 7], k), rng.integers(1, 10, k),
                       rng.integers(0, 6, k), rng.integers(0, 4, k), rng.integers(0, 30, k)], axis=1).astype(np.int64)
    m0 = int(rng.integers(0, 5))
    mus = (m0, int(rng.integers(m0 + 1, 7)))
    states, step, ports = int(rng.integers(1, 7)), int(rng.integers(-3, 4)), int(rng.integers(0, 4))
    segment, start = int(rng.integers(1, 13)), int(rng.integers(0, 11))
    a = {"mus": list(mus), "states": states, "step": step, "ports": ports, "segment": segment, "start": start}
    r = swept(pieces, a)
    cols = (r.flat, r.fstride, r.n, r.mu, r.lane, r.d, r.dstride, r.port, r.t0, r.tdir)
    assert all(c.dtype == np.int64 and c.ndim == 1 for c in cols)
    walked = _reads_walked(pieces, mus, states, step, ports, segment, start)
    assert list(zip(*(c.tolist() for c in cols), strict=True)) == walked


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 100_000), kinds=st.sampled_from(["down", "mixed"]))
def test_rows_and_runs_count_the_rows_each_state_reads(seed, kinds):
    """The cost's activation rows and accumulator runs of an ``rt.mac`` equal a count read by read: the distinct
    ``(group, row, state)`` of the runs down a column (``n == 1`` or one row further each state), apart from
    them the distinct ``(row, state)`` of the runs along a row, and one row and one run for each read of any
    other run; runs down a column are one accumulator run each."""
    from cimc.targets.racetrack.cost import _rows_and_runs
    from cimc.targets.racetrack.ops import Reads

    rng = np.random.default_rng(seed)
    G, K, N = int(rng.integers(1, 3)), int(rng.integers(1, 9)), int(rng.integers(2, 9))
    runs = []
    for _ in range(int(rng.integers(1, 15))):
        kind = "down" if kinds == "down" else str(rng.choice(["down", "single", "along", "other"]))
        g, t0 = int(rng.integers(0, G)), int(rng.integers(0, 12))
        if kind == "down":  # rows k, k + 1, ... of column c at states t0, t0 + 1, ...
            n = int(rng.integers(1, K + 1))
            k, c = int(rng.integers(0, K - n + 1)), int(rng.integers(0, N))
            runs.append(((g * K + k) * N + c, N, n, t0, 1))
        elif kind == "single":
            runs.append((int(rng.integers(0, G * K * N)), int(rng.integers(1, 4)), 1, t0, int(rng.choice([-1, 1]))))
        elif kind == "along":  # columns c, c + 1, ... of one row, at consecutive states either way
            n = int(rng.integers(2, N + 1))
            k, c = int(rng.integers(0, K)), int(rng.integers(0, N - n + 1))
            runs.append(((g * K + k) * N + c, 1, n, t0 + n, int(rng.choice([-1, 1]))))
        else:  # every other column of a row, or down a column against the states
            n = int(rng.integers(2, max(3, N // 2 + 1)))
            k = int(rng.integers(0, K))
            runs.append(((g * K + k) * N, 2, n, t0, 1) if N >= 2 * n - 1 else (k * N, N, 1, t0, -1))
    flat, fstride, n, t0, tdir = (np.array(col, np.int64) for col in zip(*runs, strict=True))
    zero = np.zeros(len(runs), np.int64)
    reads = Reads(flat, fstride, n, zero, zero, zero, zero, zero, t0, tdir)
    down_rows, along_rows, other, count = set(), set(), 0, 0
    for f, fs, m, t, td in runs:
        reads_of = [((f + e * fs) // N, t + e * td) for e in range(m)]  # (g * K + k, state) of each read
        if m == 1 or (fs == N and td == 1):
            down_rows.update(reads_of)
            count += 1
        elif fs == 1:
            along_rows.update(reads_of)
            count += m
        else:
            other += m
            count += m
    assert _rows_and_runs(reads, G, K, N) == (len(down_rows) + len(along_rows) + other, count)
