"""Reading and writing ``.npz`` archives of named arrays: safely and deterministically.

:func:`read_npz` is the one reader of user ``.npz`` files (inputs, calibration, ``.cimir`` sidecars,
chip files), and :func:`read_npy` of single ``.npy`` arrays (labels), with the same checks. It reads
the zip directory, then for each member its ``.npy`` header (format 1, 2 or 3),
and checks before reading any data: the element type is a plain number or bool (object arrays,
which only a pickle could fill, are refused and never loaded; so are strings, structures and
complex numbers), no dim is negative, and the array fits the tensor size limit
(:mod:`cimc.limits`; the members of one archive together too, so a small file that inflates to
gigabytes is refused before it is inflated). The data is then read into one buffer of exactly the
declared size; the zip CRC is checked on the way. Non-native byte order is converted, so
big-endian files read like little-endian ones. Every error is an ``InputError`` naming the file
and the member.

:func:`write_npz` writes the layout of ``np.savez`` member by member, so any name works as a key
(``np.savez`` rejects ``file`` and ``allow_pickle``), with fixed member dates (equal arrays give
equal bytes). bfloat16 is stored as its uint16 bits; callers that know the type view it back.
"""

from __future__ import annotations

import ast
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import IO, Any, BinaryIO

import numpy as np

from cimc.errors import InputError
from cimc.fileio import regular_file
from cimc.limits import check_size, format_bytes, max_tensor_bytes

__all__ = ["read_npy", "read_npz", "write_npz"]

_EPOCH = (1980, 1, 1, 0, 0, 0)
_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 1 << 16
_FIX = "save the arrays with numpy.savez(path, name=array, ...)"
_KINDS = "biuf"  # bool, signed and unsigned integers, floats
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError,
               struct.error, RuntimeError)


def write_npz(f: BinaryIO, arrays: Mapping[str, np.ndarray],
              member_name: Callable[[str], str] = lambda key: key) -> None:
    """Write ``arrays`` to the open binary file ``f`` as an uncompressed ``.npz``."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            arr = np.asanyarray(arr)
            if arr.dtype.name == "bfloat16":
                arr = arr.view(np.uint16)
            info = zipfile.ZipInfo(member_name(key) + ".npy", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def read_npz(path: str | os.PathLike[str], what: str = "") -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file ``path`` by name (member name without ``.npy``); an
    ``InputError`` naming the file (prefixed by ``what``, e.g. ``--calibration``) and the member for
    anything else. See the module docstring for the checks."""
    p = regular_file(path, what)
    pre = f"{what} {p}" if what else str(p)
    try:
        zf = zipfile.ZipFile(p)
    except _ZIP_ERRORS:
        with open(p, "rb") as f:
            head = f.read(len(_MAGIC))
        if head == _MAGIC:
            raise InputError(f"{pre}: a single .npy array, not an .npz archive of named arrays; {_FIX}") from None
        raise InputError(f"{pre}: not an .npz archive of arrays (not a readable zip file: truncated or of "
                         f"another format?); {_FIX}") from None
    out: dict[str, np.ndarray] = {}
    with zf:
        try:
            infos = zf.infolist()
        except _ZIP_ERRORS as e:
            raise InputError(f"{pre}: the zip directory is corrupt ({e})") from None
        total = sum(i.file_size for i in infos)
        if total > max_tensor_bytes():
            raise InputError(f"{pre}: its arrays inflate to {format_bytes(total)} in all, over the "
                             f"{format_bytes(max_tensor_bytes())} size limit (a zip bomb? if not, raise the limit "
                             f"with --max-tensor-size)")
        for info in infos:
            if info.is_dir():
                continue
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            where = f"{pre}: array {_short(key)}" if info.filename.endswith(".npy") else \
                f"{pre}: member {_short(info.filename)}"
            if key in out:
                raise InputError(f"{where}: the array name {_short(key)} occurs twice")
            if info.flag_bits & 0x1:
                raise InputError(f"{where}: is encrypted")
            try:
                with zf.open(info) as member:
                    out[key] = _read_member(member, info.file_size, where, _FIX)
            except InputError:
                raise
            except MemoryError:
                raise InputError(f"{where}: not enough memory to read it") from None
            except _ZIP_ERRORS as e:
                raise InputError(f"{where}: corrupt or truncated ({_one_line(e)})") from None
    return out


