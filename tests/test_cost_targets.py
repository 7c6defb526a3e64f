"""Each target's cost of one small layer, against a hand computation written here from the spec's numbers.

The layer: an ONNX ``Gemm`` of a [batch, 100] input (symbolic batch: one sample) by a 10 x 100 weight whose
columns 64..99 are zero (a pruned row block), with a bias, compiled end to end. The hand computations
below restate each target's documented cost formulas with the default spec's numbers typed in, so a
change of a formula or a figure (an ADC energy doubled, one-time programming charged per inference, a
spill not charged) fails here.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc.driver import compile as compile_model

K, N = 100, 10


def _gemm_model(k: int = K, n: int = N) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(n, k)).astype(np.float32)
    w[:, 64:] = 0.0  # rows 64..99 of the weight matrix: an all-zero row block
    b = rng.normal(size=n).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)], "one_gemm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _compile(target: str, **spec):
    calib = np.random.default_rng(1).normal(size=(16, K)).astype(np.float32)
    c = compile_model(_gemm_model(), target, spec=spec or None, calibration=calib, progress=False)
    d = c.cost.to_dict()
    layer = {l["name"]: l for l in d["per_inference"]["layers"]}["fc"]
    once = {l["name"]: l for l in d["one_time"]["layers"]}
    return c, d, layer, once


def _adc_pj(bits: int) -> float:
    """The spec's 0.039168 pJ at 4 b moved along ZigZag-IMC's (100 B + 0.001 4^B) fF law."""
    return 0.039168 * (100 * bits + 0.001 * 4**bits) / (100 * 4 + 0.001 * 4**4)


def test_sram_cim_cost_of_one_layer_equals_the_hand_computation():
    c, d, layer, once = _compile("sram-cim", adc_bits=5, dac_bits=2)
    assert not c.target.capabilities().adc_lossless  # 5 b < 8 b needed for 64 rows x 3 x 1: costs move all the same
    # one tile: K = 100 rows, 10 channels x 8 weight slices = 80 columns; row block 1 (rows 64..99) is zero:
    # skipped, so 1 driven block of 64 rows; 8-b inputs in 2-b chunks: J = 4; P = 1 position (one sample)
    passes = 1 * 1 * 4
    conversions_per_adc = -(-80 // 16)  # 128 columns / 8 per ADC = 16 ADCs
    adc_ns = 0.8 * 5 / 4  # 0.8 ns at 4 b, proportional to bits
    pass_cycles = 1 + int(np.ceil(conversions_per_adc * adc_ns))  # at 1 GHz
    mvm_cycles = passes * pass_cycles + 1  # and the last shift-add (shift_add_cycles)
    # calibrate-adc gave each ADC (8 columns) a range; a range with an offset costs one add per position and
    # column (the offset times the column's conversions, added once): the tile's 80 columns are groups 0..9
    (mvm_node,) = [n for n in c.program.nodes if n.op == "sram.mvm"]
    assert mvm_node.attrs["adc_step"].shape == (1, 16) and mvm_node.attrs["adc_group"] == 8
    offset_adds = 1 * 8 * int((mvm_node.attrs["adc_offset"][0, :10] != 0).sum())
    assert offset_adds > 0
    mvm = {"arrays": 4 * 64 * 80 * 0.00072,  # P*J*rows_active*C*mvm_cell_pj
           "dac": 4 * 64 * 0.050688 * 2,  # P*J*rows_active*dac_pj*(2 bits / 1 bit)
           "adc": 4 * 1 * 80 * _adc_pj(5),  # P*J*A*C conversions
           "shift_add": (4 * 1 * 80 + offset_adds) * 0.004608,
           "buffers": (4 * 1 * 10 + 1 * 100) * 0.997,  # int32 results written + input rows read
           "interconnect": 100 * 0.174}
    bias_add = {"vector_unit": 10 * 0.029}  # Add of 10 int32 channels: one 16-lane step
    assert mvm_cycles == 25
    assert layer["cycles"] == mvm_cycles + 1 and layer["latency_us"] == pytest.approx((mvm_cycles + 1) / 1000)
    assert layer["macs"] == 64 * 10
    want = {k: mvm.get(k, 0.0) + bias_add.get(k, 0.0) for k in {*mvm, *bias_add}}
    assert layer["energy_nj_by_component"] == pytest.approx({k: v / 1e3 for k, v in want.items()}, rel=1e-9)
    assert layer["energy_nj"] == pytest.approx(sum(want.values()) / 1e3, rel=1e-9)
    assert layer["dram_bytes"] == {"weights": 0.0, "spills": 0.0}
    # programming, once: 100 rows x 80 cells of 1 bit, fetched as 1000 bytes from DRAM
    prog = once["fc"]
    assert prog["cycles"] == pytest.approx(100 * 1 + 1000 / 16)
    assert prog["energy_nj"] == pytest.approx((8000 * 0.0016 + 1000 * 64.0) / 1e3, rel=1e-9)
    assert d["one_time"]["cell_writes_by_array"] == [{"array": 0, "cells": 8000}]
    assert d["per_inference"]["weight_reloads"]["ops"] == 0 and "load" not in d["per_inference"]["by_unit"]


def test_sram_cim_prices_the_adds_of_complemented_columns():
    """Complemented columns (flip, chosen by map-errors) cost, per position, the sum of the tile's driven inputs
    (64 rows) and one subtraction per column, at shift_add_pj."""
    c, _, _, _ = _compile("sram-cim", adc_bits=5, dac_bits=2)
    (node,) = [n for n in c.program.nodes if n.op == "sram.mvm"]
    plain = c.target.op_cost(node).parts["shift_add"]
    node.attrs["tiles"] = node.attrs["tiles"].replace(flip=[np.arange(5)])
    flipped = c.target.op_cost(node).parts["shift_add"]
    assert flipped - plain == pytest.approx(1 * (64 + 5) * 0.004608, rel=1e-9)


def test_sram_cim_spills_beyond_the_buffers_equal_the_hand_computation():
    _, _, small, _ = _compile("sram-cim", adc_bits=5, dac_bits=2, act_buffer_bytes=50, out_buffer_bytes=20)
    _, _, big, _ = _compile("sram-cim", adc_bits=5, dac_bits=2)
    # input: 100 bytes, half beyond the 50-byte buffer: written once (first round) and read once (all rows);
    # accumulators: 40 bytes, half beyond 20: written and read back
    spill = 0.5 * 100 * (1 + 1) + 2 * 0.5 * 40
    assert small["dram_bytes"] == {"weights": 0.0, "spills": pytest.approx(spill)}
    assert small["energy_nj"] - big["energy_nj"] == pytest.approx(spill * 64.0 / 1e3, rel=1e-9)
    assert small["energy_nj_by_component"]["dram"] == pytest.approx(spill * 64.0 / 1e3, rel=1e-9)
    assert small["cycles"] - big["cycles"] == pytest.approx(spill / 16)


def test_npu_cost_of_one_layer_equals_the_hand_computation():
    _, d, layer, once = _compile("npu")
    # one 100 x 10 weight tile on the 32 x 32 array: 4 x 1 passes, of which rows 64..99 (2 passes) are zero
    passes, cells = 2, 2 * 32 * 10
    gemm_cycles = passes * (1 + 32 + 32 - 2)
    macs = 1 * cells
    gemm = {"arrays": macs * (0.087 + 0.087),
            "buffers": (1 * 100 * 1 + cells + 8 * 1 * 10 * 4) * 0.997}  # act reads, weight reads, acc reads+writes
    dma_in = {"buffers": 100 * 0.997}  # the input fits the 64 KiB activation buffer: no DRAM
    dma_out = {"buffers": 40 * 0.997}
    want = {"arrays": gemm["arrays"], "buffers": gemm["buffers"] + dma_in["buffers"] + dma_out["buffers"]}
    assert layer["cycles"] == pytest.approx(100 / 16 + gemm_cycles + 40 / 16)
    assert layer["macs"] == macs
    assert layer["energy_nj_by_component"] == pytest.approx({k: v / 1e3 for k, v in want.items()}, rel=1e-9)
    assert layer["dram_bytes"] == {"weights": 0.0, "spills": 0.0}
    # the weights fit the weight buffer: loaded once, before inference
    prog = once["fc"]
    assert prog["cycles"] == pytest.approx(1000 / 16)
    assert prog["energy_nj"] == pytest.approx(1000 * (64.0 + 0.997) / 1e3, rel=1e-9)
    assert d["per_inference"]["weight_reloads"]["ops"] == 0


def test_npu_spills_and_streamed_weights_equal_the_hand_computation():
    c, d, layer, once = _compile("npu", act_buffer_bytes=50, out_buffer_bytes=64, weight_buffer_bytes=640)
    # weights (1000 B) no longer fit the buffer: streamed from DRAM on every inference, per inference
    assert not once and d["per_inference"]["weight_reloads"]["ops"] >= 1
    loads = [n for n in c.program.nodes if n.op == "npu.dma_in" and n.attrs["buffer"] == "weight"]
    wbytes = sum(n.attrs["bytes"] for n in loads)
    assert layer["dram_bytes"]["weights"] == wbytes
    # the input (100 B) is half beyond the 50-byte buffer: written and read back, 2 * 0.5 * chunk bytes
    ins = [n for n in c.program.nodes if n.op == "npu.dma_in" and n.attrs["buffer"] == "act"]
    out_bytes = 4 * 10  # int32 result: fits 64 B
    assert layer["dram_bytes"]["spills"] == pytest.approx(sum(2 * 0.5 * n.attrs["bytes"] for n in ins))
    assert out_bytes < 64


@pytest.mark.parametrize("target", ["npu", "sram-cim", "racetrack"])
def test_attention_matmuls_are_costed_by_their_macs_with_a_symbolic_batch(target):
    """softmax(q k^T) v of [batch, 4, 16, 8] activations, quantized (q.act_matmul): 4 x 16 x 16 x 8 MACs per
    sample and matmul, on the npu's MAC array (npu.matmul: INT8 MACs, mac_pj + pe_reg_pj each, the second
    operand loaded per inference) or on sram-cim's and racetrack's vector unit (vec_mul_pj + vec_op_pj each)."""
    qkv = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4, 16, 8]) for n in ("q", "k", "v")]
    g = helper.make_graph([helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
                           helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
                           helper.make_node("Softmax", ["s"], ["p"], axis=-1),
                           helper.make_node("MatMul", ["p", "v"], ["y"], name="mix")], "attn", qkv,
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 16, 8])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(0)
    calib = {n: rng.normal(size=(2, 4, 16, 8)).astype(np.float32) for n in ("q", "k", "v")}
    c = compile_model(model, target, calibration=calib, progress=False)
    spec = c.target.spec
    assert not {"MatMul", "q.act_matmul" if target == "npu" else "npu.matmul"} & set(c.program.ops())
    layers = {l["name"]: l for l in c.cost.to_dict()["per_inference"]["layers"]}
    macs = 4 * 16 * 16 * 8
    for name in ("scores", "mix"):
        assert layers[name]["macs"] == macs
        if target == "npu":
            assert layers[name]["energy_nj_by_component"]["arrays"] == pytest.approx(
                macs * (spec.mac_pj + spec.pe_reg_pj) / 1e3, rel=1e-9)
            assert layers[name]["by_unit"]["dma"]["ops"] == 2  # both operands, per inference
        else:
            result = 4 * 16 * (16 if name == "scores" else 8)  # int32 results: one add-class op each
            assert layers[name]["energy_nj_by_component"] == pytest.approx(
                {"vector_unit": (macs * (0.899 + 0.029) + result * 0.029) / 1e3}, rel=1e-9)
    if target != "npu":  # MACs at 16 lanes, plus the result's elementwise step
        assert layers["scores"]["cycles"] == 4 * 16 * 16 * 8 / 16 + 4 * 16 * 16 / 16
    assert [p["runs_on"] for p in c.placement if p["layer"] in ("scores", "mix")] == \
        ["MAC array" if target == "npu" else "vector unit"] * 2


def test_an_adc_sweep_moves_energy_latency_and_area():
    rows = []
    for bits in range(3, 9):
        _, d, layer, _ = _compile("sram-cim", adc_bits=bits)
        rows.append((layer["energy_nj_by_component"]["adc"], layer["cycles"], d["area_mm2"]["by_component"]["adc"]))
        # 1-b inputs: 8 passes over the one driven block, 80 conversions each
        assert layer["energy_nj_by_component"]["adc"] == pytest.approx(8 * 80 * _adc_pj(bits) / 1e3, rel=1e-9)
    for (e0, t0, a0), (e1, t1, a1) in itertools.pairwise(rows):
        assert e1 > e0 and t1 >= t0 and a1 > a0
    assert rows[-1][1] > rows[0][1]


def _two_layers() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    w1, w2 = rng.normal(size=(40, 100)).astype(np.float32), rng.normal(size=(10, 40)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", transB=1),
                           helper.make_node("Relu", ["h"], ["r"]),
                           helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2", transB=1)], "two",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 100])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target", ["npu", "sram-cim"])
def test_a_model_that_fits_programs_its_arrays_once_and_one_that_does_not_reloads(target):
    calib = np.random.default_rng(3).normal(size=(16, 100)).astype(np.float32)
    fits = compile_model(_two_layers(), target, calibration=calib, progress=False).cost
    small = {"npu": {"weight_buffer_bytes": 4000}, "sram-cim": {"macros": 1}}[target]
    tight = compile_model(_two_layers(), target, spec=small, calibration=calib, progress=False).cost
    # fits: every load keeps its cells (npu: 4,000 + 400 weight bytes at their own offsets of the 64 KiB
    # buffer; sram-cim: 40 channels x 8 slices = 320 columns of fc1 in 3 tiles of 16, 16 and 8 channels on
    # macros 0-2, fc2's 10 channels on macro 3), so the loads are one-time and nothing loads per inference
    loads = {"npu": 2, "sram-cim": 2}[target]
    assert fits.one_time.ops == loads and not fits.reloads
    cells = {"npu": {0: 4000 + 400}, "sram-cim": {0: 100 * 128, 1: 100 * 128, 2: 100 * 64, 3: 40 * 80}}[target]
    assert fits.one_time.cell_writes == cells
    # does not fit (npu: a 4,000-byte buffer; sram-cim: one macro): both loads rewrite the same cells on every
    # inference, so they are per inference, with their DRAM traffic
    assert tight.one_time.ops == 0 and tight.reloads and tight.per_inference.by_unit["load"]["ops"] >= loads
    assert tight.per_inference.dram_bytes["weights"] == fits.one_time.dram_bytes["weights"]
    assert tight.per_inference.by_unit["load"]["energy_pj"] == pytest.approx(fits.one_time.energy_pj, rel=1e-9)
    assert tight.per_inference.energy_pj > fits.per_inference.energy_pj + fits.one_time.energy_pj * (1 - 1e-9)
