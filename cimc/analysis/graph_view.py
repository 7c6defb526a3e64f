"""A networkx view of a graph, for analyses (partitioning, scheduling, critical paths).

``to_networkx`` builds a ``DiGraph`` whose vertices are node names and whose edges carry the
value that flows along them (``value`` = value name, ``bytes`` = its size when the shape is
static). Graph inputs, constants and outputs are not vertices; a node's ``inputs``/``outputs``
attributes name the values it reads and writes. The view is a copy: changing it does not change
the IR.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import numpy as np

from cimc.ir.core import Graph, Node, Value

__all__ = ["critical_path", "to_networkx", "value_bytes"]


def value_bytes(value: Value) -> int | None:
    """Bytes of ``value`` if its shape is static, else ``None``."""
    t = value.type
    shape = t.static_shape
    if shape is None:
        return None
    return int(np.prod(shape, dtype=np.int64)) * t.dtype.numpy.itemsize


def to_networkx(graph: Graph) -> nx.DiGraph:
    """The dataflow between the nodes of ``graph`` as a ``networkx.DiGraph``."""
    g = nx.DiGraph(name=graph.name)
    for index, node in enumerate(graph.nodes):
        g.add_node(node.name, op=node.op, index=index,
                   inputs=[v.name for v in node.inputs if v is not None],
                   outputs=[v.name for v in node.outputs])
    for node in graph.nodes:
        for v in node.inputs:
            if v is not None and v.producer is not None:
                g.add_edge(v.producer.name, node.name, value=v.name, bytes=value_bytes(v))
    return g


def critical_path(graph: Graph, cost: Callable[[Node], float]) -> tuple[float, list[str]]:
    """The most expensive chain of dependent nodes under ``cost``: (total cost, node names)."""
    if not graph.nodes:
        return 0.0, []
    view = to_networkx(graph)
    weights = {n.name: float(cost(n)) for n in graph.nodes}
    best: dict[str, tuple[float, str | None]] = {}
    for name in nx.topological_sort(view):
        preds = [(best[p][0], p) for p in view.predecessors(name)]
        top = max(preds, default=(0.0, None))
        best[name] = (top[0] + weights[name], top[1])
    end = max(best, key=lambda k: best[k][0])
    path: list[str] = []
    cur: str | None = end
    while cur is not None:
        path.append(cur)
        cur = best[cur][1]
    return best[end][0], path[::-1]
