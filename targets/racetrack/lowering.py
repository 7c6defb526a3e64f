"""The racetrack lowering pass ``lower-racetrack``: placement of weights along tracks, and the sweeps that read them.

Each array op with a constant weight (its ``[G, K, N]`` matrix, :func:`cimc.tiling.weight_matrix`; ``C =
G * N`` columns of ``K`` rows; ``L`` output positions per sample) becomes ``vec.im2col`` (q.conv) ->
per *round* one ``rt.write`` of its MUs and one ``rt.mac`` per *sweep group* (MUs with the same sweep
length, shifting together) summing into the previous result -> an ``rt.shift`` back to offset 0 after a
sweep that ends elsewhere -> ``Add`` bias -> ``vec.col2im`` (q.conv). An MU holds ``lanes = tracks //
bits`` lanes of ``D`` domains read by ``P`` ports ``E = D / P`` domains apart. The spec field
``placement`` chooses (``docs/racetrack.md`` has figures and a hand count):

- ``naive``: the weight tensor in its row-major (ONNX) order, lane after lane, MU after MU; only port 0
  reads; for every output position a block sweeps the lanes' ``S`` used domains (``S - 1`` shifts) and
  rewinds them (``S - 1`` more);
- ``serpentine``: the same placement, but consecutive positions sweep in alternate directions (no
  rewind), as the polyhedral racetrack compiler schedules loops;
- ``optimized``: every port, and every port of every lane the same share. Rows are cut into row tiles
  of ``P * E`` rows: port ``j`` holds rows ``j*E .. (j+1)*E - 1`` of its tile; the lanes of an MU hold
  ``lanes`` consecutive columns of one row tile at the same domains, so one activation read feeds every
  lane (channels reuse what is under the ports). A last partial row tile of ``r`` rows is balanced over
  the ports (``h = ceil(r / P)`` rows each, the irregular shapes: depthwise and small convolutions, the
  tail of a long column) and its MUs sweep ``h`` states, apart from the full ones. Positions are taken
  in blocks of ``acc_regs`` (one accumulator register each), one sweep per block, in alternate
  directions. When the model leaves MUs idle, layers spread over them: row tiles of ``d < E`` rows per
  port (shorter sweeps, more MUs), chosen greedily, each step the layer and depth that save the most
  shifts per added MU (:func:`shifts` counts them). When the model needs more MUs than the memory has,
  partial row tiles of several columns are stacked along the lanes (``E // h`` per lane) before any
  weight is rewritten.

MUs are handed out layer after layer from MU 0; a layer that does not fit the MUs left starts again at
0 (rewriting them: those writes count per inference), and a layer larger than the memory is written
round by round. With ``allow_reload = false`` a model needing more MUs than ``mus`` is rejected.
Postconditions: each layer's pieces table lies inside its MUs, lanes, domains and matrix with no two pieces on one
domain (:func:`cimc.targets.racetrack.ops.check_pieces`, once per layer: its rounds' ``rt.write`` nodes, each a part
of it, are built with their type given); every ``rt.mac`` starts where its MUs are and every MU ends the inference
at offset 0 (:func:`cimc.targets.racetrack.ops.commanded_offsets`). A fault rate above 0 is recorded as
``graph.metadata[LOSSY]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from cimc.cim.encoding import contiguous
from cimc.cim.lowering import finish_layer
from cimc.errors import PassError, VerifyError
from cimc.ir.core import Graph, Node, Value
from cimc.ir.opdef import is_annotation
from cimc.ir.types import DType, TensorType
from cimc.passmanager import Pass, PassContext, PassResult
from cimc.target import ARRAY_OPS, LOSSY, Spec
from cimc.targets.racetrack.ops import PIECE_COLUMNS, check_pieces, commanded_offsets, sweep_totals
from cimc.targets.racetrack.spec import RacetrackSpec
from cimc.tiling import weight_bits, weight_matrix

__all__ = ["Layer", "Layout", "LowerRacetrackPass", "Sweep", "layout"]


@dataclass(frozen=True)
class Layer:
    """What the placement needs of an array layer: its matrix ``[G, K, N]``, weight bits, output positions
    per sample ``L``, whether its weight tensor is stored row by row (``q.matmul``, ``[K, N]``) or column
    by column (``q.conv``, ``q.gemm``: one output channel's ``K`` weights after another), and the axis of its
    input that holds the samples (``rt.mac``'s ``sample_axis``)."""

    G: int
    K: int
    N: int
    bits: int
    L: int
    by_rows: bool = False
    sample_axis: int = 0


@dataclass(frozen=True)
class Sweep:
    """One sweep group: MUs ``m0 .. m1 - 1`` of a layout (relative), read by ``ports`` ports over ``states``
    states per block of ``block`` positions; ``turn`` and ``alternate`` as ``rt.mac`` takes them."""

    m0: int
    m1: int
    states: int
    ports: int
    block: int
    turn: int
    alternate: int


@dataclass(frozen=True)
class Layout:
    """A layer's weights on ``mus`` MUs (numbered from 0): ``make`` builds its pieces table (int64 ``[n,
    len(PIECE_COLUMNS)]``, MU by MU; a new array at each call: the placement weighs candidate layouts by their MUs
    and shifts and builds the tables of the few it keeps), and its sweep groups, which cover the MUs in order."""

    make: Callable[[], np.ndarray] = field(repr=False, compare=False)
    mus: int
    sweeps: tuple[Sweep, ...]


def layout(layer: Layer, spec: RacetrackSpec, placement: str | None = None, stack: int = 1,
           depth: int | None = None) -> Layout:
    """The layer's layout under ``placement`` (default: the spec's); for the optimized placement, ``depth`` rows
    per port in a row tile (default: the whole segment) and ``stack`` partial row tiles per lane."""
    placement = placement or spec.placement
    if placement == "optimized":
        return _optimized(layer, spec, stack, depth)
    return _row_major(layer, spec, placement == "serpentine")


def shifts(lay: Layout, layer: Layer, tracks: int) -> int:
    """One-domain shift steps summed over tracks for one inference of ``lay`` (its sweeps and the shifts
    that bring their MUs home)."""
    total = 0
    for sw in lay.sweeps:
        steps, net = sweep_totals(sw.states, 1, sw.turn, sw.alternate, -(-layer.L // sw.block))
        total += (sw.m1 - sw.m0) * tracks * (steps + abs(net))
    return total


def _row_major(layer: Layer, spec: RacetrackSpec, serpentine: bool) -> Layout:
    """naive / serpentine (module docstring): the tensor's row-major order cut into lanes of ``D`` domains."""
    D, lanes = spec.domains_per_track, spec.lanes(layer.bits)
    G, K, N = layer.G, layer.K, layer.N
    if layer.by_rows:  # w[K, N]: outer k, inner n, flat = k*N + n
        outer, inner, stride = np.arange(K, dtype=np.int64) * N, N, 1
    else:  # w[G*N, K]: outer column c = (g, n), inner k, flat = (g*K + k)*N + n
        c = np.arange(G * N, dtype=np.int64)
        outer, inner, stride = c // N * K * N + c % N, K, N
    total = G * K * N

    def make() -> np.ndarray:
        starts = np.union1d(np.arange(0, total, D, dtype=np.int64), np.arange(0, total, inner, dtype=np.int64))
        lens = np.diff(np.append(starts, total))
        lane = starts // D
        return np.stack([outer[starts // inner] + starts % inner * stride, np.full_like(starts, stride), lens,
                         lane // lanes, lane % lanes, starts % D], axis=1)

    mus = -(-total // (D * lanes))
    fill = np.minimum(D, total - np.arange(mus, dtype=np.int64) * D * lanes)  # the first lane of an MU is its fullest
    sweeps = tuple(Sweep(m0, m1, s, 1, 1, 0 if serpentine else -(s - 1), int(serpentine))
                   for m0, m1, s in _runs(fill))
    return Layout(make, mus, sweeps)


def _optimized(layer: Layer, spec: RacetrackSpec, stack: int = 1, depth: int | None = None) -> Layout:
    """optimized (module docstring): full row tiles of ``depth`` rows per port (default: the segment), then the
    balanced partial one, ``stack`` of them per lane."""
    P, E, lanes = spec.ports_per_track, spec.segment, spec.lanes(layer.bits)
    G, K, N = layer.G, layer.K, layer.N
    h_full = E if depth is None else max(1, min(depth, E))
    C, tile = G * N, P * h_full
    full, rem = divmod(K, tile)
    groups = -(-C // lanes)
    block = min(layer.L, spec.acc_regs)
    sweeps, mu = [], 0
    if full:  # MU (r, cg) = row tile r, columns cg*lanes ..; lane l, port j: rows r*tile + j*h_full .. + h_full
        mu = full * groups
        sweeps.append(Sweep(0, mu, h_full, P, block, 0, 1))
    h = -(-rem // P) if rem else 0
    stack = max(1, min(stack, E // h)) if rem else stack
    per_mu = lanes * stack
    extra = -(-C // per_mu) if rem else 0
    if rem:
        sweeps.append(Sweep(mu, mu + extra, -(-min(C, per_mu) // lanes) * h, P, block, 0, 1))

    def make() -> np.ndarray:
        c = np.arange(C, dtype=np.int64)
        base = c // N * K * N + c % N  # flat index of row 0 of column c
        j = np.arange(P, dtype=np.int64)
        rows = np.minimum(h, rem - j * h)  # port j's rows of the partial row tile
        ports = j[rows > 0] if rem else j[:0]
        n_full = full * C * P
        out = np.empty((n_full + C * len(ports), len(PIECE_COLUMNS)), np.int64)  # filled column by column
        if full:  # pieces (r, column, port), in that order
            f = out[:n_full].reshape(full, C, P, -1)
            r, col, jj = np.arange(full, dtype=np.int64)[:, None, None], c[:, None], j
            f[..., 0] = base[:, None] + (r * tile + jj * h_full) * N
            f[..., 1] = N
            f[..., 2] = h_full
            f[..., 3] = r * groups + col // lanes
            f[..., 4] = col % lanes
            f[..., 5] = jj * E
        if rem:  # pieces (column, port) of the ports with rows left
            q = out[n_full:].reshape(C, len(ports), -1)
            col = c[:, None]
            q[..., 0] = base[:, None] + (full * tile + ports * h) * N
            q[..., 1] = N
            q[..., 2] = rows[ports]
            q[..., 3] = full * groups + col // per_mu
            q[..., 4] = col % lanes
            q[..., 5] = ports * E + col % per_mu // lanes * h  # the column's place in its lane's stack
        return out

    return Layout(make, mu + extra, tuple(sweeps))


def _runs(values: np.ndarray) -> list[tuple[int, int, int]]:
    """``(start, end, value)`` of the runs of equal values."""
    out: list[tuple[int, int, int]] = []
    for i, v in enumerate(values.tolist()):
        if out and out[-1][2] == v:
            out[-1] = (out[-1][0], i + 1, v)
        else:
            out.append((i, i + 1, int(v)))
    return out


def layer_of(node: Node) -> Layer:
    """The placement's view of an array node (its positions per sample from its static shapes)."""
    m = weight_matrix(node)
    G, K, N = m.shape
    x = node.operand(0).type.shape
    out = node.outputs[0].type.shape
    axis = 0
    dims: list[Any] | None
    if node.op == "q.conv":
        dims = list(out[2:]) if out is not None else None
    elif x is None or len(x) < 2:
        dims = [] if x is not None else None
    else:  # the samples are the one symbolic axis (the batch, not always first), else axis 0
        open_axes = [i for i, d in enumerate(x[:-1]) if not isinstance(d, int)]
        axis = open_axes[0] if len(open_axes) == 1 else 0
        dims = [d for i, d in enumerate(x[:-1]) if i != axis]
    if dims is None or any(not isinstance(d, int) for d in dims):
        shape = out if node.op == "q.conv" else x
        raise PassError(f"{node.op} {node.name!r}: racetrack sweeps need the output positions per sample known "
                        f"when compiling, but its shape {list(shape or [])} leaves them open (only one axis, the "
                        f"batch, may be symbolic)")
    return Layer(G, K, N, weight_bits(node), math.prod(int(d) for d in dims), by_rows=node.op == "q.matmul",
                 sample_axis=axis)


@dataclass(frozen=True)
class LowerRacetrackPass(Pass):
    """Lower q.conv/q.gemm/q.matmul to rt.write / rt.mac / rt.shift on the spec's placement, plus vec ops."""

    name: ClassVar[str] = "lower-racetrack"
    spec_type: ClassVar[type[Spec]] = RacetrackSpec

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Place every array layer with a constant weight and replace it by its instructions."""
        target = ctx.require_target(self)
        target.register_ops()
        spec = target.spec
        assert isinstance(spec, RacetrackSpec)
        nodes = [n for n in graph.nodes if n.op in ARRAY_OPS and len(n.inputs) > 1 and n.inputs[1] is not None
                 and n.inputs[1].const is not None]
        layers = [layer_of(n) for n in nodes]
        owner = _owners(nodes, layers)
        uniq = sorted(set(owner))
        layouts = _fit([layers[i] for i in uniq], spec, graph.name, [owner.count(i) for i in uniq])
        if len(uniq) < len(nodes) and sum(lay.mus for lay in layouts) <= spec.mus:
            layouts = [layouts[uniq.index(i)] for i in owner]
        else:  # shared weights would be overwritten between their layers: each layer writes its own copy
            owner = list(range(len(nodes)))
            layouts = layouts if len(uniq) == len(nodes) else _fit(layers, spec, graph.name)
        first, written = 0, dict[int, tuple[Value, Value, int] | None]()
        for i, (node, lay) in enumerate(zip(nodes, layouts, strict=True)):
            first, written[owner[i]] = _lower(graph, node, lay, spec, first, written.get(owner[i]))
        offsets, problems = commanded_offsets(graph)
        stray = {m: o for m, o in offsets.items() if o}
        if problems or stray:  # the placement's own invariant: a bug here, not a user error
            raise PassError(f"lower-racetrack built an inconsistent program: {problems[:3]}, MUs left away from "
                            f"offset 0: {dict(list(stray.items())[:3])}")
        if spec.shift_fault_rate > 0:
            graph.metadata[LOSSY] = (f"racetrack shift faults: {spec.shift_fault_rate:g} per step"
                                     + (f", guard every {spec.guard_interval} steps" if spec.guard_interval else ""))
        graph.remove_dead()
        return PassResult(bool(nodes))


def _owners(nodes: list[Node], layers: list[Layer]) -> list[int]:
    """Per layer, the first layer that reads the same weight constant the same way (the steps of an unrolled
    recurrent layer): those may share its MUs."""
    first: dict[tuple, int] = {}
    return [first.setdefault((id(n.inputs[1]), n.op, n.attrs.get("group", 1), lay), i)
            for i, (n, lay) in enumerate(zip(nodes, layers, strict=True))]


def _fit(layers: list[Layer], spec: RacetrackSpec, model: str, uses: list[int] | None = None) -> list[Layout]:
    """Every layer's layout (``uses``: how many layers read each one's MUs, 1 each by default). Under the optimized
    placement, a model that needs more MUs than the memory has stacks partial row tiles (largest saving of MUs
    first) while it does not fit; a model that leaves MUs free spreads layers over them (shallower sweeps), taking
    at each step the move that saves the most shifts per MU it adds."""
    outs = [layout(lay, spec) for lay in layers]
    need = sum(o.mus for o in outs)
    if spec.placement == "optimized" and need > spec.mus:
        stacked = [layout(lay, spec, stack=spec.segment) for lay in layers]
        for i in sorted(range(len(layers)), key=lambda i: stacked[i].mus - outs[i].mus):
            if need <= spec.mus:
                break
            need += stacked[i].mus - outs[i].mus
            outs[i] = stacked[i]
    elif spec.placement == "optimized" and need < spec.mus:
        outs = _spread(layers, outs, spec, spec.mus - need, uses or [1] * len(layers))
        need = sum(o.mus for o in outs)
    if not spec.allow_reload and need > spec.mus:
        raise PassError(f"model {model!r} does not fit the racetrack memory with allow_reload = false: its weights "
                        f"take {need} MUs of {spec.tracks_per_mu} tracks x {spec.domains_per_track} domains, the "
                        f"memory has mus = {spec.mus}; allow reloads (--spec-set allow_reload=true) or use more MUs "
                        f"(--spec-set mus={need})")
    return outs


def _spread(layers: list[Layer], outs: list[Layout], spec: RacetrackSpec, spare: int, uses: list[int],
            ) -> list[Layout]:
    """Shallower row tiles for the layers that gain the most shifts per added MU, within ``spare`` MUs: each
    layer's candidates are every depth below the segment (MUs and shifts of each known before choosing; a
    layout ``uses`` layers read counts its shifts that many times)."""
    T = spec.tracks_per_mu
    tables = []
    for lay, out, u in zip(layers, outs, uses, strict=True):
        rows = {spec.segment: (out.mus, u * shifts(out, lay, T))}
        for d in range(1, spec.segment):
            o = _optimized(lay, spec, depth=d)
            rows[d] = (o.mus, u * shifts(o, lay, T))
        tables.append(rows)
    depth = [spec.segment] * len(layers)
    while True:
        best = None
        for i, rows in enumerate(tables):
            mus, sh = rows[depth[i]]
            for d, (m, s) in rows.items():
                if d < depth[i] and sh > s and 0 < m - mus <= spare:
                    gain = (sh - s) / (m - mus)
                    if best is None or gain > best[0]:
                        best = (gain, i, d, m - mus)
        if best is None:
            break
        _, i, d, added = best
        depth[i], spare = d, spare - added
    return [out if d == spec.segment else _optimized(lay, spec, depth=d)
            for lay, out, d in zip(layers, outs, depth, strict=True)]


def _lower(graph: Graph, node: Node, lay: Layout, spec: RacetrackSpec, first: int,
           shared: tuple[Value, Value, int] | None) -> tuple[int, tuple[Value, Value, int] | None]:
    """Replace ``node`` by its instructions on MUs from ``first`` on, or, with ``shared`` (the pieces, the last
    token and the first MU of an earlier layer that wrote the same layout and whose MUs hold it still), by
    sweeps of those MUs without a write. Returns the next free MU and what a later layer sharing this one's
    MUs needs (``None`` when the layer is written in several rounds)."""
    a = node.attrs
    x = node.operand(0)
    layer = {"cim.layer": node.name}
    add = lambda op, ins, attrs, **kw: graph.add_node(op, ins, {**attrs, **layer}, before=node, **kw).outputs[0]  # noqa: E731
    m = contiguous(weight_matrix(node))
    G, K, N = m.shape
    conv = node.op == "q.conv"
    final = node.outputs[0].type
    fshape = final.shape if final.shape is not None else ()
    bits = weight_bits(node)
    act_bits = int(x.type.quant.bits) if x.type.quant is not None else 8
    if conv:
        attrs = {k: v for k, v in a.items() if not is_annotation(k) and k != "x_zero_point"}
        attrs["kernel_shape"] = tuple(int(s) for s in node.operand(1).array.shape[2:])
        x = add("vec.im2col", [x], {**attrs, "pad_value": int(a["x_zero_point"])})
    geometry = {"lanes": spec.lanes(bits), "domains": spec.domains_per_track, "tracks": spec.tracks_per_mu}
    faults = {"fault_rate": spec.shift_fault_rate, "guard": spec.guard_interval}
    L, axis = layer_of(node).L, layer_of(node).sample_axis
    out_type = TensorType(DType.i32, (fshape[0], G * N, L) if conv else (*fshape[:-1], G * N))
    acc = None
    rounds = _rounds(lay.mus, spec.mus, first) if shared is None else [(0, lay.mus, shared[2])]
    words = graph.add_constant(m.astype(np.int8, copy=False), f"{node.name}.words") if shared is None else None
    if shared is None:  # a fresh table of the layer's pieces, checked once: each round writes a part of it
        table = lay.make()
        try:
            check_pieces(table, (0, lay.mus), geometry["lanes"], geometry["domains"], (G, K, N))
        except VerifyError as e:  # the placement's own invariant: a bug here, not a user error
            raise PassError(f"lower-racetrack placed {node.op} {node.name!r} inconsistently: {e}") from None
        mu = table[:, 3]
        if len(mu) > 1 and (mu[1:] < mu[:-1]).any():  # each round's pieces in their layout order: one stable sort
            of_round = np.searchsorted(np.array([r1 for _, r1, _ in rounds]), mu, side="right")
            order = np.argsort(of_round, kind="stable")
            table, cuts = table[order], np.searchsorted(of_round[order], np.arange(len(rounds) + 1))
        else:  # the layouts list their pieces MU by MU: a round's pieces are consecutive rows
            cuts = np.searchsorted(mu, [r0 for r0, _, _ in rounds] + [rounds[-1][1]])
    for i, (r0, r1, base) in enumerate(rounds):
        if shared is None:  # every round writes its MUs' pieces of the one weight matrix
            rows = table[cuts[i]:cuts[i + 1]]  # the round's rows of the layer's table, its MUs moved in place
            if base != r0:
                rows[:, 3] += base - r0
            pieces = graph.add_constant(rows, f"{node.name}.pieces")
            token = add("rt.write", [words, pieces], {"mus": [base, base + r1 - r0], **geometry, "matrix": [G, K, N],
                                                      "weight_bits": bits}, outputs=[TensorType(DType.i32, ())])
        else:
            pieces, token = shared[0], shared[1]
        for sw in lay.sweeps:
            s0, s1 = max(sw.m0, r0), min(sw.m1, r1)
            if s0 >= s1:
                continue
            group = [base + s0 - r0, base + s1 - r0]
            mac = {"mus": group, **geometry, **faults, "start": 0, "states": sw.states, "step": 1, "ports": sw.ports,
                   "segment": spec.segment, "block": sw.block, "turn": sw.turn, "alternate": sw.alternate,
                   "layout": "cols" if conv else "rows", "sample_axis": axis, "channels": G * N, "matrix": [G, K, N],
                   "act_bits": act_bits, "weight_bits": bits}
            acc = add("rt.mac", [x, token, pieces] + ([] if acc is None else [acc]), mac, outputs=[out_type])
            net = sweep_totals(sw.states, 1, sw.turn, sw.alternate, -(-L // sw.block))[1]
            if net:
                token = add("rt.shift", [token], {"mus": group, "distance": -net, "domains": spec.domains_per_track,
                                                  "tracks": spec.tracks_per_mu, **faults})
    if shared is None:
        first = _next_free(lay.mus, spec.mus, first)
    if acc is None:  # the placement's own invariant: every layout has a sweep
        raise PassError(f"lower-racetrack placed {node.op} {node.name!r} without a sweep")
    finish_layer(graph, node, acc, tuple(d for d in fshape[2:] if isinstance(d, int)) if conv else None)
    return first, (pieces, token, rounds[0][2]) if len(rounds) == 1 else None


def _rounds(need: int, mus: int, first: int) -> list[tuple[int, int, int]]:
    """``(r0, r1, base)``: the layout's MUs ``r0 .. r1 - 1`` go to machine MUs from ``base``: from ``first`` if
    the layer fits the MUs left, else from 0, in rounds of at most ``mus``."""
    if need <= mus - first:
        return [(0, need, first)]
    return [(r0, min(need, r0 + mus), 0) for r0 in range(0, need, mus)]


def _next_free(need: int, mus: int, first: int) -> int:
    """The MU after the layer's last one (see :func:`_rounds`)."""
    if need <= mus - first:
        return first + need
    return need % mus if need % mus else mus
