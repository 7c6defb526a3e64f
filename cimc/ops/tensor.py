"""Built-in ops: tensor layout and shape ops (newest ONNX schemas).

Concat, Split, Slice, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Gather, Shape,
ConstantOfShape, Expand, Cast, Identity, Dropout and Pad. Implementations are plain numpy indexing,
reshaping and ``np.pad``; results may be views of their operands (no op writes into its operands).

Type rules read constant operands (``shape``, ``starts``/``ends``, ``axes``, ``pads``...) where the
result shape depends on them; when such an operand is not constant the rank is kept where it is
still known and the affected dims become ``None``. Symbolic dims pass through wherever the result
dim is provably the same (a copied dim, a full slice, a ``-1`` in Reshape that cancels to one
named dim). Ops that only move values keep per-tensor quantization parameters.

Shape operands computed at run time (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, as the
TorchScript exporter writes them) are read element by element: ``Shape``, ``Gather``, ``Slice``,
``Concat``, ``Squeeze``, ``Unsqueeze``, ``Reshape``, ``Cast``, ``Identity`` and ``ConstantOfShape`` have value
rules (``OpDef.value``) that carry each element of such a vector as a known int, a symbolic dim or
unknown, and ``Reshape``, ``Expand`` and ``ConstantOfShape`` take their result dims from what is known
(``InferContext.value``); an operand whose every element is known counts as a constant everywhere.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import overload

import numpy as np

from cimc.errors import CimcError, VerifyError
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, define_op
from cimc.ir.types import (
    Dim,
    DType,
    Shape,
    ShapeValue,
    TensorType,
    dim_factors,
    dim_product,
    dtype_from_onnx_code,
    static_dims,
)
from cimc.ops._infer import broadcast_shapes, dim_add, normalize_axis, require
from cimc.ops._values import fit_dtype

INT_MAX = 2**31 - 1


# ---- helpers ------------------------------------------------------------------------------------
def _where(ctx: InferContext) -> str:
    return f"node {ctx.node.name!r} ({ctx.node.op})"


def _moved(t: TensorType, shape: Shape | None) -> TensorType:
    """Type of values moved (not changed) out of ``t``: per-tensor quantization survives."""
    quant = t.quant if t.quant is not None and not t.quant.per_channel else None
    return TensorType(t.dtype, shape, quant)


def _int_operand(ctx: InferContext, index: int) -> None:
    """An error unless operand ``index`` (a shape, axes or indices), if present, is of an integer type."""
    t = ctx.types[index] if index < len(ctx.types) else None
    if t is not None and not t.dtype.is_int:
        raise VerifyError(f"{_where(ctx)}: operand {index} holds a shape, axes or indices, so it must be of an "
                          f"integer type (i64), not {t}")


def _ints(ctx: InferContext, index: int) -> list[int] | None:
    """A constant integer operand as python ints (``None`` if absent or not constant)."""
    if not ctx.has(index):
        return None
    _int_operand(ctx, index)
    c = ctx.const(index)
    return None if c is None else [int(v) for v in np.asarray(c).reshape(-1)]


def _operand_len(ctx: InferContext, index: int) -> int | None:
    """The static length of a 1-D integer operand, if known."""
    _int_operand(ctx, index)
    t = ctx.types[index] if index < len(ctx.types) else None
    if t is None or t.shape is None or len(t.shape) != 1 or not isinstance(t.shape[0], int):
        return None
    return t.shape[0]


def _dim_prod(dims: Sequence[Dim]) -> Dim:
    """Product of dims: exact when all are ints, the dim itself when the others are all 1."""
    if any(d == 0 for d in dims):
        return 0
    rest = [d for d in dims if d != 1]
    if len(rest) == 1:
        return rest[0]
    ints = static_dims(rest)
    return math.prod(ints) if ints is not None else None


def _merge(a: Dim, b: Dim, what: str) -> Dim:
    """Two dims that must be equal: the more precise one; an error if both are known and differ."""
    if isinstance(a, int) and isinstance(b, int) and a != b:
        raise VerifyError(f"{what}: {a} != {b}")
    if isinstance(a, int) or a is None:
        return a if a is not None else b
    return b if isinstance(b, int) else a


def _axes(axes: Sequence[int], rank: int, what: str) -> list[int]:
    out = [normalize_axis(a, rank, what) for a in axes]
    if len(set(out)) != len(out):
        raise VerifyError(f"{what} {list(axes)} repeat an axis (rank {rank})")
    return out


@overload
def _vector(a: np.ndarray) -> list[int]: ...
@overload
def _vector(a: np.ndarray | None) -> list[int] | None: ...
def _vector(a: np.ndarray | None) -> list[int] | None:
    """The integers of an index operand, flattened (``None`` for an absent or unknown one)."""
    return None if a is None else [int(v) for v in np.asarray(a).reshape(-1)]


# ---- Concat -------------------------------------------------------------------------------------
def _concat_type(ctx: InferContext) -> list[TensorType]:
    types = [require(ctx, i) for i in range(len(ctx.types))]
    dtypes = {t.dtype for t in types}
    if len(dtypes) > 1:
        raise VerifyError(f"{_where(ctx)}: operands have different element types "
                          f"{sorted(d.value for d in dtypes)}; insert a Cast")
    same_quant = len({t.quant for t in types}) == 1
    base = _moved(types[0], None) if same_quant else TensorType(types[0].dtype, None)
    shapes = [t.shape for t in types if t.shape is not None]
    if not shapes:
        return [base]
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes):
        ranks = [len(s) for s in shapes]
        raise VerifyError(f"{_where(ctx)}: operands have different ranks {ranks}")
    axis = normalize_axis(ctx.attrs["axis"], rank, f"{_where(ctx)}: axis")
    out: list[Dim] = []
    for i in range(rank):
        if i == axis:
            dims = [None if t.shape is None else t.shape[axis] for t in types]
            nonzero = [d for d in dims if d != 0]
            ints = static_dims(nonzero)
            out.append(0 if not nonzero else nonzero[0] if len(nonzero) == 1 else
                       sum(ints) if ints is not None else None)
        else:
            d: Dim = None
            for s in shapes:
                d = _merge(d, s[i], f"{_where(ctx)}: dim {i} of the operands differs")
            out.append(d)
    return [TensorType(base.dtype, tuple(out), base.quant)]


def _concat_value(ctx: InferContext) -> ShapeValue | None:
    parts = [ctx.value(i) for i in range(len(ctx.types))]
    if ctx.attrs["axis"] not in (0, -1) or any(p is None or p.scalar for p in parts):
        return None
    return ShapeValue(tuple(d for p in parts if p is not None for d in p.elems))


@define_op("Concat", infer=_concat_type, inputs=(1, None), value=_concat_value,
           attrs={"axis": AttrSpec("int", REQUIRED, "axis to join along; negative counts back")})
def concat(ctx, *xs):
    """Join tensors along ``axis``; all other dims must agree."""
    return np.concatenate(xs, axis=ctx.attrs["axis"])


# ---- Split --------------------------------------------------------------------------------------
def _split_sizes(dim: int, n: int, where: str) -> list[int]:
    """ONNX opset-18 ``num_outputs`` split: chunks of ceil(dim/n), the last one smaller."""
    if n < 1:
        raise VerifyError(f"{where}: num_outputs must be positive, is {n}")
    chunk = -(-dim // n)
    last = dim - chunk * (n - 1)
    if last < 0:
        raise VerifyError(f"{where}: cannot split a dim of {dim} into {n} chunks of {chunk} "
                          f"(the last would be {last}); give the sizes in the 'split' operand")
    return [chunk] * (n - 1) + [last]


def _split_type(ctx: InferContext) -> list[TensorType]:
    t, n = require(ctx, 0), ctx.num_outputs
    where = _where(ctx)
    if ctx.has(1) and ctx.attrs.get("num_outputs") is not None:
        raise VerifyError(f"{where}: give either the 'split' operand or the 'num_outputs' "
                          "attribute, not both")
    if ctx.attrs.get("num_outputs") is not None and ctx.attrs["num_outputs"] != n:
        raise VerifyError(f"{where}: num_outputs is {ctx.attrs['num_outputs']} but the node has "
                          f"{n} results")
    if t.shape is None:
        return [_moved(t, None)] * n
    axis = normalize_axis(ctx.attrs["axis"], len(t.shape), f"{where}: axis")
    dim = t.shape[axis]
    sizes: list[Dim]
    split = _ints(ctx, 1)
    if split is not None:
        if len(split) != n or any(s < 0 for s in split):
            raise VerifyError(f"{where}: split sizes {split} must be {n} non-negative numbers "
                              "(one per result)")
        if isinstance(dim, int) and sum(split) != dim:
            raise VerifyError(f"{where}: split sizes {split} sum to {sum(split)}, "
                              f"not to dim {axis} = {dim}")
        sizes = list(split)
    elif ctx.has(1) or not isinstance(dim, int):
        sizes = [None] * n
    else:
        sizes = list(_split_sizes(dim, n, where))
    return [_moved(t, (*t.shape[:axis], s, *t.shape[axis + 1:])) for s in sizes]


@define_op("Split", infer=_split_type, inputs=(1, 2), outputs=(1, None),
           attrs={"axis": AttrSpec("int", 0, "axis to split along"),
                  "num_outputs": AttrSpec("int", None, "this many equal chunks (last smaller)")})
def split(ctx, x, sizes=None):
    """Split ``x`` along ``axis`` into pieces of the ``split`` sizes, or into equal chunks."""
    axis = ctx.attrs["axis"] % x.ndim
    if sizes is None:
        n = ctx.attrs.get("num_outputs") or ctx.num_outputs
        sizes = _split_sizes(x.shape[axis], n, "Split")
    sizes = _vector(sizes)
    if sum(sizes) != x.shape[axis] or any(s < 0 for s in sizes):
        raise CimcError(f"split sizes {sizes} do not add up to dim {axis} of shape {list(x.shape)}")
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


# ---- Slice --------------------------------------------------------------------------------------
def _slice_axis(dim: int, start: int, end: int, step: int) -> tuple[slice, int]:
    """ONNX's clamping of one axis' start/end/step to a python slice, and the result length."""
    if step == 0:
        raise CimcError("slice step is 0")
    start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        n = max(0, -(-(end - start) // step))
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        n = max(0, -(-(start - end) // -step))
    return slice(start, None if end < 0 else end, step), n


def _whole(start: int, end: int, step: int) -> bool:
    """Whether a slice keeps a whole axis of any size (so a symbolic dim survives it)."""
    if step == 1:
        return (start == 0 or start <= -INT_MAX) and end >= INT_MAX
    return step == -1 and start >= INT_MAX and end <= -INT_MAX


def _slice_spec(rank: int, starts: list[int], ends: list[int], axes: list[int] | None,
                steps: list[int] | None) -> list[tuple[int, int, int, int]]:
    """(axis, start, end, step) per sliced axis, checked."""
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise VerifyError(f"starts, ends, axes and steps have different lengths "
                          f"({len(starts)}, {len(ends)}, {len(axes)}, {len(steps)})")
    if any(s == 0 for s in steps):
        raise VerifyError(f"slice steps {steps} contain 0")
    axes = _axes(axes, rank, "slice axes")
    return list(zip(axes, starts, ends, steps, strict=True))


def _slice_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    if t.shape is None:
        return [_moved(t, None)]
    rank = len(t.shape)
    starts, ends = _ints(ctx, 1), _ints(ctx, 2)
    axes, steps = _ints(ctx, 3), _ints(ctx, 4)
    if ctx.has(3) and axes is None:
        return [_moved(t, (None,) * rank)]
    if starts is None or ends is None or (ctx.has(4) and steps is None):
        n = _operand_len(ctx, 1)
        touched = set(range(rank if n is None else n)) if axes is None else \
            set(_axes(axes, rank, "slice axes"))
        return [_moved(t, tuple(None if i in touched else d for i, d in enumerate(t.shape)))]
    try:
        spec = _slice_spec(rank, starts, ends, axes, steps)
    except VerifyError as e:
        raise VerifyError(f"{_where(ctx)}: {e}") from None
    shape = list(t.shape)
    for axis, start, end, step in spec:
        dim = shape[axis]
        if isinstance(dim, int):
            shape[axis] = _slice_axis(dim, start, end, step)[1]
        elif not _whole(start, end, step):
            shape[axis] = None
    return [_moved(t, tuple(shape))]


def _slice_value(ctx: InferContext) -> ShapeValue | None:
    data = ctx.value(0)
    starts, ends, axes, steps = (_ints(ctx, i) for i in range(1, 5))
    if data is None or data.scalar or starts is None or ends is None or (ctx.has(3) and axes is None) \
            or (ctx.has(4) and steps is None):
        return None
    axes, steps = axes or [0], steps or [1]
    if any(len(p) != 1 for p in (starts, ends, axes, steps)) or axes[0] not in (0, -1) or steps[0] == 0:
        return None
    return ShapeValue(data.elems[_slice_axis(len(data.elems), starts[0], ends[0], steps[0])[0]])


@define_op("Slice", infer=_slice_type, inputs=(3, 5), value=_slice_value)
def slice_(ctx, x, starts, ends, axes=None, steps=None):
    """``x[start:end:step]`` on the given axes, with ONNX's clamping of out-of-range bounds."""
    index = [slice(None)] * x.ndim
    for axis, start, end, step in _slice_spec(x.ndim, _vector(starts), _vector(ends), _vector(axes),
                                              _vector(steps)):
        index[axis] = _slice_axis(x.shape[axis], start, end, step)[0]
    return x[tuple(index)]


