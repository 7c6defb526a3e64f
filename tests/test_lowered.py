"""Tests of the shared digital ops of lowered programs: vec.im2col and vec.col2im against Conv."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cimc.interpreter import run
from cimc.ir.core import Graph
from cimc.ir.types import DType, TensorType


def _conv_graph(x_shape, w, attrs) -> Graph:
    g = Graph("conv")
    x = g.add_input("x", TensorType(DType.f32, x_shape))
    y = g.add_node("Conv", [x, g.add_constant(w, "w")], attrs, name="conv").outputs[0]
    g.outputs.append(y)
    return g


def _im2col_graph(x_shape, kernel, attrs) -> Graph:
    g = Graph("cols")
    x = g.add_input("x", TensorType(DType.u8, x_shape))
    cols = g.add_node("vec.im2col", [x], {**attrs, "kernel_shape": kernel, "pad_value": 0}, name="cols").outputs[0]
    g.outputs.append(cols)
    return g


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), nsp=st.integers(1, 3), group=st.sampled_from([1, 2, 4]),
       depthwise=st.booleans(), stride=st.integers(1, 3), dilation=st.integers(1, 2), pad=st.integers(0, 2))
def test_im2col_columns_times_weights_is_the_convolution(seed, nsp, group, depthwise, stride, dilation, pad):
    """``sum_k W_g[k, m] * im2col(x)[g, n, k, o]`` equals ONNX Conv (pads filled with pad_value 0)."""
    rng = np.random.default_rng(seed)
    cin = group * (1 if depthwise else int(rng.integers(1, 3)))
    m_per = int(rng.integers(1, 3))
    kernel = tuple(int(k) for k in rng.integers(1, 4, nsp))
    size = tuple(int((k - 1) * dilation + 1 + rng.integers(0, 4)) for k in kernel)
    x = rng.integers(0, 256, (2, cin, *size)).astype(np.uint8)
    w = rng.integers(-8, 9, (group * m_per, cin // group, *kernel)).astype(np.float32)
    attrs = {"group": group, "strides": (stride,) * nsp, "dilations": (dilation,) * nsp, "pads": (pad,) * (2 * nsp)}
    want = run(_conv_graph(x.shape, w, attrs), {"x": x.astype(np.float32)})["conv"]
    cols_graph = _im2col_graph(x.shape, kernel, attrs)
    cols = run(cols_graph, {"x": x})["cols"]
    assert cols.dtype == np.uint8 and cols.shape == (group, 2, cin // group * np.prod(kernel), np.prod(want.shape[2:]))
    assert list(cols_graph.outputs[0].type.shape) == list(cols.shape)
    wm = w.reshape(group, m_per, -1)  # [G, M/G, K], K in (cin, kernel...) order
    got = np.concatenate([wm[g] @ cols[g].astype(np.float32) for g in range(group)], axis=1)  # [N, M, L]
    assert np.array_equal(got.reshape(want.shape), want)


def test_im2col_of_a_pointwise_convolution_is_a_view():
    x = np.arange(2 * 6 * 3 * 4, dtype=np.uint8).reshape(2, 6, 3, 4)
    g = _im2col_graph(x.shape, (1, 1), {"group": 2})
    cols = run(g, {"x": x})["cols"]
    assert cols.shape == (2, 2, 3, 12) and np.array_equal(cols[1, 0], x[0, 3:].reshape(3, 12))


def test_col2im_restores_the_spatial_shape():
    g = Graph("col2im")
    y = g.add_input("y", TensorType(DType.i32, (2, 5, 12)))
    out = g.add_node("vec.col2im", [y], {"spatial": (3, 4)}, name="img").outputs[0]
    g.outputs.append(out)
    v = np.arange(120, dtype=np.int32).reshape(2, 5, 12)
    assert out.type.shape == (2, 5, 3, 4)
    assert np.array_equal(run(g, {"y": v})["img"], v.reshape(2, 5, 3, 4))
