"""The reference interpreter: runs any graph in numpy, with each op's registered meaning.

Values are kept in a dict keyed by value identity and freed after their last use (an op that
sums into an accumulator operand made by the same op may reuse its buffer then). Inputs are
checked against the graph's input types first (name, element type, shape). An error inside an
op is re-raised naming the node and op. Ops that model noise draw from one generator seeded
per run, so the same seed gives the same bits.

Float matrix products run in float32, as onnxruntime runs them, except in graphs that hold cimc's
own ops (the dotted namespaces: quantized graphs and target programs) and where the caller asks:
there they sum in float64 (:func:`cimc.ops.nn.reproducible_floats`), so the integer reference is
the same on every CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cimc.errors import CimcError, InputError
from cimc.ir.core import Graph, Value
from cimc.ir.opdef import OpContext, OpDef, lookup
from cimc.limits import check_size
from cimc.ops.nn import reproducible_floats

__all__ = ["ExecutionError", "Interpreter", "check_inputs", "random_inputs", "run"]

logger = logging.getLogger(__name__)


class ExecutionError(CimcError):
    """An op failed while the interpreter ran it."""


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
    """

    def __init__(self, graph: Graph, *, seed: int = 0, reproducible: bool | None = None) -> None:
        self.graph = graph
        self.seed = seed
        self.reproducible = any("." in n.op for n in graph.nodes) if reproducible is None else reproducible
        self._plan = _plan(graph)

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
        state: dict[str, Any] = {}
        keep = {id(v) for v in self.graph.outputs}
        for node, opdef, attrs, frees, donated in self._plan:
            operands = [None if v is None else env[id(v)] for v in node.inputs]
            ctx = OpContext(attrs, len(node.outputs), node.name, rng, state, donated)
            try:
                result = opdef.impl(ctx, *operands)
            except CimcError as e:
                raise ExecutionError(f"while executing node {node.name!r} ({node.op}): {e}") from e
            except Exception as e:
                raise ExecutionError(f"while executing node {node.name!r} ({node.op}): "
                                     f"{type(e).__name__}: {e}") from e
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
        return {v.name: np.asarray(env[id(v)]) for v in self.graph.outputs}


def _plan(graph: Graph) -> list[tuple[Any, OpDef, dict[str, Any], list[Value], bool]]:
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
        opdef = lookup(node.op)
        if opdef is None:
            raise ExecutionError(f"node {node.name!r}: op {node.op!r} has no implementation")
        i = opdef.accumulator
        acc = node.inputs[i] if i is not None and i < len(node.inputs) else None
        donated = (acc is not None and acc in free and id(acc) not in outputs and acc.producer is not None
                   and acc.producer.op == node.op and sum(v is acc for v in node.inputs) == 1)
        plan.append((node, opdef, opdef.attr_values(node.attrs), free, donated))
    return plan


def run(graph: Graph, inputs: Mapping[str, Any], *, seed: int = 0,
        reproducible: bool | None = None) -> dict[str, np.ndarray]:
    """Run ``graph`` once on ``inputs``; see :class:`Interpreter`."""
    return Interpreter(graph, seed=seed, reproducible=reproducible).run(inputs)
