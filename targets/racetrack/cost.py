"""The racetrack cost model: ``op_cost`` of every op of a lowered program, and the chip's area.

Per op, from attributes, static shapes and the constant pieces table; a symbolic dim counts as 1, so
every figure is per inference (a static batch of ``S`` is ``S`` inferences). ``shifts`` (an event of the
report) counts one-domain shift steps summed over tracks: a step of an MU of ``T`` tracks is ``T``.

- ``rt.mac`` over ``M`` MUs, per sample: ``L`` positions in ``nb = ceil(L / block)`` blocks; ``W`` words
  read per block (the pieces' weights its ports pass over, :func:`~cimc.targets.racetrack.ops.swept`);
  ``steps`` one-domain steps (:func:`~cimc.targets.racetrack.ops.sweep_steps`). Energy: shifts
  ``steps * T * M * shift_pj``; port reads ``nb * W * weight_bits * read_pj_per_bit``; MAC cells ``W * L *
  act_bits * add_pj`` (a bit-serial multiply is one add per activation bit); buffers: each state reads the
  distinct activation rows its ports need once for all lanes (``A`` rows summed over states, one byte
  each, for every position: ``A * L`` bytes) and each accumulator run of a column in a port segment is
  read, added to and written back once per position (``8 * runs * L`` bytes), at ``buffer_pj_per_byte``.
  Time per block of ``n`` positions: ``states`` reads, and between states the larger of the shift
  (``|step| * shift_ns``) and the MACs on the word just read (``n * act_bits * add_cycles`` cycles), the
  last state's MACs overlapping the turn (``|turn| * shift_ns``): shifting hides behind computing
  whenever the MACs take longer. Guard checks (``ceil(steps / guard)`` per MU) each read one domain of
  every track and take a read time, not overlapped.
- ``rt.shift``: ``|distance|`` steps per inference (times its ``samples``): ``|distance| * shift_ns``,
  ``|distance| * T * M * shift_pj``, plus guard checks.
- ``rt.write``: ``bits = words * weight_bits`` written at ``write_pj_per_bit``, fetched from DRAM
  (``ceil(bits / 8)`` bytes at ``dram_pj_per_byte``); each MU brings every domain under port 0 (``2 * (D -
  1)`` steps, its shifts counted) and writes its lanes in parallel, MUs at once: ``max(DRAM time, D *
  write_ns + 2 * (D - 1) * shift_ns)``; it writes the MUs it covers (one-time unless another write
  rewrites them).
- every other op (requantization, ``vec.*`` helpers, attention's ``q.act_matmul``, float ops with
  ``allow_float``): the vector unit every target shares (:func:`cimc.cost.vector_unit_cost`).
"""

from __future__ import annotations

import numpy as np

from cimc.cost import AreaPart, Cost, Writes, counts, vector_unit_cost
from cimc.ir.core import Node
from cimc.targets.racetrack.ops import Reads, positions, sweep_totals, swept
from cimc.targets.racetrack.spec import RacetrackSpec

__all__ = ["area", "op_cost"]

def _cycles(ns: float, s: RacetrackSpec) -> float:
    return ns * s.clock_mhz / 1000.0


