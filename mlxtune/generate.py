"""``mlxtune generate``: text from a model, with or without an adapter.

Loading and decoding are ``inference``'s (the chosen backend's, with a KV
cache); what is here is the user's prompt through the chat template (or not,
with a system message or without) and the checks of the sampling settings.
"""

from __future__ import annotations

from typing import Iterator

from .backends.base import Chunk
from .inference import Loaded, build_prompt, check_sampling, stream


def generate(loaded: Loaded, prompt: str, max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0, seed: int | None = None, chat: bool = True, system: str | None = None) -> Iterator[Chunk]:
    """Stream the continuation of ``prompt`` chunk by chunk."""
    check_sampling(max_tokens, temp, top_p)
    yield from stream(loaded, build_prompt(loaded.tokenizer, prompt, chat, system), max_tokens, temp, top_p, seed)
