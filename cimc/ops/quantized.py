"""The ``q.*`` ops: integer inference as the ``quantize`` pass emits it (exact integer semantics).

Conventions. An activation is unsigned, ``bits`` (2..8) significant bits in a uint8 array,
per tensor: ``real = scale * (q - zero_point)``, ``q`` in ``[0, 2**bits - 1]``. A weight is
signed, symmetric, narrow range ``[-(2**(b-1) - 1), 2**(b-1) - 1]`` in an int8 constant, zero
point 0, one scale per output channel (or one per tensor). An accumulator is int32 with
``real = scale_x * scale_w[c] * acc`` (zero point 0). Every attribute an implementation needs is
on the node; the values also carry their real-number meaning in their type (``TensorType.quant``),
and each op's verify hook checks that attributes and operand/result types agree. As the
``quantize`` pass emits them:

- uint8 activation: ``QuantParams((s,), (z,), bits)``;
- int8 weight constant: ``QuantParams(sw, (0,)*C, wbits, axis)``, axis 0 for ``q.conv``/``q.gemm``
  (``[M, C/G, *K]``, ``[N, K]``), 1 for ``q.matmul`` (``[K, N]``), ``None`` if per tensor;
- int32 accumulator: ``QuantParams(sx*sw, (0,)*C, 32, channel axis)`` (1 for conv and gemm,
  the last axis for matmul); the int32 bias constant has the same scales on axis 0, but its
  values include the zero-point term: the float bias is ``(bias[c] + zx * sum_k w[c,k]) * sx*sw[c]``.

A QDQ export can therefore write ``q.conv`` as ``Conv(DequantizeLinear(x), DequantizeLinear(w),
float bias)`` (and ``q.gemm``/``q.matmul`` likewise), ``q.requant`` as ``DequantizeLinear`` of the
accumulator then ``QuantizeLinear`` with the result type's parameters, followed by a clamp when
``lo``/``hi`` are set.

``q.quantize(x: f32) -> u8``  attrs ``scale`` (float), ``zero_point``, ``bits``:
    ``q = clip(rint(float32(x) / float32(scale)) + zero_point, 0, 2**bits - 1)``; ``rint`` is
    round half to even (onnxruntime's QuantizeLinear), the division is float32; NaN gives 0.
``q.dequantize(q: any int) -> f32``  attrs ``scale`` (floats), ``zero_point`` (ints), ``axis``:
    ``y = float32(int64(q) - zero_point[c]) * float32(scale[c])``, one entry (per tensor) or one
    per index of ``axis``.
``q.conv(x: u8, w: i8, bias: i32?) -> i32``  attrs of ``Conv`` plus ``x_zero_point``:
    ``acc[n,m,o] = bias[m] + sum_{c,k} w[m,c,k] * xp[n, g*C/G + c, o*stride + k*dilation - pad]``
    where ``xp`` is ``x`` padded with ``x_zero_point``. The pass stores
    ``bias[m] = round(b[m] / (sx*sw[m])) - x_zero_point * sum_{c,k} w[m,c,k]``, so
    ``acc = round(b/(sx*sw)) + sum w * (x - zx)`` exactly, pad cells contributing 0: the op is a
    plain integer MVM plus bias, the zero-point term precomputed into the bias.
``q.conv_transpose(x: u8, w: i8 [C, M/G, *K], bias: i32 [M]?) -> i32``  attrs of ``ConvTranspose``
    plus ``x_zero_point``: ``acc = bias + ConvTranspose(x - x_zero_point, w)``, exact (int64
    values through the float64 ConvTranspose, exact below 2**53), wrapped to int32. Unlike
    ``q.conv`` the zero-point term is NOT in the bias: an output cell receives a number of
    contributions that depends on its position (fewer at the borders, and with strides), so
    ``zx * sum(w)`` is not a per-channel constant; ``bias[m] = round(b[m] / (sx*sw[m]))``. The
    weight is per output channel ``m = g*M/G + j`` (``w[g*C/G:(g+1)*C/G, j]``): its type has
    ``M`` scales on axis 1 (for ``G > 1`` that is more than ``w.shape[1]``, in group-major order).
``q.gemm(x: u8 [M,K], w: i8 [N,K], bias: i32 [N]?) -> i32 [M,N]``: ``acc = x @ w.T + bias``.
``q.matmul(x: u8 [...,K], w: i8 [K,N], bias: i32 [N]?) -> i32 [...,N]``: ``acc = x @ w + bias``.
    Both carry ``x_zero_point`` (already folded into ``bias`` as for ``q.conv``; kept so the
    node says what it computes). Accumulation is exact (float BLAS within 2**24 / 2**53, else
    int64); results wrap to int32 like C, which needs ``K > 66000`` at 8 bits.
``q.act_matmul(a: u8 [..., M, K], b: u8 [..., K, N]) -> i32 [..., M, N]``  attrs ``a_zero_point``,
    ``b_zero_point``: ``acc = (a - a_zero_point) @ (b - b_zero_point)`` exactly (leading dims
    broadcast as ``MatMul``'s), wrapped to int32; the accumulator's scale is ``sa * sb``. The matmul of
    two activations (attention's ``Q K^T`` and ``P V``): no operand is a constant, so no term is
    precomputed into a bias; a target runs it on a MAC array, writes one operand into an array per
    inference, or runs it on its vector unit.
``q.requant(acc: i32) -> u8``  attrs ``mode``, ``scale`` (floats: the real multipliers
    ``M[c] = sx*sw[c] / s_out`` as float32 values), ``multiplier``/``shift`` (ints, fixed mode:
    ``(M0, shift) = quantize_multiplier(scale[c])``, see ``cimc.quant.fixedpoint``), ``axis``
    (the channel axis when ``scale`` has more than one entry), ``zero_point``, ``bits``, ``lo``/
    ``hi`` (optional clamp inside ``[0, 2**bits-1]``, where a fused Relu/Clip lands):
    fixed: ``v = (int64(acc) * M0[c] + (1 << (shift[c] - 1))) >> shift[c]`` (round half up);
    float: ``v = rint(float32(acc) * float32(scale[c]))`` (round half to even);
    then ``q = clip(v + zero_point, lo, hi)``.
``q.add(a: u8, b: u8) -> u8`` (numpy broadcasting)  attrs ``mode``, ``a_scale``/``b_scale`` (floats
    ``Ma = sa/s_out``, ``Mb = sb/s_out`` as float32 values), ``a_zero_point``, ``b_zero_point``,
    ``zero_point``, ``bits``, ``lo``/``hi``, and in fixed mode ``a_multiplier``, ``b_multiplier``,
    ``shift`` (``shared_multipliers(Ma, Mb)``: one shift):
    fixed: ``v = (Na*(a - za) + Nb*(b - zb) + (1 << (shift - 1))) >> shift`` in int64;
    then ``q = clip(v + zero_point, lo, hi)``; float: ``q = clip(rint(float32(a - za) * float32(Ma) +
    float32(b - zb) * float32(Mb) + zero_point), lo, hi)``, each product and sum rounded to float32:
    the zero point joins the sum before the rounding, as onnxruntime's ``QLinearAdd`` adds it (with an
    odd zero point, rounding after adding it sends ties the other way).

Speed, bit for bit: ``q.requant`` runs over cache-sized blocks (fixed mode through
``cimc.quant.fixedpoint.requantize``); a large ``q.add`` evaluates its formula once per ``(a, b)``
pair, a 256 x 256 table, and looks its results up.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cimc.errors import VerifyError
from cimc.ir.core import Node
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, OpView, define_op
from cimc.ir.types import DType, QuantParams, TensorType
from cimc.ops._infer import broadcast_shapes, normalize_axis, require
from cimc.ops.elementwise import spare_out
from cimc.ops.nn import _CONV_ATTRS, _conv_infer, conv, conv_transpose, exact_matmul, to_dtype, window_geometry
from cimc.quant.fixedpoint import (
    BLOCK,
    blocks,
    quantize_multiplier,
    quantize_multipliers,
    requantize,
    shared_multipliers,
)

__all__ = ["MODES", "act_matmul_codes"]

MODES = ("fixed", "float")
_RTOL = 1e-5  # scales are float32: attributes and types agree to float32 precision
_LUT_MIN = 1 << 15  # q.add on this many elements or more looks results up in a 64K-entry table
_TINY, _HUGE = 1e-30, 1e30  # scales and real multipliers: positive, finite, far from float32's ends
_BYTES = np.arange(256, dtype=np.uint8)


def _where(ctx: InferContext) -> str:
    return f"node {ctx.node.name!r} ({ctx.node.op})"


def _dtype(ctx: InferContext, i: int, *want: DType) -> TensorType:
    t = require(ctx, i)
    if t.dtype not in want:
        raise VerifyError(f"{_where(ctx)}: operand {i} has element type {t.dtype.value}, expected "
                          f"{' or '.join(d.value for d in want)}")
    return t


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _RTOL * max(abs(a), abs(b))


def _check_act(attrs, zp_key: str = "zero_point") -> str | None:
    """Problems with an activation's ``bits``/``zero_point``/``lo``/``hi`` attributes."""
    bits = attrs.get("bits", 8)
    if not 2 <= bits <= 8:
        return f"bits={bits} is outside 2..8"
    qmax = (1 << bits) - 1
    if not 0 <= attrs.get(zp_key, 0) <= qmax:
        return f"{zp_key}={attrs.get(zp_key)} is outside [0, {qmax}] for {bits} bits"
    lo, hi = attrs.get("lo"), attrs.get("hi")
    lo, hi = 0 if lo is None else lo, qmax if hi is None else hi
    if not 0 <= lo <= hi <= qmax:
        return f"clamp lo={lo}, hi={hi} is not inside [0, {qmax}] with lo <= hi"
    return None


