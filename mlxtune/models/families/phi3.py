"""Phi-3 (Phi-3.5, Phi-4-mini): mlx-lm's ``models/phi3.py`` runs it; mlxtune knows its transformers class (HF export).

mlx-lm's phi3 reads the LongRoPE settings from ``rope_scaling["type"]`` (the
key transformers 4 wrote), so a transformers 5 config's ``rope_parameters``
is written out with it (``model_config.normalize_config``). Its fused
``qkv_proj`` and ``gate_up_proj`` are one LoRA target each.
"""

from .base import Family

FAMILY = Family(name="phi3", model_types=("phi3",), hf_class="Phi3ForCausalLM", rope_scaling_type_key=True)
