"""The mapping between ONNX element-type codes and cimc's ``DType``."""

from __future__ import annotations

from cimc.errors import UnsupportedOpError
from cimc.ir.types import DType

__all__ = ["DTYPE_FROM_ONNX", "ONNX_FROM_DTYPE", "dtype_from_onnx"]

DTYPE_FROM_ONNX: dict[int, DType] = {
    1: DType.f32, 2: DType.u8, 3: DType.i8, 4: DType.u16, 5: DType.i16, 6: DType.i32, 7: DType.i64,
    8: DType.str, 9: DType.bool, 10: DType.f16, 11: DType.f64, 12: DType.u32, 13: DType.u64,
    16: DType.bf16, 21: DType.u4, 22: DType.i4,
}
ONNX_FROM_DTYPE: dict[DType, int] = {v: k for k, v in DTYPE_FROM_ONNX.items()}


def dtype_from_onnx(code: int, where: str = "") -> DType:
    """The cimc type of ONNX element type ``code``, or an error naming it."""
    try:
        return DTYPE_FROM_ONNX[code]
    except KeyError:
        import onnx

        name = onnx.TensorProto.DataType.Name(code) if code in onnx.TensorProto.DataType.values() else str(code)
        raise UnsupportedOpError(f"{where + ': ' if where else ''}element type {name} is not supported") from None
