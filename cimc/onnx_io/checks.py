"""What the importer checks about an ONNX model before it builds a graph: what onnxruntime checks,
and that external data stays inside the model's folder.

- :func:`load_external_data` reads the external data of every tensor (initializers, sparse
  initializers, tensor attributes, in subgraphs too) itself, instead of leaving it to onnx: a
  ``location`` must be a relative path below the model's folder (no absolute path, no ``..``
  component, no symbolic link on the way, a regular file at the end, still inside the folder once
  resolved), ``offset`` and ``length`` must lie within the file, and the tensor must fit the size
  limit (:mod:`cimc.limits`). The data then becomes the tensor's ``raw_data``.
- :func:`check_types` runs ONNX's type inference with ``check_type`` as onnxruntime does when it
  loads a model: operand element types must satisfy each op's type constraints (Gemm of float32
  by float64 fails). Large initializers are given to it as typed inputs (their shapes and types,
  not their bytes). Strict shape inference is not used: it rejects valid models (function ops
  such as MeanVarianceNormalization) that onnxruntime runs.
- :func:`check_text`: every string field of the model (names, op types, domains, ...) is UTF-8, as
  protobuf requires (a Python parse leaves one that is not as bytes, and onnx's checker fails on it
  with an internal error).
- :func:`check_dims`: every dim a value declares is >= 0.
- :func:`check_outputs`: a graph output must not declare an element type other than the one the
  graph computes (onnxruntime refuses such a model).

The attribute rules onnxruntime enforces (Conv ``strides`` > 0, ``pads`` >= 0, ...) are ranges in
each op's definition (``AttrSpec``), checked with cimc's other rules for its ops by the verifier,
which runs on the imported graph.
"""

from __future__ import annotations

import functools
import math
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import onnx
from onnx import helper

from cimc.errors import InputError
from cimc.ir.core import Graph
from cimc.ir.types import ONNX_DTYPE_CODES
from cimc.limits import check_size

__all__ = ["check_dims", "check_outputs", "check_text", "check_types", "load_external_data"]

_INLINE_BYTES = 1024
"""Initializers up to this size stay initializers for inference (shape tensors and the like)."""


def _tensors(graph: onnx.GraphProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    """Every tensor of ``graph`` and its subgraphs, with where it sits."""
    for t in graph.initializer:
        yield t, f"initializer {t.name!r}"
    for s in graph.sparse_initializer:
        yield s.values, f"sparse initializer {s.values.name!r}"
        yield s.indices, f"sparse initializer {s.values.name!r} (indices)"
    for node in graph.node:
        for a in node.attribute:
            where = f"node {node.name or node.op_type!r} attribute {a.name!r}"
            if a.HasField("t"):
                yield a.t, where
            if a.HasField("sparse_tensor"):
                yield a.sparse_tensor.values, where
                yield a.sparse_tensor.indices, where
            for t in a.tensors:
                yield t, where
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)


