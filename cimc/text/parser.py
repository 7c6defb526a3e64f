"""The ``.cimir`` parser: text (see :mod:`cimc.text.printer` for the format) back into a Graph.

One lark LALR parser with a contextual lexer, built on first use from ``cimir.lark`` and cached,
turns the text into a tree; a single walk then builds the graph in source order with the types
as written (no type rule runs, so ops need not be defined). Lark's errors and semantic errors
(an undefined or twice-defined value, a bad element type, a constant literal that does not fit
its type, a missing resource) become ``ParseError`` with the line and column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import lark
import numpy as np
from lark import Token, Tree

from cimc.cim.tilemap import TileMap
from cimc.errors import CimcError, ParseError
from cimc.ir.core import Graph, Value
from cimc.ir.types import Dim, DType, QuantParams, Shape, TensorType
from cimc.limits import check_size
from cimc.text.printer import format_shape

__all__ = ["parse_graph"]

_DTYPES = {d.value: d for d in DType}
_BOOLS = {"true": True, "false": False}
_MAX_FIELD_LIST = 1 << 20
"""Most entries a tile map field's list may expand to (its ranges included): rows or columns of one tile."""
_TERMINALS = {
    "VALUE": "a value (%name)", "GRAPH": "a graph name (@name)", "OPNAME": "an op name",
    "IDENT": "a name", "STRING": "a string", "INT": "an integer", "FLOAT": "a float",
    "HEX": "a hex string", "CONSTLIST": "a list literal", "$END": "end of input",
}


@cache
def _parser() -> lark.Lark:
    grammar = (Path(__file__).parent / "cimir.lark").read_text(encoding="utf-8")
    return lark.Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True,
                     maybe_placeholders=True)


def _describe(term: str) -> str:
    if term in _TERMINALS:
        return _TERMINALS[term]
    try:
        pattern = _parser().get_terminal(term).pattern
    except KeyError:
        return term
    return f"'{pattern.value}'" if pattern.type == "str" else term


def _expected(terms: set[str] | frozenset[str]) -> str:
    names = sorted({_describe(t) for t in terms})
    if len(names) > 8:
        names = [*names[:8], "..."]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _found(tok: Token) -> str:
    if tok.type == "$END":
        return "end of input"
    s = str(tok)
    return repr(s if len(s) <= 30 else s[:27] + "...")


def _lark_error(e: lark.exceptions.UnexpectedInput, text: str, source: str) -> ParseError:
    # The lexer's and parser's own sets merge LALR states; simulating each terminal is exact.
    ip = getattr(e, "interactive_parser", None)
    expected = ip.accepts() if ip is not None else (getattr(e, "expected", None)
                                                    or getattr(e, "allowed", None) or set())
    if isinstance(e, lark.exceptions.UnexpectedToken):
        msg = f"expected {_expected(expected)} but found {_found(e.token)}"
    elif isinstance(e, lark.exceptions.UnexpectedCharacters):
        msg = f"unexpected character {e.char!r}"
        msg += f"; expected {_expected(expected)}" if expected else ""
    else:
        msg = f"unexpected end of input; expected {_expected(expected or {'$END'})}"
    line, column = e.line, e.column
    if (isinstance(e, lark.exceptions.UnexpectedToken) and e.token.type == "$END") or line < 1:
        line, column = text.count("\n") + 1, len(text) - text.rfind("\n")  # the end of the text
    return ParseError(msg, source=source, line=line, column=column)


_Child = Token | Tree[Token] | None  # a child of a parse-tree node (None: an absent optional part)


def _token(child: _Child) -> Token:
    """A child that ``cimir.lark`` makes a token."""
    if not isinstance(child, Token):
        raise TypeError(f"the cimir grammar has a token here, not {child!r}")
    return child


def _tree(child: _Child) -> Tree[Token]:
    """A child that ``cimir.lark`` makes a subtree."""
    if not isinstance(child, Tree):
        raise TypeError(f"the cimir grammar has a subtree here, not {child!r}")
    return child


def _optional_tree(child: _Child) -> Tree[Token] | None:
    """A child that ``cimir.lark`` makes an optional subtree."""
    return None if child is None else _tree(child)


def _str(tok: Token, source: str) -> str:
    try:
        return json.loads(tok)
    except ValueError as e:
        raise ParseError(f"bad string {_found(tok)}: {e.args[0]}", source=source, line=tok.line,
                         column=tok.column) from None


def _format_t(t: TensorType, shape: Any) -> str:
    return t.dtype.value + format_shape(shape)


