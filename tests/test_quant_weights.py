"""Weight quantizers (``cimc.quant.weights``) and the ``quantize`` options that choose them: GPTQ against
a slow reference written from the Optimal Brain Quantizer update, the mse scale search against brute
force, bias correction on a real graph, every weight-carrying op, and the ``auto`` defaults."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimc import zoo
from cimc.errors import CimcError, PassError
from cimc.interpreter import run
from cimc.ir.core import Graph
from cimc.ir.equality import graph_difference
from cimc.onnx_io import import_model, load_model
from cimc.passmanager import PassContext, PassManager
from cimc.quant.params import weight_qmax
from cimc.quant.weights import CLIP_GRID, GPTQ_DAMP, WeightMethod, _inverse_cholesky, gptq, mse_scales

OFF = "weight-clip=max weight-rounding=nearest bias-correction=off"
ON = "weight-clip=mse weight-rounding=gptq bias-correction=on"


def _quantize(g: Graph, options: str, x: dict[str, np.ndarray]) -> Graph:
    g = g.copy()
    PassManager(f"quantize{{{options}}}", PassContext(calibration=x, verify_each=True)).run(g)
    return g


# ---- GPTQ ------------------------------------------------------------------------------------------
def obq_reference(m: np.ndarray, gram: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """One output channel at a time, one weight at a time, in order of decreasing ``H[k, k]``: round
    weight ``k``, move the other weights by ``-(w_k - q_k) / Hinv[k, k] * Hinv[:, k]`` and remove ``k``
    from the inverse Hessian, ``Hinv -= Hinv[:, k] Hinv[k, :] / Hinv[k, k]`` (the Optimal Brain
    Quantizer step, Frantar & Alistarh 2022, eqs. 3 and 4; GPTQ computes the same thing by Cholesky)."""
    G, K, N = m.shape
    qmax, out = weight_qmax(bits), np.zeros((G, K, N), np.int64)
    s = np.broadcast_to(scales, (G * N,)).reshape(G, N)
    for g in range(G):
        h = gram[g].copy()
        for k in range(K):
            if h[k, k] <= 0:
                h[k, k] = 1.0
        h += GPTQ_DAMP * np.mean(np.diag(h)) * np.eye(K)
        order = sorted(range(K), key=lambda k: (-h[k, k], k))
        for n in range(N):
            w, hinv = m[g, :, n].astype(np.float64).copy(), np.linalg.inv(h)
            for k in order:
                out[g, k, n] = min(max(round(w[k] / s[g, n]), -qmax), qmax)
                err = (w[k] - out[g, k, n] * s[g, n]) / hinv[k, k]
                w -= err * hinv[:, k]
                hinv -= np.outer(hinv[:, k], hinv[k, :]) / hinv[k, k]
    return out


def _correlated(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    """Rows with correlated, nonzero-mean features (as layer inputs are)."""
    return rng.normal(size=(rows, k)) @ rng.normal(size=(k, k)) * 0.3 + rng.normal(size=k)


@pytest.mark.parametrize("G,K,N,block,bits", [(1, 12, 5, 64, 4), (3, 9, 2, 4, 3), (2, 20, 3, 1, 2)])
def test_gptq_equals_the_obq_reference(G, K, N, block, bits):
    rng = np.random.default_rng(K)
    x = np.stack([_correlated(rng, 200, K) for _ in range(G)])
    x[:, :, 1] = 0.0  # an input row no calibration sample reaches
    gram = x.transpose(0, 2, 1) @ x / 200
    m = rng.normal(size=(G, K, N)).astype(np.float32)
    scales = (np.abs(m).max(axis=1).reshape(-1) / weight_qmax(bits)).astype(np.float32)
    np.testing.assert_array_equal(gptq(m, gram, scales, bits, block=block), obq_reference(m, gram, scales, bits))


def test_gptq_reads_the_statistics_view_without_writing_it():
    """gptq is given InputStats.gram, a strided [G, K, K] view of the [G, K + 1, K + 1] moments (no copy is
    made of it): the integers are the reference's, and the statistics, zero diagonal entry included, are
    left as they were."""
    rng = np.random.default_rng(5)
    G, K, N = 2, 11, 4
    x = np.stack([np.concatenate([_correlated(rng, 150, K), np.ones((150, 1))], axis=1) for _ in range(G)])
    x[:, :, 3] = 0.0
    moments = x.transpose(0, 2, 1) @ x / 150
    before = moments.copy()
    m = rng.normal(size=(G, K, N)).astype(np.float32)
    scales = (np.abs(m).max(axis=1).reshape(-1) / weight_qmax(3)).astype(np.float32)
    got = gptq(m, moments[:, :-1, :-1], scales, 3, block=4)
    np.testing.assert_array_equal(got, obq_reference(m, np.ascontiguousarray(moments[:, :-1, :-1]), scales, 3))
    np.testing.assert_array_equal(moments, before)


def test_inverse_cholesky_is_the_upper_factor_of_the_inverse():
    """U upper triangular with U^T U = h^-1, against numpy's general inverse, for each group."""
    rng = np.random.default_rng(6)
    h = np.stack([(lambda a: a.T @ a / 40 + 0.1 * np.eye(9))(rng.normal(size=(40, 9))) for _ in range(3)])
    u = _inverse_cholesky(h)
    assert u.flags.c_contiguous
    for g in range(3):
        np.testing.assert_array_equal(u[g], np.triu(u[g]))
        np.testing.assert_allclose(u[g].T @ u[g], np.linalg.inv(h[g]), rtol=1e-9, atol=1e-12)


