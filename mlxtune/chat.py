"""``mlxtune chat``: a conversation with a model (and adapter), turn by turn.

Loading and decoding are ``inference``'s; what is here is the conversation: its
history rendered through the model's chat template for every answer, the
history trimmed from its oldest turns when it no longer fits the model's
context, and the session's commands (``/reset``, ``/settings``, ``/help``,
``/quit``). The CLI reads the lines, prints and decides what Ctrl-C does.

An answer stopped part way (Ctrl-C) stays in the history as far as it got, so
that the model sees what the user saw; an answer stopped before it said
anything but blanks is dropped together with its question.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from .backends.base import Chunk
from .errors import UsageError
from .inference import Loaded, chat_prompt, check_sampling, stream

COMMANDS = {
    "/reset": "forget the conversation (the system message stays)",
    "/settings": "show the model, adapter, backend and sampling settings",
    "/help": "list these commands",
    "/quit": "end the session (also Ctrl-D, or Ctrl-C at the prompt)",
}


@dataclass
class Sampling:
    """How each answer is decoded: the options ``generate`` takes."""

    max_tokens: int = 256
    temp: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def check(self) -> None:
        check_sampling(self.max_tokens, self.temp, self.top_p)


@dataclass
class Command:
    """A line that is one of the session's commands rather than a user turn."""

    name: str  # a key of COMMANDS
    settings: dict[str, str] = field(default_factory=dict)  # for /settings: what to show, in order


@dataclass
class Trim:
    """What fitting the conversation into the context dropped."""

    turns: int  # user turns (with their answers) dropped now
    context: int  # the model's context, in tokens
    first: bool  # the first trimming of this session (the one to tell the user about)


def context_length(config: dict) -> int | None:
    """The model's context in tokens (``max_position_embeddings``, a multimodal model's text part's), if its config says."""
    n = config.get("max_position_embeddings") or (config.get("text_config") or {}).get("max_position_embeddings")
    return int(n) if n else None