# ---- Reshape, Flatten ---------------------------------------------------------------------------
def _reshape_dims(src: Shape | None, spec: Sequence[Dim], allowzero: bool) -> Shape:
    """The result shape of Reshape for a ``spec`` known when compiling, symbolic dims carried where exact.

    A ``spec`` computed from shapes may hold symbolic names (a result dim of that size) and unknown
    elements (an unknown result dim, which also keeps a ``-1`` elsewhere from cancelling)."""
    ints = [s for s in spec if isinstance(s, int)]
    if ints.count(-1) > 1 or any(s < -1 for s in ints):
        raise VerifyError(f"shape {list(spec)} may hold at most one -1 and no other negative number")
    if allowzero and -1 in ints and 0 in ints:
        raise VerifyError(f"shape {spec} holds both 0 and -1, which allowzero=1 makes ambiguous")
    out: list[Dim] = []
    copied: dict[int, int] = {}  # output position -> input position it copies
    for i, s in enumerate(spec):
        if s == 0 and not allowzero:
            if src is not None and i >= len(src):
                raise VerifyError(f"shape {spec} copies dim {i} (0) of a rank-{len(src)} input")
            out.append(None if src is None else src[i])
            copied[i] = i
        else:
            out.append(s)
    if -1 in ints:
        at = list(spec).index(-1)
        out[at] = None if src is None else _infer_minus_one(src, out, at, copied)
    elif src is not None and (n_src := static_dims(src)) is not None and (n_out := static_dims(out)) is not None:
        if math.prod(n_src) != math.prod(n_out):
            raise VerifyError(f"cannot reshape {list(src)} ({math.prod(n_src)} elements) to {out}")
    return tuple(out)


