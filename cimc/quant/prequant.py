"""Pre-quantized models adopted: QDQ and QOperator ONNX graphs rewritten into ``q.*`` ops that keep
the model's own scales, zero points and bit widths (no calibration).

QOperator ops are first written as QDQ (:func:`cimc.quant.expand.to_qdq`); then one walk over the
nodes keeps up to three forms of each value, as :mod:`cimc.quant.lower` does: float, uint8
activation (``q``) and int32 accumulator (``acc``), converting on first need. An activation of the
model is held as uint8: a signed one shifted by its *offset* (128 for int8, ``2**(b-1)`` for a
``b``-bit signed range), which leaves ``s * (q - z)`` unchanged. Rules, by the node:

- ``QuantizeLinear`` (per tensor): of a float value, ``q.quantize``; of an accumulator,
  ``q.requant`` with onnxruntime's multiplier ``float32(float32(sx * sw[c]) / sy)`` (clamped by a
  Relu/Clip between them); of an activation with the same parameters, that activation; with other
  parameters, a ``q.lut`` requantization table. A ``Clip`` with constant bounds that is the only
  reader of the result (Brevitas' Quant-Clip-DeQuant) narrows it: the result has the fewest bits
  that hold the clipped range (4-bit activations stay 4-bit).
- ``DequantizeLinear`` of a constant marks a quantized weight; of an activation with the same
  parameters, it is that activation (in float form where a float op reads it).
- ``Conv``/``ConvTranspose``/``Gemm`` (``transA=0``, ``alpha=beta=1``)/``MatMul`` reading a
  dequantized activation and a dequantized constant weight: ``q.conv``/``q.conv_transpose``/
  ``q.gemm``/``q.matmul``. The weight is ``w - zw`` in int8 (an error if that does not fit), per
  tensor or per output channel, with the fewest bits that hold it; the bias is the int32 one
  (``round(b * sb / (sx*sw))``, exact when ``sb = sx*sw`` as quantizers write it) or a float
  bias rounded so, minus ``zx * sum(w)`` (not for ``q.conv_transpose``).
- ``MatMul`` of two dequantized activations (attention): ``q.act_matmul`` of their codes.
- A float op between dequantized activations and one ``QuantizeLinear`` (onnxruntime's fusions):
  ``Add`` -> ``q.add``, ``Mul`` -> ``q.mul``, ``AveragePool``/``GlobalAveragePool`` ->
  ``q.avg_pool`` (onnxruntime's own rounding, see :mod:`cimc.ops.qlinear`), ``Softmax`` ->
  ``q.softmax``, ``Concat`` -> ``Concat`` of inputs requantized by ``q.lut`` where their parameters
  differ, and any elementwise op of one activation (``Relu``, ``Sigmoid``, ``LeakyRelu``, ``Tanh``,
  ``Mul`` by a constant scalar, ...) -> ``q.lut``, its table computed by cimc's own float op on the
  256 dequantized codes.
- Moves (``MaxPool``, ``Reshape``, ...) run on the activation; nodes whose operands are all
  constants are folded; everything else is copied and runs in float on ``q.dequantize`` results.
  Weight-carrying multiply-accumulates that do not become array ops (``Conv``, ``Gemm``, ``MatMul``
  the model left in float, recurrent layers, ``ConvInteger``/``MatMulInteger``, which run as they
  are) are listed in ``graph.metadata["quant.float_layers"]``.

``requant="float"`` (the default) requantizes in float32 as onnxruntime's kernels do; ``"fixed"``
uses integer multipliers and shifts, and the pools' integer path. Pre: the graph verifies and has
no dynamic quantization (``DynamicQuantizeLinear``). Post: a new graph with the same inputs and
outputs (names and types); graph metadata ``quant.requant``, ``quant.source`` (``qdq`` or
``qoperator``) and ``quant.onnx_values`` (JSON: ``[onnx name, cimc name, ONNX element type, offset]``
for each integer result of the source model that is a uint8 value here, which
:func:`cimc.onnx_io.qdq.source_agreement` compares with onnxruntime).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from cimc.errors import CimcError
from cimc.ir.core import Graph, Node, Value
from cimc.ir.types import ONNX_CODE_OF_DTYPE, DType, QuantParams, TensorType
from cimc.ops.qoperator import pool_mode
from cimc.quant.expand import QOPERATOR_OPS, to_qdq
from cimc.quant.fixedpoint import quantize_multiplier, quantize_multipliers, shared_multipliers
from cimc.quant.lower import MOVES, UNARY, chain_function, scalar_operand
from cimc.quant.params import lut_table

__all__ = ["QUANTIZED_OPS", "adopt_quantized", "is_prequantized"]

logger = logging.getLogger(__name__)

QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                           "MatMulInteger", *QOPERATOR_OPS})
"""Ops that make a graph pre-quantized (it carries its own quantization)."""

_MVM = {"Conv": "q.conv", "ConvTranspose": "q.conv_transpose", "Gemm": "q.gemm", "MatMul": "q.matmul"}
_WEIGHTED = frozenset({*_MVM, "LSTM", "GRU", "RNN", "ConvInteger", "MatMulInteger"})
_RANGES = {DType.u8: (0, 255), DType.i8: (-128, 127), DType.u4: (0, 15), DType.i4: (-8, 7)}


def is_prequantized(graph: Graph) -> bool:
    """Whether ``graph`` carries its own quantization (any op of :data:`QUANTIZED_OPS`)."""
    return any(n.op in QUANTIZED_OPS for n in graph.nodes)


def adopt_quantized(graph: Graph, *, requant: str = "float") -> Graph:
    """``graph`` (QDQ or QOperator ONNX ops, as imported) as a new ``q.*`` graph with its own
    quantization parameters (see the module doc)."""
    if requant not in ("fixed", "float"):
        raise CimcError(f"requant={requant!r}; expected 'fixed' or 'float'")
    if dyn := [n.name for n in graph.nodes if n.op == "DynamicQuantizeLinear"]:
        raise CimcError(f"graph {graph.name!r} is dynamically quantized (DynamicQuantizeLinear nodes "
                        f"{', '.join(map(repr, dyn[:3]))}): its activation scales are computed from each input at "
                        "run time, and cimc's targets need fixed scales; quantize the float model statically "
                        "(onnxruntime's quantize_static) or let cimc quantize it")
    source = "qoperator" if any(n.op in QOPERATOR_OPS for n in graph.nodes) else "qdq"
    g = _Adopter(to_qdq(graph) if source == "qoperator" else graph, requant).build()
    g.metadata["quant.source"] = source
    return g


@dataclass(frozen=True)
class _Target:
    """Where a ``QuantizeLinear`` puts a result: uint8 parameters, offset, clamp, and the source values
    that the result stands for (the Q's output, and a narrowing Clip's)."""

    quant: QuantParams
    offset: int
    lo: int | None
    hi: int | None
    outs: tuple[Value, ...]
    done: tuple[Node, ...]


def _qparams(n: Node, const) -> tuple[np.ndarray, np.ndarray, int | None] | None:
    """``(scale, zero point, axis)`` of a Q/DQ node with constant parameters (non-blocked), else None."""
    if len(n.inputs) < 2 or n.attrs.get("block_size", 0):
        return None
    s = const(n.inputs[1])
    zv = n.inputs[2] if len(n.inputs) > 2 else None
    z = None if zv is None else const(zv)
    if s is None or (zv is not None and z is None):
        return None
    s = np.asarray(s, np.float32)
    z = np.zeros(s.shape, np.int64) if z is None else np.asarray(z, np.int64)
    per_tensor = s.size == 1 and s.ndim <= 1
    return s.reshape(-1), np.broadcast_to(z.reshape(-1), s.reshape(-1).shape), None if per_tensor else \
        n.attrs.get("axis", 1)


def _bits(lo: int, hi: int, signed: bool) -> int | None:
    """The fewest bits (2..8) whose signed or unsigned range holds ``[lo, hi]``."""
    for b in range(2, 9):
        if (signed and -(1 << (b - 1)) <= lo and hi <= (1 << (b - 1)) - 1) or (not signed and 0 <= lo
                                                                                and hi <= (1 << b) - 1):
            return b
    return None


class _Adopter:
    def __init__(self, src: Graph, mode: str) -> None:
        self.src, self.mode = src, mode
        self.g = Graph(src.name)
        self.g.metadata = {**src.metadata, "quant.requant": mode}
        self.f: dict[int, Value] = {}  # float form
        self.q: dict[int, Value] = {}  # uint8 form
        self.offset: dict[int, int] = {}  # of a uint8 value of self.g
        self.acc: dict[int, tuple[Value, tuple[float, float] | None]] = {}  # accumulator (+ pending clamp)
        self.mults: dict[int, tuple[float, ...]] = {}  # float32 sx*sw[c] of an accumulator of self.g
        self.wdq: dict[int, Node] = {}  # DequantizeLinear outputs of constants
        self.cval: dict[int, np.ndarray] = {}  # values folded from constants
        self.done: set[int] = set()
        self.float_layers: list[str] = []
        self.sources: list[tuple[Value, Value]] = []  # (a Q/Clip result of the source, its uint8 value here)

    # ---- helpers ---------------------------------------------------------------------------------
    def const(self, v: Value | None) -> np.ndarray | None:
        return None if v is None else v.const if v.const is not None else self.cval.get(id(v))

    def node(self, op: str, ins: list, attrs: dict, name: str, out: TensorType | None, out_name: str) -> Value:
        return self.g.add_node(op, ins, attrs, outputs=None if out is None else [out], output_names=[out_name],
                               name=name).outputs[0]

    def qp(self, n: Node) -> tuple[np.ndarray, np.ndarray, int | None] | None:
        return _qparams(n, self.const)

    def known_qp(self, n: Node) -> tuple[np.ndarray, np.ndarray, int | None]:
        """:meth:`qp` of a Q/DQ node already seen to have constant parameters."""
        pr = self.qp(n)
        if pr is None:
            raise CimcError(f"node {n.name!r} ({n.op}): its quantization parameters are not constants")
        return pr

    def known_const(self, v: Value | None) -> np.ndarray:
        """:meth:`const` of an operand already seen to be a constant."""
        c = self.const(v)
        if c is None:
            raise CimcError(f"{'an absent operand' if v is None else f'%{v.name}'} is not a constant")
        return c

    def as_float(self, v: Value) -> Value:
        if id(v) in self.f:
            return self.f[id(v)]
        c = self.const(v)
        if c is not None and id(v) not in self.wdq:
            self.f[id(v)] = self.g.add_constant(c, v.name, v.type if v.const is not None else None)
        elif id(v) in self.wdq:  # a dequantized constant: fold it
            n = self.wdq[id(v)]
            s, z, axis = self.known_qp(n)
            c = self.known_const(n.inputs[0])
            shape = [-1 if axis is not None and i == axis % c.ndim else 1 for i in range(c.ndim)]
            arr = ((c.astype(np.int64) - z.reshape(shape)).astype(np.float32) * s.reshape(shape)) if c.ndim else \
                np.float32((int(c) - int(z[0])) * s[0])
            self.f[id(v)] = self.g.add_constant(np.asarray(arr, np.float32), v.name)
        elif id(v) in self.acc:
            acc, bounds = self.acc[id(v)]
            p = acc.type.qparams
            y = self.node("q.dequantize", [acc], {"scale": p.scale, "zero_point": p.zero_point, "axis": p.axis or 0},
                          f"{v.name}_dequantize", None, v.name if bounds is None else f"{v.name}_unclamped")
            if bounds is not None:
                lo, hi = (self.g.add_constant(np.float32(b), f"{v.name}_{k}") for b, k in zip(bounds, ("lo", "hi"),
                                                                                              strict=True))
                y = self.node("Clip", [y, lo, hi], {}, f"{v.name}_clip", None, v.name)
            self.f[id(v)] = y
        else:
            q = self.q[id(v)]
            p = q.type.qparams
            self.f[id(v)] = self.node("q.dequantize", [q], {"scale": p.scale, "zero_point": p.zero_point, "axis": 0},
                                      f"{v.name}_dequantize", None, v.name)
        return self.f[id(v)]

    def operand(self, v: Value | None) -> Value | None:
        """The uint8 activation whose real value the float value ``v`` is (a dequantized activation)."""
        return None if v is None or not v.type.dtype.is_float else self.q.get(id(v))

    def target(self, qn: Node) -> _Target | None:
        """The uint8 parameters a per-tensor ``QuantizeLinear`` gives its result (see the module doc)."""
        pr, out = self.qp(qn), qn.outputs[0]
        if pr is None or pr[2] is not None or out.type.dtype not in _RANGES or not float(pr[0][0]) > 0:
            return None
        (qlo, qhi), signed = _RANGES[out.type.dtype], out.type.dtype in (DType.i8, DType.i4)
        outs, done = [out], []
        users = out.users
        if len(out.uses) == 1 and users[0].op == "Clip" and not self.src.is_output(out):
            b = [self.const(v) for v in users[0].inputs[1:]]
            if all(x is None or x.size == 1 for x in b) and all(v is None or x is not None
                                                                 for v, x in zip(users[0].inputs[1:], b, strict=True)):
                bounds = [None if x is None else int(np.asarray(x).reshape(-1)[0]) for x in b] + [None, None]
                qlo, qhi = max(qlo, bounds[0] if bounds[0] is not None else qlo), \
                    min(qhi, bounds[1] if bounds[1] is not None else qhi)
                outs.append(users[0].outputs[0])
                done.append(users[0])
        bits = _bits(qlo, qhi, signed)
        if bits is None:
            return None
        offset, qmax = (1 << (bits - 1)) if signed else 0, (1 << bits) - 1
        zp = int(pr[1][0]) + offset
        if not 0 <= zp <= qmax:
            return None
        lo, hi = qlo + offset, qhi + offset
        return _Target(QuantParams((float(pr[0][0]),), (zp,), bits), offset, lo if lo > 0 else None,
                       hi if hi < qmax else None, tuple(outs), tuple(done))

    def requant_target(self, out: Value) -> _Target | None:
        """The target of the one ``QuantizeLinear`` that reads float result ``out``, if that is its only reader."""
        users = out.users
        if len(out.uses) != 1 or users[0].op != "QuantizeLinear" or self.src.is_output(out):
            return None
        t = self.target(users[0])
        return None if t is None else _Target(t.quant, t.offset, t.lo, t.hi, t.outs, (users[0], *t.done))

    def settle(self, t: _Target, value: Value) -> Value:
        """Make ``value`` (uint8, of ``t``'s parameters) the form of ``t``'s source values."""
        for v in t.outs:
            self.q[id(v)] = value
        self.sources.append((t.outs[-1], value))  # the clipped result, where a Clip narrows the Q's
        self.offset[id(value)] = t.offset
        self.done.update(id(n) for n in t.done)
        return value

    def act_type(self, v: Value, t: _Target) -> TensorType:
        return TensorType(DType.u8, v.type.shape, t.quant)

    def clamp_attrs(self, t: _Target, bounds: tuple[float, float] | None = None) -> dict[str, int]:
        """``lo``/``hi`` of ``t``, tightened by real ``bounds`` (a Relu/Clip) put on its grid."""
        qmax, (scale,), (zp,) = (1 << t.quant.bits) - 1, t.quant.scale, t.quant.zero_point
        lo, hi = 0 if t.lo is None else t.lo, qmax if t.hi is None else t.hi
        for key, b in zip(("lo", "hi"), bounds or (), strict=False):
            if np.isfinite(b):
                qb = int(np.clip(np.rint(np.float32(b) / np.float32(scale)) + zp, 0, qmax))
                lo, hi = (max(lo, qb), hi) if key == "lo" else (lo, min(hi, qb))
        return {**({"lo": lo} if lo > 0 else {}), **({"hi": hi} if hi < qmax else {})}

    def lut(self, u: Value, fn, t: _Target, name: str, out_name: str) -> Value:
        """``q.lut`` of activation ``u``: ``t``'s quantization of ``fn`` of each dequantized code."""
        p = u.type.qparams
        qmax = (1 << t.quant.bits) - 1
        lim = self.clamp_attrs(t)
        table = lut_table(p.scale[0], p.zero_point[0], fn, t.quant.scale[0], t.quant.zero_point[0], lim.get("lo", 0),
                          lim.get("hi", qmax))
        return self.node("q.lut", [u], {"table": table, "scale": t.quant.scale[0],
                                        "zero_point": t.quant.zero_point[0], "bits": t.quant.bits},
                         name, TensorType(DType.u8, u.type.shape, t.quant), out_name)

    def same(self, u: Value, t: _Target) -> bool:
        return u.type.quant == t.quant and self.offset.get(id(u), 0) == t.offset

    # ---- rules -----------------------------------------------------------------------------------
    def fold(self, n: Node) -> bool:
        """Evaluate a node whose operands are all constants (not a weight's DequantizeLinear)."""
        if n.op == "DequantizeLinear" or not n.inputs or any(v is not None and self.const(v) is None
                                                              for v in n.inputs):
            return False
        from cimc.ir.opdef import OpContext, lookup

        opdef = lookup(n.op)
        if opdef is None or opdef.has_side_effects or any(isinstance(a, Graph) for a in n.attrs.values()):
            return False
        out = opdef.impl(OpContext(opdef.attr_values(n.attrs), len(n.outputs), n.name, None, {}),
                         *(None if v is None else self.const(v) for v in n.inputs))
        for v, a in zip(n.outputs, out if isinstance(out, tuple | list) else [out], strict=True):
            self.cval[id(v)] = np.asarray(a)
        return True

    def dequantize_linear(self, n: Node) -> bool:
        x, out, pr = n.inputs[0], n.outputs[0], self.qp(n)
        if pr is None:
            return False
        if self.const(x) is not None:
            self.wdq[id(out)] = n
            return True
        u = self.q.get(id(x))
        if u is None or pr[2] is not None:
            return False
        p, off = u.type.qparams, self.offset.get(id(u), 0)
        if p.scale[0] == float(pr[0][0]) and p.zero_point[0] == int(pr[1][0]) + off:
            self.q[id(out)] = u
        else:  # parameters other than the activation's: its real value under them, in float
            self.f[id(out)] = self.node("q.dequantize", [u], {"scale": (float(pr[0][0]),),
                                        "zero_point": (int(pr[1][0]) + off,), "axis": 0}, n.name, None, out.name)
        return True

    def quantize_linear(self, n: Node) -> bool:
        x, out = n.operand(0), n.outputs[0]
        t = self.target(n)
        if t is None:
            return False
        scale, zp, bits = t.quant.scale[0], t.quant.zero_point[0], t.quant.bits
        if id(x) in self.acc:
            acc, bounds = self.acc[id(x)]
            ms = tuple(float(np.float32(np.float32(m) / np.float32(scale))) for m in self.mults[id(acc)])
            attrs = {"mode": self.mode, "scale": ms, "axis": acc.type.qparams.axis or 0, "zero_point": zp, "bits": bits,
                     **self.clamp_attrs(t, bounds)}
            if self.mode == "fixed":
                attrs["multiplier"], attrs["shift"] = quantize_multipliers(ms)
            value = self.node("q.requant", [acc], attrs, n.name, self.act_type(out, t), f"{t.outs[-1].name}_u8")
        elif (u := self.operand(x)) is not None:
            value = u if self.same(u, t) else self.lut(u, lambda r: r, t, n.name, f"{t.outs[-1].name}_u8")
        else:
            value = self.node("q.quantize", [self.as_float(x)], {"scale": scale, "zero_point": zp, "bits": bits},
                              n.name, self.act_type(out, t), f"{t.outs[-1].name}_u8")
            lim = self.clamp_attrs(t)
            if lim:
                qmax = (1 << bits) - 1
                lo, hi = (self.g.add_constant(np.uint8(lim.get(k, d)), f"{n.name}_{k}") for k, d in (("lo", 0),
                                                                                                       ("hi", qmax)))
                value = self.node("Clip", [value, lo, hi], {}, f"{n.name}_clip", self.act_type(out, t),
                                  f"{t.outs[-1].name}_u8c")
        self.settle(t, value)
        return True

    def weight(self, n: Node, v: Value | None) -> tuple[np.ndarray, np.ndarray, int | None] | None:
        """``(int weight w - zw, float32 scales, axis)`` of a dequantized constant operand."""
        dq = None if v is None else self.wdq.get(id(v))
        if dq is None:
            return None
        s, z, axis = self.known_qp(dq)
        c = self.known_const(dq.inputs[0])
        if c.dtype.kind not in "iu":
            return None
        shape = [-1 if axis is not None and i == axis % c.ndim else 1 for i in range(c.ndim)]
        return c.astype(np.int64) - z.reshape(shape), s, None if axis is None else axis % c.ndim

    def act_matmul(self, n: Node, a: Value, b: Value) -> bool:
        """A MatMul of two dequantized activations (attention's): ``q.act_matmul`` of their codes, whose
        accumulator a following ``QuantizeLinear`` requantizes by ``float32(float32(sa * sb) / sy)``."""
        if (a.type.rank or 0) < 2 or (b.type.rank or 0) < 2:
            return False
        pa, pb = a.type.qparams, b.type.qparams
        acc = self.node("q.act_matmul", [a, b], {"a_zero_point": int(pa.zero_point[0]),
                                                 "b_zero_point": int(pb.zero_point[0])}, n.name, None,
                        f"{n.outputs[0].name}_acc")
        self.mults[id(acc)] = (float(np.float32(pa.scale[0]) * np.float32(pb.scale[0])),)
        self.acc[id(n.outputs[0])] = (acc, None)
        return True

    def mvm(self, n: Node) -> bool:
        ins = list(n.inputs) + [None] * (3 - len(n.inputs))
        xq, wt = self.operand(ins[0]), self.weight(n, ins[1])
        if n.op == "MatMul" and xq is not None and wt is None and (bv := self.operand(ins[1])) is not None:
            return self.act_matmul(n, xq, bv)
        if xq is None or wt is None:
            return False
        w, sw, axis = wt
        a, op = n.attrs, _MVM[n.op]
        if n.op == "Gemm":
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or (a.get("beta", 1.0) != 1.0 and ins[2] is not None) \
                    or w.ndim != 2:
                return False
            if not a.get("transB", 0):
                w, axis = w.T, None if axis is None else 1 - axis
        elif n.op == "MatMul" and (w.ndim != 2 or (n.operand(0).type.rank or 0) < 2):
            return False
        elif n.op in ("Conv", "ConvTranspose") and w.ndim < 3:
            return False
        ch = {"q.conv": 0, "q.gemm": 0, "q.matmul": 1, "q.conv_transpose": 1}[op]
        group = int(a.get("group", 1)) if op == "q.conv_transpose" else 1
        if axis is not None and axis != ch:
            return False
        if w.size and (w.min() < -128 or w.max() > 127):
            raise CimcError(f"node {n.name!r} ({n.op}): its weight minus zero point spans [{w.min()}, {w.max()}], "
                            "which does not fit the signed 8-bit weights cimc's arrays hold; quantize the weights "
                            "symmetrically (e.g. onnxruntime weight_type=QInt8)")
        cout = w.shape[ch] * group
        if axis is not None and group > 1:  # q.conv_transpose scales run over g*M/G + j, one per output channel
            return False
        sw = np.broadcast_to(sw, (cout,)) if sw.size > 1 else sw
        bits = max(2, _bits(int(w.min(initial=0)), int(w.max(initial=0)), True) or 8)
        sx, zx = np.float32(xq.type.qparams.scale[0]), int(xq.type.qparams.zero_point[0])
        sxw = (sx * np.asarray(sw, np.float32)).astype(np.float32)  # onnxruntime's float32 sx * sw[c]
        bias = np.zeros(sw.size if op != "q.conv_transpose" else cout, np.int64)
        if op != "q.conv_transpose":
            bias = -zx * w.sum(axis=tuple(i for i in range(w.ndim) if i != ch))
        b = ins[2]
        if b is not None:
            bw = self.weight(n, b)
            if bw is not None:
                bq, sb, _ = bw
                bq = bq.reshape(-1)
                if np.array_equal(np.broadcast_to(sb, sxw.shape), sxw):
                    bias = bias + bq
                else:
                    bias = bias + np.rint(bq * sb.astype(np.float64) / sxw.astype(np.float64)).astype(np.int64)
            elif (bf := self.const(b)) is not None and bf.dtype.kind == "f":  # a float bias, rounded to the grid
                bias = bias + np.rint(np.asarray(bf, np.float64).reshape(-1) / sxw.astype(np.float64)).astype(np.int64)
            else:
                return False
        if (bias.size != cout and bias.size != 1) or np.abs(bias).max(initial=0) >= 2**31:
            return False
        bias = np.broadcast_to(bias, (cout,))
        ax = None if sw.size == 1 else ch
        wname = self.wdq[id(ins[1])].operand(0).name
        wv = self.g.add_constant(w.astype(np.int8), wname, TensorType(DType.i8, w.shape, QuantParams(
            tuple(map(float, np.asarray(sw).reshape(-1))), (0,) * sw.size, bits, ax)))
        acc_scale = tuple(float(sx) * float(s) for s in np.asarray(sw).reshape(-1))
        bv = None
        if b is not None or (zx and op != "q.conv_transpose"):
            bv = self.g.add_constant(bias.astype(np.int32), f"{wname}_bias", TensorType(DType.i32, (cout,), QuantParams(
                acc_scale if sw.size > 1 else (acc_scale[0],) * cout, (0,) * cout, 32, 0)))
        attrs = (dict(a) if n.op in ("Conv", "ConvTranspose") else {}) | {"x_zero_point": zx}
        out = n.outputs[0]
        acc = self.node(op, [xq, wv, bv], attrs, n.name, None, f"{out.name}_acc")
        self.mults[id(acc)] = tuple(float(m) for m in sxw.reshape(-1))
        self.acc[id(out)] = (acc, None)
        return True

    def activation(self, n: Node) -> bool:
        x = n.inputs[0]
        if id(x) not in self.acc or self.acc[id(x)][1] is not None:
            return False
        if n.op == "Relu":
            bounds = (0.0, np.inf)
        else:
            ins = list(n.inputs) + [None] * (3 - len(n.inputs))
            cs = [self.const(v) for v in ins[1:]]
            if any(v is not None and c is None for v, c in zip(ins[1:], cs, strict=True)):
                return False
            lo, hi = (d if c is None else float(np.asarray(c).reshape(-1)[0])
                      for c, d in zip(cs, (-np.inf, np.inf), strict=True))
            bounds = (lo, hi)
        self.acc[id(n.outputs[0])] = (self.acc[id(x)][0], bounds)
        return True

    def const_act(self, v: Value | None) -> Value | None:
        """A per-tensor dequantized constant as a uint8 constant activation (its codes, shifted like an
        activation), so that it can take part in ``q.add``/``q.mul`` as onnxruntime's fusions let it."""
        dq = None if v is None else self.wdq.get(id(v))
        if v is None or dq is None:
            return None
        pr, c = self.qp(dq), self.const(dq.inputs[0])
        if pr is None or c is None or pr[2] is not None or c.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)) \
                or not float(pr[0][0]) > 0:
            return None
        off = 128 if c.dtype == np.int8 else 0
        value = self.g.add_constant((c.astype(np.int64) + off).astype(np.uint8), f"{v.name}_u8", TensorType(
            DType.u8, c.shape, QuantParams((float(pr[0][0]),), (int(pr[1][0]) + off,), 8)))
        self.offset[id(value)] = off
        return value

    def binary(self, n: Node) -> bool:
        """``Add``/``Mul`` of two dequantized activations (or one and a dequantized constant), quantized once:
        ``q.add``/``q.mul``."""
        a, b = (self.operand(v) for v in n.inputs[:2]) if len(n.inputs) == 2 else (None, None)
        if len(n.inputs) == 2 and (a is None) != (b is None):
            a, b = (a or self.const_act(n.inputs[0]), b or self.const_act(n.inputs[1]))
        if a is None or b is None:
            return False
        t = self.requant_target(n.outputs[0])
        if t is None:
            return False
        sa, sb, sc = (np.float32(s) for s in (a.type.qparams.scale[0], b.type.qparams.scale[0], t.quant.scale[0]))
        za, zb = a.type.qparams.zero_point[0], b.type.qparams.zero_point[0]
        base = {"mode": self.mode, "a_zero_point": za, "b_zero_point": zb, "zero_point": t.quant.zero_point[0],
                "bits": t.quant.bits, **self.clamp_attrs(t)}
        if n.op == "Add":
            ma, mb = float(np.float32(sa / sc)), float(np.float32(sb / sc))
            attrs = {**base, "a_scale": ma, "b_scale": mb}
            if self.mode == "fixed":
                attrs["a_multiplier"], attrs["b_multiplier"], attrs["shift"] = shared_multipliers(ma, mb)
            op = "q.add"
        else:
            m = float(np.float32(np.float32(sa * sb) / sc))
            attrs = {**base, "mul_scale": m, "scale": float(sc), "offset": t.offset}
            if self.mode == "fixed":
                attrs["multiplier"], attrs["shift"] = quantize_multiplier(m)
            op = "q.mul"
        out = n.outputs[0]
        self.settle(t, self.node(op, [a, b], attrs, n.name, self.act_type(out, t), f"{t.outs[-1].name}_u8"))
        return True

    def pool(self, n: Node) -> bool:
        x, out = self.operand(n.inputs[0]), n.outputs[0]
        if x is None:
            return False
        t = self.requant_target(out)
        shape = n.operand(0).type.shape
        if t is None or shape is None or not all(isinstance(d, int) for d in shape[2:]):
            return False
        a = dict(n.attrs)
        if n.op == "GlobalAveragePool":
            a = {"kernel_shape": tuple(shape[2:])}
        if any(d != 1 for d in a.get("dilations") or ()):
            return False
        mode = "fixed" if self.mode == "fixed" else pool_mode(shape[2:], a)
        p = x.type.qparams
        attrs = {**a, "x_scale": p.scale[0], "x_zero_point": p.zero_point[0], "mode": mode,
                 "scale": t.quant.scale[0], "zero_point": t.quant.zero_point[0], "bits": t.quant.bits,
                 "offset": t.offset, **self.clamp_attrs(t)}
        attrs.pop("dilations", None)
        self.settle(t, self.node("q.avg_pool", [x], attrs, n.name, self.act_type(out, t), f"{t.outs[-1].name}_u8"))
        return True

    def softmax(self, n: Node) -> bool:
        x, out = self.operand(n.inputs[0]), n.outputs[0]
        if x is None:
            return False
        t = self.requant_target(out)
        if t is None:
            return False
        attrs = {"axis": n.attrs.get("axis", -1), "flatten": 0, "x_scale": x.type.qparams.scale[0],
                 "scale": t.quant.scale[0], "zero_point": t.quant.zero_point[0], "bits": t.quant.bits,
                 **self.clamp_attrs(t)}
        self.settle(t, self.node("q.softmax", [x], attrs, n.name, self.act_type(out, t), f"{t.outs[-1].name}_u8"))
        return True

    def concat(self, n: Node) -> bool:
        found = [self.operand(v) for v in n.inputs]
        parts = [p for p in found if p is not None]
        t = None if len(parts) != len(found) else self.requant_target(n.outputs[0])
        if t is None:
            return False
        ins = [p if self.same(p, t) else self.lut(p, lambda r: r, t, f"{n.name}_{i}_requant", f"{n.name}_{i}_u8")
               for i, p in enumerate(parts)]
        out = n.outputs[0]
        self.settle(t, self.node("Concat", ins, dict(n.attrs), n.name, self.act_type(out, t), f"{t.outs[-1].name}_u8"))
        return True

    def scalar_operands(self, n: Node, v: Value | None = None) -> tuple[int, list] | None:
        """:func:`cimc.quant.lower.scalar_operand` with the constants folded here too."""
        return scalar_operand(n, self.const, v)

    def unary(self, n: Node) -> bool:
        """A chain of elementwise ops of one activation and constant scalars, quantized once at its end:
        one ``q.lut`` (each code's value computed through the chain, as a float program computes it)."""
        first = self.scalar_operands(n)
        if first is None:
            return False
        x = self.operand(n.inputs[first[0]])
        if x is None:
            return False
        chain, steps = [n], [first]
        while (t := self.requant_target(chain[-1].outputs[0])) is None:
            out = chain[-1].outputs[0]
            nxt = out.users[0] if len(out.uses) == 1 and not self.src.is_output(out) else None
            if nxt is None or len(chain) >= 8:
                return False
            step = self.scalar_operands(nxt, out)
            if step is None:
                return False
            chain.append(nxt)
            steps.append(step)

        self.done.update(id(m) for m in chain[1:])
        self.settle(t, self.lut(x, chain_function(chain, steps), t, chain[-1].name, f"{t.outs[-1].name}_u8"))
        return True

    def move(self, n: Node) -> bool:
        if n.op not in MOVES or len(n.outputs) != 1:
            return False
        data = n.inputs if n.op == "Concat" else n.inputs[:1]
        found = [self.q.get(id(v)) for v in data]
        qs = [q for q in found if q is not None]
        if len(qs) != len(found) or len({(q.type.quant, self.offset.get(id(q), 0)) for q in qs}) != 1:
            return False
        ins = [qs[data.index(v)] if v in data else None if v is None else self.as_float(v) for v in n.inputs]
        out = n.outputs[0]
        value = self.node(n.op, ins, dict(n.attrs), n.name, TensorType(DType.u8, out.type.shape, qs[0].type.quant),
                          f"{out.name}_u8")
        self.q[id(out)] = value
        self.offset[id(value)] = self.offset.get(id(qs[0]), 0)
        return True

    def copy(self, n: Node) -> None:
        if n.op in _WEIGHTED and any(self.const(v) is not None or id(v) in self.wdq for v in n.inputs[1:2]):
            self.float_layers.append(n.name)
        m = self.g.add_node(n.op, [None if v is None else self.as_float(v) for v in n.inputs], dict(n.attrs),
                            outputs=[v.type for v in n.outputs], output_names=[v.name for v in n.outputs],
                            name=n.name)
        self.f.update(zip(map(id, n.outputs), m.outputs, strict=True))

    _RULES: ClassVar[dict[str, str]] = {"DequantizeLinear": "dequantize_linear", "QuantizeLinear": "quantize_linear",
                                        "Conv": "mvm",
                                        "ConvTranspose": "mvm", "Gemm": "mvm", "MatMul": "mvm", "Relu": "activation",
                                        "Clip": "activation", "Add": "binary", "Mul": "binary", "AveragePool": "pool",
                                        "GlobalAveragePool": "pool", "Softmax": "softmax", "Concat": "concat"}

    def build(self) -> Graph:
        for v in self.src.inputs:
            self.f[id(v)] = self.g.add_input(v.name, v.type)
        for n in self.src.nodes:
            if id(n) in self.done or self.fold(n):
                continue
            rule = self._RULES.get(n.op)
            ok = rule is not None and getattr(self, rule)(n)
            ok = ok or (n.op in UNARY and self.unary(n)) or self.move(n)
            if not ok:
                self.copy(n)
        outs = [self.as_float(v) for v in self.src.outputs]
        for v, new in zip(self.src.outputs, outs, strict=True):
            if new.name != v.name:
                holder = next((x for x in self.g.values() if x.name == v.name), None)
                if holder is not None:
                    self.g.rename_value(holder, f"{v.name}_")
                self.g.rename_value(new, v.name)
        self.g.outputs = outs
        self.g.remove_dead()
        live = {id(v) for v in self.g.values()}
        self.g.metadata["quant.onnx_values"] = json.dumps(
            [[v.name, u.name, ONNX_CODE_OF_DTYPE[v.type.dtype], self.offset.get(id(u), 0)]
             for v, u in self.sources if id(u) in live and v.type.dtype in _RANGES], separators=(",", ":"))
        if self.float_layers:
            self.g.metadata["quant.float_layers"] = ",".join(self.float_layers)
        return self.g
