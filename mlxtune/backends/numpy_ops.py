"""The operations of a llama-family transformer, each as a forward/backward pair.

Every op is written as ``<op>_forward(...) -> (out, cache)`` and
``<op>_backward(dout, cache) -> grads``, in the style of llm.c's reference
implementation: ``cache`` holds exactly what the backward pass needs and
nothing more, and each backward is checked against finite differences in
``tests/test_numpy_model.py``.

Only LoRA parameters are trained, so the backward of a frozen weight returns the
gradient of its *input* (the activation) and never the gradient of the weight:
``dW`` of a 576 x 1536 projection is never formed.

Shapes: B batch, T query positions, S key positions (T, or more with a KV
cache), C model width, H query heads, KVH key/value heads, G = H // KVH query
heads per key/value head (grouped-query attention), D head dim, V vocabulary,
N rows (B * T flattened), r LoRA rank.

This module imports numpy only: it must run where mlx cannot be installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------- linear + LoRA


@dataclass
class LoRA:
    """A low-rank update of one frozen linear layer, ``y += scale * (x A) B``.

    Same names, shapes and semantics as ``mlxtune.lora.LoRALinear``.
    """

    a: np.ndarray  # (in, r)  "lora_a"
    b: np.ndarray  # (r, out) "lora_b"
    scale: float
    dropout: float = 0.0


def dropout_mask(shape: tuple[int, ...], p: float, rng: np.random.Generator, dtype) -> np.ndarray:
    """Inverted dropout as ``mlx.nn.Dropout``: keep with probability 1-p, scale kept by 1/(1-p)."""
    keep = rng.random(shape) < (1.0 - p)
    return keep.astype(dtype) * (1.0 / (1.0 - p))


def linear_forward(x, weight, bias=None, lora: LoRA | None = None, drop=None):
    """y = x Wᵀ (+ b) (+ scale * (dropout(x) A) B).  x: (..., in), weight: (out, in).

    ``drop`` is a dropout mask shaped like ``x`` (or None): it applies to the
    LoRA branch only, as in mlx-lm.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # (N, in)
    y = x2 @ weight.T  # (N, out)
    if bias is not None:
        y += bias
    xd = xa = None
    if lora is not None:
        xd = x2 if drop is None else x2 * drop.reshape(x2.shape)  # (N, in)
        xa = xd @ lora.a  # (N, r)
        y += (lora.scale * xa) @ lora.b  # (N, out); scaling the (N, r) side is cheaper
    cache = (weight, lora, xd, xa, drop)
    return y.reshape(*lead, weight.shape[0]), cache


def linear_backward(dy, cache):
    """-> (dx, lora_grads); lora_grads is (dA, dB) or None. No gradient for W or b (frozen)."""
    weight, lora, xd, xa, drop = cache
    lead = dy.shape[:-1]
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, out)
    dx = dy2 @ weight  # (N, in)
    grads = None
    if lora is not None:
        dxa = lora.scale * (dy2 @ lora.b.T)  # (N, r)
        db = lora.scale * (xa.T @ dy2)  # (r, out)
        da = xd.T @ dxa  # (in, r)
        dxd = dxa @ lora.a.T  # (N, in)
        dx += dxd if drop is None else dxd * drop.reshape(dxd.shape)
        grads = (da, db)
    return dx.reshape(*lead, weight.shape[1]), grads


# ----------------------------------------------------------------------- RMSNorm


def rmsnorm_forward(x, weight, eps: float):
    """x * rsqrt(mean(x²) + eps) * w, over the last axis.  x: (..., C), weight: (C,)."""
    rstd = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = x * rstd  # (..., C)
    return xhat * weight, (xhat, rstd, weight)


def rmsnorm_backward(dout, cache):
    """-> dx. With xhat = x r and r = (mean(x²)+eps)^-1/2: dx = r (g - xhat mean(g xhat)), g = dout w."""
    xhat, rstd, weight = cache
    g = dout * weight  # (..., C)
    return rstd * (g - xhat * np.mean(g * xhat, axis=-1, keepdims=True))


# -------------------------------------------------------------------------- RoPE


def rope_tables(positions: np.ndarray, inv_freq: np.ndarray, dtype):
    """cos and sin of the rotation angles, (T, D/2) each, computed in float64 then cast."""
    theta = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # (T, D/2)
    return np.cos(theta).astype(dtype), np.sin(theta).astype(dtype)