def _factors(dims: Sequence[Dim], positions: Sequence[object]) -> tuple[int, Counter]:
    """The product of ``dims`` as a number and named factors (a product dim such as ``16*N`` split into
    them); an unknown dim is a factor of its own, named by its position."""
    coef, names = 1, Counter[tuple[str, object]]()
    for d, pos in zip(dims, positions, strict=True):
        if d is None:
            names[("pos", pos)] += 1
            continue
        c, named = dim_factors(d)
        coef *= c
        for name, count in named.items():
            names[("name", name)] += count
    return coef, names


def _infer_minus_one(src: Shape, out: list[Dim], at: int, copied: dict[int, int]) -> Dim:
    """The -1 dim: the input's element count over the other output dims, cancelling named dims; what
    is left of them stays a product (``[N,4,4,16]`` to ``[-1,16]`` is ``[16*N,16]``)."""
    num_coef, num = _factors(src, range(len(src)))
    others = [i for i in range(len(out)) if i != at]
    den_coef, den = _factors([out[i] for i in others], [copied.get(i, ("out", i)) for i in others])
    if den - num or den_coef == 0:
        return None
    rest = num - den
    if num_coef % den_coef:
        if not rest:
            raise VerifyError(f"cannot reshape {list(src)} so that the dims other than -1 are "
                              f"{[d for i, d in enumerate(out) if i != at]}: the element count "
                              f"{num_coef} is not a multiple of {den_coef}")
        return None
    coef = num_coef // den_coef
    if not rest:
        return coef
    if any(kind != "name" for kind, _ in rest):
        return None
    return dim_product(coef, {str(name): count for (_, name), count in rest.items()})


