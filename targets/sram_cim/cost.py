"""The sram-cim cost model: ``op_cost`` of every op of a lowered program.

Per op, from attributes and static shapes; a symbolic dim counts as 1, i.e. per sample; energy by
component; the ADC and DAC figures at the op's ``adc_bits`` and ``dac_bits`` (:class:`SramCimSpec`'s
``*_at`` methods):
- ``sram.mvm``: per tile (:func:`cimc.cim.work.work`), ``P`` positions of which it takes its ``share``
  (replicas split them), ``A`` driven row blocks (``rows_active`` rows), ``J`` input chunks, ``C``
  columns (``ch`` channels), ``adcs = ceil(cols / cols_per_adc)`` per macro. A pass drives one block
  with one chunk across all columns of the tile: ``passes = share*P*A*J``; the tiles run at once on
  distinct macros, so ``cycles = max over tiles of passes * pass_cycles(C) + shift_add_cycles`` (the
  shift-adds run behind the conversions; the last one ends the op) plus spill traffic at
  ``dram_bytes_per_cycle``. Energy, summed over tiles: arrays ``share*P*J*rows_active*C*mvm_cell_pj``;
  DACs ``share*P*J*rows_active*dac_pj_at(dac_bits)``; ADCs ``conversions*adc_pj_at(adc_bits)`` with
  ``conversions = passes*C`` (``C/2`` when differential pairs are sensed together); shift-add
  ``conversions*shift_add_pj``, plus one add per position and converted column whose ADC range has
  an offset (a calibrated range, :mod:`cimc.cim.adc`: the offset times the column's conversion count
  is added once to its shift-add sum) at ``shift_add_pj``; buffers ``4*share*P*ch`` bytes of
  accumulators written plus ``P*rows`` bytes of input read (the distinct input rows of its tiles, read
  once and broadcast to the macros that share them) at ``buffer_pj_per_byte``, the input also crossing
  the interconnect at ``noc_pj_per_byte``; ``macs = sum of share*P*rows_active*ch`` (whole weights).
  Spills (DRAM at ``dram_pj_per_byte``): the layer's input activation (its raw feature map, one byte
  per element) beyond ``act_buffer_bytes`` lives in DRAM: the first round (no accumulator operand)
  pays its producer writing that share once, and every round reads the share of the rows it reads;
  the layer's int32 accumulators (``4*P*channels`` bytes) beyond ``out_buffer_bytes`` spill: that
  share of every accumulator byte a round writes goes to DRAM and is read back (by the next round or
  the consumer).
- ``sram.load``: per tile (each replica is a tile) ``bits = r*c*cell_bits``, ``bytes = ceil(bits/8)``;
  ``cycles = sum of r*write_row_cycles + bytes/dram_bytes_per_cycle``; energy: arrays
  ``bits*write_bit_pj``, DRAM ``bytes*dram_pj_per_byte``; it writes ``r*c`` cells of its macro
  (one-time unless another load writes that macro: see :func:`cimc.cost.program_cost`).
- every other op (requantization, ``vec.*`` helpers, attention's ``q.act_matmul`` and the float matrix ops
  that run with ``allow_float``, by their MACs): the vector unit every target shares
  (:func:`cimc.cost.vector_unit_cost`).
"""

from __future__ import annotations

import math

import numpy as np

from cimc.cim.adc import Adc
from cimc.cim.tilemap import TileMap
from cimc.cim.work import work
from cimc.converters import ADC_AREA, DAC_AREA
from cimc.cost import AreaPart, Cost, Write, counts, num_elements, spilled_fraction, vector_unit_cost
from cimc.ir.core import Node
from cimc.targets.sram_cim.spec import SramCimSpec

__all__ = ["area", "op_cost"]

def _count(shape) -> int:
    return math.prod(d if isinstance(d, int) else 1 for d in shape) if shape is not None else 1


