"""Files in and out: the one reader of user files and the one atomic writer of cimc's outputs.

Reading: :func:`regular_file` checks that a path names a readable regular file (a directory, a FIFO
or a device gets its own message, and nothing is opened that could block); :func:`read_bytes` and
:func:`read_text` read one (text is UTF-8; a bad byte is a ``ParseError`` at its line and column).

Writing: :func:`write_atomic` writes a file through a temporary file beside it (``.NAME.XXXXXXXX.tmp``,
mode ``0o666 & ~umask``) moved into place with ``os.replace``; :func:`write_directory` builds a whole
output directory the same way and renames it into place. Both hold an advisory lock (``flock``) on
their temporary file (a directory: on its marker file) for as long as it exists, so a later run into
the same path can tell the leftovers of a killed run (lock free) from a run in progress (lock held)
and removes only the former. Creating a temporary, sweeping stale ones and the final renames take a short lock on the
parent directory, so concurrent cimc runs into one path serialise there.

Output directories carry a marker file (``MARKER``). An existing destination is replaced only with
``force``, and only if it is a cimc output (it holds the marker) or an empty directory; two runs
into one path without ``force`` cannot both succeed (the second finds the first's output under the
parent lock). Errors name the destination, never the temporary path. Locks are POSIX ``flock``;
where ``fcntl`` is missing there are no locks, no concurrency guarantee and no sweep of leftovers.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from cimc.errors import InputError, ParseError

try:
    import fcntl
except ImportError:  # pragma: no cover  (not POSIX)
    fcntl = None  # type: ignore[assignment]  # no fcntl on this platform

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

__all__ = ["MARKER", "check_output_directory", "check_output_file", "read_bytes", "read_text", "regular_file",
           "write_atomic", "write_directory"]

MARKER = ".cimc-output"
"""The file that marks a directory as a cimc output (``--force`` replaces only such directories)."""
_MARKER_TEXT = b"This directory was written by cimc; `cimc compile --force` may replace it.\n"


def regular_file(path: str | os.PathLike[str], what: str = "") -> Path:
    """``path`` as a Path if it names an existing regular file; else an ``InputError`` saying what it is."""
    p = Path(path)
    pre = f"{what} {p}" if what else str(p)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(f"{pre}: no such file") from None
    except NotADirectoryError:
        raise InputError(f"{pre}: no such file (a part of the path is not a directory)") from None
    except OSError as e:
        raise InputError(f"{pre}: cannot read it: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{pre}: is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        raise InputError(f"{pre}: is {kind}, not a regular file")
    return p


def read_bytes(path: str | os.PathLike[str], what: str = "") -> bytes:
    """The contents of the regular file ``path`` (see :func:`regular_file` for the errors)."""
    p = regular_file(path, what)
    try:
        return p.read_bytes()
    except OSError as e:
        raise InputError(f"{what + ' ' if what else ''}{p}: cannot read it: {e.strerror or e}") from None


def read_text(path: str | os.PathLike[str], what: str = "") -> str:
    """The UTF-8 text of the regular file ``path``; a byte that is not UTF-8 is a ``ParseError`` at its
    line and column (columns count characters; the bad byte is shown in hex)."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        column = len(data[start:e.start].decode("utf-8", "replace")) + 1
        bad = data[e.start:e.end].hex(" ")
        raise ParseError(f"not UTF-8 text: byte{'s' if e.end - e.start > 1 else ''} {bad} ({e.reason}); "
                         f"save the file as UTF-8", source=f"{what + ' ' if what else ''}{path}", line=line,
                         column=column) from None


# ---- locks and stale temporaries ------------------------------------------------------------------

_TEMP = r"\.{name}\.[a-z0-9_]{{8}}\.(?:tmp|old)"


