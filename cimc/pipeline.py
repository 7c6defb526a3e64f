"""Pipeline text: ``fold-constants,quantize{weight-bits=4 calibration=minmax},sparsify{ratio=0.5}``.

A pipeline is pass names separated by commas; each may carry ``{key=value ...}`` options,
separated by spaces. Values are bare words (``8``, ``0.5``, ``minmax``, ``true``, ``none``),
JSON-quoted strings or lists ``[a,b]``; each is converted by the type of the pass's dataclass
field (option ``weight-bits`` is field ``weight_bits``; ``weight_bits=`` is accepted too).
One LALR parser is built on first use and cached; every error is a :class:`PipelineError`
with the column it points at and, for unknown names, a did-you-mean. ``str(pipeline)``
spells every option out, canonically, so that ``Pipeline.parse(str(p)) == p``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union

from cimc.errors import CimcError, ParseError, quote
from cimc.passmanager import Pass

__all__ = ["OptionSpec", "Pipeline", "PipelineError", "format_pass", "format_value", "options_of", "type_name"]

GRAMMAR = r"""
start: [pass_ ("," pass_)*]
pass_: NAME [options]
options: "{" option* "}"
option: NAME "=" value
?value: WORD | STRING | list
list: "[" [value ("," value)*] "]"
NAME: /[A-Za-z_][A-Za-z0-9_.\-]*/
WORD: /[^\s,{}\[\]="]+/
STRING: /"(?:[^"\\]|\\.)*"/
%ignore /\s+/
"""

_WORD = re.compile(r'[^\s,{}\[\]="]+')
_TOKENS = {"NAME": "a name", "WORD": "a value", "STRING": "a value", "COMMA": "','",
           "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'", "EQUAL": "'='",
           "$END": "the end"}


class PipelineError(ParseError):
    """Malformed pipeline text: a syntax error, an unknown pass or option, or a bad value."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message, source="<pipeline>", line=1, column=column)


@dataclass(frozen=True)
class OptionSpec:
    """One option of a pass: its pipeline spelling, field name, type, default and doc."""

    name: str
    field: str
    type: Any
    default: Any
    doc: str

    @property
    def required(self) -> bool:
        """Whether the option has no default and must be given."""
        return self.default is dataclasses.MISSING


_OPTIONS: dict[type[Pass], tuple[OptionSpec, ...]] = {}


def options_of(cls: type[Pass]) -> tuple[OptionSpec, ...]:
    """The options of a pass class, in field order, with their types resolved (computed once per class:
    a dict rather than ``functools.cache``, whose ``Hashable`` argument type rejects a class whose
    instances are unhashable)."""
    specs = _OPTIONS.get(cls)
    if specs is None:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            out.append(OptionSpec(f.name.replace("_", "-"), f.name, hints[f.name], default,
                                  f.metadata.get("doc", "")))
        specs = _OPTIONS[cls] = tuple(out)
    return specs


