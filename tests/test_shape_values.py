"""Shape values (``cimc.ir.opdef.shape_value``): cimc's type inference reads shape operands computed at run time
(``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, as the TorchScript exporter writes them) element by element.

Checked against a reference we did not write: onnx's own shape inference with data propagation
(``onnx.shape_inference.infer_shapes(model, data_prop=True)``). On every corpus file and zoo model, wherever onnx
gives a value a concrete dim, cimc's type of that value must have the same dim on import (not a different one, not
an unknown or symbolic one), and fold-constants must not make any dim disagree. The last tests show the comparison
catching broken value rules, and a sequence length that is truly dynamic staying a clear error on racetrack.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator

import corpus_models as cm
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import cimc
from cimc import zoo
from cimc.errors import CimcError
from cimc.ir.core import Graph
from cimc.ir.opdef import InferContext, lookup, register_op, shape_value
from cimc.ir.types import Dim, ShapeValue, dim_factors, dim_product
from cimc.onnx_io import import_model
from cimc.passes.fold_constants import fold_constants

MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    **{name: (lambda name=name: cm.load(name)) for name in cm.entries()},
    **{f"zoo_{name}": (lambda name=name: zoo.load(name).onnx()) for name in zoo.NAMES},
}


def onnx_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Each value's dims as onnx infers them with data propagation: an int where it knows one, else ``None``."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    dims = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        t = info.type.tensor_type
        if t.HasField("shape"):
            dims[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return dims


def _differences(graph: Graph, want: dict[str, list[int | None]], *, known_too: bool) -> list[str]:
    problems = []
    for node in graph.nodes:
        for v in node.outputs:
            if v.name not in want:
                continue
            onnx_shape = want[v.name]
            got: list[Dim] = list(v.type.shape) if v.type.shape is not None else [None] * len(onnx_shape)
            if len(got) != len(onnx_shape):
                problems.append(f"{node.op} %{v.name}: cimc's rank {len(got)}, onnx's {len(onnx_shape)}")
                continue
            for axis, (mine, theirs) in enumerate(zip(got, onnx_shape, strict=True)):
                if theirs is None or mine == theirs:
                    continue
                if isinstance(mine, int) or known_too:
                    problems.append(f"{node.op} %{v.name} dim {axis}: cimc {mine!r}, onnx {theirs} "
                                    f"(cimc {v.type}, onnx {onnx_shape})")
                    break
    return problems


def shape_problems(model: onnx.ModelProto) -> list[str]:
    """Where cimc's types disagree with onnx's data-propagated shapes: on import, a dim onnx knows that cimc
    types otherwise (another int, a symbolic name, unknown); after fold-constants, a known dim that differs.
    A model cimc's inference refuses is one problem."""
    want = onnx_dims(model)
    try:
        graph = import_model(model)
    except Exception as e:
        return [f"import failed: {type(e).__name__}: {e}"]
    problems = _differences(graph, want, known_too=True)
    fold_constants(graph)
    return problems + [f"after fold-constants: {p}" for p in _differences(graph, want, known_too=False)]


@pytest.mark.parametrize("name", list(MODELS))
def test_cimc_types_every_dim_onnx_data_propagation_knows(name: str) -> None:
    assert shape_problems(MODELS[name]()) == []


def test_the_transformer_exports_matmuls_get_their_sequence_length() -> None:
    """bert's TorchScript export builds every attention Reshape's shape at run time; its MatMuls have a symbolic
    batch and a known sequence length (onnx finds 16 too, with an anonymous batch)."""
    graph = import_model(cm.load("bert_torchscript"))
    dense = graph.value("/model/bert/encoder/layer.0/attention/output/dense/MatMul_output_0")
    heads = graph.value("/model/bert/encoder/layer.0/attention/self/Reshape_output_0")
    assert dense.type.shape == ("batch", 16, 32) and heads.type.shape == ("batch", 16, 2, 16)


