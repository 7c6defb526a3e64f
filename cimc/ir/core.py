"""The SSA graph: ``Graph`` holds topologically ordered ``Node``s over ``Value``s.

A ``Value`` is a graph input, a constant (a read-only numpy array owned by the graph) or the
result of one node. Each value keeps its uses as ``(node, operand index)`` pairs; the use lists
change only through the methods here (``Node.set_input``, ``Graph.replace_all_uses_with``,
``Graph.remove_node``), so rewrites stay local and cheap. Optional inputs that are absent are
``None`` operands. Graph outputs are not uses; ``Graph.is_output`` tells whether a value is one.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from cimc.errors import VerifyError
from cimc.ir.types import TensorType

__all__ = ["AttrValue", "Graph", "Node", "Value", "topological_order"]


class AttrValue:
    """Base of structured attribute values, beyond ints, floats, strings, lists and arrays (a tile map,
    :class:`cimc.cim.TileMap`). Such a value is immutable (copies of a graph share it); the verifier
    asks it for its problems on the node carrying it, and graph equality asks it for its difference
    from another value. The ``.cimir`` printer and parser know each kind's text form."""

    __slots__ = ()
    kind: str = ""
    """The attribute kind (:data:`cimc.ir.opdef.ATTR_KINDS`) an op declares for values of this class."""

    def problems(self, node: Node, key: str) -> list[str]:
        """What is wrong with this value as attribute ``key`` of ``node`` (empty: nothing)."""
        return []

    def difference(self, other: object) -> str | None:
        """Why ``other`` is not an equal value, in a few words, or ``None``."""
        raise NotImplementedError