def _reshape_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    _int_operand(ctx, 1)
    known = ctx.value(1)
    spec = None if known is None or known.scalar else known.elems
    if spec is None:
        n = _operand_len(ctx, 1)
        return [_moved(t, None if n is None else (None,) * n)]
    try:
        return [_moved(t, _reshape_dims(t.shape, spec, bool(ctx.attrs["allowzero"])))]
    except VerifyError as e:
        raise VerifyError(f"{_where(ctx)}: {e}") from None


def _reshape_value(ctx: InferContext) -> ShapeValue | None:
    data, spec = ctx.value(0), _ints(ctx, 1)
    if data is None or spec is None or len(spec) > 1:
        return None
    n = len(data.elems)
    if spec == [] and n == 1:
        return ShapeValue(data.elems, True)
    copy = spec == [0] and not ctx.attrs["allowzero"] and not data.scalar
    return ShapeValue(data.elems) if spec in ([-1], [n]) or copy else None


@define_op("Reshape", infer=_reshape_type, inputs=2, value=_reshape_value,
           attrs={"allowzero": AttrSpec("int", 0, "1: a 0 in shape is a 0 dim, not a copied dim")})
def reshape(ctx, x, shape):
    """``x`` with a new shape; 0 copies the input dim (unless allowzero), -1 is inferred."""
    spec = _vector(shape)
    if not ctx.attrs["allowzero"]:
        spec = [x.shape[i] if s == 0 else s for i, s in enumerate(spec)]
    return np.reshape(x, spec)