def read_npy(path: str | os.PathLike[str], what: str = "") -> np.ndarray:
    """The one array of the ``.npy`` file ``path``, checked as :func:`read_npz` checks a member (an
    ``.npz`` archive is refused); ``what`` prefixes messages (e.g. ``--labels``)."""
    p = regular_file(path, what)
    pre = f"{what} {p}" if what else str(p)
    fix = "save it with numpy.save(path, array)"
    with open(p, "rb") as f:
        if f.read(2) == b"PK":
            raise InputError(f"{pre}: an .npz archive, not a single .npy array; {fix}")
        f.seek(0)
        try:
            return _read_member(f, p.stat().st_size, pre, fix)
        except MemoryError:
            raise InputError(f"{pre}: not enough memory to read it") from None


def _short(name: str, limit: int = 60) -> str:
    return repr(name if len(name) <= limit else name[:limit - 3] + "...")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] or type(e).__name__


def _read_member(f: IO[bytes], stored: int, where: str, fix: str) -> np.ndarray:
    """One ``.npy`` array of ``stored`` bytes: header checked, then exactly its data read."""
    if f.read(len(_MAGIC)) != _MAGIC:
        raise InputError(f"{where}: not a .npy array (no NUMPY header); {fix}")
    version = f.read(2)
    if len(version) != 2 or version[0] not in (1, 2, 3):
        raise InputError(f"{where}: unknown .npy format version {tuple(version)}")
    size_bytes = 2 if version[0] == 1 else 4
    raw = f.read(size_bytes)
    if len(raw) != size_bytes:
        raise InputError(f"{where}: truncated .npy header")
    hlen = int.from_bytes(raw, "little")
    if hlen > _MAX_HEADER:
        raise InputError(f"{where}: .npy header of {hlen} bytes (at most {_MAX_HEADER})")
    text = f.read(hlen)
    if len(text) != hlen:
        raise InputError(f"{where}: truncated .npy header")
    dtype, shape, fortran = _header(text, version[0], where)
    check_size(where, shape, dtype.itemsize)
    nbytes = math.prod(shape) * dtype.itemsize
    offset = len(_MAGIC) + 2 + size_bytes + hlen
    if stored != offset + nbytes:
        got = max(stored - offset, 0)
        why = "truncated" if got < nbytes else "has extra bytes after its data"
        raise InputError(f"{where}: {why}: its header declares {dtype.str}{list(shape)} ({nbytes} bytes of data), "
                         f"the member holds {got}")
    buf = np.empty(nbytes, np.uint8)
    view, done = buf.data, 0
    while done < nbytes:
        n = f.readinto(view[done:])  # type: ignore[attr-defined]  # a zip member has it; typing.IO does not say so
        if not n:
            raise InputError(f"{where}: truncated: {done} of {nbytes} bytes of data")
        done += n
    f.read()  # to the end, so the CRC is checked
    arr = buf.view(dtype).reshape(shape, order="F" if fortran else "C")
    if not dtype.isnative:
        arr = arr.astype(dtype.newbyteorder("="))
    return arr


def _header(text: bytes, major: int, where: str) -> tuple[np.dtype, tuple[int, ...], bool]:
    try:
        d: Any = ast.literal_eval(text.decode("utf-8" if major >= 3 else "latin1"))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError, TypeError):
        raise InputError(f"{where}: the .npy header is not a dictionary literal") from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise InputError(f"{where}: the .npy header should have exactly the keys descr, fortran_order and shape")
    shape, fortran = d["shape"], d["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise InputError(f"{where}: the .npy header's shape {str(shape)[:60]} is not a tuple of integers")
    if any(n < 0 for n in shape):
        raise InputError(f"{where}: the .npy header's shape {list(shape)} has a negative dim")
    if not isinstance(fortran, bool):
        raise InputError(f"{where}: the .npy header's fortran_order is not true or false")
    if not isinstance(d["descr"], str):  # a list: a structured type
        raise InputError(f"{where}: holds records (a structured dtype); cimc reads numeric arrays only")
    try:
        dtype = np.dtype(d["descr"])
    except (TypeError, ValueError):
        raise InputError(f"{where}: unknown element type {d['descr'][:30]!r}") from None
    if dtype.hasobject:
        raise InputError(f"{where}: holds Python objects (a pickle); cimc reads numeric arrays only and never "
                         f"loads pickles")
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise InputError(f"{where}: element type {dtype} is not supported; cimc reads arrays of bool, integers "
                         f"and floats")
    return dtype, tuple(shape), fortran
