"""cimc.cost: the vector-unit model, MAC counts, the one-time/per-inference split, the report, against a fake
target and hand counts."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cimc.cost import (
    AreaPart,
    Cost,
    CostReport,
    Tally,
    Write,
    Writes,
    _one_time,
    area_dict,
    mac_dims,
    program_cost,
    spilled_fraction,
    vector_cost,
    vector_unit_cost,
    write_columns,
)
from cimc.ir import DType, Graph, TensorType


def _program() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType(DType.f32, (1, 4, 8, 8)))
    r = g.add_node("Relu", [x], {"cim.layer": "conv1"}, name="relu1").outputs[0]
    p = g.add_node("MaxPool", [r], {"kernel_shape": (2, 2), "strides": (2, 2), "cim.layer": "pool"},
                   name="pool").outputs[0]
    s = g.add_constant(np.array([1, -1], np.int64), "shape")
    f = g.add_node("Reshape", [p, s], name="flat").outputs[0]
    a = g.add_node("Relu", [f], {"cim.layer": "conv1"}, name="load1").outputs[0]
    b = g.add_node("Relu", [a], {"cim.layer": "fc"}, name="load2").outputs[0]
    g.outputs = [b]
    return g


@dataclass(frozen=True)
class FakeSpec:
    clock_mhz: float = 500.0


@dataclass(frozen=True)
class FakeTarget:
    """Vector ops through vector_cost; a node named load<i> programs array i (cells 0..99) from DRAM, or
    array 0 for every load when ``shared``."""

    name: str = "fake"
    spec: FakeSpec = FakeSpec()
    shared: bool = False

    def op_cost(self, node) -> Cost:
        if node.name.startswith("load"):
            array = 0 if self.shared else int(node.name[4:])
            return Cost(10.0, 5.0, "load", parts={"arrays": 1.0, "dram": 4.0}, dram={"weights": 96},
                        writes=(Write(array, 0, 100),))
        return vector_cost(node, lanes=16, cycles_per_op=2.0, pj_per_op=0.5)

    def area(self) -> list[AreaPart]:
        return [AreaPart("arrays", "cells", 1000, 0.5, "test"), AreaPart("buffers", "a", 8, 1000.0, "test")]


def test_vector_cost_counts_results_reads_for_pooling_and_layout_is_free() -> None:
    g = _program()
    relu, pool, flat = g.nodes[:3]
    assert vector_cost(relu, lanes=16, cycles_per_op=2, pj_per_op=0.5) == Cost(2 * 256 / 16, 128.0, "vector")
    # pooling reads 256 elements (writes 64): counted by the operand
    assert vector_cost(pool, lanes=10, cycles_per_op=1, pj_per_op=1) == Cost(26.0, 256.0, "vector")
    assert vector_cost(flat, lanes=16, cycles_per_op=2, pj_per_op=0.5) == Cost(0.0, 0.0, "vector")


def test_loads_nobody_overwrites_are_one_time_and_leave_the_per_inference_totals() -> None:
    rep = program_cost(_program(), FakeTarget())
    assert isinstance(rep, CostReport) and not rep.reloads
    assert [l.name for l in rep.layers] == ["conv1", "pool", "flat", "fc"]  # program order; fallback: node name
    conv1 = rep.layers[0]
    assert conv1.per_inference.ops == 1 and conv1.per_inference.cycles == 32 and conv1.per_inference.energy_pj == 128
    assert conv1.one_time.ops == 1 and conv1.one_time.energy_pj == 5 and conv1.one_time.cycles == 10
    assert rep.one_time.ops == 2 and rep.one_time.energy_pj == 10 and rep.one_time.cell_writes == {1: 100, 2: 100}
    assert rep.one_time.by_component == {"arrays": 2.0, "dram": 8.0} and rep.one_time.dram_bytes == {"weights": 192}
    assert "load" not in rep.per_inference.by_unit
    assert rep.per_inference.cycles == 32 + 32 + 0  # relu, pool, a free reshape
    assert rep.per_inference.cycles == sum(l.per_inference.cycles for l in rep.layers)
    assert rep.latency_us == pytest.approx(rep.per_inference.cycles / 500.0)
    d = json.loads(json.dumps(rep.to_dict()))
    per, one = d["per_inference"], d["one_time"]
    assert per["energy_nj"] == pytest.approx((128 + 128) / 1e3) and per["weight_reloads"]["ops"] == 0
    assert per["energy_nj_by_component"] == {"vector_unit": pytest.approx(0.256)}
    assert one["energy_nj"] == pytest.approx(0.01) and one["time_us"] == pytest.approx(20 / 500)
    assert one["cell_writes_by_array"] == [{"array": 1, "cells": 100}, {"array": 2, "cells": 100}]
    assert [l["name"] for l in one["layers"]] == ["conv1", "fc"]
    assert d["latency"]["combine"].startswith("sum") and d["clock_mhz"] == 500.0
    assert d["area_mm2"]["total"] == pytest.approx(0.0005 + 0.008)
    assert d["area_mm2"]["by_component"] == {"arrays": pytest.approx(0.0005), "buffers": pytest.approx(0.008)}
    text = rep.table()
    assert "conv1" in text and "total" in text and "by unit:" in text and "one-time_nJ" in text


def test_loads_that_overwrite_each_other_are_reloads_per_inference() -> None:
    rep = program_cost(_program(), FakeTarget(shared=True))
    assert rep.reloads and rep.one_time.ops == 0 and rep.one_time.energy_pj == 0
    assert rep.per_inference.by_unit["load"] == {"cycles": 20.0, "energy_pj": 10.0, "ops": 2}
    assert rep.per_inference.cell_writes == {0: 200} and rep.per_inference.dram_bytes == {"weights": 192}
    d = rep.to_dict()["per_inference"]["weight_reloads"]
    assert d["ops"] == 2 and d["energy_nj"] == pytest.approx(0.01) and "every inference" in d["note"]


def test_program_cost_rejects_a_non_cost_a_bad_unit_and_parts_that_do_not_add_up() -> None:
    class Bad(FakeTarget):
        def op_cost(self, node):
            return 3.0

    with pytest.raises(TypeError, match=r"expected cimc\.cost\.Cost"):
        program_cost(_program(), Bad())

    class BadParts(FakeTarget):
        def op_cost(self, node):
            return Cost(1.0, 2.0, "array", parts={"adc": 1.0, "arrays": 0.5})

    with pytest.raises(TypeError, match=r"parts sum to 1.5 pJ, not its energy 2.0 pJ"):
        program_cost(_program(), BadParts())

    class BadUnit(FakeTarget):
        def op_cost(self, node):
            return Cost(1.0, 2.0, "adc")

    with pytest.raises(TypeError, match="unit 'adc'"):
        program_cost(_program(), BadUnit())


def _brute_one_time(costs: list[Cost]) -> set[int]:
    """Written from the definition: a load is one-time iff none of its cells is written by another op."""
    cells = {}
    for i, c in enumerate(costs):
        for w in c.writes:
            for cell in range(w.start, w.start + w.cells):
                cells.setdefault((w.array, cell), set()).add(i)
    return {i for i, c in enumerate(costs) if c.unit == "load" and c.writes
            and all(cells[(w.array, cell)] == {i} for w in c.writes for cell in range(w.start, w.start + w.cells))}


_writes = st.lists(st.builds(Write, st.integers(0, 3), st.integers(0, 40), st.integers(0, 12)), max_size=4)


def _as_arrays(writes: list[Write]) -> Writes:
    return Writes([w.array for w in writes], [w.start for w in writes], [w.cells for w in writes])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["load", "array"]), _writes, st.booleans(), st.booleans()), max_size=8))
def test_one_time_split_equals_a_cell_by_cell_count(ops) -> None:
    """The split and the cells written per array, whether an op gives its writes as a tuple or as arrays (these
    summed when the counts are read: read between adds too), arrays in the order of their first writes."""
    costs = [Cost(1.0, 1.0, unit, writes=(_as_arrays(w) if arrays else tuple(w)) if unit == "load" else ())
             for unit, w, arrays, _ in ops]
    assert _one_time(costs) == _brute_one_time(costs)
    tally, cells = Tally(), {}
    for c, (*_, peek) in zip(costs, ops, strict=True):
        tally.add(c)
        for w in c.writes:
            cells[w.array] = cells.get(w.array, 0) + w.cells
        if peek:
            assert list(tally.cell_writes.items()) == list(cells.items())
    assert list(tally.cell_writes.items()) == list(cells.items())


_from_cell_0 = st.lists(st.builds(Write, st.integers(0, 3), st.just(0), st.integers(0, 12)), max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["load", "array"]), _from_cell_0, st.booleans()), max_size=8))
def test_one_time_split_of_loads_from_cell_0_equals_a_cell_by_cell_count(ops) -> None:
    """Loads that write their arrays from cell 0 on (as the array targets' and racetrack's loads do) take a
    shorter way to the split: the same split as the definition."""
    costs = [Cost(1.0, 1.0, unit, writes=(_as_arrays(w) if arrays else tuple(w)) if unit == "load" else ())
             for unit, w, arrays in ops]
    assert _one_time(costs) == _brute_one_time(costs)


def test_writes_are_a_sequence_of_write() -> None:
    w = Writes([3, 5], 0, [10, 7])
    assert w == (Write(3, 0, 10), Write(5, 0, 7)) and list(w[1:]) == [Write(5, 0, 7)] and w[-1] == Write(5, 0, 7)
    assert len(w) == 2 and w != (Write(3, 0, 10),) and hash(w) == hash(tuple(w))
    assert [c.tolist() for c in write_columns(w)] == [[3, 5], [0, 0], [10, 7]]
    assert [c.tolist() for c in write_columns((Write(1, 2, 3),))] == [[1], [2], [3]]
    assert Cost(1.0, 1.0, "load", writes=w) == Cost(1.0, 1.0, "load", writes=tuple(w))
    with pytest.raises(ValueError, match="must agree"):
        Writes([1, 2, 3], 0, [4, 5])
    with pytest.raises(ValueError):
        w.cells[0] = 1  # read-only: a Cost is frozen


def test_one_time_at_the_edges() -> None:
    """Spans that touch do not overlap; one shared cell does; an op overlapping its own writes stays one-time."""
    def loads(*writes: tuple[Write, ...]) -> list[Cost]:
        return [Cost(1.0, 1.0, "load", writes=w) for w in writes]

    assert _one_time(loads((Write(0, 0, 10),), (Write(0, 10, 5),))) == {0, 1}
    assert _one_time(loads((Write(0, 0, 10),), (Write(0, 9, 5),))) == set()
    assert _one_time(loads((Write(0, 0, 10), Write(0, 5, 10)), (Write(1, 0, 10),))) == {0, 1}
    assert _one_time(loads((Write(0, 0, 10), Write(2, 3, 1)), (Write(1, 0, 10), Write(2, 0, 4)))) == set()


def test_write_overlap() -> None:
    assert Write(0, 0, 10).overlaps(Write(0, 9, 1)) and not Write(0, 0, 10).overlaps(Write(0, 10, 5))
    assert not Write(0, 0, 10).overlaps(Write(1, 0, 10))


def _value(g: Graph, name: str, shape, dtype=DType.f32):
    return g.add_input(name, TensorType(dtype, shape))


def test_mac_dims_count_the_multiply_accumulates_a_symbolic_batch_as_one() -> None:
    g = Graph()
    # attention scores: [batch, heads, T, d] x [batch, heads, d, T]: heads * T * T dot products of d
    q, k = _value(g, "q", ("N", 4, 16, 8)), _value(g, "k", ("N", 4, 8, 16))
    s = g.add_node("MatMul", [q, k], outputs=[TensorType(DType.f32, ("N", 4, 16, 16))], name="s")
    assert mac_dims(s) == (4 * 16, 8, 16) and np.prod(mac_dims(s)) == 4 * 16 * 16 * 8
    # broadcast matmul with a 1-D right operand: every result element is one dot product of K
    v = _value(g, "v", (8,))
    mv = g.add_node("MatMul", [q, v], outputs=[TensorType(DType.f32, ("N", 4, 16))], name="mv")
    assert np.prod(mac_dims(mv)) == 4 * 16 * 8
    a, b = _value(g, "a", (8, "N")), _value(g, "b", (32, 8))
    gemm = g.add_node("Gemm", [a, b], {"transA": 1, "transB": 1}, outputs=[TensorType(DType.f32, ("N", 32))], name="g")
    assert mac_dims(gemm) == (1, 8, 32)
    x, w, r = _value(g, "x", (10, "N", 6)), _value(g, "w", (2, 4 * 5, 6)), _value(g, "r", (2, 4 * 5, 5))
    lstm = g.add_node("LSTM", [x, w, r], {"hidden_size": 5, "direction": "bidirectional"},
                      outputs=[TensorType(DType.f32, (10, 2, "N", 5))], name="lstm")
    assert mac_dims(lstm) == (10 * 2, 6 + 5, 4 * 5)  # per step, direction and sample: 4 gates of W x + R h
    gw, gr = _value(g, "gw", (1, 3 * 5, 6)), _value(g, "gr", (1, 3 * 5, 5))
    gru = g.add_node("GRU", [x, gw, gr], {"hidden_size": 5}, outputs=[TensorType(DType.f32, (10, 1, "N", 5))],
                     name="gru")
    assert mac_dims(gru) == (10, 11, 15)
    img, cw = _value(g, "img", ("N", 6, 9, 9)), _value(g, "cw", (12, 3, 3, 3))
    conv = g.add_node("Conv", [img, cw], {"group": 2}, outputs=[TensorType(DType.f32, ("N", 12, 7, 7))], name="c")
    assert mac_dims(conv) == (49, 3 * 9, 12)  # each output element: C_in/group * kh * kw MACs
    tw = _value(g, "tw", (6, 4, 2, 2))
    ct = g.add_node("ConvTranspose", [img, tw], outputs=[TensorType(DType.f32, ("N", 4, 10, 10))], name="ct")
    assert np.prod(mac_dims(ct)) == 6 * 81 * 4 * 4  # every input element meets C_out * kh * kw weights
    # Attention, 4-D: 2 heads, 16 queries, 24 keys (8 past + 16), head size 8, value size 4
    aq, ak, av = _value(g, "aq", ("N", 2, 16, 8)), _value(g, "ak", ("N", 2, 16, 8)), _value(g, "av", ("N", 2, 16, 4))
    pk, pv = _value(g, "pk", ("N", 2, 8, 8)), _value(g, "pv", ("N", 2, 8, 4))
    att = g.add_node("Attention", [aq, ak, av, None, pk, pv], outputs=[TensorType(DType.f32, ("N", 2, 16, 4))],
                     name="att")
    assert np.prod(mac_dims(att)) == 2 * 16 * 24 * 8 + 2 * 16 * 24 * 4  # Q K^T, then P V
    # 3-D with grouped-query heads: 4 query heads of 8, 2 key/value heads of 8
    q3, k3, v3 = _value(g, "q3", ("N", 5, 32)), _value(g, "k3", ("N", 7, 16)), _value(g, "v3", ("N", 7, 16))
    att3 = g.add_node("Attention", [q3, k3, v3], {"q_num_heads": 4, "kv_num_heads": 2},
                      outputs=[TensorType(DType.f32, ("N", 5, 32))], name="att3")
    assert np.prod(mac_dims(att3)) == 4 * 5 * 7 * (8 + 8)
    e1, e2 = _value(g, "e1", ("N", 3, 5, 6)), _value(g, "e2", ("N", 3, 6, 7))
    es = g.add_node("Einsum", [e1, e2], {"equation": "...ij,...jk->...ik"},
                    outputs=[TensorType(DType.f32, ("N", 3, 5, 7))], name="es")
    assert np.prod(mac_dims(es)) == 3 * 5 * 7 * 6
    es2 = g.add_node("Einsum", [e1, e1], {"equation": "bhij,bhij->bh"}, outputs=[TensorType(DType.f32, ("N", 3))],
                     name="es2")
    assert np.prod(mac_dims(es2)) == 3 * 5 * 6
    assert mac_dims(g.add_node("Einsum", [e1], {"equation": "bhij->bhji"},
                               outputs=[TensorType(DType.f32, ("N", 3, 6, 5))], name="tr")) is None
    assert mac_dims(g.add_node("Relu", [img], name="relu")) is None


def test_a_symbolic_batch_counts_as_one_sample() -> None:
    g = Graph()
    x = g.add_input("x", TensorType(DType.f32, ("N", 4, 8)))
    g.outputs = [g.add_node("Relu", [x], name="r").outputs[0]]
    assert vector_cost(g.nodes[0], lanes=8, cycles_per_op=1, pj_per_op=1.0) == Cost(4.0, 32.0, "vector")


def _vector_unit_program() -> Graph:
    """Vector-unit ops on one sample: q.requant of 640 int32, a float Mul, a Relu, attention's q.act_matmul of
    [N, 4, 16, 8] by [N, 4, 8, 16] (int8), a float MatMul of [N, 10, 12] by [12, 6]."""
    g = Graph()
    acc = g.add_input("acc", TensorType(DType.i32, ("N", 640)))
    f = g.add_input("f", TensorType(DType.f32, ("N", 640)))
    a = g.add_input("a", TensorType(DType.i8, ("N", 4, 16, 8)))
    b = g.add_input("b", TensorType(DType.i8, ("N", 4, 8, 16)))
    m = g.add_input("m", TensorType(DType.f32, ("N", 10, 12)))
    w = g.add_constant(np.ones((12, 6), np.float32), "w")
    g.add_node("q.requant", [acc], outputs=[TensorType(DType.i8, ("N", 640))], name="requant")
    g.add_node("Mul", [f, f], name="mul")
    g.add_node("Relu", [f], name="relu")
    g.add_node("q.act_matmul", [a, b], outputs=[TensorType(DType.i32, ("N", 4, 16, 16))], name="attn")
    g.add_node("MatMul", [m, w], name="fmm")
    return g


def test_every_target_prices_its_vector_unit_ops_by_one_table_equal_to_the_hand_computation() -> None:
    """Each target's ``op_cost`` of a vector-unit op is :func:`vector_unit_cost` of its spec, and that equals
    the hand count from the shared figures (vec_op_pj 0.029, vec_mul_pj 0.899, fp_mac_pj 1.334 pJ, one cycle
    per step): a multiplying op pays the multiply on top of the add-class op, attention's integer matmul and a
    float matmul their MACs, on every target alike."""
    from cimc.targets import all_targets, load_target

    lanes = {"npu": 32, "sram-cim": 16, "racetrack": 16}
    nodes = {n.name: n for n in _vector_unit_program().nodes}
    for name in all_targets():
        t = load_target(name)
        if name not in lanes:  # a target added later: its own op_cost must still be the shared model
            for n in nodes.values():
                if n.op != "MatMul":
                    assert t.op_cost(n) == vector_unit_cost(n, t.spec), (name, n.op)
            continue
        L = lanes[name]
        macs = 4 * 16 * 8 * 16
        want = {"requant": Cost(-(-640 // L), 640 * (0.029 + 0.899), "vector"),
                "mul": Cost(-(-640 // L), 640 * (0.029 + 0.899), "vector"),
                "relu": Cost(-(-640 // L), 640 * 0.029, "vector"),
                "attn": Cost(-(-1024 // L) + -(-macs // L), 1024 * 0.029 + macs * (0.899 + 0.029), "vector", macs)}
        if name != "npu":  # the npu runs a float MatMul on its MAC array, the others on the vector unit
            want["fmm"] = Cost(-(-60 // L) + -(-720 // L), 60 * 0.029 + 720 * 1.334, "vector", 720)
        for key, cost in want.items():
            got = t.op_cost(nodes[key])
            assert got == vector_unit_cost(nodes[key], t.spec), (name, key)
            assert (got.cycles, got.unit, got.macs) == (cost.cycles, cost.unit, cost.macs), (name, key)
            assert got.energy_pj == pytest.approx(cost.energy_pj, rel=1e-12), (name, key)


def test_the_vector_unit_tables_name_vector_unit_ops() -> None:
    from cimc.cost import VECTOR_MAC_OPS, VECTOR_MUL_OPS
    from cimc.target import VECTOR_OPS

    assert VECTOR_MUL_OPS <= set(VECTOR_OPS) and VECTOR_MAC_OPS <= set(VECTOR_OPS)


def test_spilled_fraction_and_area_dict() -> None:
    assert spilled_fraction(100, 60) == pytest.approx(0.4) and spilled_fraction(50, 60) == 0
    assert spilled_fraction(0, 60) == 0
    parts = [AreaPart("adc", "ADCs", 16, 100.0, "s1"), AreaPart("adc", "more", 4, 50.0, "s2"),
             AreaPart("dac", "DACs", 128, 0.5, "s3")]
    d = area_dict(parts)
    assert d["total"] == pytest.approx((1600 + 200 + 64) * 1e-6)
    assert d["by_component"] == {"adc": pytest.approx(1800e-6), "dac": pytest.approx(64e-6)}
    assert [p["source"] for p in d["parts"]] == ["s1", "s2", "s3"]


def test_cost_components_default_to_the_units_block() -> None:
    for unit, comp in zip(("array", "vector", "dma", "load"), ("arrays", "vector_unit", "dram", "arrays"), strict=True):
        assert Cost(1, 2.0, unit).components() == {comp: 2.0}
    assert Cost(1, 2.0, "array", parts={"adc": 1.5, "arrays": 0.5}).components() == {"adc": 1.5, "arrays": 0.5}
