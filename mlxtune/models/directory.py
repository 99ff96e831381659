"""What an MLX (or Hugging Face) model directory holds besides its weights, the quantizations mlxtune writes, and the dtype it writes.

convert writes such a directory, fuse writes one from a base and an adapter,
and the Hugging Face export copies one: all three copy the same tokenizer and
generation files and accept the same quantization settings, and fuse and the
Hugging Face export store the weights in the same dtype unless asked
(``default_dtype``). These live here so that none of them imports another
command's module.
"""

from __future__ import annotations

from pathlib import Path

# The files beside config.json and the weights that a loader needs (tokenizer, chat template, generation defaults).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
# mlx's affine quantization as mlxtune writes it: bits per weight, and weights per scale/bias group.
Q_BITS = (4, 8)
Q_GROUP_SIZES = (32, 64, 128)


def default_dtype(model_dir: str | Path) -> str:
    """The dtype fused and exported weights are stored in unless asked: the model's own, float16 when it is quantized.

    The precision the base was published in, so a fused model is the size of
    its base and claims nothing its weights never had; float16 for a quantized
    base, the dtype its scales (and mlx's computation) are in.
    """
    from .config import read_config

    config = read_config(model_dir)
    return "float16" if config.get("quantization") else _stored_dtype(Path(model_dir), config)


def _stored_dtype(model_dir: Path, config: dict) -> str:
    """The floating-point dtype a model directory stores its weights in."""
    from ..formats.safetensors import read_safetensors_header

    for f in sorted(model_dir.glob("model*.safetensors")):
        header, _ = read_safetensors_header(f)
        for name, info in header.items():
            if name.endswith(".weight") and info["dtype"] in ("F32", "F16", "BF16"):
                return {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[info["dtype"]]
    return str(config.get("torch_dtype") or "float32")
