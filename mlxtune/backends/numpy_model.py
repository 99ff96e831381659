"""The numpy reference model: a llama-family transformer with LoRA, forward and backward by hand.

Two jobs. It is the backend where mlx cannot be installed, and it is the oracle
the mlx path is tested against (logits, loss, every LoRA gradient; see
``tests/test_parity.py``), as llm.c's reference checks its fast kernels. So it is
written to be read: one function per block, a shape comment on each tensor line,
each op a forward/backward pair in ``numpy_ops``. Semantics are mlx-lm's
``models/llama.py`` (mistral is the same model there) and ``models/qwen2.py``:

    x = embed(tokens)
    for each block:  x = x + o(attn(rope(q(n1(x))), rope(k(n1(x))), v(n1(x))))
                     x = x + down(silu(gate(n2(x))) * up(n2(x)))
    logits = norm(x) @ head.T            (head = embed_tokens.weight when tied)

with RMSNorm, rotary embeddings as ``mlx_lm.models.rope_utils.initialize_rope``,
causal grouped-query attention scaled by head_dim**-0.5, and LoRA updates
``y += scale * (dropout(x) A) B`` on the chosen projections.

Only LoRA parameters train. The backward pass therefore never forms a weight
gradient of a frozen layer, only activation gradients through it, and stops at
the first block that carries an adapter: nothing before it needs a gradient.
The output head is applied only to the positions that have a training target.

This module imports numpy (and mlxtune's error types) only; never mlx.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AdapterError, ConfigError, ModelFormatError, UnsupportedModelError
from . import numpy_ops as ops

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
# The linear layers of a block that LoRA can target (block-relative names, as mlxtune.lora).
LINEAR_KEYS = (
    "mlp.down_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "self_attn.k_proj",
    "self_attn.o_proj",
    "self_attn.q_proj",
    "self_attn.v_proj",
)
# Tensors a checkpoint may carry that the model does not use (mlx-lm's sanitize drops them too).
_IGNORED_SUFFIXES = ("self_attn.rotary_emb.inv_freq",)


@dataclass
class ModelConfig:
    """The fields of a llama / mistral / qwen2 config.json that the computation depends on."""

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

    @classmethod
    def from_dict(cls, config: dict) -> "ModelConfig":
        """Read config.json with mlx-lm's defaults (which differ between llama and qwen2)."""
        model_type = config.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"model type '{model_type}' is not supported by the numpy backend "
                f"(it supports {', '.join(SUPPORTED_MODEL_TYPES)}; SmolLM and SmolLM2 are llama); use the mlx backend"
            )
        missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "rms_norm_eps", "vocab_size") if config.get(k) is None]
        if missing:
            raise ModelFormatError(f"config.json of this {model_type} model lacks {', '.join(missing)}")
        layer_types = config.get("layer_types")
        if layer_types and any(t != "full_attention" for t in layer_types):
            raise UnsupportedModelError(f"layer types {sorted(set(layer_types))} are not supported by the numpy backend (full_attention only)")
        scaling = config.get("rope_scaling")
        rope_type = (scaling.get("type") or scaling.get("rope_type") or "default") if scaling else "default"
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedModelError(f"rope scaling type '{rope_type}' is not supported by the numpy backend (it supports {', '.join(SUPPORTED_ROPE_TYPES)})")
        if rope_type in ("linear", "llama3") and "factor" not in scaling:
            raise ModelFormatError(f"config.json: rope_scaling of type '{rope_type}' has no 'factor'")
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        qwen2 = model_type == "qwen2"
        return cls(
            model_type=model_type,
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            # mlx-lm's qwen2 always uses hidden // heads; llama honours head_dim.
            head_dim=hidden // heads if qwen2 else int(config.get("head_dim") or hidden // heads),
            rms_norm_eps=float(config["rms_norm_eps"]),
            vocab_size=int(config["vocab_size"]),
            rope_theta=float(config.get("rope_theta", 1000000.0 if qwen2 else 10000.0)),
            rope_traditional=bool(config.get("rope_traditional", False)),
            rope_scaling=dict(scaling) if scaling else None,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
            attention_bias=True if qwen2 else bool(config.get("attention_bias", False)),
            o_proj_bias=False if qwen2 else bool(config.get("attention_bias", False)),
            mlp_bias=False if qwen2 else bool(config.get("mlp_bias", False)),
        )

    def rope_frequencies(self) -> tuple[np.ndarray, float]:
        """(inverse frequencies (D/2,) in float64, position scale), as mlx-lm's initialize_rope."""
        D = self.head_dim
        freqs = self.rope_theta ** (np.arange(0, D, 2) / D)  # (D/2,) wavelengths / 2π
        scaling = self.rope_scaling or {}
        rope_type = scaling.get("type") or scaling.get("rope_type") or "default"
        if rope_type == "linear":
            return 1.0 / freqs, 1.0 / float(scaling["factor"])
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


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the model needs, with its Hugging Face name and shape."""
    C, F, V, D = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * D, cfg.num_key_value_heads * D
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (C,)
        shapes[p + "post_attention_layernorm.weight"] = (C,)
        for name, out_dim, in_dim, bias in (
            ("self_attn.q_proj", q, C, cfg.attention_bias),
            ("self_attn.k_proj", kv, C, cfg.attention_bias),
            ("self_attn.v_proj", kv, C, cfg.attention_bias),
            ("self_attn.o_proj", C, q, cfg.o_proj_bias),
            ("mlp.gate_proj", F, C, cfg.mlp_bias),
            ("mlp.up_proj", F, C, cfg.mlp_bias),
            ("mlp.down_proj", C, F, cfg.mlp_bias),
        ):
            shapes[p + name + ".weight"] = (out_dim, in_dim)
            if bias:
                shapes[p + name + ".bias"] = (out_dim,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


class KVCache:
    """Keys and values (after RoPE) of every block for the positions seen so far."""

    def __init__(self, num_layers: int):
        self.keys: list[np.ndarray | None] = [None] * num_layers  # each (B, KVH, S, D)
        self.values: list[np.ndarray | None] = [None] * num_layers  # each (B, KVH, S, D)
        self.offset = 0  # positions already cached

    def update(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append this step's k, v (B, KVH, T, D) to the layer's; return all (B, KVH, S, D)."""
        if self.keys[layer] is not None:
            k = np.concatenate([self.keys[layer], k], axis=2)
            v = np.concatenate([self.values[layer], v], axis=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class NumpyLlama:
    """A llama-family model in numpy with LoRA adapters, a forward pass and a LoRA backward pass."""

    def __init__(self, config: ModelConfig, weights: dict[str, np.ndarray], dtype=np.float32):
        cfg = self.config = config
        self.dtype = np.dtype(dtype).type
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise ModelFormatError(f"num_attention_heads {cfg.num_attention_heads} is not a multiple of num_key_value_heads {cfg.num_key_value_heads}")
        expected = expected_shapes(cfg)
        missing = [k for k in expected if k not in weights]
        if missing:
            raise ModelFormatError(f"the model weights lack {len(missing)} tensor(s) the config calls for, e.g. {missing[0]} of shape {expected[missing[0]]}")
        ignored = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
        extra = [k for k in weights if k not in expected and k not in ignored and not k.endswith(_IGNORED_SUFFIXES)]
        if extra:
            raise ModelFormatError(f"the model weights have {len(extra)} tensor(s) a {cfg.model_type} model with this config does not use, e.g. {extra[0]}")
        for name, shape in expected.items():
            if tuple(weights[name].shape) != shape:
                raise ModelFormatError(f"tensor {name} has shape {tuple(weights[name].shape)}, but the config calls for {shape}")
        self.weights = {name: np.ascontiguousarray(weights[name], dtype=self.dtype) for name in expected}
        self.adapters: dict[str, ops.LoRA] = {}  # "model.layers.3.self_attn.q_proj" -> LoRA
        self.inv_freq, self.position_scale = cfg.rope_frequencies()  # (D/2,), float
        self.attn_scale = cfg.head_dim**-0.5

    # ------------------------------------------------------------------ LoRA

    def add_lora(self, num_layers: int, keys: list[str], rank: int, scale: float, rng: np.random.Generator, dropout: float = 0.0) -> int:
        """Put LoRA on ``keys`` of the last ``num_layers`` blocks (-1 or more than there are: all).

        Placement and initialisation as ``mlxtune.lora.apply_adapters`` /
        ``LoRALinear``: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0, so the model is
        unchanged until B trains. Returns the number of adapted layers.
        """
        unknown = [k for k in keys if k not in LINEAR_KEYS]
        if unknown:
            raise ConfigError(f"LoRA target '{unknown[0]}' is not a linear layer of a {self.config.model_type} block; choose from: {', '.join(LINEAR_KEYS)}")
        n_blocks = self.config.num_hidden_layers
        if num_layers < 0 or num_layers > n_blocks:
            num_layers = n_blocks
        count = 0
        for i in range(n_blocks - num_layers, n_blocks):
            for key in dict.fromkeys(keys):
                name = f"model.layers.{i}.{key}"
                out_dim, in_dim = self.weights[name + ".weight"].shape
                bound = 1 / math.sqrt(in_dim)
                a = rng.uniform(-bound, bound, size=(in_dim, rank)).astype(self.dtype)  # (in, r)
                b = np.zeros((rank, out_dim), dtype=self.dtype)  # (r, out)
                self.adapters[name] = ops.LoRA(a, b, float(scale), float(dropout))
                count += 1
        return count

    def lora_params(self) -> dict[str, np.ndarray]:
        """The live adapter arrays: "<layer>.lora_a" (in, r) and "<layer>.lora_b" (r, out)."""
        params = {}
        for name, lora in self.adapters.items():
            params[name + ".lora_a"] = lora.a
            params[name + ".lora_b"] = lora.b
        return params

    def set_lora_params(self, params: dict[str, np.ndarray]) -> None:
        """Replace every adapter array (copied, cast to the model dtype); keys and shapes must match exactly."""
        expected = self.lora_params()
        missing = [k for k in expected if k not in params]
        extra = [k for k in params if k not in expected]
        if missing or extra:
            example = (missing or extra)[0]
            raise AdapterError(f"adapter weights do not fit this model: {len(missing)} missing and {len(extra)} unexpected tensor(s), e.g. {example}")
        for key, value in params.items():
            if tuple(np.shape(value)) != expected[key].shape:
                raise AdapterError(f"adapter tensor {key} has shape {tuple(np.shape(value))}, but this model needs {expected[key].shape}")
        for name, lora in self.adapters.items():
            lora.a = np.array(params[name + ".lora_a"], dtype=self.dtype)
            lora.b = np.array(params[name + ".lora_b"], dtype=self.dtype)

    def fused_weights(self) -> dict[str, np.ndarray]:
        """The dense weights with every adapter merged in: W + scale * (A B)ᵀ."""
        fused = dict(self.weights)
        for name, lora in self.adapters.items():
            fused[name + ".weight"] = self.weights[name + ".weight"] + lora.scale * (lora.a @ lora.b).T  # (out, in)
        return fused

    # --------------------------------------------------------------- forward

    def new_cache(self) -> KVCache:
        return KVCache(self.config.num_hidden_layers)

    def forward(self, inputs: np.ndarray, cache: KVCache | None = None) -> np.ndarray:
        """Logits (B, T, V) for token ids (B, T); with a cache, positions continue from cache.offset."""
        inputs = self._check_tokens(inputs)
        offset = 0 if cache is None else cache.offset
        rope = self._rope(offset, inputs.shape[1])
        x = self.weights["model.embed_tokens.weight"][inputs]  # (B, T, C)
        for i in range(self.config.num_hidden_layers):
            x, _ = self._block_forward(i, x, rope, cache, offset)
        if cache is not None:
            cache.offset += inputs.shape[1]
        x, _ = ops.rmsnorm_forward(x, self.weights["model.norm.weight"], self.config.rms_norm_eps)  # (B, T, C)
        logits, _ = ops.linear_forward(x, self._head_weight())  # (B, T, V)
        return logits

    def loss(self, inputs, targets, mask) -> tuple[float, float]:
        """(mean masked cross-entropy, number of targets): sum(CE * mask) / max(sum(mask), 1)."""
        inputs = self._check_tokens(inputs)
        rope = self._rope(0, inputs.shape[1])
        x = self.weights["model.embed_tokens.weight"][inputs]  # (B, T, C)
        for i in range(self.config.num_hidden_layers):
            x, _ = self._block_forward(i, x, rope)
        loss, n, _ = self._head_loss(x, np.asarray(targets), np.asarray(mask))
        return loss, n

    def loss_and_grads(self, inputs, targets, mask, rng: np.random.Generator | None = None) -> tuple[float, float, dict[str, np.ndarray]]:
        """(loss, n, gradients of the loss w.r.t. every lora_params() tensor).

        Dropout is applied to the LoRA inputs only when an adapter has
        dropout > 0 and ``rng`` is given.
        """
        inputs = self._check_tokens(inputs)
        n_blocks = self.config.num_hidden_layers
        first = min((int(name.split(".")[2]) for name in self.adapters), default=n_blocks)
        rope = self._rope(0, inputs.shape[1])
        x = self.weights["model.embed_tokens.weight"][inputs]  # (B, T, C)
        caches = []
        for i in range(n_blocks):
            x, cache = self._block_forward(i, x, rope, rng=rng)
            if i >= first:  # blocks before the first adapter need no backward pass
                caches.append(cache)
        loss, n, head_cache = self._head_loss(x, np.asarray(targets), np.asarray(mask))
        grads: dict[str, np.ndarray] = {}
        dx = self._head_loss_backward(head_cache)  # (B, T, C)
        for i in reversed(range(first, n_blocks)):
            dx, block_grads = self._block_backward(i, dx, caches.pop())
            grads.update(block_grads)
        return loss, n, {k: grads[k] for k in self.lora_params()}

    # ------------------------------------------------------------- internals

    def _check_tokens(self, inputs) -> np.ndarray:
        inputs = np.asarray(inputs)
        if inputs.ndim != 2 or not np.issubdtype(inputs.dtype, np.integer):
            raise ValueError(f"inputs must be (B, T) integer token ids, not {inputs.dtype} {inputs.shape}")
        if inputs.size and (inputs.min() < 0 or inputs.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), found {inputs.min()}..{inputs.max()}")
        return inputs

    def _rope(self, offset: int, T: int) -> tuple[np.ndarray, np.ndarray]:
        positions = (offset + np.arange(T)) * self.position_scale  # (T,)
        return ops.rope_tables(positions, self.inv_freq, self.dtype)  # (T, D/2) cos, sin

    def _head_weight(self) -> np.ndarray:
        return self.weights["model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"]  # (V, C)

    def _linear(self, name: str, x: np.ndarray, rng: np.random.Generator | None):
        lora = self.adapters.get(name)
        drop = None
        if lora is not None and lora.dropout > 0 and rng is not None:
            drop = ops.dropout_mask(x.shape, lora.dropout, rng, self.dtype)
        return ops.linear_forward(x, self.weights[name + ".weight"], self.weights.get(name + ".bias"), lora, drop)

    def _block_forward(self, i: int, x, rope, kv: KVCache | None = None, offset: int = 0, rng=None):
        """x + attention(norm(x)), then + mlp(norm(.)). x: (B, T, C). Returns (out, cache)."""
        cfg, w, p = self.config, self.weights, f"model.layers.{i}."
        B, T, _ = x.shape
        H, KVH, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        cos, sin = rope
        h, c_n1 = ops.rmsnorm_forward(x, w[p + "input_layernorm.weight"], cfg.rms_norm_eps)  # (B, T, C)
        q, c_q = self._linear(p + "self_attn.q_proj", h, rng)  # (B, T, H*D)
        k, c_k = self._linear(p + "self_attn.k_proj", h, rng)  # (B, T, KVH*D)
        v, c_v = self._linear(p + "self_attn.v_proj", h, rng)  # (B, T, KVH*D)
        q = q.reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D)
        k = k.reshape(B, T, KVH, D).transpose(0, 2, 1, 3)  # (B, KVH, T, D)
        v = v.reshape(B, T, KVH, D).transpose(0, 2, 1, 3)  # (B, KVH, T, D)
        q, c_rq = ops.rope_forward(q, cos, sin, cfg.rope_traditional)  # (B, H, T, D)
        k, c_rk = ops.rope_forward(k, cos, sin, cfg.rope_traditional)  # (B, KVH, T, D)
        if kv is not None:
            k, v = kv.update(i, k, v)  # (B, KVH, S, D)
        a, c_att = ops.attention_forward(q, k, v, self.attn_scale, offset)  # (B, H, T, D)
        a = a.transpose(0, 2, 1, 3).reshape(B, T, H * D)  # (B, T, H*D)
        o, c_o = self._linear(p + "self_attn.o_proj", a, rng)  # (B, T, C)
        x = x + o  # (B, T, C)
        h, c_n2 = ops.rmsnorm_forward(x, w[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)  # (B, T, C)
        g, c_g = self._linear(p + "mlp.gate_proj", h, rng)  # (B, T, F)
        u, c_u = self._linear(p + "mlp.up_proj", h, rng)  # (B, T, F)
        m, c_act = ops.swiglu_forward(g, u)  # (B, T, F)
        d, c_d = self._linear(p + "mlp.down_proj", m, rng)  # (B, T, C)
        return x + d, (c_n1, c_q, c_k, c_v, c_rq, c_rk, c_att, c_o, c_n2, c_g, c_u, c_act, c_d)

    def _block_backward(self, i: int, dout, cache):
        """-> (d block input (B, T, C), {lora param name: grad}) for one block."""
        c_n1, c_q, c_k, c_v, c_rq, c_rk, c_att, c_o, c_n2, c_g, c_u, c_act, c_d = cache
        cfg, p = self.config, f"model.layers.{i}."
        B, T, _ = dout.shape
        H, KVH, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        lora_grads = {}
        # MLP branch: out = x + down(silu(gate(h)) * up(h)), h = n2(x)
        dm, lora_grads["mlp.down_proj"] = ops.linear_backward(dout, c_d)  # (B, T, F)
        dg, du = ops.swiglu_backward(dm, c_act)  # (B, T, F) each
        dh, lora_grads["mlp.gate_proj"] = ops.linear_backward(dg, c_g)  # (B, T, C)
        dh_up, lora_grads["mlp.up_proj"] = ops.linear_backward(du, c_u)  # (B, T, C)
        dx = dout + ops.rmsnorm_backward(dh + dh_up, c_n2)  # (B, T, C)
        # attention branch: x = x_in + o(attn(rope(q(h)), rope(k(h)), v(h))), h = n1(x_in)
        da, lora_grads["self_attn.o_proj"] = ops.linear_backward(dx, c_o)  # (B, T, H*D)
        da = da.reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D)
        dq, dk, dv = ops.attention_backward(da, c_att)  # (B, H, T, D), (B, KVH, T, D) x2
        dq = ops.rope_backward(dq, c_rq).transpose(0, 2, 1, 3).reshape(B, T, H * D)  # (B, T, H*D)
        dk = ops.rope_backward(dk, c_rk).transpose(0, 2, 1, 3).reshape(B, T, KVH * D)  # (B, T, KVH*D)
        dv = dv.transpose(0, 2, 1, 3).reshape(B, T, KVH * D)  # (B, T, KVH*D)
        dh, lora_grads["self_attn.q_proj"] = ops.linear_backward(dq, c_q)  # (B, T, C)
        dh_k, lora_grads["self_attn.k_proj"] = ops.linear_backward(dk, c_k)  # (B, T, C)
        dh_v, lora_grads["self_attn.v_proj"] = ops.linear_backward(dv, c_v)  # (B, T, C)
        dx = dx + ops.rmsnorm_backward(dh + dh_k + dh_v, c_n1)  # (B, T, C)
        grads = {}
        for key, g in lora_grads.items():
            if g is not None:
                grads[p + key + ".lora_a"], grads[p + key + ".lora_b"] = g
        return dx, grads

    def _head_loss(self, x, targets, mask):
        """Final norm, head and masked mean cross-entropy, on the rows that have a target only.

        Rows with mask 0 contribute nothing to the loss or its gradient, so their
        (V,)-sized logits are never computed. Returns (loss, n, cache).
        """
        B, T, C = x.shape
        weights = mask.reshape(-1).astype(self.dtype)  # (B*T,)
        rows = np.flatnonzero(weights)  # (n_rows,)
        n = float(weights.sum())
        xs = x.reshape(B * T, C)[rows]  # (n_rows, C)
        h, c_norm = ops.rmsnorm_forward(xs, self.weights["model.norm.weight"], self.config.rms_norm_eps)  # (n_rows, C)
        logits, c_head = ops.linear_forward(h, self._head_weight())  # (n_rows, V)
        total, c_ce = ops.cross_entropy_forward(logits, targets.reshape(-1)[rows], weights[rows])
        denom = max(n, 1.0)
        return total / denom, n, (x.shape, rows, denom, c_norm, c_head, c_ce)

    def _head_loss_backward(self, cache) -> np.ndarray:
        """-> d loss / d x (B, T, C), zero on rows without a target."""
        (B, T, C), rows, denom, c_norm, c_head, c_ce = cache
        dlogits = ops.cross_entropy_backward(1.0 / denom, c_ce)  # (n_rows, V)
        dh, _ = ops.linear_backward(dlogits, c_head)  # (n_rows, C)
        dx = np.zeros((B * T, C), dtype=self.dtype)  # (B*T, C)
        dx[rows] = ops.rmsnorm_backward(dh, c_norm)
        return dx.reshape(B, T, C)


def load_model(model_dir: str | Path, dtype=np.float32) -> NumpyLlama:
    """A NumpyLlama from an MLX- or Hugging Face-layout directory (quantized weights dequantized)."""
    from ..npio import load_weights  # numpy only

    config, weights = load_weights(model_dir)
    return NumpyLlama(ModelConfig.from_dict(config), weights, dtype)
