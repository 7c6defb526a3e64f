"""Rewriting a calibrated float graph into ``q.*`` ops (step 3 of the ``quantize`` pass).

A new graph is built by walking the float graph's nodes in order, keeping up to three forms of
each float value: float, uint8 activation (``q``), int32 accumulator (``acc``). Conversions are
made on first need and reused: ``q.quantize`` (float to uint8 with the value's calibrated
parameters), ``q.requant`` (accumulator to uint8), ``q.dequantize`` (either to float). Per node:

- ``Conv``, ``Gemm`` (transA=0, constant B, C absent or a constant vector) and ``MatMul`` (constant
  2-D B; a following ``Add`` of a constant vector becomes its bias) give ``q.conv``/``q.gemm``/
  ``q.matmul`` on the uint8 input with int8 weights per output channel and an int32 bias
  ``round(b / (sx*sw)) - zx * sum(w)``: an accumulator. The weights are max-scaled and rounded to
  nearest unless ``Settings.methods`` gives the node another method (``cimc.quant.weights``; its
  bias correction is added to ``b`` first). ``ConvTranspose`` (constant weight
  ``[C, M/G, *K]``, quantized per output channel ``g*M/G + j``) gives ``q.conv_transpose``, whose
  bias is ``round(b / (sx*sw))`` only: it subtracts ``zx`` from x itself (the zero-point term varies
  with the output position there).
- ``Relu``/``Clip`` (constant bounds) of an accumulator is a ``q.requant`` clamped to the bounds,
  with the activation's own calibrated range; of a uint8 value an integer ``Clip`` (bounds
  rounded to its grid; none at all if they cover it).
- ``Add``/``Sum`` of two integer values (uint8 or accumulator) is ``q.add``; a Relu/Clip that is
  the sum's only reader becomes its clamp.
- Moves (``MOVES``) of a uint8 value run on it and keep its parameters; an accumulator is
  requantized for them first if an integer layer reads the result. Concat needs equal parameters:
  its inputs (and, through single-use moves, their sources) take the Concat result's range.
- Everything else is copied and runs in float on dequantized operands.
Graph outputs are the float forms (an accumulator output is dequantized directly).

Activation bits: a layer's ``act-bits`` is the width of what it reads; a value gets the largest
request among the integer layers reading it, directly or through moves and Relu/Clip.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cimc.errors import CimcError
from cimc.ir.core import Graph, Node, Value
from cimc.ir.types import DType, QuantParams, TensorType
from cimc.quant.calibrate import Observer
from cimc.quant.fixedpoint import quantize_multiplier, quantize_multipliers, shared_multipliers
from cimc.quant.params import act_params, lut_table, quantize_weights
from cimc.quant.weights import InputStats, WeightMethod, quantize_matrix
from cimc.sparsity import WeightView, require_view

__all__ = ["MOVES", "UNARY", "Settings", "act_matmul", "adopt", "chain_function", "lower", "quantizable",
           "scalar_operand"]

logger = logging.getLogger(__name__)

MOVES = frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather",
                   "Expand", "Identity", "Concat"})
"""Ops that only move or select elements, so they run on uint8 values unchanged."""
_ACTS = frozenset({"Relu", "Clip"})
_FLAT = frozenset({"HardSwish", "HardSigmoid"})
"""Table functions constant beyond a bound, whose input grid :meth:`_Lowering.flat_trimmed` trims."""
UNARY = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Exp", "Log",
                   "Sqrt", "Reciprocal", "Neg", "Abs", "Elu", "Selu", "Softplus", "Softsign", "Gelu", "Mish", "Celu",
                   "ThresholdedRelu", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Identity", "PRelu", "Add",
                   "Sub", "Mul", "Div", "Pow", "Max", "Min"})
"""Elementwise float ops that a ``q.lut`` computes when one operand is an activation and the others are
constant scalars."""
_QOPS = {"Conv": "q.conv", "ConvTranspose": "q.conv_transpose", "Gemm": "q.gemm", "MatMul": "q.matmul"}


@dataclass(frozen=True)
class Settings:
    """The compile's quantization choices; ``overrides`` maps a node name or op type to its bits."""

    weight_bits: int = 8
    act_bits: int = 8
    requant: str = "fixed"
    per_channel: bool = True
    overrides: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    methods: Mapping[str, WeightMethod] = field(default_factory=dict)
    """Weight method by node name (absent: max scales, round to nearest)."""
    stats: Mapping[str, InputStats] = field(default_factory=dict)
    """Calibration input statistics by node name, for the methods that need them."""
    vector_bits: int = 8
    """Bits of the activations the integer vector-unit ops read (q.add, q.mul, q.lut, q.softmax)."""
    out_bits: int = 0
    """Bits of an array op's result that only vector-unit ops read; 0: what its readers ask."""

    def bits(self, n: Node, key: str) -> int:
        """``key`` (``weight-bits``/``act-bits``) of node ``n``: by name, else op type, else default."""
        for sel in (n.name, n.op):
            if key in self.overrides.get(sel, {}):
                return self.overrides[sel][key]
        return self.weight_bits if key == "weight-bits" else self.act_bits

    def read_bits(self, n: Node, vector: bool) -> int:
        """Bits of the activations node ``n`` reads: its ``act-bits`` override by name or op type, else
        ``vector_bits`` for an integer vector-unit op, ``act_bits`` for an array op."""
        for sel in (n.name, n.op):
            if "act-bits" in self.overrides.get(sel, {}):
                return self.overrides[sel]["act-bits"]
        return self.vector_bits if vector else self.act_bits


