"""The ONNX exporter: hand-made models go import -> export -> onnxruntime and give the outputs the
original model gives; the exported model passes the full ONNX checker and imports back equal."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc.errors import CimcError, UnsupportedOpError
from cimc.interpreter import run
from cimc.ir import DType, Graph, TensorType
from cimc.ir.equality import graph_difference
from cimc.onnx_io import export_model, import_model, save_model
from cimc.onnx_io.exporter import EXPORT_OPSET

F = TensorProto.FLOAT
RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits=(), opset: int = 18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                              [helper.make_tensor_value_info(*((n, F, None) if isinstance(n, str) else (n[0], F, n[1])))
                               for n in outputs],
                              [numpy_helper.from_array(np.asarray(a), n) for n, a in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)  # as exporters of the time wrote them
    model = onnx.shape_inference.infer_shapes(model)  # the output types the checker requires
    onnx.checker.check_model(model, full_check=True)
    return model


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _round_trip(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Import and export ``model``; check the export is valid, runs to the original's outputs in
    onnxruntime and in the interpreter, and imports back to the same graph."""
    graph = import_model(model)
    exported = export_model(graph)
    onnx.checker.check_model(exported, full_check=True)
    assert [o.version for o in exported.opset_import if o.domain == ""] == [EXPORT_OPSET]
    want, got = _ort(model, feeds), _ort(exported, feeds)
    ours = run(graph, feeds)
    assert [o.name for o in exported.graph.output] == [o.name for o in model.graph.output]
    for a, b in zip(exported.graph.output, model.graph.output, strict=True):
        ta, tb = a.type.tensor_type, b.type.tensor_type
        assert (ta.elem_type, len(ta.shape.dim)) == (tb.elem_type, len(tb.shape.dim)), a.name
    for name, w, g in zip(ours, want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(ours[name], w, rtol=1e-4, atol=1e-5, err_msg=name)
    back = import_model(exported)
    back.metadata = dict(graph.metadata)
    assert graph_difference(graph, back) is None, graph_difference(graph, back)
    return exported


def _x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape, dtype=np.float32)


def test_conv_net_with_symbolic_batch() -> None:
    w, b = _x(8, 3, 3, 3) * 0.3, _x(8)
    scale, bias, mean, var = _x(8), _x(8), _x(8), np.abs(_x(8)) + 0.5
    w2, w3, fc, fcb = _x(8, 1, 3, 3), _x(8, 4, 2, 2), _x(10, 4), _x(10)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], name="bn",
                         epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["dw"], name="depthwise", group=8, pads=[2, 2, 2, 2],
                         dilations=[2, 2]),
        helper.make_node("MaxPool", ["dw"], ["mp"], name="pool", kernel_shape=[3, 3], strides=[1, 1],
                         pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["mp", "w3"], ["ct"], name="deconv", strides=[2, 2]),
        helper.make_node("AveragePool", ["ct"], ["ap"], name="avg", kernel_shape=[2, 2], strides=[2, 2],
                         count_include_pad=1),
        helper.make_node("GlobalAveragePool", ["ap"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], name="fc", transB=1, alpha=0.5),
        helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=-1),
    ]
    inits = [("w", w), ("b", b), ("scale", scale), ("bias", bias), ("mean", mean), ("var", var), ("w2", w2),
             ("w3", w3), ("fc", fc), ("fcb", fcb)]
    model = _model(nodes, [("x", ["N", 3, 16, 16])], [("prob", ["N", 10]), ("logits", ["N", 10])], inits)
    exported = _round_trip(model, {"x": _x(2, 3, 16, 16)})
    dims = exported.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 16, 16]
    assert [d.dim_param for d in exported.graph.output[0].type.tensor_type.shape.dim] == ["N", ""]
    assert [i.name for i in exported.graph.input] == ["x"]
    assert {i.name for i in exported.graph.initializer} == {n for n, _ in inits}
    assert [n.name for n in exported.graph.node] == [n.name for n in nodes]
    _round_trip(model, {"x": _x(1, 3, 16, 16)})


