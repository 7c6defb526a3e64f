"""Quantized ONNX operators ("QOperator" models) as imported, with onnxruntime's arithmetic.

Default domain: ``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``, ``MatMulInteger``,
``DynamicQuantizeLinear``. Domain ``com.microsoft`` (onnxruntime's contrib ops, which its
``quantize_static`` writes in QOperator format and into which it fuses QDQ patterns): ``QGemm``,
``QLinearAdd``, ``QLinearMul``, ``QLinearAveragePool``, ``QLinearGlobalAveragePool``,
``QLinearSigmoid``, ``QLinearLeakyRelu``, ``QLinearConcat``, ``QLinearSoftmax``. Every op takes
its scales and zero points as operands (uint8 or int8 codes, ``real = scale * (q - zero_point)``)
and is defined here by its reference implementation, so a QOperator model runs in the interpreter
as it is. The ``quantize`` pass does not run them: it rewrites them into ``q.*`` ops with the same
parameters (:mod:`cimc.quant.prequant`).

Semantics (``acc`` exact in integers; every float step float32 unless said):
- ``QLinearConv``/``QLinearMatMul``/``QGemm``: ``acc = sum (x - zx) * (w - zw) (+ B)``, then
  ``y = saturate(rint(acc * M[c]) + zy)``, ``M[c] = (sx * sw[c]) / sy`` (QGemm: ``alpha * sx *
  sw[c] / sy``; without ``y_scale`` QGemm gives the float ``acc * alpha * sx * sw[c]``). Conv pads
  hold ``zx`` (they contribute 0).
- ``ConvInteger``/``MatMulInteger``: the int32 ``acc`` itself.
- ``DynamicQuantizeLinear``: the ONNX formula (uint8, the range widened to include 0).
- ``QLinearAdd``: ``q.add``'s float formula (:mod:`cimc.ops.quantized`); ``QLinearMul``,
  ``QLinearAveragePool``, ``QLinearGlobalAveragePool``, ``QLinearSoftmax``: ``q.mul``,
  ``q.avg_pool``, ``q.softmax`` (:mod:`cimc.ops.qlinear`); ``QLinearSigmoid``/``QLinearLeakyRelu``:
  a table ``saturate(rint(f(sx * (i - zx)) / sy) + zy)`` over the 256 codes; ``QLinearConcat``:
  each input requantized by such a table (the identity ``f``) unless its parameters equal the
  result's, then concatenated.
int8 operands are handled as their uint8 shift by 128 where a kernel needs it. ``channels_last``
pools are not supported.
"""

from __future__ import annotations

import numpy as np

from cimc.errors import InputError, VerifyError
from cimc.ir.opdef import AttrSpec, InferContext, OpContext, OpView, define_op, lookup
from cimc.ir.types import DType, TensorType, static_dims
from cimc.ops._infer import broadcast_shapes, require
from cimc.ops.nn import (
    _CONV_ATTRS,
    _POOL_ATTRS,
    _conv_infer,
    _gemm_infer,
    _global_infer,
    _matmul_infer,
    _pool_infer,
    conv,
    exact_matmul,
    window_geometry,
)
from cimc.ops.qlinear import avg_pool_codes, mul_codes, softmax_codes
from cimc.ops.quantized import _add_values

__all__ = ["MS_OPS", "float_op", "lookup_table", "pool_mode", "requantize_float"]

MS_OPS = frozenset({"QGemm", "QLinearAdd", "QLinearMul", "QLinearAveragePool", "QLinearGlobalAveragePool",
                    "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat", "QLinearSoftmax"})
"""The ``com.microsoft`` ops defined here (the importer reads them from that domain)."""

_RANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


# ---- shared arithmetic -----------------------------------------------------------------------------
def _f32(v) -> np.ndarray:
    return np.asarray(v, np.float32)


def _zp(z) -> np.ndarray:
    return np.zeros((), np.int64) if z is None else np.asarray(z).astype(np.int64)


