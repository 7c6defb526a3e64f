"""The reference interpreter: runs any well-formed graph in numpy, with each op's registered meaning.

Only verified graphs run: :class:`Interpreter` runs the verifier first (a ``VerifyError`` lists what
is wrong), so every op implementation sees attributes of its schema's kinds and ranges and operands
of the types its type rule accepts. A node whose declared types leave dims symbolic or unknown is
typed again before it runs, by its type rule on the actual operands (their shapes, and the values of
small integer operands), so a mismatch only the inputs reveal is an error naming the node, not a
numpy failure inside it. No result may pass the tensor size limit (:mod:`cimc.limits`): results of
static shape are checked when the run is planned, the others from that typing before the node runs,
so an oversized tensor is an error naming it, not an allocation.

Values are kept in a dict keyed by value identity and freed after their last use (an op that
sums into an accumulator operand made by the same op may reuse its buffer then; one that makes
partial sums, ``OpDef.partial_sums``, may hand the next node of its chain a partial sum instead of
an array, when that node alone reads it and the run observes no results; any op may overwrite the
operands ``OpContext.spare`` lists, which die at it and whose arrays nothing else holds or views). Inputs are
checked against the graph's input types first (name, element type, shape). An error inside an
op is re-raised naming the node and op. Ops that model noise draw from one generator seeded
per run, so the same seed gives the same bits.

Float matrix products run in float32, as onnxruntime runs them, except in graphs that hold cimc's
own ops (the dotted namespaces: quantized graphs and target programs) and where the caller asks:
there they sum in float64 (:func:`cimc.ops.nn.reproducible_floats`), so the integer reference is
the same on every CPU.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cimc.errors import CimcError, InputError
from cimc.ir.core import Graph, Node, Value
from cimc.ir.opdef import InferContext, OpContext, OpDef, lookup
from cimc.ir.types import Shape, ShapeValue, TensorType, static_dims
from cimc.ir.verifier import verify
from cimc.limits import check_size
from cimc.ops.nn import reproducible_floats

__all__ = ["ExecutionError", "Interpreter", "check_inputs", "random_inputs", "run"]

logger = logging.getLogger(__name__)


class ExecutionError(CimcError):
    """An op failed while the interpreter ran it; ``internal`` when the op raised something other than
    a cimc error (an op of a verified graph should never do that: it is a bug, not bad input)."""

    def __init__(self, message: str, *, internal: bool = False) -> None:
        super().__init__(message)
        self.internal = internal


def check_inputs(graph: Graph, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inputs as arrays keyed by name, or an ``InputError`` saying what does not fit."""
    want = {v.name: v for v in graph.inputs}
    missing = [n for n in want if n not in inputs]
    extra = [n for n in inputs if n not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(repr(n) for n in missing))
        if extra:
            parts.append("unknown " + ", ".join(repr(n) for n in extra))
        raise InputError(f"inputs do not match the graph: {'; '.join(parts)} "
                         f"(the graph takes {', '.join(repr(n) for n in want) or 'no inputs'})")
    out = {}
    for name, v in want.items():
        array = np.asarray(inputs[name])
        if not array.dtype.isnative:  # byte order is storage, not type
            array = array.astype(array.dtype.newbyteorder("="))
        why = v.type.accepts(array)
        if why:
            raise InputError(f"input {name!r}: {why}")
        out[name] = array
    return out


