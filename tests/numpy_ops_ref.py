"""Whole-op forward/backward pairs over mlxtune's numpy ops, for the tests.

Each op as ``<op>_forward(...) -> (out, cache)`` and ``<op>_backward(dout,
cache) -> grads``, in the style of llm.c's reference implementation, built
from the lower-level halves the model trains with
(``mlxtune.backends.numpy.ops``): ``test_numpy_model.py`` checks each backward
against finite differences, ``test_parity.py`` each forward against mlx. The
model never calls these: it chooses per block what to keep and recompute.
"""

from __future__ import annotations

import numpy as np

from mlxtune.backends.numpy.ops import Linear, LoRA, linears_forward, linears_backward_input, linears_backward_params, rmsnorm_rstd, rmsnorm_apply, rmsnorm_grad, rope_rows, rotate, causal_attention, causal_attention_backward, sigmoid, swiglu_apply, swiglu_grad


def linear_forward(x, weight, bias=None, lora: LoRA | None = None, drop=None):
    """y = x Wᵀ (+ b) (+ scale * (dropout(x) A) B).  x: (..., in), weight: (out, in).

    ``drop`` is a dropout mask shaped like ``x`` (or None): it applies to the
    LoRA branch only, as in mlx-lm.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # (N, in)
    layer = Linear(weight, bias, lora, None if drop is None else drop.reshape(x2.shape))
    y = linears_forward(x2, [layer])  # (N, out)
    return y.reshape(*lead, weight.shape[0]), (layer, x2)


def linear_backward(dy, cache):
    """-> (dx, lora_grads); lora_grads is (dA, dB) or None. No gradient for W or b (frozen)."""
    layer, x2 = cache
    lead = dy.shape[:-1]
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out)
    dx = linears_backward_input(dy2, [layer])  # (N, in)
    (grads,) = linears_backward_params(dy2, x2, [layer])
    return dx.reshape(*lead, layer.weight.shape[1]), grads


def rmsnorm_forward(x, weight, eps: float):
    """x * rsqrt(mean(x²) + eps) * w, over the last axis.  x: (..., C), weight: (C,)."""
    rstd = rmsnorm_rstd(x, eps)  # (..., 1)
    return rmsnorm_apply(x, rstd, weight), (x, rstd, weight)


def rmsnorm_backward(dout, cache):
    """-> dx."""
    x, rstd, weight = cache
    C = x.shape[-1]
    return rmsnorm_grad(dout.reshape(-1, C), x.reshape(-1, C), rstd.reshape(-1, 1), weight).reshape(x.shape)


def rope_forward(x, cos, sin, traditional: bool = False):
    """x: (B, H, T, D) -> the same shape, each position rotated by its angles (cos, sin: (T, D/2))."""
    COS, SIN = rope_rows(cos, sin, traditional)
    return rotate(x, COS, SIN, traditional, x.shape[-1]), (COS, SIN, traditional)


def rope_backward(dout, cache):
    """A rotation is orthogonal: its backward is the rotation by the opposite angles."""
    COS, SIN, traditional = cache
    return rotate(dout, COS, -SIN, traditional, dout.shape[-1])


def grouped(q, KVH: int):
    """(B, H, T, D) -> (B, KVH, T*G, D), rows ordered (position, query head): the layout of causal_attention."""
    B, H, T, D = q.shape
    return np.ascontiguousarray(q.reshape(B, KVH, H // KVH, T, D).swapaxes(2, 3)).reshape(B, KVH, T * (H // KVH), D)


def ungrouped(o, H: int):
    """The inverse of ``grouped``: (B, KVH, T*G, D) -> (B, H, T, D)."""
    B, KVH, TG, D = o.shape
    G = H // KVH
    return np.ascontiguousarray(o.reshape(B, KVH, TG // G, G, D).swapaxes(2, 3)).reshape(B, H, TG // G, D)


def attention_forward(q, k, v, scale: float, offset: int = 0):
    """Causal grouped-query attention on (B, H, T, D) queries and (B, KVH, S, D) keys and values.

    Query head h uses key/value head h // G, at positions offset .. offset+T-1.
    """
    H, KVH = q.shape[1], k.shape[1]
    qg = grouped(q * scale, KVH)  # (B, KVH, T*G, D), scaled
    o, lse = causal_attention(qg, k, v, offset)
    return ungrouped(o, H), (qg, k, v, lse, scale, offset)


def attention_backward(dout, cache):
    """-> (dq, dk, dv). Gradients of the G query heads sharing a k/v head add up in dk, dv."""
    qg, k, v, lse, scale, offset = cache
    H = dout.shape[1]
    dq, dk, dv, _ = causal_attention_backward(grouped(dout, k.shape[1]), qg, k, v, lse, offset)
    dq *= scale
    return ungrouped(dq, H), dk, dv


def swiglu_forward(gate, up):
    """silu(gate) * up, with silu(g) = g * sigmoid(g).  gate, up: (..., F)."""
    sig = sigmoid(gate)  # (..., F)
    return swiglu_apply(gate, up, sig), (gate, up, sig)


def swiglu_backward(dout, cache):
    """-> (dgate, dup)."""
    gate, up, sig = cache
    return swiglu_grad(dout, gate, up, sig, np.empty_like(gate), np.empty_like(gate))


def cross_entropy_forward(logits, targets, weights):
    """sum_n weights[n] * CE(logits[n], targets[n]).  logits: (N, V), targets, weights: (N,).

    The whole-batch form of ``log_probs_fused``, keeping the softmax for the backward.
    """
    rows = np.arange(len(targets))
    shifted = logits - logits.max(axis=-1, keepdims=True)  # (N, V)
    target_logit = shifted[rows, targets]  # (N,)
    probs = np.exp(shifted, out=shifted)  # (N, V), in place; normalized below
    sumexp = probs.sum(axis=-1, keepdims=True)  # (N, 1)
    probs /= sumexp
    ce = np.log(sumexp[:, 0]) - target_logit  # (N,) logsumexp - logit of the target
    return float(np.sum(ce * weights)), (probs, targets, weights)


def cross_entropy_backward(dloss: float, cache):
    """-> dlogits (N, V) = dloss * weights * (softmax(logits) - onehot(target))."""
    probs, targets, weights = cache
    w = (dloss * weights)[:, None]  # (N, 1)
    dlogits = probs * w  # (N, V)
    dlogits[np.arange(len(targets)), targets] -= w[:, 0]
    return dlogits
