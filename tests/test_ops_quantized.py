"""The ``q.*`` ops: exact integer formulas (hypothesis against plain int64 numpy references),
fixed-point multipliers, agreement with onnxruntime's QuantizeLinear/DequantizeLinear, and the
verify hooks that keep attributes and types consistent."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from cimc.errors import VerifyError
from cimc.interpreter import run
from cimc.ir.core import Graph
from cimc.ir.types import DType, QuantParams, TensorType
from cimc.ir.verifier import verify
from cimc.quant import quantize_multiplier, rescale, shared_multipliers

U8, I8, I32, F32 = DType.u8, DType.i8, DType.i32, DType.f32


def _graph(op: str, inputs: list, attrs: dict, out: TensorType | None = None) -> Graph:
    """One ``op`` node; ``inputs`` are ``(name, type)`` graph inputs or arrays (constants)."""
    g = Graph()
    vals = []
    for i, x in enumerate(inputs):
        if x is None:
            vals.append(None)
        elif isinstance(x, tuple):
            vals.append(g.add_input(*x))
        else:
            vals.append(g.add_constant(x, f"c{i}"))
    node = g.add_node(op, vals, attrs, outputs=None if out is None else [out])
    g.outputs.append(node.output)
    verify(g)
    return g


def _one(g: Graph, **inputs: np.ndarray) -> np.ndarray:
    return next(iter(run(g, inputs).values()))


# ---- q.conv ---------------------------------------------------------------------------------------
def _conv_ref(x, w, bias, zx, strides, dils, pads, group):
    """sum_k w * (x - zx) over zero-padded x, in int64, one output position at a time."""
    n, _c, *sp = x.shape
    m, cg, *ks = w.shape
    nd = len(sp)
    xs = np.pad(x.astype(np.int64) - zx, [(0, 0), (0, 0), *zip(pads[:nd], pads[nd:], strict=False)])
    out = [(sp[i] + pads[i] + pads[i + nd] - (ks[i] - 1) * dils[i] - 1) // strides[i] + 1 for i in range(nd)]
    y = np.zeros((n, m, *out), np.int64)
    mg = m // group
    for o in np.ndindex(*out):
        for mm in range(m):
            gi = mm // mg
            win = xs[(slice(None), slice(gi * cg, (gi + 1) * cg),
                      *(slice(o[i] * strides[i], o[i] * strides[i] + (ks[i] - 1) * dils[i] + 1, dils[i])
                        for i in range(nd)))]
            y[(slice(None), mm, *o)] = (win * w[mm].astype(np.int64)).reshape(n, -1).sum(1)
    return y + bias.reshape(m, *(1,) * nd)


@st.composite
def conv_cases(draw):
    nd = draw(st.integers(1, 2))
    group, cg, mg = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ks = [draw(st.integers(1, 3)) for _ in range(nd)]
    dils = [draw(st.integers(1, 2)) for _ in range(nd)]
    strides = [draw(st.integers(1, 3)) for _ in range(nd)]
    pads = [draw(st.integers(0, 2)) for _ in range(2 * nd)]
    sp = [max(draw(st.integers(1, 7)), (k - 1) * d + 1 - pads[i] - pads[i + nd])
          for i, (k, d) in enumerate(zip(ks, dils, strict=False))]
    abits, wbits = draw(st.integers(2, 8)), draw(st.integers(2, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    qa, qw = (1 << abits) - 1, (1 << (wbits - 1)) - 1
    x = rng.integers(0, qa + 1, (draw(st.integers(1, 2)), group * cg, *sp)).astype(np.uint8)
    w = rng.integers(-qw, qw + 1, (group * mg, cg, *ks)).astype(np.int8)
    b = rng.integers(-(2**20), 2**20, group * mg)
    return x, w, b, int(rng.integers(0, qa + 1)), strides, dils, pads, group


@settings(max_examples=80, deadline=None)
@given(conv_cases())
def test_qconv_is_the_exact_integer_formula(case):
    x, w, b, zx, strides, dils, pads, group = case
    bias = (b - zx * w.astype(np.int64).reshape(w.shape[0], -1).sum(1)).astype(np.int32)  # as the pass folds it
    g = _graph("q.conv", [("x", TensorType(U8, x.shape)), w, bias],
               {"strides": tuple(strides), "dilations": tuple(dils), "pads": tuple(pads), "group": group,
                "x_zero_point": zx})
    got = _one(g, x=x)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, _conv_ref(x, w, b, zx, strides, dils, pads, group))


def test_qconv_same_padding_pads_with_the_zero_point():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2, 3, 5, 6)).astype(np.uint8)
    w = rng.integers(-127, 128, (4, 3, 3, 2)).astype(np.int8)
    zx = 77
    bias = (-zx * w.astype(np.int64).reshape(4, -1).sum(1)).astype(np.int32)
    g = _graph("q.conv", [("x", TensorType(U8, x.shape)), w, bias],
               {"auto_pad": "SAME_UPPER", "strides": (2, 2), "x_zero_point": zx})
    # SAME_UPPER here: out 3x3, total pads (2, 0) for H and (1, 0)... computed by the Conv geometry
    got = _one(g, x=x)
    from cimc.ops.nn import window_geometry

    _, pb, pe, *_ = window_geometry(x.shape[2:], w.shape[2:], {"auto_pad": "SAME_UPPER", "strides": (2, 2)})
    np.testing.assert_array_equal(got, _conv_ref(x, w, np.zeros(4, np.int64), zx, (2, 2), (1, 1), (*pb, *pe), 1))


def test_qconv_large_reduction_is_exact():
    """K = 64*9 at full 8-bit range: partial sums beyond 2**24 force the float64 path."""
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (1, 512, 4, 4)).astype(np.uint8)
    w = np.full((2, 512, 3, 3), 127, np.int8)
    g = _graph("q.conv", [("x", TensorType(U8, x.shape)), w], {"pads": (1, 1, 1, 1), "x_zero_point": 0})
    np.testing.assert_array_equal(_one(g, x=x), _conv_ref(x, w, np.zeros(2, np.int64), 0, (1, 1), (1, 1),
                                                          (1, 1, 1, 1), 1))


# ---- q.conv_transpose -------------------------------------------------------------------------------
def _convt_ref(x, w, bias, zx, strides, dils, pads, opad, group):
    """ConvTranspose of (x - zx) by w in int64: scatter each input cell times each kernel tap."""
    n, c, *sp = x.shape
    _, mg, *ks = w.shape
    nd, cg = len(sp), c // group
    out = [strides[i] * (sp[i] - 1) + opad[i] + (ks[i] - 1) * dils[i] + 1 - pads[i] - pads[i + nd] for i in range(nd)]
    y = np.zeros((n, group * mg, *out), np.int64)
    xs = x.astype(np.int64) - zx
    for g in range(group):
        for i in np.ndindex(*sp):
            for k in np.ndindex(*ks):
                o = [i[d] * strides[d] + k[d] * dils[d] - pads[d] for d in range(nd)]
                if all(0 <= o[d] < out[d] for d in range(nd)):
                    xv = xs[(slice(None), slice(g * cg, (g + 1) * cg), *i)]  # [n, cg]
                    wv = w[(slice(g * cg, (g + 1) * cg), slice(None), *k)].astype(np.int64)  # [cg, mg]
                    y[(slice(None), slice(g * mg, (g + 1) * mg), *o)] += xv @ wv
    return y + bias.reshape(-1, *(1,) * nd)


@st.composite
def convt_cases(draw):
    nd = draw(st.integers(1, 2))
    group, cg, mg = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ks = [draw(st.integers(1, 3)) for _ in range(nd)]
    dils = [draw(st.integers(1, 2)) for _ in range(nd)]
    strides = [draw(st.integers(1, 3)) for _ in range(nd)]
    opad = [draw(st.integers(0, s - 1)) for s in strides]
    sp = [draw(st.integers(1, 5)) for _ in range(nd)]
    full = [strides[i] * (sp[i] - 1) + opad[i] + (ks[i] - 1) * dils[i] + 1 for i in range(nd)]
    pads = [draw(st.integers(0, min(2, (f - 1) // 2))) for f in full]
    pads = pads + [draw(st.integers(0, min(2, full[i] - 1 - pads[i]))) for i in range(nd)]
    abits, wbits = draw(st.integers(2, 8)), draw(st.integers(2, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    qa, qw = (1 << abits) - 1, (1 << (wbits - 1)) - 1
    x = rng.integers(0, qa + 1, (draw(st.integers(1, 2)), group * cg, *sp)).astype(np.uint8)
    w = rng.integers(-qw, qw + 1, (group * cg, mg, *ks)).astype(np.int8)
    b = rng.integers(-(2**20), 2**20, group * mg)
    return x, w, b, int(rng.integers(0, qa + 1)), strides, dils, pads, opad, group


@settings(max_examples=80, deadline=None)
@given(convt_cases(), st.booleans())
def test_qconv_transpose_is_the_exact_integer_formula(case, with_bias):
    x, w, b, zx, strides, dils, pads, opad, group = case
    b = b if with_bias else np.zeros_like(b)
    g = _graph("q.conv_transpose", [("x", TensorType(U8, x.shape)), w, b.astype(np.int32) if with_bias else None],
               {"strides": tuple(strides), "dilations": tuple(dils), "pads": tuple(pads),
                "output_padding": tuple(opad), "group": group, "x_zero_point": zx})
    got = _one(g, x=x)
    want = _convt_ref(x, w, b, zx, strides, dils, pads, opad, group)
    assert got.dtype == np.int32 and got.shape == want.shape == g.outputs[0].type.shape
    np.testing.assert_array_equal(got, want)


def test_qconv_transpose_type_and_checks():
    x, w = TensorType(U8, ("N", 4, 5, 5), QuantParams((0.1,), (3,), 8)), np.ones((4, 2, 3, 3), np.int8)
    g = Graph()
    xi = g.add_input("x", x)
    wv = g.add_constant(w, "w", TensorType(I8, w.shape, QuantParams((0.5, 0.25), (0, 0), 8, 1)))
    n = g.add_node("q.conv_transpose", [xi, wv], {"strides": (2, 2), "x_zero_point": 3})
    t = n.output.type
    assert t.dtype is I32 and t.shape == ("N", 2, 11, 11) and t.quant.scale == pytest.approx((0.05, 0.025))
    g.outputs.append(n.output)
    verify(g)
    n.attrs["x_zero_point"] = 4
    with pytest.raises(VerifyError, match="x_zero_point"):
        verify(g)
    with pytest.raises(VerifyError, match="channels"):
        _graph("q.conv_transpose", [("x", TensorType(U8, (1, 3, 4, 4))), w], {"x_zero_point": 0})


# ---- q.gemm / q.matmul ---------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(1, 6), st.integers(2, 8), st.integers(2, 8),
       st.integers(0, 2**31), st.booleans())
def test_qgemm_and_qmatmul_are_exact(m, k, n, abits, wbits, seed, with_bias):
    rng = np.random.default_rng(seed)
    qw = (1 << (wbits - 1)) - 1
    x = rng.integers(0, 1 << abits, (m, k)).astype(np.uint8)
    w = rng.integers(-qw, qw + 1, (n, k)).astype(np.int8)
    b = rng.integers(-(2**30), 2**30, n).astype(np.int32) if with_bias else None
    ref = x.astype(np.int64) @ w.T.astype(np.int64) + (0 if b is None else b.astype(np.int64))
    gg = _graph("q.gemm", [("x", TensorType(U8, (m, k))), w, b], {"x_zero_point": 0})
    np.testing.assert_array_equal(_one(gg, x=x), ref.astype(np.int32))
    x3 = rng.integers(0, 1 << abits, (2, m, k)).astype(np.uint8)
    gm = _graph("q.matmul", [("x", TensorType(U8, (2, m, k))), np.ascontiguousarray(w.T), b], {"x_zero_point": 0})
    ref3 = x3.astype(np.int64) @ w.T.astype(np.int64) + (0 if b is None else b.astype(np.int64))
    np.testing.assert_array_equal(_one(gm, x=x3), ref3.astype(np.int32))


# ---- fixed point -------------------------------------------------------------------------------------
@given(st.floats(2.0**-31, 2.0**29, allow_nan=False, allow_infinity=False))
def test_quantize_multiplier_is_normalized_and_accurate(m):
    m0, shift = quantize_multiplier(m)
    assert 2**30 <= m0 < 2**31 and 1 <= shift <= 62
    assert abs(m0 * 2.0**-shift - m) <= m * 2.0**-30


def test_quantize_multiplier_edges():
    assert quantize_multiplier(0.0) == (0, 31)
    assert quantize_multiplier(0.5) == (2**30, 31)
    assert quantize_multiplier(1 - 2.0**-40) == (2**30, 30)  # rounds up to 2**31: renormalized
    assert quantize_multiplier(2.0**-40) == (2**22, 62)  # tiny: shift saturates, M0 shrinks
    with pytest.raises(Exception, match="outside"):
        quantize_multiplier(2.0**31)


@settings(max_examples=200)
@given(st.integers(-(2**31), 2**31 - 1), st.floats(1e-6, 4.0))
def test_rescale_rounds_half_up_exactly(acc, m):
    m0, shift = quantize_multiplier(m)
    got = int(rescale(np.array([acc], np.int32), m0, shift)[0])
    assert got == math.floor((acc * m0 + 2 ** (shift - 1)) / 2**shift)  # exact rational
    assert abs(got - acc * m) <= 0.5 + abs(acc) * m * 2.0**-30 + 1e-9


def test_rescale_ties_round_up():
    m0, shift = quantize_multiplier(0.5)
    np.testing.assert_array_equal(rescale(np.array([-3, -1, 1, 3]), m0, shift), [-1, 0, 1, 2])


# ---- q.requant ---------------------------------------------------------------------------------------
def _requant_attrs(scales, mode, **extra):
    attrs = {"mode": mode, "scale": tuple(scales), **extra}
    if mode == "fixed":
        attrs["multiplier"], attrs["shift"] = (tuple(t) for t in zip(*map(quantize_multiplier, scales), strict=False))
    return attrs


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8), st.integers(0, 2**31), st.sampled_from(["fixed", "float"]), st.booleans())
def test_requant_matches_the_formula(bits, seed, mode, clamp):
    rng = np.random.default_rng(seed)
    qmax = (1 << bits) - 1
    scales = [float(np.float32(s)) for s in rng.uniform(1e-4, 0.1, 3)]
    zp = int(rng.integers(0, qmax + 1))
    lim = {"lo": int(rng.integers(0, zp + 1)), "hi": int(rng.integers(zp, qmax + 1))} if clamp else {}
    acc = rng.integers(-(2**15), 2**15, (2, 3, 4)).astype(np.int32)
    g = _graph("q.requant", [("a", TensorType(I32, acc.shape))],
               _requant_attrs(scales, mode, axis=1, zero_point=zp, bits=bits, **lim))
    got = _one(g, a=acc).astype(np.int64)
    real = acc.astype(np.float64) * np.array(scales).reshape(1, 3, 1)
    if mode == "fixed":
        m0, sh = (np.array(t, np.int64).reshape(1, 3, 1) for t in zip(*map(quantize_multiplier, scales), strict=False))
        v = np.floor((acc.astype(object) * m0.astype(object) + (1 << (sh - 1)).astype(object)) / (2**sh).astype(object))
        v = v.astype(np.int64)
    else:
        v = np.rint(acc.astype(np.float32) * np.array(scales, np.float32).reshape(1, 3, 1)).astype(np.int64)
    want = np.clip(v + zp, lim.get("lo", 0), lim.get("hi", qmax))
    np.testing.assert_array_equal(got, want)
    assert np.all(np.abs(v - real) <= 0.5 + 1e-3)  # both modes round the real product to nearest


def test_requant_fixed_and_float_agree_except_at_ties():
    rng = np.random.default_rng(3)
    acc = rng.integers(-(2**20), 2**20, 10000).astype(np.int32)
    outs = [_one(_graph("q.requant", [("a", TensorType(I32, acc.shape))],
                        _requant_attrs([0.0007312], mode, zero_point=128, axis=0)), a=acc)
            for mode in ("fixed", "float")]
    assert np.abs(outs[0].astype(int) - outs[1].astype(int)).max() <= 1
    assert (outs[0] != outs[1]).mean() < 0.01



@pytest.mark.parametrize("block", [None, 1000])
@pytest.mark.parametrize(("shape", "axis"), [((2, 4, 5000), 1), ((3, 700, 4), -1), ((40000,), 0)])
def test_requant_blocks_are_exact_at_ties_clamp_edges_and_extremes(monkeypatch, shape, axis, block):
    """Per channel (rows of one channel, or channels along short rows) and per tensor, in one block
    or many: scales 2**-13 and 2**-15 (exact ties), 2**-40 (shift 62: the zero point is added after
    the shift) and two others; accumulators on ties, around the clamp edges and at the int32 ends."""
    import cimc.quant.fixedpoint as fixedpoint

    if block:
        monkeypatch.setattr(fixedpoint, "BLOCK", block)
    rng = np.random.default_rng(7)
    n = shape[axis]
    scales = [2.0**-13, 2.0**-15, 2.0**-40, float(np.float32(1.37e-4)), float(np.float32(3.3e-5))]
    scales = [scales[i % 5] for i in range(n)] if n <= 700 else scales[:1]
    m0, sh = (np.array(t, np.int64) for t in zip(*map(quantize_multiplier, scales), strict=True))
    per = [-1 if i == axis % len(shape) else 1 for i in range(len(shape))] if len(scales) > 1 else [1] * len(shape)
    m0, sh = m0.reshape(per), sh.reshape(per)
    step = np.maximum((1 << (sh - 1)) // m0, 1)  # about one output step, capped to stay in int32 below
    acc = np.clip(rng.integers(-300, 300, shape) * np.minimum(step, 2**22) + rng.integers(-3, 4, shape),
                  -(2**31), 2**31 - 1)
    ties = (2 * rng.integers(-300, 300, shape) + 1) << np.minimum(sh - 31, 20)  # exact ties for powers of two
    acc = np.where(rng.random(shape) < 0.3, ties, acc)
    acc.reshape(-1)[:4] = [-(2**31), 2**31 - 1, 0, -1]
    acc = acc.astype(np.int32)
    for zp, lim in ((37, {}), (37, {"lo": 5, "hi": 200}), (0, {})):
        g = _graph("q.requant", [("a", TensorType(I32, acc.shape))],
                   _requant_attrs(scales, "fixed", axis=axis, zero_point=zp, bits=8, **lim))
        want = np.clip(rescale(acc, m0, sh) + zp, lim.get("lo", 0), lim.get("hi", 255))
        np.testing.assert_array_equal(_one(g, a=acc), want)
        g = _graph("q.requant", [("a", TensorType(I32, acc.shape))],
                   _requant_attrs(scales, "float", axis=axis, zero_point=zp, bits=8, **lim))
        sf = np.array(scales, np.float32).reshape(per)
        want = np.clip(np.rint(acc.astype(np.float32) * sf) + zp, lim.get("lo", 0), lim.get("hi", 255))
        np.testing.assert_array_equal(_one(g, a=acc), want.astype(np.uint8))


def _requant_exact(acc, m0, sh, zp, lo, hi):
    """The fixed-point requantization in Python integers: ``clip(((a*M0 + 2**(s-1)) >> s) + zp, lo, hi)``."""
    a, m, s = (np.asarray(v).astype(object) for v in (acc, m0, sh))
    return np.clip((a * m + (1 << (s - 1))) // (2 ** s) + zp, lo, hi).astype(np.int64)


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from(["int32", "uint8", "int16", "uint16"]), st.booleans(), st.booleans())
def test_requantize_narrow_clamps_first_and_shares_one_shift(seed, dtype, per_channel, clamp):
    """requantize on accumulators of at most 32 bits clamps them to the range whose results are not all clamped,
    then runs every channel at the largest shift: the same bits as the formula in Python integers, per tensor
    and per channel, with mixed shifts, multipliers from 2**-40 to above 1 (result steps of more than one:
    the final clamp stays), zero multipliers, ties and the clamp edges."""
    from cimc.quant.fixedpoint import requantize

    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    C = 5 if per_channel else 1
    exps = rng.choice([-40.0, -20.0, -13.0, -8.0, -1.0, 0.0, 1.5], C)
    scales = [0.0 if rng.random() < 0.1 else float(np.float32(rng.uniform(0.5, 1.0) * 2.0**e)) for e in exps]
    if rng.random() < 0.3:  # powers of two: exact ties
        scales = [2.0 ** float(e) for e in exps]
    m0, sh = (np.array(t, np.int64) for t in zip(*map(quantize_multiplier, scales), strict=True))
    zp = int(rng.integers(0, 256))
    lo, hi = (int(rng.integers(0, zp + 1)), int(rng.integers(zp, 256))) if clamp else (0, 255)
    step = np.maximum((1 << np.minimum(sh, 40)) // np.maximum(m0, 1), 1)  # inputs a few output steps apart
    acc = rng.integers(-300, 300, (3, C, 40)) * step.reshape(1, C, 1) + rng.integers(-2, 3, (3, C, 40))
    ties = (2 * rng.integers(-300, 300, (3, C, 40)) + 1) << np.maximum(np.minimum(sh - 31, 20), 0).reshape(1, C, 1)
    acc = np.where(rng.random(acc.shape) < 0.3, ties, acc)
    acc = np.clip(acc, info.min, info.max)
    acc.reshape(-1)[:2] = [info.min, info.max]
    acc = acc.astype(dtype)
    got = requantize(acc, m0 if per_channel else m0[0], sh if per_channel else sh[0], zp, lo, hi, axis=1)
    want = _requant_exact(acc, m0.reshape(1, C, 1), sh.reshape(1, C, 1), zp, lo, hi)
    np.testing.assert_array_equal(got.astype(np.int64), want)


# ---- q.add --------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from(["fixed", "float"]))
def test_qadd_rounds_the_real_sum_once(seed, mode):
    rng = np.random.default_rng(seed)
    sa, sb, so = (float(np.float32(s)) for s in rng.uniform(1e-3, 0.1, 3))
    za, zb, zo = (int(z) for z in rng.integers(0, 256, 3))
    ma, mb = float(np.float32(sa / so)), float(np.float32(sb / so))
    attrs = {"mode": mode, "a_scale": ma, "b_scale": mb, "a_zero_point": za, "b_zero_point": zb, "zero_point": zo}
    if mode == "fixed":
        attrs["a_multiplier"], attrs["b_multiplier"], attrs["shift"] = shared_multipliers(ma, mb)
    a = rng.integers(0, 256, (4, 5)).astype(np.uint8)
    b = rng.integers(0, 256, (1, 5)).astype(np.uint8)  # broadcasts
    g = _graph("q.add", [("a", TensorType(U8, a.shape)), ("b", TensorType(U8, b.shape))], attrs)
    got = _one(g, a=a, b=b).astype(np.int64)
    real = (a.astype(np.float64) - za) * ma + (b.astype(np.float64) - zb) * mb
    exact = np.clip(np.floor(real + 0.5) + zo, 0, 255)
    assert np.abs(got - exact).max() <= 1
    assert (got == exact).mean() > 0.95



def _add_reference(attrs, a, b):
    """The q.add formula in int64 (fixed) or float32 (float), elementwise."""
    da, db = a.astype(np.int64) - attrs["a_zero_point"], b.astype(np.int64) - attrs["b_zero_point"]
    if attrs["mode"] == "fixed":
        v = (attrs["a_multiplier"] * da + attrs["b_multiplier"] * db + (1 << (attrs["shift"] - 1))) >> attrs["shift"]
        v = v + attrs["zero_point"]
    else:  # the zero point is in the float sum that is rounded
        v = np.rint(da.astype(np.float32) * np.float32(attrs["a_scale"]) + db.astype(np.float32)
                    * np.float32(attrs["b_scale"]) + np.float32(attrs["zero_point"])).astype(np.int64)
    return np.clip(v, attrs.get("lo", 0), attrs.get("hi", 255))


@pytest.mark.parametrize("block", [None, 1000])
@pytest.mark.parametrize("mode", ["fixed", "float"])
@pytest.mark.parametrize("bshape", [(2, 64, 32, 32), (1, 64, 1, 1)])
def test_qadd_table_lookup_on_large_inputs_is_the_formula(monkeypatch, mode, bshape, block):
    import cimc.ops.quantized as quantized

    if block:
        monkeypatch.setattr(quantized, "BLOCK", block)
    rng = np.random.default_rng(8)
    a = rng.integers(0, 256, (2, 64, 32, 32)).astype(np.uint8)  # 2**17 elements: the table path
    b = rng.integers(0, 256, bshape).astype(np.uint8)
    ma, mb = float(np.float32(0.731)), float(np.float32(0.0625))
    attrs = {"mode": mode, "a_scale": ma, "b_scale": mb, "a_zero_point": 3, "b_zero_point": 128, "zero_point": 9,
             "lo": 9, "hi": 250}
    if mode == "fixed":
        attrs["a_multiplier"], attrs["b_multiplier"], attrs["shift"] = shared_multipliers(ma, mb)
    for x, y in ((a, b), (b, a)):
        g = _graph("q.add", [("a", TensorType(U8, x.shape)), ("b", TensorType(U8, y.shape))], attrs)
        np.testing.assert_array_equal(_one(g, a=x, b=y), _add_reference(attrs, x, y))


# ---- q.quantize / q.dequantize against onnxruntime ---------------------------------------------------
def _ort(node_op: str, x: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int = 1) -> np.ndarray:
    codes = {np.float32: TensorProto.FLOAT, np.uint8: TensorProto.UINT8, np.int32: TensorProto.INT32}
    out_t = TensorProto.UINT8 if node_op == "QuantizeLinear" else TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node(node_op, ["x", "s", "z"], ["y"], axis=axis)], "g",
        [helper.make_tensor_value_info("x", codes[x.dtype.type], x.shape)],
        [helper.make_tensor_value_info("y", out_t, None)],
        [helper.make_tensor("s", TensorProto.FLOAT, scale.shape, scale.ravel().tolist()),
         helper.make_tensor("z", codes[zp.dtype.type], zp.shape, zp.ravel().tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_quantize_matches_onnxruntime_bit_for_bit():
    rng = np.random.default_rng(4)
    scale, zp = float(np.float32(0.0173)), 119
    x = np.concatenate([rng.normal(0, 2, 5000), (np.arange(-300, 300) + 0.5) * scale]).astype(np.float32)
    x = x.reshape(1, -1)
    g = _graph("q.quantize", [("x", TensorType(F32, x.shape))], {"scale": scale, "zero_point": zp, "bits": 8})
    ours = _one(g, x=x)
    theirs = _ort("QuantizeLinear", x, np.array(scale, np.float32), np.array(zp, np.uint8))
    np.testing.assert_array_equal(ours, theirs)
    assert g.outputs[0].type.quant == QuantParams((scale,), (zp,), 8)


def test_quantize_clips_to_bits():
    x = np.array([[-10.0, 0.0, 0.26, 0.9, 100.0]], np.float32)
    g = _graph("q.quantize", [("x", TensorType(F32, x.shape))], {"scale": 0.1, "zero_point": 3, "bits": 3})
    np.testing.assert_array_equal(_one(g, x=x), [[0, 3, 6, 7, 7]])


def test_dequantize_matches_onnxruntime_per_tensor_and_per_axis():
    rng = np.random.default_rng(5)
    q = rng.integers(0, 256, (2, 3, 4)).astype(np.uint8)
    g = _graph("q.dequantize", [("q", TensorType(U8, q.shape))], {"scale": (0.05,), "zero_point": (9,)})
    np.testing.assert_array_equal(_one(g, q=q), _ort("DequantizeLinear", q, np.array(0.05, np.float32),
                                                     np.array(9, np.uint8)))
    acc = rng.integers(-(2**24), 2**24, (2, 3, 4)).astype(np.int32)
    scales = np.array([1e-4, 3e-5, 7e-6], np.float32)
    g = _graph("q.dequantize", [("q", TensorType(I32, acc.shape))],
               {"scale": tuple(map(float, scales)), "zero_point": (0, 0, 0), "axis": 1})
    np.testing.assert_array_equal(_one(g, q=acc), _ort("DequantizeLinear", acc, scales, np.zeros(3, np.int32)))


# ---- verify hooks and type rules -----------------------------------------------------------------
def test_verify_catches_inconsistent_attributes_and_types():
    xq = TensorType(U8, (1, 2, 4, 4), QuantParams((0.1,), (5,), 8))
    w = np.ones((3, 2, 1, 1), np.int8)
    with pytest.raises(VerifyError, match="x_zero_point=4 but the input type says"):
        _graph("q.conv", [("x", xq), w], {"x_zero_point": 4})
    bad = _requant_attrs([0.25], "fixed", zero_point=0)
    bad["multiplier"] = (2**30 + 1,)
    with pytest.raises(VerifyError, match="is not the fixed-point form"):
        _graph("q.requant", [("a", TensorType(I32, (4,)))], bad)
    with pytest.raises(VerifyError, match=r"attribute 'bits' is 9, out of range; expected an integer in 2\.\.8"):
        _graph("q.quantize", [("x", TensorType(F32, (4,)))], {"scale": 0.1, "bits": 9})
    with pytest.raises(VerifyError, match="zero_point=16 is outside"):
        _graph("q.requant", [("a", TensorType(I32, (4,)))], _requant_attrs([0.5], "float", zero_point=16, bits=4))
    with pytest.raises(VerifyError, match="fixed mode needs"):
        _graph("q.requant", [("a", TensorType(I32, (4,)))], {"scale": (0.5,)})
    with pytest.raises(VerifyError, match="attribute 'mode' is 'round'; expected one of 'fixed', 'float'"):
        _graph("q.requant", [("a", TensorType(I32, (4,)))], {"scale": (0.5,), "mode": "round"})
    with pytest.raises(VerifyError, match="operand 1 has element type u8, expected i8"):
        _graph("q.gemm", [("x", TensorType(U8, (2, 3))), np.ones((4, 3), np.uint8)], {"x_zero_point": 0})
    with pytest.raises(VerifyError, match="the bias has 5 entries but the result has 4 channels"):
        _graph("q.gemm", [("x", TensorType(U8, (2, 3))), np.ones((4, 3), np.int8), np.zeros(5, np.int32)],
               {"x_zero_point": 0})
    with pytest.raises(VerifyError, match=r"bias B i32\[2\] must be 1-D with 3 entries"):
        _graph("q.conv", [("x", xq), w, np.zeros(2, np.int32)], {"x_zero_point": 5})
    with pytest.raises(VerifyError, match="the bias has 3 entries but the result has 4 channels"):
        _graph("q.matmul", [("x", TensorType(U8, (2, 3))), np.ones((3, 4), np.int8), np.zeros(3, np.int32)],
               {"x_zero_point": 0})
    with pytest.raises(VerifyError, match="3 multipliers but axis 1"):
        _graph("q.requant", [("a", TensorType(I32, (1, 4)))], _requant_attrs([0.5, 0.25, 0.125], "fixed"))
    out = TensorType(U8, (4,), QuantParams((1.0,), (0,), 8))
    with pytest.raises(VerifyError, match="is not input scale / output scale"):
        _graph("q.requant", [("a", TensorType(I32, (4,), QuantParams((0.25,), (0,), 32)))],
               _requant_attrs([0.5], "fixed"), out=out)


def test_accumulator_type_carries_the_product_of_scales():
    xq = TensorType(U8, ("N", 2, 5, 5), QuantParams((0.1,), (5,), 8))
    g = Graph()
    x = g.add_input("x", xq)
    w = g.add_constant(np.ones((3, 2, 3, 3), np.int8), "w", TensorType(I8, (3, 2, 3, 3), QuantParams(
        (0.5, 0.25, 0.125), (0, 0, 0), 4, 0)))
    node = g.add_node("q.conv", [x, w], {"x_zero_point": 5, "pads": (1, 1, 1, 1)})
    t = node.output.type
    assert t.dtype is I32 and t.shape == ("N", 3, 5, 5)
    assert t.quant.axis == 1 and t.quant.scale == pytest.approx((0.05, 0.025, 0.0125))


# ---- moves the pass runs on uint8 activations --------------------------------------------------------
@pytest.mark.parametrize("op, extra, attrs", [
    ("MaxPool", [], {"kernel_shape": (2, 2), "pads": (1, 1, 1, 1), "strides": (2, 2)}),
    ("Reshape", [np.array([2, -1], np.int64)], {}),
    ("Flatten", [], {"axis": 1}),
    ("Transpose", [], {"perm": (0, 2, 3, 1)}),
    ("Squeeze", [np.array([0], np.int64)], {}),
    ("Unsqueeze", [np.array([0], np.int64)], {}),
    ("Slice", [np.array([1], np.int64), np.array([3], np.int64), np.array([2], np.int64)], {}),
    ("Gather", [np.array([2, 0], np.int64)], {"axis": 1}),
    ("Expand", [np.array([2, 3, 4, 4], np.int64)], {}),
    ("Identity", [], {}),
    ("Concat", [np.full((1, 3, 4, 4), 7, np.uint8)], {"axis": 1}),
    ("Clip", [np.uint8(3), np.uint8(250)], {}),
])
def test_moves_run_on_uint8_and_equal_the_float_result(op, extra, attrs):
    """What the pass does to a uint8 tensor equals doing it to the reals (moves commute with
    dequantization); MaxPool pads with 0 (uint8's minimum), never with a wrapped value."""
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (1, 3, 4, 4)).astype(np.uint8)
    if op == "MaxPool":
        x[..., 0, 0] = 0
    q = QuantParams((0.5,), (3,), 8)
    g = _graph(op, [("x", TensorType(U8, x.shape, q)), *extra], attrs)
    got = _one(g, x=x)
    assert got.dtype == np.uint8
    fextra = [e.astype(np.float32) if e.dtype == np.uint8 else e for e in extra]
    gf = _graph(op, [("x", TensorType(F32, x.shape)), *fextra], attrs)
    ref = _one(gf, x=x.astype(np.float32))
    np.testing.assert_array_equal(got.astype(np.float32), ref)
