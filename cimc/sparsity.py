"""CIM block geometry for structured sparsity: how a weight sits on arrays, and its pruning units.

A prunable node's constant weight is viewed as the matrices a CIM array holds, ``m[g, k, n]``:
``g`` the group (conv groups, or the flattened leading dims of a batched MatMul ``B``; else 0),
``k`` the reduction row (a word line) and ``n`` the group's output channel (a column group):

- ``Conv``: W ``[Cout, Cin/G, *kernel]``; rows are ``(cin, kh, kw, ...)`` in im2col order,
  columns the ``Cout/G`` output channels of group ``g`` (global channel ``g*Cout/G + n``);
- ``ConvTranspose``: W ``[Cin, Cout/G, *kernel]``; the matrix of the equivalent convolution:
  rows ``(cin, kh, kw, ...)`` of the flipped kernel (row ``kh`` holds ``W[.., KH-1-kh, ..]``),
  columns the group's ``Cout/G`` output channels;
- ``Gemm``: B ``[K, N]`` (``[N, K]`` when ``transB=1``); ``MatMul``: B ``[..., K, N]``.

:class:`Geometry` tiles the ``K`` rows onto arrays of ``array_rows`` rows (row tiles) and each
tile into row blocks of ``rows_per_op`` rows (the word lines switched on together; the last
block of a tile may be shorter, and no block straddles two tiles). Columns are cut into column
groups of ``group_channels`` output channels (the last may be narrower). A *block* is one row
block of one column group of one group, indexed ``(g, b, c)`` where ``b = tile * ceil(array_rows
/ rows_per_op) + block within the tile``, so ``b`` counts blocks tile by tile from 0 without gaps
(:meth:`Geometry.block_rows` gives its rows). A *channel* is one output column ``(g, n)``,
numbered ``g * N + n``. A *unit* is a block or a channel, by the granularity.

:func:`prune_mask` picks units in increasing order of their mean squared weight (L2 norm squared
over unit size, so the smaller edge blocks compete fairly per weight; ties by unit index) until
the weights in them reach ``ceil(ratio * size)``; :func:`refit` zeroes them and refits the kept
weights by least squares; :func:`zero_blocks` / :func:`zero_channels` list exactly the all-zero
units of a matrix. :func:`input_rows` gives the rows a node's matrix multiplies (im2col) and
:func:`grams` their second moments, which :func:`refit` needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cimc.errors import CimcError
from cimc.ir.core import Node
from cimc.ir.opdef import OpContext, is_annotation, lookup

__all__ = ["Geometry", "WeightView", "bias_matrix", "expand", "grams", "input_rows", "prune",
           "prune_mask", "refit", "require_view", "unit_stats", "weight_view", "zero_blocks", "zero_channels",
           "zero_count"]

Granularity = Literal["block", "channel"]


@dataclass(frozen=True)
class Geometry:
    """Array geometry the pruning units align to (option names as the ``sparsify`` pass spells them)."""

    rows_per_op: int = 16
    array_rows: int = 256
    group_channels: int = 32

    def __post_init__(self) -> None:
        if self.array_rows < 1:
            raise CimcError(f"array-rows={self.array_rows} must be >= 1 (rows of one CIM array)")
        if not 1 <= self.rows_per_op <= self.array_rows:
            raise CimcError(f"rows-per-op={self.rows_per_op} must be between 1 and array-rows="
                            f"{self.array_rows} (word lines switched on together within one array)")
        if self.group_channels < 1:
            raise CimcError(f"group-channels={self.group_channels} must be >= 1 (output channels "
                            "sharing one array's columns)")

    @property
    def blocks_per_tile(self) -> int:
        """Row blocks in one full row tile."""
        return -(-self.array_rows // self.rows_per_op)

    def row_starts(self, rows: int) -> np.ndarray:
        """First row of every row block of a ``rows``-row matrix, in block order."""
        k = np.arange(rows)
        return np.flatnonzero(k % self.array_rows % self.rows_per_op == 0)

    def col_starts(self, cols: int) -> np.ndarray:
        """First output channel of every column group of a ``cols``-column matrix."""
        return np.arange(0, cols, self.group_channels)

    def block_rows(self, b: int, rows: int) -> tuple[int, int]:
        """Row range ``[start, end)`` of row block ``b`` of a ``rows``-row matrix."""
        tile, j = divmod(b, self.blocks_per_tile)
        start = tile * self.array_rows + j * self.rows_per_op
        return start, min(start + self.rows_per_op, (tile + 1) * self.array_rows, rows)


@dataclass(frozen=True)
class WeightView:
    """How one node's constant weight operand is laid out as ``[groups, rows, cols]`` matrices."""

    op: str
    operand: int
    shape: tuple[int, ...]
    groups: int
    rows: int
    cols: int
    transposed: bool = False  # Gemm with transB=1

    @property
    def size(self) -> int:
        """Number of weights."""
        return self.groups * self.rows * self.cols

    def to_matrix(self, w: np.ndarray) -> np.ndarray:
        """The weight as ``[groups, rows, cols]`` matrices (a view or copy; never modify it)."""
        G, K, N = self.groups, self.rows, self.cols
        if self.op == "Conv":
            return w.reshape(G, N, K).transpose(0, 2, 1)
        if self.op == "ConvTranspose":
            flipped = np.flip(w, axis=tuple(range(2, w.ndim)))
            spatial = math.prod(w.shape[2:])
            return flipped.reshape(G, K // spatial, N, spatial).transpose(0, 1, 3, 2).reshape(G, K, N)
        return (w.T if self.transposed else w).reshape(G, K, N)

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_matrix`: ``[groups, rows, cols]`` back to the weight's shape."""
        G, K, N = self.groups, self.rows, self.cols
        if self.op == "Conv":
            return m.transpose(0, 2, 1).reshape(self.shape)
        if self.op == "ConvTranspose":
            spatial = math.prod(self.shape[2:])
            w = m.reshape(G, K // spatial, spatial, N).transpose(0, 1, 3, 2).reshape(self.shape)
            return np.flip(w, axis=tuple(range(2, w.ndim)))
        return m.reshape(K, N).T if self.transposed else m.reshape(self.shape)


def weight_view(node: Node) -> WeightView | str:
    """The matrix view of ``node``'s constant weight, or why the node has none to prune."""
    if node.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return f"{node.op} has no weight this pass prunes"
    w = node.inputs[1].const if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if w is None:
        return "its weight (operand 1) is not a constant"
    if w.dtype.kind not in "fiu":
        return f"its weight has element type {w.dtype}, not a number"
    if node.op in ("Conv", "ConvTranspose"):
        group = int(node.attrs.get("group", 1))
        if w.ndim < 3 or w.shape[0] % group:
            return f"its weight {list(w.shape)} does not fit group={group}"
        spatial = math.prod(w.shape[2:])
        if node.op == "Conv":
            return WeightView("Conv", 1, w.shape, group, w.shape[1] * spatial, w.shape[0] // group)
        return WeightView("ConvTranspose", 1, w.shape, group, w.shape[0] // group * spatial, w.shape[1])
    if node.op == "Gemm":
        if w.ndim != 2:
            return f"its B is {w.ndim}-D, not 2-D"
        t = bool(node.attrs.get("transB", 0))
        k, n = (w.shape[1], w.shape[0]) if t else w.shape
        return WeightView("Gemm", 1, w.shape, 1, k, n, transposed=t)
    if w.ndim < 2:
        return "its B is a vector"
    return WeightView("MatMul", 1, w.shape, math.prod(w.shape[:-2]), w.shape[-2], w.shape[-1])


def require_view(node: Node) -> WeightView:
    """:func:`weight_view` of a node that must have one (a ``CimcError`` saying why it has none)."""
    view = weight_view(node)
    if isinstance(view, str):
        raise CimcError(f"node {node.name!r}: {view}")
    return view


def unit_stats(m: np.ndarray, geom: Geometry, granularity: Granularity
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per unit: ``(size, sum of squares, number of nonzero weights)``, each shaped ``[G, B, C]``
    for blocks or ``[G, N]`` for channels (sums in float64)."""
    G, K, N = m.shape
    sq, nz = np.square(m, dtype=np.float64), (m != 0).astype(np.int64)
    if granularity == "channel":
        return np.full((G, N), K, np.int64), sq.sum(axis=1), nz.sum(axis=1)
    rs, cs = geom.row_starts(K), geom.col_starts(N)
    rlen, clen = np.diff(np.append(rs, K)), np.diff(np.append(cs, N))

    def reduce(a: np.ndarray) -> np.ndarray:
        return np.add.reduceat(np.add.reduceat(a, rs, axis=1), cs, axis=2)

    size = np.broadcast_to(np.outer(rlen, clen), (G, len(rs), len(cs)))
    return size, reduce(sq), reduce(nz)


def prune_mask(m: np.ndarray, ratio: float, geom: Geometry, granularity: Granularity) -> np.ndarray:
    """Which units of ``m`` (``[G, K, N]``) to zero, as a bool ``[G, B, C]`` (or ``[G, N]``) mask:
    lowest mean square first, until the weights in them reach ``ceil(ratio * m.size)``; units
    already all zero are always in it (so refitting never fills them)."""
    size, sq, nz = unit_stats(m, geom, granularity)
    mask = (nz == 0).ravel()
    target = math.ceil(ratio * m.size - 1e-9 * m.size)
    if target > 0:
        score = (sq / size).ravel()
        order = np.argsort(score, kind="stable")
        k = int(np.searchsorted(np.cumsum(size.ravel()[order]), target)) + 1
        mask[order[:k]] = True
    return mask.reshape(sq.shape)


def expand(mask: np.ndarray, shape: tuple[int, ...], geom: Geometry,
           granularity: Granularity) -> np.ndarray:
    """A unit mask as a ``[G, K, N]`` weight mask."""
    G, K, N = shape
    if granularity == "channel":
        return np.broadcast_to(mask[:, None, :], (G, K, N))
    rb = np.cumsum(np.isin(np.arange(K), geom.row_starts(K))) - 1
    return mask[:, rb][:, :, np.arange(N) // geom.group_channels]


def prune(m: np.ndarray, ratio: float, geom: Geometry, granularity: Granularity) -> np.ndarray:
    """A copy of ``m`` with the units of :func:`prune_mask` zeroed: the weights in all-zero units
    are then at least ``ratio`` of all and (unless more units were all zero beforehand) less than
    one unit more."""
    full = expand(prune_mask(m, ratio, geom, granularity), m.shape, geom, granularity)
    return np.where(full, np.zeros((), m.dtype), m)


def refit(m: np.ndarray, mask: np.ndarray, gram: np.ndarray, geom: Geometry,
          granularity: Granularity, bias: np.ndarray | None = None, cross: np.ndarray | None = None,
          damp: float = 0.01) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero the units of ``mask`` and refit the kept weights by least squares, so the layer's
    outputs on the calibration inputs move least (the OBS update). Returns the new ``(m, bias)``.

    ``gram[g] = E[x x^T]`` over the rows ``x`` group ``g`` multiplies (``[G, K, K]``), with the
    constant 1 appended as a last row when ``bias`` (``[G, N]``, in units of ``x @ m``) is given.
    With ``cross[g] = E[x x0^T]``, where ``x0`` are the rows the unpruned model gives the layer,
    every column is refit to match its unpruned output ``x0 @ w`` (correcting upstream pruning
    too); without, ``cross = gram`` and only columns with pruned rows change. For a column with
    pruned rows ``R`` and kept rows ``S`` (the bias always kept): ``w_R = 0`` and ``w_S += (H_SS +
    d I)^-1 (C_S w - H_SS w_S)``, ``d = damp * mean(diag H)`` pulling towards the old weights."""
    G, K, N = m.shape
    w = m.astype(np.float64)
    if bias is not None:
        w = np.concatenate([w, np.asarray(bias, np.float64).reshape(G, 1, N)], axis=1)
    pruned = np.zeros(w.shape, bool)
    pruned[:, :K] = expand(mask, m.shape, geom, granularity)
    out = np.where(pruned, 0.0, w)
    for g in range(G):
        h, c = gram[g], gram[g] if cross is None else cross[g]
        d = damp * float(np.mean(np.diag(h)[:K])) + 1e-12
        patterns, which = np.unique(pruned[g].T, axis=0, return_inverse=True)
        for p, r in enumerate(patterns):
            s, cols = np.flatnonzero(~r), np.flatnonzero(which.ravel() == p)
            if not s.size or (cross is None and not r.any()):
                continue
            a = h[np.ix_(s, s)] + d * np.eye(s.size)
            rhs = c[s] @ w[g][:, cols] - h[np.ix_(s, s)] @ w[g][np.ix_(s, cols)]
            out[g][np.ix_(s, cols)] += np.linalg.solve(a, rhs)
    return out[:, :K].astype(m.dtype), (out[:, K] if bias is not None else None)


def zero_blocks(m: np.ndarray, geom: Geometry) -> np.ndarray:
    """Every all-zero block of ``m`` as int64 rows ``(g, b, c)``, sorted."""
    _, K, N = m.shape
    nz = np.logical_or.reduceat(np.logical_or.reduceat(m != 0, geom.row_starts(K), axis=1), geom.col_starts(N), axis=2)
    return np.argwhere(~nz).astype(np.int64).reshape(-1, 3)


def zero_channels(m: np.ndarray) -> np.ndarray:
    """Every all-zero output channel of ``m``, numbered ``g * N + n``, sorted (int64)."""
    return np.flatnonzero(~m.any(axis=1).ravel()).astype(np.int64)


def zero_count(m: np.ndarray, geom: Geometry, granularity: Granularity) -> int:
    """Number of weights that lie in all-zero units (what a target can skip)."""
    size, _, nz = unit_stats(m, geom, granularity)
    return int(size[nz == 0].sum())


def bias_matrix(node: Node, view: WeightView) -> tuple[np.ndarray, float] | None:
    """The node's constant float bias as ``[G, N]`` in units of ``x @ m`` and the factor that
    converts it back (Gemm: ``beta * C / alpha``), or ``None`` when it has none such."""
    c = node.inputs[2].const if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if c is None or c.dtype.kind != "f" or c.size != view.groups * view.cols:
        return None
    if node.op == "Gemm":
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        if c.shape not in ((view.cols,), (1, view.cols)) or not alpha or not beta:
            return None
        return c.reshape(1, -1) * (beta / alpha), alpha / beta
    return c.reshape(view.groups, view.cols), 1.0


def input_rows(node: Node, view: WeightView, x: np.ndarray) -> np.ndarray | None:
    """The rows ``[G, M, K]`` that ``node``'s weight matrices multiply when its first operand is
    ``x`` (for a convolution its im2col columns, ``vec.im2col``; for a transposed one those of the
    equivalent convolution, made by running the op itself with identity weights), or ``None`` for
    a batched MatMul."""
    G, K = view.groups, view.rows
    if node.op == "Gemm":
        return (x.T if node.attrs.get("transA", 0) else x).reshape(1, -1, K)
    if node.op == "MatMul":
        return x.reshape(1, -1, K) if G == 1 else None
    kernel = view.shape[2:]
    attrs = {k: v for k, v in node.attrs.items() if not is_annotation(k)}
    if node.op == "Conv":  # the im2col columns [G, N, K, L] of the lowered convolution
        opdef = lookup("vec.im2col")
        assert opdef is not None
        cols = opdef.impl(OpContext(opdef.attr_values(attrs | {"kernel_shape": tuple(kernel)})), x)
        return cols.transpose(0, 1, 3, 2).reshape(G, -1, K)
    eye = np.eye(K, dtype=x.dtype).reshape(K, K // math.prod(kernel), *kernel)
    eye = np.flip(eye, axis=tuple(range(2, eye.ndim))).swapaxes(0, 1)  # the equivalent convolution's flipped kernel
    opdef = lookup(node.op)
    assert opdef is not None
    y = opdef.impl(OpContext(opdef.attr_values(attrs)), x, np.concatenate([eye] * G))
    return y.reshape(len(x), G, K, -1).transpose(1, 0, 3, 2).reshape(G, -1, K)


def grams(node: Node, view: WeightView, act: np.ndarray, ref: np.ndarray | None = None, *,
          ones: bool = False, chunk: int = 1 << 22) -> tuple[np.ndarray, np.ndarray | None]:
    """``E[x x^T]`` and, given ``ref``, ``E[x x0^T]`` (float64 ``[G, K, K]``) over the rows ``x``
    / ``x0`` of :func:`input_rows` on ``act`` / ``ref``, with a constant 1 appended to each row
    when ``ones``. Convolutions go through im2col about ``chunk`` elements at a time."""
    conv = node.op in ("Conv", "ConvTranspose")
    step = max(1, chunk // max(1, act[0].size * math.prod(view.shape[2:]))) if conv else len(act)

    def rows(a: np.ndarray) -> np.ndarray:
        x = input_rows(node, view, a)
        if x is None:
            raise CimcError(f"node {node.name!r} ({node.op}): no input rows for a batched B")
        x = x.astype(np.float64)
        return np.concatenate([x, np.ones((*x.shape[:2], 1))], axis=2) if ones else x

    gram, cross, count = 0.0, 0.0, 0
    for s in range(0, len(act), step) if conv else (0,):
        x = rows(act[s:s + step] if conv else act)
        gram, count = gram + x.transpose(0, 2, 1) @ x, count + x.shape[1]
        if ref is not None:
            cross = cross + x.transpose(0, 2, 1) @ rows(ref[s:s + step] if conv else ref)
    n = max(count, 1)
    gram /= n  # in place: at K of thousands each copy of [G, K, K] is hundreds of MB
    if ref is not None:
        cross /= n
    return gram, None if ref is None else cross  # type: ignore[return-value]  # arrays once the loop ran