def load_external_data(model: onnx.ModelProto, folder: str | os.PathLike[str], source: str) -> None:
    """Read every tensor's external data from files inside ``folder`` into the tensor (see the module
    docstring for the rules); ``source`` names the model in messages."""
    base = Path(os.path.abspath(folder))
    real_base = Path(os.path.realpath(base))
    for tensor, where in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        pre = f"{source}: {where}: external data"
        location = info.get("location", "")
        path = _contained(base, real_base, location, pre)
        size = path.stat().st_size
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else size - offset
        except ValueError:
            raise InputError(f"{pre}: offset {info.get('offset')!r} or length {info.get('length')!r} is not an "
                             f"integer") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise InputError(f"{pre}: bytes {offset}..{offset + length} of {location!r} are not within the file "
                             f"({size} bytes)")
        itemsize = _itemsize(tensor.data_type)
        if itemsize:
            check_size(f"{pre} ({location!r})", tensor.dims, itemsize)
            if length != math.prod(tensor.dims) * itemsize:
                raise InputError(f"{pre}: {length} bytes in {location!r}, but dims {list(tensor.dims)} need "
                                 f"{math.prod(tensor.dims) * itemsize}")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))  # a link swapped in since: refused
        with os.fdopen(fd, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise InputError(f"{pre}: {location!r} ended after {len(data)} of {length} bytes")
        tensor.raw_data = data
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT


def _contained(base: Path, real_base: Path, location: str, pre: str) -> Path:
    """``base / location`` if it is a regular file inside ``base`` reached without symbolic links."""
    if not location:
        raise InputError(f"{pre}: no location")
    shown = repr(location if len(location) <= 80 else location[:77] + "...")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise InputError(f"{pre}: location {shown} is an absolute path; cimc reads external data only from "
                         f"files inside the model's folder")
    parts = Path(location.replace("\\", "/")).parts
    if ".." in parts or "\0" in location:
        raise InputError(f"{pre}: location {shown} leaves the model's folder; cimc reads external data only "
                         f"from files inside it")
    path = base
    for part in parts:
        path = path / part
        try:
            st = path.lstat()
        except OSError:
            raise InputError(f"{pre}: the file {shown} does not exist in the model's folder {base}") from None
        if stat.S_ISLNK(st.st_mode):
            raise InputError(f"{pre}: {shown} goes through the symbolic link {path.name!r}; cimc reads external "
                             f"data only from regular files inside the model's folder")
    if not stat.S_ISREG(path.lstat().st_mode):
        raise InputError(f"{pre}: {shown} is not a regular file")
    if not Path(os.path.realpath(path)).is_relative_to(real_base):
        raise InputError(f"{pre}: {shown} resolves outside the model's folder")
    return path


def _itemsize(code: int) -> int:
    """Bytes per element of a fixed-size ONNX element type (0 for strings and sub-byte types)."""
    if code in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return 0
    try:
        dt = helper.tensor_dtype_to_np_dtype(code)
    except (KeyError, ValueError, TypeError):
        return 0
    if code in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return 0  # packed two to a byte
    return dt.itemsize


def check_text(model: onnx.ModelProto, source: str) -> None:
    """Every string field of ``model`` is UTF-8 text (else an ``InputError`` naming the field); bytes fields
    (tensor data, ONNX strings) are not read."""
    stack: list[tuple[Any, str]] = [(model, "model")]
    while stack:
        msg, path = stack.pop()
        present = msg.ListFields()  # the fields set (repeated ones: non-empty), in the order of their numbers
        if len(present) > 1:
            present.sort(key=lambda fv: fv[0].index)  # in the order the descriptor declares them
        for field, value in present:
            if field.type == field.TYPE_MESSAGE:
                if hasattr(value, "DESCRIPTOR"):
                    stack.append((value, f"{path}.{field.name}"))
                else:
                    stack.extend((item, f"{path}.{field.name}[{i}]") for i, item in enumerate(value))
            elif field.type == field.TYPE_STRING:
                repeated = not isinstance(value, str | bytes)
                for i, item in enumerate(value) if repeated else ((None, value),):
                    if isinstance(item, bytes):
                        try:
                            item.decode("utf-8")
                        except UnicodeDecodeError as e:
                            where = f"{path}.{field.name}" + ("" if i is None else f"[{i}]")
                            raise InputError(f"{source}: {where} is not UTF-8 text ({item[:40]!r}: {e.reason} at "
                                             f"byte {e.start})") from None


def check_dims(model: onnx.ModelProto, source: str) -> None:
    """An ``InputError`` for a graph input, output or ``value_info`` that declares a negative dim."""
    g = model.graph
    for kind, values in (("graph input", g.input), ("graph output", g.output), ("value_info", g.value_info)):
        for vi in values:
            if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
                continue
            dims = vi.type.tensor_type.shape.dim
            bad = [d.dim_value for d in dims if d.HasField("dim_value") and d.dim_value < 0]
            if bad:
                shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
                raise InputError(f"{source}: {kind} {vi.name!r} declares shape {shape} with a negative dim")


def check_types(model: onnx.ModelProto, source: str, nodes: Iterable[onnx.NodeProto] | None = None) -> None:
    """An ``InputError`` if an operand's element type breaks its op's type constraints, as onnxruntime
    checks them when it loads a model: each operand's type is one its formal parameter allows, and
    operands bound to one type variable agree. Element types come from the model (inputs,
    initializers) and ONNX's type inference for the rest. ``nodes``: the graph's nodes in an order
    where each reads only what is defined before it (the file's order if not given)."""
    g = model.graph
    order = list(g.node if nodes is None else nodes)
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    m.graph.name = g.name
    m.graph.node.extend(order)
    m.graph.input.extend(g.input)
    declared = {vi.name for vi in g.input}
    elem: dict[str, int] = {}
    for t in g.initializer:
        elem[t.name] = t.data_type
        if len(t.raw_data) + 4 * (len(t.float_data) + len(t.int32_data) + len(t.int64_data)) <= _INLINE_BYTES:
            m.graph.initializer.append(t)
        elif t.name not in declared:
            m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for sp in g.sparse_initializer:  # onnxruntime makes them dense
        elem[sp.values.name] = sp.values.data_type
        if sp.values.name not in declared:
            m.graph.input.append(helper.make_tensor_value_info(sp.values.name, sp.values.data_type, list(sp.dims)))
    m.graph.output.extend(g.output)
    try:
        inferred = onnx.shape_inference.infer_shapes(m, check_type=True)
    except Exception as e:  # InferenceError: operands bound to one type variable disagree
        text = " ".join(str(e).split()).replace("[ShapeInferenceError] ", "").replace("[TypeInferenceError] ", "")
        raise InputError(f"{source}: an operand has a type its op does not take (onnxruntime would refuse the "
                         f"model): {text[:300]}") from None
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            elem.setdefault(vi.name, vi.type.tensor_type.elem_type)
    opsets = {o.domain or "": o.version for o in model.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx", 1))
    for index, node in enumerate(order):
        if node.domain not in ("", "ai.onnx"):
            continue
        sig = _signature(node.op_type, opset)
        if sig is None:
            continue  # the importer names ops ONNX does not have
        why = _operand_types(node, sig, elem)
        if why:
            raise InputError(f"{source}: node {node.name or f'{node.op_type}_{index}'!r} ({node.op_type}, opset "
                             f"{sig.since}): {why} (onnxruntime refuses such a model)")


@functools.cache
def _type_str(code: int) -> str:
    """The ONNX type string of element type ``code`` (``tensor(float)``)."""
    name = onnx.TensorProto.DataType.Name(code).lower() if code in onnx.TensorProto.DataType.values() else str(code)
    return f"tensor({name})"


class _Formal(NamedTuple):
    """One formal input of an op schema, as :func:`_operand_types` reads it."""

    name: str
    type_str: str
    variadic: bool
    homogeneous: bool


class _Signature(NamedTuple):
    """What :func:`_operand_types` reads of an op's schema: its version, formal inputs and type constraints."""

    since: int
    formals: tuple[_Formal, ...]
    allowed: dict[str, frozenset[str]]


@functools.cache
def _signature(op_type: str, opset: int) -> _Signature | None:
    """The schema of ``op_type`` in ``opset`` as :func:`_operand_types` reads it (read once per op and opset: the
    schema's accessors build new Python objects on every call); ``None`` if ONNX has no such op."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return None
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    return _Signature(schema.since_version,
                      tuple(_Formal(f.name, f.type_str, f.option == variadic, f.is_homogeneous) for f in schema.inputs),
                      {c.type_param_str: frozenset(c.allowed_type_strs) for c in schema.type_constraints})


def _operand_types(node: onnx.NodeProto, sig: _Signature, elem: dict[str, int]) -> str | None:
    """Why ``node``'s operand element types break the type constraints of its schema (``sig``), or ``None``."""
    formals, allowed = sig.formals, sig.allowed
    if not formals:
        return None
    bound: dict[str, tuple[str, int]] = {}
    for i, name in enumerate(node.input):
        if not name or name not in elem:
            continue
        if i >= len(formals) and not formals[-1].variadic:
            continue
        formal = formals[min(i, len(formals) - 1)]
        have = _type_str(elem[name])
        ok = allowed.get(formal.type_str, frozenset({formal.type_str}))
        if have not in ok:
            return (f"operand {i} ({formal.name}, {name!r}) is {have}, which {node.op_type} does not take (it takes "
                    f"{', '.join(sorted(ok)[:8])}{', ...' if len(ok) > 8 else ''})")
        variadic_mixed = i >= len(formals) - 1 and formal.variadic and not formal.homogeneous
        if formal.type_str in allowed and not variadic_mixed:
            first = bound.setdefault(formal.type_str, (have, i))
            if first[0] != have:
                return (f"operands {first[1]} and {i} share type {formal.type_str} but are {first[0]} and {have}")
    return None


def check_outputs(model: onnx.ModelProto, graph: Graph, source: str) -> None:
    """An ``InputError`` for a graph output whose declared element type is not the one ``graph`` (the
    import of ``model``) computes for it."""
    for o, v in zip(model.graph.output, graph.outputs, strict=True):
        if not o.type.HasField("tensor_type") or not o.type.tensor_type.elem_type:
            continue
        declared = o.type.tensor_type.elem_type
        if ONNX_DTYPE_CODES.get(declared) is not v.type.dtype:
            name = onnx.TensorProto.DataType.Name(declared).lower() if declared in onnx.TensorProto.DataType.values() \
                else f"code {declared}"
            raise InputError(f"{source}: graph output {o.name!r} declares element type {name}, but the graph "
                             f"computes {v.type.dtype.value} for it (onnxruntime refuses such a model)")
