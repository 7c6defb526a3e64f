"""ONNX operator test cases that exercise features cimc deliberately does not support.

Two kinds, each with its reason:

- ``unsupported_types(model)``: cases whose graph carries an element type cimc has no type for
  (float8, float4, int2, ...: ``cimc.ir.types.UNSUPPORTED_ONNX_DTYPES``) or a value that is not a
  tensor (sequence, optional). The importer rejects these with one clear error, which
  ``tests/test_onnx_conformance.py`` checks for every such case instead of running it.
- ``SKIPS``: named cases, one reason each.

``tests/test_onnx_conformance.py`` skips exactly these and runs every other case of every supported op.
"""

from __future__ import annotations

import onnx

from cimc.ir.types import UNSUPPORTED_ONNX_DTYPES

_LOOP_INPUT = "the loop's trip count is a graph input, so it cannot be unrolled at import (only a static one can)"
_ROUNDING_16 = ("the expected values come from numpy float16/bfloat16 products that round every partial sum to "
                "16 bits; cimc sums in float32 and rounds once, 1-2 units in the last place apart")

SKIPS: dict[str, str] = {
    # ---- declared opset older than cimc reads ----
    "test_not_2d": "the model declares opset 1; cimc reads opsets 7 and newer",
    "test_not_3d": "the model declares opset 1; cimc reads opsets 7 and newer",
    "test_not_4d": "the model declares opset 1; cimc reads opsets 7 and newer",
    # ---- half-precision rounding of the expanded (function body) attention graphs ----
    "test_attention_3d_causal_bf16_expanded": _ROUNDING_16,
    "test_attention_4d_attn_mask_causal_bf16_expanded": _ROUNDING_16,
    "test_attention_4d_causal_bf16_expanded": _ROUNDING_16,
    "test_attention_4d_causal_fp16_expanded": _ROUNDING_16,
    "test_attention_4d_causal_padded_kv_bf16_expanded": _ROUNDING_16,
    "test_attention_4d_padded_kv_bf16_expanded": _ROUNDING_16,
}


def _type_problem(t: onnx.TypeProto) -> str | None:
    kind = t.WhichOneof("value")
    if kind in ("sequence_type", "optional_type", "map_type", "sparse_tensor_type"):
        return f"{kind.removesuffix('_type')} values (cimc graphs carry tensors only)"
    if kind == "tensor_type" and t.tensor_type.elem_type in UNSUPPORTED_ONNX_DTYPES:
        return f"element type {UNSUPPORTED_ONNX_DTYPES[t.tensor_type.elem_type]} (cimc has no such type)"
    return None


def unsupported_types(model: onnx.ModelProto) -> str | None:
    """Why ``model`` carries a value cimc has no type for, or ``None``."""
    g = model.graph
    for vi in (*g.input, *g.output):
        if (why := _type_problem(vi.type)) is not None:
            return why
    for init in g.initializer:
        if init.data_type in UNSUPPORTED_ONNX_DTYPES:
            return f"element type {UNSUPPORTED_ONNX_DTYPES[init.data_type]} (cimc has no such type)"
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i in UNSUPPORTED_ONNX_DTYPES:
                return f"element type {UNSUPPORTED_ONNX_DTYPES[attr.i]} (cimc has no such type)"
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in UNSUPPORTED_ONNX_DTYPES:
                return f"element type {UNSUPPORTED_ONNX_DTYPES[attr.t.data_type]} (cimc has no such type)"
    return None