def _flatten_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    if t.shape is None:
        return [_moved(t, (None, None))]
    rank = len(t.shape)
    axis = ctx.attrs["axis"]
    if not -rank <= axis <= rank:
        raise VerifyError(f"{_where(ctx)}: axis {axis} is out of range [{-rank}, {rank}]")
    axis += rank if axis < 0 else 0
    return [_moved(t, (_dim_prod(t.shape[:axis]), _dim_prod(t.shape[axis:])))]


@define_op("Flatten", infer=_flatten_type,
           attrs={"axis": AttrSpec("int", 1, "dims before it form the rows, the rest the columns")})
def flatten(ctx, x):
    """``x`` as a matrix ``[prod(dims[:axis]), prod(dims[axis:])]``."""
    axis = ctx.attrs["axis"] + (x.ndim if ctx.attrs["axis"] < 0 else 0)
    return np.reshape(x, (math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))


# ---- Transpose, Squeeze, Unsqueeze --------------------------------------------------------------
def _perm(perm: Sequence[int] | None, rank: int) -> list[int]:
    if perm is None:
        return list(range(rank))[::-1]
    if sorted(perm) != list(range(rank)):
        raise VerifyError(f"perm {list(perm)} is not a permutation of the {rank} axes")
    return list(perm)


def _transpose_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    if t.shape is None:
        return [_moved(t, None if ctx.attrs["perm"] is None else (None,) * len(ctx.attrs["perm"]))]
    try:
        perm = _perm(ctx.attrs["perm"], len(t.shape))
    except VerifyError as e:
        raise VerifyError(f"{_where(ctx)}: {e}") from None
    return [_moved(t, tuple(t.shape[p] for p in perm))]


@define_op("Transpose", infer=_transpose_type,
           attrs={"perm": AttrSpec("ints", None,
                                   "result axis i is input axis perm[i]; default reverses")})
def transpose(ctx, x):
    """Permute the axes of ``x``."""
    return np.transpose(x, _perm(ctx.attrs["perm"], x.ndim))


def _squeeze_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    axes = _ints(ctx, 1)
    if t.shape is None:
        return [_moved(t, None)]
    rank = len(t.shape)
    if not ctx.has(1):
        if any(not isinstance(d, int) for d in t.shape):
            return [_moved(t, None)]  # a symbolic dim may or may not be 1
        return [_moved(t, tuple(d for d in t.shape if d != 1))]
    if axes is None:
        n = _operand_len(ctx, 1)
        return [_moved(t, None if n is None else (None,) * (rank - n))]
    axes = _axes(axes, rank, f"{_where(ctx)}: squeeze axes")
    bad = [a for a in axes if isinstance(t.shape[a], int) and t.shape[a] != 1]
    if bad:
        raise VerifyError(f"{_where(ctx)}: cannot squeeze axis {bad[0]} of shape {list(t.shape)}: "
                          f"its size is {t.shape[bad[0]]}, not 1")
    return [_moved(t, tuple(d for i, d in enumerate(t.shape) if i not in axes))]


def _squeeze_value(ctx: InferContext) -> ShapeValue | None:
    data = ctx.value(0)
    if data is None or data.scalar or len(data.elems) != 1 or _ints(ctx, 1) not in (None, [0], [-1]) \
            or (ctx.has(1) and ctx.const(1) is None):
        return None
    return ShapeValue(data.elems, True)


@define_op("Squeeze", infer=_squeeze_type, inputs=(1, 2), value=_squeeze_value)
def squeeze(ctx, x, axes=None):
    """Remove the given size-1 axes (all size-1 axes when ``axes`` is absent)."""
    if axes is None:
        return np.squeeze(x)
    axes = _axes(_vector(axes), x.ndim, "squeeze axes")
    if any(x.shape[a] != 1 for a in axes):
        raise CimcError(f"cannot squeeze axes {axes} of shape {list(x.shape)}: "
                        "not all are of size 1")
    return np.squeeze(x, axis=tuple(axes))


