"""The IR: SSA graphs of ops over typed values (no dependency on onnx, lark or networkx)."""

from cimc.ir.core import AttrValue, Graph, Node, Value, topological_order
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, OpContext, OpDef, define_op, lookup
from cimc.ir.types import DType, QuantParams, TensorType
from cimc.ir.verifier import verify

__all__ = [
    "REQUIRED",
    "AttrSpec",
    "AttrValue",
    "DType",
    "Graph",
    "InferContext",
    "Node",
    "OpContext",
    "OpDef",
    "QuantParams",
    "TensorType",
    "Value",
    "define_op",
    "lookup",
    "topological_order",
    "verify",
]
