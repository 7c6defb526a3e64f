"""Symbolic dims fixed before import (``--dim``), and the report's account of the dims costs counted as 1."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cimc
from cimc.cli import main
from cimc.errors import CimcError, InputError
from cimc.onnx_io.dims import fix_dims, parse_dims, symbolic_input_dims
from cimc.report import report_text

K, N = 24, 10


def _matmul(seq: str | int = "seq") -> onnx.ModelProto:
    """``Y[batch, seq, N] = X[batch, seq, K] @ W``, W seeded, ``seq`` also declared on an intermediate value."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((K, N)).astype(np.float32), "W")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["P"]), helper.make_node("Relu", ["P"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", seq, K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", seq, N])], [w],
        value_info=[helper.make_tensor_value_info("P", TensorProto.FLOAT, ["batch", seq, N])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_parse_dims():
    assert parse_dims(["seq=128", " h = 7 "]) == {"seq": 128, "h": 7}
    for bad, why in (("seq", "NAME=SIZE"), ("=3", "NAME=SIZE"), ("seq=", "NAME=SIZE"), ("seq=0", "positive"),
                     ("seq=-2", "positive"), ("seq=1.5", "positive")):
        with pytest.raises(InputError, match=why):
            parse_dims([bad])
    with pytest.raises(InputError, match="twice"):
        parse_dims(["seq=2", "seq=3"])


def test_fix_dims_sets_every_value_info_and_onnx_infers_the_rest():
    """The fixed model is what onnx's own shape inference makes of it (the reference): the output at the size;
    a Scan body's value-infos naming the dim are fixed too; the model given is not changed."""
    m = _matmul()
    fixed = fix_dims(m, {"seq": 5})
    assert [d.dim_param or d.dim_value for d in fixed.graph.output[0].type.tensor_type.shape.dim] == ["batch", 5, N]
    assert [d.dim_param or d.dim_value for d in fixed.graph.value_info[0].type.tensor_type.shape.dim] == ["batch", 5, N]
    assert symbolic_input_dims(m) == ["batch", "seq"] and symbolic_input_dims(fixed) == ["batch"]
    inferred = onnx.shape_inference.infer_shapes(fix_dims(_stripped(m), {"seq": 5}), strict_mode=True)
    assert [d.dim_param or d.dim_value for d in inferred.graph.value_info[0].type.tensor_type.shape.dim] == \
        ["batch", 5, N]
    body = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "body",
                             [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["seq"])],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["seq"])])
    scan = helper.make_node("Scan", ["Y"], ["Z"], body=body, num_scan_inputs=1)
    m.graph.node.append(scan)
    sub = fix_dims(m, {"seq": 5}).graph.node[-1].attribute[0].g
    assert [d.dim_value for d in sub.input[0].type.tensor_type.shape.dim] == [5]
    assert m.graph.node[-1].attribute[0].g.input[0].type.tensor_type.shape.dim[0].dim_param == "seq"


def _stripped(m: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    del out.graph.value_info[:]
    return out


def test_fix_dims_refuses_a_name_the_inputs_do_not_have():
    with pytest.raises(InputError, match=r"'len' is not a symbolic dim of the model's inputs \(they have: 'batch', "
                                         r"'seq'\)"):
        fix_dims(_matmul(), {"len": 3})


def _compile(model: onnx.ModelProto, **kw):
    x = np.random.default_rng(1).standard_normal((4, kw.pop("calib_seq", 1), K)).astype(np.float32)
    return cimc.compile(model, target="sram-cim", calibration={"X": x}, progress=False, **kw)


def test_a_fixed_sequence_is_priced_at_its_size_and_a_symbolic_one_is_reported(caplog):
    """MACs per inference: seq * K * N with the dim fixed (a hand count), K * N with it symbolic, and then the
    report opens with a DIMS line, report.json's ``dims`` lists it, and a warning says how to fix it."""
    c1 = _compile(_matmul())
    assert c1.cost is not None and c1.cost.per_inference.macs == K * N
    assert c1.report["dims"] == {"fixed": {}, "batch": ["batch"], "other": ["seq"], "unknown": 0}
    text = report_text(c1)
    assert text.startswith("DIMS: symbolic dim(s) 'seq' (not the batch) counted as 1 per inference")
    assert "--dim seq=SIZE" in text
    assert any("--dim seq=SIZE" in r.getMessage() for r in caplog.records)
    caplog.clear()
    c7 = _compile(_matmul(), dims={"seq": 7}, calib_seq=7)
    assert c7.cost is not None and c7.cost.per_inference.macs == 7 * K * N
    assert c7.report["dims"] == {"fixed": {"seq": 7}, "batch": ["batch"], "other": [], "unknown": 0}
    assert not report_text(c7).startswith("DIMS") and "dims: fixed seq=7; counted as 1 per inference: batch (the " \
        "batch)" in report_text(c7)
    assert not any("--dim" in r.getMessage() for r in caplog.records)
    # a model exported with the size fixed is priced the same (the reference: no dims involved)
    c_static = _compile(_matmul(7), calib_seq=7)
    assert c_static.cost is not None and c_static.cost.per_inference.macs == c7.cost.per_inference.macs


def test_calibration_of_another_size_is_refused():
    with pytest.raises(CimcError, match=r"calibration input 'X' does not fit the graph input f32\[batch,7,24\]"):
        _compile(_matmul(), dims={"seq": 7}, calib_seq=3)


def test_dims_on_a_graph_or_cimir_source_is_refused(tmp_path):
    from cimc.onnx_io import import_model

    with pytest.raises(InputError, match=r"fix an ONNX model's symbolic input dims before import; .* is a Graph"):
        cimc.compile(import_model(_matmul()), target="sram-cim", dims={"seq": 3}, progress=False)


def test_cli_dim(capsys, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_matmul(), path)
    np.savez(tmp_path / "c.npz", X=np.random.default_rng(1).standard_normal((4, 6, K)).astype(np.float32))
    out = tmp_path / "out"
    assert main(["compile", str(path), "--target", "npu", "--dim", "seq=6", "--calibration",
                 str(tmp_path / "c.npz"), "-o", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["dims"]["fixed"] == {"seq": 6}
    for bad in ("seq", "seq=x", "len=4"):
        capsys.readouterr()
        assert main(["compile", str(path), "--target", "npu", "--dim", bad, "-o", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cimc: error:") and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()
