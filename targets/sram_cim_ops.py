"""sram-cim instructions (``sram.load``, ``sram.mvm``), their lowering pass and their cost.

``sram.load(image: u8 [r, c]) -> token: i32 []``  attr ``macro``: writes the cell values
    ``image`` into rows ``0..r-1``, columns ``0..c-1`` of macro ``macro`` (machine state
    ``state["sram.macros"][macro]``; side effect) and returns the macro number as a token that
    orders the ``sram.mvm`` ops reading it after the write.
``sram.mvm(x: u8 [(G,) ..., K], token) -> i32 [..., channels]``  attrs ``macro``, ``group``
    (index of ``x``'s leading group axis, -1: none), ``k0``/``k1`` (the rows of ``x``'s last axis
    this tile multiplies), ``channels``, ``significance`` (ints, one per slice: the columns of a
    channel are ``c*S .. c*S+S-1``), ``offset``, ``rows_per_op``, ``dac_bits``, ``act_bits``,
    ``cell_bits``, ``adc_bits``, ``skip`` (row blocks not driven), ``replicas``, ``concurrent``
    (the last two only for the cost). With ``xt = x[group][..., k0:k1]`` flattened to ``[P, k]``
    and ``img`` the macro's image ``[k, C]``:
    1. input chunks ``xc_j = (xt >> j*dac_bits) & (2**dac_bits - 1)``, ``j < ceil(act_bits/dac_bits)``;
    2. row blocks ``b`` of ``rows_per_op`` rows, except those in ``skip``; partial sums
       ``ps[b, j, p, col] = sum_{k in b} xc_j[p, k] * img[k, col]`` (at most
       ``M = rows_per_op * (2**dac_bits - 1) * (2**cell_bits - 1)``);
    3. ADC: with ``need = lossless_adc_bits(rows_per_op, dac_bits, cell_bits)``, exact when
       ``adc_bits >= need``; else ``step = 2**(need - adc_bits)`` and
       ``ps -> clip(round_half_even(ps / step), 0, 2**adc_bits - 1) * step`` (deterministic, no noise);
    4. shift-add: ``acc[p, col] = sum_{b, j} 2**(j*dac_bits) * ps[b, j, p, col]``, then
       ``y[p, c] = sum_s significance[s] * acc[p, c*S + s] - offset * sum_k xt[p, k]``;
    result int32 (C wrap), shaped ``x``'s leading dims (group axis dropped) by ``channels``.
    A skipped block's cells are all zero, so skipping never changes the result.

Lowering (``lower-sram-cim``; with ``allow_reload = false`` a model whose tiles outnumber the
macros is rejected, naming its weight cells and the capacity): each node with ``tile.map``
(``tile`` pass) becomes ``vec.im2col`` (q.conv) -> per tile ``sram.load`` (only when the macro
does not already hold that image: weights stay stationary when everything fits) and ``sram.mvm``
-> ``vec.shift_add`` over row tiles -> ``Concat`` over column tiles and groups -> ``Add`` bias
-> ``vec.col2im`` (q.conv); the result takes the node's result type. Digital ops after it
(``q.requant``, ...) are left as they are.

Cost (per op, from attributes and static shapes; a symbolic dim counts as 1, i.e. per sample):
- ``sram.mvm``: ``P`` rows of ``x``, ``A`` driven row blocks (``rows_active`` rows), ``J`` input
  chunks, ``C`` columns, ``adcs = ceil(cols / cols_per_adc)`` per macro. A pass drives one block
  with one chunk across all columns of the tile (a tile never spans two column passes):
  ``passes = P*A*J``; ``pass_cycles = mvm_cycles + ceil(C / adcs) * adc_cycles``; ``cycles =
  passes * pass_cycles / (replicas * concurrent)`` (the op's share of the layer time when its
  ``concurrent`` tiles run on distinct macros at once); ``energy = P*J*(rows_active*C*mvm_cell_pj
  + A*C*(adc_pj + shift_add_pj)) + P*k*(buffer_pj_per_byte + noc_pj_per_byte) +
  4*P*channels*buffer_pj_per_byte``; ``macs = P*rows_active*channels``.
- ``sram.load``: ``bits = r*c*cell_bits``, ``bytes = ceil(bits/8)``; ``cycles = r*write_row_cycles +
  bytes/dram_bytes_per_cycle``; ``energy = bits*write_bit_pj + bytes*dram_pj_per_byte``.
- every other op: the vector unit (:func:`cimc.cost.vector_cost`, ``vec_lanes``, ``vec_op_cycles``,
  ``vec_op_pj``, plus ``vec_mul_pj`` for ops that multiply: q.requant, q.add, q.quantize,
  q.dequantize); ``vec.im2col`` adds ``buffer_pj_per_byte`` per byte written.
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from cimc.passes import register_pass

from cimc.cost import Cost, num_elements, vector_cost
from cimc.errors import CimcError, PassError, VerifyError
from cimc.ir.core import Graph, Node
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, define_op, is_annotation
from cimc.ir.types import DType, TensorType
from cimc.ops import lowered  # noqa: F401  (the vec.* ops the lowering emits)
from cimc.ops._infer import require
from cimc.ops.nn import to_dtype
from cimc.passmanager import Pass, PassContext, PassResult, option
from cimc.target import lossless_adc_bits
from cimc.tiling import TILE_COLUMNS, Encoding, tile_image, weight_matrix

__all__ = ["LowerSramCimPass", "adc", "crossbar", "op_cost"]

logger = logging.getLogger(__name__)
STATE = "sram.macros"
_MUL_OPS = ("q.requant", "q.add", "q.quantize", "q.dequantize")


# ---- semantics ------------------------------------------------------------------------------------
def adc(v: np.ndarray, adc_bits: int, need: int) -> np.ndarray:
    """Convert partial sums ``v`` (``0..2**need - 1``): exact if ``adc_bits >= need``, else
    ``clip(round_half_even(v / step), 0, 2**adc_bits - 1) * step`` with ``step = 2**(need - adc_bits)``."""
    if adc_bits >= need:
        return v
    step = float(1 << (need - adc_bits))
    return np.clip(np.rint(v / step), 0, (1 << adc_bits) - 1) * step


def crossbar(xt: np.ndarray, img: np.ndarray, *, significance, offset: int = 0, rows_per_op: int,
             dac_bits: int, act_bits: int, cell_bits: int, adc_bits: int, skip=()) -> np.ndarray:
    """One tile's MVM ``[..., k] x [k, C] -> int64 [..., C / S]`` as the module docstring defines it.

    With a lossless ADC the bit-serial sum equals ``xt @ W`` for the decoded integer weights ``W``,
    so that is computed (one exact matmul). Otherwise the bit planes of ``P`` chunks of rows go
    through one batched float32 matmul per chunk against the row blocks ``[A, rows_per_op, C]``
    (exact: partial sums are small integers), the ADC in place, then one weighted sum.
    """
    lead, k = xt.shape[:-1], xt.shape[-1]
    need = lossless_adc_bits(rows_per_op, dac_bits, cell_bits)
    if adc_bits >= need:  # skipped blocks are all-zero cells: dropping the skip is exact
        w, dt = _decoded(img, significance, offset, act_bits)
        y = np.matmul(xt.astype(dt, copy=False), w)
        return y.astype(np.int64)
    xt = xt.reshape(-1, k)
    P, C, S = xt.shape[0], img.shape[1], len(significance)
    R, J = -(-k // rows_per_op), -(-act_bits // dac_bits)
    keep = tuple(b for b in range(R) if b not in set(skip))
    acc = np.zeros((P, C), np.float32)
    if keep:
        step = 1 << (need - adc_bits)
        im = _blocks(img, rows_per_op, keep, step)  # [A, rows_per_op, C] float32, pre-divided by step
        A = len(keep)
        pad = R * rows_per_op - k
        xg = np.pad(xt, ((0, 0), (0, pad))) if pad else xt
        xg = np.ascontiguousarray(xg.reshape(P, R, rows_per_op)[:, list(keep)].transpose(1, 0, 2))  # u8 [A, P, rpo]
        shifts = (np.arange(J, dtype=np.uint8) * dac_bits)[None, :, None, None]
        mask, top = np.uint8((1 << dac_bits) - 1), float((1 << adc_bits) - 1)
        wts = np.tile(np.asarray([float(step << (j * dac_bits)) for j in range(J)], np.float32), A)
        pc = max(16, _CHUNK // (A * J * C * 4))
        for p0 in range(0, P, pc):
            xc = xg[:, p0:p0 + pc]
            n = xc.shape[1]
            bits = np.right_shift(xc[:, None], shifts)  # [A, J, n, rpo]
            np.bitwise_and(bits, mask, out=bits)
            ps = np.matmul(bits.astype(np.float32).reshape(A, J * n, rows_per_op), im)  # partial sums / step
            np.rint(ps, out=ps)  # round half to even, as the ADC
            np.minimum(ps, top, out=ps)  # partial sums are >= 0: only the top clips
            acc[p0:p0 + n] = (wts @ ps.reshape(A * J, n * C)).reshape(n, C)
    y = (acc.reshape(P, C // S, S).astype(np.float64) @ np.asarray(significance, np.float64)).astype(np.int64)
    y = y - offset * xt.astype(np.int64).sum(axis=1, keepdims=True) if offset else y
    return y.reshape(*lead, C // S)


_CHUNK = 1 << 21
"""Bytes of float32 partial sums per chunk of the lossy path (cache sized)."""
_CACHE: dict[tuple, tuple[Any, np.ndarray, Any]] = {}
"""Per image array (while it lives): its decoded weights or its scaled row blocks."""


def _cached(img: np.ndarray, key: tuple, make):
    """``make()`` for ``img`` and ``key``, computed once while ``img`` lives (images are constants)."""
    k = (id(img), *key)
    hit = _CACHE.get(k)
    if hit is not None and hit[0]() is img:
        return hit[1], hit[2]
    val, extra = make()
    try:
        ref = weakref.ref(img, lambda _r, k=k: _CACHE.pop(k, None))
    except TypeError:
        return val, extra
    _CACHE[k] = (ref, val, extra)
    return val, extra


def _decoded(img: np.ndarray, significance, offset: int, act_bits: int) -> tuple[np.ndarray, Any]:
    """The tile's integer weights ``W[k, c] = sum_s significance[s] * img[k, c*S+s] - offset`` in
    the float type in which ``x @ W`` is exact (float32 below 2**24, else float64)."""
    def make():
        S = len(significance)
        w = (img.reshape(img.shape[0], -1, S).astype(np.int64) * np.asarray(significance, np.int64)).sum(-1) - offset
        bound = ((1 << act_bits) - 1) * int(np.abs(w).sum(axis=0).max(initial=0))
        dt = np.float32 if bound < 1 << 24 else np.float64
        return w.astype(dt), dt
    return _cached(img, ("w", tuple(significance), offset, act_bits), make)


def _blocks(img: np.ndarray, rows_per_op: int, keep: tuple, step: int) -> np.ndarray:
    """The image's driven row blocks ``[A, rows_per_op, C]`` in float32, divided by ``step`` (exact)."""
    def make():
        k, C = img.shape
        R = -(-k // rows_per_op)
        im = np.pad(img.astype(np.float32), ((0, R * rows_per_op - k), (0, 0))).reshape(R, rows_per_op, C)
        return np.ascontiguousarray(im[list(keep)]) * np.float32(1.0 / step), None
    return _cached(img, ("b", rows_per_op, keep, step), make)[0]


# ---- ops ----------------------------------------------------------------------------------------------
def _load_type(ctx: InferContext) -> list[TensorType]:
    img = require(ctx, 0)
    if img.dtype is not DType.u8 or (img.shape is not None and len(img.shape) != 2):
        raise VerifyError(f"sram.load: the image must be u8 [rows, cols], is {img}")
    return [TensorType(DType.i32, ())]


@define_op("sram.load", infer=_load_type, side_effects=True, attrs={
    "macro": AttrSpec("int", REQUIRED, "macro written")})
def sram_load(ctx, image):
    """Write ``image`` into macro ``macro``; the result is a token (the macro number)."""
    ctx.state.setdefault(STATE, {})[ctx.attrs["macro"]] = image
    return np.asarray(ctx.attrs["macro"], np.int32)


def _mvm_type(ctx: InferContext) -> list[TensorType]:
    x, a = require(ctx, 0), ctx.attrs
    if x.dtype is not DType.u8:
        raise VerifyError(f"sram.mvm: x must be u8, is {x}")
    if not 0 <= a["k0"] < a["k1"]:
        raise VerifyError(f"sram.mvm: row range [{a['k0']}, {a['k1']}) is empty or negative")
    if x.shape is None:
        return [TensorType(DType.i32, None)]
    shape = x.shape[1:] if a["group"] >= 0 else x.shape
    if len(shape) < 1 or (isinstance(shape[-1], int) and shape[-1] < a["k1"]):
        raise VerifyError(f"sram.mvm: x {x} has fewer than k1={a['k1']} rows")
    return [TensorType(DType.i32, (*shape[:-1], a["channels"]))]


_MVM_ATTRS = {
    "macro": AttrSpec("int", REQUIRED, "macro holding the tile's image"),
    "group": AttrSpec("int", -1, "index into x's leading group axis (-1: x has none)"),
    "k0": AttrSpec("int", REQUIRED, "first row of x's last axis multiplied"),
    "k1": AttrSpec("int", REQUIRED, "end of the row range"),
    "channels": AttrSpec("int", REQUIRED, "output channels of the tile"),
    "significance": AttrSpec("ints", REQUIRED, "signed significance of each slice column of a channel"),
    "offset": AttrSpec("int", 0, "offset subtracted per weight (offset encoding): y -= offset * sum(x)"),
    "rows_per_op": AttrSpec("int", REQUIRED, "word lines on at once (a row block)"),
    "dac_bits": AttrSpec("int", 1, "input bits per pass"),
    "act_bits": AttrSpec("int", 8, "bits of x"),
    "cell_bits": AttrSpec("int", 1, "bits per cell"),
    "adc_bits": AttrSpec("int", REQUIRED, "ADC resolution"),
    "skip": AttrSpec("ints", (), "row blocks not driven (all-zero cells)"),
    "replicas": AttrSpec("int", 1, "copies of this tile on other macros (cost only)"),
    "concurrent": AttrSpec("int", 1, "tiles of the layer running at once on distinct macros (cost only)"),
}


@define_op("sram.mvm", inputs=2, infer=_mvm_type, attrs=_MVM_ATTRS)
def sram_mvm(ctx, x, token):
    """Bit-serial MVM of a tile of x with the image held by macro ``macro``, ADC, shift-add."""
    a = ctx.attrs
    img = ctx.state.get(STATE, {}).get(a["macro"])
    if img is None:
        raise CimcError(f"sram.mvm reads macro {a['macro']}, which no sram.load has written in this run")
    if a["adc_bits"] >= lossless_adc_bits(a["rows_per_op"], a["dac_bits"], a["cell_bits"]):
        x = _as_float32(ctx.state, x)  # once per layer: every tile reads the same x
    if a["group"] >= 0:
        x = x[a["group"]]
    xt = x[..., a["k0"]:a["k1"]]
    lead = xt.shape[:-1]
    if img.shape != (a["k1"] - a["k0"], a["channels"] * len(a["significance"])):
        raise CimcError(f"sram.mvm: macro {a['macro']} holds an image {list(img.shape)}, expected "
                        f"[{a['k1'] - a['k0']}, {a['channels'] * len(a['significance'])}]")
    y = crossbar(xt, img, significance=a["significance"], offset=a["offset"], rows_per_op=a["rows_per_op"],
                 dac_bits=a["dac_bits"], act_bits=a["act_bits"], cell_bits=a["cell_bits"], adc_bits=a["adc_bits"],
                 skip=a["skip"])
    return to_dtype(y.reshape(*lead, a["channels"]), np.dtype(np.int32))


def _as_float32(state: dict, x: np.ndarray) -> np.ndarray:
    """``x`` in float32 (exact for u8), converted once per run for the last ``x`` seen."""
    hit = state.get("sram.xf")
    if hit is not None and hit[0] is x:
        return hit[1]
    xf = x.astype(np.float32)
    state["sram.xf"] = (x, xf)
    return xf


# ---- lowering ---------------------------------------------------------------------------------------
@register_pass
@dataclass(frozen=True)
class LowerSramCimPass(Pass):
    """Lower tiled q.conv/q.gemm/q.matmul nodes into sram.load/sram.mvm and vec ops."""

    name: ClassVar[str] = "lower-sram-cim"
    adc_bits: int | None = option(None, "ADC resolution; none = the target's spec.")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Replace every tiled node of ``graph`` by its instruction sequence."""
        from cimc.targets.sram_cim import SramCimSpec

        spec = getattr(ctx.target, "spec", None)
        spec = spec if isinstance(spec, SramCimSpec) else SramCimSpec()
        adc_bits = spec.adc_bits if self.adc_bits is None else self.adc_bits
        holds: dict[int, tuple[tuple[str, int], Any]] = {}  # macro -> (image key, load token)
        nodes = [n for n in graph.nodes if "tile.map" in n.attrs]
        if not spec.allow_reload:
            _check_fits(graph, nodes, spec)
        for node in nodes:
            _lower(graph, node, spec, adc_bits, holds)
        graph.remove_dead()
        return PassResult(bool(nodes))


def _check_fits(graph: Graph, nodes: list[Node], spec) -> None:
    """With ``allow_reload = false``: every tile (and replica) needs a macro of its own, loaded once."""
    tiles = sum(len(n.attrs["tile.map"]) * int(n.attrs["tile.replicas"]) for n in nodes)
    if tiles <= spec.macros:
        return
    col = {c: i for i, c in enumerate(TILE_COLUMNS)}
    cells = sum(int(((t[:, col["k1"]] - t[:, col["k0"]]) * (t[:, col["col1"]] - t[:, col["col0"]])).sum())
                * int(n.attrs["tile.replicas"]) for n in nodes for t in [np.asarray(n.attrs["tile.map"], np.int64)])
    raise PassError(f"model {graph.name!r} does not fit the arrays with allow_reload = false: its "
                    f"weights take {cells} cells in {tiles} tiles of {spec.rows} x {spec.cols}, but sram-cim has "
                    f"{spec.macros} macros ({spec.macros * spec.rows * spec.cols} cells, one tile each); allow "
                    f"reloads (--spec-set allow_reload=true) or use more macros (--spec-set macros={tiles})")


def _lower(graph: Graph, node: Node, spec, adc_bits: int, holds: dict) -> None:
    a = node.attrs
    x, bias = node.inputs[0], node.inputs[2] if len(node.inputs) > 2 else None
    layer = {"cim.layer": node.name}
    m = weight_matrix(node)
    enc = Encoding(a["tile.encoding"], int(a["tile.weight_bits"]), int(a["tile.cell_bits"]))
    act_bits = int(x.type.quant.bits) if x.type.quant is not None else 8
    table, skip, R = a["tile.map"], a["tile.skip"], int(a["tile.replicas"])
    rpo, arrays = int(a["tile.rows_per_op"]), int(a["tile.arrays"])
    add = lambda op, ins, attrs, **kw: graph.add_node(op, ins, {**attrs, **layer}, before=node, **kw).outputs[0]  # noqa: E731
    grouped = node.op == "q.conv"
    if grouped:
        conv = {k: v for k, v in a.items() if not is_annotation(k) and k != "x_zero_point"}
        conv["kernel_shape"] = tuple(int(s) for s in node.inputs[1].const.shape[2:])
        x = add("vec.im2col", [x], {**conv, "pad_value": int(a["x_zero_point"])})
    concurrent = max(1, min(len(table), arrays // R))
    parts: dict[tuple[int, int], Any] = {}
    cells = enc.encode(m)
    skipped: dict[int, list[int]] = {}
    for ti, b in skip:
        skipped.setdefault(int(ti), []).append(int(b))
    for i, row in enumerate(table):
        t = dict(zip(TILE_COLUMNS, (int(v) for v in row), strict=True))
        img = tile_image(cells, row)
        key = (node.name, i)
        token = None
        for r in range(R):
            macro = (t["array"] + r) % arrays
            if holds.get(macro, (None,))[0] != key:
                const = graph.add_constant(img, f"{node.name}.tile{i}")
                tok = add("sram.load", [const], {"macro": macro, "cim.bytes": -(-img.size * enc.cell_bits // 8)})
                holds[macro] = (key, tok)
            token = token or holds[macro][1]
        tskip = tuple(skipped.get(i, ()))
        y = add("sram.mvm", [x, token], {
            "macro": t["array"], "group": t["group"] if grouped else -1, "k0": t["k0"], "k1": t["k1"],
            "channels": t["ch1"] - t["ch0"], "significance": enc.significance, "offset": enc.offset,
            "rows_per_op": rpo, "dac_bits": spec.dac_bits, "act_bits": act_bits, "cell_bits": enc.cell_bits,
            "adc_bits": adc_bits, "skip": tskip, "replicas": R, "concurrent": concurrent,
            "tile.map": np.asarray(row, np.int64).reshape(1, -1), "tile.util": a["tile.util"][i:i + 1],
            "tile.skip": np.asarray([(0, b) for b in tskip], np.int64).reshape(-1, 2)})
        k = (t["group"], t["col_tile"])
        parts[k] = y if k not in parts else add("vec.shift_add", [parts[k], y], {"shift": 0})
    ys = [parts[k] for k in sorted(parts)]
    y = ys[0] if len(ys) == 1 else add("Concat", ys, {"axis": -1})
    final = node.outputs[0].type
    if bias is not None:
        y = add("Add", [y, bias], {}, outputs=None if grouped else [final])
    if grouped:
        y = add("vec.col2im", [y], {"spatial": tuple(int(s) for s in final.shape[2:])}, outputs=[final])
    elif bias is None:
        y = add("Identity", [y], {}, outputs=[final])
    graph.replace_all_uses_with(node.outputs[0], y)
    graph.remove_node(node)


# ---- cost -----------------------------------------------------------------------------------------------
def _count(shape) -> int:
    return math.prod(d if isinstance(d, int) else 1 for d in shape) if shape is not None else 1


def op_cost(node: Node, spec) -> Cost:
    """Cost of one program op on the sram-cim target (formulas in the module docstring)."""
    s, a = spec, node.attrs
    if node.op == "sram.mvm":
        xs = node.inputs[0].type.shape
        xs = (xs[1:] if a.get("group", -1) >= 0 else xs) if xs is not None else (1,)
        P, k = _count(xs[:-1]), a["k1"] - a["k0"]
        rpo, blocks = a["rows_per_op"], -(-(a["k1"] - a["k0"]) // a["rows_per_op"])
        active = [b for b in range(blocks) if b not in set(a.get("skip", ()))]
        rows_active = sum(min(rpo, k - b * rpo) for b in active)
        J = -(-a.get("act_bits", 8) // a.get("dac_bits", 1))
        C, ch = a["channels"] * len(a["significance"]), a["channels"]
        passes = P * len(active) * J
        pass_cycles = s.mvm_cycles + -(-C // s.adcs) * s.adc_cycles
        cycles = passes * pass_cycles / (a.get("replicas", 1) * a.get("concurrent", 1))
        energy = (P * J * (rows_active * C * s.mvm_cell_pj + len(active) * C * (s.adc_pj + s.shift_add_pj))
                  + P * k * (s.buffer_pj_per_byte + s.noc_pj_per_byte) + 4 * P * ch * s.buffer_pj_per_byte)
        return Cost(float(cycles), float(energy), "array", P * rows_active * ch)
    if node.op == "sram.load":
        r, c = node.inputs[0].type.shape
        bits = r * c * s.cell_bits
        nbytes = -(-bits // 8)
        return Cost(r * s.write_row_cycles + nbytes / s.dram_bytes_per_cycle,
                    bits * s.write_bit_pj + nbytes * s.dram_pj_per_byte, "load")
    pj = s.vec_op_pj + (s.vec_mul_pj if node.op in _MUL_OPS else 0.0)
    c = vector_cost(node, lanes=s.vec_lanes, cycles_per_op=s.vec_op_cycles, pj_per_op=pj)
    if node.op == "vec.im2col":
        c = Cost(c.cycles, c.energy_pj + num_elements(node.outputs[0]) * s.buffer_pj_per_byte, c.unit)
    return c
