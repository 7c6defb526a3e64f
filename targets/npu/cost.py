"""The npu cost model: ``op_cost`` of every op of a lowered program.

Static shapes only, symbolic dims counted as 1, i.e. per sample; energy by component:
  ``npu.gemm``: cycles = passes * (P + R + C - 2) (weight-stationary systolic: each R x C pass
    streams the P positions through, plus fill and drain), passes = ceil(k/R) * ceil(n/C) dense;
    macs = P * cells; energy: arrays macs * (mac_pj + pe_reg_pj), buffers buffer bytes *
    buffer_pj_per_byte, buffer bytes = activation reads P*k*ceil(n/C) + weight reads cells +
    accumulator read and write 2*4*P*n*ceil(k/R).
  ``npu.dma_in``/``npu.dma_out``: cycles = bytes / dma_bytes_per_cycle, energy: buffers bytes *
    buffer_pj_per_byte plus DRAM bytes * dram_pj_per_byte. Activations stay on chip between layers
    unless they do not fit: a layer's input (``act``, one sample) beyond ``act_buffer_bytes`` and its
    int32 result beyond ``out_buffer_bytes`` spill that share to DRAM (kind ``spills``), written once
    and read back once: ``2 * f * bytes`` DRAM bytes for the spilled fraction ``f``
    (:func:`cimc.cost.spilled_fraction`) of the bytes a ``dma_in`` chunk reads or a ``dma_out``
    drains. The model's input and output cross the chip boundary uncharged. Weight loads (``load``,
    all ``bytes`` from DRAM, kind ``weights``) write ``bytes`` of the weight buffer: at their own
    offset (``npu.offset``) when the model's weights fit the buffer together (or ``allow_reload =
    false``), so they stay there and are one-time (loaded once, before inference); otherwise every
    load writes from offset 0 and the weights stream from DRAM on every inference
    (:func:`cimc.cost.program_cost`).
  ``npu.matmul`` (a matmul of two activations, attention's): per matrix of the batch, the systolic
    passes of ``[M, K] x [K, N]`` with ``b`` held in the PEs, macs = M*K*N, energy as ``npu.gemm``'s
    (arrays and buffer traffic), plus the zero-point terms on the vector unit (``M*K + K*N + M*N``
    adds at ``vec_op_pj``, ``ceil(adds / vec_lanes)`` cycles). Its ``b`` arrives by an ``npu.dma_in``
    into the weight buffer of a computed value: per inference (unit ``dma``), spilling what exceeds
    ``weight_buffer_bytes``.
  Float ``MatMul``/``Gemm``/``Conv``/``ConvTranspose``/``DeformConv``, ``LSTM``/``GRU``/``RNN``, ``Attention``
    and ``Einsum`` (what runs in float: the ONNX ``Attention`` op, or weight layers with ``allow_float``) stay
    the shared float ops, charged to the array as fp work: their MACs (:func:`cimc.cost.mac_dims`: ``P x K``
    by ``K x N``), the systolic cycles of that product, energy macs * fp_mac_pj plus buffer reads and writes
    of its operands and result.
    They are not rewritten to integers: the program must equal the quantized graph bit for bit.
  Other ops: the vector unit every target shares (:func:`cimc.cost.vector_unit_cost`: ``ceil(elements /
    vec_lanes) * vec_op_cycles`` cycles, ``vec_op_pj`` per element plus ``vec_mul_pj`` for the ops that
    multiply); layout ops are free.
"""

from __future__ import annotations

import math

from cimc.cost import AreaPart, Cost, Write, counts, mac_dims, num_elements, spilled_fraction, vector_unit_cost
from cimc.ir.core import Node
from cimc.targets.npu.spec import NpuSpec

__all__ = ["area", "op_cost"]

FP_ARRAY = ("MatMul", "Gemm", "Conv", "ConvTranspose", "DeformConv", "LSTM", "GRU", "RNN", "Attention", "Einsum")
"""Float ops the MAC array runs in fp mode (what runs in float with ``allow_float``)."""


def _systolic(p: int, k: int, n: int, s: NpuSpec) -> float:
    return math.ceil(k / s.mac_rows) * math.ceil(n / s.mac_cols) * (p + s.mac_rows + s.mac_cols - 2)


def _dma(nbytes: float, dram: float, s: NpuSpec, unit: str, kind: str, writes: tuple[Write, ...] = ()) -> Cost:
    """A move of ``nbytes`` through a buffer, ``dram`` of them to or from DRAM."""
    parts = {"buffers": nbytes * s.buffer_pj_per_byte}
    if dram:
        parts["dram"] = dram * s.dram_pj_per_byte
    return Cost(nbytes / s.dma_bytes_per_cycle, sum(parts.values()), unit, 0, parts, {kind: dram} if dram else {},
                writes)


