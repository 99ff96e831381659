"""The data formats, one class each: everything mlxtune knows about a kind of record.

- ``{"text": str}``: plain text, every token trained.
- ``{"prompt": str, "completion": str}``: the completion is trained.
- ``{"messages": [{"role": ..., "content": ...}, ...], "tools": [...]}``: a chat,
  the assistant turns are trained (``tools`` is optional; an assistant turn
  with ``"weight": 0``, as in OpenAI's fine-tuning format, is not trained).

A format says whether a record is of it (``claims``), checks its fields
(``validate``, errors naming the field), turns it into tokens and a loss mask
(``encode``), and says what evaluation and ``data check`` need of it: the
prompt and reference answer, and what makes two records the same. Every
other module asks the format object; none compares format names, so a
format added here is a format everywhere. ``name`` is the stable id written
to ``adapter_config.json`` and ``data check --json``; ``title`` is for people.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import DataError
from .rendering import Where, encode_chat, encode_plain_completion, encode_plain_completions, encode_text, encode_texts, has_chat_template

ROLES = ("system", "user", "assistant", "tool")
Fail = Callable[[str, str], DataError]  # fail(field, message): the error to raise for this record


class DataFormat:
    """One kind of record. Subclasses set the class attributes and implement the methods."""

    name: str = ""  # stable id: adapter_config.json, data check --json
    title: str = ""  # for people: "prompt/completion"
    fields: tuple[str, ...] = ()  # what the model is trained on; other keys are ignored
    keys: str = ""  # the keys that mark a record of it, for messages: "'prompt'/'completion'"
    shape: str = ""  # a record of it, in brief, for messages
    masks_prompt: bool = False  # --mask-prompt's default: train the answers only
    has_answers: bool = False  # a record poses a prompt with a reference answer: eval generates, the report shows samples

    def __str__(self) -> str:
        return self.title

    def __repr__(self) -> str:
        return f"<{self.title} data format>"

    @property
    def a_record(self) -> str:
        """'a text record', 'a prompt/completion record', 'a chat record'."""
        return f"a {self.title} record"

    def claims(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` is meant as a record of this format (by its keys; its fields may still be wrong)."""
        raise NotImplementedError

    def validate(self, obj: Mapping[str, Any], fail: Fail) -> None:
        """Raise ``fail(field, message)`` for the first thing wrong with a record this format claims."""
        raise NotImplementedError

    def encode(self, data: Mapping[str, Any], tokenizer: Any, mask_prompt: bool, where: Where) -> tuple[list[int], list[bool]]:
        """(token ids, trained) of a valid record, before truncation."""
        raise NotImplementedError

    def encode_batch(self, datas: list[Mapping[str, Any]], tokenizer: Any, mask_prompt: bool, wheres: list[Where]) -> list[tuple[list[int], list[bool]]]:
        """``encode`` of each record; a format whose tokenization batches overrides it (a fast tokenizer
        encodes a list of texts in one call many times faster than one text per call)."""
        return [self.encode(data, tokenizer, mask_prompt, where) for data, where in zip(datas, wheres)]

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


class TextFormat(DataFormat):
    name, title, fields = "text", "text", ("text",)
    keys, shape = "'text'", '{"text": ...}'

    def claims(self, obj: Mapping[str, Any]) -> bool:
        return "text" in obj

    def validate(self, obj: Mapping[str, Any], fail: Fail) -> None:
        expect_str(obj["text"], fail, "text")
        if not obj["text"]:
            raise fail("text", "is empty: remove the record or give it text")

    def encode(self, data: Mapping[str, Any], tokenizer: Any, mask_prompt: bool, where: Where) -> tuple[list[int], list[bool]]:
        return encode_text(data["text"], tokenizer)

    def encode_batch(self, datas: list[Mapping[str, Any]], tokenizer: Any, mask_prompt: bool, wheres: list[Where]) -> list[tuple[list[int], list[bool]]]:
        return encode_texts([data["text"] for data in datas], tokenizer)

    def prompt_and_reference(self, data: Mapping[str, Any]) -> tuple[Any, str]:
        return data["text"], ""


class CompletionFormat(DataFormat):
    name, title, fields = "completion", "prompt/completion", ("prompt", "completion")
    keys, shape = "'prompt'/'completion'", '{"prompt": ..., "completion": ...}'
    masks_prompt = has_answers = True

    def claims(self, obj: Mapping[str, Any]) -> bool:
        return "prompt" in obj or "completion" in obj

    def validate(self, obj: Mapping[str, Any], fail: Fail) -> None:
        for key in ("prompt", "completion"):
            if key not in obj:
                other = "completion" if key == "prompt" else "prompt"
                raise fail(key, f"is missing: a record with '{other}' also needs '{key}'")
            expect_str(obj[key], fail, key)
        if not obj["completion"]:
            raise fail("completion", "is empty: there is nothing to train on")

    def encode(self, data: Mapping[str, Any], tokenizer: Any, mask_prompt: bool, where: Where) -> tuple[list[int], list[bool]]:
        """A chat model sees the pair as a user turn and its answer, as it will be asked; others see prompt + completion."""
        if has_chat_template(tokenizer):
            messages = [{"role": "user", "content": data["prompt"]}, {"role": "assistant", "content": data["completion"]}]
            return encode_chat(messages, None, tokenizer, mask_prompt, where)
        return encode_plain_completion(data["prompt"], data["completion"], tokenizer, mask_prompt)

    def encode_batch(self, datas: list[Mapping[str, Any]], tokenizer: Any, mask_prompt: bool, wheres: list[Where]) -> list[tuple[list[int], list[bool]]]:
        if has_chat_template(tokenizer):
            return super().encode_batch(datas, tokenizer, mask_prompt, wheres)
        return encode_plain_completions([(data["prompt"], data["completion"]) for data in datas], tokenizer, mask_prompt)

    def prompt_and_reference(self, data: Mapping[str, Any]) -> tuple[Any, str]:
        return data["prompt"], data["completion"]

    def prompt_key(self, data: Mapping[str, Any]) -> str | None:
        return json.dumps(data["prompt"])


