"""Qwen3: known to mlxtune only by its transformers class (HF export); mlx runs it through mlx-lm."""

from .base import Family

FAMILY = Family(name="qwen3", model_types=("qwen3",), hf_class="Qwen3ForCausalLM")
