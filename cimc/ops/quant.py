"""Built-in ops: linear (de)quantization, ONNX ``QuantizeLinear`` / ``DequantizeLinear``.

``q = saturate(round_half_even(x / scale) + zero_point)`` and ``x = (q - zero_point) * scale``.
The granularity follows the shape of ``scale`` (``zero_point`` has the same shape): a scalar (or
one element) is per tensor; a 1-D tensor of length ``D[axis]`` is per axis; with ``block_size``
B > 0, a tensor shaped like ``x`` except ``ceil(D[axis] / B)`` along ``axis`` is blocked (each
scale covers B consecutive elements). The integer type comes from ``output_dtype`` (an ONNX
``TensorProto`` type code), else from the zero point, else uint8; int4/uint4 values live in
int8/uint8 arrays. The division runs in the ``precision`` type if set, else in the scale's type;
dequantization multiplies in f32 and rounds once to the result type. Float8/float4/2-bit
types are not supported.
"""

from __future__ import annotations

import numpy as np

from cimc.errors import InputError, VerifyError
from cimc.ir.core import Node
from cimc.ir.opdef import AttrSpec, InferContext, define_op
from cimc.ir.types import ONNX_CODE_OF_DTYPE, DType, Shape, TensorType, dtype_from_onnx_code
from cimc.ops._infer import normalize_axis, require

__all__ = ["QUANT_RANGES"]

QUANT_RANGES: dict[DType, tuple[int, int]] = {
    DType.u8: (0, 255), DType.i8: (-128, 127), DType.u16: (0, 65535), DType.i16: (-32768, 32767),
    DType.u4: (0, 15), DType.i4: (-8, 7),
}
"""The saturation range of each integer type ``QuantizeLinear`` can produce."""

_CODES = ONNX_CODE_OF_DTYPE
_FLOATS = (DType.f32, DType.f16, DType.bf16)


def _dtype(code: int, what: str, where: str) -> DType:
    return dtype_from_onnx_code(code, f"{where}: {what}")


def _where(ctx: InferContext) -> str:
    return f"node {ctx.node.name!r} ({ctx.node.op})"


