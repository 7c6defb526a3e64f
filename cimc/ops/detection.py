"""Built-in ops: object-detection heads (NonMaxSuppression, RoiAlign, MaxRoiPool).

``NonMaxSuppression``: per batch and class, boxes scoring above ``score_threshold`` are taken in
descending score order (ties: lower index first) and kept unless their IoU with a box already kept
exceeds ``iou_threshold``, up to ``max_output_boxes_per_class``; the result lists ``[batch, class,
box]`` rows in that order. Boxes are ``[y1, x1, y2, x2]`` corners (either order) or, with
``center_point_box``, ``[x_center, y_center, width, height]``.

``RoiAlign``: each region (scaled by ``spatial_scale``, shifted by -0.5 with ``half_pixel``) is cut
into ``output_height x output_width`` bins; each bin averages (or, ``mode=max``, takes the largest
weighted corner of) bilinear samples on a ``sampling_ratio`` grid (adaptive when 0:
``ceil(roi_size / output_size)``). Samples beyond one pixel outside the image count as 0.
``MaxRoiPool`` (Caffe's): regions rounded to pixels, each bin the max of its pixels (0 if empty).
"""

from __future__ import annotations

import math

import numpy as np

from cimc.errors import VerifyError
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, define_op
from cimc.ir.types import DType, TensorType
from cimc.ops._infer import require


def _scalar(a: np.ndarray | None, default: float) -> float:
    return default if a is None or np.asarray(a).size == 0 else np.asarray(a).reshape(-1)[0].item()


def _corners(boxes: np.ndarray, center: bool) -> np.ndarray:
    """[..., 4] boxes as (y_min, x_min, y_max, x_max)."""
    b = boxes.astype(np.float64)
    if center:
        x, y, w, h = b[..., 0], b[..., 1], b[..., 2] / 2, b[..., 3] / 2
        return np.stack([y - h, x - w, y + h, x + w], axis=-1)
    return np.stack([np.minimum(b[..., 0], b[..., 2]), np.minimum(b[..., 1], b[..., 3]),
                     np.maximum(b[..., 0], b[..., 2]), np.maximum(b[..., 1], b[..., 3])], axis=-1)


def _iou(c: np.ndarray) -> np.ndarray:
    """Pairwise IoU of [n, 4] corner boxes (0 where either box or the overlap is empty)."""
    y1 = np.maximum(c[:, None, 0], c[None, :, 0])
    x1 = np.maximum(c[:, None, 1], c[None, :, 1])
    y2 = np.minimum(c[:, None, 2], c[None, :, 2])
    x2 = np.minimum(c[:, None, 3], c[None, :, 3])
    inter = np.where((y2 > y1) & (x2 > x1), (y2 - y1) * (x2 - x1), 0.0)
    area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    union = area[:, None] + area[None, :] - inter
    ok = (inter > 0) & (area[:, None] > 0) & (area[None, :] > 0) & (union > 0)
    return np.where(ok, inter / np.where(ok, union, 1), 0.0)


@define_op("NonMaxSuppression", inputs=(2, 5), infer=lambda ctx: [TensorType(DType.i64, (None, 3))],
           attrs={"center_point_box": AttrSpec("int", 0, "1: boxes are [x_c, y_c, w, h]; 0: two corners")})
def non_max_suppression(ctx, boxes, scores, max_out=None, iou_threshold=None, score_threshold=None):
    """[batch, class, box] of the boxes kept, class by class."""
    limit = max(int(_scalar(max_out, 0)), 0)
    iou_max = _scalar(iou_threshold, 0.0)
    floor = None if score_threshold is None or np.asarray(score_threshold).size == 0 else \
        _scalar(score_threshold, 0.0)
    rows: list[tuple[int, int, int]] = []
    for b in range(boxes.shape[0]):
        iou = _iou(_corners(boxes[b], bool(ctx.attrs["center_point_box"])))
        for c in range(scores.shape[1]):
            s = scores[b, c].astype(np.float64)
            order = np.argsort(-s, kind="stable")
            if floor is not None:
                order = order[s[order] > floor]
            kept: list[int] = []
            for i in order:
                if len(kept) >= limit:
                    break
                if not kept or not np.any(iou[i, kept] > iou_max):
                    kept.append(int(i))
            rows.extend((b, c, i) for i in kept)
    return np.asarray(rows, np.int64).reshape(-1, 3)


def _roi_type(ctx: InferContext) -> list[TensorType]:
    x, rois = require(ctx, 0), require(ctx, 1)
    n = rois.shape[0] if rois.shape is not None else None
    c = x.shape[1] if x.shape is not None and len(x.shape) == 4 else None
    if x.rank is not None and x.rank != 4:
        raise VerifyError(f"node {ctx.node.name!r} ({ctx.node.op}): X must be NCHW, is {x}")
    if ctx.node.op == "MaxRoiPool":
        h, w = ctx.attrs["pooled_shape"]
    else:
        h, w = ctx.attrs["output_height"], ctx.attrs["output_width"]
    return [TensorType(x.dtype, (n, c, h, w))]