def _unsqueeze_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    axes = _ints(ctx, 1)
    if axes is None:
        n = _operand_len(ctx, 1)
        return [_moved(t, None if n is None or t.shape is None else (None,) * (len(t.shape) + n))]
    if t.shape is None:
        return [_moved(t, None)]
    rank = len(t.shape) + len(axes)
    axes = _axes(axes, rank, f"{_where(ctx)}: unsqueeze axes")
    dims = iter(t.shape)
    return [_moved(t, tuple(1 if i in axes else next(dims) for i in range(rank)))]


def _unsqueeze_value(ctx: InferContext) -> ShapeValue | None:
    data = ctx.value(0)
    return ShapeValue(data.elems) if data is not None and data.scalar and _ints(ctx, 1) in ([0], [-1]) else None


@define_op("Unsqueeze", infer=_unsqueeze_type, inputs=2, value=_unsqueeze_value)
def unsqueeze(ctx, x, axes):
    """Insert size-1 axes at the given positions of the result."""
    axes = _axes(_vector(axes), x.ndim + np.asarray(axes).size, "unsqueeze axes")
    return np.expand_dims(x, tuple(axes))


# ---- Gather, Shape, ConstantOfShape, Expand -----------------------------------------------------
def _gather_type(ctx: InferContext) -> list[TensorType]:
    t, idx = require(ctx, 0), require(ctx, 1)
    if idx.dtype not in (DType.i32, DType.i64):
        raise VerifyError(f"{_where(ctx)}: indices must be i32 or i64, not {idx.dtype.value}")
    if t.shape is None or idx.shape is None:
        return [_moved(t, None)]
    axis = normalize_axis(ctx.attrs["axis"], len(t.shape), f"{_where(ctx)}: axis")
    return [_moved(t, t.shape[:axis] + idx.shape + t.shape[axis + 1:])]


def _gather_value(ctx: InferContext) -> ShapeValue | None:
    data, idx = ctx.value(0), ctx.const(1)
    if data is None or data.scalar or idx is None or idx.ndim > 1 or ctx.attrs["axis"] not in (0, -1):
        return None
    n, picks = len(data.elems), [int(i) for i in idx.reshape(-1)]
    if any(not -n <= i < n for i in picks):
        return None
    return ShapeValue(tuple(data.elems[i] for i in picks), idx.ndim == 0)


@define_op("Gather", infer=_gather_type, inputs=2, value=_gather_value,
           attrs={"axis": AttrSpec("int", 0, "axis of data the indices select along")})
def gather(ctx, data, indices):
    """``data`` indexed along ``axis`` by ``indices`` (negative indices count from the end)."""
    axis = ctx.attrs["axis"] % data.ndim
    n = data.shape[axis]
    if indices.size and (indices.min() < -n or indices.max() >= n):
        raise CimcError(f"gather indices range over [{indices.min()}, {indices.max()}], outside "
                        f"[{-n}, {n - 1}] for axis {axis} of shape {list(data.shape)}")
    return np.take(data, indices, axis=axis)


def _shape_range(rank: int, start: int, end: int | None) -> range:
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = rank if end is None else min(max(end + rank if end < 0 else end, 0), rank)
    return range(start, max(start, end))


def _shape_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    if t.shape is None:
        return [TensorType(DType.i64, (None,))]
    n = len(_shape_range(len(t.shape), ctx.attrs["start"], ctx.attrs["end"]))
    return [TensorType(DType.i64, (n,))]


def _shape_value(ctx: InferContext) -> ShapeValue | None:
    t = ctx.types[0]
    if t is None or t.shape is None:
        return None
    return ShapeValue(tuple(t.shape[i] for i in _shape_range(len(t.shape), ctx.attrs["start"], ctx.attrs["end"])))


@define_op("Shape", infer=_shape_type, value=_shape_value,
           attrs={"start": AttrSpec("int", 0, "first axis to report (clamped to [0, rank])"),
                  "end": AttrSpec("int", None, "axis after the last to report (default rank)")})
def shape(ctx, x):
    """The dims of ``x`` (those in ``[start, end)``) as a 1-D i64 tensor."""
    r = _shape_range(x.ndim, ctx.attrs["start"], ctx.attrs["end"])
    return np.asarray([x.shape[i] for i in r], dtype=np.int64)


def _fill_value(ctx_attrs) -> np.ndarray:
    value = ctx_attrs.get("value")
    if value is None:
        return np.zeros((), np.float32)
    value = np.asarray(value)
    if value.size != 1:
        raise VerifyError(f"ConstantOfShape value must hold one element, holds {value.size}")
    return value.reshape(())


