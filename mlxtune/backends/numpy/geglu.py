"""GeGLU, the gated MLP of Gemma: gelu(gate) * up with gelu's tanh approximation, forward and backward.

The same contract as ``ops.swiglu_rows`` / ``swiglu_rows_backward``, so a
block calls one pair or the other (``ACTIVATIONS``). gelu(g) = g Φ(g) with
Φ(g) ≈ (1 + tanh(u)) / 2, u = sqrt(2/π) (g + 0.044715 g³): mlx's
``nn.gelu_approx`` and transformers' ``gelu_pytorch_tanh``.
"""

from __future__ import annotations

import numpy as np

from .ops import swiglu_rows, swiglu_rows_backward

_C = np.sqrt(2.0 / np.pi)
_K = 0.044715
# Elements of a piece of rows: as ``ops.PIECE``, the pieces of one chain stay in the core's cache from op to op;
# a quarter of its size, since GeGLU's backward holds five pieces at once (SwiGLU's three).
PIECE = 2**14


def _pieces(n: int, width: int, piece: int = PIECE):
    """Row slices of about ``piece`` elements."""
    step = max(1, piece // width)
    for r in range(0, n, step):
        yield slice(r, r + step)


def gelu_tanh(g):
    """gelu(g) with the tanh approximation, and tanh(u) for its derivative: -> (gelu (.., F), t (.., F))."""
    t = g * g
    t *= _K
    t += 1.0
    t *= g
    t *= _C  # u = c (g + k g³)
    np.tanh(t, out=t)
    out = t + 1.0
    out *= g
    out *= 0.5
    return out, t


def geglu_rows(gu) -> np.ndarray:
    """gelu(gate) * up for gu = gate | up (N, 2F) -> (N, F), a piece of rows at a time."""
    N, F = gu.shape[0], gu.shape[1] // 2
    m = np.empty((N, F), dtype=gu.dtype)
    for rows in _pieces(N, F):
        gelu, _ = gelu_tanh(gu[rows, :F])
        np.multiply(gelu, gu[rows, F:], out=m[rows])
    return m


def geglu_rows_backward(dm, gu) -> tuple[np.ndarray, np.ndarray]:
    """-> (m, d gu) for m = ``geglu_rows(gu)``: the output again and d(gate | up) (N, 2F), written over gu.

    gelu'(g) = (1 + t) / 2 + g (1 - t²) c (1 + 3k g²) / 2, t = tanh(u).
    """
    N, F = gu.shape[0], gu.shape[1] // 2
    m = np.empty((N, F), dtype=gu.dtype)
    for rows in _pieces(N, F):
        g, u = gu[rows, :F], gu[rows, F:]
        gelu, t = gelu_tanh(g)
        np.multiply(gelu, u, out=m[rows])
        d = g * g
        d *= 3 * _K
        d += 1.0
        d *= g
        d *= _C
        t2 = t * t
        np.subtract(1.0, t2, out=t2)
        d *= t2  # g (1 - t²) c (1 + 3k g²)
        d += t
        d += 1.0
        d *= 0.5  # gelu'(g)
        dmr = dm[rows]
        d *= dmr
        d *= u
        g[...] = d  # d gate = dm up gelu'(g), over gate
        np.multiply(dmr, gelu, out=u)  # d up = dm gelu(g), over up
    return m, gu


# the gated MLP's activation by name (``ModelConfig.activation``): (forward, backward)
ACTIVATIONS = {"silu": (swiglu_rows, swiglu_rows_backward), "gelu_tanh": (geglu_rows, geglu_rows_backward)}
