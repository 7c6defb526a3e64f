"""Recurrent layers unrolled into their per-step matmuls and elementwise ops, so that they quantize.

An ``LSTM``, ``GRU`` or ``RNN`` node whose sequence length is static is replaced, in place, by the
float ops of its formula (:mod:`cimc.ops.rnn`) written out for every time step and direction. The
gate matmuls of a step read the step's input and the previous hidden state side by side, as a
crossbar LSTM feeds ``[x_t; h_{t-1}]`` to one array: ``u_t = Concat(x_t, h_{t-1})`` then
``MatMul(u_t, Wcat) + b`` with ``Wcat = [W; R]^T`` (``[input + hidden, gates * hidden]``, one
constant per direction, read by every step) and ``b = Wb + Rb``. What is left per step, the
nonlinearities and the state update, is elementwise (``Slice`` of the gates, ``Sigmoid``/``Tanh``
or the layer's ``activations``, ``Mul``, ``Add``, ``Sub``, ``Clip`` for ``clip``). Per direction
``d`` (gate order and symbols as ONNX; ``(.)`` elementwise)::

    LSTM  z = u Wcat + b;  i = f(zi + Pi (.) C);  f' = f(zf + Pf (.) C) (1 - i with input_forget);
          g = g(zc);  C' = f' (.) C + i (.) g;  o = f(zo + Po (.) C');  H' = o (.) h(C')
    GRU   linear_before_reset = 0: zr = u Wzr + (Wb + Rb)[z, r];  z, r = f(.);
              H~ = g([x_t, r (.) H] Wh + Wbh + Rbh)                    (a second matmul per step)
          linear_before_reset = 1: a = u [[Wz Wr Wh 0]; [Rz Rr 0 Rh]] + [Wbz+Rbz, Wbr+Rbr, Wbh, Rbh];
              z, r = f(a[z]), f(a[r]);  H~ = g(a[h] + r (.) a[rh])       (one matmul per step)
          H' = (1 - z) (.) H~ + z (.) H
    RNN   H' = f(u Wcat + Wb + Rb)

``Y`` is the per-step ``H`` stacked (``Unsqueeze`` + ``Concat``), ``Y_h``/``Y_c`` the last state;
``layout = 1`` transposes in and out. A missing initial state is zeros of the batch's size
(``ConstantOfShape`` of the input's batch dim, so that it is an activation like the others).

Preconditions for a node to unroll (else it is left as it is, and :func:`unroll_recurrent` says
why): a static sequence length; constant ``W``, ``R``, ``B`` and peepholes ``P``; no
``sequence_lens``, or a constant one equal to the sequence length everywhere; activations ONNX
names. Postcondition: the graph computes what it computed before (float rounding aside), with no
recurrent node left among those that unrolled.
"""

from __future__ import annotations

import logging

import numpy as np

from cimc.ir.core import Graph, Node, Value
from cimc.ops.rnn import activation_params

__all__ = ["RECURRENT_OPS", "unroll_recurrent"]

logger = logging.getLogger(__name__)

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
"""The recurrent layers :func:`unroll_recurrent` unrolls."""
_DEFAULTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_SIMPLE = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "softsign": "Softsign", "softplus": "Softplus"}
_WITH_ALPHA = {"leakyrelu": "LeakyRelu", "thresholdedrelu": "ThresholdedRelu", "elu": "Elu"}


def unroll_recurrent(graph: Graph) -> dict[str, str]:
    """Unroll every LSTM/GRU/RNN node of ``graph`` that meets the preconditions (module doc), in place.
    Returns the nodes left as they are, by name, with the reason."""
    left: dict[str, str] = {}
    for node in [n for n in graph.nodes if n.op in RECURRENT_OPS]:
        why = _why_not(node)
        if why is not None:
            left[node.name] = why
            logger.info("quantize: %s %r stays one float op: %s", node.op, node.name, why)
            continue
        _Unroller(graph, node).run()
    return left


