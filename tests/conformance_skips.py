"""ONNX operator test cases that exercise features cimc deliberately does not support.

One entry per case: the case name from ``onnx.backend.test.case.node.collect_testcases()`` and
the reason. ``tests/test_onnx_conformance.py`` skips exactly these and runs every other case of
every supported op.
"""

from __future__ import annotations

SKIPS: dict[str, str] = {
    # ---- QuantizeLinear / DequantizeLinear (cimc/ops/quant.py) ----
    "test_dequantizelinear_e4m3fn": "float8 element types are not supported by cimc (no float8 DType)",
    "test_dequantizelinear_e4m3fn_float16": "float8 element types are not supported by cimc (no float8 DType)",
    "test_dequantizelinear_e4m3fn_zero_point": "float8 element types are not supported by cimc (no float8 DType)",
    "test_dequantizelinear_e5m2": "float8 element types are not supported by cimc (no float8 DType)",
    "test_quantizelinear_e4m3fn": "float8 element types are not supported by cimc (no float8 DType)",
    "test_quantizelinear_e5m2": "float8 element types are not supported by cimc (no float8 DType)",
    "test_dequantizelinear_float4e2m1": "float4e2m1 is not supported by cimc (no float4 DType)",
    "test_quantizelinear_float4e2m1": "float4e2m1 is not supported by cimc (no float4 DType)",
    "test_dequantizelinear_int2": "2-bit integer types are not supported by cimc (no int2 DType)",
    "test_dequantizelinear_uint2": "2-bit integer types are not supported by cimc (no uint2 DType)",
    "test_quantizelinear_int2": "2-bit integer types are not supported by cimc (no int2 DType)",
    "test_quantizelinear_uint2": "2-bit integer types are not supported by cimc (no uint2 DType)",
}
