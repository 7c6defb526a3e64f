"""Quantized ONNX operators (cimc.ops.qoperator) and the q.* kernels behind them (cimc.ops.qlinear), each
against onnxruntime running the same one-node model: bit for bit where onnxruntime's arithmetic does not
depend on the CPU, within one step where it does (QLinearAdd's vector kernels). onnxruntime's u8 x s8 kernels
saturate int16 pair sums on x86 CPUs without VNNI (its documentation says so; :mod:`cimc.cim.igemm` probes it):
there the full-range products are checked against onnx's reference evaluator instead, and onnxruntime on weights
small enough that no pair saturates."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from cimc.cim import igemm
from cimc.interpreter import run
from cimc.onnx_io import import_model
from cimc.onnx_io.runtime import run_onnxruntime
from cimc.ops.qlinear import avg_pool_codes

MS = "com.microsoft"
_T = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}


def _model(op: str, inputs: dict[str, np.ndarray], params: list[tuple[str, object, int]], names: list[str],
           domain: str = MS, ytype: int | None = None, **attrs) -> onnx.ModelProto:
    """A one-node model: ``inputs`` are graph inputs, ``params`` (name, value, ONNX type) initializers,
    ``names`` the node's operand names in order ("" for absent); the result ``y0`` has type ``ytype``
    (default: the first input's)."""
    ytype = _T[next(iter(inputs.values())).dtype] if ytype is None else ytype
    inits = [helper.make_tensor(n, t, np.shape(v), np.asarray(v).reshape(-1).tolist()) for n, v, t in params]
    node = helper.make_node(op, names, ["y0"], domain=domain, **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(k, _T.get(v.dtype, TensorProto.FLOAT), v.shape)
                      for k, v in inputs.items()],
        [helper.make_tensor_value_info("y0", ytype, None)], inits)
    opsets = [helper.make_opsetid("", 21)] + ([helper.make_opsetid(MS, 1)] if domain == MS else [])
    return helper.make_model(graph, opset_imports=opsets)


