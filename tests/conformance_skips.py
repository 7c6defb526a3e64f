"""ONNX operator test cases that exercise features cimc deliberately does not support.

Two kinds, each with its reason:

- ``unsupported_types(model)``: cases whose graph carries an element type cimc has no type for
  (float8, float4, int2, ...: ``cimc.ir.types.UNSUPPORTED_ONNX_DTYPES``) or a value that is not a
  tensor (sequence, optional). The importer rejects these with one clear error, which
  ``tests/test_onnx_conformance.py`` checks for every such case instead of running it.
- ``REFUSED``: named cases that must fail to import with one clear error (control flow that depends on
  run-time values), one reason each.
- ``SKIPS``: named cases not run, one reason each.

``tests/test_onnx_conformance.py`` skips exactly these and runs every other case of every supported op.
"""

from __future__ import annotations

import onnx

from cimc.ir.types import UNSUPPORTED_ONNX_DTYPES

_LOOP_INPUT = "Loop whose trip count is computed from graph inputs: cimc unrolls only trip counts known at import"
_IF_INPUT = "If whose condition is computed from graph inputs: cimc folds only conditions known at import"
_ROUNDING_16 = ("16-bit float attention: the expected values come from numpy products that round to float16/bfloat16 "
                "at every step and the case's tolerance (rtol 1e-3) is finer than a bfloat16 unit in the last place "
                "(2^-8); cimc sums in float32 and rounds once, within 3 units in the last place of the expected")

SKIPS: dict[str, str] = {
    # ---- declared opset older than cimc reads ----
    "test_not_2d": "the model declares opset 1; cimc reads opsets 7 and newer",
    "test_not_3d": "the model declares opset 1; cimc reads opsets 7 and newer",
    "test_not_4d": "the model declares opset 1; cimc reads opsets 7 and newer",
    # ---- half-precision rounding of attention (the op, and its expanded function body) ----
    "test_attention_3d_causal_bf16": _ROUNDING_16,
    "test_attention_4d_attn_mask_causal_bf16": _ROUNDING_16,
    "test_attention_4d_causal_bf16": _ROUNDING_16,
    "test_attention_4d_causal_fp16": _ROUNDING_16,
    "test_attention_4d_causal_padded_kv_bf16": _ROUNDING_16,
    "test_attention_4d_padded_kv_bf16": _ROUNDING_16,
    "test_attention_3d_causal_bf16_expanded": _ROUNDING_16,
    "test_attention_4d_attn_mask_causal_bf16_expanded": _ROUNDING_16,
    "test_attention_4d_causal_bf16_expanded": _ROUNDING_16,
    "test_attention_4d_causal_fp16_expanded": _ROUNDING_16,
    "test_attention_4d_causal_padded_kv_bf16_expanded": _ROUNDING_16,
    "test_attention_4d_padded_kv_bf16_expanded": _ROUNDING_16,
}


REFUSED: dict[str, str] = {
    # control flow that depends on run-time values: the importer must refuse it with one clear error
    "test_affine_grid_3d_align_corners_expanded": _IF_INPUT,
    "test_if": _IF_INPUT,
    "test_loop11": _LOOP_INPUT,
    "test_range_bfloat16_type_positive_delta_expanded": _LOOP_INPUT,
    "test_range_float16_type_positive_delta_expanded": _LOOP_INPUT,
    "test_range_float_type_positive_delta_expanded": _LOOP_INPUT,
    "test_range_int32_type_negative_delta_expanded": _LOOP_INPUT,
}
"""Cases cimc must refuse at import with one ``UnsupportedOpError``, each with the reason."""


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
