"""ONNX element-type codes (re-exported from ``cimc.ir.types``, where the table lives)."""

from __future__ import annotations

from cimc.ir.types import ONNX_CODE_OF_DTYPE as ONNX_FROM_DTYPE
from cimc.ir.types import ONNX_DTYPE_CODES as DTYPE_FROM_ONNX
from cimc.ir.types import dtype_from_onnx_code as dtype_from_onnx

__all__ = ["DTYPE_FROM_ONNX", "ONNX_FROM_DTYPE", "dtype_from_onnx"]
