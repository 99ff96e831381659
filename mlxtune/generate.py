"""``mlxtune generate``: text from a model, with or without an adapter.

Loading and decoding are ``inference``'s (the chosen backend's, with a KV
cache); what is here is the user's prompt through the chat template (or not,
with a system message or without) and the checks of the sampling settings.
"""

from __future__ import annotations

from typing import Iterator

from .backends.base import Chunk
from .errors import UsageError
from .inference import Loaded, chat_prompt, check_sampling, stream


def build_prompt(tokenizer, prompt: str, chat: bool = True, system: str | None = None) -> list[int]:
    """Token ids for ``prompt``: through the chat template when the model has one and ``chat``."""
    from .data.batching import hf_tokenizer

    hf = hf_tokenizer(tokenizer)
    if chat and getattr(hf, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return chat_prompt(tokenizer, messages)
    if system:
        raise UsageError("--system needs a chat model (this model has no chat template) and is ignored with --no-chat")
    return hf.encode(prompt)


def generate(loaded: Loaded, prompt: str, max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0, seed: int | None = None, chat: bool = True, system: str | None = None) -> Iterator[Chunk]:
    """Stream the continuation of ``prompt`` chunk by chunk."""
    check_sampling(max_tokens, temp, top_p)
    yield from stream(loaded, build_prompt(loaded.tokenizer, prompt, chat, system), max_tokens, temp, top_p, seed)