def quantizable(n: Node) -> bool:
    """Whether ``n`` is a Conv, ConvTranspose, Gemm (transA=0, C absent or a constant vector) or MatMul (2-D B) whose
    weight is a constant and whose input is an f32 activation of rank 2 or more."""
    ins = n.inputs
    if n.op not in _QOPS or len(ins) < 2 or ins[1] is None or ins[1].const is None or ins[0] is None \
            or ins[0].const is not None or ins[0].type.dtype is not DType.f32:
        return False
    c = ins[2] if len(ins) > 2 else None
    if c is not None and c.const is None:
        return False
    if n.op in ("Conv", "ConvTranspose"):
        return True
    w = ins[1].const
    if w.ndim != 2 or ins[0].type.rank in (None, 0, 1):
        return False
    if n.op == "MatMul":
        return True
    cols = w.shape[0] if n.attrs.get("transB", 0) else w.shape[1]
    return not n.attrs.get("transA", 0) and (c is None or c.array.size == 1 or (
        c.array.size == cols and c.array.shape[-1] == cols))


def _weights(n: Node) -> tuple[np.ndarray, int, np.ndarray | None]:
    """``(float weight, output channel axis, float bias)`` of a quantizable node; Gemm's weight is
    ``alpha * B'`` shaped ``[N, K]`` and its bias ``beta * C``, MatMul's weight is ``B`` ``[K, N]``."""
    w, c = n.operand(1).array, n.inputs[2].const if len(n.inputs) > 2 and n.inputs[2] is not None else None
    if n.op != "Gemm":
        return w, 1 if n.op in ("MatMul", "ConvTranspose") else 0, c
    a = n.attrs
    w = w if a.get("transB", 0) else w.T
    if a.get("alpha", 1.0) != 1.0:
        w = w * np.float32(a["alpha"])
    return w, 0, None if c is None else np.broadcast_to(c.reshape(-1), (w.shape[0],)) * a.get("beta", 1.0)


