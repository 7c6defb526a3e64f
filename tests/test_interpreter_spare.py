"""The interpreter's spare operands (``OpContext.spare``): an op may overwrite an operand's array only when that
operand dies at it, was made by a node of the run, is no graph output, and nothing else holds or views its array;
``Add`` and ``q.add`` then write their result into it, with the same bits as out of place."""

from __future__ import annotations

import numpy as np
import pytest

from cimc.interpreter import Interpreter, run
from cimc.ir.core import Graph
from cimc.ir.opdef import define_op, lookup
from cimc.ir.types import DType, TensorType
from cimc.ops._infer import same_as
from cimc.quant import quantize_multiplier, shared_multipliers

F32, I32, U8 = DType.f32, DType.i32, DType.u8
SEEN: list[tuple[int, ...]] = []


if lookup("test.spare_probe") is None:
    @define_op("test.spare_probe", inputs=(1, 2), infer=same_as(0))
    def _probe(ctx, a, b=None):
        """Records which operands the interpreter offers as spare; returns a + 1 (a fresh array)."""
        SEEN.append(tuple(ctx.spare))
        return a + 1


def _spare_of(g: Graph, observe: bool = False, **inputs: np.ndarray) -> tuple[int, ...]:
    SEEN.clear()
    interp = Interpreter(g)
    interp.run(inputs, observe=(lambda v, a: None) if observe else None)
    (seen,) = SEEN
    return seen


def _chain(view: str | None = None, twice: bool = False, output: bool = False, from_input: bool = False) -> Graph:
    """x -> t = Relu(x) -> [test.spare_probe(t[, t])] -> out; ``view``: a Reshape of t read after the probe
    (``live``) or fed to it in t's place (``operand``)."""
    g = Graph()
    x = g.add_input("x", TensorType(F32, (2, 3)))
    t = x if from_input else g.add_node("Relu", [x]).output
    shape = g.add_constant(np.array([3, 2], np.int64), "shape")
    v = g.add_node("Reshape", [t, shape]).output if view else None
    arg = v if view == "operand" else t
    p = g.add_node("test.spare_probe", [arg, arg] if twice else [arg]).output
    g.outputs.append(p)
    if view == "live":
        g.outputs.append(g.add_node("Relu", [v]).output)
    if output:
        g.outputs.append(t)
    return g


X = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)


def _dying(g: Graph) -> tuple[int, ...]:
    """The probe's operands the plan lists as dying there (before the run's reference counts are read)."""
    return next(e[6] for e in Interpreter(g)._plan if e[0].op == "test.spare_probe")


def test_an_operand_made_by_a_node_that_dies_here_is_spare():
    assert _dying(_chain()) == (0,)
    assert _spare_of(_chain(), x=X) == (0,)


@pytest.mark.parametrize(("case", "kwargs", "planned"), [
    ("a graph input", {"from_input": True}, ()),
    ("a graph output", {"output": True}, ()),
    ("read twice by the node", {"twice": True}, ()),
    ("viewed by a value read later", {"view": "live"}, (0,)),  # only the run sees the view
    ("a view of another array", {"view": "operand"}, (0,)),
])
def test_no_operand_is_spare_when_something_else_may_read_its_array(case, kwargs, planned):
    assert _dying(_chain(**kwargs)) == planned, case
    assert _spare_of(_chain(**kwargs), x=X) == (), case


def test_nothing_is_spare_while_the_run_is_observed():
    assert _spare_of(_chain(), observe=True, x=X) == ()


def _add_graph(from_input: bool) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType(I32, (2, 3, 4)))
    t = x if from_input else g.add_node("Relu", [x]).output
    b = g.add_constant(np.array([[1], [-2], [2**31 - 1]], np.int32), "bias")
    g.outputs.append(g.add_node("Add", [t, b]).output)
    return g


@pytest.mark.parametrize("from_input", [False, True])
def test_add_writes_into_a_spare_operand_with_the_same_bits_and_leaves_inputs_alone(from_input):
    x = np.random.default_rng(0).integers(-5, 2**31 - 1, (2, 3, 4)).astype(np.int32)
    keep = x.copy()
    g = _add_graph(from_input)
    got = next(iter(run(g, {"x": x}).values()))
    want = next(iter(Interpreter(g).run({"x": x}, observe=lambda v, a: None).values()))  # observed: out of place
    assert got.dtype == np.int32 and np.array_equal(got, want)  # int32 wraps like C either way
    assert np.array_equal(x, keep)


def test_add_keeps_a_spare_operand_that_cannot_hold_the_result():
    """The dying operand broadcasts (a smaller shape) or is of another element type: the sum is a fresh array."""
    g = Graph()
    x = g.add_input("x", TensorType(I32, (3, 1)))
    big = g.add_input("big", TensorType(I32, (2, 3, 4)))
    t = g.add_node("Relu", [x]).output
    g.outputs.append(g.add_node("Add", [big, t]).output)
    assert Interpreter(g)._plan[-1][6] == (1,)
    xs = {"x": np.array([[1], [-2], [3]], np.int32), "big": np.arange(24, dtype=np.int32).reshape(2, 3, 4)}
    got = next(iter(run(g, xs).values()))
    assert np.array_equal(got, xs["big"] + np.maximum(xs["x"], 0))


def test_qadd_writes_into_a_spare_operand_with_the_same_bits():
    from cimc.ops.quantized import _LUT_MIN

    shape = (2, 3, max(8, _LUT_MIN // 6 + 1))
    rng = np.random.default_rng(1)
    acc = rng.integers(-(2**14), 2**14, shape).astype(np.int32)
    b = rng.integers(0, 256, shape).astype(np.uint8)
    m0, sh = quantize_multiplier(0.01)
    g = Graph()
    a_in, b_in = g.add_input("acc", TensorType(I32, shape)), g.add_input("b", TensorType(U8, shape))
    a = g.add_node("q.requant", [a_in], {"mode": "fixed", "scale": (0.01,), "multiplier": (m0,), "shift": (sh,),
                                         "zero_point": 3}).output
    na, nb, s = shared_multipliers(0.7, 0.2)
    g.outputs.append(g.add_node("q.add", [a, b_in], {"a_scale": 0.7, "b_scale": 0.2, "a_zero_point": 3,
                                                     "b_zero_point": 9, "zero_point": 5, "a_multiplier": na,
                                                     "b_multiplier": nb, "shift": s}).output)
    assert Interpreter(g)._plan[-1][6] == (0,)  # the requantized activation dies at q.add
    got = next(iter(run(g, {"acc": acc, "b": b}).values()))
    want = next(iter(Interpreter(g).run({"acc": acc, "b": b}, observe=lambda v, a: None).values()))
    assert np.array_equal(got, want)