def _rotate(x, cos, sin, traditional: bool):
    """Rotate feature pairs of x (..., T, D) by the angles in cos/sin (T, D/2).

    Non-traditional (Hugging Face / mlx default) pairs feature i with i + D/2;
    traditional (the original RoFormer / Meta layout) pairs 2i with 2i+1.
    """
    if traditional:
        x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., T, D/2)
        out = np.empty_like(x)
        out[..., 0::2] = x1 * cos - x2 * sin
        out[..., 1::2] = x1 * sin + x2 * cos
        return out
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]  # (..., T, D/2)
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)  # (..., T, D)


def rope_forward(x, cos, sin, traditional: bool = False):
    """x: (B, H, T, D) -> the same shape, each position rotated by its angles."""
    return _rotate(x, cos, sin, traditional), (cos, sin, traditional)


def rope_backward(dout, cache):
    """A rotation is orthogonal: its backward is the rotation by the opposite angles."""
    cos, sin, traditional = cache
    return _rotate(dout, cos, -sin, traditional)


# --------------------------------------------------------------------- attention


def attention_forward(q, k, v, scale: float, offset: int = 0):
    """Causal grouped-query attention.

    q: (B, H, T, D) at positions offset .. offset+T-1; k, v: (B, KVH, S, D) at
    positions 0 .. S-1. Query head h uses key/value head h // G, so q is viewed as
    (B, KVH, G*T, D): one matmul per key/value head serves all G query heads,
    without copying k or v G times.
    """
    B, H, T, D = q.shape
    KVH, S = k.shape[1], k.shape[2]
    G = H // KVH
    qg = np.ascontiguousarray(q).reshape(B, KVH, G * T, D)  # (B, KVH, G*T, D)
    scores = qg @ k.swapaxes(-1, -2)  # (B, KVH, G*T, S)
    scores *= scale
    allowed = (offset + np.arange(T))[:, None] >= np.arange(S)[None, :]  # (T, S)
    causal = np.where(allowed, 0.0, -np.inf).astype(scores.dtype)  # (T, S) additive mask
    scores_by_head = scores.reshape(B, KVH, G, T, S)  # a view of scores
    scores_by_head += causal  # the same mask for every head
    probs = softmax(scores)  # (B, KVH, G*T, S)
    out = probs @ v  # (B, KVH, G*T, D)
    return out.reshape(B, H, T, D), (qg, k, v, probs, scale)


def attention_backward(dout, cache):
    """-> (dq, dk, dv). Gradients of the G query heads sharing a k/v head add up in dk, dv."""
    qg, k, v, probs, scale = cache
    B, H, T, D = dout.shape
    dog = dout.reshape(qg.shape)  # (B, KVH, G*T, D)
    dv = probs.swapaxes(-1, -2) @ dog  # (B, KVH, S, D)
    dprobs = dog @ v.swapaxes(-1, -2)  # (B, KVH, G*T, S)
    dscores = softmax_backward(dprobs, probs) * scale  # (B, KVH, G*T, S); 0 where masked
    dq = dscores @ k  # (B, KVH, G*T, D)
    dk = dscores.swapaxes(-1, -2) @ qg  # (B, KVH, S, D)
    return dq.reshape(B, H, T, D), dk, dv


def softmax(x):
    """Softmax over the last axis (max subtracted; -inf entries get probability 0)."""
    e = x - x.max(axis=-1, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e


def softmax_backward(dprobs, probs):
    """-> dx for probs = softmax(x): dx = p (dp - sum(dp p))."""
    return probs * (dprobs - np.sum(dprobs * probs, axis=-1, keepdims=True))


# ------------------------------------------------------------------------ SwiGLU


def swiglu_forward(gate, up):
    """silu(gate) * up, with silu(g) = g * sigmoid(g).  gate, up: (..., F)."""
    with np.errstate(over="ignore"):  # exp(-g) = inf for very negative g gives sigmoid 0, as it should
        sig = 1.0 / (1.0 + np.exp(-gate))  # (..., F)
    return gate * sig * up, (gate, up, sig)


def swiglu_backward(dout, cache):
    """-> (dgate, dup). silu'(g) = sigmoid(g) (1 + g (1 - sigmoid(g)))."""
    gate, up, sig = cache
    silu = gate * sig
    dup = dout * silu
    dgate = dout * up * sig * (1.0 + gate * (1.0 - sig))
    return dgate, dup


# ---------------------------------------------------------------- cross-entropy


def cross_entropy_forward(logits, targets, weights):
    """sum_n weights[n] * CE(logits[n], targets[n]).  logits: (N, V), targets, weights: (N,).

    CE = logsumexp(logits) - logits[target], as ``mlx.nn.losses.cross_entropy``.
    The cache holds the softmax, which is the whole backward; with a 49k
    vocabulary these (N, V) arrays are the largest of the model, so the
    function makes as few of them as it can.
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
