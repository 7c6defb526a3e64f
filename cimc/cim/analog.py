"""Analog (resistive) cells: weight-to-conductance mapping and the device model of a memristive crossbar.

Mapping (:class:`Conductance`, linear, hw-parameters.md §5.1): a cell at level ``L`` of a column whose
*full-scale* level is ``F`` (the level mapped to ``g_max``: the cell's top level ``2**cell_bits - 1``, the
layer's largest level of that slice, or the column's largest level: the load's ``full_scale``, see
docs/array-model.md) is programmed to ``G = g_min + (g_max - g_min) * L / F``. The periphery's inverse maps a
read back to levels, ``L = (G - g_min) * F / (g_max - g_min)``: the ``g_min`` background is subtracted (a
differential pair's two columns cancel it; a single column subtracts ``g_min * sum(x)`` digitally) and the
column's gain ``F / (g_max - g_min)`` applied, so an ideal array reads exactly the levels written. A
differential weight is a pair of such cells, ``w ∝ G(+) - G(-)`` (aihwkit ``SinglePairConductanceConverter``).

:class:`AnalogDevice` is the device (:class:`cimc.cim.device.Device`) of such an array, from an
:class:`AnalogModel` (the parameters of the formulas of :mod:`cimc.cim.noise`) and a chip source (a chip
file, or arrays drawn from a seed: :mod:`cimc.cim.chip`). Writing levels ``L`` to array ``a``:

1. ``G = g_min + (g_max - g_min) * L / F`` (target conductances);
2. programming variation: ``G1 = max(0, G + prog_scale * sigma(G) * z)``, ``z`` the chip's ``variation``;
3. stuck cells: SA0 holds ``g_min``, SA1 ``g_max`` (no variation, no drift);
4. drift to ``t_inference``: ``G2 = G1 * ((t0 + t_inference) / t0)**-nu`` for working cells, ``nu`` from
   the target conductance and the chip's ``drift`` draw; with global compensation, every conductance of the
   array (stuck cells included) is scaled by the ratio of the array's conductance sums before and after drift (a
   reference read of every column, :func:`cimc.cim.noise.drift_compensation`);
5. IR drop (first order): ``G3 = G2 / (1 + G2 * r_wire * (R - i + j + 1))``;
6. stored levels ``L' = (G3 - g_min) * F / (g_max - g_min)``, computed as ``L`` plus the change each step
   made, so that a step that changes nothing leaves the level exact (a stuck cell reads exactly 0 or ``F``
   without IR drop);
7. when any of steps 2, 4 or 5 is on, ``L'`` rounded to the nearest multiple of ``2**-q`` levels, ``q = 16 - b``
   with ``b`` the bits of ``F`` (:func:`cimc.cim.device.fine_grid`): a conductance grid of at most ``2**-15 (g_max -
   g_min)`` (1.1 nS at the defaults, 2.7e-5 of ``g_max``, 370 times finer than one cell's 1 % read noise). Whole
   levels stay whole, and every analog column sum the crossbar computes is then a sum of multiples of ``2**-q``
   that it proves exact in float32 or float64, the same bits whatever the BLAS (docs/memristor.md).

Reading: each cell read adds Gaussian noise of ``read_noise * g_max`` (µS), i.e. ``read_noise * g_max * F /
(g_max - g_min)`` level units per cell (:meth:`AnalogDevice.read_sigma`); the crossbar draws the sum over a
conversion's rows from the run's generator.
"""

from __future__ import annotations

import hashlib
from dataclasses import astuple, dataclass

import numpy as np

from cimc.cim import noise
from cimc.cim.chip import SA0, SA1, ArrayState, ChipSource
from cimc.cim.device import Device, fine_grid, on_grid
from cimc.errors import InputError

__all__ = ["DRIFT_CELL", "AnalogDevice", "AnalogModel", "Conductance"]

DRIFT_CELL = "drift"
"""The chip's per-cell quantity holding the standard-normal draw of each cell's drift exponent."""