def _check_operand_zp(attrs, key: str) -> str | None:
    """An operand's zero point is a uint8 code (its width is its own type's, which may exceed the result's)."""
    zp = attrs.get(key, 0)
    return None if 0 <= zp <= 255 else f"{key}={zp} is outside [0, 255]"


def _check_out_quant(node: Node, zp: int, bits: int, scale: float | None = None) -> str | None:
    q = node.outputs[0].type.quant if node.outputs else None
    if q is None:
        return None
    if q.zero_point != (zp,) or q.bits != bits or (scale is not None and not _close(q.scale[0], scale)):
        return (f"result type says {q} but the attributes give scale={scale}, zero_point={zp}, bits={bits}")
    return None


def _in_quant(node: Node, i: int) -> QuantParams | None:
    v = node.inputs[i] if i < len(node.inputs) else None
    return None if v is None else v.type.quant


def _bounds(attrs) -> tuple[int, int]:
    qmax = (1 << attrs["bits"]) - 1
    lo, hi = attrs.get("lo"), attrs.get("hi")
    return 0 if lo is None else lo, qmax if hi is None else hi


def _per_axis(values, axis: int, ndim: int, dtype) -> np.ndarray:
    """A per-tensor (one value) or per-axis attribute tuple shaped to broadcast along ``axis``."""
    v = np.asarray(values, dtype)
    if v.size == 1:
        return v.reshape(())
    return v.reshape([-1 if i == axis % ndim else 1 for i in range(ndim)])


