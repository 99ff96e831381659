"""Mistral: the llama model in mlx-lm (``models/llama.py`` serves it) and in llama.cpp (exported as ``llama``)."""

from .base import LLAMA_GGUF_BLOCK, LLAMA_GGUF_GLOBAL, LLAMA_LINEAR_KEYS, NUMPY_ROPE_TYPES, Family

FAMILY = Family(
    name="mistral",
    model_types=("mistral",),
    hf_class="MistralForCausalLM",
    linear_keys=LLAMA_LINEAR_KEYS,
    numpy=True,
    rope_types=NUMPY_ROPE_TYPES,
    gguf_arch="llama",  # a GGUF llama file is read back as llama (gguf_import is llama's)
    gguf_permute_qk=True,
    gguf_rope_types=("default", "linear", "llama3"),
    gguf_global=LLAMA_GGUF_GLOBAL,
    gguf_block=LLAMA_GGUF_BLOCK,
)
