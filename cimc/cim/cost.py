"""The cost of an array target's instructions and digital ops, shared by crossbar-like targets (sram-cim, memristor).

A target's spec gives the figures (:class:`ArrayCostSpec`: pass time and energy per cell, word line, conversion
and shift-add at the op's ``adc_bits`` and ``dac_bits``, buffers, interconnect, DRAM, the vector unit); its cost
module dispatches its own op names here. Per op, from attributes and static shapes; a symbolic dim counts as 1,
i.e. per sample:

- an MVM (:func:`mvm_cost`): per tile (:func:`cimc.cim.work.work`), ``P`` positions of which it takes its ``share``
  (replicas split them), ``A`` driven row blocks (``rows_active`` rows), ``J`` input chunks, ``C`` columns (``ch``
  channels). A pass drives one block with one chunk across all columns of the tile: ``passes = share*P*A*J``; the
  tiles run at once on distinct arrays, so ``cycles = max over tiles of passes * pass_cycles(C) + shift_add_cycles``
  (the shift-adds run behind the conversions; the last one ends the op) plus spill traffic at
  ``dram_bytes_per_cycle``. Energy, summed over tiles: arrays ``share*P*J*rows_active*C*mvm_cell_pj``; DACs
  ``share*P*J*rows_active*dac_pj_at(dac_bits)``; ADCs ``conversions*adc_pj_at(adc_bits)`` with ``conversions =
  passes*C`` (``C/2`` when differential pairs are sensed together); shift-add ``conversions*shift_add_pj``, plus one
  add per position and converted column whose ADC range has an offset (a calibrated range: the offset times the
  column's conversion count is added once to its shift-add sum) and the adds of complemented columns
  (``corrections`` of :mod:`cimc.cim.work`: the input sum and one subtraction per position and column) at
  ``shift_add_pj``; buffers ``4*share*P*ch`` bytes of accumulators written plus ``P*rows`` bytes of input read (the
  distinct input rows of its tiles, read once and broadcast to the arrays that share them) at
  ``buffer_pj_per_byte``, the input also crossing the interconnect at ``noc_pj_per_byte``; ``macs = sum of
  share*P*rows_active*ch`` (whole weights). Spills (DRAM at ``dram_pj_per_byte``): the layer's input activation (its
  raw feature map, one byte per element) beyond ``act_buffer_bytes`` lives in DRAM: the first round (no accumulator
  operand) pays its producer writing that share once, and every round reads the share of the rows it reads; the
  layer's int32 accumulators (``4*P*channels`` bytes) beyond ``out_buffer_bytes`` spill: that share of every
  accumulator byte a round writes goes to DRAM and is read back (by the next round or the consumer).
- a load (:func:`load_cost`): per tile (each replica is a tile) ``r*c`` cells of ``cell_bits``, ``bytes =
  ceil(r*c*cell_bits/8)``; ``cycles = sum of r*write_row_cycles + bytes/dram_bytes_per_cycle``; energy: arrays
  ``cells*write_pj`` (the target's energy per cell written; or per bit, ``cells*cell_bits*write_pj``), DRAM
  ``bytes*dram_pj_per_byte``; it writes ``r*c`` cells of its array (one-time unless another load writes that array: see
  :func:`cimc.cost.program_cost`).
- every other op (requantization, ``vec.*`` helpers, attention's ``q.act_matmul`` and the float matrix ops
  that run with ``allow_float``, by their MACs): the vector unit every target shares
  (:func:`cimc.cost.vector_unit_cost`), which the target's cost module calls itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from cimc.cim.adc import Adc
from cimc.cim.tilemap import TileMap
from cimc.cim.work import work
from cimc.converters import ADC_AREA, ADC_ENERGY, ADC_TIME, DAC_AREA, DAC_ENERGY, scaled
from cimc.cost import AreaPart, Cost, VectorUnitSpec, Writes, counts, num_elements, spilled_fraction
from cimc.ir.core import Node
from cimc.ir.types import dim_per_sample

__all__ = ["ArrayCostSpec", "ArrayFigures", "array_area", "load_cost", "mvm_cost"]


class ArrayCostSpec(VectorUnitSpec, Protocol):
    """The figures of an array target's spec this cost model reads (module docstring), the vector
    unit's among them."""

    @property
    def cell_bits(self) -> int: ...

    @property
    def shift_add_cycles(self) -> int: ...

    @property
    def write_row_cycles(self) -> int: ...

    @property
    def mvm_cell_pj(self) -> float: ...

    @property
    def shift_add_pj(self) -> float: ...

    @property
    def noc_pj_per_byte(self) -> float: ...

    @property
    def dram_pj_per_byte(self) -> float: ...

    @property
    def dram_bytes_per_cycle(self) -> float: ...

    @property
    def act_buffer_bytes(self) -> int: ...

    @property
    def out_buffer_bytes(self) -> int: ...

    def pass_cycles(self, columns: Any, adc_bits: int) -> Any: ...

    def adc_pj_at(self, bits: int) -> float: ...

    def dac_pj_at(self, bits: int) -> float: ...


