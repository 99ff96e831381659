"""The operations of a llama-family transformer, forward and backward.

The model (``numpy_model``) trains with these ops (``linears_*``,
``rmsnorm_*``, ``rotate``, ``causal_attention*``, ``swiglu_*``,
``log_probs_fused``), which take what they need explicitly, so that it can
choose what to keep for the backward pass and what to recompute there. The
whole-op pairs built from them, ``<op>_forward(...) -> (out, cache)`` and
``<op>_backward(dout, cache) -> grads`` in the style of llm.c's reference, live
in ``tests/numpy_ops_ref.py``, where each backward is checked against finite
differences (``tests/test_numpy_model.py``) and each forward against mlx.

Only LoRA parameters are trained, so the backward of a frozen weight returns the
gradient of its *input* (the activation) and never the gradient of the weight:
``dW`` of a 576 x 1536 projection is never formed.

Where the speed comes from (float32 on a CPU): every large product is a single
BLAS call on contiguous float32 (linear layers that read the same input are
stacked into one matmul, and each LoRA update is folded into its layer's
weight, ``W + scale (A B)ᵀ``, so that forward and input gradient are one sgemm
each); element-wise work on large arrays is done in place; attention runs in
causal chunks of query positions, never forming the (T, T) probabilities of a
whole sequence at once.

Shapes: B batch, T query positions, S key positions (T, or more with a KV
cache), C model width, H query heads, KVH key/value heads, G = H // KVH query
heads per key/value head (grouped-query attention), D head dim, V vocabulary,
N rows (B * T flattened), r LoRA rank.

This module imports numpy only: it must run where mlx cannot be installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Attention (causal, windowed, and packed: block-diagonal causal) is attention.py's; the model calls it through ops.
from .attention import ATTENTION_CHUNK, causal_attention, causal_attention_backward  # noqa: F401

# ----------------------------------------------------------------- linear + LoRA


@dataclass
class LoRA:
    """A low-rank update of one frozen linear layer, ``y += scale * (x A) B``.

    Same names, shapes and semantics as ``mlxtune.backends.mlx.lora.LoRALinear``.
    """

    a: np.ndarray  # (in, r)  "lora_a"
    b: np.ndarray  # (r, out) "lora_b"
    scale: float
    dropout: float = 0.0


@dataclass
class Linear:
    """One frozen linear layer as the ops see it: weight (out, in), optional bias, LoRA and dropout mask."""

    weight: np.ndarray  # (out, in)
    bias: np.ndarray | None = None  # (out,)
    lora: LoRA | None = None
    drop: np.ndarray | None = None  # (N, in) dropout mask for the LoRA input, or None

    @property
    def folded(self) -> bool:
        """Whether the LoRA update is part of the effective weight (it is, unless dropout masks its input)."""
        return self.lora is not None and self.drop is None


def dropout_mask(shape: tuple[int, ...], p: float, rng: np.random.Generator, dtype) -> np.ndarray:
    """Inverted dropout as ``mlx.nn.Dropout``: keep with probability 1-p, scale kept by 1/(1-p)."""
    keep = rng.random(shape) < (1.0 - p)
    return keep.astype(dtype) * (1.0 / (1.0 - p))


def lora_delta(lora: LoRA, out=None) -> np.ndarray:
    """The (out, in) weight update of an adapter, scale * (A B)ᵀ, as ``LoRALinear.delta`` and mlx-lm's fuse."""
    return np.matmul(lora.scale * lora.b.T, lora.a.T, out=out)  # (out, r) @ (r, in)


def stacked_weight(layers: list[Linear]) -> np.ndarray:
    """The effective weights of layers that read the same input, stacked: (sum of out, in).

    Folded LoRA updates are added in (W + scale (A B)ᵀ), so ``x @ w.T`` is the
    whole forward of every layer in one sgemm and ``dy @ w`` the whole input
    gradient in another. A single layer without a folded adapter is returned
    as is (no copy).
    """
    if len(layers) == 1 and not layers[0].folded:
        return layers[0].weight
    whole = _common_base(layers)
    if whole is not None:
        return whole
    out = np.empty((sum(l.weight.shape[0] for l in layers), layers[0].weight.shape[1]), dtype=layers[0].weight.dtype)
    start = 0
    for l in layers:
        rows = out[start : start + l.weight.shape[0]]  # (out_j, in)
        if l.folded:
            lora_delta(l.lora, out=rows)
            rows += l.weight
        else:
            rows[...] = l.weight
        start += l.weight.shape[0]
    return out