def op_cost(node: Node, s: NpuSpec) -> Cost:
    """Cost of one program op on the npu with spec ``s`` (module docstring: the formulas)."""
    a, op = node.attrs, node.op
    if op == "npu.gemm":
        out = node.outputs[0]
        p = max(1, num_elements(out) // max([1, *counts(out)[-1:]]))
        (k0, k1), n = a["k_range"], counts(node.inputs[1])[1]
        k = k1 - k0
        dense = math.ceil(k / s.mac_rows) * math.ceil(n / s.mac_cols)
        passes, cells = a.get("npu.passes", dense), a.get("npu.cells", k * n)
        macs = p * cells
        buf = p * k * math.ceil(n / s.mac_cols) + cells + 8 * p * n * math.ceil(k / s.mac_rows)
        parts = {"arrays": macs * (s.mac_pj + s.pe_reg_pj), "buffers": buf * s.buffer_pj_per_byte}
        return Cost(float(passes * (p + s.mac_rows + s.mac_cols - 2)), sum(parts.values()), "array", macs, parts)
    if op == "npu.matmul":
        return _matmul(node, s)
    if op == "npu.dma_in":
        nbytes = a.get("bytes", 0)
        x = node.inputs[0]
        if a.get("buffer", "act") == "weight" and x is not None and x.const is None:  # a computed operand
            nbytes *= (counts(x) or (1,))[0]
            return _dma(float(nbytes), 2 * spilled_fraction(nbytes, s.weight_buffer_bytes) * nbytes, s, "dma",
                        "spills")
        if a.get("buffer", "act") == "weight":  # resident weights at their own offset, streamed ones at 0
            return _dma(float(nbytes), float(nbytes), s, "load", "weights",
                        (Write(0, int(a.get("npu.offset", 0)), int(nbytes)),))
        shape = counts(node.inputs[0])  # activation bytes are per batch element: times a static batch
        nbytes *= shape[0] if shape else 1
        f = spilled_fraction(num_elements(node.inputs[0]), s.act_buffer_bytes)  # of the layer's whole input
        return _dma(float(nbytes), 2 * f * nbytes, s, "dma", "spills")
    if op == "npu.dma_out":
        nbytes = 4.0 * num_elements(node.outputs[0])
        return _dma(nbytes, 2 * spilled_fraction(nbytes, s.out_buffer_bytes) * nbytes, s, "dma", "spills")
    dims = mac_dims(node) if op in FP_ARRAY else None
    if dims is not None:
        p, k, n = dims
        macs = p * k * n
        parts = {"arrays": macs * s.fp_mac_pj, "buffers": (p * k + k * n + 4 * p * n) * s.buffer_pj_per_byte}
        return Cost(_systolic(p, k, n, s), sum(parts.values()), "array", macs, parts)
    return vector_unit_cost(node, s)


def _matmul(node: Node, s: NpuSpec) -> Cost:
    """``npu.matmul``: per matrix of the batch, the systolic passes of ``[M, K] x [K, N]`` (b held in the PEs),
    buffer traffic as ``npu.gemm``'s, and the zero-point terms on the vector unit (a row sum per row of a, a
    column sum per column of b, one add per result)."""
    out, a, b = node.outputs[0], counts(node.inputs[0]), counts(node.inputs[1])
    m, k, n = _count(a[-2:-1]), _count(a[-1:]), _count(b[-1:])
    mats = num_elements(out) // max(1, m * n)
    macs = mats * m * k * n
    corr = mats * (m * k + k * n + m * n)
    buf = mats * (m * k * math.ceil(n / s.mac_cols) + k * n + 8 * m * n * math.ceil(k / s.mac_rows))
    parts = {"arrays": macs * (s.mac_pj + s.pe_reg_pj), "buffers": buf * s.buffer_pj_per_byte,
             "vector_unit": corr * s.vec_op_pj}
    cycles = mats * _systolic(m, k, n, s) + math.ceil(corr / s.vec_lanes) * s.vec_op_cycles
    return Cost(float(cycles), sum(parts.values()), "array", macs, parts)


def _count(dims) -> int:
    return math.prod(dims) if dims else 1


def area(s: NpuSpec) -> list[AreaPart]:
    """The chip's blocks (the target's ``area``): the MAC array's PEs, the weight, activation and output
    buffers and the vector lanes, each citing its spec parameter's source."""
    src = {p.name: p.source for p in s.params()}
    return [
        AreaPart("arrays", f"MAC array PEs ({s.mac_rows} x {s.mac_cols})", s.mac_rows * s.mac_cols, s.pe_area_um2,
                 src["pe_area_um2"]),
        *(AreaPart("buffers", f"{what} buffer ({n} B)", 8 * n, s.sram_bit_area_um2, src["sram_bit_area_um2"])
          for what, n in (("weight", s.weight_buffer_bytes), ("activation", s.act_buffer_bytes),
                          ("output", s.out_buffer_bytes))),
        AreaPart("vector_unit", f"vector unit lanes ({s.vec_lanes})", s.vec_lanes, s.vec_lane_area_um2,
                 src["vec_lane_area_um2"]),
    ]
