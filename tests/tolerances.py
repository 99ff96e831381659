"""Backend parity tolerances, in one place.

The rule, for every comparison of a numpy result ``a`` against an mlx result
``b`` (both float32)::

    scaled_diff(a, b) = max|a - b| / max(1, max|b|)

an absolute difference for values of order one or less, a relative one for
larger values (logits reach ~30). Gradients are compared relative to their
own scale, since a LoRA gradient entry is typically 1e-4..1e-2::

    grad_diff(a, b) = max|a - b| / max|b|        (max|a - b| if b is all zero)

Why these sizes: float32 carries ~7 significant digits, and the two backends
sum in different orders (BLAS blocking, fused kernels) and compute RoPE angles
in different ways (a float32 angle of 256 radians has an ulp of 3e-5). The
numbers measured on this code are in the comments; each bound leaves about
an order of magnitude of headroom over them, so a real bug (a wrong sign, a
missing scale, a transposed head) fails by orders of magnitude, while a
different summation order does not.
"""

from __future__ import annotations

import numpy as np

# A single op (RMSNorm, attention, SwiGLU, cross-entropy) on O(1) inputs.
# Measured: 0 .. 2e-7.
OP = 1e-6
# RoPE rotates by float32 angles: at position p the angle itself is rounded by
# ~p * 6e-8, so the difference grows with the positions tested (<= 64 here).
# Measured: 4e-7 .. 2e-6.
ROPE = 1e-5
# Tiny model (2 blocks, width 64), float32. Measured: logits 2e-7 .. 5e-7,
# loss 0 .. 2e-7, gradients (worst tensor) 7e-7 .. 1.3e-6.
TINY_LOGITS = 1e-4
LOSS = 1e-5
GRADS = 1e-4
# SmolLM2-135M, 30 blocks, LoRA everywhere, one batch of 4 chat records.
# Its residual stream carries activations of ~25000, so float32 rounding alone
# moves logits by ~4e-3 (numpy float32 against numpy float64 differs by 1e-4
# scaled, mlx by 1.8e-4). Against mlx with a precisely summed cross-entropy:
# loss 8e-8, gradients median 5e-6, worst 3.2e-5.
SMOL_LOGITS = 1e-3
SMOL_LOSS = 1e-5
SMOL_GRADS = 3e-4
# mlxtune.backends.mlx.trainer.loss_fn on CPU: mlx sums each 49152-wide softmax row in
# one running float32 sum, ~1e-4 short (numpy's pairwise sum agrees with
# float64 to 1e-7), which biases the loss and shifts every gradient. Measured:
# loss 5.9e-5, gradients median 1.5e-3, worst 1.4e-2. Harmless for training;
# the two-level-sum comparison above is the one that checks the model.
MLX_CE_LOSS = 5e-4
MLX_CE_GRADS = 5e-2
# Ten AdamW steps through each backend's trainer from the golden adapter values
# (tests/test_golden.py), per-step loss, scaled. Measured: mlx 1.3e-5, numpy 0.
TEN_STEPS = 1e-4
# The same on SmolLM2 (tests/test_parity.py), through mlxtune's mlx loss_fn,
# whose CE is ~6e-5 off (above); differences compound over the steps.
SMOL_TEN_STEPS = 2e-3
# Finite-difference gradient checks of the numpy model in float64.
# Measured: ops 1e-11 .. 3e-10, whole model 2e-9 .. 1.5e-8.
GRAD_CHECK = 1e-6

def scaled_diff(a, b) -> float:
    """max|a - b| / max(1, max|b|)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def grad_diff(a, b) -> float:
    """max|a - b| / max|b| (plain max|a - b| when b is all zero)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = float(np.max(np.abs(b)))
    diff = float(np.max(np.abs(a - b)))
    return diff / scale if scale > 0 else diff
