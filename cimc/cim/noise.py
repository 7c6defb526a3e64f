"""Device non-ideality models of resistive (memristive) cells: formulas on conductances, with their sources.

Every function here is a pure formula on conductances in microsiemens (µS); the random draws come from a
chip (:mod:`cimc.cim.chip`: standard-normal draws per cell) or the run's generator, so the same seed gives
the same bits. :class:`cimc.cim.analog.AnalogDevice` composes them; docs/array-model.md and
docs/hw-parameters.md §5 give the sources. ``x = g / g_max`` below.

Programming variation (:func:`programming_sigma`; the cell then holds ``max(0, g + scale * sigma(g) * z)``):

- ``reram-wan2022``: ``sigma = (g_max / 40 µS) * sum_i c_i x**i`` µS with ``c = (0.348, 16.030, -43.853,
  45.393, -16.815)``, the 1-second fit of Wan et al. (Nature 2022) in aihwkit's ``ReRamWan2022NoiseModel``
  (coefficients fitted at g_max = 40 µS; about 3-6 % of g_max; hw-parameters.md §5.2);
- ``pcm-nandakumar2019``: ``sigma = (g_max / 25 µS) * (0.26348 + 1.9650 x - 1.1731 x**2)`` µS, aihwkit's
  ``PCMLikeNoiseModel`` (Nandakumar et al., ICECS 2019; hw-parameters.md §5.2);
- ``relative``: ``sigma = sigma_rel * g`` (NeuroSim's ``G' = G (1 + N(0, sigma))``, hw-parameters.md §5.2).

Drift (:func:`drift_exponent`, :func:`drift_factor`): ``G(t) = G0 * (t / t0)**-nu`` with ``t = t0 +
t_inference`` (``t_inference`` counts from the first read, ``t0`` after programming, as aihwkit's PCM model),
one exponent per cell ``nu = |mu + sigma * z|`` from the chip's draw ``z``:

- ``constant``: ``mu = nu_mean``, ``sigma = nu_std`` (hw-parameters.md §5.3: nu = 0.05 gives 0.77 at 1 h);
- ``pcm-aihwkit``: ``mu = clip(-0.0155 ln x + 0.0244, 0.049, 0.1)``, ``sigma = clip(-0.0125 ln x - 0.0059,
  0.008, 0.045)`` (aihwkit ``PCMLikeNoiseModel.generate_drift_coefficients``, hw-parameters.md §5.3);
- ``none``: no drift (ReRAM's default, hw-parameters.md §5.8).

Global drift compensation (aihwkit ``GlobalDriftCompensation``, hw-parameters.md §5.3): the periphery reads
a reference (every input on) after programming and again at inference and scales every read by the ratio of the
two (:func:`drift_compensation`: one factor per array, from the sums of its cells' conductances, stuck ones
included; the whole column current is scaled, so a differential pair's difference scales alike).

IR drop, first order (:func:`ir_drop`, MNSIM's accuracy model, hw-parameters.md §5.6): the cell at physical
row ``i`` and column ``j`` of an array of ``R`` rows is in series with ``R - i + j + 1`` wire segments of
``r_wire`` ohm each (along its row from the driver, down its column to the sense amplifier), so it conducts
``g / (1 + g * r_wire * (R - i + j + 1))``: each cell alone, without the currents the others share on the wires.

Read noise (:func:`read_sigma`): each cell read adds independent Gaussian noise of ``read_noise * g_max``
(additive, state-independent: hw-parameters.md §5.8 "read noise 1 % additive", aihwkit's
``w_noise_type = ADDITIVE_CONSTANT``); a column partial sum of inputs ``x_r`` then has noise of standard
deviation ``sqrt(sum_r x_r**2) * read_noise * g_max``, which the crossbar draws per conversion.

Stuck-at faults (MNSIM ``Device_SAF``, hw-parameters.md §5.4) are the chip's: SA0 holds ``g_min``, SA1 ``g_max``.

The logarithms and powers above are :mod:`cimc.cim.fmath`'s, not numpy's ``log`` and ``power``, whose loops give
other last bits on other CPUs (AVX-512, AVX2, baseline kernels) and numpy releases: a chip's conductances are the
same bits on every machine.
"""

from __future__ import annotations

import numpy as np

from cimc.cim import fmath
from cimc.errors import InputError

__all__ = ["DRIFT_MODELS", "PROG_MODELS", "drift_compensation", "drift_exponent", "drift_factor", "ir_drop",
           "programmed", "programming_sigma", "read_sigma"]

PROG_MODELS = ("reram-wan2022", "pcm-nandakumar2019", "relative")
"""Programming-variation models (module docstring)."""
DRIFT_MODELS = ("none", "constant", "pcm-aihwkit")
"""Drift-exponent models (module docstring)."""

