"""What the numpy model keeps for its backward pass: one account, read by the model and by the memory plan.

``NumpyLlama.saved_bytes_per_block`` and ``activation_plan`` decide with
these functions which blocks a training step checkpoints, and the backend's
memory model (``memory.py`` beside them) predicts a run's peak with the same
ones, from config.json alone: so the plan cannot drift from what the model does.
"""

from __future__ import annotations

import math


def block_bytes(hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int, rows: int, itemsize: int,
                sandwich: bool = False) -> tuple[int, int]:
    """(bytes one adapted block keeps for its backward, bytes it keeps when checkpointed), for ``rows`` = B * T.

    Kept a row: the block input x and the residual after attention x2 (C
    each), two norm scales, the attention's log-sum-exp per head (H); unless
    checkpointed, rotated q, k and v ((H + 2 KVH) D) and the gate and up
    projections (2F) too. A ``sandwich`` block (norms on each half's output)
    also keeps, checkpointed or not, the two outputs it normalised and their
    norm scales (2C + 2).
    """
    inputs = 2 * hidden + 2 + heads + (2 * hidden + 2 if sandwich else 0)  # per row
    rest = (heads + 2 * kv_heads) * head_dim + 2 * intermediate
    return rows * (inputs + rest) * itemsize, rows * inputs * itemsize


def checkpointed_blocks(n: int, keep: int, ckpt: int, budget: int | None) -> int:
    """How many of ``n`` adapted blocks to checkpoint: the fewest that bring what they keep within ``budget`` bytes (None: no limit)."""
    if budget is None or n * keep <= budget:
        return 0
    return min(n, math.ceil((n * keep - budget) / (keep - ckpt)))