_ACT_ATTRS = {
    "zero_point": AttrSpec("int", 0, "zero point of the result", lo=-(1 << 31), hi=(1 << 31) - 1),
    "bits": AttrSpec("int", 8, "significant bits of the result (2..8)", lo=2, hi=8),
    "lo": AttrSpec("int", None, "clamp the result below (default 0; a fused Relu/Clip)"),
    "hi": AttrSpec("int", None, "clamp the result above (default 2**bits - 1)"),
}


# ---- q.quantize / q.dequantize ------------------------------------------------------------------
def _quantize_type(ctx: InferContext) -> list[TensorType]:
    x = _dtype(ctx, 0, DType.f32, DType.f16, DType.bf16)
    a = ctx.attrs
    return [TensorType(DType.u8, x.shape, QuantParams((float(a["scale"]),), (int(a["zero_point"]),), a["bits"]))]


def _verify_quantize(node: Node) -> str | None:
    a = node.attrs
    if not a.get("scale", 1.0) > 0:
        return f"scale={a.get('scale')} must be positive"
    return _check_act(a) or _check_out_quant(node, a.get("zero_point", 0), a.get("bits", 8), a.get("scale"))


@define_op("q.quantize", infer=_quantize_type, verify=_verify_quantize, attrs={
    "scale": AttrSpec("float", REQUIRED, "real value of one step", lo=_TINY, hi=_HUGE),
    "zero_point": _ACT_ATTRS["zero_point"], "bits": _ACT_ATTRS["bits"]})