def test_gptq_lowers_the_output_error_on_calibration_rows():
    rng = np.random.default_rng(0)
    x = _correlated(rng, 400, 32)
    gram = (x.T @ x / 400)[None]
    m = rng.normal(size=(1, 32, 16)).astype(np.float32)
    s = (np.abs(m).max(axis=1).reshape(-1) / 7).astype(np.float32)
    nearest = np.clip(np.rint(m / s), -7, 7)
    err = [np.square(x @ (m[0] - q[0] * s)).mean() for q in (nearest, gptq(m, gram, s, 4))]
    assert err[1] < 0.6 * err[0], err


def test_gptq_refuses_non_finite_statistics():
    gram = np.eye(4)[None].copy()
    gram[0, 1, 2] = np.inf
    with pytest.raises(CimcError, match="not finite"):
        gptq(np.ones((1, 4, 2), np.float32), gram, np.ones(2, np.float32), 4)


# ---- scales ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4, 6])
def test_mse_scales_are_the_brute_force_minimum(bits):
    rng = np.random.default_rng(bits)
    m = rng.standard_t(3, size=(2, 30, 4)).astype(np.float32)  # heavy tails: clipping pays
    m[1, :, 3] = 0.0
    qmax, got = weight_qmax(bits), mse_scales(m, bits)
    for c, w in enumerate(m.transpose(0, 2, 1).reshape(-1, 30)):
        best, best_err = 1.0, np.inf
        for a in CLIP_GRID:
            s = np.float32(np.float64(np.abs(w).max()) * a / qmax)
            if s == 0:
                continue
            e = float(sum((float(v) - float(s) * min(max(round(float(v / s)), -qmax), qmax)) ** 2 for v in w))
            if e < best_err:
                best, best_err = s, e
        assert got[c] == best, (c, got[c], best)
    assert got[7] == 1.0  # an all-zero channel
    one = mse_scales(m, bits, per_channel=False)
    assert one.shape == (1,) and one[0] <= np.abs(m).max() / qmax


