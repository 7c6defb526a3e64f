"""Cost model shared by every target: what one program op costs, and the program's cost report.

A target prices each op of a lowered program with ``op_cost(node) -> Cost`` from the op's attributes
and its operand/result types (static shapes) only, never by running it, so costing a program is as
fast as walking it. A :class:`Cost` gives the op's ``cycles``, its ``energy_pj`` split by hardware
component (``parts``: arrays, ADCs, DACs, shift-add, buffers, interconnect, vector unit, DRAM, or a
target's own), the unit that spends the time (``array``, ``vector``, ``dma``, ``load``), its MACs,
the DRAM bytes it moves by kind (``weights``, ``spills``), counts of the target's own hardware events
(``events``: racetrack shifts, ...) and, for an op that programs arrays, the cell regions it writes
(:class:`Write`).

:func:`program_cost` adds the costs up into a :class:`CostReport`:

- **One-time vs per inference.** An op that programs arrays (unit ``load``) is *one-time* when no
  other op of the program writes any cell region it writes: what it stores stays in place from one
  inference to the next, so it runs once, before inference (programming). Every other op is *per
  inference*, including loads whose regions another load overwrites (a model larger than its arrays
  reloads them on every inference; the report says so). A load that declares no regions cannot be
  shown to stay and counts as per inference.
- **Per layer.** Per-inference costs are grouped by the ``cim.layer`` annotation every lowering puts
  on the ops it emits (the source node's name; ops without it are their own layer), in program order.
- **Latency** combines ops by summing their cycles in program order: one op at a time, units never
  overlap (:data:`LATENCY_MODEL`). The report also gives the lower bound if the units (arrays, vector
  unit, DMA) overlapped perfectly: the busiest unit's cycles.
- **Area** is the target's :meth:`area` (a list of :class:`AreaPart`, each citing its source), summed
  per component; ``None`` if the target has no area model.
- **Events** (``Cost.events``) add up like energy; each kind is a key of ``per_inference`` and
  ``one_time`` (and of each layer), e.g. ``shifts``. **Notes** are the target's ``cost_notes()``: what its
  op costs assume beyond this module's model (what overlaps inside an op), printed with the latency.

Shared pieces targets build op costs from: :func:`vector_unit_cost` (the digital vector unit every target
prices its non-array ops on, one op table for all: :data:`VECTOR_MUL_OPS` multiply, :data:`VECTOR_MAC_OPS`
count their multiply-accumulates), built on :func:`vector_cost` (an op
processes ``elements`` element operations, ``lanes`` per step, each step ``cycles_per_op`` cycles and
each element operation ``pj_per_op``; elements counted: the size of the largest result, except for
reductions and pooling, which read more than they write, counted by the largest operand; pure layout
ops (Reshape, Flatten, Squeeze, Unsqueeze, Identity) cost nothing: they only change a tensor's
descriptor), :func:`mac_dims` (the multiply-accumulate work of float matrix and recurrent ops, for
a vector unit or MAC array that runs them), and :func:`spilled_fraction` (the part of a tensor that
does not fit its buffer and lives in DRAM). Every count takes a symbolic dim (the batch) as 1 (a
product dim such as ``16*batch`` as 16, :func:`~cimc.ir.types.dim_per_sample`), so every cost is per
inference (one sample); :func:`sample_dims` says which dims were taken as 1, so that a symbolic dim other than
the batch (a sequence length) is reported, not silently priced at 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from cimc.ir.types import dim_factors, dim_per_sample

__all__ = [
    "COMPONENTS",
    "DRAM_KINDS",
    "LATENCY_MODEL",
    "LAYOUT_OPS",
    "REPORT_KEYS",
    "UNITS",
    "VECTOR_MAC_OPS",
    "VECTOR_MUL_OPS",
    "ZERO",
    "AreaPart",
    "Cost",
    "CostReport",
    "LayerCost",
    "SampleDims",
    "Tally",
    "VectorUnitSpec",
    "Write",
    "Writes",
    "area_dict",
    "counts",
    "mac_dims",
    "num_elements",
    "program_cost",
    "sample_dims",
    "spilled_fraction",
    "vector_cost",
    "vector_unit_cost",
    "write_columns",
]

REPORT_KEYS = frozenset({"cycles", "latency_us", "time_us", "energy_nj", "macs", "ops", "by_unit",
                         "energy_nj_by_component", "dram_bytes", "energy_fj_per_mac", "tops_per_w", "weight_reloads",
                         "layers", "cell_writes_by_array", "cell_writes_total", "name"})
"""Keys of the report's per-inference and one-time sections; an event kind may not be one of them."""
UNITS = ("array", "vector", "dma", "load")
"""Where an op spends its time: the arrays, the digital vector unit, data movement, array programming
(weight loads and reloads)."""
COMPONENTS = ("arrays", "adc", "dac", "shift_add", "buffers", "interconnect", "vector_unit", "dram")
"""Hardware blocks energy and area are reported by (a target may add its own)."""
DRAM_KINDS = ("weights", "spills")
"""What DRAM traffic carries: weights (loads and reloads) and spills (activations and partial sums beyond
the on-chip buffers)."""
LATENCY_MODEL = ("sum: ops run one at a time in program order, so latency is the sum of every op's cycles "
                 "divided by the clock; the arrays, the vector unit and DMA never overlap")