@dataclass(frozen=True)
class Conductance:
    """The linear mapping between levels and conductances (µS) (module docstring)."""

    g_min: float
    g_max: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.g_min) and np.isfinite(self.g_max) and 0 <= self.g_min < self.g_max):
            raise InputError(f"conductance range g_min = {self.g_min!r} uS, g_max = {self.g_max!r} uS: need "
                             f"0 <= g_min < g_max")

    def gain(self, full: np.ndarray) -> np.ndarray:
        """Levels per µS of each column: ``F / (g_max - g_min)``."""
        return (np.asarray(full, np.float32) / np.float32(self.g_max - self.g_min)).astype(np.float32)

    def conductance(self, levels: np.ndarray, full: np.ndarray) -> np.ndarray:
        """Target conductances of ``levels`` in columns of full-scale ``full``: ``g_min + L / gain``."""
        return np.float32(self.g_min) + np.asarray(levels, np.float32) / self.gain(full)

    def levels(self, g: np.ndarray, full: np.ndarray) -> np.ndarray:
        """The periphery's inverse: ``(G - g_min) * gain``."""
        return (np.asarray(g, np.float32) - np.float32(self.g_min)) * self.gain(full)


@dataclass(frozen=True)
class AnalogModel:
    """The parameters of an analog array's non-idealities (each formula: :mod:`cimc.cim.noise`)."""

    g_min: float = 4.0
    g_max: float = 40.0
    prog_model: str = "reram-wan2022"
    prog_scale: float = 1.0
    """Multiplies the programming-variation sigma (0: none)."""
    prog_sigma: float = 0.0
    """Relative sigma of the ``relative`` programming model."""
    read_noise: float = 0.0
    """Read noise per cell read, a fraction of ``g_max`` (0: none)."""
    drift: str = "none"
    nu_mean: float = 0.0
    nu_std: float = 0.0
    t_inference: float = 0.0
    t0: float = 20.0
    compensate: bool = False
    r_wire: float = 0.0
    """Wire resistance per cell (ohm) of the IR-drop model (0: none)."""

    def __post_init__(self) -> None:
        Conductance(self.g_min, self.g_max)
        if self.prog_model not in noise.PROG_MODELS:
            raise InputError(f"programming model {self.prog_model!r} is not one of {', '.join(noise.PROG_MODELS)}")
        if self.drift not in noise.DRIFT_MODELS:
            raise InputError(f"drift model {self.drift!r} is not one of {', '.join(noise.DRIFT_MODELS)}")
        for name in ("prog_scale", "prog_sigma", "read_noise", "nu_mean", "nu_std", "t_inference", "r_wire"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise InputError(f"{name} = {v!r} must be a finite number >= 0")
        if not (np.isfinite(self.t0) and self.t0 > 0):
            raise InputError(f"t0 = {self.t0!r} must be a finite number > 0 (seconds)")

    @property
    def varies(self) -> bool:
        """Whether programming changes the target conductances."""
        return self.prog_scale > 0 and (self.prog_model != "relative" or self.prog_sigma > 0)

    @property
    def drifts(self) -> bool:
        """Whether conductances drift by the time of inference."""
        return self.drift != "none" and self.t_inference > 0 and (self.drift != "constant" or self.nu_mean > 0
                                                                    or self.nu_std > 0)

    @property
    def cells(self) -> tuple[str, ...]:
        """The per-cell quantities a chip needs for this model (beyond ``stuck`` and ``variation``)."""
        return (DRIFT_CELL,) if self.drifts else ()


class AnalogDevice(Device):
    """A memristive array's device: the mapping, programming variation, stuck cells, drift and IR drop when
    written, read noise when read (module docstring)."""

    def __init__(self, model: AnalogModel, chip: ChipSource, cell_levels: int) -> None:
        super().__init__()
        if cell_levels < 2:
            raise InputError(f"an analog device needs cells of >= 2 levels, got {cell_levels}")
        self.model, self.chip, self.cell_levels = model, chip, int(cell_levels)
        self.mapping = Conductance(model.g_min, model.g_max)
        self.states: dict[int, ArrayState] = {}
        """The chip's arrays drawn so far (a program reloads arrays: each is drawn once per device)."""
        self.ideal = False
        self.token = hashlib.sha256(repr(("analog", astuple(model), self.cell_levels)).encode() + chip.token).digest()

    def check(self, arrays: int, rows: int, cols: int) -> None:
        """The chip must serve the program's arrays (their physical shape, at least as many)."""
        why = self.chip.fits(arrays, rows, cols)
        if why:
            raise InputError(f"the device's chip does not match the program: {why}")

    def program(self, array: int, levels: np.ndarray, full: np.ndarray | None = None) -> np.ndarray:
        """Stored levels of array ``array`` after writing ``levels`` (steps 1-6 of the module docstring)."""
        m, mapping = self.model, self.mapping
        F = np.full(levels.shape[1], self.cell_levels - 1, np.float32) if full is None else np.asarray(full, np.float32)
        state = self.states.get(array)
        if state is None:
            state = self.states[array] = self.chip.array(array)
        L = levels.astype(np.float32)
        gain = mapping.gain(F)[None, :]
        g = mapping.conductance(L, F[None, :])
        g1 = g
        if m.varies:
            if state.variation is None:
                raise InputError("programming variation needs a chip with per-cell variation draws")
            g1 = noise.programmed(g, noise.programming_sigma(m.prog_model, g, m.g_max, m.prog_sigma), state.variation,
                                  m.prog_scale)
        out = _stuck(L if g1 is g else L + (g1 - g) * gain, state.stuck, F)
        if m.drifts:
            z = state.cells.get(DRIFT_CELL)
            if z is None:
                raise InputError(f"drift needs a chip with a per-cell {DRIFT_CELL!r} draw (cell.{DRIFT_CELL} in a "
                                 f"chip file)")
            nu = noise.drift_exponent(m.drift, g, m.g_max, z, m.nu_mean, m.nu_std)
            nu[state.stuck != 0] = 0  # a stuck cell does not drift
            held = mapping.conductance(out, F[None, :])  # what programming left, stuck cells included
            drifted = held * noise.drift_factor(nu, m.t_inference, m.t0)
            if m.compensate:
                drifted *= np.float32(noise.drift_compensation(held, drifted))
                out = L + (drifted - g) * gain
            else:
                out = _stuck(L + (drifted - g) * gain, state.stuck, F)
        if m.r_wire > 0:
            held = mapping.conductance(out, F[None, :])
            out = out + (noise.ir_drop(held, m.r_wire) - held) * gain
        if self.exact_levels:
            return np.ascontiguousarray(out, np.float32)
        return on_grid(np.asarray(out, np.float32), fine_grid(F))

    @property
    def exact_levels(self) -> bool:
        """Whether every stored value is a whole level (stuck cells at most: no variation, drift or IR drop)."""
        m = self.model
        return not (m.varies or m.drifts or m.r_wire > 0)

    def grid(self, full: np.ndarray) -> np.ndarray:
        """Whole levels when :attr:`exact_levels`, else :func:`cimc.cim.device.fine_grid` (module docstring, step 7)."""
        return super().grid(full) if self.exact_levels else fine_grid(full)

    def read_sigma(self, array: int, full: np.ndarray) -> np.ndarray | None:
        """Read noise of one cell read per physical column, in level units: ``read_noise * g_max * gain``."""
        if not self.model.read_noise:
            return None
        return np.float32(noise.read_sigma(self.model.read_noise, self.model.g_max)) * self.mapping.gain(full)


def _stuck(out: np.ndarray, stuck: np.ndarray, full: np.ndarray) -> np.ndarray:
    """``out`` with the stuck cells' levels: exactly 0 (SA0, ``g_min``) or the column's full scale (SA1, ``g_max``)."""
    if not stuck.any():
        return out
    out = out.copy()
    out[stuck == SA0] = 0.0
    sa1 = stuck == SA1
    out[sa1] = np.broadcast_to(full[None, :], out.shape)[sa1]
    return out
