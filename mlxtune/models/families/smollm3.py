"""SmolLM3: mlx-lm's ``models/smollm3.py`` (its llama model with some layers unrotated), llama.cpp's ``SmolLM3Model``.

The llama layout, read as llama (head_dim, attention_bias and mlp_bias from
config.json), except that the layers config.json's ``no_rope_layers`` marks 0
(without it, every ``no_rope_layer_interval``-th layer, default 4) attend
without rotary embeddings. llama.cpp's ``smollm3`` graph does not read that
from the file: it leaves out rope on every 4th layer (``n_no_rope_layer_step``),
so GGUF export writes only models of that pattern and import restores it.
llama.cpp permutes the q/k rows as for llama.
"""

from .base import LLAMA_GGUF_BLOCK, LLAMA_GGUF_GLOBAL, LLAMA_LINEAR_KEYS, NUMPY_ROPE_TYPES, Family

FAMILY = Family(
    name="smollm3",
    model_types=("smollm3",),
    hf_class="SmolLM3ForCausalLM",
    linear_keys=LLAMA_LINEAR_KEYS,
    numpy=True,
    rope_types=NUMPY_ROPE_TYPES,
    nope_layers=True,
    gguf_arch="smollm3",
    gguf_import=True,
    gguf_permute_qk=True,
    gguf_rope_types=("default", "linear"),
    gguf_global=LLAMA_GGUF_GLOBAL,
    gguf_block=LLAMA_GGUF_BLOCK,
    gguf_nope_interval=4,
)
