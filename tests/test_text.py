"""The .cimir printer and parser: every construct, every error message, save/load, equality."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cimc.errors import ParseError, VerifyError
from cimc.ir.core import Graph
from cimc.ir.equality import graph_difference, graphs_equal
from cimc.ir.types import DType, QuantParams, TensorType
from cimc.ir.verifier import verify
from cimc.text import load_graph, parse_graph, print_graph, save_graph, sidecar_path

F32 = DType.f32


def tt(dtype: DType | str, *shape, quant=None) -> TensorType:
    return TensorType(DType(dtype) if isinstance(dtype, str) else dtype, shape, quant)


def roundtrip(g: Graph, **kw) -> Graph:
    """print -> parse -> print is the identity and the parsed graph equals the original."""
    res = {} if kw.pop("use_resources", False) else None
    text = print_graph(g, resources=res, **kw)
    g2 = parse_graph(text, resources=res)
    assert print_graph(g2, resources=None if res is None else {}, **kw) == text
    assert graph_difference(g, g2) is None, graph_difference(g, g2)
    return g2


EXAMPLE = """# a comment to end of line
graph @main(%x: f32[N,1,8,8], %"gpu_0/data_0": f32[1,3,224,224]) {
  meta "producer_name" = "pytorch"
  %w: f32[2,2] = const [1.0, 2.0, 3.0, 4.0]
  %big: f32[512,512] = const resource "big"
  %raw: f32[2] = const hex "0000803f00000040"
  %s: f32[2] = const [0.5, 0.25]
  %z: i8[2] = const [0, 0]
  %y: f32[N,16,6,6] = Conv(%x, %w, none) {kernel_shape = [3, 3], pads = [1, 1, 1, 1], auto_pad = "NOTSET"} loc("conv1")
  %a: f32[2], %b: f32[2] = Split(%x) {axis = 0, num_outputs = 2} loc("split_0")
  %q: i8[N,16]<q scale=[0.5, 0.25] zero_point=[0, 0] bits=8 axis=1> = QuantizeLinear(%y, %s, %z) loc("q")
  return %y, %a
}
"""


def test_example_from_the_spec():
    big = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)
    g = parse_graph(EXAMPLE, resources={"big": big})
    assert [v.name for v in g.inputs] == ["x", "gpu_0/data_0"]
    assert g.inputs[0].type == tt(F32, "N", 1, 8, 8)
    assert g.metadata == {"producer_name": "pytorch"}
    assert list(g.constants) == ["w", "big", "raw", "s", "z"]
    np.testing.assert_array_equal(g.constants["w"].const, [[1, 2], [3, 4]])
    assert g.constants["w"].const.dtype == np.float32
    np.testing.assert_array_equal(g.constants["raw"].const, [1.0, 2.0])
    assert g.constants["big"].const is not big and np.shares_memory(g.constants["big"].const, big)
    conv, split, q = g.nodes
    assert (conv.op, conv.name, conv.inputs[2]) == ("Conv", "conv1", None)
    assert conv.attrs == {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1), "auto_pad": "NOTSET"}
    assert [v.name for v in split.outputs] == ["a", "b"]
    assert q.output.type == tt("i8", "N", 16, quant=QuantParams((0.5, 0.25), (0, 0), 8, 1))
    assert [v.name for v in g.outputs] == ["y", "a"]
    res: dict[str, np.ndarray] = {}
    text = print_graph(g, resources=res)
    assert list(res) == ["big"] and res["big"] is g.constants["big"].const
    assert 'const resource "big"' in text and "const [1.0, 2.0]" in text  # small hex becomes a list
    assert graphs_equal(parse_graph(text, resources=res), g)


def test_printed_layout():
    g = Graph("net")
    x = g.add_input("x", tt(F32, "N", 4))
    c = g.add_constant(np.array([1, 2, 3, 4], np.float32), "c")
    g.metadata["k"] = "v"
    a = g.add_node("Add", [x, c], name="add0").output
    r = g.add_node("Relu", [a], name="relu0").output
    g.outputs = [r]
    assert print_graph(g) == (
        "graph @net(%x: f32[N,4]) {\n"
        '  meta "k" = "v"\n'
        "  %c: f32[4] = const [1.0, 2.0, 3.0, 4.0]\n"
        '  %add0: f32[N,4] = Add(%x, %c) loc("add0")\n'
        '  %relu0: f32[N,4] = Relu(%add0) loc("relu0")\n'
        "  return %relu0\n"
        "}\n")
    verify(roundtrip(g))


def test_names_that_need_quotes():
    g = Graph("my graph")
    x = g.add_input('a/b:0 "q" \\ é\n', tt(F32, "batch size", "3", "?", "N"))
    y = g.add_input("1.x_", tt(F32, 2))
    n = g.add_node("weird op-name", [x, y], {"a-b": 1, "é": 2.0, "ok_key": "s"},
                   outputs=[tt(F32, 2)], output_names=["%ü"], name='node "1"\t/')
    g.add_node("const", [n.output], outputs=[tt(F32, 2)], output_names=["c"], name="n2")
    g.add_node("sram.mvm", [], outputs=[tt(F32, 2)], output_names=["m"], name="n3")
    g.outputs = [n.output, x]
    text = print_graph(g)
    assert text.startswith('graph @"my graph"(%"a/b:0 \\"q\\" \\\\ é\\n": f32["batch size","3","?",N]')
    assert "%1.x_: f32[2]" in text and "%\"%ü\": f32[2]" in text
    assert '"weird op-name"(' in text and '"const"(%"%ü")' in text and "= sram.mvm()" in text
    assert '{"a-b" = 1, "é" = 2.0, ok_key = "s"}' in text and 'loc("node \\"1\\"\\t/")' in text
    g2 = roundtrip(g)
    assert g2.name == "my graph" and g2.inputs[0].type.shape == ("batch size", "3", "?", "N")


def test_types():
    g = Graph()
    qp = QuantParams((0.5, float("inf")), (0, -3), 4, None)
    for i, t in enumerate([tt(F32, None), TensorType(F32, None), tt(F32), tt("i8", 2, quant=qp),
                           tt("u8", 2, quant=QuantParams((1e-05,), (128,), 8, 0))]):
        g.add_input(f"x{i}", t)
    text = print_graph(g)
    assert "%x0: f32[?]" in text and "%x1: f32[*]" in text and "%x2: f32[]" in text
    assert "i8[2]<q scale=[0.5, inf] zero_point=[0, -3] bits=4>" in text
    assert "u8[2]<q scale=[1e-05] zero_point=[128] bits=8 axis=0>" in text
    roundtrip(g)


def test_attribute_kinds():
    g = Graph()
    x = g.add_input("x", tt(F32, 2))
    attrs = {"i": -3, "big": 2**63 - 1, "f": 1.0, "e": 1e-05, "pinf": math.inf, "ninf": -math.inf,
             "nan": math.nan, "negz": -0.0, "s": 'a "q"\n', "ints": (1, 2), "floats": (1.0, 2.5),
             "strs": ("a", ""), "empty": (), "tensor": np.array([1.0, 2.0], np.float32),
             "big_tensor": np.arange(300, dtype=np.float32), "str_tensor": np.array(["x", "y"], object),
             "scalar_tensor": np.array(7, np.int64), "bf_tensor": np.ones(2, DType.bf16.numpy),
             "np_scalars": (np.int64(3), np.float32(0.5))}
    n = g.add_node("Foo", [x], attrs, outputs=[tt(F32, 2)], name="foo")
    text = print_graph(g)
    for piece in ["i = -3", "f = 1.0", "e = 1e-05", "pinf = inf", "ninf = -inf", "nan = nan", "negz = -0.0",
                  r's = "a \"q\"\n"', "ints = [1, 2]", "floats = [1.0, 2.5]", 'strs = ["a", ""]',
                  "empty = []", "tensor = tensor<f32[2]: [1.0, 2.0]>", 'big_tensor = tensor<f32[300]: hex "',
                  'str_tensor = tensor<str[2]: ["x", "y"]>', "scalar_tensor = tensor<i64[]: [7]>",
                  'bf_tensor = tensor<bf16[2]: hex "803f803f">', "np_scalars = [3, 0.5]"]:
        assert piece in text, piece
    got = roundtrip(g).nodes[0].attrs
    assert type(got["i"]) is int and type(got["f"]) is float and math.isnan(got["nan"])
    assert got["empty"] == () and got["ints"] == (1, 2) and isinstance(got["floats"], tuple)
    assert math.copysign(1, got["negz"]) == -1
    assert got["tensor"].dtype == np.float32 and not got["tensor"].flags.writeable
    assert got["str_tensor"].dtype == object and got["str_tensor"].tolist() == ["x", "y"]
    assert got["scalar_tensor"].shape == () and n.attrs["big_tensor"].tobytes() == got["big_tensor"].tobytes()


def _array(dtype: DType, n: int, rng: np.random.Generator) -> np.ndarray:
    if dtype is DType.str:
        return np.array([f"s{i}\"é" for i in range(n)], dtype=object)
    if dtype is DType.bool:
        return rng.integers(0, 2, n).astype(bool)
    return np.frombuffer(rng.bytes(n * dtype.numpy.itemsize), dtype.numpy).copy()


@pytest.mark.parametrize("dtype", list(DType))
@pytest.mark.parametrize("mode", ["inline", "hex", "resource"])
def test_constants_of_every_dtype_are_exact(dtype, mode):
    rng = np.random.default_rng(0)
    g = Graph()
    n = 6 if mode == "inline" else 40
    arr = _array(dtype, n, rng).reshape(2, -1)
    v = g.add_constant(arr, "c", tt(dtype, *arr.shape))
    g.add_constant(arr[0, :1].reshape(()), "scalar", tt(dtype))
    g.outputs = [v]
    res: dict[str, np.ndarray] = {}
    text = print_graph(g, resources=res if mode == "resource" else None)
    g2 = roundtrip(g, use_resources=mode == "resource")
    c = g2.constants["c"].const
    assert c.dtype == dtype.numpy and c.shape == arr.shape and not c.flags.writeable
    if dtype is DType.str:
        assert "const [" in text and not res  # never hex, never a resource
    elif dtype is DType.bf16 or (mode == "inline" and dtype.is_float and np.isnan(arr).any()):
        assert "const hex" in text or "const resource" in text
    elif mode == "inline":
        assert "%c: " + dtype.value + "[2,3] = const [" in text
    else:
        assert ("const resource" if mode == "resource" else "const hex") in text


def test_inline_float_and_bool_forms():
    g = Graph()
    g.add_constant(np.array([0.1, -0.0, np.inf, -np.inf, np.nan, 1e300], np.float64), "d")
    g.add_constant(np.array([0.1, 65504.0], np.float16), "h")
    g.add_constant(np.array([True, False]), "b")
    g.add_constant(np.array([-8, 7], np.int8), "q4", tt("i4", 2))
    text = print_graph(g)
    assert "%d: f64[6] = const [0.1, -0.0, inf, -inf, nan, 1e+300]" in text
    assert "%h: f16[2] = const [0.0999755859375, 65504.0]" in text
    assert "%b: bool[2] = const [true, false]" in text and "%q4: i4[2] = const [-8, 7]" in text
    roundtrip(g)
    # a NaN whose payload repr() cannot carry goes to hex
    g = Graph()
    g.add_constant(np.array([0x7FC00001], np.uint32).view(np.float32), "p")
    assert 'const hex "0100c07f"' in print_graph(g)
    roundtrip(g)


def test_inline_limit_and_symbolic_constant_type():
    g = Graph()
    g.add_constant(np.arange(4, dtype=np.int32), "a")
    g.add_constant(np.arange(3, dtype=np.float32), "s", tt(F32, "N"))
    g.add_constant(np.arange(3, dtype=np.float32), "u", TensorType(F32, None))
    assert '%a: i32[4] = const hex "00000000010000000200000003000000"' in print_graph(g, inline_limit=3)
    text = print_graph(g)
    assert "%s: f32[N] = const shape [3] [0.0, 1.0, 2.0]" in text and "%u: f32[*] = const shape [3]" in text
    roundtrip(g)
    roundtrip(g, inline_limit=0)


def test_nodes_without_results_or_loc_and_comments():
    text = """graph @g(%x: f32[2]) {   # header
      sram.write(%x)            # no results, no loc
      %r: f32[2] = Relu(%x)
      %s: f32[2] = Relu(%r) loc("relu")   # explicit name taken later: the first one avoids it
      sram.write(none, %s) {} loc("w")
      return
    }"""
    g = parse_graph(text)
    assert [n.name for n in g.nodes] == ["sram_write", "relu_1", "relu", "w"]
    assert g.nodes[0].outputs == [] and g.outputs == [] and g.nodes[3].inputs[0] is None
    assert "  return\n}" in print_graph(g)
    roundtrip(g)


def test_values_may_be_outputs_twice_and_inputs_or_constants():
    g = Graph()
    x = g.add_input("x", tt(F32, 1))
    c = g.add_constant(np.zeros(1, np.float32), "c")
    g.outputs = [x, c, x]
    assert "return %x, %c, %x" in print_graph(g)
    roundtrip(g)


ERRORS = [
    ("graph @m(%x: f32[2] foo) {\n  return\n}", 1, 21, "expected ')', ',' or '<' but found 'foo'"),
    ("graph @m(%x: f33[2]) {\n  return\n}", 1, 14, "unknown element type 'f33'; expected one of f16,"),
    ("graph @m(%x: f32[2]) {\n  return %y\n}", 2, 10, "%y is not defined (values must be defined"),
    ("graph @m(%x: f32[2]) {\n  %y: f32[2] = Relu(%z) loc(\"r\")\n  return\n}", 2, 21, "%z is not defined"),
    ("graph @m(%x: f32[2], %x: f32[2]) {\n  return\n}", 1, 22,
     "value %x is defined twice (first at line 1, column 10)"),
    ("graph @m(%x: f32[2]) {\n  %x: f32[2] = Relu(%x)\n  return\n}", 2, 3, "value %x is defined twice"),
    ("graph @m() {\n  %c: f32[2] = const [1.0]\n  %c: f32[1] = const [1.0]\n  return\n}", 2, 22,
     "constant %c: the literal has 1 elements, f32[2] needs 2"),
    ("graph @m() {\n  %c: f32[2] = const [1.0, 2.0]\n  %c: f32[1] = const [1.0]\n  return\n}", 3, 3,
     "value %c is defined twice (first at line 2, column 3)"),
    ("graph @m() {\n  %c: f32[2] = const resource \"c\"\n  return\n}", 2, 31,
     "constant %c: resource 'c' is missing (no resources given)"),
    ("graph @m() {\n  %c: f32[2] = const hex \"00\"\n  return\n}", 2, 26,
     "constant %c: hex data has 1 bytes, f32[2] needs 8"),
    ("graph @m() {\n  %c: f32[2] = const hex \"000\"\n  return\n}", 2, 26, "hex data has 1.5 bytes"),
    ("graph @m() {\n  %c: f32[2] = const [1.0,  x]\n  return\n}", 2, 29,
     "constant %c: element 1 is 'x', not a f32 number"),
    ("graph @m() {\n  %c: f32[3] = const [1.0,\n  2.0,\n   x]\n  return\n}", 4, 4, "element 2 is 'x'"),
    ("graph @m() {\n  %c: u8[2] = const [1, 300]\n  return\n}", 2, 25, "element 1 is '300', not a u8 number"),
    ("graph @m() {\n  %c: f16[1] = const [1e10]\n  return\n}", 2, 23, "element 0 (1e10) overflows f16"),
    ("graph @m() {\n  %c: bool[1] = const [1]\n  return\n}", 2, 24, "element 0 is '1', not true or false"),
    ("graph @m() {\n  %c: str[1] = const [1]\n  return\n}", 2, 22, "str tensors hold strings, found 1"),
    ("graph @m() {\n  %c: str[1] = const [\"\\q\"]\n  return\n}", 2, 22, "bad str list literal (Invalid"),
    ("graph @m() {\n  %c: str[1] = const hex \"00\"\n  return\n}", 2, 26, "str tensors cannot be hex"),
    ("graph @m() {\n  %c: f32[N] = const [1.0]\n  return\n}", 2, 3,
     "constant %c: the type f32[N] does not give the array's shape; add 'shape [..]'"),
    ("graph @m() {\n  %a: f32[1], %a: f32[1] = Split()\n  return\n}", 2, 15, "value %a is defined twice"),
    ("graph @m() {\n  %a: f32[1], %b: f32[1] = const [1.0]\n  return\n}", 2, 3,
     "a constant defines one value, not 2"),
    ("graph @m() {\n  %c: f32[2] = Relu() loc(\"a\")\n  return\n", 4, 1,
     "expected '}' or a value (%name) but found end of input"),
    ("graph @m() {\n  $\n  return\n}", 2, 3,
     "unexpected character '$'; expected 'meta', 'return', a string, a value (%name) or an op name"),
    ("graph @m() {\n  %a: f32[2] = R() loc(\"a\")\n  %b: f32[2] = R() loc(\"a\")\n  return\n}", 3, 20,
     "node name 'a' is used twice"),
    ("graph @m() {\n  %a: f32[2] = R() {a = 1, a = 2}\n  return\n}", 2, 28,
     "node 'r' (R): attribute 'a' is given twice"),
    ("graph @m() {\n  %a: f32[2] = R() {t = tensor<f32[N]: [1.0]>}\n  return\n}", 2, 32,
     "node 'r' (R) attribute 't': a tensor attribute needs a static shape, found f32[N]"),
    ("graph @m() {\n  %a: f32[2] = R() {t = tensor<f32[1]: resource \"k\">}\n  return\n}", 2, 40,
     "tensor attributes cannot be resources"),
    ("graph @m() {\n  %a: f32[2] = R() {t = tensor<f32[2]: [1.0]>}\n  return\n}", 2, 40,
     "the literal has 1 elements, f32[2] needs 2"),
    ("graph @m() {\n  %a: f32[2] = R() {a = \"\\x\"}\n  return\n}", 2, 25, "bad string '\"\\\\x\"': Invalid \\escape"),
    ("graph @m() {\n  %a: f32[2] = R() {a = 1.0.0}\n  return\n}", 2, 28,
     "unexpected character '.'; expected ',' or '}'"),
    ("graph @m() {\n  %a: f32[2] = R() {a = x}\n  return\n}", 2, 25,
     "expected '[', 'tensor', 'tiles', a float, a string or an integer but found 'x'"),
    ("graph @m() {\n  %a: i8[2]<q scale=[1.0] zero_point=[0.5] bits=8> = R()\n  return\n}", 2, 39,
     "zero points are integers, found '0.5'"),
    ("graph @m() {\n  meta \"k\" = \"a\"\n  meta \"k\" = \"b\"\n  return\n}", 3, 3, "metadata key 'k' is given twice"),
    ("", 1, 1, "expected 'graph' but found end of input"),
    ("graph @m() {\n  return\n}\ngraph", 4, 1, "expected end of input but found 'graph'"),
]


@pytest.mark.parametrize(("text", "line", "column", "message"), ERRORS)
def test_error_messages(text, line, column, message):
    with pytest.raises(ParseError) as info:
        parse_graph(text, source="m.cimir")
    e = info.value
    assert message in str(e), str(e)
    assert str(e).startswith(f"m.cimir:{line}:{column}: "), str(e)
    assert (e.source, e.line, e.column) == ("m.cimir", line, column)


def test_resource_errors():
    text = 'graph @m() {\n  %c: f32[2] = const resource "c"\n  return\n}'
    with pytest.raises(ParseError, match=r"<text>:2:31: .*resource 'c' is missing \(not among"):
        parse_graph(text, resources={"d": np.zeros(2, np.float32)})
    with pytest.raises(ParseError, match=r"2:31: constant %c: resource 'c' is float64\[2\], the type needs "
                                         r"float32\[2\]"):
        parse_graph(text, resources={"c": np.zeros(2)})
    with pytest.raises(ParseError, match=r"resource 'c' is float32\[3\]"):
        parse_graph(text, resources={"c": np.zeros(3, np.float32)})


def test_unknown_ops_parse_and_the_verifier_reports_them():
    g = parse_graph('graph @m(%x: f32[2]) {\n  %y: f32[2] = NoSuchOp(%x) loc("n")\n  return %y\n}')
    with pytest.raises(VerifyError, match="NoSuchOp"):
        verify(g)


def test_print_errors():
    g = Graph()
    g.add_constant(np.zeros(2), "c", tt(F32, 2))
    with pytest.raises(VerifyError, match=r"constant %c: the array is float64 but the type says f32"):
        print_graph(g)
    g = Graph()
    x = g.add_input("x", tt(F32, 2))
    g.add_node("R", [x], {"a": None}, outputs=[tt(F32, 2)], name="r")
    with pytest.raises(VerifyError, match=r"node 'r' \(R\) attribute 'a': a NoneType value cannot be printed"):
        print_graph(g)
    g = Graph()
    g.add_constant(np.array([b"x"], object), "s", tt("str", 1))
    with pytest.raises(VerifyError, match="str tensors hold Python str, found bytes"):
        print_graph(g)
    g = Graph()
    g.metadata["opset"] = 17
    with pytest.raises(VerifyError, match="metadata 'opset': 17 is not a pair of strings"):
        print_graph(g)


def _sample_graph() -> Graph:
    g = Graph()
    x = g.add_input("x", tt(F32, "N", 600))
    w = g.add_constant(np.linspace(0, 1, 600, dtype=np.float32), "file")  # "file" would break np.savez
    b = g.add_constant(np.ones(600, DType.bf16.numpy), "bf")
    s = g.add_constant(np.array([1.5], np.float32), "small")
    y = g.add_node("Add", [x, w], name="add").output
    g.add_node("Foo", [y, b, s], outputs=[tt(F32, "N", 600)], output_names=["z"], name="foo")
    g.outputs = [y]
    return g


def test_save_and_load(tmp_path):
    g = _sample_graph()
    path = tmp_path / "m.cimir"
    save_graph(g, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.cimir", "m.npz"]
    assert sidecar_path(path) == tmp_path / "m.npz"
    text = path.read_text()
    assert 'const resource "file"' in text and 'const resource "bf"' in text and "const [1.5]" in text
    with np.load(tmp_path / "m.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["bf", "file"]
    g2 = load_graph(path, verify=False)  # the sample uses an op no one defines
    assert graph_difference(g, g2) is None and not g2.constants["file"].const.flags.writeable
    assert g2.constants["bf"].const.dtype == DType.bf16.numpy
    # no sidecar when every constant is small; the write replaces the file in place
    g3 = Graph()
    g3.add_constant(np.zeros(2, np.float32), "c")
    save_graph(g3, tmp_path / "small.cimir")
    assert not (tmp_path / "small.npz").exists()
    assert graphs_equal(load_graph(tmp_path / "small.cimir"), g3)
    save_graph(g3, tmp_path / "small.cimir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.cimir", "m.npz", "small.cimir"]


def test_save_and_load_weird_constant_names(tmp_path):
    g = Graph()
    for i, name in enumerate(["a\x00b", "\ud800x", "é/../x", "~x", "allow_pickle", "a\\b", "x.npy", "/abs"]):
        g.add_constant(np.full(20, i, np.int16), name)
    save_graph(g, tmp_path / "w.cimir")
    g2 = load_graph(tmp_path / "w.cimir")
    assert graph_difference(g, g2) is None
    with np.load(tmp_path / "w.npz", allow_pickle=False) as npz:
        assert "allow_pickle" in npz.files and "~7e78" in npz.files  # "~x" is escaped


def test_load_reports_the_file(tmp_path):
    path = tmp_path / "bad.cimir"
    path.write_text("graph @m() {\n  return %q\n}\n")
    with pytest.raises(ParseError, match=rf"^{path}:2:10: %q is not defined"):
        load_graph(path)
    path.write_text('graph @m() {\n  %c: f32[40] = const resource "c"\n  return\n}\n')
    with pytest.raises(ParseError, match="resource 'c' is missing"):
        load_graph(path)


def test_graph_difference():
    def make(**change) -> Graph:
        g = Graph()
        x = g.add_input("x", change.get("xtype", tt(F32, "N", 2)))
        c = g.add_constant(change.get("const", np.array([1.0, 2.0], np.float32)), "c")
        n = g.add_node("Add", [x, c], change.get("attrs", {"f": 1.0, "l": (1, 2)}),
                       outputs=[tt(F32, "N", 2)], name="add")
        g.outputs = [n.output]
        g.metadata.update(change.get("meta", {}))
        return g

    base = make()
    assert graph_difference(base, make()) is None and graphs_equal(base, make())
    assert graph_difference(base, base.copy()) is None
    cases = {
        "inputs %x: type f32[N,2] vs f32[M,2]": make(xtype=tt(F32, "M", 2)),
        "constant %c: element 1 differs": make(const=np.array([1.0, 3.0], np.float32)),
        "constants %c: type f32[2] vs f64[2]": make(const=np.array([1.0, 2.0])),
        "attribute 'f': 1.0 (float) vs 1 (int)": make(attrs={"f": 1, "l": (1, 2)}),
        "attribute 'f': 1.0 vs -0.0": make(attrs={"f": -0.0, "l": (1, 2)}),
        "attribute 'l': element 1: 2 vs 3": make(attrs={"f": 1.0, "l": (1, 3)}),
        "attributes ['f', 'l'] vs ['f']": make(attrs={"f": 1.0}),
        "metadata": make(meta={"a": "b"}),
    }
    for want, other in cases.items():
        d = graph_difference(base, other)
        assert d is not None and want in d, (want, d)
    nan_a, nan_b = make(attrs={"f": math.nan, "l": [1, 2]}), make(attrs={"f": float("nan"), "l": (1, 2)})
    assert graph_difference(nan_a, nan_b) is None  # NaN equals NaN, lists equal tuples
    other = make()
    other.outputs = [other.inputs[0]]
    assert graph_difference(base, other) == "outputs: ['add'] vs ['x']"
    other = make()
    other.nodes[0].op = "Sub"
    assert graph_difference(base, other) == "node 0: 'add' (Add) vs 'add' (Sub)"
    t1, t2 = make(attrs={"t": np.zeros(2, np.float32)}), make(attrs={"t": np.zeros(3, np.float32)})
    assert graph_difference(t1, t2) == "node 0 'add' (Add): attribute 't': shape [2] vs [3]"


def test_resnet_sized_graph_round_trips():
    rng = np.random.default_rng(0)
    g = Graph("big")
    t = tt(F32, "N", 64, 56, 56)
    cur = g.add_input("input", t)
    for i in range(170):
        w = g.add_constant(rng.standard_normal((64, 64, 3, 3)).astype(np.float32), f"layer{i}.weight")
        b = g.add_constant(rng.standard_normal(64).astype(np.float32), f"layer{i}.bias")
        conv = g.add_node("Conv", [cur, w, b], {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1),
                                                "strides": (1, 1), "group": 1}, outputs=[t],
                          name=f"/layer{i}/Conv")
        relu = g.add_node("Relu", [conv.output], name=f"/layer{i}/Relu")
        cur = g.add_node("Add", [relu.output, cur], name=f"/layer{i}/Add").output
    g.outputs = [cur]
    res: dict[str, np.ndarray] = {}
    text = print_graph(g, resources=res)
    g2 = parse_graph(text, resources=res)
    assert graph_difference(g, g2) is None