def random_inputs(graph: Graph, seed: int, batch: int = 1) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input: floats standard normal, integers in 0..7, booleans fair
    coins; symbolic dims become ``batch``. An ``InputError`` for inputs it cannot make up or that
    would pass the tensor size limit (:mod:`cimc.limits`)."""
    rng = np.random.default_rng(seed)
    out = {}
    for v in graph.inputs:
        t = v.type
        if t.shape is None:
            raise InputError(f"input {v.name!r} has unknown rank; give its values (--inputs)")
        shape = tuple(d if isinstance(d, int) else batch for d in t.shape)
        check_size(f"random input {v.name!r}", shape, 8)  # drawn in 64 bits, then cast
        if t.dtype.is_float:
            out[v.name] = rng.standard_normal(shape).astype(t.dtype.numpy)
        elif t.dtype.name == "bool":
            out[v.name] = rng.random(shape) < 0.5
        elif t.dtype.is_int:
            out[v.name] = rng.integers(0, 8, shape).astype(t.dtype.numpy)
        else:
            raise InputError(f"input {v.name!r} of type {t} cannot be made up; give its values (--inputs)")
    return out


class Interpreter:
    """Runs a graph; keeps per-run machine state and a seeded generator for noisy ops.

    ``reproducible``: sum float matrix products in float64 (the same bits on every CPU); ``None``
    turns it on for graphs holding cimc's own dotted-namespace ops (``q.*``, target instructions).
    ``machine``: what every run's machine state starts with, e.g. the device the arrays are
    (:meth:`cimc.target.Target.machine`; empty: the ideal machine).
    """

    def __init__(self, graph: Graph, *, seed: int = 0, reproducible: bool | None = None,
                 machine: Mapping[str, Any] | None = None) -> None:
        verify(graph)  # only well-formed graphs run: attributes in range, types as their rules give
        if not graph.outputs:
            raise InputError(f"graph {graph.name!r} has no outputs: running it would compute nothing")
        self.graph = graph
        self.seed = seed
        self.machine = dict(machine or {})
        self.reproducible = any("." in n.op for n in graph.nodes) if reproducible is None else reproducible
        self._plan = _plan(graph)
        self._dynamic = {n for n in graph.nodes if _dynamic(n)}
        """Nodes whose declared types leave a dim symbolic or unknown: checked again, with the operands of
        the run, before they run."""

    def rebound(self, *, seed: int, machine: Mapping[str, Any] | None = None) -> Interpreter:
        """This interpreter with another seed and machine, its graph's verification and plan shared (not redone):
        what a Monte Carlo run's chips each run with."""
        other = copy.copy(self)
        other.seed, other.machine = seed, dict(machine or {})
        return other

    def run(self, inputs: Mapping[str, Any], *,
            observe: Callable[[Value, np.ndarray], None] | None = None) -> dict[str, np.ndarray]:
        """Run on ``inputs`` (by graph input name); return the outputs by graph output name.

        ``observe(value, array)``, if given, is called with every graph input and node result as
        it is computed (calibration watches activations this way, in the one run).
        """
        with reproducible_floats(self.reproducible):
            return self._run(inputs, observe)

    def _run(self, inputs: Mapping[str, Any],
             observe: Callable[[Value, np.ndarray], None] | None) -> dict[str, np.ndarray]:
        arrays = check_inputs(self.graph, inputs)
        env: dict[int, np.ndarray | None] = {}
        for v in self.graph.inputs:
            env[id(v)] = arrays[v.name]
            if observe is not None:
                observe(v, arrays[v.name])
        for v in self.graph.constants.values():
            env[id(v)] = v.const
        rng = np.random.default_rng(self.seed)
        state: dict[str, Any] = dict(self.machine)
        keep = {id(v) for v in self.graph.outputs}
        watched = observe is not None
        for node, opdef, attrs, frees, donated, partial, dying in self._plan:
            operands: list[Any] = [None if v is None else env[id(v)] for v in node.inputs]
            if node in self._dynamic:
                _check_run(node, opdef, attrs, operands)
            spare = _spare(operands, dying) if dying and not watched else ()
            ctx = OpContext(attrs, len(node.outputs), node.name, rng, state, donated, partial and not watched, spare)
            try:
                result = opdef.impl(ctx, *operands)
            except CimcError as e:
                raise ExecutionError(f"while executing node {node.name!r} ({node.op}): {e}") from e
            except MemoryError:
                raise ExecutionError(f"while executing node {node.name!r} ({node.op}): out of memory (the "
                                     f"results of its operands {[list(np.shape(o)) for o in operands]})") from None
            except Exception as e:
                raise ExecutionError(f"while executing node {node.name!r} ({node.op}): "
                                     f"{type(e).__name__}: {e}", internal=True) from e
            results = result if isinstance(result, tuple | list) else (result,)
            if len(results) < len(node.outputs):
                raise ExecutionError(f"node {node.name!r} ({node.op}) gave {len(results)} results, "
                                     f"{len(node.outputs)} expected")
            for v, r in zip(node.outputs, results, strict=False):
                env[id(v)] = r
                if observe is not None:
                    observe(v, r)
            for v in frees:
                if id(v) not in keep:
                    env.pop(id(v), None)
            del result, results, operands  # no reference of this node's outlives it (see _spare)
            r = None
        return {v.name: np.asarray(env[id(v)]) for v in self.graph.outputs}


def _check_result(v: Value, node: Any, shape: Shape) -> None:
    """The tensor size limit (:mod:`cimc.limits`) on result ``v`` of ``node``, where its size is known."""
    known = static_dims(shape)
    if known is not None:
        check_size(f"result %{v.name} of node {node.name!r} ({node.op})", known, v.type.dtype.numpy.itemsize)


class _RunInfer(InferContext):
    """A type rule's view of a node about to run: the operands' actual types, and the values of small
    integer operands as if they were constants (so a rule that computes a result shape from an
    operand, as Reshape's or ConstantOfShape's does, computes the actual one)."""

    def __init__(self, node: Any, attrs: Mapping[str, Any], operands: list[Any]) -> None:
        types = [None if a is None else _actual_type(v, a) for v, a in zip(node.inputs, operands, strict=True)]
        super().__init__(node, types, attrs, len(node.outputs))
        self.operands = operands

    def const(self, index: int) -> np.ndarray | None:
        """The value operand ``index`` has in this run, if it is a small integer tensor."""
        a = self.operands[index] if index < len(self.operands) else None
        if isinstance(a, np.ndarray) and a.dtype.kind in "iu" and a.size <= _SHAPE_LIKE:
            return a
        return None

    def value(self, index: int) -> ShapeValue | None:
        """The elements operand ``index`` has in this run, if it is a small integer tensor (not what the graph's
        shape computations know of it when compiling)."""
        a = self.const(index)
        return None if a is None else ShapeValue.of(a)


