"""Llama (and SmolLM, SmolLM2, Llama 2 and 3): mlx-lm's ``models/llama.py``, llama.cpp's ``LlamaModel``."""

from .base import LLAMA_GGUF_BLOCK, LLAMA_GGUF_GLOBAL, LLAMA_LINEAR_KEYS, NUMPY_ROPE_TYPES, Family

FAMILY = Family(
    name="llama",
    model_types=("llama",),
    hf_class="LlamaForCausalLM",
    linear_keys=LLAMA_LINEAR_KEYS,
    numpy=True,
    rope_types=NUMPY_ROPE_TYPES,
    gguf_arch="llama",
    gguf_import=True,
    # llama.cpp rotates adjacent pairs of a head's rows, Hugging Face its two halves.
    gguf_permute_qk=True,
    gguf_rope_types=("default", "linear", "llama3"),
    gguf_attention_bias_key=True,
    gguf_global=LLAMA_GGUF_GLOBAL,
    gguf_block=LLAMA_GGUF_BLOCK,
)