class ChatSession:
    """The conversation with one loaded model: its history, and the answer to each new user turn.

    ``context``: the model's context in tokens [default: its config's ``max_position_embeddings``; None: never trim].
    Each prompt is kept within the context less room for the answer (``max_tokens``, at most half the
    context); each answer then stops where the context ends.
    """

    def __init__(self, loaded: Loaded, sampling: Sampling, system: str | None = None, context: int | None = None, model_name: str | None = None):
        from .data.rendering import has_chat_template, hf_tokenizer
        from .models.config import read_config

        if not has_chat_template(hf_tokenizer(loaded.tokenizer)):
            raise UsageError(f"{model_name or loaded.model_dir} has no chat template, so it cannot chat; use mlxtune generate --no-chat --prompt ... instead")
        sampling.check()
        self.loaded = loaded
        self.sampling = sampling
        self.system = system
        self.context = context if context is not None else context_length(read_config(loaded.model_dir))
        self.model_name = model_name or str(loaded.model_dir)
        self.history: list[dict] = []  # user and assistant messages, oldest first (the system message is apart)
        self.last_prompt: list[int] = []  # the token ids of the last prompt answered
        self.trimmed = 0  # user turns dropped from the history to fit the context, this session
        self._render("hello")  # a template that refuses the system message refuses it now, not at the first turn

    def _render(self, user: str) -> list[int]:
        from jinja2.exceptions import TemplateError

        try:
            return chat_prompt(self.loaded.tokenizer, self.messages(user))
        except TemplateError as e:
            hint = "; it may not take a system message: try without --system" if self.system else ""
            raise UsageError(f"the chat template of {self.model_name} refuses this conversation: {e}{hint}") from e

    def messages(self, user: str | None = None) -> list[dict]:
        """The conversation as the chat template takes it: system message, history, and ``user``'s new turn."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history + ([{"role": "user", "content": user}] if user is not None else [])

    def prompt(self, user: str) -> tuple[list[int], Trim | None]:
        """The token ids of the conversation with ``user``'s new turn, ready for the answer; the oldest turns are
        dropped from the history when it does not fit the context (what was dropped is returned)."""
        ids = self._render(user)
        if self.context is None:
            return ids, None
        budget = self.context - min(self.sampling.max_tokens, self.context // 2)
        dropped = 0
        while len(ids) > budget and self.history:
            self._drop_oldest_turn()
            dropped += 1
            ids = self._render(user)
        if len(ids) > budget:
            with_system = " with the system message" if self.system else ""
            raise UsageError(f"this message takes {len(ids)} tokens{with_system}, more than the {budget} the model's context of {self.context} leaves beside room for an answer; shorten it, or lower --max-tokens")
        trim = None
        if dropped:
            trim = Trim(dropped, self.context, first=self.trimmed == 0)
            self.trimmed += dropped
        return ids, trim

    def _drop_oldest_turn(self) -> None:
        """Drop the oldest user message and everything up to the next one (its answer)."""
        end = next((i for i in range(1, len(self.history)) if self.history[i]["role"] == "user"), len(self.history))
        del self.history[:end]

    def reply(self, user: str, ids: list[int]) -> Iterator[Chunk]:
        """Stream the answer to ``user``'s turn (``ids``: its prompt, from ``prompt``), adding both to the history.

        Closing the stream early (the user stopped the answer) keeps what was answered so far;
        an answer stopped before it said anything but blanks is dropped with its question.
        """
        self.last_prompt = ids
        limit = self.sampling.max_tokens if self.context is None else max(1, min(self.sampling.max_tokens, self.context - len(ids)))
        parts: list[str] = []
        finished = False
        try:
            for chunk in stream(self.loaded, ids, limit, self.sampling.temp, self.sampling.top_p, self.sampling.seed):
                parts.append(chunk.text)
                yield chunk
            finished = True
        finally:
            answer = "".join(parts).strip()
            if finished or answer:
                self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]

    def ask(self, user: str) -> Iterator[Chunk]:
        """``prompt`` and ``reply`` in one, for callers that need not hear about trimming."""
        ids, _ = self.prompt(user)
        return self.reply(user, ids)

    def reset(self) -> None:
        """Forget the conversation; the system message and the settings stay."""
        self.history.clear()
        self.last_prompt = []

    def settings(self) -> dict[str, str]:
        """What /settings shows: name -> value, in order."""
        from .backends import get

        s = self.sampling
        turns = sum(m["role"] == "user" for m in self.history)
        return {
            "model": self.model_name if self.model_name == str(self.loaded.model_dir) else f"{self.model_name} ({self.loaded.model_dir})",
            "adapter": str(self.loaded.adapter) if self.loaded.adapter else "none",
            "backend": f"{self.loaded.backend} ({get(self.loaded.backend).describe()})",
            "system": self.system or "none",
            "thinking": "on" if self.loaded.thinking else "off",
            "max tokens": str(s.max_tokens),
            "temperature": f"{s.temp:g}" + (" (greedy)" if s.temp == 0 else ""),
            "top p": f"{s.top_p:g}",
            "seed": "none" if s.seed is None else str(s.seed),
            "context": "unknown" if self.context is None else f"{self.context} tokens",
            "history": f"{turns} turn{'' if turns == 1 else 's'}" + (f" ({self.trimmed} older ones dropped to fit the context)" if self.trimmed else ""),
        }

    def command(self, line: str) -> Command | None:
        """The command ``line`` names (carried out: /reset forgets), or None for a user turn.

        A line starting with "/" must name a command; "//" starts a user turn with "/".
        """
        text = line.strip()
        if not text.startswith("/") or text.startswith("//"):
            return None
        name = text.split()[0].lower()
        if name not in COMMANDS:
            raise UsageError(f"unknown command {name}; the commands are {', '.join(COMMANDS)} (start a message with // to send a /)")
        if name == "/reset":
            self.reset()
        return Command(name, self.settings() if name == "/settings" else {})


def user_text(line: str) -> str:
    """The user's turn a line holds ("//" at its start stands for "/")."""
    text = line.strip()
    return text[1:] if text.startswith("//") else text