def _both(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(cimc's interpreter, onnxruntime) on the model's first output."""
    ours = run(import_model(model), inputs)["y0"]
    return ours, run_onnxruntime(model, inputs)["y0"]


@functools.cache
def _qparams(rng, signed: bool, prefix: str) -> list[tuple[str, object, int]]:
    z = int(rng.integers(-20, 20)) if signed else int(rng.integers(0, 256))
    return [(f"{prefix}s", np.float32(rng.uniform(0.002, 0.2)), TensorProto.FLOAT),
            (f"{prefix}z", z, TensorProto.INT8 if signed else TensorProto.UINT8)]


def _codes(rng, shape, signed: bool) -> np.ndarray:
    return rng.integers(-128, 128, shape).astype(np.int8) if signed else rng.integers(0, 256, shape).astype(np.uint8)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 4), s=st.integers(1, 3), p=st.integers(0, 3), ceil=st.booleans(), incl=st.booleans(),
       h=st.integers(1, 9), w=st.integers(1, 9), signed=st.booleans(), seed=st.integers(0, 2**16))
def test_average_pool_is_onnxruntimes_bit_for_bit(k, s, p, ceil, incl, h, w, signed, seed):
    """QLinearAveragePool (q.avg_pool: the float mean for windows, the integer path for whole images)."""
    h, w, p = max(h, k), max(w, k), min(p, k - 1)
    rng = np.random.default_rng(seed)
    x = _codes(rng, (2, 3, h, w), signed)
    m = _model("QLinearAveragePool", {"x": x}, _qparams(rng, signed, "x") + _qparams(rng, signed, "y"),
               ["x", "xs", "xz", "ys", "yz"], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4,
               ceil_mode=int(ceil), count_include_pad=int(incl))
    ours, ref = _both(m, {"x": x})
    np.testing.assert_array_equal(ours, ref)


def test_global_average_pool_is_onnxruntimes_bit_for_bit():
    rng = np.random.default_rng(3)
    for signed in (False, True):
        x = _codes(rng, (4, 16, 7, 5), signed)
        m = _model("QLinearGlobalAveragePool", {"x": x}, _qparams(rng, signed, "x") + _qparams(rng, signed, "y"),
                   ["x", "xs", "xz", "ys", "yz"])
        np.testing.assert_array_equal(*_both(m, {"x": x}))


def test_the_integer_window_sum_is_not_onnxruntimes_average_pool():
    """The check above can fail: q.avg_pool's integer path on a 2x2 window (what cimc computed before it
    followed onnxruntime's float mean) differs from onnxruntime. Quantizers give an average pool's result the
    input's scale, so the mean hits halves, and onnxruntime adds the zero point before rounding them."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 6, 6)).astype(np.uint8)
    at = {"kernel_shape": (2, 2), "strides": (2, 2), "pads": None, "auto_pad": "NOTSET", "ceil_mode": 0,
          "count_include_pad": 0, "dilations": None, "x_scale": float(np.float32(0.0173)), "x_zero_point": 3,
          "scale": float(np.float32(0.0173)), "zero_point": 8, "bits": 8, "offset": 0}
    params = [("xs", np.float32(0.0173), TensorProto.FLOAT), ("xz", 3, TensorProto.UINT8),
              ("ys", np.float32(0.0173), TensorProto.FLOAT), ("yz", 8, TensorProto.UINT8)]
    m = _model("QLinearAveragePool", {"x": x}, params, ["x", "xs", "xz", "ys", "yz"], kernel_shape=[2, 2],
               strides=[2, 2])
    ref = run_onnxruntime(m, {"x": x})["y0"].astype(np.int64)
    np.testing.assert_array_equal(np.clip(avg_pool_codes(x, {**at, "mode": "onnxruntime"}), 0, 255), ref)
    diff = np.abs(np.clip(avg_pool_codes(x, {**at, "mode": "float"}), 0, 255) - ref)
    assert diff.max() == 1 and 0.01 < (diff > 0).mean() < 0.5


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_is_onnxruntimes_bit_for_bit(opset):
    rng = np.random.default_rng(opset)
    for shape, axis in [((6, 17), -1), ((2, 3, 16, 16), -1), ((3, 5, 7), 1), ((4, 1), -1), ((2, 9, 4), 0)]:
        for signed in (False, True):
            x = _codes(rng, shape, signed)
            ys = np.float32(rng.choice([1 / 256, 1 / 255, 0.0049]))
            params = [("xs", np.float32(rng.uniform(0.01, 0.3)), TensorProto.FLOAT),
                      ("xz", 0, TensorProto.INT8 if signed else TensorProto.UINT8), ("ys", ys, TensorProto.FLOAT),
                      ("yz", -128 if signed else 0, TensorProto.INT8 if signed else TensorProto.UINT8)]
            m = _model("QLinearSoftmax", {"x": x}, params, ["x", "xs", "xz", "ys", "yz"], axis=axis, opset=opset)
            np.testing.assert_array_equal(*_both(m, {"x": x}), err_msg=f"{shape} axis {axis} signed {signed}")


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("op", ["QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat"])
def test_elementwise_ops_are_onnxruntimes_bit_for_bit(op, signed):
    rng = np.random.default_rng(7)
    for _ in range(20):
        a, b = _codes(rng, (5, 37), signed), _codes(rng, (5, 37), signed)
        qa, qb, qy = (_qparams(rng, signed, p) for p in "aby")
        if op == "QLinearMul":
            m = _model(op, {"a": a, "b": b}, qa + qb + qy, ["a", "as", "az", "b", "bs", "bz", "ys", "yz"])
        elif op == "QLinearConcat":
            m = _model(op, {"a": a, "b": b}, qa + qb + qy, ["ys", "yz", "a", "as", "az", "b", "bs", "bz"], axis=1)
        else:
            m = _model(op, {"a": a}, qa + qy, ["a", "as", "az", "ys", "yz"],
                       **({"alpha": float(rng.uniform(0.01, 0.5))} if op == "QLinearLeakyRelu" else {}))
        feed = {"a": a, "b": b} if op in ("QLinearMul", "QLinearConcat") else {"a": a}
        np.testing.assert_array_equal(*_both(m, feed))


def test_add_agrees_with_onnxruntime_within_one_step():
    """QLinearAdd: q.add's float formula; onnxruntime's vector kernels (AVX2 fused multiply-adds, SSE2) round
    the same sum differently now and then."""
    rng = np.random.default_rng(5)
    equal = total = 0
    for signed in (False, True):
        for _ in range(20):
            a, b = _codes(rng, (4, 64), signed), _codes(rng, (4, 64), signed)
            params = [x for p in "aby" for x in _qparams(rng, signed, p)]
            m = _model("QLinearAdd", {"a": a, "b": b}, params, ["a", "as", "az", "b", "bs", "bz", "ys", "yz"])
            ours, ref = _both(m, {"a": a, "b": b})
            d = np.abs(ours.astype(np.int64) - ref.astype(np.int64))
            assert d.max() <= 1
            equal, total = equal + int((d == 0).sum()), total + d.size
    assert equal / total >= 0.999


def test_add_rounds_ties_as_onnxruntime():
    """QLinearAdd adds the result's zero point before it rounds: with scale ratios of 1/2 every other sum is a
    tie, which rounding after adding an odd zero point would send the other way (q.add's float formula)."""
    a = np.arange(256, dtype=np.uint8).reshape(16, 16)
    b = np.arange(256, dtype=np.uint8)[::-1].reshape(16, 16).copy()
    for zy in (3, 8, 255 - 7):
        params = [("as", np.float32(0.5), TensorProto.FLOAT), ("az", 1, TensorProto.UINT8),
                  ("bs", np.float32(0.25), TensorProto.FLOAT), ("bz", 130, TensorProto.UINT8),
                  ("ys", np.float32(1.0), TensorProto.FLOAT), ("yz", zy, TensorProto.UINT8)]
        m = _model("QLinearAdd", {"a": a, "b": b}, params, ["a", "as", "az", "b", "bs", "bz", "ys", "yz"])
        np.testing.assert_array_equal(*_both(m, {"a": a, "b": b}))


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("signed", [False, True])
def test_matrix_ops_are_onnxruntimes_bit_for_bit(per_channel, signed):
    """QLinearConv, QLinearMatMul, QGemm (quantized and float result), ConvInteger, MatMulInteger. Where
    onnxruntime's u8 x s8 kernels saturate (module docstring), u8 inputs meet weights within +-63: two products of
    255 by them stay within int16 (the full range: the next test)."""
    rng = np.random.default_rng(11)
    xt = TensorProto.INT8 if signed else TensorProto.UINT8
    top = 64 if not signed and igemm.u8s8_saturates() else 128
    x = _codes(rng, (2, 6, 7, 7), signed)
    w = rng.integers(1 - top, top, (8, 3, 3, 3)).astype(np.int8)
    sw = rng.uniform(0.001, 0.02, 8 if per_channel else ()).astype(np.float32)
    params = [("xs", np.float32(0.05), TensorProto.FLOAT), ("xz", 3, xt), ("w", w, TensorProto.INT8),
              ("ws", sw, TensorProto.FLOAT), ("wz", np.zeros(sw.shape, np.int8), TensorProto.INT8),
              ("ys", np.float32(0.11), TensorProto.FLOAT), ("yz", -4 if signed else 120, xt),
              ("b", rng.integers(-3000, 3000, 8).astype(np.int32), TensorProto.INT32)]
    conv = _model("QLinearConv", {"x": x}, params, ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], domain="",
                  group=2, pads=[1, 0, 2, 1], strides=[2, 1])
    np.testing.assert_array_equal(*_both(conv, {"x": x}))
    a = _codes(rng, (9, 40), signed)
    bw = rng.integers(1 - top, top, (40, 12)).astype(np.int8)
    sb = rng.uniform(0.001, 0.02, 12 if per_channel else ()).astype(np.float32)
    mm = [("as", np.float32(0.03), TensorProto.FLOAT), ("az", 5, xt), ("bw", bw, TensorProto.INT8),
          ("bs", sb, TensorProto.FLOAT), ("bz", np.zeros(sb.shape, np.int8), TensorProto.INT8),
          ("ys", np.float32(0.2), TensorProto.FLOAT), ("yz", 7, xt)]
    np.testing.assert_array_equal(*_both(_model("QLinearMatMul", {"a": a}, mm, ["a", "as", "az", "bw", "bs", "bz",
                                                                                  "ys", "yz"], domain=""), {"a": a}))
    c = ("c", rng.integers(-2000, 2000, 12).astype(np.int32), TensorProto.INT32)
    for tail, names, yt in (([c, mm[5], mm[6]], ["c", "ys", "yz"], None), ([c], ["c"], TensorProto.FLOAT)):
        g = _model("QGemm", {"a": a}, mm[:5] + tail, ["a", "as", "az", "bw", "bs", "bz", *names], ytype=yt)
        np.testing.assert_array_equal(*_both(g, {"a": a}))
    if not per_channel and not signed:
        ci = _model("ConvInteger", {"x": x}, [("w", w, TensorProto.INT8)], ["x", "w"], domain="", group=2,
                    ytype=TensorProto.INT32)
        np.testing.assert_array_equal(*_both(ci, {"x": x}))
        ua = _codes(rng, (9, 40), False)
        mi = _model("MatMulInteger", {"a": ua}, [("bw", bw, TensorProto.INT8), ("az", 9, TensorProto.UINT8)],
                    ["a", "bw", "az"], domain="", ytype=TensorProto.INT32)
        np.testing.assert_array_equal(*_both(mi, {"a": ua}))


def test_full_range_u8_by_s8_products_are_onnx_references_bit_for_bit():
    """QLinearConv, QLinearMatMul, ConvInteger and MatMulInteger with u8 inputs up to 255 and int8 weights over
    their whole range (pairs of products past int16: where onnxruntime's kernels saturate) against onnx's own
    reference evaluator, which computes them in plain integers."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(14)
    x = _codes(rng, (2, 6, 7, 7), False)
    x[0, :, :3] = 255
    w = rng.integers(-128, 128, (8, 3, 3, 3)).astype(np.int8)
    w[:2] = -128
    w[2:4] = 127
    params = [("xs", np.float32(0.05), TensorProto.FLOAT), ("xz", 3, TensorProto.UINT8), ("w", w, TensorProto.INT8),
              ("ws", np.float32(0.004), TensorProto.FLOAT), ("wz", 0, TensorProto.INT8),
              ("ys", np.float32(2.5), TensorProto.FLOAT), ("yz", 120, TensorProto.UINT8),
              ("b", rng.integers(-3000, 3000, 8).astype(np.int32), TensorProto.INT32)]
    a = _codes(rng, (9, 40), False)
    bw = rng.integers(-128, 128, (40, 12)).astype(np.int8)
    bw[:, :3] = 127
    mm = [("as", np.float32(0.03), TensorProto.FLOAT), ("az", 5, TensorProto.UINT8), ("bw", bw, TensorProto.INT8),
          ("bs", np.float32(0.01), TensorProto.FLOAT), ("bz", 0, TensorProto.INT8),
          ("ys", np.float32(3.0), TensorProto.FLOAT), ("yz", 7, TensorProto.UINT8)]
    models = [
        (_model("QLinearConv", {"x": x}, params, ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], domain="",
                group=2, pads=[1, 0, 2, 1], strides=[2, 1]), {"x": x}),
        (_model("QLinearMatMul", {"a": a}, mm, ["a", "as", "az", "bw", "bs", "bz", "ys", "yz"], domain=""), {"a": a}),
        (_model("ConvInteger", {"x": x}, [("w", w, TensorProto.INT8)], ["x", "w"], domain="", group=2,
                ytype=TensorProto.INT32), {"x": x}),
        (_model("MatMulInteger", {"a": a}, [("bw", bw, TensorProto.INT8), ("az", 9, TensorProto.UINT8)],
                ["a", "bw", "az"], domain="", ytype=TensorProto.INT32), {"a": a}),
    ]
    for model, feeds in models:
        ours = run(import_model(model), feeds)["y0"]
        want = ReferenceEvaluator(model).run(None, feeds)[0]
        assert ours.dtype == want.dtype and np.array_equal(ours, want), model.graph.node[0].op_type
        assert len(np.unique(want)) > 10  # not all clipped to one code
