"""Built-in ops: recurrent layers (LSTM, GRU, RNN), ONNX semantics; LSTM's gate order is i, o, f, c.

The input projections ``X @ W^T + Wb + Rb`` of every time step are one matmul up front; the time
loop then does one ``H @ R^T`` matmul per step for the whole batch and all four gates. Per step
(``f``, ``g``, ``h`` the activations, ``(.)`` elementwise; ``clip`` bounds every activation's input)::

    i = f(Xi + H Ri + Pi (.) C)      f = f(Xf + H Rf + Pf (.) C)    (f = 1 - i when input_forget)
    c = g(Xc + H Rc)                 C' = f (.) C + i (.) c
    o = f(Xo + H Ro + Po (.) C')     H' = o (.) h(C')

``sequence_lens`` masks steps past each batch entry's length: its state stops changing and its
``Y`` rows are zero; the reverse direction starts at each entry's own last step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cimc.errors import InputError, VerifyError
from cimc.ir.opdef import AttrSpec, InferContext, define_op
from cimc.ir.types import Dim, Shape, TensorType
from cimc.ops._infer import require
from cimc.ops.nn import float_compute_dtype

__all__ = ["ACTIVATIONS", "activation", "activation_params"]

Act = Callable[[np.ndarray], np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1)  # no overflow warnings for large |x|


# name -> (uses alpha, uses beta, default alpha, default beta, builder)
ACTIVATIONS: dict[str, tuple[bool, bool, float, float, Callable[[float, float], Act]]] = {
    "sigmoid": (False, False, 0.0, 0.0, lambda a, b: _sigmoid),
    "tanh": (False, False, 0.0, 0.0, lambda a, b: np.tanh),
    "relu": (False, False, 0.0, 0.0, lambda a, b: lambda x: np.maximum(x, 0)),
    "affine": (True, True, 1.0, 0.0, lambda a, b: lambda x: a * x + b),
    "leakyrelu": (True, False, 0.01, 0.0, lambda a, b: lambda x: np.where(x >= 0, x, a * x)),
    "thresholdedrelu": (True, False, 1.0, 0.0, lambda a, b: lambda x: np.where(x > a, x, 0)),
    "scaledtanh": (True, True, 1.0, 1.0, lambda a, b: lambda x: a * np.tanh(b * x)),
    "hardsigmoid": (True, True, 0.2, 0.5, lambda a, b: lambda x: np.clip(a * x + b, 0, 1)),
    "elu": (True, False, 1.0, 0.0, lambda a, b: lambda x: np.where(x >= 0, x, a * (np.exp(np.minimum(x, 0)) - 1))),
    "softsign": (False, False, 0.0, 0.0, lambda a, b: lambda x: x / (1 + np.abs(x))),
    "softplus": (False, False, 0.0, 0.0, lambda a, b: lambda x: np.logaddexp(x, 0)),
}
"""RNN activation functions by lower-case ONNX name."""


def activation_params(names, alphas, betas) -> list[tuple[str, float, float]]:
    """``(lower-case name, alpha, beta)`` of each activation named in ``names``: alphas/betas are consumed in
    order by those that take them, the others get their defaults."""
    alphas, betas = list(alphas or ()), list(betas or ())
    out = []
    for name in names:
        spec = ACTIVATIONS.get(name.lower())
        if spec is None:
            raise InputError(f"unknown RNN activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}")
        use_a, use_b, da, db, _ = spec
        a = alphas.pop(0) if use_a and alphas else da
        b = betas.pop(0) if use_b and betas else db
        out.append((name.lower(), float(a), float(b)))
    return out


def activation(names, alphas, betas) -> list[Act]:
    """The activation functions named in ``names``; alphas/betas are consumed in order by those that take them."""
    return [ACTIVATIONS[name][4](a, b) for name, a, b in activation_params(names, alphas, betas)]


def _clipped(f: Act, clip: float) -> Act:
    """``f`` of its argument clipped to ``[-clip, clip]`` (a recurrent layer's ``clip`` attribute)."""
    return lambda x: f(np.clip(x, -clip, clip))


def _times(d: Dim, k: int) -> Dim:
    return k * d if isinstance(d, int) else None


def _recurrent_infer(gates: int, outputs: int):
    """Type rule of a recurrent layer whose W and R stack ``gates`` gate matrices; results Y, Y_h
    (and Y_c for LSTM) in ``layout`` 0 ([seq, dir, batch, hidden]) or 1 ([batch, seq, dir, hidden])."""

    def rule(ctx: InferContext) -> list[TensorType]:
        op = ctx.node.op
        x, w, r = require(ctx, 0), require(ctx, 1), require(ctx, 2)
        for t, what in ((x, "X"), (w, "W"), (r, "R")):
            if t.rank is not None and t.rank != 3:
                raise VerifyError(f"{op}: {what} must have rank 3, is {t}")
        ndir = 2 if ctx.attrs["direction"] == "bidirectional" else 1
        if ctx.attrs["direction"] not in ("forward", "reverse", "bidirectional"):
            raise VerifyError(f"{op}: direction={ctx.attrs['direction']!r} is not forward, reverse or bidirectional")
        for t, what in ((w, "W"), (r, "R")):
            if t.shape is not None and isinstance(t.shape[0], int) and t.shape[0] != ndir:
                raise VerifyError(f"{op}: {what} {t} has {t.shape[0]} directions, direction="
                                  f"{ctx.attrs['direction']!r} needs {ndir}")
        hidden: Dim = ctx.attrs.get("hidden_size")
        if hidden is None:
            hidden = r.shape[2] if r.shape is not None else None
        for t, what, axis, want in ((r, "R", 2, hidden), (r, "R", 1, _times(hidden, gates)),
                                    (w, "W", 1, _times(hidden, gates))):
            have = t.shape[axis] if t.shape is not None else None
            if isinstance(have, int) and isinstance(want, int) and have != want:
                raise VerifyError(f"{op}: {what} {t} has {have} in dim {axis}, hidden_size {hidden} needs {want}")
        xs = x.shape if x.shape is not None else (None, None, None)
        seq, batch = (xs[1], xs[0]) if ctx.attrs["layout"] else (xs[0], xs[1])
        y: Shape
        yh: Shape
        if ctx.attrs["layout"]:
            y, yh = (batch, seq, ndir, hidden), (batch, ndir, hidden)
        else:
            y, yh = (seq, ndir, batch, hidden), (ndir, batch, hidden)
        types = [TensorType(x.dtype, y)] + [TensorType(x.dtype, yh)] * (outputs - 1)
        return types[: max(1, ctx.num_outputs)]

    return rule


_lstm_infer = _recurrent_infer(4, 3)


@define_op("LSTM", inputs=(3, 8), outputs=(0, 3), infer=_lstm_infer, attrs={
    "activation_alpha": AttrSpec("floats", None, "alpha of the activations that take one, in order"),
    "activation_beta": AttrSpec("floats", None, "beta of the activations that take one, in order"),
    "activations": AttrSpec("strs", None, "f, g, h per direction (default Sigmoid, Tanh, Tanh)"),
    "clip": AttrSpec("float", None, "bound every activation input to [-clip, clip]"),
    "direction": AttrSpec("str", "forward", "forward, reverse or bidirectional"),
    "hidden_size": AttrSpec("int", None, "hidden size (default: from R)"),
    "input_forget": AttrSpec("int", 0, "1: couple the forget gate to the input gate (f = 1 - i)"),
    "layout": AttrSpec("int", 0, "0: X is [seq, batch, in]; 1: X is [batch, seq, in]"),
})
def lstm(ctx, x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None):
    """Long short-term memory layer; returns Y, Y_h, Y_c."""
    a = ctx.attrs
    layout = a["layout"]
    if layout:
        x = x.swapaxes(0, 1)
        h0 = None if h0 is None else h0.swapaxes(0, 1)
        c0 = None if c0 is None else c0.swapaxes(0, 1)
    seq, batch, _ = x.shape
    ndir, hid = w.shape[0], r.shape[2]
    dt = float_compute_dtype(x.dtype)
    xc = x.astype(dt, copy=False)
    names = a["activations"] or ("Sigmoid", "Tanh", "Tanh") * ndir
    if len(names) != 3 * ndir:
        raise InputError(f"LSTM: {len(names)} activations given, {3 * ndir} needed (f, g, h per direction)")
    acts = activation(names, a["activation_alpha"], a["activation_beta"])
    clip = a["clip"]

    def cl(v: np.ndarray) -> np.ndarray:
        return v if clip is None else np.clip(v, -clip, clip)

    lens = np.full(batch, seq, np.int64) if seq_lens is None else seq_lens.astype(np.int64)
    masked = bool((lens < seq).any())
    y = np.zeros((seq, ndir, batch, hid), dt)
    yh = np.zeros((ndir, batch, hid), dt)
    yc = np.zeros((ndir, batch, hid), dt)
    for d in range(ndir):
        reverse = a["direction"] == "reverse" or d == 1
        f, g, h = acts[3 * d:3 * d + 3]
        bias = np.zeros(4 * hid, dt) if b is None else (b[d, :4 * hid] + b[d, 4 * hid:]).astype(dt)
        xw = xc @ w[d].astype(dt, copy=False).T + bias  # (seq, batch, 4*hid)
        rt = r[d].astype(dt, copy=False).T
        pi, po, pf = (np.zeros(hid, dt),) * 3 if p is None else np.split(p[d].astype(dt, copy=False), 3)
        ht = np.zeros((batch, hid), dt) if h0 is None else h0[d].astype(dt, copy=True)
        ct = np.zeros((batch, hid), dt) if c0 is None else c0[d].astype(dt, copy=True)
        for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
            gi, go, gf, gc = np.split(xw[t] + ht @ rt, 4, axis=1)
            i = f(cl(gi + pi * ct))
            fg = 1 - i if a["input_forget"] else f(cl(gf + pf * ct))
            cn = fg * ct + i * g(cl(gc))
            o = f(cl(go + po * cn))
            hn = o * h(cn)
            if masked:
                live = (t < lens)[:, None]
                cn, hn = np.where(live, cn, ct), np.where(live, hn, ht)
                y[t, d] = np.where(live, hn, 0)
            else:
                y[t, d] = hn
            ht, ct = hn, cn
        yh[d], yc[d] = ht, ct
    if layout:
        y, yh, yc = y.transpose(2, 0, 1, 3), yh.swapaxes(0, 1), yc.swapaxes(0, 1)
    return tuple(np.ascontiguousarray(v).astype(x.dtype, copy=False) for v in (y, yh, yc))


_COMMON_ATTRS = {
    "activation_alpha": AttrSpec("floats", None, "alpha of the activations that take one, in order"),
    "activation_beta": AttrSpec("floats", None, "beta of the activations that take one, in order"),
    "activations": AttrSpec("strs", None, "the activations per direction"),
    "clip": AttrSpec("float", None, "bound every activation input to [-clip, clip]"),
    "direction": AttrSpec("str", "forward", "forward, reverse or bidirectional"),
    "hidden_size": AttrSpec("int", None, "hidden size (default: from R)"),
    "layout": AttrSpec("int", 0, "0: X is [seq, batch, in]; 1: X is [batch, seq, in]"),
}


def _gated(ctx, x, w, r, b, seq_lens, h0, gates: int, defaults: tuple[str, ...], step) -> tuple[np.ndarray, ...]:
    """Run a GRU or RNN layer: the input projections of all steps in one matmul, then per step
    ``h = step(xw_t, h, r_d, rb_d, acts)`` for the whole batch; masking and layout as LSTM's."""
    a = ctx.attrs
    if a["layout"]:
        x = x.swapaxes(0, 1)
        h0 = None if h0 is None else h0.swapaxes(0, 1)
    seq, batch, _ = x.shape
    ndir, hid = w.shape[0], r.shape[2]
    dt = float_compute_dtype(x.dtype)
    names = a["activations"] or defaults * ndir
    per = len(defaults)
    if len(names) != per * ndir:
        raise InputError(f"{ctx.node_name!r}: {len(names)} activations given, {per * ndir} needed")
    acts = activation(names, a["activation_alpha"], a["activation_beta"])
    clip = a["clip"]
    lens = np.full(batch, seq, np.int64) if seq_lens is None else seq_lens.astype(np.int64)
    masked = bool((lens < seq).any())
    y = np.zeros((seq, ndir, batch, hid), dt)
    yh = np.zeros((ndir, batch, hid), dt)
    for d in range(ndir):
        reverse = a["direction"] == "reverse" or d == 1
        fs = acts[per * d:per * d + per]
        if clip is not None:
            fs = [_clipped(f, clip) for f in fs]
        wb, rb = (np.zeros(gates * hid, dt),) * 2 if b is None else \
            (b[d, :gates * hid].astype(dt), b[d, gates * hid:].astype(dt))
        xw = x.astype(dt, copy=False) @ w[d].astype(dt, copy=False).T + wb  # (seq, batch, gates*hid)
        rt = r[d].astype(dt, copy=False).T
        ht = np.zeros((batch, hid), dt) if h0 is None else h0[d].astype(dt, copy=True)
        for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
            hn = step(xw[t], ht, rt, rb, fs)
            if masked:
                live = (t < lens)[:, None]
                hn = np.where(live, hn, ht)
                y[t, d] = np.where(live, hn, 0)
            else:
                y[t, d] = hn
            ht = hn
        yh[d] = ht
    if a["layout"]:
        y, yh = y.transpose(2, 0, 1, 3), yh.swapaxes(0, 1)
    return tuple(np.ascontiguousarray(v).astype(x.dtype, copy=False) for v in (y, yh))


@define_op("GRU", inputs=(3, 6), outputs=(0, 2), infer=_recurrent_infer(3, 2), attrs={
    **_COMMON_ATTRS, "activations": AttrSpec("strs", None, "f, g per direction (default Sigmoid, Tanh)"),
    "linear_before_reset": AttrSpec("int", 0, "1: apply the reset gate after the recurrent matmul")})
def gru(ctx, x, w, r, b=None, seq_lens=None, h0=None):
    """Gated recurrent unit layer (gate order z, r, h); returns Y, Y_h.

    ``z = f(Xz + H Rz + Rbz)``, ``r = f(Xr + H Rr + Rbr)``, ``h = g(Xh + (r (.) H) Rh + Rbh)`` (or with
    ``linear_before_reset``: ``g(Xh + r (.) (H Rh + Rbh))``), ``H' = (1 - z) (.) h + z (.) H``; the X terms
    include the input bias Wb."""
    hid = r.shape[2]
    lbr = bool(ctx.attrs["linear_before_reset"])

    def step(xw, ht, rt, rb, fs):
        f, g = fs
        rz = ht @ rt[:, :2 * hid] + rb[:2 * hid]
        z = f(xw[:, :hid] + rz[:, :hid])
        rr = f(xw[:, hid:2 * hid] + rz[:, hid:])
        if lbr:
            h = g(xw[:, 2 * hid:] + rr * (ht @ rt[:, 2 * hid:] + rb[2 * hid:]))
        else:
            h = g(xw[:, 2 * hid:] + (rr * ht) @ rt[:, 2 * hid:] + rb[2 * hid:])
        return (1 - z) * h + z * ht

    return _gated(ctx, x, w, r, b, seq_lens, h0, 3, ("Sigmoid", "Tanh"), step)


@define_op("RNN", inputs=(3, 6), outputs=(0, 2), infer=_recurrent_infer(1, 2), attrs={
    **_COMMON_ATTRS, "activations": AttrSpec("strs", None, "f per direction (default Tanh)")})
def rnn(ctx, x, w, r, b=None, seq_lens=None, h0=None):
    """Simple recurrent layer: ``H' = f(X Wi + H Ri + Wbi + Rbi)``; returns Y, Y_h."""

    def step(xw, ht, rt, rb, fs):
        return fs[0](xw + ht @ rt + rb)

    return _gated(ctx, x, w, r, b, seq_lens, h0, 1, ("Tanh",), step)