"""How the report combines op latencies (stated in every report)."""
LAYOUT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
"""Ops that only change a tensor's descriptor: free on every target."""
_READ_COUNTED = ("Reduce", "Pool", "ArgMax", "ArgMin")  # op-name fragments counted by operand size
VECTOR_MUL_OPS = frozenset({
    # integer: a rescaling multiplier per element (requantization, an add of two scales, (de)quantization), a
    # product, an average's reciprocal, softmax's exponent and normalisation
    "q.requant", "q.add", "q.quantize", "q.dequantize", "q.mul", "q.avg_pool", "q.softmax",
    # float: products, quotients, averages and the functions a vector unit evaluates by multiplying (polynomials,
    # Newton steps): exponentials, logarithms, roots, trigonometric and hyperbolic functions, normalisations
    "Mul", "Div", "Pow", "Mod", "Mean", "Reciprocal", "Sqrt", "Exp", "Log", "Erf", "Gelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "Tanh", "Softplus", "Softsign", "Mish", "Swish", "Elu", "Selu", "Celu", "LeakyRelu", "PRelu",
    "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "SwiGLU",
    "RotaryEmbedding", "AveragePool", "GlobalAveragePool", "LpPool", "GlobalLpPool", "ReduceMean", "ReduceProd",
    "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "CumProd", "Softmax", "LogSoftmax",
    "LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization", "RMSNormalization",
    "MeanVarianceNormalization", "LpNormalization", "LRN"})
"""Vector-unit ops whose element operation multiplies: each element costs ``vec_mul_pj`` on top of the
``vec_op_pj`` of every element (:func:`vector_unit_cost`)."""
VECTOR_MAC_OPS = frozenset({"MatMul", "q.act_matmul", "Gemm", "Conv", "ConvTranspose", "DeformConv", "LSTM", "GRU",
                            "RNN", "Attention", "Einsum"})
"""Vector-unit ops with multiply-accumulate work (:func:`mac_dims`): attention's integer matmul of two
activations, and the float matrix and recurrent ops that run in float (``allow_float``)."""
_DEFAULT_COMPONENT = {"array": "arrays", "vector": "vector_unit", "dma": "dram", "load": "arrays"}


@dataclass(frozen=True)
class Write:
    """Cells ``start .. start + cells - 1`` of array ``array`` written by an op that programs arrays.
    Two writes overlap when they share an array and a cell; an op whose writes no other op overlaps
    stores its data for good (one-time programming)."""

    array: int
    start: int
    cells: int

    def overlaps(self, other: Write) -> bool:
        """Whether both writes touch a common cell of one array."""
        return (self.array == other.array and self.start < other.start + other.cells
                and other.start < self.start + self.cells)


class Writes(Sequence[Write]):
    """Many :class:`Write` regions as three int64 arrays (``array``, ``start``, ``cells``): how an op that
    programs hundreds of arrays at once reports them without a Python object per region. It is a sequence of
    :class:`Write` (equal to the tuple of the same writes); the cost report reads its arrays directly."""

    __slots__ = ("array", "cells", "start")

    def __init__(self, array: Any, start: Any, cells: Any) -> None:
        cols = [np.array(c, np.int64).reshape(-1) for c in (array, start, cells)]
        n = len(cols[0])
        cols = [np.broadcast_to(c, (n,)).copy() if c.size == 1 and n != 1 else c for c in cols]
        if any(len(c) != n for c in cols):
            raise ValueError(f"writes: array, start and cells have {[len(c) for c in cols]} entries; they must agree")
        for c in cols:
            c.flags.writeable = False
        self.array, self.start, self.cells = cols

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return Writes(self.array[i], self.start[i], self.cells[i])
        return Write(int(self.array[i]), int(self.start[i]), int(self.cells[i]))

    def __iter__(self) -> Iterator[Write]:
        return map(Write, self.array.tolist(), self.start.tolist(), self.cells.tolist())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Writes({list(self)!r})"


