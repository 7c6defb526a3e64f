"""Symbolic dims of an ONNX model fixed at a size before import (``cimc compile --dim seq=128``).

An exported model often leaves more than its batch symbolic (a sequence length, an image size). The cost model
counts one inference as one sample, every symbolic dim taken as 1 (:func:`cimc.ir.types.dim_per_sample`), which
is right for the batch and wrong for a sequence: its layers would be priced for one token. Fixing such a dim
gives the model a concrete size everywhere, as onnxruntime's free-dimension overrides do: every value-info of
the graph and its subgraphs that names the dim gets the size instead, and the importer infers the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import onnx

from cimc.errors import InputError

__all__ = ["fix_dims", "parse_dims", "symbolic_input_dims"]


def parse_dims(texts: Iterable[str]) -> dict[str, int]:
    """``NAME=SIZE`` options (``--dim seq=128``) as a mapping; an :class:`InputError` naming the text that is not
    one, whose size is not a positive integer, or whose name is given twice."""
    dims: dict[str, int] = {}
    for text in texts:
        name, eq, size = text.partition("=")
        name, size = name.strip(), size.strip()
        if not eq or not name or not size:
            raise InputError(f"--dim {text!r}: expected NAME=SIZE, e.g. --dim seq=128")
        if not size.isdigit() or int(size) < 1:
            raise InputError(f"--dim {text!r}: the size must be a positive integer")
        if name in dims:
            raise InputError(f"--dim {text!r}: dim {name!r} is given twice")
        dims[name] = int(size)
    return dims


def symbolic_input_dims(model: onnx.ModelProto) -> list[str]:
    """The symbolic dim names of the graph's inputs that are not initializers, in order of first appearance."""
    inits = {t.name for t in model.graph.initializer}
    seen: dict[str, None] = {}
    for vi in model.graph.input:
        if vi.name not in inits:
            for d in _dims(vi.type):
                if d.HasField("dim_param"):
                    seen.setdefault(d.dim_param, None)
    return list(seen)


def fix_dims(model: onnx.ModelProto, dims: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` with each symbolic dim named in ``dims`` at its size, in every value-info (inputs,
    outputs, intermediate values, of the graph and its subgraphs). An :class:`InputError` for a name that no graph
    input has (the message lists those it has) or a size below 1; ``model`` itself is not changed."""
    known = symbolic_input_dims(model)
    for name, size in dims.items():
        if name not in known:
            have = ", ".join(repr(k) for k in known) if known else "none"
            raise InputError(f"dim {name!r} is not a symbolic dim of the model's inputs (they have: {have})")
        if not isinstance(size, int) or size < 1:
            raise InputError(f"dim {name!r} = {size!r}: the size must be a positive integer")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for graph in _graphs(out.graph):
        for vi in (*graph.input, *graph.output, *graph.value_info):
            for d in _dims(vi.type):
                if d.HasField("dim_param") and d.dim_param in dims:
                    d.dim_value = dims[d.dim_param]  # clears dim_param: one of the two
    return out


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph in its nodes' attributes, depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from _graphs(sub)


def _dims(t: onnx.TypeProto) -> list[onnx.TensorShapeProto.Dimension]:
    """The dims of a tensor (or sparse tensor) type's shape, also inside sequence and optional types; [] for
    others and unknown ranks."""
    which = t.WhichOneof("value")
    if which in ("tensor_type", "sparse_tensor_type"):
        tt = getattr(t, which)
        return list(tt.shape.dim) if tt.HasField("shape") else []
    if which == "sequence_type":
        return _dims(t.sequence_type.elem_type)
    if which == "optional_type":
        return _dims(t.optional_type.elem_type)
    return []
