"""Causal grouped-query attention of the numpy model, forward and backward, a chunk of query positions at a time.

Three masks, one code path: causal (every layer), a sliding window (Gemma 3's
local layers: a position sees itself and the ``window - 1`` before it), and
packing (``data.batching.Batch``'s ``segments``: a row holds several records,
and a position sees only the earlier positions of its own record, a
block-diagonal causal mask). A chunk of query positions computes the scores
of the keys it can see only: those up to its last position, and not before
the window's start or, packed, not before the earliest start of the records
its first position belongs to in any row. So a packed row of short records
costs about what those records would cost alone.

Shapes as ``ops``: B batch, KVH key/value heads, G query heads per key/value
head, T query positions, S key positions, D head dim.

This module imports numpy only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# Query positions per chunk. A chunk of positions t0..t1-1 needs keys 0..t1-1
# only, so chunking skips most of the masked half of the causal score matrix,
# and the scores of one chunk, (B, KVH, G * chunk, S), stay small.
ATTENTION_CHUNK = 32


@lru_cache(maxsize=64)
def _causal_mask(n: int, G: int, dtype) -> np.ndarray:
    """Additive mask (n*G, n) for a diagonal block: row t*G+g (position t, head g) sees keys 0..t."""
    allowed = (np.arange(n * G) // G)[:, None] >= np.arange(n)[None, :]
    mask = np.where(allowed, 0.0, -np.inf).astype(dtype)
    mask.flags.writeable = False
    return mask


def segment_starts(segments: np.ndarray) -> np.ndarray:
    """(B, T) -> (B, T): the index of the first position of each position's segment (its record, or the padding)."""
    B, T = segments.shape
    new = np.ones((B, T), dtype=bool)
    new[:, 1:] = segments[:, 1:] != segments[:, :-1]  # a segment begins here
    return np.maximum.accumulate(np.where(new, np.arange(T), 0), axis=1)


def _chunk_scores(q, k, offset: int, t0: int, t1: int, G: int, window: int | None = None, segments=None, starts=None):
    """Masked scores of query positions t0..t1-1 -> (scores (B, KVH or 1..., (t1-t0)*G, s - first), first key).

    ``window``: each position sees only itself and the window - 1 before it;
    ``segments`` (B, T) with ``starts`` (``segment_starts``): only the
    positions of its own segment. The keys before ``first`` are not computed.
    """
    s = offset + t1  # keys this chunk can see
    first = 0 if window is None else max(0, offset + t0 - window + 1)
    if segments is not None:
        first = max(first, int(starts[:, t0].min()))  # no query of this chunk sees a key before its row's record start
    scores = q[:, :, t0 * G : t1 * G] @ k[:, :, first:s].swapaxes(-1, -2)  # (B, KVH, nG, s - first)
    if window is None and segments is None:
        scores[..., offset + t0 :] += _causal_mask(t1 - t0, G, scores.dtype)  # only the diagonal block has masked keys
        return scores, first
    pos = offset + t0 + np.arange((t1 - t0) * G) // G  # (nG,) each row's position
    dist = pos[:, None] - np.arange(first, s)[None, :]  # (nG, s - first)
    allowed = dist >= 0
    if window is not None:
        allowed &= dist < window
    if segments is not None:  # packed: the query's record only (offset is 0: packing has no cache)
        own = np.repeat(segments[:, t0:t1], G, axis=1)  # (B, nG) each row's segment
        allowed = (allowed[None] & (own[:, :, None] == segments[:, None, first:s]))[:, None]  # (B, 1, nG, s - first)
    scores += np.where(allowed, 0.0, -np.inf).astype(scores.dtype)
    return scores, first


