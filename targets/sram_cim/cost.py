"""The sram-cim cost model: ``op_cost`` of every op of a lowered program.

The shared array cost model (:mod:`cimc.cim.cost`) with this target's figures: ``sram.mvm`` as an MVM,
``sram.load`` as a load of ``write_bit_pj`` per bit written, every other op on the digital vector unit every
target shares (:func:`cimc.cost.vector_unit_cost`); the ADC and DAC figures at the op's ``adc_bits`` and
``dac_bits`` (:class:`SramCimSpec`'s ``*_at`` methods). The area is the target's blocks (:func:`area`).
"""

from __future__ import annotations

from cimc.cim.cost import array_area, load_cost, mvm_cost
from cimc.cost import AreaPart, Cost, vector_unit_cost
from cimc.ir.core import Node
from cimc.targets.sram_cim.spec import SramCimSpec

__all__ = ["area", "op_cost"]


def op_cost(node: Node, spec: SramCimSpec) -> Cost:
    """Cost of one program op on the sram-cim target (formulas: :mod:`cimc.cim.cost`)."""
    if node.op == "sram.mvm":
        return mvm_cost(node, spec)
    if node.op == "sram.load":
        return load_cost(node, spec, spec.write_bit_pj, per_bit=True)
    return vector_unit_cost(node, spec)


def area(s: SramCimSpec) -> list[AreaPart]:
    """The chip's blocks (the target's ``area``, :func:`cimc.cim.cost.array_area`): SRAM-CIM cells, ADCs at
    ``adc_bits``, word-line DACs at ``dac_bits``, shift-adds, buffers and vector lanes."""
    return array_area(s, s.macros, "SRAM-CIM cells", "macro", s.adc_bits)