_SHAPE_LIKE = 1024


def _actual_type(v: Value, a: Any) -> TensorType:
    return TensorType(v.type.dtype, tuple(int(d) for d in np.shape(a)), v.type.quant)


def _check_run(node: Any, opdef: OpDef, attrs: Mapping[str, Any], operands: list[Any]) -> None:
    """Before a node whose declared types leave dims open runs: its type rule on the actual operands
    (symbolic dims now sizes; a mismatch the declared types could not show, such as a batch that is
    not a Gemm's inner dim, is an error saying so), then the size limit on the results it gives."""
    try:
        types = opdef.infer(_RunInfer(node, attrs, operands))
    except CimcError as e:
        raise ExecutionError(f"while executing node {node.name!r} ({node.op}): its operands "
                             f"{[list(np.shape(a)) if a is not None else None for a in operands]} do not fit: "
                             f"{e}") from None
    except Exception:  # a rule that cannot type the actual operands: the op itself will say what is wrong
        return
    for v, t in zip(node.outputs, types, strict=False):
        if t.shape is not None:
            _check_result(v, node, t.shape)


def _dynamic(node: Node) -> bool:
    """Whether ``node``'s declared types leave a dim symbolic or unknown (it is typed again before it runs)."""
    return not all(v.type.is_static for v in node.outputs) or not all(v is None or v.type.is_static
                                                                        for v in node.inputs)


def _partial(node: Node, opdef: OpDef, outputs: set[int]) -> bool:
    """Whether ``node`` may hand a partial sum on (``OpContext.partial``): its op makes them, and its one result,
    not a graph output, is read once, by a later node of the same op (not necessarily the next node), as that
    node's accumulator operand."""
    at = opdef.accumulator
    if not opdef.partial_sums or at is None or len(node.outputs) != 1 or id(node.outputs[0]) in outputs:
        return False
    uses = node.outputs[0].uses
    if len(uses) != 1:
        return False
    reader, index = uses[0]
    return reader.op == node.op and index == at


def _refs(operands: list[Any], i: int) -> int:
    """CPython's reference count of operand ``i``'s array, as :func:`_spare` reads it."""
    return sys.getrefcount(operands[i])


def _baseline() -> int:
    """What :func:`_refs` reads of an array that only a value table and an operand list hold (as in a run)."""
    env, operands = {0: np.empty(1)}, []
    operands.append(env[0])
    return _refs(operands, 0)


_SPARE_REFS = _baseline()


def _spare(operands: list[Any], dying: tuple[int, ...]) -> tuple[int, ...]:
    """The operands of ``dying`` (they die at this node, made by a node, no graph output) whose arrays nothing else
    can read: each owns its memory (no view of another array), is writeable, and has no reference besides the
    run's value table and operand list (a view of it, or any other holder, adds one: CPython counts them)."""
    return tuple(i for i in dying if type(operands[i]) is np.ndarray and operands[i].base is None
                 and operands[i].flags.writeable and _refs(operands, i) <= _SPARE_REFS)


def _dying(node: Node, free: list[Value], outputs: set[int]) -> tuple[int, ...]:
    """Indices of ``node``'s operands that die at it, were made by a node and are no graph output, each read once
    by ``node``."""
    return tuple(i for i, v in enumerate(node.inputs)
                 if v is not None and v in free and v.producer is not None and id(v) not in outputs
                 and sum(u is v for u in node.inputs) == 1)


def _plan(graph: Graph) -> list[tuple[Any, OpDef, dict[str, Any], list[Value], bool, bool, tuple[int, ...]]]:
    last_use: dict[int, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v is not None and v.const is None:
                last_use[id(v)] = i
    frees: list[list[Value]] = [[] for _ in graph.nodes]
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v is not None and v.const is None and last_use.get(id(v)) == i and v not in frees[i]:
                frees[i].append(v)
        for v in node.outputs:  # results nobody reads are dropped at once
            if id(v) not in last_use:
                frees[i].append(v)
    outputs = {id(v) for v in graph.outputs}
    plan = []
    for node, free in zip(graph.nodes, frees, strict=True):
        for v in node.outputs:
            if v.type.shape is not None:
                _check_result(v, node, v.type.shape)
        opdef = lookup(node.op)
        if opdef is None:
            raise ExecutionError(f"node {node.name!r}: op {node.op!r} has no implementation")
        at = opdef.accumulator
        acc = node.inputs[at] if at is not None and at < len(node.inputs) else None
        donated = (acc is not None and acc in free and id(acc) not in outputs and acc.producer is not None
                   and acc.producer.op == node.op and sum(v is acc for v in node.inputs) == 1)
        plan.append((node, opdef, opdef.attr_values(node.attrs), free, donated, _partial(node, opdef, outputs),
                     _dying(node, free, outputs)))
    return plan


def run(graph: Graph, inputs: Mapping[str, Any], *, seed: int = 0, reproducible: bool | None = None,
        machine: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Run ``graph`` once on ``inputs``; see :class:`Interpreter`."""
    return Interpreter(graph, seed=seed, reproducible=reproducible, machine=machine).run(inputs)