def _per_axis(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A scalar, or a 1-D per-channel vector shaped to broadcast along ``axis`` of an ``ndim`` tensor."""
    v = np.asarray(v)
    return v.reshape(()) if v.size == 1 else v.reshape([-1 if i == axis % ndim else 1 for i in range(ndim)])


def requantize_float(acc: np.ndarray, m: np.ndarray, zp: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``saturate(rint(float32(acc) * m) + zp)`` into ``dtype`` (uint8 or int8); ``m`` float32."""
    lo, hi = _RANGE[np.dtype(dtype)]
    v = np.rint(acc.astype(np.float32) * m).astype(np.int64) + zp
    return np.clip(v, lo, hi).astype(dtype)


def lookup_table(fn, sx, zx, sy, zy, in_dtype: np.dtype, out_dtype: np.dtype) -> np.ndarray:
    """onnxruntime's 256-entry table ``saturate(rint(fn(float32(sx * (q - zx))) / sy) + zy)``, indexed by
    the code's byte (an int8 code ``q`` at ``q & 255``)."""
    codes = np.arange(256).astype(np.uint8).view(in_dtype).astype(np.int64)
    y = fn(np.float32(sx) * (codes - int(zx)).astype(np.float32)).astype(np.float32)
    lo, hi = _RANGE[np.dtype(out_dtype)]
    return np.clip(np.rint(y / np.float32(sy)).astype(np.int64) + int(zy), lo, hi).astype(out_dtype)


def _out_dtype(ctx: InferContext, zp_index: int, what: str) -> DType:
    if not ctx.has(zp_index):
        return DType.u8
    t = require(ctx, zp_index)
    if t.dtype not in (DType.u8, DType.i8):
        raise VerifyError(f"node {ctx.node.name!r} ({ctx.node.op}): {what} has element type {t.dtype.value}, "
                          "expected u8 or i8")
    return t.dtype


def _as(ctx: InferContext, op: str, order: tuple[int | None, ...]) -> InferContext:
    ins = [None if i is None or i >= len(ctx.node.inputs) else ctx.node.inputs[i] for i in order]
    # shapes only: the float op's type rule sees float operands (its dtype checks are not the quantized op's)
    given = [None if i is None or i >= len(ctx.types) else ctx.types[i] for i in order]
    types = [None if t is None else TensorType(DType.f32, t.shape) for t in given]
    while ins and ins[-1] is None:
        ins.pop()
        types.pop()
    return InferContext(OpView(ctx.node, op, ins), types, ctx.attrs, 1)


def _shape(rule, ctx: InferContext, op: str, order: tuple[int | None, ...]):
    return rule(_as(ctx, op, order))[0].shape


# ---- QLinearConv / ConvInteger ----------------------------------------------------------------------
def _int_conv(ctx, x, w, zx, zw, b=None) -> np.ndarray:
    xi = x.astype(np.int64) - _zp(zx)
    wi = w.astype(np.int64) - _per_axis(_zp(zw), 0, w.ndim)
    out, pb, pe, _, strides, dils = window_geometry(x.shape[2:], w.shape[2:], ctx.attrs)
    return conv(xi, wi, None if b is None else b.astype(np.int64), strides=strides, dilations=dils, pads_begin=pb,
                pads_end=pe, out=out, group=ctx.attrs["group"], out_dtype=np.dtype(np.int64))


def _qlinear_conv_type(ctx: InferContext) -> list[TensorType]:
    return [TensorType(_out_dtype(ctx, 7, "y_zero_point"), _shape(_conv_infer, ctx, "Conv", (0, 3, 8)))]


@define_op("QLinearConv", inputs=(8, 9), infer=_qlinear_conv_type, attrs=_CONV_ATTRS)
def qlinear_conv(ctx, x, sx, zx, w, sw, zw, sy, zy, b=None):
    """Integer convolution of (x - zx) by (w - zw) plus B, requantized to y's scale and zero point."""
    acc = _int_conv(ctx, x, w, zx, zw, b)
    m = _per_axis((_f32(sx) * _f32(sw).reshape(-1)) / _f32(sy), 1, acc.ndim)
    return requantize_float(acc, m, _zp(zy), zy.dtype)


def _conv_integer_type(ctx: InferContext) -> list[TensorType]:
    return [TensorType(DType.i32, _shape(_conv_infer, ctx, "Conv", (0, 1)))]


@define_op("ConvInteger", inputs=(2, 4), infer=_conv_integer_type, attrs=_CONV_ATTRS)
def conv_integer(ctx, x, w, zx=None, zw=None):
    """int32 convolution of (x - x_zero_point) by (w - w_zero_point)."""
    return _int_conv(ctx, x, w, zx, zw).astype(np.int32)


# ---- QLinearMatMul / MatMulInteger / QGemm ------------------------------------------------------------
def _int_matmul(a, b, za, zb) -> np.ndarray:
    """``(a - za) @ (b - zb)`` exactly: ``za`` one or one per row of ``a``, ``zb`` one or one per column of ``b``."""
    za, zb = _zp(za), _zp(zb)
    ai = a.astype(np.int64) - (za.reshape(-1, 1) if za.size > 1 else za.reshape(()))
    bi = b.astype(np.int64) - (zb.reshape(-1) if zb.size > 1 else zb.reshape(()))
    return exact_matmul(ai, bi, np.int64)


def _qlinear_matmul_type(ctx: InferContext) -> list[TensorType]:
    return [TensorType(_out_dtype(ctx, 7, "y_zero_point"), _shape(_matmul_infer, ctx, "MatMul", (0, 3)))]


@define_op("QLinearMatMul", inputs=8, infer=_qlinear_matmul_type)
def qlinear_matmul(ctx, a, sa, za, b, sb, zb, sy, zy):
    """Integer matmul of (a - za) by (b - zb), requantized to y's scale and zero point."""
    acc = _int_matmul(a, b, za, zb)
    return requantize_float(acc, (_f32(sa).reshape(-1, 1) if _f32(sa).size > 1 else _f32(sa)) *
                            _f32(sb).reshape(-1) / _f32(sy), _zp(zy), zy.dtype)


def _matmul_integer_type(ctx: InferContext) -> list[TensorType]:
    return [TensorType(DType.i32, _shape(_matmul_infer, ctx, "MatMul", (0, 1)))]


@define_op("MatMulInteger", inputs=(2, 4), infer=_matmul_integer_type)
def matmul_integer(ctx, a, b, za=None, zb=None):
    """int32 matmul of (a - a_zero_point) by (b - b_zero_point)."""
    return _int_matmul(a, b, za, zb).astype(np.int32)


def _qgemm_type(ctx: InferContext) -> list[TensorType]:
    shape = _shape(_gemm_infer, ctx, "Gemm", (0, 3))
    return [TensorType(_out_dtype(ctx, 8, "y_zero_point") if ctx.has(7) else DType.f32, shape)]


@define_op("QGemm", inputs=(6, 9), infer=_qgemm_type, attrs={
    "alpha": AttrSpec("float", 1.0, "scale of A'B'"),
    "transA": AttrSpec("int", 0, "use A transposed"),
    "transB": AttrSpec("int", 0, "use B transposed")})
def qgemm(ctx, a, sa, za, b, sb, zb, c=None, sy=None, zy=None):
    """onnxruntime's QGemm: integer A'B' plus int32 C, requantized (or scaled to float without y_scale)."""
    a = a.T if ctx.attrs["transA"] else a
    b = b.T if ctx.attrs["transB"] else b
    acc = exact_matmul(a.astype(np.int64) - _zp(za), b.astype(np.int64) - _zp(zb).reshape(-1), np.int64)
    if c is not None:
        acc = acc + c.astype(np.int64)
    m = np.float32(ctx.attrs["alpha"]) * _f32(sa) * _f32(sb).reshape(-1)
    if sy is None:
        return acc.astype(np.float32) * m
    return requantize_float(acc, m / _f32(sy), _zp(zy), np.dtype(np.uint8) if zy is None else zy.dtype)


# ---- DynamicQuantizeLinear -------------------------------------------------------------------------
def _dql_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    return [TensorType(DType.u8, x.shape), TensorType(DType.f32, ()), TensorType(DType.u8, ())]


@define_op("DynamicQuantizeLinear", outputs=3, infer=_dql_type)
def dynamic_quantize_linear(ctx, x):
    """uint8 quantization with the scale and zero point of x's range (widened to include 0), in float32."""
    x = x.astype(np.float32)
    lo = np.minimum(np.float32(0), x.min()) if x.size else np.float32(0)
    hi = np.maximum(np.float32(0), x.max()) if x.size else np.float32(0)
    scale = np.float32((hi - lo) / np.float32(255))
    if scale == 0:
        return np.zeros(x.shape, np.uint8), scale, np.uint8(0)
    zp = np.clip(np.rint(np.float32(0) - lo / scale), 0, 255)
    return np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8), scale, np.uint8(zp)


