"""The one exceptions module of cimc.

Every error a user can cause is a :class:`CimcError`; the CLI prints its message on one line
and exits with status 2. Messages say what failed, where, what was expected versus found,
and the likely fix.
"""

from __future__ import annotations

import re

__all__ = [
    "CimcError",
    "InputError",
    "ParseError",
    "PassError",
    "UnsupportedOpError",
    "VerifyError",
    "describe_exception",
    "quote",
    "shorten",
]


class CimcError(Exception):
    """Base class of every error cimc reports to a user."""


class ParseError(CimcError):
    """Malformed text (``.cimir``, pipeline) or file, with the place it went wrong."""

    def __init__(self, message: str, *, source: str = "<text>", line: int | None = None,
                 column: int | None = None) -> None:
        self.source, self.line, self.column = source, line, column
        where = source if line is None else f"{source}:{line}:{column or 1}"
        super().__init__(f"{where}: {message}")


class VerifyError(CimcError):
    """The IR breaks an invariant (types, order, use-def links, op schema); ``node`` names the first
    node at fault, if one is."""

    def __init__(self, message: str, *, node: str | None = None) -> None:
        self.node = node
        super().__init__(message)


class UnsupportedOpError(CimcError):
    """A model uses ops cimc does not implement; the message lists every one of them."""


class InputError(CimcError):
    """User-supplied data (model file, input arrays, options) is not what was expected."""


class PassError(CimcError):
    """A pass failed; the message names the pass and the ones that ran before it."""


def quote(text: str, limit: int = 60) -> str:
    """``repr(text)``, cut to about ``limit`` characters with ``...`` when longer (user strings in
    messages: an error line stays one readable line whatever was typed)."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return repr(text[:limit]) + f"... ({len(text)} characters)"


def shorten(text: str, limit: int = 200, keep: int = 80) -> str:
    """``text`` with every run of more than ``limit`` non-space characters (a user string echoed by a
    message: a 100,000-character name) cut to its first ``keep`` and a note of its length."""
    return re.sub(rf"\S{{{limit + 1},}}", lambda m: f"{m.group()[:keep]}... ({len(m.group())} characters)", text)


def describe_exception(e: BaseException) -> str:
    """One line saying what ``e`` is: a cimc error or an OS error by its message, ``exit(3)`` for a
    ``SystemExit``, anything else as ``Type: message``."""
    if isinstance(e, SystemExit):
        msg = f"it called exit({e.code!r})" if e.code is not None else "it called exit()"
    elif isinstance(e, OSError) and e.strerror:
        msg = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    elif isinstance(e, CimcError | OSError):
        msg = str(e)
    else:
        msg = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    out = ""
    for part in filter(None, (p.strip() for p in msg.splitlines())):
        out += ("" if not out else " " if out.endswith(":") else "; ") + part
    return out