def quantize(ctx, x):
    """clip(rint(x / scale) + zero_point, 0, 2**bits - 1) as uint8 (float32 division)."""
    a = ctx.attrs
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        v = np.nan_to_num(np.rint(x.astype(np.float32) / np.float32(a["scale"])))
    return np.clip(v + a["zero_point"], 0, (1 << a["bits"]) - 1).astype(np.uint8)


def _check_channels(ctx: InferContext, x: TensorType, what: str) -> None:
    """Per-channel ``scale`` entries must match the length of ``axis`` of the operand ``x``."""
    n = len(ctx.attrs["scale"])
    if n > 1 and x.shape is not None:
        axis = normalize_axis(ctx.attrs["axis"], len(x.shape), f"{_where(ctx)}: axis")
        if isinstance(x.shape[axis], int) and x.shape[axis] != n:
            raise VerifyError(f"{_where(ctx)}: {n} {what} but axis {axis} of the input {x} has {x.shape[axis]}")


def _dequantize_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    if not x.dtype.is_int:
        raise VerifyError(f"{_where(ctx)}: input has element type {x.dtype.value}, expected an integer type")
    _check_channels(ctx, x, "scales")
    return [TensorType(DType.f32, x.shape)]


def _verify_dequantize(node: Node) -> str | None:
    a = node.attrs
    scale, zp = a.get("scale", ()), a.get("zero_point", (0,))
    if not scale or len(zp) not in (1, len(scale)):
        return f"needs one or more scales and one zero point or one per scale, has {len(scale)} and {len(zp)}"
    q = _in_quant(node, 0)
    if q is not None and (len(q.scale) != len(scale) or not all(map(_close, q.scale, scale))
                          or set(q.zero_point) != set(zp)):
        return f"input type says {q} but the attributes say scale={list(scale)}, zero_point={list(zp)}"
    return None


@define_op("q.dequantize", infer=_dequantize_type, verify=_verify_dequantize, attrs={
    "scale": AttrSpec("floats", REQUIRED, "one scale (per tensor) or one per index of axis", lo=_TINY, hi=_HUGE),
    "zero_point": AttrSpec("ints", (0,), "one zero point, or one per scale"),
    "axis": AttrSpec("int", 1, "the axis per-axis scales run along"),
})
def dequantize(ctx, q):
    """float32(q - zero_point[c]) * float32(scale[c])."""
    a = ctx.attrs
    zp = _per_axis(a["zero_point"], a["axis"], q.ndim, np.int64)
    return (q.astype(np.int64) - zp).astype(np.float32) * _per_axis(a["scale"], a["axis"], q.ndim, np.float32)


# ---- q.conv / q.gemm / q.matmul ------------------------------------------------------------------
def _acc_type(ctx: InferContext, shape, axis: int) -> list[TensorType]:
    """An int32 accumulator type; its quant is ``sx * sw[c]`` when both operand types carry one. A bias
    must have one entry per channel (dim ``axis`` of the result)."""
    x, w = require(ctx, 0), require(ctx, 1)
    b = ctx.types[2] if ctx.has(2) else None
    if b is not None and b.shape and shape is not None and -len(shape) <= axis < len(shape):
        n, c = b.shape[0], shape[axis]
        if isinstance(n, int) and isinstance(c, int) and n != c:
            raise VerifyError(f"{_where(ctx)}: the bias has {n} entries but the result has {c} channels")
    quant = None
    if x.quant is not None and w.quant is not None:
        sx = x.quant.scale[0]
        quant = QuantParams(tuple(sx * s for s in w.quant.scale), (0,) * len(w.quant.scale), 32,
                            axis if len(w.quant.scale) > 1 else None)
    return [TensorType(DType.i32, shape, quant)]


