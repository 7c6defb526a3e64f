"""Integer vector-unit ops for models that arrive quantized: table lookup, product, average pool, softmax.

They complete the ``q.*`` family (:mod:`cimc.ops.quantized`) with the integer kernels that
onnxruntime runs for a quantized model's non-matrix layers (its ``QLinear*`` kernels, also what it
fuses ``DequantizeLinear -> op -> QuantizeLinear`` into), so that a pre-quantized model compiles to
integer ops with the model's own scales and agrees with onnxruntime bit for bit where onnxruntime's
arithmetic does not depend on the CPU. Conventions as in :mod:`cimc.ops.quantized`: activations are
uint8 with ``real = scale * (q - zero_point)``; a signed activation of the source model is held
shifted (by 128 for int8: the same real values), and ``offset`` (that shift) tells an op whose
source kernel adds the signed zero point in float before rounding to do the same
(``v = rint(t + (zero_point - offset)) + offset``).

``q.lut(x: u8) -> u8``  attrs ``table`` (256 ints), ``scale``, ``zero_point``, ``bits``:
    ``y = table[x]``. Any function of one activation: onnxruntime's ``QLinearSigmoid`` and
    ``QLinearLeakyRelu`` build exactly such a table (``quantize(f(dequantize(i)))`` for the 256
    codes), ``QLinearConcat`` one per input whose parameters differ from the result's.
``q.mul(a: u8, b: u8) -> u8`` (broadcasting)  attrs ``mode``, ``scale`` (``M = sa*sb/sc`` as float32),
    ``a_zero_point``, ``b_zero_point``, ``zero_point``, ``bits``, ``lo``/``hi``, ``offset``, and in
    fixed mode ``multiplier``/``shift`` (``quantize_multiplier(M)``): ``p = (a - za) * (b - zb)``
    (exact), then float: ``v = rint(float32(float32(p) * M) + zp)`` (onnxruntime's ``QLinearMul``:
    the zero point is added before rounding); fixed: ``v = rescale(p) + zp``; ``q = clip(v, lo, hi)``.
``q.avg_pool(x: u8) -> u8``  attrs of ``AveragePool`` (no dilations) plus ``x_scale``,
    ``x_zero_point``, ``mode``, ``scale``, ``zero_point``, ``bits``, ``offset``:
    ``fixed``/``float`` (the integer path): ``s = sum over the window of (x - x_zero_point)`` (pad
    cells add 0) and ``n`` the divisor (ONNX ``AveragePool``'s: pads count with
    ``count_include_pad``, the ``ceil_mode`` overhang never); float: ``v = rint(float32(s) *
    float32(x_scale / float32(scale * n)))`` (onnxruntime's ``QLinearGlobalAveragePool``, whose
    window is the whole image, and its ``QLinearAveragePool`` when the window covers the image);
    fixed: ``v = rescale(s)`` by the fixed-point form of the same multiplier; then ``+ zero_point``.
    ``onnxruntime``: onnxruntime's ``QLinearAveragePool`` for smaller windows, which works in float:
    ``d = float32(x_scale * (x - x_zero_point))``, ``t`` the float32 sum of the window's ``d`` in
    row-major order from 0, divided by ``n`` (the kernel size with ``count_include_pad``, else the
    taps inside the input), and ``v = rint(t / scale + zp)``. The rounding of that float mean is why
    an integer window sum can differ from onnxruntime by one step: the two are different functions.
    Every mode clamps to ``[0, 2**bits - 1]``.
``q.softmax(x: u8) -> u8``  attrs ``axis``, ``flatten`` (1: softmax over all dims from ``axis``,
    the meaning before opset 13), ``x_scale``, ``scale``, ``zero_point``, ``bits``: onnxruntime's
    ``QLinearSoftmax``: for a row of ``D`` codes, ``e = E[255 - max(row) + x]`` with the table
    ``E[i] = float32(exp((i - 255 + c) * x_scale))``, ``c = max(0, ln(FLT_MAX / D) - 5) / x_scale``;
    ``S`` the float32 sum of the row's ``e`` in order; ``y = min(rint(e * floor(1 / scale) / S) +
    zero_point, 2**bits - 1)`` in float32 (where ``e * floor(1 / scale)`` overflows, with ``D = 1``,
    the quotient is taken exactly, as onnxruntime's kernel gives it).
"""

from __future__ import annotations

import math

import numpy as np

from cimc.ir.core import Node
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, define_op
from cimc.ir.types import DType, QuantParams, TensorType
from cimc.ops._infer import broadcast_shapes, normalize_axis
from cimc.ops.nn import _POOL_ATTRS, _pad, _pool_infer, _pool_setup, _window_counts
from cimc.ops.quantized import (
    _ACT_ATTRS,
    _bounds,
    _check_act,
    _check_operand_zp,
    _check_out_quant,
    _dtype,
    _verify_mode,
    _where,
)
from cimc.quant.fixedpoint import quantize_multiplier, quantize_multipliers, rescale

