"""Cost model shared by every target: what one program op costs, and the per-layer summary.

A target prices each op of a lowered program with ``op_cost(node) -> Cost`` from the op's
attributes and its operand/result types (static shapes) only, never by running it, so costing a
program is as fast as walking it. :func:`program_cost` adds those costs up, grouped by the
``cim.layer`` annotation every lowering pass puts on the ops it emits (the name of the source node
the op implements; ops without it are their own layer), into a :class:`CostReport`.

:func:`vector_cost` is the shared model of the digital vector unit: an op processes ``elements``
element operations, ``lanes`` per step, each step taking ``cycles_per_op`` cycles and each element
operation ``pj_per_op`` picojoules. Elements counted: the size of the largest result, except for
reductions and pooling (which read more than they write), counted by the size of the largest
operand; a symbolic dim (the batch) counts as 1, so every cost is per inference. Pure layout ops
(Reshape, Flatten, Squeeze, Unsqueeze, Identity) cost nothing: on a real machine they only change
the tensor's descriptor (metadata), never move data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "LAYOUT_OPS",
    "UNITS",
    "ZERO",
    "Cost",
    "CostReport",
    "LayerCost",
    "num_elements",
    "program_cost",
    "summarize",
    "vector_cost",
]

UNITS = ("array", "vector", "dma", "load")
"""Where a cost is spent: the arrays, the digital vector unit, data movement, weight (re)loading."""
LAYOUT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
"""Ops that only change a tensor's descriptor: free on every target."""
_READ_COUNTED = ("Reduce", "Pool", "ArgMax", "ArgMin")  # op-name fragments counted by operand size


@dataclass(frozen=True)
class Cost:
    """Cost of one program op: ``cycles`` (of the target clock), ``energy_pj`` (picojoules), the
    ``unit`` that spends it ("array" | "vector" | "dma" | "load"), and ``macs`` done (array ops)."""

    cycles: float
    energy_pj: float
    unit: str
    macs: int = 0


ZERO = Cost(0.0, 0.0, "vector")
"""The cost of a free (layout) op."""


def num_elements(value: Any) -> int:
    """Number of elements of one sample of a value: a symbolic or unknown dim (the batch) counts as 1,
    so costs are per inference; 0 if the value is absent or its rank unknown."""
    t = getattr(value, "type", None) if value is not None else None
    shape = getattr(t, "shape", None)
    if shape is None:
        return 0
    return math.prod(d if isinstance(d, int) else 1 for d in shape)


def vector_cost(node: Any, *, lanes: int, cycles_per_op: float, pj_per_op: float | None = None,
                pj_per_elem_op: float | None = None) -> Cost:
    """Cost of ``node`` on a vector unit with ``lanes`` lanes: ``ceil(elements / lanes) * cycles_per_op``
    cycles and ``elements * pj_per_op`` pJ, elements as the module docstring counts them; layout ops
    are free. (``pj_per_elem_op`` is another name for ``pj_per_op``.)"""
    pj = pj_per_op if pj_per_op is not None else pj_per_elem_op
    if pj is None:
        raise TypeError("vector_cost needs pj_per_op (energy per element operation, pJ)")
    if node.op in LAYOUT_OPS:
        return ZERO
    values = node.inputs if any(k in node.op for k in _READ_COUNTED) else node.outputs
    elements = max((num_elements(v) for v in values), default=0)
    return Cost(math.ceil(elements / max(lanes, 1)) * cycles_per_op, elements * pj, "vector")


class _CostTarget(Protocol):
    def op_cost(self, node: Any) -> Cost: ...


