"""``mlxtune generate``: text from a model, with or without an adapter.

Decoding is mlx-lm's (KV cache, streaming detokenizer, samplers); what is ours
is choosing the model (the adapter remembers its base), the compute policy of
``runtime`` and the chat template handling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import UsageError


@dataclass
class Loaded:
    model: object
    tokenizer: object
    model_dir: Path
    adapter: Path | None
    notes: list[str]


@dataclass
class Chunk:
    text: str
    token: int
    prompt_tokens: int
    generation_tps: float
    finish_reason: str | None


def load(model: str | None, adapter: str | Path | None = None, offline: bool | None = None, revision: str | None = None, dtype: str | None = None) -> Loaded:
    """Load a model (and adapter) for inference under this machine's compute policy."""
    from . import runtime
    from .backends.mlx import load_model, load_tokenizer
    from .convert import ensure_mlx_model
    from .fuse import base_model_dir
    from .hub import resolve_model
    from .lora import load_adapters

    notes: list[str] = []
    if adapter is not None:
        model_dir, notes = base_model_dir(Path(adapter), model, offline)
    else:
        source = resolve_model(model, revision=revision, offline=offline)
        if source.note:
            notes.append(source.note)
        model_dir = ensure_mlx_model(source)
    compute = runtime.choose_compute(runtime.current_device(), dtype)
    net, config = load_model(model_dir, compute)
    if adapter is not None:
        load_adapters(net, Path(adapter))
    net.eval()
    tokenizer = load_tokenizer(model_dir, config)
    return Loaded(net, tokenizer, model_dir, Path(adapter) if adapter else None, notes)


def build_prompt(tokenizer, prompt: str, chat: bool = True, system: str | None = None) -> list[int]:
    """Token ids for ``prompt``: through the chat template when the model has one and ``chat``."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    if chat and getattr(hf, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return hf.encode(text, add_special_tokens=False)
    if system:
        raise UsageError("--system needs a chat model (this model has no chat template) and is ignored with --no-chat")
    return hf.encode(prompt)


def generate(loaded: Loaded, prompt: str, max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0, seed: int | None = None, chat: bool = True, system: str | None = None) -> Iterator[Chunk]:
    """Stream the continuation of ``prompt`` chunk by chunk."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    if max_tokens <= 0:
        raise UsageError("--max-tokens must be positive")
    if temp < 0 or not 0 < top_p <= 1:
        raise UsageError("--temp must be >= 0 and --top-p in (0, 1]")
    if seed is not None:
        mx.random.seed(seed)
    ids = build_prompt(loaded.tokenizer, prompt, chat, system)
    sampler = make_sampler(temp=temp, top_p=top_p if top_p < 1 else 0.0)
    for r in stream_generate(loaded.model, loaded.tokenizer, ids, max_tokens=max_tokens, sampler=sampler):
        yield Chunk(r.text, int(r.token), r.prompt_tokens, r.generation_tps, r.finish_reason)
