"""Every multiply-accumulate on the hardware, for attention models and for what is left in float: the
matmuls of two activations quantize (``q.act_matmul``) and run on the npu's MAC array or on sram-cim's vector
unit, the program equals the integer reference on real inputs, and a weight layer that would run in float is
one clear error (``--allow-float`` runs it, and the report's first line says so)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from cimc import zoo
from cimc.cli import main
from cimc.driver import compile
from cimc.errors import InputError
from cimc.targets import all_targets

TARGETS = sorted(all_targets())
SPECS = {"memristor": {"ideal": True}}  # a device model's ideal device: its programs must equal the reference
HELDOUT = Path(__file__).resolve().parent.parent / "examples" / "heldout"


@pytest.mark.parametrize("target", TARGETS)
def test_hybrid_vit_runs_its_activation_matmuls_quantized(target):
    """hybrid_vit's two attention matmuls (q k^T and p v): integer in the quantized graph, npu.matmul on the
    npu's MAC array, q.act_matmul on sram-cim's vector unit; the program equals the integer reference on the
    digits test images and top-1 stays within a point of float."""
    m = zoo.load("hybrid_vit")
    x, y = m.x_test[:300], m.y_test[:300]
    c = compile("zoo:hybrid_vit", target, spec=SPECS.get(target), verify=True, inputs=x, labels=y, progress=False)
    assert c.quantized.ops()["q.act_matmul"] == 2
    assert not any(n.op == "MatMul" for g in (c.quantized, c.program) for n in g.nodes)
    program = c.program.ops()
    caps = c.target.capabilities()
    if caps.unit_of("q.act_matmul") == "array":
        assert program.get("npu.matmul") == 2 and "q.act_matmul" not in program
    else:
        assert program.get("q.act_matmul") == 2
    where = {p["layer"]: p["runs_on"] for p in c.placement}
    matmuls = [n.name for n in c.quantized.nodes if n.op == "q.act_matmul"]
    expect = caps.array_name if caps.unit_of("q.act_matmul") == "array" else "vector unit"
    assert [where[name] for name in matmuls] == [expect] * 2, c.placement
    assert not c.float_layers
    v = c.verify
    assert v["reference_exact"], v
    assert v["top1_program"] >= v["top1_float"] - 0.01, v


@pytest.mark.parametrize("target", TARGETS)
def test_a_held_out_attention_model_compiles_with_every_matmul_integer(target):
    """nn.MultiheadAttention exported by torch (not a zoo model): every matmul integer, program exact."""
    manifest = json.loads((HELDOUT / "manifest.json").read_text(encoding="utf-8"))
    entry = next(e for e in manifest["models"] if e["name"] == "conv_mha_dynamo")
    model = onnx.load(str(HELDOUT / entry["file"]))
    x = {"input": np.asarray(zoo.test_set()[0][:64])}
    c = compile(model, target, spec=SPECS.get(target), calibration={"input": zoo.calibration_set()}, inputs=x,
                verify=True, progress=False)
    assert c.quantized.ops().get("q.act_matmul", 0) >= 2 and "MatMul" not in c.quantized.ops()
    assert c.verify["reference_exact"] and c.verify["top1_agreement"] >= 0.95, c.verify


def test_a_weight_layer_left_in_float_is_one_error_line_unless_allowed(capsys, tmp_path):
    """A pipeline without quantize leaves mlp's Gemms in float: `cimc compile` exits 2 with one line naming
    the first node and the option; with --allow-float it compiles, the report opens with a FLOAT line, and
    the placement marks those layers float."""
    out = tmp_path / "out"
    code = main(["compile", "zoo:mlp", "-t", "sram-cim", "-p", "fold-constants", "-o", str(out)])
    o, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "weight-carrying multiply-accumulate(s) would run in float on target 'sram-cim'" in err
    assert "2 weight-carrying" in err and "--allow-float" in err
    assert "node 'node_linear' (Gemm): the pipeline does not quantize it (no quantize pass ran)" in err
    assert not out.exists()
    code = main(["compile", "zoo:mlp", "-t", "sram-cim", "-p", "fold-constants", "-o", str(out), "--allow-float"])
    o, err = capsys.readouterr()
    assert code == 0, err
    first = (out / "report.txt").read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("FLOAT: 2 weight-carrying multiply-accumulate layer(s) run in float"), first
    assert o.startswith("FLOAT: "), o
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [f["op"] for f in report["float_layers"]] == ["Gemm"] * 2
    assert {p["layer"]: p["float"] for p in report["placement"]}["node_linear"] is True


@pytest.mark.parametrize("target", TARGETS)
def test_float_weight_layers_are_refused_by_the_python_api_too(target):
    with pytest.raises(InputError, match=r"would run in float on target .*allow_float=True"):
        compile("zoo:lenet_bn", target, pipeline="fold-constants", progress=False)
    c = compile("zoo:lenet_bn", target, pipeline="fold-constants", allow_float=True, progress=False)
    assert {f["op"] for f in c.float_layers} == {"Conv", "Gemm"}
    assert all(p["float"] for p in c.placement if p["layer"] in {f["layer"] for f in c.float_layers})
