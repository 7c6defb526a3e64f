"""The sram-cim spec: the hardware parameters of several SRAM CIM macros (MARS-like) and a vector unit.

Each macro is one array of ``rows`` x ``cols`` 1-bit cells. A weight of b bits is split over
``ceil(b / cell_bits)`` adjacent columns; inputs are fed bit-serially (``dac_bits`` per pass). One
*pass* switches on ``rows_per_op`` word lines with one input slice and yields one partial sum per
column; each ADC converts its ``cols_per_adc`` columns one after another at ``adc_bits`` (lossless
when ``adc_bits >= lossless_adc_bits(rows_per_op, dac_bits, cell_bits)``, 7 for the defaults; NeuroSim's
5-b ADC, ``--spec-set adc_bits=5``, clips and rounds as the published macros do), and the digital
periphery shifts and adds the converted sums by input-bit and weight-slice significance. Passes over
an all-zero (pruned) row block are skipped. Requantization, pooling and layout run on the vector unit.

Cost model inputs (the defaults: 22 nm, 0.8 V, calibrated to published macros, docs/hw-parameters.md
§2.3): a pass drives its rows with ``dac_pj`` per word line, spends ``mvm_cell_pj`` per cell in the
driven rows and converted columns, and one ``adc_pj`` and one ``shift_add_pj`` per converted column;
it takes ``mvm_cycles`` plus the conversions of the busiest ADC (``adc_ns`` each). At the reference
point (``adc_ref_bits`` = 4, 1-bit inputs) that is 1.8 fJ per 1b x 1b operation all-in (about 117 fJ
per 8b x 8b MAC, 17 TOPS/W: NeuroSim's SRAM 22 nm macro with a 4-b ADC), split as in Wang et al.
(VLSI 2022): ADC 34 %, word line and DAC 22 %, array 40 %, shift-add 4 %. ADC energy, conversion
time and area, and DAC energy and area, move with ``adc_bits`` and ``dac_bits`` along the published
laws of :mod:`cimc.converters`. Loading weights costs ``write_row_cycles`` per row and ``write_bit_pj``
per bit. Areas: cells, ADCs, DACs, shift-adds, buffers and vector lanes (the target's ``area``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from cimc.cim.cost import ArrayFigures
from cimc.target import GATES_28NM, SCALE_45_TO_22NM, SCALE_AREA_28_TO_22NM, Spec, param, shared_param

__all__ = ["SramCimSpec"]

_BITOP = "of 1.8 fJ per 1b x 1b op (NeuroSim SRAM 22 nm, 64 rows, 17.13 TOPS/W; docs/hw-parameters.md §2.3)"


@dataclass(frozen=True)
class SramCimSpec(ArrayFigures, Spec):
    """Hardware parameters of the sram-cim target (energies at 22 nm, 0.8 V)."""

    target: ClassVar[str] = "sram-cim"

    macros: int = param(16, "Number of SRAM-CIM macros (one array each), working in parallel.", unit="macros",
                        source="assumption; Jia et al., ISSCC 2021 15.1 has 16 cores (CIM-MLC configs/ISSCC21_15_1.py, "
                               "docs/hw-parameters.md §2.1) [C]", ge=1)
    rows: int = param(128, "Word lines (rows) of one macro's array.", unit="rows",
                      source="NeuroSim V1.4 Param.cpp default subarray 128 x 128 "
                             "(docs/hw-parameters.md §2.2, §2.3) [C]", ge=1)
    cols: int = param(128, "Bit lines (columns) of one macro's array.", unit="columns",
                      source="NeuroSim V1.4 Param.cpp default subarray 128 x 128 "
                             "(docs/hw-parameters.md §2.2, §2.3) [C]", ge=1)
    cell_bits: int = param(1, "Bits stored per cell (1 for an SRAM cell).", unit="bits",
                           source="docs/hw-parameters.md §2.3 recommended default: 1 b/cell (NeuroSim) [C]", ge=1,
                           le=8)
    weight_bits_max: int = param(8, "Widest weight the arrays hold; it spans ceil(bits / cell_bits) adjacent columns.",
                                 unit="bits", source="docs/hw-parameters.md §2.3 recommended default: 8-b weights "
                                                     "across 8 adjacent columns", ge=1, le=8)
    act_bits_max: int = param(8, "Widest input activation; it enters dac_bits per pass.", unit="bits",
                              source="docs/architecture.md, the integer contract (activations of 2 to 8 bits); "
                                     "docs/hw-parameters.md §2.3 calibrates at 8b x 8b", ge=1, le=8)
    dac_bits: int = param(1, "Input bits applied per pass (1 = bit-serial inputs).", unit="bits",
                          source="docs/hw-parameters.md §2.3 recommended default: bit-serial, 1 b per cycle (1-b DAC)",
                          ge=1, le=8)
    adc_bits: int = param(7, "Resolution of each conversion of a column partial sum (lossy below lossless_adc_bits).",
                          unit="bits", source="lossless for the defaults: ceil(log2(rows_per_op*(2^dac_bits-1)*"
                                              "(2^cell_bits-1)+1)) = 7 for 64 rows of 1-b cells and 1-b inputs "
                                              "(docs/hw-parameters.md §2.2 full partial-sum precision); NeuroSim V1.4 "
                                              "truncates to 5 b (levelOutput = 32) [C]: set adc_bits=5 to study that",
                          ge=1, le=16)
    rows_per_op: int = param(64, "Word lines switched on together: the rows summed into one partial sum.",
                             unit="rows", source="NeuroSim manual Table VII best case (64 rows); Sinangil et al., "
                                                 "JSSC 2021, 64 rows (docs/hw-parameters.md §2.3) [C]", ge=1)
    cols_per_adc: int = param(8, "Columns sharing one ADC, converted one after another.", unit="columns",
                              source="NeuroSim V1.4 Param.cpp numColMuxed = 8 (docs/hw-parameters.md §2.2, §2.3) [C]",
                              ge=1)
    allow_reload: bool = param(True, "Whether weights may be reloaded into the macros during a run when the model "
                                     "needs more cells than macros * rows * cols (false: the lowering rejects such "
                                     "a model).", source="docs/architecture.md, Targets: a model larger than all "
                                                         "arrays reuses them with weight reloads; assumption: reloads "
                                                         "allowed")
    skip_zero_blocks: bool = param(True, "Whether passes over all-zero (pruned) row blocks are skipped.",
                                   source="docs/architecture.md, Targets: sram-cim skips pruned row blocks (MARS-like "
                                          "block sparsity)")
    spare_rows: int = param(0, "Spare physical rows per macro beyond rows, onto which a placement may move a tile's "
                               "rows (away from faulty cells, say).", unit="rows",
                            source="assumption: no redundancy (spare rows are a design choice of the macro)", ge=0)
    spare_cols: int = param(0, "Spare physical columns per macro beyond cols, likewise.", unit="columns",
                            source="assumption: no redundancy (spare columns are a design choice of the macro)", ge=0)
    p_sa0: float = param(0.0, "Probability that a cell is stuck at 0 (reads 0 whatever is written), in the chip "
                              "sampled with the compile seed when no chip file is given.", unit="probability",
                         source="docs/hw-parameters.md §5.8: digital SRAM-CIM has no device faults (exact); §5.4 gives "
                                "MNSIM's 0.1 % / 0.1 % stuck-at rates (ReRAM) for sweeps", ge=0, le=1)
    p_sa1: float = param(0.0, "Probability that a cell is stuck at 1 (reads 1 whatever is written), likewise.",
                         unit="probability", source="docs/hw-parameters.md §5.8: digital SRAM-CIM has no device faults "
                                                    "(exact); §5.4 for stuck-at rates to sweep", ge=0, le=1)
    read_noise: float = param(0.0, "Standard deviation of Gaussian noise on every analog partial sum before the ADC "
                                   "(in partial-sum LSB: one input LSB times one cell level).", unit="LSB",
                              source="docs/hw-parameters.md §5.8: noise-free by default; analog SRAM-CIM output noise "
                                     "0.5 LSB is an assumption, MC2-RAM measured 0.045 LSB [C2]", ge=0)
    chip: str = param("", "Chip file (.npz: the stuck cells of every macro, spares included; docs/array-model.md) "
                          "that programs run on and mapping passes read; empty: a chip sampled from p_sa0 and p_sa1 "
                          "with the compile seed.", unit="path", source="assumption: no chip file")
    clock_mhz: float = param(1000.0, "Clock of the macros and the digital periphery.", unit="MHz",
                             source="NeuroSim V1.4 Param.cpp clkFreq = 1e9 (docs/hw-parameters.md §2.2) [C]; PUMA "
                                    "1 ns cycle (docs/hw-parameters.md §1.2)", gt=0)
    mvm_cycles: int = param(1, "Cycles of one pass (word-line drive, bit-line settle), before its conversions.",
                            unit="cycles", source="assumption: one 1-ns cycle; docs/hw-parameters.md §2.3 gives 1 to "
                                                  "6.9 ns per input bit including the ADC", ge=1)
    adc_ref_bits: int = param(4, "Resolution at which adc_pj, adc_ns and adc_area_um2 are given; at adc_bits they "
                                 "scale by the ADC laws of cimc.converters (ZigZag-IMC).", unit="bits",
                              source="NeuroSim V1.4 manual Table VII: the SRAM 22 nm 64-row figure (17.13 TOPS/W) the "
                                     "energies are calibrated to uses a 4-b ADC (docs/hw-parameters.md §6) [C]", ge=1,
                              le=16)
    adc_ns: float = param(0.8, "Time of one ADC conversion at adc_ref_bits (conversions of one ADC run one after "
                               "another).", unit="ns",
                          source="[D] NeuroSim V1.4 manual §7: about 1 ns for a 5-b flash ADC at 22 nm "
                                 "(docs/hw-parameters.md §2.2) [C], x 4/5 to 4 b by the ZigZag-IMC time law "
                                 "(proportional to bits)", gt=0)
    shift_add_cycles: int = param(1, "Cycles of one shift-add of a converted partial sum (one adder per ADC, "
                                     "pipelined behind the conversions: only the last one of an sram.mvm adds "
                                     "to its time).", unit="cycles",
                                  source="assumption: one adder per ADC taking one partial sum per cycle", ge=0)
    write_row_cycles: int = param(1, "Cycles to write one row of weight bits into an array (load or reload).",
                                  unit="cycles", source="assumption: one word line per cycle, as an SRAM write port",
                                  ge=1)
    vec_lanes: int = param(16, "Elements the digital vector unit processes per cycle.", unit="lanes",
                           source="assumption: one lane per ADC (128 columns / 8 columns per ADC)", ge=1)
    vec_op_cycles: int = shared_param("vec_op_cycles")
    dram_bytes_per_cycle: float = param(16.0, "Off-chip (DRAM) bandwidth.", unit="bytes/cycle",
                                        source="assumption: 16 GB/s at 1 GHz, an LPDDR4 x32 channel class "
                                               "(not in docs/hw-parameters.md)", gt=0)
    act_buffer_bytes: int = param(65536, "Input activation buffer feeding the macros.", unit="bytes",
                                  source="SCALE-Sim configs/scale.cfg ifmap SRAM 64 kB (docs/hw-parameters.md §1.1) "
                                         "[C], the npu's size for a like-for-like comparison", ge=1)
    out_buffer_bytes: int = param(65536, "Output buffer collecting the macros' results.", unit="bytes",
                                  source="SCALE-Sim configs/scale.cfg ofmap SRAM 64 kB (docs/hw-parameters.md §1.1) "
                                         "[C], the npu's size for a like-for-like comparison", ge=1)
    mvm_cell_pj: float = param(0.00072, "Energy of one cell in one pass: one driven row, one input slice, one "
                                        "column (bit-line compute; word-line drive, ADC and shift-add apart).",
                               unit="pJ", source=f"[D] 40 % (array and MAC share, Wang et al., VLSI 2022 split [C]) "
                                                 f"{_BITOP}", ge=0)
    dac_pj: float = param(0.050688, "Energy of driving one word line for one pass with a 1-bit input (the input "
                                    "DAC and the word line across the cols columns); at dac_bits it scales by the "
                                    "DAC law of cimc.converters (linear in bits).", unit="pJ",
                          source=f"[D] 22 % (DAC/word-line share, Wang et al., VLSI 2022 split [C]) {_BITOP} x 128 "
                                 "columns per word line", ge=0)
    adc_pj: float = param(0.039168, "Energy of one ADC conversion (one column partial sum) at adc_ref_bits; at "
                                    "adc_bits it scales by the ADC energy law of cimc.converters.", unit="pJ",
                          source=f"[D] 34 % (Wang et al., VLSI 2022 ADC share [C]) {_BITOP} x 64 rows per conversion",
                          ge=0)
    shift_add_pj: float = param(0.004608, "Energy of one shift-add of a converted partial sum.", unit="pJ",
                                source=f"[D] 4 % (Wang et al., VLSI 2022 'other' share [C]) {_BITOP} x 64 rows per "
                                       "partial sum", ge=0)
    write_bit_pj: float = param(0.0016, "Energy to write one weight bit into an array.", unit="pJ",
                                source="MNSIM 2.0 SimConfig.ini Write_Energy = 1.6 fJ/bit, 28 nm reference "
                                       "(docs/hw-parameters.md §2.2, §2.3) [C]", ge=0)
    vec_op_pj: float = shared_param("vec_op_pj")
    vec_mul_pj: float = shared_param("vec_mul_pj")
    buffer_pj_per_byte: float = shared_param("buffer_pj_per_byte")
    fp_mac_pj: float = shared_param("fp_mac_pj")
    noc_pj_per_byte: float = param(0.174, "Energy to move one byte between a buffer and a macro (on-chip bus).",
                                   unit="pJ/byte",
                                   source="[U] Eyeriss (Chen et al., ISCA 2016) Table IV: NoC about 2x a MAC "
                                          f"(docs/hw-parameters.md §1.1): 2 x 0.30 pJ {SCALE_45_TO_22NM}", ge=0)
    dram_pj_per_byte: float = param(64.0, "Energy to move one byte from or to DRAM (weight reloads, spills).",
                                    unit="pJ/byte", source="Accelergy CACTI plug-in type2energy: LPDDR4 8 pJ/bit "
                                                           "(docs/hw-parameters.md §1.1, §1.2) [C]", ge=0)
    cell_area_um2: float = param(0.13552, "Area of one array cell.", unit="um^2",
                                 source="[D] NeuroSim V1.4 Param.cpp SRAM cell 10 F x 28 F = 280 F^2 "
                                        "(docs/hw-parameters.md §2.2) [C] at F = 22 nm", gt=0)
    adc_area_um2: float = param(112.99, "Area of one ADC at adc_ref_bits; at adc_bits it scales by the ADC area law "
                                        "of cimc.converters.", unit="um^2",
                                source=f"[D] ZigZag-IMC AimcArrayUnit ADC area 10^(-0.0369 B + 1.206) 2^B um^2 at "
                                       f"28 nm = 183.0 um^2 at 4 b (docs/hw-parameters.md §2.2) [C] "
                                       f"{SCALE_AREA_28_TO_22NM}",
                                gt=0)
    dac_area_um2: float = param(0.078461, "Area of one word-line input DAC at 1 bit (one per row); at dac_bits it "
                                          "scales by the DAC area law of cimc.converters (x2 per bit).", unit="um^2",
                                source="[D] ISAAC 1-b DAC 0.166 um^2 at 32 nm (MNSIM 2.0 MNSIM/Hardware_Model/DAC.py; "
                                       "docs/hw-parameters.md §4.1) x (22/32)^2", gt=0)
    shift_add_area_um2: float = param(167.39, "Area of one shift-add unit (one per ADC): a 32-bit accumulator.",
                                      unit="um^2", source=f"[D] 32 x (1-b full adder + DFF) = 32 x (4.789 + 3.684) "
                                                          f"um^2 {GATES_28NM} {SCALE_AREA_28_TO_22NM}", gt=0)
    sram_bit_area_um2: float = shared_param("sram_bit_area_um2")
    vec_lane_area_um2: float = shared_param("vec_lane_area_um2")

    def check(self) -> Iterator[str]:
        """Word lines and ADC columns fit the array, a weight fits in a row, a DAC slice in an input."""
        yield from super().check()
        yield from self.array_problems()
