"""Tensor types: an element type, a shape whose dims may be symbolic, optional quantization.

A dim is an ``int`` (known), a ``str`` (a named symbolic dim such as ``"N"``, equal wherever the
name recurs, or a product of names and a number such as ``"16*N"``, :func:`dim_factors`) or ``None``
(unknown). A shape of ``None`` means the rank is unknown too.
"""

from __future__ import annotations

import builtins
import functools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from cimc.errors import VerifyError

__all__ = [
    "ONNX_CODE_OF_DTYPE",
    "ONNX_DTYPE_CODES",
    "UNSUPPORTED_ONNX_DTYPES",
    "DType",
    "Dim",
    "QuantParams",
    "Shape",
    "ShapeValue",
    "TensorType",
    "dim_factors",
    "dim_per_sample",
    "dim_product",
    "dtype_from_onnx_code",
    "static_dims",
]

Dim = int | str | None
Shape = tuple[Dim, ...]


def static_dims(dims: Sequence[Dim]) -> tuple[int, ...] | None:
    """``dims`` if every one is a known integer, else ``None``."""
    ints = tuple(d for d in dims if isinstance(d, int))
    return ints if len(ints) == len(dims) else None


def dim_factors(d: int | str) -> tuple[int, Counter[str]]:
    """A known or named dim as a number times named dims: ``"16*N"`` is 16 times ``N``, ``"N"`` is 1 times ``N``,
    12 is 12 times none. A name is read as a product only if every part between its ``*`` is a number or a
    name (so a product :func:`dim_product` spells reads back the same)."""
    if isinstance(d, int):
        return d, Counter()
    parts = d.split("*")
    if len(parts) == 1 or any(not p or p != p.strip() for p in parts):
        return 1, Counter({d: 1})
    coef, names = 1, Counter[str]()
    for p in parts:
        if p.isdigit():
            coef *= int(p)
        else:
            names[p] += 1
    return coef, names


def dim_product(coef: int, names: Mapping[str, int]) -> int | str:
    """The dim ``coef`` (positive, or 0) times each of ``names`` (as often as counted): ``coef`` if there are no
    names or it is 0, else the product in one spelling, the number (unless 1) then the names in order
    (``"16*N"``, ``"M*N"``), equal wherever the same product recurs."""
    if coef == 0 or not any(names.values()):
        return coef
    return "*".join(([str(coef)] if coef != 1 else []) + sorted(Counter(names).elements()))


def dim_per_sample(d: Dim) -> int:
    """Dim ``d`` as a count per inference (one sample), as cost models and buffer sizes count: a known dim
    itself; a symbolic one (the batch) 1, times its number if it is a product (``16*batch``: 16 windows per
    sample); an unknown one 1."""
    if isinstance(d, int):
        return d
    return dim_factors(d)[0] if isinstance(d, str) else 1


SHAPE_VALUE_LIMIT = 64
"""The most elements a :class:`ShapeValue` holds (shape vectors are short; longer tensors are data)."""


@dataclass(frozen=True)
class ShapeValue:
    """What is known when compiling of the elements of a small integer tensor computed from shapes,
    such as the shape operand a TorchScript export builds for a ``Reshape`` at run time (``Shape ->
    Gather -> Unsqueeze -> Concat``): each element a known ``int``, a symbolic dim name (the value of
    that dim: a dim's size, so never negative) or ``None`` (unknown). Booleans are 0 and 1. ``scalar``:
    the tensor has rank 0 (and one element); otherwise rank 1.

    Op definitions compute these with their value rules (``OpDef.value``) and type rules read them
    through ``InferContext.value``."""

    elems: tuple[Dim, ...]
    scalar: bool = False

    @property
    def ints(self) -> tuple[int, ...] | None:
        """The elements if every one is a known integer, else ``None``."""
        return static_dims(self.elems)

    @staticmethod
    def of(array: np.ndarray) -> ShapeValue | None:
        """The value of a concrete integer or boolean array of rank 0 or 1 with at most
        ``SHAPE_VALUE_LIMIT`` elements, else ``None``."""
        if array.dtype.kind not in "iub" or array.ndim > 1 or array.size > SHAPE_VALUE_LIMIT:
            return None
        return ShapeValue(tuple(int(x) for x in array.reshape(-1)), array.ndim == 0)


