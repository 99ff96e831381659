"""Gemma (the first): known to mlxtune only by its transformers class (HF export); mlx runs it through mlx-lm."""

from .base import Family

FAMILY = Family(name="gemma", model_types=("gemma",), hf_class="GemmaForCausalLM")
