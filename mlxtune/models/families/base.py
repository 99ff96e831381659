"""What mlxtune knows of one model family, as one typed record (``Family``).

A family is the set of Hugging Face ``model_type`` values that mlx-lm computes
with one model file and that share one tensor layout. Each family file in this
folder builds one ``Family``; the registry (``families/__init__.py``) finds it
by name. Every module that depends on the architecture (the numpy backend, the
memory plan, GGUF import and export, HF export, config normalisation) reads
these records instead of keeping its own table, so adding a family is one new
file and one registry line.

A field left at its default means "mlxtune knows nothing particular here":
a family may be known to one reader only (HF export's class name, the config
normaliser's rope fields) and absent from the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ModelFormatError

# The linear layers of a llama-layout block that LoRA can target (block-relative names, as mlxtune.backends.mlx.lora).
LLAMA_LINEAR_KEYS = (
    "mlp.down_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "self_attn.k_proj",
    "self_attn.o_proj",
    "self_attn.q_proj",
    "self_attn.v_proj",
)
# GGUF <-> Hugging Face names of a llama-layout model: the tensors outside the blocks ...
LLAMA_GGUF_GLOBAL = (("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output", "lm_head"))
# ... and a block's, in the order llama.cpp's convert_hf_to_gguf tensor map lists them (the order of a GGUF file).
LLAMA_GGUF_BLOCK = (
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
)
# ... and the per-head q and k norms of a family with ``qk_norm`` (Qwen3), in the order of llama.cpp's tensor map.
QK_NORM_GGUF_BLOCK = (
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
)
# The rope scaling types the numpy model computes (mlx-lm's rope_utils.initialize_rope for these).
NUMPY_ROPE_TYPES = ("default", "linear", "llama3")
# The linear layers of a block whose q, k and v are one projection and gate and up another (Phi-3), sorted as LLAMA_LINEAR_KEYS.
FUSED_LINEAR_KEYS = ("mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj", "self_attn.qkv_proj")


@dataclass(frozen=True)
class Family:
    """One model family: its ``model_type`` values and what each part of mlxtune needs to know of it."""

    name: str
    model_types: tuple[str, ...]  # config.json model_type values it covers (the first is the canonical one)
    # --- Hugging Face
    hf_class: str | None = None  # transformers class for config.json's "architectures" (None: unknown to mlxtune)
    # --- the block, as the numpy backend and the memory plan read it
    linear_keys: tuple[str, ...] = ()  # block-relative linear layers LoRA can target (empty: not known here)
    numpy: bool = False  # the numpy backend implements it
    qkv_bias: bool | None = None  # fixed biases on q, k, v (and none on o_proj and the MLP); None: config.json's attention_bias / mlp_bias
    head_dim_from_config: bool = True  # False: head_dim is always hidden_size // heads, whatever config.json says
    default_rope_theta: float = 10000.0  # rope_theta when config.json has none
    rope_types: tuple[str, ...] = ()  # rope scaling types the numpy backend computes for it; with "longrope", the mlx
    # backend's too computes LongRoPE as transformers does (backends/mlx/longrope.py)
    qk_norm: bool = False  # q and k are RMS-normalised per head (self_attn.q_norm / k_norm, head_dim wide) before rope
    nope_layers: bool = False  # config.json's no_rope_layers / no_rope_layer_interval name layers that do not rotate
    norm_offset: float = 0.0  # every RMSNorm multiplies by (norm_offset + weight): Gemma stores its weights as w - 1
    embed_scale: bool = False  # the embeddings are multiplied by sqrt(hidden_size)
    sandwich_norms: bool = False  # norms after attention and the MLP too: post_attention_layernorm normalises
    # attention's output, pre_feedforward_layernorm the MLP's input and post_feedforward_layernorm its output
    activation: str = "silu"  # the gated MLP's activation: "silu" (SwiGLU) or "gelu_tanh" (GeGLU, tanh approximation)
    fused_projections: bool = False  # q | k | v is one linear layer (self_attn.qkv_proj) and gate | up another (mlp.gate_up_proj)
    partial_rotary: bool = False  # config.json's partial_rotary_factor: rope turns the first int(head_dim * factor) dims of each head
    query_scale_field: str | None = None  # attention scores are scaled by config.json's this ** -0.5 (None: head_dim ** -0.5)
    sliding_window: bool = False  # config.json's sliding_window, and its sliding_window_pattern / layer_types placing it
    text_config: bool = False  # a multimodal model_type of it keeps the text model's config in text_config ...
    text_prefix: str = ""  # ... and the text model's weights under this prefix ...
    other_towers: tuple[str, ...] = ()  # ... beside these (the vision tower), which a text fine-tune leaves out
    # --- GGUF (llama.cpp)
    gguf_arch: str | None = None  # general.architecture it is exported as (None: no GGUF export)
    gguf_import: bool = False  # a GGUF file of gguf_arch is imported as this family
    gguf_permute_qk: bool = False  # llama.cpp's converter permutes the rotary rows of q and k
    gguf_rope_types: tuple[str, ...] = ()  # rope scaling types GGUF export writes for it
    gguf_attention_bias_key: bool = False  # GGUF import writes config.json's attention_bias (from the q bias's presence)
    gguf_global: tuple[tuple[str, str], ...] = ()  # (GGUF name, HF module) outside the blocks
    gguf_block: tuple[tuple[str, str], ...] = ()  # (GGUF name, HF block-relative module), in GGUF file order
    gguf_context_keys: bool = False  # the converter writes rope.scaling.original_context_length and the sliding window (0: none) (phi3)
    gguf_nope_interval: int | None = None  # llama.cpp's fixed period of layers without rope (every Nth), not stored in the file
    # llama.cpp's reading of a sliding-window family's file: the period of full-attention layers when the file has no
    # attention.sliding_window_pattern, and the sliding-window layers' rope base when it has no rope.freq_base_swa
    gguf_swa_pattern: int | None = None
    gguf_swa_base: float | None = None
    # --- config.json normalisation (model_config.normalize_config)
    local_rope_base_field: str | None = None  # field mlx-lm reads the sliding-window layers' rope_theta from
    layer_pattern_field: str | None = None  # field mlx-lm reads the period of full-attention layers from
    reads_per_layer_type_rope: bool = False  # mlx-lm's model reads a per-layer-type rope_parameters itself
    rope_scaling_type_key: bool = False  # mlx-lm's model reads rope_scaling["type"] (transformers 4's key), not "rope_type"

    def head_dim(self, config: dict) -> int:
        """head_dim as mlx-lm's model of this family reads config.json."""
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        if not self.head_dim_from_config:
            return hidden // heads
        return int(config.get("head_dim") or hidden // heads)

    def biases(self, config: dict) -> tuple[bool, bool, bool]:
        """(q/k/v, o_proj, MLP) biases as mlx-lm's model of this family reads config.json."""
        if self.qkv_bias is not None:
            return self.qkv_bias, False, False
        attention = bool(config.get("attention_bias", False))
        return attention, attention, bool(config.get("mlp_bias", False))

    def rope_theta(self, config: dict) -> float:
        """rope_theta from config.json, else this family's default."""
        return float(config.get("rope_theta", self.default_rope_theta))

    def rope_layers(self, config: dict) -> tuple[bool, ...] | None:
        """Whether each layer rotates q and k, as mlx-lm's model of this family reads config.json; None: every layer does.

        SmolLM3 (mlx-lm's ``models/smollm3.py``, transformers' SmolLM3Config):
        ``no_rope_layers`` holds 1 for a layer with rope and 0 for one without;
        without it, every ``no_rope_layer_interval``-th layer (default 4) has none.
        """
        if not self.nope_layers:
            return None
        n = int(config["num_hidden_layers"])
        flags = config.get("no_rope_layers")
        if flags is None:
            interval = int(config.get("no_rope_layer_interval") or 4)
            return tuple((i + 1) % interval != 0 for i in range(n))
        if not isinstance(flags, list) or len(flags) != n or any(f not in (0, 1) for f in flags):
            raise ModelFormatError(
                f"config.json: no_rope_layers must list 0 or 1 for each of the {n} layers (1: the layer uses rope), not {str(flags)[:60]}; "
                "take config.json again from the model's source"
            )
        return tuple(bool(f) for f in flags)

    def sliding_layers(self, config: dict) -> tuple[bool, ...] | None:
        """Whether each layer attends within a sliding window, as mlx-lm reads config.json; None: no layer does.

        Gemma 3 (mlx-lm's ``models/gemma3_text.py``): every
        ``sliding_window_pattern``-th layer (default 6) attends to every
        position, the others to the last ``sliding_window`` ones;
        ``normalize_config`` derives the period from transformers 5's
        ``layer_types``. A period of 1 makes every layer global.
        """
        if not self.sliding_window:
            return None
        period = int(config.get(self.layer_pattern_field or "", None) or 6)
        if period < 1:
            raise ModelFormatError(f"config.json: {self.layer_pattern_field} is {period}; it must be a positive period of full-attention layers")
        return tuple((i + 1) % period != 0 for i in range(int(config["num_hidden_layers"])))

    def text_part(self, config: dict) -> dict:
        """The text model's config of a multimodal one (its ``text_config``, the vocabulary as mlx-lm reads it); else ``config``."""
        if not self.text_config or not isinstance(config.get("text_config"), dict):
            return config
        text = dict(config["text_config"])
        text["model_type"] = self.model_types[0]
        text["vocab_size"] = config.get("vocab_size", text.get("vocab_size", 262208))
        text.setdefault("num_attention_heads", 8)  # mlx-lm's defaults for a text_config without them
        text.setdefault("num_key_value_heads", 4)
        return text

    def text_weights(self, config: dict, weights: dict) -> tuple[dict, str]:
        """(the text model's weights under their text-model names, the prefix they had) of a multimodal checkpoint; else (weights, "").

        The other towers' weights (Gemma 3's vision tower and projector) are
        dropped, as mlx-lm's ``sanitize`` drops them.
        """
        if not self.text_config or not isinstance(config.get("text_config"), dict):
            return weights, ""
        p, out = self.text_prefix, {}
        for k, v in weights.items():
            if k.startswith(p):
                out[k[len(p):]] = v
            elif not k.startswith(self.other_towers):
                out[k] = v  # not the text model's: the weights check names it
        return out, p

    def gguf_query_pre_attn_scalar(self, hidden: int, heads: int, head_dim: int, n_layers: int) -> int | None:
        """The ``query_scale_field`` llama.cpp's graph computes with (it reads none from the file); None: head_dim's rule.

        llama.cpp's gemma3 (``src/models/gemma3.cpp``, after gemma_pytorch):
        head_dim, except for the 62-layer 27B model, hidden_size / heads.
        """
        if not self.query_scale_field:
            return None
        return hidden // heads if n_layers == 62 else head_dim  # an int, as transformers' config requires

    def gguf_rope_layers(self, n_layers: int) -> tuple[bool, ...] | None:
        """The layers llama.cpp's graph of ``gguf_arch`` rotates (None: every layer): what a GGUF file implies."""
        if self.gguf_nope_interval is None:
            return None
        return tuple((i + 1) % self.gguf_nope_interval != 0 for i in range(n_layers))

    def gguf_config_fields(self, n_layers: int) -> dict:
        """config.json fields a GGUF file of this family implies without storing them (the layers without rope)."""
        layers = self.gguf_rope_layers(n_layers)
        if layers is None:
            return {}
        return {"no_rope_layer_interval": self.gguf_nope_interval, "no_rope_layers": [int(r) for r in layers]}
