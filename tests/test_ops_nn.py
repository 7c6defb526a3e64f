"""Neural-network ops (cimc/ops/nn.py, cimc/ops/rnn.py) against onnxruntime and exact integer references.

ONNX's own cases run in tests/test_onnx_conformance.py; these cover the attribute combinations
those cases miss (groups, depthwise, dilations with auto_pad, 1-D/3-D, ceil_mode overhang,
MaxPool Indices, LSTM with sequence_lens/peepholes/clip), the exact integer paths, and the type
rules (symbolic dims, error messages).
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper

from cimc.errors import VerifyError
from cimc.interpreter import run
from cimc.ir.core import Graph
from cimc.ir.types import DType, TensorType
from cimc.ops.nn import compute_dtype, conv, exact_matmul, f32_chunk

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(0)


def _cimc(op: str, inputs: dict[str, np.ndarray | None], attrs: dict, nout: int = 1) -> list[np.ndarray]:
    g = Graph()
    vals = [None if a is None else g.add_input(n, TensorType.of(a)) for n, a in inputs.items()]
    node = g.add_node(op, vals, {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()},
                      outputs=nout)
    g.outputs = list(node.outputs)
    for v, t in zip(node.outputs, g.outputs, strict=True):
        assert v.type == t.type
    got = run(g, {n: a for n, a in inputs.items() if a is not None})
    out = [got[v.name] for v in node.outputs]
    for v, a in zip(node.outputs, out, strict=True):  # the type rule agrees with what ran
        assert v.type.accepts(a) is None, (v.type, a.shape, a.dtype)
    return out


def _ort(op: str, inputs: dict[str, np.ndarray | None], attrs: dict, nout: int = 1,
         out_types: tuple[int, ...] = ()) -> list[np.ndarray]:
    feeds = {n: a for n, a in inputs.items() if a is not None}
    node = helper.make_node(op, [n if a is not None else "" for n, a in inputs.items()],
                            [f"y{i}" for i in range(nout)], **attrs)
    elem = helper.np_dtype_to_tensor_dtype(next(iter(feeds.values())).dtype)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in feeds.items()],
        [helper.make_tensor_value_info(f"y{i}", out_types[i] if i < len(out_types) else elem, None)
         for i in range(nout)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _close(got: list[np.ndarray], want: list[np.ndarray], rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# ---- Conv ------------------------------------------------------------------------------------
CONV_CASES = [
    ((2, 4, 9), (6, 4, 3), dict(strides=[2], pads=[1, 2])),
    ((2, 4, 9, 8), (6, 2, 3, 3), dict(group=2, dilations=[2, 1], pads=[1, 0, 2, 1])),
    ((2, 4, 9, 8), (4, 1, 3, 3), dict(group=4, strides=[2, 2], pads=[1, 1, 1, 1])),  # depthwise
    ((2, 4, 9, 8), (8, 1, 3, 3), dict(group=4, auto_pad="SAME_UPPER", strides=[2, 2])),  # multiplier 2
    ((2, 4, 9, 8), (8, 1, 3, 2), dict(group=4, auto_pad="SAME_LOWER", strides=[2, 3])),
    ((2, 4, 9, 8), (5, 4, 2, 3), dict(auto_pad="VALID", strides=[2, 2])),
    ((2, 4, 9, 8), (5, 4, 1, 1), dict()),  # 1x1 fast path
    ((2, 4, 9, 8), (5, 4, 1, 1), dict(strides=[2, 2])),
    ((2, 4, 9, 8), (5, 4, 1, 1), dict(pads=[1, 1, 0, 0])),
    ((1, 3, 5, 6, 7), (4, 3, 2, 3, 2), dict(strides=[1, 2, 2], pads=[0, 1, 1, 1, 0, 1], dilations=[2, 1, 1])),
    ((1, 4, 5, 6, 7), (4, 2, 3, 3, 3), dict(group=2, auto_pad="SAME_UPPER")),
    ((2, 6, 7, 7), (6, 3, 3, 3), dict(group=2, kernel_shape=[3, 3])),
    ((2, 3, 12, 11), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),  # >= 64 outputs per image: GEMM per image
]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("xs", "ws", "attrs"), CONV_CASES)
def test_conv_matches_onnxruntime(xs, ws, attrs, bias) -> None:
    ins = {"x": _f32(*xs), "w": _f32(*ws), "b": _f32(ws[0]) if bias else None}
    _close(_cimc("Conv", ins, attrs), _ort("Conv", ins, attrs))


def test_conv_float64_and_float16_keep_their_type() -> None:
    x, w = _f32(2, 3, 6, 6), _f32(4, 3, 3, 3)
    want = _cimc("Conv", {"x": x, "w": w}, {"pads": [1, 1, 1, 1]})[0]
    (y64,) = _cimc("Conv", {"x": x.astype(np.float64), "w": w.astype(np.float64)}, {"pads": [1, 1, 1, 1]})
    (y16,) = _cimc("Conv", {"x": x.astype(np.float16), "w": w.astype(np.float16)}, {"pads": [1, 1, 1, 1]})
    assert y64.dtype == np.float64 and y16.dtype == np.float16
    np.testing.assert_allclose(y64, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y16, want, rtol=2e-2, atol=5e-2)


def _conv_int_reference(x: np.ndarray, w: np.ndarray, pads: int) -> np.ndarray:
    xp = np.pad(x.astype(np.int64), [(0, 0), (0, 0), (pads, pads), (pads, pads)])
    win = sliding_window_view(xp, w.shape[2:], axis=(2, 3))  # N, C, OH, OW, KH, KW
    return np.einsum("ncijkl,mckl->nmij", win, w.astype(np.int64))


@pytest.mark.parametrize("hw", [5, 9])
@pytest.mark.parametrize(("lo", "hi", "path"), [(-128, 128, np.float32), (-3000, 3000, np.float64),
                                                (-2**31, 2**31, np.int64)])
def test_integer_conv_is_exact_on_every_path(lo, hi, path, hw) -> None:
    x = RNG.integers(lo, hi, (2, 8, hw, hw)).astype(np.int64)
    w = RNG.integers(lo, hi, (3, 8, 3, 3)).astype(np.int64)
    x8, w8 = (x.astype(np.int8), w.astype(np.int8)) if hi <= 128 else (x, w)
    assert compute_dtype(x8, w8, 8 * 9) == path
    want = _conv_int_reference(x8, w8, 1)
    got = conv(x8, w8, strides=(1, 1), dilations=(1, 1), pads_begin=(1, 1), pads_end=(1, 1), out=(hw, hw),
               out_dtype=np.int64)
    np.testing.assert_array_equal(got, want)
    (as_op,) = _cimc("Conv", {"x": x8, "w": w8}, {"pads": [1, 1, 1, 1]})
    assert as_op.dtype == x8.dtype
    np.testing.assert_array_equal(as_op, want.astype(x8.dtype))  # wraps like C


def test_int8_depthwise_conv_exact() -> None:
    x = RNG.integers(-128, 128, (2, 4, 6, 6)).astype(np.int8)
    w = RNG.integers(-128, 128, (4, 1, 3, 3)).astype(np.int8)
    got = conv(x, w, strides=(1, 1), dilations=(1, 1), pads_begin=(0, 0), pads_end=(0, 0), out=(4, 4),
               group=4, out_dtype=np.int32)
    win = sliding_window_view(x.astype(np.int64), (3, 3), axis=(2, 3))
    np.testing.assert_array_equal(got, np.einsum("ncijkl,ckl->ncij", win, w[:, 0].astype(np.int64)))


@pytest.mark.parametrize("budget", [1 << 20, 20_000, 3000, 1])  # all, some images, some rows, one row
@pytest.mark.parametrize(("xs", "ws", "attrs"), [c for c in CONV_CASES if c[1][1] > 1 or "group" not in c[2]])
def test_conv_chunked_im2col_matches_unchunked(monkeypatch, xs, ws, attrs, budget) -> None:
    import cimc.ops.nn as nn

    xs = (5, *xs[1:])  # an odd batch: the last image chunk is shorter
    ins = {"x": _f32(*xs), "w": _f32(*ws), "b": _f32(ws[0])}
    (want,) = _cimc("Conv", ins, attrs)
    monkeypatch.setattr(nn, "_COL_BUDGET", budget)
    monkeypatch.setattr(nn, "_COL_FRACTION", 1 << 40)
    (got,) = _cimc("Conv", ins, attrs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_workspace_is_bounded_and_integers_stay_exact(monkeypatch) -> None:
    import cimc.ops.nn as nn

    monkeypatch.setattr(nn, "_COL_BUDGET", 40_000)
    monkeypatch.setattr(nn, "_COL_FRACTION", 1 << 40)
    monkeypatch.setattr(nn._WORK, "buf", None, raising=False)
    x = RNG.integers(-3000, 3000, (3, 8, 23, 17)).astype(np.int64)  # float64 path
    w = RNG.integers(-3000, 3000, (6, 8, 3, 3)).astype(np.int64)
    got = conv(x, w, strides=(1, 1), dilations=(1, 1), pads_begin=(1, 1), pads_end=(1, 1), out=(23, 17),
               out_dtype=np.int64)
    np.testing.assert_array_equal(got, _conv_int_reference(x, w, 1))
    assert 0 < nn._WORK.buf.nbytes <= 40_000  # columns of a whole image would take 8*9*23*17*8 = 225 KB



@pytest.mark.parametrize(("hw", "group", "budget"), [((7, 6), 1, None), ((9, 8), 1, None), ((9, 8), 1, 1),
                                                   ((9, 8), 2, 5000)])  # one GEMM, per image, per row
def test_large_k_integer_conv_beyond_float32_is_exact(monkeypatch, hw, group, budget) -> None:
    """u8 x i8 with K = 96*9 per group: the bound 255*127*864 > 2**24, so the product runs in float32
    K-chunks summed in int32; the pad value and the int32 bias (wrapping like C) included."""
    import cimc.ops.nn as nn

    if budget:
        monkeypatch.setattr(nn, "_INT_COL_BUDGET", budget)
    x = RNG.integers(0, 256, (2, 96 * group, *hw)).astype(np.uint8)
    w = np.concatenate([np.full((2, 96, 3, 3), 127), np.full((1, 96, 3, 3), -127),
                        RNG.integers(-127, 128, (2 * group - 1, 96, 3, 3))]).astype(np.int8)
    assert 255 * 127 * 96 * 9 > 2**24 and 1 < -(-96 * 9 // f32_chunk(255, 127, 96 * 9))
    b = np.array([2**31 - 5, -(2**31), 0, 17, -3, 9][:w.shape[0]], np.int32)
    xp = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)], constant_values=201).astype(np.int64)
    win = sliding_window_view(xp.reshape(2, group, 96, hw[0] + 2, hw[1] + 2), (3, 3), axis=(3, 4))
    want = np.einsum("ngcijkl,gmckl->ngmij", win, w.astype(np.int64).reshape(group, -1, 96, 3, 3))
    want = want.reshape(2, -1, *hw) + b.reshape(-1, 1, 1)
    kw = dict(strides=(1, 1), dilations=(1, 1), pads_begin=(1, 1), pads_end=(1, 1), out=hw, group=group,
              pad_value=201)
    got = conv(x, w, b, out_dtype=np.int32, **kw)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want.astype(np.int32))  # wraps like C
    np.testing.assert_array_equal(conv(x, w, b, out_dtype=np.int64, **kw), want)


def test_large_k_integer_matmul_beyond_float32_is_exact_and_wraps() -> None:
    """K = 100000: 194 float32 chunks; the int64 sums exceed 2**31, so the int32 result wraps like C."""
    a = RNG.integers(200, 256, (3, 100000)).astype(np.uint8)
    b = np.where(RNG.random((100000, 2)) < 0.95, 127, -127).astype(np.int8)
    want = a.astype(np.int64) @ b.astype(np.int64)
    assert np.abs(want).max() > 2**31
    np.testing.assert_array_equal(exact_matmul(a, b, np.int64), want)
    np.testing.assert_array_equal(exact_matmul(a, b, np.int32), want.astype(np.int32))
    np.testing.assert_array_equal(exact_matmul(a[0], b, np.int64), want[0])  # 1-D promotion


# ---- ConvTranspose ---------------------------------------------------------------------------
CONVT_CASES = [
    ((1, 2, 3, 3), (2, 3, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    ((1, 2, 3, 3), (2, 3, 3, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    ((1, 2, 3, 3), (2, 3, 3, 3), dict(strides=[2, 2], output_shape=[6, 6])),
    ((1, 2, 3, 3), (2, 3, 3, 3), dict(strides=[2, 2], output_shape=[8, 8])),
    ((2, 2, 3, 4), (2, 3, 3, 3), dict(strides=[3, 2], pads=[1, 0, 2, 1], output_padding=[1, 1], dilations=[2, 1])),
    ((2, 4, 3, 4), (4, 2, 2, 3), dict(group=2, strides=[2, 1], pads=[0, 1, 1, 0])),
    ((2, 4, 5), (4, 1, 3), dict(group=4, strides=[2])),
    ((1, 2, 3, 2, 3), (2, 2, 2, 2, 2), dict(strides=[2, 1, 2])),
]


@pytest.mark.parametrize(("xs", "ws", "attrs"), CONVT_CASES)
def test_conv_transpose_matches_onnxruntime(xs, ws, attrs) -> None:
    ins = {"x": _f32(*xs), "w": _f32(*ws), "b": _f32(ws[1] * attrs.get("group", 1))}
    _close(_cimc("ConvTranspose", ins, attrs), _ort("ConvTranspose", ins, attrs))


# ---- Gemm / MatMul -----------------------------------------------------------------------------
@pytest.mark.parametrize("c_shape", [None, (), (1,), (5,), (3, 1), (3, 5)])
@pytest.mark.parametrize(("ta", "tb", "alpha", "beta"), [(0, 0, 1.0, 1.0), (1, 0, 0.5, 2.0), (1, 1, 2.0, 0.0)])
def test_gemm(c_shape, ta, tb, alpha, beta) -> None:
    a, b = _f32(4, 3) if ta else _f32(3, 4), _f32(5, 4) if tb else _f32(4, 5)
    c = None if c_shape is None else _f32(*c_shape)
    attrs = dict(transA=ta, transB=tb, alpha=alpha, beta=beta)
    (got,) = _cimc("Gemm", {"a": a, "b": b, "c": c}, attrs)
    want = alpha * ((a.T if ta else a) @ (b.T if tb else b)) + (0 if c is None else beta * c)
    assert got.dtype == np.float32 and got.shape == (3, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("sa", "sb"), [((3,), (3,)), ((3,), (2, 3, 4)), ((2, 3, 4), (4,)), ((5, 1, 3, 4), (2, 4, 6)),
                                        ((3, 4), (4, 2))])
def test_matmul_shapes(sa, sb) -> None:
    a, b = _f32(*sa), _f32(*sb)
    (got,) = _cimc("MatMul", {"a": a, "b": b}, {})
    np.testing.assert_allclose(got, np.matmul(a, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32])
def test_integer_matmul_exact(dtype) -> None:
    info = np.iinfo(dtype)
    a = RNG.integers(max(info.min, -2**40), min(info.max, 2**40), (3, 7), dtype=dtype)
    b = RNG.integers(max(info.min, -2**40), min(info.max, 2**40), (7, 2), dtype=dtype)
    (got,) = _cimc("MatMul", {"a": a, "b": b}, {})
    want = np.matmul(a.astype(np.int64), b.astype(np.int64)).astype(dtype)  # wraps mod 2^bits
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)
    small = (a % 100).astype(np.int8), (b % 100).astype(np.int8)
    np.testing.assert_array_equal(exact_matmul(*small, np.int32),
                                  np.matmul(small[0].astype(np.int32), small[1].astype(np.int32)))


# ---- pooling -----------------------------------------------------------------------------------
POOL_CASES = [
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[3, 2], strides=[2, 3], pads=[1, 0, 1, 1], ceil_mode=1),
    dict(kernel_shape=[2, 2], dilations=[2, 2], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(kernel_shape=[3, 3], auto_pad="SAME_LOWER", strides=[2, 2]),
    dict(kernel_shape=[2, 3], auto_pad="VALID", strides=[2, 1]),
    dict(kernel_shape=[3, 3], pads=[1, 2, 0, 1], strides=[2, 2], ceil_mode=1),
]


@pytest.mark.parametrize("attrs", [*POOL_CASES, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2],
                                                       count_include_pad=1, ceil_mode=1)])
def test_average_pool(attrs) -> None:
    x = _f32(2, 3, 7, 8)
    _close(_cimc("AveragePool", {"x": x}, attrs), _ort("AveragePool", {"x": x}, attrs))


@pytest.mark.parametrize("attrs", [*POOL_CASES, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                                       storage_order=1)])
def test_max_pool_with_indices(attrs) -> None:
    x = _f32(2, 3, 7, 8)
    got = _cimc("MaxPool", {"x": x}, attrs, 2)
    _close(got, _ort("MaxPool", {"x": x}, attrs, 2, (TensorProto.FLOAT, TensorProto.INT64)))
    assert _cimc("MaxPool", {"x": x}, attrs)[0].tobytes() == got[0].tobytes()


@pytest.mark.parametrize("shape", [(2, 3, 9), (1, 2, 5, 6, 7)])
def test_pools_1d_3d(shape) -> None:
    x, k = _f32(*shape), [3, 2, 3][: len(shape) - 2]
    attrs = dict(kernel_shape=k, strides=[2] * len(k), ceil_mode=1, pads=[1] * 2 * len(k))
    want = _ort("MaxPool", {"x": x}, attrs, 2, (TensorProto.FLOAT, TensorProto.INT64))
    _close(_cimc("MaxPool", {"x": x}, attrs, 2), want)
    _close(_cimc("AveragePool", {"x": x}, attrs), _ort("AveragePool", {"x": x}, attrs))
    _close(_cimc("GlobalAveragePool", {"x": x}, {}), _ort("GlobalAveragePool", {"x": x}, {}))


def test_max_pool_int8_pads_with_type_minimum() -> None:
    x = RNG.integers(-128, 0, (1, 2, 4, 4)).astype(np.int8)
    (y,) = _cimc("MaxPool", {"x": x}, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    assert y.dtype == np.int8 and (y < 0).all()
    np.testing.assert_array_equal(y, _ort("MaxPool", {"x": x}, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]))[0])


# ---- normalization ---------------------------------------------------------------------------
def test_batch_norm_inference_and_training() -> None:
    x, s, b, m = _f32(3, 4, 5, 2), _f32(4), _f32(4), _f32(4)
    v = np.abs(_f32(4)) + 0.5
    ins = {"x": x, "s": s, "b": b, "m": m, "v": v}
    _close(_cimc("BatchNormalization", ins, {"epsilon": 1e-3}), _ort("BatchNormalization", ins, {"epsilon": 1e-3}))
    y, rm, rv = _cimc("BatchNormalization", ins, {"training_mode": 1, "momentum": 0.8}, 3)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    shape = (1, 4, 1, 1)
    want = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5) * s.reshape(shape) + b.reshape(shape)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rm, 0.8 * m + 0.2 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, 0.8 * v + 0.2 * var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_layer_norm(axis) -> None:
    x, s, b = _f32(2, 3, 4), _f32(4) if axis == -1 else _f32(3, 4), None
    if axis == 0:
        s = _f32(2, 3, 4)
    b = _f32(*s.shape)
    ins = {"x": x, "s": s, "b": b}
    _close(_cimc("LayerNormalization", ins, {"axis": axis}, 3),
           _ort("LayerNormalization", ins, {"axis": axis}, 3))


def test_layer_norm_float16_stashes_float32() -> None:
    x, s = _f32(2, 8).astype(np.float16), np.ones(8, np.float16)
    y, mean, inv = _cimc("LayerNormalization", {"x": x, "s": s}, {}, 3)
    assert (y.dtype, mean.dtype, inv.dtype) == (np.float16, np.float32, np.float32)
    assert mean.shape == inv.shape == (2, 1)


@pytest.mark.parametrize("size", [1, 3, 4])
def test_lrn(size) -> None:
    x, (alpha, beta, bias) = _f32(2, 6, 3, 3), (0.01, 0.6, 1.5)
    (got,) = _cimc("LRN", {"x": x}, dict(size=size, alpha=alpha, beta=beta, bias=bias))
    lo, hi = (size - 1) // 2, (size - 1) - (size - 1) // 2  # the spec's floor / ceil of (size-1)/2
    sq = np.stack([(x[:, max(0, c - lo):c + hi + 1] ** 2).sum(axis=1) for c in range(6)], axis=1)
    np.testing.assert_allclose(got, x / (bias + alpha / size * sq) ** beta, rtol=1e-5, atol=1e-6)
    if size % 2:  # onnxruntime takes odd sizes only
        _close([got], _ort("LRN", {"x": x}, dict(size=size, alpha=alpha, beta=beta, bias=bias)))


# ---- LSTM --------------------------------------------------------------------------------------
def _lstm_inputs(ndir: int, seq: int = 5, batch: int = 3, inp: int = 4, hid: int = 6) -> dict:
    return {"X": _f32(seq, batch, inp), "W": _f32(ndir, 4 * hid, inp) * 0.5, "R": _f32(ndir, 4 * hid, hid) * 0.5,
            "B": _f32(ndir, 8 * hid) * 0.5, "sequence_lens": np.array([5, 2, 4][:batch], np.int32),
            "initial_h": _f32(ndir, batch, hid), "initial_c": _f32(ndir, batch, hid), "P": _f32(ndir, 3 * hid) * 0.5}


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("extra", [{}, dict(clip=0.7), dict(input_forget=1),
                                   dict(activations=["HardSigmoid", "LeakyRelu", "Softsign"],
                                        activation_alpha=[0.3, 0.2], activation_beta=[0.4])])
def test_lstm_matches_onnxruntime(direction, extra) -> None:
    ndir = 2 if direction == "bidirectional" else 1
    if "activations" in extra:
        extra = {**extra, "activations": extra["activations"] * ndir}
    ins = _lstm_inputs(ndir)
    attrs = dict(hidden_size=6, direction=direction, **extra)
    _close(_cimc("LSTM", ins, attrs, 3), _ort("LSTM", ins, attrs, 3))


def test_lstm_optional_operands_and_fewer_results() -> None:
    ins = _lstm_inputs(1)
    for k in ("B", "sequence_lens", "initial_h", "initial_c", "P"):
        ins[k] = None
    _close(_cimc("LSTM", ins, {"hidden_size": 6}, 2), _ort("LSTM", ins, {"hidden_size": 6}, 2))


def test_lstm_batch_major_layout() -> None:
    ins = _lstm_inputs(2)
    y, yh, yc = _cimc("LSTM", ins, {"direction": "bidirectional"}, 3)
    ins1 = {**ins, "X": ins["X"].swapaxes(0, 1).copy(), "initial_h": ins["initial_h"].swapaxes(0, 1).copy(),
            "initial_c": ins["initial_c"].swapaxes(0, 1).copy()}
    y1, yh1, yc1 = _cimc("LSTM", ins1, {"direction": "bidirectional", "layout": 1}, 3)
    np.testing.assert_allclose(y1, y.transpose(2, 0, 1, 3), rtol=1e-6)
    np.testing.assert_allclose(yh1, yh.swapaxes(0, 1), rtol=1e-6)
    np.testing.assert_allclose(yc1, yc.swapaxes(0, 1), rtol=1e-6)


# ---- type rules --------------------------------------------------------------------------------
def _infer(op: str, types: list[TensorType | None], attrs: dict, nout: int = 1) -> list[TensorType]:
    g = Graph()
    vals = [None if t is None else g.add_input(f"i{i}", t) for i, t in enumerate(types)]
    return [v.type for v in g.add_node(op, vals, attrs, outputs=nout).outputs]


F32 = DType.f32


@pytest.mark.parametrize(("attrs", "spatial"), [
    ({"auto_pad": "SAME_UPPER"}, ("H", "W")),
    ({"pads": (1, 1, 1, 1)}, ("H", "W")),
    ({"pads": (1, 1, 1, 1), "strides": (2, 2)}, (None, None)),
    ({}, (None, None)),
])
def test_conv_type_rule_carries_symbolic_dims(attrs, spatial) -> None:
    (t,) = _infer("Conv", [TensorType(F32, ("N", 3, "H", "W")), TensorType(F32, (8, 3, 3, 3))], attrs)
    assert t == TensorType(F32, ("N", 8, *spatial))


def test_known_shapes_infer_exactly() -> None:
    x = TensorType(F32, (1, 4, 224, 224))
    assert _infer("Conv", [x, TensorType(F32, (64, 2, 7, 7))], {"strides": (2, 2), "pads": (3, 3, 3, 3), "group": 2}
                  )[0].shape == (1, 64, 112, 112)
    assert _infer("ConvTranspose", [x, TensorType(F32, (4, 3, 4, 4))], {"strides": (2, 2), "pads": (1, 1, 1, 1)}
                  )[0].shape == (1, 3, 448, 448)
    assert _infer("MaxPool", [x], {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}, 2) == [
        TensorType(F32, (1, 4, 112, 112)), TensorType(DType.i64, (1, 4, 112, 112))]
    mm = _infer("MatMul", [TensorType(F32, ("B", 1, 4, 5)), TensorType(F32, (3, 5, 6))], {})
    assert mm[0].shape == ("B", 3, 4, 6)
    assert _infer("Gemm", [TensorType(F32, (5, "M")), TensorType(F32, (5, 7))], {"transA": 1})[0].shape == ("M", 7)
    assert _infer("LSTM", [TensorType(F32, ("T", "B", 4)), TensorType(F32, (2, 24, 4)), TensorType(F32, (2, 24, 6))],
                  {"direction": "bidirectional"}, 3)[1].shape == (2, "B", 6)


@pytest.mark.parametrize(("op", "types", "attrs", "message"), [
    ("Conv", [(1, 4, 8, 8), (8, 3, 3, 3)], {}, "X has 4 channels but W.shape[1] * group = 3"),
    ("Conv", [(1, 4, 8, 8), (8, 4, 3, 3)], {"kernel_shape": (2, 2)}, "does not match W"),
    ("Conv", [(1, 4, 2, 2), (8, 4, 3, 3)], {}, "does not fit input dim 2"),
    ("MatMul", [(2, 3), (4, 5)], {}, "inner dims differ"),
    ("Gemm", [(2, 3), (4, 5)], {}, "inner dims differ"),
    ("MaxPool", [(1, 2, 8, 8)], {"kernel_shape": (3,)}, "one entry per spatial dim"),
    ("AveragePool", [(1, 2, 8, 8)], {}, "needs attribute 'kernel_shape'"),
    ("Conv", [(1, 4, 8, 8), (8, 4, 3, 3)], {"auto_pad": "SAME"}, "attribute 'auto_pad' is 'SAME'; expected one of"),
    ("LSTM", [(5, 2, 3), (1, 24, 3), (1, 24, 6)], {"hidden_size": 5}, "hidden_size 5 needs 5"),
    ("LSTM", [(5, 2, 3), (2, 24, 3), (2, 24, 6)], {}, "direction='forward' needs 1"),
])
def test_type_rule_errors(op, types, attrs, message) -> None:
    with pytest.raises(VerifyError, match=message.replace("[", r"\[").replace("]", r"\]").replace("*", r"\*")):
        _infer(op, [TensorType(F32, s) for s in types], attrs)
