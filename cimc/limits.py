"""Resource limits: the largest single tensor cimc will allocate or read.

Every place that allocates a tensor whose size comes from user data (an ``.npz`` member, a graph
input made up by ``--random``/``--batch``, an interpreter result whose shape a model declares or
computes) asks :func:`check_size` first, so an oversized request fails with one message naming the
tensor and its size instead of exhausting memory. The limit defaults to ``DEFAULT_FRACTION`` of the
machine's physical memory (at least ``MIN_DEFAULT``); :func:`set_max_tensor_bytes` changes it
(``cimc --max-tensor-size 2G``), and :func:`parse_size` reads sizes such as ``512M``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable

from cimc.errors import InputError

__all__ = ["DEFAULT_FRACTION", "MIN_DEFAULT", "ResourceError", "check_size", "format_bytes", "max_tensor_bytes",
           "parse_size", "set_max_tensor_bytes"]

DEFAULT_FRACTION = 1 / 8
"""Default limit as a fraction of physical memory: room for the handful of live tensors of one op."""
MIN_DEFAULT = 256 << 20

_limit: int | None = None


class ResourceError(InputError):
    """A tensor would be larger than the configured limit."""


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 8 GiB
        return 8 << 30


def max_tensor_bytes() -> int:
    """The current limit in bytes."""
    if _limit is not None:
        return _limit
    return max(int(_physical_memory() * DEFAULT_FRACTION), MIN_DEFAULT)


def set_max_tensor_bytes(limit: int | None) -> None:
    """Set the limit (``None``: back to the default)."""
    global _limit
    if limit is not None and limit <= 0:
        raise InputError(f"the tensor size limit must be positive, got {limit}")
    _limit = limit


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``"512M"``, ``"2g"``, ``"1.5GiB"`` or ``"4096"`` as bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if m is None or float(m[1]) <= 0:
        raise InputError(f"size {text[:40]!r} should be a positive number of bytes, optionally with K, M, G "
                         "or T (e.g. 512M)")
    return int(float(m[1]) * _UNITS[m[2].lower()])


def format_bytes(n: int) -> str:
    """``n`` bytes in the largest binary unit that keeps it >= 1 (``5.0 GiB``)."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def check_size(what: str, shape: Iterable[int], itemsize: int) -> None:
    """Raise ``ResourceError`` if a tensor of ``shape`` with ``itemsize``-byte elements would be over
    the limit (or has a negative dim); ``what`` names it in the message."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise InputError(f"{what}: shape {dims} has a negative dim")
    if math.prod(d for d in dims if d) * int(itemsize) >= 1 << 63:  # numpy refuses such a shape, even empty
        raise InputError(f"{what}: shape {dims} cannot be an array (its nonzero dims multiply beyond 2**63 bytes)")
    size = math.prod(dims) * int(itemsize)
    limit = max_tensor_bytes()
    if size > limit:
        raise ResourceError(f"{what}: shape {dims} needs {format_bytes(size)}, over the {format_bytes(limit)} "
                            f"limit on one tensor (raise it with --max-tensor-size)")