# ---- elementwise, pools, softmax, concat (com.microsoft) ---------------------------------------------
def _unary_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    return [TensorType(x.dtype, x.shape)]


def _codes(x: np.ndarray) -> tuple[np.ndarray, int]:
    """uint8 codes of ``x`` and the shift applied (128 for int8)."""
    return (x.view(np.uint8) ^ np.uint8(128), 128) if x.dtype == np.int8 else (x, 0)


def _back(v: np.ndarray, like: np.dtype) -> np.ndarray:
    """Clamp int64 codes of the uint8 domain and return them in ``like``'s type (int8: shifted back)."""
    u = np.clip(v, 0, 255).astype(np.uint8)
    return (u ^ np.uint8(128)).view(np.int8) if np.dtype(like) == np.int8 else u


def _scalar(v, default=0):
    return default if v is None else np.asarray(v).reshape(-1)[0].item()


@define_op("QLinearAdd", inputs=(7, 8), infer=lambda ctx: [TensorType(
    require(ctx, 0).dtype, broadcast_shapes(require(ctx, 0).shape, require(ctx, 3).shape))])
def qlinear_add(ctx, a, sa, za, b, sb, zb, sc, zc=None):
    """Sum of two quantized tensors requantized to C's parameters (q.add's float formula)."""
    (ua, s), (ub, _) = _codes(a), _codes(b)
    at = {"a_zero_point": _scalar(za) + s, "b_zero_point": _scalar(zb) + s, "zero_point": _scalar(zc) + s,
          "mode": "float", "bits": 8, "a_scale": float(_f32(sa) / _f32(sc)), "b_scale": float(_f32(sb) / _f32(sc))}
    return _back(_add_values(at, ua, ub).astype(np.int64), a.dtype)