def _constant_of_shape_type(ctx: InferContext) -> list[TensorType]:
    require(ctx, 0)
    try:
        dtype = DType.from_numpy(_fill_value(ctx.attrs).dtype)
    except VerifyError as e:
        raise VerifyError(f"{_where(ctx)}: {e}") from None
    _int_operand(ctx, 0)
    known = ctx.value(0)
    if known is None or known.scalar:
        n = _operand_len(ctx, 0)
        return [TensorType(dtype, None if n is None else (None,) * n)]
    if any(isinstance(d, int) and d < 0 for d in known.elems):
        raise VerifyError(f"{_where(ctx)}: shape {list(known.elems)} has a negative dim")
    return [TensorType(dtype, known.elems)]


def _constant_of_shape_value(ctx: InferContext) -> ShapeValue | None:
    dims, fill = _ints(ctx, 0), _fill_value(ctx.attrs)
    if dims is None or len(dims) > 1 or fill.dtype.kind not in "iub" or (dims and not 0 <= dims[0] <= 64):
        return None
    return ShapeValue((int(fill),) * (dims[0] if dims else 1), not dims)


@define_op("ConstantOfShape", infer=_constant_of_shape_type, value=_constant_of_shape_value,
           attrs={"value": AttrSpec("tensor", None, "one-element fill value; default f32 0")})
def constant_of_shape(ctx, shape):
    """A tensor of the given shape filled with ``value``."""
    return np.full(_vector(shape), _fill_value(ctx.attrs))


def _expand_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    _int_operand(ctx, 1)
    known = ctx.value(1)
    dims = None if known is None or known.scalar else known.elems
    if dims is None:
        n = _operand_len(ctx, 1)
        if n is None or t.shape is None:
            return [_moved(t, None)]
        rank = max(n, len(t.shape))
        src = (1,) * (rank - len(t.shape)) + t.shape
        return [_moved(t, tuple(d if isinstance(d, int) and d != 1 else None for d in src))]
    try:
        return [_moved(t, broadcast_shapes(t.shape, dims))]
    except VerifyError as e:
        raise VerifyError(f"{_where(ctx)}: cannot expand {t} to shape {list(dims)}: {e}") from None


@define_op("Expand", infer=_expand_type, inputs=2)
def expand(ctx, x, shape):
    """``x`` broadcast with ``shape`` (numpy rules in both directions, like ``x * ones(shape)``)."""
    return np.array(np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_vector(shape)))))


# ---- Cast, Identity, Dropout --------------------------------------------------------------------
def _cast_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    return [TensorType(dtype_from_onnx_code(ctx.attrs["to"], _where(ctx)), t.shape)]


def _cast(x: np.ndarray, to: DType) -> np.ndarray:
    """ONNX Cast: floats truncate toward zero into integers, integers wrap into narrower ones."""
    if to is DType.str:
        return np.vectorize(str, otypes=[object])(x) if x.size else x.astype(object)
    if x.dtype == object:  # numeric strings, "INF", "NaN"
        x = x.astype(np.float64)
    if to in (DType.i4, DType.u4):
        with np.errstate(invalid="ignore"):
            v = x.astype(np.int64)
        return (((v + 8) & 15) - 8).astype(np.int8) if to is DType.i4 else (v & 15).astype(np.uint8)
    if to.is_int and (x.dtype.kind == "f" or x.dtype.name == "bfloat16") and to.numpy.itemsize < 8:
        with np.errstate(invalid="ignore"):
            return x.astype(np.int64).astype(to.numpy)
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(to.numpy)


def _cast_value(ctx: InferContext) -> ShapeValue | None:
    data, to = ctx.value(0), dtype_from_onnx_code(ctx.attrs["to"])
    if data is None or not (to.is_int or to is DType.bool):
        return None
    if to is DType.bool:  # a named dim may be 0
        return ShapeValue(tuple(int(d != 0) if isinstance(d, int) else None for d in data.elems), data.scalar)
    return ShapeValue(tuple(fit_dtype(d, to) for d in data.elems), data.scalar)


@define_op("Cast", infer=_cast_type, value=_cast_value,
           attrs={"to": AttrSpec("int", REQUIRED, "ONNX element-type code (1 f32, 7 i64, ...)"),
                  "saturate": AttrSpec("int", 1, "float8 only (unsupported); ignored"),
                  "round_mode": AttrSpec("str", "up", "float8e8m0 only (unsupported); ignored")})
def cast(ctx, x):
    """``x`` converted to element type ``to``."""
    return _cast(x, dtype_from_onnx_code(ctx.attrs["to"]))


