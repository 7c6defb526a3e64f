"""The onnxruntime oracle (cimc.onnx_io.runtime): on CPUs where onnxruntime's u8 x s8 kernels saturate, it runs
quantized models with their int8 weights as uint8 (``unsaturating``), which by the operators' definitions is the
same model. Checked against onnx's reference evaluator, which computes in plain integers."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from cimc.onnx_io.runtime import run_onnxruntime, unsaturating


def _qdq_conv(act: int) -> onnx.ModelProto:
    """x (float) -> Q/DQ with ``act`` (UINT8 or INT8) -> Conv with a DQ'd full-range int8 weight -> Q."""
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (6, 4, 3, 3)).astype(np.int8)
    w[:2] = -128
    w[2:4] = 127
    zp = np.uint8(3) if act == TensorProto.UINT8 else np.int8(-5)
    inits = [numpy_helper.from_array(np.float32(0.02), "xs"), numpy_helper.from_array(np.array(zp), "xz"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(6, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(6, np.int8), "wz"), numpy_helper.from_array(np.float32(0.5), "ys"),
             numpy_helper.from_array(np.array(zp), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 9, 9])],
                          [helper.make_tensor_value_info("y", act, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def _qlinear_matmul() -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    b = rng.integers(-128, 128, (64, 10)).astype(np.int8)
    b[:, :3] = 127
    inits = [numpy_helper.from_array(np.float32(0.03), "as"), numpy_helper.from_array(np.uint8(5), "az"),
             numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.float32(0.01), "bs"),
             numpy_helper.from_array(np.int8(0), "bz"), numpy_helper.from_array(np.float32(4.0), "ys"),
             numpy_helper.from_array(np.uint8(100), "yz")]
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [7, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


def test_unsaturating_weights_are_the_same_model():
    """The rewritten model gives the reference evaluator's bits of the original (the weights as ``w + 128`` with
    zero point ``+ 128``), and the oracle gives them too on this machine, whatever its kernels; int8 activations
    are left alone."""
    rng = np.random.default_rng(5)
    x = {"x": rng.uniform(0, 5, (2, 4, 9, 9)).astype(np.float32)}
    a = {"a": rng.integers(0, 256, (7, 64)).astype(np.uint8)}
    a["a"][0] = 255
    for model, feeds in ((_qdq_conv(TensorProto.UINT8), x), (_qlinear_matmul(), a)):
        new, count = unsaturating(model)
        assert count == 1
        assert {t.data_type for t in new.graph.initializer if t.name.endswith("__cimc_u8_0")} == {TensorProto.UINT8}
        want = ReferenceEvaluator(model).run(None, feeds)[0]
        assert len(np.unique(want)) > 10
        assert np.array_equal(ReferenceEvaluator(new).run(None, feeds)[0], want)
        assert np.array_equal(run_onnxruntime(model, feeds)["y"], want)
        assert np.array_equal(run_onnxruntime(new, feeds)["y"], want)  # onnxruntime's u8 x u8 kernels: exact
    assert unsaturating(_qdq_conv(TensorProto.INT8))[1] == 0