@define_op("QLinearMul", inputs=(7, 8), infer=lambda ctx: [TensorType(
    require(ctx, 0).dtype, broadcast_shapes(require(ctx, 0).shape, require(ctx, 3).shape))])
def qlinear_mul(ctx, a, sa, za, b, sb, zb, sc, zc=None):
    """Product of two quantized tensors requantized to C's parameters (onnxruntime's QLinearMul)."""
    (ua, s), (ub, _) = _codes(a), _codes(b)
    at = {"a_zero_point": _scalar(za) + s, "b_zero_point": _scalar(zb) + s, "zero_point": _scalar(zc) + s,
          "mode": "float", "mul_scale": float(_f32(sa) * _f32(sb) / _f32(sc)), "offset": s}
    return _back(mul_codes(ua, ub, at), a.dtype)


def _channels_first(ctx) -> None:
    if ctx.attrs.get("channels_last", 0):
        raise InputError(f"node {ctx.node_name!r}: channels_last pooling is not supported")


def _pool_codes(ctx, x, sx, zx, sy, zy, kernel, mode: str) -> np.ndarray:
    u, s = _codes(x)
    at = {**ctx.attrs, "kernel_shape": kernel, "x_scale": float(_f32(sx)), "x_zero_point": _scalar(zx) + s,
          "scale": float(_f32(sy)), "zero_point": _scalar(zy) + s, "mode": mode, "offset": s}
    at.setdefault("count_include_pad", 0)
    return _back(avg_pool_codes(u, at, ctx.node_name), x.dtype)


def pool_mode(spatial, attrs) -> str:
    """``q.avg_pool``'s mode that reproduces onnxruntime's ``QLinearAveragePool``: its integer path when
    the window is the whole image with no pads, else its float mean."""
    kernel = list(attrs.get("kernel_shape") or ())
    whole = list(spatial) == kernel and not any(attrs.get("pads") or ()) and attrs.get("auto_pad", "NOTSET") in (
        "NOTSET", "VALID")
    return "float" if whole else "onnxruntime"


@define_op("QLinearAveragePool", inputs=(4, 5), infer=lambda ctx: [TensorType(
    require(ctx, 0).dtype, _pool_infer(ctx)[0].shape)], attrs={
    **_POOL_ATTRS, "count_include_pad": AttrSpec("int", 0, "1: explicit pad cells count in the divisor"),
    "channels_last": AttrSpec("int", 0, "1: NHWC layout (not supported)")})
def qlinear_average_pool(ctx, x, sx, zx, sy, zy=None):
    """onnxruntime's QLinearAveragePool (q.avg_pool in the mode it uses for this window)."""
    _channels_first(ctx)
    return _pool_codes(ctx, x, sx, zx, sy, zy, list(ctx.attrs["kernel_shape"]), pool_mode(x.shape[2:], ctx.attrs))


