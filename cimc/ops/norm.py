"""Built-in ops: normalizations beyond Batch/Layer (Instance, Group, RMS, mean-variance, Lp) and the
softmax relatives (LogSoftmax, Hardmax).

With ``mu``/``var`` the mean and (biased) variance over the normalized axes, computed in f32 for
f16/bf16 (f64 for f64)::

    InstanceNormalization  y = (x - mu) / sqrt(var + eps) * scale[c] + B[c]   over the spatial axes of (n, c)
    GroupNormalization     the same over each group of C/num_groups channels and the spatial axes;
                           scale and bias per channel (opset 21; the importer widens opset 18's per-group ones)
    RMSNormalization       y = x / sqrt(mean(x^2) + eps) * scale                over axes [axis, rank)
    MeanVarianceNormalization  y = (x - mu) / (sqrt(E[x^2] - mu^2) + 1e-9)     over ``axes``
    LpNormalization        y = x / ||x||_p along ``axis`` (p = 1 or 2; 0 where the norm is 0)
    LogSoftmax             y = x - max - log(sum(exp(x - max)))                 along ``axis``
    Hardmax                1 at the first maximum along ``axis``, 0 elsewhere
"""

from __future__ import annotations

import numpy as np

from cimc.errors import VerifyError
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, define_op
from cimc.ir.types import DType, TensorType
from cimc.ops._infer import normalize_axis, require


def _cdt(x: np.ndarray) -> np.dtype:
    return np.dtype(np.float64 if x.dtype == np.float64 else np.float32)