def _common_base(layers: list[Linear]) -> np.ndarray | None:
    """The array the layers' weights are consecutive row blocks of, when they are and no adapter is folded in."""
    if any(l.folded for l in layers):
        return None
    base = layers[0].weight.base
    if base is None or base.ndim != 2 or not base.flags.c_contiguous or base.shape[0] != sum(l.weight.shape[0] for l in layers):
        return None
    offset = 0
    for l in layers:
        w = l.weight
        if w.base is not base or w.shape[1] != base.shape[1] or w.ctypes.data != base.ctypes.data + offset:
            return None
        offset += w.nbytes
    return base


def _stacked_bias(layers: list[Linear]):
    if all(l.bias is None for l in layers):
        return None
    return np.concatenate([l.bias if l.bias is not None else np.zeros(l.weight.shape[0], l.weight.dtype) for l in layers])


def _column_slices(layers: list[Linear]):
    start = 0
    for l in layers:
        yield l, slice(start, start + l.weight.shape[0])
        start += l.weight.shape[0]


def linears_forward(x2, layers: list[Linear], weight=None) -> np.ndarray:
    """y = x2 [W_1; W_2; ...]ᵀ (+ biases, + unfolded LoRA updates): (N, in) -> (N, sum of out).

    The layers' outputs are the column blocks of y, in order. ``weight`` is
    ``stacked_weight(layers)`` if the caller has it already.
    """
    y = x2 @ (stacked_weight(layers) if weight is None else weight).T  # (N, sum out)
    bias = _stacked_bias(layers)
    if bias is not None:
        y += bias
    for l, cols in _column_slices(layers):
        if l.lora is not None and not l.folded:  # dropout on the LoRA input: a separate low-rank product
            xa = (x2 if l.drop is None else x2 * l.drop) @ l.lora.a  # (N, r)
            y[:, cols] += (l.lora.scale * xa) @ l.lora.b  # (N, out_j); scaling the (N, r) side is cheaper
    return y


def linears_backward_input(dy, layers: list[Linear], weight=None) -> np.ndarray:
    """d loss / d x2 (N, in) for dy (N, sum of out): one sgemm through the stacked effective weight."""
    dx = dy @ (stacked_weight(layers) if weight is None else weight)  # (N, in)
    for l, cols in _column_slices(layers):
        if l.lora is not None and not l.folded:
            dxa = l.lora.scale * (dy[:, cols] @ l.lora.b.T)  # (N, r)
            dxd = dxa @ l.lora.a.T  # (N, in)
            dx += dxd if l.drop is None else dxd * l.drop
    return dx


def linears_backward_params(dy, x2, layers: list[Linear]) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """(dA, dB) of each layer's adapter (None without one), given its input x2 (N, in) and dy (N, sum of out).

    dA = xdᵀ dxa and dB = scale xaᵀ dy, with xa = xd A and dxa = scale dy Bᵀ
    (xd = x2, or x2 times the layer's dropout mask). Without dropout the
    adapters of a group share xd, so their A's are stacked: x2 is read twice
    for the whole group rather than twice per layer.
    """
    grads: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(layers)
    adapted = [(j, l, cols) for j, (l, cols) in enumerate(_column_slices(layers)) if l.lora is not None]
    if not adapted:
        return grads
    if len(adapted) == 1 or any(l.drop is not None for _, l, _ in adapted):
        for j, l, cols in adapted:
            dyj = dy[:, cols]  # (N, out_j), a view
            xd = x2 if l.drop is None else x2 * l.drop  # (N, in)
            xa = xd @ l.lora.a  # (N, r)
            dxa = l.lora.scale * (dyj @ l.lora.b.T)  # (N, r)
            grads[j] = (xd.T @ dxa, l.lora.scale * (xa.T @ dyj))  # (in, r), (r, out_j)
        return grads
    ranks = np.cumsum([0] + [l.lora.a.shape[1] for _, l, _ in adapted])
    xa = x2 @ np.concatenate([l.lora.a for _, l, _ in adapted], axis=1)  # (N, sum r)
    dxa = np.empty_like(xa)  # (N, sum r)
    for (j, l, cols), r0, r1 in zip(adapted, ranks[:-1], ranks[1:]):
        np.matmul(dy[:, cols], l.lora.b.T, out=dxa[:, r0:r1])
        dxa[:, r0:r1] *= l.lora.scale
    da = x2.T @ dxa  # (in, sum r)
    for (j, l, cols), r0, r1 in zip(adapted, ranks[:-1], ranks[1:]):
        grads[j] = (np.ascontiguousarray(da[:, r0:r1]), l.lora.scale * (xa[:, r0:r1].T @ dy[:, cols]))
    return grads


