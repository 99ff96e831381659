"""Gemma 3: mlx-lm's ``models/gemma3_text.py`` (and ``gemma3.py``, its multimodal checkpoints' text part), llama.cpp's ``Gemma3Model``.

The llama tensor layout, with what Gemma 3 does differently: every RMSNorm
multiplies by 1 + w (the checkpoints store w - 1); the embeddings are scaled
by sqrt(hidden_size); each half of a block is normalised before and after
(post_attention_layernorm normalises attention's output, pre_ and
post_feedforward_layernorm wrap the MLP); the MLP is GeGLU (gelu, tanh
approximation); q and k are RMS-normalised per head; attention scores are
scaled by query_pre_attn_scalar ** -0.5; all but every
``sliding_window_pattern``-th layer attend to the last ``sliding_window``
positions only and rotate with their own base (``rope_local_base_freq``);
the head is tied to the embeddings. mlx-lm places the sliding-window layers by
a period, not by transformers 5's ``layer_types`` list (``normalize_config``).

The multimodal ``gemma3`` checkpoints keep the text model's config in
``text_config``; their weights lie under ``language_model.``.

llama.cpp writes the norms as stored + 1 (its graph multiplies by w) and
keeps the q/k rows in Hugging Face order. Its converter writes the sliding
window but neither its pattern nor the local rope base: llama.cpp then takes
every 6th layer as global and 10000 (``gguf_swa_pattern``,
``gguf_swa_base``), and reads ``attention.sliding_window_pattern`` and
``rope.freq_base_swa`` when a file has them. It computes the attention scale
from head_dim whatever query_pre_attn_scalar was
(``Family.gguf_query_pre_attn_scalar``).
"""

from .base import LLAMA_GGUF_GLOBAL, LLAMA_LINEAR_KEYS, Family

GGUF_BLOCK = (
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("post_attention_norm", "post_attention_layernorm"),
    ("ffn_norm", "pre_feedforward_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("post_ffw_norm", "post_feedforward_layernorm"),
)

FAMILY = Family(
    name="gemma3",
    model_types=("gemma3_text", "gemma3"),
    hf_class="Gemma3ForCausalLM",
    linear_keys=LLAMA_LINEAR_KEYS,
    numpy=True,
    qkv_bias=False,  # mlx-lm's Gemma 3 attention and MLP have no biases
    default_rope_theta=1000000.0,
    rope_types=("default", "linear"),
    qk_norm=True,
    norm_offset=1.0,
    embed_scale=True,
    sandwich_norms=True,
    activation="gelu_tanh",
    query_scale_field="query_pre_attn_scalar",
    sliding_window=True,
    text_config=True,
    text_prefix="language_model.",
    other_towers=("vision_tower.", "multi_modal_projector."),
    gguf_arch="gemma3",
    gguf_import=True,
    gguf_rope_types=("default", "linear"),
    gguf_global=LLAMA_GGUF_GLOBAL,
    gguf_block=GGUF_BLOCK,
    gguf_swa_pattern=6,
    gguf_swa_base=10000.0,
    local_rope_base_field="rope_local_base_freq",
    layer_pattern_field="sliding_window_pattern",
)
