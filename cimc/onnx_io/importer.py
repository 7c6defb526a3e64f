"""The ONNX importer: the only code in cimc that reads ONNX models.

It reads a ``ModelProto`` (opsets 7 to the newest the installed onnx knows) into a ``Graph``:
initializers become constants (also when old exporters list them as graph inputs too),
``Constant`` nodes become constants, external data files are read relative to the model file,
symbolic dims keep their names, and each node is brought into the newest form of its op
(``cimc.onnx_io.upgrade``). Every op the model uses that cimc does not have is reported at once,
naming the op, its nodes and the opset.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cimc.errors import InputError, UnsupportedOpError, VerifyError
from cimc.ir.core import Graph, Value
from cimc.ir.opdef import lookup
from cimc.ir.types import TensorType, dtype_from_onnx_code
from cimc.onnx_io.upgrade import NodeSpec, upgrade

__all__ = ["MIN_OPSET", "import_model", "load_model", "read_model"]

MIN_OPSET = 7
"""The oldest default-domain opset cimc reads (convert older models with onnx.version_converter)."""

_DOMAINS = ("", "ai.onnx")


def read_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX file (and its external data), with a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as e:  # protobuf raises DecodeError or RuntimeWarning-like errors
        raise InputError(f"{path}: not an ONNX model (the protobuf does not decode: {e})") from None
    if not model.HasField("graph") or model.ir_version <= 0 or not model.opset_import:
        raise InputError(f"{path}: not an ONNX model (it has no graph, IR version or opset; "
                         "is the file truncated or of another format?)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "validation failed"
        raise InputError(f"{path}: not a valid ONNX model (truncated or corrupt?): {first}") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: cannot read its external data: {e}") from None
    return model


def load_model(path: str | os.PathLike[str]) -> Graph:
    """Read an ONNX file into a Graph."""
    return import_model(read_model(path))


def import_model(model: onnx.ModelProto) -> Graph:
    """Turn an ONNX model into a Graph of cimc ops (newest op forms)."""
    opset = _default_opset(model)
    g = Graph(model.graph.name or "main")
    g.metadata.update({"onnx.opset": str(opset)})
    if model.producer_name:
        g.metadata["onnx.producer"] = f"{model.producer_name} {model.producer_version}".strip()
    _check_supported(model.graph.node, opset)

    env: dict[str, Value] = {}
    for init in model.graph.initializer:
        env[init.name] = g.add_constant(_to_array(init), init.name)
    for sparse in model.graph.sparse_initializer:
        name = sparse.values.name
        env[name] = g.add_constant(numpy_helper.to_array(sparse), name)
    for vi in model.graph.input:
        if vi.name not in env:
            env[vi.name] = g.add_input(vi.name, _value_type(vi, where=f"graph input {vi.name!r}"))

    for index, proto in enumerate(_sorted_nodes(model.graph, set(env))):
        name = proto.name or f"{proto.op_type}_{index}"
        if proto.op_type == "Constant":
            env[proto.output[0]] = g.add_constant(_constant_value(proto), proto.output[0])
            continue
        since = onnx.defs.get_schema(proto.op_type, opset, proto.domain).since_version
        where = f"node {name!r} ({proto.op_type}, opset {opset})"
        try:
            inputs = [env[i] if i else None for i in proto.input]
        except KeyError as e:
            raise InputError(f"{where}: reads {e.args[0]!r}, which nothing defines") from None
        while inputs and inputs[-1] is None:
            inputs.pop()
        spec = upgrade(NodeSpec(proto.op_type, since, _attributes(proto, where), inputs, name,
                                len(proto.output)), g)
        opdef = lookup(spec.op)
        bad = [k for k in spec.attrs if opdef is not None and k not in opdef.attrs]
        if bad:
            raise UnsupportedOpError(f"{where}: attribute {bad[0]!r} is not supported")
        try:
            node = g.add_node(spec.op, spec.inputs, spec.attrs, outputs=spec.num_outputs,
                              output_names=[o or f"{name}_unused_{i}" for i, o in enumerate(proto.output)],
                              name=name)
        except VerifyError as e:
            raise InputError(f"{where}: {e}") from None
        for out, value in zip(proto.output, node.outputs, strict=True):
            if out:
                env[out] = value
    missing = [o.name for o in model.graph.output if o.name not in env]
    if missing:
        raise InputError(f"graph outputs {missing} are not produced by any node")
    g.outputs = [env[o.name] for o in model.graph.output]
    for o in model.graph.output:  # the declared output names are the public contract
        v = env[o.name]
        if v.name != o.name:
            g.rename_value(v, o.name)
    return g


def _default_opset(model: onnx.ModelProto) -> int:
    opsets = {o.domain: o.version for o in model.opset_import}
    version = next((opsets[d] for d in _DOMAINS if d in opsets), None)
    if version is None:
        raise InputError("the model imports no default-domain (ai.onnx) opset")
    newest = onnx.defs.onnx_opset_version()
    if version < MIN_OPSET:
        raise InputError(f"the model uses opset {version}; cimc reads opsets {MIN_OPSET} to {newest} "
                         f"(convert it with onnx.version_converter.convert_version(model, {MIN_OPSET}))")
    if version > newest:
        raise InputError(f"the model uses opset {version}, newer than the installed onnx knows ({newest})")
    return version


def _check_supported(nodes: Iterable[onnx.NodeProto], opset: int) -> None:
    unsupported: dict[tuple[str, str], list[str]] = {}
    for i, n in enumerate(nodes):
        ok = n.domain in _DOMAINS and (n.op_type == "Constant" or lookup(n.op_type) is not None)
        if not ok:
            unsupported.setdefault((n.domain, n.op_type), []).append(n.name or f"{n.op_type}_{i}")
    if not unsupported:
        return
    parts = []
    for (domain, op), names in unsupported.items():
        shown = ", ".join(repr(x) for x in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        where = f"domain {domain!r}" if domain not in _DOMAINS else f"opset {opset}"
        parts.append(f"{op} ({where}; node{'s' if len(names) > 1 else ''} {shown})")
    raise UnsupportedOpError(f"the model uses {len(parts)} unsupported op{'s' if len(parts) > 1 else ''}: "
                             + "; ".join(parts))


def _sorted_nodes(graph: onnx.GraphProto, known: set[str]) -> list[onnx.NodeProto]:
    """The nodes in an order where each reads only names defined before it (ONNX requires it,
    some exporters break it)."""
    defined, order, pending = set(known), [], list(graph.node)
    while pending:
        rest = []
        for n in pending:
            if all(not i or i in defined for i in n.input):
                order.append(n)
                defined.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            return order + rest  # a read of an undefined name; reported where it happens
        pending = rest
    return order


def _value_type(vi: onnx.ValueInfoProto, where: str) -> TensorType:
    t = vi.type
    if not t.HasField("tensor_type"):
        raise UnsupportedOpError(f"{where}: only tensor inputs are supported, not {t.WhichOneof('value')}")
    tt = t.tensor_type
    dtype = dtype_from_onnx_code(tt.elem_type, where)
    if not tt.HasField("shape"):
        return TensorType(dtype, None)
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
    return TensorType(dtype, dims)


def _to_array(tensor: onnx.TensorProto) -> np.ndarray:
    array = numpy_helper.to_array(tensor)
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        array = array.astype(np.int8 if tensor.data_type == onnx.TensorProto.INT4 else np.uint8)
    return array


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    value = helper.get_attribute_value(attr)
    if attr.name == "value":
        return _to_array(value)
    if attr.name == "sparse_value":
        return numpy_helper.to_array(value)
    if attr.name in ("value_float", "value_floats"):
        return np.asarray(value, dtype=np.float32)
    if attr.name in ("value_int", "value_ints"):
        return np.asarray(value, dtype=np.int64)
    if attr.name in ("value_string", "value_strings"):
        if isinstance(value, list):
            return np.asarray([v.decode() for v in value], dtype=object)
        return np.asarray(value.decode(), dtype=object)
    raise UnsupportedOpError(f"Constant node {node.name!r}: attribute {attr.name!r} is not supported")


def _attributes(node: onnx.NodeProto, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in node.attribute:
        if attr.ref_attr_name:
            raise UnsupportedOpError(f"{where}: attribute {attr.name!r} refers to a function attribute")
        value = helper.get_attribute_value(attr)
        if attr.type == onnx.AttributeProto.TENSOR:
            value = _to_array(value)
        elif attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise UnsupportedOpError(f"{where}: subgraph attribute {attr.name!r} (control flow) is not supported")
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list):
            value = tuple(v.decode() if isinstance(v, bytes) else v for v in value)
        elif attr.type not in (onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT, onnx.AttributeProto.STRING):
            raise UnsupportedOpError(f"{where}: attribute {attr.name!r} has an unsupported kind")
        if isinstance(value, float):
            value = float(np.float32(value))
        out[attr.name] = value
    return out

