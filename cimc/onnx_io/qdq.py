"""Quantized ONNX in and out: ``q.*`` graphs as QDQ models, and QDQ models as ``q.*`` graphs.

Export (:func:`export_qdq`) rewrites a quantized graph into ONNX ops, value by value: a uint8
activation stays a uint8 tensor; an int32 accumulator becomes the float tensor of its real value
``sx * sw[c] * acc``, computed by the float op between DequantizeLinear nodes, which onnxruntime
fuses back into integer kernels (QLinearConv, QGemm, QLinearMatMul, QLinearAdd):

- ``q.quantize`` -> ``QuantizeLinear`` (uint8 zero point); ``q.dequantize`` of uint8 ->
  ``DequantizeLinear``, of an accumulator -> nothing (the float op already gives that value);
- ``q.conv``/``q.gemm``/``q.matmul`` -> ``Conv``/``Gemm``/``MatMul`` of ``DequantizeLinear(x)``,
  ``DequantizeLinear(w)`` (int8, per-channel ``axis``) and ``DequantizeLinear(bias)`` (int32, scale
  ``sx*sw``). The exported bias is cimc's plus the zero-point term ``zx * sum(w)`` it holds
  (ONNX subtracts ``zx`` itself); a ``q.matmul`` bias is an ``Add`` after the ``MatMul``;
- ``q.conv_transpose`` -> ``ConvTranspose`` likewise, weights dequantized on axis 1 and the bias
  as is (it holds no zero-point term); per-channel weights with ``group > 1`` have no such form
  (their ``M`` scales do not run along one axis of ``w``) and are an error;
- ``q.requant`` -> ``QuantizeLinear`` of the float accumulator; ``q.add`` -> ``DequantizeLinear``
  both, ``Add``, ``QuantizeLinear``.
A result narrower than 8 bits, or with a ``lo``/``hi`` clamp, gets an integer ``Clip`` on the
uint8 tensor after its ``QuantizeLinear`` (exactly ``clip(v + zp, lo, hi)``, and it leaves the
Q -> DQ pairs of the neighbouring layers intact for fusion). Float and uint8 ops are copied.

``expose`` adds named uint8 activations of the source graph as extra (uint8) graph outputs, so a
run can be compared with cimc's interpreter in the integer domain (:func:`qdq_agreement`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from cimc.errors import CimcError, UnsupportedOpError
from cimc.ir.core import Graph, Node, Value
from cimc.ir.types import DType, QuantParams, TensorType

__all__ = ["adopt_qdq", "export_qdq", "import_qdq", "qdq_agreement", "to_qdq_graph"]

logger = logging.getLogger(__name__)

_MVM = {"q.conv": "Conv", "q.conv_transpose": "ConvTranspose", "q.gemm": "Gemm", "q.matmul": "MatMul"}


_EXPORTABLE = frozenset(f"q.{op}" for op in ("quantize", "dequantize", "conv", "conv_transpose", "gemm", "matmul",
                                             "requant", "add"))
"""The cimc ops ``export_qdq`` writes as QDQ ONNX."""

def export_qdq(graph: Graph, *, opset: int | None = None, expose: Iterable[str] = ()) -> onnx.ModelProto:
    """The QDQ ONNX model of quantized ``graph`` (``q.*`` ops; see the module doc); ``expose`` names
    uint8 values of ``graph`` to add as extra graph outputs."""
    from cimc.onnx_io.exporter import export_model

    return export_model(to_qdq_graph(graph, expose=expose), opset=opset)


def to_qdq_graph(graph: Graph, *, expose: Iterable[str] = ()) -> Graph:
    """``graph`` with every ``q.*`` op written as ONNX QDQ ops (a new graph; see the module doc)."""
    bad: dict[str, list[str]] = {}
    for n in graph.nodes:
        if "." in n.op and n.op not in _EXPORTABLE:
            bad.setdefault(n.op, []).append(n.name)
    if bad:
        what = "; ".join(f"{op} (nodes {', '.join(map(repr, names[:3]))})" for op, names in bad.items())
        raise UnsupportedOpError(f"cannot export graph {graph.name!r} as QDQ ONNX: {what} are target ops with no "
                                 "ONNX form; export the graph after 'quantize' and before target lowering")
    return _Writer(graph).build(list(expose))


class _Writer:
    def __init__(self, src: Graph) -> None:
        self.src, self.g = src, Graph(src.name)
        self.g.metadata = dict(src.metadata)
        self.env: dict[int, Value] = {}
        self.accs: set[int] = set()  # ids of source accumulators (exported as their float value)

    # ---- helpers ------------------------------------------------------------------------------
    def const(self, array: np.ndarray, name: str) -> Value:
        return self.g.add_constant(np.asarray(array), name)

    def val(self, v: Value | None, where: Node) -> Value | None:
        if v is None:
            return None
        if id(v) not in self.env:
            if v.const is None:
                raise CimcError(f"node {where.name!r} ({where.op}) reads {v.name!r}, which nothing defines")
            self.env[id(v)] = self.g.add_constant(v.const, v.name, v.type)
        if id(v) in self.accs and not where.op.startswith("q."):
            raise CimcError(f"node {where.name!r} ({where.op}) reads the int32 accumulator {v.name!r} directly; "
                            "a QDQ export needs it requantized or dequantized first")
        return self.env[id(v)]

    def op(self, op: str, ins: list[Value | None], attrs: Mapping, name: str, out: TensorType, out_name: str) -> Value:
        return self.g.add_node(op, ins, dict(attrs), outputs=[out], output_names=[out_name], name=name).outputs[0]

    def dq(self, q: Value, p: QuantParams, name: str, axis: int | None = None) -> Value:
        """``DequantizeLinear`` of integer ``q`` with parameters ``p`` (per tensor or along ``axis``)."""
        zdt = q.type.dtype.numpy
        if len(p.scale) == 1:
            s, z, attrs = np.float32(p.scale[0]), zdt.type(p.zero_point[0]), {}
        else:
            s, z = np.asarray(p.scale, np.float32), np.asarray(p.zero_point, zdt)
            attrs = {"axis": p.axis if axis is None else axis}
        return self.op("DequantizeLinear", [q, self.const(s, f"{name}_scale"), self.const(z, f"{name}_zero_point")],
                       attrs, name, TensorType(DType.f32, q.type.shape), f"{name}_out")

    def quant(self, x: Value, scale: float, zp: int, bits: int, lo: int | None, hi: int | None,
              name: str, out_name: str) -> Value:
        """``QuantizeLinear`` to uint8, then an integer ``Clip`` when the range is narrower than uint8."""
        p = QuantParams((float(scale),), (int(zp),), bits)
        qmax = (1 << bits) - 1
        lo, hi = 0 if lo is None else lo, qmax if hi is None else hi
        clip = lo > 0 or hi < 255
        q = self.op("QuantizeLinear", [x, self.const(np.float32(scale), f"{name}_scale"),
                                       self.const(np.uint8(zp), f"{name}_zero_point")], {}, name,
                    TensorType(DType.u8, x.type.shape, p), f"{out_name}_unclipped" if clip else out_name)
        if clip:
            q = self.op("Clip", [q, self.const(np.uint8(lo), f"{name}_lo"), self.const(np.uint8(hi), f"{name}_hi")],
                        {}, f"{name}_clip", TensorType(DType.u8, x.type.shape, p), out_name)
        return q

    # ---- rules -------------------------------------------------------------------------------
    def mvm(self, n: Node) -> Value:
        x, w = n.inputs[0], n.inputs[1]
        b = n.inputs[2] if len(n.inputs) > 2 else None
        px, pw = x.type.quant, w.type.quant
        if px is None or pw is None or w.const is None:
            raise CimcError(f"node {n.name!r} ({n.op}): the input and a constant weight need quantization "
                            f"parameters in their types (found {px} and {pw}); run the 'quantize' pass")
        wq, zx, sx = np.asarray(w.const, np.int64), int(n.attrs["x_zero_point"]), float(px.scale[0])
        axis = {"q.conv": 0, "q.conv_transpose": 1, "q.gemm": 0, "q.matmul": 1}[n.op]
        convt = n.op == "q.conv_transpose"
        if convt and len(pw.scale) > 1 and n.attrs.get("group", 1) > 1:
            raise UnsupportedOpError(
                f"node {n.name!r} (q.conv_transpose): per-channel weights with group={n.attrs['group']} have no "
                f"QDQ form ({len(pw.scale)} scales, but DequantizeLinear on axis 1 of w {wq.shape} takes "
                f"{wq.shape[1]}); quantize with per-tensor weights or export the float graph")
        cout = wq.shape[1] * n.attrs.get("group", 1) if convt else wq.shape[axis]
        sw = np.broadcast_to(np.asarray(pw.scale, np.float64), (cout,))
        xf = self.dq(self.env[id(x)], px, f"{n.name}_x_dequantize")
        wf = self.dq(self.val(w, n), pw, f"{n.name}_w_dequantize", axis)
        bias = np.zeros(sw.size, np.int64) if convt else zx * wq.sum(axis=tuple(i for i in range(wq.ndim) if i != axis))
        if b is not None:
            bias = bias + np.asarray(b.const, np.int64)
        if np.abs(bias).max(initial=0) >= 2**31:
            raise CimcError(f"node {n.name!r} ({n.op}): the exported int32 bias (cimc's plus x_zero_point * sum(w)) "
                            "overflows int32")
        bf = None
        if b is not None or (zx and not convt):
            bv = self.const(bias.astype(np.int32), f"{w.name}_bias_qdq")
            bf = self.dq(bv, QuantParams(tuple(float(np.float32(sx * s)) for s in sw), (0,) * sw.size, 32, 0),
                         f"{n.name}_bias_dequantize", 0)
        acc = n.outputs[0]
        out_t = TensorType(DType.f32, acc.type.shape)
        if n.op in ("q.conv", "q.conv_transpose"):
            attrs = {k: v for k, v in n.attrs.items() if k != "x_zero_point"}
            return self.op(_MVM[n.op], [xf, wf, bf], attrs, n.name, out_t, acc.name)
        if n.op == "q.gemm":
            return self.op("Gemm", [xf, wf, bf], {"transB": 1}, n.name, out_t, acc.name)
        if bf is None:
            return self.op("MatMul", [xf, wf], {}, n.name, out_t, acc.name)
        y = self.op("MatMul", [xf, wf], {}, n.name, out_t, f"{acc.name}_nobias")
        return self.op("Add", [y, bf], {}, f"{n.name}_bias", out_t, acc.name)

    def node(self, n: Node) -> None:
        a, out = n.attrs, n.outputs[0] if n.outputs else None
        if n.op in _MVM:
            self.env[id(out)] = self.mvm(n)
            self.accs.add(id(out))
        elif n.op == "q.quantize":
            self.env[id(out)] = self.quant(self.val(n.inputs[0], n), a["scale"], a.get("zero_point", 0),
                                           a.get("bits", 8), None, None, n.name, out.name)
        elif n.op == "q.requant":
            p = out.type.quant
            if p is None:
                raise CimcError(f"node {n.name!r} (q.requant): its result type has no quantization parameters")
            self.env[id(out)] = self.quant(self.val(n.inputs[0], n), p.scale[0], a.get("zero_point", 0),
                                           a.get("bits", 8), a.get("lo"), a.get("hi"), n.name, out.name)
        elif n.op == "q.dequantize":
            src = n.inputs[0]
            if id(src) in self.accs:  # the float op's result already is the real value
                self.env[id(out)] = self.env[id(src)]
            else:
                scale, zp = tuple(a["scale"]), tuple(a.get("zero_point", (0,)))
                p = QuantParams(scale, zp * len(scale) if len(zp) == 1 else zp, 8, a.get("axis", 1))
                self.env[id(out)] = self.dq(self.val(src, n), p, n.name)
                self.g.rename_value(self.env[id(out)], out.name)
        elif n.op == "q.add":
            fa, fb = (self.dq(self.val(v, n), v.type.quant or QuantParams((1.0,), (a[f"{s}_zero_point"],), 8),
                              f"{n.name}_{s}_dequantize") for v, s in zip(n.inputs, "ab", strict=True))
            p = out.type.quant
            if p is None or any(v.type.quant is None for v in n.inputs):
                raise CimcError(f"node {n.name!r} (q.add): operand and result types need quantization parameters")
            y = self.op("Add", [fa, fb], {}, n.name, TensorType(DType.f32, out.type.shape), f"{out.name}_float")
            self.env[id(out)] = self.quant(y, p.scale[0], a.get("zero_point", 0), a.get("bits", 8),
                                           a.get("lo"), a.get("hi"), f"{n.name}_quantize", out.name)
        else:
            m = self.g.add_node(n.op, [self.val(v, n) for v in n.inputs], dict(n.attrs),
                                outputs=[v.type for v in n.outputs], output_names=[v.name for v in n.outputs],
                                name=n.name)
            self.env.update(zip(map(id, n.outputs), m.outputs, strict=True))

    def build(self, expose: list[str]) -> Graph:
        for v in self.src.inputs:
            self.env[id(v)] = self.g.add_input(v.name, v.type)
        for n in self.src.nodes:
            self.node(n)
        by_name = {v.name: v for v in self.src.values()}
        for name in expose:
            v = by_name.get(name)
            if v is None or id(v) not in self.env or v.type.dtype is not DType.u8:
                raise CimcError(f"cannot expose {name!r}: it is not a uint8 activation of graph {self.src.name!r}")
        pairs = [(v.name, self.env[id(v)]) for v in [*self.src.outputs, *(by_name[x] for x in expose)]]
        if any(id(v) in self.accs for v in self.src.outputs):
            raise CimcError(f"graph {self.src.name!r} has an int32 accumulator as an output; dequantize it first")
        outs: dict[str, Value] = {}
        for name, new in pairs:
            if name in outs:
                continue
            if any(o is new for o in outs.values()):  # one value under two output names
                new = self.op("Identity", [new], {}, f"{name}_identity", new.type, name)
            if new.name != name:  # the source's names are the public contract
                holder = next((x for x in self.g.values() if x.name == name), None)
                if holder is not None:
                    self.g.rename_value(holder, f"{name}_")
                self.g.rename_value(new, name)
            outs[name] = new
        self.g.outputs = list(outs.values())
        return self.g


def qdq_agreement(graph: Graph, inputs: Mapping[str, np.ndarray], values: Iterable[str] | None = None
                  ) -> dict[str, tuple[float, int]]:
    """Integer-domain agreement of onnxruntime running :func:`export_qdq` of ``graph`` with cimc's
    interpreter: ``{value name: (fraction of elements equal, max |difference| in LSB)}`` for each
    uint8 activation in ``values`` (default: all of them)."""
    from cimc.interpreter import run
    from cimc.onnx_io.runtime import run_onnxruntime

    names = [v.name for n in graph.nodes for v in n.outputs if v.type.dtype is DType.u8] if values is None \
        else list(values)
    g = graph.copy()
    by_name = {v.name: v for v in g.values()}
    g.outputs = g.outputs + [by_name[x] for x in names if not any(o.name == x for o in g.outputs)]
    ref = run(g, inputs)
    got = run_onnxruntime(export_qdq(graph, expose=names), inputs)
    out = {}
    for x in names:
        d = np.abs(ref[x].astype(np.int64) - got[x].astype(np.int64))
        out[x] = (float((d == 0).mean()) if d.size else 1.0, int(d.max(initial=0)))
    return out


# ---- import ---------------------------------------------------------------------------------------
def import_qdq(model: onnx.ModelProto | Graph, *, requant: str = "float") -> Graph:
    """A QDQ ONNX model (e.g. from onnxruntime's ``quantize_static``) as a ``q.*`` graph that keeps
    the model's own scales and zero points (see :func:`adopt_qdq`)."""
    from cimc.onnx_io.importer import import_model

    return adopt_qdq(model if isinstance(model, Graph) else import_model(model), requant=requant)


def adopt_qdq(graph: Graph, *, requant: str = "float") -> Graph:
    """``graph`` (ONNX ``QuantizeLinear``/``DequantizeLinear`` ops, as imported) rewritten into ``q.*``
    ops with its own quantization parameters, as a new graph.

    ``QuantizeLinear`` of a float value is ``q.quantize``; ``Conv``/``Gemm``/``MatMul`` reading
    ``DequantizeLinear`` of an 8-bit activation and of a constant symmetric int8 weight are
    ``q.conv``/``q.gemm``/``q.matmul`` (bias ``round(b * sb / (sx*sw)) - zx * sum(w)``, exactly
    the stored int32 when ``sb = sx*sw`` as quantizers write it); a ``QuantizeLinear`` of that
    accumulator (through a Relu/Clip with constant bounds, its clamp) is ``q.requant``; ``Add`` of
    two dequantized activations read by a ``QuantizeLinear`` is ``q.add``; moves run on uint8. Int8
    activations become uint8 by adding 128 to values and zero points (``s * (q - z)`` is unchanged
    and the int8 saturation range maps onto uint8's). The requant multipliers are computed as
    onnxruntime's kernels do (float32 ``sx * sw / sy``), so ``requant="float"`` matches them.
    Everything else runs in float on ``q.dequantize`` results.
    """
    if requant not in ("fixed", "float"):
        raise CimcError(f"requant={requant!r}; expected 'fixed' or 'float'")
    return _Adopter(graph, requant).build()


def _qparams(n: Node) -> tuple[np.ndarray, np.ndarray, int | None] | None:
    """``(scale, zero point, axis)`` of a Q/DQ node with constant parameters (non-blocked), else None."""
    if len(n.inputs) < 2 or n.inputs[1].const is None or n.attrs.get("block_size", 0):
        return None
    s = np.asarray(n.inputs[1].const, np.float32)
    zv = n.inputs[2] if len(n.inputs) > 2 else None
    if zv is not None and zv.const is None:
        return None
    z = np.zeros(s.shape, np.int64) if zv is None else np.asarray(zv.const, np.int64)
    return s.reshape(-1), np.broadcast_to(z.reshape(-1), s.reshape(-1).shape), (
        None if s.size == 1 and s.ndim <= 1 else n.attrs.get("axis", 1))


class _Adopter:
    def __init__(self, src: Graph, mode: str) -> None:
        from cimc.quant.lower import MOVES

        self.src, self.mode, self.moves = src, mode, MOVES
        self.g = Graph(src.name)
        self.g.metadata = {**src.metadata, "quant.requant": mode, "quant.source": "qdq"}
        self.f: dict[int, Value] = {}  # float form
        self.q: dict[int, Value] = {}  # uint8 form
        self.acc: dict[int, tuple[Value, tuple[float, float] | None]] = {}  # accumulator (+ pending clamp)
        self.wdq: dict[int, Node] = {}  # DequantizeLinear outputs of constants

    # ---- forms ---------------------------------------------------------------------------------
    def as_float(self, v: Value) -> Value:
        if id(v) in self.f:
            return self.f[id(v)]
        if v.const is not None:
            self.f[id(v)] = self.g.add_constant(v.const, v.name, v.type)
        elif id(v) in self.wdq:  # a dequantized constant: fold it
            n = self.wdq[id(v)]
            s, z, axis = _qparams(n)
            c = n.inputs[0].const
            shape = [-1 if axis is not None and i == axis % c.ndim else 1 for i in range(c.ndim)]
            arr = ((c.astype(np.int64) - z.reshape(shape)).astype(np.float32) * s.reshape(shape)) if c.ndim else \
                np.float32((int(c) - int(z[0])) * s[0])
            self.f[id(v)] = self.g.add_constant(np.asarray(arr, np.float32), v.name)
        elif id(v) in self.acc:
            acc, bounds = self.acc[id(v)]
            p = acc.type.quant
            y = self.node("q.dequantize", [acc], {"scale": p.scale, "zero_point": p.zero_point, "axis": p.axis or 0},
                          f"{v.name}_dequantize", None, v.name if bounds is None else f"{v.name}_unclamped")
            if bounds is not None:
                lo, hi = (self.g.add_constant(np.float32(b), f"{v.name}_{k}") for b, k in zip(bounds, ("lo", "hi"),
                                                                                              strict=True))
                y = self.node("Clip", [y, lo, hi], {}, f"{v.name}_clip", None, v.name)
            self.f[id(v)] = y
        else:
            q = self.q[id(v)]
            p = q.type.quant
            self.f[id(v)] = self.node("q.dequantize", [q], {"scale": p.scale, "zero_point": p.zero_point, "axis": 0},
                                      f"{v.name}_dequantize", None, v.name)
        return self.f[id(v)]

    def node(self, op: str, ins: list, attrs: dict, name: str, out: TensorType | None, out_name: str) -> Value:
        return self.g.add_node(op, ins, attrs, outputs=None if out is None else [out], output_names=[out_name],
                               name=name).outputs[0]

    def quant_of(self, n: Node, v: Value) -> Value | None:
        """The uint8 form of the activation a DequantizeLinear ``n`` reads, if the parameters agree."""
        pr = _qparams(n)
        q = self.q.get(id(v))
        if pr is None or q is None or pr[2] is not None:
            return None
        s, z, _ = pr
        shift = 128 if v.type.dtype is DType.i8 else 0
        p = q.type.quant
        return q if (p.scale[0] == float(s[0]) and p.zero_point[0] == int(z[0]) + shift) else None

    def operand(self, v: Value | None) -> Value | None:
        """The uint8 activation behind ``v`` when ``v`` is a DequantizeLinear of one."""
        n = None if v is None else v.producer
        return None if n is None or n.op != "DequantizeLinear" else self.quant_of(n, n.inputs[0])

    # ---- rules -----------------------------------------------------------------------------------
    def dequantize_linear(self, n: Node) -> bool:
        x, out = n.inputs[0], n.outputs[0]
        if x.const is not None and _qparams(n) is not None:
            self.wdq[id(out)] = n
            return True
        q, pr = self.quant_of(n, x), _qparams(n)
        if q is not None:
            self.q[id(out)] = q
        elif id(x) in self.q and pr is not None and pr[2] is None:  # parameters other than the Q's
            zp = int(pr[1][0]) + (128 if x.type.dtype is DType.i8 else 0)
            self.f[id(out)] = self.node("q.dequantize", [self.q[id(x)]], {"scale": (float(pr[0][0]),),
                                        "zero_point": (zp,), "axis": 0}, n.name, None, out.name)
        else:
            return False
        return True

    def quantize_linear(self, n: Node) -> bool:
        x, out = n.inputs[0], n.outputs[0]
        pr = _qparams(n)
        if pr is None or pr[2] is not None or out.type.dtype not in (DType.u8, DType.i8):
            return False
        s, z, _ = pr
        shift = 128 if out.type.dtype is DType.i8 else 0
        scale, zp = float(s[0]), int(z[0]) + shift
        if not scale > 0:
            return False
        qp = QuantParams((scale,), (zp,), 8)
        t = TensorType(DType.u8, out.type.shape, qp)
        if id(x) in self.q and self.q[id(x)].type.quant == qp:
            self.q[id(out)] = self.q[id(x)]
        elif id(x) in self.acc:
            acc, bounds = self.acc[id(x)]
            ms = tuple(float(np.float32(np.float32(m) / np.float32(scale))) for m in self.mults[id(acc)])
            attrs = {"mode": self.mode, "scale": ms, "axis": acc.type.quant.axis or 0, "zero_point": zp, "bits": 8}
            for key, b in zip(("lo", "hi"), bounds or (), strict=False):
                if np.isfinite(b):
                    qb = int(np.clip(np.rint(np.float32(b) / np.float32(scale)) + zp, 0, 255))
                    if (key == "lo" and qb > 0) or (key == "hi" and qb < 255):
                        attrs[key] = qb
            if self.mode == "fixed":
                from cimc.quant.fixedpoint import quantize_multipliers

                attrs["multiplier"], attrs["shift"] = quantize_multipliers(ms)
            self.q[id(out)] = self.node("q.requant", [acc], attrs, n.name, t, f"{out.name}_u8")
        else:
            self.q[id(out)] = self.node("q.quantize", [self.as_float(x)], {"scale": scale, "zero_point": zp, "bits": 8},
                                        n.name, t, f"{out.name}_u8")
        return True

    def mvm(self, n: Node) -> bool:
        ins = list(n.inputs) + [None] * (3 - len(n.inputs))
        xq, wn = self.operand(ins[0]), ins[1].producer if ins[1] is not None else None
        if xq is None or wn is None or id(ins[1]) not in self.wdq:
            return False
        w, (sw, zw, axis) = wn.inputs[0].const, _qparams(wn)
        if w.dtype != np.int8 or np.any(zw != 0):
            return False
        w = w.astype(np.int8)
        if n.op == "Gemm":
            a = n.attrs
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or w.ndim != 2:
                return False
            if not a.get("transB", 0):
                w, axis = w.T, None if axis is None else 1 - axis % 2
        elif n.op == "MatMul" and (w.ndim != 2 or (ins[0].type.rank or 0) < 2):
            return False
        ch = 1 if n.op == "MatMul" else 0
        if axis is not None and axis % w.ndim != ch:
            return False
        cout = w.shape[ch]
        sw = np.broadcast_to(sw, (cout,)) if axis is not None else sw
        sx, zx = np.float32(xq.type.quant.scale[0]), int(xq.type.quant.zero_point[0])
        bias = -zx * w.astype(np.int64).sum(axis=tuple(i for i in range(w.ndim) if i != ch))
        b = ins[2]
        if b is not None:
            if id(b) not in self.wdq:
                return False
            bn = self.wdq[id(b)]
            sb, zb, _ = _qparams(bn)
            bq = np.asarray(bn.inputs[0].const, np.int64).reshape(-1) - zb
            sxw = (sx * np.asarray(sw, np.float32)).astype(np.float32)
            if bq.size != cout and bq.size != 1:
                return False
            if np.array_equal(np.broadcast_to(sb, sxw.shape), sxw):
                bias = bias + bq
            else:
                bias = bias + np.rint(bq * sb.astype(np.float64) / sxw.astype(np.float64)).astype(np.int64)
        if np.abs(bias).max(initial=0) >= 2**31:
            return False
        ax = None if sw.size == 1 else ch
        wv = self.g.add_constant(w, wn.inputs[0].name, TensorType(DType.i8, w.shape, QuantParams(
            tuple(map(float, sw)), (0,) * sw.size, 8, ax)))
        acc_scale = tuple(float(sx) * float(s) for s in sw)
        bv = self.g.add_constant(bias.astype(np.int32), f"{wn.inputs[0].name}_bias", TensorType(
            DType.i32, (cout,), QuantParams(acc_scale if sw.size > 1 else (acc_scale[0],) * cout, (0,) * cout, 32, 0)))
        op = {"Conv": "q.conv", "Gemm": "q.gemm", "MatMul": "q.matmul"}[n.op]
        attrs = (dict(n.attrs) if n.op == "Conv" else {}) | {"x_zero_point": zx}
        out = n.outputs[0]
        acc = self.node(op, [xq, wv, bv], attrs, n.name, None, f"{out.name}_acc")
        self.mults[id(acc)] = tuple(float(np.float32(sx * np.float32(s))) for s in sw)
        self.acc[id(out)] = (acc, None)
        return True

    def activation(self, n: Node) -> bool:
        x = n.inputs[0]
        if id(x) not in self.acc or self.acc[id(x)][1] is not None:
            return False
        if n.op == "Relu":
            bounds = (0.0, np.inf)
        elif any(v is not None and v.const is None for v in n.inputs[1:]):
            return False
        else:
            ins = list(n.inputs) + [None] * (3 - len(n.inputs))
            bounds = tuple(d if v is None else float(np.asarray(v.const).reshape(-1)[0])
                           for v, d in zip(ins[1:], (-np.inf, np.inf), strict=True))
        self.acc[id(n.outputs[0])] = (self.acc[id(x)][0], bounds)
        return True

    def add(self, n: Node) -> bool:
        out = n.outputs[0]
        a, b = (self.operand(v) for v in n.inputs[:2]) if len(n.inputs) == 2 else (None, None)
        users = out.users
        if a is None or b is None or len(users) != 1 or users[0].op != "QuantizeLinear" or self.src.is_output(out):
            return False
        qn = users[0]
        pr = _qparams(qn)
        if pr is None or pr[2] is not None or qn.outputs[0].type.dtype not in (DType.u8, DType.i8):
            return False
        s, z, _ = pr
        scale, zp = np.float32(s[0]), int(z[0]) + (128 if qn.outputs[0].type.dtype is DType.i8 else 0)
        ma, mb = (float(np.float32(np.float32(v.type.quant.scale[0]) / scale)) for v in (a, b))
        attrs = {"mode": self.mode, "a_scale": ma, "b_scale": mb, "a_zero_point": a.type.quant.zero_point[0],
                 "b_zero_point": b.type.quant.zero_point[0], "zero_point": zp, "bits": 8}
        if self.mode == "fixed":
            from cimc.quant.fixedpoint import shared_multipliers

            attrs["a_multiplier"], attrs["b_multiplier"], attrs["shift"] = shared_multipliers(ma, mb)
        t = TensorType(DType.u8, out.type.shape, QuantParams((float(scale),), (zp,), 8))
        self.q[id(qn.outputs[0])] = self.node("q.add", [a, b], attrs, n.name, t, f"{qn.outputs[0].name}_u8")
        self.done.add(id(qn))
        return True

    def move(self, n: Node) -> bool:
        if n.op not in self.moves or len(n.outputs) != 1:
            return False
        data = n.inputs if n.op == "Concat" else n.inputs[:1]
        qs = [self.operand(v) if id(v) not in self.q else self.q[id(v)] for v in data]
        if any(q is None for q in qs) or len({q.type.quant for q in qs}) != 1:
            return False
        ins = [qs[data.index(v)] if v in data else None if v is None else self.as_float(v) for v in n.inputs]
        out = n.outputs[0]
        self.q[id(out)] = self.node(n.op, ins, dict(n.attrs), n.name,
                                    TensorType(DType.u8, out.type.shape, qs[0].type.quant), f"{out.name}_u8")
        return True

    def copy(self, n: Node) -> None:
        m = self.g.add_node(n.op, [None if v is None else self.as_float(v) for v in n.inputs], dict(n.attrs),
                            outputs=[v.type for v in n.outputs], output_names=[v.name for v in n.outputs],
                            name=n.name)
        self.f.update(zip(map(id, n.outputs), m.outputs, strict=True))

    def build(self) -> Graph:
        self.mults: dict[int, tuple[float, ...]] = {}
        self.done: set[int] = set()
        for v in self.src.inputs:
            self.f[id(v)] = self.g.add_input(v.name, v.type)
        for n in self.src.nodes:
            if id(n) in self.done:
                continue
            ok = {"DequantizeLinear": self.dequantize_linear, "QuantizeLinear": self.quantize_linear,
                  "Conv": self.mvm, "Gemm": self.mvm, "MatMul": self.mvm, "Relu": self.activation,
                  "Clip": self.activation, "Add": self.add}.get(n.op, self.move)(n)
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
        return self.g