def test_elementwise_and_activations() -> None:
    nodes = [
        helper.make_node("Add", ["a", "b"], ["add"]),
        helper.make_node("Sub", ["add", "c"], ["sub"]),
        helper.make_node("Mul", ["sub", "b"], ["mul"]),
        helper.make_node("Max", ["mul", "a", "c"], ["max"]),
        helper.make_node("Min", ["max", "b"], ["min"]),
        helper.make_node("Sum", ["min", "a", "c"], ["sum"]),
        helper.make_node("Sigmoid", ["sum"], ["sig"]),
        helper.make_node("Div", ["sum", "sig"], ["div"]),
        helper.make_node("Pow", ["sig", "two"], ["pow"]),
        helper.make_node("Sqrt", ["pow"], ["sqrt"]),
        helper.make_node("Tanh", ["div"], ["tanh"]),
        helper.make_node("LeakyRelu", ["div"], ["leaky"], alpha=0.2),
        helper.make_node("HardSigmoid", ["leaky"], ["hsig"], alpha=0.3, beta=0.4),
        helper.make_node("HardSwish", ["leaky"], ["hswish"]),
        helper.make_node("Erf", ["tanh"], ["erf"]),
        helper.make_node("Gelu", ["div"], ["gelu"], approximate="tanh"),
        helper.make_node("Clip", ["div", "lo", "hi"], ["clip"]),
        helper.make_node("Clip", ["div", "", "hi"], ["clip_hi"]),
    ]
    inits = [("two", np.float32(2.0)), ("lo", np.float32(-0.5)), ("hi", np.float32(0.7))]
    outs = ["sqrt", "tanh", "hsig", "hswish", "erf", "gelu", "clip", "clip_hi"]
    model = _model(nodes, [("a", ["B", 4]), ("b", [4]), ("c", [1, 4])], outs, inits, opset=20)
    exported = _round_trip(model, {"a": _x(3, 4), "b": _x(4), "c": _x(1, 4)})
    clip_hi = next(n for n in exported.graph.node if n.output[0] == "clip_hi")
    assert list(clip_hi.input) == ["div", "", "hi"]  # an absent optional operand stays a gap


def test_shape_ops() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "rest"], ["new_shape"], axis=0),
        helper.make_node("Reshape", ["x", "new_shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Unsqueeze", ["t", "ax1"], ["u"]),
        helper.make_node("Squeeze", ["u", "ax1"], ["s"]),
        helper.make_node("Slice", ["s", "starts", "ends", "axes", "steps"], ["sl"]),
        helper.make_node("Split", ["sl", "split"], ["p0", "p1"], axis=1),
        helper.make_node("Split", ["sl"], ["q0", "q1", "q2"], axis=2, num_outputs=3),
        helper.make_node("Pad", ["p1", "pads", "padval"], ["pad"], mode="constant"),
        helper.make_node("Pad", ["q0", "pads"], ["refl"], mode="reflect"),
        helper.make_node("Expand", ["q2", "eshape"], ["e"]),
        helper.make_node("Cast", ["e"], ["ci"], to=TensorProto.INT32),
        helper.make_node("Cast", ["ci"], ["cf"], to=TensorProto.FLOAT),
        helper.make_node("Identity", ["cf"], ["id"]),
        helper.make_node("ConstantOfShape", ["cshape"], ["ones"],
                         value=numpy_helper.from_array(np.array([1.5], np.float32))),
        helper.make_node("Flatten", ["pad"], ["flat"], axis=2),
        helper.make_node("Gather", ["x", "idx"], ["g"], axis=2),
    ]
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    inits = [("zero", i64(0)), ("rest", i64(6, 4)), ("ax1", i64(1)), ("starts", i64(1, 0)),
             ("ends", i64(6, 6)), ("axes", i64(1, 2)), ("steps", i64(2, 1)), ("split", i64(1, 1)),
             ("pads", i64(0, 1, 1, 0, 1, 1)), ("padval", np.float32(0.25)), ("eshape", i64(2, 1, 1, 2)),
             ("cshape", i64(2, 3)), ("idx", i64(3, 0, 1))]
    outs = ["pad", "refl", "id", "ones", "flat", "g", "q1"]
    model = _model(nodes, [("x", ["N", 4, 6])], outs, inits)
    _round_trip(model, {"x": _x(2, 4, 6) * 3})


def test_reductions_normalization_matmul() -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"]),
        helper.make_node("ReduceMean", ["mm", "axes"], ["mean"], keepdims=1),
        helper.make_node("ReduceSum", ["mm", "axes"], ["total"], keepdims=0),
        helper.make_node("ReduceMean", ["mm"], ["all"], keepdims=0),
        helper.make_node("LayerNormalization", ["mm", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-4),
        helper.make_node("Unsqueeze", ["mm", "ax0"], ["img"]),
        helper.make_node("LRN", ["img"], ["lrn"], size=3, alpha=1e-3, beta=0.75, bias=1.0),
    ]
    inits = [("w", _x(5, 6)), ("axes", np.array([-1], np.int64)), ("gamma", _x(6)), ("beta", _x(6)),
             ("ax0", np.array([0], np.int64))]
    model = _model(nodes, [("x", [3, 4, 5])], ["mean", "total", "all", "ln", "lrn"], inits)
    _round_trip(model, {"x": _x(3, 4, 5)})


