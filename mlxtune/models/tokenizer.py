"""The Hugging Face tokenizer of a model directory, for either backend."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ModelFormatError
from .chat_template import set_thinking


def load_tokenizer(model_dir: str | Path, thinking: bool = False):
    """``transformers``' fast tokenizer (the one mlx-lm wraps), with chat template and offsets.

    Its chat template renders with thinking off unless ``thinking``
    (``chat_template.set_thinking``: templates with an ``enable_thinking`` switch).

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

            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{model_dir}: cannot load its tokenizer ({e}); the model directory needs tokenizer.json or tokenizer.model and tokenizer_config.json") from None
    set_thinking(tokenizer, thinking)
    return tokenizer


def stop_token_ids(model_dir: str | Path, tokenizer, config: dict | None = None) -> set[int]:
    """Every id that ends a generation, as the model's files say: the tokenizer's eos (tokenizer_config.json),
    config.json's and generation_config.json's ``eos_token_id`` (an id or a list: Llama 3's <|eot_id|> and
    <|eom_id|>, Gemma 3's <end_of_turn>), and the token the chat template ends an assistant turn with
    (``chat_template.end_of_turn``: Phi-3's <|end|>, whose eos is <|endoftext|>)."""
    from .chat_template import end_of_turn

    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    generation = Path(model_dir) / "generation_config.json"
    try:
        gen = json.loads(generation.read_text(encoding="utf-8")) if generation.is_file() else {}
    except (OSError, ValueError):
        gen = {}  # an unreadable generation config adds nothing (as mlx-lm's load_config ignores it)
    for eos in ((config or {}).get("eos_token_id"), gen.get("eos_token_id") if isinstance(gen, dict) else None):
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list):
            ids.update(int(e) for e in eos if isinstance(e, int))
    if getattr(tokenizer, "chat_template", None):
        ids.update(end_of_turn(tokenizer))
    return ids
