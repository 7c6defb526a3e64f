"""Built-in op: ``Resize`` (opset 19 form; Upsample and older Resize forms are rewritten into it).

Resize is separable, so it runs one axis at a time. For an axis of input length ``n``, output length
``m`` and scale ``s`` (given, or ``m/n`` from ``sizes``), each output index ``y`` maps to a source
coordinate ``x`` by ``coordinate_transformation_mode`` (``half_pixel``: ``(y+0.5)/s-0.5``;
``asymmetric``: ``y/s``; ``align_corners``: ``y*(n-1)/(m-1)``; ``pytorch_half_pixel``,
``half_pixel_symmetric`` and ``tf_crop_and_resize`` as the spec writes them). With ``base`` the
largest integer below ``x`` (so ``r = x - base`` is in ``(0, 1]``), the output is a weighted sum of
the ``k`` inputs ``base - k/2 + 1 ... base + k/2``, clamped to the edge: ``k=2`` weights ``1-r, r``
(linear), ``k=4`` Keys' cubic with ``cubic_coeff_a`` (cubic), or with ``antialias`` a filter widened
by ``1/s`` when downscaling (weights normalized to sum 1). ``exclude_outside`` zeroes the weights of
taps outside the input and renormalizes. ``nearest`` picks ``x`` rounded by ``nearest_mode`` (a
gather, exact for every type). ``tf_crop_and_resize`` outputs whose source lies outside the input
are ``extrapolation_value``. Interpolation runs in float64; integer results round half to even and
saturate.

Output lengths: ``floor(n * s)`` from scales, or ``sizes`` (with ``keep_aspect_ratio_policy``
``not_larger``/``not_smaller``: one scale for all resized axes, lengths ``round_half_up(n * s)``).
"""

from __future__ import annotations

import math

import numpy as np

from cimc.errors import CimcError, VerifyError
from cimc.ir.opdef import AttrSpec, InferContext, define_op
from cimc.ir.types import Dim, TensorType
from cimc.ops._infer import normalize_axis, require

_MODES = ("nearest", "linear", "cubic")
_TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
               "tf_crop_and_resize")
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_POLICIES = ("stretch", "not_larger", "not_smaller")


def _verify(node) -> str | None:
    a = node.attrs
    for key, allowed, default in (("mode", _MODES, "nearest"), ("coordinate_transformation_mode", _TRANSFORMS,
                                                                 "half_pixel"),
                                  ("nearest_mode", _NEAREST, "round_prefer_floor"),
                                  ("keep_aspect_ratio_policy", _POLICIES, "stretch")):
        if a.get(key, default) not in allowed:
            return f"attribute {key} is {a[key]!r}, expected one of {', '.join(allowed)}"
    return None


def _vector(a: np.ndarray | None) -> np.ndarray | None:
    """An optional 1-D operand; an empty one counts as absent (opsets 11-12 pass empty scales)."""
    return None if a is None or np.asarray(a).size == 0 else np.asarray(a).reshape(-1)


def _geometry(shape: tuple[int, ...], attrs, roi, scales, sizes) -> tuple[list[int], list[float], list[float]]:
    """Per axis: output length, scale and roi (start, end) pairs flattened as [starts..., ends...]."""
    rank = len(shape)
    axes = list(range(rank)) if attrs["axes"] is None else [normalize_axis(a, rank, "Resize axes")
                                                             for a in attrs["axes"]]
    scales, sizes, roi = _vector(scales), _vector(sizes), _vector(roi)
    if (scales is None) == (sizes is None):
        raise CimcError("Resize needs exactly one of scales and sizes")
    out, scale = list(shape), [1.0] * rank
    box = [0.0] * rank + [1.0] * rank
    if roi is not None:
        if roi.size != 2 * len(axes):
            raise CimcError(f"Resize roi has {roi.size} values, expected {2 * len(axes)}")
        for i, a in enumerate(axes):
            box[a], box[rank + a] = float(roi[i]), float(roi[len(axes) + i])
    if scales is not None:
        if scales.size != len(axes):
            raise CimcError(f"Resize scales has {scales.size} values for {len(axes)} axes")
        for i, a in enumerate(axes):
            scale[a] = float(scales[i])
            out[a] = math.floor(shape[a] * scale[a])
        return out, scale, box
    if sizes.size != len(axes):
        raise CimcError(f"Resize sizes has {sizes.size} values for {len(axes)} axes")
    for i, a in enumerate(axes):
        out[a] = int(sizes[i])
        scale[a] = out[a] / shape[a]
    policy = attrs["keep_aspect_ratio_policy"]
    if policy != "stretch":
        s = (min if policy == "not_larger" else max)(scale[a] for a in axes)
        for a in axes:
            scale[a], out[a] = s, int(s * shape[a] + 0.5)
    return out, scale, box


