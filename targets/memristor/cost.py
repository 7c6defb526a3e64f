"""The memristor cost model: ``op_cost`` of every op of a lowered program, and the chip's ``area``.

The shared array cost model (:mod:`cimc.cim.cost`) with this target's figures: ``xbar.mvm`` as an MVM (a pass
of one row block and one input chunk: ``mvm_cycles`` of read pulse plus the busiest ADC's conversions; cells read
at ``mvm_cell_pj``, word lines at ``dac_pj``, conversions at ``adc_pj``, one per differential pair), ``xbar.load``
as programming ``write_cell_pj`` per cell and ``write_row_cycles`` per row (its writes are recorded per crossbar,
so reloads show as cell writes for endurance), every other op on the digital vector unit every target shares
(:func:`cimc.cost.vector_unit_cost`); the ADC and DAC figures at the op's ``adc_bits`` and ``dac_bits``.
"""

from __future__ import annotations

from cimc.cim.cost import array_area, load_cost, mvm_cost
from cimc.cost import AreaPart, Cost, vector_unit_cost
from cimc.ir.core import Node
from cimc.targets.memristor.spec import MemristorSpec

__all__ = ["area", "op_cost"]


def op_cost(node: Node, spec: MemristorSpec) -> Cost:
    """Cost of one program op on the memristor target (formulas: :mod:`cimc.cim.cost`)."""
    if node.op == "xbar.mvm":
        return mvm_cost(node, spec)
    if node.op == "xbar.load":
        return load_cost(node, spec, spec.write_cell_pj)
    return vector_unit_cost(node, spec)


def area(s: MemristorSpec) -> list[AreaPart]:
    """The chip's blocks (:func:`cimc.cim.cost.array_area`): 1T1R cells, ADCs at the resolved ``adc_bits``,
    word-line DACs at ``dac_bits``, shift-adds, buffers and vector lanes."""
    from cimc.targets.memristor import resolved_adc_bits

    return array_area(s, s.crossbars, "1T1R cells", "crossbar", resolved_adc_bits(s))
