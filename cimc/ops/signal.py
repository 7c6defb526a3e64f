"""Built-in ops: signal processing (DFT, STFT, the Hann/Hamming/Blackman windows, MelWeightMatrix).

Complex values are a trailing axis of 2 (real, imaginary); a real signal has a trailing axis of 1.
``DFT`` (opset 20 form, ``axis`` an operand; the importer turns opset 17's attribute into one)
transforms along ``axis``, zero-padded or cut to ``dft_length``; ``onesided`` keeps the first
``n//2 + 1`` bins, and an inverse onesided DFT is the real inverse (``irfft``). ``STFT`` frames the
signal (``1 + (length - frame_length) // frame_step`` frames), weights each frame by the window and
transforms it. Transforms are ``numpy.fft`` in float64/complex128, rounded once to the input type.
Windows: with ``N = size`` (periodic) or ``size - 1``, ``hann = sin^2(pi n / N)``, ``hamming =
25/46 - 21/46 cos(2 pi n / N)``, ``blackman = 0.42 - 0.5 cos(2 pi n / N) + 0.08 cos(4 pi n / N)``.
``MelWeightMatrix``: triangular filters between mel-spaced bin edges, as ONNX's function body
computes them (``mel = 2595 log10(1 + f/700)``, edges at ``floor((dft_length + 1) f / sample_rate)``).
"""

from __future__ import annotations

from typing import overload

import numpy as np

from cimc.errors import CimcError, VerifyError
from cimc.ir.opdef import AttrSpec, InferContext, define_op
from cimc.ir.types import TensorType, dtype_from_onnx_code
from cimc.ops._infer import require


def _scalar(a: np.ndarray) -> int | float:
    """The value of a one-element operand, as a Python number."""
    return np.asarray(a).reshape(-1)[0].item()


@overload
def _int(a: np.ndarray) -> int: ...
@overload
def _int(a: np.ndarray | None) -> int | None: ...
def _int(a: np.ndarray | None) -> int | None:
    """The value of a one-element integer operand (``None``: absent, or not known before run time)."""
    return None if a is None else int(_scalar(a))


def _complex(x: np.ndarray) -> np.ndarray:
    """The complex values of an ``[..., 1 or 2]`` array (without the trailing axis)."""
    u = x.astype(np.float64)
    return u[..., 0] if x.shape[-1] == 1 else u[..., 0] + 1j * u[..., 1]


