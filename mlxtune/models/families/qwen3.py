"""Qwen3: mlx-lm's ``models/qwen3.py``, llama.cpp's ``Qwen3Model``.

The llama layout, with what Qwen3 adds and what mlx-lm's qwen3 model fixes:
q and k are RMS-normalised per head (``self_attn.q_norm`` and ``k_norm``, one
weight of head_dim each, with rms_norm_eps) before rope; head_dim is
config.json's (Qwen3-0.6B: 128, not hidden_size / heads = 64); no biases
anywhere. llama.cpp keeps the q/k rows in Hugging Face order (``Qwen2Model``'s
rule) and names the norms ``attn_q_norm`` / ``attn_k_norm``. The norms'
weights are not LoRA targets; gradients flow through them.
"""

from .base import LLAMA_GGUF_GLOBAL, LLAMA_LINEAR_KEYS, NUMPY_ROPE_TYPES, QK_NORM_GGUF_BLOCK, Family

FAMILY = Family(
    name="qwen3",
    model_types=("qwen3",),
    hf_class="Qwen3ForCausalLM",
    linear_keys=LLAMA_LINEAR_KEYS,
    numpy=True,
    qkv_bias=False,  # mlx-lm's Qwen3 attention has no biases, whatever attention_bias says
    rope_types=NUMPY_ROPE_TYPES,
    qk_norm=True,
    gguf_arch="qwen3",
    gguf_import=True,
    gguf_rope_types=("default", "linear"),
    gguf_global=LLAMA_GGUF_GLOBAL,
    gguf_block=QK_NORM_GGUF_BLOCK,
)