__all__ = ["POOL_MODES", "avg_pool_codes", "mul_codes", "softmax_codes"]

POOL_MODES = ("fixed", "float", "onnxruntime")


def _result(ctx: InferContext, shape) -> list[TensorType]:
    a = ctx.attrs
    return [TensorType(DType.u8, shape, QuantParams((float(a["scale"]),), (int(a["zero_point"]),), a["bits"]))]


def _check_out(node: Node) -> str | None:
    a = node.attrs
    if not a.get("scale", 1.0) > 0:
        return f"scale={a.get('scale')} must be positive"
    return _check_act(a) or _check_out_quant(node, a.get("zero_point", 0), a.get("bits", 8), a.get("scale"))


def _shifted(a, v: np.ndarray) -> np.ndarray:
    """``v + zp`` rounded the way a kernel that adds the zero point in float32 rounds it (see module doc)."""
    s = a.get("offset", 0)
    return np.rint(v + np.float32(a["zero_point"] - s)) + s


_OUT = {"scale": AttrSpec("float", REQUIRED, "real value of one step of the result"), **_ACT_ATTRS}
_OFFSET = AttrSpec("int", 0, "shift of the codes from the source model's signed ones (128 for int8); the zero "
                             "point added in float before rounding is zero_point - offset")


# ---- q.lut ----------------------------------------------------------------------------------------
def _lut_type(ctx: InferContext) -> list[TensorType]:
    return _result(ctx, _dtype(ctx, 0, DType.u8).shape)


def _verify_lut(node: Node) -> str | None:
    table = node.attrs.get("table", ())
    if len(table) != 256:
        return f"table has {len(table)} entries, expected 256 (one per uint8 code)"
    qmax = (1 << node.attrs.get("bits", 8)) - 1
    if min(table) < 0 or max(table) > qmax:
        return f"table entries must be in [0, {qmax}], found [{min(table)}, {max(table)}]"
    return _check_out(node)


@define_op("q.lut", infer=_lut_type, verify=_verify_lut, attrs={
    "table": AttrSpec("ints", REQUIRED, "the result for each of the 256 uint8 codes"), **_OUT})
def lut(ctx, x):
    """table[x]: any function of one uint8 activation, as a 256-entry lookup."""
    return np.asarray(ctx.attrs["table"], np.uint8).take(x)


# ---- q.mul ----------------------------------------------------------------------------------------
def _mul_type(ctx: InferContext) -> list[TensorType]:
    a, b = _dtype(ctx, 0, DType.u8), _dtype(ctx, 1, DType.u8)
    return _result(ctx, broadcast_shapes(a.shape, b.shape))


def _verify_mul(node: Node) -> str | None:
    a = node.attrs
    why = (_check_out(node) or _check_operand_zp(a, "a_zero_point") or _check_operand_zp(a, "b_zero_point")
           or _verify_mode(a, ("multiplier", "shift")))
    if why is None and a.get("mode") == "fixed" and quantize_multiplier(a["mul_scale"]) != (a["multiplier"],
                                                                                           a["shift"]):
        why = f"fixed-point multiplier {a['multiplier']} >> {a['shift']} is not the form of mul_scale={a['mul_scale']}"
    qa, qb, qo = (node.operand(0).type.quant, node.operand(1).type.quant,
                  node.outputs[0].type.quant if node.outputs else None)
    if why is None and qa is not None and qb is not None and qo is not None:
        want = qa.scale[0] * qb.scale[0] / qo.scale[0]
        if abs(want - a["mul_scale"]) > 1e-5 * want or qa.zero_point != (a["a_zero_point"],) \
                or qb.zero_point != (a["b_zero_point"],):
            why = f"mul_scale={a['mul_scale']} and the zero points disagree with the types ({qa}, {qb} -> {qo})"
    return why


def mul_codes(a: np.ndarray, b: np.ndarray, at) -> np.ndarray:
    """The ``q.mul`` formula (module doc) on integer codes, with attributes ``at``; int64 before the clamp."""
    p = (a.astype(np.int64) - at["a_zero_point"]) * (b.astype(np.int64) - at["b_zero_point"])
    if at["mode"] == "fixed":
        return rescale(p, at["multiplier"], at["shift"]) + at["zero_point"]
    return _shifted(at, p.astype(np.float32) * np.float32(at["mul_scale"])).astype(np.int64)


