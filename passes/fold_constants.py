"""fold-constants: compute at compile time whatever does not depend on the graph inputs.

Algorithm: one forward walk over the nodes, in order; for each node
1. re-infer its result types from its operands (which earlier steps may have made constant or
   more precise) and keep, dim by dim, the more precise of recorded and inferred (a known dim is
   never changed), so a ``Reshape`` whose shape operand became constant gets a static type;
2. ``Identity`` and inference-mode ``Dropout`` (no ``training_mode``, or a constant false one,
   and an unused mask) are removed by making their readers read the input;
3. a node whose operands are all constants (or absent) is evaluated with its op's reference
   implementation and its results become graph constants under the same value names;
4. otherwise a small integer tensor computed from shapes whose every element is known when
   compiling (the IR's shape values, ``cimc.ir.opdef.shape_value``: ``Shape`` of a tensor of known
   rank, ``Gather``/``Slice``/``Concat``/``Squeeze``/``Unsqueeze``/``Cast`` of them, ``Add``/``Sub``/
   ``Mul``/``Div`` ...) becomes a constant. So ``Gather(Shape(x), 1)`` folds when dim 1 of ``x`` is
   static even if its batch dim ``N`` is symbolic; ``Gather(.., 0)`` stays, and a ``Reshape`` to
   ``Concat(Unsqueeze(Gather(Shape(x), 0)), [4, -1])`` is typed ``[N, 4, ..]`` by its type rule,
   which reads the same shape values.
Finally nodes and constants nothing reads are removed.

Never evaluated: ops with side effects, random ops, ``Dropout`` in training mode, nodes with
subgraph attributes, ops listed in ``keep_ops`` (by default ``DequantizeLinear``, so QDQ models
keep integer weights) and results of more than ``max_size`` elements. Each skip is logged at
DEBUG with its reason.

Preconditions: the graph verifies. Postconditions: the graph verifies; no node outside those
exceptions has all-constant operands; graph input and output names are unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from cimc.ir.core import Graph, Node, Value
from cimc.ir.opdef import OpContext, infer_types, lookup, shape_value
from cimc.ir.types import Dim, ShapeValue, TensorType
from cimc.passmanager import Pass, PassContext, PassResult, option

__all__ = ["FoldConstantsPass"]

logger = logging.getLogger(__name__)

_RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli", "Dropout"})

def _refine(recorded: TensorType, inferred: TensorType) -> TensorType | None:
    """``recorded`` with the dims ``inferred`` knows better, or ``None`` if nothing improves."""
    if inferred.dtype != recorded.dtype or inferred.shape is None:
        return None
    if recorded.shape is None:
        return recorded.with_shape(inferred.shape)
    if len(recorded.shape) != len(inferred.shape):
        return None
    new = tuple(i if (isinstance(i, int) and not isinstance(r, int)) or r is None else r
                for r, i in zip(recorded.shape, inferred.shape, strict=True))
    return recorded.with_shape(new) if new != recorded.shape else None


def _replace(graph: Graph, node: Node, new: list[Value | None], *, keep_names: bool) -> None:
    """Make readers of ``node``'s results read ``new`` and remove it; graph outputs keep their
    names (all results do with ``keep_names``). A ``None`` entry is a result nothing reads."""
    renames = []
    for old, v in zip(node.outputs, new, strict=True):
        if v is not None:
            if keep_names or graph.is_output(old):
                renames.append((v, old.name))
            graph.replace_all_uses_with(old, v)
    graph.remove_node(node)
    for v, name in renames:
        graph.rename_value(v, name)


def _bypass(graph: Graph, node: Node) -> str | None:
    """Remove an ``Identity`` or inference ``Dropout``; the reason if it cannot be."""
    src, out = node.inputs[0], node.outputs[0]
    if node.op == "Dropout":
        mode = node.inputs[2] if len(node.inputs) > 2 else None
        if mode is not None and (mode.const is None or bool(mode.const)):
            return "training_mode is not a constant false"
        if len(node.outputs) > 1 and (node.outputs[1].uses or graph.is_output(node.outputs[1])):
            return "its mask is used"
    if src is None:
        return "no input"
    if graph.is_output(out) and (graph.is_output(src) or any(src is v for v in graph.inputs)):
        return "its input is a graph input or output and so cannot take its output's name"
    _replace(graph, node, [src] + [None] * (len(node.outputs) - 1), keep_names=False)
    return None


def _fold(graph: Graph, node: Node, arrays: list[np.ndarray], max_size: int) -> str | None:
    """Replace ``node``'s results by constants holding ``arrays``; the reason if it cannot."""
    if len(arrays) < len(node.outputs):
        return f"the op gave {len(arrays)} results for {len(node.outputs)}"
    types = []
    for v, a in zip(node.outputs, arrays, strict=False):
        t, a = v.type, np.asarray(a)
        if a.size > max_size:
            return f"result %{v.name} would have {a.size} elements, more than max-size={max_size}"
        if t.dtype.numpy != a.dtype or (t.shape is not None and not _fits(t.shape, a.shape)):
            return f"the op gave {a.dtype}{list(a.shape)} where %{v.name} is typed {t}"
        types.append(TensorType(t.dtype, tuple(int(n) for n in a.shape), t.quant))
    new = [graph.add_constant(a, v.name, type=t)
           for v, a, t in zip(node.outputs, arrays, types, strict=False)]
    _replace(graph, node, list(new), keep_names=True)
    return None