def _mvm_operands(ctx: InferContext) -> None:
    _dtype(ctx, 0, DType.u8)
    _dtype(ctx, 1, DType.i8)
    if ctx.has(2):
        b = _dtype(ctx, 2, DType.i32)
        if b.shape is not None and len(b.shape) != 1:
            raise VerifyError(f"{_where(ctx)}: bias must be 1-D, is {b}")


def _verify_mvm(node: Node) -> str | None:
    q, zx = _in_quant(node, 0), node.attrs.get("x_zero_point")
    if q is not None and q.zero_point != (zx,):
        return f"x_zero_point={zx} but the input type says {q}"
    return None


def _conv_type(ctx: InferContext) -> list[TensorType]:
    _mvm_operands(ctx)
    return _acc_type(ctx, _conv_infer(ctx)[0].shape, 1)


_ZX = AttrSpec("int", REQUIRED, "zero point of x (pads take this value; folded into bias)")


@define_op("q.conv", inputs=(2, 3), infer=_conv_type, verify=_verify_mvm,
           attrs={**_CONV_ATTRS, "x_zero_point": _ZX})
def qconv(ctx, x, w, bias=None):
    """int32 convolution of uint8 x (padded with x_zero_point) by int8 w, plus int32 bias."""
    out, pb, pe, _, strides, dils = window_geometry(x.shape[2:], w.shape[2:], ctx.attrs)
    return conv(x, w, bias, strides=strides, dilations=dils, pads_begin=pb, pads_end=pe, out=out,
                group=ctx.attrs["group"], out_dtype=np.dtype(np.int32), pad_value=ctx.attrs["x_zero_point"])


def _conv_transpose_type(ctx: InferContext) -> list[TensorType]:
    _mvm_operands(ctx)
    view = dataclasses.replace(ctx, node=OpView(ctx.node, "ConvTranspose", ctx.node.inputs))
    return _acc_type(ctx, _conv_infer(view)[0].shape, 1)


@define_op("q.conv_transpose", inputs=(2, 3), infer=_conv_transpose_type, verify=_verify_mvm, attrs={
    **_CONV_ATTRS,
    "output_padding": AttrSpec("ints", None, "extra size added at the end of each spatial dim", lo=0),
    "output_shape": AttrSpec("ints", None, "spatial output shape; pads are derived from it", lo=0),
    "x_zero_point": AttrSpec("int", REQUIRED, "zero point of x (subtracted from x; not folded into bias)"),
})
def qconv_transpose(ctx, x, w, bias=None):
    """int32 transposed convolution of uint8 x minus x_zero_point by int8 w, plus int32 bias."""
    xd = x.astype(np.float64) - ctx.attrs["x_zero_point"]
    y = conv_transpose(ctx, xd, w.astype(np.float64)).astype(np.int64)
    if bias is not None:
        y += bias.astype(np.int64).reshape(-1, *(1,) * (y.ndim - 2))
    return to_dtype(y, np.dtype(np.int32))


def _gemm_type(ctx: InferContext) -> list[TensorType]:
    _mvm_operands(ctx)
    x, w = require(ctx, 0), require(ctx, 1)
    xs, ws = x.shape or (None, None), w.shape or (None, None)
    if len(xs) != 2 or len(ws) != 2:
        raise VerifyError(f"{_where(ctx)}: x {x} and w {w} must be 2-D ([M,K] and [N,K])")
    if isinstance(xs[1], int) and isinstance(ws[1], int) and xs[1] != ws[1]:
        raise VerifyError(f"{_where(ctx)}: x {x} has K={xs[1]} but w {w} has K={ws[1]}")
    return _acc_type(ctx, (xs[0], ws[0]), 1)


