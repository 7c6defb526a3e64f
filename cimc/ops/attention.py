"""Built-in ops: transformer and sequence-model blocks ONNX defines as single ops (Attention,
RotaryEmbedding, SwiGLU, LinearAttention, CausalConvWithState).

``Attention`` (opset 23-25): Q, K, V as ``[batch, heads, seq, head_size]`` or ``[batch, seq,
heads*head_size]`` (3-D, with ``q_num_heads``/``kv_num_heads``). ``present_k/v`` are the past cache
with K/V appended along the sequence. ``scores = (Q*sqrt(s)) @ (K*sqrt(s))^T`` (``s`` the scale,
default ``1/sqrt(head_size)``), K/V heads repeated for grouped-query attention; then
``softcap * tanh(scores / softcap)`` if ``softcap > 0``; plus a bias built from ``attn_mask`` (bool:
``-inf`` where false; float: added; padded with "masked" to the key length), ``is_causal`` (key j
visible from query i when ``j <= i + offset``, offset the past length, or per batch
``nonpad_kv_seqlen - q_len``), the sliding window ``[i+offset-left, i+offset+right]`` and padding
beyond ``nonpad_kv_seqlen``; softmax over keys (rows masked everywhere give 0); ``Y = P @ V``.
``qk_matmul_output`` is the scores (mode 0), after softcap (1), with the bias (2) or after softmax (3).
Products sum in float32 (float64 for float64 or under ``reproducible_floats``), like MatMul.

``RotaryEmbedding`` rotates pairs of the first ``rotary_embedding_dim`` features of each head (halves,
or even/odd when ``interleaved``) by the cached cos/sin of each position. ``SwiGLU``:
``a * sigmoid(alpha * a) * b``. ``LinearAttention`` (opset 27) runs the recurrent state update of
linear/gated/delta attention step by step; ``CausalConvWithState`` is a depthwise causal 1-D
convolution that carries its last k-1 inputs as state.
"""

from __future__ import annotations

import numpy as np

from cimc.errors import CimcError, VerifyError
from cimc.ir.opdef import AttrSpec, InferContext, define_op
from cimc.ir.types import Dim, Shape, TensorType, dtype_from_onnx_code
from cimc.ops._infer import require
from cimc.ops.nn import conv, exact_matmul, float_compute_dtype


def _where(ctx: InferContext) -> str:
    return f"node {ctx.node.name!r} ({ctx.node.op})"


def _cat(a: Dim, b: Dim) -> Dim:
    return a + b if isinstance(a, int) and isinstance(b, int) else None


def _attention_type(ctx: InferContext) -> list[TensorType]:
    q, k, v = require(ctx, 0), require(ctx, 1), require(ctx, 2)
    ranks = {t.rank for t in (q, k, v)} - {None}
    if len(ranks) > 1 or ranks - {3, 4}:
        raise VerifyError(f"{_where(ctx)}: Q, K and V must all be 3-D or all 4-D, are {q}, {k}, {v}")
    if q.shape is None or k.shape is None or v.shape is None:
        return [TensorType(q.dtype, None)] * ctx.num_outputs
    past = ctx.types[4] if ctx.has(4) else None
    past_len: Dim = 0 if past is None else (past.shape[2] if past.shape is not None else None)
    if len(q.shape) == 4:
        y: Shape = (*q.shape[:3], v.shape[3])
        pk, pv = (*k.shape[:2], _cat(past_len, k.shape[2]), k.shape[3]), \
            (*v.shape[:2], _cat(past_len, v.shape[2]), v.shape[3])
        heads, qlen = q.shape[1], q.shape[2]
    else:
        qh, kvh = ctx.attrs["q_num_heads"], ctx.attrs["kv_num_heads"]
        if not qh or not kvh:
            raise VerifyError(f"{_where(ctx)}: 3-D inputs need q_num_heads and kv_num_heads")
        per_v = v.shape[2] // kvh if isinstance(v.shape[2], int) else None
        per_k = k.shape[2] // kvh if isinstance(k.shape[2], int) else None
        y = (q.shape[0], q.shape[1], per_v * qh if per_v is not None else None)
        pk = (k.shape[0], kvh, _cat(past_len, k.shape[1]), per_k)
        pv = (v.shape[0], kvh, _cat(past_len, v.shape[1]), per_v)
        heads, qlen = qh, q.shape[1]
    scores = (q.shape[0], heads, qlen, pk[2])
    return [TensorType(q.dtype, t) for t in (y, pk, pv, scores)][: max(1, ctx.num_outputs)]


