"""The npu target: lower-npu programs equal the quantized graph bit for bit (every zoo model, W8A8 and
W4A8, dense and 50% sparse, default and tiny buffers that force K/N tiles and position chunks), print
and parse back, cost positive and growing with MACs; the light ONNX models compile."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from cimc import zoo
from cimc.cost import program_cost
from cimc.interpreter import run
from cimc.ir.verifier import verify
from cimc.onnx_io import load_model
from cimc.passmanager import PassContext, PassManager
from cimc.targets import get_target
from cimc.text import parse_graph, print_graph

NPU = get_target("npu")()
TINY = NPU.with_spec(mac_rows=4, mac_cols=8, weight_buffer_bytes=96, act_buffer_bytes=200, out_buffer_bytes=512)
"""Buffers so small that layers split into K tiles, N tiles and position chunks."""


def _quantized(name: str, wb: int, sparse: bool, target=NPU):
    g = load_model(zoo.path(name))
    sp = ",sparsify{ratio=0.5}" if sparse else ""
    ctx = PassContext(target=target, calibration={g.inputs[0].name: zoo.calibration_set()})
    PassManager(f"fold-constants,fuse-batchnorm{sp},quantize{{weight-bits={wb} act-bits=8}}", ctx).run(g)
    return g


def _lower(g, target=NPU):
    target.register_ops()
    p = g.copy()
    PassManager(target.lowering(), PassContext(target=target, verify_each=True)).run(p)
    return p


def _same(a, b, x) -> bool:
    ra, rb = run(a, {a.inputs[0].name: x}), run(b, {b.inputs[0].name: x})
    return list(ra) == list(rb) and all(ra[k].dtype == rb[k].dtype and np.array_equal(ra[k], rb[k]) for k in ra)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("wb", [8, 4])
@pytest.mark.parametrize("name", zoo.NAMES)
def test_lowered_program_is_bit_identical_to_quantized_graph(name, wb, sparse):
    q = _quantized(name, wb, sparse)
    x = zoo.load(name).x_test[:48]
    for target in (NPU, TINY):
        p = _lower(q, target)
        ops = p.ops()
        assert not {"q.conv", "q.gemm", "q.matmul"} & set(ops) and ops["npu.gemm"] >= 1
        assert all("cim.layer" in n.attrs for n in p.nodes)
        assert _same(q, p, x), (name, wb, sparse, target.spec.mac_rows)


def test_full_pipeline_text_and_tiny_buffers_split_layers():
    g = load_model(zoo.path("resnet_tiny"))
    ctx = PassContext(target=TINY, calibration={g.inputs[0].name: zoo.calibration_set()})
    q = g.copy()
    PassManager("fold-constants,fuse-batchnorm,quantize{weight-bits=8 act-bits=8}", ctx).run(q)
    TINY.register_ops()
    PassManager("fold-constants,fuse-batchnorm,quantize{weight-bits=8 act-bits=8},lower-npu", ctx).run(g)
    verify(g)
    gemms = [n for n in g.nodes if n.op == "npu.gemm"]
    assert any(n.attrs["k_range"][0] > 0 for n in gemms)  # K tiles chained through acc
    assert any(n.attrs["n_range"][0] > 0 for n in gemms)  # N tiles
    assert any(n.attrs["positions"] and n.attrs["positions"][0] > 0 for n in gemms)  # position chunks
    assert _same(q, g, zoo.load("resnet_tiny").x_test[:32])


@pytest.mark.parametrize("name", ["resnet_tiny", "hybrid_vit"])
def test_program_prints_parses_and_runs(name, tmp_path):
    from cimc.text import load_graph, save_graph

    p = _lower(_quantized(name, 8, False))
    resources: dict[str, np.ndarray] = {}
    back = parse_graph(print_graph(p, resources=resources), resources=resources)
    verify(back)
    x = zoo.load(name).x_test[:16]
    assert _same(p, back, x)
    save_graph(p, tmp_path / "prog.cimir")
    assert _same(p, load_graph(tmp_path / "prog.cimir"), x)


def test_costs_are_positive_and_scale_with_macs():
    p = _lower(_quantized("resnet_tiny", 8, False))
    costs = [NPU.op_cost(n) for n in p.nodes]
    assert all(c.cycles >= 0 and c.energy_pj >= 0 for c in costs)
    gemm = [(n, c) for n, c in zip(p.nodes, costs, strict=True) if n.op == "npu.gemm"]
    assert all(c.cycles > 0 and c.energy_pj > 0 and c.macs > 0 and c.unit == "array" for _, c in gemm)
    for n, c in gemm:  # the systolic formula, dense tiles
        (k0, k1), (n0, n1) = n.attrs["k_range"], n.attrs["n_range"]
        p_ = c.macs // ((k1 - k0) * (n1 - n0))
        assert c.cycles == -(-(k1 - k0) // 32) * -(-(n1 - n0) // 32) * (p_ + 62)
    loads = [(n, c) for n, c in zip(p.nodes, costs, strict=True) if n.op == "npu.dma_in" and c.unit == "load"]
    assert loads and all(n.attrs["cim.bytes"] > 0 and c.cycles > 0 for n, c in loads)
    report = program_cost(p, NPU)
    assert report.per_inference.macs == sum(c.macs for c in costs) > 0
    assert report.per_inference.cycles > 0 and report.per_inference.energy_pj > 0
    # more MACs, more cost: the bigger model costs more, a sparse one less
    small = program_cost(_lower(_quantized("mlp", 8, False)), NPU).per_inference
    sparse = program_cost(_lower(_quantized("resnet_tiny", 8, True)), NPU).per_inference
    assert small.macs < report.per_inference.macs and small.cycles < report.per_inference.cycles
    assert sparse.macs < report.per_inference.macs and sparse.cycles < report.per_inference.cycles


def test_attention_matmuls_run_on_the_mac_array():
    """hybrid_vit's two matmuls of activations (2 heads of 16 x 16 by 16 x 16): npu.matmul on the MAC array,
    their second operand loaded per inference."""
    p = _lower(_quantized("hybrid_vit", 8, False))
    assert "MatMul" not in p.ops() and "q.act_matmul" not in p.ops()
    mm = [n for n in p.nodes if n.op == "npu.matmul"]
    assert len(mm) == 2 and all(NPU.op_cost(n).unit == "array" and NPU.op_cost(n).macs == 2 * 16 * 16 * 16
                                for n in mm)
    loads = [n.inputs[1].producer for n in mm]
    assert all(n.op == "npu.dma_in" and n.attrs["buffer"] == "weight" and NPU.op_cost(n).unit == "dma"
               for n in loads)


def test_register_ops_is_idempotent_and_pass_is_listed():
    from cimc.passes import get_pass

    NPU.register_ops()
    NPU.register_ops()
    assert get_pass("lower-npu").name == "lower-npu" and [p.name for p in NPU.lowering_passes] == ["lower-npu"]


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
def test_light_models_compile_for_npu(name):
    from cimc.onnx_io import import_model

    t = time.perf_counter()
    g = import_model(onnx.load(LIGHT / f"light_{name}.onnx"))
    rng = np.random.default_rng(0)
    shape = [d if isinstance(d, int) else 1 for d in g.inputs[0].type.shape]
    calib = {g.inputs[0].name: rng.random((2, *shape[1:]), dtype=np.float32)}
    ctx = PassContext(target=NPU, calibration=calib)
    NPU.register_ops()
    PassManager("fold-constants,fuse-batchnorm,quantize{weight-bits=8 act-bits=8}", ctx).run(g)
    q = g.copy() if name == "squeezenet" else None
    PassManager("lower-npu", ctx).run(g)
    seconds = time.perf_counter() - t
    if q is not None:  # one sample through both: bit-identical
        assert _same(q, g, calib[g.inputs[0].name][:1])
    ops = g.ops()
    report = program_cost(g, NPU)
    print(f"{name}: {len(g.nodes)} ops ({ops.get('npu.gemm')} npu.gemm) in {seconds:.1f} s, "
          f"{report.per_inference.cycles:.3g} cycles, {report.per_inference.energy_pj / 1e6:.3g} uJ, "
          f"{report.per_inference.macs} MACs")
    assert not {"q.conv", "q.gemm", "q.matmul", "Conv"} & set(ops)
    assert len(g.nodes) < 20000 and report.per_inference.macs > 0
    assert seconds < 60