def _bilinear(height: int, width: int, ys: np.ndarray, xs: np.ndarray):
    """Corner indices and weights of bilinear samples at (ys x xs) as RoiAlign computes them:
    ([4, ny, nx] flat indices, [4, ny, nx] weights), zero weight for samples beyond the border."""
    y, x = ys[:, None] + 0 * xs[None, :], xs[None, :] + 0 * ys[:, None]
    outside = (y < -1.0) | (y > height) | (x < -1.0) | (x > width)
    y, x = np.maximum(y, 0), np.maximum(x, 0)
    y_low, x_low = y.astype(np.int64), x.astype(np.int64)
    top, right = y_low >= height - 1, x_low >= width - 1
    y_low, x_low = np.where(top, height - 1, y_low), np.where(right, width - 1, x_low)
    y_high, x_high = np.where(top, height - 1, y_low + 1), np.where(right, width - 1, x_low + 1)
    y, x = np.where(top, y_low, y), np.where(right, x_low, x)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    idx = np.stack([y_low * width + x_low, y_low * width + x_high, y_high * width + x_low, y_high * width + x_high])
    w = np.stack([hy * hx, hy * lx, ly * hx, ly * lx]) * ~outside
    return np.where(outside, 0, idx), w


@define_op("RoiAlign", inputs=3, infer=_roi_type, attrs={
    "coordinate_transformation_mode": AttrSpec("str", "half_pixel", "half_pixel or output_half_pixel (legacy)"),
    "mode": AttrSpec("str", "avg", "avg or max"),
    "output_height": AttrSpec("int", 1, "bins per region, vertically"),
    "output_width": AttrSpec("int", 1, "bins per region, horizontally"),
    "sampling_ratio": AttrSpec("int", 0, "samples per bin side (0: adaptive)"),
    "spatial_scale": AttrSpec("float", 1.0, "scale from region to image coordinates")})
def roi_align(ctx, x, rois, batch_indices):
    """Bilinearly sampled, pooled features of each region."""
    a = ctx.attrs
    oh, ow, scale = a["output_height"], a["output_width"], a["spatial_scale"]
    half = a["coordinate_transformation_mode"] == "half_pixel"
    _, channels, height, width = x.shape
    out = np.zeros((rois.shape[0], channels, oh, ow), np.float64)
    flat = x.reshape(x.shape[0], channels, -1).astype(np.float64)
    for n, roi in enumerate(rois.astype(np.float64)):
        x0, y0, x1, y1 = roi * scale - (0.5 if half else 0.0)
        rw, rh = (x1 - x0, y1 - y0) if half else (max(x1 - x0, 1.0), max(y1 - y0, 1.0))
        bh, bw = rh / oh, rw / ow
        gh = a["sampling_ratio"] if a["sampling_ratio"] > 0 else math.ceil(rh / oh)
        gw = a["sampling_ratio"] if a["sampling_ratio"] > 0 else math.ceil(rw / ow)
        ys = (y0 + np.arange(oh)[:, None] * bh + (np.arange(gh)[None, :] + 0.5) * bh / gh).reshape(-1)
        xs = (x0 + np.arange(ow)[:, None] * bw + (np.arange(gw)[None, :] + 0.5) * bw / gw).reshape(-1)
        idx, w = _bilinear(height, width, ys, xs)  # [4, oh*gh, ow*gw]
        corner = flat[int(batch_indices[n])][:, idx] * w  # [C, 4, oh*gh, ow*gw]
        if a["mode"] == "avg":
            out[n] = corner.sum(axis=1).reshape(channels, oh, gh, ow, gw).sum(axis=(2, 4)) / max(gh * gw, 1)
        else:
            out[n] = corner.max(axis=1).reshape(channels, oh, gh, ow, gw).max(axis=(2, 4))
    return out.astype(x.dtype)


@define_op("MaxRoiPool", inputs=2, infer=_roi_type, attrs={
    "pooled_shape": AttrSpec("ints", REQUIRED, "bins per region (height, width)"),
    "spatial_scale": AttrSpec("float", 1.0, "scale from region to image coordinates")})
def max_roi_pool(ctx, x, rois):
    """The max of each bin of each region ([batch, x1, y1, x2, y2] rows), Caffe's rounding."""
    ph, pw = ctx.attrs["pooled_shape"]
    scale = ctx.attrs["spatial_scale"]
    _, channels, height, width = x.shape
    out = np.zeros((rois.shape[0], channels, ph, pw), x.dtype)
    for n, (b, *box) in enumerate(rois.astype(np.float64)):
        x0, y0, x1, y1 = (int(np.round(v * scale)) for v in box)
        rh, rw = max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1)
        for i in range(ph):
            hs = min(max(int(np.floor(i * rh / ph)) + y0, 0), height)
            he = min(max(int(np.ceil((i + 1) * rh / ph)) + y0, 0), height)
            for j in range(pw):
                ws = min(max(int(np.floor(j * rw / pw)) + x0, 0), width)
                we = min(max(int(np.ceil((j + 1) * rw / pw)) + x0, 0), width)
                if he > hs and we > ws:
                    out[n, :, i, j] = x[int(b), :, hs:he, ws:we].max(axis=(1, 2))
    return out
