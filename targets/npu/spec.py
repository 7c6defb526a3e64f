"""The npu spec: the hardware parameters of a digital INT8 MAC array (weight-stationary, systolic) with
buffers, DMA and a vector unit.

The array holds a ``mac_rows`` x ``mac_cols`` weight tile (rows = reduction, columns = outputs) and
streams activations through it; products accumulate exactly in ``acc_bits`` accumulators, so it
has no ADC and no lossy step. It runs every matrix op, including matmuls whose both operands are
activations (attention); the vector unit runs requantization, pooling and layout.

Cost model inputs (the defaults: docs/hw-parameters.md §1.2 ``npu_default``, whose 45 nm energies are
scaled by 0.29 to 22 nm at 0.8 V so that npu and sram-cim compare at one node): compute cycles of
an M x K by K x N product are about ``ceil(K/R) * ceil(N/C) * (M + R + C - 2)`` for an R x C
array (fill and drain), memory cycles are bytes / ``dma_bytes_per_cycle``, and a layer takes the
larger (roofline). Energy: ``mac_pj + pe_reg_pj`` per MAC, ``buffer_pj_per_byte`` per buffer byte
read or written, ``dram_pj_per_byte`` per DRAM byte, ``vec_*_pj`` per vector-unit element op.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from cimc.target import GATES_28NM, SCALE_45_TO_22NM, SCALE_AREA_28_TO_22NM, Spec, param, shared_param

__all__ = ["NpuSpec"]

_SCALESIM = "SCALE-Sim configs/scale.cfg: 32 x 32 array, 3 x 64 kB SRAM (docs/hw-parameters.md §1.1, §1.2) [C]"


@dataclass(frozen=True)
class NpuSpec(Spec):
    """Hardware parameters of the npu target (energies at 22 nm, 0.8 V)."""

    target: ClassVar[str] = "npu"

    mac_rows: int = param(32, "Rows of the MAC array: the reduction dimension of the weight tile it holds.",
                          unit="PEs", source=_SCALESIM, ge=1)
    mac_cols: int = param(32, "Columns of the MAC array: the output channels computed at once.", unit="PEs",
                          source=_SCALESIM, ge=1)
    mac_bits: int = param(8, "Width of the weights and activations the MACs multiply.", unit="bits",
                          source="Gemmini defaultConfig: 16 x 16 INT8 mesh; TPU v1 INT8 (docs/hw-parameters.md §1.1, "
                                 "§1.2) [C]", ge=1, le=8)
    acc_bits: int = param(32, "Width of the accumulators (sums are exact below 2**acc_bits).", unit="bits",
                          source="Gemmini defaultConfig: INT32 accumulator (docs/hw-parameters.md §1.1) [C]", ge=8,
                          le=64)
    weight_buffer_bytes: int = param(65536, "Weight (filter) buffer.", unit="bytes",
                                     source="SCALE-Sim configs/scale.cfg filter SRAM 64 kB "
                                            "(docs/hw-parameters.md §1.1) [C]",
                                     ge=1)
    act_buffer_bytes: int = param(65536, "Input activation (ifmap) buffer.", unit="bytes",
                                  source="SCALE-Sim configs/scale.cfg ifmap SRAM 64 kB (docs/hw-parameters.md §1.1) "
                                         "[C]",
                                  ge=1)
    out_buffer_bytes: int = param(65536, "Output (ofmap) buffer.", unit="bytes",
                                  source="SCALE-Sim configs/scale.cfg ofmap SRAM 64 kB (docs/hw-parameters.md §1.1) "
                                         "[C]",
                                  ge=1)
    allow_reload: bool = param(True, "Whether weights may be fetched from DRAM during a run (false: every weight "
                                     "is loaded once and stays in the weight buffer, so the model's weights must "
                                     "fit weight_buffer_bytes; the lowering rejects a larger model).",
                               source="assumption: weights stream from DRAM layer by layer (SCALE-Sim, Gemmini); "
                                      "false models an accelerator without DRAM (weights on chip)")
    clock_mhz: float = param(1000.0, "Clock of the array, buffers and vector unit.", unit="MHz",
                             source="docs/hw-parameters.md §1.2 npu_default: 1 GHz, an assumption shared by NeuroSim "
                                    "(clkFreq = 1e9) and PUMA (1 ns cycle) [C]", gt=0)
    dma_bytes_per_cycle: float = param(16.0, "DMA bandwidth between DRAM and the buffers.", unit="bytes/cycle",
                                       source="assumption: 16 GB/s at 1 GHz, an LPDDR4 x32 channel class "
                                              "(not in docs/hw-parameters.md)", gt=0)
    vec_lanes: int = param(32, "Elements the vector unit processes per cycle.", unit="lanes",
                           source="assumption: one lane per MAC-array column", ge=1)
    vec_op_cycles: int = shared_param("vec_op_cycles")
    mac_pj: float = param(0.087, "Energy of one INT8 multiply-accumulate into an INT32 accumulator.", unit="pJ",
                          source=f"[D] Horowitz, ISSCC 2014: 0.2 pJ INT8 mult + 0.1 pJ INT32 add = 0.30 pJ at 45 nm "
                                 f"(docs/hw-parameters.md §1.2 E_MAC) {SCALE_45_TO_22NM}", ge=0)
    pe_reg_pj: float = param(0.087, "Energy of a PE's local registers per MAC (operand and partial-sum forwarding).",
                             unit="pJ", source=f"[U] Eyeriss register file about 1x a MAC (docs/hw-parameters.md §1.2 "
                                               f"E_PE_local = 0.30 pJ) {SCALE_45_TO_22NM}", ge=0)
    buffer_pj_per_byte: float = shared_param("buffer_pj_per_byte")
    dram_pj_per_byte: float = param(64.0, "Energy to move one byte from or to DRAM.", unit="pJ/byte",
                                    source="Accelergy CACTI plug-in type2energy: LPDDR4 8 pJ/bit "
                                           "(docs/hw-parameters.md §1.1, §1.2) [C]", ge=0)
    vec_op_pj: float = shared_param("vec_op_pj")
    vec_mul_pj: float = shared_param("vec_mul_pj")

    fp_mac_pj: float = shared_param("fp_mac_pj")
    pe_area_um2: float = param(393.61, "Area of one processing element: an 8 x 8 multiplier, a 32-bit accumulating "
                                       "adder and its operand and partial-sum registers.", unit="um^2",
                               source=f"[D] (8 x 8 AND + 8 x 7 full adders) + 32 full adders + 48 DFF = 637.6 um^2 "
                                      f"{GATES_28NM} {SCALE_AREA_28_TO_22NM}", gt=0)
    sram_bit_area_um2: float = shared_param("sram_bit_area_um2")
    vec_lane_area_um2: float = shared_param("vec_lane_area_um2")

    def check(self) -> Iterator[str]:
        """The accumulators hold at least one full product."""
        yield from super().check()
        if self.acc_bits < 2 * self.mac_bits:
            yield (f"acc_bits = {self.acc_bits} must be >= 2 * mac_bits = {2 * self.mac_bits} (an accumulator "
                   f"holds at least one product)")
