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
- ``q.requant`` -> ``QuantizeLinear`` of the float accumulator; ``q.add``/``q.mul`` ->
  ``DequantizeLinear`` both, ``Add``/``Mul``, ``QuantizeLinear``; ``q.avg_pool``/``q.softmax`` ->
  ``DequantizeLinear``, ``AveragePool``/``Softmax``, ``QuantizeLinear`` (onnxruntime fuses each of
  these back into the ``QLinear*`` kernel whose arithmetic the ``q.*`` op has); ``q.lut`` -> ``Gather``
  of its table at the codes (``Cast`` to int32), exactly the lookup.
A result narrower than 8 bits, or with a ``lo``/``hi`` clamp, gets an integer ``Clip`` on the
uint8 tensor after its ``QuantizeLinear`` (exactly ``clip(v + zp, lo, hi)``, and it leaves the
Q -> DQ pairs of the neighbouring layers intact for fusion). Float and uint8 ops are copied.

``expose`` adds named uint8 activations of the source graph as extra (uint8) graph outputs, so a
run can be compared with cimc's interpreter in the integer domain (:func:`qdq_agreement`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import overload

import numpy as np
import onnx

from cimc.errors import CimcError, UnsupportedOpError
from cimc.ir.core import Graph, Node, Value
from cimc.ir.types import DType, QuantParams, TensorType

__all__ = ["adopt_qdq", "export_qdq", "import_qdq", "qdq_agreement", "source_agreement", "to_qdq_graph"]

logger = logging.getLogger(__name__)

_MVM = {"q.conv": "Conv", "q.conv_transpose": "ConvTranspose", "q.gemm": "Gemm", "q.matmul": "MatMul"}