class ArrayFigures:
    """Figures an array target's spec derives from its parameters (a mixin of its ``Spec``: it reads ``rows``,
    ``cols``, ``cols_per_adc``, ``rows_per_op``, ``cell_bits``, ``weight_bits_max``, ``act_bits_max``,
    ``dac_bits``, ``p_sa0``, ``p_sa1``, ``adc_ref_bits``, ``adc_pj``, ``adc_ns``, ``adc_area_um2``, ``dac_pj``,
    ``dac_area_um2``, ``mvm_cycles``, ``clock_mhz``, ``mvm_cell_pj`` and ``shift_add_pj``): ADC and DAC figures at
    any resolution along the laws of :mod:`cimc.converters`, the time of one pass, and the cross-field rules."""

    rows: int
    cols: int
    cols_per_adc: int
    rows_per_op: int
    cell_bits: int
    weight_bits_max: int
    act_bits_max: int
    dac_bits: int
    p_sa0: float
    p_sa1: float
    adc_ref_bits: int
    adc_pj: float
    adc_ns: float
    adc_area_um2: float
    dac_pj: float
    dac_area_um2: float
    mvm_cycles: int
    clock_mhz: float
    mvm_cell_pj: float
    shift_add_pj: float

    def array_problems(self) -> Iterator[str]:
        """Word lines and ADC columns fit the array, a weight fits in a row, a DAC slice in an input, a cell is
        stuck at one level at most."""
        if self.rows_per_op > self.rows:
            yield (f"rows_per_op = {self.rows_per_op} must be <= rows = {self.rows} (word lines on at once "
                   f"within one array)")
        if self.cols_per_adc > self.cols:
            yield f"cols_per_adc = {self.cols_per_adc} must be <= cols = {self.cols} (columns sharing one ADC)"
        if math.ceil(self.weight_bits_max / self.cell_bits) > self.cols:
            yield (f"weight_bits_max = {self.weight_bits_max} needs {math.ceil(self.weight_bits_max / self.cell_bits)}"
                   f" columns of {self.cell_bits}-bit cells, more than cols = {self.cols}")
        if self.dac_bits > self.act_bits_max:
            yield f"dac_bits = {self.dac_bits} must be <= act_bits_max = {self.act_bits_max} (input bits per pass)"
        if self.p_sa0 + self.p_sa1 > 1:
            yield f"p_sa0 + p_sa1 = {self.p_sa0 + self.p_sa1!r} must be <= 1 (a cell is stuck at one level at most)"

    @property
    def adcs(self) -> int:
        """ADCs per macro: ``ceil(cols / cols_per_adc)``."""
        return -(-self.cols // self.cols_per_adc)

    def adc_pj_at(self, bits: int) -> float:
        """Energy of one conversion at ``bits``: ``adc_pj`` moved from ``adc_ref_bits`` by the ADC energy law."""
        return scaled(ADC_ENERGY, self.adc_pj, bits, self.adc_ref_bits)

    def adc_ns_at(self, bits: int) -> float:
        """Time of one conversion at ``bits``: ``adc_ns`` moved from ``adc_ref_bits`` by the ADC time law."""
        return scaled(ADC_TIME, self.adc_ns, bits, self.adc_ref_bits)

    def adc_area_um2_at(self, bits: int) -> float:
        """Area of one ADC of ``bits``: ``adc_area_um2`` moved from ``adc_ref_bits`` by the ADC area law."""
        return scaled(ADC_AREA, self.adc_area_um2, bits, self.adc_ref_bits)

    def dac_pj_at(self, bits: int) -> float:
        """Energy of driving one word line for one pass with a ``bits``-bit input (DAC energy law from 1 bit)."""
        return scaled(DAC_ENERGY, self.dac_pj, bits, 1)

    def dac_area_um2_at(self, bits: int) -> float:
        """Area of one ``bits``-bit word-line DAC (DAC area law from 1 bit)."""
        return scaled(DAC_AREA, self.dac_area_um2, bits, 1)

    def pass_cycles(self, columns: Any, adc_bits: int) -> Any:
        """Cycles of one pass over ``columns`` columns (an int or an integer array): ``mvm_cycles`` plus the
        conversions of the busiest ADC, ``ceil(columns / adcs)`` of ``adc_ns_at(adc_bits)`` each, one after
        another, rounded up to whole cycles."""
        ns = -(-np.asarray(columns, np.int64) // self.adcs) * self.adc_ns_at(adc_bits)
        cycles = self.mvm_cycles + np.ceil(ns * self.clock_mhz / 1000 - 1e-9).astype(np.int64)
        return int(cycles) if cycles.ndim == 0 else cycles

    def pass_pj(self, adc_bits: int, dac_bits: int) -> float:
        """Energy of one full pass (``rows_per_op`` rows x ``cols`` columns): cells, word-line drive, conversions
        and shift-adds."""
        return (self.rows_per_op * (self.cols * self.mvm_cell_pj + self.dac_pj_at(dac_bits))
                + self.cols * (self.adc_pj_at(adc_bits) + self.shift_add_pj))


def _count(shape) -> int:
    return math.prod(dim_per_sample(d) for d in shape) if shape is not None else 1


def mvm_cost(node: Node, s: ArrayCostSpec) -> Cost:
    """Cost of one MVM instruction (module docstring)."""
    a = node.attrs
    xs = counts(node.inputs[0])
    cols = a.get("layout") == "cols"
    P = (_count(xs[1:2]) * _count(xs[3:]) if cols else _count(xs[:-1])) if xs else 1
    J = -(-a.get("act_bits", 8) // a.get("dac_bits", 1))
    adc_bits, dac_bits = a["adc_bits"], a.get("dac_bits", 1)
    tiles: TileMap = a["tiles"]
    w = work(tiles, a.get("skip", np.zeros((0, 2), np.int64)), a["rows_per_op"], P, J, a.get("sense", "columns"))
    cycles = float((w.passes * s.pass_cycles(w.columns.astype(np.int64), adc_bits)).max()) + s.shift_add_cycles
    converted = float(w.conversions.sum())
    rows_read = sum(r1 - r0 for _, r0, r1 in set(map(tuple, tiles.table[:, :3].tolist())))  # distinct row spans
    acc_written = 4 * P * float((w.share * w.channels).sum())
    active = w.share * P * J * w.rows
    parts = {"arrays": float((active * w.columns).sum()) * s.mvm_cell_pj,
             "dac": float(active.sum()) * s.dac_pj_at(dac_bits),
             "adc": converted * s.adc_pj_at(adc_bits),
             "shift_add": (converted + _offset_adds(a, tiles, w.share, P) + float(w.corrections.sum()))
             * s.shift_add_pj,
             "buffers": (acc_written + P * rows_read) * s.buffer_pj_per_byte,
             "interconnect": P * rows_read * s.noc_pj_per_byte}
    spill = _spills(node, s, P, rows_read, acc_written)
    if spill:
        parts["dram"] = spill * s.dram_pj_per_byte
    return Cost(cycles + spill / s.dram_bytes_per_cycle, sum(parts.values()), "array",
                round(float(w.macs.sum())), parts, {"spills": spill} if spill else {})


def _offset_adds(a: dict, tiles: TileMap, share: np.ndarray, P: int) -> float:
    """Adds of ADC offsets: per tile, its share of the positions times its converted columns with an offset."""
    offset = a.get("adc_offset")
    if (not np.any(offset)) if offset is not None else a.get("sense", "columns") != "pairs":
        return 0.0  # no offset given, and the default range of columns sensed one by one starts at 0
    adc = Adc.from_attrs(a)
    if not adc.offset.any():
        return 0.0
    pairs = a.get("sense") == "pairs"
    out = 0.0
    for i in range(len(tiles)):
        cols = tiles.cols_of(i)
        if pairs:  # a pair converts once, at its positive column (the first half of each channel's slices)
            cols = cols.reshape(-1, tiles.slices)[:, :tiles.slices // 2].reshape(-1)
        out += float(share[i]) * P * int(np.count_nonzero(np.broadcast_to(adc.columns(i, cols).offset, cols.shape)))
    return out


def _spills(node: Node, s: ArrayCostSpec, P: int, rows_read: int, acc_written: float) -> float:
    """DRAM bytes of the round's input and accumulator spills (module docstring)."""
    x, a = node.inputs[0], node.attrs
    producer = x.producer if x is not None else None
    raw = producer.inputs[0] if producer is not None and producer.op == "vec.im2col" else x
    in_bytes = num_elements(raw)
    shape = counts(x)
    rows_total = _count(shape[:1]) * _count(shape[2:3]) if a.get("layout") == "cols" else _count(shape[-1:])
    f_in = spilled_fraction(in_bytes, s.act_buffer_bytes)
    first = len(node.inputs) < 3 or node.inputs[2] is None
    spill = f_in * in_bytes * (min(1.0, rows_read / max(rows_total, 1)) + (1.0 if first else 0.0))
    f_out = spilled_fraction(4 * P * a["channels"], s.out_buffer_bytes)
    return spill + 2 * f_out * acc_written


def load_cost(node: Node, s: ArrayCostSpec, write_pj: float, per_bit: bool = False) -> Cost:
    """Cost of one load instruction, ``write_pj`` per cell written (``per_bit``: per bit written; module
    docstring)."""
    t = node.attrs["tiles"].table
    r, c = t[:, 2] - t[:, 1], (t[:, 4] - t[:, 3]) * (t[:, 6] - t[:, 5])
    cells = r * c
    nbytes = float((-(-(cells * s.cell_bits) // 8)).sum())
    writes = Writes(t[:, 7], 0, cells)
    written = float((cells * s.cell_bits if per_bit else cells).sum())
    parts = {"arrays": written * write_pj, "dram": nbytes * s.dram_pj_per_byte}
    return Cost(float((r * s.write_row_cycles).sum() + nbytes / s.dram_bytes_per_cycle), sum(parts.values()),
                "load", 0, parts, {"weights": nbytes}, writes)


def array_area(s: Any, arrays: int, cells: str, unit: str, adc_bits: int) -> list[AreaPart]:
    """The blocks of an array target's chip (its ``area``): ``arrays`` arrays of ``cells`` (``unit``: what one is
    called), ADCs at ``adc_bits`` (one per ``cols_per_adc`` columns), word-line DACs at ``dac_bits`` (one per row),
    shift-adds (one per ADC), the activation and output buffers and the vector lanes, each citing its spec
    parameter's source (and the law that moved it). ``s``: the spec (:class:`ArrayFigures` and its parameters)."""
    src = {p.name: p.source for p in s.params()}
    return [
        AreaPart("arrays", f"{cells} ({arrays} {unit}s x {s.rows} x {s.cols})", arrays * s.rows * s.cols,
                 s.cell_area_um2, src["cell_area_um2"]),
        AreaPart("adc", f"{adc_bits}-b ADCs ({s.adcs} per {unit})", arrays * s.adcs, s.adc_area_um2_at(adc_bits),
                 f"{src['adc_area_um2']}; at {adc_bits} b by the {ADC_AREA.quantity} law {ADC_AREA.formula} "
                 f"({ADC_AREA.source})"),
        AreaPart("dac", f"{s.dac_bits}-b word-line DACs (one per row)", arrays * s.rows,
                 s.dac_area_um2_at(s.dac_bits), f"{src['dac_area_um2']}; at {s.dac_bits} b by the "
                 f"{DAC_AREA.quantity} law {DAC_AREA.formula}"),
        AreaPart("shift_add", "shift-add units (one per ADC)", arrays * s.adcs, s.shift_add_area_um2,
                 src["shift_add_area_um2"]),
        AreaPart("buffers", f"activation buffer ({s.act_buffer_bytes} B)", 8 * s.act_buffer_bytes, s.sram_bit_area_um2,
                 src["sram_bit_area_um2"]),
        AreaPart("buffers", f"output buffer ({s.out_buffer_bytes} B)", 8 * s.out_buffer_bytes, s.sram_bit_area_um2,
                 src["sram_bit_area_um2"]),
        AreaPart("vector_unit", f"vector unit lanes ({s.vec_lanes})", s.vec_lanes, s.vec_lane_area_um2,
                 src["vec_lane_area_um2"]),
    ]
