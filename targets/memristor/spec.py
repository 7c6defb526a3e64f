"""The memristor spec: the hardware parameters of ReRAM (or PCM) crossbars, their non-idealities, and a vector unit.

Each crossbar is one array of ``rows`` x ``cols`` multi-level cells of ``cell_bits`` (1 to 8; 8 holds a whole
8-bit weight in one cell, or one pair, as aihwkit models weights). Signed weights are differential pairs of
columns (``signed = differential``: a positive and a negative cell per slice, the pair's two currents
subtracted and converted once) or one column with a digital offset (``signed = offset``: ``w + 2^(bits-1)``
stored, ``offset * sum(x)`` subtracted, the reference column of NeuroSim). Inputs enter ``dac_bits`` at a time
(1: bit-serial; 8: the whole input at once), ``rows_per_op`` word lines together; one ADC per ``cols_per_adc``
columns converts each partial sum at ``adc_bits`` (0: the lossless resolution for the configuration), and the
digital periphery shifts and adds. Levels map linearly onto conductances ``g_min .. g_max``
(:mod:`cimc.cim.analog`), each column's top level by ``full_scale``.

Non-idealities (docs/array-model.md, formulas in :mod:`cimc.cim.noise`), each with its own switch: programming
variation (``prog_model``, ``prog_scale``, ``prog_sigma``), read noise per cell read (``read_noise``), drift
(``drift``, ``nu_mean``, ``nu_std``, ``t_inference``, ``t0``, ``drift_compensation``), stuck-at faults
(``p_sa0``, ``p_sa1``), IR drop (``r_wire``) and the ADC (``adc_bits``). ``noise = false`` switches off
programming variation, read noise and drift (stuck cells follow their rates alone); ``ideal = true`` switches
off all of them, faults and IR drop included, and makes the ADC lossless: the ideal crossbar, whose programs
equal the integer reference bit for bit. A chip (one draw of the static effects) comes from the compile seed,
or from the chip file ``chip``.

Cost model inputs (32 nm ReRAM figures, docs/hw-parameters.md §4): a pass (one row block, one input chunk)
drives its word lines (``dac_pj`` each), spends ``mvm_cell_pj`` per cell read (``V^2 G t``), and one
``adc_pj`` and ``shift_add_pj`` per conversion; it takes ``mvm_cycles`` (the read pulse) plus the conversions of
the busiest ADC. Programming a crossbar costs ``write_cell_pj`` per cell and ``write_row_cycles`` per row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from cimc.cim.cost import ArrayFigures
from cimc.cim.noise import DRIFT_MODELS, PROG_MODELS
from cimc.target import GATES_28NM, SCALE_AREA_28_TO_22NM, Spec, param, shared_param

__all__ = ["SIGNED", "MemristorSpec"]

SIGNED = ("differential", "offset")
"""How a signed weight sits in cells: a differential pair of columns, or one column with a digital offset."""
FULL_SCALES = ("cell", "layer", "column")


@dataclass(frozen=True)
class MemristorSpec(ArrayFigures, Spec):
    """Hardware parameters of the memristor target (ReRAM crossbars, 32 nm periphery)."""

    target: ClassVar[str] = "memristor"

    crossbars: int = param(64, "Number of crossbars (one array each), working in parallel.", unit="crossbars",
                           source="PIMCOMP config.json: 64 crossbars of 128 x 128 per core (docs/hw-parameters.md "
                                  "§4.1) [C]", ge=1)
    rows: int = param(128, "Word lines (rows) of one crossbar.", unit="rows",
                      source="docs/hw-parameters.md §4.2: 128 x 128 (ISAAC, PUMA, NeuroSim) [C]", ge=1)
    cols: int = param(128, "Bit lines (columns) of one crossbar.", unit="columns",
                      source="docs/hw-parameters.md §4.2: 128 x 128 (ISAAC, PUMA, NeuroSim) [C]", ge=1)
    cell_bits: int = param(2, "Bits per multi-level cell (2^cell_bits conductance levels); 8 holds a whole 8-bit "
                              "weight's magnitude in one cell.", unit="bits",
                           source="docs/hw-parameters.md §4.2: 2 bits per cell (ISAAC, PUMA) [C]", ge=1, le=8)
    signed: str = param("differential", "Signed weights as a differential pair of columns (positive and negative "
                                        "cells, sensed as one signed sum) or as one column with a digital offset "
                                        "(w + 2^(bits-1) stored, offset * sum(x) subtracted): differential, offset.",
                        unit="encoding", choices=SIGNED,
                        source="docs/hw-parameters.md §4.2: a differential pair (ISAAC, PUMA; aihwkit "
                               "SinglePairConductanceConverter) [C]; §4.1: NeuroSim's reference column")
    weight_bits_max: int = param(8, "Widest weight the crossbars hold.", unit="bits",
                                 source="docs/architecture.md, the integer contract (weights of 2 to 8 bits)", ge=1,
                                 le=8)
    act_bits_max: int = param(8, "Widest input activation; it enters dac_bits per pass.", unit="bits",
                              source="docs/architecture.md, the integer contract (activations of 2 to 8 bits)", ge=1,
                              le=8)
    dac_bits: int = param(1, "Input bits applied per pass (1 = bit-serial; act_bits = the whole input at once).",
                          unit="bits", source="docs/hw-parameters.md §4.2: bit-serial through a 1-bit DAC (ISAAC, "
                                              "PUMA dac_res=1, MNSIM DAC_Choice=1) [C]", ge=1, le=8)
    adc_bits: int = param(0, "Resolution of each conversion (0: the lossless resolution of the configuration; "
                             "fewer bits round and clip, as the published 6-b ADCs do).", unit="bits",
                          source="docs/hw-parameters.md §4.2 uses 6 b (MNSIM, 5 to 8 in use) [C] with a range "
                                 "calibrated per layer; assumption: lossless until a calibration sets the ranges "
                                 "(--spec-set adc_bits=6 to study the worst-case range)", ge=0, le=24)
    rows_per_op: int = param(128, "Word lines switched on together: the rows summed into one partial sum.",
                             unit="rows", source="docs/hw-parameters.md §4.1: all 128 rows at once (PUMA MaxRC 128) "
                                                 "[C]", ge=1)
    cols_per_adc: int = param(16, "Columns sharing one ADC, converted one after another.", unit="columns",
                              source="docs/hw-parameters.md §4.2: one ADC per 16 columns (MNSIM) [C]", ge=1)
    g_min: float = param(4.0, "Lowest conductance (level 0, and a cell stuck at SA0).", unit="uS",
                         source="docs/hw-parameters.md §4.2: g_max 40 uS, on/off 10 (aihwkit ReRAM g_max; NeuroSim's "
                                "on/off) [C]", ge=0)
    g_max: float = param(40.0, "Highest conductance (a column's full-scale level, and a cell stuck at SA1).",
                         unit="uS", source="docs/hw-parameters.md §4.2: aihwkit ReRamWan2022 g_max 40 uS [C]", gt=0)
    full_scale: str = param("cell", "Which level a column's g_max stands for: cell (2^cell_bits - 1), layer (the "
                                    "layer's largest level of the column's slice) or column (the column's largest "
                                    "level); per-layer or per-column scaling to g_max.", unit="choice",
                            choices=FULL_SCALES,
                            source="docs/hw-parameters.md §5.1: linear mapping to g_max (aihwkit, CrossSim) [C]; "
                                   "assumption: the cell's full range")
    noise: bool = param(True, "Whether programming variation, read noise and drift are on (false: off; stuck-at "
                              "faults follow p_sa0 and p_sa1 alone).", source="assumption: the device as modelled")
    ideal: bool = param(False, "The ideal crossbar: no variation, read noise, drift, faults or IR drop, and a "
                               "lossless ADC (the program then equals the integer reference bit for bit).",
                        source="assumption: the device as modelled")
    prog_model: str = param("reram-wan2022", "Programming-variation model: reram-wan2022 (aihwkit's ReRAM "
                                             "polynomial, 3-6 % of g_max), pcm-nandakumar2019 (aihwkit's PCM), "
                                             "relative (sigma = prog_sigma * G, NeuroSim).", unit="model",
                            choices=PROG_MODELS,
                            source="docs/hw-parameters.md §5.8: aihwkit ReRamWan2022NoiseModel at t = 1 s [C]")
    prog_scale: float = param(1.0, "Multiplies the programming-variation sigma (0: none; 2: twice the default).",
                              unit="x", source="aihwkit prog_noise_scale = 1 (docs/hw-parameters.md §5.2) [C]", ge=0)
    prog_sigma: float = param(0.1, "Relative sigma of the relative programming model.", unit="fraction",
                              source="docs/hw-parameters.md §5.2: NeuroSim --vari 0.1 as an example [C]", ge=0)
    read_noise: float = param(0.01, "Read noise of one cell read, a fraction of g_max (additive Gaussian, drawn per "
                                    "conversion from the run's seed).", unit="fraction of g_max",
                              source="docs/hw-parameters.md §5.8: read noise 1 % additive [C]; §5.2 Wan et al.", ge=0)
    drift: str = param("none", "Conductance drift model: none, constant (nu ~ |N(nu_mean, nu_std)|), pcm-aihwkit "
                               "(aihwkit's PCM exponents).", unit="model",
                       choices=DRIFT_MODELS,
                       source="docs/hw-parameters.md §5.8: no drift for ReRAM, the PCM power law as an option [C]")
    nu_mean: float = param(0.05, "Mean drift exponent of the constant model.", unit="-",
                           source="docs/hw-parameters.md §5.3: nu = 0.05 gives 0.77 after 1 hour [D]", ge=0)
    nu_std: float = param(0.01, "Standard deviation of the drift exponent of the constant model.", unit="-",
                          source="assumption; docs/hw-parameters.md §5.3: aihwkit's PCM sigma_nu is 0.008 to 0.045",
                          ge=0)
    t_inference: float = param(0.0, "Time since programming at which the model runs (drift), from the first read.",
                               unit="s", source="aihwkit t_inference (docs/hw-parameters.md §5.3) [C]; assumption: "
                                                "read at once", ge=0)
    t0: float = param(20.0, "Time after programming of the first read (the drift reference).", unit="s",
                      source="docs/hw-parameters.md §5.3: aihwkit t0 = 20 s [C]", gt=0)
    drift_compensation: bool = param(False, "Global drift compensation: each crossbar's reads scaled by a reference "
                                            "read after programming over one at inference.",
                                     source="docs/hw-parameters.md §5.3: aihwkit GlobalDriftCompensation [C]; "
                                            "assumption: off")
    p_sa0: float = param(0.001, "Probability that a cell is stuck at g_min (level 0, whatever is written).",
                         unit="probability", source="docs/hw-parameters.md §5.4: MNSIM Device_SAF 0.1 % [C]", ge=0,
                         le=1)
    p_sa1: float = param(0.001, "Probability that a cell is stuck at g_max (the full-scale level).",
                         unit="probability", source="docs/hw-parameters.md §5.4: MNSIM Device_SAF 0.1 % [C]", ge=0,
                         le=1)
    r_wire: float = param(0.0, "Wire resistance per cell of the first-order IR-drop model (0: off; MNSIM 2.82).",
                          unit="ohm", source="docs/hw-parameters.md §5.8: IR drop off by default, MNSIM's 2.82 ohm "
                                             "per cell when on [C]", ge=0)
    chip: str = param("", "Chip file (.npz: stuck cells, variation and drift draws of every crossbar, spares "
                          "included; docs/array-model.md) that programs run on; empty: drawn from the compile seed.",
                      unit="path", source="assumption: no chip file")
    spare_rows: int = param(0, "Spare physical rows per crossbar beyond rows, onto which a placement may move rows.",
                            unit="rows", source="assumption: no redundancy", ge=0)
    spare_cols: int = param(0, "Spare physical columns per crossbar beyond cols, likewise.", unit="columns",
                            source="assumption: no redundancy", ge=0)
    allow_reload: bool = param(True, "Whether crossbars may be reprogrammed during a run when the model needs more "
                                     "cells than the crossbars hold (false: such a model is rejected).",
                               source="assumption: reloads allowed (each costs programming energy and time)")
    clock_mhz: float = param(1000.0, "Clock of the periphery.", unit="MHz",
                             source="docs/hw-parameters.md §4.1: PUMA 1 GHz [C]", gt=0)
    mvm_cycles: int = param(10, "Cycles of one pass (the read pulse of one input chunk), before its conversions.",
                            unit="cycles", source="docs/hw-parameters.md §4.2: a 10 ns read pulse per input bit "
                                                  "(NeuroSim readPulseWidth) [C]", ge=1)
    adc_ref_bits: int = param(8, "Resolution at which adc_pj, adc_ns and adc_area_um2 are given; at adc_bits they "
                                 "scale by the ADC laws of cimc.converters.", unit="bits",
                              source="docs/hw-parameters.md §4.1: ISAAC's 8-b ADC [C]", ge=1, le=16)
    adc_ns: float = param(0.78, "Time of one conversion at adc_ref_bits (one ADC's conversions run one after "
                                "another).", unit="ns",
                          source="[D] docs/hw-parameters.md §4.1: ISAAC 8 b at 1.28 GS/s [C]", gt=0)
    shift_add_cycles: int = param(1, "Cycles of one shift-add (pipelined behind the conversions).", unit="cycles",
                                  source="assumption: one adder per ADC taking one partial sum per cycle", ge=0)
    write_row_cycles: int = param(86, "Cycles to program one row of a crossbar (program-and-verify not included).",
                                  unit="cycles", source="[D] docs/hw-parameters.md §4.2: 11 us per 128 x 128 crossbar "
                                                        "(PUMA) / 128 rows at 1 GHz", ge=1)
    vec_lanes: int = param(16, "Elements the digital vector unit processes per cycle.", unit="lanes",
                           source="assumption: as sram-cim", ge=1)
    vec_op_cycles: int = shared_param("vec_op_cycles")
    dram_bytes_per_cycle: float = param(16.0, "Off-chip (DRAM) bandwidth.", unit="bytes/cycle",
                                        source="assumption: 16 GB/s at 1 GHz (an LPDDR4 x32 channel class)", gt=0)
    act_buffer_bytes: int = param(65536, "Input activation buffer feeding the crossbars.", unit="bytes",
                                  source="SCALE-Sim ifmap SRAM 64 kB (docs/hw-parameters.md §1.1) [C]", ge=1)
    out_buffer_bytes: int = param(65536, "Output buffer collecting the crossbars' results.", unit="bytes",
                                  source="SCALE-Sim ofmap SRAM 64 kB (docs/hw-parameters.md §1.1) [C]", ge=1)
    mvm_cell_pj: float = param(0.0088, "Energy of one cell read in one pass (V^2 G t).", unit="pJ",
                               source="[D] docs/hw-parameters.md §4.2: 0.2 V read, 10 ns pulse, (g_min + g_max) / 2 = "
                                      "22 uS: 0.04 V^2 x 22 uS x 10 ns", ge=0)
    dac_pj: float = param(0.417, "Energy of driving one word line for one pass with a 1-bit input; at dac_bits it "
                                 "scales by the DAC law of cimc.converters.", unit="pJ",
                          source="docs/hw-parameters.md §4.1: ISAAC's 1-b DAC, 0.417 pJ per drive [C]", ge=0)
    adc_pj: float = param(1.56, "Energy of one conversion at adc_ref_bits; at adc_bits it scales by the ADC energy "
                                "law of cimc.converters.", unit="pJ",
                          source="docs/hw-parameters.md §4.1: ISAAC 8-b ADC, 1.56 pJ per conversion [C/D]", ge=0)
    shift_add_pj: float = param(0.1, "Energy of one shift-add of a converted partial sum.", unit="pJ",
                                source="docs/hw-parameters.md §4.1: NeuRRAM 8-b shift-add 0.1 pJ [C]", ge=0)
    write_cell_pj: float = param(1.3, "Energy to program one cell (one write of a crossbar's cell).", unit="pJ",
                                 source="[D] docs/hw-parameters.md §4.2: 1.3 pJ per cell (PUMA) [D]", ge=0)
    vec_op_pj: float = shared_param("vec_op_pj")
    vec_mul_pj: float = shared_param("vec_mul_pj")
    buffer_pj_per_byte: float = shared_param("buffer_pj_per_byte")
    fp_mac_pj: float = shared_param("fp_mac_pj")
    noc_pj_per_byte: float = param(0.174, "Energy to move one byte between a buffer and a crossbar.",
                                   unit="pJ/byte", source="assumption: as sram-cim (Eyeriss NoC about 2x a MAC, "
                                                          "docs/hw-parameters.md §1.1)", ge=0)
    dram_pj_per_byte: float = param(64.0, "Energy to move one byte from or to DRAM (weight reloads, spills).",
                                    unit="pJ/byte", source="Accelergy CACTI plug-in: LPDDR4 8 pJ/bit "
                                                           "(docs/hw-parameters.md §1.1) [C]", ge=0)
    cell_area_um2: float = param(1.44, "Area of one 1T1R cell.", unit="um^2",
                                 source="docs/hw-parameters.md §4.1: MNSIM 1T1R cell 1.44 um^2 [C]", gt=0)
    adc_area_um2: float = param(1200.0, "Area of one ADC at adc_ref_bits (scaled by the ADC area law).", unit="um^2",
                                source="docs/hw-parameters.md §4.1: ISAAC 8-b ADC 1200 um^2 at 32 nm [C]", gt=0)
    dac_area_um2: float = param(0.166, "Area of one 1-bit word-line DAC (scaled by the DAC area law).", unit="um^2",
                                source="docs/hw-parameters.md §4.1: ISAAC 1-b DAC 0.166 um^2 at 32 nm [C]", gt=0)
    shift_add_area_um2: float = param(167.39, "Area of one shift-add unit (one per ADC): a 32-bit accumulator.",
                                      unit="um^2", source=f"[D] 32 x (1-b full adder + DFF) {GATES_28NM} "
                                                          f"{SCALE_AREA_28_TO_22NM}", gt=0)
    sram_bit_area_um2: float = shared_param("sram_bit_area_um2")
    vec_lane_area_um2: float = shared_param("vec_lane_area_um2")

    def check(self) -> Iterator[str]:
        """The array rules (:meth:`ArrayFigures.array_problems`), ``g_min < g_max``, no chip file when ideal."""
        yield from super().check()
        yield from self.array_problems()
        if self.ideal and self.chip:
            yield f"chip = {self.chip!r} with ideal = true: the ideal crossbar has no chip (drop one of them)"
        if self.g_min >= self.g_max:
            yield f"g_min = {self.g_min!r} uS must be < g_max = {self.g_max!r} uS (the conductance range)"
