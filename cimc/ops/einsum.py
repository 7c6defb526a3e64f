"""Built-in op: ``Einsum`` (Einstein summation, numpy's equation syntax with ``...``).

The type rule parses the equation: each operand's letters name its dims (``...`` the broadcast
leading ones); the output is the right-hand side, or without ``->`` the letters used once, sorted,
after ``...``. The implementation is ``np.einsum`` with ``optimize=True`` (pairwise contractions
through BLAS); float16/bfloat16 operands compute in float32 (float64 under
:func:`cimc.ops.nn.reproducible_floats`) and round once; integers stay in their type and wrap like C.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from cimc.errors import VerifyError
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, define_op
from cimc.ir.types import Dim, TensorType
from cimc.ops._infer import broadcast_shapes, require
from cimc.ops.nn import float_compute_dtype


def parse(equation: str, ranks: list[int | None]) -> tuple[list[str], str]:
    """The operand terms and the output term of ``equation`` (implicit output made explicit);
    ``...`` is kept as ``.`` (one character)."""
    eq = equation.replace(" ", "").replace("...", ".")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise VerifyError(f"einsum equation {equation!r} names {len(terms)} operands, the node has {len(ranks)}")
    for term, rank in zip(terms, ranks, strict=True):
        letters = term.replace(".", "")
        if rank is not None and (("." not in term and len(letters) != rank) or len(letters) > rank):
            raise VerifyError(f"einsum term {term!r} does not fit an operand of rank {rank}")
    if not arrow:
        counts = Counter(c for t in terms for c in t if c != ".")
        rhs = ("." if any("." in t for t in terms) else "") + "".join(sorted(c for c, n in counts.items() if n == 1))
    return terms, rhs


def _einsum_type(ctx: InferContext) -> list[TensorType]:
    types = [require(ctx, i) for i in range(len(ctx.types))]
    if len({t.dtype for t in types}) != 1:
        raise VerifyError(f"node {ctx.node.name!r} (Einsum): operands have different element types")
    terms, rhs = parse(ctx.attrs["equation"], [t.rank for t in types])
    dims: dict[str, Dim] = {}
    ellipses = []
    for term, t in zip(terms, types, strict=True):
        if t.shape is None:
            return [TensorType(types[0].dtype, None)]
        n_ell = len(t.shape) - len(term.replace(".", ""))
        pos = 0
        for c in term:
            if c == ".":
                ellipses.append(t.shape[pos:pos + n_ell])
                pos += n_ell
                continue
            d = t.shape[pos]
            pos += 1
            if isinstance(d, int) and d != 1 and isinstance(dims.get(c), int) and dims[c] not in (1, d):
                raise VerifyError(f"node {ctx.node.name!r} (Einsum): dim {c!r} is {dims[c]} and {d}")
            if c not in dims or dims[c] == 1 or dims[c] is None:
                dims[c] = d
    ell = broadcast_shapes(*ellipses) if ellipses else ()
    out: list[Dim] = []
    for c in rhs:
        out.extend(ell if c == "." else (dims[c],))
    return [TensorType(types[0].dtype, tuple(out))]


@define_op("Einsum", inputs=(1, None), infer=_einsum_type,
           attrs={"equation": AttrSpec("str", REQUIRED, "the Einstein summation, e.g. 'bij,bjk->bik'")})
def einsum(ctx, *xs):
    """Sum of products over the equation's repeated letters."""
    eq = ctx.attrs["equation"].replace(" ", "")
    if xs[0].dtype.kind in "iub":
        return np.asarray(np.einsum(eq, *xs, optimize=True)).astype(xs[0].dtype, copy=False)
    dt = float_compute_dtype(xs[0].dtype)
    out = np.einsum(eq, *(x.astype(dt, copy=False) for x in xs), optimize=True)
    return np.asarray(out).astype(xs[0].dtype, copy=False)
