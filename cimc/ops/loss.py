"""Built-in ops: the classification losses ONNX defines (NegativeLogLikelihoodLoss,
SoftmaxCrossEntropyLoss), so graphs exported with their loss still import and evaluate.

With ``x`` of shape ``[N, C, d...]``, integer targets ``t`` of shape ``[N, d...]`` and per-class
weights ``w`` (1 when absent), each element's loss is ``-x[n, t, d] * w[t]``, and 0 (with weight 0)
where ``t == ignore_index``. ``reduction``: ``none`` keeps ``[N, d...]``, ``sum`` adds, ``mean``
divides the sum by the total weight of the elements not ignored. SoftmaxCrossEntropyLoss applies
this to ``log_softmax(scores)`` over axis 1 and also returns those log-probabilities. Computed in
float64 and rounded once to the input type.
"""

from __future__ import annotations

import numpy as np

from cimc.errors import VerifyError
from cimc.ir.opdef import AttrSpec, InferContext, define_op
from cimc.ir.types import TensorType
from cimc.ops._infer import require

_ATTRS = {"ignore_index": AttrSpec("int", None, "targets of this value contribute nothing"),
          "reduction": AttrSpec("str", "mean", "none, sum or mean")}


def _verify(node) -> str | None:
    r = node.attrs.get("reduction", "mean")
    return None if r in ("none", "sum", "mean") else f"reduction is {r!r}, expected none, sum or mean"


def _loss_type(ctx: InferContext) -> list[TensorType]:
    x, t = require(ctx, 0), require(ctx, 1)
    if not x.dtype.is_float or not t.dtype.is_int:
        raise VerifyError(f"node {ctx.node.name!r} ({ctx.node.op}): expected float scores and integer targets, "
                          f"found {x} and {t}")
    loss = TensorType(x.dtype, t.shape if ctx.attrs["reduction"] == "none" else ())
    return [loss, TensorType(x.dtype, x.shape)][: max(1, ctx.num_outputs)]


def _nll(x: np.ndarray, target: np.ndarray, weight: np.ndarray | None, ignore: int | None,
         reduction: str) -> np.ndarray:
    t = target.astype(np.int64)
    keep = np.ones(t.shape, bool) if ignore is None else t != ignore
    safe = np.where(keep, t, 0)
    picked = np.take_along_axis(x, safe[:, None], axis=1)[:, 0]
    w = (np.ones(t.shape) if weight is None else weight.astype(np.float64)[safe]) * keep
    loss = -picked * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.asarray(loss.sum())
    return np.asarray(loss.sum() / w.sum())


@define_op("NegativeLogLikelihoodLoss", inputs=(2, 3), infer=_loss_type, verify=_verify, attrs=_ATTRS)
def nll_loss(ctx, x, target, weight=None):
    """Negative log-likelihood of the targets' entries of x (see the module doc)."""
    out = _nll(x.astype(np.float64), target, weight, ctx.attrs["ignore_index"], ctx.attrs["reduction"])
    return out.astype(x.dtype)


@define_op("SoftmaxCrossEntropyLoss", inputs=(2, 3), outputs=(1, 2), infer=_loss_type, verify=_verify,
           attrs=_ATTRS)
def softmax_cross_entropy_loss(ctx, scores, labels, weight=None):
    """Cross entropy of softmax(scores) over axis 1 against the labels; also the log-probabilities."""
    u = scores.astype(np.float64)
    d = u - u.max(axis=1, keepdims=True)
    log_prob = d - np.log(np.exp(d).sum(axis=1, keepdims=True))
    out = _nll(log_prob, labels, weight, ctx.attrs["ignore_index"], ctx.attrs["reduction"])
    return out.astype(scores.dtype), log_prob.astype(scores.dtype)
