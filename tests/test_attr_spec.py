"""``AttrSpec.problem`` against the rules of its docstring, written out as a slow reference."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cimc.ir.opdef import AttrSpec

KINDS = ("int", "float", "str", "ints", "floats", "strs")


def fits(kind: str, lo: float | None, hi: float | None, choices: tuple[Any, ...] | None, value: Any) -> bool:
    """Whether ``value`` fits: ``int`` an integer (Python or numpy, not a bool) of 64 bits, ``float`` a number (not a
    bool), ``str`` a string, the plural kinds a list or tuple of them; each number in ``lo..hi`` (NaN in no range),
    each element one of ``choices``."""
    scalar = kind in ("int", "float", "str")
    if not scalar and type(value) not in (list, tuple):
        return False
    elem = kind if scalar else kind[:-1]
    for v in [value] if scalar else value:
        boolean = type(v) in (bool, np.bool_)
        integer = not boolean and (type(v) is int or np.issubdtype(type(v), np.integer))
        number = integer or (not boolean and (type(v) is float or np.issubdtype(type(v), np.floating)))
        if (elem == "int" and not integer) or (elem == "float" and not number) or (
                elem == "str" and type(v) is not str):
            return False
        if integer and not -(2**63) <= int(v) <= 2**63 - 1:
            return False
        if choices is not None and v not in choices:
            return False
        if elem != "str" and (lo is not None or hi is not None) and (
                v != v or (lo is not None and v < lo) or (hi is not None and v > hi)):
            return False
    return True


_elements = st.one_of(
    st.integers(-(2**70), 2**70), st.integers(-3, 3), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, -1.0, 2.0]), st.text(max_size=2), st.sampled_from(["a", "b"]),
    st.integers(-(2**63), 2**63 - 1).map(np.int64), st.integers(0, 255).map(np.uint8),
    st.floats(width=32).map(np.float32), st.booleans().map(np.bool_))
_values = st.one_of(_elements, st.lists(_elements, max_size=4), st.lists(_elements, max_size=4).map(tuple))


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(KINDS), st.sampled_from([None, -1, 0, 1]), st.sampled_from([None, 0, 2, 5]),
       st.sampled_from([None, (0, 1, 2), ("a", "b")]), _values)
@example("int", None, None, None, 2**63 - 1)  # the 64-bit bounds, exactly
@example("int", None, None, None, 2**63)
@example("floats", None, None, None, [1.5, -(2**63) - 1])
@example("ints", None, None, None, (True, 1))
@example("strs", None, None, None, ["a", 1])
def test_problem_follows_the_documented_rules(kind, lo, hi, choices, value):
    spec = AttrSpec(kind, None, "", lo=lo, hi=hi, choices=choices)
    assert (spec.problem(value) is None) == fits(kind, lo, hi, choices, value), spec.problem(value)