@define_op("q.mul", inputs=2, infer=_mul_type, verify=_verify_mul, attrs={
    "mode": AttrSpec("str", "float", "float (onnxruntime's QLinearMul) or fixed (integer multiplier and shift)"),
    "mul_scale": AttrSpec("float", REQUIRED, "real multiplier sa*sb/s_out (a float32 value)"),
    "a_zero_point": AttrSpec("int", 0, "zero point of a"),
    "b_zero_point": AttrSpec("int", 0, "zero point of b"),
    "multiplier": AttrSpec("int", None, "fixed mode: M0 of mul_scale"),
    "shift": AttrSpec("int", None, "fixed mode: right shift of mul_scale"),
    "offset": _OFFSET, **_OUT})
def qmul(ctx, a, b):
    """Elementwise product of two uint8 activations, requantized to the result's scale."""
    lo, hi = _bounds(ctx.attrs)
    return np.clip(mul_codes(a, b, ctx.attrs), lo, hi).astype(np.uint8)


# ---- q.avg_pool -----------------------------------------------------------------------------------
def _avg_pool_type(ctx: InferContext) -> list[TensorType]:
    _dtype(ctx, 0, DType.u8)
    return _result(ctx, _pool_infer(ctx)[0].shape)


def _verify_avg_pool(node: Node) -> str | None:
    a = node.attrs
    if a.get("mode", "float") not in POOL_MODES:
        return f"mode={a.get('mode')!r} is not one of {', '.join(POOL_MODES)}"
    if any(d != 1 for d in a.get("dilations") or ()):
        return f"dilations {list(a['dilations'])} are not supported (only 1)"
    if not a.get("x_scale", 1.0) > 0:
        return f"x_scale={a.get('x_scale')} must be positive"
    x = node.inputs[0] if node.inputs else None
    q = x.type.quant if x is not None else None
    if q is not None and (q.zero_point != (a.get("x_zero_point", 0),) or abs(q.scale[0] - a["x_scale"])
                          > 1e-5 * q.scale[0]):
        return f"x_scale={a['x_scale']}, x_zero_point={a.get('x_zero_point', 0)} disagree with the input type {q}"
    return _check_out(node) or _check_operand_zp(a, "x_zero_point")


def avg_pool_codes(x: np.ndarray, at, node_name: str = "") -> np.ndarray:
    """The ``q.avg_pool`` formula (module doc) on uint8 codes ``x`` with attributes ``at`` (int64 result
    before the clamp)."""
    ctx = _PoolCtx(at, node_name)
    kernel, out, pb, pe, over, strides, _ = _pool_setup(ctx, x)
    if at["mode"] == "onnxruntime":
        return _ort_avg_pool(x, at, kernel, out, pb, strides)
    xi = _pad(x.astype(np.int64) - at["x_zero_point"], pb, [e + o for e, o in zip(pe, over, strict=True)])
    s = np.zeros((*x.shape[:2], *out), np.int64)
    for kpos in np.ndindex(*kernel):
        s += xi[(slice(None), slice(None), *(slice(k, k + (o - 1) * st + 1, st)
                                             for k, o, st in zip(kpos, out, strides, strict=True)))]
    counts = np.ones((), np.int64)
    for dim, size in enumerate(x.shape[2:]):
        lo, hi = (0, pb[dim] + size + pe[dim]) if at["count_include_pad"] else (pb[dim], pb[dim] + size)
        counts = np.multiply.outer(counts, _window_counts(size, kernel[dim], strides[dim], 1, out[dim], lo, hi))
    m = np.float32(at["x_scale"]) / (np.float32(at["scale"]) * counts.astype(np.float32))  # float32, per position
    if at["mode"] == "fixed":
        m0, shift = quantize_multipliers(m.reshape(-1).astype(np.float64))
        return rescale(s, np.asarray(m0, np.int64).reshape(m.shape), np.asarray(shift, np.int64).reshape(m.shape)) \
            + at["zero_point"]
    return np.rint(s.astype(np.float32) * m).astype(np.int64) + at["zero_point"]


