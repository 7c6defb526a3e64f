"""legalize-convs: integer convolutions rewritten into the convolutions and matmuls a target's arrays take.

Two rewrites of the quantized graph, both exact (the integer results are equal, bit for bit):

1. ``q.conv_transpose`` (every target): a transposed convolution is a convolution of the input with its
   cells spread ``strides`` apart. Per spatial dim (input size ``S``, kernel ``K``, stride ``s``,
   dilation ``d``, begin pad ``pb`` and output size ``O`` from ONNX's rule, ``output_padding``,
   ``output_shape`` and ``auto_pad`` included)::

       u = vec.dilate(x, strides=s, pads=(P0, Pe), pad_value=zx)      P0 = (K-1)d - pb,
                                                                      Pe = O + (K-1)d - P0 - ((S-1)s + 1)
       acc = q.conv(u, Wc, bias', dilations=d, strides=1, pads=0, group=G)

   with ``Wc[g*M/G + j, c, k] = w[g*C/G + c, j, K-1-k]`` (the kernel flipped, ``[C, M/G, *K]`` to
   ``[M, C/G, *K]``) and ``bias' = bias - zx * sum_{c,k} Wc[m, c, k]``: every window of ``u`` is
   whole, its inserted and padding cells hold ``zx``, so the zero-point term is a per-channel
   constant again (it is not for ``q.conv_transpose``, whose bias holds none). A negative ``P0`` or
   ``Pe`` crops.

2. ``q.conv`` whose spatial rank the target's arrays do not window (``Capabilities.conv_ranks``; the
   npu's windows 2-D inputs only): ``vec.im2col`` (``[G, N, K, L]``, pads at ``zx``), ``Transpose``
   and ``Reshape`` to rows ``[N, L, G*K]``, one ``q.matmul`` by the block-diagonal ``[G*K, M]``
   weight matrix (the same bias: the zero-point term holds for whole windows), ``Transpose`` to
   ``[N, M, L]`` and ``vec.col2im`` to ``[N, M, *spatial]``. The matmul runs on the arrays as every
   other one does.

Preconditions: static spatial input shapes (else the node is left as it is, and the target's lowering
names it). Without a target only rewrite 1 runs. Postconditions: no ``q.conv_transpose`` left unless
its input shape is not static; every rewritten node's result keeps its name and type.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from cimc.errors import PassError
from cimc.ir.core import Graph, Node, Value
from cimc.ir.types import DType, QuantParams, Shape, TensorType, static_dims
from cimc.ops.nn import _convt_geometry
from cimc.passmanager import Pass, PassContext, PassResult

__all__ = ["LegalizeConvsPass"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LegalizeConvsPass(Pass):
    """Rewrite q.conv_transpose into q.conv, and q.conv of ranks the arrays do not window into q.matmul."""

    name: ClassVar[str] = "legalize-convs"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Rewrite ``graph`` in place (module doc)."""
        ranks = ctx.target.capabilities().conv_ranks if ctx.target is not None else None
        changed = False
        for node in list(graph.nodes):
            if node.op == "q.conv_transpose" and _static(node.operand(0)):
                node = _transpose_to_conv(graph, node)
                changed = True
            if node.op == "q.conv" and ranks is not None and _static(node.operand(0)) \
                    and len(node.operand(0).type.shape or ()) - 2 not in ranks:
                _conv_to_matmul(graph, node)
                changed = True
        return PassResult(changed)


def _static(x: Value) -> bool:
    shape = x.type.shape
    return shape is not None and len(shape) >= 3 and all(isinstance(d, int) for d in shape[1:])


def _shape(v: Value, node: Node) -> Shape:
    """The shape of ``v``, which rewriting ``node`` needs known."""
    if v.type.shape is None:
        raise PassError(f"legalize-convs: {node.name} ({node.op}): %{v.name} has no known shape")
    return v.type.shape


def _spatial(v: Value, node: Node) -> tuple[int, ...]:
    """The dims after the first two (a convolution's spatial dims) of ``v``, which rewriting ``node`` needs
    static."""
    dims = static_dims(_shape(v, node)[2:])
    if dims is None:
        raise PassError(f"legalize-convs: {node.name} ({node.op}): %{v.name} {v.type} has dims not known before "
                        f"run time")
    return dims


def _with_axis(q: QuantParams | None, axis: int) -> QuantParams | None:
    """``q`` with its per-channel scales on ``axis`` (a per-tensor ``q`` stays so)."""
    if q is None:
        return None
    return QuantParams(q.scale, q.zero_point, q.bits, None if len(q.scale) == 1 else axis)


def _bias_constant(g: Graph, bias: np.ndarray, like: Value | None, x: Value, w: Value, name: str) -> Value:
    """An int32 bias constant of ``bias``, typed as ``like`` (or from the operands' scales)."""
    if np.abs(bias).max(initial=0) >= 2**31:
        raise PassError(f"legalize-convs: {name}: the int32 bias overflows (|bias| up to {np.abs(bias).max()})")
    quant = like.type.quant if like is not None else None
    xq, wq = x.type.quant, w.type.quant
    if quant is None and xq is not None and wq is not None:
        quant = QuantParams(tuple(xq.scale[0] * s for s in wq.scale), (0,) * len(wq.scale), 32,
                            None if len(wq.scale) == 1 else 0)
    return g.add_constant(bias.astype(np.int32), f"{name}_bias", TensorType(DType.i32, (bias.size,), quant))