def _identity_type(ctx: InferContext) -> list[TensorType]:
    return [require(ctx, 0)]


@define_op("Identity", infer=_identity_type, value=lambda ctx: ctx.value(0))
def identity(ctx, x):
    """``x`` itself."""
    return x


def _dropout_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    return [t, TensorType(DType.bool, t.shape)][:ctx.num_outputs]


@define_op("Dropout", infer=_dropout_type, inputs=(1, 3), outputs=(1, 2),
           attrs={"seed": AttrSpec("int", None, "seed of the mask in training mode")})
def dropout(ctx, x, ratio=None, training_mode=None):
    """Inference: ``x`` (and an all-true mask). Training mode: zero a ``ratio`` of the elements
    at random and scale the rest by ``1/(1-ratio)`` (numpy's ``RandomState(seed)`` when ``seed`` is
    set, as ONNX's reference does; otherwise the run's seeded generator)."""
    ratio = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
    if training_mode is None or not np.asarray(training_mode).reshape(-1)[0] or ratio == 0:
        return (x, np.ones(x.shape, bool))[:ctx.num_outputs]
    if not 0 <= ratio < 1:
        raise CimcError(f"dropout ratio {ratio} is outside [0, 1)")
    seed = ctx.attrs["seed"]
    rng = np.random.RandomState(seed) if seed is not None else ctx.rng or np.random.default_rng(0)
    mask = rng.uniform(0.0, 1.0, x.shape) >= ratio
    return (mask * x * (1 / (1 - ratio))).astype(x.dtype), mask


# ---- Pad ----------------------------------------------------------------------------------------
_PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_widths(rank: int, pads: list[int], axes: list[int] | None) -> list[tuple[int, int]]:
    axes = list(range(rank)) if axes is None else _axes(axes, rank, "pad axes")
    if len(pads) != 2 * len(axes):
        raise VerifyError(f"pads {pads} must hold 2 numbers per padded axis ({2 * len(axes)})")
    widths = [(0, 0)] * rank
    for i, a in enumerate(axes):
        widths[a] = (pads[i], pads[i + len(axes)])
    return widths


def _pad_type(ctx: InferContext) -> list[TensorType]:
    t = require(ctx, 0)
    if ctx.attrs["mode"] not in _PAD_MODES:
        raise VerifyError(f"{_where(ctx)}: mode {ctx.attrs['mode']!r} is not one of "
                          f"{list(_PAD_MODES)}")
    if t.shape is None:
        return [_moved(t, None)]
    rank = len(t.shape)
    pads, axes = _ints(ctx, 1), _ints(ctx, 3)
    if pads is None or (ctx.has(3) and axes is None):
        touched = set(range(rank)) if axes is None else set(_axes(axes, rank, "pad axes"))
        return [_moved(t, tuple(None if i in touched else d for i, d in enumerate(t.shape)))]
    try:
        widths = _pad_widths(rank, pads, axes)
    except VerifyError as e:
        raise VerifyError(f"{_where(ctx)}: {e}") from None
    shape = tuple(d if lo + hi == 0 else dim_add(d, lo + hi)
                  for d, (lo, hi) in zip(t.shape, widths, strict=True))
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise VerifyError(f"{_where(ctx)}: pads {pads} crop {t} below zero size")
    return [_moved(t, shape)]


@define_op("Pad", infer=_pad_type, inputs=(2, 4),
           attrs={"mode": AttrSpec("str", "constant", "constant, reflect, edge or wrap")})
def pad(ctx, x, pads, constant_value=None, axes=None):
    """Pad (or, with negative pads, crop) ``x`` on the given axes; cropping happens first."""
    widths = _pad_widths(x.ndim, _vector(pads), _vector(axes))
    x = x[tuple(slice(max(-lo, 0), x.shape[i] - max(-hi, 0)) for i, (lo, hi) in enumerate(widths))]
    widths = [(max(lo, 0), max(hi, 0)) for lo, hi in widths]
    mode = ctx.attrs["mode"]
    if mode != "constant":
        if any(w != (0, 0) and n == 0 for w, n in zip(widths, x.shape, strict=True)):
            raise CimcError(f"{mode} padding of an empty axis (shape {list(x.shape)})")
        return np.pad(x, widths, mode=mode)
    value = (np.zeros((), x.dtype) if x.dtype != object else "") if constant_value is None else \
        np.asarray(constant_value).reshape(-1)[0]
    return np.pad(x, widths, mode="constant", constant_values=value)
