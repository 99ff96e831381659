"""A model, with or without an adapter, loaded for inference: what generate, eval, report and fuse share.

Loading and decoding (with a KV cache) are the chosen backend's
(``backends.base.Backend``); what is here is choosing the model (an adapter
remembers its base) and the backend, token ids for a prompt (chat messages or
text), greedy answers, and the loss over records as training counts it. The
commands (``generate``, ``evaluate``, ``report``, ``fuse``) build on it; none of
them is imported by another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .backends.base import Chunk
from .errors import UsageError

if TYPE_CHECKING:
    from .data.formats import DataFormat


@dataclass
class Loaded:
    model: object
    tokenizer: object  # mlx: mlx-lm's TokenizerWrapper; numpy: the Hugging Face tokenizer
    model_dir: Path
    adapter: Path | None
    notes: list[str]
    backend: str = "mlx"
    eos_ids: set[int] = field(default_factory=set)
    thinking: bool = False  # the chat template renders with thinking on (enable_thinking), else off


def load(model: str | None, adapter: str | Path | None = None, offline: bool | None = None, revision: str | None = None, dtype: str | None = None, backend: str | None = "auto", thinking: bool | None = None) -> Loaded:
    """Load a model (and adapter) for inference with the chosen backend.

    ``thinking``: render chats with the template's thinking mode on (Qwen3, SmolLM3)
    [default: as the adapter's run was trained (off unless it was trained with --thinking); off without an adapter].
    """
    from .backends import backend_for, choose_backend, get, mlx_available
    from .data.rendering import hf_tokenizer
    from .models.chat_template import set_thinking
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
    if thinking is None:
        thinking = RunConfig.from_file(adapter_path).thinking if adapter_path is not None else False
    set_thinking(hf_tokenizer(tokenizer), thinking)
    return Loaded(net, tokenizer, model_dir, adapter_path, notes, backend, eos_ids, thinking)


def load_model_or_run_base(run_dir: str | Path | None, model: str | None, adapter: Path | None, backend: str = "auto", offline: bool | None = None) -> tuple[Loaded, list[str]]:
    """(the loaded model, notes on finding it): ``model`` (with ``adapter``), or, with neither, the base ``run_dir`` was trained on.

    The notes are those of finding the run's base; loading ``model`` keeps its own in ``Loaded.notes``.
    Chats render as the run rendered them (its thinking setting), whichever of the models is loaded,
    so that losses and answers of the base, the tuned and the fused model compare alike.
    """
    from .training.run_schema import RunConfig

    thinking = RunConfig.from_file(Path(run_dir)).thinking if run_dir is not None else None
    if adapter is None and model is None:
        from .models.source import run_base_model

        base = run_base_model(Path(run_dir), None, offline)
        return load(str(base.path), backend=backend, offline=offline, thinking=thinking), list(base.notes)
    return load(model, adapter=adapter, backend=backend, offline=offline, thinking=thinking), []


def chat_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation rendered by the chat template, ready for the assistant's turn."""
    from .data.batching import hf_tokenizer

    hf = hf_tokenizer(tokenizer)
    text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return hf.encode(text, add_special_tokens=False)


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


def prompt_ids(tokenizer, prompt: Any) -> list[int]:
    """Token ids of a record's prompt (chat messages, or a string: a user turn where the model has a chat template)."""
    from .data.rendering import hf_tokenizer

    hf = hf_tokenizer(tokenizer)
    if not getattr(hf, "chat_template", None):  # messages (an Alpaca system and user turn): their texts, as plain training joins them
        return hf.encode(prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt))
    if isinstance(prompt, str):
        return chat_prompt(tokenizer, [{"role": "user", "content": prompt}])
    return chat_prompt(tokenizer, prompt)


def check_sampling(max_tokens: int, temp: float, top_p: float) -> None:
    """Raise ``UsageError`` for sampling settings no backend can decode with."""
    from .errors import UsageError

    if max_tokens <= 0:
        raise UsageError("--max-tokens must be positive")
    if temp < 0 or not 0 < top_p <= 1:
        raise UsageError("--temp must be >= 0 and --top-p in (0, 1]")