# ---- the pass: every weight op, bias correction, auto ------------------------------------------------
def _model() -> onnx.ModelProto:
    """Conv (grouped) -> Relu -> ConvTranspose -> Flatten -> Gemm (transB, alpha, bias) -> Reshape to tokens
    -> MatMul + Add (rank-3 input) -> Reshape: every weight op ``quantize`` turns into an integer op."""
    rng = np.random.default_rng(0)
    w = {"w1": rng.normal(0, 0.4, (8, 2, 3, 3)), "b1": rng.normal(0, 0.1, 8),
         "w2": rng.normal(0, 0.3, (8, 3, 2, 2)), "b2": rng.normal(0, 0.1, 6),
         "w3": rng.normal(0, 0.1, (24, 6 * 10 * 10)), "b3": rng.normal(0, 0.1, 24),
         "w4": rng.normal(0, 0.4, (6, 5)), "b4": rng.normal(0, 0.1, 5),
         "tokens": np.array([-1, 4, 6]), "flat": np.array([-1, 20])}
    inits = [numpy_helper.from_array(a.astype(np.int64 if k in ("tokens", "flat") else np.float32), k)
             for k, a in w.items()]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], group=2, pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ConvTranspose", ["r", "w2", "b2"], ["t"], group=2, strides=[2, 2], name="convt"),
             helper.make_node("Flatten", ["t"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["g"], transB=1, alpha=0.5, name="gemm"),
             helper.make_node("Reshape", ["g", "tokens"], ["tok"]),
             helper.make_node("MatMul", ["tok", "w4"], ["mm"], name="matmul"),
             helper.make_node("Add", ["mm", "b4"], ["a"]),
             helper.make_node("Reshape", ["a", "flat"], ["y"])]
    graph = helper.make_graph(nodes, "weights", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 20])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _images(rng: np.random.Generator, n: int, channels: int = 4) -> np.ndarray:
    """Smooth images with a nonzero mean: neighbouring inputs are correlated."""
    x = rng.normal(size=(n, channels, 7, 7))
    x = (x[:, :, 1:-1, 1:-1] + x[:, :, :-2, 1:-1] + x[:, :, 2:, 1:-1] + x[:, :, 1:-1, :-2] + x[:, :, 1:-1, 2:])[
        :, :, :5, :5]
    return (0.3 * x + 0.5).astype(np.float32)


