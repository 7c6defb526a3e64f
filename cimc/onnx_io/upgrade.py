"""Rewrites of older-opset ONNX nodes into the newest form of each op, which is the only form cimc's
ops implement.

Each rule takes the node's op, the version of the op's schema in effect (``since``), its attributes
and operands, and returns them in the newest form: attributes that later opsets turned into
operands become constant operands (``Unsqueeze`` axes, ``Pad`` pads, ``Clip`` bounds, ...),
attributes that were dropped are removed, and ``Softmax`` before opset 13 (which flattens to 2-D
at ``axis``) is kept as one node where the two meanings agree (axis is the last one) and otherwise
spelled as ``Flatten`` + ``Softmax`` + ``Reshape``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cimc.errors import UnsupportedOpError
from cimc.ir.core import Graph, Value
from cimc.ir.types import ONNX_CODE_OF_DTYPE, DType

__all__ = ["NodeSpec", "upgrade"]


@dataclass
class NodeSpec:
    """A node on its way into the graph: op, schema version, attributes, operands."""

    op: str
    since: int
    attrs: dict[str, Any]
    inputs: list[Value | None]
    name: str
    num_outputs: int


Rule = Callable[[NodeSpec, Graph], None]
_RULES: dict[str, Rule] = {}
_DROPPED_EVERYWHERE = ("consumed_inputs",)


def _rule(*ops: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in ops:
            _RULES[op] = fn
        return fn

    return register


def _operand(spec: NodeSpec, g: Graph, index: int, array: np.ndarray | None) -> None:
    while len(spec.inputs) <= index:
        spec.inputs.append(None)
    if array is not None:
        spec.inputs[index] = g.add_constant(array, f"{spec.name}_{index}")


def _ints(values: Any) -> np.ndarray:
    return np.asarray(list(values), dtype=np.int64)


def _attr_to_operand(spec: NodeSpec, g: Graph, attr: str, index: int, until: int) -> None:
    if spec.since < until and attr in spec.attrs:
        _operand(spec, g, index, _ints(spec.attrs.pop(attr)))


@_rule("Squeeze", "Unsqueeze")
def _axes_operand(spec: NodeSpec, g: Graph) -> None:
    _attr_to_operand(spec, g, "axes", 1, 13)


@_rule("ReduceSum")
def _reduce_sum(spec: NodeSpec, g: Graph) -> None:
    _attr_to_operand(spec, g, "axes", 1, 13)


@_rule("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare",
       "ReduceLogSum", "ReduceLogSumExp")
def _reduce_axes_operand(spec: NodeSpec, g: Graph) -> None:
    _attr_to_operand(spec, g, "axes", 1, 18)


@_rule("Split")
def _split(spec: NodeSpec, g: Graph) -> None:
    _attr_to_operand(spec, g, "split", 1, 13)
    has_split = len(spec.inputs) > 1 and spec.inputs[1] is not None
    if spec.since < 18 and not has_split:
        spec.attrs["num_outputs"] = spec.num_outputs


@_rule("Reshape")
def _reshape(spec: NodeSpec, g: Graph) -> None:
    _attr_to_operand(spec, g, "shape", 1, 5)


@_rule("Slice")
def _slice(spec: NodeSpec, g: Graph) -> None:
    if spec.since < 10:
        for attr, index in (("starts", 1), ("ends", 2), ("axes", 3)):
            if attr in spec.attrs:
                _operand(spec, g, index, _ints(spec.attrs.pop(attr)))


@_rule("Clip")
def _clip(spec: NodeSpec, g: Graph) -> None:
    if spec.since < 11:
        dtype = spec.inputs[0].type.dtype.numpy if spec.inputs[0] is not None else np.float32
        lo, hi = spec.attrs.pop("min", None), spec.attrs.pop("max", None)
        _operand(spec, g, 1, None if lo is None else np.asarray(lo, dtype))
        _operand(spec, g, 2, None if hi is None else np.asarray(hi, dtype))


@_rule("Pad")
def _pad(spec: NodeSpec, g: Graph) -> None:
    if spec.since < 11:
        dtype = spec.inputs[0].type.dtype.numpy if spec.inputs[0] is not None else np.float32
        _operand(spec, g, 1, _ints(spec.attrs.pop("pads", spec.attrs.pop("paddings", ()))))
        _operand(spec, g, 2, np.asarray(spec.attrs.pop("value", 0.0), dtype))


@_rule("Dropout")
def _dropout(spec: NodeSpec, g: Graph) -> None:
    if spec.since < 12:
        spec.attrs.pop("ratio", None)
        spec.attrs.pop("is_test", None)


@_rule("BatchNormalization")
def _batch_norm(spec: NodeSpec, g: Graph) -> None:
    if spec.since < 9 and spec.attrs.pop("spatial", 1) != 1:
        raise UnsupportedOpError(f"node {spec.name!r} (BatchNormalization, opset {spec.since}): "
                                 "spatial=0 (per-activation statistics) is not supported")
    spec.attrs.pop("is_test", None)
    if spec.since < 14 and spec.num_outputs > 3:
        raise UnsupportedOpError(f"node {spec.name!r} (BatchNormalization, opset {spec.since}): "
                                 f"{spec.num_outputs} outputs (training mode with saved mean and variance) "
                                 "is not supported; export the model in inference mode")
    if spec.since < 14 and spec.num_outputs > 1:
        spec.attrs["training_mode"] = 1


@_rule("Concat")
def _concat(spec: NodeSpec, g: Graph) -> None:
    spec.attrs.setdefault("axis", 1)


@_rule("QuantizeLinear")
def _quantize_linear(spec: NodeSpec, g: Graph) -> None:
    # int4 zero points look like int8 arrays to the op, so the result type must be spelled out
    zp = spec.inputs[2] if len(spec.inputs) > 2 else None
    if zp is not None and zp.type.dtype in (DType.i4, DType.u4) and not spec.attrs.get("output_dtype"):
        spec.attrs["output_dtype"] = ONNX_CODE_OF_DTYPE[zp.type.dtype]


@_rule("LSTM", "GRU", "RNN")
def _lstm(spec: NodeSpec, g: Graph) -> None:
    spec.attrs.pop("output_sequence", None)


@_rule("Gemm", "Add", "Sub", "Mul", "Div", "Pow")
def _broadcast_attr(spec: NodeSpec, g: Graph) -> None:
    spec.attrs.pop("broadcast", None)


@_rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax(spec: NodeSpec, g: Graph) -> None:
    if spec.since >= 13:
        return
    axis = spec.attrs.pop("axis", 1)
    x = spec.inputs[0]
    if x is None:
        raise UnsupportedOpError(f"node {spec.name!r} ({spec.op}, opset {spec.since}): its input is missing")
    rank = x.type.rank
    if rank is not None and axis % max(rank, 1) == rank - 1:
        spec.attrs["axis"] = -1
        return
    # opset < 13: softmax over the 2-D view [prod(dims[:axis]), prod(dims[axis:])]
    flat = g.add_node("Flatten", [x], {"axis": axis}, name=f"{spec.name}_flatten").output
    soft = g.add_node(spec.op, [flat], {"axis": 1}, name=f"{spec.name}_2d").output
    dims = x.type.shape
    if dims is not None and sum(not isinstance(d, int) for d in dims) <= 1 and 0 not in dims:
        # a constant shape (-1 for the one unknown dim) lets Reshape's type rule give the result shape
        shape = g.add_constant(_ints(d if isinstance(d, int) else -1 for d in dims), f"{spec.name}_shape")
    else:
        shape = g.add_node("Shape", [x], name=f"{spec.name}_shape").output
    spec.op, spec.attrs, spec.inputs = "Reshape", {}, [soft, shape]


@_rule("GroupNormalization")
def _group_norm(spec: NodeSpec, g: Graph) -> None:
    if spec.since >= 21:
        return
    # opset 18: scale and bias per group; opset 21: per channel (each group's value repeated)
    x = spec.inputs[0]
    channels = x.type.shape[1] if x is not None and x.type.shape is not None and len(x.type.shape) > 1 else None
    groups = spec.attrs.get("num_groups")
    for index in (1, 2):
        v = spec.inputs[index]
        if v is None or v.const is None or not isinstance(channels, int) or not groups or channels % groups:
            raise UnsupportedOpError(f"node {spec.name!r} (GroupNormalization, opset {spec.since}): per-group "
                                     "scale and bias need constant values and a known channel count")
        spec.inputs[index] = g.add_constant(np.repeat(v.const, channels // groups), f"{spec.name}_{index}")


@_rule("Upsample")
def _upsample(spec: NodeSpec, g: Graph) -> None:
    # opsets 7-9; opset 7 gives the scales as an attribute. Resize of opset 11+ with those scales
    # and the asymmetric transform (Upsample's: x_in = x_out / scale) means the same.
    scales = spec.attrs.pop("scales", None)
    if scales is not None:
        _operand(spec, g, 1, np.asarray(scales, np.float32))
    mode = spec.attrs.pop("mode", "nearest")
    spec.op = "Resize"
    spec.inputs = [spec.inputs[0], None, spec.inputs[1]]
    spec.attrs = {"mode": "linear" if mode in ("linear", "bilinear") else mode,
                  "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}


@_rule("Resize")
def _resize(spec: NodeSpec, g: Graph) -> None:
    if spec.since < 11:  # opset 10: (X, scales), Upsample's asymmetric transform
        spec.inputs = [spec.inputs[0], None, spec.inputs[1]]
        spec.attrs.setdefault("coordinate_transformation_mode", "asymmetric")
        spec.attrs.setdefault("nearest_mode", "floor")


@_rule("DFT")
def _dft(spec: NodeSpec, g: Graph) -> None:
    if spec.since < 20:  # opset 17: axis an attribute, default 1
        _operand(spec, g, 2, np.asarray(spec.attrs.pop("axis", 1), np.int64))


@_rule("Scatter")
def _scatter(spec: NodeSpec, g: Graph) -> None:
    spec.op = "ScatterElements"


def upgrade(spec: NodeSpec, g: Graph) -> NodeSpec:
    """Bring ``spec`` into the newest form of its op (in place, also returned)."""
    for attr in _DROPPED_EVERYWHERE:
        spec.attrs.pop(attr, None)
    rule = _RULES.get(spec.op)
    if rule is not None:
        rule(spec, g)
    return spec
