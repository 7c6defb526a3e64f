"""cimc.cost: the vector-unit model and the per-layer program summary, against a fake target."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from cimc.cost import Cost, CostReport, program_cost, vector_cost
from cimc.ir import DType, Graph, TensorType


def _program() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType(DType.f32, (1, 4, 8, 8)))
    r = g.add_node("Relu", [x], {"cim.layer": "conv1"}, name="relu1").outputs[0]
    p = g.add_node("MaxPool", [r], {"kernel_shape": (2, 2), "strides": (2, 2), "cim.layer": "pool"},
                   name="pool").outputs[0]
    s = g.add_constant(np.array([1, -1], np.int64), "shape")
    f = g.add_node("Reshape", [p, s], name="flat").outputs[0]
    a = g.add_node("Relu", [f], {"cim.layer": "conv1", "cim.bytes": 96}, name="load1").outputs[0]
    g.outputs = [a]
    return g


@dataclass(frozen=True)
class FakeSpec:
    clock_mhz: float = 500.0


@dataclass(frozen=True)
class FakeTarget:
    """Vector ops through vector_cost; a node named load* is a weight load."""

    name: str = "fake"
    spec: FakeSpec = FakeSpec()

    def op_cost(self, node) -> Cost:
        if node.name.startswith("load"):
            return Cost(10.0, 5.0, "load")
        return vector_cost(node, lanes=16, cycles_per_op=2.0, pj_per_op=0.5)


def test_vector_cost_counts_results_reads_for_pooling_and_layout_is_free() -> None:
    g = _program()
    relu, pool, flat, _ = g.nodes
    assert vector_cost(relu, lanes=16, cycles_per_op=2, pj_per_op=0.5) == Cost(2 * 256 / 16, 128.0, "vector")
    # pooling reads 256 elements (writes 64): counted by the operand
    assert vector_cost(pool, lanes=10, cycles_per_op=1, pj_per_op=1) == Cost(26.0, 256.0, "vector")
    assert vector_cost(flat, lanes=16, cycles_per_op=2, pj_per_op=0.5) == Cost(0.0, 0.0, "vector")


def test_program_cost_groups_by_layer_and_counts_loads() -> None:
    rep = program_cost(_program(), FakeTarget())
    assert isinstance(rep, CostReport)
    assert [l.name for l in rep.layers] == ["conv1", "pool", "flat"]  # program order; fallback: node name
    conv1 = rep.layers[0]
    assert conv1.ops == 2 and conv1.cycles == 32 + 10 and conv1.energy_pj == 128 + 5
    assert conv1.load_bytes == 96 and rep.total.load_bytes == 96
    assert conv1.by_unit["load"] == {"cycles": 10.0, "energy_pj": 5.0, "ops": 1}
    assert rep.total.cycles == sum(l.cycles for l in rep.layers)
    assert rep.latency_us == pytest.approx(rep.total.cycles / 500.0)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["total"]["weight_load_bytes"] == 96 and d["clock_mhz"] == 500.0
    assert d["layers"][0]["latency_us"] == pytest.approx(42 / 500)
    text = rep.table()
    assert "conv1" in text and "total" in text and "by unit:" in text


def test_program_cost_rejects_a_non_cost() -> None:
    class Bad(FakeTarget):
        def op_cost(self, node):
            return 3.0
    with pytest.raises(TypeError, match=r"expected cimc\.cost\.Cost"):
        program_cost(_program(), Bad())


def test_a_symbolic_batch_counts_as_one_sample() -> None:
    g = Graph()
    x = g.add_input("x", TensorType(DType.f32, ("N", 4, 8)))
    g.outputs = [g.add_node("Relu", [x], name="r").outputs[0]]
    assert vector_cost(g.nodes[0], lanes=8, cycles_per_op=1, pj_per_elem_op=1.0) == Cost(4.0, 32.0, "vector")
