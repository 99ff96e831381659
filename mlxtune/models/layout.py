"""The llama layout: a config.json as mlx-lm's model of its family reads it, and the tensors it calls for.

llama, mistral, qwen2, qwen3 and smollm3 (and SmolLM, SmolLM2, Qwen2.5) share
one layout: an embedding, blocks of RMSNorm, grouped-query attention (q, k,
v, o) with rotary embeddings and a SwiGLU MLP (gate, up, down), a final norm
and a head (tied or not). What differs between the families is how
config.json is read (biases, head_dim, the default rotary base), per-head q/k
norms before rope (``qk_norm``: two more weights of head_dim a block) and
layers without rope (``rope_layers``): ``Family`` in ``models/families`` says
it, ``ModelConfig.from_dict`` applies it. Phi-3 has the same tensors with
q | k | v and gate | up fused into one layer each (``fused_projections``:
``qkv_proj``, ``gate_up_proj``), rotates the first part of each head only
(``rotary_dims``) and may scale its rotary with LongRoPE (``LongRoPE``, as
transformers computes it). The numpy model computes with this,
GGUF export writes it, the memory plan counts it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from .config import normalize_config
from . import families


@dataclass(frozen=True)
class LongRoPE:
    """LongRoPE as transformers computes it (``_compute_longrope_parameters``, ``dynamic_rope_update``): one set of
    per-frequency factors within the original context, another beyond it, and a scale of cos and sin."""

    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_max: int  # original_max_position_embeddings
    attention_factor: float  # what cos and sin are multiplied by

    @classmethod
    def from_config(cls, config: dict, scaling: dict, dims: int) -> "LongRoPE":
        """From config.json (normalised) and its rope_scaling; ``dims`` rotated dims a head.

        The original context is config.json's top-level field first, then
        rope_scaling's (transformers' Phi-3 rule); the attention factor is
        rope_scaling's attention_factor, else sqrt(1 + ln(f) / ln(original))
        with f = rope_scaling's factor or max_position_embeddings / original
        (1 when f <= 1).
        """
        original = config.get("original_max_position_embeddings") or scaling.get("original_max_position_embeddings")
        missing = [k for k, v in (("short_factor", scaling.get("short_factor")), ("long_factor", scaling.get("long_factor")), ("original_max_position_embeddings", original)) if v is None]
        if missing:
            raise ModelFormatError(f"config.json: LongRoPE rope_scaling lacks {', '.join(missing)}; take config.json again from the model's source")
        short, long = tuple(float(f) for f in scaling["short_factor"]), tuple(float(f) for f in scaling["long_factor"])
        if len(short) != dims // 2 or len(long) != dims // 2:
            raise ModelFormatError(f"config.json: LongRoPE short_factor and long_factor must have {dims // 2} entries each (half the {dims} rotated dims), not {len(short)} and {len(long)}")
        original = int(original)
        factor = scaling.get("factor") or float(config.get("max_position_embeddings") or original) / original
        attention = scaling.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        return cls(short, long, original, float(attention))

    def factors(self, length: int | None) -> np.ndarray:
        """The factors for a sequence of ``length`` positions in all (cache offset + new tokens); None: the short ones."""
        return np.asarray(self.long_factor if length is not None and length > self.original_max else self.short_factor, dtype=np.float64)


@dataclass
class ModelConfig:
    """The fields of a llama-layout config.json (llama, mistral, qwen2, qwen3, smollm3) that the computation depends on."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    vocab_size: int
    rope_theta: float = 10000.0
    rope_traditional: bool = False
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = True
    attention_bias: bool = False  # biases on q, k and v
    o_proj_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # self_attn.q_norm / k_norm (head_dim,) normalise each head of q and k before rope
    rope_layers: tuple[bool, ...] | None = None  # whether each layer rotates q and k (None: every layer)
    norm_offset: float = 0.0  # RMSNorms multiply by norm_offset + weight (Gemma: 1)
    embed_scale: float = 1.0  # the embeddings are multiplied by this (Gemma: sqrt(hidden_size))
    sandwich_norms: bool = False  # post_attention_layernorm on attention's output, pre/post_feedforward_layernorm around the MLP
    activation: str = "silu"  # the gated MLP's: "silu" or "gelu_tanh"
    query_pre_attn_scalar: float | None = None  # attention scores scaled by this ** -0.5 (None: head_dim ** -0.5)
    sliding_window: int | None = None  # the positions a sliding-window layer attends to (itself included)
    sliding_layers: tuple[bool, ...] | None = None  # whether each layer attends within the sliding window (None: none does)
    local_rope_theta: float | None = None  # the rotary base of the sliding-window layers (None: rope_theta)
    fused_projections: bool = False  # self_attn.qkv_proj (q | k | v) and mlp.gate_up_proj (gate | up) are one layer each
    rotary_dims: int | None = None  # rope turns the first this many dims of each head (None: all head_dim)
    longrope: LongRoPE | None = None  # LongRoPE's factors (rope_scaling type longrope or su)

    @classmethod
    def from_dict(cls, config: dict) -> "ModelConfig":
        """Read config.json with mlx-lm's defaults (which differ between families: ``models.families``).

        Either transformers layout: ``rope_parameters`` is read as ``rope_theta`` / ``rope_scaling`` first.
        """
        config = normalize_config(config)
        family = families.get(config.get("model_type"))
        if family is not None:
            config = family.text_part(config)  # a multimodal checkpoint's text model
        model_type = config.get("model_type")
        if family is None or not family.numpy:
            raise UnsupportedModelError(
                f"model type '{model_type}' is not supported by the numpy backend "
                f"(it supports {', '.join(families.numpy_model_types())}; SmolLM and SmolLM2 are llama); use the mlx backend"
            )
        missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "rms_norm_eps", "vocab_size") if config.get(k) is None]
        if missing:
            raise ModelFormatError(f"config.json of this {model_type} model lacks {', '.join(missing)}")
        layer_types = config.get("layer_types")
        known = ("full_attention", "sliding_attention") if family.sliding_window else ("full_attention",)
        if layer_types and any(t not in known for t in layer_types):
            raise UnsupportedModelError(f"layer types {sorted(set(layer_types))} are not supported by the numpy backend for {model_type} ({', '.join(known)} only)")
        unsupported = [k for k in ("final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention") if config.get(k)]
        if unsupported:
            raise UnsupportedModelError(f"config.json sets {', '.join(unsupported)}, which the numpy backend does not compute; use the mlx backend")
        scaling = config.get("rope_scaling")
        rope_type = (scaling.get("type") or scaling.get("rope_type") or "default") if scaling else "default"
        if rope_type not in family.rope_types:
            raise UnsupportedModelError(f"rope scaling type '{rope_type}' is not supported by the numpy backend (it supports {', '.join(family.rope_types)})")
        if rope_type in ("linear", "llama3") and "factor" not in scaling:
            raise ModelFormatError(f"config.json: rope_scaling of type '{rope_type}' has no 'factor'")
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        head_dim = family.head_dim(config)
        rotary = int(head_dim * float(config.get("partial_rotary_factor") or 1.0)) if family.partial_rotary else head_dim
        if rotary % 2 or not 0 < rotary <= head_dim:
            raise ModelFormatError(f"config.json: partial_rotary_factor {config.get('partial_rotary_factor')} gives {rotary} rotated dims of a head of {head_dim}; it must be an even number up to {head_dim}")
        attention_bias, o_proj_bias, mlp_bias = family.biases(config)
        return cls(
            model_type=model_type,
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rms_norm_eps=float(config["rms_norm_eps"]),
            vocab_size=int(config["vocab_size"]),
            rope_theta=family.rope_theta(config),
            rope_traditional=bool(config.get("rope_traditional", False)),
            rope_scaling=dict(scaling) if scaling else None,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
            attention_bias=attention_bias,
            o_proj_bias=o_proj_bias,
            mlp_bias=mlp_bias,
            qk_norm=family.qk_norm,
            rope_layers=family.rope_layers(config),
            norm_offset=family.norm_offset,
            embed_scale=float(np.sqrt(hidden)) if family.embed_scale else 1.0,
            sandwich_norms=family.sandwich_norms,
            activation=family.activation,
            # the defaults of the fields below are mlx-lm's (and transformers') for the one family that reads them
            query_pre_attn_scalar=float(config.get(family.query_scale_field) or 256) if family.query_scale_field else None,
            sliding_window=int(config.get("sliding_window") or 512) if family.sliding_window else None,
            sliding_layers=family.sliding_layers(config),
            local_rope_theta=float(config.get(family.local_rope_base_field) or 10000.0) if family.local_rope_base_field else None,
            fused_projections=family.fused_projections,
            rotary_dims=rotary if rotary != head_dim else None,
            longrope=LongRoPE.from_config(config, scaling, rotary) if rope_type in ("longrope", "su") else None,
        )

    def rotates(self, layer: int) -> bool:
        """Whether block ``layer`` applies rotary embeddings to q and k."""
        return self.rope_layers is None or self.rope_layers[layer]

    def window(self, layer: int) -> int | None:
        """The sliding window block ``layer`` attends within (None: every earlier position)."""
        return self.sliding_window if self.sliding_layers is not None and self.sliding_layers[layer] else None

    def rope_dims(self) -> int:
        """The dims of each head rope turns (the first ones; the rest pass through)."""
        return self.rotary_dims or self.head_dim

    def rope_attention_factor(self) -> float:
        """What rope multiplies cos and sin by (LongRoPE's attention factor; else 1)."""
        return self.longrope.attention_factor if self.longrope is not None else 1.0

    def linear_keys(self) -> tuple[str, ...]:
        """The linear layers of a block LoRA can target (block-relative, sorted): fused ones for ``fused_projections``."""
        return tuple(sorted(block_linears(self.hidden_size, self.intermediate_size, self.num_attention_heads, self.num_key_value_heads,
                                          self.head_dim, self.fused_projections)))

    def attention_scale(self) -> float:
        """What the attention scores are multiplied by."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def rope_frequencies(self, local: bool = False, length: int | None = None) -> tuple[np.ndarray, float]:
        """(inverse frequencies (R/2,) in float64, position scale), as mlx-lm's initialize_rope; R = ``rope_dims()``.

        ``local``: the sliding-window layers' (base ``local_rope_theta``, never scaled).
        ``length``: the positions of the sequence in all (cache offset + new
        tokens), which chooses LongRoPE's factors (None: the short ones).
        """
        D = self.rope_dims()
        if local:
            return 1.0 / (self.local_rope_theta ** (np.arange(0, D, 2) / D)), 1.0
        freqs = self.rope_theta ** (np.arange(0, D, 2) / D)  # (D/2,) wavelengths / 2π
        scaling = self.rope_scaling or {}
        rope_type = scaling.get("type") or scaling.get("rope_type") or "default"
        if rope_type == "linear":
            return 1.0 / freqs, 1.0 / float(scaling["factor"])
        if self.longrope is not None:  # transformers' LongRoPE: 1 / (factor_i theta^(2i/R))
            return 1.0 / (self.longrope.factors(length) * freqs), 1.0
        if rope_type == "llama3":  # mlx_lm.models.rope_utils.Llama3RoPE
            factor = float(scaling["factor"])
            low_ff = float(scaling.get("low_freq_factor", 1.0))
            high_ff = float(scaling.get("high_freq_factor", 4.0))
            old_len = float(scaling.get("original_max_position_embeddings", 8192))
            wavelens = 2 * np.pi * freqs
            freqs = np.where(wavelens > old_len / low_ff, freqs * factor, freqs)
            medium = (wavelens > old_len / high_ff) & (wavelens < old_len / low_ff)
            smooth = (old_len / wavelens - low_ff) / (high_ff - low_ff)
            freqs = np.where(medium, freqs / ((1 - smooth) / factor + smooth), freqs)
        return 1.0 / freqs, 1.0


def block_linears(hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int, fused: bool = False) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear layer of a block, by block-relative name, in a checkpoint's order (q, k, v, o, gate, up, down).

    ``fused``: q | k | v is one layer (``self_attn.qkv_proj``, rows q, k, v) and gate | up another (``mlp.gate_up_proj``).
    """
    C, F, q, kv = hidden, intermediate, heads * head_dim, kv_heads * head_dim
    if fused:
        return {"self_attn.qkv_proj": (q + 2 * kv, C), "self_attn.o_proj": (C, q), "mlp.gate_up_proj": (2 * F, C), "mlp.down_proj": (C, F)}
    return {
        "self_attn.q_proj": (q, C),
        "self_attn.k_proj": (kv, C),
        "self_attn.v_proj": (kv, C),
        "self_attn.o_proj": (C, q),
        "mlp.gate_proj": (F, C),
        "mlp.up_proj": (F, C),
        "mlp.down_proj": (C, F),
    }


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the model needs, with its Hugging Face name and shape."""
    C, V = cfg.hidden_size, cfg.vocab_size
    linears = block_linears(C, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.fused_projections)
    bias = {"self_attn.o_proj": cfg.o_proj_bias, "mlp.gate_proj": cfg.mlp_bias, "mlp.up_proj": cfg.mlp_bias, "mlp.gate_up_proj": cfg.mlp_bias, "mlp.down_proj": cfg.mlp_bias}
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (C,)
        shapes[p + "post_attention_layernorm.weight"] = (C,)
        if cfg.sandwich_norms:
            shapes[p + "pre_feedforward_layernorm.weight"] = (C,)
            shapes[p + "post_feedforward_layernorm.weight"] = (C,)
        if cfg.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (cfg.head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (cfg.head_dim,)
        for name, (out_dim, in_dim) in linears.items():
            shapes[p + name + ".weight"] = (out_dim, in_dim)
            if bias.get(name, cfg.attention_bias):  # q, k and v: attention_bias
                shapes[p + name + ".bias"] = (out_dim,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes
