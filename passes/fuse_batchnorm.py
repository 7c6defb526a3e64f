"""fuse-batchnorm: fold inference BatchNormalization into the weights of the node before it.

In inference form BN is a per-channel affine map on axis 1: ``y = x * s + t`` with
``sigma = sqrt(var + eps)``, ``s = gamma / sigma`` and ``t = beta - mu * s``. Folded into a
producer ``x = W * a + b`` it gives ``W' = W * s`` along the producer's output-channel axis and
``b' = (b - mu) * gamma / sigma + beta = b * s + t`` (``b = 0`` when there is no bias):

- ``Conv``: W is ``[M, C/group, k...]``, s scales axis 0.
- ``ConvTranspose``: W is ``[C, M/group, k...]``; output channel ``g * M/group + j`` comes from
  ``W[g-th block of C/group rows, j]``, so s is viewed as ``[group, M/group]`` and scales axis 1
  of each group's block.
- ``Gemm`` ``alpha * A'B' + beta * C``: s scales the N axis of B (axis 1, or 0 when ``transB``);
  alpha and beta are folded in (``B' = alpha * B * s``, ``C' = beta * C * s + t``) and reset to 1.
- ``MatMul`` ``A @ B`` with a constant 2-D B and a rank-2 result (so BN's axis 1 is the feature
  axis): becomes ``Gemm(A, B * s, t)``. On a rank > 2 result BN's axis 1 is not the feature axis.

Everything is computed in float64 and cast back to the weight's dtype (a weight is scaled in one
ufunc pass, float64 inside, so no float64 copy of it is made); new constants are made (a weight
may be shared, arrays are never mutated) and the old ones are dropped once unused.

Preconditions for folding: BN in inference form (``training_mode=0``, running-statistics results
unused) with constant parameters; a producer of a supported op whose result only BN reads, with a
constant float weight (and bias). A BN that has no such producer (a graph input, a Concat, a
shared result, ...) becomes ``Mul(x, s) + Add(., t)`` with constants shaped ``[C, 1, ...]`` to
broadcast on axis 1: two plain ONNX ops that later passes lower like any elementwise op (a
CIM target runs them on its digital vector unit); in float32 they compute bit for bit what the
BN reference implementation does. Every decision, with the reason a fold did not fire, is logged
at DEBUG and returned (:func:`explain`, ``FuseBatchNormResult.outcomes``).

Postcondition: the graph verifies and output names are kept; the only BatchNormalization nodes
left are those in training mode, with used statistics results, with non-constant parameters or
an input of unknown rank (and, with ``affine=false``, those that could not be folded).
Model: onnxscript's ``rewriter/rules/common/_fuse_batchnorm.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np

from cimc.errors import CimcError
from cimc.ir.core import Graph, Node, Value
from cimc.passmanager import Pass, PassContext, PassResult, option

__all__ = ["FuseBatchNormPass", "FuseBatchNormResult", "Outcome", "explain", "fuse_batchnorm"]

logger = logging.getLogger(__name__)

_BN_PARAMS = ("scale", "B", "input_mean", "input_var")


class Outcome(NamedTuple):
    """What happened to one BatchNormalization: ``fused`` (into ``detail``), ``affine`` or ``kept``
    (``detail`` says why it was not fused)."""

    bn: str
    action: str
    detail: str

    def __str__(self) -> str:
        verb = {"fused": "fused", "affine": "became Mul+Add:", "kept": "kept:"}[self.action]
        return f"BatchNormalization '{self.bn}' {verb} {self.detail}"


class _Fold(NamedTuple):
    """A folded producer: its op, attributes, new weight (in the old weight's dtype) and float64 bias."""

    op: str
    attrs: dict[str, object]
    weight: np.ndarray
    bias: np.ndarray


def bn_scale_shift(gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                   eps: float) -> tuple[np.ndarray, np.ndarray]:
    """BN as ``x * s + t`` in float64: ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``."""
    f = [np.asarray(a, np.float64) for a in (gamma, beta, mean, var)]
    s = f[0] / np.sqrt(f[3] + eps)
    return s, f[1] - f[2] * s


def _mismatch(node: Node, n: int, s: np.ndarray) -> str:
    return f"{node.op} '{node.name}' has {n} output channels but the BN parameters have {s.size}"


def _scaled(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``float64(w) * s`` (``s`` broadcasting to ``w``) rounded to ``w``'s dtype and laid out like ``w``:
    one pass over ``w``, no float64 copy of it."""
    return np.multiply(w, s, dtype=np.float64, out=np.empty_like(w), casting="same_kind")


def _conv(node: Node, w: np.ndarray, b: np.ndarray | None, s: np.ndarray, t: np.ndarray) -> _Fold | str:
    if w.shape[0] != s.size:
        return _mismatch(node, w.shape[0], s)
    bias = t if b is None else b * s + t
    return _Fold(node.op, dict(node.attrs), _scaled(w, s.reshape(-1, *(1,) * (w.ndim - 1))), bias)


def _conv_transpose(node: Node, w: np.ndarray, b: np.ndarray | None, s: np.ndarray,
                    t: np.ndarray) -> _Fold | str:
    g = int(node.attrs.get("group", 1))
    (cin, mg), kernel = w.shape[:2], w.shape[2:]
    if cin % g:
        return f"ConvTranspose '{node.name}': {cin} input channels are not divisible by group={g}"
    if mg * g != s.size:
        return _mismatch(node, mg * g, s)
    scaled = _scaled(w.reshape(g, cin // g, mg, *kernel), s.reshape(g, 1, mg, *(1,) * len(kernel)))
    return _Fold(node.op, dict(node.attrs), scaled.reshape(w.shape), t if b is None else b * s + t)


def _gemm(node: Node, w: np.ndarray, b: np.ndarray | None, s: np.ndarray, t: np.ndarray) -> _Fold | str:
    alpha, beta, trans_b = (node.attrs.get(k, d) for k, d in (("alpha", 1.0), ("beta", 1.0), ("transB", 0)))
    n = w.shape[0] if trans_b else w.shape[1]
    if n != s.size:
        return _mismatch(node, n, s)
    weight = (alpha * w.astype(np.float64) * (s[:, None] if trans_b else s)).astype(w.dtype)
    bias = t if b is None or beta == 0 else beta * b * s + t  # broadcasts C ([], [N], [M,1], [M,N]) with [N]
    attrs = {k: v for k, v in node.attrs.items() if k not in ("alpha", "beta")}
    return _Fold("Gemm", attrs, weight, bias)


def _matmul(node: Node, w: np.ndarray, b: np.ndarray | None, s: np.ndarray, t: np.ndarray) -> _Fold | str:
    rank = node.outputs[0].type.rank
    if w.ndim != 2:
        return f"the MatMul weight has shape {list(w.shape)}; only a 2-D [K, N] weight is fused"
    if rank != 2:
        return (f"BN normalizes axis 1 of the rank-{rank} MatMul result, but the MatMul's features are on "
                f"its last axis; only a rank-2 [M, N] result is fused")
    if w.shape[1] != s.size:
        return _mismatch(node, w.shape[1], s)
    return _Fold("Gemm", {}, _scaled(w, s), t)


_RULES: dict[str, Callable[..., _Fold | str]] = {
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _matmul}


def _bn_problem(graph: Graph, bn: Node) -> str | None:
    """Why ``bn`` is not an affine map with constant parameters (so neither folds nor Mul+Add)."""
    if bn.attrs.get("training_mode", 0):
        return "training_mode=1: it normalizes with batch statistics, which no constant affine map expresses"
    for v in bn.outputs[1:]:
        if v.uses or graph.is_output(v):
            return f"its running-statistics result %{v.name} is used"
    for role, p in zip(_BN_PARAMS, bn.inputs[1:], strict=True):
        if p is None or p.const is None:
            return f"its {role} operand {'is absent' if p is None else f'%{p.name} is not a constant'}"
    return None


def _fold(graph: Graph, bn: Node, s: np.ndarray, t: np.ndarray, producers: tuple[str, ...]) -> _Fold | str:
    """The producer of ``bn``'s input with ``bn`` folded in, or why it cannot be."""
    x = bn.operand(0)
    prod = x.producer
    if prod is None:
        return f"its input %{x.name} is a graph {'constant' if x.is_constant else 'input'}, not a node result"
    if prod.op not in _RULES or prod.op not in producers:
        why = "has no weights to fold into" if prod.op not in _RULES else f"is not in producers={list(producers)}"
        return f"its input comes from {prod.op} '{prod.name}', which {why}"
    if len(x.uses) != 1 or graph.is_output(x):
        return f"the {prod.op} result %{x.name} is also read elsewhere ({len(x.uses)} uses" \
               f"{', and a graph output' if graph.is_output(x) else ''})"
    w, b = prod.operand(1), prod.inputs[2] if len(prod.inputs) > 2 else None
    if w.const is None:
        return f"the {prod.op} weight %{w.name} is not a constant"
    if not w.type.dtype.is_float:
        return f"the {prod.op} weight %{w.name} is {w.type.dtype.name}, not floating point"
    if b is not None and b.const is None:
        return f"the {prod.op} bias %{b.name} is not a constant"
    return _RULES[prod.op](prod, w.const, None if b is None else b.array.astype(np.float64), s, t)


def _replace_bn(graph: Graph, bn: Node, new: Value, dead: list[Node]) -> None:
    """Make ``new`` take the place (and the name) of ``bn``'s result; remove ``bn`` and ``dead``
    and the constants only they read."""
    name, consts = bn.outputs[0].name, {id(v): v for n in (bn, *dead) for v in n.inputs if v is not None
                                        and v.is_constant}
    graph.replace_all_uses_with(bn.outputs[0], new)
    for node in (bn, *dead):
        graph.remove_node(node)
    for v in consts.values():
        if not v.uses and not graph.is_output(v):
            graph.remove_constant(v)
    graph.rename_value(new, name)


def _apply(graph: Graph, bn: Node, producers: tuple[str, ...], affine: bool) -> Outcome:
    if (why := _bn_problem(graph, bn)) is not None:
        return Outcome(bn.name, "kept", why)
    gamma, beta, mean, var = (bn.operand(i).array for i in range(1, 5))
    with np.errstate(divide="ignore", invalid="ignore"):  # var + eps <= 0 gives inf/nan, as BN itself does
        s, t = bn_scale_shift(gamma, beta, mean, var, float(bn.attrs.get("epsilon", 1e-5)))
    fold = _fold(graph, bn, s, t, producers)
    x = bn.operand(0)
    if isinstance(fold, _Fold):
        prod = x.producer
        assert prod is not None  # a fold is into the producer of x
        w = prod.operand(1)
        b = prod.inputs[2] if len(prod.inputs) > 2 else None
        wv = graph.add_constant(fold.weight, f"{w.name}_bn")
        bdt = w.array.dtype if b is None else b.array.dtype
        bv = graph.add_constant(fold.bias.astype(bdt), f"{prod.name}_bias" if b is None else f"{b.name}_bn")
        new = graph.add_node(fold.op, [prod.inputs[0], wv, bv], fold.attrs, outputs=[bn.outputs[0].type],
                             name=prod.name, before=bn)
        _replace_bn(graph, bn, new.outputs[0], [prod])
        graph.rename_node(new, prod.name)  # the fused node keeps the producer's name (per-layer options use it)
        return Outcome(bn.name, "fused", f"into {prod.op} '{prod.name}'" + (" (now Gemm)" * (fold.op != prod.op)))
    rank = x.type.rank
    if not affine:
        return Outcome(bn.name, "kept", f"{fold} (and affine=false)")
    if rank is None or rank < 2:
        return Outcome(bn.name, "kept", f"{fold}; and its input has rank {rank}, so no Mul+Add either")
    shape, dt = (-1, *(1,) * (rank - 2)), x.type.dtype.numpy
    sv = graph.add_constant(s.astype(dt).reshape(shape), f"{bn.name}_scale")
    tv = graph.add_constant(t.astype(dt).reshape(shape), f"{bn.name}_shift")
    mul = graph.add_node("Mul", [x, sv], name=f"{bn.name}_mul", before=bn)
    add = graph.add_node("Add", [mul.outputs[0], tv], name=f"{bn.name}_add", before=bn)
    _replace_bn(graph, bn, add.outputs[0], [])
    return Outcome(bn.name, "affine", fold)


def fuse_batchnorm(graph: Graph, producers: tuple[str, ...] = tuple(_RULES), affine: bool = True) -> list[Outcome]:
    """Fold or rewrite every BatchNormalization of ``graph`` in place; one outcome per BN, in order."""
    outcomes = []
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        outcomes.append(out := _apply(graph, bn, tuple(producers), affine))
        logger.debug("%s", out)
    return outcomes


def explain(graph: Graph, producers: tuple[str, ...] = tuple(_RULES), affine: bool = True) -> list[str]:
    """What the pass would do to each BatchNormalization of ``graph`` and why (``graph`` is untouched)."""
    return [str(o) for o in fuse_batchnorm(graph.copy(), producers, affine)]


@dataclass(frozen=True)
class FuseBatchNormResult(PassResult):
    """The pass result, with one :class:`Outcome` per BatchNormalization."""

    outcomes: tuple[Outcome, ...] = ()


@dataclass(frozen=True)
class FuseBatchNormPass(Pass):
    """Fold inference BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul before it, else Mul+Add."""

    name: ClassVar[str] = "fuse-batchnorm"
    producers: tuple[str, ...] = option(tuple(_RULES), "Ops BN may be folded into (any of Conv, "
                                        "ConvTranspose, Gemm, MatMul).")
    affine: bool = option(True, "Turn a BN that cannot be folded into Mul+Add (false: leave it).")

    def __post_init__(self) -> None:
        if unknown := [p for p in self.producers if p not in _RULES]:
            raise CimcError(f"option producers names {', '.join(map(repr, unknown))}, which BN cannot be "
                            f"folded into; choose among {', '.join(_RULES)} (ONNX op names, case matters)")

    def run(self, graph: Graph, ctx: PassContext) -> FuseBatchNormResult:
        """Rewrite ``graph`` in place."""
        outcomes = tuple(fuse_batchnorm(graph, self.producers, self.affine))
        counts = {a: sum(o.action == a for o in outcomes) for a in ("fused", "affine", "kept")}
        if outcomes:
            logger.info("fuse-batchnorm: %(fused)d fused, %(affine)d to Mul+Add, %(kept)d kept", counts)
        return FuseBatchNormResult(counts["fused"] + counts["affine"] > 0, outcomes)