_EXPORTABLE = frozenset(f"q.{op}" for op in ("quantize", "dequantize", "conv", "conv_transpose", "gemm", "matmul",
                                             "act_matmul", "requant", "add", "mul", "avg_pool", "softmax", "lut"))
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
    def const(self, array: np.ndarray | np.generic, name: str) -> Value:
        return self.g.add_constant(np.asarray(array), name)

    @overload
    def val(self, v: Value, where: Node) -> Value: ...
    @overload
    def val(self, v: Value | None, where: Node) -> Value | None: ...
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

    def op(self, op: str, ins: Sequence[Value | None], attrs: Mapping, name: str, out: TensorType,
           out_name: str) -> Value:
        return self.g.add_node(op, ins, dict(attrs), outputs=[out], output_names=[out_name], name=name).outputs[0]

    def dq(self, q: Value, p: QuantParams, name: str, axis: int | None = None) -> Value:
        """``DequantizeLinear`` of integer ``q`` with parameters ``p`` (per tensor or along ``axis``)."""
        zdt = q.type.dtype.numpy
        s: np.ndarray | np.generic
        z: np.ndarray | np.generic
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
        x, w = n.operand(0), n.operand(1)
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
            bias = bias + np.asarray(b.array, np.int64)
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
        if out is None:
            self.copy(n)
        elif n.op in _MVM:
            self.env[id(out)] = self.mvm(n)
            self.accs.add(id(out))
        elif n.op == "q.act_matmul":  # two activations: MatMul of both dequantized, the accumulator's real value
            ab = (n.operand(0), n.operand(1))
            if any(v.type.quant is None for v in ab):
                raise CimcError(f"node {n.name!r} (q.act_matmul): its operand types need quantization parameters")
            fa, fb = (self.dq(self.val(v, n), v.type.qparams, f"{n.name}_{s}_dequantize")
                      for v, s in zip(ab, "ab", strict=True))
            self.env[id(out)] = self.op("MatMul", [fa, fb], {}, n.name, TensorType(DType.f32, out.type.shape),
                                        out.name)
            self.accs.add(id(out))
        elif n.op == "q.quantize":
            self.env[id(out)] = self.quant(self.val(n.operand(0), n), a["scale"], a.get("zero_point", 0),
                                           a.get("bits", 8), None, None, n.name, out.name)
        elif n.op == "q.requant":
            p = out.type.quant
            if p is None:
                raise CimcError(f"node {n.name!r} (q.requant): its result type has no quantization parameters")
            self.env[id(out)] = self.quant(self.val(n.operand(0), n), p.scale[0], a.get("zero_point", 0),
                                           a.get("bits", 8), a.get("lo"), a.get("hi"), n.name, out.name)
        elif n.op == "q.dequantize":
            src = n.operand(0)
            if id(src) in self.accs:  # the float op's result already is the real value
                self.env[id(out)] = self.env[id(src)]
            else:
                scale, zp = tuple(a["scale"]), tuple(a.get("zero_point", (0,)))
                p = QuantParams(scale, zp * len(scale) if len(zp) == 1 else zp, 8, a.get("axis", 1))
                self.env[id(out)] = self.dq(self.val(src, n), p, n.name)
                self.g.rename_value(self.env[id(out)], out.name)
        elif n.op in ("q.mul", "q.avg_pool", "q.softmax"):
            self.env[id(out)] = self.float_between(n)
        elif n.op == "q.lut":
            idx = self.op("Cast", [self.val(n.operand(0), n)], {"to": 6}, f"{n.name}_index",
                          TensorType(DType.i32, out.type.shape), f"{out.name}_index")
            table = self.const(np.asarray(a["table"], np.uint8), f"{n.name}_table")
            self.env[id(out)] = self.op("Gather", [table, idx], {"axis": 0}, n.name, out.type, out.name)
        elif n.op == "q.add":
            ab = (n.operand(0), n.operand(1))
            fa, fb = (self.dq(self.val(v, n), v.type.quant or QuantParams((1.0,), (a[f"{s}_zero_point"],), 8),
                              f"{n.name}_{s}_dequantize") for v, s in zip(ab, "ab", strict=True))
            p = out.type.quant
            if p is None or any(v.type.quant is None for v in ab):
                raise CimcError(f"node {n.name!r} (q.add): operand and result types need quantization parameters")
            y = self.op("Add", [fa, fb], {}, n.name, TensorType(DType.f32, out.type.shape), f"{out.name}_float")
            self.env[id(out)] = self.quant(y, p.scale[0], a.get("zero_point", 0), a.get("bits", 8),
                                           a.get("lo"), a.get("hi"), f"{n.name}_quantize", out.name)
        else:
            self.copy(n)

    def copy(self, n: Node) -> None:
        """``n`` as it is, on the exported values of its operands."""
        m = self.g.add_node(n.op, [self.val(v, n) for v in n.inputs], dict(n.attrs),
                            outputs=[v.type for v in n.outputs], output_names=[v.name for v in n.outputs],
                            name=n.name)
        self.env.update(zip(map(id, n.outputs), m.outputs, strict=True))

    def float_between(self, n: Node) -> Value:
        """``q.mul``/``q.avg_pool``/``q.softmax``: its float op on dequantized operands, quantized."""
        a, out, p = n.attrs, n.outputs[0], n.outputs[0].type.quant
        ins = [n.operand(k) for k in range(len(n.inputs))]
        if p is None or any(v.type.quant is None for v in ins):
            raise CimcError(f"node {n.name!r} ({n.op}): operand and result types need quantization parameters")
        fs = [self.dq(self.val(v, n), v.type.qparams, f"{n.name}_{i}_dequantize") for i, v in enumerate(ins)]
        ft = TensorType(DType.f32, out.type.shape)
        if n.op == "q.mul":
            y = self.op("Mul", fs, {}, n.name, ft, f"{out.name}_float")
        elif n.op == "q.avg_pool":
            keep = ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides")
            y = self.op("AveragePool", fs, {k: a[k] for k in keep if a.get(k) is not None}, n.name, ft,
                        f"{out.name}_float")
        elif a.get("flatten", 0):  # softmax over all dims from axis: the meaning before opset 13
            flat = self.op("Flatten", fs, {"axis": a["axis"]}, f"{n.name}_flatten", TensorType(DType.f32, None),
                           f"{out.name}_flat")
            sm = self.op("Softmax", [flat], {"axis": -1}, n.name, TensorType(DType.f32, None), f"{out.name}_float2d")
            shape = self.op("Shape", [self.val(n.operand(0), n)], {}, f"{n.name}_shape", TensorType(DType.i64, None),
                            f"{out.name}_shape")
            y = self.op("Reshape", [sm, shape], {}, f"{n.name}_reshape", ft, f"{out.name}_float")
        else:
            y = self.op("Softmax", fs, {"axis": a.get("axis", -1)}, n.name, ft, f"{out.name}_float")
        return self.quant(y, p.scale[0], a.get("zero_point", 0), a.get("bits", 8), a.get("lo"), a.get("hi"),
                          f"{n.name}_quantize", out.name)

    def build(self, expose: list[str]) -> Graph:
        for v in self.src.inputs:
            self.env[id(v)] = self.g.add_input(v.name, v.type)
        for n in self.src.nodes:
            self.node(n)
        by_name = {v.name: v for v in self.src.values()}
        for name in expose:
            e = by_name.get(name)
            if e is None or id(e) not in self.env or e.type.dtype is not DType.u8:
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


