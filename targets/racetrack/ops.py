"""racetrack instructions: ``rt.write``, ``rt.shift`` and ``rt.mac``, their definitions and executor.

Machine (``docs/racetrack.md``): macro units (MUs) of tracks that shift together; an MU holds ``lanes``
lanes of weight words, each lane ``D = domains`` domains long, read by ``ports`` ports spaced ``segment``
domains apart. An MU shifted by ``offset`` has port ``j`` over position ``j * segment + offset`` of each of
its lanes, where the data domains are positions ``0 .. D - 1`` when the MU was written at offset 0; the
positions around them (``-D .. -1`` and ``D .. 2D - 1``) are overflow domains, empty unless a write at
another offset put words there (words beyond them fall off the track), and a port over a position
holding no word reads 0.
The executor keeps, per MU, the words of its lanes, its *commanded* offset (the sum of the shifts the
program issued) and, per sample, the misalignment shift faults added (``err``); the ports read the
domains at ``offset + err``. Every sample of a batch is one inference that starts with the tracks as
the writes and the previous instructions of that inference left them.

A layer's weights are its ``[G, K, N]`` matrix (:func:`cimc.tiling.weight_matrix`) as an int8 constant,
and where they sit is a *pieces* table (int64 ``[n, 6]``, columns ``PIECE_COLUMNS``): piece ``(flat,
stride, len, mu, lane, d0)`` holds the weights of flat indices ``flat + i * stride`` (``i < len``) of the
row-major matrix at domains ``d0 + i`` of lane ``lane`` of MU ``mu``.

``rt.write(words: i8 [G, K, N], pieces) -> token``  attrs ``mus`` ``[m0, m1)``, ``lanes``, ``domains``:
    clears the MUs' lanes and writes each piece's words into its domains (a word lands ``offset``
    domains further when its MU is not at offset 0, as a write addresses domains relative to the
    ports); resets the MUs' fault misalignment (writes are verified). The token orders later ops.
``rt.shift(token) -> token``  attrs ``mus``, ``domains``, ``distance``, ``fault_rate``, ``guard``: shifts the MUs by
    ``distance`` domains, one step at a time (each step may fault, below).
``rt.mac(x: u8, token, pieces, acc: i32?) -> i32``  attrs ``mus``, ``start``, ``states``, ``step``,
    ``ports``, ``block``, ``turn``, ``layout``, ``channels``, ``matrix``, ``lanes``, ``domains``,
    ``segment``, ``act_bits``, ``fault_rate``, ``guard``, ``sample_axis``: MACs at the ports over a sweep.
    Positions: layout ``rows``, ``x [..., K]`` with the samples on axis ``sample_axis`` (``S`` samples;
    the other axes but the last are each sample's ``L`` positions; result ``[..., channels]``); layout
    ``cols``, ``x [G, S, K, L]`` (``vec.im2col``, result ``[S, channels, L]``). Each sample's positions
    are cut into blocks of ``block`` consecutive positions; each block is one *sweep* of ``states``
    states: at state ``t`` the program expects port ``j`` (``j < ports``) over domain ``d(t) = j *
    segment + start + t * step`` and streams, for every position ``p`` of the
    block, the activation ``x[p, g, k]`` of the weight the pieces put at ``(mu, lane, d(t))`` to the
    MAC cell, which adds ``word * x`` into output ``(p, g * N + n)``; the word is whatever sits under
    the port: at domain ``d(t) + (offset - expected offset) + err``. A block visits its states in
    order, shifting the MUs by ``step`` from one to the next (with ``alternate = 1`` every other block
    visits them last to first, shifting by ``-step``: a serpentine), then shifts them by ``turn``
    (``-(states - 1) * step`` rewinds a forward block to where it started; 0 with ``alternate``).
    The result is ``acc`` (zeros if absent) plus the sums, int32 wrapping like C. With no faults and
    every MU where the program expects it, holding what its pieces say, the result is the exact
    integer product of ``x`` with the swept weights, which the executor computes as float32 (or
    float64) GEMMs; otherwise it follows the reads above, state by state, with the same bits.

Shift faults (``fault_rate > 0``): each one-domain step of each MU, for each sample, over- or
under-shifts by one domain with probability ``fault_rate / 2`` each, drawn from the run's seeded
generator in program order: an instruction that shifts draws ``u = rng.random((samples, steps, MUs))``
(its steps in the order it takes them), and step ``s`` of MU ``m`` in sample ``n`` adds one domain to the
MU's misalignment when ``u[n, s, m] > 1 - fault_rate / 2`` and takes one away when ``u[n, s, m] <
fault_rate / 2``. The misalignment persists (and adds up) until a guard check: with
``guard = k > 0``, after every ``k``-th step of an instruction and at its end the MU is realigned to
its commanded offset (misalignment 0). Misalignment never corrects a wrong commanded offset.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cimc.errors import CimcError, VerifyError
from cimc.ir.core import Graph
from cimc.ir.opdef import REQUIRED, AttrSpec, InferContext, op_def
from cimc.ir.types import DType, TensorType
from cimc.limits import check_size
from cimc.ops._infer import require
from cimc.ops.nn import to_dtype

__all__ = ["OPS", "PIECE_COLUMNS", "STATE", "Tracks", "check_pieces", "commanded_offsets", "positions", "rt_mac",
           "rt_shift", "rt_write", "sweep_steps", "sweep_totals", "swept"]

STATE = "rt.tracks"
"""Key of the machine (:class:`Tracks`) in the interpreter's machine state."""
PIECE_COLUMNS = ("flat", "stride", "len", "mu", "lane", "d0")
"""Columns of a pieces table (module docstring)."""
_WORK = 1 << 22
"""Elements of the fault path's per-chunk work arrays (samples are taken in chunks of about this size)."""


