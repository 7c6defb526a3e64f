"""fold-constants: compute at compile time whatever does not depend on the graph inputs.

Algorithm: one forward walk over the nodes, in order; for each node
1. re-infer its result types from its operands (which earlier steps may have made constant or
   more precise) and keep, dim by dim, the more precise of recorded and inferred (a known dim is
   never changed), so a ``Reshape`` whose shape operand became constant gets a static type
   (and one whose shape is computed from ``Shape`` gets symbolic dims, see 4);
2. ``Identity`` and inference-mode ``Dropout`` (no ``training_mode``, or a constant false one,
   and an unused mask) are removed by making their readers read the input;
3. a node whose operands are all constants (or absent) is evaluated with its op's reference
   implementation and its results become graph constants under the same value names;
4. otherwise small integer vectors that describe shapes are tracked element by element, each
   element a known int or a symbolic dim: ``Shape``/``Size`` of a tensor of known rank start
   them, ``Gather``/``Slice``/``Concat``/``Squeeze``/``Unsqueeze``/``Cast`` carry them,
   ``Add``/``Sub``/``Mul``/``Div`` compute them (known where both operands are), and a
   vector whose elements are all known becomes a constant. So ``Gather(Shape(x), 1)`` folds
   when dim 1 of ``x`` is static even if its batch dim ``N`` is symbolic; ``Gather(.., 0)`` stays.
   A ``Reshape`` to a tracked vector with neither ``-1`` nor a copying ``0`` takes its dims from
   the vector alone, whatever its input's type knows, and so does a ``Resize`` to tracked
   ``sizes`` for every axis (``F.interpolate(x, size=y.shape[-2:])`` with a symbolic batch).
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
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from cimc.ir.core import Graph, Node, Value
from cimc.ir.opdef import OpContext, infer_types, lookup
from cimc.ir.types import Dim, TensorType
from cimc.ops._infer import broadcast_shapes
from cimc.passmanager import Pass, PassContext, PassResult, option

__all__ = ["FoldConstantsPass"]

logger = logging.getLogger(__name__)

_RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli", "Dropout"})
_VECTOR_LIMIT = 64  # longest integer vector tracked element by element

Vec = tuple[bool, tuple[Dim, ...]]  # (is a scalar, element values: ints known, str/None symbolic)


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


def _vec(v: Value | None, known: dict[int, Vec]) -> Vec | None:
    if v is None:
        return None
    c = v.const
    if c is not None:
        ok = c.dtype.kind in "iu" and c.ndim <= 1 and c.size <= _VECTOR_LIMIT
        return (c.ndim == 0, tuple(int(x) for x in c.ravel())) if ok else None
    return known.get(id(v))


def _ints(v: Value | None) -> list[int] | None:
    c = None if v is None else v.const
    return None if c is None or c.dtype.kind not in "iu" else [int(x) for x in c.ravel()]


_ARITHMETIC = frozenset({"Add", "Sub", "Mul", "Div"})


def _arithmetic(op: str, x: Vec, y: Vec) -> Vec | None:
    """Element-wise ``Add``/``Sub``/``Mul``/``Div`` of two tracked vectors (or a vector and a scalar):
    an element is known where both operands are (``Div`` only of non-negative ints, where ONNX's
    truncation and Python's floor agree), symbolic (``None``) otherwise."""
    (xs, xd), (ys, yd) = x, y
    if len(xd) != len(yd) and not (xs or ys):
        return None
    n = max(len(xd), len(yd))
    out: list[Dim] = []
    for a, b in zip(xd * n if xs else xd, yd * n if ys else yd, strict=False):
        if not (isinstance(a, int) and isinstance(b, int)):
            out.append(None)
        elif op == "Div":
            out.append(a // b if a >= 0 and b > 0 else None)
        else:
            out.append(a + b if op == "Add" else a - b if op == "Sub" else a * b)
    return xs and ys, tuple(out)


def _track(node: Node, known: dict[int, Vec]) -> Vec | None:
    """The element values of ``node``'s integer-vector result, where the node computes one."""
    op, ins, opdef = node.op, node.inputs, lookup(node.op)
    a = opdef.attr_values(node.attrs) if opdef is not None else node.attrs
    arg = [_vec(v, known) for v in ins]
    if op in ("Shape", "Size"):
        shape = ins[0].type.shape if ins[0] is not None else None
        if shape is None:
            return None
        if op == "Size":
            known_dims = [d for d in shape if isinstance(d, int)]
            n = int(np.prod(known_dims)) if len(known_dims) == len(shape) else None
            return True, (n,)
        return False, tuple(shape[a.get("start") or 0:a.get("end")])
    if op == "Cast" and arg and arg[0] and node.outputs[0].type.dtype.is_int:
        return arg[0]
    vecs = [x for x in arg if x is not None]
    if op == "Concat" and vecs and len(vecs) == len(arg) and all(not x[0] for x in vecs) and a.get("axis") in (0, -1):
        return False, tuple(d for x in vecs for d in x[1])
    if not arg or arg[0] is None:
        return None
    scalar, dims = arg[0]
    if op == "Unsqueeze" and scalar and len(ins) > 1 and _ints(ins[1]) in ([0], [-1]):
        return False, dims
    if op in _ARITHMETIC and len(arg) == 2 and arg[1] is not None:
        return _arithmetic(op, arg[0], arg[1])
    if scalar:  # the rest take a vector
        return None
    if op == "Squeeze" and len(dims) == 1 and (len(ins) < 2 or _ints(ins[1]) in (None, [0], [-1])):
        return True, dims
    if op == "Gather" and a.get("axis", 0) in (0, -1) and (idx := _ints(ins[1])) is not None:
        rank = node.operand(1).array.ndim
        if rank > 1 or any(not -len(dims) <= i < len(dims) for i in idx):
            return None
        return rank == 0, tuple(dims[i] for i in idx)
    if op == "Slice":
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else [0]
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1]
        if starts is None or ends is None or axes is None or steps is None \
                or any(len(p) != 1 for p in (starts, ends, axes, steps)) or axes[0] not in (0, -1) or steps[0] == 0:
            return None
        return False, dims[slice(starts[0], ends[0], steps[0])]
    return None


def _dims_from_vector(node: Node, known: dict[int, Vec]) -> tuple[Dim, ...] | None:
    """Result dims of a ``Reshape``/``ConstantOfShape``/``Expand``/``Resize`` whose shape operand
    (``Resize``'s ``sizes``) is a tracked vector. Symbolic dims cancel: ``[N,3,4]`` reshaped to
    ``[N,-1]`` is ``[N,12]``."""
    index = {"Reshape": 1, "ConstantOfShape": 0, "Expand": 1, "Resize": 3}.get(node.op)
    vec = None if index is None or len(node.inputs) <= index else _vec(node.inputs[index], known)
    if vec is None or vec[0]:
        return None
    if node.op == "Resize":  # sizes for every axis, stretched to them: the sizes are the result's dims
        opdef = lookup(node.op)
        a = opdef.attr_values(node.attrs) if opdef is not None else node.attrs
        stretch = a.get("axes") is None and a.get("keep_aspect_ratio_policy", "stretch") == "stretch"
        src = node.operand(0).type.shape
        return vec[1] if stretch and src is not None and len(src) == len(vec[1]) else None
    if node.op != "Reshape":
        src = node.operand(0).type.shape if node.op == "Expand" else ()
        return None if src is None else broadcast_shapes(src, vec[1])
    src = node.operand(0).type.shape
    zero_copies = not node.attrs.get("allowzero", 0)
    if -1 not in vec[1] and not (zero_copies and 0 in vec[1]):
        return vec[1]  # every result dim is given: the source's shape does not matter
    if src is None or None in src:
        return None
    dims = [src[i] if d == 0 and zero_copies and i < len(src) else d for i, d in enumerate(vec[1])]
    if dims.count(-1) != 1 or None in dims:
        return tuple(dims) if -1 not in dims else None
    rest = [d for d in dims if d != -1]
    have, want = (Counter(d for d in ds if isinstance(d, str)) for ds in (src, rest))
    n_src, n_rest = (math.prod(d for d in ds if isinstance(d, int)) for ds in (src, rest))
    left = have - want
    if have == want and n_rest and n_src % n_rest == 0:
        fill: Dim = n_src // n_rest
    elif not want - have and sum(left.values()) == 1 and n_src == n_rest:
        fill = next(iter(left))
    else:
        fill = None
    return tuple(fill if d == -1 else d for d in dims)


def _fold_vec(graph: Graph, node: Node, vec: Vec, max_size: int) -> str | None:
    scalar, dims = vec
    out = node.outputs[0]
    if not all(isinstance(d, int) for d in dims) or not out.type.dtype.is_int:
        return "some elements are symbolic"
    array = np.array(dims, dtype=out.type.dtype.numpy)
    return _fold(graph, node, [array.reshape(()) if scalar else array], max_size)


def _retype(node: Node, known: dict[int, Vec]) -> bool:
    """Refine ``node``'s result types from its operands' current types; say whether any changed."""
    try:
        inferred = infer_types(node, len(node.outputs))
        if (dims := _dims_from_vector(node, known)) is not None:
            inferred[0] = _refine(inferred[0], inferred[0].with_shape(dims)) or inferred[0]
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
    known: dict[int, Vec] = {}
    for node in list(graph.nodes):
        modified |= _retype(node, known)
        why = _bypass(graph, node) if node.op in ("Identity", "Dropout") else "not a bypass"
        if why is None:
            modified = True
            continue
        if node.op in keep_ops:
            why = "the op is in keep-ops"
        elif all(v is None or v.const is not None for v in node.inputs):
            result = _evaluate(node, max_size)
            why = result if isinstance(result, str) else _fold(graph, node, result, max_size)
        elif len(node.outputs) == 1 and (vec := _track(node, known)) is not None:
            why = _fold_vec(graph, node, vec, max_size)
            if why is not None:
                known[id(node.outputs[0])] = vec
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
