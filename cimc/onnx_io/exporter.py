"""The ONNX exporter: writes a Graph of built-in (ONNX-named) ops back as an ONNX model.

Constants become initializers, every value keeps its name and type (symbolic dims as
``dim_param``, unknown dims left empty), node names and graph metadata (as ``metadata_props``)
are kept. Built-in ops are in the form of the newest ONNX schema; at the export opset each node is
checked against the schema in effect there: an attribute that schema lacks is dropped when it
holds its default and is an error otherwise, as are more operands than the schema takes. Absent
optional operands and unread placeholder results (``<node>_unused_<i>``) become ``""``.
A quantized graph (``q.*`` ops) is written as QDQ ONNX (:func:`cimc.onnx_io.qdq.to_qdq_graph`), which
onnxruntime runs as integer kernels; other cimc ops (dotted names such as target instructions) have
no ONNX form and are an error. A graph
input or output of unknown rank is written without a shape: onnxruntime runs it, the ONNX checker
rejects it (it requires a shape on graph inputs and outputs).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cimc import __version__
from cimc.errors import CimcError, UnsupportedOpError
from cimc.fileio import write_atomic
from cimc.ir.core import Graph, Node, Value
from cimc.ir.opdef import lookup
from cimc.ir.types import DType, TensorType
from cimc.onnx_io.dtypes import ONNX_FROM_DTYPE

__all__ = ["EXPORT_OPSET", "MIN_EXPORT_OPSET", "export_model", "save_model"]

EXPORT_OPSET = 27
"""The default export opset: the newest for which onnxruntime 1.32 has a kernel for every cimc
built-in op (at 28 it has none for QuantizeLinear/DequantizeLinear 28; 25 to 27 differ from 28
only there, so the export loses nothing)."""

MIN_EXPORT_OPSET = 13
"""The oldest opset exported to: Softmax changed meaning at 13 with no change of form, and the
newest forms of Squeeze/Unsqueeze/ReduceSum/Split take their axes as operands since 13."""

_EXTERNAL_DATA_BYTES = 1_800_000_000
"""Constants beyond this many bytes go to an external data file (a protobuf is capped at 2 GB)."""

_DROPPABLE = {("Split", "num_outputs")}
"""Attributes an older schema states through the node's result count instead."""