def _try_lock(fd: int, *, block: bool = False) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks: treat as free only when blocking was asked
        return block
    return True


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (other cimc runs writing beside it wait)."""
    if fcntl is None:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        _try_lock(fd, block=True)
        yield
    finally:
        os.close(fd)


def _sweep(parent: Path, name: str) -> None:
    """Remove the temporaries of ``parent / name`` that killed runs left (their lock is free). A stale
    directory is removed only if it is empty or holds the marker; caller holds the parent lock."""
    if fcntl is None:  # no locks: a live temporary could not be told from a stale one
        return
    pattern = re.compile(_TEMP.format(name=re.escape(name)))
    try:
        entries = [e for e in os.scandir(parent) if pattern.fullmatch(e.name)]
    except OSError:
        return
    for entry in entries:
        is_dir = entry.is_dir(follow_symlinks=False)
        if not is_dir and not entry.is_file(follow_symlinks=False):
            continue
        try:
            if is_dir and not os.listdir(entry.path):
                os.rmdir(entry.path)
                continue
            fd = os.open(os.path.join(entry.path, MARKER) if is_dir else entry.path, os.O_RDONLY | _NOFOLLOW)
        except OSError:  # gone, or a directory without the marker: not ours
            continue
        try:
            if not _try_lock(fd):
                continue  # a run in progress
            if is_dir:
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _destination(path: str | os.PathLike[str]) -> Path:
    if os.fspath(path) == "":
        raise InputError("the output path is empty; give a file or directory name")
    p = Path(path)
    if p.name in ("", ".", ".."):
        raise InputError(f"{path}: names no file or directory to write (give a name, e.g. {Path(path) / 'out'})")
    if not p.parent.is_dir():
        why = f"{p.parent} is not a directory" if os.path.lexists(p.parent) else f"directory {p.parent} does not exist"
        raise InputError(f"{p}: cannot write it, {why}")
    return p


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if :func:`write_atomic` can write a file there (its directory exists, it
    is not a directory); else an ``InputError`` saying why."""
    dest = _destination(path)
    if dest.is_dir():
        raise InputError(f"{dest}: is a directory; give a file name to write")
    return dest


def _fresh(parent: Path, name: str, suffix: str) -> Path:
    """A temporary's path beside ``parent / name`` that does not exist yet (``.NAME.XXXXXXXX.SUFFIX``;
    callers create it under the parent lock, so no other cimc run takes it meanwhile)."""
    while True:
        p = parent / f".{name}.{''.join(_RNG.choices(_CHARS, k=8))}{suffix}"
        if not os.path.lexists(p):
            return p


_RNG = random.SystemRandom()
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Write a file through ``write(f)`` atomically: all of it appears at ``path`` or nothing does (an
    existing file there is replaced). Returns the path."""
    dest = check_output_file(path)
    tmp: Path | None = None  # known before it exists, so an interrupt anywhere leaves nothing
    try:
        with _locked(dest.parent):
            _sweep(dest.parent, dest.name)
            tmp = _fresh(dest.parent, dest.name, ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
            _try_lock(fd)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.replace(tmp, dest)  # still locked: a sweep never sees it free while it exists
    except OSError as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise InputError(f"{dest}: cannot write it: {e.strerror or e}") from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return dest


def check_output_directory(path: str | os.PathLike[str], force: bool) -> Path:
    """``path`` as a Path if :func:`write_directory` may write it: it does not exist, or ``force`` is
    given and it is a cimc output directory (or an empty one). Else an ``InputError`` saying why."""
    dest = _destination(path)
    if not os.path.lexists(dest):
        return dest
    if not force:
        raise InputError(f"{dest} already exists; remove it, choose another with -o, or replace it with --force")
    if dest.is_symlink():
        raise InputError(f"{dest} is a symbolic link; cimc replaces only directories it wrote (remove the link)")
    if not dest.is_dir():
        raise InputError(f"{dest} is a file, not a cimc output directory; --force replaces only directories "
                         f"cimc wrote (remove it yourself or choose another with -o)")
    names = os.listdir(dest)
    if names and not (dest / MARKER).is_file():
        raise InputError(f"{dest} is not a cimc output directory (it has no {MARKER} file); --force replaces "
                         f"only directories cimc wrote, so it is left alone (choose another with -o)")
    return dest


def write_directory(path: str | os.PathLike[str], fill: Callable[[Path], object], *, force: bool = False) -> Path:
    """Build an output directory with ``fill(tmp)`` and move it to ``path`` atomically (see the module
    docstring for the marker, ``force`` and concurrency rules). Returns the path. An interrupt at any
    point leaves the destination as it was (or complete) and no temporary behind."""
    dest = check_output_directory(path, force)
    parent = dest.parent
    tmp: Path | None = None
    old: Path | None = None
    fd = -1
    try:
        with _locked(parent):
            _sweep(parent, dest.name)
            tmp = _fresh(parent, dest.name, ".tmp")
            os.mkdir(tmp)
            fd = os.open(tmp / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            _try_lock(fd)
            os.write(fd, _MARKER_TEXT)
        fill(tmp)
        with _locked(parent):
            check_output_directory(dest, force)  # again, now that no other cimc run can move things
            if os.path.lexists(dest):
                old = _fresh(parent, dest.name, ".old")
                os.rename(dest, old)
            os.rename(tmp, dest)
    except BaseException as e:
        if old is not None and os.path.lexists(old) and not os.path.lexists(dest):
            os.rename(old, dest)  # put the earlier output back
            old = None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise InputError(f"{dest}: cannot write it: {e.strerror or e}") from None
        if isinstance(e, InputError) and tmp is not None and str(tmp) in str(e):  # a file inside: name it there
            raise InputError(str(e).replace(str(tmp), str(dest))) from None
        raise
    finally:
        if fd >= 0:
            os.close(fd)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return dest