def _replace(g: Graph, node: Node, new: Node) -> Node:
    out = node.outputs[0]
    name = out.name
    g.replace_all_uses_with(out, new.outputs[0])
    g.remove_node(node)
    g.rename_value(new.outputs[0], name)
    return new


def _transpose_to_conv(g: Graph, node: Node) -> Node:
    x, w = node.operand(0), node.operand(1)
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if w.const is None or (bias is not None and bias.const is None):
        raise PassError(f"legalize-convs: {node.name} (q.conv_transpose) needs a constant weight and bias")
    a, wt = node.attrs, w.const
    group, zx = int(a.get("group", 1)), int(a["x_zero_point"])
    spatial, kernel = _spatial(x, node), wt.shape[2:]
    out, pb, strides, dils = _convt_geometry(spatial, kernel, a)
    cg, mg = wt.shape[0] // group, wt.shape[1]
    flip = (slice(None), slice(None), *(slice(None, None, -1) for _ in kernel))
    wc = np.ascontiguousarray(wt.reshape(group, cg, mg, *kernel).swapaxes(1, 2)
                              .reshape(group * mg, cg, *kernel)[flip])
    p0 = [(k - 1) * d - p for k, d, p in zip(kernel, dils, pb, strict=True)]
    pe = [o + (k - 1) * d - b - ((s - 1) * st + 1)
          for o, k, d, b, s, st in zip(out, kernel, dils, p0, spatial, strides, strict=True)]
    u = g.add_node("vec.dilate", [x], {"strides": tuple(strides), "pads": (*p0, *pe), "pad_value": zx},
                   name=f"{node.name}/dilate", before=node).outputs[0]
    wv = g.add_constant(wc, f"{w.name}_conv", TensorType(DType.i8, wc.shape, _with_axis(w.type.quant, 0)))
    b = np.zeros(wc.shape[0], np.int64) if bias is None else bias.array.astype(np.int64)
    b = b - zx * wc.reshape(wc.shape[0], -1).sum(axis=1, dtype=np.int64)
    bv = _bias_constant(g, b, bias, x, wv, node.name) if bias is not None or zx else None
    attrs = {"kernel_shape": tuple(kernel), "strides": (1,) * len(kernel), "dilations": tuple(dils),
             "pads": (0,) * (2 * len(kernel)), "group": group, "x_zero_point": zx}
    conv = g.add_node("q.conv", [u, wv, bv], attrs, outputs=[node.outputs[0].type], name=node.name, before=node)
    logger.info("legalize-convs: %s (q.conv_transpose) -> vec.dilate + q.conv", node.name)
    return _replace(g, node, conv)


def _block_diagonal(w: np.ndarray, group: int) -> np.ndarray:
    """``[M, C/G, *K]`` as the ``[G*K', M]`` matrix of im2col rows (``K' = C/G * prod(K)``) by channels."""
    m, kg = w.shape[0], math.prod(w.shape[1:])
    mg, flat = m // group, w.reshape(m, kg)
    mat = np.zeros((group * kg, m), w.dtype)
    for gi in range(group):
        mat[gi * kg:(gi + 1) * kg, gi * mg:(gi + 1) * mg] = flat[gi * mg:(gi + 1) * mg].T
    return mat


def _conv_to_matmul(g: Graph, node: Node) -> None:
    x, w = node.operand(0), node.operand(1)
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if w.const is None:
        raise PassError(f"legalize-convs: {node.name} (q.conv) needs a constant weight")
    a, final = node.attrs, node.outputs[0].type
    group, kernel = int(a.get("group", 1)), tuple(int(k) for k in w.const.shape[2:])
    add = lambda op, ins, attrs, hint, **kw: g.add_node(op, ins, attrs, name=f"{node.name}/{hint}",  # noqa: E731
                                                        before=node, **kw).outputs[0]
    conv_attrs = {k: v for k, v in a.items() if k in ("auto_pad", "dilations", "group", "pads", "strides")}
    cols = add("vec.im2col", [x], {**conv_attrs, "kernel_shape": kernel, "pad_value": int(a["x_zero_point"])},
               "im2col")
    kg, length = _spatial(cols, node)
    rows = add("Transpose", [cols], {"perm": (1, 3, 0, 2)}, "rows")
    rows = add("Reshape", [rows, g.add_constant(np.asarray([0, length, group * kg], np.int64),
                                                f"{node.name}_rows_shape")], {}, "rows_flat")
    mat = _block_diagonal(w.const, group)
    wv = g.add_constant(mat, f"{w.name}_matrix", TensorType(DType.i8, mat.shape, _with_axis(w.type.quant, 1)))
    acc_q = _with_axis(final.quant, 2)
    acc = add("q.matmul", [rows, wv, bias], {"x_zero_point": int(a["x_zero_point"])}, "matmul",
              outputs=[TensorType(DType.i32, (_shape(node.outputs[0], node)[0], length, mat.shape[1]), acc_q)])
    acc = add("Transpose", [acc], {"perm": (0, 2, 1)}, "channels")
    y = g.add_node("vec.col2im", [acc], {"spatial": _spatial(node.outputs[0], node)}, outputs=[final], name=node.name,
                   before=node)
    logger.info("legalize-convs: %s (q.conv, %d-D) -> vec.im2col + q.matmul", node.name, len(kernel))
    _replace(g, node, y)
