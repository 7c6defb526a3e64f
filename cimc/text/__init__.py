"""The ``.cimir`` text format: print a graph, parse it back equal, save and load it with a sidecar.

``save_graph`` writes ``PATH`` and, when some constant is larger than the inline limit, the
sidecar ``PATH`` with suffix ``.npz`` holding those arrays by value name (a name that is not
printable ASCII, or starts with ``~``, is stored as ``~`` + the hex of its UTF-8 bytes, since zip
member names cannot hold every string); both files are written to a temporary file first and
moved into place with ``os.replace``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cimc.ir.core import Graph
from cimc.npzio import write_npz
from cimc.text.parser import parse_graph
from cimc.text.printer import print_graph

__all__ = ["load_graph", "parse_graph", "print_graph", "save_graph", "sidecar_path"]


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the large constants of the ``.cimir`` file ``path`` live."""
    return Path(path).with_suffix(".npz")


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _member(name: str) -> str:
    if name.isascii() and name.isprintable() and "\\" not in name and not name.startswith("~"):
        return name
    return "~" + name.encode("utf-8", "surrogatepass").hex()


class _Sidecar(Mapping[str, np.ndarray]):
    """The arrays of an opened ``.npz`` sidecar, by value name."""

    def __init__(self, npz: Mapping[str, np.ndarray]) -> None:
        self.npz = npz

    def __getitem__(self, name: str) -> np.ndarray:
        return self.npz[_member(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _member(name) in self.npz

    def __iter__(self) -> Iterator[str]:
        for m in self.npz:
            yield bytes.fromhex(m[1:]).decode("utf-8", "surrogatepass") if m.startswith("~") else m

    def __len__(self) -> int:
        return len(self.npz)


def _write_npz(f: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    write_npz(f, arrays, member_name=_member)


def save_graph(graph: Graph, path: str | os.PathLike[str]) -> None:
    """Write ``graph`` to ``path`` as ``.cimir``, large constants to the ``.npz`` sidecar."""
    path = Path(path)
    resources: dict[str, np.ndarray] = {}
    text = print_graph(graph, resources=resources)
    if resources:
        _atomic_write(sidecar_path(path), lambda f: _write_npz(f, resources))
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def load_graph(path: str | os.PathLike[str]) -> Graph:
    """Read a graph written by :func:`save_graph` (and its ``.npz`` sidecar, if there is one)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    side = sidecar_path(path)
    if not side.exists():
        return parse_graph(text, source=str(path))
    with np.load(side, allow_pickle=False) as npz:
        return parse_graph(text, resources=_Sidecar(npz), source=str(path))
