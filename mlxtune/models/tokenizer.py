"""The Hugging Face tokenizer of a model directory, for either backend."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelFormatError


def load_tokenizer(model_dir: str | Path):
    """``transformers``' fast tokenizer (the one mlx-lm wraps), with chat template and offsets.

    A directory with a ``tokenizer.json`` gets ``PreTrainedTokenizerFast``
    straight away, which is what ``AutoTokenizer`` builds from that file:
    going through ``AutoTokenizer`` imports the model configuration modules,
    and with them PyTorch when it is installed (about 270 MB of resident
    memory that the numpy backend would carry through a whole run). Other
    directories (a sentencepiece ``tokenizer.model`` only) use ``AutoTokenizer``.
    """
    # transformers advises installing PyTorch on import; mlxtune needs only its tokenizers.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        if (Path(model_dir) / "tokenizer.json").is_file():
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{model_dir}: cannot load its tokenizer ({e}); the model directory needs tokenizer.json or tokenizer.model and tokenizer_config.json") from None


def eos_token_ids(tokenizer, config: dict | None = None) -> set[int]:
    """Every id that ends a generation: the tokenizer's eos and the model config's."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = (config or {}).get("eos_token_id")
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(int(e) for e in eos)
    return ids
