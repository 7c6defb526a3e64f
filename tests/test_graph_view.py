"""Tests of the networkx analysis view."""

from __future__ import annotations

import networkx as nx
import numpy as np

from cimc import zoo
from cimc.analysis import critical_path, to_networkx
from cimc.ir import DType, Graph, TensorType
from cimc.onnx_io import load_model


def _diamond() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType(DType.f32, (2, 3)))
    a = g.add_node("Relu", [x], name="a").output
    b = g.add_node("Relu", [a], name="b").output
    c = g.add_node("Relu", [a], name="c").output
    d = g.add_node("Add", [b, c], name="d").output
    g.outputs = [d]
    return g


def test_view_has_nodes_and_dataflow_edges():
    view = to_networkx(_diamond())
    assert set(view.nodes) == {"a", "b", "c", "d"}
    assert set(view.edges) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    assert view.edges["a", "b"]["value"] == "a" and view.edges["a", "b"]["bytes"] == 24
    assert view.nodes["d"]["op"] == "Add" and view.nodes["d"]["inputs"] == ["b", "c"]


def test_critical_path_follows_the_costliest_chain():
    cost = {"a": 1, "b": 5, "c": 2, "d": 1}
    total, path = critical_path(_diamond(), lambda n: cost[n.name])
    assert total == 7 and path == ["a", "b", "d"]


def test_zoo_model_view_is_a_dag_in_graph_order():
    g = load_model(zoo.path("resnet_tiny"))
    view = to_networkx(g)
    assert nx.is_directed_acyclic_graph(view)
    order = {n.name: i for i, n in enumerate(g.nodes)}
    assert all(order[u] < order[v] for u, v in view.edges)
    assert view.number_of_nodes() == len(g.nodes)
    assert np.isfinite(critical_path(g, lambda n: 1.0)[0])
