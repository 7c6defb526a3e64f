"""racetrack: racetrack (domain-wall) memory whose access ports multiply and accumulate, beside a vector unit.

The target is this package: ``spec`` (:class:`RacetrackSpec`, the hardware parameters), ``ops`` (the
``rt.write`` / ``rt.shift`` / ``rt.mac`` instructions and their executor, shift faults included),
``lowering`` (``lower-racetrack``: the placements and sweeps) and ``cost`` (``op_cost``, ``area``);
:class:`RacetrackTarget` declares them to the driver. ``docs/racetrack.md`` describes the machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from cimc.cost import AreaPart, Cost
from cimc.ir.core import Node
from cimc.target import VECTOR_OPS, Capabilities, Target
from cimc.targets.racetrack import cost
from cimc.targets.racetrack.lowering import LowerRacetrackPass
from cimc.targets.racetrack.ops import OPS
from cimc.targets.racetrack.spec import RacetrackSpec

__all__ = ["RacetrackSpec", "RacetrackTarget"]


@dataclass(frozen=True)
class RacetrackTarget(Target):
    """The racetrack target: weights along shifting tracks, bit-serial MAC cells at the ports, a vector unit."""

    name: ClassVar[str] = "racetrack"
    Spec: ClassVar[type[RacetrackSpec]] = RacetrackSpec
    description: ClassVar[str] = ("Racetrack (domain-wall) memory with in-memory arithmetic: weights along tracks "
                                  "that shift past access ports, bit-serial MAC cells at the ports, shift-aware "
                                  "placement (naive, serpentine, optimized), shift faults with a guard, a digital "
                                  "vector unit.")
    ops = OPS
    lowering_passes = (LowerRacetrackPass,)
    spec: RacetrackSpec = None  # type: ignore[assignment]

    def capabilities(self) -> Capabilities:
        """The memory as arrays: an MU is an array of ``domains_per_track`` rows (domains) by ``tracks_per_mu``
        columns (tracks) of 1-bit cells, ``ports_per_track`` rows read at once; activations enter bit-serially;
        no ADC (the MAC cells are digital). Matrix ops on the MUs, the rest on the vector unit (the shared
        ``VECTOR_OPS`` plus float ``LSTM``)."""
        s = self.spec
        return Capabilities(rows=s.domains_per_track, cols=s.tracks_per_mu, cell_bits=1,
                            weight_bits_max=s.weight_bits_max, act_bits_max=s.act_bits_max, dac_bits=1, adc_bits=None,
                            rows_per_op=s.ports_per_track, arrays=s.mus, vector_ops=(*VECTOR_OPS, "LSTM"),
                            own_ops=("rt.",))

    def op_cost(self, node: Node) -> Cost:
        """Cycles, energy, shifts of one program op (the model: :mod:`cimc.targets.racetrack.cost`)."""
        return cost.op_cost(node, self.spec)

    def area(self) -> list[AreaPart]:
        """Track domains, ports, MAC cells with their accumulators, buffers and vector lanes."""
        return cost.area(self.spec)

    def cost_notes(self) -> list[str]:
        """How shifting and computing overlap in the cost of ``rt.mac``, and what the guard costs."""
        return ["racetrack rt.mac: the MAC cells work on the words just read while the tracks shift to the next "
                "state, so a state costs a read plus the larger of the shift and the MACs (shifts hide behind "
                "multiplies that take longer); rewinds and rt.shift are not overlapped",
                "racetrack shifts: one-domain steps summed over tracks (an MU step of T tracks counts T)"]
