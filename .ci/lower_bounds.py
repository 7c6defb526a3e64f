"""Print a pip constraints file pinning every dependency of cimc and of its ``test`` extra to the lowest
version ``pyproject.toml`` allows (each ``name>=version`` becomes ``name==version``), so CI can run the
test suite against the oldest releases cimc claims to support. A dependency without a lower bound is an
error: every bound is tested or not claimed."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def lower_bounds(extras: tuple[str, ...] = ("test",)) -> list[str]:
    """``name==version`` for each core and ``extras`` dependency, from its ``>=`` bound."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    deps = list(project["dependencies"]) + [d for e in extras for d in project["optional-dependencies"][e]]
    pins = []
    for dep in deps:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)\s*(,.*)?", dep)
        if match is None:
            sys.exit(f"{PYPROJECT}: dependency {dep!r} has no '>=' lower bound to test")
        pins.append(f"{match[1]}=={match[2]}")
    return pins


if __name__ == "__main__":
    print("\n".join(lower_bounds()))
