"""sram-cim: several SRAM compute-in-memory macros (MARS-like) beside a digital vector unit.

The target is this package: ``spec`` (:class:`SramCimSpec`, the hardware parameters), ``ops`` (the
``sram.load`` / ``sram.mvm`` instructions and their executor), ``lowering`` (``lower-sram-cim``) and
``cost`` (``op_cost``); :class:`SramCimTarget` declares them to the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

from cimc.cim.chip import Chip, chip_for
from cimc.cim.device import CellDevice
from cimc.cim.machine import DEVICE
from cimc.cost import AreaPart, Cost
from cimc.ir.core import Node
from cimc.passes.calibrate_adc import CalibrateAdcPass
from cimc.target import VECTOR_OPS, Capabilities, Target
from cimc.targets.sram_cim import cost
from cimc.targets.sram_cim.lowering import LowerSramCimPass
from cimc.targets.sram_cim.ops import OPS
from cimc.targets.sram_cim.spec import SramCimSpec

__all__ = ["SramCimSpec", "SramCimTarget"]


@dataclass(frozen=True)
class SramCimTarget(Target):
    """The sram-cim target: SRAM CIM macros, bit-serial inputs, ADC per column group, a vector unit."""

    name: ClassVar[str] = "sram-cim"
    Spec: ClassVar[type[SramCimSpec]] = SramCimSpec
    description: ClassVar[str] = ("SRAM compute-in-memory macros (MARS-like): bit-serial inputs, multi-bit "
                                  "weights across columns, rows_per_op word lines at once, an ADC per column "
                                  "group, pruned row blocks skipped, a digital vector unit.")
    ops = OPS
    lowering_passes = (LowerSramCimPass,)
    program_passes = (CalibrateAdcPass,)
    spec: SramCimSpec = None  # type: ignore[assignment]  # None until __post_init__ sets the defaults

    def capabilities(self) -> Capabilities:
        """Macro geometry and bit limits from the spec; matrix ops with constant weights on the macros, the rest
        on the vector unit (the shared ``VECTOR_OPS``: the matmuls of two activations of attention run there,
        on its multipliers, not written into a macro)."""
        s = self.spec
        return Capabilities(rows=s.rows, cols=s.cols, cell_bits=s.cell_bits, weight_bits_max=s.weight_bits_max,
                            act_bits_max=s.act_bits_max, dac_bits=s.dac_bits, adc_bits=s.adc_bits,
                            rows_per_op=s.rows_per_op, arrays=s.macros, skips_zero_blocks=s.skip_zero_blocks,
                            vector_ops=VECTOR_OPS, own_ops=("sram.",), spare_rows=s.spare_rows,
                            spare_cols=s.spare_cols, cols_per_adc=s.cols_per_adc)

    def default_pipeline(self) -> str:
        """Cleanup and quantization, then tiling of the weights onto the macros; on a chip with stuck cells
        (``p_sa0``, ``p_sa1`` or a chip file), then error-aware placement (``map-errors``)."""
        s = self.spec
        return super().default_pipeline() + ",tile" + (",map-errors" if s.p_sa0 or s.p_sa1 or s.chip else "")

    def chip(self, seed: int = 0, chip: int = 0) -> Chip | None:
        """The chip of the spec: its chip file, else one sampled from ``p_sa0``/``p_sa1`` with ``seed`` (chip 0),
        or ``(seed, chip)`` (``None`` when both rates are 0): every macro's physical cells, spares included."""
        return _chip(self.spec, seed, chip)

    def machine(self, seed: int = 0, chip: int = 0) -> dict[str, Any]:
        """Programs run on the spec's chip ``chip``, with its read noise (an ideal machine when there is neither)."""
        return _machine(self.spec, seed, chip)

    def op_cost(self, node: Node) -> Cost:
        """Cycles and energy of one program op (the model: :mod:`cimc.targets.sram_cim.cost`)."""
        return cost.op_cost(node, self.spec)

    def area(self) -> list[AreaPart]:
        """Cells, ADCs and shift-adds (one per ``cols_per_adc`` columns), word-line DACs (one per row), the
        activation and output buffers and the vector lanes, each from its spec parameter and its source;
        the ADCs at ``adc_bits`` and the DACs at ``dac_bits`` (:mod:`cimc.converters`)."""
        return cost.area(self.spec)


@lru_cache(maxsize=8)
def _chip(spec: SramCimSpec, seed: int, index: int = 0) -> Chip | None:
    return chip_for(spec.chip, spec.macros, spec.rows + spec.spare_rows, spec.cols + spec.spare_cols,
                    p_sa0=spec.p_sa0, p_sa1=spec.p_sa1, seed=(seed, index) if index else seed)


@lru_cache(maxsize=8)
def _machine(spec: SramCimSpec, seed: int, index: int = 0) -> dict[str, Any]:
    chip = _chip(spec, seed, index)
    if chip is None and not spec.read_noise:
        return {}
    if chip is None:
        chip = Chip.sample(spec.macros, spec.rows + spec.spare_rows, spec.cols + spec.spare_cols, variation=False)
    return {DEVICE: CellDevice(chip, 1 << spec.cell_bits, read_noise=spec.read_noise)}