def _bias_add(y: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    return to_dtype(y if bias is None else y + bias.astype(np.int64), np.dtype(np.int32))


@define_op("q.gemm", inputs=(2, 3), infer=_gemm_type, verify=_verify_mvm, attrs={"x_zero_point": _ZX})
def qgemm(ctx, x, w, bias=None):
    """int32 x @ w.T + bias for uint8 x [M,K], int8 w [N,K]."""
    return _bias_add(exact_matmul(x, w.T, np.int64), bias)


def _matmul_type(ctx: InferContext) -> list[TensorType]:
    _mvm_operands(ctx)
    x, w = require(ctx, 0), require(ctx, 1)
    if w.shape is not None and len(w.shape) != 2:
        raise VerifyError(f"{_where(ctx)}: w must be 2-D [K,N], is {w}")
    if x.shape is None:
        return _acc_type(ctx, None, -1)
    if len(x.shape) < 2:
        raise VerifyError(f"{_where(ctx)}: x must have rank >= 2, is {x}")
    ws = w.shape or (None, None)
    if isinstance(x.shape[-1], int) and isinstance(ws[0], int) and x.shape[-1] != ws[0]:
        raise VerifyError(f"{_where(ctx)}: x {x} has K={x.shape[-1]} but w {w} has K={ws[0]}")
    return _acc_type(ctx, (*x.shape[:-1], ws[1]), len(x.shape) - 1)


@define_op("q.matmul", inputs=(2, 3), infer=_matmul_type, verify=_verify_mvm, attrs={"x_zero_point": _ZX})
def qmatmul(ctx, x, w, bias=None):
    """int32 x @ w + bias for uint8 x [..., K], int8 w [K, N]."""
    return _bias_add(exact_matmul(x, w, np.int64), bias)


def _act_matmul_type(ctx: InferContext) -> list[TensorType]:
    a, b = _dtype(ctx, 0, DType.u8), _dtype(ctx, 1, DType.u8)
    quant = None
    if a.quant is not None and b.quant is not None:
        quant = QuantParams((a.quant.scale[0] * b.quant.scale[0],), (0,), 32)
    if a.shape is None or b.shape is None:
        return [TensorType(DType.i32, None, quant)]
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise VerifyError(f"{_where(ctx)}: both operands must have rank >= 2, are {a} and {b}")
    k, k2 = a.shape[-1], b.shape[-2]
    if isinstance(k, int) and isinstance(k2, int) and k != k2:
        raise VerifyError(f"{_where(ctx)}: a {a} has K={k} but b {b} has K={k2}")
    batch = broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2]))
    return [TensorType(DType.i32, (*batch, a.shape[-2], b.shape[-1]), quant)]


def _verify_act_matmul(node: Node) -> str | None:
    for i, key in ((0, "a_zero_point"), (1, "b_zero_point")):
        q, zp = _in_quant(node, i), node.attrs.get(key)
        if q is not None and q.zero_point != (zp,):
            return f"{key}={zp} but operand {i} has type quantization {q}"
    return None


@define_op("q.act_matmul", inputs=2, infer=_act_matmul_type, verify=_verify_act_matmul, attrs={
    "a_zero_point": AttrSpec("int", REQUIRED, "zero point of a", lo=0, hi=255),
    "b_zero_point": AttrSpec("int", REQUIRED, "zero point of b", lo=0, hi=255)})
def qact_matmul(ctx, a, b):
    """int32 (a - a_zero_point) @ (b - b_zero_point) of two uint8 activations (batched, broadcasting)."""
    return act_matmul_codes(a, b, ctx.attrs["a_zero_point"], ctx.attrs["b_zero_point"])


def act_matmul_codes(a: np.ndarray, b: np.ndarray, za: int, zb: int) -> np.ndarray:
    """``(a - za) @ (b - zb)`` of uint8 codes, exact, wrapped to int32 (what ``q.act_matmul`` computes)."""
    return exact_matmul(a.astype(np.int16) - np.int16(za), b.astype(np.int16) - np.int16(zb), np.int32)


# ---- q.requant / q.add ------------------------------------------------------------------------------
def _verify_mode(a, fixed_keys: tuple[str, ...]) -> str | None:
    mode = a.get("mode", "fixed")
    if mode not in MODES:
        return f"mode={mode!r} is not one of {', '.join(MODES)}"
    if mode == "fixed" and any(a.get(k) is None for k in fixed_keys):
        return f"fixed mode needs attributes {', '.join(fixed_keys)}"
    return None


