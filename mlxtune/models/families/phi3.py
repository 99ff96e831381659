"""Phi-3 (Phi-3.5, Phi-4-mini): mlx-lm's ``models/phi3.py``, llama.cpp's ``Phi3MiniModel``.

mlx-lm's phi3 reads the LongRoPE settings from ``rope_scaling["type"]`` (the
key transformers 4 wrote), so a transformers 5 config's ``rope_parameters``
is written out with it (``model_config.normalize_config``). Its fused
``qkv_proj`` and ``gate_up_proj`` are one LoRA target each. head_dim is
always hidden_size / heads; rope turns the first ``partial_rotary_factor`` of
each head (Phi-4-mini: 0.75); no biases.

llama.cpp keeps both fused tensors (``attn_qkv``; ``ffn_up`` holds gate then
up, 2 x intermediate_size rows, and there is no ``ffn_gate``) and the q/k rows
in Hugging Face order (half-split rotation). Its converter writes
``rope.dimension_count`` (the rotated dims), ``rope.scaling.original_context_length``
and the sliding window (0: none; llama.cpp's graph ignores it), and for
LongRoPE the per-frequency ``rope_factors_long`` / ``rope_factors_short``
tensors and ``rope.scaling.attn_factor``. llama.cpp takes the long factors
when its context (n_ctx) exceeds the original context, else the short ones.
"""

from .base import LLAMA_GGUF_GLOBAL, Family

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
    qkv_bias=False,  # mlx-lm's phi3 has no biases
    head_dim_from_config=False,
    partial_rotary=True,
    fused_linears=(("self_attn.qkv_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                   ("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj"))),
    rope_scaling_type_key=True,
    gguf_arch="phi3",
    gguf_import=True,
    gguf_rope_types=("default", "longrope", "su"),  # transformers' Phi3Config takes no other scaling
    gguf_context_keys=True,
    gguf_global=LLAMA_GGUF_GLOBAL,
    gguf_block=GGUF_BLOCK,
)