def _num(tok: Token) -> float | int:
    return float(tok) if tok.type == "FLOAT" else int(tok)


class _Builder:
    """One walk over the parse tree, building the graph statement by statement."""

    def __init__(self, source: str, resources: Mapping[str, np.ndarray] | None,
                 locations: dict[str, tuple[int | None, int | None]] | None = None) -> None:
        self.source = source
        self.resources = resources
        self.locations = {} if locations is None else locations
        self.values: dict[str, tuple[Value, int | None, int | None]] = {}
        self.node_names: set[str] = set()
        self.graph = Graph()

    def error(self, msg: str, at: Token | Tree[Token]) -> ParseError:
        if isinstance(at, Tree):
            line, col = (at.meta.line, at.meta.column) if not at.meta.empty else (None, None)
        else:
            line, col = at.line, at.column
        return ParseError(msg, source=self.source, line=line, column=col)

    # ---- names ------------------------------------------------------------------------------
    def name(self, tok: Token) -> str:
        s = tok[1:]
        return _str(Token(tok.type, s, line=tok.line, column=None if tok.column is None else tok.column + 1),
                    self.source) \
            if s.startswith('"') else s

    def fresh(self, tok: Token) -> str:
        """The name ``tok`` defines, which must not be defined yet."""
        name = self.name(tok)
        if name in self.values:
            _, line, col = self.values[name]
            raise self.error(f"value %{name} is defined twice (first at line {line}, "
                             f"column {col})", tok)
        return name

    def define(self, tok: Token, value: Value, name: str) -> None:
        if value.name != name:  # the Graph renames only names it cannot take, such as ""
            raise self.error(f"value name {name!r} cannot be used (the graph made it "
                             f"{value.name!r})", tok)
        self.values[name] = (value, tok.line, tok.column)

    def use(self, tok: Token) -> Value:
        name = self.name(tok)
        if name not in self.values:
            raise self.error(f"%{name} is not defined (values must be defined before they are "
                             "used)", tok)
        return self.values[name][0]

    # ---- types ------------------------------------------------------------------------------
    def type(self, t: Tree[Token]) -> TensorType:
        dtok, shape, quant = t.children
        dtype = _DTYPES.get(str(dtok))
        if dtype is None:
            raise self.error(f"unknown element type {str(dtok)!r}; expected one of "
                             f"{', '.join(_DTYPES)}", _token(dtok))
        return TensorType(dtype, self.shape(_tree(shape)), None if quant is None else self.quant(_tree(quant)))

    def shape(self, t: Tree[Token]) -> Shape | None:
        if t.data == "unranked":
            return None
        dims: list[Dim] = []
        for child in t.children:
            if child is None:
                continue
            d = _tree(child)
            if d.data == "unknown":
                dims.append(None)
                continue
            tok = _token(d.children[0])
            if tok.type == "INT" and int(tok) < 0:
                raise self.error(f"dim {tok} is negative; dims are sizes (0 or more), symbolic names or ?", tok)
            dims.append(int(tok) if tok.type == "INT" else _str(tok, self.source)
                        if tok.type == "STRING" else str(tok))
        return tuple(dims)

    def quant(self, t: Tree[Token]) -> QuantParams:
        scale, zp, bits, axis = t.children
        zps = []
        for tok in self.numbers(_tree(zp)):
            if tok.type != "INT":
                raise self.error(f"zero points are integers, found {_found(tok)}", tok)
            zps.append(int(tok))
        return QuantParams(tuple(float(x) for x in self.numbers(_tree(scale))), tuple(zps), int(_token(bits)),
                           None if axis is None else int(_token(axis)))

    @staticmethod
    def numbers(t: Tree[Token]) -> list[Token]:
        return [_token(c) for c in t.children if c is not None]

    # ---- literals ---------------------------------------------------------------------------
    def literal(self, lit: Tree[Token], t: TensorType, shape: tuple[int, ...], what: str) -> np.ndarray:
        tok = _token(lit.children[0])
        dt = t.dtype.numpy
        try:
            check_size(what, shape, dt.itemsize)
        except CimcError as e:
            raise self.error(str(e), tok) from None
        numel = math.prod(shape)
        if lit.data == "resource":
            key = _str(tok, self.source)
            if self.resources is None or key not in self.resources:
                why = "no resources given" if self.resources is None else "not among the resources"
                raise self.error(f"{what}: resource {key!r} is missing ({why}); load the file "
                                 "with load_graph or pass resources=", tok)
            arr = np.asarray(self.resources[key])
            if t.dtype is DType.bf16 and arr.dtype == np.uint16:
                arr = arr.view(dt)
            if arr.dtype != dt or arr.shape != shape:
                raise self.error(f"{what}: resource {key!r} is {arr.dtype}{list(arr.shape)}, "
                                 f"the type needs {dt}{list(shape)}", tok)
            return arr
        if lit.data == "hex":
            if t.dtype is DType.str:
                raise self.error(f"{what}: str tensors cannot be hex; write a list of strings", tok)
            data = bytes.fromhex(tok[1:-1]) if len(tok) % 2 == 0 else None  # quotes included
            need = numel * dt.itemsize
            if data is None or len(data) != need:
                got = (len(tok) - 2) / 2
                raise self.error(f"{what}: hex data has {got:g} bytes, {_format_t(t, shape)} "
                                 f"needs {need}", tok)
            return np.frombuffer(data, dt.newbyteorder("<")).astype(dt, copy=False).reshape(shape)
        return self.inline(tok, t.dtype, shape, what)

    def inline(self, tok: Token, dtype: DType, shape: tuple[int, ...], what: str) -> np.ndarray:
        if dtype is DType.str:
            try:
                items = json.loads(tok)
            except ValueError as e:
                raise self.error(f"{what}: bad str list literal ({e.args[0]})", tok) from None
            bad = next((x for x in items if not isinstance(x, str)), None)
            if bad is not None:
                raise self.error(f"{what}: str tensors hold strings, found {bad!r}", tok)
            arr = np.empty(len(items), dtype=object)
            arr[:] = items
        else:
            pieces = tok[1:-1].split(",")
            if len(pieces) == 1 and not pieces[0].strip():
                pieces = []
            conv = _BOOLS.__getitem__ if dtype is DType.bool else float if dtype.is_float else int
            vals, wide = [], np.float64 if dtype.is_float else dtype.numpy
            for i, p in enumerate(pieces):
                try:
                    vals.append(conv(p.strip()))
                    if dtype.is_int and not np.iinfo(wide).min <= vals[-1] <= np.iinfo(wide).max:
                        raise OverflowError  # (numpy 1.x would wrap it silently)
                except (ValueError, KeyError, OverflowError):
                    kind = "true or false" if dtype is DType.bool else f"a {dtype.value} number"
                    raise self.element_error(tok, pieces, i, f"{what}: element {i} is "
                                             f"{p.strip()!r}, not {kind}") from None
            arr = np.array(vals, wide)
            if dtype.is_float:
                with np.errstate(over="ignore"):
                    arr = arr.astype(dtype.numpy)
                over = np.flatnonzero(np.isinf(arr) & np.isfinite(vals))
                if over.size:
                    i = int(over[0])
                    raise self.element_error(tok, pieces, i, f"{what}: element {i} "
                                             f"({pieces[i].strip()}) overflows {dtype.value}")
        if arr.size != math.prod(shape):
            raise self.error(f"{what}: the literal has {arr.size} elements, {dtype.value}"
                             f"{format_shape(shape)} needs {math.prod(shape)}", tok)
        return arr.reshape(shape)

    def element_error(self, tok: Token, pieces: list[str], i: int, msg: str) -> ParseError:
        """An error at element ``i`` of a list literal token split into ``pieces`` at commas."""
        offset = 1 + sum(len(p) + 1 for p in pieces[:i])
        offset += len(pieces[i]) - len(pieces[i].lstrip())
        before = tok[:offset]
        line = None if tok.line is None else tok.line + before.count("\n")
        col = offset - before.rfind("\n") if "\n" in before else None if tok.column is None else tok.column + offset
        return ParseError(msg, source=self.source, line=line, column=col)

    # ---- attributes -------------------------------------------------------------------------
    def attr(self, child: _Child, what: str) -> Any:
        if isinstance(child, Token):
            return _str(child, self.source) if child.type == "STRING" else _num(child)
        v = _tree(child)
        if v.data == "list":
            return tuple(self.attr(x, what) for x in v.children if x is not None)
        if v.data == "tilemap":
            return self.tilemap(v, what)
        ttree, lit = _tree(v.children[0]), _tree(v.children[1])
        t = self.type(ttree)
        shape = t.static_shape
        if shape is None:
            raise self.error(f"{what}: a tensor attribute needs a static shape, found "
                             f"{_format_t(t, t.shape)}", ttree)
        if lit.data == "resource":
            raise self.error(f"{what}: tensor attributes cannot be resources", lit)
        arr = self.literal(lit, t, shape, what)
        arr.flags.writeable = False
        return arr

    def fields(self, items: list[Any], what: str, required: tuple[str, ...],
               optional: tuple[str, ...], at: Tree) -> dict[str, Any]:
        """``key=value`` fields of a tile map or tile: an int, a span ``(a, b)`` or a list of ints."""
        out: dict[str, Any] = {}
        for f in items:
            if f is None:
                continue
            key_tok, val = f.children
            key = str(key_tok)
            if key not in required and key not in optional:
                raise self.error(f"{what}: unknown field {key!r} (fields: {', '.join(required + optional)})", key_tok)
            if key in out:
                raise self.error(f"{what}: field {key!r} is given twice", key_tok)
            if isinstance(val, Token):
                out[key] = self.field_int(val, what)
            elif val.data == "span":
                out[key] = (self.field_int(val.children[0], what), self.field_int(val.children[1], what))
            else:
                vals: list[int] = []
                for r in val.children:
                    if r is None:
                        continue
                    if isinstance(r, Token):
                        vals.append(self.field_int(r, what))
                        continue
                    a, b = (self.field_int(c, what) for c in r.children)
                    if b - a > _MAX_FIELD_LIST - len(vals):
                        raise self.error(f"{what}: field {key} lists more than {_MAX_FIELD_LIST} entries", r)
                    vals += range(a, b)
                out[key] = vals
        missing = [k for k in required if k not in out]
        if missing:
            raise self.error(f"{what}: missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}", at)
        return out

    def field_int(self, tok: Token, what: str) -> int:
        """The integer ``tok`` of a tile map field; an error if it does not fit 64 bits."""
        v = int(tok)
        if not -(1 << 63) <= v < 1 << 63:
            raise self.error(f"{what}: {tok} does not fit 64 bits", tok)
        return v

    def tilemap(self, t: Tree, what: str) -> TileMap:
        """A ``tiles<...> [...]`` attribute value."""
        layer_tok, *rest = t.children
        head = [c for c in rest if isinstance(c, Tree) and c.data == "field"]
        h = self.fields(head, f"{what}: tile map", ("matrix", "slices", "arrays", "shape"), ("spares",), t)
        kinds = {"matrix": (list, 3), "slices": (int, 0), "arrays": (int, 0), "shape": (list, 2), "spares": (list, 2)}
        for key, (kind, n) in kinds.items():
            if key in h and (not isinstance(h[key], kind) or (kind is list and len(h[key]) != n)):
                raise self.error(f"{what}: tile map field {key} should be "
                                 + ("an integer" if kind is int else f"a list of {n} integers"), t)
        table: list[list[int]] = []
        row_at: list[list[int] | None] = []
        col_at: list[list[int] | None] = []
        flip: list[list[int] | None] = []
        for tile in (c for c in rest if isinstance(c, Tree) and c.data == "tile"):
            where = f"{what}: tile {len(table)}"
            f = self.fields(tile.children, where, ("group", "rows", "channels", "slices", "array"),
                            ("replica", "row_at", "col_at", "flip"), tile)
            for key in ("rows", "channels", "slices"):
                if not isinstance(f[key], tuple):
                    raise self.error(f"{where}: field {key} should be a range a:b", tile)
            for key in ("group", "array", "replica"):
                if key in f and not isinstance(f[key], int):
                    raise self.error(f"{where}: field {key} should be an integer", tile)
            for key in ("row_at", "col_at", "flip"):
                if key in f and not isinstance(f[key], list):
                    raise self.error(f"{where}: field {key} should be a list of rows or columns [a, b:c, ...]", tile)
            table.append([f["group"], *f["rows"], *f["channels"], *f["slices"], f["array"], f.get("replica", 0)])
            row_at.append(f.get("row_at"))
            col_at.append(f.get("col_at"))
            flip.append(f.get("flip"))
        return TileMap(_str(_token(layer_tok), self.source), h["matrix"], h["slices"], h["arrays"], h["shape"],
                       np.asarray(table, np.int64).reshape(-1, 9), row_at, col_at, h.get("spares", (0, 0)), flip)

    # ---- statements -------------------------------------------------------------------------
    def results(self, t: Tree[Token]) -> list[tuple[Token, TensorType]]:
        return [(_token(r.children[0]), self.type(_tree(r.children[1]))) for r in map(_tree, t.children)]

    def const(self, st: Tree[Token]) -> None:
        results, shape_clause, lit = _tree(st.children[0]), st.children[1], _tree(st.children[2])
        res = self.results(results)
        if len(res) != 1:
            raise self.error(f"a constant defines one value, not {len(res)}", results)
        tok, t = res[0]
        name = self.fresh(tok)
        what = f"constant %{name}"
        shape = t.shape if shape_clause is None else self.shape(_tree(_tree(shape_clause).children[0]))
        static = t.with_shape(shape).static_shape
        if static is None:
            raise self.error(f"{what}: the type {_format_t(t, t.shape)} does not give the array's "
                             "shape; add 'shape [..]' after 'const'", tok)
        arr = self.literal(lit, t, static, what)
        self.define(tok, self.graph.add_constant(arr, name, t), name)

    def node(self, st: Tree[Token], explicit: set[str]) -> None:
        results, call = (_tree(st.children[0]), _tree(st.children[1])) if len(st.children) == 2 \
            else (None, _tree(st.children[0]))
        op_tree, *rest = map(_optional_tree, call.children)
        *operands, attrs, loc = rest
        op_tok = _token(_tree(op_tree).children[0])
        op = _str(op_tok, self.source) if op_tok.type == "STRING" else str(op_tok)
        ins = [None if o.data == "absent" else self.use(_token(o.children[0]))
               for o in operands if o is not None]
        if loc is None:
            base = op.replace(".", "_").lower()
            name, i = base, 0
            while name in self.node_names or name in explicit:
                i += 1
                name = f"{base}_{i}"
        else:
            name = _str(_token(loc.children[0]), self.source)
            if name in self.node_names:
                raise self.error(f"node name {name!r} is used twice", loc)
        self.node_names.add(name)
        self.locations[name] = (op_tok.line, op_tok.column)
        what = f"node {name!r} ({op})"
        attr_map: dict[str, Any] = {}
        for a in ([] if attrs is None else attrs.children):
            if a is None:
                continue
            ktok = _token(_tree(_tree(a).children[0]).children[0])
            key = _str(ktok, self.source) if ktok.type == "STRING" else str(ktok)
            if key in attr_map:
                raise self.error(f"{what}: attribute {key!r} is given twice", ktok)
            attr_map[key] = self.attr(_tree(a).children[1], f"{what} attribute {key!r}")
        res = [] if results is None else self.results(results)
        names = [self.fresh(tok) for tok, _ in res]
        if len(set(names)) != len(names):
            dup = next(i for i, n in enumerate(names) if n in names[:i])
            raise self.error(f"value %{names[dup]} is defined twice", res[dup][0])
        node = self.graph.add_node(op, ins, attr_map, outputs=[t for _, t in res],
                                   output_names=names, name=name)
        if node.name != name:
            raise self.error(f"node name {name!r} cannot be used (the graph made it "
                             f"{node.name!r})", call)
        for (tok, _), n, v in zip(res, names, node.outputs, strict=True):
            self.define(tok, v, n)

    def build(self, tree: Tree[Token]) -> Graph:
        kids = tree.children
        g = self.graph
        g.name = self.name(_token(kids[0]))
        params = [k for k in kids if isinstance(k, Tree) and k.data == "param"]
        for p in params:
            tok = _token(p.children[0])
            name = self.fresh(tok)
            self.define(tok, g.add_input(name, self.type(_tree(p.children[1]))), name)
        stmts = [k for k in kids if isinstance(k, Tree) and k.data != "param"]
        locs = [_optional_tree(_tree(s.children[-1]).children[-1]) for s in stmts if s.data == "node"]
        explicit = {_str(_token(loc.children[0]), self.source) for loc in locs if loc is not None}
        for st in stmts:
            if st.data == "meta":
                key, val = (_str(_token(t), self.source) for t in st.children)
                if key in g.metadata:
                    raise self.error(f"metadata key {key!r} is given twice", st)
                g.metadata[key] = val
            elif st.data == "const":
                self.const(st)
            else:
                self.node(st, explicit)
        g.outputs = [self.use(k) for k in kids[1:] if isinstance(k, Token)]
        return g


def parse_graph(text: str, *, resources: Mapping[str, np.ndarray] | None = None,
                source: str = "<text>", locations: dict[str, tuple[int | None, int | None]] | None = None) -> Graph:
    """Parse ``.cimir`` text into a Graph; ``resources`` supplies arrays for ``const resource "k"``;
    ``locations``, if given, receives the line and column of each node's op by node name.

    Raises ``ParseError`` (with ``source``, line and column) on malformed text.
    """
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedInput as e:
        raise _lark_error(e, text, source) from None
    except RecursionError:
        raise ParseError("the text nests too deeply to parse", source=source) from None
    try:
        return _Builder(source, resources, locations).build(tree)
    except RecursionError:
        raise ParseError("the text nests too deeply to parse", source=source) from None