def _requant_type(ctx: InferContext) -> list[TensorType]:
    x = _dtype(ctx, 0, DType.i32)
    _check_channels(ctx, x, "multipliers")
    return [TensorType(DType.u8, x.shape)]


def _verify_requant(node: Node) -> str | None:
    a = node.attrs
    why = _check_act(a) or _verify_mode(a, ("multiplier", "shift"))
    if why:
        return why
    scale = a["scale"]
    if a.get("mode", "fixed") == "fixed":
        m0, shift = a["multiplier"], a["shift"]
        if not len(m0) == len(shift) == len(scale):
            return f"has {len(scale)} scales, {len(m0)} multipliers and {len(shift)} shifts; they must match"
        want = quantize_multipliers(scale)
        bad = [i for i in range(len(scale)) if (want[0][i], want[1][i]) != (m0[i], shift[i])]
        if bad:
            i = bad[0]
            return (f"channel {i}: multiplier {m0[i]} >> {shift[i]} is not the fixed-point form "
                    f"{quantize_multiplier(scale[i])} of scale {scale[i]}")
    qin, qout = _in_quant(node, 0), node.outputs[0].type.quant if node.outputs else None
    why = _check_out_quant(node, a.get("zero_point", 0), a.get("bits", 8))
    if why is None and qin is not None and qout is not None:
        ratio = [s / qout.scale[0] for s in qin.scale]
        if len(ratio) != len(scale) or not all(map(_close, ratio, scale)):
            why = f"scale {list(scale)[:4]} is not input scale / output scale {ratio[:4]}"
    return why


@define_op("q.requant", infer=_requant_type, verify=_verify_requant, attrs={
    "mode": AttrSpec("str", "fixed", "fixed (integer multiplier and shift) or float (float32, half to even)",
                     choices=("fixed", "float")),
    "scale": AttrSpec("floats", REQUIRED, "real multiplier per channel (or one): input scale / output scale",
                      lo=0, hi=_HUGE),
    "multiplier": AttrSpec("ints", None, "fixed mode: int32 M0 per scale, in [2**30, 2**31)", lo=0, hi=(1 << 31) - 1),
    "shift": AttrSpec("ints", None, "fixed mode: right shift per scale", lo=-31, hi=63),
    "axis": AttrSpec("int", 1, "the channel axis per-channel multipliers run along"),
    **_ACT_ATTRS,
})
def requant(ctx, acc):
    """int32 accumulator to a uint8 activation: scale, round, add the zero point, clamp."""
    a = ctx.attrs
    lo, hi = _bounds(a)
    if a["mode"] == "fixed":
        return requantize(acc, a["multiplier"], a["shift"], a["zero_point"], lo, hi, a["axis"])
    acc = np.ascontiguousarray(acc)
    out = np.empty(acc.shape, np.uint8)
    g = np.empty(0, np.float32)
    for xb, ob, sb in blocks(acc, out, a["axis"], np.asarray(a["scale"], np.float32)):
        g = g if g.size >= xb.size else np.empty(xb.size, np.float32)
        gb = g[:xb.size].reshape(xb.shape)
        np.copyto(gb, xb, casting="unsafe")  # float32(acc)
        gb *= sb
        np.rint(gb, out=gb)
        gb += a["zero_point"]
        np.copyto(ob, np.clip(gb, lo, hi, out=gb), casting="unsafe")
    return out


def _add_type(ctx: InferContext) -> list[TensorType]:
    a, b = _dtype(ctx, 0, DType.u8), _dtype(ctx, 1, DType.u8)
    return [TensorType(DType.u8, broadcast_shapes(a.shape, b.shape))]


