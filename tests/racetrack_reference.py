"""A slow reference of the racetrack instructions, written from the definitions in ``cimc.targets.racetrack.ops``
(its module docstring), read by read, to check the executor against.

It runs a whole program: ``rt.*`` ops here, state by state in Python loops, every other op with its registered
implementation. The tracks are dictionaries of physical domains: a write puts a piece's word for domain ``d``
at ``d + offset`` (the MU's commanded offset then); a port ``j`` of an MU at commanded offset ``o`` with
misalignment ``e`` reads physical domain ``j * segment + o + e``. A sweep routes to the MAC cell of port
``j`` the activation of the weight the pieces place at ``j * segment + start + t * step`` (relative to the
write), as the program expects. Faults are drawn as the definition says (one ``rng.random((samples, steps,
MUs))`` per instruction that shifts) and applied step by step. Only for tiny programs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cimc.ir.core import Graph
from cimc.ir.opdef import OpContext, lookup


class _Steps:
    """The one-domain steps of one instruction over MUs ``mus``: faults drawn at the first step, misalignments
    updated after each step and realigned by the guard."""

    def __init__(self, mc: _Machine, rng, mus: range, count: int, rate: float, guard: int, samples: int) -> None:
        self.mc, self.rng, self.mus, self.count, self.rate, self.guard, self.samples = (
            mc, rng, mus, count, rate, guard, samples)
        self.u: np.ndarray | None = None
        self.s = 0

    def step(self) -> None:
        if self.u is None and self.rate > 0:
            self.u = self.rng.random((self.samples, self.count, len(self.mus)))
        for n in range(self.samples):
            for i, m in enumerate(self.mus):
                e = self.mc.err[n].get(m, 0)
                u = None if self.u is None else self.u[n, self.s, i]
                if u is not None:
                    e += 1 if u > 1 - self.rate / 2 else -1 if u < self.rate / 2 else 0
                self.mc.err[n][m] = 0 if self.guard and (self.s + 1) % self.guard == 0 else e
        self.s += 1

    def finish(self) -> None:
        assert self.s == self.count
        if self.guard and self.count:
            for n in range(self.samples):
                for m in self.mus:
                    self.mc.err[n][m] = 0


class _Machine:
    def __init__(self, samples: int) -> None:
        self.words: dict[int, dict[tuple[int, int], int]] = {}  # mu -> (lane, physical domain) -> word
        self.place: dict[int, dict[tuple[int, int], int]] = {}  # mu -> (lane, domain as written) -> flat index
        self.shift: dict[int, int] = {}  # mu -> its offset when written
        self.offset: dict[int, int] = {}
        self.err = [dict() for _ in range(samples)]  # sample -> mu -> misalignment


def _write(mc: _Machine, a, words: np.ndarray, pieces: np.ndarray) -> None:
    m0, m1 = a["mus"]
    for m in range(m0, m1):
        mc.words[m], mc.place[m], mc.shift[m] = {}, {}, mc.offset.get(m, 0)
        for e in mc.err:
            e[m] = 0
    D = a["domains"]
    for flat, stride, n, mu, lane, d0 in pieces.tolist():
        for i in range(n):
            if -D <= d0 + i + mc.shift[mu] < 2 * D:  # the data domains and the overflow domains around them
                mc.words[mu][(lane, d0 + i + mc.shift[mu])] = int(words.reshape(-1)[flat + i * stride])
            mc.place[mu][(lane, d0 + i)] = flat + i * stride


def _mac(mc: _Machine, a, x: np.ndarray, pieces: np.ndarray, rng, samples: int) -> np.ndarray:
    G, K, N = a["matrix"]
    cols = a.get("layout", "rows") == "cols"
    ax = 0 if cols or x.ndim < 2 else a.get("sample_axis", 0)
    x = np.moveaxis(x, ax, 0)  # rows: the samples first
    L = x.shape[3] if cols else max(1, math.prod(x.shape[1:-1]))
    xs = x.transpose(1, 3, 0, 2) if cols else x.reshape(samples, L, 1, K)  # [S, L, G, K]
    y = np.zeros((samples, L, G * N), np.int64)
    m0, m1 = a["mus"]
    mus = range(m0, m1)
    S, step, turn = a["states"], a.get("step", 1), a.get("turn", 0)
    start, seg, B = a.get("start", 0), a["segment"], a["block"]
    place = {m: {k: v for k, v in mc.place.get(m, {}).items()} for m in mus}
    lanes = {lane for m in mus for lane, _ in place[m]} | {lane for m in mus for lane, _ in mc.words.get(m, {})}
    blocks = -(-L // B)
    per_block = (S - 1) * abs(step) + abs(turn)
    steps = _Steps(mc, rng, mus, blocks * per_block, a.get("fault_rate", 0.0), a.get("guard", 0), samples)
    offset = {m: mc.offset.get(m, 0) for m in mus}

    def read(t: int, ps: range) -> None:
        for m in mus:
            for lane in lanes:
                for j in range(a["ports"]):
                    flat = place[m].get((lane, j * seg + start + t * step))
                    if flat is None:
                        continue
                    g, k, n = np.unravel_index(flat, (G, K, N))
                    for s in range(samples):
                        word = mc.words.get(m, {}).get((lane, j * seg + offset[m] + mc.err[s].get(m, 0)), 0)
                        for p in ps:
                            y[s, p, g * N + n] += word * int(xs[s, p, g, k])

    def move(d: int) -> None:
        for _ in range(abs(d)):
            steps.step()
            for m in mus:
                offset[m] += 1 if d > 0 else -1

    for b in range(blocks):
        back = a.get("alternate", 0) and b % 2 == 1
        order = list(range(S))[::-1] if back else list(range(S))
        for i, t in enumerate(order):
            read(t, range(b * B, min(L, (b + 1) * B)))
            if i < S - 1:
                move(-step if back else step)
        move(turn)
    steps.finish()
    for m in mus:
        mc.offset[m] = offset[m]
    y = y.transpose(0, 2, 1) if cols else y.reshape(*x.shape[:-1], G * N)
    return np.moveaxis(y, 0, ax)


def run(graph: Graph, inputs: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Run ``graph`` (a racetrack program) on ``inputs``: ``rt.*`` ops by this reference, the rest by their
    implementations; results wrap to int32 where the ops give int32."""
    env: dict[int, Any] = {id(v): inputs[v.name] for v in graph.inputs}
    env |= {id(v): v.const for v in graph.constants.values()}
    rng = np.random.default_rng(seed)
    samples = len(next(iter(inputs.values())))
    mc = _Machine(samples)
    for node in graph.nodes:
        ins = [None if v is None else env[id(v)] for v in node.inputs]
        a = {k: v for k, v in node.attrs.items()}
        if node.op == "rt.write":
            _write(mc, a, ins[0], ins[1])
            out = np.asarray(0, np.int32)
        elif node.op == "rt.shift":
            m0, m1 = a["mus"]
            steps = _Steps(mc, rng, range(m0, m1), abs(a["distance"]), a.get("fault_rate", 0.0), a.get("guard", 0),
                           samples)
            for _ in range(abs(a["distance"])):
                steps.step()
            steps.finish()
            for m in range(m0, m1):
                mc.offset[m] = mc.offset.get(m, 0) + a["distance"]
            out = np.asarray(0, np.int32)
        elif node.op == "rt.mac":
            r = _mac(mc, a, ins[0], ins[2], rng, samples)
            acc = ins[3] if len(ins) > 3 and ins[3] is not None else 0
            out = (np.asarray(acc, np.int64) + r).astype(np.int32)
        else:
            opdef = lookup(node.op)
            out = opdef.impl(OpContext(opdef.attr_values(node.attrs), len(node.outputs), node.name, rng, {}), *ins)
        outs = out if isinstance(out, tuple | list) else (out,)
        for v, o in zip(node.outputs, outs, strict=False):
            env[id(v)] = o
    return {v.name: np.asarray(env[id(v)]) for v in graph.outputs}
