"""What every data format is (``DataFormat``), and the field checks they share.

The formats themselves are in ``formats`` (text, prompt/completion, Alpaca,
preference pairs: the registry every module asks) and ``chat_formats`` (the
message-based ones: OpenAI chat and ShareGPT).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import DataError
from .rendering import Where

Fail = Callable[[str | None, str], DataError]  # fail(field, message): the error to raise for this record


class DataFormat:
    """One kind of record. Subclasses set the class attributes and implement the methods."""

    name: str = ""  # stable id: adapter_config.json, data check --json
    title: str = ""  # for people: "prompt/completion"
    fields: tuple[str, ...] = ()  # what the model is trained on; other keys are ignored
    marks: tuple[str, ...] = ()  # the keys that mark a record of it (any one of them), in detection order
    shape: str = ""  # a record of it, in brief, for messages
    masks_prompt: bool = False  # --mask-prompt's default: train the answers only
    has_answers: bool = False  # a record poses a prompt with a reference answer: eval generates, the report shows samples
    trainable: bool = True  # False: supervised fine-tuning cannot train on it (``untrainable`` says why)
    untrainable: str = ""

    def __str__(self) -> str:
        return self.title

    def __repr__(self) -> str:
        return f"<{self.title} data format>"

    @property
    def a_record(self) -> str:
        """'a text record', 'a prompt/completion record', 'an Alpaca record'."""
        return f"{'an' if self.title[:1].lower() in 'aeiou' else 'a'} {self.title} record"

    @property
    def keys(self) -> str:
        """The keys that mark a record of it, for messages: "'prompt'/'completion'"."""
        return "/".join(f"'{k}'" for k in self.marks)

    def claimed_by(self, obj: Mapping[str, Any]) -> str | None:
        """The key by which ``obj`` is meant as a record of this format, or None."""
        return next((k for k in self.marks if k in obj), None)

    def claims(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` is meant as a record of this format (by its keys; its fields may still be wrong)."""
        return self.claimed_by(obj) is not None

    def validate(self, obj: Mapping[str, Any], fail: Fail) -> None:
        """Raise ``fail(field, message)`` for the first thing wrong with a record this format claims.

        ``message`` says what is wrong with the field as a predicate: "is missing", "must be a string".
        """
        raise NotImplementedError

    def encode(self, data: Mapping[str, Any], tokenizer: Any, mask_prompt: bool, where: Where) -> tuple[list[int], list[bool]]:
        """(token ids, trained) of a valid record, before truncation."""
        raise NotImplementedError

    def prompt_and_reference(self, data: Mapping[str, Any]) -> tuple[Any, str]:
        """(the prompt: chat messages or a string, the reference answer: '' without one) of a record."""
        raise NotImplementedError

    def prompt_key(self, data: Mapping[str, Any]) -> str | None:
        """What the model is asked, as canonical JSON (two records asking the same compare equal); None without prompts."""
        return None

    def record_key(self, data: Mapping[str, Any]) -> str:
        """What the model trains on, as canonical JSON: extra fields (ids, sources) do not make records differ."""
        return json.dumps({k: data[k] for k in self.fields if data.get(k) is not None}, sort_keys=True)

    def untrained_turns(self, data: Mapping[str, Any]) -> int:
        """Parts of a record marked not to be trained (chat turns with weight 0)."""
        return 0

    def trains_prompt_masked(self, requested: bool | None) -> bool:
        """Whether only the answers are trained: as asked, else this format's default."""
        return self.masks_prompt if requested is None else bool(requested)


# ------------------------------------------------------------ field checks


def expect_str(value: Any, fail: Fail, fld: str) -> None:
    if not isinstance(value, str):
        raise fail(fld, f"must be a string, got a {json_type(value)} ({short(value)})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # "\ud83d" alone: JSON allows it, tokenizers choke on it
        raise fail(
            fld,
            f"holds a broken character (\\u{ord(value[e.start]):04x}, half of a surrogate pair, "
            f"at character {e.start}), usually text cut in the middle of an emoji: fix or remove it",
        ) from None


def optional_str(obj: Mapping[str, Any], fail: Fail, fld: str) -> str:
    """An optional string field's value ('' when absent or null)."""
    value = obj.get(fld)
    if value is None:
        return ""
    expect_str(value, fail, fld)
    return value


def short(value: Any) -> str:
    """A value as JSON, cut to 30 characters, printable even with broken characters."""
    text = json.dumps(value, ensure_ascii=False)
    text = text if len(text) <= 30 else text[:27] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def listed(parts: list[str]) -> str:
    """'a, b or c'."""
    return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else "".join(parts)