# ---- the machine ------------------------------------------------------------------------------------
@dataclass
class Tracks:
    """What the MUs hold during a run: per MU the ``(words, pieces, shift)`` of its last write (``shift``: its
    offset then), its commanded offset, and per sample the misalignment faults left (``err [samples, mus]``,
    ``None`` until a fault). The words as domains (:meth:`domain_words`) are built from the writes when an
    instruction needs them; an aligned, fault-free ``rt.mac`` reads its writes' constants directly."""

    domains: int
    holds: list[Any] = field(default_factory=list)
    offset: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    err: np.ndarray | None = None
    _words: np.ndarray = field(init=False)
    _fresh: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __post_init__(self) -> None:
        self._words = np.zeros((0, 0, 3 * self.domains), np.int16)  # positions -D .. 2D - 1

    def grow(self, mus: int, lanes: int) -> None:
        """Make room for MUs ``0 .. mus - 1`` with ``lanes`` lanes (new ones empty and at offset 0)."""
        m0, l0 = self._words.shape[:2]
        if mus > m0 or lanes > l0:
            check_size("the racetrack's tracks", (max(mus, m0), max(lanes, l0), 3 * self.domains), 2)
            words = np.zeros((max(mus, m0), max(lanes, l0), 3 * self.domains), np.int16)
            words[:m0, :l0] = self._words
            self._words = words
            more = max(0, mus - m0)
            self.offset = np.concatenate([self.offset, np.zeros(more, np.int64)])
            self._fresh = np.concatenate([self._fresh, np.ones(more, bool)])
            self.holds += [None] * more
            if self.err is not None:
                self.err = np.concatenate([self.err, np.zeros((len(self.err), more), np.int64)], 1)

    def write(self, m0: int, m1: int, words: np.ndarray, pieces: np.ndarray) -> None:
        """Record a write of MUs ``m0 .. m1 - 1`` (module docstring: ``rt.write``)."""
        for m in range(m0, m1):
            self.holds[m] = (words, pieces, int(self.offset[m]))
        self._fresh[m0:m1] = False
        if self.err is not None:
            self.err[:, m0:m1] = 0

    def domain_words(self, m0: int, m1: int) -> np.ndarray:
        """The words at the positions ``-D .. 2D - 1`` of MUs ``m0 .. m1 - 1`` (int16 ``[m1 - m0, lanes, 3D]``, position
        ``p`` at index ``p + D``)."""
        by_write: dict[tuple[int, int], list[int]] = {}
        for m in range(m0, m1):
            if not self._fresh[m]:
                self._words[m] = 0
                if self.holds[m] is not None:
                    by_write.setdefault((id(self.holds[m][0]), id(self.holds[m][1])), []).append(m)
        for ms in by_write.values():
            words, pieces, _ = self.holds[ms[0]]
            mu, lane, d, flat = _expand(pieces)
            pick = np.isin(mu, ms)
            mu, lane, flat = mu[pick], lane[pick], flat[pick]
            shift = np.zeros(max(ms) + 1, np.int64)
            shift[ms] = [self.holds[m][2] for m in ms]
            d = d[pick] + shift[mu]
            ok = (d >= -self.domains) & (d < 2 * self.domains)
            self._words[mu[ok], lane[ok], d[ok] + self.domains] = words.reshape(-1)[flat[ok]]
        self._fresh[m0:m1] = True
        return self._words[m0:m1]

    def misalignment(self, samples: int) -> np.ndarray:
        """``err`` for ``samples`` samples (zeros before any fault)."""
        if self.err is None:
            return np.zeros((samples, len(self.offset)), np.int64)
        if len(self.err) == samples:
            return self.err
        if len(self.err) == 1:
            return np.repeat(self.err, samples, 0)
        raise CimcError(f"the tracks hold misalignments of {len(self.err)} samples, this instruction has {samples}")


def _tracks(ctx, domains: int, mus: tuple[int, int], lanes: int) -> Tracks:
    t = ctx.state.get(STATE)
    if t is None:
        t = ctx.state[STATE] = Tracks(domains)
    if t.domains != domains:
        raise CimcError(f"this instruction's tracks have {domains} domains, earlier ones {t.domains}")
    t.grow(mus[1], lanes)
    return t


