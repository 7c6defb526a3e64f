"""The ONNX importer: the only code in cimc that reads ONNX models.

It reads a ``ModelProto`` (opsets 7 to the newest the installed onnx knows) into a ``Graph``:
initializers become constants (also when old exporters list them as graph inputs too),
``Constant`` nodes become constants, external data files are read relative to the model file,
symbolic dims keep their names, and each node is brought into the newest form of its op
(``cimc.onnx_io.upgrade``). Besides the default domain it reads onnxruntime's quantized
``com.microsoft`` ops (``MS_OPS``: ``QGemm``, ``QLinearAdd``, ... as written by its quantizer in
QOperator format; :mod:`cimc.ops.qoperator`) under their own names, and that domain's
``QuantizeLinear``/``DequantizeLinear`` as the default ones. Every op the model uses that cimc does
not have is reported at once, naming the op, its nodes and the opset.

Where checks live: what onnxruntime checks when it loads a model (operand element types against
each op's type constraints, declared output element types, each op's attribute rules such as Conv
``strides`` > 0) and the containment of external data are :mod:`cimc.onnx_io.checks`, run here
before any graph is built; cimc's own rules for an op (attribute kinds and ranges, what its type
rule needs) are its definition in ``cimc.ops``, checked by the verifier on the imported graph. So an
op added to ``cimc.ops`` is checked both ways without touching the importer.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cimc.errors import InputError, UnsupportedOpError, VerifyError
from cimc.fileio import read_bytes
from cimc.ir.core import Graph, Value
from cimc.ir.opdef import lookup
from cimc.ir.types import TensorType, dtype_from_onnx_code
from cimc.ir.verifier import verify
from cimc.onnx_io import control_flow
from cimc.onnx_io.checks import check_dims, check_outputs, check_text, check_types, load_external_data
from cimc.onnx_io.coverage import op_status
from cimc.onnx_io.upgrade import NodeSpec, upgrade
from cimc.ops.qoperator import MS_OPS

__all__ = ["MIN_OPSET", "MS_DOMAIN", "import_model", "load_model", "read_model"]

MIN_OPSET = 7
"""The oldest default-domain opset cimc reads (convert older models with onnx.version_converter)."""

MS_DOMAIN = "com.microsoft"
"""onnxruntime's contrib domain, whose quantized ops (``cimc.ops.qoperator.MS_OPS``) cimc reads."""

_DOMAINS = ("", "ai.onnx")
_MS_AS_DEFAULT = frozenset({"QuantizeLinear", "DequantizeLinear"})  # the contrib forms of these mean the same


