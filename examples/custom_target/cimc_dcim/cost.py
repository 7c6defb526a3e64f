"""The dcim cost model: ``op_cost`` of every op of a lowered program.

- ``dcim.mvm``: ``P`` output positions per sample (the result's elements over its channels),
  ``T`` tiles on ``macros`` macros, so ``rounds = ceil(T / macros)``; each macro takes one input bit
  of one position per cycle: ``cycles = rounds * P * act_bits``; ``macs = P * K * N`` (all groups),
  ``energy = macs * act_bits * weight_bits * bitop_pj`` (every 1b x 1b product in the adder trees).
- every other op: the vector unit every target shares (:func:`cimc.cost.vector_unit_cost`).
"""

from __future__ import annotations

import math

from cimc.cost import Cost, num_elements, vector_unit_cost
from cimc.ir.core import Node
from cimc_dcim.spec import DcimSpec

__all__ = ["op_cost"]

def op_cost(node: Node, spec: DcimSpec) -> Cost:
    """Cost of one program op on dcim macros of ``spec`` (formulas in the module docstring)."""
    if node.op == "dcim.mvm":
        g, k, n = node.inputs[1].type.shape
        positions = num_elements(node.outputs[0]) // (g * n)
        macs = positions * g * k * n
        wbits = node.inputs[1].type.quant.bits if node.inputs[1].type.quant is not None else 8
        bits = node.attrs["act_bits"]
        cycles = math.ceil(node.attrs["tiles"] / spec.macros) * positions * bits
        return Cost(float(cycles), macs * bits * wbits * spec.bitop_pj, "array", macs)
    return vector_unit_cost(node, spec)