def causal_attention(q, k, v, offset: int = 0, chunk: int | None = None, window: int | None = None, segments=None):
    """Causal grouped-query attention in the layout the model keeps: -> (o, lse).

    q: (B, KVH, T*G, D), already multiplied by the attention scale, the rows
    of each key/value head ordered (position, query head), at positions
    offset .. offset+T-1; k, v: (B, KVH, S, D) at positions 0 .. S-1,
    S = offset + T. The G query heads sharing a key/value head are rows of
    one matmul, so k and v are never repeated G times. Returns o (B, KVH,
    T*G, D) in the layout of q, and the log-sum-exp of each row's scores
    (B, KVH, T*G, 1), with which the backward recomputes the probabilities
    in two passes. ``window``: a position attends to the last ``window``
    positions only (itself included), as a sliding-window layer does.
    ``segments`` (B, T) int: a packed batch's records (``data.batching.Batch``);
    a position attends to its own record's only.
    """
    B, KVH, TG, D = q.shape
    T = k.shape[2] - offset
    G, chunk = TG // T, chunk or ATTENTION_CHUNK
    starts = None if segments is None else segment_starts(segments)
    o = np.empty(q.shape, dtype=q.dtype)
    lse = np.empty((B, KVH, TG, 1), dtype=q.dtype)
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        rows = slice(t0 * G, t1 * G)
        e, first = _chunk_scores(q, k, offset, t0, t1, G, window, segments, starts)  # (B, KVH, nG, s - first)
        top = e.max(axis=-1, keepdims=True)  # (B, KVH, nG, 1)
        e -= top
        np.exp(e, out=e)  # unnormalized probabilities
        total = e.sum(axis=-1, keepdims=True)  # (B, KVH, nG, 1)
        oc = np.matmul(e, v[:, :, first : offset + t1], out=o[:, :, rows])  # (B, KVH, nG, D)
        oc /= total  # normalizing the (nG, D) output rather than the (nG, s) probabilities
        np.log(total, out=total)
        np.add(top, total, out=lse[:, :, rows])
    return o, lse


def causal_attention_backward(do, q, k, v, lse, offset: int = 0, chunk: int | None = None, window: int | None = None, segments=None):
    """-> (dq, dk, dv, o) for ``causal_attention`` (dq w.r.t. the scaled q); probabilities recomputed chunk by chunk.

    P = exp(scores - lse). o, the forward output, comes along because it is
    recomputed anyway and the caller may need it (the output projection's
    LoRA gradient does). With dS = P (dP - rowsum(dP P)) and rowsum(dP P) =
    rowsum(dO O), nothing of size (T, S) outlives its chunk.
    """
    B, KVH, TG, D = q.shape
    T = k.shape[2] - offset
    G, chunk = TG // T, chunk or ATTENTION_CHUNK
    starts = None if segments is None else segment_starts(segments)
    dq = np.empty(q.shape, dtype=q.dtype)
    dk = np.zeros(k.shape, dtype=q.dtype)
    dv = np.zeros(v.shape, dtype=q.dtype)
    o = np.empty(q.shape, dtype=q.dtype)
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        rows = slice(t0 * G, t1 * G)
        p, first = _chunk_scores(q, k, offset, t0, t1, G, window, segments, starts)  # (B, KVH, nG, s - first)
        keys = slice(first, offset + t1)
        p -= lse[:, :, rows]
        np.exp(p, out=p)  # probabilities
        oc = np.matmul(p, v[:, :, keys], out=o[:, :, rows])  # (B, KVH, nG, D)
        doc = do[:, :, rows]  # (B, KVH, nG, D)
        dv[:, :, keys] += p.swapaxes(-1, -2) @ doc  # (B, KVH, s - first, D)
        dp = doc @ v[:, :, keys].swapaxes(-1, -2)  # (B, KVH, nG, s - first)
        dp -= np.sum(doc * oc, axis=-1, keepdims=True)  # dP - rowsum(dO O)
        dp *= p  # d scores; 0 where masked
        np.matmul(dp, k[:, :, keys], out=dq[:, :, rows])  # (B, KVH, nG, D)
        dk[:, :, keys] += dp.swapaxes(-1, -2) @ q[:, :, rows]  # (B, KVH, s - first, D)
    return dq, dk, dv, o