def test_every_weight_op_gets_the_method_and_moves_less():
    f = import_model(_model())
    rng = np.random.default_rng(1)
    calib, test = {"x": _images(rng, 64)}, {"x": _images(rng, 64)}
    ref = run(f, test)["y"]
    err = {}
    for opts in (OFF, ON):
        q = _quantize(f, f"weight-bits=3 {opts}", calib)
        assert {"q.conv", "q.conv_transpose", "q.gemm", "q.matmul"} <= set(q.ops()), q.ops()
        assert not {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"} & set(q.ops())
        err[opts] = float(np.square(run(q, test)["y"] - ref).mean())
    used = json.loads(q.metadata["quant.weight-methods"])
    assert used == {"mse scales, gptq rounding, bias correction": ["conv", "convt", "gemm", "matmul"]}
    assert err[ON] < 0.5 * err[OFF], err


@pytest.mark.parametrize("layer", ["conv", "convt"])
def test_bias_correction_keeps_the_mean_output_of_every_channel(layer):
    """One layer alone (the grouped Conv, or the ConvTranspose): on the calibration inputs the quantized
    layer's mean output per channel is the float layer's, up to the output's rounding step."""
    model = _model()
    node = next(n for n in model.graph.node if n.name == layer)
    channels = 4 if layer == "conv" else 8
    graph = helper.make_graph([node], layer, [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT,
                                                                            ["N", channels, 5, 5])],
                              [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
                              [i for i in model.graph.initializer if i.name in node.input])
    f = import_model(helper.make_model(graph, opset_imports=model.opset_import))
    calib = {node.input[0]: _images(np.random.default_rng(2), 64, channels)}
    ref = run(f, calib)[node.output[0]].mean(axis=(0, 2, 3))
    shift = {}
    for bc in ("off", "on"):
        q = _quantize(f, f"weight-bits=2 weight-rounding=nearest weight-clip=max bias-correction={bc}", calib)
        out = run(q, calib)[node.output[0]]
        step = float(np.ptp(out)) / 255
        shift[bc] = np.abs(out.mean(axis=(0, 2, 3)) - ref).max()
    assert shift["on"] < 0.5 * step and shift["off"] > 5 * step, (shift, step)


def test_auto_is_the_methods_below_8_bits_and_nothing_new_at_8():
    f, m = load_model(zoo.path("mlp")), zoo.load("mlp")
    PassManager("fold-constants").run(f)
    calib = {m.input_name: zoo.calibration_set()}
    w8, w8_off = _quantize(f, "", calib), _quantize(f, OFF, calib)
    assert graph_difference(w8, w8_off) is None and "quant.weight-methods" not in w8.metadata
    w4, w4_on = _quantize(f, "weight-bits=4", calib), _quantize(f, f"weight-bits=4 {ON}", calib)
    assert graph_difference(w4, w4_on) is None
    assert graph_difference(w4, _quantize(f, "weight-bits=4", calib)) is None  # deterministic
    first = next(n.name for n in f.nodes if n.op == "Gemm")
    mixed = json.loads(_quantize(f, f'overrides="{first}:weight-bits=4"', calib).metadata["quant.weight-methods"])
    assert mixed == {str(WeightMethod.choose(4)): [first], str(WeightMethod()): [n.name for n in f.nodes
                                                                                   if n.op == "Gemm"][1:]}
    assert WeightMethod.choose(4, clip="max", bias_correction="off") == WeightMethod("max", "gptq", False)
    assert WeightMethod.choose(8, rounding="gptq") == WeightMethod("max", "gptq", False)


def test_layers_beyond_gptq_max_rows_are_rounded_to_nearest_and_named(caplog):
    """Under ``auto`` a layer of more input rows than ``gptq-max-rows`` gets the weights of
    ``weight-rounding=nearest`` (the rest keep GPTQ's), a warning and a line in the pass report naming it;
    asking for ``gptq`` there is an error that names the layer."""
    f, m = load_model(zoo.path("lenet_bn")), zoo.load("lenet_bn")
    PassManager("fold-constants,fuse-batchnorm").run(f)
    calib = {m.input_name: zoo.calibration_set()}
    rows = {}  # input rows per group: a convolution's C_in / group * kernel, a Gemm's K
    for n in f.nodes:
        w = n.inputs[1].const if n.op in ("Conv", "Gemm") else None
        if w is not None:
            rows[n.name] = int(np.prod(w.shape[1:]) if n.op == "Conv" else w.shape[1 if n.attrs.get("transB") else 0])
    limit = sorted(set(rows.values()))[-2]
    big = sorted(k for k, r in rows.items() if r > limit)
    assert big and len(big) < len(rows), rows

    def weights(g: Graph) -> dict[str, np.ndarray]:
        return {n.name: n.inputs[1].const for n in g.nodes if n.op in ("q.conv", "q.gemm")}

    gptq_w, nearest_w = (weights(_quantize(f, f"weight-bits=4 {o}", calib)) for o in ("", "weight-rounding=nearest"))
    with caplog.at_level("WARNING"):
        capped = _quantize(f, f"weight-bits=4 gptq-max-rows={limit}", calib)
    got = weights(capped)
    assert any(not np.array_equal(gptq_w[k], nearest_w[k]) for k in big)  # else the test could not fail
    for k, w in got.items():
        want = nearest_w[k] if rows[k] > limit else gptq_w[k]
        assert np.array_equal(w, want), k
    assert sorted(json.loads(capped.metadata["report.quantize"])["layers"]) == big
    assert all(any(k in r.message and "gptq-max-rows" in r.message for r in caplog.records) for k in big)
    named = rf"'{re.escape(big[0])}': its {rows[big[0]]} input rows .* raise gptq-max-rows"
    with pytest.raises(PassError, match=named):
        _quantize(f, f"weight-bits=4 weight-rounding=gptq gptq-max-rows={limit}", calib)


def test_input_means_alone_equal_those_beside_the_second_moments():
    """Bias correction alone gathers only ``E[x]`` (chunked im2col rows); it is the mean GPTQ's statistics hold."""
    from cimc.quant.weights import InputStats
    from cimc.sparsity import weight_view

    f = import_model(_model())
    PassManager("fold-constants").run(f)
    x = _images(np.random.default_rng(3), 20)
    acts = {}
    layers = [n for n in f.nodes if n.op in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    saved = list(f.outputs)
    f.outputs = saved + [n.inputs[0] for n in layers]
    env = run(f, {"x": x})
    f.outputs = saved
    for n in layers:
        acts[n.name] = env[n.inputs[0].name]
        both, alone = InputStats(n, weight_view(n)), InputStats(n, weight_view(n), second=False)
        alone.CHUNK = 64  # several chunks per batch
        for s in (slice(0, 7), slice(7, 20)):  # two batches of different sizes
            both.observe(acts[n.name][s])
            alone.observe(acts[n.name][s])
        np.testing.assert_allclose(alone.mean, both.mean, rtol=1e-9, atol=1e-12, err_msg=n.name)
        with pytest.raises(CimcError, match="second moments were not gathered"):
            alone.gram  # noqa: B018
