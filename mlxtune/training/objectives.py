"""Training objectives: what the loss is, apart from how a backend computes it.

A backend runs the model and computes, for the target tokens an objective asks
for, the log-probability of each target, ``logp[t] = log softmax(logits[t])[target[t]]``;
it also takes their gradient back through the model. An objective turns those
per-token log-probabilities into the loss, and says how the loss changes with
each of them (``dL / dlogp[t]``). Every loss built from target log-probabilities
fits: token cross-entropy (today's, the only one), and the sequence-level
preference losses, whose gradient with respect to the logits of row t is
``dL/dlogp[t] * (onehot(target) - softmax(logits[t]))``, which the backends form.

What each backend asks of an objective:

* mlx: ``mlx_loss(logp, *arrays) -> (loss, n)`` in mx ops, traced inside the
  compiled step; mlx differentiates it.
* numpy: ``token_grad(dtype, *arrays)``, the gradient when it does not depend
  on the log-probabilities (the loss is a weighted sum of them, as
  cross-entropy is): the head then forms each chunk's logit gradient as soon as
  it has its logits, in one pass. When it returns None the head makes two
  passes: log-probabilities first, then ``numpy_grad(logp, *arrays)`` and the
  logits again, chunk by chunk, for the backward. ``numpy_loss`` gives the value.

``arrays(batch)`` are the per-batch arrays the objective reads besides the
inputs and targets (cross-entropy: the mask); the backends move them to their
device and hand them back. ``scored(*arrays)`` (B, T) says which targets need a
log-probability: the numpy head computes logits for those rows only.

How DPO would plug in (not implemented): the batcher puts each pair as rows
2i (chosen) and 2i+1 (rejected), with a mask on the answer tokens. The
reference is the model without the adapter: a trainer opened without
``init_adapter`` is exactly that before its first step (lora_b starts at
zero), so its ``token_log_probs(batch)`` (B, T), summed over each answer, gives
the reference's per-sequence log-probabilities, computed once per batch before
training (as TRL's ``precompute_ref_log_probs``) and carried as an extra array.
``arrays`` returns (mask, ref); ``scored`` the mask; ``mlx_loss`` sums
``logp * mask`` per row and takes ``-log sigmoid(beta * ((c - c_ref) - (r -
r_ref)))`` per pair; ``token_grad`` returns None and ``numpy_grad`` returns, for
each answer token, the pair's ``-beta * sigmoid(-margin) / pairs`` with the sign
of its row (chosen +, rejected -); ``numpy_loss`` the mean over pairs, n the
number of pairs. A new objective is a class here plus its name in
``OBJECTIVES`` (and a batcher for its data); the backends, validation
(``evaluate`` returns ``loss * n``) and the memory plan (the head's chunks keep
their size; a two-pass objective recomputes them) are unchanged.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError


class TokenLogProbs:
    """log p(target) for the scored rows, in the chunks the numpy head computed them.

    ``rows`` (n,) are flat indices into the (B * T) targets, ``chunks`` the
    log-probabilities of consecutive runs of those rows, in order. Sums run
    chunk by chunk in that order, so a loss read from them is the number the
    head's own accumulation would give.
    """

    def __init__(self, rows: np.ndarray, dtype):
        self.rows, self.dtype = rows, np.dtype(dtype)
        self.chunks: list[np.ndarray] = []

    def values(self) -> np.ndarray:
        """(n,) all log-probabilities, in the order of ``rows``."""
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, self.dtype)

    def dense(self, shape: tuple[int, int]) -> np.ndarray:
        """(B, T) log-probabilities, 0 where no row was scored."""
        out = np.zeros(shape[0] * shape[1], self.dtype)
        out[self.rows] = self.values()
        return out.reshape(shape)

    def weighted_sum(self, weights: np.ndarray) -> float:
        """sum(weights * logp), ``weights`` (n,) in the order of ``rows``; summed per chunk, then in float64."""
        total, start = 0.0, 0
        for chunk in self.chunks:
            total += float(np.sum(chunk * weights[start : start + len(chunk)]))
            start += len(chunk)
        return total


class Objective(Protocol):
    """A loss over per-token target log-probabilities (see the module docstring)."""

    name: str

    def arrays(self, batch) -> tuple[np.ndarray, ...]:
        """The batch's arrays the loss reads besides inputs and targets."""

    def scored(self, *arrays: np.ndarray) -> np.ndarray:
        """(B, T) nonzero where a target's log-probability is needed."""

    def mlx_loss(self, logp: Any, *arrays: Any) -> tuple[Any, Any]:
        """(loss, n) from (B, T) mx log-probabilities, differentiable by mlx."""

    def numpy_loss(self, logp: TokenLogProbs, *arrays: np.ndarray) -> tuple[float, float]:
        """(loss, n) from the numpy head's log-probabilities."""

    def token_grad(self, dtype, *arrays: np.ndarray) -> np.ndarray | None:
        """(n,) dL/dlogp over the scored rows when it does not depend on logp, else None."""

    def numpy_grad(self, logp: TokenLogProbs, *arrays: np.ndarray) -> np.ndarray:
        """(n,) dL/dlogp over the scored rows, from the log-probabilities."""


class CrossEntropy:
    """Mean cross-entropy over the trained target tokens: -sum(logp * mask) / max(sum(mask), 1).

    Returns (loss, n) with n = sum(mask), the token count that weights
    accumulation, distributed sums and validation means.
    """

    name = "cross-entropy"

    def arrays(self, batch) -> tuple[np.ndarray, ...]:
        return (np.asarray(batch.mask, dtype=np.float32),)

    def scored(self, mask: np.ndarray) -> np.ndarray:
        return np.asarray(mask)

    def mlx_loss(self, logp, mask):
        import mlx.core as mx

        ce = -logp * mask  # (B, T)
        n = mask.sum()
        return ce.sum() / mx.maximum(n, 1), n

    def numpy_loss(self, logp: TokenLogProbs, mask: np.ndarray) -> tuple[float, float]:
        weights = np.asarray(mask).reshape(-1).astype(logp.dtype)  # (N,)
        n = float(weights.sum())
        ce = 0.0 - logp.weighted_sum(weights[logp.rows])  # 0.0 - : no -0.0 when nothing is trained
        return ce / max(n, 1.0), n

    def token_grad(self, dtype, mask: np.ndarray) -> np.ndarray:
        weights = np.asarray(mask).reshape(-1).astype(dtype)  # (N,)
        rows = np.flatnonzero(weights)
        return -(1.0 / max(float(weights.sum()), 1.0) * weights[rows])  # (n,)

    def numpy_grad(self, logp: TokenLogProbs, mask: np.ndarray) -> np.ndarray:
        return self.token_grad(logp.dtype, mask)


CROSS_ENTROPY = CrossEntropy()
OBJECTIVES: dict[str, Objective] = {CROSS_ENTROPY.name: CROSS_ENTROPY}


def get(name: str | None) -> Objective:
    """The objective called ``name`` (None: cross-entropy)."""
    if name is None:
        return CROSS_ENTROPY
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, not {name!r}") from None