@contextlib.contextmanager
def _value_rule(op: str, rule: Callable[[InferContext], ShapeValue | None]) -> Iterator[None]:
    """Op ``op`` with value rule ``rule`` in place of its own (a mutant), its definition restored after."""
    old = lookup(op)
    assert old is not None and old.value is not None
    register_op(dataclasses.replace(old, value=rule), replace=True)
    try:
        yield
    finally:
        register_op(old, replace=True)


def _gather_next_index(ctx: InferContext) -> ShapeValue | None:
    data, idx = ctx.value(0), ctx.const(1)
    if data is None or idx is None or idx.ndim > 1:
        return None
    return ShapeValue(tuple(data.elems[(int(i) + 1) % len(data.elems)] for i in idx.reshape(-1)), idx.ndim == 0)


def _concat_dropping_the_last(ctx: InferContext) -> ShapeValue | None:
    parts = [ctx.value(i) for i in range(len(ctx.types))]
    if any(p is None or p.scalar for p in parts):
        return None
    return ShapeValue(tuple(d for p in parts if p is not None for d in p.elems)[:-1])


def _concat_unknown_last(ctx: InferContext) -> ShapeValue | None:
    parts = [ctx.value(i) for i in range(len(ctx.types))]
    if any(p is None or p.scalar for p in parts):
        return None
    return ShapeValue((*tuple(d for p in parts if p is not None for d in p.elems)[:-1], None))


@pytest.mark.parametrize(("model", "op", "mutant", "says"), [
    # Gather taking the next index: the heads' Reshape is [6, 8, 2, 4], onnx's [?, 6, 2, 4]
    ("heads", "Gather", _gather_next_index, "Reshape %split dim 1: cimc 8, onnx 6"),
    # Concat dropping an element: shorter than its type (which the import refuses)
    ("bert_torchscript", "Concat", _concat_dropping_the_last, "its value rule gives 1 element(s)"),
    # Concat forgetting its last element: the attention Reshapes' head dim 16, which onnx knows, unknown
    ("bert_torchscript", "Concat", _concat_unknown_last, "dim 3: cimc None, onnx 16"),
])
def test_the_comparison_catches_a_broken_value_rule(model: str, op: str,
                                                    mutant: Callable[[InferContext], ShapeValue | None],
                                                    says: str) -> None:
    proto = _dynamic_sequence_model(6, heads_only=True) if model == "heads" else cm.load(model)
    assert shape_problems(proto) == []
    with _value_rule(op, mutant):
        problems = shape_problems(proto)
    assert any(says in p for p in problems), problems[:3]
    assert shape_problems(proto) == []


def _size(d: Dim, sizes: dict[str, int]) -> int | None:
    """The size of dim ``d`` when its names have ``sizes`` (``16*batch`` is 48 for a batch of 3)."""
    if d is None:
        return None
    coef, names = dim_factors(d)
    return coef * math.prod(sizes[n] ** k for n, k in names.items())


def test_a_shape_value_is_what_the_graph_computes() -> None:
    """The elements cimc works out for every shape computation of the TorchScript transformers equal the values
    the interpreter computes on a batch of 3 (a symbolic element stands for the batch, or a product of it)."""
    from cimc.interpreter import run

    for name in ("bert_torchscript", "llama_torchscript", "swin_torchscript", "bert_dynamo", "llama_dynamo"):
        graph = import_model(cm.load(name))
        entry = cm.entries()[name]
        x = cm.draw_inputs(entry["inputs"], 3, seed=0)
        values = {v.name: shape_value(v) for n in graph.nodes for v in n.outputs}
        kept = [k for k, s in values.items() if s is not None and any(d is not None for d in s.elems)]
        graph.outputs = [graph.value(k) for k in kept]
        got = run(graph, x)
        for k in kept:
            known = values[k]
            assert known is not None
            actual = np.asarray(got[k]).reshape(-1).tolist()
            want = [_size(d, {"batch": 3}) for d in known.elems]
            assert len(actual) == len(want) and all(w is None or a == w for a, w in zip(actual, want, strict=True)), \
                (name, k, known, actual)
        assert len(kept) > 10, (name, len(kept))


