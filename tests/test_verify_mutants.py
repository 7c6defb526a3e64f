"""``cimc compile --verify`` catches what it must: each mutant below breaks the program (or the verifier
itself) the way a bug would, and ``--verify`` must report DIFFERENT, exit with status 1 and name the
first layer that differs; the unmutated compile must be EXACT with status 0.

A mutant is applied where the bug would live: a lowering mutant wraps the target's lowering pass so
that the program it emits is corrupted (a corrupted array image, a wrong shift-add significance, a
bias added on every K tile of a layer split over K; one weight of a later round of a layer of several rounds,
which the executor sums as one exact product), and a verifier mutant replaces the comparison or
the graphs it is given (the reference compared with itself). A wrong requant multiplier makes the
program malformed (its multipliers no longer match its scales): the verifier refuses it before it runs.
Two mutants of the array model: an MVM reading its tiles at a wrong row permutation (random placements
with spares), and an ADC whose top code is one too low at 63 rows per op (not a power of two), where a
lossless ADC's top code is the largest partial sum.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import cimc.verify
from cimc.cli import main
from cimc.ir.core import Graph, Node
from cimc.targets.npu.lowering import LowerNpuPass
from cimc.targets.racetrack.lowering import LowerRacetrackPass
from cimc.targets.sram_cim.lowering import LowerSramCimPass

MODEL = "zoo:lenet_bn"
SPLIT_K = ["--target", "npu", "--spec-set", "weight_buffer_bytes=256"]
"""An npu whose weight buffer is so small that lenet_bn's second convolution and its Gemm split over K."""
RACETRACK = ["--target", "racetrack"]
ROUNDS = ["--spec-set", "macros=2", "--spec-set", "rows=32", "--spec-set", "cols=32", "--spec-set", "rows_per_op=32",
          "--spec-set", "adc_bits=6"]
"""sram-cim with two small macros: layers take several rounds, which the exact path sums as one product."""
PLACED = ["-p", "fold-constants,fuse-batchnorm,quantize{weight-bits=8 act-bits=8},tile{placement=random}",
          "--spec-set", "spare_rows=5", "--spec-set", "spare_cols=3"]
"""sram-cim arrays with spare rows and columns, every tile at a random physical placement."""


def _compile(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, dict]:
    out = tmp_path / "out"
    status = main(["compile", MODEL, "--verify", "-o", str(out), "--force", *args])
    text = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    return status, text, report["verify"]


def _lowering_emits(monkeypatch: pytest.MonkeyPatch, cls: type, mutate: Callable[[Graph], str]) -> list[str]:
    """Wrap ``cls.run`` so that the program it emits goes through ``mutate``; returns a list that receives
    the name of the layer each mutation broke."""
    original, broken = cls.run, []

    def run(self, graph, ctx):
        result = original(self, graph, ctx)
        broken.append(mutate(graph))
        return result

    monkeypatch.setattr(cls, "run", run)
    return broken


