"""LongRoPE on the mlx backend as transformers computes it: the factors chosen by the sequence's length.

mlx-lm 0.32.2's ``SuScaledRoPE`` (its phi3 attention's ``rope``) always
applies ``long_factor``, and scales by its own default attention factor;
transformers (the reference, and the numpy backend: ``models.layout.LongRoPE``)
applies ``short_factor`` while the sequence's total length (cache offset + new
tokens) is within ``original_max_position_embeddings`` and ``long_factor``
beyond it, and scales cos and sin by config.json's attention_factor when it
gives one. ``use_transformers_longrope`` swaps each such ``rope`` of a loaded
model for ``LengthLongRoPE``, which decides per call; the mlx backend calls it
in one place, where it loads a model (``trainer.load_model``), so training,
evaluation, generation and fusing through mlxtune all compute it. (mlx-lm's
PR #660, "Fix SuScaledRoPE", made the same change upstream, after 0.32.2.)
In a packed batch (``packing.py``) each row chooses by its longest record, the
length that record alone would have (``LengthLongRoPE.packed``).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ...models import families
from ...models.layout import ModelConfig


class LengthLongRoPE(nn.Module):
    """Rope on the first ``dims`` features: x[..., :dims] scaled by the attention factor, then rotated with the
    short or the long factors' frequencies by offset + length (the rest passes through)."""

    def __init__(self, dims: int, base: float, short_factor, long_factor, original_max: int, attention_factor: float):
        super().__init__()
        exponents = mx.arange(0, dims, 2, dtype=mx.float32) / dims
        # mx.fast.rope's freqs are wavelengths / 2π: factor_i * base^(2i/dims). Underscored: not parameters.
        self._short = mx.array(short_factor, dtype=mx.float32) * base**exponents
        self._long = mx.array(long_factor, dtype=mx.float32) * base**exponents
        self._dims, self._original, self._scale = dims, original_max, attention_factor

    def __call__(self, x: mx.array, offset=0) -> mx.array:
        length = offset + x.shape[-2]  # the sequence's positions in all: cached and new (an array in batched decoding)
        if isinstance(length, mx.array):
            freqs = mx.where(mx.max(length) > self._original, self._long, self._short)
        else:
            freqs = self._long if length > self._original else self._short
        return self._rotate(x, offset, freqs)

    def packed(self, x: mx.array, positions: mx.array) -> mx.array:
        """The heads ``x`` (B, H, T, D) of a packed batch rotated at ``positions`` (B, T), each row with the factors
        of its longest record (positions restart per record: max position + 1), as that record alone would take."""
        from .packing import per_token

        long_rows = positions.max(axis=1) + 1 > self._original  # (B,)
        short = per_token(lambda h, offset: self._rotate(h, offset, self._short), x, positions)
        long = per_token(lambda h, offset: self._rotate(h, offset, self._long), x, positions)
        return mx.where(long_rows[:, None, None, None], long, short)

    def _rotate(self, x: mx.array, offset, freqs: mx.array) -> mx.array:
        return mx.fast.rope(x.at[..., : self._dims].multiply(self._scale), self._dims, traditional=False, base=None, scale=1.0, offset=offset, freqs=freqs)


def use_transformers_longrope(model: nn.Module, config: dict) -> int:
    """Replace the LongRoPE ``rope`` of each attention of ``model`` (mlx-lm's, loaded from ``config``) by a
    ``LengthLongRoPE``; returns how many were replaced (0 for a model without LongRoPE or a family mlxtune does
    not compute it for: ``Family.rope_types``)."""
    family = families.get(config.get("model_type"))
    scaling = config.get("rope_scaling") or {}
    if family is None or "longrope" not in family.rope_types or (scaling.get("type") or scaling.get("rope_type")) not in ("longrope", "su"):
        return 0
    cfg = ModelConfig.from_dict(config)  # the numpy model's reading: rotated dims, factors, original context, attention factor
    lr = cfg.longrope
    count = 0
    for layer in getattr(model, "layers", []):
        attention = getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "rope"):
            attention.rope = LengthLongRoPE(cfg.rope_dims(), cfg.rope_theta, lr.short_factor, lr.long_factor, lr.original_max, lr.attention_factor)
            count += 1
    return count
