"""The npu cost model: ``op_cost`` of every op of a lowered program.

Static shapes only, symbolic dims counted as 1, i.e. per sample):
  ``npu.gemm``: cycles = passes * (P + R + C - 2) (weight-stationary systolic: each R x C pass
    streams the P positions through, plus fill and drain), passes = ceil(k/R) * ceil(n/C) dense;
    macs = P * cells; energy = macs * (mac_pj + pe_reg_pj) + buffer bytes * buffer_pj_per_byte,
    buffer bytes = activation reads P*k*ceil(n/C) + weight reads cells + accumulator read and
    write 2*4*P*n*ceil(k/R).
  ``npu.dma_in``/``npu.dma_out``: cycles = bytes / dma_bytes_per_cycle, energy = bytes *
    (dram_pj_per_byte + buffer_pj_per_byte); weight loads are unit "load" (with ``cim.bytes``).
  Float ``MatMul``/``Gemm`` (attention: two activations, which the quantizer leaves in float)
    and ``LSTM`` stay the shared float ops and are charged to the array as fp work: the same
    systolic cycles with the second operand held stationary, energy macs * fp_mac_pj. They are not
    rewritten to integers: the program must equal the quantized graph bit for bit.
  Other ops: the vector unit, ``ceil(elements / vec_lanes) * vec_op_cycles`` cycles and
    ``elements * vec_mul_pj`` (multiplying ops) or ``vec_op_pj`` pJ, as ``cimc.cost.vector_cost``
    counts elements; layout ops are free.
"""

from __future__ import annotations

import math

from cimc.cost import Cost, num_elements, vector_cost
from cimc.ir.core import Node
from cimc.targets.npu.spec import NpuSpec

__all__ = ["op_cost"]

FP_ARRAY = ("MatMul", "Gemm", "LSTM")
"""Float ops the MAC array runs in fp mode (attention matmuls, recurrent cells)."""
_MUL_OPS = frozenset({"q.requant", "q.add", "q.quantize", "q.dequantize", "Mul", "Div", "Softmax",
                      "LayerNormalization", "Erf", "Exp", "Sigmoid", "Tanh", "Pow", "Sqrt", "Reciprocal",
                      "ReduceMean", "AveragePool", "GlobalAveragePool", "BatchNormalization", "Gelu"})


def _systolic(p: int, k: int, n: int, s: NpuSpec) -> float:
    return math.ceil(k / s.mac_rows) * math.ceil(n / s.mac_cols) * (p + s.mac_rows + s.mac_cols - 2)


def _dma(nbytes: float, s: NpuSpec, unit: str) -> Cost:
    return Cost(nbytes / s.dma_bytes_per_cycle, nbytes * (s.dram_pj_per_byte + s.buffer_pj_per_byte), unit)


def op_cost(node: Node, s: NpuSpec) -> Cost:
    """Cost of one program op on the npu with spec ``s`` (module docstring: the formulas)."""
    a, op = node.attrs, node.op
    if op == "npu.gemm":
        out = node.outputs[0]
        p = max(1, num_elements(out) // max(1, out.type.shape[-1]))
        (k0, k1), n = a["k_range"], node.inputs[1].type.shape[1]
        k = k1 - k0
        dense = math.ceil(k / s.mac_rows) * math.ceil(n / s.mac_cols)
        passes, cells = a.get("npu.passes", dense), a.get("npu.cells", k * n)
        macs = p * cells
        buf = p * k * math.ceil(n / s.mac_cols) + cells + 8 * p * n * math.ceil(k / s.mac_rows)
        return Cost(float(passes * (p + s.mac_rows + s.mac_cols - 2)),
                    macs * (s.mac_pj + s.pe_reg_pj) + buf * s.buffer_pj_per_byte, "array", macs)
    if op == "npu.dma_in":
        weight = a.get("buffer", "act") == "weight"
        nbytes = a.get("bytes", 0)
        if not weight:  # per batch element: times a static batch
            shape = node.inputs[0].type.shape or ()
            nbytes *= shape[0] if shape and isinstance(shape[0], int) else 1
        return _dma(float(nbytes), s, "load" if weight else "dma")
    if op == "npu.dma_out":
        return _dma(4.0 * num_elements(node.outputs[0]), s, "dma")
    if op in FP_ARRAY:
        shapes = [v.type.shape if v is not None else None for v in node.inputs]
        if op == "LSTM" and shapes[1] is not None and shapes[0] is not None:
            hidden4, inp = shapes[1][1], shapes[1][2]
            hid = hidden4 // 4 if isinstance(hidden4, int) else 1
            p = math.prod(d if isinstance(d, int) else 1 for d in shapes[0][:2]) * (shapes[1][0] or 1)
            k, n = (inp if isinstance(inp, int) else 1) + hid, hidden4 if isinstance(hidden4, int) else 1
        elif shapes[0] is not None and shapes[1] is not None and len(shapes[1]) >= 2:
            k = shapes[0][-1] if isinstance(shapes[0][-1], int) else 1
            rows = math.prod(d if isinstance(d, int) else 1 for d in shapes[0][:-1])
            n = num_elements(node.outputs[0]) // max(1, rows)
            p = max(1, num_elements(node.outputs[0]) // max(1, n))
        else:
            return _vector(node, s)
        macs = p * k * n
        return Cost(_systolic(p, k, n, s), macs * s.fp_mac_pj + (p * k + k * n + 4 * p * n) * s.buffer_pj_per_byte,
                    "array", macs)
    return _vector(node, s)


def _vector(node: Node, s: NpuSpec) -> Cost:
    """The shared vector-unit model, with the multiplier's energy for ops that multiply."""
    pj = s.vec_mul_pj if node.op in _MUL_OPS else s.vec_op_pj
    return vector_cost(node, lanes=s.vec_lanes, cycles_per_op=s.vec_op_cycles, pj_per_op=pj)
