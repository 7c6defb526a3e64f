"""How ADC and DAC cost scales with resolution: energy per conversion, conversion time, area.

One published model, ZigZag-IMC's analog in-memory-computing array unit (``AimcArrayUnit``
``get_adc_cost`` / ``get_dac_cost``, fitted to three 28 nm AIMC macros; docs/hw-parameters.md §2.2), gives
the *shape* of each cost as a function of the resolution ``B`` (bits):

====================  ==================================  =============================================
quantity              law ``f(B)``                        constants
====================  ==================================  =============================================
ADC energy            ``k5*B + k6*4**B``                  k5 = 100 fF, k6 = 0.001 fF (times Vdd^2)
ADC conversion time   ``B * (k3*rows + k4)``              k3 = 0.00653 ns per row, k4 = 0.640 ns
ADC area              ``10**(k1*B + k2) * 2**B``          k1 = -0.0369, k2 = 1.206 (um^2)
DAC energy            ``k0 * B``                          k0 = 50 fF (times Vdd^2), per driven row
DAC conversion time   ``1``                               ZigZag neglects it; MNSIM 2.0 samples its
                                                          DACs at 1 GS/s at every resolution
DAC area              ``2**B``                            ISAAC's DAC table as MNSIM 2.0 ``DAC.py``
                                                          lists it (0.166 um^2 at 1 b, x2 per bit)
====================  ==================================  =============================================

The ADC energy law is linear at low resolution (comparators and logic) and grows as ``4**B`` once
the thermal-noise-limited capacitance dominates, as the Murmann ADC survey's energy bound does
(docs/hw-parameters.md §2.2: 0.46 pJ at 4 and 5 b, 0.85 pJ at 8 b in 22 nm); a Walden figure of merit
(``E = FoM * 2**B``) would overstate the cost of 3-6 b ADCs.

A target does not take the absolute 28 nm values: its spec gives each figure at a reference
resolution, calibrated to the published macro it models (bottom-up component models undershoot
published macro efficiency 3-6x, docs/hw-parameters.md §2.3), and :func:`scaled` moves it along the law:
``value(B) = value(B_ref) * f(B) / f(B_ref)``. So a resolution sweep changes energy, latency and
area as the published model says, while the default point stays the calibrated one. The conversion
time's row term (``k3 * rows``, bit-line settling) is held at the reference point: only the bits
move it (:data:`ADC_TIME` at a fixed row count is proportional to ``B``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cimc.errors import InputError

__all__ = ["ADC_AREA", "ADC_ENERGY", "ADC_TIME", "DAC_AREA", "DAC_ENERGY", "DAC_TIME", "LAWS", "Law", "scaled"]

_ZIGZAG = "ZigZag-IMC AimcArrayUnit (docs/hw-parameters.md §2.2)"


@dataclass(frozen=True)
class Law:
    """One cost law: ``f(bits)`` up to a constant factor, with its formula and source for reports."""

    quantity: str
    formula: str
    source: str
    f: Callable[[int], float]

    def ratio(self, bits: int, ref_bits: int) -> float:
        """``f(bits) / f(ref_bits)``: how much the quantity grows from the reference resolution."""
        for b in (bits, ref_bits):
            if not isinstance(b, int) or isinstance(b, bool) or b < 1:
                raise InputError(f"{self.quantity}: a resolution must be an integer >= 1 bit, got {b!r}")
        return self.f(bits) / self.f(ref_bits)

    def to_dict(self) -> dict[str, str]:
        """JSON-ready description (quantity, formula, source)."""
        return {"quantity": self.quantity, "formula": self.formula, "source": self.source}


ADC_ENERGY = Law("ADC energy per conversion", "k5*B + k6*4^B, k5 = 100 fF, k6 = 0.001 fF", _ZIGZAG,
                 lambda b: 100.0 * b + 0.001 * 4.0 ** b)
ADC_TIME = Law("ADC conversion time", "B*(k3*rows + k4), rows held at the reference point", _ZIGZAG, float)
ADC_AREA = Law("ADC area", "10^(k1*B + k2)*2^B um^2, k1 = -0.0369, k2 = 1.206", _ZIGZAG,
               lambda b: 10.0 ** (-0.0369 * b + 1.206) * 2.0 ** b)
DAC_ENERGY = Law("DAC energy per driven row", "k0*B, k0 = 50 fF", _ZIGZAG, float)
DAC_TIME = Law("DAC conversion time", "constant: MNSIM 2.0 DACs sample at 1 GS/s at every resolution",
               "MNSIM 2.0 MNSIM/Hardware_Model/DAC.py (docs/hw-parameters.md §4.1)", lambda b: 1.0)
DAC_AREA = Law("DAC area", "2^B: ISAAC's DAC table, 0.166 um^2 at 1 b doubling per bit",
               "MNSIM 2.0 MNSIM/Hardware_Model/DAC.py, after ISAAC (docs/hw-parameters.md §4.1)", lambda b: 2.0 ** b)
LAWS = (ADC_ENERGY, ADC_TIME, ADC_AREA, DAC_ENERGY, DAC_TIME, DAC_AREA)
"""Every law, in the order reports list them."""


def scaled(law: Law, value_at_ref: float, bits: int, ref_bits: int) -> float:
    """``value_at_ref`` (the quantity at ``ref_bits``) moved to ``bits`` along ``law``."""
    return value_at_ref * law.ratio(bits, ref_bits)
