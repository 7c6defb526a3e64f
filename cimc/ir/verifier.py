"""The verifier: checks that a graph is well formed.

It checks that names are unique, no declared dim is negative, every operand is defined before it is read (inputs and
constants first, then nodes in order), use lists match operands, every node's op is defined and
its operands, results and attributes fit the op's schema, re-inferred result types agree with the
recorded ones (a known dim may not change; unknown and symbolic dims may be refined), quantization
scales are positive and finite (before the op's checks, which divide by them), and every structured
attribute value (:class:`cimc.ir.core.AttrValue`, e.g. a tile map) is sound on its node.
"""

from __future__ import annotations

import math

from cimc.errors import VerifyError
from cimc.ir.core import AttrValue, Graph, Node, Value
from cimc.ir.opdef import infer_types, lookup
from cimc.ir.types import TensorType

__all__ = ["verify"]


def verify(graph: Graph, *, check_types: bool = True) -> None:
    """Raise ``VerifyError`` listing every problem found in ``graph``."""
    problems: list[str] = []
    seen_values: dict[str, Value] = {}
    defined: set[int] = set()

    def define(v: Value, name: str, what: str) -> None:
        if name in seen_values:
            problems.append(f"value name %{name} is defined twice ({what})")
        shape = v.type.shape
        if shape is not None and any(isinstance(d, int) and d < 0 for d in shape):
            problems.append(f"%{name} ({what}) has a negative dim in {v.type}")
        if why := _quant_problem(v.type):
            problems.append(f"%{name} ({what}): {why}")
        seen_values[name] = v
        defined.add(id(v))

    for v in graph.inputs:
        define(v, v.name, "graph input")
    for name, v in graph.constants.items():
        if v.const is None or v.name != name:
            problems.append(f"constant %{name} has no value or a mismatched name")
        define(v, v.name, "constant")
    node_names: set[str] = set()
    first: str | None = None  # the node of the first problem, if that problem is a node's
    for node in graph.nodes:
        before = len(problems)
        where = f"node {node.name!r} ({node.op})"
        if node.name in node_names:
            problems.append(f"{where}: node name is used twice")
        node_names.add(node.name)
        if node.graph is not graph:
            problems.append(f"{where}: belongs to another graph")
        for i, arg in enumerate(node.inputs):
            if arg is None:
                continue
            if id(arg) not in defined:
                problems.append(f"{where}: operand {i} %{arg.name} is used before it is defined")
            if (node, i) not in arg._uses:
                problems.append(f"{where}: operand {i} %{arg.name} does not list this use")
        opdef = lookup(node.op)
        if opdef is None:
            problems.append(f"{where}: op {node.op!r} is not defined")
        elif any(_quant_problem(v.type) for v in [*node.inputs, *node.outputs] if v is not None):
            pass  # the op's checks divide by scales: the value's own problem is reported
        else:
            why = opdef.check_node(node)
            if why:
                problems.append(f"{where}: {why}")
            elif check_types:
                problems.extend(_check_types(node, where))
        for key, value in node.attrs.items():
            if isinstance(value, AttrValue):
                problems.extend(f"{where}: attribute {key!r}: {p}" for p in value.problems(node, key))
        for i, v in enumerate(node.outputs):
            if v.producer is not node or v.index != i:
                problems.append(f"{where}: result {i} %{v.name} does not point back to its node")
            define(v, v.name, where)
        if before == 0 and problems:
            first = node.name
    for v in seen_values.values():
        for user, index in v._uses:
            if user.graph is not graph or user.inputs[index] is not v:
                problems.append(f"%{v.name} lists a use by {user.name!r} that does not read it")
    for v in graph.outputs:
        if id(v) not in defined:
            problems.append(f"graph output %{v.name} is not defined in the graph")
    if problems:
        head = f"graph {graph.name!r} is malformed ({len(problems)} problem{'s' if len(problems) > 1 else ''}):"
        raise VerifyError("\n  ".join([head, *problems[:50]]), node=first)


def _quant_problem(t: TensorType) -> str | None:
    """Why ``t``'s quantization cannot map codes to real numbers (no scale or zero point, a scale that is
    0, negative or not finite), or ``None``."""
    q = t.quant
    if q is not None and (not q.scale or not q.zero_point):
        return f"its quantization has no {'scale' if not q.scale else 'zero point'} (one, or one per channel)"
    bad = [] if q is None else [s for s in q.scale if not (math.isfinite(s) and s > 0)]
    return f"its quantization scale {bad[0]} is not a positive finite number" if bad else None


def _check_types(node: Node, where: str) -> list[str]:
    try:
        inferred = infer_types(node, len(node.outputs))
    except Exception as e:  # a type rule that cannot type the node is itself a finding
        return [f"{where}: type rule failed: {e}"]
    out = []
    for v, t in zip(node.outputs, inferred, strict=True):
        why = _conflict(v.type, t)
        if why:
            out.append(f"{where}: result %{v.name} is typed {v.type} but the op gives {t} ({why})")
    return out


def _conflict(recorded: TensorType, inferred: TensorType) -> str | None:
    if recorded.dtype != inferred.dtype:
        return "element type differs"
    if recorded.shape is None or inferred.shape is None:
        return None
    if len(recorded.shape) != len(inferred.shape):
        return "rank differs"
    for a, b in zip(recorded.shape, inferred.shape, strict=True):
        if isinstance(a, int) and isinstance(b, int) and a != b:
            return "a dim differs"
    return None
