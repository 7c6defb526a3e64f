"""Control flow resolved at import time: ``If`` with a condition known then folds, ``Loop`` and ``Scan``
with a trip count known then unroll. cimc graphs have no subgraphs; these are how it takes the
models that use them.

- ``If``: the condition's value is computed at import (:func:`static_value`: constants, and ops on
  constants, ``Shape``/``Size`` of statically shaped values); the branch taken is inlined.
- ``Loop``: the trip count ``M`` (and the condition, when given) must be known at import; the body
  is inlined once per iteration with the iteration number and the condition as constants and the
  loop-carried values threaded through. After each iteration the body's condition output must be
  known too (a body that passes its condition through, as "for" loops do, is). Scan outputs are the
  per-iteration values stacked along a new axis 0.
- ``Scan`` (opset 9 form; opset 8's batched form is run per batch entry): one iteration per element
  of the scan inputs' scan axis, whose length must be static; each iteration's inputs are ``Gather``s
  of one index, outputs are stacked along their scan output axes (reversed where a direction says).

Anything else raises one ``UnsupportedOpError`` that names the op, node and opset and says why.
Inlined nodes are named ``<node>/<branch or iteration>/<body node>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from cimc.errors import UnsupportedOpError
from cimc.ir.core import Graph, Value
from cimc.ir.opdef import OpContext, lookup

__all__ = ["MAX_ITERATIONS", "OPS", "expand", "static_value"]

OPS = ("If", "Loop", "Scan")
"""The control-flow ops the importer resolves here."""

MAX_ITERATIONS = 4096
"""The most iterations a loop may unroll into."""

Body = Callable[[onnx.GraphProto, dict[str, Value], dict[str, Value], str], list[Value]]
"""Inline a body graph: (body, formal inputs bound to values, outer scope, node-name prefix) -> its outputs."""

_RANDOM = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
                     "Multinomial", "Dropout"})


def static_value(v: Value | None, _memo: dict[int, np.ndarray | None] | None = None) -> np.ndarray | None:
    """The value ``v`` has on every run, if the graph so far fixes it: a constant, the result of an op
    on such values, or the ``Shape``/``Size`` of a statically shaped value; else ``None``."""
    if v is None:
        return None
    if v.const is not None:
        return v.const
    memo = {} if _memo is None else _memo
    if id(v) in memo:
        return memo[id(v)]
    memo[id(v)] = None
    node = v.producer
    opdef = None if node is None else lookup(node.op)
    if node is None or opdef is None or opdef.has_side_effects or node.op in _RANDOM:
        return None
    src = node.inputs[0] if node.inputs else None
    if node.op in ("Shape", "Size") and src is not None and (shape := src.type.static_shape) is not None:
        start, end = node.attrs.get("start", 0), node.attrs.get("end")
        out = np.asarray(shape[slice(start, end)] if node.op == "Shape" else np.prod(shape), np.int64)
    else:
        args = [None if i is None else static_value(i, memo) for i in node.inputs]
        if any(a is None and i is not None for a, i in zip(args, node.inputs, strict=True)):
            return None
        try:
            result = opdef.impl(OpContext(opdef.attr_values(node.attrs), len(node.outputs), node.name), *args)
        except Exception:  # an op that fails on these values is left for run time
            return None
        results = result if isinstance(result, tuple | list) else (result,)
        out = np.asarray(results[node.outputs.index(v)])
    memo[id(v)] = out
    return out


def expand(g: Graph, proto: onnx.NodeProto, since: int, inputs: Sequence[Value | None], outer: dict[str, Value],
           body: Body, name: str, where: str) -> list[Value]:
    """Inline or unroll control-flow node ``proto`` into ``g``; the values of its outputs."""
    attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
    if proto.op_type == "If":
        return _if(inputs, outer, body, attrs, name, where)
    if proto.op_type == "Loop":
        return _loop(g, inputs, outer, body, attrs, name, where)
    if since < 9:
        return _scan8(g, inputs, outer, body, attrs, name, where)
    return _scan(g, inputs, outer, body, attrs, name, where)


def _unsupported(where: str, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"the model uses 1 unsupported op: {where}: {why}")


def _if(inputs, outer, body: Body, attrs: dict[str, Any], name: str, where: str) -> list[Value]:
    cond = static_value(inputs[0])
    if cond is None:
        raise _unsupported(where, "its condition is computed at run time (cimc folds an If only when the "
                                  "condition is known at import)")
    taken = "then_branch" if bool(np.asarray(cond).reshape(-1)[0]) else "else_branch"
    return body(attrs[taken], {}, outer, f"{name}/{taken.split('_')[0]}/")


def _scalar(g: Graph, value: Any, dtype: Any, name: str) -> Value:
    return g.add_constant(np.asarray(value, dtype), name)


def _stack(g: Graph, values: list[Value], axis: int, name: str) -> Value:
    """``values`` stacked along a new axis ``axis`` (Unsqueeze each, then Concat)."""
    rank = values[0].type.rank
    if axis < 0:
        if rank is None:
            raise UnsupportedOpError(f"node {name!r}: a negative scan output axis on a value of unknown rank")
        axis += rank + 1
    axes = g.add_constant(np.asarray([axis], np.int64), f"{name}_axes")
    parts = [g.add_node("Unsqueeze", [v, axes], name=f"{name}_unsqueeze{i}").output for i, v in enumerate(values)]
    return g.add_node("Concat", parts, {"axis": axis}, name=name).output if len(parts) > 1 else parts[0]


def _loop(g: Graph, inputs, outer, body: Body, attrs: dict[str, Any], name: str, where: str) -> list[Value]:
    graph: onnx.GraphProto = attrs["body"]
    inputs = list(inputs) + [None] * max(0, 2 - len(inputs))
    m_value, c_value = inputs[0], inputs[1]
    if m_value is None and c_value is None:
        raise _unsupported(where, "it has neither a trip count nor a condition (an endless loop)")
    trip = static_value(m_value)
    if m_value is not None and trip is None:
        raise _unsupported(where, "its trip count is computed at run time (cimc unrolls a Loop only when the trip "
                                  "count is known at import)")
    going = True if c_value is None else static_value(c_value)
    if going is None:
        raise _unsupported(where, "its condition is computed at run time")
    count = MAX_ITERATIONS + 1 if trip is None else int(np.asarray(trip).reshape(-1)[0])
    carried: list[Value] = [v for v in inputs[2:]]
    n_carried = len(carried)
    scans: list[list[Value]] = [[] for _ in range(len(graph.output) - 1 - n_carried)]
    it = 0
    while bool(np.asarray(going).reshape(-1)[0]) and it < count:
        if it >= MAX_ITERATIONS:
            raise _unsupported(where, f"it would unroll into more than {MAX_ITERATIONS} iterations")
        formal = [i.name for i in graph.input]
        bound = {formal[0]: _scalar(g, it, np.int64, f"{name}_iter{it}"),
                 formal[1]: _scalar(g, True, np.bool_, f"{name}_cond{it}")}
        bound.update(zip(formal[2:], carried, strict=True))
        outs = body(graph, bound, outer, f"{name}/{it}/")
        carried = outs[1:1 + n_carried]
        for k, v in enumerate(outs[1 + n_carried:]):
            scans[k].append(v)
        going = static_value(outs[0])
        if going is None:
            if c_value is not None:
                raise _unsupported(where, "its body's condition output is computed at run time")
            going = np.asarray(True)  # a "for" loop: the trip count alone ends it
        it += 1
    if scans and it == 0:
        raise _unsupported(where, "it runs zero times, so its scan outputs have no iterations to stack")
    return carried + [_stack(g, vs, 0, f"{name}_scan{k}") for k, vs in enumerate(scans)]


def _scan(g: Graph, operands: Sequence[Value | None], outer, body: Body, attrs: dict[str, Any], name: str,
          where: str) -> list[Value]:
    graph: onnx.GraphProto = attrs["body"]
    inputs = [v for v in operands if v is not None]
    if len(inputs) != len(operands):
        raise _unsupported(where, "one of its inputs is missing")
    n_scan = attrs["num_scan_inputs"]
    n_state = len(inputs) - n_scan
    states, scan_ins = inputs[:n_state], inputs[n_state:]
    in_axes = list(attrs.get("scan_input_axes") or [0] * n_scan)
    in_dirs = list(attrs.get("scan_input_directions") or [0] * n_scan)
    n_out = len(graph.output) - n_state
    out_axes = list(attrs.get("scan_output_axes") or [0] * n_out)
    out_dirs = list(attrs.get("scan_output_directions") or [0] * n_out)
    lengths = set()
    for v, axis in zip(scan_ins, in_axes, strict=True):
        shape = None if v is None else v.type.shape
        dim = None if shape is None else shape[axis % len(shape)]
        if not isinstance(dim, int):
            raise _unsupported(where, "the length of its scan inputs is not static (cimc unrolls a Scan only over a "
                                      "length known at import)")
        lengths.add(dim)
    if len(lengths) != 1:
        raise _unsupported(where, f"its scan inputs have different lengths {sorted(lengths)}")
    length = lengths.pop()
    if length > MAX_ITERATIONS:
        raise _unsupported(where, f"it would unroll into {length} iterations, more than {MAX_ITERATIONS}")
    formal = [i.name for i in graph.input]
    outs_per_step: list[list[Value]] = [[] for _ in range(n_out)]
    for t in range(length):
        bound = dict(zip(formal[:n_state], states, strict=True))
        for j, (v, axis, rev) in enumerate(zip(scan_ins, in_axes, in_dirs, strict=True)):
            index = _scalar(g, length - 1 - t if rev else t, np.int64, f"{name}_index{t}_{j}")
            bound[formal[n_state + j]] = g.add_node("Gather", [v, index], {"axis": axis},
                                                    name=f"{name}/{t}/input{j}").output
        outs = body(graph, bound, outer, f"{name}/{t}/")
        states = outs[:n_state]
        for k, v in enumerate(outs[n_state:]):
            outs_per_step[k].append(v)
    if length == 0 and n_out:
        raise _unsupported(where, "its scan inputs are empty, so its scan outputs have nothing to stack")
    stacked = [_stack(g, vs[::-1] if rev else vs, axis, f"{name}_out{k}")
               for k, (vs, axis, rev) in enumerate(zip(outs_per_step, out_axes, out_dirs, strict=True))]
    return states + stacked


def _scan8(g: Graph, inputs, outer, body: Body, attrs: dict[str, Any], name: str, where: str) -> list[Value]:
    """Opset-8 Scan: inputs (sequence_lens, states..., scan inputs...) with a batch axis 0 and the scan
    axis 1; run as one opset-9 Scan per batch entry, results stacked over the batch."""
    inputs = list(inputs)
    if inputs and inputs[0] is not None:
        raise _unsupported(where, "opset-8 sequence_lens (per-entry lengths) are not supported")
    rest = inputs[1:]
    n_scan = attrs["num_scan_inputs"]
    shape = rest[-1].type.shape if rest and rest[-1] is not None else None
    batch = shape[0] if shape else None
    if not isinstance(batch, int):
        raise _unsupported(where, "its batch size is not static")
    per = {"body": attrs["body"], "num_scan_inputs": n_scan,
           "scan_input_directions": attrs.get("directions") or [0] * n_scan}
    results: list[list[Value]] = []
    for b in range(batch):
        index = _scalar(g, b, np.int64, f"{name}_batch{b}")
        picked = [g.add_node("Gather", [v, index], {"axis": 0}, name=f"{name}/batch{b}/in{j}").output
                  for j, v in enumerate(rest)]
        results.append(_scan(g, picked, outer, body, per, f"{name}/batch{b}", where))
    return [_stack(g, [r[k] for r in results], 0, f"{name}_batch_out{k}") for k in range(len(results[0]))]