def write_columns(writes: Sequence[Write]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(array, start, cells)`` of ``writes`` as int64 arrays."""
    if isinstance(writes, Writes):
        return writes.array, writes.start, writes.cells
    if not writes:
        return tuple(np.zeros(0, np.int64) for _ in range(3))  # type: ignore[return-value]
    a = np.array([(w.array, w.start, w.cells) for w in writes], np.int64)
    return a[:, 0], a[:, 1], a[:, 2]


@dataclass(frozen=True)
class Cost:
    """Cost of one program op.

    ``cycles`` of the target clock; ``energy_pj`` (picojoules); the ``unit`` that spends the time
    ("array" | "vector" | "dma" | "load"); ``macs`` done; ``parts``: the energy by component (they sum to
    ``energy_pj``; empty: all of it in the unit's default component); ``dram``: bytes moved to or from
    DRAM by kind (:data:`DRAM_KINDS`); ``writes``: the cell regions an op of unit "load" programs (a tuple
    of :class:`Write`, or :class:`Writes` for many);
    ``events``: counts of the target's own hardware events by kind (racetrack ``shifts``), a name the
    report does not already use (:data:`REPORT_KEYS`).
    """

    cycles: float
    energy_pj: float
    unit: str
    macs: int = 0
    parts: Mapping[str, float] = field(default_factory=dict)
    dram: Mapping[str, float] = field(default_factory=dict)
    writes: Sequence[Write] = ()
    events: Mapping[str, float] = field(default_factory=dict)

    def components(self) -> dict[str, float]:
        """The energy by component: ``parts``, or all of it in the unit's default component."""
        return dict(self.parts) if self.parts else {_DEFAULT_COMPONENT.get(self.unit, self.unit): self.energy_pj}


ZERO = Cost(0.0, 0.0, "vector")
"""The cost of a free (layout) op."""


def num_elements(value: Any) -> int:
    """Number of elements of one sample of a value: a symbolic or unknown dim (the batch) counts as 1,
    so costs are per inference; 0 if the value is absent or its rank unknown."""
    t = getattr(value, "type", None) if value is not None else None
    shape = getattr(t, "shape", None)
    if shape is None:
        return 0
    return math.prod(dim_per_sample(d) for d in shape)


@dataclass(frozen=True)
class SampleDims:
    """The dims per-inference counts took as 1 in a program (:func:`sample_dims`)."""

    batch: tuple[str, ...]
    """Symbolic names that lead a graph input's shape: the batch, rightly counted as 1 (one sample)."""
    other: tuple[str, ...]
    """Other symbolic names (a sequence length, an image size): counted as 1, so the layers they size are priced
    for a size of 1; fixing them (``--dim NAME=SIZE``) prices them at their size."""
    unknown: int
    """Values with a dim of unknown size (counted as 1 too). Not warned of: in exported models they are nearly
    always the batch, lost through shape arithmetic (``Range``, ``Max``) that type inference does not follow."""

    def warning(self) -> str | None:
        """One line for the user when a symbolic dim other than the batch was counted as 1, else None."""
        if not self.other:
            return None
        names = ", ".join(repr(n) for n in self.other)
        example = " ".join(f"--dim {n}=SIZE" for n in self.other)
        return (f"symbolic dim(s) {names} (not the batch) counted as 1 per inference: the layers they size are "
                f"priced for a size of 1; give {example} to price them at their size")


def sample_dims(graph: Any) -> SampleDims:
    """Which dims of ``graph``'s node operands and results the per-inference counts took as 1: symbolic names
    (those of a product dim too), split into the batch (leading a graph input's shape) and the others, and how
    many values have an unknown dim."""
    lead = {d for v in graph.inputs if v.type.shape for d in v.type.shape[:1] if isinstance(d, str)}
    names: dict[str, None] = {}
    unknown: dict[int, None] = {}
    for node in graph.nodes:
        for v in (*node.inputs, *node.outputs):
            shape = getattr(getattr(v, "type", None), "shape", None) if v is not None else None
            for d in shape or ():
                if d is None:
                    unknown.setdefault(id(v), None)
                elif isinstance(d, str):
                    for name in dim_factors(d)[1]:
                        names.setdefault(name, None)
    batch = tuple(n for n in names if n in lead)
    return SampleDims(batch, tuple(n for n in names if n not in lead), len(unknown))


def counts(value: Any) -> tuple[int, ...]:
    """The shape of one sample of a value as counts: a symbolic or unknown dim is 1; ``()`` if the value is
    absent or its rank unknown."""
    shape = getattr(getattr(value, "type", None), "shape", None) if value is not None else None
    return tuple(dim_per_sample(d) for d in shape) if shape is not None else ()


def _dim(shape: Any, i: int) -> int:
    """``shape[i]`` as a count: a symbolic or missing dim is 1."""
    try:
        d = shape[i]
    except (IndexError, TypeError):
        return 1
    return dim_per_sample(d)


def vector_cost(node: Any, *, lanes: int, cycles_per_op: float, pj_per_op: float) -> Cost:
    """Cost of ``node`` on a vector unit with ``lanes`` lanes: ``ceil(elements / lanes) * cycles_per_op``
    cycles and ``elements * pj_per_op`` pJ (component ``vector_unit``), elements as the module docstring
    counts them; layout ops are free."""
    if node.op in LAYOUT_OPS:
        return ZERO
    values = node.inputs if any(k in node.op for k in _READ_COUNTED) else node.outputs
    elements = max((num_elements(v) for v in values), default=0)
    return Cost(math.ceil(elements / max(lanes, 1)) * cycles_per_op, elements * pj_per_op, "vector")


class VectorUnitSpec(Protocol):
    """The figures of a target's spec :func:`vector_unit_cost` reads (the shared parameters of
    :func:`cimc.target.shared_param`, and the target's ``vec_lanes``)."""

    @property
    def vec_lanes(self) -> int: ...

    @property
    def vec_op_cycles(self) -> int: ...

    @property
    def vec_op_pj(self) -> float: ...

    @property
    def vec_mul_pj(self) -> float: ...

    @property
    def fp_mac_pj(self) -> float: ...

    @property
    def buffer_pj_per_byte(self) -> float: ...


def vector_unit_cost(node: Any, spec: VectorUnitSpec) -> Cost:
    """Cost of ``node`` on the digital vector unit of ``spec``, the one model every target prices its vector-unit
    ops with.

    Elementwise (:func:`vector_cost`): ``ceil(elements / vec_lanes) * vec_op_cycles`` cycles and ``vec_op_pj``
    per element, plus ``vec_mul_pj`` for the ops that multiply (:data:`VECTOR_MUL_OPS`); layout ops are free.
    ``vec.im2col`` also writes its result into the buffer (``buffer_pj_per_byte`` per element, component
    ``buffers``). An op with multiply-accumulate work (:data:`VECTOR_MAC_OPS`, :func:`mac_dims`) adds its MACs,
    ``vec_lanes`` per ``vec_op_cycles``, at ``vec_mul_pj + vec_op_pj`` each (integer operands) or ``fp_mac_pj``
    (float), on top of the elementwise cost of its result."""
    pj = spec.vec_op_pj + (spec.vec_mul_pj if node.op in VECTOR_MUL_OPS else 0.0)
    c = vector_cost(node, lanes=spec.vec_lanes, cycles_per_op=spec.vec_op_cycles, pj_per_op=pj)
    if node.op == "vec.im2col":
        extra = num_elements(node.outputs[0]) * spec.buffer_pj_per_byte
        return Cost(c.cycles, c.energy_pj + extra, c.unit, parts={"vector_unit": c.energy_pj, "buffers": extra})
    dims = mac_dims(node) if node.op in VECTOR_MAC_OPS else None
    if dims is None:
        return c
    macs = math.prod(dims)
    x = node.inputs[0]
    mac_pj = spec.fp_mac_pj if x is None or x.type.dtype.is_float else spec.vec_mul_pj + spec.vec_op_pj
    return Cost(c.cycles + math.ceil(macs / max(spec.vec_lanes, 1)) * spec.vec_op_cycles,
                c.energy_pj + macs * mac_pj, "vector", macs)


def mac_dims(node: Any) -> tuple[int, int, int] | None:
    """The multiply-accumulate work of a float matrix or recurrent op (or an integer matmul of two
    activations) as a product ``(p, k, n)``: ``p`` independent rows of ``k``-long dot products against
    ``n`` columns, ``p * k * n`` MACs per sample;
    ``None`` if the op has none (or its shapes are unknown).

    - ``MatMul`` and ``q.act_matmul`` (any rank, broadcasting): ``n`` = the result's last dim, ``k`` = A's
      last dim (A's only dim if A is 1-D), ``p`` = result elements / ``n``;
    - ``Gemm``: the same, ``k`` = A's dim 0 if ``transA`` else dim 1;
    - ``Conv`` and ``DeformConv``: ``n`` = output channels, ``k`` = input channels per group * kernel size,
      ``p`` = result elements / ``n``;
    - ``ConvTranspose``: every input element meets ``k`` = output channels per group * kernel size
      weights: ``p`` = input elements, ``n`` = 1;
    - ``LSTM``/``GRU``/``RNN`` (4, 3, 1 gates ``g``): per step, direction and sample, the gate
      pre-activations ``W x + R h``: ``p`` = steps * directions * batch, ``k`` = input + hidden size,
      ``n`` = ``g * hidden``;
    - ``Attention``: scores and their mix, ``p`` = batch * heads * queries, ``k`` = head size + value head
      size, ``n`` = keys (past ones included);
    - ``Einsum`` of two or more operands: ``p`` = result elements, ``k`` = the product of the summed letters'
      dims, ``n`` = 1.

    A symbolic dim (batch, sequence) counts as 1, like :func:`num_elements`.
    """
    op, ins = node.op, node.inputs
    shapes = [getattr(getattr(v, "type", None), "shape", None) if v is not None else None for v in ins]
    out = node.outputs[0] if node.outputs else None
    if op in ("MatMul", "q.act_matmul", "Gemm", "Conv", "DeformConv") and (
            not shapes or shapes[0] is None or num_elements(out) == 0):
        return None
    if op in ("MatMul", "q.act_matmul"):
        a = shapes[0]
        k, n = _dim(a, -1), _dim(counts(out), -1)
        return num_elements(out) // max(n, 1), k, n
    if op == "Gemm":
        k = _dim(shapes[0], 0 if node.attrs.get("transA", 0) else 1)
        n = _dim(counts(out), -1)
        return num_elements(out) // max(n, 1), k, n
    if op in ("Conv", "DeformConv"):
        w = shapes[1] if len(shapes) > 1 else None
        if w is None:
            return None
        n = _dim(w, 0)
        return num_elements(out) // max(n, 1), math.prod(_dim(w, i) for i in range(1, len(w))), n
    if op == "ConvTranspose":
        w = shapes[1] if len(shapes) > 1 else None
        if w is None or shapes[0] is None:
            return None
        return num_elements(ins[0]), math.prod(_dim(w, i) for i in range(1, len(w))), 1
    if op == "Attention":
        return _attention_dims(node, shapes)
    if op == "Einsum":
        return _einsum_dims(node, shapes)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}.get(op)
    if gates is None or len(shapes) < 3 or shapes[0] is None or shapes[1] is None:
        return None
    x, w = shapes[0], shapes[1]  # X [seq, batch, input] (layout 0) or [batch, seq, input]; W [dirs, g*H, input]
    hidden = int(node.attrs.get("hidden_size") or _dim(w, 1) // gates)
    return _dim(x, 0) * _dim(x, 1) * _dim(w, 0), _dim(x, 2) + hidden, gates * hidden


def _attention_dims(node: Any, shapes: list[Any]) -> tuple[int, int, int] | None:
    """``Attention``: ``Q K^T`` (``size`` per score) and ``P V`` (``v_size`` per output) for every query row of
    every head against every key: ``p`` = batch * heads * queries, ``k`` = size + v_size, ``n`` = keys (past
    keys included)."""
    q, kk, v = shapes[:3]
    if q is None or kk is None or v is None:
        return None
    past = shapes[4] if len(shapes) > 4 else None
    past_len = _dim(past, 2) if past is not None else 0
    if len(q) == 4:
        heads, queries, size, keys, v_size = _dim(q, 1), _dim(q, 2), _dim(q, 3), _dim(kk, 2), _dim(v, 3)
    else:
        heads, kv_heads = int(node.attrs.get("q_num_heads") or 1), int(node.attrs.get("kv_num_heads") or 1)
        queries, size, keys, v_size = _dim(q, 1), _dim(q, 2) // heads, _dim(kk, 1), _dim(v, 2) // kv_heads
    return _dim(q, 0) * heads * queries, size + v_size, keys + past_len


def _einsum_dims(node: Any, shapes: list[Any]) -> tuple[int, int, int] | None:
    """``Einsum`` of two or more operands: each result element sums the products over the letters the result
    does not keep: ``p`` = result elements, ``k`` = the product of those letters' dims, ``n`` = 1 (exact
    multiply-accumulates for two operands; the naive sum's terms for more)."""
    from cimc.ops.einsum import parse

    if len(shapes) < 2 or any(s is None for s in shapes) or not node.outputs:
        return None
    terms, rhs = parse(str(node.attrs["equation"]), [len(s) for s in shapes])
    dims: dict[str, int] = {}
    for term, shape in zip(terms, shapes, strict=True):
        pre, _, post = term.partition(".")  # letters before and after the ellipsis (if any)
        named = list(zip(pre, shape[:len(pre)], strict=True))
        if post:
            named += zip(post, shape[len(shape) - len(post):], strict=True)
        for c, d in named:
            dims[c] = max(dims.get(c, 1), dim_per_sample(d))
    summed = {c for t in terms for c in t if c != "."} - set(rhs)
    return num_elements(node.outputs[0]), math.prod(dims[c] for c in summed), 1


def spilled_fraction(tensor_bytes: float, buffer_bytes: float) -> float:
    """The fraction of a tensor of ``tensor_bytes`` that does not fit a buffer of ``buffer_bytes`` and so
    lives in DRAM: ``max(0, tensor - buffer) / tensor`` (0 for an empty tensor)."""
    return max(0.0, tensor_bytes - buffer_bytes) / tensor_bytes if tensor_bytes > 0 else 0.0


@dataclass(frozen=True)
class AreaPart:
    """One kind of hardware block: ``count`` instances of ``each_um2`` square micrometres, in a
    component (:data:`COMPONENTS` or the target's own), with the source of its figure."""

    component: str
    what: str
    count: int
    each_um2: float
    source: str

    @property
    def mm2(self) -> float:
        """Area of all instances in square millimetres."""
        return self.count * self.each_um2 * 1e-6


def area_dict(parts: Iterable[AreaPart]) -> dict[str, Any]:
    """JSON-ready area: ``total`` mm^2, ``by_component`` mm^2, and every part with its source."""
    parts = list(parts)
    by: dict[str, float] = {}
    for p in parts:
        by[p.component] = by.get(p.component, 0.0) + p.mm2
    return {"total": sum(by.values()), "by_component": by,
            "parts": [{"component": p.component, "what": p.what, "count": p.count, "each_um2": p.each_um2,
                       "mm2": p.mm2, "source": p.source} for p in parts]}


class _CostTarget(Protocol):
    def op_cost(self, node: Any) -> Cost: ...


def _us(cycles: float, clock_mhz: float | None) -> float | None:
    return cycles / clock_mhz if clock_mhz else None  # cycles / MHz = microseconds


@dataclass
class Tally:
    """Sums of op costs: cycles, energy, MACs, op count, and cycles/energy per unit, energy per
    component, DRAM bytes per kind, cells written per array."""

    cycles: float = 0.0
    energy_pj: float = 0.0
    macs: int = 0
    ops: int = 0
    by_unit: dict[str, dict[str, float]] = field(default_factory=dict)
    by_component: dict[str, float] = field(default_factory=dict)
    dram_bytes: dict[str, float] = field(default_factory=dict)
    events: dict[str, float] = field(default_factory=dict)
    _cell_writes: dict[int, int] = field(default_factory=dict, repr=False)
    _pending: list[Writes] = field(default_factory=list, repr=False, compare=False)
    """Regions added as :class:`Writes` and not yet summed into ``_cell_writes`` (summed in numpy when read)."""

    @property
    def cell_writes(self) -> dict[int, int]:
        """Cells written per array, over every op added (keys in the order the arrays were first written)."""
        if self._pending:
            array = np.concatenate([w.array for w in self._pending])
            cells = np.concatenate([w.cells for w in self._pending])
            self._pending.clear()
            order = np.argsort(array, kind="stable")
            array = array[order]
            starts = np.flatnonzero(np.concatenate([[True], array[1:] != array[:-1]]))
            sums = np.add.reduceat(cells[order], starts)
            out = self._cell_writes
            for i in np.argsort(order[starts], kind="stable").tolist():  # by each array's first write
                a = int(array[starts[i]])
                out[a] = out.get(a, 0) + int(sums[i])
        return self._cell_writes

    def add(self, cost: Cost) -> None:
        """Account one op's cost."""
        self.cycles += cost.cycles
        self.energy_pj += cost.energy_pj
        self.macs += cost.macs
        self.ops += 1
        u = self.by_unit.get(cost.unit)
        if u is None:
            u = self.by_unit[cost.unit] = {"cycles": 0.0, "energy_pj": 0.0, "ops": 0}
        u["cycles"] += cost.cycles
        u["energy_pj"] += cost.energy_pj
        u["ops"] += 1
        comp = self.by_component
        if cost.parts:
            for k, v in cost.parts.items():
                comp[k] = comp.get(k, 0.0) + v
        else:
            k = _DEFAULT_COMPONENT.get(cost.unit, cost.unit)
            comp[k] = comp.get(k, 0.0) + cost.energy_pj
        if cost.dram:
            for k, v in cost.dram.items():
                self.dram_bytes[k] = self.dram_bytes.get(k, 0.0) + v
        writes = cost.writes
        if isinstance(writes, Writes):
            if len(writes):
                self._pending.append(writes)
        elif writes:
            cells = self.cell_writes  # the pending ones first: arrays keep the order of their first writes
            for w in writes:
                cells[w.array] = cells.get(w.array, 0) + w.cells
        if cost.events:
            for k, v in cost.events.items():
                self.events[k] = self.events.get(k, 0.0) + v

    def to_dict(self, clock_mhz: float | None, time_key: str = "latency_us") -> dict[str, Any]:
        """JSON-ready sums (energies in nJ, times in microseconds when the clock is known)."""
        return {"cycles": self.cycles, time_key: _us(self.cycles, clock_mhz), "energy_nj": self.energy_pj / 1e3,
                "macs": self.macs, "ops": self.ops,
                "by_unit": {k: {"cycles": u["cycles"], time_key: _us(u["cycles"], clock_mhz),
                                "energy_nj": u["energy_pj"] / 1e3, "ops": int(u["ops"])}
                            for k, u in sorted(self.by_unit.items())},
                "energy_nj_by_component": {k: v / 1e3 for k, v in sorted(self.by_component.items())},
                "dram_bytes": {k: self.dram_bytes.get(k, 0.0) for k in DRAM_KINDS}
                | {k: v for k, v in sorted(self.dram_bytes.items()) if k not in DRAM_KINDS},
                **dict(sorted(self.events.items()))}


@dataclass
class LayerCost:
    """The costs of one layer (the ops sharing a ``cim.layer``): per inference and one-time."""

    name: str
    per_inference: Tally = field(default_factory=Tally)
    one_time: Tally = field(default_factory=Tally)


@dataclass
class CostReport:
    """Cost of a whole program: per inference (total and per layer, in program order), one-time
    array programming, and area (``None`` if the target has no area model)."""

    target: str
    clock_mhz: float | None
    layers: list[LayerCost]
    per_inference: Tally
    one_time: Tally
    area: list[AreaPart] | None = None
    notes: list[str] = field(default_factory=list)
    """The target's ``cost_notes()``: what its op costs assume beyond the shared model."""

    @property
    def latency_us(self) -> float | None:
        """Per-inference latency in microseconds (ops summed, :data:`LATENCY_MODEL`), if the clock is known."""
        return _us(self.per_inference.cycles, self.clock_mhz)

    @property
    def reloads(self) -> bool:
        """Whether the program reprograms arrays on every inference (weight loads counted per inference)."""
        return "load" in self.per_inference.by_unit

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``per_inference`` (with ``layers``), ``one_time``, ``area_mm2``, ``latency``."""
        clock = self.clock_mhz
        per = self.per_inference.to_dict(clock)
        e, macs = self.per_inference.energy_pj, self.per_inference.macs
        per["energy_fj_per_mac"] = 1e3 * e / macs if macs else None
        per["tops_per_w"] = 2 * macs / e if e else None  # ops per pJ = 1e12 ops per J
        loads = self.per_inference.by_unit.get("load")
        per["weight_reloads"] = {
            "ops": int(loads["ops"]) if loads else 0, "energy_nj": loads["energy_pj"] / 1e3 if loads else 0.0,
            "cycles": loads["cycles"] if loads else 0.0,
            "cell_writes_by_array": _by_array(self.per_inference.cell_writes),
            "note": ("the model needs more cells than the arrays hold: these loads reprogram arrays on every "
                     "inference, so they are charged per inference" if loads else
                     "none: every weight load writes cells no other load overwrites, so it is one-time")}
        per["layers"] = [{"name": l.name, **l.per_inference.to_dict(clock)} for l in self.layers
                         if l.per_inference.ops]
        one = self.one_time.to_dict(clock, "time_us")
        one["cell_writes_by_array"] = _by_array(self.one_time.cell_writes)
        one["cell_writes_total"] = sum(self.one_time.cell_writes.values())
        one["layers"] = [{"name": l.name, **l.one_time.to_dict(clock, "time_us")} for l in self.layers
                         if l.one_time.ops]
        busiest = max((u["cycles"] for u in self.per_inference.by_unit.values()), default=0.0)
        return {"target": self.target, "clock_mhz": clock,
                "latency": {"combine": LATENCY_MODEL, "latency_us": self.latency_us,
                            "units_overlapped_lower_bound_us": _us(busiest, clock), "target_notes": self.notes},
                "per_inference": per, "one_time": one,
                "area_mm2": area_dict(self.area) if self.area is not None else None}

    def table(self) -> str:
        """Plain-text table: one row per layer (per inference, and one-time programming), then totals."""
        head = ("layer", "ops", "cycles", "latency_us", "energy_nJ", "MACs", "DRAM_B", "one-time_nJ")
        rows = [self._row(l.name, l.per_inference, l.one_time) for l in self.layers]
        rows.append(self._row("total", self.per_inference, self.one_time))
        w = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        fmt = lambda r: "  ".join([r[0].ljust(w[0]), *(c.rjust(w[i + 1]) for i, c in enumerate(r[1:]))])  # noqa: E731
        rule = "  ".join("-" * x for x in w)
        lines = [fmt(head), rule, *map(fmt, rows[:-1]), rule, fmt(rows[-1])]
        units = ", ".join(f"{u} {d['cycles']:.0f} cycles / {d['energy_pj'] / 1e3:.3f} nJ"
                          for u, d in sorted(self.per_inference.by_unit.items()))
        comps = ", ".join(f"{k} {v / 1e3:.3f}" for k, v in sorted(self.per_inference.by_component.items()))
        events = ", ".join(f"{k} {v:.0f}" for k, v in sorted(self.per_inference.events.items()))
        return "\n".join([*lines, f"per inference by unit: {units}",
                          f"per inference energy by component (nJ): {comps}",
                          *([f"per inference events: {events}"] if events else [])])

    def _row(self, name: str, t: Tally, one: Tally) -> tuple[str, ...]:
        lat = _us(t.cycles, self.clock_mhz)
        return (name, str(t.ops), f"{t.cycles:.0f}", "-" if lat is None else f"{lat:.3f}",
                f"{t.energy_pj / 1e3:.3f}", str(t.macs), f"{sum(t.dram_bytes.values()):.0f}",
                f"{one.energy_pj / 1e3:.3f}" if one.ops else "-")


def _by_array(writes: Mapping[int, int]) -> list[dict[str, int]]:
    return [{"array": a, "cells": n} for a, n in sorted(writes.items())]


def _checked(target: _CostTarget, node: Any) -> Cost:
    cost = target.op_cost(node)
    if not isinstance(cost, Cost):
        raise TypeError(f"{type(target).__name__}.op_cost({node.op} '{node.name}') returned "
                        f"{type(cost).__name__}, expected cimc.cost.Cost")
    if cost.unit not in UNITS:
        raise TypeError(f"{type(target).__name__}.op_cost({node.op} '{node.name}'): unit {cost.unit!r} is not one "
                        f"of {', '.join(UNITS)}")
    clash = REPORT_KEYS.intersection(cost.events)
    if clash:
        raise TypeError(f"{type(target).__name__}.op_cost({node.op} '{node.name}'): event kind {sorted(clash)[0]!r} "
                        f"is a key the cost report already uses")
    parts = sum(cost.parts.values())
    if cost.parts and not math.isclose(parts, cost.energy_pj, rel_tol=1e-9, abs_tol=1e-9):
        raise TypeError(f"{type(target).__name__}.op_cost({node.op} '{node.name}'): its energy parts sum to "
                        f"{parts} pJ, not its energy {cost.energy_pj} pJ")
    return cost


def _one_time(costs: list[Cost]) -> set[int]:
    """Indices of the load ops none of whose written regions another op's region overlaps.

    Spans ``[s, e)`` (``e > s``) of one array overlap iff each starts before the other ends. With the starts and
    the ends of a group of spans each sorted, span ``j`` overlaps ``#(starts < e_j) - #(ends <= s_j)`` spans of
    the group, itself included (a span ending at or before ``s_j`` also starts before ``e_j``). Counted once
    among the spans of its array and once among those of its array written by its own op, the counts differ
    iff another op writes one of its cells. Groups are kept apart in one sorted key ``group * width +
    coordinate``, the coordinates replaced by their ranks (order kept, below ``width``): O(n log n) for n
    spans, in numpy. When every span starts at cell 0 (loads that write arrays from their first cell on), spans
    overlap iff they share an array: an op clashes iff another op writes one of its arrays (one sort of the
    ``(array, op)`` pairs)."""
    loads = [(i, write_columns(c.writes)) for i, c in enumerate(costs) if c.unit == "load" and len(c.writes)]
    clash: set[int] = set()
    if loads:
        array, start, cells = (np.concatenate([w[k] for _, w in loads]) for k in range(3))
        op = np.repeat(np.array([i for i, _ in loads], np.int64), [len(w[0]) for _, w in loads])
        keep = cells > 0
        array, start, end, op = array[keep], start[keep], (start + cells)[keep], op[keep]
    if loads and len(op) and not start.any():  # every span holds cell 0 of its array: they overlap iff arrays agree
        lo = int(array.min())
        if (int(array.max()) - lo + 1) * len(costs) < 1 << 62:  # (array, op) pairs as one int64, arrays apart
            pair = np.sort((array - lo) * len(costs) + op)
        else:
            pair = np.sort(np.unique(array, return_inverse=True)[1].reshape(-1) * len(costs) + op)
        pair = pair[np.concatenate([[True], pair[1:] != pair[:-1]])]  # each (array, op) once
        pair_array = pair // len(costs)
        same = pair_array[1:] == pair_array[:-1]  # consecutive pairs of one array: two ops write it
        shared = np.concatenate([[False], same]) | np.concatenate([same, [False]])
        clash = set((pair[shared] % len(costs)).tolist())
    elif loads and len(op):
        coords, rank = np.unique(np.concatenate([start, end]), return_inverse=True)
        s, e, width = rank[:len(start)], rank[len(start):], len(coords)

        def overlaps(group: np.ndarray) -> np.ndarray:
            g = np.unique(group, return_inverse=True)[1].reshape(-1) * width
            return (np.searchsorted(np.sort(g + s), g + e) - np.searchsorted(np.sort(g + e), g + s, side="right"))

        array = np.unique(array, return_inverse=True)[1].reshape(-1)  # arrays 0 .. n - 1
        others = overlaps(array) != overlaps(array * len(costs) + op)
        clash = set(op[others].tolist())
    return {i for i, c in enumerate(costs) if c.unit == "load" and len(c.writes) and i not in clash}


def program_cost(program: Any, target: _CostTarget) -> CostReport:
    """Price every node of ``program`` with ``target.op_cost``, split one-time programming from per-inference
    work, group by the ``cim.layer`` annotation (fallback: the node's name) and add the target's area
    (``target.area()``, if it has one). See the module docstring."""
    nodes = list(program.nodes)
    costs = [_checked(target, n) for n in nodes]
    once = _one_time(costs)
    layers: dict[str, LayerCost] = {}
    per, one = Tally(), Tally()
    for i, (node, cost) in enumerate(zip(nodes, costs, strict=True)):
        layer = layers.setdefault(str(node.attrs.get("cim.layer") or node.name), LayerCost(""))
        if i in once:
            layer.one_time.add(cost)
            one.add(cost)
        else:
            layer.per_inference.add(cost)
            per.add(cost)
    for name, l in layers.items():
        l.name = name
    spec = getattr(target, "spec", None)
    clock = getattr(spec, "clock_mhz", None)
    area_of = getattr(target, "area", None)
    area = area_of() if callable(area_of) else None
    notes_of = getattr(target, "cost_notes", None)
    notes = notes_of() if callable(notes_of) else []
    return CostReport(getattr(target, "name", type(target).__name__), float(clock) if clock else None,
                      list(layers.values()), per, one, area, list(notes))


summarize = program_cost
"""Another name for :func:`program_cost`."""