def _heads(x: np.ndarray, n: int) -> np.ndarray:
    """[batch, seq, n*size] as [batch, n, seq, size]."""
    b, s, h = x.shape
    return x.reshape(b, s, n, h // n).transpose(0, 2, 1, 3)


def _bias(qlen: int, kvlen: int, batch: int, mask, causal: bool, past_len: int, nonpad, left: int, right: int,
          dt: np.dtype) -> np.ndarray:
    """The additive attention bias (0 or -inf for the structural masks, plus a float mask)."""
    bias = np.zeros((qlen, kvlen), dt)
    if mask is not None:
        pad = kvlen - mask.shape[-1]
        if pad > 0:
            mask = np.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, pad)],
                          constant_values=False if mask.dtype == np.bool_ else -np.inf)
        bias = bias + (np.where(mask, 0, -np.inf).astype(dt) if mask.dtype == np.bool_ else mask.astype(dt))
    if causal or left >= 0 or right >= 0 or nonpad is not None:
        offset = (nonpad.reshape(-1, 1, 1, 1).astype(np.int64) - qlen) if nonpad is not None and past_len == 0 \
            else np.asarray(past_len)
        diff = np.arange(qlen)[:, None] + offset - np.arange(kvlen)[None, :]  # query position - key position
        allowed = np.ones(diff.shape, bool)
        if causal:
            allowed &= diff >= 0
        if left >= 0:
            allowed &= diff <= left
        if right >= 0:
            allowed &= -diff <= right
        bias = bias + np.where(allowed, 0, -np.inf).astype(dt)
    if nonpad is not None:
        keep = np.arange(kvlen)[None, :] < nonpad.reshape(-1, 1)
        bias = bias + np.where(keep, 0, -np.inf).astype(dt).reshape(batch, 1, 1, kvlen)
    return bias


@define_op("Attention", inputs=(3, 7), outputs=(1, 4), infer=_attention_type, attrs={
    "is_causal": AttrSpec("int", 0, "1: each query sees only keys at or before its position"),
    "kv_num_heads": AttrSpec("int", None, "K/V heads (3-D inputs)"),
    "q_num_heads": AttrSpec("int", None, "query heads (3-D inputs)"),
    "qk_matmul_output_mode": AttrSpec("int", 0, "what output 3 holds: 0 scores, 1 softcapped, 2 biased, "
                                                 "3 softmaxed"),
    "scale": AttrSpec("float", None, "score scale (default 1/sqrt(head_size))"),
    "softcap": AttrSpec("float", 0.0, "> 0: scores become softcap * tanh(scores / softcap)"),
    "softmax_precision": AttrSpec("int", None, "ONNX type code the softmax runs in"),
    "left_window_size": AttrSpec("int", -1, ">= 0: keys at most this far before the query"),
    "right_window_size": AttrSpec("int", -1, ">= 0: keys at most this far after the query")})