WAN2022_1S = (0.348, 16.030, -43.853, 45.393, -16.815)
"""aihwkit ``ReRamWan2022NoiseModel`` coefficients at t = 1 s, ascending powers of x, µS at g_max = 40 µS."""
WAN2022_G_MAX = 40.0
NANDAKUMAR2019 = (0.26348, 1.9650, -1.1731)
"""aihwkit ``PCMLikeNoiseModel`` programming coefficients, ascending powers of x, µS at g_max = 25 µS."""
NANDAKUMAR2019_G_MAX = 25.0


def _poly(x: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
    out = np.full_like(x, coeffs[-1])
    for c in coeffs[-2::-1]:
        out *= x
        out += np.asarray(c, x.dtype)
    return out


def programming_sigma(model: str, g: np.ndarray, g_max: float, sigma_rel: float = 0.0) -> np.ndarray:
    """Standard deviation (µS) of the programming error of cells programmed to conductances ``g`` (µS) by
    ``model`` (module docstring); never negative."""
    g = np.asarray(g, np.float32)
    if model == "reram-wan2022":
        s = _poly(g / np.float32(g_max), WAN2022_1S) * np.float32(g_max / WAN2022_G_MAX)
    elif model == "pcm-nandakumar2019":
        s = _poly(g / np.float32(g_max), NANDAKUMAR2019) * np.float32(g_max / NANDAKUMAR2019_G_MAX)
    elif model == "relative":
        s = np.abs(g) * np.float32(sigma_rel)
    else:
        raise InputError(f"programming variation model {model!r} is not one of {', '.join(PROG_MODELS)}")
    return np.maximum(s, 0, out=s)


def programmed(g: np.ndarray, sigma: np.ndarray, z: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Conductances after programming: ``max(0, g + scale * sigma * z)`` (no negative conductance)."""
    out = np.asarray(sigma, np.float32) * np.float32(scale)
    out *= z
    out += g
    return np.maximum(out, 0, out=out)


def drift_exponent(model: str, g: np.ndarray, g_max: float, z: np.ndarray, nu_mean: float = 0.0,
                   nu_std: float = 0.0) -> np.ndarray:
    """Per-cell drift exponents ``nu = |mu + sigma * z|`` of cells at conductances ``g`` (module docstring)."""
    g = np.asarray(g, np.float32)
    if model == "constant":
        mu, sd = np.float32(nu_mean), np.float32(nu_std)
    elif model == "pcm-aihwkit":
        lx = fmath.ln(np.maximum(np.abs(g) / np.float32(g_max), np.float32(1e-7)))
        mu = np.clip(np.float32(-0.0155) * lx + np.float32(0.0244), 0.049, 0.1)
        sd = np.clip(np.float32(-0.0125) * lx - np.float32(0.0059), 0.008, 0.045)
    elif model == "none":
        return np.zeros_like(g)
    else:
        raise InputError(f"drift model {model!r} is not one of {', '.join(DRIFT_MODELS)}")
    return np.abs(mu + sd * np.asarray(z, np.float32)).astype(np.float32)


def drift_factor(nu: np.ndarray, t_inference: float, t0: float) -> np.ndarray:
    """``((t0 + t_inference) / t0)**-nu``: the share of its conductance a cell keeps after ``t_inference``
    seconds (module docstring)."""
    if t_inference <= 0:
        return np.ones_like(np.asarray(nu, np.float32))
    nu = np.asarray(nu, np.float32)
    return fmath.exp(nu * -fmath.ln(np.float32((t0 + t_inference) / t0))).reshape(nu.shape)


def drift_compensation(before: np.ndarray, after: np.ndarray) -> float:
    """The global drift compensation factor of one array: the sum of its cells' conductances after programming over
    the same sum at inference (module docstring; 1 when either is not positive)."""
    a, b = float(np.sum(before, dtype=np.float64)), float(np.sum(after, dtype=np.float64))
    return a / b if a > 0 and b > 0 else 1.0


def ir_drop(g: np.ndarray, r_wire: float) -> np.ndarray:
    """Effective conductances of an array's cells ``g`` (µS, ``[R, C]``) in series with their wire segments
    (module docstring)."""
    R, C = g.shape
    segments = (R - np.arange(R, dtype=np.float32))[:, None] + np.arange(1, C + 1, dtype=np.float32)[None, :]
    load = np.float32(r_wire * 1e-6) * segments  # ohm * µS: dimensionless per µS of g
    return g / (1 + g * load)


def read_sigma(read_noise: float, g_max: float) -> float:
    """Standard deviation (µS) of one cell read: ``read_noise * g_max`` (module docstring)."""
    return float(read_noise) * float(g_max)