class DType(Enum):
    """Element types, named as they print in ``.cimir`` text."""

    f16 = "f16"
    bf16 = "bf16"
    f32 = "f32"
    f64 = "f64"
    i4 = "i4"
    u4 = "u4"
    i8 = "i8"
    i16 = "i16"
    i32 = "i32"
    i64 = "i64"
    u8 = "u8"
    u16 = "u16"
    u32 = "u32"
    u64 = "u64"
    bool = "bool"
    str = "str"

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype values of this type are stored in (int4 is widened to int8; bfloat16 is
        ml_dtypes', imported on first use)."""
        return _bfloat16() if self is DType.bf16 else _TO_NUMPY[self]

    @staticmethod
    def from_numpy(dtype: Any) -> DType:
        """The cimc type of a numpy dtype; raises ``KeyError`` for types cimc does not have."""
        dt = np.dtype(dtype)
        hit = _FROM_NUMPY.get(dt)
        if hit is not None:
            return hit
        if dt.kind in "UO":
            return DType.str
        if dt.name == "bfloat16":
            return DType.bf16
        return _FROM_NUMPY[dt]

    # The members named ``bool`` and ``str`` shadow the builtins inside this class body.
    @property
    def is_float(self) -> builtins.bool:
        """Whether this is a floating-point type."""
        return self in (DType.f16, DType.bf16, DType.f32, DType.f64)

    @property
    def is_int(self) -> builtins.bool:
        """Whether this is a signed or unsigned integer type."""
        return self.name[0] in "iu"


@functools.cache
def _bfloat16() -> np.dtype:
    """ml_dtypes' bfloat16 (ml_dtypes ships with onnx; importing it takes about half a second, so only
    graphs that use bfloat16 pay for it)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


_TO_NUMPY: dict[DType, np.dtype] = {
    DType.f16: np.dtype(np.float16), DType.f32: np.dtype(np.float32),
    DType.f64: np.dtype(np.float64), DType.i4: np.dtype(np.int8), DType.u4: np.dtype(np.uint8),
    DType.i8: np.dtype(np.int8), DType.i16: np.dtype(np.int16), DType.i32: np.dtype(np.int32),
    DType.i64: np.dtype(np.int64), DType.u8: np.dtype(np.uint8), DType.u16: np.dtype(np.uint16),
    DType.u32: np.dtype(np.uint32), DType.u64: np.dtype(np.uint64), DType.bool: np.dtype(np.bool_),
    DType.str: np.dtype(object),
}
_FROM_NUMPY: dict[np.dtype, DType] = {
    v: k for k, v in _TO_NUMPY.items() if k not in (DType.i4, DType.u4, DType.str)
}


@dataclass(frozen=True)
class QuantParams:
    """How an integer tensor maps to real numbers: ``real = scale * (q - zero_point)``.

    ``scale`` and ``zero_point`` are tuples (one entry per tensor, or one per channel along
    ``axis``); ``bits`` is the number of significant bits (2 to 8 for activations and weights, 32
    for accumulators and biases), which may be fewer than the storage type holds.
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    bits: int = 8
    axis: int | None = None

    @property
    def per_channel(self) -> bool:
        """Whether scales vary along ``axis``."""
        return self.axis is not None


@dataclass(frozen=True)
class TensorType:
    """The type of a value: element type, shape (``None`` if the rank is unknown), quantization."""

    dtype: DType
    shape: Shape | None
    quant: QuantParams | None = None

    @property
    def rank(self) -> int | None:
        """Number of dims, or ``None`` if unknown."""
        return None if self.shape is None else len(self.shape)

    @property
    def qparams(self) -> QuantParams:
        """The quantization of a quantized type (a ``VerifyError`` if the type has none)."""
        if self.quant is None:
            raise VerifyError(f"type {self} has no quantization where a quantized value was expected")
        return self.quant

    @property
    def is_static(self) -> bool:
        """Whether every dim is a known integer."""
        return self.static_shape is not None

    @property
    def static_shape(self) -> tuple[int, ...] | None:
        """The shape if every dim is a known integer, else ``None``."""
        return None if self.shape is None else static_dims(self.shape)

    def with_shape(self, shape: Shape | None) -> TensorType:
        """The same type with another shape."""
        return TensorType(self.dtype, shape, self.quant)

    def with_dtype(self, dtype: DType) -> TensorType:
        """The same type with another element type (quantization dropped)."""
        return TensorType(dtype, self.shape, None)

    @staticmethod
    def of(array: np.ndarray) -> TensorType:
        """The exact type of a concrete array."""
        return TensorType(DType.from_numpy(array.dtype), tuple(int(d) for d in array.shape))

    def accepts(self, array: np.ndarray) -> str | None:
        """Why ``array`` does not fit this type, or ``None`` if it does; symbolic dims match any size."""
        try:
            dt = DType.from_numpy(array.dtype)
        except KeyError:
            return f"element type {array.dtype} is not supported"
        if dt is not self.dtype and self.dtype.numpy != array.dtype:
            return f"element type {dt.value} where {self.dtype.value} was expected"
        if self.shape is None:
            return None
        if len(self.shape) != array.ndim:
            return f"rank {array.ndim} (shape {list(array.shape)}) where rank {len(self.shape)} was expected"
        for want, got in zip(self.shape, array.shape, strict=True):
            if isinstance(want, int) and want != got:
                return f"shape {list(array.shape)} where {format_shape(self.shape)} was expected"
        return None

    def __str__(self) -> str:
        return f"{self.dtype.value}{format_shape(self.shape)}"


def format_shape(shape: Shape | None) -> str:
    """``[N,3,224,224]``; ``[?]`` for an unknown dim, ``[*]`` for an unknown rank."""
    if shape is None:
        return "[*]"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


ONNX_DTYPE_CODES: dict[int, DType] = {
    1: DType.f32, 2: DType.u8, 3: DType.i8, 4: DType.u16, 5: DType.i16, 6: DType.i32, 7: DType.i64,
    8: DType.str, 9: DType.bool, 10: DType.f16, 11: DType.f64, 12: DType.u32, 13: DType.u64,
    16: DType.bf16, 21: DType.u4, 22: DType.i4,
}
"""cimc element types by ONNX ``TensorProto.DataType`` code (``Cast.to`` and the importer use
these codes; the IR keeps them because ops such as ``Cast`` carry them as attributes)."""

ONNX_CODE_OF_DTYPE: dict[DType, int] = {v: k for k, v in ONNX_DTYPE_CODES.items()}
"""The inverse of ``ONNX_DTYPE_CODES``."""

UNSUPPORTED_ONNX_DTYPES: dict[int, str] = {
    0: "undefined", 14: "complex64", 15: "complex128", 17: "float8e4m3fn", 18: "float8e4m3fnuz",
    19: "float8e5m2", 20: "float8e5m2fnuz", 23: "float4e2m1", 24: "float8e8m0", 25: "uint2",
    26: "int2", 27: "float6e2m3", 28: "float6e3m2",
}
"""ONNX element types cimc has no type for, by code."""


def dtype_from_onnx_code(code: int, where: str = "") -> DType:
    """The cimc type of ONNX element-type ``code``; an ``UnsupportedOpError`` naming it otherwise."""
    from cimc.errors import UnsupportedOpError

    if int(code) in ONNX_DTYPE_CODES:
        return ONNX_DTYPE_CODES[int(code)]
    name = UNSUPPORTED_ONNX_DTYPES.get(int(code), f"code {code}")
    have = ", ".join(d.value for d in ONNX_DTYPE_CODES.values())
    raise UnsupportedOpError(f"{where + ': ' if where else ''}element type {name} is not supported "
                             f"(cimc has {have})")