def stream(loaded: Loaded, ids: list[int], max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> Iterator[Chunk]:
    """Stream the continuation of the token ids ``ids`` chunk by chunk."""
    from .backends import get

    yield from get(loaded.backend).stream(loaded.model, loaded.tokenizer, loaded.eos_ids, ids, max_tokens, temp, top_p, seed)


def complete(loaded: Loaded, ids: list[int], max_tokens: int) -> str:
    """The greedy continuation of the token ids ``ids``, as text (up to an end token or ``max_tokens``)."""
    return "".join(c.text for c in stream(loaded, ids, max_tokens))


def answers(loaded: Loaded, prompts: list, max_tokens: int, on_each: Callable[[int], None] = lambda done: None) -> list[str]:
    """The greedy answers of a loaded model to prompts (chat messages or strings)."""
    out = []
    for prompt in prompts:
        out.append(complete(loaded, prompt_ids(loaded.tokenizer, prompt), max_tokens).strip())
        on_each(len(out))
    return out


def mean_loss(loaded: Loaded, records: list, fmt: DataFormat, mask_prompt: bool, max_seq_len: int, batch_size: int = 4) -> tuple[float | None, int]:
    """Mean cross-entropy over the records' target tokens (as training encodes them), and their number."""
    import numpy as np

    from .backends import get
    from .data.batching import encode_dataset, make_batch

    impl = get(loaded.backend)
    examples, _ = encode_dataset(records, fmt, loaded.tokenizer, mask_prompt, max_seq_len)
    examples.sort(key=len)
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = make_batch(examples[i : i + batch_size])
        summed, n = impl.summed_loss(loaded.model, batch)
        total += summed
        count += int(n)
    if not count:
        return None, 0
    return float(np.float64(total) / count), count


@dataclass
class Switchable:
    """A base model loaded once with adapters attached, one selected per request (what ``serve`` answers with).

    ``loaded`` is the base (``loaded.model`` decodes with whichever adapter is selected);
    ``adapters`` maps each adapter's name (its run directory's name) to its directory.
    """

    loaded: Loaded
    base_name: str
    adapters: dict[str, Path]
    adapter_set: Any  # a backends.base.AdapterSet
    thinking: dict[str | None, bool]  # each adapter's (and the base's, under None) chat rendering

    def select(self, name: str | None) -> None:
        """Make adapter ``name`` (None: the base) the one decoding uses, with its chat rendering."""
        from .data.rendering import hf_tokenizer
        from .models.chat_template import set_thinking

        self.adapter_set.select(name)
        set_thinking(hf_tokenizer(self.loaded.tokenizer), self.thinking[name])


def load_switchable(model: str | None, adapters: list[str | Path], offline: bool | None = None, dtype: str | None = None, backend: str | None = "auto") -> Switchable:
    """Load the base once and attach every adapter (run or PEFT directories) for switching per request.

    The base is ``model``, else the one the adapters were trained on (all the same one).
    Call from the thread that will decode: generation is not thread-safe, and mlx ties arrays to a thread's stream.
    """
    from .backends import backend_for, choose_backend, get, mlx_available
    from .errors import UsageError
    from .formats.peft import as_mlx_adapter
    from .models.source import open_model, run_base_model
    from .training.run_schema import RunConfig

    choose_backend(backend, mlx_available())
    named: dict[str, Path] = {}
    for given in adapters:
        name = Path(given).resolve().name
        if name in named:
            raise UsageError(f"two adapters are named {name!r} (their directories' names): rename one of the run directories")
        named[name] = Path(as_mlx_adapter(given))
    opened, spec = None, model
    for name, directory in named.items():
        this = run_base_model(directory, model, offline)
        if opened is not None and this.path.resolve() != opened.path.resolve():
            raise UsageError(f"adapter {name!r} was trained on {this.path}, another base than {opened.path}: serve one base at a time, or pass --model")
        opened = opened or this
        if spec is None:
            spec = this.source.spec
    if opened is None:
        opened = open_model(model, offline=offline)
        spec = opened.source.spec
    base_name = Path(spec).name if spec and Path(spec).exists() else (spec or opened.path.name)
    if base_name in named:
        raise UsageError(f"an adapter has the base model's name {base_name!r}: rename its run directory")
    configs = {name: RunConfig.from_file(d) for name, d in named.items()}
    chosen = backend_for(backend, opened.path, mlx_only="DoRA" if any(c.dora for c in configs.values()) else None)
    adapter_set, tokenizer, eos_ids = get(chosen).load_adapter_set(opened.path, named, dtype)
    loaded = Loaded(adapter_set.model, tokenizer, opened.path, None, list(opened.notes), chosen, eos_ids, False)
    thinking: dict[str | None, bool] = {None: False, **{name: c.thinking for name, c in configs.items()}}
    switchable = Switchable(loaded, base_name, named, adapter_set, thinking)
    switchable.select(None)
    return switchable