def read_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX file (and its external data, :func:`cimc.onnx_io.checks.load_external_data`),
    with a clear error if it is not one."""
    path = Path(path)
    data = read_bytes(path)
    try:
        model = onnx.ModelProto.FromString(data)
    except Exception as e:  # protobuf raises DecodeError or RuntimeWarning-like errors
        raise InputError(f"{path}: not an ONNX model (the protobuf does not decode: {e})") from None
    if not model.HasField("graph") or model.ir_version <= 0 or not model.opset_import:
        raise InputError(f"{path}: not an ONNX model (it has no graph, IR version or opset; "
                         "is the file truncated or of another format?)")
    check_text(model, str(path))  # before the checker, which fails on text that is not UTF-8
    load_external_data(model, path.parent, str(path))  # before the checker, which would look in the cwd
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        text = " ".join(str(e).split()) or "validation failed"
        raise InputError(f"{path}: not a valid ONNX model (onnx.checker: "
                         f"{text if len(text) <= 300 else text[:297] + '...'})") from None
    return model


def load_model(path: str | os.PathLike[str]) -> Graph:
    """Read an ONNX file into a Graph."""
    return import_model(read_model(path), source=str(path))


def import_model(model: onnx.ModelProto, *, source: str = "the model") -> Graph:
    """Turn an ONNX model into a verified Graph of cimc ops (newest op forms); ``source`` names the
    model in messages."""
    try:
        opset = _default_opset(model)
    except InputError:  # a model of custom-domain ops only: name them first
        _check_supported(model.graph.node, None)
        raise
    g = Graph(model.graph.name or "main")
    g.metadata.update({p.key: p.value for p in model.metadata_props})  # as the exporter writes them
    g.metadata["onnx.opset"] = str(opset)
    if model.producer_name:
        g.metadata["onnx.producer"] = f"{model.producer_name} {model.producer_version}".strip()
    _check_supported(model.graph.node, opset)
    if not model.graph.output:
        raise InputError(f"{source}: the graph has no outputs (ONNX requires at least one)")
    check_dims(model, source)

    env: dict[str, Value] = {}
    for init in model.graph.initializer:
        env[init.name] = _add_tensor(g, init, init.name, f"initializer {init.name!r}")
    for sparse in model.graph.sparse_initializer:
        name = sparse.values.name
        env[name] = g.add_constant(_sparse_to_array(sparse, f"sparse initializer {name!r}"), name)
    for vi in model.graph.input:
        if vi.name not in env:
            env[vi.name] = g.add_input(vi.name, _value_type(vi, where=f"graph input {vi.name!r}"))

    known = set(env)
    import_nodes(g, model.graph, env, opset)
    missing = [o.name for o in model.graph.output if o.name not in env]
    if missing:
        raise InputError(f"graph outputs {missing} are not produced by any node")
    g.outputs = [env[o.name] for o in model.graph.output]
    for o in model.graph.output:  # the declared output names are the public contract
        v = env[o.name]
        if v.name != o.name:
            holder = next((x for x in g.values() if x.name == o.name), None)
            if holder is not None:  # a value the importer made (an upgrade's constant) took the name
                g.rename_value(holder, f"{o.name}_")
            g.rename_value(v, o.name)
    check_types(model, source, [n for _, n in _sorted_nodes(model.graph, known)])
    check_outputs(model, g, source)
    try:
        verify(g)
    except VerifyError as e:
        raise InputError(f"{source}: {e}") from None
    return g


def import_nodes(g: Graph, graph: onnx.GraphProto, env: dict[str, Value], opset: int, prefix: str = "") -> None:
    """Add the nodes of ``graph`` (the model's, or a control-flow body being inlined, whose node names
    get ``prefix``) to ``g``, reading and defining values by ONNX name in ``env``."""
    for index, proto in _sorted_nodes(graph, set(env)):
        name = prefix + (proto.name or f"{proto.op_type}_{index}")
        where = f"node {name!r} ({proto.op_type}, opset {opset})"
        if proto.op_type == "Constant":
            env[proto.output[0]] = _add_constant_node(g, proto, where)
            continue
        if proto.domain != MS_DOMAIN:
            since = _since_version(proto.op_type, opset, where)
        elif proto.op_type in _MS_AS_DEFAULT:
            since = _since_version(proto.op_type, max(opset, 13), where)  # the contrib forms take an axis
        else:
            since = 1
        try:
            inputs = [env[i] if i else None for i in proto.input]
        except KeyError as e:
            raise InputError(f"{where}: reads {e.args[0]!r}, which nothing defines") from None
        if proto.op_type in control_flow.OPS:
            body = functools.partial(_import_body, g, opset=opset)
            outputs = control_flow.expand(g, proto, since, inputs, env, body, name,
                                          f"{proto.op_type} (opset {opset}; node {name!r})")
            env.update({o: v for o, v in zip(proto.output, outputs, strict=False) if o})
            continue
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


def _import_body(g: Graph, body: onnx.GraphProto, bound: dict[str, Value], outer: dict[str, Value], prefix: str,
                 *, opset: int) -> list[Value]:
    """Inline one run of a control-flow body: its formal inputs bound to ``bound``, outer-scope names
    from ``outer``; the values of its outputs."""
    env = dict(outer)
    env.update(bound)
    for init in body.initializer:
        env[init.name] = _add_tensor(g, init, prefix + init.name, f"initializer {init.name!r}")
    import_nodes(g, body, env, opset, prefix)
    missing = [o.name for o in body.output if o.name not in env]
    if missing:
        raise InputError(f"body graph {body.name!r}: outputs {missing} are not produced by any node")
    return [env[o.name] for o in body.output]


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


def _all_nodes(nodes: Iterable[onnx.NodeProto]) -> Iterable[onnx.NodeProto]:
    """``nodes`` and, depth first, the nodes of their subgraphs (control-flow bodies)."""
    for n in nodes:
        yield n
        for attr in n.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                        attr.graphs if attr.type == onnx.AttributeProto.GRAPHS else []):
                yield from _all_nodes(sub.node)


def _check_supported(nodes: Iterable[onnx.NodeProto], opset: int | None) -> None:
    unsupported: dict[tuple[str, str], list[str]] = {}
    for i, n in enumerate(_all_nodes(nodes)):
        ok = (n.domain in _DOMAINS and op_status(n.op_type).supported) or (
            n.domain == MS_DOMAIN and (n.op_type in MS_OPS or n.op_type in _MS_AS_DEFAULT))
        if not ok:
            unsupported.setdefault((n.domain, n.op_type), []).append(n.name or f"{n.op_type}_{i}")
    if not unsupported:
        return
    parts = []
    for (domain, op), names in unsupported.items():
        shown = ", ".join(repr(x) for x in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        where = f"domain {domain!r}" if domain not in _DOMAINS else f"opset {opset}"
        why = "an op of a custom domain" if domain not in _DOMAINS else op_status(op).note
        parts.append(f"{op} ({where}; node{'s' if len(names) > 1 else ''} {shown}): {why}")
    raise UnsupportedOpError(f"the model uses {len(parts)} unsupported op{'s' if len(parts) > 1 else ''}: "
                             + "; ".join(parts))


@functools.cache
def _schema_since(op: str, opset: int) -> int | None:
    try:
        return onnx.defs.get_schema(op, opset, "").since_version
    except onnx.defs.SchemaError:
        return None


def _since_version(op: str, opset: int, where: str) -> int:
    if (since := _schema_since(op, opset)) is not None:
        return since
    first = [s.since_version for s in onnx.defs.get_all_schemas_with_history() if s.name == op and s.domain == ""]
    why = f"it was added in opset {min(first)}" if first else "ONNX has no such op"
    raise InputError(f"{where}: {op} does not exist in opset {opset} ({why}); the model is invalid "
                     "(check it with onnx.checker.check_model)")


def _sorted_nodes(graph: onnx.GraphProto, known: set[str]) -> list[tuple[int, onnx.NodeProto]]:
    """The nodes (with their positions in the file) in an order where each reads only names
    defined before it (ONNX requires it, some exporters break it)."""
    defined, order, pending = set(known), [], list(enumerate(graph.node))
    while pending:
        rest = []
        for i, n in pending:
            if all(not x or x in defined for x in n.input):
                order.append((i, n))
                defined.update(n.output)
            else:
                rest.append((i, n))
        if len(rest) == len(pending):
            return order + rest  # a read of an undefined name; reported where it happens
        pending = rest
    return order


def _value_type(vi: onnx.ValueInfoProto, where: str) -> TensorType:
    t = vi.type
    if t.WhichOneof("value") is None:
        raise InputError(f"{where}: has no type (ONNX requires graph inputs to declare one)")
    if not t.HasField("tensor_type"):
        raise UnsupportedOpError(f"{where}: only tensor inputs are supported, not {t.WhichOneof('value')}")
    tt = t.tensor_type
    dtype = dtype_from_onnx_code(tt.elem_type, where)
    if not tt.HasField("shape"):
        return TensorType(dtype, None)
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
    return TensorType(dtype, dims)


def _to_array(tensor: onnx.TensorProto, where: str) -> np.ndarray:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
        raise InputError(f"{where}: its data is in the external file {location!r}, which was not read "
                         "(load the model from its file: cimc.onnx_io.load_model(path))")
    dtype_from_onnx_code(tensor.data_type, where)  # names an element type cimc does not have
    try:
        array = numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as e:
        raise InputError(f"{where}: the tensor data does not decode (truncated or corrupt?): {e}") from None
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        array = array.astype(np.int8 if tensor.data_type == onnx.TensorProto.INT4 else np.uint8)
    return array


def _sparse_to_array(sparse: onnx.SparseTensorProto, where: str) -> np.ndarray:
    values, indices = _to_array(sparse.values, where), _to_array(sparse.indices, where).astype(np.int64)
    dense = np.zeros(tuple(sparse.dims), values.dtype)
    try:
        if indices.ndim == 2:  # one row of coordinates per value
            dense[tuple(indices.T)] = values
        else:  # linear indices into the flattened tensor
            dense.reshape(-1)[indices] = values
    except (IndexError, ValueError) as e:
        raise InputError(f"{where}: indices do not fit dims {list(sparse.dims)}: {e}") from None
    return dense


def _add_tensor(g: Graph, tensor: onnx.TensorProto, name: str, where: str) -> Value:
    """Add a tensor as a constant typed by its ONNX element type (which 4-bit values, held in 8-bit
    arrays, need; for the others it is the array's type, known without asking numpy)."""
    array = _to_array(tensor, where)
    return g.add_constant(array, name, TensorType(dtype_from_onnx_code(tensor.data_type), array.shape))


def _add_constant_node(g: Graph, node: onnx.NodeProto, where: str) -> Value:
    if len(node.attribute) != 1:
        raise InputError(f"{where}: a Constant needs exactly one value attribute, it has "
                         f"{[a.name for a in node.attribute]}")
    attr, name = node.attribute[0], node.output[0]
    value = helper.get_attribute_value(attr)
    if attr.name == "value":
        return _add_tensor(g, value, name, where)
    if attr.name == "sparse_value":
        return g.add_constant(_sparse_to_array(value, where), name)
    if attr.name in ("value_float", "value_floats"):
        return g.add_constant(np.asarray(value, dtype=np.float32), name)
    if attr.name in ("value_int", "value_ints"):
        return g.add_constant(np.asarray(value, dtype=np.int64), name)
    if attr.name in ("value_string", "value_strings"):
        if isinstance(value, list):
            return g.add_constant(np.asarray([_text(v, where) for v in value], dtype=object), name)
        return g.add_constant(np.asarray(_text(value, where), dtype=object), name)
    raise UnsupportedOpError(f"{where}: attribute {attr.name!r} is not supported")


def _text(data: bytes, where: str) -> str:
    """An ONNX string (UTF-8 bytes) as text; an ``InputError`` at ``where`` if it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: the string {data[:40]!r} is not UTF-8 ({e.reason} at byte {e.start})") from None


def _attributes(node: onnx.NodeProto, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in node.attribute:
        if attr.ref_attr_name:
            raise UnsupportedOpError(f"{where}: attribute {attr.name!r} refers to a function attribute")
        value = helper.get_attribute_value(attr)
        if attr.type == onnx.AttributeProto.TENSOR:
            value = _to_array(value, f"{where}, attribute {attr.name!r}")
        elif attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise UnsupportedOpError(f"{where}: subgraph attribute {attr.name!r} (control flow) is not supported")
        elif isinstance(value, bytes):
            value = _text(value, f"{where}, attribute {attr.name!r}")
        elif isinstance(value, list):
            value = tuple(_text(v, f"{where}, attribute {attr.name!r}") if isinstance(v, bytes) else v for v in value)
        elif attr.type not in (onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT, onnx.AttributeProto.STRING):
            raise UnsupportedOpError(f"{where}: attribute {attr.name!r} has an unsupported kind")
        if isinstance(value, float):
            value = float(np.float32(value))
        out[attr.name] = value
    return out