def _float_like_x(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    if not x.dtype.is_float:
        raise VerifyError(f"node {ctx.node.name!r} ({ctx.node.op}): X has element type {x.dtype.value}, "
                          "expected a float type")
    if x.shape is not None and "axis" in ctx.attrs and x.shape:
        normalize_axis(ctx.attrs["axis"], len(x.shape), f"node {ctx.node.name!r} ({ctx.node.op}): axis")
    return [TensorType(x.dtype, x.shape)]


def _standardize(x: np.ndarray, axes: tuple[int, ...], eps: float) -> np.ndarray:
    mu = x.mean(axis=axes, keepdims=True)
    d = x - mu
    return d / np.sqrt((d * d).mean(axis=axes, keepdims=True) + np.asarray(eps, x.dtype))


def _channel(v: np.ndarray, rank: int, dt: np.dtype) -> np.ndarray:
    return v.astype(dt, copy=False).reshape(-1, *(1,) * (rank - 2))


@define_op("InstanceNormalization", inputs=3, infer=_float_like_x,
           attrs={"epsilon": AttrSpec("float", 1e-5, "added to the variance")})
def instance_norm(ctx, x, scale, bias):
    """Normalize each (image, channel) over its spatial axes, then scale and shift per channel."""
    dt = _cdt(x)
    y = _standardize(x.astype(dt, copy=False), tuple(range(2, x.ndim)), ctx.attrs["epsilon"])
    return (y * _channel(scale, x.ndim, dt) + _channel(bias, x.ndim, dt)).astype(x.dtype, copy=False)


@define_op("GroupNormalization", inputs=3, infer=_float_like_x, attrs={
    "epsilon": AttrSpec("float", 1e-5, "added to the variance"),
    "num_groups": AttrSpec("int", REQUIRED, "number of channel groups (divides C)", lo=1),
    "stash_type": AttrSpec("int", 1, "element type of the computation (1 = float32)")})
def group_norm(ctx, x, scale, bias):
    """Normalize each group of channels of each image together, then scale and shift per channel."""
    n, c, groups = x.shape[0], x.shape[1], ctx.attrs["num_groups"]
    if groups < 1 or c % groups:
        raise VerifyError(f"GroupNormalization node {ctx.node_name!r}: num_groups={groups} does not divide "
                          f"the {c} channels")
    dt = np.dtype(np.float64) if x.dtype == np.float64 or ctx.attrs["stash_type"] != 1 else np.dtype(np.float32)
    g = x.astype(dt, copy=False).reshape(n, groups, -1)
    y = _standardize(g, (2,), ctx.attrs["epsilon"]).reshape(x.shape)
    return (y * _channel(scale, x.ndim, dt) + _channel(bias, x.ndim, dt)).astype(x.dtype, copy=False)


@define_op("RMSNormalization", inputs=2, infer=_float_like_x, attrs={
    "axis": AttrSpec("int", -1, "first normalized axis"),
    "epsilon": AttrSpec("float", 1e-5, "added to the mean square"),
    "stash_type": AttrSpec("int", 1, "element type of the computation (1 = float32)")})
def rms_norm(ctx, x, scale):
    """x / sqrt(mean(x^2 over axes [axis, rank)) + eps) * scale."""
    dt = _cdt(x)
    u = x.astype(dt, copy=False)
    axes = tuple(range(ctx.attrs["axis"] % x.ndim, x.ndim))
    ms = np.mean(u * u, axis=axes, keepdims=True) + np.asarray(ctx.attrs["epsilon"], dt)
    return (u / np.sqrt(ms) * scale.astype(dt, copy=False)).astype(x.dtype, copy=False)


@define_op("MeanVarianceNormalization", infer=_float_like_x,
           attrs={"axes": AttrSpec("ints", (0, 2, 3), "axes the statistics run over")})
def mean_variance_norm(ctx, x):
    """(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9) over ``axes`` (ONNX's function body)."""
    dt = _cdt(x)
    u = x.astype(dt, copy=False)
    axes = tuple(a % x.ndim for a in ctx.attrs["axes"])
    mu = u.mean(axis=axes, keepdims=True)
    var = np.maximum((u * u).mean(axis=axes, keepdims=True) - mu * mu, 0)
    return ((u - mu) / (np.sqrt(var) + np.asarray(1e-9, dt))).astype(x.dtype, copy=False)


@define_op("LpNormalization", infer=_float_like_x, attrs={
    "axis": AttrSpec("int", -1, "axis normalized along"),
    "p": AttrSpec("int", 2, "the norm's order: 1 or 2")},
    verify=lambda n: None if n.attrs.get("p", 2) in (1, 2) else f"attribute p is {n.attrs['p']}, expected 1 or 2")
def lp_norm(ctx, x):
    """x divided by its L1 or L2 norm along ``axis`` (0 where the norm is 0)."""
    dt = _cdt(x)
    u = x.astype(dt, copy=False)
    axis = ctx.attrs["axis"] % x.ndim
    norm = np.abs(u).sum(axis=axis, keepdims=True) if ctx.attrs["p"] == 1 else \
        np.sqrt((u * u).sum(axis=axis, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm == 0, np.zeros((), dt), u / norm).astype(x.dtype, copy=False)


@define_op("LogSoftmax", infer=_float_like_x, attrs={"axis": AttrSpec("int", -1, "axis normalized over")})
def log_softmax(ctx, x):
    """log(softmax(x)) along ``axis``, as x - max - log(sum(exp(x - max)))."""
    u = x.astype(_cdt(x), copy=False)
    axis = ctx.attrs["axis"] if x.ndim else None
    with np.errstate(invalid="ignore", divide="ignore"):
        d = u - np.max(u, axis=axis, keepdims=True)
        return (d - np.log(np.sum(np.exp(d), axis=axis, keepdims=True))).astype(x.dtype, copy=False)


def _hardmax_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    if not (x.dtype.is_float or x.dtype.is_int) or x.dtype is DType.str:
        raise VerifyError(f"node {ctx.node.name!r} (Hardmax): X has element type {x.dtype.value}, expected numeric")
    return _float_like_x(ctx) if x.dtype.is_float else [TensorType(x.dtype, x.shape)]


@define_op("Hardmax", infer=_hardmax_type, attrs={"axis": AttrSpec("int", -1, "axis searched")})
def hardmax(ctx, x):
    """1 at the first maximum along ``axis``, 0 elsewhere."""
    axis = ctx.attrs["axis"] % x.ndim
    u = x.astype(np.float32) if (x.dtype.itemsize < 4 and x.dtype.kind == "f") or x.dtype.name == "bfloat16" else x
    idx = np.expand_dims(np.argmax(u, axis=axis), axis)
    out = np.zeros(x.shape, x.dtype)
    np.put_along_axis(out, idx, np.ones((), x.dtype), axis=axis)
    return out
