"""Property: any graph prints, parses back equal (graph_difference is None) and reprints identically.

Random graphs use weird names (unicode, slashes, quotes, backslashes, control characters, lone
surrogates), symbolic and unknown dims, constants of every element type with random bit patterns
(inline, hex and resource paths), attributes of every kind, multi-result and result-less nodes
and absent operands.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimc.ir.core import Graph
from cimc.ir.equality import graph_difference
from cimc.ir.types import DType, QuantParams, TensorType
from cimc.text import parse_graph, print_graph

_CHARS = st.one_of(st.sampled_from('ab_.0/:"\\%@ #\n\t{}[](),=<>é∑\u2028\x00'),
                   st.characters(exclude_categories=()))
names = st.one_of(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.]{0,5}", fullmatch=True),
                  st.text(_CHARS, min_size=1, max_size=6))
dims = st.one_of(st.integers(0, 3), st.none(), names)
shapes = st.one_of(st.none(), st.lists(dims, max_size=3).map(tuple))
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
quants = st.builds(QuantParams, st.lists(st.floats(width=32), max_size=3).map(tuple),
                   st.lists(st.integers(-128, 255), max_size=3).map(tuple), st.integers(2, 8),
                   st.one_of(st.none(), st.integers(-2, 3)))
types = st.builds(TensorType, st.sampled_from(list(DType)), shapes, st.one_of(st.none(), quants))
_TENSOR_DTYPES = [d for d in DType if d not in (DType.i4, DType.u4)]


@st.composite
def arrays(draw, dtype: DType, max_size: int = 40) -> np.ndarray:
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    if np.prod(shape) > max_size:
        shape = (draw(st.integers(0, max_size)),)
    n = int(np.prod(shape))
    if dtype is DType.str:
        arr = np.empty(n, object)
        arr[:] = draw(st.lists(st.text(_CHARS, max_size=4), min_size=n, max_size=n))
        return arr.reshape(shape)
    if dtype is DType.bool:
        return np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool).reshape(shape)
    if dtype.is_float and draw(st.booleans()):  # ordinary values, with the special ones
        vals = draw(st.lists(st.one_of(finite, st.sampled_from([np.nan, np.inf, -np.inf, -0.0])),
                             min_size=n, max_size=n))
        with np.errstate(over="ignore"):  # large f32 values become inf in f16
            return np.array(vals, np.float64).astype(dtype.numpy).reshape(shape)
    raw = draw(st.binary(min_size=n * dtype.numpy.itemsize, max_size=n * dtype.numpy.itemsize))
    return np.frombuffer(raw, dtype.numpy).reshape(shape).copy()  # any bit pattern, NaN payloads too


scalars = st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.text(_CHARS, max_size=5))
attr_values = st.one_of(
    scalars,
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4).map(tuple),
    st.lists(st.floats(), max_size=4).map(tuple),
    st.lists(st.text(_CHARS, max_size=3), max_size=3).map(tuple),
    st.just(()),
    st.sampled_from(_TENSOR_DTYPES).flatmap(arrays),
)
op_names = st.one_of(st.sampled_from(["Relu", "Add", "Conv", "sram.mvm", "q.requant", "const", "meta",
                                      "return", "none", "graph"]), st.text(_CHARS, min_size=1, max_size=5))


@st.composite
def graphs(draw) -> Graph:
    pool = draw(st.lists(names, min_size=12, max_size=30, unique=True))
    node_names = iter(draw(st.lists(names, min_size=8, max_size=8, unique=True)))
    fresh = iter(pool)
    g = Graph(draw(names))
    defined = []
    for _ in range(draw(st.integers(0, 2))):
        defined.append(g.add_input(next(fresh), draw(types)))
    for _ in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(list(DType)))
        arr = draw(arrays(dtype))
        t = TensorType.of(arr) if dtype is not DType.str else TensorType(DType.str, arr.shape)
        t = TensorType(dtype, draw(st.sampled_from([arr.shape, t.shape, None, ("N",) * arr.ndim])),
                       draw(st.one_of(st.none(), quants)))
        defined.append(g.add_constant(arr, next(fresh), t))
    for _ in range(draw(st.integers(0, 6))):
        operands = draw(st.lists(st.one_of(st.none(), st.sampled_from(defined)) if defined else st.none(),
                                 max_size=3))
        attrs = draw(st.dictionaries(st.one_of(names, st.sampled_from(["axis", "const", "none", "q"])),
                                     attr_values, max_size=4))
        results = [draw(types) for _ in range(draw(st.integers(0, 3)))]
        try:
            res_names = [next(fresh) for _ in results]
        except StopIteration:
            break
        node = g.add_node(draw(op_names), operands, attrs, outputs=results, output_names=res_names,
                          name=next(node_names))
        defined += node.outputs
    if defined:
        g.outputs = draw(st.lists(st.sampled_from(defined), max_size=3))
    g.metadata = draw(st.dictionaries(st.text(_CHARS, max_size=4), st.text(_CHARS, max_size=4), max_size=2))
    return g


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(graphs(), st.booleans(), st.integers(0, 20))
def test_print_parse_print_is_identity(g: Graph, use_resources: bool, inline_limit: int) -> None:
    res: dict[str, np.ndarray] | None = {} if use_resources else None
    text = print_graph(g, resources=res, inline_limit=inline_limit)
    g2 = parse_graph(text, resources=res)
    assert graph_difference(g, g2) is None, (graph_difference(g, g2), text)
    assert g2.name == g.name
    again = print_graph(g2, resources=None if res is None else {}, inline_limit=inline_limit)
    assert again == text
    for v in g2.constants.values():
        assert not v.const.flags.writeable