class Value:
    """An SSA value: a graph input, a constant, or one output of a node."""

    __slots__ = ("_uses", "const", "index", "name", "producer", "type")

    def __init__(self, name: str, type: TensorType, *, producer: Node | None = None,
                 index: int = 0, const: np.ndarray | None = None) -> None:
        self.name = name
        self.type = type
        self.producer = producer
        self.index = index
        self.const = const
        self._uses: list[tuple[Node, int]] = []

    @property
    def uses(self) -> tuple[tuple[Node, int], ...]:
        """Every ``(node, operand index)`` that reads this value, in the order they were made."""
        return tuple(self._uses)

    @property
    def users(self) -> list[Node]:
        """The distinct nodes that read this value, in use order."""
        return list(dict.fromkeys(n for n, _ in self._uses))

    @property
    def is_constant(self) -> bool:
        """Whether this value is a constant of its graph."""
        return self.const is not None

    @property
    def array(self) -> np.ndarray:
        """The array of a value the caller needs to be a constant (a ``VerifyError`` if it is not one)."""
        if self.const is None:
            raise VerifyError(f"%{self.name} is not a constant where a constant was expected")
        return self.const

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One operation: an op name, operands, results and attributes."""

    __slots__ = ("attrs", "graph", "inputs", "name", "op", "outputs")

    def __init__(self, op: str, name: str, attrs: dict[str, Any]) -> None:
        self.op = op
        self.name = name
        self.attrs = attrs
        self.inputs: list[Value | None] = []
        self.outputs: list[Value] = []
        self.graph: Graph | None = None

    def set_input(self, index: int, value: Value | None) -> None:
        """Make operand ``index`` read ``value``, keeping both use lists right."""
        old = self.inputs[index]
        if old is value:
            return
        if old is not None:
            old._uses.remove((self, index))
        self.inputs[index] = value
        if value is not None:
            value._uses.append((self, index))

    def operand(self, index: int) -> Value:
        """The value of operand ``index``, which the caller needs present (an absent optional operand
        is a ``VerifyError`` naming the node)."""
        value = self.inputs[index] if index < len(self.inputs) else None
        if value is None:
            raise VerifyError(f"node {self.name!r} ({self.op}) has no operand {index}")
        return value

    @property
    def output(self) -> Value:
        """The only result of a single-result node."""
        if len(self.outputs) != 1:
            raise VerifyError(f"node {self.name!r} ({self.op}) has {len(self.outputs)} results, not 1")
        return self.outputs[0]

    def __repr__(self) -> str:
        ins = ", ".join("none" if v is None else f"%{v.name}" for v in self.inputs)
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        return f"{outs} = {self.op}({ins})  # {self.name}"


_NAME_SUFFIX = re.compile(r"^(.*?)(?:_(\d+))?$")


class Graph:
    """An ordered, topologically sorted list of nodes with inputs, outputs and constants."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.constants: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.metadata: dict[str, str] = {}
        self._value_names: set[str] = set()
        self._node_names: set[str] = set()
        self._counter = itertools.count()
        self._last_insert = 0  # index of the last inserted node: rewrites insert runs of nodes

    # ---- naming -------------------------------------------------------------------------
    def _fresh(self, hint: str, taken: set[str]) -> str:
        hint = hint or "v"
        if hint not in taken:
            taken.add(hint)
            return hint
        m = _NAME_SUFFIX.match(hint)  # matches every string
        stem = (m.group(1) if m else None) or hint
        while True:
            candidate = f"{stem}_{next(self._counter)}"
            if candidate not in taken:
                taken.add(candidate)
                return candidate

    def _release(self, value: Value) -> None:
        self._value_names.discard(value.name)

    # ---- building -----------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        """Append a graph input; the name is kept if free, otherwise made unique."""
        value = Value(self._fresh(name, self._value_names), type)
        self.inputs.append(value)
        return value

    def add_constant(self, array: np.ndarray | Any, name: str = "const",
                     type: TensorType | None = None) -> Value:
        """Add a constant; the graph keeps a read-only copy-free view of ``array``."""
        array = np.asarray(array)
        if array.flags.writeable:
            array = array.view()
            array.flags.writeable = False
        vname = self._fresh(name, self._value_names)
        value = Value(vname, type or TensorType.of(array), const=array)
        self.constants[vname] = value
        return value

    def add_node(self, op: str, inputs: Sequence[Value | None], attrs: Mapping[str, Any] | None = None,
                 *, outputs: Sequence[TensorType] | int | None = None,
                 output_names: Sequence[str] | None = None, name: str | None = None,
                 before: Node | None = None, after: Node | None = None) -> Node:
        """Create a node and insert it (at the end, or before/after a given node).

        ``outputs`` gives the result types; an ``int`` (or ``None`` for one result) asks the op's
        type rule to infer them.
        """
        node = Node(op, self._fresh(name or op.replace(".", "_").lower(), self._node_names),
                    dict(attrs or {}))
        node.graph = self
        for i, v in enumerate(inputs):
            node.inputs.append(None)
            node.set_input(i, v)
        if outputs is None or isinstance(outputs, int):
            from cimc.ir.opdef import infer_types

            types = infer_types(node, 1 if outputs is None else outputs)
        else:
            types = list(outputs)
        names = list(output_names or [])
        for i, t in enumerate(types):
            hint = names[i] if i < len(names) else (node.name if len(types) == 1 else f"{node.name}_{i}")
            node.outputs.append(Value(self._fresh(hint, self._value_names), t, producer=node, index=i))
        if before is not None:
            index = self._position(before)
        elif after is not None:
            index = self._position(after) + 1
        else:
            self.nodes.append(node)
            return node
        self.nodes.insert(index, node)
        self._last_insert = index
        return node

    def _position(self, node: Node) -> int:
        """Index of ``node`` in ``nodes``: O(1) next to the last insertion, else a scan."""
        for guess in (self._last_insert, self._last_insert + 1):
            if guess < len(self.nodes) and self.nodes[guess] is node:
                return guess
        return self.nodes.index(node)

    # ---- rewriting ----------------------------------------------------------------------
    def replace_all_uses_with(self, old: Value, new: Value) -> None:
        """Make every reader of ``old`` (nodes and graph outputs) read ``new`` instead."""
        if old is new:
            return
        for node, index in list(old._uses):
            node.set_input(index, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def remove_node(self, node: Node) -> None:
        """Remove a node whose results have no uses (graph outputs included)."""
        for v in node.outputs:
            if v._uses or self.is_output(v):
                raise VerifyError(f"cannot remove node {node.name!r} ({node.op}): result %{v.name} is still used")
        for i in range(len(node.inputs)):
            node.set_input(i, None)
        self.nodes.remove(node)
        node.graph = None
        for v in node.outputs:
            self._release(v)
        self._node_names.discard(node.name)

    def remove_constant(self, value: Value) -> None:
        """Remove a constant that nothing uses."""
        if value._uses or self.is_output(value):
            raise VerifyError(f"cannot remove constant %{value.name}: it is still used")
        del self.constants[value.name]
        self._release(value)

    def remove_dead(self) -> bool:
        """Remove nodes and constants whose results nothing uses; says whether any went."""
        changed = False
        outputs = {id(v) for v in self.outputs}
        for node in reversed(list(self.nodes)):
            if all(not v._uses and id(v) not in outputs for v in node.outputs) and not _has_effect(node):
                self.remove_node(node)
                changed = True
        for value in list(self.constants.values()):
            if not value._uses and id(value) not in outputs:
                self.remove_constant(value)
                changed = True
        return changed

    def rename_value(self, value: Value, name: str) -> str:
        """Give ``value`` a new (unique-made) name and return it."""
        self._release(value)
        if value.const is not None:
            del self.constants[value.name]
        value.name = self._fresh(name, self._value_names)
        if value.const is not None:
            self.constants[value.name] = value
        return value.name

    def rename_node(self, node: Node, name: str) -> str:
        """Give ``node`` a new (unique-made) name and return it."""
        self._node_names.discard(node.name)
        node.name = self._fresh(name, self._node_names)
        return node.name

    # ---- queries ------------------------------------------------------------------------
    def is_output(self, value: Value) -> bool:
        """Whether ``value`` is one of the graph outputs."""
        return any(v is value for v in self.outputs)

    def values(self) -> Iterator[Value]:
        """Every value: inputs, constants, then node results in order."""
        yield from self.inputs
        yield from self.constants.values()
        for node in self.nodes:
            yield from node.outputs

    def value(self, name: str) -> Value:
        """The value with this name (``KeyError`` if there is none)."""
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(name)

    def node(self, name: str) -> Node:
        """The node with this name (``KeyError`` if there is none)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def ops(self) -> dict[str, int]:
        """How many nodes of each op the graph has, in first-seen order."""
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def copy(self) -> Graph:
        """A structural copy sharing the (read-only) constant arrays."""
        g = Graph(self.name)
        g.metadata = dict(self.metadata)
        vmap: dict[int, Value] = {}
        for v in self.inputs:
            vmap[id(v)] = g.add_input(v.name, v.type)
        for v in self.constants.values():
            vmap[id(v)] = g.add_constant(v.const, v.name, v.type)
        for n in self.nodes:
            new = g.add_node(n.op, [None if v is None else vmap[id(v)] for v in n.inputs],
                             _copy_attrs(n.attrs), outputs=[v.type for v in n.outputs],
                             output_names=[v.name for v in n.outputs], name=n.name)
            for old, nv in zip(n.outputs, new.outputs, strict=True):
                vmap[id(old)] = nv
        g.outputs = [vmap[id(v)] for v in self.outputs]
        return g

    def __repr__(self) -> str:
        return (f"<Graph {self.name}: {len(self.inputs)} inputs, {len(self.constants)} constants, "
                f"{len(self.nodes)} nodes>")


def _copy_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.copy() if isinstance(v, Graph) else v) for k, v in attrs.items()}


def _has_effect(node: Node) -> bool:
    from cimc.ir.opdef import lookup

    opdef = lookup(node.op)
    return opdef is not None and opdef.has_side_effects


def topological_order(nodes: Iterable[Node]) -> list[Node]:
    """``nodes`` sorted so each comes after the producers of its operands (stable otherwise)."""
    nodes = list(nodes)
    members = {id(n) for n in nodes}
    done: set[int] = set()
    order: list[Node] = []

    def visit(n: Node) -> None:
        stack = [(n, iter(n.inputs))]
        active = {id(n)}
        while stack:
            cur, it = stack[-1]
            for v in it:
                p = v.producer if v is not None else None
                if p is not None and id(p) in members and id(p) not in done:
                    if id(p) in active:
                        raise VerifyError(f"the graph has a cycle through node {p.name!r} ({p.op})")
                    active.add(id(p))
                    stack.append((p, iter(p.inputs)))
                    break
            else:
                stack.pop()
                active.discard(id(cur))
                if id(cur) not in done:
                    done.add(id(cur))
                    order.append(cur)

    for n in nodes:
        if id(n) not in done:
            visit(n)
    return order
