"""Gemma 4: mlx-lm's model reads transformers 5's per-layer-type ``rope_parameters`` itself."""

from .base import Family

FAMILY = Family(name="gemma4", model_types=("gemma4", "gemma4_text"), reads_per_layer_type_rope=True)
