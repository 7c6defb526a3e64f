"""The one exceptions module of cimc.

Every error a user can cause is a :class:`CimcError`; the CLI prints its message on one line
and exits with status 2. Messages say what failed, where, what was expected versus found,
and the likely fix.
"""

from __future__ import annotations

__all__ = [
    "CimcError",
    "InputError",
    "ParseError",
    "PassError",
    "UnsupportedOpError",
    "VerifyError",
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
    """The IR breaks an invariant (types, order, use-def links, op schema)."""


class UnsupportedOpError(CimcError):
    """A model uses ops cimc does not implement; the message lists every one of them."""


class InputError(CimcError):
    """User-supplied data (model file, input arrays, options) is not what was expected."""


class PassError(CimcError):
    """A pass failed; the message names the pass and the ones that ran before it."""