def source_agreement(model: onnx.ModelProto, graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, object]:
    """Integer-domain agreement of onnxruntime running the pre-quantized ``model`` with ``graph``, a graph
    adopted from it (``graph.metadata["quant.onnx_values"]``, see :mod:`cimc.quant.prequant`), run by the
    interpreter: over every integer result of the model that ``graph`` holds, the fraction of equal
    elements and the largest difference in steps, overall (``equal``, ``max_lsb``, ``worst``: the value
    with the largest difference) and for the results the graph outputs dequantize (``outputs_equal``,
    ``outputs_max_lsb``)."""
    import json

    from cimc.interpreter import run
    from cimc.onnx_io.runtime import run_onnxruntime

    pairs = json.loads(graph.metadata.get("quant.onnx_values", "[]"))
    by_name = {v.name: v for v in graph.values()}
    pairs = [p for p in pairs if p[1] in by_name]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = {o.name for o in probe.graph.output}
    for name, _, code, _ in pairs:
        if name not in declared:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, code, None))
    got = run_onnxruntime(probe, inputs)
    g = graph.copy()
    copies = {v.name: v for v in g.values()}
    g.outputs = g.outputs + [copies[u] for _, u, _, _ in pairs if not any(o.name == u for o in g.outputs)]
    ref = run(g, inputs)
    feeds_output = {n.operand(0).name for n in graph.nodes if n.op == "q.dequantize" and graph.is_output(n.outputs[0])}
    stats = {"all": [0, 0, 0], "outputs": [0, 0, 0]}  # elements, equal, max lsb
    worst = ("", 0)
    for name, u, _, offset in pairs:
        d = np.abs(ref[u].astype(np.int64) - (np.asarray(got[name]).astype(np.int64) + offset))
        for key in ("all", "outputs") if u in feeds_output else ("all",):
            s = stats[key]
            s[0], s[1], s[2] = s[0] + d.size, s[1] + int((d == 0).sum()), max(s[2], int(d.max(initial=0)))
        if d.max(initial=0) > worst[1]:
            worst = (name, int(d.max()))
    a, o = stats["all"], stats["outputs"]
    return {"values": len(pairs), "elements": a[0], "equal": a[1] / a[0] if a[0] else 1.0, "max_lsb": a[2],
            "worst": worst[0] or None, "outputs_equal": o[1] / o[0] if o[0] else 1.0, "outputs_max_lsb": o[2]}


# ---- import ---------------------------------------------------------------------------------------
def import_qdq(model: onnx.ModelProto | Graph, *, requant: str = "float") -> Graph:
    """A pre-quantized ONNX model (QDQ, e.g. from onnxruntime's ``quantize_static``, or QOperator) as a
    ``q.*`` graph that keeps the model's own scales and zero points (see :func:`adopt_qdq`)."""
    from cimc.onnx_io.importer import import_model

    return adopt_qdq(model if isinstance(model, Graph) else import_model(model), requant=requant)


def adopt_qdq(graph: Graph, *, requant: str = "float") -> Graph:
    """``graph`` (QDQ or QOperator ONNX ops, as imported) rewritten into ``q.*`` ops with its own
    quantization parameters, as a new graph: :func:`cimc.quant.prequant.adopt_quantized`."""
    from cimc.quant.prequant import adopt_quantized

    return adopt_quantized(graph, requant=requant)