def sweep_steps(states: int, step: int, turn: int, alternate: int, blocks: int,
                ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The schedule of an ``rt.mac`` of ``blocks`` blocks: the one-domain steps taken before each state
    (int64 ``[blocks, states]``, state ``t`` as the pieces number it), the commanded offset minus the one
    the program expects at each block (int64 ``[blocks]``: 0 for a consistent program), the total steps
    and the net change of the offset."""
    check_size("a sweep's schedule", (blocks, states), 8)
    s = abs(step)
    per_block = (states - 1) * s + abs(turn)
    t = np.arange(states, dtype=np.int64)
    b = np.arange(blocks, dtype=np.int64)
    back = (b % 2 == 1) & bool(alternate)  # blocks that visit the states last to first
    order = np.where(back[:, None], states - 1 - t, t)
    drift = b * turn + np.where(bool(alternate), 0, b * (states - 1) * step)
    return (b[:, None] * per_block + order * s, drift, *sweep_totals(states, step, turn, alternate, blocks))


def sweep_totals(states: int, step: int, turn: int, alternate: int, blocks: int) -> tuple[int, int]:
    """The total one-domain steps and the net change of the offset of an ``rt.mac`` of ``blocks`` blocks (the
    last two results of :func:`sweep_steps`, without its schedule)."""
    states, step, turn, blocks = int(states), int(step), int(turn), int(blocks)
    per_block = (states - 1) * abs(step) + abs(turn)
    return blocks * per_block, blocks * turn + ((blocks % 2) if alternate else blocks) * (states - 1) * step


def _faults(ctx, samples: int, steps: int, mus: int, rate: float, guard: int, start: np.ndarray,
            ) -> np.ndarray:
    """Misalignment ``[samples, steps + 1, mus]`` after each of ``steps`` one-domain steps (index 0: before
    the first), from ``start [samples, mus]``: seeded faults of ``rate`` per step, guard checks every
    ``guard`` steps (0: none)."""
    check_size("the shift faults of an instruction", (samples, steps + 1, mus), 8)
    u = ctx.rng.random((samples, steps, mus))
    f = (u > 1 - rate / 2).astype(np.int64) - (u < rate / 2)
    c = np.zeros((samples, steps + 1, mus), np.int64)
    np.cumsum(f, axis=1, out=c[:, 1:])
    if guard <= 0:
        return c + start[:, None, :]
    checked = np.arange(steps + 1) // guard * guard  # the last check at or before each step
    e = c - c[:, checked, :]
    e[:, :guard] += start[:, None, :]
    return e


def _shift_faults(ctx, t: Tracks, mus: tuple[int, int], steps: int, rate: float, guard: int,
                  samples: int) -> np.ndarray | None:
    """Per-step misalignment of MUs ``mus`` over ``steps`` steps (``[samples, steps + 1, M]``), its end
    state stored in ``t.err`` (realigned when guarded); ``None`` without faults."""
    if rate <= 0 or steps <= 0:
        return None
    m0, m1 = mus
    err = t.misalignment(samples).copy()
    e = _faults(ctx, samples, steps, m1 - m0, rate, guard, err[:, m0:m1])
    err[:, m0:m1] = 0 if guard > 0 else e[:, -1]
    t.err = err
    return e


# ---- pieces and reads ---------------------------------------------------------------------------------
_CACHE: dict[tuple, tuple[Any, Any]] = {}
"""Per pieces table (while it lives): its expansion and checks, an instruction's reads, its GEMM blocks."""


def _cached(owners: tuple[np.ndarray, ...], key: tuple, make, keep: bool = True):
    """``make()`` for the constants ``owners`` and ``key``, computed once while they all live (``keep = False``: a
    value made now is not kept; one kept before is still read)."""
    k = (*(id(o) for o in owners), *key)
    hit = _CACHE.get(k)
    if hit is not None and all(r() is o for r, o in zip(hit[0], owners, strict=True)):
        return hit[1]
    val = make()
    if not keep:
        return val
    try:
        refs = tuple(weakref.ref(o, functools.partial(_forget, _CACHE, k)) for o in owners)
    except TypeError:
        return val
    _CACHE[k] = (refs, val)
    return val


def _forget(cache: dict, key: tuple, _ref: object) -> None:
    """Drop a cache entry whose constant is gone (``cache`` bound when the entry is made: the module's globals
    may be gone when a constant dies at interpreter exit)."""
    cache.pop(key, None)


def _expand(pieces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every placed weight of a pieces table: its ``(mu, lane, domain, flat index)``, int64 each."""
    def make():
        flat, stride, n, mu, lane, d0 = (pieces[:, i] for i in range(6))
        return _runs(flat, stride, n, mu, lane, d0, np.ones(len(pieces), np.int64))[:4]
    return _cached((pieces,), ("expand",), make)


def _runs(flat: Any, fstride: Any, n: Any, mu: Any, lane: Any, d: Any, dstride: Any, t0: Any = None,
          tdir: Any = None) -> tuple[Any, Any, Any, Any, Any]:
    """Elements of runs (``i < n``): ``(mu, lane, d + i*dstride, flat + i*fstride, t0 + i*tdir)``."""
    n = np.asarray(n, np.int64)
    row = np.repeat(np.arange(len(n)), n)
    i = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
    t = None if t0 is None else t0[row] + i * tdir[row]
    return mu[row], lane[row], d[row] + i * dstride[row], flat[row] + i * fstride[row], t


@dataclass(frozen=True)
class Reads:
    """What an ``rt.mac`` reads, as runs: run ``r`` is ``n[r]`` weights, the ``i``-th of flat index ``flat +
    i*fstride`` at domain ``d + i*dstride`` of ``(mu, lane)``, passed by port ``port`` at state ``t0 + i*tdir``
    (a weight two ports pass is read twice)."""

    flat: np.ndarray
    fstride: np.ndarray
    n: np.ndarray
    mu: np.ndarray
    lane: np.ndarray
    d: np.ndarray
    dstride: np.ndarray
    port: np.ndarray
    t0: np.ndarray
    tdir: np.ndarray

    @property
    def words(self) -> int:
        """Weights read per block."""
        return int(self.n.sum())

    def elements(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every read, one by one: ``(mu, lane, domain, flat, state)`` int64 (cached)."""
        return _cached((self.flat,), ("elements",), lambda: _runs(
            self.flat, self.fstride, self.n, self.mu, self.lane, self.d, self.dstride, self.t0, self.tdir))


def swept(pieces: np.ndarray, a, keep: bool = True) -> Reads:
    """The weights an ``rt.mac`` with attributes ``a`` reads (cached per pieces table; ``keep = False``, as the cost
    report reads them once: not kept, the memory of a large program's reads is not held for a run that may not
    come): the pieces' weights on its MUs that a port it uses passes over at one of its states, run by run."""
    m0, m1 = _mus(a)
    S, step = int(a["states"]), int(a.get("step", 1))
    key = ("reads", m0, m1, a.get("start", 0), S, step, a["ports"], a["segment"])

    def make():
        ports, m = int(a["ports"]), abs(step) if step else 1
        if not ports or not len(pieces):
            return Reads(*(np.zeros(0, np.int64) for _ in range(10)))
        n, mu, d0 = pieces[:, 2], pieces[:, 3], pieces[:, 5]
        b = np.arange(ports, dtype=np.int64)[:, None] * int(a["segment"]) + int(a.get("start", 0))  # [port, 1]
        if step:  # port j passes domains lo, lo + m, ..., lo + (S - 1) * m
            lo = b if step > 0 else b - (S - 1) * m
            first = np.maximum(d0, lo)  # [port, piece]: the first domain of the piece the port passes
            if m > 1:
                first += (lo - first) % m
            count = np.minimum(d0 + (n - 1), lo + (S - 1) * m) - first  # <= -1 where it passes none
            if m > 1:
                count //= m
            count += 1
        else:
            count = ((d0 <= b) & (b < d0 + n)).astype(np.int64)
        keep = count > 0
        if mu.min() < m0 or mu.max() >= m1:
            keep &= (mu >= m0) & (mu < m1)
        # the reads of port 0, then of port 1, ...: the pieces on the MUs, in table order, by port
        at = np.flatnonzero(keep)
        port = at // len(pieces)
        i = at - port * len(pieces)
        on = np.take(pieces, i, axis=0).T  # the read pieces' columns (np.take gathers rows faster than pieces[i])
        base = b.reshape(-1)[port]
        first = base if not step else first.reshape(-1)[at]
        k = len(i)
        t0 = first - base if step >= 0 else base - first
        if m > 1:
            t0 //= m
        cols = (on[0] + (first - on[5]) * on[1], on[1] * m, count.reshape(-1)[at], on[3], on[4], first,
                np.full(k, m, np.int64), port, t0, np.full(k, 1 if step >= 0 else -1, np.int64))
        return Reads(*(np.ascontiguousarray(c, np.int64) for c in cols))
    return _cached((pieces,), key, make, keep)


def _overlap(pieces: np.ndarray, lanes: int, domains: int) -> int | None:
    """The index of a piece that shares a domain with another, or ``None`` (cached)."""
    def make():
        cell = (pieces[:, 3] * lanes + pieces[:, 4]) * domains + pieces[:, 5]
        end = cell + pieces[:, 2]
        order = None  # the layouts list their pieces in the order of their cells: no sort then
        if len(cell) > 1 and (cell[1:] < cell[:-1]).any():
            order = np.argsort(cell, kind="stable")
            cell, end = cell[order], end[order]
        bad = np.flatnonzero(cell[1:] < end[:-1])
        if not len(bad):
            return None
        return int(bad[0] + 1 if order is None else order[bad[0] + 1])
    return _cached((pieces,), ("overlap", lanes, domains), make)


# ---- definitions ------------------------------------------------------------------------------------
def _range_attr(doc: str) -> AttrSpec:
    return AttrSpec("ints", REQUIRED, doc, lo=0)


_GEOMETRY = {
    "mus": _range_attr("the MUs [m0, m1) the instruction drives (they shift together)"),
    "lanes": AttrSpec("int", REQUIRED, "lanes of weight words per MU (tracks // weight bits)", lo=1),
    "domains": AttrSpec("int", REQUIRED, "data domains per track", lo=1),
    "tracks": AttrSpec("int", REQUIRED, "tracks per MU (cost: shifts are counted per track)", lo=1),
}
_FAULTS = {
    "fault_rate": AttrSpec("float", 0.0, "probability of an over- or under-shift per one-domain step", lo=0, hi=1),
    "guard": AttrSpec("int", 0, "realign after every this many steps and at the end (0: no guard)", lo=0),
}


def _mus(attrs) -> tuple[int, int]:
    m = [int(v) for v in attrs["mus"]]
    if len(m) != 2 or m[0] >= m[1]:
        raise VerifyError(f"mus = {m} should be a non-empty range [m0, m1)")
    return m[0], m[1]


def _check_pieces(ctx: InferContext, index: int, op: str) -> np.ndarray | None:
    """The pieces operand's type (and, when constant, its values) checked against the attributes."""
    t = require(ctx, index)
    if t.dtype is not DType.i64 or (t.shape is not None and (len(t.shape) != 2 or t.shape[1] != len(PIECE_COLUMNS))):
        raise VerifyError(f"{op}: the pieces must be i64 [n, {len(PIECE_COLUMNS)}] ({', '.join(PIECE_COLUMNS)}), "
                          f"are {t}")
    p = ctx.const(index)
    if p is None:
        return None
    a = ctx.attrs
    check_pieces(p, _mus(a), a["lanes"], a["domains"], a["matrix"], op, written=op == "rt.write")
    return p


def check_pieces(p: np.ndarray, mus: tuple[int, int], lanes: int, domains: int, matrix: Any, op: str = "rt.write",
                 written: bool = True) -> None:
    """A ``VerifyError`` naming the first piece of the table ``p`` outside ``lanes`` lanes of ``domains`` domains or
    the ``[G, K, N]`` ``matrix``; for a table an ``rt.write`` writes (``written``), also the first outside the MUs
    ``mus`` and the first that writes a domain another piece writes. The type rules of ``rt.write`` and ``rt.mac``
    run it; the lowering runs it once on each layer's whole table (the rounds' tables are parts of it)."""
    m0, m1 = mus
    G, K, N = (int(v) for v in matrix)
    if not len(p):
        return
    cols = p.T.copy()  # the columns contiguous: their extremes in a few passes
    flat, stride, n, mu, lane, d0 = cols
    lo, hi = cols.min(axis=1), cols.max(axis=1)
    last = flat + (n - 1) * stride
    if not (lo[2] >= 1 and lo[4] >= 0 and hi[4] < lanes and lo[5] >= 0 and (d0 + n).max() <= domains
            and lo[0] >= 0 and last.max() < G * K * N and last.min() >= 0
            and (not written or (lo[3] >= m0 and hi[3] < m1))):  # else a piece lies outside: name the first
        inside = (n >= 1) & (lane >= 0) & (lane < lanes) & (d0 >= 0) & (d0 + n <= domains)
        inside &= (flat >= 0) & (flat + (n - 1) * stride < G * K * N) & (flat + (n - 1) * stride >= 0)
        if written:
            inside &= (mu >= m0) & (mu < m1)
        if not inside.all():
            i = int(np.argmin(inside))
            raise VerifyError(f"{op}: piece {i} {p[i].tolist()} is outside the MUs {[m0, m1]}, {lanes} lanes, "
                              f"{domains} domains or the {G}x{K}x{N} weight matrix")
    if written and (j := _overlap(p, lanes, domains)) is not None:
        raise VerifyError(f"{op}: piece {j} {p[j].tolist()} writes a domain another piece writes")


def _write_type(ctx: InferContext) -> list[TensorType]:
    w = require(ctx, 0)
    a = ctx.attrs
    if w.dtype is not DType.i8 or (w.shape is not None and tuple(w.shape) != tuple(int(v) for v in a["matrix"])):
        raise VerifyError(f"rt.write: the words must be i8 {list(a['matrix'])} (the matrix attribute), are {w}")
    _check_pieces(ctx, 1, "rt.write")
    return [TensorType(DType.i32, ())]


def _shift_type(ctx: InferContext) -> list[TensorType]:
    _mus(ctx.attrs)
    return [TensorType(DType.i32, ())]


def _mac_type(ctx: InferContext) -> list[TensorType]:
    x, a = require(ctx, 0), ctx.attrs
    _mus(a)
    if x.dtype is not DType.u8:
        raise VerifyError(f"rt.mac: x must be u8, is {x}")
    G, K, N = (int(v) for v in a["matrix"])
    if a["channels"] != G * N:
        raise VerifyError(f"rt.mac: channels = {a['channels']} but the matrix {list(a['matrix'])} has {G * N}")
    if a["ports"] * a["segment"] > a["domains"]:
        raise VerifyError(f"rt.mac: {a['ports']} ports {a['segment']} domains apart do not fit {a['domains']} domains")
    if a["states"] > a["domains"] or (a["states"] - 1) * abs(a["step"]) > 2 * (a["domains"] - 1):
        raise VerifyError(f"rt.mac: a sweep of {a['states']} states {a['step']} domains apart does not stay on "
                          f"tracks of {a['domains']} data domains (at most one state per domain, within the "
                          f"{2 * a['domains'] - 1} domains a track shifts over)")
    _check_pieces(ctx, 2, "rt.mac")
    if x.shape is None:
        return [TensorType(DType.i32, None)]
    cols = a["layout"] == "cols"
    if not cols and len(x.shape) > 1 and a["sample_axis"] >= len(x.shape) - 1:
        raise VerifyError(f"rt.mac: sample_axis = {a['sample_axis']} is not an axis of x {x} but its last (the "
                          f"reduction)")
    if cols and len(x.shape) != 4:
        raise VerifyError(f"rt.mac: layout 'cols' takes x [G, S, K, L] (vec.im2col), is {x}")
    k = x.shape[2] if cols else x.shape[-1]
    g = x.shape[0] if cols else 1
    if (isinstance(k, int) and k != K) or (isinstance(g, int) and g != G):
        raise VerifyError(f"rt.mac: x {x} does not fit the {G}x{K}x{N} weight matrix")
    dims = (x.shape[1], a["channels"], x.shape[3]) if cols else (*x.shape[:-1], a["channels"])
    out = TensorType(DType.i32, dims)
    if ctx.has(3):
        acc = ctx.types[3]
        if acc is not None and (acc.dtype is not DType.i32
                                or (acc.shape is not None and len(acc.shape) != len(dims))):
            raise VerifyError(f"rt.mac: the accumulator must be i32 {list(dims)}, is {acc}")
    return [out]


_MAC_ATTRS = {
    **_GEOMETRY, **_FAULTS,
    "start": AttrSpec("int", 0, "the offset the program expects its MUs at when the instruction starts"),
    "states": AttrSpec("int", REQUIRED, "states of one sweep (port positions read per block)", lo=1),
    "step": AttrSpec("int", 1, "domains shifted between consecutive states of a sweep"),
    "ports": AttrSpec("int", REQUIRED, "ports used, from port 0", lo=1),
    "segment": AttrSpec("int", REQUIRED, "domains between consecutive ports", lo=1),
    "block": AttrSpec("int", REQUIRED, "positions of a sample per sweep (one accumulator register each)", lo=1),
    "turn": AttrSpec("int", 0, "domains shifted after each block (a rewind: -(states - 1) * step)"),
    "alternate": AttrSpec("int", 0, "1: every other block visits the states last to first (serpentine)",
                          choices=(0, 1)),
    "layout": AttrSpec("str", "rows", "rows: x [..., K] -> [..., channels]; cols: x [G, S, K, L] -> [S, channels, L]",
                       choices=("rows", "cols")),
    "sample_axis": AttrSpec("int", 0, "layout rows: the axis of x whose entries are separate inferences (samples); "
                                      "the other axes but the last are a sample's positions", lo=0),
    "channels": AttrSpec("int", REQUIRED, "output channels of the layer (all groups)", lo=1),
    "matrix": AttrSpec("ints", REQUIRED, "[G, K, N] of the layer's weight matrix", lo=1),
    "act_bits": AttrSpec("int", 8, "bits of x (adds per multiply)", lo=1, hi=8),
    "weight_bits": AttrSpec("int", 8, "bits of a weight word (tracks per lane)", lo=2, hi=8),
}


@op_def("rt.write", inputs=2, infer=_write_type, side_effects=True, attrs={
    **_GEOMETRY, "matrix": _MAC_ATTRS["matrix"], "weight_bits": _MAC_ATTRS["weight_bits"]})
def rt_write(ctx, words, pieces):
    """Write the pieces' weight words into their MUs' domains; the result is a token (pieces written)."""
    a = ctx.attrs
    m0, m1 = _mus(a)
    _tracks(ctx, a["domains"], (m0, m1), a["lanes"]).write(m0, m1, words, pieces)
    return np.asarray(len(pieces), np.int32)


@op_def("rt.shift", infer=_shift_type, side_effects=True, attrs={
    "mus": _GEOMETRY["mus"], "domains": _GEOMETRY["domains"], "tracks": _GEOMETRY["tracks"], **_FAULTS,
    "distance": AttrSpec("int", REQUIRED, "domains to shift (signed)"),
    "samples": AttrSpec("int", 1, "inferences of a static batch, each shifting once (cost only)", lo=1)})
def rt_shift(ctx, token):
    """Shift the MUs by ``distance`` domains, step by step (each step may fault)."""
    a = ctx.attrs
    m0, m1 = _mus(a)
    t = _tracks(ctx, a["domains"], (m0, m1), 1)
    t.offset[m0:m1] += a["distance"]
    samples = len(t.err) if t.err is not None else int(ctx.state.get("rt.samples", 1))
    _shift_faults(ctx, t, (m0, m1), abs(a["distance"]), a["fault_rate"], a["guard"], samples)
    return np.asarray(a["distance"], np.int32)


@op_def("rt.mac", inputs=(3, 4), infer=_mac_type, attrs=_MAC_ATTRS, side_effects=True, accumulator=3)
def rt_mac(ctx, x, token, pieces, acc=None):
    """MACs at the ports over the sweeps of every position block (module docstring)."""
    a = ctx.attrs
    m0, m1 = _mus(a)
    t = _tracks(ctx, a["domains"], (m0, m1), a["lanes"])
    cols = a["layout"] == "cols"
    G, K, N = (int(v) for v in a["matrix"])
    samples, L = positions(x.shape, a)
    L = max(1, L)
    ctx.state["rt.samples"] = samples
    shape = (x.shape[1], a["channels"], x.shape[3]) if cols else (*x.shape[:-1], a["channels"])
    y = (acc if ctx.donated else acc.copy()) if acc is not None else np.zeros(shape, np.int32)
    if y.shape != shape:
        raise CimcError(f"rt.mac: the accumulator is {list(y.shape)}, expected {list(shape)}")
    before, drift, steps, net = sweep_steps(a["states"], a["step"], a["turn"], a["alternate"], -(-L // a["block"]))
    reads = swept(pieces, a)
    mismatch = t.offset[m0:m1] - a["start"]
    faults = _shift_faults(ctx, t, (m0, m1), steps, a["fault_rate"], a["guard"], samples)
    t.offset[m0:m1] += net
    if faults is None and t.err is not None and t.err[:, m0:m1].any():
        faults = np.broadcast_to(t.err[:, None, m0:m1], (len(t.err), steps + 1, m1 - m0))
    if faults is None and drift.any():
        faults = np.zeros((1, steps + 1, m1 - m0), np.int64)
    if faults is None and not mismatch.any() and all(
            t.holds[m] is not None and t.holds[m][1] is pieces and t.holds[m][2] == 0 for m in range(m0, m1)):
        _exact(ctx, x, y, t.holds[m0][0], pieces, reads, a)
        return y
    mu, lane, d, flat, st = reads.elements()
    words = t.domain_words(m0, m1)
    if faults is None:  # the same misalignment at every state: one effective matrix
        w = _effective(words, mu - m0, lane, d + mismatch[mu - m0], flat, G * K * N).reshape(G, K, N)
        y += to_dtype(_product(x, w, cols, samples, L), np.dtype(np.int32))  # wraps like C
        return y
    ax = 0 if cols or x.ndim < 2 else int(a["sample_axis"])  # _faulty takes the samples first
    _faulty(np.moveaxis(x, ax, 0), np.moveaxis(y, ax, 0), words, (mu - m0, lane, d, flat, st), mismatch, drift,
            faults, before, a, samples, L)
    return y


def positions(shape: tuple, a) -> tuple[Any, Any]:
    """``(samples, positions per sample)`` of an ``rt.mac`` with attributes ``a`` on an input of ``shape``
    (module docstring; a symbolic dim stays symbolic, a product with one is ``None``)."""
    if a.get("layout", "rows") == "cols":
        return (shape[1], shape[3]) if len(shape) == 4 else (1, 1)
    if len(shape) < 2:
        return 1, 1
    ax = int(a.get("sample_axis", 0))
    rest = [d for i, d in enumerate(shape[:-1]) if i != ax]
    return shape[ax], (math.prod(rest) if all(isinstance(d, int) for d in rest) else None)


# ---- execution ----------------------------------------------------------------------------------------
def _effective(words: np.ndarray, mu: np.ndarray, lane: np.ndarray, d: np.ndarray, flat: np.ndarray,
               size: int) -> np.ndarray:
    """The words the reads ``(mu, lane, position)`` meet in ``words`` (:meth:`Tracks.domain_words`), summed at each
    read's flat index (float64 ``[size]``): the matrix the MAC cells effectively multiply by."""
    D = words.shape[-1] // 3
    ok = (d >= -D) & (d < 2 * D)
    w = np.zeros(len(d), np.float64)
    w[ok] = words[mu[ok], lane[ok], d[ok] + D]
    return np.bincount(flat, weights=w, minlength=size)


def _product(x: np.ndarray, w: np.ndarray, cols: bool, samples: int, L: int) -> np.ndarray:
    """``x`` times the ``[G, K, N]`` matrix ``w`` (float64, exact), in the result layout."""
    if cols:  # x [G, S, K, L]: per group w[g].T @ x[g]
        y = np.matmul(w.transpose(0, 2, 1)[:, None], x.astype(np.float64))  # [G, S, N, L]
        return y.transpose(1, 0, 2, 3).reshape(samples, -1, L)
    return np.matmul(x.astype(np.float64), w[0])


def _box(reads: Reads, words: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    """The reads' bounding box ``(g0, g1, k0, k1, n0, n1)`` of the ``[G, K, N]`` matrix and the weights they
    read in it (a weight read twice counts twice). When the reads are runs down columns (or along rows)
    that cover the box exactly once, that is a slice of ``words``; else it is summed read by read."""
    G, K, N = words.shape
    g, k, n = np.unravel_index(reads.flat, (G, K, N))
    one = reads.n == 1
    for down in (True, False):  # runs down columns (line (g, n), from row k), or along rows (line (g, k), from n)
        along = (one | (reads.fstride == (N if down else 1))) & ((k if down else n) + reads.n <= (K if down else N))
        if not along.all():
            continue
        line, pos = (g * N + n, k) if down else (g * K + k, n)
        end = pos + reads.n
        k1, n1 = (k + reads.n, n + 1) if down else (k + 1, n + reads.n)
        box = (int(g.min()), int(g.max()) + 1, int(k.min()), int(k1.max()), int(n.min()), int(n1.max()))
        volume = (box[1] - box[0]) * (box[3] - box[2]) * (box[5] - box[4])
        order = np.lexsort((pos, line))
        twice = (line[order][1:] == line[order][:-1]) & (pos[order][1:] < end[order][:-1])
        if reads.words == volume and not twice.any():  # every weight of the box read once
            return box, words[box[0]:box[1], box[2]:box[3], box[4]:box[5]]
    _, _, _, flat, _ = reads.elements()
    g, k, n = np.unravel_index(flat, (G, K, N))
    box = (int(g.min()), int(g.max()) + 1, int(k.min()), int(k.max()) + 1, int(n.min()), int(n.max()) + 1)
    w = np.bincount(flat, weights=words.reshape(-1)[flat].astype(np.float64), minlength=G * K * N)
    return box, w.reshape(G, K, N)[box[0]:box[1], box[2]:box[3], box[4]:box[5]]


def _exact(ctx, x: np.ndarray, y: np.ndarray, words: np.ndarray, pieces: np.ndarray, reads: Reads, a) -> None:
    """The aligned, fault-free sweep: ``x`` times the swept weights, as exact float32 GEMMs over the bounding box
    of the reads' groups, rows and channels, its rows cut into chunks whose sums stay below 2**24 (a chunk of
    one row that cannot is float64)."""
    N = int(a["matrix"][2])
    cols = a["layout"] == "cols"
    key = ("exact", *(int(v) for v in a["mus"]), a["start"], a["states"], a["step"], a["ports"], a["segment"],
           a["act_bits"], cols)

    def make():
        if not reads.words:
            return None
        box, w = _box(reads, words)
        return box, [(k0, k1, np.ascontiguousarray(c.transpose(0, 2, 1) if cols else c, dtype=dt))
                     for k0, k1, c, dt in _chunks(w, box[2], (1 << a["act_bits"]) - 1)]
    hit = _cached((pieces, words), key, make)
    if hit is None:
        return
    (g0, g1, _, _, n0, n1), chunks = hit
    for k0, k1, w in chunks:
        xs = _rows(ctx.state, x, cols, g0, g1, k0, k1, w.dtype)
        r = np.matmul(w[:, None], xs) if cols else np.matmul(xs, w[0])  # cols: [Gb, S, Nb, L]
        r = r.astype(np.int32) if w.dtype == np.float32 else to_dtype(r, np.dtype(np.int32))  # exact; wraps like C
        if not cols:
            y[..., n0:n1] += r
        elif (n0, n1) == (0, N):  # whole groups: one contiguous channel range
            y[:, g0 * N:g1 * N, :] += r.transpose(1, 0, 2, 3).reshape(y.shape[0], -1, y.shape[2])
        else:
            for i, g in enumerate(range(g0, g1)):
                y[:, g * N + n0:g * N + n1, :] += r[i]


def _chunks(w: np.ndarray, k_first: int, xmax: int) -> list[tuple[int, int, np.ndarray, Any]]:
    """Rows of ``w [G, K, N]`` (row 0 is row ``k_first`` of the layer) in consecutive chunks ``(k0, k1, w, dtype)``
    whose products with inputs up to ``xmax`` sum exactly in float32 (every partial sum below 2**24)."""
    cum = np.concatenate([np.zeros((w.shape[0], 1, w.shape[2])), np.cumsum(np.abs(w), axis=1, dtype=np.float64)], 1)
    out, k, K = [], 0, w.shape[1]
    while k < K:
        fits = ((cum[:, k + 1:, :] - cum[:, k:k + 1, :]).max(axis=(0, 2)) * xmax) < (1 << 24)
        n = int(np.argmin(fits)) if not fits.all() else K - k  # rows from k that fit
        dt = np.float32 if n else np.float64
        n = max(n, 1)
        out.append((k_first + k, k_first + k + n, w[:, k:k + n], dt))
        k += n
    return out


def _rows(state: dict, x: np.ndarray, cols: bool, g0: int, g1: int, k0: int, k1: int, dt) -> np.ndarray:
    """Rows ``k0:k1`` of groups ``g0:g1`` of ``x`` in float type ``dt`` (exact for u8); the last conversion is
    kept for the next instruction (the rounds of a layer read the same rows)."""
    key = (g0, g1, k0, k1, np.dtype(dt).str)
    hit = state.get("rt.xs")
    if hit is not None and hit[0] is x and hit[1] == key:
        return hit[2]
    xs = (x[g0:g1, :, k0:k1, :] if cols else x[..., k0:k1]).astype(dt)
    state["rt.xs"] = (x, key, xs)
    return xs


def _faulty(x: np.ndarray, y: np.ndarray, words: np.ndarray, reads: tuple, mismatch: np.ndarray,
            drift: np.ndarray, faults: np.ndarray, before: np.ndarray, a, samples: int, L: int) -> None:
    """Each sample's blocks (``x`` and ``y`` with the samples first) with their own misalignments
    (``mismatch [M]`` at the start, ``drift [blocks]`` from the program's turns, ``faults [samples or 1,
    steps + 1, M]`` from faults): per (sample, block) the effective matrix of its reads (``(mu - m0, lane,
    domain, flat, state)``), times the block's positions."""
    G, K, N = (int(v) for v in a["matrix"])
    cols, B = a["layout"] == "cols", a["block"]
    rel, lane, d, flat, st = reads
    blocks = len(before)
    size = G * K * N
    xc = x.transpose(1, 3, 0, 2) if cols else x.reshape(samples, L, 1, K)  # [S, L, G, K]
    pad = blocks * B - L
    out = np.zeros((samples, blocks * B, G, N), np.float64)
    per = max(1, _WORK // max(1, blocks * max(size, len(flat))))
    for n0 in range(0, samples, per):
        n1 = min(samples, n0 + per)
        f = faults[n0:n1] if len(faults) > 1 else faults
        e = f[:, before[:, st], rel] + mismatch[rel] + drift[:, None]  # [n or 1, blocks, reads]
        e = np.broadcast_to(e, (n1 - n0, *e.shape[1:]))
        at = d + e + words.shape[-1] // 3  # index of the position read
        ok = (at >= 0) & (at < words.shape[-1])
        read = np.where(ok, words[rel, lane, np.clip(at, 0, words.shape[-1] - 1)], 0).astype(np.float64)
        pair = np.arange((n1 - n0) * blocks, dtype=np.int64).reshape(n1 - n0, blocks, 1) * size
        w = np.bincount((pair + flat).reshape(-1), weights=read.reshape(-1), minlength=(n1 - n0) * blocks * size)
        w = w.reshape(n1 - n0, blocks, G, K, N)
        xb = np.pad(xc[n0:n1], ((0, 0), (0, pad), (0, 0), (0, 0))).astype(np.float64)
        xb = xb.reshape(n1 - n0, blocks, B, G, K).transpose(0, 1, 3, 2, 4)  # [n, blocks, G, B, K]
        out[n0:n1] = np.matmul(xb, w).transpose(0, 1, 3, 2, 4).reshape(n1 - n0, blocks * B, G, N)
    r = out[:, :L].reshape(samples, L, G * N)
    r = r.transpose(0, 2, 1) if cols else r.reshape(*x.shape[:-1], G * N)
    y += to_dtype(r, np.dtype(np.int32))  # wraps like C


def commanded_offsets(graph: Graph) -> tuple[dict[int, int], list[str]]:
    """Walk a program's ``rt.*`` instructions without running them: the commanded offset of every MU at the
    end of one inference, and each ``rt.mac`` that starts where its MUs are not (by its node name). A
    lowering's program leaves every MU at 0 and has no such ``rt.mac``."""
    offset, seen = np.zeros(0, np.int64), np.zeros(0, bool)
    problems = []
    for node in graph.nodes:
        if not node.op.startswith("rt."):
            continue
        a = node.attrs
        m0, m1 = (int(v) for v in a["mus"])
        if m1 > len(offset):
            check_size("the MUs' offsets", (m1,), 9)
            offset = np.concatenate([offset, np.zeros(m1 - len(offset), np.int64)])
            seen = np.concatenate([seen, np.zeros(m1 - len(seen), bool)])
        seen[m0:m1] = True
        if node.op == "rt.shift":
            offset[m0:m1] += int(a["distance"])
        elif node.op == "rt.mac":
            if (offset[m0:m1] != int(a.get("start", 0))).any():
                problems.append(f"{node.name}: starts at offset {a.get('start', 0)}, its MUs are at "
                                f"{np.unique(offset[m0:m1]).tolist()}")
            x = node.operand(0).type.shape
            L = (positions(tuple(x), a)[1] or 1) if x is not None else 1
            _, net = sweep_totals(int(a["states"]), int(a.get("step", 1)), int(a.get("turn", 0)),
                                  int(a.get("alternate", 0)), -(-L // int(a["block"])))
            offset[m0:m1] += net
    return {m: int(offset[m]) for m in np.nonzero(seen)[0].tolist()}, problems


OPS = (rt_write, rt_shift, rt_mac)
"""The racetrack instructions, as the target lists them."""
