"""QOperator ops written as QDQ: each quantized operator becomes ``DequantizeLinear`` of its integer
operands, the float op, and ``QuantizeLinear`` of the result with the operator's own parameters.

This is how the ONNX spec defines those operators, and the form onnxruntime fuses back into them,
so :mod:`cimc.quant.prequant` adopts QOperator and QDQ models by one set of rules. Per op
(scales ``s``, zero points ``z``, ``DQ``/``Q`` the two linear ops):

- ``QLinearConv(x, sx, zx, w, sw, zw, sy, zy, B)`` -> ``Q(Conv(DQ(x), DQ(w, axis 0), DQ(B, sx*sw)), sy, zy)``;
  the bias scale is ``float32(sx * sw)``, which the kernel's int32 bias already is in;
- ``QLinearMatMul`` -> ``Q(MatMul(DQ(a), DQ(b, axis 1)))``; ``QGemm`` -> ``Gemm`` of the dequantized
  operands (``C`` at scale ``sa*sb``), quantized when it has ``y_scale``, else its float result;
- ``QLinearAdd``/``QLinearMul`` -> ``Q(Add|Mul(DQ(a), DQ(b)))``; ``QLinearAveragePool``,
  ``QLinearGlobalAveragePool``, ``QLinearSigmoid``, ``QLinearLeakyRelu``, ``QLinearSoftmax`` ->
  ``Q(op(DQ(x)))`` with the op's attributes (``QLinearSoftmax`` before opset 13 with a
  non-last axis: ``Flatten`` + ``Softmax`` + ``Reshape``); ``QLinearConcat`` -> ``Q(Concat(DQ(x_i)))``.
Other nodes (``ConvInteger``, ``MatMulInteger``, ``DynamicQuantizeLinear`` included) are copied.

Pre: the graph verifies. Post: a new graph with the same inputs, outputs (names and types) and
meaning up to onnxruntime's rounding, whose only quantized ops are Q/DQ and the copied ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cimc.ir.core import Graph, Node, Value
from cimc.ir.types import TensorType
from cimc.ops.qoperator import MS_OPS

__all__ = ["QOPERATOR_OPS", "to_qdq"]

QOPERATOR_OPS = frozenset({"QLinearConv", "QLinearMatMul", *MS_OPS})
"""The ops :func:`to_qdq` rewrites."""


def to_qdq(graph: Graph) -> Graph:
    """``graph`` with every op of :data:`QOPERATOR_OPS` written in QDQ form (a new graph)."""
    return _Expander(graph).build()


class _Expander:
    def __init__(self, src: Graph) -> None:
        self.src, self.g = src, Graph(src.name)
        self.g.metadata = dict(src.metadata)
        self.env: dict[int, Value] = {}

    def v(self, x: Value | None) -> Value | None:
        if x is None:
            return None
        if id(x) not in self.env:
            self.env[id(x)] = self.g.add_constant(x.const, x.name, x.type)
        return self.env[id(x)]

    def node(self, op: str, ins: Sequence[Value | None], attrs: dict, name: str, out_name: str | None = None,
             out: TensorType | None = None) -> Value:
        return self.g.add_node(op, list(ins), attrs, outputs=None if out is None else [out],
                               output_names=[out_name or name], name=name).outputs[0]

    def dq(self, x: Value, s: Value, z: Value | None, name: str, axis: int | None = None) -> Value:
        attrs = {} if axis is None or (s.const is not None and s.const.size == 1) else {"axis": axis}
        return self.node("DequantizeLinear", [self.v(x), self.v(s), self.v(z)], attrs, name)

    def q(self, y: Value, s: Value | None, z: Value | None, n: Node) -> None:
        out = n.outputs[0]
        self.env[id(out)] = self.node("QuantizeLinear", [y, self.v(s), self.v(z)], {}, f"{n.name}_quantize", out.name,
                                      out.type)

    def bias_scale(self, sx: Value, sw: Value, name: str) -> Value:
        s = (np.asarray(sx.const, np.float32).reshape(()) * np.asarray(sw.const, np.float32).reshape(-1))
        return self.g.add_constant(s.astype(np.float32).reshape(-1 if s.size > 1 else ()), name)

    def expand(self, n: Node) -> bool:
        i, a, name = n.inputs, dict(n.attrs), n.name

        def get(k: int) -> Value | None:
            return i[k] if k < len(i) else None

        req = n.operand  # an operand the op requires

        if n.op == "QLinearConv":
            w = self.dq(req(3), req(4), i[5], f"{name}_w_dequantize", 0)
            b = None
            if get(8) is not None:
                if req(1).const is None or req(4).const is None:
                    return False
                b = self.dq(req(8), self.bias_scale(req(1), req(4), f"{name}_bias_scale"), None,
                            f"{name}_b_dequantize", 0)
            x = self.dq(req(0), req(1), i[2], f"{name}_x_dequantize")
            y = self.node("Conv", [x, w, b], a, name, f"{name}_float")
            self.q(y, i[6], i[7], n)
        elif n.op == "QLinearMatMul":
            y = self.node("MatMul", [self.dq(req(0), req(1), i[2], f"{name}_a_dequantize"),
                                     self.dq(req(3), req(4), i[5], f"{name}_b_dequantize", 1)], {}, name,
                          f"{name}_float")
            self.q(y, i[6], i[7], n)
        elif n.op == "QGemm":
            c = None
            if get(6) is not None:
                if req(1).const is None or req(4).const is None:
                    return False
                c = self.dq(req(6), self.bias_scale(req(1), req(4), f"{name}_c_scale"), None, f"{name}_c_dequantize",
                            1 if req(6).type.rank == 2 else 0)
            b = self.dq(req(3), req(4), i[5], f"{name}_b_dequantize", 0 if a.get("transB", 0) else 1)
            y = self.node("Gemm", [self.dq(req(0), req(1), i[2], f"{name}_a_dequantize"), b, c], a, name,
                          None if get(7) is not None else n.outputs[0].name)
            if get(7) is not None:
                self.q(y, i[7], get(8), n)
            else:
                self.env[id(n.outputs[0])] = y
        elif n.op in ("QLinearAdd", "QLinearMul"):
            y = self.node(n.op[7:], [self.dq(req(0), req(1), i[2], f"{name}_a_dequantize"),
                                     self.dq(req(3), req(4), i[5], f"{name}_b_dequantize")], {}, name, f"{name}_float")
            self.q(y, i[6], get(7), n)
        elif n.op in ("QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu"):
            if a.pop("channels_last", 0):
                return False
            y = self.node(n.op[7:], [self.dq(req(0), req(1), i[2], f"{name}_x_dequantize")], a, name, f"{name}_float")
            self.q(y, i[3], get(4), n)
        elif n.op == "QLinearSoftmax":
            x = self.dq(req(0), req(1), i[2], f"{name}_x_dequantize")
            rank, axis = req(0).type.rank, a.get("axis", -1)
            if a.get("opset", 13) >= 13 or (rank is not None and axis % rank == rank - 1):
                y = self.node("Softmax", [x], {"axis": axis}, name, f"{name}_float")
            else:  # before opset 13: softmax over everything from axis on
                flat = self.node("Flatten", [x], {"axis": axis}, f"{name}_flatten")
                sm = self.node("Softmax", [flat], {"axis": -1}, name, f"{name}_float2d")
                shape = self.node("Shape", [self.v(i[0])], {}, f"{name}_shape")
                y = self.node("Reshape", [sm, shape], {}, f"{name}_reshape", f"{name}_float")
            self.q(y, i[3], get(4), n)
        elif n.op == "QLinearConcat":
            parts = [self.dq(req(j), req(j + 1), get(j + 2), f"{name}_{k}_dequantize")
                     for k, j in enumerate(range(2, len(i), 3))]
            y = self.node("Concat", parts, a, name, f"{name}_float")
            self.q(y, i[0], i[1], n)
        else:
            return False
        return True

    def build(self) -> Graph:
        for x in self.src.inputs:
            self.env[id(x)] = self.g.add_input(x.name, x.type)
        for n in self.src.nodes:
            if n.op in QOPERATOR_OPS and self.expand(n):
                continue
            m = self.g.add_node(n.op, [self.v(x) for x in n.inputs], dict(n.attrs),
                                outputs=[x.type for x in n.outputs], output_names=[x.name for x in n.outputs],
                                name=n.name)
            self.env.update(zip(map(id, n.outputs), m.outputs, strict=True))
        self.g.outputs = [self.env[id(x)] for x in self.src.outputs]
        return self.g

