"""Phi-3 (Phi-3.5, Phi-4-mini): mlx-lm's ``models/phi3.py``, transformers' ``Phi3ForCausalLM``.

The llama layout with q | k | v as one linear layer (``self_attn.qkv_proj``,
rows q, then k, then v) and gate | up as another (``mlp.gate_up_proj``, rows
gate, then up; SwiGLU: up * silu(gate)); each fused layer is one LoRA target,
as in mlx-lm and peft. head_dim is hidden_size / heads whatever config.json
says (mlx-lm's rule), and there are no biases. Rope turns the first
int(head_dim * partial_rotary_factor) dims of each head (Phi-4-mini: 0.75)
and passes the rest through. config.json's sliding_window (262144 in
Phi-3.5-mini and Phi-4-mini, beyond their context) is not read, as mlx-lm
does not read it.

Rope scaling: none, "linear", or LongRoPE ("longrope", transformers 4's "su"):
inverse frequencies 1 / (factor_i * theta^(2i/dims)) with factor = long_factor
when the sequence's total length (cache offset + new tokens) exceeds
original_max_position_embeddings (config.json's top-level one first, as
transformers reads it) and short_factor otherwise, and cos and sin scaled by
the attention factor (rope_scaling's attention_factor, else sqrt(1 +
ln(f) / ln(original)) with f = rope_scaling's factor or max_position_embeddings
/ original, 1 when f <= 1). That is transformers' rule
(``_compute_longrope_parameters`` and ``dynamic_rope_update``; it reads no
short_mscale or long_mscale), which both backends of mlxtune compute: the
numpy model (``models.layout.LongRoPE``) and the mlx backend, which replaces
mlx-lm's ``SuScaledRoPE`` when it loads a model (``backends/mlx/longrope.py``).
mlx-lm 0.32.2 run by itself on such a model (``mlx_lm.generate`` on a fused
export) still applies long_factor below the original context too, and scales
by its own default factor whatever attention_factor says.

transformers 5's Phi3Config accepts only default and longrope rope types;
mlx-lm's phi3 reads a "linear" rope_scaling only beside a long_factor. mlx-lm
reads the LongRoPE settings from ``rope_scaling["type"]`` (the key transformers
4 wrote), so a transformers 5 config's ``rope_parameters`` is written out with
it (``model_config.normalize_config``).

GGUF (llama.cpp's ``Phi3MiniModel``): both fused tensors are kept
(``attn_qkv``; ``ffn_up`` holds gate then up, 2 x intermediate_size rows, and
there is no ``ffn_gate``), the q/k rows in Hugging Face order (half-split
rotation). The converter writes ``rope.dimension_count`` (the rotated dims),
``rope.scaling.original_context_length`` and the sliding window (0: none;
llama.cpp's graph ignores it), and for LongRoPE the ``rope_factors_long`` /
``rope_factors_short`` tensors and ``rope.scaling.attn_factor``. llama.cpp
takes the long factors when its context (n_ctx) exceeds the original context,
not by the sequence's length: it agrees with transformers on a sequence on the
same side of the original context as n_ctx.
"""

from .base import FUSED_LINEAR_KEYS, LLAMA_GGUF_GLOBAL, Family

GGUF_BLOCK = (
    ("attn_norm", "input_layernorm"),
    ("attn_qkv", "self_attn.qkv_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_up", "mlp.gate_up_proj"),
    ("ffn_down", "mlp.down_proj"),
)

FAMILY = Family(
    name="phi3",
    model_types=("phi3",),
    hf_class="Phi3ForCausalLM",
    linear_keys=FUSED_LINEAR_KEYS,
    numpy=True,
    qkv_bias=False,  # mlx-lm's Phi-3 has no biases
    head_dim_from_config=False,
    rope_types=("default", "linear", "longrope", "su"),
    fused_projections=True,
    partial_rotary=True,
    rope_scaling_type_key=True,
    gguf_arch="phi3",
    gguf_import=True,
    gguf_rope_types=("default", "longrope", "su"),  # transformers' Phi3Config takes no other scaling
    gguf_context_keys=True,
    gguf_global=LLAMA_GGUF_GLOBAL,
    gguf_block=GGUF_BLOCK,
)
