"""The sram-cim cost model: ``op_cost`` of every op of a lowered program.

Per op, from attributes and static shapes; a symbolic dim counts as 1, i.e. per sample):
- ``sram.mvm``: per tile, ``P`` positions, ``A`` driven row blocks (``rows_active`` rows), ``J``
  input chunks, ``C`` columns, ``adcs = ceil(cols / cols_per_adc)`` per macro. A pass drives one
  block with one chunk across all columns of the tile: ``passes = P*A*J``; ``pass_cycles =
  mvm_cycles + ceil(C / adcs) * adc_cycles``; the tiles run at once on distinct macros, so
  ``cycles = max over tiles of passes * pass_cycles / replicas``; ``energy = sum over tiles of
  P*J*(rows_active*C*mvm_cell_pj + A*C*(adc_pj + shift_add_pj)) + 4*P*channels*buffer_pj_per_byte``
  plus ``P*rows*(buffer_pj_per_byte + noc_pj_per_byte)`` for reading the distinct input rows of its
  tiles once (broadcast to the macros that share them); ``macs = sum of
  P*rows_active*channels``.
- ``sram.load``: per tile and replica ``bits = r*c*cell_bits``, ``bytes = ceil(bits/8)``; ``cycles =
  sum of r*write_row_cycles + bytes/dram_bytes_per_cycle``; ``energy = sum of bits*write_bit_pj +
  bytes*dram_pj_per_byte``.
- every other op: the vector unit (:func:`cimc.cost.vector_cost`, ``vec_lanes``, ``vec_op_cycles``,
  ``vec_op_pj``, plus ``vec_mul_pj`` for ops that multiply: q.requant, q.add, q.quantize,
  q.dequantize); ``vec.im2col`` adds ``buffer_pj_per_byte`` per byte written.
"""

from __future__ import annotations

import math

import numpy as np

from cimc.cost import Cost, num_elements, vector_cost
from cimc.ir.core import Node
from cimc.targets.sram_cim.spec import SramCimSpec

__all__ = ["op_cost"]

_MUL_OPS = ("q.requant", "q.add", "q.quantize", "q.dequantize")


def _count(shape) -> int:
    return math.prod(d if isinstance(d, int) else 1 for d in shape) if shape is not None else 1


def op_cost(node: Node, spec: SramCimSpec) -> Cost:
    """Cost of one program op on the sram-cim target (formulas in the module docstring)."""
    s, a = spec, node.attrs
    if node.op == "sram.mvm":
        xs = node.inputs[0].type.shape
        P = (_count(xs[1:2]) * _count(xs[3:]) if a.get("layout") == "cols" else _count(xs[:-1])) if xs else 1
        J, rpo, R = -(-a.get("act_bits", 8) // a.get("dac_bits", 1)), a["rows_per_op"], a.get("replicas", 1)
        S = len(a["significance"])
        t = np.asarray(a["tiles"], np.int64)
        k, ch = t[:, 5] - t[:, 4], t[:, 9] - t[:, 8]
        skip = np.asarray(a.get("skip", np.zeros((0, 2), np.int64)), np.int64).reshape(-1, 2)
        off_rows = np.minimum(rpo, k[skip[:, 0]] - skip[:, 1] * rpo)  # rows of each skipped block
        active = -(-k // rpo) - np.bincount(skip[:, 0], minlength=len(t))
        rows_active = k - np.bincount(skip[:, 0], weights=off_rows, minlength=len(t)).astype(np.int64)
        C = ch * S
        cycles = float((P * active * J * (s.mvm_cycles + -(-C // s.adcs) * s.adc_cycles)).max() / R)
        energy = float((P * J * (rows_active * C * s.mvm_cell_pj + active * C * (s.adc_pj + s.shift_add_pj))
                        + 4 * P * ch * s.buffer_pj_per_byte).sum())
        macs = int((P * rows_active * ch).sum())
        rows_read = int(sum(k1 - k0 for k0, k1 in {(int(a0), int(a1)) for a0, a1 in t[:, 4:6]}))
        energy += P * rows_read * (s.buffer_pj_per_byte + s.noc_pj_per_byte)
        return Cost(float(cycles), float(energy), "array", macs)
    if node.op == "sram.load":
        t = np.asarray(a["tiles"], np.int64)
        R = a.get("replicas", 1)
        rows, bits = (t[:, 5] - t[:, 4]) * R, (t[:, 5] - t[:, 4]) * (t[:, 7] - t[:, 6]) * s.cell_bits * R
        nbytes = -(-bits // 8)
        return Cost(float((rows * s.write_row_cycles).sum() + nbytes.sum() / s.dram_bytes_per_cycle),
                    float(bits.sum() * s.write_bit_pj + nbytes.sum() * s.dram_pj_per_byte), "load")
    pj = s.vec_op_pj + (s.vec_mul_pj if node.op in _MUL_OPS else 0.0)
    c = vector_cost(node, lanes=s.vec_lanes, cycles_per_op=s.vec_op_cycles, pj_per_op=pj)
    if node.op == "vec.im2col":
        c = Cost(c.cycles, c.energy_pj + num_elements(node.outputs[0]) * s.buffer_pj_per_byte, c.unit)
    return c