def _guard(steps: int, mus: int, a, s: RacetrackSpec) -> tuple[int, float, float]:
    """Guard checks per MU, their energy and time."""
    g = int(a.get("guard", 0))
    checks = -(-steps // g) if g > 0 and steps > 0 else 0
    return checks, checks * mus * int(a["tracks"]) * s.read_pj_per_bit, checks * s.read_ns


def _positions(node: Node) -> tuple[int, int]:
    """(samples, positions per sample) of an ``rt.mac``'s input."""
    return positions(tuple(counts(node.inputs[0])), node.attrs)


def _rows_and_runs(reads: Reads, G: int, K: int, N: int) -> tuple[int, int]:
    """Activation rows the buffer sends per position (distinct ``(state, group, row)`` of the reads) and
    accumulator runs (stretches of one port's consecutive reads feeding one output column). A run down a
    column reads rows ``k, k+1, ...`` at states ``t, t+1, ...``: it shares its rows with every run on the
    same diagonal ``(g, k - t)``; a run along a row reads one row at consecutive states; other reads (step
    above 1) count one row each. A row that a run down a column and one along a row both need at one
    state counts twice."""
    n, t0 = reads.n, reads.t0
    gk = reads.flat // N  # g * K + k
    down = (reads.fstride == N) & (reads.tdir == 1)
    if not down.all():
        down |= n == 1
    if down.all():  # every run down a column (as "cols" layouts read): each run starts its rows at its t0
        return _union_length(gk + gk // K * _T - t0, t0, t0 + n), len(n)
    along = ~down & (reads.fstride == 1)
    pick = np.nonzero(down | along)[0]
    n_pick, t_pick = n[pick], t0[pick]
    t_lo = np.where(reads.tdir[pick] > 0, t_pick, t_pick - n_pick + 1)
    gk_pick = gk[pick]
    key = np.where(down[pick], (gk_pick + gk_pick // K * _T - t_pick) * 2, gk_pick * 2 + 1)
    rest = int(n.sum())
    n_down = int(n[down].sum())
    rows = _union_length(key, t_lo, t_lo + n_pick) + rest - int(n_pick.sum())
    runs = int(np.count_nonzero(down)) + rest - n_down
    return rows, runs


_T = 1 << 20
"""Larger than any state index (keeps the diagonals of one group apart)."""


def _union_length(key: np.ndarray, start: np.ndarray, end: np.ndarray) -> int:
    """Total length of the union of intervals ``[start, end)`` on each line ``key``."""
    if not len(key):
        return 0
    first = int(start.min())
    big = int(end.max()) - first + 1
    lo, hi = int(key.min()), int(key.max())
    if (hi - lo + 1) * big < 1 << 62:  # the lines' own numbers keep them apart
        rank = key - lo
    else:
        rank = np.unique(key, return_inverse=True)[1].astype(np.int64).reshape(-1)
    shift = rank * big - first
    s0, e0 = shift + start, shift + end  # lines apart, in one order
    order = np.argsort(s0, kind="stable")
    s0, e0 = s0[order], e0[order]
    covered = np.maximum.accumulate(e0)  # each interval adds what lies beyond every interval before it
    added = e0[1:] - np.maximum(s0[1:], covered[:-1])
    return max(0, int(e0[0] - s0[0])) + int(added[added > 0].sum())


def _mac_cost(node: Node, s: RacetrackSpec) -> Cost:
    a = node.attrs
    m0, m1 = (int(v) for v in a["mus"])
    M, T = m1 - m0, int(a["tracks"])
    samples, L = _positions(node)
    B, S, step = int(a["block"]), int(a["states"]), int(a.get("step", 1))
    nb = -(-L // B)
    steps, _ = sweep_totals(S, step, int(a.get("turn", 0)), int(a.get("alternate", 0)), nb)
    reads = swept(node.operand(2).array, a, keep=False)  # read once here
    W = reads.words
    G, K, N = (int(v) for v in a["matrix"])
    bits, act = int(a.get("weight_bits", 8)), int(a.get("act_bits", 8))
    rows, runs = _rows_and_runs(reads, G, K, N)
    checks, guard_pj, guard_ns = _guard(steps, M, a, s)
    shifts = steps * T * M
    parts = {"shift": shifts * s.shift_pj, "port_reads": nb * W * bits * s.read_pj_per_bit,
             "mac_cells": W * L * act * s.add_pj, "buffers": (rows + 8 * runs) * L * s.buffer_pj_per_byte}
    if guard_pj:
        parts["guard"] = guard_pj
    parts = {k: v * samples for k, v in parts.items()}
    mac_ns = act * s.add_cycles * 1000.0 / s.clock_mhz  # one multiply, in ns
    last = L - (nb - 1) * B
    turn_ns = abs(int(a.get("turn", 0))) * s.shift_ns
    shift_ns = abs(step) * s.shift_ns

    def block_ns(n: int) -> float:
        return S * s.read_ns + (S - 1) * max(shift_ns, n * mac_ns) + max(n * mac_ns, turn_ns)

    ns = (nb - 1) * block_ns(B) + block_ns(last) + guard_ns
    events = {"shifts": shifts * samples}
    if checks:
        events["guard_checks"] = checks * M * samples
    return Cost(_cycles(ns, s) * samples, sum(parts.values()), "array", W * L * samples, parts, {}, (), events)


def _shift_cost(node: Node, s: RacetrackSpec) -> Cost:
    a = node.attrs
    m0, m1 = (int(v) for v in a["mus"])
    steps, samples = abs(int(a["distance"])), int(a.get("samples", 1))
    shifts = steps * int(a["tracks"]) * (m1 - m0)
    checks, guard_pj, guard_ns = _guard(steps, m1 - m0, a, s)
    parts = {"shift": shifts * s.shift_pj * samples}
    if guard_pj:
        parts["guard"] = guard_pj * samples
    events = {"shifts": shifts * samples}
    if checks:
        events["guard_checks"] = checks * (m1 - m0) * samples
    return Cost(_cycles(steps * s.shift_ns + checks * guard_ns, s) * samples, sum(parts.values()), "array", 0, parts,
                {}, (), events)


def _write_cost(node: Node, s: RacetrackSpec) -> Cost:
    a = node.attrs
    p = np.asarray(node.operand(1).array, np.int64)
    m0, m1 = (int(v) for v in a["mus"])
    D, T, bits = int(a["domains"]), int(a["tracks"]), int(a.get("weight_bits", 8))
    per_mu = np.bincount(p[:, 3] - m0, weights=p[:, 2], minlength=m1 - m0).astype(np.int64) * bits
    total = int(per_mu.sum())
    nbytes = float(-(-total // 8))
    steps = 2 * (D - 1)
    shifts = steps * T * (m1 - m0)
    parts = {"port_writes": total * s.write_pj_per_bit, "shift": shifts * s.shift_pj,
             "dram": nbytes * s.dram_pj_per_byte}
    cycles = max(nbytes / s.dram_bytes_per_cycle, _cycles(D * s.write_ns + steps * s.shift_ns, s))
    used = np.nonzero(per_mu)[0]
    writes = Writes(used + m0, 0, per_mu[used])
    return Cost(cycles, sum(parts.values()), "load", 0, parts, {"weights": nbytes}, writes, {"shifts": shifts})


def op_cost(node: Node, spec: RacetrackSpec) -> Cost:
    """Cost of one program op on the racetrack target (formulas in the module docstring)."""
    s = spec
    if node.op == "rt.mac":
        return _mac_cost(node, s)
    if node.op == "rt.shift":
        return _shift_cost(node, s)
    if node.op == "rt.write":
        return _write_cost(node, s)
    return vector_unit_cost(node, s)


def area(s: RacetrackSpec) -> list[AreaPart]:
    """The chip's blocks (the target's ``area``): track domains (data and overflow), ports, MAC cells (one per
    port for every two tracks: a lane of the narrowest, 2-bit, words) with their accumulator registers, the
    buffers and the vector lanes, each citing its spec parameter's source."""
    src = {p.name: p.source for p in s.params()}
    D = s.domains_per_track
    cells = s.mus * (s.tracks_per_mu // 2) * s.ports_per_track
    return [
        AreaPart("tracks", f"track domains ({s.mus} MUs x {s.tracks_per_mu} tracks x ({D} data + {D - 1} overflow))",
                 s.mus * s.tracks_per_mu * (2 * D - 1), s.domain_area_um2, src["domain_area_um2"]),
        AreaPart("ports", f"access ports ({s.ports_per_track} per track)", s.mus * s.tracks_per_mu * s.ports_per_track,
                 s.port_area_um2, src["port_area_um2"]),
        AreaPart("mac_cells", f"MAC cells ({cells})", cells, s.mac_cell_area_um2, src["mac_cell_area_um2"]),
        AreaPart("mac_cells", f"accumulator registers ({s.acc_regs} x 32 bits per MAC cell)",
                 cells * s.acc_regs * 32, s.sram_bit_area_um2, src["sram_bit_area_um2"]),
        AreaPart("buffers", f"activation buffer ({s.act_buffer_bytes} B)", 8 * s.act_buffer_bytes, s.sram_bit_area_um2,
                 src["sram_bit_area_um2"]),
        AreaPart("buffers", f"output buffer ({s.out_buffer_bytes} B)", 8 * s.out_buffer_bytes, s.sram_bit_area_um2,
                 src["sram_bit_area_um2"]),
        AreaPart("vector_unit", f"vector unit lanes ({s.vec_lanes})", s.vec_lanes, s.vec_lane_area_um2,
                 src["vec_lane_area_um2"]),
    ]
