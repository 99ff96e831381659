"""Qwen2 (and Qwen2.5): mlx-lm's ``models/qwen2.py``, llama.cpp's ``Qwen2Model``.

The llama layout, with what mlx-lm's qwen2 model does differently: biases on
q, k and v always (never on o_proj or the MLP), head_dim always hidden_size //
heads, and a rotary base of 1e6 when config.json has none. llama.cpp keeps
its q/k rows in Hugging Face order.
"""

from .base import LLAMA_GGUF_BLOCK, LLAMA_GGUF_GLOBAL, LLAMA_LINEAR_KEYS, NUMPY_ROPE_TYPES, Family

FAMILY = Family(
    name="qwen2",
    model_types=("qwen2",),
    hf_class="Qwen2ForCausalLM",
    linear_keys=LLAMA_LINEAR_KEYS,
    numpy=True,
    qkv_bias=True,
    head_dim_from_config=False,
    default_rope_theta=1000000.0,
    rope_types=NUMPY_ROPE_TYPES,
    gguf_arch="qwen2",
    gguf_import=True,
    gguf_rope_types=("default", "linear"),
    gguf_global=LLAMA_GGUF_GLOBAL,
    gguf_block=LLAMA_GGUF_BLOCK,
)