def _check_params(ctx: InferContext, x: TensorType, where: str) -> None:
    """Check that scale and zero point shapes fit one of the three granularities."""
    scale = require(ctx, 1)
    if scale.dtype not in _FLOATS:
        raise VerifyError(f"{where}: scale has element type {scale.dtype.value}, expected f32, f16 or bf16")
    zp = ctx.types[2] if ctx.has(2) else None
    if zp is not None and zp.shape is not None and scale.shape is not None and not (
            (_one(zp.shape) and _one(scale.shape)) or (len(zp.shape) == len(scale.shape) and not any(
                _differ(a, b) for a, b in zip(zp.shape, scale.shape, strict=True)))):
        raise VerifyError(f"{where}: zero point shape {list(zp.shape)} differs from scale shape "
                          f"{list(scale.shape)}; they must be equal")
    s, block = scale.shape, ctx.attrs["block_size"]
    if s is None or x.shape is None or (block == 0 and (len(s) == 0 or s == (1,))):
        return
    if block < 0:
        raise VerifyError(f"{where}: block_size is {block}, expected a positive integer (or 0 for none)")
    axis = normalize_axis(ctx.attrs["axis"], max(len(x.shape), 1), f"{where}: axis")
    if block == 0:
        if len(s) != 1 or _differ(s[0], x.shape[axis]):
            raise VerifyError(f"{where}: per-axis scale has shape {list(s)}, expected [{x.shape[axis]}] "
                              f"(the size of axis {axis} of the input); use a scalar for per-tensor")
        return
    want = tuple(-(-d // block) if isinstance(d, int) and i == axis else (None if i == axis else d)
                 for i, d in enumerate(x.shape))
    if len(s) != len(want) or any(_differ(a, b) for a, b in zip(s, want, strict=True)):
        raise VerifyError(f"{where}: blocked scale has shape {list(s)}, expected "
                          f"{['?' if d is None else d for d in want]} (input shape with axis {axis} "
                          f"divided by block_size {block}, rounded up)")


def _one(shape: Shape) -> bool:
    return all(d == 1 for d in shape)


def _differ(a: int | str | None, b: int | str | None) -> bool:
    return isinstance(a, int) and isinstance(b, int) and a != b


def _quantize_type(ctx: InferContext) -> list[TensorType]:
    where, x = _where(ctx), require(ctx, 0)
    if x.dtype not in (*_FLOATS, DType.i32):
        raise VerifyError(f"{where}: input has element type {x.dtype.value}, expected f32, f16, bf16 or i32")
    zp = ctx.types[2] if ctx.has(2) else None
    code = ctx.attrs["output_dtype"]
    out = _dtype(code, "output_dtype", where) if code else (zp.dtype if zp is not None else DType.u8)
    if zp is not None and zp.dtype is not out:
        raise VerifyError(f"{where}: zero point has element type {zp.dtype.value} but output_dtype says "
                          f"{out.value}; they must agree")
    if out not in QUANT_RANGES:
        raise VerifyError(f"{where}: cannot quantize to {out.value}; expected one of "
                          f"{', '.join(t.value for t in QUANT_RANGES)}")
    if ctx.attrs["precision"]:
        p = _dtype(ctx.attrs["precision"], "precision", where)
        if p not in (*_FLOATS, DType.f64):
            raise VerifyError(f"{where}: precision {p.value} is not a float type")
    _check_params(ctx, x, where)
    return [TensorType(out, x.shape)]


def _verify_quantize(node: Node) -> str | None:
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    if zp is not None and zp.type.dtype in (DType.i4, DType.u4) and not node.attrs.get("output_dtype"):
        return (f"zero point is {zp.type.dtype.value}, whose values are stored in 8-bit arrays; set "
                f"output_dtype={_CODES[zp.type.dtype]} so the result saturates to the 4-bit range")
    return None


def _expand(v: np.ndarray, shape: Shape, axis: int, block: int, what: str) -> np.ndarray:
    """``v`` (a scale or zero point) reshaped or repeated so it broadcasts against ``shape``."""
    if v.size == 1:
        return v.reshape(())
    axis = axis % len(shape)
    if not block:
        if v.ndim != 1 or v.shape[0] != shape[axis]:
            raise InputError(f"{what} has shape {list(v.shape)}; per-axis quantization along axis {axis} "
                             f"of an input shaped {list(shape)} needs shape [{shape[axis]}]")
        return v.reshape([-1 if i == axis else 1 for i in range(len(shape))])
    out = np.repeat(v, block, axis=axis)[(slice(None),) * axis + (slice(0, shape[axis]),)]
    if out.shape != tuple(shape):
        raise InputError(f"{what} has shape {list(v.shape)}, which does not block input shape {list(shape)} "
                         f"along axis {axis} with block_size {block}")
    return out


@define_op("QuantizeLinear", inputs=(2, 3), infer=_quantize_type, verify=_verify_quantize, attrs={
    "axis": AttrSpec("int", 1, "axis of per-axis or blocked quantization"),
    "block_size": AttrSpec("int", 0, "elements per scale along axis (blocked); 0 = not blocked"),
    "output_dtype": AttrSpec("int", 0, "ONNX type code of the result; 0 = zero point's type or uint8"),
    "saturate": AttrSpec("int", 1, "float8 only; integers always saturate"),
    "precision": AttrSpec("int", 0, "ONNX type code the division runs in; 0 = the scale's type"),
})
def quantize_linear(ctx, x, scale, zero_point=None):
    """saturate(round_half_even(x / scale) + zero_point) into an integer type."""
    where = f"node {ctx.node_name!r} (QuantizeLinear)"
    code = ctx.attrs["output_dtype"]
    out = _dtype(code, "output_dtype", where) if code else (
        DType.u8 if zero_point is None else DType.from_numpy(zero_point.dtype))
    if out not in QUANT_RANGES:
        raise InputError(f"{where}: cannot quantize to {out.value}")
    prec = _dtype(ctx.attrs["precision"], "precision", where).numpy if ctx.attrs["precision"] else scale.dtype
    axis, block = ctx.attrs["axis"], ctx.attrs["block_size"]
    s = _expand(scale, x.shape, axis, block, "scale")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        v = np.rint(x.astype(prec) / s.astype(prec)).astype(np.float64)
        if zero_point is not None:
            v = v + _expand(zero_point, x.shape, axis, block, "zero point")
        lo, hi = QUANT_RANGES[out]
        return np.clip(np.nan_to_num(v), lo, hi).astype(out.numpy)


def _dequantize_type(ctx: InferContext) -> list[TensorType]:
    where, x = _where(ctx), require(ctx, 0)
    if x.dtype not in (*QUANT_RANGES, DType.i32):
        raise VerifyError(f"{where}: input has element type {x.dtype.value}, expected one of "
                          f"{', '.join(t.value for t in (*QUANT_RANGES, DType.i32))}")
    zp = ctx.types[2] if ctx.has(2) else None
    if zp is not None and zp.dtype is not x.dtype:
        raise VerifyError(f"{where}: zero point has element type {zp.dtype.value}, expected "
                          f"{x.dtype.value} like the input")
    code = ctx.attrs["output_dtype"]
    out = _dtype(code, "output_dtype", where) if code else require(ctx, 1).dtype
    if out not in _FLOATS:
        raise VerifyError(f"{where}: output_dtype {out.value} is not f32, f16 or bf16")
    _check_params(ctx, x, where)
    return [TensorType(out, x.shape)]


@define_op("DequantizeLinear", inputs=(2, 3), infer=_dequantize_type, attrs={
    "axis": AttrSpec("int", 1, "axis of per-axis or blocked quantization"),
    "block_size": AttrSpec("int", 0, "elements per scale along axis (blocked); 0 = not blocked"),
    "output_dtype": AttrSpec("int", 0, "ONNX type code of the result; 0 = the scale's type"),
})
def dequantize_linear(ctx, x, scale, zero_point=None):
    """(x - zero_point) * scale, computed in f32 and rounded to the result type."""
    code, where = ctx.attrs["output_dtype"], f"node {ctx.node_name!r} (DequantizeLinear)"
    out = _dtype(code, "output_dtype", where).numpy if code else scale.dtype
    axis, block = ctx.attrs["axis"], ctx.attrs["block_size"]
    q = x.astype(np.int64)
    if zero_point is not None:
        q = q - _expand(zero_point, x.shape, axis, block, "zero point").astype(np.int64)
    s = _expand(scale, x.shape, axis, block, "scale").astype(np.float32)
    return (q.astype(np.float32) * s).astype(out)
