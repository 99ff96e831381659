"""Laguna: mlx-lm's model reads transformers 5's per-layer-type ``rope_parameters`` itself."""

from .base import Family

FAMILY = Family(name="laguna", model_types=("laguna",), reads_per_layer_type_rope=True)
