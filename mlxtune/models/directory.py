"""What an MLX (or Hugging Face) model directory holds besides its weights, and the quantizations mlxtune writes.

convert writes such a directory, fuse writes one from a base and an adapter,
and the Hugging Face export copies one: all three copy the same tokenizer and
generation files and accept the same quantization settings, which live here so
that none of them imports another command's module.
"""

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