def _mvm_cost(node: Node, s: SramCimSpec) -> Cost:
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
    spans = np.unique(tiles.table[:, :3], axis=0)
    rows_read = int((spans[:, 2] - spans[:, 1]).sum())
    acc_written = 4 * P * float((w.share * w.channels).sum())
    active = w.share * P * J * w.rows
    parts = {"arrays": float((active * w.columns).sum()) * s.mvm_cell_pj,
             "dac": float(active.sum()) * s.dac_pj_at(dac_bits),
             "adc": converted * s.adc_pj_at(adc_bits),
             "shift_add": (converted + _offset_adds(a, tiles, w.share, P)) * s.shift_add_pj,
             "buffers": (acc_written + P * rows_read) * s.buffer_pj_per_byte,
             "interconnect": P * rows_read * s.noc_pj_per_byte}
    spill = _spills(node, s, P, rows_read, acc_written)
    if spill:
        parts["dram"] = spill * s.dram_pj_per_byte
    return Cost(cycles + spill / s.dram_bytes_per_cycle, sum(parts.values()), "array",
                round(float(w.macs.sum())), parts, {"spills": spill} if spill else {})


def _offset_adds(a: dict, tiles: TileMap, share: np.ndarray, P: int) -> float:
    """Adds of ADC offsets: per tile, its share of the positions times its converted columns with an offset."""
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


def _spills(node: Node, s: SramCimSpec, P: int, rows_read: int, acc_written: float) -> float:
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


def _load_cost(node: Node, s: SramCimSpec) -> Cost:
    t = node.attrs["tiles"].table
    r, c = t[:, 2] - t[:, 1], (t[:, 4] - t[:, 3]) * (t[:, 6] - t[:, 5])
    bits = r * c * s.cell_bits
    nbytes = float((-(-bits // 8)).sum())
    writes = tuple(Write(arr, 0, n) for arr, n in zip(t[:, 7].tolist(), (r * c).tolist(), strict=True))
    parts = {"arrays": float(bits.sum()) * s.write_bit_pj, "dram": nbytes * s.dram_pj_per_byte}
    return Cost(float((r * s.write_row_cycles).sum() + nbytes / s.dram_bytes_per_cycle), sum(parts.values()),
                "load", 0, parts, {"weights": nbytes}, writes)


def op_cost(node: Node, spec: SramCimSpec) -> Cost:
    """Cost of one program op on the sram-cim target (formulas in the module docstring)."""
    s = spec
    if node.op == "sram.mvm":
        return _mvm_cost(node, s)
    if node.op == "sram.load":
        return _load_cost(node, s)
    return vector_unit_cost(node, s)


def area(s: SramCimSpec) -> list[AreaPart]:
    """The chip's blocks (the target's ``area``): cells, ADCs at ``adc_bits``, word-line DACs at ``dac_bits``,
    shift-adds, buffers and vector lanes, each citing its spec parameter's source (and the law that moved it)."""
    src = {p.name: p.source for p in s.params()}
    return [
        AreaPart("arrays", f"SRAM-CIM cells ({s.macros} macros x {s.rows} x {s.cols})", s.macros * s.rows * s.cols,
                 s.cell_area_um2, src["cell_area_um2"]),
        AreaPart("adc", f"{s.adc_bits}-b ADCs ({s.adcs} per macro)", s.macros * s.adcs, s.adc_area_um2_at(s.adc_bits),
                 f"{src['adc_area_um2']}; at {s.adc_bits} b by the {ADC_AREA.quantity} law {ADC_AREA.formula} "
                 f"({ADC_AREA.source})"),
        AreaPart("dac", f"{s.dac_bits}-b word-line DACs (one per row)", s.macros * s.rows,
                 s.dac_area_um2_at(s.dac_bits), f"{src['dac_area_um2']}; at {s.dac_bits} b by the "
                 f"{DAC_AREA.quantity} law {DAC_AREA.formula}"),
        AreaPart("shift_add", "shift-add units (one per ADC)", s.macros * s.adcs, s.shift_add_area_um2,
                 src["shift_add_area_um2"]),
        AreaPart("buffers", f"activation buffer ({s.act_buffer_bytes} B)", 8 * s.act_buffer_bytes, s.sram_bit_area_um2,
                 src["sram_bit_area_um2"]),
        AreaPart("buffers", f"output buffer ({s.out_buffer_bytes} B)", 8 * s.out_buffer_bytes, s.sram_bit_area_um2,
                 src["sram_bit_area_um2"]),
        AreaPart("vector_unit", f"vector unit lanes ({s.vec_lanes})", s.vec_lanes, s.vec_lane_area_um2,
                 src["vec_lane_area_um2"]),
    ]
