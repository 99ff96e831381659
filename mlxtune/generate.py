"""``mlxtune generate``: text from a model, with or without an adapter.

Loading and decoding (with a KV cache) are the chosen backend's
(``backends.base.Backend``); what is here is choosing the model (the adapter
remembers its base), the backend and the chat template handling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .backends.base import Chunk
from .errors import UsageError


@dataclass
class Loaded:
    model: object
    tokenizer: object  # mlx: mlx-lm's TokenizerWrapper; numpy: the Hugging Face tokenizer
    model_dir: Path
    adapter: Path | None
    notes: list[str]
    backend: str = "mlx"
    eos_ids: set[int] = field(default_factory=set)


def load(model: str | None, adapter: str | Path | None = None, offline: bool | None = None, revision: str | None = None, dtype: str | None = None, backend: str | None = "auto") -> Loaded:
    """Load a model (and adapter) for inference with the chosen backend."""
    from .backends import backend_for, choose_backend, get, mlx_available
    from .models.source import open_model, run_base_model
    from .training.run_schema import RunConfig

    choose_backend(backend, mlx_available())  # a bad or unavailable choice fails before any loading
    if adapter is not None:
        from .formats.peft import as_mlx_adapter

        adapter = as_mlx_adapter(adapter)  # a PEFT adapter directory works too
        opened = run_base_model(Path(adapter), model, offline)
    else:
        opened = open_model(model, revision=revision, offline=offline)
    model_dir, notes = opened.path, list(opened.notes)
    adapter_path = Path(adapter) if adapter else None
    dora = adapter_path is not None and RunConfig.from_file(adapter_path).dora
    backend = backend_for(backend, model_dir, mlx_only="DoRA" if dora else None)
    net, tokenizer, eos_ids = get(backend).load_inference(model_dir, adapter_path, dtype)
    return Loaded(net, tokenizer, model_dir, adapter_path, notes, backend, eos_ids)


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


def chat_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation rendered by the chat template, ready for the assistant's turn."""
    from .data.batching import hf_tokenizer

    hf = hf_tokenizer(tokenizer)
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return hf.encode(text, add_special_tokens=False)


def generate(loaded: Loaded, prompt: str, max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0, seed: int | None = None, chat: bool = True, system: str | None = None) -> Iterator[Chunk]:
    """Stream the continuation of ``prompt`` chunk by chunk."""
    if max_tokens <= 0:
        raise UsageError("--max-tokens must be positive")
    if temp < 0 or not 0 < top_p <= 1:
        raise UsageError("--temp must be >= 0 and --top-p in (0, 1]")
    yield from stream(loaded, build_prompt(loaded.tokenizer, prompt, chat, system), max_tokens, temp, top_p, seed)


def complete(loaded: Loaded, ids: list[int], max_tokens: int) -> str:
    """The greedy continuation of the token ids ``ids``, as text (up to an end token or ``max_tokens``)."""
    return "".join(c.text for c in stream(loaded, ids, max_tokens))


def stream(loaded: Loaded, ids: list[int], max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> Iterator[Chunk]:
    """Stream the continuation of the token ids ``ids`` chunk by chunk."""
    from .backends import get

    yield from get(loaded.backend).stream(loaded.model, loaded.tokenizer, loaded.eos_ids, ids, max_tokens, temp, top_p, seed)
