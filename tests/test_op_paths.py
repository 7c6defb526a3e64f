"""Every imported ONNX op takes every path a graph takes: ``.cimir`` text and back, fold-constants
(evaluated when its operands are constants, to ONNX's expected values), and export back to ONNX.

One node test case per op (the first that the conformance test runs) drives the checks.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_onnx_conformance import _array, _primary_op, cases, skip_reason

from cimc.ir.equality import graph_difference
from cimc.onnx_io import import_model
from cimc.onnx_io.exporter import EXPORT_OPSET, export_model
from cimc.passes.fold_constants import fold_constants
from cimc.text import parse_graph, print_graph


@cache
def one_case_per_op() -> dict[str, object]:
    """The first runnable node case of each op whose case has one data set, by op."""
    out: dict[str, object] = {}
    for name, case in cases().items():
        op = _primary_op(case)
        if op not in out and skip_reason(name) is None and len(case.data_sets) == 1:
            out[op] = case
    return dict(sorted(out.items()))


@pytest.mark.parametrize("op", list(one_case_per_op()))
def test_text_round_trip(op: str) -> None:
    graph = import_model(one_case_per_op()[op].model)
    text = print_graph(graph)
    again = parse_graph(text)
    assert graph_difference(graph, again) is None
    assert print_graph(again) == text


def _inputs_as_initializers(case) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, _ = case.data_sets[0]
    for vi, x in zip(list(model.graph.input), inputs, strict=True):
        array = x if isinstance(x, onnx.TensorProto) else numpy_helper.from_array(np.asarray(x), vi.name)
        array.name = vi.name
        model.graph.initializer.append(array)
    del model.graph.input[:]
    return model


@pytest.mark.parametrize("op", list(one_case_per_op()))
def test_fold_constants_evaluates_it(op: str) -> None:
    case = one_case_per_op()[op]
    graph = import_model(_inputs_as_initializers(case))
    fold_constants(graph)
    assert not graph.nodes, f"left unfolded: {[n.op for n in graph.nodes]}"
    _, expected = case.data_sets[0]
    for value, raw in zip(graph.outputs, expected, strict=True):
        want, have = _array(raw), np.asarray(value.const)
        assert have.shape == want.shape and have.dtype == want.dtype
        if want.dtype.kind == "f" or want.dtype.name == "bfloat16":
            np.testing.assert_allclose(have.astype(np.float64), want.astype(np.float64), rtol=1e-3, atol=1e-5,
                                       equal_nan=True)
        else:
            np.testing.assert_array_equal(have, want)


@pytest.mark.parametrize("op", list(one_case_per_op()))
def test_exports_to_onnx(op: str) -> None:
    graph = import_model(one_case_per_op()[op].model)
    newest = onnx.defs.onnx_opset_version()
    needed = max((onnx.defs.get_schema(n.op, newest, "").since_version for n in graph.nodes), default=EXPORT_OPSET)
    model = export_model(graph, opset=max(EXPORT_OPSET, needed) if needed > EXPORT_OPSET else None)
    onnx.checker.check_model(model)
    assert {n.op_type for n in model.graph.node} == {n.op for n in graph.nodes}
