"""Reading and writing ``.npz`` archives of named arrays (and reading one ``.npy`` array): safely
(never a pickle) and deterministically (fixed member dates, so equal arrays give equal bytes).

The layout is ``np.savez``'s, written member by member, so any name works as a key (``np.savez``
rejects ``file`` and ``allow_pickle``). bfloat16 is stored as its uint16 bits; callers that know
the type view it back.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from typing import BinaryIO

import numpy as np

from cimc.errors import InputError

__all__ = ["read_npy", "read_npz", "write_npz"]

_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(f: BinaryIO, arrays: Mapping[str, np.ndarray], member_name=lambda key: key) -> None:
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


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file by name; a clear ``InputError`` for anything else (a pickle
    inside is refused, never loaded)."""
    fix = "save the arrays with numpy.savez(path, name=array, ...)"
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (ValueError, EOFError, OSError):  # numpy's word for "not an npy/npz file"
        raise InputError(f"{path}: not an .npz archive of arrays; {fix}") from None
    if not hasattr(npz, "files"):
        raise InputError(f"{path}: a single .npy array, not an .npz archive of named arrays; {fix}")
    out = {}
    with npz:
        for key in npz.files:
            try:
                out[key] = npz[key]
            except ValueError:
                raise InputError(f"{path}: array {key!r} holds Python objects; cimc reads numeric "
                                 f"arrays only (it never loads pickles)") from None
    return out


def read_npy(path: str | os.PathLike[str], what: str = "") -> np.ndarray:
    """The one array of a ``.npy`` file; a clear ``InputError`` for anything else (an ``.npz``
    archive, a pickle or an array of Python objects is refused, never loaded). ``what`` prefixes
    messages (e.g. ``--labels``)."""
    pre = f"{what} {path}" if what else str(path)
    fix = "save it with numpy.save(path, array)"
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{pre}: no such file") from None
    except ValueError:  # numpy's word for an object array it will not unpickle
        raise InputError(f"{pre}: holds Python objects (a pickle); cimc reads numeric arrays only, "
                         "it never loads pickles") from None
    except (EOFError, OSError):
        raise InputError(f"{pre}: not a .npy array; {fix}") from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise InputError(f"{pre}: an .npz archive, not a single .npy array; {fix}")
    return arr
