"""The numpy model's weights: checked against the tensors its config calls for, and stacked by the input they read.

Stacking q | k | v and gate | up of a block into one array each lets the
layers that read the same input run as one sgemm (``ops.stacked_weight``)
without copying their weights first.
"""

from __future__ import annotations

import numpy as np

from ...errors import ModelFormatError
from ...models.layout import ModelConfig, expected_shapes

# A block's linear layers that read one input, stacked into one array each.
QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
GATE_UP = ("mlp.gate_proj", "mlp.up_proj")
# The same of a family whose checkpoint holds them fused (Phi-3): one layer each, its rows q | k | v and gate | up.
FUSED_QKV, FUSED_GATE_UP = ("self_attn.qkv_proj",), ("mlp.gate_up_proj",)


def block_groups(fused: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the q | k | v group, the gate | up group) of a block: three and two layers, or one fused layer each."""
    return (FUSED_QKV, FUSED_GATE_UP) if fused else (QKV, GATE_UP)
# Tensors a checkpoint may carry that the model does not use (mlx-lm's sanitize drops them too).
IGNORED_SUFFIXES = ("self_attn.rotary_emb.inv_freq",)


def check_weights(cfg: ModelConfig, weights: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The tensors ``cfg`` calls for (``expected_shapes``), each checked to be in ``weights`` with its shape, and none extra."""
    expected = expected_shapes(cfg)
    missing = [k for k in expected if k not in weights]
    if missing:
        raise ModelFormatError(f"the model weights lack {len(missing)} tensor(s) the config calls for, e.g. {missing[0]} of shape {expected[missing[0]]}")
    ignored = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    extra = [k for k in weights if k not in expected and k not in ignored and not k.endswith(IGNORED_SUFFIXES)]
    if extra:
        raise ModelFormatError(f"the model weights have {len(extra)} tensor(s) a {cfg.model_type} model with this config does not use, e.g. {extra[0]}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ModelFormatError(f"tensor {name} has shape {tuple(weights[name].shape)}, but the config calls for {shape}")
    return expected


def stacked_weights(weights: dict[str, np.ndarray], names: list[str], n_blocks: int, dtype, consume: bool, fused: bool = False) -> dict[str, np.ndarray]:
    """The tensors ``names`` of ``weights`` in ``dtype``; q | k | v and gate | up of each block stored as one array each
    (``fused``: they are one tensor each already).

    Each layer's weight is a row block (a contiguous view) of its group's
    array, which ``ops.stacked_weight`` then uses as is: the layers that read
    the same input run as one sgemm without copying their weights first.
    With ``consume``, each tensor leaves ``weights`` as soon as it is stored.
    """
    take = weights.pop if consume else weights.__getitem__
    out: dict[str, np.ndarray] = {}
    for i in range(n_blocks):
        for group in block_groups(fused):
            group_names = [f"model.layers.{i}.{k}.weight" for k in group]
            parts = [take(n) for n in group_names]
            rows = [p.shape[0] for p in parts]
            stack = np.concatenate(parts, axis=0, dtype=dtype)  # (sum of out, in)
            del parts
            for n, start, r in zip(group_names, np.cumsum([0] + rows), rows):
                out[n] = stack[start : start + r]
    for n in names:
        if n not in out:
            out[n] = np.ascontiguousarray(take(n), dtype=dtype)
    return out
