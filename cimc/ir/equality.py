"""Structural equality of graphs, with the first difference said in words.

Two graphs are equal when their inputs (names, types), outputs (names), constants (names, types,
element types and exact bytes, in order), nodes (op, name, operands by name, result names and
types, attributes exactly) and metadata agree. Floats compare bit-exactly except that every NaN
equals every NaN; ints and floats never equal each other; lists equal tuples; str arrays compare
by value. The graph's own name is not compared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cimc.ir.core import AttrValue, Graph, Value
from cimc.ir.types import QuantParams, TensorType

__all__ = ["graph_difference", "graphs_equal"]


def _float_eq(a: float, b: float) -> bool:
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def _floats_eq(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(_float_eq(x, y) for x, y in zip(a, b, strict=True))


def _quant_eq(a: QuantParams | None, b: QuantParams | None) -> bool:
    if a is None or b is None:
        return a is b
    return (_floats_eq(tuple(a.scale), tuple(b.scale)) and a.bits == b.bits and a.axis == b.axis
            and tuple(a.zero_point) == tuple(b.zero_point))


def _type_eq(a: TensorType, b: TensorType) -> bool:
    if a.dtype is not b.dtype or not _quant_eq(a.quant, b.quant):
        return False
    if a.shape is None or b.shape is None:
        return a.shape is b.shape
    return len(a.shape) == len(b.shape) and all(
        _dim_kind(x) == _dim_kind(y) and x == y for x, y in zip(a.shape, b.shape, strict=True))


def _dim_kind(d: object) -> str:
    return "none" if d is None else "str" if isinstance(d, str) else "int"


def array_difference(a: np.ndarray, b: np.ndarray) -> str | None:
    """Why two arrays are not the same (element type, shape, bytes), or ``None``."""
    str_a, str_b = a.dtype.kind in "UO", b.dtype.kind in "UO"
    if a.dtype != b.dtype and not (str_a and str_b):
        return f"element type {a.dtype} vs {b.dtype}"
    if a.shape != b.shape:
        return f"shape {list(a.shape)} vs {list(b.shape)}"
    if str_a:
        return None if a.tolist() == b.tolist() else "different strings"
    if np.ascontiguousarray(a).tobytes() != np.ascontiguousarray(b).tobytes():
        fa, fb = a.reshape(-1), b.reshape(-1)
        i = next(i for i in range(fa.size) if fa[i:i + 1].tobytes() != fb[i:i + 1].tobytes())
        return f"element {i} differs: {fa[i]!r} vs {fb[i]!r}"
    return None


def attr_difference(a: Any, b: Any) -> str | None:
    """Why two attribute values differ, or ``None``."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return f"{type(a).__name__} vs {type(b).__name__}"
        return array_difference(a, b)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))):
            return f"{a!r} vs {b!r}"
        if len(a) != len(b):
            return f"{len(a)} vs {len(b)} elements"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = attr_difference(x, y)
            if d is not None:
                return f"element {i}: {d}"
        return None
    if isinstance(a, AttrValue) or isinstance(b, AttrValue):
        if type(a) is not type(b):
            return f"{type(a).__name__} vs {type(b).__name__}"
        return a.difference(b)
    if isinstance(a, Graph) or isinstance(b, Graph):
        if not (isinstance(a, Graph) and isinstance(b, Graph)):
            return f"{type(a).__name__} vs {type(b).__name__}"
        return graph_difference(a, b)
    int_a, int_b = (isinstance(x, (int, np.integer, np.bool_)) for x in (a, b))
    float_a, float_b = isinstance(a, (float, np.floating)), isinstance(b, (float, np.floating))
    if float_a and float_b:
        return None if _float_eq(a, b) else f"{a!r} vs {b!r}"
    if int_a != int_b or float_a != float_b or (type(a) is str and type(b) is not str):
        return f"{a!r} ({type(a).__name__}) vs {b!r} ({type(b).__name__})"
    return None if a == b else f"{a!r} vs {b!r}"


def _names(values: Sequence[Value | None]) -> list[str | None]:
    return [None if v is None else v.name for v in values]


def _values_difference(what: str, a: list[Value], b: list[Value]) -> str | None:
    if _names(a) != _names(b):
        return f"{what}: {_names(a)} vs {_names(b)}"
    for x, y in zip(a, b, strict=True):
        if not _type_eq(x.type, y.type):
            return f"{what} %{x.name}: type {x.type} vs {y.type}"
    return None


def graph_difference(a: Graph, b: Graph) -> str | None:
    """The first structural difference between two graphs in a few words, or ``None``."""
    d = _values_difference("inputs", a.inputs, b.inputs)
    if d:
        return d
    if _names(a.outputs) != _names(b.outputs):
        return f"outputs: {_names(a.outputs)} vs {_names(b.outputs)}"
    d = _values_difference("constants", list(a.constants.values()), list(b.constants.values()))
    if d:
        return d
    for x, y in zip(a.constants.values(), b.constants.values(), strict=True):
        d = array_difference(x.array, y.array)
        if d:
            return f"constant %{x.name}: {d}"
    if len(a.nodes) != len(b.nodes):
        return f"{len(a.nodes)} vs {len(b.nodes)} nodes"
    for i, (m, n) in enumerate(zip(a.nodes, b.nodes, strict=True)):
        where = f"node {i} {m.name!r} ({m.op})"
        if (m.op, m.name) != (n.op, n.name):
            return f"node {i}: {m.name!r} ({m.op}) vs {n.name!r} ({n.op})"
        if _names(m.inputs) != _names(n.inputs):
            return f"{where}: operands {_names(m.inputs)} vs {_names(n.inputs)}"
        d = _values_difference("results", m.outputs, n.outputs)
        if d:
            return f"{where}: {d}"
        if set(m.attrs) != set(n.attrs):
            return f"{where}: attributes {sorted(m.attrs)} vs {sorted(n.attrs)}"
        for k in m.attrs:
            d = attr_difference(m.attrs[k], n.attrs[k])
            if d:
                return f"{where}: attribute {k!r}: {d}"
    if a.metadata != b.metadata:
        return f"metadata: {a.metadata} vs {b.metadata}"
    return None


def graphs_equal(a: Graph, b: Graph) -> bool:
    """Whether two graphs are structurally equal (see :func:`graph_difference`)."""
    return graph_difference(a, b) is None
