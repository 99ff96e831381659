"""Tiny random models and tokenizers for fast tests.

``make_tiny_model(dir)`` writes a complete model directory in the layout that
``mlx_lm.load`` and mlxtune read: ``config.json``, ``model.safetensors`` and a
byte-level BPE tokenizer (trained here, offline) with a ChatML chat template,
like SmolLM2's but with a few hundred tokens instead of 49k.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Meeting notes: discuss the budget, plan the launch, review hiring.",
    "Summary: the team agreed to ship on Friday. Action items follow.",
    "What is the capital of France? Paris is the capital of France.",
    "user assistant system: hello, how are you today? I am fine, thanks!",
    "0123456789 numbers, punctuation; quotes \"like this\" and 'this'.",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber \u2014 emoji \U0001f600 \U0001f680",
]


def make_tokenizer(out_dir: Path, vocab_size: int = 320, special: list[str] | None = None) -> int:
    """Train a byte-level BPE tokenizer into ``out_dir``; returns its vocab size.

    ``special``: its special tokens, ids 0, 1, ... [default: ChatML's, ``SPECIAL``].
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special or SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|im_start|>",
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "chat_template": CHATML,
                "model_max_length": 2048,
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        )
    )
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
    )
    return tok.get_vocab_size()


def tiny_config(vocab_size: int, **overrides) -> dict:
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab_size,
        "tie_word_embeddings": True,
        "max_position_embeddings": 2048,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    config.update(overrides)
    return config


def tiny_weights(config: dict, seed: int = 0) -> dict:
    """Random weights with Hugging Face names, drawn with numpy (no mlx needed); q/k norms and sandwich norms for a family that has them."""
    import numpy as np

    from mlxtune.models import families

    family = families.get(config.get("model_type"))
    qk_norm, sandwich = getattr(family, "qk_norm", False), getattr(family, "sandwich_norms", False)
    rng = np.random.default_rng(seed)
    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd = families.head_dim(config)
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd

    def linear(out_dim, in_dim):
        bound = 1 / np.sqrt(in_dim)
        return rng.uniform(-bound, bound, (out_dim, in_dim)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.normal(0, 0.5, (v, d)).astype(np.float32), "model.norm.weight": (1 + 0.1 * rng.normal(size=d)).astype(np.float32)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = linear(q, d)
        w[p + "self_attn.k_proj.weight"] = linear(kv, d)
        w[p + "self_attn.v_proj.weight"] = linear(kv, d)
        w[p + "self_attn.o_proj.weight"] = linear(d, q)
        w[p + "mlp.gate_proj.weight"] = linear(f, d)
        w[p + "mlp.up_proj.weight"] = linear(f, d)
        w[p + "mlp.down_proj.weight"] = linear(d, f)
        w[p + "input_layernorm.weight"] = (1 + 0.1 * rng.normal(size=d)).astype(np.float32)
        w[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.normal(size=d)).astype(np.float32)
        if sandwich:  # norms on each half's output and the MLP's own input norm (Gemma 3)
            for name in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
                w[p + name + ".weight"] = (1 + 0.1 * rng.normal(size=d)).astype(np.float32)
        if qk_norm:  # per-head q and k norms (Qwen3)
            w[p + "self_attn.q_norm.weight"] = (1 + 0.1 * rng.normal(size=hd)).astype(np.float32)
            w[p + "self_attn.k_norm.weight"] = (1 + 0.1 * rng.normal(size=hd)).astype(np.float32)
        if config.get("attention_bias"):
            for name, n in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
                w[p + f"self_attn.{name}.bias"] = (0.1 * rng.normal(size=n)).astype(np.float32)
    if not config.get("tie_word_embeddings", True):
        w["lm_head.weight"] = linear(v, d)
    if getattr(family, "fused_projections", False):  # Phi-3: q | k | v and gate | up as one layer each
        for i in range(config["num_hidden_layers"]):
            p = f"model.layers.{i}."
            w[p + "self_attn.qkv_proj.weight"] = np.concatenate([w.pop(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
            w[p + "mlp.gate_up_proj.weight"] = np.concatenate([w.pop(p + f"mlp.{n}_proj.weight") for n in ("gate", "up")])
    return w


def make_tiny_model(out_dir: Path, seed: int = 0, dtype: str = "float32", **config_overrides) -> Path:
    """Write a random tiny llama-family model directory and return its path."""
    from mlxtune.formats import safetensors as npio

    out_dir = Path(out_dir)
    vocab = make_tokenizer(out_dir)
    config = tiny_config(vocab, **config_overrides)
    weights = tiny_weights(config, seed)
    if dtype == "float16":
        weights = {k: v.astype("float16") for k, v in weights.items()}
    npio.write_safetensors(out_dir / "model.safetensors", weights, metadata={"format": "mlx"}, bf16=set(weights) if dtype == "bfloat16" else None)
    config["torch_dtype"] = dtype
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def chat_template_fixtures() -> dict:
    """The chat templates of real models (tests/chat_templates.json: each with its source, special tokens and eos settings)."""
    return json.loads((Path(__file__).parent / "chat_templates.json").read_text(encoding="utf-8"))


def make_chat_model(out_dir: Path, family: str, seed: int = 0, first: str | None = None) -> Path:
    """A tiny random model whose tokenizer has ``family``'s special tokens, chat template and eos settings
    (tokenizer_config.json, config.json's eos_token_id, generation_config.json's eos list), as the real model's files have them.

    ``first``: the special token to give id 0 (the others follow in the fixture's order).
    """
    from mlxtune.formats import safetensors as npio

    fx = chat_template_fixtures()[family]
    out_dir = Path(out_dir)
    special = [t for t in [first] if t] + [t for t in fx["special_tokens"] if t != first]
    vocab = make_tokenizer(out_dir, special=special)
    ids = {t: i for i, t in enumerate(special)}
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": fx["chat_template"], "model_max_length": 2048, "clean_up_tokenization_spaces": False}
    tok_config |= {k: fx[k] for k in ("bos_token", "eos_token", "pad_token") if fx[k]}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps({k: fx[k] for k in ("bos_token", "eos_token", "pad_token") if fx[k]}))
    if fx["generation_eos"]:
        (out_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [ids[t] for t in fx["generation_eos"]]}))
    config = tiny_config(vocab, bos_token_id=ids.get(fx["bos_token"]), eos_token_id=ids[fx["eos_token"]])
    npio.write_safetensors(out_dir / "model.safetensors", tiny_weights(config, seed), metadata={"format": "mlx"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir
