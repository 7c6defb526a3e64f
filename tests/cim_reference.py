"""An independent slow model of the CIM array, written from the formulas of docs/array-model.md (not from
cimc's code): weights sliced bit by bit, cells written at their physical rows and columns, inputs applied
``dac_bits`` at a time, one physical row group of ``rows_per_op`` rows per conversion, every partial sum
through the ADC formula, shifted and added in Python loops. The executor is checked against it."""

from __future__ import annotations

import math

import numpy as np

from cimc.cim import TileMap
from cimc.cim.chip import SA0, SA1


def ref_slices(w: int, kind: str, bits: int, cell_bits: int) -> tuple[list[int], list[int], int]:
    """Cells, significances and offset of one weight, bit by bit from the encoding's definition."""
    def cut(u: int, n: int) -> tuple[list[int], list[int]]:
        cells, sig = [], []
        for s in range(math.ceil(n / cell_bits)):
            cells.append(sum(((u >> (s * cell_bits + b)) & 1) << b for b in range(cell_bits)))
            sig.append(2 ** (s * cell_bits))
        return cells, sig
    if kind == "twos-complement":
        cells, sig = cut(w % 2 ** (bits - 1), bits - 1)
        return [*cells, int(w < 0)], [*sig, -(2 ** (bits - 1))], 0
    if kind == "differential":
        pos, sig = cut(max(w, 0), bits - 1)
        neg, _ = cut(max(-w, 0), bits - 1)
        return pos + neg, sig + [-s for s in sig], 0
    cells, sig = cut(w + 2 ** (bits - 1), bits)
    return cells, sig, 2 ** (bits - 1)


def ref_adc(v: float, bits: int, step: int, offset: int, rounding: str) -> float:
    q = (v - offset) / step
    code = math.floor(q) if rounding == "floor" else round(q)  # Python's round: half to even
    return offset + step * min(max(code, 0), 2 ** bits - 1)


def reference(m, kind, bits, cell_bits, x_pos, load_map: TileMap, read_map: TileMap, *, rows_per_op, dac_bits,
              act_bits, adc_bits, adc_step, adc_offset, adc_group, rounding, skip, stuck=None, pairs=False):
    """``y[g][p, n]``: each tile of ``read_map`` on the array ``load_map`` wrote, per position, bit plane and
    physical row group (``x_pos[g]``: ``[P, K]`` inputs of group ``g``). ``pairs``: each slice's positive and
    negative column (differential encoding) sensed as one signed sum, converted once. A tile's complemented
    columns (``flip``) are written at ``levels - 1 - cell`` and read as ``(levels - 1) * sum(x)`` over the rows
    converted for the tile less the converted sum (a pair: its signed sum negated)."""
    G, _, N = m.shape
    R, C = load_map.physical
    levels = 2 ** cell_bits
    # what each array holds, written cell by cell at the load's physical rows and columns
    phys = {}
    for i in range(len(load_map)):
        g, k0, k1, c0, c1, s0, s1, arr, _ = (int(v) for v in load_map.table[i])
        img = np.zeros((R, C))
        rows, cols = load_map.rows_of(i), load_map.cols_of(i)
        flipped = set(load_map.flips_of(i).tolist())
        for kk in range(k1 - k0):
            for cc in range(c1 - c0):
                cells = ref_slices(int(m[g, k0 + kk, c0 + cc]), kind, bits, cell_bits)[0]
                for ss in range(s1 - s0):
                    col = cc * (s1 - s0) + ss
                    img[rows[kk], cols[col]] = levels - 1 - cells[s0 + ss] if col in flipped else cells[s0 + ss]
        if stuck is not None:
            img[stuck[arr] == SA0] = 0
            img[stuck[arr] == SA1] = levels - 1
        phys[arr] = img
    sig, offset = ref_slices(0, kind, bits, cell_bits)[1:]
    J = math.ceil(act_bits / dac_bits)
    P = x_pos[0].shape[0]
    y = [np.zeros((P, N), np.int64) for _ in range(G)]
    windows = [tuple(int(v) for v in read_map.table[i, :7]) for i in range(len(read_map))]
    for i in range(len(read_map)):
        g, k0, k1, c0, c1, s0, s1 = windows[i]
        arr = int(read_map.table[i, 7])
        replicas = [j for j in range(len(read_map)) if windows[j] == windows[i]]
        r, n = replicas.index(i), len(replicas)
        rows, cols = read_map.rows_of(i), read_map.cols_of(i)
        ns = s1 - s0
        # the columns converted: each one alone, or (positive, negative) pairs of the same channel and slice
        sensed = [(col, None) for col in range(len(cols))] if not pairs else \
            [(cc * ns + ss, cc * ns + ss + ns // 2) for cc in range(c1 - c0) for ss in range(ns // 2)]
        flipped = set(read_map.flips_of(i).tolist())
        converted = [kk for kk in range(k1 - k0) if (i, int(rows[kk]) // rows_per_op) not in skip]
        for p in range(r * P // n, (r + 1) * P // n):
            acc = np.zeros(len(sensed))
            for j in range(J):
                xj = [(int(x_pos[g][p, k0 + kk]) >> (j * dac_bits)) % 2 ** dac_bits for kk in range(k1 - k0)]
                for b in range(math.ceil(R / rows_per_op)):
                    mine = [kk for kk in range(k1 - k0) if rows[kk] // rows_per_op == b]
                    if not mine or (i, b) in skip:
                        continue
                    for col, (plus, minus) in enumerate(sensed):
                        v = sum(xj[kk] * phys[arr][rows[kk], cols[plus]] for kk in mine)
                        if minus is not None:
                            v -= sum(xj[kk] * phys[arr][rows[kk], cols[minus]] for kk in mine)
                        gi = 0 if adc_group == 0 else cols[plus] // adc_group
                        step = int(adc_step) if np.ndim(adc_step) == 0 else int(adc_step[i][gi])
                        off = int(adc_offset) if np.ndim(adc_offset) == 0 else int(adc_offset[i][gi])
                        acc[col] += 2 ** (j * dac_bits) * ref_adc(v, adc_bits, step, off, rounding)
            for col, (plus, minus) in enumerate(sensed):
                if plus in flipped:
                    acc[col] = -acc[col] if minus is not None else \
                        (levels - 1) * sum(int(x_pos[g][p, k0 + kk]) for kk in converted) - acc[col]
            for cc in range(c1 - c0):
                per = ns // 2 if pairs else ns
                y[g][p, c0 + cc] += int(sum(sig[s0 + ss] * acc[cc * per + ss] for ss in range(per)))
                if s0 == 0:
                    y[g][p, c0 + cc] -= offset * int(sum(int(x_pos[g][p, k]) for k in range(k0, k1)))
    return y