class ChatFormat(DataFormat):
    name, title, fields = "chat", "chat", ("messages", "tools")
    keys, shape = "'messages'", '{"messages": [...]}'
    masks_prompt = has_answers = True

    def claims(self, obj: Mapping[str, Any]) -> bool:
        return "messages" in obj

    def validate(self, obj: Mapping[str, Any], fail: Fail) -> None:
        messages = obj["messages"]
        if not isinstance(messages, list):
            raise fail("messages", f"must be a list of {{\"role\", \"content\"}} objects, got a {json_type(messages)} ({short(messages)})")
        if not messages:
            raise fail("messages", "is empty: a chat needs at least one assistant turn")
        for i, message in enumerate(messages):
            _validate_message(message, f"messages[{i}]", fail)
        assistant = [m for m in messages if m["role"] == "assistant"]
        if not assistant:
            raise fail("messages", "has no assistant turn: there is nothing to train on")
        if all(m.get("weight", 1) == 0 for m in assistant):
            raise fail("messages", 'every assistant turn has "weight": 0: there is nothing to train on; give one weight 1, or remove the record')
        tools = obj.get("tools")
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise fail("tools", f"must be a list of tool definitions (objects), got {short(tools)}")

    def encode(self, data: Mapping[str, Any], tokenizer: Any, mask_prompt: bool, where: Where) -> tuple[list[int], list[bool]]:
        if not has_chat_template(tokenizer):
            raise DataError(
                "chat records need a tokenizer with a chat template, and this model has none: "
                "use a chat model, or write the data as prompt/completion or text records",
                *where,
            )
        messages = data["messages"]
        untrained = [i for i, m in enumerate(messages) if m.get("weight", 1) == 0]
        return encode_chat(messages, data.get("tools"), tokenizer, mask_prompt, where, untrained)

    def prompt_and_reference(self, data: Mapping[str, Any]) -> tuple[Any, str]:
        """The conversation up to the last trained assistant turn, and that turn's content."""
        messages = list(data["messages"])
        last = _last_trained(messages)
        if last is None:
            return messages, ""
        return messages[:last], messages[last].get("content") or ""

    def prompt_key(self, data: Mapping[str, Any]) -> str | None:
        messages = data["messages"]
        return json.dumps([messages[: _last_trained(messages)], data.get("tools")], sort_keys=True)

    def untrained_turns(self, data: Mapping[str, Any]) -> int:
        return sum(m.get("weight", 1) == 0 for m in data["messages"])


def _last_trained(messages: list[dict[str, Any]]) -> int | None:
    return max((i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight", 1) != 0), default=None)


def _validate_message(message: Any, where: str, fail: Fail) -> None:
    if not isinstance(message, dict):
        raise fail(where, f"must be an object with 'role' and 'content', got a {json_type(message)}")
    if "role" not in message:
        raise fail(f"{where}.role", "is missing: each message needs a 'role'")
    role = message["role"]
    if role not in ROLES:
        raise fail(f"{where}.role", f"unknown role {short(role)}: use one of {', '.join(ROLES)}")
    if "weight" in message:
        weight = message["weight"]
        if role != "assistant":
            raise fail(f"{where}.weight", f"only assistant turns carry a weight (0: not trained, 1: trained), not a {short(role)} turn: remove it")
        if isinstance(weight, bool) or weight not in (0, 1):
            raise fail(f"{where}.weight", f"must be 0 (not trained) or 1 (trained), got {short(weight)}")
    calls = message.get("tool_calls")
    if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
        raise fail(f"{where}.tool_calls", f"must be a list of objects, got {short(calls)}")
    # An assistant turn that only calls tools may carry no content.
    if role == "assistant" and calls and message.get("content") is None:
        return
    if "content" not in message:
        raise fail(f"{where}.content", "is missing: each message needs a 'content' string")
    expect_str(message["content"], fail, f"{where}.content")
    if role == "assistant" and not message["content"] and not calls:
        raise fail(f"{where}.content", "is empty: an assistant turn needs text to train on; remove the turn or give it text")


TEXT, COMPLETION, CHAT = TextFormat(), CompletionFormat(), ChatFormat()
FORMATS: tuple[DataFormat, ...] = (TEXT, COMPLETION, CHAT)
_DETECTION = (CHAT, COMPLETION, TEXT)  # a record with 'messages' and 'text' is a chat


def detect(obj: Mapping[str, Any]) -> DataFormat | None:
    """The format a record claims by its keys (chat, then prompt/completion, then text), or None."""
    return next((f for f in _DETECTION if f.claims(obj)), None)


def listed(parts: list[str]) -> str:
    """'a, b or c'."""
    return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else "".join(parts)


def get(fmt: DataFormat | str) -> DataFormat:
    """A format, or the format of that ``name`` (as a run's adapter_config.json stores it)."""
    if isinstance(fmt, DataFormat):
        return fmt
    found = next((f for f in FORMATS if f.name == fmt), None)
    if found is None:
        raise ValueError(f"unknown data format {fmt!r}: one of {', '.join(f.name for f in FORMATS)}")
    return found


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