@dataclass(frozen=True)
class Pipeline:
    """An ordered sequence of configured passes."""

    passes: tuple[Pass, ...] = ()

    @staticmethod
    def parse(text: str) -> Pipeline:
        """Parse pipeline text; raises :class:`PipelineError` pointing at the offending column."""
        from lark.exceptions import UnexpectedInput

        try:
            tree = _parser().parse(text)
        except UnexpectedInput as e:
            raise PipelineError(*_syntax_message(e, text)) from None
        return Pipeline(tuple(_build_pass(p) for p in tree.children if p is not None))

    def __str__(self) -> str:
        return ",".join(format_pass(p) for p in self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    def __iter__(self) -> typing.Iterator[Pass]:
        return iter(self.passes)


@cache
def _parser() -> Any:
    from lark import Lark

    return Lark(GRAMMAR, parser="lalr", propagate_positions=True)


def _syntax_message(e: Any, text: str) -> tuple[str, int]:
    """A readable message and a 1-based column for a lark syntax error."""
    expected = getattr(e, "accepts", None) or getattr(e, "expected", None) or getattr(e, "allowed", None) or ()
    words = sorted({_TOKENS.get(t, repr(t)) for t in expected})
    token = getattr(e, "token", None)
    if token is not None and token.type == "$END":
        found, column = "the end of the pipeline", len(text) + 1
    else:
        found, column = quote(str(token) if token is not None else text[e.pos_in_stream]), e.column
    want = ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else "".join(words)
    return f"syntax error: expected {want or 'something else'}, found {found}", column


def _build_pass(tree: Any) -> Pass:
    from cimc.passes import get_pass

    name_tok, opts = tree.children
    try:
        cls = get_pass(str(name_tok))
    except CimcError as e:
        raise PipelineError(str(e), name_tok.column) from None
    specs = {s.name: s for s in options_of(cls)}
    kwargs: dict[str, Any] = {}
    for opt in opts.children if opts is not None else ():
        key_tok, raw = opt.children
        key = str(key_tok).replace("_", "-")
        spec = specs.get(key)
        if spec is None:
            close = difflib.get_close_matches(key, list(specs), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            known = ", ".join(specs) or "none"
            raise PipelineError(f"pass '{cls.name}' has no option {quote(key)}{hint} "
                                f"(its options: {known})", key_tok.column)
        if spec.field in kwargs:
            raise PipelineError(f"option '{key}' of pass '{cls.name}' is given twice", key_tok.column)
        try:
            kwargs[spec.field] = _convert(raw, spec.type)
        except ValueError as e:
            raise PipelineError(f"option '{key}' of pass '{cls.name}' expects {_describe(spec.type)}, "
                                f"found {_show(raw)}{e.args[0] if e.args else ''}",
                                _column(raw)) from None
    missing = [s.name for s in specs.values() if s.required and s.field not in kwargs]
    if missing:
        raise PipelineError(f"pass '{cls.name}' needs option(s) {', '.join(missing)}", name_tok.column)
    try:
        return cls(**kwargs)
    except (CimcError, ValueError, TypeError) as e:  # a pass may validate its options itself
        raise PipelineError(f"pass '{cls.name}': {e}", name_tok.column) from None


def _column(raw: Any) -> int | None:
    if hasattr(raw, "column"):
        return raw.column
    return getattr(raw.meta, "column", None) if hasattr(raw, "meta") else None


def _show(raw: Any, top: bool = True) -> str:
    if hasattr(raw, "children"):
        return "[" + ",".join(_show(c, False) for c in raw.children if c is not None) + "]"
    return repr(str(raw)) if top and raw.type == "WORD" else str(raw)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _convert(raw: Any, tp: Any) -> Any:
    """Convert a parsed value (token or list tree) to type ``tp``; ``ValueError`` if it does not fit."""
    is_list = hasattr(raw, "children")
    quoted = not is_list and raw.type == "STRING"
    text: str = "" if is_list else (json.loads(str(raw)) if quoted else str(raw))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return tuple(_convert(c, Any) for c in raw.children if c is not None) if is_list else text
    if _is_union(tp):
        if type(None) in args and not quoted and text == "none":
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _convert(raw, arg)
                except ValueError:
                    pass
        raise ValueError()
    if origin in (tuple, list):
        if not is_list:
            raise ValueError()
        items = [c for c in raw.children if c is not None]
        if args and args[-1] is not Ellipsis and len(args) != len(items):
            raise ValueError(f" ({len(items)} items where {len(args)} were expected)")
        elems = [args[0] if args and args[-1] is Ellipsis else (args[i] if args else Any)
                 for i in range(len(items))]
        return origin(_convert(c, t) for c, t in zip(items, elems, strict=True))
    if is_list:
        raise ValueError()
    if origin is Literal:
        if text in args:
            return text
        raise ValueError()
    if tp is bool:
        if not quoted and text in ("true", "false"):
            return text == "true"
        raise ValueError()
    if tp is int and not quoted and re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if tp is float and not quoted:
        try:
            return float(text)
        except ValueError:
            raise ValueError() from None
    if tp in (str, Path):
        return tp(text)
    raise ValueError()


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "true/false values"), Path: ("a path", "paths")}


def _describe(tp: Any, plural: bool = False) -> str:
    """``tp`` in words, for error messages: 'an integer', 'a list like [a,b] of numbers'."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        parts = [_describe(a, plural) for a in args if a is not type(None)]
        return " or ".join(parts + (["none"] if type(None) in args else []))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        if args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values like [a,b]"
        return "a list like [a,b] of " + (_describe(args[0], True) if args else "values")
    if tp in _NAMES:
        return _NAMES[tp][plural]
    return "values" if plural else "a value"


def type_name(tp: Any) -> str:
    """A short spelling of an option type for listings: ``int``, ``tuple[int, ...]``, ``str | None``."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def format_value(value: Any) -> str:
    """The canonical pipeline spelling of an option value."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, tuple | list):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    text = str(value)
    if not _WORD.fullmatch(text) or text in ("none", "true", "false"):
        return json.dumps(text)
    return text


def format_pass(pass_: Pass) -> str:
    """``name{opt=value ...}`` with every option spelled out; the bare name if it has none."""
    specs = options_of(type(pass_))
    if not specs:
        return pass_.name
    opts = " ".join(f"{s.name}={format_value(getattr(pass_, s.field))}" for s in specs)
    return f"{pass_.name}{{{opts}}}"
