"""The dcim spec: the hardware parameters of digital SRAM CIM macros and their vector unit.

A macro holds ``rows`` x ``cols`` 1-bit cells; a weight of b bits takes b adjacent columns. All rows
are on at once and an adder tree per column sums them exactly, one input bit per cycle (bit-serial),
so there is no ADC and no lossy step. Defaults: docs/hw-parameters.md §2.3 (digital SRAM-CIM).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from cimc.target import Spec, param, shared_param

__all__ = ["DcimSpec"]

_DIGITAL = "docs/hw-parameters.md §2.3, digital SRAM-CIM"
_CHIH = "Chih et al., ISSCC 2021: 1 to 8 bits (docs/hw-parameters.md §2.1) [U]"


@dataclass(frozen=True)
class DcimSpec(Spec):
    """Hardware parameters of the dcim target."""

    target: ClassVar[str] = "dcim"

    macros: int = param(8, "Number of macros working in parallel.", unit="macros", source="assumption", ge=1)
    rows: int = param(64, "Rows of one macro, all summed at once by the adder trees.", unit="rows",
                      source=f"{_DIGITAL}: 64 rows, all on at once; an adder tree", ge=1)
    cols: int = param(64, "Columns of one macro (a weight of b bits takes b of them).", unit="columns",
                      source="assumption: square 64 x 64 arrays of 1-bit cells", ge=1)
    weight_bits_max: int = param(8, "Widest weight.", unit="bits",
                                 source=_CHIH, ge=1, le=8)
    act_bits_max: int = param(8, "Widest input activation (fed one bit per cycle).", unit="bits",
                              source=_CHIH, ge=1, le=8)
    clock_mhz: float = param(400.0, "Clock of the macros and the vector unit.", unit="MHz",
                             source=f"{_DIGITAL}: 200 to 400 MHz (DIMC1, DIMC3, DIMC4) [C]", gt=0)
    bitop_pj: float = param(0.0014, "Energy of one 1b x 1b multiply-accumulate in the adder tree.", unit="pJ",
                            source=f"{_DIGITAL}: 1.4 fJ (89 TOPS/W at 4b x 4b, Chih et al., ISSCC 2021) [U]", ge=0)
    vec_lanes: int = param(16, "Elements the digital vector unit processes per cycle.", unit="lanes",
                           source="assumption", ge=1)
    vec_op_cycles: int = shared_param("vec_op_cycles")
    vec_op_pj: float = shared_param("vec_op_pj")
    vec_mul_pj: float = shared_param("vec_mul_pj")
    fp_mac_pj: float = shared_param("fp_mac_pj")
    buffer_pj_per_byte: float = shared_param("buffer_pj_per_byte")

    def check(self) -> Iterator[str]:
        """A weight fits in a row of cells."""
        yield from super().check()
        if self.weight_bits_max > self.cols:
            yield f"weight_bits_max = {self.weight_bits_max} needs more columns than cols = {self.cols}"