def _quantize_convt_weights(w: np.ndarray, group: int, bits: int, per_channel: bool
                            ) -> tuple[np.ndarray, np.ndarray]:
    """ConvTranspose weight ``[C, M/G, *K]`` quantized with one scale per output channel ``g*M/G + j``
    (``M`` scales, group-major), or one scale; the int8 weight keeps the ``[C, M/G, *K]`` layout."""
    c, mg, k = w.shape[0], w.shape[1], w.shape[2:]
    by_out = np.moveaxis(w.reshape(group, c // group, mg, *k), 2, 1).reshape(group * mg, c // group, *k)
    wq, sw = quantize_weights(by_out, bits, 0, per_channel)
    return np.ascontiguousarray(np.moveaxis(wq.reshape(group, mg, c // group, *k), 1, 2).reshape(w.shape)), sw


def _lowered_view(n: Node, w: np.ndarray) -> WeightView:
    """The matrix view (:mod:`cimc.sparsity`) of ``n``'s weight as :func:`_weights` gives it (a Gemm's
    is ``alpha * B'`` ``[N, K]``); its columns are the output channels in the order of the scales."""
    view = require_view(n)
    return WeightView("Gemm", 1, w.shape, 1, w.shape[1], w.shape[0], transposed=True) if n.op == "Gemm" else view


def _is_add(n: Node) -> bool:
    return n.op in ("Add", "Sum") and len(n.inputs) == 2 and all(
        v is not None and v.const is None and v.type.dtype is DType.f32 for v in n.inputs)


def act_matmul(n: Node) -> bool:
    """Whether ``n`` is a MatMul of two f32 activations of rank 2 or more (attention's ``Q K^T``, ``P V``)."""
    return n.op == "MatMul" and len(n.inputs) == 2 and all(
        v is not None and v.const is None and v.type.dtype is DType.f32 and (v.type.rank or 0) >= 2
        for v in n.inputs)


def _product(n: Node) -> bool:
    return n.op == "Mul" and len(n.inputs) == 2 and all(
        v is not None and v.const is None and v.type.dtype is DType.f32 for v in n.inputs)


def scalar_operand(n: Node, const=lambda v: v.const, v: Value | None = None) -> tuple[int, list] | None:
    """``(k, constants)`` when ``n`` is an elementwise op of :data:`UNARY` whose only non-constant operand is
    number ``k`` (``v`` if given), whose constants (``const(value)``, by operand) are scalars, and whose result
    has that operand's shape; else ``None``."""
    acts = [i for i, x in enumerate(n.inputs) if x is not None and const(x) is None]
    if n.op not in UNARY or len(acts) != 1 or len(n.outputs) != 1 or (v is not None and n.inputs[acts[0]] is not v):
        return None
    consts = [None if x is None else const(x) for x in n.inputs]
    shape, out = n.operand(acts[0]).type.shape, n.outputs[0].type.shape
    if any(c is not None and c.size != 1 for c in consts) or shape is None or out is None or tuple(shape) != \
            tuple(out):
        return None
    return acts[0], consts


def chain_function(chain: list[Node], steps: list[tuple[int, list]]):
    """The real function of a chain of :func:`scalar_operand` ops (each reading the one before), as cimc's
    float ops compute it, on float32 arrays."""
    from cimc.ops.qoperator import float_op

    def fn(real: np.ndarray) -> np.ndarray:
        for m, (k, consts) in zip(chain, steps, strict=True):
            ops = [real if i == k else None if c is None else np.asarray(c).reshape(()) for i, c in enumerate(consts)]
            real = np.asarray(float_op(m.op, m.attrs, *ops), np.float32)
        return real
    return fn


def _const_bounds(n: Node) -> tuple[float, float] | None:
    """The real bounds of a Relu, or of a Clip whose bounds are constants; else ``None``."""
    if n.op == "Relu":
        return 0.0, math.inf
    if n.op != "Clip" or any(v is not None and v.const is None for v in n.inputs[1:]):
        return None
    ins = list(n.inputs) + [None] * (3 - len(n.inputs))
    lo, hi = (d if v is None else float(v.array.reshape(-1)[0])
              for v, d in zip(ins[1:], (-math.inf, math.inf), strict=True))
    return lo, hi


def adopt(graph: Graph, new: Graph) -> None:
    """Make ``graph`` hold ``new``'s constants and nodes, keeping its own inputs (same names)."""
    graph.outputs = []
    for n in reversed(list(graph.nodes)):
        graph.remove_node(n)
    for c in list(graph.constants.values()):
        graph.remove_constant(c)
    vmap: dict[int, Value] = {id(a): b for a, b in zip(new.inputs, graph.inputs, strict=True)}
    for v in new.constants.values():
        vmap[id(v)] = graph.add_constant(v.const, v.name, v.type)
    for n in new.nodes:
        m = graph.add_node(n.op, [None if v is None else vmap[id(v)] for v in n.inputs], n.attrs,
                           outputs=[v.type for v in n.outputs], output_names=[v.name for v in n.outputs], name=n.name)
        vmap.update(zip(map(id, n.outputs), m.outputs, strict=True))
    graph.outputs = [vmap[id(v)] for v in new.outputs]


_HUGE = 1e30
"""Values beyond this magnitude (masks of ``-inf`` or float32's lowest) have no activation scale: a uint8 step
would exceed the largest scale the q ops accept."""


def lower(src: Graph, observers: Mapping[str, Observer], settings: Settings) -> Graph:
    """The quantized form of ``src`` as a new graph (``src`` is not changed). ``out_bits`` that no value takes
    (no array op's result is read by the vector unit only) is logged as a warning: the option did nothing."""
    lowering = _Lowering(src, observers, settings)
    out = lowering.build()
    if settings.out_bits and not lowering.out_bits_used:
        logger.warning("quantize: out-bits=%d changes nothing in graph %r: no array op's result is read by the "
                       "vector unit only (each is read by another array op, or is a graph output)",
                       settings.out_bits, src.name)
    return out


class _Lowering:
    def __init__(self, src: Graph, observers: Mapping[str, Observer], settings: Settings) -> None:
        self.src, self.obs, self.s = src, observers, settings
        self.out_bits_used = False
        self.g = Graph(src.name)
        self.f: dict[int, Value] = {}
        self.q: dict[int, Value] = {}
        self.acc: dict[int, Value] = {}
        self.skip: set[int] = set()
        self._params: dict[int, tuple[float, int, int]] = {}
        self.weights: dict[tuple, tuple[Value, np.ndarray, np.ndarray | None]] = {}
        self.narrowed: dict[tuple[int, int], Value] = {}
        self.taken = {v.name for v in src.values()} | {n.name for n in src.nodes}
        self.bits: dict[int, int] = {}
        self.array_read: set[int] = set()  # values an array op reads, directly or through moves
        for n in reversed(src.nodes):  # activation bits, from the readers back
            unary = scalar_operand(n)
            for i, v in enumerate(n.inputs):
                if v is None or v.const is not None:
                    continue
                if (i == 0 and quantizable(n)) or act_matmul(n):
                    b = settings.read_bits(n, vector=False)
                    self.array_read.add(id(v))
                elif _is_add(n) or _product(n) or (n.op == "Softmax" and i == 0) or (unary and unary[0] == i):
                    b = settings.read_bits(n, vector=True)
                elif (n.op in MOVES and (i == 0 or n.op == "Concat")) or (n.op in _ACTS and i == 0):
                    b = max((self.bits.get(id(o), 0) for o in n.outputs), default=0)
                    if any(id(o) in self.array_read for o in n.outputs):
                        self.array_read.add(id(v))
                else:
                    continue
                if b:
                    self.bits[id(v)] = max(self.bits.get(id(v), 0), b)
        self.tie: dict[int, Value] = {}  # value -> the Concat result whose parameters it shares
        for n in reversed(src.nodes):
            if not n.outputs:
                continue
            root = self.tie.get(id(n.outputs[0]), n.outputs[0])
            if n.op == "Concat" and all(v is not None and v.const is None and v.type.dtype is DType.f32
                                        for v in n.inputs):
                for v in n.inputs:
                    self.tie.setdefault(id(v), root)
            elif n.op in MOVES and id(n.outputs[0]) in self.tie and n.inputs[0] is not None \
                    and n.inputs[0].const is None and len(n.inputs[0].uses) == 1:
                self.tie.setdefault(id(n.inputs[0]), root)

    def fresh(self, hint: str) -> str:
        """``hint``, suffixed until no name of the source graph has it (those stay for their copies)."""
        while hint in self.taken:
            hint += "_"
        return hint

    def params(self, v: Value, array_out: bool = False) -> tuple[float, int, int]:
        """``(scale, zero_point, bits)`` of float value ``v`` from its calibrated range (the range of
        the Concat result for the inputs of a Concat, so that it runs on integers); ``array_out``: ``v`` is
        an array op's result, which takes ``out_bits`` when set and no array op reads it."""
        v = self.tie.get(id(v), v)
        if id(v) not in self._params:
            bits = self.bits.get(id(v)) or self.s.act_bits
            if array_out and self.s.out_bits and id(v) not in self.array_read:
                bits = self.s.out_bits
                self.out_bits_used = True
            lo, hi = self.flat_trimmed(v, *self.obs[v.name].range(bits))
            if not (math.isfinite(lo) and math.isfinite(hi)):
                by = f" (the result of node {v.producer.name!r}, {v.producer.op})" if v.producer else ""
                raise CimcError(f"value %{v.name}{by} is not finite on the calibration inputs (its range is "
                                f"[{lo}, {hi}]), so it has no quantization scale; the model computes NaN or "
                                f"infinity there")
            self._params[id(v)] = (*act_params(lo, hi, bits), bits)
        return self._params[id(v)]

    def flat_trimmed(self, v: Value, lo: float, hi: float) -> tuple[float, float]:
        """``[lo, hi]`` less the ends where every reader of ``v`` is a table of a function that is constant
        there (``HardSwish`` below -3, ``HardSigmoid`` beyond ``(+-0.5 - beta) / alpha``): codes there would
        all read the same entry, so the grid spends them on the part that varies. A value beyond the trimmed
        range saturates to its end, whose entry is the constant one (to within half an input step)."""
        readers = [(u, scalar_operand(u, v=v)) for u, _ in v.uses]
        if not readers or self.src.is_output(v) or not all(u.op in _FLAT and step is not None for u, step in readers):
            return lo, hi
        from cimc.ops.qoperator import float_op

        grid = np.linspace(lo, hi, 4097, dtype=np.float32)
        first, last = grid.size - 1, 0
        for u, step in readers:
            assert step is not None
            k, consts = step
            y = np.asarray(float_op(u.op, u.attrs, *(grid if i == k else None if c is None else
                                                     np.asarray(c).reshape(()) for i, c in enumerate(consts))))
            changes_lo, changes_hi = np.flatnonzero(y != y[0]), np.flatnonzero(y != y[-1])
            if changes_lo.size == 0:  # constant over the whole range: nothing to trim by
                return lo, hi
            first, last = min(first, changes_lo[0] - 1), max(last, changes_hi[-1] + 1)
        return float(grid[max(first, 0)]), float(grid[min(last, grid.size - 1)])

    def node(self, op: str, inputs: list, attrs: dict, name: str, out: TensorType | None = None,
             out_name: str | None = None) -> Value:
        return self.g.add_node(op, inputs, attrs, outputs=None if out is None else [out], name=name,
                               output_names=[out_name or self.fresh(name)]).outputs[0]

    # ---- forms of a value ---------------------------------------------------------------------------
    def as_float(self, v: Value) -> Value:
        if id(v) not in self.f:
            if v.const is not None:
                self.f[id(v)] = self.g.add_constant(v.const, v.name, v.type)
            else:
                src = self.q.get(id(v)) or self.acc[id(v)]
                p = src.type.qparams
                self.f[id(v)] = self.node("q.dequantize", [src], {"scale": p.scale, "zero_point": p.zero_point,
                                          "axis": p.axis or 0}, self.fresh(f"{v.name}_dequantize"), out_name=v.name)
        return self.f[id(v)]

    def as_quant(self, v: Value) -> Value:
        if id(v) not in self.q:
            if id(v) in self.acc:
                self.q[id(v)] = self.requant(self.acc[id(v)], v, None)
            else:
                scale, zp, bits = self.params(v)
                self.q[id(v)] = self.node("q.quantize", [self.as_float(v)], {
                    "scale": scale, "zero_point": zp, "bits": bits}, self.fresh(f"{v.name}_quantize"),
                    out_name=self.fresh(f"{v.name}_q"))
        return self.q[id(v)]

    def uint8(self, v: Value, quant: QuantParams) -> TensorType:
        return TensorType(DType.u8, v.type.shape, quant)

    def clamp(self, bounds: tuple[float, float] | None, scale: float, zp: int, bits: int) -> dict[str, int]:
        """``lo``/``hi`` attributes putting real ``bounds`` on the integer grid (none if no-ops)."""
        qmax, out = (1 << bits) - 1, {}
        for key, b in zip(("lo", "hi"), bounds or (), strict=False):
            if math.isfinite(b):
                q = int(np.clip(np.rint(b / scale) + zp, 0, qmax))
                if (key == "lo" and q > 0) or (key == "hi" and q < qmax):
                    out[key] = q
        return out

    def requant(self, acc: Value, v: Value, bounds: tuple[float, float] | None) -> Value:
        """``q.requant`` of accumulator ``acc`` to the parameters of ``v``, clamped to ``bounds``."""
        scale, zp, bits = self.params(v, array_out=True)
        p = acc.type.qparams
        if scale == 0.0:
            raise CimcError(f"value %{v.name}: its calibrated range gives scale 0, so no requantization multiplier "
                            "exists; check the calibration inputs")
        ms = (np.array(p.scale, np.float64) / scale).astype(np.float32).astype(np.float64)
        attrs = {"mode": self.s.requant, "scale": tuple(ms.tolist()), "axis": p.axis or 0, "zero_point": zp,
                 "bits": bits, **self.clamp(bounds, scale, zp, bits)}
        if self.s.requant == "fixed":
            attrs["multiplier"], attrs["shift"] = quantize_multipliers(ms)
        return self.node("q.requant", [acc], attrs, self.fresh(f"{v.name}_requant"),
                         self.uint8(v, QuantParams((scale,), (zp,), bits)), self.fresh(f"{v.name}_q"))

    # ---- node rules ---------------------------------------------------------------------------------
    def only_reader(self, v: Value, ops: frozenset[str]) -> Node | None:
        """The one reader of ``v`` if it is one of ``ops`` (and ``v`` is not a graph output)."""
        users = v.users
        if len(v.uses) != 1 or users[0].op not in ops or self.src.is_output(v):
            return None
        return users[0]

    def mvm(self, n: Node, w: np.ndarray, axis: int, b: np.ndarray | None) -> None:
        for what, a in (("weight", w), ("bias", b)):
            if a is not None and not np.isfinite(a).all():
                bad = np.argwhere(~np.isfinite(a))
                raise CimcError(f"{what} of node {n.name!r} ({n.op}) holds {len(bad)} non-finite value(s) (the first, "
                                f"{a[tuple(bad[0])]}, at index {bad[0].tolist()}); the model's weights must be "
                                f"finite to be quantized")
        out = n.outputs[0]
        if n.op == "MatMul" and (u := self.only_reader(out, frozenset({"Add"}))) is not None:
            c = u.inputs[1 - u.inputs.index(out)]
            if c is not None and c.const is not None and c.const.size == w.shape[1] and \
                    c.const.shape[-1] == w.shape[1] and c.const.ndim <= (out.type.rank or 0):
                b, out = c.const.reshape(-1), u.outputs[0]
                self.skip.add(id(u))
        xq = self.narrow(n.operand(0), self.s.read_bits(n, vector=False))
        sx, zx = xq.type.qparams.scale[0], xq.type.qparams.zero_point[0]
        bits = self.s.bits(n, "weight-bits")
        method = self.s.methods.get(n.name, WeightMethod())
        # layers reading one weight constant (a recurrent layer's steps) share its quantized form
        key = (id(n.inputs[1]), n.op, n.attrs.get("transB"), n.attrs.get("alpha"), n.attrs.get("group"), bits,
               str(method))
        if key not in self.weights:
            shift = None
            if method != WeightMethod():
                view = _lowered_view(n, w)
                try:
                    q, sw, shift = quantize_matrix(view.to_matrix(w), bits, self.s.per_channel, method,
                                                   self.s.stats.get(n.name))
                except CimcError as e:
                    raise CimcError(f"node {n.name!r} ({n.op}), weights by {method}: {e}") from e
                wq = view.from_matrix(q)
            elif n.op == "ConvTranspose":  # [C, M/G, *K] -> [M, C/G, *K]: one scale per output channel
                wq, sw = _quantize_convt_weights(w, n.attrs.get("group", 1), bits, self.s.per_channel)
            else:
                wq, sw = quantize_weights(w, bits, axis, self.s.per_channel)
            self.weights[key] = (self.g.add_constant(wq, n.operand(1).name, TensorType(DType.i8, wq.shape, QuantParams(
                tuple(sw.tolist()), (0,) * sw.size, bits, None if sw.size == 1 else axis))), sw, shift)
        wv, sw, shift = self.weights[key]
        wq = wv.array
        if shift is not None:
            b = shift if b is None else b.astype(np.float64) + shift
        ax = None if sw.size == 1 else axis
        wname = wv.name
        if n.op == "ConvTranspose":  # x - zx is computed by the op: no zero-point term in the bias
            bias = np.zeros(sw.size if b is None else b.size, np.int64)
        else:
            others = tuple(i for i in range(wq.ndim) if i != axis)  # an int32 sum is exact below 2**31
            acc = np.int32 if math.prod(wq.shape[i] for i in others) * 128 < 2**31 else np.int64
            bias = -zx * wq.sum(axis=others, dtype=acc).astype(np.int64)
        if b is not None:
            bias = bias + np.rint(b.astype(np.float64) / (sx * sw.astype(np.float64)))
        if np.abs(bias).max(initial=0) >= 2**31:
            raise CimcError(f"node {n.name!r}: the int32 bias overflows (|bias| up to {np.abs(bias).max():.3g}); "
                            "the float bias is too large for the input and weight scales")
        bv = None
        if b is not None or (zx and n.op != "ConvTranspose"):
            bv = self.g.add_constant(bias.astype(np.int32), self.fresh(f"{wname}_bias"), TensorType(
                DType.i32, (bias.size,), QuantParams(tuple((sx * sw.astype(np.float64)).tolist()), (0,) * sw.size, 32,
                                                     None if ax is None else 0)))
        attrs = (dict(n.attrs) if n.op in ("Conv", "ConvTranspose") else {}) | {"x_zero_point": zx}
        self.acc[id(out)] = self.node(_QOPS[n.op], [xq, wv, bv], attrs, n.name, out_name=self.fresh(f"{out.name}_acc"))

    def add(self, n: Node) -> None:
        out = n.outputs[0]
        act = self.only_reader(out, _ACTS)
        bounds = None if act is None else _const_bounds(act)
        if act is not None and bounds is not None:
            out = act.outputs[0]
            self.skip.add(id(act))
        a, b = (self.as_quant(n.operand(k)) for k in (0, 1))
        scale, zp, bits = self.params(out)
        ma, mb = (float(np.float32(x.type.qparams.scale[0] / scale)) for x in (a, b))
        attrs = {"mode": self.s.requant, "a_scale": ma, "b_scale": mb, "a_zero_point": a.type.qparams.zero_point[0],
                 "b_zero_point": b.type.qparams.zero_point[0], "zero_point": zp, "bits": bits,
                 **self.clamp(bounds, scale, zp, bits)}
        if self.s.requant == "fixed":
            attrs["a_multiplier"], attrs["b_multiplier"], attrs["shift"] = shared_multipliers(ma, mb)
        self.q[id(out)] = self.node("q.add", [a, b], attrs, n.name, self.uint8(out, QuantParams((scale,), (zp,), bits)),
                                    self.fresh(f"{out.name}_q"))

    def activation(self, n: Node, bounds: tuple[float, float]) -> None:
        x, out = n.inputs[0], n.outputs[0]
        if id(x) in self.acc:
            self.q[id(out)] = self.requant(self.acc[id(x)], out, bounds)
            return
        xq = self.q[id(x)]
        p = xq.type.qparams
        lim = self.clamp(bounds, p.scale[0], p.zero_point[0], p.bits)
        if not lim:
            self.q[id(out)] = xq
            return
        lo, hi = (self.g.add_constant(np.uint8(lim.get(k, d)), self.fresh(f"{n.name}_{k}"))
                  for k, d in (("lo", 0), ("hi", (1 << p.bits) - 1)))
        self.q[id(out)] = self.node("Clip", [xq, lo, hi], {}, n.name, self.uint8(out, p), self.fresh(f"{out.name}_q"))

    def finite(self, n: Node) -> bool:
        """Whether every operand and result of vector-unit op ``n`` stays within ``+-_HUGE`` on the calibration
        inputs, so that it can run on integers: an attention mask of ``-inf`` (or of float32's lowest, as
        the dynamo exporter writes it) keeps its ``Add`` and ``Softmax`` in float, since no scale covers it."""
        for v in (*n.inputs, *n.outputs):
            if v is None:
                continue
            if v.const is not None:
                if v.const.dtype.kind == "f" and not (np.abs(v.const) < _HUGE).all():
                    return False
                continue
            o = self.obs.get(self.tie.get(id(v), v).name)
            if o is not None and o.lo <= o.hi and not (-_HUGE < o.lo and o.hi < _HUGE):
                return False
        return True

    def integer(self, v: Value | None) -> bool:
        """Whether ``v`` has an integer form (uint8 or accumulator)."""
        return v is not None and (id(v) in self.q or id(v) in self.acc)

    def lut(self, x: Value, fn, out: Value, name: str, out_name: str | None = None) -> Value:
        """``q.lut`` of uint8 ``x``: ``fn`` of its real values, on ``out``'s grid (its shape is ``x``'s: ``out`` may
        be the Concat that ``x`` is requantized for)."""
        scale, zp, bits = self.params(out)
        p = x.type.qparams
        table = lut_table(p.scale[0], p.zero_point[0], fn, scale, zp, 0, (1 << bits) - 1)
        return self.node("q.lut", [x], {"table": table, "scale": scale, "zero_point": zp, "bits": bits}, name,
                         self.uint8(x, QuantParams((scale,), (zp,), bits)), out_name or self.fresh(f"{out.name}_q"))

    def narrow(self, v: Value, bits: int) -> Value:
        """The uint8 form of ``v`` with at most ``bits`` bits, for an array op that reads ``bits``: when the
        vector unit reads ``v`` too (wider), a ``q.lut`` puts it on the ``bits``-bit grid of its calibrated
        range (once per width)."""
        x = self.as_quant(v)
        if x.type.qparams.bits <= bits:
            return x
        key = (id(x), bits)
        if key not in self.narrowed:
            root = self.tie.get(id(v), v)
            scale, zp = act_params(*self.obs[root.name].range(bits), bits)
            p = x.type.qparams
            table = lut_table(p.scale[0], p.zero_point[0], lambda r: r, scale, zp, 0, (1 << bits) - 1)
            self.narrowed[key] = self.node("q.lut", [x], {"table": table, "scale": scale, "zero_point": zp,
                                                         "bits": bits}, self.fresh(f"{v.name}_narrow{bits}"),
                                           self.uint8(v, QuantParams((scale,), (zp,), bits)),
                                           self.fresh(f"{v.name}_q{bits}"))
        return self.narrowed[key]

    def act_matmul(self, n: Node) -> None:
        a, b = (self.narrow(n.operand(k), self.s.read_bits(n, vector=False)) for k in (0, 1))
        out = n.outputs[0]
        self.acc[id(out)] = self.node("q.act_matmul", [a, b], {"a_zero_point": a.type.qparams.zero_point[0],
                                                                 "b_zero_point": b.type.qparams.zero_point[0]},
                                      n.name, out_name=self.fresh(f"{out.name}_acc"))

    def product(self, n: Node) -> None:
        a, b = (self.as_quant(n.operand(k)) for k in (0, 1))
        out = n.outputs[0]
        scale, zp, bits = self.params(out)
        m = float(np.float32(np.float32(a.type.qparams.scale[0] * b.type.qparams.scale[0]) / np.float32(scale)))
        attrs = {"mode": self.s.requant, "mul_scale": m, "scale": scale, "a_zero_point": a.type.qparams.zero_point[0],
                 "b_zero_point": b.type.qparams.zero_point[0], "zero_point": zp, "bits": bits}
        if self.s.requant == "fixed":
            attrs["multiplier"], attrs["shift"] = quantize_multiplier(m)
        self.q[id(out)] = self.node("q.mul", [a, b], attrs, n.name, self.uint8(out, QuantParams((scale,), (zp,), bits)),
                                    self.fresh(f"{out.name}_q"))

    def softmax(self, n: Node) -> None:
        x, out = self.as_quant(n.operand(0)), n.outputs[0]
        scale, zp, bits = self.params(out)
        attrs = {"axis": n.attrs.get("axis", -1), "flatten": 0, "x_scale": x.type.qparams.scale[0], "scale": scale,
                 "zero_point": zp, "bits": bits}
        self.q[id(out)] = self.node("q.softmax", [x], attrs, n.name,
                                    self.uint8(out, QuantParams((scale,), (zp,), bits)), self.fresh(f"{out.name}_q"))

    def unary(self, n: Node, first: tuple[int, list]) -> None:
        """A chain of elementwise ops of one integer value and constant scalars, each the only reader of
        the one before: one ``q.lut`` to the last one's grid."""
        self.chain(n, n.operand(first[0]), chain_function([n], [first]))

    def chain(self, n: Node, root: Value, fn) -> None:
        """``n``'s result is ``fn`` of ``root`` (an integer value); with the :func:`scalar_operand` ops after it,
        each the only reader of the one before (up to 8 ops in all), one ``q.lut`` of ``root``."""
        chain: list[Node] = []
        steps: list[tuple[int, list]] = []
        out = n.outputs[0]
        while len(chain) < 7:
            nxt = out.users[0] if len(out.uses) == 1 and not self.src.is_output(out) else None
            if nxt is None:
                break
            step = scalar_operand(nxt, v=out)
            if step is None:
                break
            chain.append(nxt)
            steps.append(step)
            out = nxt.outputs[0]
        self.skip.update(id(m) for m in chain)
        after = chain_function(chain, steps)
        self.q[id(out)] = self.lut(self.as_quant(root), lambda r: after(fn(r)), out, (chain or [n])[-1].name)

    def one_root(self, n: Node):
        """``(root, fn)`` when both operands of Add/Mul ``n`` are elementwise functions of one integer value
        ``root`` through :func:`scalar_operand` chains whose values only they read (SiLU ``x * sigmoid(x)``,
        GELU ``x * (1 + erf(x / c)) / 2``): ``n``'s result is ``fn(root)``, one ``q.lut`` rather than a
        table per operand and a ``q.mul``/``q.add`` of two rounded codes; else ``None``."""
        roots, fns = [], []
        operands = [n.operand(k) for k in range(len(n.inputs))]
        for v in operands:
            nodes: list[Node] = []
            steps: list[tuple[int, list]] = []
            while (p := v.producer) is not None and len(v.uses) == 1 and not self.src.is_output(v) \
                    and (step := scalar_operand(p)) is not None:
                nodes.append(p)
                steps.append(step)
                v = p.operand(step[0])
            roots.append(v)
            fns.append(chain_function(nodes[::-1], steps[::-1]))
        root = roots[0]
        shape = n.outputs[0].type.shape
        if roots[1] is not root or not self.integer(root) or shape is None or root.type.shape != shape \
                or any(v.type.shape != shape for v in operands) or not self.finite(n):
            return None
        from cimc.ops.qoperator import float_op

        fa, fb = fns
        return root, lambda r: np.asarray(float_op(n.op, n.attrs, fa(r), fb(r)), np.float32)

    def move(self, n: Node) -> bool:
        data = n.inputs if n.op == "Concat" else n.inputs[:1]
        if len(n.outputs) != 1:
            return False
        for v in data:  # an accumulator that integer layers read later is requantized here already
            if v is not None and id(v) in self.acc and id(v) in self.bits:
                self.as_quant(v)
        if n.op == "Concat" and any(id(v) in self.q for v in data) and all(
                v is not None and v.const is None and v.type.dtype is DType.f32 for v in data):
            self.concat(n)
            return True
        quant = {self.q[id(v)].type.qparams for v in data if id(v) in self.q}
        if len(quant) != 1 or not all(id(v) in self.q for v in data):
            return False
        ins = [self.q[id(v)] if v in data else None if v is None else self.as_float(v) for v in n.inputs]
        out = n.outputs[0]
        self.q[id(out)] = self.node(n.op, ins, dict(n.attrs), n.name, self.uint8(out, quant.pop()),
                                    self.fresh(f"{out.name}_q"))
        return True

    def concat(self, n: Node) -> None:
        """A Concat of which some inputs are uint8: on the result's grid, the others requantized to it
        (``q.lut``), quantized (float ones) or requantized (accumulators)."""
        out = n.outputs[0]
        scale, zp, bits = self.params(out)
        want = QuantParams((scale,), (zp,), bits)
        ins = []
        for i in range(len(n.inputs)):
            x = self.as_quant(n.operand(i))
            if x.type.quant != want:
                x = self.lut(x, lambda r: r, out, self.fresh(f"{n.name}_{i}_requant"))
            ins.append(x)
        self.q[id(out)] = self.node("Concat", ins, dict(n.attrs), n.name, self.uint8(out, want),
                                    self.fresh(f"{out.name}_q"))

    def copy(self, n: Node) -> None:
        ins = [None if v is None else self.as_float(v) for v in n.inputs]
        attrs = {k: (v.copy() if isinstance(v, Graph) else v) for k, v in n.attrs.items()}
        m = self.g.add_node(n.op, ins, attrs, outputs=[v.type for v in n.outputs],
                            output_names=[v.name for v in n.outputs], name=n.name)
        self.f.update(zip(map(id, n.outputs), m.outputs, strict=True))

    def build(self) -> Graph:
        for v in self.src.inputs:
            self.f[id(v)] = self.g.add_input(v.name, v.type)
        for n in self.src.nodes:
            if id(n) in self.skip:
                continue
            ints = [v for v in n.inputs[:1] if self.integer(v)]
            unary = scalar_operand(n)
            if quantizable(n):
                self.mvm(n, *_weights(n))
            elif act_matmul(n):
                self.act_matmul(n)
            elif n.op in _ACTS and ints and (bounds := _const_bounds(n)) is not None:
                self.activation(n, bounds)
            elif (_is_add(n) or _product(n)) and (region := self.one_root(n)) is not None:
                self.chain(n, *region)
            elif _is_add(n) and any(self.integer(v) for v in n.inputs) and self.finite(n):
                self.add(n)
            elif _product(n) and any(self.integer(v) for v in n.inputs) and self.finite(n):
                self.product(n)
            elif n.op == "Softmax" and ints and n.operand(0).type.dtype is DType.f32 and self.finite(n):
                self.softmax(n)
            elif unary is not None and self.integer(n.inputs[unary[0]]) and n.op not in _ACTS \
                    and n.outputs[0].type.dtype is DType.f32 and self.finite(n):
                self.unary(n, unary)
            elif not (n.op in MOVES and self.move(n)):
                self.copy(n)
        self.g.outputs = [self.as_float(v) for v in self.src.outputs]
        self.g.remove_dead()  # the tables of operands that a one-root region (one_root) computes itself
        return self.g