@dataclass
class LayerCost:
    """Totals of one layer (the ops sharing a ``cim.layer``): cycles, energy, MACs, weight-load bytes,
    op count, and cycles/energy per unit."""

    name: str
    cycles: float = 0.0
    energy_pj: float = 0.0
    macs: int = 0
    load_bytes: int = 0
    ops: int = 0
    by_unit: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, cost: Cost, load_bytes: int = 0) -> None:
        """Account one op's cost."""
        self.cycles += cost.cycles
        self.energy_pj += cost.energy_pj
        self.macs += cost.macs
        self.load_bytes += load_bytes
        self.ops += 1
        u = self.by_unit.setdefault(cost.unit, {"cycles": 0.0, "energy_pj": 0.0, "ops": 0})
        u["cycles"] += cost.cycles
        u["energy_pj"] += cost.energy_pj
        u["ops"] += 1

    def to_dict(self, clock_mhz: float | None) -> dict[str, Any]:
        """JSON-ready totals (latency in microseconds when the clock is known)."""
        return {"name": self.name, "cycles": self.cycles, "latency_us": _latency(self.cycles, clock_mhz),
                "energy_pj": self.energy_pj, "macs": self.macs, "weight_load_bytes": self.load_bytes,
                "ops": self.ops, "by_unit": {k: dict(self.by_unit[k]) for k in sorted(self.by_unit)}}


def _latency(cycles: float, clock_mhz: float | None) -> float | None:
    return cycles / clock_mhz if clock_mhz else None  # cycles / MHz = microseconds


@dataclass
class CostReport:
    """Cost of a whole program: one :class:`LayerCost` per layer in program order, and the total."""

    target: str
    clock_mhz: float | None
    layers: list[LayerCost]
    total: LayerCost

    @property
    def latency_us(self) -> float | None:
        """End-to-end latency in microseconds (ops run one after another), if the clock is known."""
        return _latency(self.total.cycles, self.clock_mhz)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: target, clock, ``layers`` (in program order) and ``total``."""
        return {"target": self.target, "clock_mhz": self.clock_mhz,
                "layers": [l.to_dict(self.clock_mhz) for l in self.layers],
                "total": self.total.to_dict(self.clock_mhz)}

    def table(self) -> str:
        """Plain-text table: one row per layer, then the total."""
        head = ("layer", "ops", "cycles", "latency_us", "energy_nJ", "MACs", "load_B")
        rows = [self._row(l) for l in [*self.layers, self.total]]
        w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        fmt = lambda r: "  ".join([r[0].ljust(w[0]), *(c.rjust(w[i + 1]) for i, c in enumerate(r[1:]))])  # noqa: E731
        lines = [fmt(head), "  ".join("-" * x for x in w), *map(fmt, rows[:-1]), "  ".join("-" * x for x in w),
                 fmt(rows[-1])]
        units = ", ".join(f"{u} {d['cycles']:.0f} cycles / {d['energy_pj'] / 1e3:.3f} nJ"
                          for u, d in sorted(self.total.by_unit.items()))
        return "\n".join(lines) + (f"\nby unit: {units}" if units else "")

    def _row(self, l: LayerCost) -> tuple[str, ...]:
        lat = _latency(l.cycles, self.clock_mhz)
        return (l.name, str(l.ops), f"{l.cycles:.0f}", "-" if lat is None else f"{lat:.3f}",
                f"{l.energy_pj / 1e3:.3f}", str(l.macs), str(l.load_bytes))


def program_cost(program: Any, target: _CostTarget) -> CostReport:
    """Price every node of ``program`` with ``target.op_cost`` and group by the ``cim.layer``
    annotation (fallback: the node's name). Weight-reload traffic is the sum of ``cim.bytes`` over
    ops whose cost unit is "load"."""
    layers: dict[str, LayerCost] = {}
    total = LayerCost("total")
    for node in program.nodes:
        cost = target.op_cost(node)
        if not isinstance(cost, Cost):
            raise TypeError(f"{type(target).__name__}.op_cost({node.op} '{node.name}') returned "
                            f"{type(cost).__name__}, expected cimc.cost.Cost")
        load = int(node.attrs.get("cim.bytes", 0)) if cost.unit == "load" else 0
        layer = str(node.attrs.get("cim.layer") or node.name)
        layers.setdefault(layer, LayerCost(layer)).add(cost, load)
        total.add(cost, load)
    spec = getattr(target, "spec", None)
    clock = getattr(spec, "clock_mhz", None)
    return CostReport(getattr(target, "name", type(target).__name__), float(clock) if clock else None,
                      list(layers.values()), total)


summarize = program_cost
"""Another name for :func:`program_cost`."""