# ----------------------------------------------------------------------- RMSNorm


# Element-wise work on large (N, width) arrays goes a piece of rows at a
# time, about this many elements: each piece of each array stays in the
# core's L2 cache from one op to the next, which makes chains of element-wise
# ops (SwiGLU, the RMSNorm backward) about twice as fast as whole arrays.
PIECE = 2**16


def _pieces(n: int, width: int):
    step = max(1, PIECE // width)
    for r in range(0, n, step):
        yield slice(r, r + step)


def rmsnorm_rstd(x, eps: float):
    """1 / sqrt(mean(x²) + eps) over the last axis: (..., 1)."""
    return 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def rmsnorm_apply(x, rstd, weight):
    """x * rstd * w: the forward output, also how the backward recomputes it from x and rstd."""
    out = x * rstd
    out *= weight
    return out


def rmsnorm_grad(dout, x, rstd, weight):
    """dx for out = rmsnorm(x): with xhat = x r, dx = r (g - xhat mean(g xhat)), g = dout w.

    dout, x: (N, C), rstd: (N, 1), a piece of rows at a time.
    """
    dx = np.empty(dout.shape, dtype=dout.dtype)
    for rows in _pieces(len(dx), dx.shape[-1]):
        g = np.multiply(dout[rows], weight, out=dx[rows])  # (n, C)
        xhat = x[rows] * rstd[rows]  # (n, C)
        dot = np.mean(g * xhat, axis=-1, keepdims=True)  # (n, 1)
        xhat *= dot
        g -= xhat
        g *= rstd[rows]
    return dx


# -------------------------------------------------------------------------- RoPE


def rope_tables(positions: np.ndarray, inv_freq: np.ndarray, dtype):
    """cos and sin of the rotation angles, (T, D/2) each, computed in float64 then cast."""
    theta = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # (T, D/2)
    return np.cos(theta).astype(dtype), np.sin(theta).astype(dtype)


def rope_rows(cos, sin, traditional: bool, heads: int = 1, scale: float = 1.0, dims: int | None = None):
    """Tables for ``rotate``: (T, heads*D) each, from cos, sin (T, R/2); ``scale`` multiplies the result.

    Written out over whole rows of ``heads`` heads, so that the rotation is
    ``x * COS + swapped(x) * SIN``: element-wise ops over long contiguous rows
    rather than over D/2 features at a time. ``dims``: the head's width D
    when rope turns only its first R = 2 cos.shape[1] dims (partial rotary):
    the rest pass through (COS 1, SIN 0).
    """
    T, half = cos.shape
    if traditional:  # pairs (2i, 2i+1)
        c = np.repeat(cos, 2, axis=-1)  # (T, R)
        s = np.stack([-sin, sin], axis=-1).reshape(T, 2 * half)
    else:  # pairs (i, i + R/2)
        c = np.concatenate([cos, cos], axis=-1)
        s = np.concatenate([-sin, sin], axis=-1)
    if dims is not None and dims > 2 * half:  # the dims rope leaves alone
        c = np.concatenate([c, np.ones((T, dims - 2 * half), c.dtype)], axis=-1)  # (T, D)
        s = np.concatenate([s, np.zeros((T, dims - 2 * half), s.dtype)], axis=-1)
    return np.tile(c * scale, (1, heads)), np.tile(s * scale, (1, heads))


def rotate(x, COS, SIN, traditional: bool, D: int, out=None, rotary: int | None = None):
    """Rotate the feature pairs of x (..., T, heads*D) by the angles in ``rope_rows`` tables (T, heads*D).

    Non-traditional (Hugging Face / mlx default) pairs feature i of a head
    with i + R/2; traditional (the original RoFormer / Meta layout) pairs 2i
    with 2i+1, among the first R = ``rotary`` features of a head (None: all
    D; the others are only multiplied by COS). ``out`` (which must not
    overlap x) may be a view, such as columns of a larger array.
    """
    if rotary is not None and rotary < D:  # partial rotary: swap within the first R features of each head
        heads = x.reshape(*x.shape[:-1], x.shape[-1] // D, D)
        swapped = np.zeros(heads.shape, dtype=x.dtype)
        if traditional:
            swapped[..., 0:rotary:2], swapped[..., 1:rotary:2] = heads[..., 1:rotary:2], heads[..., 0:rotary:2]
        else:
            h = rotary // 2
            swapped[..., :h], swapped[..., h:rotary] = heads[..., h:rotary], heads[..., :h]
    else:
        pairs = x.reshape(*x.shape[:-1], x.shape[-1] // D, 2, D // 2) if not traditional else x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
        swapped = np.empty(pairs.shape, dtype=x.dtype)  # each pair's two features exchanged
        if traditional:
            swapped[..., 0], swapped[..., 1] = pairs[..., 1], pairs[..., 0]
        else:
            swapped[..., 0, :], swapped[..., 1, :] = pairs[..., 1, :], pairs[..., 0, :]
    swapped = swapped.reshape(x.shape)
    swapped *= SIN  # -x2 sin | x1 sin
    out = np.multiply(x, COS, out=out)  # x1 cos | x2 cos
    out += swapped
    return out


# ------------------------------------------------------------------------ SwiGLU


def sigmoid(x):
    """1 / (1 + exp(-x)), in one buffer (exp(-x) = inf for very negative x gives 0, as it should)."""
    s = np.negative(x)
    with np.errstate(over="ignore"):
        np.exp(s, out=s)
    s += 1.0
    return np.reciprocal(s, out=s)


def swiglu_apply(gate, up, sig, out=None):
    """silu(gate) * up = gate * sig * up, given sig = sigmoid(gate)."""
    out = np.multiply(gate, sig, out=out)
    out *= up
    return out


def swiglu_grad(dout, gate, up, sig, dgate, dup, out=None):
    """Write dgate and dup for out = silu(gate) * up (and ``out`` itself, if given), given sig = sigmoid(gate).

    silu'(g) = sigmoid(g) (1 + g (1 - sigmoid(g))). dgate and dup may be
    gate's and up's own memory, which they then overwrite.
    """
    silu = gate * sig
    if out is not None:
        np.multiply(silu, up, out=out)  # the forward output, on the way
    t = np.subtract(1.0, sig)
    t *= gate
    t += 1.0  # 1 + g (1 - sigmoid(g))
    np.multiply(dout, up, out=dgate)
    dgate *= sig
    dgate *= t
    np.multiply(dout, silu, out=dup)
    return dgate, dup


def swiglu_rows(gu) -> np.ndarray:
    """silu(gate) * up for gu = gate | up (N, 2F) -> (N, F), a piece of rows at a time."""
    N, F = gu.shape[0], gu.shape[1] // 2
    m = np.empty((N, F), dtype=gu.dtype)
    for rows in _pieces(N, F):
        g, u = gu[rows, :F], gu[rows, F:]
        swiglu_apply(g, u, sigmoid(g), out=m[rows])
    return m


def swiglu_rows_backward(dm, gu) -> tuple[np.ndarray, np.ndarray]:
    """-> (m, d gu) for m = ``swiglu_rows(gu)``: the output again (recomputed) and d(gate | up) (N, 2F).

    d gu is written over gu, which the backward needs no more: one (N, 2F)
    array fewer at the moment a step's memory peaks.
    """
    N, F = gu.shape[0], gu.shape[1] // 2
    m = np.empty((N, F), dtype=gu.dtype)
    for rows in _pieces(N, F):
        g, u = gu[rows, :F], gu[rows, F:]
        swiglu_grad(dm[rows], g, u, sigmoid(g), g, u, out=m[rows])
    return m, gu


# ------------------------------------------------------ target log-probabilities


def log_probs_fused(logits, targets, dlogp):
    """Log-probabilities of the targets of a chunk of rows and, in the same buffer, their logits' gradient.

    logits: (n, V), overwritten; targets, dlogp: (n,). Returns (log p(target)
    (n,), dlogits): with ``dlogp`` (d loss / d log p(target)) given, dlogits =
    -dlogp * (softmax(logits) - onehot(target)) in the logits' own memory;
    without it, None (evaluation). log p = logit[target] - logsumexp(logits),
    the negated ``mlx.nn.losses.cross_entropy``. With a 49k vocabulary these
    (n, V) arrays are the largest of the model, so the caller feeds a few rows
    at a time and this function makes no other array of that size.
    """
    rows = np.arange(len(targets))
    logits -= logits.max(axis=-1, keepdims=True)  # shifted
    target_logit = logits[rows, targets]  # (n,)
    np.exp(logits, out=logits)
    sumexp = logits.sum(axis=-1, keepdims=True)  # (n, 1)
    logp = target_logit - np.log(sumexp[:, 0])  # (n,) logit of the target - logsumexp
    if dlogp is None:
        return logp, None
    logits /= sumexp  # softmax
    w = (-dlogp)[:, None]  # (n, 1)
    logits *= w
    logits[rows, targets] -= w[:, 0]
    return logp, logits