def _source(y: np.ndarray, mode: str, n: int, m: int, s: float, lo: float, hi: float) -> np.ndarray:
    """Source coordinates of output indices ``y`` along one axis (``w = s * n`` is the unrounded output
    length, which the spec's formulas use where they say ``length_resized``)."""
    w = s * n
    if mode == "align_corners":
        return np.zeros_like(y) if w == 1 else y * (n - 1) / (w - 1)
    if mode == "asymmetric":
        return y / s
    if mode == "tf_crop_and_resize":
        x = np.full_like(y, (hi - lo) * (n - 1) / 2) if w == 1 else y * (hi - lo) * (n - 1) / (w - 1)
        return x + lo * (n - 1)
    if mode == "pytorch_half_pixel":
        return np.full_like(y, -0.5) if w == 1 else (y + 0.5) / s - 0.5
    if mode == "half_pixel_symmetric":
        return n / 2 * (1 - m / w) + (y + 0.5) / s - 0.5
    return (y + 0.5) / s - 0.5


def _keys(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``t``."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _weights(r: np.ndarray, s: float, mode: str, antialias: bool, a: float) -> tuple[np.ndarray, int]:
    """(weights of shape (m, k), k) for ratios ``r`` in (0, 1]; tap j sits at distance j - k/2 + 1 - r."""
    if not antialias or s >= 1:
        k = 2 if mode == "linear" else 4
        d = np.arange(k) - k // 2 + 1 - r[:, None]
        w = np.maximum(0.0, 1 - np.abs(d)) if mode == "linear" else _keys(d, a)
        return w, k
    reach = 1 if mode == "linear" else 2
    start = int(math.floor(-reach / s) + 1)
    k = 2 - 2 * start
    d = (np.arange(start, start + k) - r[:, None]) * s
    w = np.clip(1 - np.abs(d), 0, 1) if mode == "linear" else _keys(d, a)
    return w / w.sum(axis=1, keepdims=True), k


def _resize_axis(x: np.ndarray, axis: int, m: int, s: float, lo: float, hi: float, attrs) -> np.ndarray:
    n = x.shape[axis]
    transform, mode = attrs["coordinate_transformation_mode"], attrs["mode"]
    src = _source(np.arange(m, dtype=np.float64), transform, n, m, s, lo, hi)
    if mode == "nearest":
        fl = np.floor(src)
        frac = src - fl
        up = {"round_prefer_floor": frac > 0.5, "round_prefer_ceil": frac >= 0.5, "floor": np.zeros(m, bool),
              "ceil": frac > 0}[attrs["nearest_mode"]]
        y = np.take(x, np.clip(fl + up, 0, n - 1).astype(np.intp), axis=axis)
    else:
        base = np.where(src == np.floor(src), src - 1, np.floor(src))
        w, k = _weights(src - base, s, mode, bool(attrs["antialias"]), attrs["cubic_coeff_a"])
        taps = base.astype(np.int64)[:, None] - k // 2 + 1 + np.arange(k)
        if attrs["exclude_outside"]:
            w = np.where((taps < 0) | (taps >= n), 0.0, w)
            total = w.sum(axis=1, keepdims=True)
            w = w / np.where(total == 0, 1.0, total)
        gathered = np.take(x, np.clip(taps, 0, n - 1).astype(np.intp), axis=axis)
        y = (gathered * w.reshape((1,) * axis + w.shape + (1,) * (x.ndim - axis - 1))).sum(axis=axis + 1)
    if transform == "tf_crop_and_resize":
        out = (src < 0) | (src > n - 1)
        if out.any():
            y = np.where(out.reshape((-1,) + (1,) * (x.ndim - axis - 1)), attrs["extrapolation_value"], y)
    return y


def _resize_type(ctx: InferContext) -> list[TensorType]:
    """The result's dims where constant scales or sizes give them: a dim the Resize does not touch (off
    its axes, or scaled by 1) keeps its value, symbolic or not; a dim it sizes is the size (stretched);
    a static dim scaled by s is floor(d * s); sizes of every axis computed from shapes (stretched) are the
    dims as far as they are known (``InferContext.value``: ``F.interpolate(x, size=y.shape[-2:])``).
    Other dims are unknown."""
    x = require(ctx, 0)
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    consts = [ctx.const(i) if ctx.has(i) else None for i in range(4)]
    rank = len(x.shape)
    axes = set(range(rank)) if ctx.attrs["axes"] is None else {a % rank for a in ctx.attrs["axes"]}
    if not ((consts[2] is not None or consts[3] is not None) and (ctx.has(2) <= (consts[2] is not None))
            and (ctx.has(3) <= (consts[3] is not None))):
        sizes = ctx.value(3)
        no_scales = not ctx.has(2) or (consts[2] is not None and consts[2].size == 0)
        if sizes is not None and not sizes.scalar and len(sizes.elems) == rank and ctx.attrs["axes"] is None \
                and ctx.attrs["keep_aspect_ratio_policy"] == "stretch" and no_scales:
            return [TensorType(x.dtype, sizes.elems)]  # sizes of every axis, stretched: the sizes are the dims
        return [TensorType(x.dtype, tuple(None if i in axes else d for i, d in enumerate(x.shape)))]
    stand_in = tuple(d if isinstance(d, int) else 1 for d in x.shape)  # symbolic dims are worked out below
    try:
        out, scale, _ = _geometry(stand_in, ctx.attrs, None, consts[2], consts[3])
    except CimcError as e:
        raise VerifyError(f"node {ctx.node.name!r} (Resize): {e}") from None
    sized = consts[3] is not None
    # sizes with a policy other than stretch scale every axis by one factor, which needs all their dims
    per_axis = not sized or ctx.attrs["keep_aspect_ratio_policy"] == "stretch" or \
        all(isinstance(x.shape[a], int) for a in axes)
    dims: list[Dim] = []
    for a, d in enumerate(x.shape):
        if a not in axes:
            dims.append(d)
        elif not per_axis:
            dims.append(None)
        elif isinstance(d, int) or sized:
            dims.append(out[a])
        else:
            dims.append(d if scale[a] == 1.0 else None)
    return [TensorType(x.dtype, tuple(dims))]


@define_op("Resize", inputs=(1, 4), infer=_resize_type, verify=_verify, attrs={
    "antialias": AttrSpec("int", 0, "1: widen the linear/cubic filter when downscaling"),
    "axes": AttrSpec("ints", None, "axes that roi, scales and sizes refer to (default all)"),
    "coordinate_transformation_mode": AttrSpec("str", "half_pixel", "how output indices map to input coordinates"),
    "cubic_coeff_a": AttrSpec("float", -0.75, "the cubic kernel's a"),
    "exclude_outside": AttrSpec("int", 0, "1: taps outside the input get weight 0"),
    "extrapolation_value": AttrSpec("float", 0.0, "tf_crop_and_resize: value outside the input"),
    "keep_aspect_ratio_policy": AttrSpec("str", "stretch", "with sizes: stretch, not_larger or not_smaller"),
    "mode": AttrSpec("str", "nearest", "nearest, linear or cubic"),
    "nearest_mode": AttrSpec("str", "round_prefer_floor", "rounding of nearest mode"),
})
def resize(ctx, x, roi=None, scales=None, sizes=None):
    """Resize x by scales or to sizes, interpolating by ``mode`` (see the module doc)."""
    out, scale, box = _geometry(x.shape, ctx.attrs, roi, scales, sizes)
    rank = x.ndim
    nearest = ctx.attrs["mode"] == "nearest"
    y = x if nearest else x.astype(np.float64)
    for axis in range(rank):
        lo, hi = box[axis], box[rank + axis]
        if out[axis] == y.shape[axis] and math.isclose(scale[axis], 1.0) and math.isclose(lo, 0.0) and \
                math.isclose(hi, 1.0):
            continue
        y = _resize_axis(y, axis, out[axis], scale[axis], lo, hi, ctx.attrs)
    if y.dtype == x.dtype:
        return np.ascontiguousarray(y)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        return np.clip(np.rint(y), info.min, info.max).astype(x.dtype)
    return y.astype(x.dtype)