def _fits(dims: tuple[Dim, ...], shape: tuple[int, ...]) -> bool:
    return len(dims) == len(shape) and all(not isinstance(d, int) or d == n
                                           for d, n in zip(dims, shape, strict=True))


def _evaluate(node: Node, max_size: int) -> list[np.ndarray] | str:
    """The node's results computed by its reference implementation, or why they cannot be."""
    opdef = lookup(node.op)
    if opdef is None:
        return "the op is not defined"
    if opdef.has_side_effects or node.op in _RANDOM:
        return "the op has side effects or is random"
    if any(isinstance(a, Graph) for a in node.attrs.values()):
        return "the node has a subgraph"
    for v in node.outputs:
        if (shape := v.type.static_shape) is not None and math.prod(shape) > max_size:
            return f"result %{v.name} would have more than max-size={max_size} elements"
    ctx = OpContext(opdef.attr_values(node.attrs), len(node.outputs), node.name, None, {})
    try:
        result = opdef.impl(ctx, *(None if v is None else v.const for v in node.inputs))
    except Exception as e:  # an op that cannot run on these constants is left for run time
        return f"evaluation failed: {type(e).__name__}: {e}"
    return list(result) if isinstance(result, tuple | list) else [result]


def _fold_value(graph: Graph, node: Node, known: ShapeValue, max_size: int) -> str | None:
    out = node.outputs[0]
    if known.ints is None:
        return "some elements are symbolic or unknown"
    array = np.array(known.ints, dtype=out.type.dtype.numpy)
    return _fold(graph, node, [array.reshape(()) if known.scalar else array], max_size)


def _retype(node: Node) -> bool:
    """Refine ``node``'s result types from its operands' current types; say whether any changed."""
    try:
        inferred = infer_types(node, len(node.outputs))
    except Exception:  # a type rule that fails here is the verifier's business, not ours
        return False
    changed = False
    for v, t in zip(node.outputs, inferred, strict=False):
        if (better := _refine(v.type, t)) is not None:
            logger.debug("refined %%%s: %s -> %s", v.name, v.type, better)
            v.type, changed = better, True
    return changed


def fold_constants(graph: Graph, max_size: int = 1 << 28, keep_ops: frozenset[str] = frozenset()) -> bool:
    """Run the fold on ``graph`` in place; say whether anything changed."""
    modified = False
    for node in list(graph.nodes):
        modified |= _retype(node)
        why = _bypass(graph, node) if node.op in ("Identity", "Dropout") else "not a bypass"
        if why is None:
            modified = True
            continue
        if node.op in keep_ops:
            why = "the op is in keep-ops"
        elif all(v is None or v.const is not None for v in node.inputs):
            result = _evaluate(node, max_size)
            why = result if isinstance(result, str) else _fold(graph, node, result, max_size)
        elif len(node.outputs) == 1 and (known := shape_value(node.outputs[0])) is not None:
            why = _fold_value(graph, node, known, max_size)
        if why is None:
            modified = True
        elif why != "not a bypass":
            logger.debug("not folding node %r (%s): %s", node.name, node.op, why)
    return graph.remove_dead() or modified


@dataclass(frozen=True)
class FoldConstantsPass(Pass):
    """Evaluate nodes whose operands are constants, fold static shape arithmetic, drop dead code."""

    name: ClassVar[str] = "fold-constants"
    max_size: int = option(1 << 28, "Largest constant a fold may create, in elements.")
    keep_ops: tuple[str, ...] = option(("DequantizeLinear",), "Ops never evaluated, even on constants "
                                       "(the default keeps the integer weights of QDQ models).")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Fold ``graph`` in place."""
        return PassResult(fold_constants(graph, self.max_size, frozenset(self.keep_ops)))