def attention(ctx, q, k, v, mask=None, past_k=None, past_v=None, nonpad=None):
    """Scaled dot-product attention over heads; returns Y, present_key, present_value, qk output."""
    a = ctx.attrs
    three_d = q.ndim == 3
    if three_d:
        q, k, v = _heads(q, a["q_num_heads"]), _heads(k, a["kv_num_heads"]), _heads(v, a["kv_num_heads"])
    if (past_k is None) != (past_v is None):
        raise CimcError("Attention needs both past_key and past_value, or neither")
    pk = k if past_k is None else np.concatenate([past_k, k], axis=2)
    pv = v if past_v is None else np.concatenate([past_v, v], axis=2)
    batch, heads, qlen, size = q.shape
    kvlen = pk.shape[2]
    dt = float_compute_dtype(q.dtype)
    root = np.sqrt(a["scale"] if a["scale"] is not None else 1 / np.sqrt(size)).astype(dt)
    kk, vv = pk, pv
    if heads != pk.shape[1]:
        if heads % pk.shape[1]:
            raise CimcError(f"Attention: {heads} query heads are not a multiple of {pk.shape[1]} key heads")
        kk, vv = np.repeat(pk, heads // pk.shape[1], axis=1), np.repeat(pv, heads // pk.shape[1], axis=1)
    scores = exact_matmul((q.astype(dt) * root), (kk.astype(dt) * root).transpose(0, 1, 3, 2), dt)
    if a["softcap"] > 0:
        scores = a["softcap"] * np.tanh(scores / a["softcap"])
    capped = scores
    bias = _bias(qlen, kvlen, batch, mask, bool(a["is_causal"]), 0 if past_k is None else past_k.shape[2], nonpad,
                 a["left_window_size"], a["right_window_size"], dt)
    biased = scores + bias
    sdt = dt if a["softmax_precision"] is None else np.promote_types(
        dtype_from_onnx_code(a["softmax_precision"]).numpy, np.float32)
    s = biased.astype(sdt)
    top = np.max(s, axis=-1, keepdims=True)
    dead = np.isneginf(np.max(np.broadcast_to(bias, biased.shape), axis=-1, keepdims=True))
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(s - np.where(np.isneginf(top), 0, top))
        total = np.sum(e, axis=-1, keepdims=True)
        probs = np.where(dead, 0, e / np.where(total == 0, 1, total)).astype(dt)
    y = exact_matmul(probs.astype(q.dtype).astype(dt), vv.astype(dt), dt).astype(q.dtype)
    if three_d:
        y = y.transpose(0, 2, 1, 3).reshape(batch, qlen, -1)
    mode = a["qk_matmul_output_mode"]
    qk = {0: scores if a["softcap"] <= 0 else capped, 1: capped, 2: biased, 3: probs}.get(mode)
    if qk is None:
        raise CimcError(f"Attention qk_matmul_output_mode={mode} is not 0, 1, 2 or 3")
    return y, pk, pv, np.asarray(qk).astype(q.dtype)


def _rotary_type(ctx: InferContext) -> list[TensorType]:
    x = require(ctx, 0)
    if x.rank is not None and x.rank not in (3, 4):
        raise VerifyError(f"{_where(ctx)}: X must be 3-D or 4-D, is {x}")
    return [TensorType(x.dtype, x.shape)]


@define_op("RotaryEmbedding", inputs=(3, 4), infer=_rotary_type, attrs={
    "interleaved": AttrSpec("int", 0, "1: rotate even/odd feature pairs, 0: first/second halves"),
    "num_heads": AttrSpec("int", None, "heads of a 3-D X"),
    "rotary_embedding_dim": AttrSpec("int", 0, "features rotated per head (0: all)")})
def rotary_embedding(ctx, x, cos, sin, position_ids=None):
    """Rotate feature pairs of each head by the cached angle of its position."""
    a = ctx.attrs
    if x.ndim == 4:  # [batch, heads, seq, size] -> [batch, seq, heads, size]
        u = x.transpose(0, 2, 1, 3)
    else:
        if not a["num_heads"]:
            raise CimcError("RotaryEmbedding of a 3-D X needs num_heads")
        u = x.reshape(x.shape[0], x.shape[1], a["num_heads"], -1)
    dim = a["rotary_embedding_dim"] or u.shape[3]
    if position_ids is not None:
        cos, sin = cos[position_ids], sin[position_ids]
    if cos.shape[-1] != dim // 2 or sin.shape[-1] != dim // 2:
        raise CimcError(f"RotaryEmbedding caches have {cos.shape[-1]} columns, {dim // 2} needed")
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    rot = u[..., :dim]
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if a["interleaved"] else (rot[..., :dim // 2], rot[..., dim // 2:])
    real, imag = c * x1 - s * x2, s * x1 + c * x2
    rotated = np.stack([real, imag], axis=-1).reshape(rot.shape) if a["interleaved"] else \
        np.concatenate([real, imag], axis=-1)
    out = np.concatenate([rotated.astype(x.dtype), u[..., dim:]], axis=-1)
    return np.ascontiguousarray(out.transpose(0, 2, 1, 3) if x.ndim == 4 else out.reshape(x.shape))


@define_op("SwiGLU", inputs=2, infer=lambda ctx: [require(ctx, 0)],
           attrs={"alpha": AttrSpec("float", 1.0, "slope inside the sigmoid")})
def swiglu(ctx, a, b):
    """a * sigmoid(alpha * a) * b."""
    u = a.astype(np.float32) if a.dtype.itemsize < 4 else a
    gate = (1 / (1 + np.exp(-np.asarray(ctx.attrs["alpha"], u.dtype) * u))).astype(a.dtype)
    return (a * gate * b).astype(a.dtype)


def _linear_attention_type(ctx: InferContext) -> list[TensorType]:
    q, v = require(ctx, 0), require(ctx, 2)
    qh, kvh = ctx.attrs["q_num_heads"], ctx.attrs["kv_num_heads"]
    if not qh or not kvh or qh % kvh:
        raise VerifyError(f"{_where(ctx)}: q_num_heads ({qh}) must be a positive multiple of kv_num_heads ({kvh})")
    if q.shape is None or v.shape is None:
        return [TensorType(q.dtype, None), TensorType(q.dtype, None)][: ctx.num_outputs]
    dk = q.shape[2] // qh if isinstance(q.shape[2], int) else None
    dv = v.shape[2] // kvh if isinstance(v.shape[2], int) else None
    state = ctx.types[3] if ctx.has(3) else None
    return [TensorType(q.dtype, (q.shape[0], q.shape[1], dv * qh if dv is not None else None)),
            TensorType(state.dtype if state is not None else q.dtype, (q.shape[0], kvh, dk, dv))][: ctx.num_outputs]


@define_op("LinearAttention", inputs=(3, 6), outputs=(1, 2), infer=_linear_attention_type, attrs={
    "chunk_size": AttrSpec("int", 64, "a tuning hint; no effect on the result"),
    "kv_num_heads": AttrSpec("int", None, "key/value heads"),
    "q_num_heads": AttrSpec("int", None, "query heads (a multiple of kv_num_heads)"),
    "scale": AttrSpec("float", 0.0, "output scale (0: 1/sqrt(key head size))"),
    "update_rule": AttrSpec("str", "gated_delta", "linear, gated, delta or gated_delta")},
    verify=lambda n: None if n.attrs.get("update_rule", "gated_delta") in ("linear", "gated", "delta", "gated_delta")
    else f"update_rule is {n.attrs['update_rule']!r}, expected linear, gated, delta or gated_delta")
def linear_attention(ctx, q, k, v, past=None, decay=None, beta=None):
    """Recurrent linear attention: per step, the [d_k, d_v] state of each key head decays by exp(decay)
    (gated rules), takes ``k v^T`` (delta rules: ``k (beta (v - S^T k))^T``), and answers
    ``scale * q^T S``; returns the output and the final state."""
    a = ctx.attrs
    qh, kvh = a["q_num_heads"], a["kv_num_heads"]
    gated, delta = a["update_rule"] in ("gated", "gated_delta"), a["update_rule"] in ("delta", "gated_delta")
    if gated != (decay is not None) or delta != (beta is not None):
        raise CimcError(f"LinearAttention update_rule {a['update_rule']!r} needs decay {'given' if gated else 'absent'}"
                        f" and beta {'given' if delta else 'absent'}")
    b, t, _ = q.shape
    q4, k4, v4 = (_heads(u, n).astype(np.float32) for u, n in ((q, qh), (k, kvh), (v, kvh)))
    dk, dv = q4.shape[3], v4.shape[3]
    state = np.zeros((b, kvh, dk, dv), np.float32) if past is None else past.astype(np.float32)
    if gated:
        g = decay.astype(np.float32).reshape(b, t, kvh, -1).transpose(0, 2, 1, 3)  # (b, kvh, t, 1 or dk)
    if delta:
        be = beta.astype(np.float32).reshape(b, t, beta.shape[-1], 1).transpose(0, 2, 1, 3)
    scale = a["scale"] or 1 / np.sqrt(dk)
    out = np.zeros((b, qh, t, dv), np.float32)
    for i in range(t):
        kt, vt = k4[:, :, i], v4[:, :, i]
        if gated:
            state = state * np.exp(g[:, :, i])[..., None]
        if delta:
            vt = be[:, :, i] * (vt - np.einsum("bhdm,bhd->bhm", state, kt))
        state = state + kt[..., :, None] * vt[..., None, :]
        read = np.repeat(state, qh // kvh, axis=1) if qh != kvh else state
        out[:, :, i] = scale * np.einsum("bhd,bhdm->bhm", q4[:, :, i], read)
    y = out.transpose(0, 2, 1, 3).reshape(b, t, qh * dv).astype(q.dtype)
    return y, state.astype(q.dtype if past is None else past.dtype)


def _causal_conv_type(ctx: InferContext) -> list[TensorType]:
    x, w = require(ctx, 0), require(ctx, 1)
    if x.rank is not None and x.rank != 3:
        raise VerifyError(f"{_where(ctx)}: input must be [batch, channels, length], is {x}")
    k = w.shape[2] if w.shape is not None and len(w.shape) == 3 else None
    state = (x.shape[0], x.shape[1], k - 1 if isinstance(k, int) else None) if x.shape is not None else None
    return [TensorType(x.dtype, x.shape), TensorType(x.dtype, state)][: ctx.num_outputs]


@define_op("CausalConvWithState", inputs=(2, 4), outputs=(1, 2), infer=_causal_conv_type,
           attrs={"activation": AttrSpec("str", "none", "none, or silu/swish applied to the result")},
           verify=lambda n: None if n.attrs.get("activation", "none") in ("none", "silu", "swish")
           else f"activation is {n.attrs['activation']!r}, expected none, silu or swish")
def causal_conv_with_state(ctx, x, w, bias=None, past=None):
    """Depthwise causal 1-D convolution continuing from ``past_state`` (the previous k-1 inputs,
    zeros if absent); returns the output and the last k-1 inputs as the new state."""
    batch, channels, _ = x.shape
    k = w.shape[2]
    pad = np.zeros((batch, channels, k - 1), x.dtype) if past is None else past.astype(x.dtype)
    padded = np.concatenate([pad, x], axis=2)
    y = conv(padded, w, bias, strides=[1], dilations=[1], pads_begin=[0], pads_end=[0],
             out=[x.shape[2]], group=channels)
    if ctx.attrs["activation"] in ("silu", "swish"):
        u = y.astype(np.float32)
        y = (u / (1 + np.exp(-u))).astype(x.dtype)
    return y, np.ascontiguousarray(padded[:, :, padded.shape[2] - (k - 1):])