def _pairs(c: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.stack([c.real, c.imag], axis=-1).astype(dtype)


# ---- windows ------------------------------------------------------------------------------------
def _window_type(ctx: InferContext) -> list[TensorType]:
    require(ctx, 0)
    n = _int(ctx.const(0))
    return [TensorType(dtype_from_onnx_code(ctx.attrs["output_datatype"]), (n,))]


_WINDOW_ATTRS = {"output_datatype": AttrSpec("int", 1, "ONNX element-type code of the result (default f32)"),
                 "periodic": AttrSpec("int", 1, "1: periodic (N = size), 0: symmetric (N = size - 1)")}


def _window(weights):
    def impl(ctx, size):
        n = _int(size)
        denom = n if ctx.attrs["periodic"] else n - 1
        phase = np.arange(n, dtype=np.float64) * (np.pi / denom if denom else 0.0)
        return weights(phase).astype(dtype_from_onnx_code(ctx.attrs["output_datatype"]).numpy)

    return impl


for _name, _fn in (("HannWindow", lambda t: np.sin(t) ** 2),
                   ("HammingWindow", lambda t: 25 / 46 - (21 / 46) * np.cos(2 * t)),
                   ("BlackmanWindow", lambda t: 0.42 - 0.5 * np.cos(2 * t) + 0.08 * np.cos(4 * t))):
    define_op(_name, infer=_window_type, attrs=_WINDOW_ATTRS, doc=f"The {_name[:-6]} window of a given size.")(
        _window(_fn))


# ---- DFT ----------------------------------------------------------------------------------------
@overload
def _dft_length(n_in: int, given: int | None, inverse: bool, onesided: bool) -> int: ...
@overload
def _dft_length(n_in: int | None, given: int | None, inverse: bool, onesided: bool) -> int | None: ...
def _dft_length(n_in: int | None, given: int | None, inverse: bool, onesided: bool) -> int | None:
    if given is not None:
        return given
    if n_in is None:
        return None
    return 2 * (n_in - 1) if inverse and onesided else n_in


def _dft_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    rank = len(x.shape)
    axis = _int(ctx.const(2)) if ctx.has(2) else -2
    if axis is None:
        return [TensorType(x.dtype, (*(None,) * (rank - 1), 1 if ctx.attrs["inverse"] and ctx.attrs["onesided"]
                                     else 2))]
    axis %= rank
    d = x.shape[axis]
    n = d if isinstance(d, int) else None
    given = _int(ctx.const(1)) if ctx.has(1) else None
    if ctx.has(1) and given is None:
        length = None
    else:
        length = _dft_length(n, given, bool(ctx.attrs["inverse"]), bool(ctx.attrs["onesided"]))
    inverse, onesided = bool(ctx.attrs["inverse"]), bool(ctx.attrs["onesided"])
    bins = length // 2 + 1 if onesided and not inverse and length is not None else length
    last = 1 if inverse and onesided else 2
    return [TensorType(x.dtype, tuple(bins if i == axis else (last if i == rank - 1 else d)
                                      for i, d in enumerate(x.shape)))]


@define_op("DFT", inputs=(1, 3), infer=_dft_type, attrs={
    "inverse": AttrSpec("int", 0, "1: the inverse transform (normalized by 1/n)"),
    "onesided": AttrSpec("int", 0, "1: only the non-negative frequencies (real signals)")})
def dft(ctx, x, dft_length=None, axis=None):
    """The discrete Fourier transform of x along ``axis`` (default -2)."""
    a = (-2 if axis is None else _int(axis)) % x.ndim
    inverse, onesided = bool(ctx.attrs["inverse"]), bool(ctx.attrs["onesided"])
    n = _dft_length(x.shape[a], None if dft_length is None else _int(dft_length), inverse, onesided)
    c = _complex(x)
    if inverse:
        if onesided:
            return np.fft.irfft(c, n=n, axis=a)[..., None].astype(x.dtype)
        return _pairs(np.fft.ifft(c, n=n, axis=a), x.dtype)
    y = np.fft.fft(c, n=n, axis=a)
    if onesided:
        y = np.take(y, np.arange(n // 2 + 1), axis=a)
    return _pairs(y, x.dtype)


# ---- STFT ---------------------------------------------------------------------------------------
def _stft_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    if x.shape is None or len(x.shape) != 3:
        raise VerifyError(f"node {ctx.node.name!r} (STFT): the signal must be [batch, length, 1 or 2], is {x}")
    step = _int(ctx.const(1))
    win = ctx.types[2] if ctx.has(2) else None
    length = _int(ctx.const(3)) if ctx.has(3) else (win.shape[0] if win is not None and win.shape else None)
    n_in = x.shape[1]
    frames = 1 + (n_in - length) // step if isinstance(n_in, int) and isinstance(length, int) and step is not None \
        else None
    bins = None if not isinstance(length, int) else (length // 2 + 1 if ctx.attrs["onesided"] else length)
    return [TensorType(x.dtype, (x.shape[0], frames, bins, 2))]


@define_op("STFT", inputs=(2, 4), infer=_stft_type,
           attrs={"onesided": AttrSpec("int", 1, "1: only the non-negative frequencies")})
def stft(ctx, x, frame_step, window=None, frame_length=None):
    """Short-time Fourier transform: windowed frames of the signal, each transformed."""
    step = _int(frame_step)
    length = _int(frame_length) if frame_length is not None else (
        window.shape[0] if window is not None else None)
    if length is None:
        raise CimcError("STFT needs a window or a frame_length")
    if window is not None and window.shape[0] != length:
        raise CimcError(f"STFT window has {window.shape[0]} samples, frame_length is {length}")
    n = 1 + (x.shape[1] - length) // step
    if n < 1:
        raise CimcError(f"STFT: a signal of {x.shape[1]} samples holds no frame of {length}")
    frames = _complex(x)[:, step * np.arange(n)[:, None] + np.arange(length)[None, :]]  # (batch, n, length)
    if window is not None:
        frames = frames * window.astype(np.float64)
    y = np.fft.fft(frames, axis=-1)
    if ctx.attrs["onesided"]:
        y = y[..., : length // 2 + 1]
    return _pairs(y, x.dtype)


# ---- MelWeightMatrix ----------------------------------------------------------------------------
def _mel_type(ctx: InferContext) -> list[TensorType]:
    mels, length = _int(ctx.const(0)), _int(ctx.const(1))
    bins = None if length is None else int(length) // 2 + 1
    return [TensorType(dtype_from_onnx_code(ctx.attrs["output_datatype"]), (bins, mels))]


@define_op("MelWeightMatrix", inputs=5, infer=_mel_type,
           attrs={"output_datatype": AttrSpec("int", 1, "ONNX element-type code of the result (default f32)")})
def mel_weight_matrix(ctx, num_mel_bins, dft_length, sample_rate, lower_hz, upper_hz):
    """[dft_length//2 + 1, num_mel_bins] triangular mel filters (see the module doc)."""
    mels, n, rate = _int(num_mel_bins), _int(dft_length), _scalar(sample_rate)
    lo, hi = (2595 * np.log10(1 + float(_scalar(v)) / 700) for v in (lower_hz, upper_hz))
    edges_mel = np.arange(mels + 2) * ((hi - lo) / (mels + 2)) + lo
    edges = ((n + 1) * (700 * (10 ** (edges_mel / 2595) - 1)) // rate).astype(np.int64)
    j = np.arange(n // 2 + 1)[:, None]
    left, center, right = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    rise = np.where(center > left, (j - left) / np.maximum(center - left, 1), (j == center).astype(np.float64))
    fall = np.where(right > center, (right - j) / np.maximum(right - center, 1), 0.0)
    out = np.where((j >= left) & (j <= center), rise, 0.0)
    out = np.where((j >= center) & (j < right) & (right > center), fall, out)
    return out.astype(dtype_from_onnx_code(ctx.attrs["output_datatype"]).numpy)