def _why_not(node: Node) -> str | None:
    """Why ``node`` cannot unroll, or ``None``."""
    ins = list(node.inputs) + [None] * (8 - len(node.inputs))
    x = ins[0]
    seq_axis = 1 if node.attrs.get("layout", 0) else 0
    shape = x.type.shape if x is not None else None
    if shape is None or len(shape) != 3 or not isinstance(shape[seq_axis], int):
        return f"its sequence length is not static (input {x.type if x is not None else None})"
    const_slots = {"W": 1, "R": 2, "B": 3} | ({"P": 7} if node.op == "LSTM" else {})
    for what, i in const_slots.items():
        if (v := ins[i]) is not None and v.const is None:
            return f"its {what} is computed at run time, not a constant"
    lens = ins[4]
    if lens is not None and (lens.const is None or not np.all(lens.const == shape[seq_axis])):
        return "its sequence_lens vary (masked steps are not unrolled)"
    names = node.attrs.get("activations") or ()
    try:
        activation_params(names, node.attrs.get("activation_alpha"), node.attrs.get("activation_beta"))
    except Exception as e:  # an unknown activation name: the op itself reports it at run time
        return str(e)
    return None


class _Unroller:
    """Writes one recurrent node out as float ops placed before it, then removes it."""

    def __init__(self, graph: Graph, node: Node) -> None:
        self.g, self.n = graph, node
        self.name = node.name
        self.a = node.attrs
        self.consts: dict[tuple, Value] = {}

    # ---- node builders -------------------------------------------------------------------------------
    def add(self, op: str, ins: list, attrs: dict | None = None, hint: str = "") -> Value:
        return self.g.add_node(op, ins, attrs or {}, name=f"{self.name}/{hint or op.lower()}", before=self.n).outputs[0]

    def const(self, array: np.ndarray | np.generic, hint: str) -> Value:
        a = np.asarray(array)
        key = (hint, a.dtype.str, a.shape, a.tobytes())
        if key not in self.consts:
            self.consts[key] = self.g.add_constant(a, f"{self.name}.{hint}")
        return self.consts[key]

    def ints(self, values, hint: str) -> Value:
        return self.const(np.asarray(values, np.int64), hint)

    def cols(self, v: Value, c0: int, c1: int, hint: str) -> Value:
        """Columns ``c0:c1`` of ``v`` along its last axis."""
        return self.add("Slice", [v, self.ints([c0], f"c{c0}"), self.ints([c1], f"c{c1}"), self.ints([-1], "last")],
                        hint=hint)

    def scalar(self, x: float) -> Value:
        return self.const(np.float32(x), f"s{x:g}")

    def act(self, spec: tuple[str, float, float], v: Value, hint: str) -> Value:
        """Activation ``spec`` (name, alpha, beta) of ``v``, ``clip`` applied to its input first."""
        if self.a.get("clip") is not None:
            c = float(self.a["clip"])
            v = self.add("Clip", [v, self.scalar(-c), self.scalar(c)], hint=f"{hint}_clip")
        name, alpha, beta = spec
        if name in _SIMPLE:
            return self.add(_SIMPLE[name], [v], hint=hint)
        if name in _WITH_ALPHA:
            return self.add(_WITH_ALPHA[name], [v], {"alpha": alpha}, hint=hint)
        if name == "hardsigmoid":
            return self.add("HardSigmoid", [v], {"alpha": alpha, "beta": beta}, hint=hint)
        if name == "affine":
            return self.add("Add", [self.add("Mul", [v, self.scalar(alpha)], hint=f"{hint}_scale"),
                                    self.scalar(beta)], hint=hint)
        assert name == "scaledtanh", name
        t = self.add("Tanh", [self.add("Mul", [v, self.scalar(beta)], hint=f"{hint}_in")], hint=f"{hint}_tanh")
        return self.add("Mul", [t, self.scalar(alpha)], hint=hint)

    def matmul(self, u: Value, w: np.ndarray, b: np.ndarray | None, hint: str) -> Value:
        kind = hint.split("_t")[0]  # one weight and bias constant per direction, read by every step
        z = self.add("MatMul", [u, self.const(w.astype(np.float32), f"{kind}_weight")], hint=hint)
        return z if b is None else self.add("Add", [z, self.const(b.astype(np.float32), f"{kind}_bias")],
                                            hint=f"{hint}_bias")

    # ---- the layer -----------------------------------------------------------------------------------
    def run(self) -> None:
        n, a = self.n, self.a
        ins = list(n.inputs) + [None] * (8 - len(n.inputs))
        _, _, _, b, _, h0, c0, p = ins
        x, w, r = n.operand(0), n.operand(1).array, n.operand(2).array
        layout = int(a.get("layout", 0))
        seq = (x.type.shape or ())[1 if layout else 0]
        assert isinstance(seq, int)  # a static sequence length: checked before unrolling
        ndir, hid = w.shape[0], r.shape[2]
        gates = _GATES[n.op]
        names = a.get("activations") or _DEFAULTS[n.op] * ndir
        acts = activation_params(names, a.get("activation_alpha"), a.get("activation_beta"))
        per = len(_DEFAULTS[n.op])
        ys, hs, cs = [], [], []
        for d in range(ndir):
            reverse = a.get("direction", "forward") == "reverse" or d == 1
            wd, rd = w[d].astype(np.float64), r[d].astype(np.float64)
            bd = np.zeros(2 * gates * hid) if b is None else b.array[d].astype(np.float64)
            h = self.state(h0, d, layout, x, hid, f"initial_h{d}")
            c = self.state(c0, d, layout, x, hid, f"initial_c{d}") if n.op == "LSTM" else None
            pd = None if p is None else p.array[d].astype(np.float64)
            step = {"LSTM": self.lstm_step, "GRU": self.gru_step, "RNN": self.rnn_step}[n.op]
            out: list[Value | None] = [None] * seq
            for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
                k = f"_t{t}" + (f"_d{d}" if ndir > 1 else "")
                xt = self.add("Gather", [x, self.const(np.int64(t), f"t{t}")], {"axis": layout}, hint=f"x{k}")
                h, c = step(xt, h, c, wd, rd, bd, pd, acts[per * d:per * d + per], k)
                out[t] = h
            ys.append([v for v in out if v is not None])  # (every step has set its slot)
            hs.append(h)
            cs.append(c)
        self.finish(ys, hs, cs, layout)

    def state(self, init: Value | None, d: int, layout: int, x: Value, hid: int, hint: str) -> Value:
        """Direction ``d``'s initial state ``[batch, hidden]``: from ``init``, or zeros of the batch's size."""
        if init is not None:
            return self.add("Gather", [init, self.const(np.int64(d), f"d{d}")], {"axis": 1 if layout else 0},
                            hint=hint)
        batch = self.add("Shape", [x], {"start": 0 if layout else 1, "end": 1 if layout else 2}, hint="batch")
        shape = self.add("Concat", [batch, self.ints([hid], "hidden")], {"axis": 0}, hint="state_shape")
        return self.add("ConstantOfShape", [shape], {"value": np.zeros(1, np.float32)}, hint=hint)

    def lstm_step(self, xt, h, c, wd, rd, bd, pd, acts, k):
        H = rd.shape[1]
        z = self.matmul(self.add("Concat", [xt, h], {"axis": -1}, hint=f"u{k}"), np.concatenate([wd, rd], 1).T,
                        bd[:4 * H] + bd[4 * H:] if bd.any() else None, f"gates{k}")
        zi, zo, zf, zc = (self.cols(z, j * H, (j + 1) * H, f"{g}{k}") for j, g in enumerate("iofc"))
        f, g, hh = acts

        def peep(v: Value, j: int, state: Value, hint: str) -> Value:
            if pd is None or not pd[j * H:(j + 1) * H].any():
                return v
            pc = self.add("Mul", [state, self.const(pd[j * H:(j + 1) * H].astype(np.float32), f"p{j}")],
                          hint=f"{hint}_peep")
            return self.add("Add", [v, pc], hint=f"{hint}_in")

        i = self.act(f, peep(zi, 0, c, f"i{k}"), f"i{k}_act")
        if self.a.get("input_forget", 0):
            fg = self.add("Sub", [self.scalar(1.0), i], hint=f"f{k}_act")
        else:
            fg = self.act(f, peep(zf, 2, c, f"f{k}"), f"f{k}_act")
        gc = self.act(g, zc, f"c{k}_act")
        c2 = self.add("Add", [self.add("Mul", [fg, c], hint=f"fc{k}"), self.add("Mul", [i, gc], hint=f"ig{k}")],
                      hint=f"c{k}")
        o = self.act(f, peep(zo, 1, c2, f"o{k}"), f"o{k}_act")
        return self.add("Mul", [o, self.act(hh, c2, f"hc{k}")], hint=f"h{k}"), c2

    def gru_step(self, xt, h, c, wd, rd, bd, pd, acts, k):
        H = rd.shape[1]
        wb, rb = bd[:3 * H], bd[3 * H:]
        f, g = acts
        u = self.add("Concat", [xt, h], {"axis": -1}, hint=f"u{k}")
        if self.a.get("linear_before_reset", 0):
            din = wd.shape[1]
            wbig = np.zeros((din + H, 4 * H))
            wbig[:din, :3 * H] = wd.T
            wbig[din:, :2 * H] = rd[:2 * H].T
            wbig[din:, 3 * H:] = rd[2 * H:].T
            bias = np.concatenate([wb[:2 * H] + rb[:2 * H], wb[2 * H:], rb[2 * H:]])
            a4 = self.matmul(u, wbig, bias if bias.any() else None, f"gates{k}")
            z = self.act(f, self.cols(a4, 0, H, f"z{k}"), f"z{k}_act")
            rr = self.act(f, self.cols(a4, H, 2 * H, f"r{k}"), f"r{k}_act")
            rh = self.add("Mul", [rr, self.cols(a4, 3 * H, 4 * H, f"rh{k}")], hint=f"rh{k}_reset")
            hn = self.act(g, self.add("Add", [self.cols(a4, 2 * H, 3 * H, f"xh{k}"), rh], hint=f"hh{k}"), f"hh{k}_act")
        else:
            wzr = np.concatenate([wd[:2 * H], rd[:2 * H]], 1).T
            bzr = wb[:2 * H] + rb[:2 * H]
            zr = self.matmul(u, wzr, bzr if bzr.any() else None, f"gates_zr{k}")
            z = self.act(f, self.cols(zr, 0, H, f"z{k}"), f"z{k}_act")
            rr = self.act(f, self.cols(zr, H, 2 * H, f"r{k}"), f"r{k}_act")
            v = self.add("Concat", [xt, self.add("Mul", [rr, h], hint=f"rh{k}")], {"axis": -1}, hint=f"v{k}")
            bh = wb[2 * H:] + rb[2 * H:]
            hn = self.act(g, self.matmul(v, np.concatenate([wd[2 * H:], rd[2 * H:]], 1).T, bh if bh.any() else None,
                                         f"gates_h{k}"), f"hh{k}_act")
        keep = self.add("Sub", [self.scalar(1.0), z], hint=f"zc{k}")
        return self.add("Add", [self.add("Mul", [keep, hn], hint=f"new{k}"), self.add("Mul", [z, h], hint=f"old{k}")],
                        hint=f"h{k}"), None

    def rnn_step(self, xt, h, c, wd, rd, bd, pd, acts, k):
        H = rd.shape[1]
        bias = bd[:H] + bd[H:]
        u = self.add("Concat", [xt, h], {"axis": -1}, hint=f"u{k}")
        return self.act(acts[0], self.matmul(u, np.concatenate([wd, rd], 1).T, bias if bias.any() else None,
                                             f"gates{k}"), f"h{k}"), None

    def finish(self, ys: list[list[Value]], hs: list[Value], cs: list[Value | None], layout: int) -> None:
        """Wire ``Y``, ``Y_h`` and ``Y_c`` (those that are used) to the unrolled values; remove the node."""
        outs = self.n.outputs

        def used(i: int) -> bool:
            return i < len(outs) and (bool(outs[i].uses) or self.g.is_output(outs[i]))

        def stack(values: list[Value], axis: int, hint: str) -> Value:
            parts = [self.add("Unsqueeze", [v, self.ints([axis], f"axis{axis}")], hint=f"{hint}_part")
                     for v in values]
            return parts[0] if len(parts) == 1 else self.add("Concat", parts, {"axis": axis}, hint=hint)

        new: list[Value | None] = [None] * len(outs)
        if used(0):  # [seq, dirs, batch, hidden]
            y = stack([stack(per_step, 0, f"y{d}") for d, per_step in enumerate(ys)], 1, "y")
            new[0] = self.add("Transpose", [y], {"perm": (2, 0, 1, 3)}, hint="y_layout") if layout else y
        for i, last in ((1, hs), (2, cs)):
            if used(i):  # (Y_c is used only for an LSTM, whose cell states are all set)
                s = stack([v for v in last if v is not None], 0, "yh" if i == 1 else "yc")
                new[i] = self.add("Transpose", [s], {"perm": (1, 0, 2)}, hint=f"{s.name}_layout") if layout else s
        for old, v in zip(outs, new, strict=True):
            if v is not None:
                self.g.replace_all_uses_with(old, v)
                name = old.name
                self.g.rename_value(old, f"{name}__unrolled")
                self.g.rename_value(v, name)
        self.g.remove_node(self.n)