# ---- the mutants --------------------------------------------------------------------------------------
def corrupt_array_image(program: Graph) -> str:
    """Flip every bit of one weight (the middle row of the first layer's packed cells) in its array image."""
    load = next(n for n in program.nodes if n.op == "sram.load")
    cells = load.inputs[0]
    bad = np.array(cells.const)
    bad[0, bad.shape[1] // 2, 0] ^= 0xFF
    program.replace_all_uses_with(cells, program.add_constant(bad, cells.name + ".corrupt"))
    return load.attrs["cim.layer"]


def corrupt_a_later_round(program: Graph) -> str:
    """Flip every bit of one weight that the last round of a layer of several rounds reads (the exact path sums
    the layer's rounds as one product)."""
    mvms = [n for n in program.nodes if n.op == "sram.mvm"]
    last = next(n for n in reversed(mvms) if sum(m.attrs["cim.layer"] == n.attrs["cim.layer"] for m in mvms) > 1)
    load = last.inputs[1].producer
    cells = load.inputs[0]
    g, k0, k1, c0 = (int(v) for v in load.attrs["tiles"].table[0, :4])
    bad = np.array(cells.const)
    bad[g, (k0 + k1) // 2, c0] ^= 0xFF
    program.replace_all_uses_with(cells, program.add_constant(bad, cells.name + ".corrupt"))
    return load.attrs["cim.layer"]


def wrong_significance(program: Graph) -> str:
    """Shift-add the least significant slice column with the significance of the next one."""
    mvm = next(n for n in program.nodes if n.op == "sram.mvm")
    sig = tuple(mvm.attrs["significance"])
    mvm.attrs["significance"] = (sig[1], *sig[1:])
    return mvm.attrs["cim.layer"]


def wrong_requant_multiplier(program: Graph) -> str:
    """Scale the first requantization's fixed-point multipliers by about 1 +- 1/8 (still in [2**30, 2**31))."""
    req = next(n for n in program.nodes if n.op == "q.requant")
    req.attrs["multiplier"] = tuple(m + (1 << 27) if m < 3 << 29 else m - (1 << 27) for m in req.attrs["multiplier"])
    return req.name


def wrong_row_permutation(program: Graph) -> str:
    """Swap two physical rows in the placement the first MVM reads (its load wrote the cells at the right ones)."""
    mvm = next(n for n in program.nodes if n.op == "sram.mvm")
    tiles = mvm.attrs["tiles"]
    assert tiles.row_at[0] is not None, "the tile is not placed: the mutant would test nothing"
    rows = list(tiles.row_at)
    rows[0] = rows[0].copy()
    rows[0][[0, 1]] = rows[0][[1, 0]]
    mvm.attrs["tiles"] = tiles.replace(row_at=rows)
    return mvm.attrs["cim.layer"]


def bias_on_every_k_tile(program: Graph) -> str:
    """Give every K tile of a layer split over K the bias that only the first K tile may add."""
    layer = None
    for node in [n for n in program.nodes if n.op == "npu.gemm" and len(n.inputs) == 3]:  # a chained K tile
        head: Node = node
        while head.inputs[2] is not None:  # back along the accumulator chain to the first K tile
            head = head.inputs[2].producer
        if len(head.inputs) < 4 or head.inputs[3] is None:
            continue
        twin = program.add_node("npu.gemm", [*node.inputs, head.inputs[3]], dict(node.attrs), before=node,
                                outputs=[node.outputs[0].type])
        program.replace_all_uses_with(node.outputs[0], twin.outputs[0])
        program.remove_node(node)
        layer = layer or node.attrs["cim.layer"]
    assert layer is not None, "no layer of the program is split over K: the mutant would test nothing"
    return layer


def negated_word(program: Graph) -> str:
    """Write one weight word of the first racetrack layer with the opposite sign."""
    write = next(n for n in program.nodes if n.op == "rt.write")
    words = write.inputs[0]
    bad = np.array(words.const)
    i = int(np.flatnonzero(bad)[0])
    bad.reshape(-1)[i] = -bad.reshape(-1)[i]
    write.set_input(0, program.add_constant(bad, words.name + ".corrupt"))
    return write.attrs["cim.layer"]


def turn_one_domain_too_far(program: Graph) -> str:
    """The first sweep over several blocks of positions shifts its MUs one domain further after each block."""
    mac = next(n for n in program.nodes if n.op == "rt.mac" and n.attrs["layout"] == "cols"
               and n.inputs[0].type.shape[3] > n.attrs["block"])
    mac.attrs["turn"] = mac.attrs["turn"] + 1
    return mac.attrs["cim.layer"]


LOWERING_MUTANTS = {
    "corrupted-array-image": (LowerSramCimPass, corrupt_array_image, []),
    "corrupted-later-round": (LowerSramCimPass, corrupt_a_later_round, ROUNDS),
    "wrong-shift-add-significance": (LowerSramCimPass, wrong_significance, []),
    "bias-on-every-k-tile": (LowerNpuPass, bias_on_every_k_tile, SPLIT_K),
    "racetrack-negated-word": (LowerRacetrackPass, negated_word, RACETRACK),
    "racetrack-turn-too-far": (LowerRacetrackPass, turn_one_domain_too_far, RACETRACK),
    "wrong-row-permutation": (LowerSramCimPass, wrong_row_permutation, PLACED),
}


@pytest.mark.parametrize("args", [[], SPLIT_K, RACETRACK, PLACED, ROUNDS],
                         ids=["sram-cim", "npu-split-k", "racetrack", "sram-cim-placed", "sram-cim-rounds"])
def test_unmutated_compile_is_exact_with_status_0(tmp_path, capsys, args):
    status, text, v = _compile(tmp_path, capsys, *args)
    assert (status, v["reference_exact"], v["exact_expected"], v["self_check"], v["first_difference"]) == (
        0, True, True, None, None)
    assert "vs quantized graph (interpreter): EXACT (max abs error 0)" in text


@pytest.mark.parametrize("mutant", list(LOWERING_MUTANTS))
def test_lowering_mutant_is_reported_different_at_its_layer(tmp_path, capsys, monkeypatch, mutant):
    cls, mutate, args = LOWERING_MUTANTS[mutant]
    broken = _lowering_emits(monkeypatch, cls, mutate)
    status, text, v = _compile(tmp_path, capsys, *args)
    assert broken, "the mutant was not applied"
    assert status == 1 and not v["reference_exact"] and v["exact_expected"] and v["self_check"] is None
    assert v["quantized_max_abs_error"] > 0
    assert "vs quantized graph (interpreter): DIFFERENT, where it must be exact (no lossy step)" in text
    d = v["first_difference"]
    assert d["layer"] == broken[0] and 0 < d["differing"] <= d["elements"] and d["max_abs_error"] > 0
    assert f"first differs at layer {broken[0]!r}" in text


def test_a_wrong_requant_multiplier_is_refused_before_it_runs(tmp_path, capsys, monkeypatch):
    """A requantization whose fixed-point multipliers do not match its scales is a malformed program: the
    verifier, which the interpreter runs first, refuses it (exit 2, the node named), so --verify never
    reports a comparison of a program that is not the one described."""
    broken = _lowering_emits(monkeypatch, LowerSramCimPass, wrong_requant_multiplier)
    status = main(["compile", MODEL, "--verify", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert broken and status == 2 and err.count("\n") == 1, err
    assert f"node {broken[0]!r} (q.requant): channel 0: multiplier" in err and "is not the fixed-point form" in err
    assert not (tmp_path / "out").exists()


def test_a_lossy_adc_differs_as_expected_with_status_0(tmp_path, capsys):
    status, text, v = _compile(tmp_path, capsys, "--spec-set", "adc_bits=4")
    why = "sram-cim ADC: adc_bits = 4 < 7 bits (lossless); ADC ranges calibrated (mse, per column-group)"
    assert status == 0 and not v["reference_exact"] and not v["exact_expected"]
    assert v["lossy"] == why
    assert f"DIFFERENT, as expected ({why})" in text
    assert v["first_difference"]["op"] == "q.conv"  # the first array layer, where the ADC first rounds


def test_an_adc_top_code_off_by_one_is_reported_different(tmp_path, capsys, monkeypatch):
    """63 rows per op of 1-bit inputs and cells: the largest partial sum is 63, the top code of the lossless
    6-bit ADC. A Gemm whose every row block reaches it verifies EXACT; with the ADC's top code one too low
    (the clip, and the exactness test that chooses the exact path, both read it) --verify says DIFFERENT.
    calibrate-adc (in sram-cim's default pipeline) judges the ADC lossless from the spec's arithmetic, not by
    the mutated code, so it neither calibrates it nor calls the program lossy."""
    import onnx
    from test_sram_cim import saturating_gemm

    from cimc.cim import machine
    from cimc.cim.adc import Adc

    model, x = saturating_gemm()
    onnx.save(model, tmp_path / "sat.onnx")
    np.savez(tmp_path / "x.npz", x=x)
    argv = ["compile", str(tmp_path / "sat.onnx"), "--spec-set", "rows_per_op=63", "--spec-set", "adc_bits=6",
            "--calibration", str(tmp_path / "x.npz"), "--inputs", str(tmp_path / "x.npz"), "--verify", "--force"]
    assert main([*argv, "-o", str(tmp_path / "ok")]) == 0
    assert "vs quantized graph (interpreter): EXACT" in capsys.readouterr().out
    monkeypatch.setattr(machine, "_ADCS", {})  # ADCs are cached per attribute set: forget the sound one
    monkeypatch.setattr(Adc, "top", property(lambda self: (1 << self.bits) - 2))
    assert main([*argv, "-o", str(tmp_path / "bad")]) == 1
    text = capsys.readouterr().out
    assert "DIFFERENT, where it must be exact (no lossy step)" in text and "first differs at layer 'Gemm_0'" in text


# ---- the verifier compares the reference with itself --------------------------------------------------
def test_a_compare_that_ignores_the_program_is_caught(tmp_path, capsys, monkeypatch):
    real = cimc.verify.compare
    monkeypatch.setattr(cimc.verify, "compare", lambda ours, ref: real(ref, ref))
    status, text, v = _compile(tmp_path, capsys)
    assert status == 1 and not v["reference_exact"]
    assert "compare() calls the program's outputs with one element changed equal to them" in v["self_check"]
    assert "DIFFERENT: the verifier failed its self-check" in text


def test_checking_the_reference_against_itself_is_caught(tmp_path, capsys, monkeypatch):
    real = cimc.verify.check_exact
    monkeypatch.setattr(cimc.verify, "check_exact",
                        lambda program, reference, *a, **kw: real(reference, reference, *a, **kw))
    status, text, v = _compile(tmp_path, capsys)
    assert status == 1 and not v["reference_exact"]
    assert v["self_check"] == "the program and the reference are one graph object"
    assert "DIFFERENT: the verifier failed its self-check" in text


def test_an_unlowered_copy_of_the_reference_is_caught(tmp_path, capsys, monkeypatch):
    real = cimc.verify.check_exact
    monkeypatch.setattr(cimc.verify, "check_exact",
                        lambda program, reference, *a, **kw: real(reference.copy(), reference, *a, **kw))
    status, _, v = _compile(tmp_path, capsys)
    assert status == 1 and "the program runs exactly the reference's ops" in v["self_check"]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "uint8", "int32", "int64", "bool"])
@pytest.mark.parametrize("first", [0, 1, -1, 1e30, np.inf])
def test_the_self_check_changes_one_element_of_every_dtype(dtype, first):
    """The one-element change the comparison must see is a change in every dtype (numpy 1.x included)."""
    from cimc.verify import _changed

    a = np.zeros((2, 3), dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        a.flat[0] = np.asarray(first).astype(dtype)
    before = a.copy()
    b = _changed({"y": a, "z": a.copy()})
    assert b is not None and not np.array_equal(b["y"], a) and b["y"].dtype == a.dtype
    assert np.array_equal(b["y"].ravel()[1:], a.ravel()[1:]) and np.array_equal(b["z"], a)
    assert np.array_equal(a, before)  # the outputs given are left alone
    assert _changed({"empty": np.zeros((0, 3), dtype)}) is None
