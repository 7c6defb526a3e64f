"""The ``.cimir`` text format: print a graph, parse it back equal, save and load it with a sidecar.

``save_graph`` writes ``PATH`` and, when some constant is larger than the inline limit, the
sidecar ``PATH`` with suffix ``.npz`` holding those arrays by value name (a name that is not
printable ASCII, or starts with ``~``, is stored as ``~`` + the hex of its UTF-8 bytes, since zip
member names cannot hold every string); both files are written atomically
(:func:`cimc.fileio.write_atomic`). ``load_graph`` reads both through cimc's checked readers
(UTF-8 text, :func:`cimc.npzio.read_npz`) and runs the verifier on the result: a loaded graph is
well formed, or loading fails with the verifier's findings.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cimc.fileio import read_text, write_atomic
from cimc.ir.core import Graph
from cimc.npzio import read_npz, write_npz
from cimc.text.parser import parse_graph
from cimc.text.printer import print_graph

__all__ = ["load_graph", "parse_graph", "print_graph", "save_graph", "sidecar_path"]


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the large constants of the ``.cimir`` file ``path`` live."""
    return Path(path).with_suffix(".npz")


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
        write_atomic(sidecar_path(path), lambda f: _write_npz(f, resources))
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def load_graph(path: str | os.PathLike[str], *, verify: bool = True) -> Graph:
    """Read a graph written by :func:`save_graph` (and its ``.npz`` sidecar, if there is one), and
    verify it (``verify=False`` skips that, for tools that inspect malformed graphs)."""
    path = Path(path)
    text = read_text(path)
    side = sidecar_path(path)
    resources = _Sidecar(read_npz(side, "the .cimir sidecar")) if os.path.lexists(side) else None
    where: dict[str, tuple[int | None, int | None]] = {}
    graph = parse_graph(text, resources=resources, source=str(path), locations=where)
    if verify:
        _check_ops(graph, where, str(path))
        from cimc.errors import VerifyError
        from cimc.ir.verifier import verify as verify_graph

        try:
            verify_graph(graph)
        except VerifyError as e:
            line, col = where.get(e.node or "", (None, None))
            raise VerifyError(f"{path}{'' if line is None else f':{line}:{col}'}: {e}", node=e.node) from None
    return graph


def _check_ops(graph: Graph, where: Mapping[str, tuple[int | None, int | None]], source: str) -> None:
    """A ``ParseError`` at the first node whose op no one defines (every registered target's
    instructions are defined first, so a compiled program loads)."""
    import difflib

    from cimc.errors import ParseError
    from cimc.ir.opdef import all_ops, lookup

    if all(lookup(n.op) is not None for n in graph.nodes):
        return
    from cimc.targets import all_targets

    for cls in all_targets().values():
        cls().register_ops()
    known = all_ops()
    for node in graph.nodes:
        if node.op not in known:
            close = difflib.get_close_matches(node.op, list(known), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            line, col = where.get(node.name, (None, None))
            raise ParseError(f"node {node.name!r}: unknown op '{node.op}'; {hint}(`cimc` defines the ONNX ops, "
                             f"q.*, vec.* and each target's instructions)", source=source, line=line, column=col)