def test_lstm_with_unused_first_output() -> None:
    """An absent result in the middle stays ``""`` (the importer names it ``<node>_unused_0``)."""
    hidden, feat = 3, 2
    nodes = [helper.make_node("LSTM", ["x", "w", "r", "b"], ["", "y_h"], name="lstm", hidden_size=hidden,
                              activations=["Sigmoid", "Tanh", "Relu"])]
    inits = [("w", _x(1, 4 * hidden, feat)), ("r", _x(1, 4 * hidden, hidden)), ("b", _x(1, 8 * hidden))]
    model = _model(nodes, [("x", [4, "B", feat])], ["y_h"], inits)
    graph = import_model(model)
    assert graph.nodes[0].outputs[0].name == "lstm_unused_0"
    exported = _round_trip(model, {"x": _x(4, 2, feat)})
    assert list(exported.graph.node[0].output) == ["", "y_h"]


def test_dropout_mask_placeholder_stays_absent() -> None:
    nodes = [helper.make_node("Dropout", ["x"], ["y", ""], name="drop"),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    model = _model(nodes, [("x", [2, 3])], ["z"])
    exported = _round_trip(model, {"x": _x(2, 3)})
    assert list(exported.graph.node[0].output) == ["y", ""]


def test_old_opset_model_exports_in_newest_form() -> None:
    """Opset-11 attributes that later became operands come back as operands, same numbers."""
    nodes = [
        helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0]),
        helper.make_node("Squeeze", ["u"], ["s"], axes=[0]),
        helper.make_node("ReduceSum", ["s"], ["rs"], axes=[1], keepdims=1),
        helper.make_node("ReduceMean", ["s"], ["rm"], axes=[2], keepdims=1),
        helper.make_node("Split", ["s"], ["a", "b"], axis=2, split=[1, 3]),
        helper.make_node("Softmax", ["s"], ["soft"], axis=1),  # the opset-11 flattening softmax
        helper.make_node("Add", ["a", "rs"], ["ar"]),
        helper.make_node("Mul", ["b", "rm"], ["br"]),
    ]
    model = _model(nodes, [("x", [2, 3, 4])], ["ar", "br", "soft"], opset=11)
    exported = _round_trip(model, {"x": _x(2, 3, 4)})
    squeeze = next(n for n in exported.graph.node if n.op_type == "Squeeze")
    assert len(squeeze.input) == 2 and not squeeze.attribute


def test_quantize_dequantize() -> None:
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq")]
    inits = [("s", np.float32(0.05)), ("zp", np.uint8(128))]
    model = _model(nodes, [("x", ["N", 8])], ["y"], inits, opset=21)
    _round_trip(model, {"x": _x(3, 8)})


def test_int4_constants_are_packed() -> None:
    g = Graph("int4")
    x = g.add_input("x", TensorType(DType.f32, ("N", 4)))
    q = np.array([[-8, 7, 0], [1, -1, 3], [5, -5, 2], [4, -3, -7]], np.int8)
    w = g.add_constant(q, "w_i4", type=TensorType(DType.i4, (4, 3)))
    scale = g.add_constant(np.float32(0.25), "scale")
    dq = g.add_node("DequantizeLinear", [w, scale], name="dq").output
    g.outputs = [g.add_node("MatMul", [x, dq], name="mm").output]
    model = export_model(g)
    onnx.checker.check_model(model, full_check=True)
    init = next(t for t in model.graph.initializer if t.name == "w_i4")
    assert init.data_type == TensorProto.INT4 and len(init.raw_data) == 6  # two nibbles a byte
    np.testing.assert_array_equal(numpy_helper.to_array(init).astype(np.int8), q)
    xs = _x(2, 4)
    so = ort.SessionOptions()  # optimized, onnxruntime fuses DQ+MatMul into a lossy MatMulNBits
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": xs})[0], xs @ (q * 0.25), rtol=1e-5, atol=1e-6)


def test_names_types_and_metadata_are_kept() -> None:
    g = Graph("meta")
    x = g.add_input("in:0/odd name", TensorType(DType.f32, (None, "T", 3)))
    c = g.add_constant(np.ones(3, np.float32), "weights/w:0")
    y = g.add_node("Add", [x, c], name="node one/add", output_names=["out value"]).output
    g.outputs = [y]
    g.metadata.update({"source": "unit test", "cimc.note": "kept"})
    model = export_model(g)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["in:0/odd name"]
    assert [t.name for t in model.graph.initializer] == ["weights/w:0"]
    assert model.graph.node[0].name == "node one/add" and model.graph.output[0].name == "out value"
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.WhichOneof("value") for d in dims] == [None, "dim_param", "dim_value"]
    assert {p.key: p.value for p in model.metadata_props} == g.metadata
    assert model.graph.name == "meta" and model.producer_name == "cimc"
    xs = _x(2, 5, 3)
    np.testing.assert_allclose(_ort(model, {"in:0/odd name": xs})[0], xs + 1)


