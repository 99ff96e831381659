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


def make_tokenizer(out_dir: Path, vocab_size: int = 320) -> int:
    """Train a byte-level BPE tokenizer into ``out_dir``; returns its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
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


def make_tiny_model(out_dir: Path, seed: int = 0, dtype: str = "float32", **config_overrides) -> Path:
    """Write a random tiny llama-family model directory and return its path."""
    import mlxtune  # noqa: F401  (BLAS before mlx)
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    out_dir = Path(out_dir)
    vocab = make_tokenizer(out_dir)
    config = tiny_config(vocab, **config_overrides)
    mx.random.seed(seed)
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    weights = {k: v.astype(getattr(mx, dtype)) for k, v in tree_flatten(model.parameters())}
    # Random init leaves the norms at 1 and the output near uniform; scale the
    # embeddings so that logits carry some signal and tests see real differences.
    weights["model.embed_tokens.weight"] = (weights["model.embed_tokens.weight"] * 4).astype(getattr(mx, dtype))
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir
