"""dcim instructions: ``dcim.mvm``, its definition and executor implementation.

``dcim.mvm(x: u8, w: i8 [G, K, N]) -> i32``  attrs ``layout``, ``act_bits``, ``tiles`` (cost only):
    the macros' product of the activations with a layer's weight matrices, computed as the hardware
    does: input bit planes ``x_j = (x >> j) & 1`` for ``j < act_bits``, each summed exactly over all
    ``K`` rows by the adder trees (``x_j @ w``), then shifted and added, ``y = sum_j 2**j * (x_j @ w)``,
    which equals ``x @ w`` exactly (int32). Layout ``rows``: ``x [..., K]`` (``G = 1``), result
    ``[..., N]``; layout ``cols``: ``x [G, B, K, L]`` (``vec.im2col``), result ``[B, G*N, L]``.
"""

from __future__ import annotations

import numpy as np

from cimc.errors import VerifyError
from cimc.ir.opdef import AttrSpec, InferContext, op_def
from cimc.ir.types import DType, TensorType
from cimc.ops._infer import require

__all__ = ["OPS", "dcim_mvm"]


def _mvm_type(ctx: InferContext) -> list[TensorType]:
    x, w, a = require(ctx, 0), require(ctx, 1), ctx.attrs
    if x.dtype is not DType.u8 or w.dtype is not DType.i8 or w.shape is None or len(w.shape) != 3:
        raise VerifyError(f"dcim.mvm: operands are {x} and {w}, expected u8 activations and i8 weights [G, K, N]")
    g, _, n = w.shape
    if a["layout"] == "cols":
        if x.shape is not None and len(x.shape) != 4:
            raise VerifyError(f"dcim.mvm: layout 'cols' takes x [G, B, K, L] (vec.im2col), is {x}")
        shape = None if x.shape is None else (x.shape[1], g * n, x.shape[3])
    elif a["layout"] == "rows":
        shape = None if x.shape is None else (*x.shape[:-1], n)
    else:
        raise VerifyError(f"dcim.mvm: layout={a['layout']!r} is not 'rows' or 'cols'")
    return [TensorType(DType.i32, shape)]


@op_def("dcim.mvm", inputs=2, infer=_mvm_type, attrs={
    "layout": AttrSpec("str", "rows", "rows: x [..., K] -> [..., N]; cols: x [G, B, K, L] -> [B, G*N, L]"),
    "act_bits": AttrSpec("int", 8, "input bits fed one per cycle"),
    "tiles": AttrSpec("int", 1, "macro tiles the weights take (cost only)")})
def dcim_mvm(ctx, x, w):
    """Bit-serial adder-tree product of x with the weights, exact, as int32."""
    wf = w.astype(np.float64)  # sums of at most K * 127 per bit plane: exact in float64
    cols = ctx.attrs["layout"] == "cols"
    y = None
    for j in range(ctx.attrs["act_bits"]):
        plane = ((x >> j) & 1).astype(np.float64)
        part = np.einsum("gbkl,gkn->bgnl", plane, wf) if cols else plane @ wf[0]
        y = part * (1 << j) if y is None else y + part * (1 << j)
    if cols:
        y = y.reshape(y.shape[0], -1, y.shape[-1])
    return y.astype(np.int64).astype(np.int32)


OPS = (dcim_mvm,)
"""The dcim instructions, as the target lists them."""
