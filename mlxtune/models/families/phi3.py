"""Phi-3: known to mlxtune only by its transformers class (HF export); mlx runs it through mlx-lm."""

from .base import Family

FAMILY = Family(name="phi3", model_types=("phi3",), hf_class="Phi3ForCausalLM")