@define_op("QLinearGlobalAveragePool", inputs=(4, 5), infer=lambda ctx: [TensorType(
    require(ctx, 0).dtype, _global_infer(ctx)[0].shape)], attrs={
    "channels_last": AttrSpec("int", 0, "1: NHWC layout (not supported)")})
def qlinear_global_average_pool(ctx, x, sx, zx, sy, zy=None):
    """onnxruntime's QLinearGlobalAveragePool: the integer sum over the image, requantized."""
    _channels_first(ctx)
    return _pool_codes(ctx, x, sx, zx, sy, zy, list(x.shape[2:]), "float")


def _table_op(x, sx, zx, sy, zy, fn) -> np.ndarray:
    table = lookup_table(fn, _f32(sx), _scalar(zx), _f32(sy), _scalar(zy), x.dtype, x.dtype)
    return table[x.view(np.uint8)]


def float_op(op: str, attrs, *operands: np.ndarray | None) -> np.ndarray:
    """The result of cimc's op ``op`` (its reference implementation) on ``operands``."""
    opdef = lookup(op)
    if opdef is None:
        raise VerifyError(f"op {op!r} is not defined")
    return np.asarray(opdef.impl(OpContext(opdef.attr_values(attrs)), *operands))


@define_op("QLinearSigmoid", inputs=(4, 5), infer=_unary_type)
def qlinear_sigmoid(ctx, x, sx, zx, sy, zy=None):
    """Sigmoid of a quantized tensor by onnxruntime's 256-entry table."""
    return _table_op(x, sx, zx, sy, zy, lambda v: float_op("Sigmoid", {}, v))


@define_op("QLinearLeakyRelu", inputs=(4, 5), infer=_unary_type, attrs={
    "alpha": AttrSpec("float", 0.01, "slope for x < 0")})
def qlinear_leaky_relu(ctx, x, sx, zx, sy, zy=None):
    """LeakyRelu of a quantized tensor by onnxruntime's 256-entry table."""
    return _table_op(x, sx, zx, sy, zy, lambda v: float_op("LeakyRelu", {"alpha": ctx.attrs["alpha"]}, v))


@define_op("QLinearSoftmax", inputs=(4, 5), infer=_unary_type, attrs={
    "axis": AttrSpec("int", -1, "the axis softmax normalizes along"),
    "opset": AttrSpec("int", 13, "opset of the Softmax it replaces (before 13: over all dims from axis)")})
def qlinear_softmax(ctx, x, sx, zx, sy, zy=None):
    """onnxruntime's table-driven QLinearSoftmax (q.softmax)."""
    u, s = _codes(x)
    at = {"axis": ctx.attrs["axis"], "flatten": int(ctx.attrs["opset"] < 13), "x_scale": float(_f32(sx)),
          "scale": float(_f32(sy)), "zero_point": _scalar(zy) + s}
    return _back(softmax_codes(u, at), x.dtype)


def _concat_type(ctx: InferContext) -> list[TensorType]:
    ins = [require(ctx, i) for i in range(2, len(ctx.types), 3)]
    axis, rank = ctx.attrs["axis"], ins[0].rank
    shapes = [t.shape for t in ins if t.shape is not None]
    if rank is None or len(shapes) != len(ins):
        return [TensorType(ins[0].dtype, None)]
    axis = axis % rank
    dims = static_dims([s[axis] for s in shapes])
    total = sum(dims) if dims is not None else None
    return [TensorType(_out_dtype(ctx, 1, "Y_zero_point"), (*shapes[0][:axis], total, *shapes[0][axis + 1:]))]


@define_op("QLinearConcat", inputs=(5, None), infer=_concat_type, attrs={
    "axis": AttrSpec("int", 0, "the axis to concatenate along")})
def qlinear_concat(ctx, sy, zy, *tuples):
    """Concatenation of quantized tensors, each requantized to Y's parameters by a table where they differ."""
    if len(tuples) % 3:
        raise InputError(f"node {ctx.node_name!r} (QLinearConcat): inputs must be (tensor, scale, zero point) triples")
    parts = []
    for x, sx, zx in zip(tuples[0::3], tuples[1::3], tuples[2::3], strict=True):
        same = _f32(sx) == _f32(sy) and _scalar(zx) == _scalar(zy)
        parts.append(x if same else _table_op(x, sx, zx, sy, zy, lambda v: v))
    return np.concatenate(parts, axis=ctx.attrs["axis"])

