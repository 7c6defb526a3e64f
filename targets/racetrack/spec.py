"""The racetrack spec: the hardware parameters of racetrack (domain-wall) memory with arithmetic at its ports.

The memory is ``mus`` macro units (MUs). An MU is ``tracks_per_mu`` nanowire tracks that shift together
(one shift driver, as RTSim's domain block cluster), each of ``domains_per_track`` data domains (plus
``domains_per_track - 1`` overflow domains, so a track can move its whole length past port 0) with ``ports_per_track``
access ports spaced evenly along it: port ``j`` sits over domain ``j * domains/ports + offset`` when the
MU is shifted by ``offset``. A weight word of ``b`` bits spans ``b`` adjacent tracks at one domain (one
bit per track), so an MU holds ``tracks_per_mu // b`` *lanes* of words. Next to every port of every lane
a MAC cell multiplies the word under the port by activations streamed from the activation buffer, bit
serially (one add of the shifted word per activation bit, the racetrack adder and in-memory Booth
multiplier the design descends from), into ``acc_regs`` accumulator registers, one per output position
of a block.

Cost model inputs (docs/hw-parameters.md §3; the racetrack figures there are the least confirmed of all
targets, so each source says which are estimates): one-domain shift, port read and write from RTSim's
DESTINY numbers [C] split per track and per bit [D]; the in-memory add from SPIMulator's 8-bit add [D],
whose energy unit is unconfirmed [U]; buffers, DRAM and the vector unit as the other targets.

Shift faults: each one-domain shift step of an MU over- or under-shifts by one domain with probability
``shift_fault_rate`` (half each), leaving its ports over the neighbouring domains until a guard check
(every ``guard_interval`` steps, ``0``: none) realigns it against marker domains.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from cimc.target import GATES_28NM, SCALE_AREA_28_TO_22NM, Spec, param, shared_param

__all__ = ["PLACEMENTS", "RacetrackSpec"]

PLACEMENTS = ("naive", "serpentine", "optimized")
"""How the lowering places weights along tracks and orders their reads (``docs/racetrack.md``)."""

_RTSIM = "RTSim Config/RM.config (DESTINY numbers; docs/hw-parameters.md §3.1, §3.2)"
_SPIM = "SPIMulator (docs/hw-parameters.md §3.1, §3.2)"


@dataclass(frozen=True)
class RacetrackSpec(Spec):
    """Hardware parameters of the racetrack target."""

    target: ClassVar[str] = "racetrack"

    mus: int = param(256, "Macro units (MUs): groups of tracks that shift together.", unit="MUs",
                     source=f"{_RTSIM}: 256 DBCs per bank [C]", ge=1)
    tracks_per_mu: int = param(32, "Tracks of one MU; a b-bit weight word spans b of them, so an MU holds "
                                   "tracks_per_mu // b lanes of words.", unit="tracks",
                               source=f"{_RTSIM}: WordSize 32 tracks per DBC [C]", ge=1)
    domains_per_track: int = param(64, "Data domains along one track (each holds one bit; a track also has "
                                       "domains_per_track - 1 overflow domains to shift its data past port 0).",
                                   unit="domains",
                                   source=f"{_RTSIM}: DOMAINS 64 [C]; Choong et al. (JSA 2022) also use 64 [C2]", ge=1)
    ports_per_track: int = param(2, "Access ports along each track, evenly spaced: port j reads the domains "
                                    "j*domains/ports .. (j+1)*domains/ports - 1 as the track shifts.", unit="ports",
                                 source=f"{_RTSIM}: nPorts 2 [C]", ge=1)
    weight_bits_max: int = param(8, "Widest weight word (it spans weight-bits tracks).", unit="bits",
                                 source="docs/architecture.md, the integer contract (weights of 2 to 8 bits)", ge=2,
                                 le=8)
    act_bits_max: int = param(8, "Widest activation; the MAC cells take it one bit per add.", unit="bits",
                              source="docs/architecture.md, the integer contract (activations of 2 to 8 bits)", ge=2,
                              le=8)
    acc_regs: int = param(16, "Accumulator registers (32-bit) of one MAC cell: the output positions one sweep of "
                              "the tracks serves (the position block of the optimized placement).", unit="registers",
                          source="assumption: a 16-entry register file per MAC cell (its area is counted)", ge=1)
    placement: str = param("optimized", "How weights are placed along tracks and read: naive (row-major, one port, "
                                        "rewound for every output position), serpentine (alternate directions "
                                        "between positions), optimized (every port, balanced segments, blocks of "
                                        "acc_regs positions per sweep).",
                           source="docs/racetrack.md, placements (naive and serpentine are the baselines the "
                                  "polyhedral racetrack compiler and ShiftsReduce compare with)")
    allow_reload: bool = param(True, "Whether weights may be rewritten into MUs during a run when the model needs "
                                     "more than mus MUs (false: the lowering rejects such a model).",
                               source="docs/architecture.md, Targets: a model larger than the memory reuses it "
                                      "with weight reloads; assumption: reloads allowed")
    shift_fault_rate: float = param(0.0, "Probability that one one-domain shift step of an MU over- or under-shifts "
                                         "by one domain (half each); the executor applies them with the run's seed.",
                                    unit="per step", source="docs/hw-parameters.md §5.8: racetrack shift-position "
                                                            "error rate as a parameter, default 0", ge=0, le=1)
    guard_interval: int = param(0, "Realign every MU against its marker domains after this many of its shift steps "
                                   "and at the end of each instruction (0: no guard); each check reads one domain "
                                   "of every track.", unit="steps",
                                source="assumption: marker-domain realignment (docs/racetrack.md, shift faults)", ge=0)
    clock_mhz: float = param(1000.0, "Clock of the MAC cells, the controller and the vector unit.", unit="MHz",
                             source=f"[D] {_SPIM}: a shift takes 2 of its cycles and 2.14 ns in RTSim, so one cycle "
                                    "is about 1 ns [U]", gt=0)
    shift_ns: float = param(2.14192, "Time of one one-domain shift step of an MU.", unit="ns",
                            source=f"{_RTSIM}: shift latency 2.14192 ns [C]", gt=0)
    read_ns: float = param(1.61338, "Time to read the words under the ports.", unit="ns",
                           source=f"{_RTSIM}: read latency 1.61338 ns [C]", gt=0)
    write_ns: float = param(4.84522, "Time to write one word at a port.", unit="ns",
                            source=f"{_RTSIM}: write latency 4.84522 ns [C]", gt=0)
    add_cycles: int = param(451, "Cycles of one add of a MAC cell (a bit-serial multiply is act_bits adds).",
                            unit="cycles", source=f"[D] {_SPIM}: an 8-bit in-memory add on 512 lanes takes 451 "
                                                  "cycles (its ADD branch)", ge=1)
    shift_pj: float = param(0.609375, "Energy of shifting one track by one domain.", unit="pJ",
                            source=f"[D] {_RTSIM}: Esh 0.0195 nJ per 32-track DBC [C] / 32 tracks", ge=0)
    read_pj_per_bit: float = param(2.503, "Energy of reading one bit at a port.", unit="pJ",
                                   source=f"[D] {_RTSIM}: Erd 0.080096 nJ per 32-bit word [C] / 32", ge=0)
    write_pj_per_bit: float = param(3.406, "Energy of writing one bit at a port.", unit="pJ",
                                    source=f"[D] {_RTSIM}: Ewr 0.108981 nJ per 32-bit word [C] / 32", ge=0)
    add_pj: float = param(0.7676, "Energy of one add of a MAC cell.", unit="pJ",
                          source=f"[D] {_SPIM}: an 8-bit add on 512 lanes costs 393 energy units, 0.7676 per lane; "
                                 "the unit is taken as pJ [U]", ge=0)
    vec_lanes: int = param(16, "Elements the digital vector unit processes per cycle.", unit="lanes",
                           source="assumption: as sram-cim's vector unit", ge=1)
    vec_op_cycles: int = shared_param("vec_op_cycles")
    dram_bytes_per_cycle: float = param(16.0, "Off-chip (DRAM) bandwidth.", unit="bytes/cycle",
                                        source="assumption: 16 GB/s at 1 GHz, an LPDDR4 x32 channel class "
                                               "(not in docs/hw-parameters.md)", gt=0)
    act_buffer_bytes: int = param(65536, "Activation buffer that streams inputs to the MAC cells.", unit="bytes",
                                  source="SCALE-Sim configs/scale.cfg ifmap SRAM 64 kB (docs/hw-parameters.md §1.1) "
                                         "[C], the other targets' size for a like-for-like comparison", ge=1)
    out_buffer_bytes: int = param(65536, "Output buffer collecting the accumulators.", unit="bytes",
                                  source="SCALE-Sim configs/scale.cfg ofmap SRAM 64 kB (docs/hw-parameters.md §1.1) "
                                         "[C], the other targets' size for a like-for-like comparison", ge=1)
    vec_op_pj: float = shared_param("vec_op_pj")
    vec_mul_pj: float = shared_param("vec_mul_pj")
    buffer_pj_per_byte: float = shared_param("buffer_pj_per_byte")
    fp_mac_pj: float = shared_param("fp_mac_pj")
    dram_pj_per_byte: float = param(64.0, "Energy to move one byte from or to DRAM (weight writes).",
                                    unit="pJ/byte", source="Accelergy CACTI plug-in type2energy: LPDDR4 8 pJ/bit "
                                                           "(docs/hw-parameters.md §1.1, §1.2) [C]", ge=0)
    domain_area_um2: float = param(0.001936, "Area of one domain of a track (data and overflow domains alike).",
                                   unit="um^2", source="[D] 4 F^2 (FPIRM, Ollivier et al.: a domain-wall cell of 1 "
                                                       "to 4 F^2, docs/hw-parameters.md §3.1 [C2]) at F = 22 nm",
                                   gt=0)
    port_area_um2: float = param(0.01936, "Area of one access port of one track (its magnetic tunnel junction and "
                                          "access transistor).", unit="um^2",
                                 source="[U] assumption: 40 F^2 at F = 22 nm, a one-transistor one-MTJ cell", gt=0)
    mac_cell_area_um2: float = param(167.39, "Area of one MAC cell: a bit-serial shift-and-add into a 32-bit "
                                             "accumulator.", unit="um^2",
                                     source=f"[D] 32 x (1-b full adder + DFF) = 32 x (4.789 + 3.684) um^2 {GATES_28NM} "
                                            f"{SCALE_AREA_28_TO_22NM}; a domain-wall adder's own area is not in the "
                                            "sources read [U]", gt=0)
    sram_bit_area_um2: float = shared_param("sram_bit_area_um2")
    vec_lane_area_um2: float = shared_param("vec_lane_area_um2")

    def check(self) -> Iterator[str]:
        """Every port gets an equal segment of at least one domain, a placement cimc knows, a lane per MU."""
        yield from super().check()
        if self.domains_per_track < self.ports_per_track or self.domains_per_track % self.ports_per_track:
            yield (f"domains_per_track = {self.domains_per_track} must be a multiple of ports_per_track = "
                   f"{self.ports_per_track} (each port reads an equal segment of at least one domain)")
        if self.tracks_per_mu < self.weight_bits_max:
            yield (f"tracks_per_mu = {self.tracks_per_mu} must be >= weight_bits_max = {self.weight_bits_max} "
                   f"(a weight word spans one track per bit)")
        if self.placement not in PLACEMENTS:
            close = difflib.get_close_matches(self.placement, PLACEMENTS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            yield f"placement = {self.placement!r} is not one of {', '.join(PLACEMENTS)}{hint}"

    @property
    def segment(self) -> int:
        """Domains each port reads: ``domains_per_track // ports_per_track``."""
        return self.domains_per_track // self.ports_per_track

    def lanes(self, bits: int) -> int:
        """Lanes of ``bits``-bit words an MU holds: ``tracks_per_mu // bits``."""
        return self.tracks_per_mu // bits
