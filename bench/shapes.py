"""Models of real sizes with random weights, for ``bench_train.py --shape``: the speed and memory of a family at its
real size without downloading it.

    python bench/bench_train.py --shape qwen3-0.6b --systems mlxtune-mlx,mlxtune-numpy --steps 4 --warmup 1

A shape is a config.json of the real model (its sizes, norms and rotary
settings) with random float32 weights of the scale of a trained model. The
tokenizer is the benchmark's own model's (SmolLM2's, unless ``--model``), whose
ids all lie below the shape's vocabulary: the batches are the same token
sequences as in the other rows, and the embedding and output head have the real
model's size. Training figures of random weights are the figures of the real
model (the same matmuls); its losses are not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# Qwen3-0.6B's config.json (Qwen/Qwen3-0.6B), transformers 4 layout.
QWEN3_0_6B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "max_position_embeddings": 40960,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "hidden_act": "silu",
    "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 28,
    "torch_dtype": "float32",
}
# Gemma 3 270M's config.json (google/gemma-3-270m), transformers 4 layout: every 6th of its 18 layers global,
# the others within 512 positions; a 262k vocabulary, tied.
GEMMA3_270M = {
    "architectures": ["Gemma3ForCausalLM"],
    "model_type": "gemma3_text",
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
    "sliding_window": 512,
    "sliding_window_pattern": 6,
    "max_position_embeddings": 32768,
    "vocab_size": 262144,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "hidden_activation": "gelu_pytorch_tanh",
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "torch_dtype": "float32",
}
# Phi-4-mini's config.json (microsoft/Phi-4-mini-instruct), transformers 4 layout, with 4 of its 32 layers: its
# widths (fused qkv and gate_up, 3/4 of each head rotating, LongRoPE) and its 200k tied vocabulary at a size a 2-core
# machine steps through in seconds. The LongRoPE factors are placeholders of the right length (48: half of the 96
# rotated dims): the speed does not depend on their values.
PHI4_MINI_4L = {
    "architectures": ["Phi3ForCausalLM"],
    "model_type": "phi3",
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 4,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.75,
    "rope_scaling": {"type": "longrope", "short_factor": [1.0 + 0.01 * i for i in range(48)], "long_factor": [1.0 + 0.5 * i for i in range(48)]},
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
    "sliding_window": 262144,
    "vocab_size": 200064,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "hidden_act": "silu",
    "torch_dtype": "float32",
}
SHAPES = {"qwen3-0.6b": QWEN3_0_6B, "gemma3-270m": GEMMA3_270M, "phi4-mini-4l": PHI4_MINI_4L}


def write_random_model(out: Path, shape: str, tokenizer_dir: Path, seed: int = 0) -> Path:
    """A model directory of ``shape``'s config, random float32 weights (Hugging Face names) and ``tokenizer_dir``'s tokenizer."""
    import numpy as np

    from mlxtune.formats import safetensors as npio
    from mlxtune.models.directory import TOKENIZER_FILES
    from mlxtune.models.layout import ModelConfig, expected_shapes

    config = dict(SHAPES[shape])
    tokenizer_config = json.loads((tokenizer_dir / "config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # the tokenizer's, not Qwen3's ids
        if tokenizer_config.get(key) is not None:
            config[key] = tokenizer_config[key]
    rng = np.random.default_rng(seed)
    weights = {}
    cfg = ModelConfig.from_dict(config)
    for name, dims in expected_shapes(cfg).items():
        if len(dims) == 1:  # norms, multiplying by about 1 (a family that stores w - 1: about 0)
            weights[name] = (1 - cfg.norm_offset + 0.05 * rng.standard_normal(dims, dtype=np.float32)).astype(np.float32)
        else:  # projections and the embedding, at the scale of a trained model
            weights[name] = rng.standard_normal(dims, dtype=np.float32) * np.float32(0.02)
    out.mkdir(parents=True, exist_ok=True)
    npio.write_safetensors(out / "model.safetensors", weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file() and name != "generation_config.json":
            shutil.copy(tokenizer_dir / name, out / name)
    return out
