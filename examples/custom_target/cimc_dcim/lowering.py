"""The dcim lowering pass ``lower-dcim``: integer matrix ops to ``dcim.mvm`` instructions.

Each ``q.gemm`` / ``q.matmul`` / ``q.conv`` with a constant weight becomes one ``dcim.mvm`` on its
weight matrices ``[G, K, N]`` (:func:`cimc.tiling.weight_matrix`), a convolution between
``vec.im2col`` and ``vec.col2im``; the bias is an ``Add``. The instruction records how many macro
tiles the weights take (``ceil(K / rows) * ceil(N * weight bits / cols)`` per group) for the cost.
Every op it emits carries ``cim.layer`` (the node's name), and the layer's result keeps its name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from cimc.ir.core import Graph, Node
from cimc.ir.opdef import is_annotation
from cimc.passmanager import Pass, PassContext, PassResult
from cimc.target import ARRAY_OPS, Spec
from cimc.tiling import weight_bits, weight_matrix
from cimc_dcim.spec import DcimSpec

__all__ = ["LowerDcimPass"]


@dataclass(frozen=True)
class LowerDcimPass(Pass):
    """Lower q.conv/q.gemm/q.matmul nodes with constant weights to dcim.mvm instructions."""

    name: ClassVar[str] = "lower-dcim"
    spec_type: ClassVar[type[Spec]] = DcimSpec

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Replace every array layer of ``graph`` by its instructions."""
        target = ctx.require_target(self)
        target.register_ops()  # the instructions it emits
        spec = target.spec
        assert isinstance(spec, DcimSpec)
        nodes = [n for n in graph.nodes if n.op in ARRAY_OPS and n.inputs[1] is not None
                 and n.inputs[1].const is not None]
        for node in nodes:
            _lower(graph, node, spec)
        graph.remove_dead()
        return PassResult(bool(nodes))


def _lower(graph: Graph, node: Node, spec: DcimSpec) -> None:
    x, bias, final = node.inputs[0], node.inputs[2] if len(node.inputs) > 2 else None, node.outputs[0].type

    def add(op, inputs, attrs, **kw):
        return graph.add_node(op, inputs, {**attrs, "cim.layer": node.name}, before=node, **kw).outputs[0]

    w = np.ascontiguousarray(weight_matrix(node)).astype(np.int8)
    g, k, n = w.shape
    tiles = g * math.ceil(k / spec.rows) * math.ceil(n * weight_bits(node) / spec.cols)
    act_bits = int(x.type.quant.bits) if x.type.quant is not None else 8
    conv = node.op == "q.conv"
    if conv:
        attrs = {key: v for key, v in node.attrs.items() if not is_annotation(key) and key != "x_zero_point"}
        attrs["kernel_shape"] = tuple(int(s) for s in node.inputs[1].const.shape[2:])
        x = add("vec.im2col", [x], {**attrs, "pad_value": int(node.attrs["x_zero_point"])})
    y = add("dcim.mvm", [x, graph.add_constant(w, f"{node.name}.w")],
            {"layout": "cols" if conv else "rows", "act_bits": act_bits, "tiles": tiles})
    if bias is not None:
        b = graph.add_constant(bias.const.reshape(-1, 1), f"{node.name}.bias") if conv else bias
        y = add("Add", [y, b], {}, outputs=None if conv else [final])
    if conv:
        y = add("vec.col2im", [y], {"spatial": tuple(int(s) for s in final.shape[2:])}, outputs=[final])
    name = node.outputs[0].name
    graph.replace_all_uses_with(node.outputs[0], y)
    graph.remove_node(node)
    graph.rename_value(y, name)
