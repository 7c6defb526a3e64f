"""memristor: ReRAM (or PCM) crossbars with device non-idealities beside a digital vector unit.

The target is this package: ``spec`` (:class:`MemristorSpec`, the hardware and its non-idealities), ``ops`` (the
``xbar.load`` / ``xbar.mvm`` instructions and their executor), ``lowering`` (``lower-memristor``) and ``cost``
(``op_cost``, ``area``); :class:`MemristorTarget` declares them to the driver. Programs run on the shared array
model (:mod:`cimc.cim`) with an :class:`~cimc.cim.analog.AnalogDevice`: the chip is drawn from the compile seed
(chip ``i`` of a Monte Carlo run from ``(seed, i)``, :meth:`MemristorTarget.machine`) or read from the spec's chip
file; ``ideal = true`` is the ideal device.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

from cimc.cim.adc import lossless_adc_bits
from cimc.cim.analog import AnalogDevice, AnalogModel
from cimc.cim.chip import Chip, ChipDraw, ChipSource
from cimc.cim.machine import DEVICE
from cimc.cost import AreaPart, Cost
from cimc.errors import InputError
from cimc.ir.core import Node
from cimc.passes.calibrate_adc import CalibrateAdcPass
from cimc.target import VECTOR_OPS, Capabilities, Target
from cimc.targets.memristor import cost
from cimc.targets.memristor.lowering import LowerMemristorPass
from cimc.targets.memristor.ops import OPS
from cimc.targets.memristor.spec import MemristorSpec

__all__ = ["MemristorSpec", "MemristorTarget", "analog_model", "resolved_adc_bits"]


@dataclass(frozen=True)
class MemristorTarget(Target):
    """The memristor target: analog crossbars of multi-level cells, DAC inputs, ADC outputs, a vector unit."""

    name: ClassVar[str] = "memristor"
    Spec: ClassVar[type[MemristorSpec]] = MemristorSpec
    description: ClassVar[str] = ("ReRAM/PCM crossbars: multi-level cells, signed weights as differential pairs "
                                  "(or an offset), dac_bits-wide inputs, an ADC per column group, programming "
                                  "variation, read noise, drift, stuck cells and IR drop from a seeded chip, a "
                                  "digital vector unit.")
    ops = OPS
    lowering_passes = (LowerMemristorPass,)
    program_passes = (CalibrateAdcPass,)
    spec: MemristorSpec = None  # type: ignore[assignment]

    def capabilities(self) -> Capabilities:
        """Crossbar geometry and bit limits from the spec; matrix ops with constant weights on the crossbars, the rest
        on the vector unit (the shared ``VECTOR_OPS``: attention's matmuls of two activations run there)."""
        s = self.spec
        return Capabilities(rows=s.rows, cols=s.cols, cell_bits=s.cell_bits, weight_bits_max=s.weight_bits_max,
                            act_bits_max=s.act_bits_max, dac_bits=s.dac_bits, adc_bits=resolved_adc_bits(s),
                            rows_per_op=s.rows_per_op, arrays=s.crossbars, skips_zero_blocks=True,
                            vector_ops=VECTOR_OPS, own_ops=("xbar.",), spare_rows=s.spare_rows,
                            spare_cols=s.spare_cols, cols_per_adc=s.cols_per_adc)

    def default_pipeline(self) -> str:
        """Cleanup and quantization, then tiling of the weights onto the crossbars in the spec's signed encoding; on
        a chip whose cells are fixed before it runs (stuck cells, programming variation or drift: what each chip's
        draws hold), then error-aware placement (``map-errors``). Read noise is drawn per read: no placement
        avoids it."""
        s, m = self.spec, analog_model(self.spec)
        fixed = _faulty(s) or (m is not None and (m.varies or m.drifts))
        return super().default_pipeline() + f",tile{{encoding={s.signed}}}" + (",map-errors" if fixed else "")

    def chip(self, seed: int = 0, chip: int = 0) -> Chip | None:
        """Chip ``chip`` of ``seed`` as data (every crossbar's stuck cells, variation and drift draws, spares
        included): the spec's chip file, or drawn from ``(seed, chip)``; ``None`` for the ideal crossbar."""
        source = _source(self.spec, seed, chip)
        if source is None or isinstance(source, Chip):
            return source
        assert isinstance(source, ChipDraw)
        return source.chip(self.spec.crossbars)

    def machine(self, seed: int = 0, chip: int = 0) -> dict[str, Any]:
        """Programs run on chip ``chip`` of ``seed`` (:meth:`chip`) with the spec's device model; the ideal machine
        when nothing is non-ideal."""
        return _machine(self.spec, seed, chip)

    def op_cost(self, node: Node) -> Cost:
        """Cycles and energy of one program op (the model: :mod:`cimc.targets.memristor.cost`)."""
        return cost.op_cost(node, self.spec)

    def area(self) -> list[AreaPart]:
        """Cells, ADCs, DACs, shift-adds, buffers and vector lanes (:func:`cimc.targets.memristor.cost.area`)."""
        return cost.area(self.spec)


def resolved_adc_bits(s: MemristorSpec) -> int:
    """The ADC resolution programs use: ``adc_bits``, or the lossless one (one bit more for a differential pair's
    signed sum) when it is 0 or the crossbar is ideal."""
    lossless = lossless_adc_bits(s.rows_per_op, s.dac_bits, s.cell_bits) + (s.signed == "differential")
    return lossless if s.ideal or s.adc_bits == 0 else s.adc_bits


def analog_model(s: MemristorSpec) -> AnalogModel | None:
    """The device model the spec describes (``noise = false``: no programming variation, read noise or drift;
    ``ideal = true``: nothing at all, ``None``)."""
    if s.ideal:
        return None
    on = s.noise
    return AnalogModel(g_min=s.g_min, g_max=s.g_max, prog_model=s.prog_model, prog_scale=s.prog_scale if on else 0.0,
                       prog_sigma=s.prog_sigma, read_noise=s.read_noise if on else 0.0,
                       drift=s.drift if on else "none", nu_mean=s.nu_mean, nu_std=s.nu_std,
                       t_inference=s.t_inference, t0=s.t0, compensate=s.drift_compensation, r_wire=s.r_wire)


def _faulty(s: MemristorSpec) -> bool:
    return not s.ideal and (s.p_sa0 > 0 or s.p_sa1 > 0 or bool(s.chip))


def _perturbs(s: MemristorSpec, m: AnalogModel | None) -> bool:
    return m is not None and (m.varies or m.read_noise > 0 or m.drifts or m.r_wire > 0 or _faulty(s))


def _source(s: MemristorSpec, seed: int, chip: int) -> ChipSource | None:
    m = analog_model(s)
    if not _perturbs(s, m):
        return None
    assert m is not None
    R, C = s.rows + s.spare_rows, s.cols + s.spare_cols
    if s.chip:
        loaded = _chip_file(s.chip, s.crossbars, R, C)
        need = (["variation"] if m.varies and loaded.variation is None else []) + \
            [f"cell.{k}" for k in m.cells if k not in loaded.cells]
        if need:
            raise InputError(f"chip file {s.chip}: the spec's device model needs the members {need}, which it lacks")
        return loaded
    return ChipDraw(R, C, p_sa0=s.p_sa0, p_sa1=s.p_sa1, seed=(seed, chip), variation=m.varies, cells=m.cells)


@lru_cache(maxsize=4)
def _chip_file(path: str, crossbars: int, rows: int, cols: int) -> Chip:
    chip = Chip.load(path)
    why = chip.fits(crossbars, rows, cols)
    if why:
        raise InputError(f"chip file {path}: {why} (the spec's crossbars, spares included)")
    return chip


def _machine(s: MemristorSpec, seed: int, chip: int) -> dict[str, Any]:
    source = _source(s, seed, chip)
    if source is None:
        return {}
    m = analog_model(s)
    assert m is not None
    return {DEVICE: AnalogDevice(m, source, 1 << s.cell_bits)}
