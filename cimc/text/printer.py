"""The ``.cimir`` printer: a graph as text that :func:`cimc.text.parse_graph` reads back equal.

The format (grammar: ``cimir.lark`` beside this module)::

    # a comment to end of line
    graph @main(%x: f32[N,1,8,8], %"gpu_0/data_0": f32[1,3,224,224]) {
      meta "producer_name" = "pytorch"
      %w: f32[2,2] = const [1.0, 2.0, 3.0, 4.0]
      %big: f32[512,512] = const resource "big"
      %raw: f32[64] = const hex "0000803f..."
      %y: f32[N,16,6,6] = Conv(%x, %w, none) {kernel_shape = [3, 3], pads = [1, 1, 1, 1]} loc("c1")
      %a: f32[2], %b: f32[2] = Split(%x) {axis = 0, num_outputs = 2} loc("split_0")
      %q: i8[N,16]<q scale=[0.5, 0.25] zero_point=[0, 0] bits=8 axis=1> = QLinear(%y) loc("q")
      sram.write(%q) loc("w0")
      return %y, %a
    }

- Order: header with the inputs, ``meta`` lines, constants (in ``graph.constants`` order), nodes
  in order (a node without results has no ``... =``), ``return`` with the outputs.
- Names: a value is ``%name`` if the name matches ``[A-Za-z0-9_][A-Za-z0-9_.]*``, else ``%"json"``;
  the graph name likewise after ``@``; node names always ``loc("json")``; op names are dotted
  identifiers (``sram.mvm``), JSON-quoted if not (or if they are ``const``/``meta``/``return``);
  attribute keys and symbolic dims are identifiers, else JSON strings; metadata is JSON strings.
- Types: ``f32[N,3,224,224]``; ``?`` an unknown dim, ``f32[*]`` an unknown rank, ``f32[]`` a scalar;
  an optional ``<q scale=[..] zero_point=[..] bits=8 axis=1>`` (``axis`` left out when ``None``).
- Attributes: ints ``-3``; floats ``repr(float(x))`` (always with ``.``/``e``, or ``inf``/``-inf``/
  ``nan``); strings as JSON; lists ``[1, 2]``, ``[]`` (read back as tuples); tensors
  ``tensor<f32[2]: [1.0, 2.0]>`` or ``tensor<f32[300]: hex "...">``; tile maps
  ``tiles<"layer" ...> [{...}, ...]``, one tile per line (:mod:`cimc.cim.tilemap` has the form).
- Constants are exact: a flat C-order list when they have at most ``inline_limit`` elements
  (floats as ``repr`` of their float64 value, ints as ints, ``true``/``false``, str as JSON) and
  the list reads back bit-exactly; otherwise ``resource "name"`` when a ``resources`` dict is
  given (the array is stored in it under the value's name), else ``hex "..."`` of the raw
  little-endian bytes. bf16 is always hex; i4/u4 print the int8/uint8 values they are stored in;
  str constants are always lists. ``const shape [2,3] ...`` gives the array's shape when the
  declared type does not (a symbolic or wrong shape). ``none`` is an absent optional operand.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from cimc.cim.tilemap import TileMap, runs
from cimc.errors import VerifyError
from cimc.ir.core import Graph, Node, Value
from cimc.ir.types import DType, QuantParams, Shape, TensorType

__all__ = ["format_attr", "print_graph"]

_BARE_VALUE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_SURROGATE = re.compile("[\ud800-\udfff]")
_KEYWORD_OPS = {"const", "meta", "return"}


def quote(s: str) -> str:
    """``s`` as a JSON string (non-ASCII kept readable, lone surrogates escaped)."""
    q = json.dumps(s, ensure_ascii=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", q) if _SURROGATE.search(q) else q


def _name(s: str, sigil: str) -> str:
    return sigil + (s if _BARE_VALUE.fullmatch(s) else quote(s))


def _ident(s: str) -> str:
    return s if _IDENT.fullmatch(s) else quote(s)


def _float(x: Any) -> str:
    return repr(float(x))


def format_shape(shape: Shape | None) -> str:
    """``[N,3,?]``; ``[*]`` for an unknown rank; symbolic dims that are not identifiers quoted."""
    if shape is None:
        return "[*]"
    return "[" + ",".join("?" if d is None else _ident(d) if isinstance(d, str) else str(int(d))
                          for d in shape) + "]"


def format_type(t: TensorType) -> str:
    """A type as it prints in ``.cimir``, quantization suffix included."""
    s = t.dtype.value + format_shape(t.shape)
    q = t.quant
    if q is not None:
        s += _format_quant(q)
    return s


def _format_quant(q: QuantParams) -> str:
    scale = ", ".join(_float(x) for x in q.scale)
    zp = ", ".join(str(int(x)) for x in q.zero_point)
    axis = "" if q.axis is None else f" axis={int(q.axis)}"
    return f"<q scale=[{scale}] zero_point=[{zp}] bits={int(q.bits)}{axis}>"


def _inline(arr: np.ndarray, dtype: DType, what: str) -> str | None:
    """The flat list literal of ``arr`` if it reads back bit-exactly, else ``None``."""
    flat = arr.reshape(-1)
    if dtype is DType.str:
        bad = next((x for x in flat if not isinstance(x, str)), None)
        if bad is not None:
            raise VerifyError(f"{what}: str tensors hold Python str, found "
                              f"{type(bad).__name__} {bad!r}")
        return "[" + ", ".join(quote(x) for x in flat) + "]"
    if dtype is DType.bf16:
        return None
    if dtype is DType.bool:
        return "[" + ", ".join("true" if x else "false" for x in flat.tolist()) + "]"
    if arr.dtype.kind == "f":
        wide = flat.astype(np.float64)
        if np.isnan(wide).any():  # the text says "nan": a NaN sign or payload would be lost
            if np.where(np.isnan(wide), np.nan, wide).astype(arr.dtype).tobytes() != flat.tobytes():
                return None
        vals = wide.tolist()
        return "[" + ", ".join(map(repr, vals)) + "]"
    return "[" + ", ".join(map(str, flat.tolist())) + "]"


def _hex(arr: np.ndarray) -> str:
    little = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
    return f'hex "{little.tobytes().hex()}"'


def _check_dtype(arr: np.ndarray, dtype: DType, what: str) -> None:
    ok = arr.dtype.kind in "UO" if dtype is DType.str else arr.dtype == dtype.numpy
    if not ok:
        raise VerifyError(f"{what}: the array is {arr.dtype} but the type says {dtype.value} "
                          f"(stored as {dtype.numpy}); cast the array or fix the type")


def _ints(values) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


def _runs(p: np.ndarray) -> str:
    return "[" + ", ".join(str(a) if b == a + 1 else f"{a}:{b}" for a, b in runs(p)) + "]"


def format_tilemap(m: TileMap) -> str:
    """A tile map as text (grammar in :mod:`cimc.cim.tilemap`), one tile per line."""
    head = (f"tiles<{quote(m.layer)} matrix={_ints(m.matrix)} slices={m.slices} arrays={m.arrays} "
            f"shape={_ints(m.shape)} spares={_ints(m.spares)}> [")
    tiles = []
    for row, row_at, col_at, flip in zip(m.table.tolist(), m.row_at, m.col_at, m.flip, strict=True):
        g, k0, k1, c0, c1, s0, s1, a, r = row
        t = f"{{group={g} rows={k0}:{k1} channels={c0}:{c1} slices={s0}:{s1} array={a} replica={r}"
        if row_at is not None:
            t += f" row_at={_runs(row_at)}"
        if col_at is not None:
            t += f" col_at={_runs(col_at)}"
        if flip is not None:
            t += f" flip={_runs(flip)}"
        tiles.append(t + "}")
    return head + ",".join(f"\n      {t}" for t in tiles) + "]"


class _Printer:
    def __init__(self, resources: dict[str, np.ndarray] | None, inline_limit: int) -> None:
        self.resources = resources
        self.inline_limit = inline_limit

    def literal(self, arr: np.ndarray, dtype: DType, what: str, name: str | None = None) -> str:
        if arr.size <= self.inline_limit or dtype is DType.str:
            text = _inline(arr, dtype, what)
            if text is not None:
                return text
        if name is not None and self.resources is not None:
            self.resources[name] = arr
            return "resource " + quote(name)
        return _hex(arr)

    def attr(self, v: Any, what: str) -> str:
        if isinstance(v, (bool, int, np.integer, np.bool_)):
            return str(int(v))
        if isinstance(v, (float, np.floating)):
            return _float(v)
        if isinstance(v, str):
            return quote(v)
        if isinstance(v, (tuple, list)):
            return "[" + ", ".join(self.attr(x, what) for x in v) + "]"
        if isinstance(v, TileMap):
            return format_tilemap(v)
        if isinstance(v, np.ndarray):
            try:
                dtype = DType.from_numpy(v.dtype)
            except KeyError:
                raise VerifyError(f"{what}: a tensor of element type {v.dtype} has no cimc "
                                  "type") from None
            t = TensorType(dtype, tuple(int(d) for d in v.shape))
            saved, self.resources = self.resources, None  # tensor attributes never go to the sidecar
            try:
                return f"tensor<{format_type(t)}: {self.literal(v, dtype, what)}>"
            finally:
                self.resources = saved
        raise VerifyError(f"{what}: a {type(v).__name__} value cannot be printed; attributes are int, "
                          "float, str, lists of them, or numpy arrays")

    def constant(self, v: Value) -> str:
        arr, t = v.array, v.type
        what = f"constant %{v.name}"
        _check_dtype(arr, t.dtype, what)
        shape = "" if t.shape == arr.shape else f"shape {format_shape(arr.shape)} "
        return f"  {_name(v.name, '%')}: {format_type(t)} = const {shape}{self.literal(arr, t.dtype, what, v.name)}"

    def node(self, n: Node) -> str:
        what = f"node {n.name!r} ({n.op})"
        op = n.op if _OPNAME.fullmatch(n.op) and n.op not in _KEYWORD_OPS else quote(n.op)
        args = ", ".join("none" if v is None else _name(v.name, "%") for v in n.inputs)
        s = "  "
        if n.outputs:
            s += ", ".join(f"{_name(v.name, '%')}: {format_type(v.type)}" for v in n.outputs) + " = "
        s += f"{op}({args})"
        if n.attrs:
            s += " {" + ", ".join(f"{_ident(k)} = {self.attr(a, f'{what} attribute {k!r}')}"
                                  for k, a in n.attrs.items()) + "}"
        return s + f" loc({quote(n.name)})"


def format_attr(value: Any) -> str:
    """An attribute value as ``.cimir`` text (``3``, ``"rows"``, ``[1, 2]``, ``tensor<i64[0,2]: []>``)."""
    return _Printer(None, 16).attr(value, "attribute")


def print_graph(graph: Graph, *, resources: dict[str, np.ndarray] | None = None,
                inline_limit: int = 16) -> str:
    """``graph`` as ``.cimir`` text.

    Constants with more than ``inline_limit`` elements go into ``resources`` (keyed by value
    name) when it is given, and print as hex otherwise.
    """
    p = _Printer(resources, inline_limit)
    params = ", ".join(f"{_name(v.name, '%')}: {format_type(v.type)}" for v in graph.inputs)
    lines = [f"graph {_name(graph.name, '@')}({params}) {{"]
    for k, v in graph.metadata.items():
        if not (isinstance(k, str) and isinstance(v, str)):
            raise VerifyError(f"metadata {k!r}: {v!r} is not a pair of strings; store str(value)")
        lines.append(f"  meta {quote(k)} = {quote(v)}")
    lines += [p.constant(v) for v in graph.constants.values()]
    lines += [p.node(n) for n in graph.nodes]
    outs = ", ".join(_name(v.name, "%") for v in graph.outputs)
    lines.append(f"  return {outs}".rstrip())
    lines.append("}")
    return "\n".join(lines) + "\n"
