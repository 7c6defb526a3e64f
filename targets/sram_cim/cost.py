"""The sram-cim cost model: ``op_cost`` of every op of a lowered program.

The shared array cost model (:mod:`cimc.cim.cost`) with this target's figures: ``sram.mvm`` as an MVM,
``sram.load`` as a load of ``write_bit_pj`` per bit written, every other op on the digital vector unit every
target shares (:func:`cimc.cost.vector_unit_cost`); the ADC and DAC figures at the op's ``adc_bits`` and
``dac_bits`` (:class:`SramCimSpec`'s ``*_at`` methods). The area is the target's blocks (:func:`area`).
"""

from __future__ import annotations

from cimc.cim.cost import load_cost, mvm_cost
from cimc.converters import ADC_AREA, DAC_AREA
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
    """The chip's blocks (the target's ``area``): cells, ADCs at ``adc_bits``, word-line DACs at ``dac_bits``,
    shift-adds, buffers and vector lanes, each citing its spec parameter's source (and the law that moved it)."""
    src = {p.name: p.source for p in s.params()}
    return [
        AreaPart("arrays", f"SRAM-CIM cells ({s.macros} macros x {s.rows} x {s.cols})", s.macros * s.rows * s.cols,
                 s.cell_area_um2, src["cell_area_um2"]),
        AreaPart("adc", f"{s.adc_bits}-b ADCs ({s.adcs} per macro)", s.macros * s.adcs, s.adc_area_um2_at(s.adc_bits),
                 f"{src['adc_area_um2']}; at {s.adc_bits} b by the {ADC_AREA.quantity} law {ADC_AREA.formula} "
                 f"({ADC_AREA.source})"),
        AreaPart("dac", f"{s.dac_bits}-b word-line DACs (one per row)", s.macros * s.rows,
                 s.dac_area_um2_at(s.dac_bits), f"{src['dac_area_um2']}; at {s.dac_bits} b by the "
                 f"{DAC_AREA.quantity} law {DAC_AREA.formula}"),
        AreaPart("shift_add", "shift-add units (one per ADC)", s.macros * s.adcs, s.shift_add_area_um2,
                 src["shift_add_area_um2"]),
        AreaPart("buffers", f"activation buffer ({s.act_buffer_bytes} B)", 8 * s.act_buffer_bytes, s.sram_bit_area_um2,
                 src["sram_bit_area_um2"]),
        AreaPart("buffers", f"output buffer ({s.out_buffer_bytes} B)", 8 * s.out_buffer_bytes, s.sram_bit_area_um2,
                 src["sram_bit_area_um2"]),
        AreaPart("vector_unit", f"vector unit lanes ({s.vec_lanes})", s.vec_lanes, s.vec_lane_area_um2,
                 src["vec_lane_area_um2"]),
    ]