def export_model(graph: Graph, *, opset: int | None = None) -> onnx.ModelProto:
    """The ONNX model of ``graph`` at ``opset`` (default :data:`EXPORT_OPSET`)."""
    opset = EXPORT_OPSET if opset is None else int(opset)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_EXPORT_OPSET <= opset <= newest:
        raise CimcError(f"cannot export to opset {opset}: cimc exports opsets {MIN_EXPORT_OPSET} to {newest}")
    if any(n.op.startswith("q.") for n in graph.nodes):
        from cimc.onnx_io.qdq import to_qdq_graph

        graph = to_qdq_graph(graph)
    _check_ops(graph)
    outputs = {id(v) for v in graph.outputs}
    nodes = [_node(n, opset, outputs) for n in graph.nodes]
    written = {o for n in nodes for o in n.output if o}
    value_info = [_value_info(v) for n in graph.nodes for v in n.outputs
                  if v.name in written and id(v) not in outputs]
    g = helper.make_graph(nodes, graph.name, [_value_info(v) for v in graph.inputs],
                          [_value_info(v) for v in graph.outputs], value_info=value_info)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(g, opset_imports=opsets, producer_name="cimc", producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    for v in graph.constants.values():  # filled in place: protobuf copies of big tensors are slow
        _fill_tensor(model.graph.initializer.add(), v)
    if graph.metadata:
        helper.set_model_props(model, {str(k): str(v) for k, v in graph.metadata.items()})
    return model


def save_model(graph: Graph, path: str | os.PathLike[str], *, opset: int | None = None) -> None:
    """Export ``graph`` and write it to ``path`` atomically (:func:`cimc.fileio.write_atomic`);
    when the constants pass ~1.8 GB, those of 1 KiB or more go to ``<name>.data`` beside it."""
    path = Path(path)
    model = export_model(graph, opset=opset)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sum(v.array.nbytes for v in graph.constants.values()) > _EXTERNAL_DATA_BYTES:
        chunks = _externalize(model, f"{path.name}.data")
        write_atomic(path.parent / f"{path.name}.data", lambda f: [f.write(c) for c in chunks])
    write_atomic(path, lambda f: f.write(model.SerializeToString()))


def _externalize(model: onnx.ModelProto, location: str) -> list[bytes]:
    """Move the raw data of initializers of 1 KiB or more out of ``model`` into ``location`` (one
    file, tensors back to back); returns the chunks in file order."""
    from onnx.external_data_helper import set_external_data

    chunks, offset = [], 0
    for t in model.graph.initializer:
        if t.HasField("raw_data") and len(t.raw_data) >= 1024:
            data = t.raw_data
            set_external_data(t, location, offset, len(data))
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            chunks.append(data)
            offset += len(data)
    return chunks


def _check_ops(graph: Graph) -> None:
    bad: dict[str, list[str]] = {}
    for n in graph.nodes:
        if "." in n.op or not onnx.defs.has(n.op):
            bad.setdefault(n.op, []).append(n.name)
    if bad:
        parts = [f"{op} (node{'s' if len(names) > 1 else ''} "
                 + ", ".join(repr(x) for x in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                 + ")" for op, names in bad.items()]
        raise UnsupportedOpError("cannot export to ONNX: " + "; ".join(parts) + " " +
                                 ("are" if len(parts) > 1 else "is") + " not an ONNX op (ops with a dotted "
                                 "name are cimc's own; export the graph before the passes that introduce them)")


def _node(node: Node, opset: int, outputs: set[int]) -> onnx.NodeProto:
    where = f"node {node.name!r} ({node.op})"
    try:
        schema = onnx.defs.get_schema(node.op, opset, "")
    except onnx.defs.SchemaError:
        first = _first_opset(node.op, opset, lambda s: True)
        raise CimcError(f"{where}: the op first exists in ONNX opset {first}; "
                        f"export with opset >= {first}, not {opset}") from None
    inputs = list(node.inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    if len(inputs) > schema.max_input:
        first = _first_opset(node.op, opset, lambda s: s.max_input >= len(inputs))
        raise CimcError(f"{where}: has {len(inputs)} operands but {node.op} at opset {opset} takes at most "
                        f"{schema.max_input}; export with opset >= {first}")
    names = [v.name if v is not None else "" for v in inputs]
    outs = [_output_name(node, i, v, schema, outputs) for i, v in enumerate(node.outputs)]
    proto = helper.make_node(node.op, names, outs, name=node.name)
    proto.attribute.extend(_attributes(node, schema, opset, where))
    return proto


def _has_attribute(key: str, schema: Any) -> bool:
    """Whether an op schema declares attribute ``key``."""
    return key in schema.attributes


def _first_opset(op: str, after: int, ok: Callable[[Any], bool]) -> int:
    """The first opset after ``after`` whose schema of ``op`` satisfies ``ok``."""
    for version in range(after + 1, onnx.defs.onnx_opset_version() + 1):
        try:
            if ok(onnx.defs.get_schema(op, version, "")):
                return version
        except onnx.defs.SchemaError:
            continue
    return onnx.defs.onnx_opset_version()


def _output_name(node: Node, index: int, v: Value, schema: Any, outputs: set[int]) -> str:
    placeholder = v.name == f"{node.name}_unused_{index}" and not v.uses and id(v) not in outputs
    formal = schema.outputs[min(index, len(schema.outputs) - 1)] if schema.outputs else None
    optional = formal is not None and formal.option == onnx.defs.OpSchema.FormalParameterOption.Optional
    return "" if placeholder and optional else v.name


def _attributes(node: Node, schema: Any, opset: int, where: str) -> list[onnx.AttributeProto]:
    out = []
    opdef = lookup(node.op)
    for key, value in node.attrs.items():
        if value is None:
            continue
        if isinstance(value, Graph):
            raise CimcError(f"{where}: subgraph attribute {key!r} cannot be exported")
        spec = schema.attributes.get(key)
        if spec is None:
            default = opdef.attrs[key].default if opdef is not None and key in opdef.attrs else None
            if _same(value, default) or ((node.op, key) in _DROPPABLE and value == len(node.outputs)):
                continue
            first = _first_opset(node.op, opset, functools.partial(_has_attribute, key))
            raise CimcError(f"{where}: attribute {key}={value!r} does not exist in {node.op} at opset {opset} "
                            f"and is not at its default {default!r}; export with opset >= {first}")
        out.append(_attribute(key, value, spec.type, where))
    return out


def _attribute(key: str, value: Any, kind: onnx.AttributeProto.AttributeType, where: str) -> onnx.AttributeProto:
    A = onnx.AttributeProto
    if isinstance(value, np.ndarray):
        value = numpy_helper.from_array(_storage(value, DType.from_numpy(value.dtype)))
    elif kind == A.FLOAT:
        value = float(value)
    elif kind == A.INT:
        value = int(value)
    elif kind == A.FLOATS:
        value = [float(x) for x in value]
    elif kind == A.INTS:
        value = [int(x) for x in value]
    elif kind == A.TENSOR and not isinstance(value, onnx.TensorProto):
        value = numpy_helper.from_array(np.asarray(value))
    try:
        return helper.make_attribute(key, value, attr_type=kind if kind != A.UNDEFINED else None)
    except (TypeError, ValueError) as e:
        raise CimcError(f"{where}: attribute {key}={value!r} cannot be written to ONNX: {e}") from None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return tuple(a) == tuple(b)
    return a == b


def _storage(array: np.ndarray, dtype: DType) -> np.ndarray:
    """``array`` in the numpy type onnx writes as ``dtype`` (int4 needs ml_dtypes' packed types)."""
    if dtype in (DType.i4, DType.u4):
        import ml_dtypes

        return np.asarray(array).astype(ml_dtypes.int4 if dtype is DType.i4 else ml_dtypes.uint4)
    return np.asarray(array, dtype=dtype.numpy)


def _fill_tensor(t: onnx.TensorProto, v: Value) -> None:
    array, dtype = v.array, v.type.dtype
    if dtype in (DType.str, DType.i4, DType.u4):  # strings and packed nibbles: onnx's own writer
        t.CopyFrom(numpy_helper.from_array(_storage(array, dtype), v.name))
        return
    array = _storage(array, dtype)
    t.name, t.data_type = v.name, _elem_type(v.type, v.name)
    t.dims.extend(array.shape)
    t.raw_data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _value_info(v: Value) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(v.name, _elem_type(v.type, v.name), _dims(v.type))


def _elem_type(t: TensorType, name: str) -> int:
    try:
        return ONNX_FROM_DTYPE[t.dtype]
    except KeyError:
        raise CimcError(f"value {name!r}: element type {t.dtype.value} has no ONNX type") from None


def _dims(t: TensorType) -> list[int | str | None] | None:
    return None if t.shape is None else list(t.shape)