def _ort_avg_pool(x: np.ndarray, at, kernel, out, pb, strides) -> np.ndarray:
    """onnxruntime's float ``QLinearAveragePool`` (module doc), bit for bit."""
    d = np.float32(at["x_scale"]) * (x.astype(np.int64) - at["x_zero_point"]).astype(np.float32)
    spatial = x.shape[2:]
    # windows are clipped to the input (pads and overhang read nothing): zero-padded cells add +0.0 exactly
    ends = [max(size, (o - 1) * s + k - b) for size, o, s, k, b in zip(spatial, out, strides, kernel, pb, strict=True)]
    dp = _pad(d, pb, [e - size for e, size in zip(ends, spatial, strict=True)])
    t = np.zeros((*x.shape[:2], *out), np.float32)
    for kpos in np.ndindex(*kernel):  # row-major window order, one float32 add per tap
        t += dp[(slice(None), slice(None), *(slice(k, k + (o - 1) * st + 1, st)
                                             for k, o, st in zip(kpos, out, strides, strict=True)))]
    n: np.ndarray | np.float32
    if at["count_include_pad"]:
        n = np.float32(math.prod(kernel))
    else:
        n = np.ones((), np.int64)
        for dim, size in enumerate(spatial):
            n = np.multiply.outer(n, _window_counts(size, kernel[dim], strides[dim], 1, out[dim], pb[dim],
                                                    pb[dim] + size))
        n = n.astype(np.float32)
    return _shifted(at, (t / n) / np.float32(at["scale"])).astype(np.int64)


class _PoolCtx:
    """What ``cimc.ops.nn``'s pooling geometry reads from an op context."""

    def __init__(self, attrs, node_name: str) -> None:
        self.attrs, self.node_name = attrs, node_name


@define_op("q.avg_pool", infer=_avg_pool_type, verify=_verify_avg_pool, attrs={
    **_POOL_ATTRS,
    "count_include_pad": AttrSpec("int", 0, "1: explicit pad cells count in the divisor"),
    "x_scale": AttrSpec("float", REQUIRED, "scale of the input"),
    "x_zero_point": AttrSpec("int", 0, "zero point of the input"),
    "mode": AttrSpec("str", "float", "fixed or float (integer window sums), or onnxruntime (its float mean)"),
    "offset": _OFFSET, **_OUT})
def qavg_pool(ctx, x):
    """Average pooling of a uint8 activation to the result's scale."""
    lo, hi = _bounds(ctx.attrs)
    return np.clip(avg_pool_codes(x, ctx.attrs, ctx.node_name), lo, hi).astype(np.uint8)


# ---- q.softmax ------------------------------------------------------------------------------------
def _softmax_type(ctx: InferContext) -> list[TensorType]:
    x = _dtype(ctx, 0, DType.u8)
    if x.shape is not None:
        normalize_axis(ctx.attrs["axis"], max(len(x.shape), 1), f"{_where(ctx)}: axis")
    return _result(ctx, x.shape)


def _verify_softmax(node: Node) -> str | None:
    return None if node.attrs.get("x_scale", 1.0) > 0 else f"x_scale={node.attrs.get('x_scale')} must be positive"


def softmax_codes(x: np.ndarray, at) -> np.ndarray:
    """The ``q.softmax`` formula (module doc) on uint8 codes ``x`` (int64 result before the clamp)."""
    axis = normalize_axis(at["axis"], x.ndim, "q.softmax axis")
    rows = x.reshape(math.prod(x.shape[:axis]), -1) if at["flatten"] else np.moveaxis(x, axis, -1)
    d = rows.shape[-1]
    if d == 0:
        return x.astype(np.int64)
    sx = float(np.float32(at["x_scale"]))
    c = max(0.0, math.log(float(np.float32(np.finfo(np.float32).max) / np.float32(d))) - 5.0) / sx
    table = np.exp((np.arange(256, dtype=np.float64) - 255 + c) * sx).astype(np.float32)
    e = table.take(255 - rows.max(axis=-1, keepdims=True).astype(np.int64) + rows)
    total = np.zeros(e.shape[:-1], np.float32)
    for j in range(d):  # the row's sum in order, one float32 add per element
        total += e[..., j]
    big = np.float32(math.floor(np.float32(1.0) / np.float32(at["scale"])))
    with np.errstate(over="ignore"):
        y = e * big / total[..., None]
    if not np.isfinite(y).all():  # e * big overflows float32 (D = 1): onnxruntime's kernel gives the true quotient
        wide = e.astype(np.float64) * float(big) / total[..., None].astype(np.float64)
        y = np.where(np.isfinite(y), y, wide)
    y = np.rint(y).astype(np.int64) + at["zero_point"]
    return y.reshape(x.shape) if at["flatten"] else np.moveaxis(y, -1, axis)


@define_op("q.softmax", infer=_softmax_type, verify=_verify_softmax, attrs={
    "axis": AttrSpec("int", -1, "the axis softmax normalizes along"),
    "flatten": AttrSpec("int", 0, "1: normalize over all dims from axis (Softmax before opset 13)"),
    "x_scale": AttrSpec("float", REQUIRED, "scale of the input (the exponent table's step)"), **_OUT})
def qsoftmax(ctx, x):
    """onnxruntime's table-driven softmax of a uint8 activation."""
    lo, hi = _bounds(ctx.attrs)
    return np.clip(softmax_codes(x, ctx.attrs), lo, hi).astype(np.uint8)