def test_dotted_op_cannot_export() -> None:
    g = Graph("dotted")
    x = g.add_input("x", TensorType(DType.f32, (2,)))
    r = g.add_node("Relu", [x], name="relu").output
    g.outputs = [g.add_node("my.requant", [r], outputs=[TensorType(DType.i8, (2,))], name="my_requant").output]
    with pytest.raises(UnsupportedOpError, match=r"my\.requant \(node 'my_requant'\) is not an ONNX op"):
        export_model(g)


def _cast_graph(attrs: dict) -> Graph:
    g = Graph("cast")
    x = g.add_input("x", TensorType(DType.f32, (2,)))
    g.outputs = [g.add_node("Cast", [x], {"to": TensorProto.FLOAT16, **attrs}, name="cast").output]
    return g


def test_attributes_checked_against_the_export_opset() -> None:
    model = export_model(_cast_graph({"round_mode": "up"}), opset=21)  # a default: dropped
    assert [a.name for a in model.graph.node[0].attribute] == ["to"]
    onnx.checker.check_model(model, full_check=True)
    assert {a.name for a in export_model(_cast_graph({"round_mode": "up"})).graph.node[0].attribute} == {
        "to", "round_mode"}
    with pytest.raises(CimcError, match=r"'cast' \(Cast\): attribute round_mode='down' does not exist in "
                                        r"Cast at opset 21.*opset >= 24"):
        export_model(_cast_graph({"round_mode": "down"}), opset=21)


def test_ops_and_operands_checked_against_the_export_opset() -> None:
    g = Graph("g")
    x = g.add_input("x", TensorType(DType.f32, (2, 3)))
    axes = g.add_constant(np.array([1], np.int64), "axes")
    g.outputs = [g.add_node("ReduceMean", [x, axes], name="mean").output]
    with pytest.raises(CimcError, match=r"'mean' \(ReduceMean\): has 2 operands.*opset >= 18"):
        export_model(g, opset=17)
    onnx.checker.check_model(export_model(g, opset=18), full_check=True)
    g2 = Graph("g2")
    x = g2.add_input("x", TensorType(DType.f32, (2, 3)))
    g2.outputs = [g2.add_node("Gelu", [x], name="gelu").output]
    with pytest.raises(CimcError, match=r"'gelu' \(Gelu\): the op first exists in ONNX opset 20"):
        export_model(g2, opset=19)
    with pytest.raises(CimcError, match="cannot export to opset 12"):
        export_model(g2, opset=12)


def test_save_model_is_atomic(tmp_path) -> None:
    g = _cast_graph({})
    path = tmp_path / "sub" / "m.onnx"
    save_model(g, path)
    save_model(g, path)  # overwrites in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx"]
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.graph.node[0].op_type == "Cast"


def test_save_model_large_constants_go_to_external_data(tmp_path, monkeypatch) -> None:
    import cimc.onnx_io.exporter as exporter

    monkeypatch.setattr(exporter, "_EXTERNAL_DATA_BYTES", 1000)  # stands in for the 2 GB protobuf cap
    g = Graph("big")
    x = g.add_input("x", TensorType(DType.f32, ("N", 600)))
    w = g.add_constant(_x(600, 4), "w")
    g.outputs = [g.add_node("MatMul", [x, w], name="mm").output]
    path = tmp_path / "big.onnx"
    save_model(g, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    onnx.checker.check_model(str(path), full_check=True)
    xs = _x(2, 600)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": xs})[0], xs @ w.const, rtol=1e-4, atol=1e-4)
    back = import_model(onnx.load(path))  # onnx.load reads the data file beside the model
    np.testing.assert_array_equal(back.constants["w"].const, w.const)


def test_graph_metadata_survives_an_onnx_round_trip():
    from cimc.ir import DType, Graph, TensorType
    from cimc.onnx_io import export_model, import_model

    g = Graph()
    x = g.add_input("x", TensorType(DType.f32, (2,)))
    g.outputs = [g.add_node("Relu", [x]).output]
    g.metadata["quant.requant"] = "fixed"
    assert import_model(export_model(g)).metadata["quant.requant"] == "fixed"