def _dynamic_sequence_model(seq: int | str, *, heads_only: bool = False) -> onnx.ModelProto:
    """x [batch, seq, 8] -> MatMul -> Reshape to heads (Shape -> Gather -> Unsqueeze -> Concat) -> back -> MatMul
    (``heads_only``: the model ends at the heads)."""
    rng = np.random.default_rng(0)
    w1, w2 = (helper.make_tensor(n, TensorProto.FLOAT, s, rng.standard_normal(s).astype(np.float32).ravel())
              for n, s in (("w1", [8, 8]), ("w2", [8, 4])))
    ints = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)] if v else [], v or [0])  # noqa: E731
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Shape", ["h"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["s", "i1"], ["t"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax"], ["bu"]),
        helper.make_node("Unsqueeze", ["t", "ax"], ["tu"]),
        helper.make_node("Concat", ["bu", "tu", "heads"], ["spec"], axis=0),
        helper.make_node("Reshape", ["h", "spec"], ["split"]),
        helper.make_node("Relu", ["split"], ["act"]),
        helper.make_node("Concat", ["bu", "tu", "m1"], ["spec2"], axis=0),
        helper.make_node("Reshape", ["act", "spec2"], ["merged"]),
        helper.make_node("MatMul", ["merged", "w2"], ["y"]),
    ]
    if heads_only:
        nodes = nodes[:8]
    graph = helper.make_graph(
        nodes, "heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, 8])],
        [helper.make_tensor_value_info("split" if heads_only else "y", TensorProto.FLOAT, None)],
        [w1, w2, ints("i0", []), helper.make_tensor("i1", TensorProto.INT64, [], [1]), ints("ax", [0]),
         ints("heads", [2, 4]), ints("m1", [-1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_computed_shape_compiles_for_racetrack_and_a_dynamic_sequence_stays_an_error() -> None:
    rng = np.random.default_rng(1)
    fixed = _dynamic_sequence_model(6)
    graph = import_model(fixed)
    assert graph.value("merged").type.shape == ("batch", 6, 8)
    x = {"x": rng.standard_normal((8, 6, 8)).astype(np.float32)}
    compiled = cimc.compile(fixed, target="racetrack", calibration=x, verify=True,
                            inputs={"x": rng.standard_normal((3, 6, 8)).astype(np.float32)}, progress=False)
    assert (compiled.verify or {}).get("reference_exact")

    dynamic = _dynamic_sequence_model("seq")
    assert import_model(dynamic).value("merged").type.shape == ("batch", "seq", 8)
    with pytest.raises(CimcError, match=r"racetrack sweeps need the output positions per sample known when "
                                              r"compiling, but its shape \['batch', 'seq', 8\] leaves them open"):
        cimc.compile(dynamic, target="racetrack", calibration={"x": x["x"]}, progress=False)


@pytest.mark.parametrize(("dim", "coef", "names"), [
    (12, 12, {}), ("N", 1, {"N": 1}), ("16*N", 16, {"N": 1}), ("M*N", 1, {"M": 1, "N": 1}),
    ("4*N*N", 4, {"N": 2}), ("a**b", 1, {"a**b": 1}), ("x * 2", 1, {"x * 2": 1}),
])
def test_a_product_dim_reads_back_as_it_is_spelled(dim: Dim, coef: int, names: dict[str, int]) -> None:
    assert dim is not None
    got = dim_factors(dim)
    assert got == (coef, names)
    if all("*" not in n for n in names):  # a name of its own with a * in it is kept whole, not respelled
        assert dim_product(*got) == dim


def _window_model(batch: int | str) -> onnx.ModelProto:
    """Swin's windows as TorchScript exports them: x [batch, 8, 8, 4] split into four 4x4 windows of 16 tokens with
    -1 in the windows' Reshape, a MatMul on the windows, put back with -1 again, then a MatMul on the 64 tokens."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], rng.standard_normal(16).astype(np.float32))
    ints = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)  # noqa: E731
    nodes = [
        helper.make_node("Reshape", ["x", "grid"], ["g"]),                  # [N, 2, 4, 2, 4, 4]
        helper.make_node("Transpose", ["g"], ["gt"], perm=[0, 1, 3, 2, 4, 5]),
        helper.make_node("Reshape", ["gt", "windows"], ["win"]),            # [-1, 16, 4]: [4*N, 16, 4]
        helper.make_node("MatMul", ["win", "w"], ["att"]),
        helper.make_node("Reshape", ["att", "back"], ["b"]),                # [-1, 2, 2, 4, 4, 4]: [N, ...]
        helper.make_node("Transpose", ["b"], ["bt"], perm=[0, 1, 3, 2, 4, 5]),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax"], ["nu"]),
        helper.make_node("Concat", ["nu", "tokens"], ["spec"], axis=0),
        helper.make_node("Reshape", ["bt", "spec"], ["seq"]),               # [N, -1, 4]: [N, 64, 4]
        helper.make_node("MatMul", ["seq", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "windows", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8, 8, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, ints("grid", [0, 2, 4, 2, 4, 4]), ints("windows", [-1, 16, 4]), ints("back", [-1, 2, 2, 4, 4, 4]),
         helper.make_tensor("i0", TensorProto.INT64, [], [0]), ints("ax", [0]), ints("tokens", [-1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_window_partition_and_its_reverse_keep_the_batch() -> None:
    """The windows' Reshape [-1, 16, 4] of [N, 2, 4, 2, 4, 4] is [4*N, 16, 4] (N * 4 windows, a product dim), the
    reverse's -1 is N again, so the MLP gets its tokens per sample, 64, which racetrack needs; the program equals
    its integer reference, and each layer costs per inference what it costs in the same model with a static batch
    of 1 (the windows counted 4 per sample; the batch's shape computation, folded there, is all that is extra)."""
    model = _window_model("N")
    g = import_model(model)
    assert g.value("win").type.shape == ("4*N", 16, 4) and g.value("b").type.shape[0] == "N"
    assert g.value("seq").type.shape == ("N", 64, 4)
    assert shape_problems(model) == []
    rng = np.random.default_rng(2)
    x = {"x": rng.standard_normal((1, 8, 8, 4)).astype(np.float32)}
    compiled = cimc.compile(model, target="racetrack", calibration=x, verify=True,
                            inputs={"x": rng.standard_normal((2, 8, 8, 4)).astype(np.float32)}, progress=False)
    assert (compiled.verify or {}).get("reference_exact")
    one = cimc.compile(_window_model(1), target="racetrack", calibration=x, progress=False)
    assert compiled.cost is not None and one.cost is not None
    layers = {layer["name"]: layer for layer in compiled.cost.to_dict()["per_inference"]["layers"]}
    static = {layer["name"]: layer for layer in one.cost.to_dict()["per_inference"]["layers"]}
    assert {"MatMul_3", "MatMul_11"} <= set(static) and all(layers[k] == v for k, v in static.items())
    assert {layers[k]["name"].split("_")[0] for k in set(layers) - set(static)} == {"Shape", "Gather", "Unsqueeze",
                                                                                      "Concat"}



_STEPS = st.lists(st.tuples(st.sampled_from(["Add", "Sub", "Mul", "Div", "dim"]), st.integers(-3, 6)),
                  min_size=1, max_size=4)


@settings(max_examples=200, deadline=None)
@given(dims=st.lists(st.integers(1, 6) | st.just("N"), min_size=1, max_size=3), start=st.integers(0, 2),
       steps=_STEPS)
def test_shape_arithmetic_values_are_what_the_interpreter_computes(dims: list[int | str], start: int,
                                                                   steps: list[tuple[str, int]]) -> None:
    """Scalars computed from a shape (a dim, then Add/Sub/Mul/Div by constants, or Mul by another dim): the
    element cimc knows when compiling, evaluated at the batch sizes 1 to 5, is the value the interpreter
    computes (the ops' reference implementations: numpy, Div truncating toward zero)."""
    from cimc.interpreter import run

    scalar = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [], [v])  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i"], ["v0"], axis=0)]
    consts = [scalar("i", start % len(dims))]
    for k, (op, c) in enumerate(steps):
        if op == "dim":
            consts.append(scalar(f"c{k}", c % len(dims)))
            nodes += [helper.make_node("Gather", ["s", f"c{k}"], [f"e{k}"], axis=0),
                      helper.make_node("Mul", [f"v{k}", f"e{k}"], [f"v{k + 1}"])]
        else:
            consts.append(scalar(f"c{k}", c))
            nodes.append(helper.make_node(op, [f"v{k}", f"c{k}"], [f"v{k + 1}"]))
    last = f"v{len(steps)}"
    graph = import_model(helper.make_model(helper.make_graph(
        nodes, "arith", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(last, TensorProto.INT64, [])], consts),
        opset_imports=[helper.make_opsetid("", 17)]))
    known = shape_value(graph.outputs[0])
    assert known is not None and known.scalar
    (elem,) = known.elems
    for n in range(1, 6):
        x = np.zeros([n if d == "N" else d for d in dims], np.float32)
        got = int(run(graph, {"x": x})[last])
        if elem is not None:
            assert _size(elem, {"N": n}) == got, (elem, n, got, steps)


@settings(max_examples=150, deadline=None)
@given(dims=st.lists(st.integers(1, 6) | st.just("N"), min_size=1, max_size=3),
       operands=st.tuples(*[st.integers(-3, 8) | st.just("dim")] * 3), axis=st.integers(0, 2))
def test_a_range_over_shape_values_has_the_length_and_elements_the_interpreter_computes(
        dims: list[int | str], operands: tuple[int | str, ...], axis: int) -> None:
    """``Range(start, limit, delta)``, each a constant or a dim of the input's shape (``arange(seq)``, as the dynamo
    exporter writes a position index): the length its type gives and the elements its value rule knows are, at
    the batch sizes 1 to 4, what the interpreter computes."""
    from cimc.interpreter import run

    if 0 in operands[2:]:
        return  # a zero delta is an error of its own
    scalar = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [], [v])  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["s"])]
    consts = [scalar("axis", axis % len(dims))]
    names = []
    for k, op in enumerate(operands):
        if op == "dim":
            nodes.append(helper.make_node("Gather", ["s", "axis"], [f"o{k}"], axis=0))
        else:
            consts.append(scalar(f"o{k}", op))
        names.append(f"o{k}")
    nodes.append(helper.make_node("Range", names, ["r"]))
    graph = import_model(helper.make_model(helper.make_graph(
        nodes, "range", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("r", TensorProto.INT64, None)], consts),
        opset_imports=[helper.make_opsetid("", 17)]))
    (length,) = graph.outputs[0].type.shape
    known = shape_value(graph.outputs[0])
    for n in range(1, 5):
        got = run(graph, {"x": np.zeros([n if d == "N" else d for d in dims], np.float32)})["r"]
        if length is not None:
            assert _size(length, {"N": n}) == got.size, (length, n, got)
        if known is not None:
            assert [_size(d, {"N": n}) for d in known.elems] == got.tolist(), (known, n, got)
    if operands == (0, "dim", 1) and dims[axis % len(dims)] == "N":
        assert length == "N"  # arange(batch) has the batch's length