def _verify_add(node: Node) -> str | None:
    a = node.attrs
    why = (_check_act(a) or _check_operand_zp(a, "a_zero_point") or _check_operand_zp(a, "b_zero_point")
           or _verify_mode(a, ("a_multiplier", "b_multiplier", "shift")))
    if why:
        return why
    ma, mb = a["a_scale"], a["b_scale"]
    fixed = (a["a_multiplier"], a["b_multiplier"], a["shift"]) if a.get("mode", "fixed") == "fixed" else None
    if fixed is not None and fixed != shared_multipliers(ma, mb):
        return f"fixed-point multipliers are not shared_multipliers({ma}, {mb}) = {shared_multipliers(ma, mb)}"
    why = _check_out_quant(node, a.get("zero_point", 0), a.get("bits", 8))
    qa, qb, qo = _in_quant(node, 0), _in_quant(node, 1), node.outputs[0].type.quant if node.outputs else None
    if why is None and qo is not None:
        for q, m, zp, side in ((qa, ma, a.get("a_zero_point", 0), "a"), (qb, mb, a.get("b_zero_point", 0), "b")):
            if q is not None and (not _close(q.scale[0] / qo.scale[0], m) or q.zero_point != (zp,)):
                return f"{side}_scale={m}, {side}_zero_point={zp} disagree with the types ({q} -> {qo})"
    return why


@define_op("q.add", inputs=2, infer=_add_type, verify=_verify_add, attrs={
    "mode": AttrSpec("str", "fixed", "fixed (integer multipliers, one shift) or float (float32)",
                     choices=("fixed", "float")),
    "a_scale": AttrSpec("float", REQUIRED, "real multiplier of a: scale of a / scale of the result", lo=0, hi=_HUGE),
    "b_scale": AttrSpec("float", REQUIRED, "real multiplier of b: scale of b / scale of the result", lo=0, hi=_HUGE),
    "a_zero_point": AttrSpec("int", 0, "zero point of a"),
    "b_zero_point": AttrSpec("int", 0, "zero point of b"),
    "a_multiplier": AttrSpec("int", None, "fixed mode: Na"),
    "b_multiplier": AttrSpec("int", None, "fixed mode: Nb"),
    "shift": AttrSpec("int", None, "fixed mode: the shared right shift"),
    **_ACT_ATTRS,
})
def qadd(ctx, a, b):
    """Sum of two uint8 activations rescaled to the result's scale, rounded once, clamped."""
    if a.dtype != np.uint8 or b.dtype != np.uint8 or max(a.size, b.size) < _LUT_MIN:
        return _add_values(ctx.attrs, a, b)
    # Large: look each (a, b) pair up in the 256 x 256 table of the same formula (exact by construction).
    table = _add_values(ctx.attrs, _BYTES[:, None], _BYTES[None, :]).ravel()  # [a * 256 + b]
    if a.shape != b.shape:
        idx = np.left_shift(a, 8, dtype=np.uint16)
        return table.take(np.bitwise_or(idx, b, out=np.empty(np.broadcast_shapes(a.shape, b.shape), np.uint16)))
    spare = spare_out(ctx, a, b, dtype=np.uint8)  # each block is read before its result is written
    out, shape = np.empty(a.size, np.uint8) if spare is None else spare.reshape(-1), a.shape
    a, b = np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)
    idx = np.empty(min(a.size, BLOCK), np.uint16)
    for s in range(0, a.size, BLOCK):
        i = idx[:min(BLOCK, a.size - s)]
        np.left_shift(a[s:s + i.size], 8, out=i, dtype=np.uint16)
        i |= b[s:s + i.size]
        table.take(i, out=out[s:s + i.size])
    return out.reshape(shape)


def _add_values(at, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The q.add formula (module doc), elementwise with broadcasting."""
    da, db = a.astype(np.int64), b.astype(np.int64)  # fresh arrays, updated in place below
    da -= at["a_zero_point"]
    db -= at["b_zero_point"]
    if at["mode"] == "fixed":
        da *= at["a_multiplier"]
        db *= at["b_multiplier"]
        v = np.add(da, db, out=da) if da.shape == np.broadcast_shapes(da.shape, db.shape) else da + db
        v += np.int64(1) << (at["shift"] - 1)
        v >>= at["shift"]
        v += at["zero_point"]
    else:  # the zero point joins the float sum before rounding, as onnxruntime's QLinearAdd adds it
        v = np.rint(da.astype(np.float32) * np.float32(at["a_scale"])
                    + db.astype(np.float32) * np.float32(at["b_scale"]) + np.float32(at["zero_point"])).astype(np.int64)
    lo, hi = _bounds(at)
    return np.clip(v, lo, hi, out=v).astype(np.uint8)
