"""The data formats, one class each: everything mlxtune knows about a kind of record.

- ``{"text": str}``: plain text, every token trained.
- ``{"prompt": str, "completion": str}``: the completion is trained.
- ``{"instruction": str, "input": str, "output": str, "system": str}``: Alpaca;
  instruction and input (when not empty) are the user turn, output is trained.
- ``{"prompt", "chosen", "rejected"}``: preference pairs, checked and reported
  but not trained by supervised fine-tuning.
- chat (OpenAI's ``messages``) and ShareGPT (``conversations``): ``chat_formats``.

A format says whether a record is of it (``claims``), checks its fields
(``validate``, errors naming the field), turns it into tokens and a loss mask
(``encode``), and says what evaluation and ``data check`` need of it: the
prompt and reference answer, and what makes two records the same. Every
other module asks this registry (``detect``, ``get``, ``FORMATS``); none
compares format names, so a format added here is a format everywhere.
``name`` is the stable id written to ``adapter_config.json`` and
``data check --json``; ``title`` is for people.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import DataError
from .chat_formats import CHAT, ROLES, ChatFormat, ShareGPTFormat, last_trained, validate_message
from .format_base import DataFormat, Fail, expect_str, json_type, listed, optional_str, short
from .rendering import Where, encode_chat, encode_plain_completion, encode_text, has_chat_template

__all__ = [
    "CHAT", "COMPLETION", "FORMATS", "ROLES", "TEXT", "ALPACA", "SHAREGPT", "PREFERENCE", "DataFormat",
    "ChatFormat", "ShareGPTFormat", "detect", "get", "listed", "validate_record", "no_format", "expect_str", "json_type", "short",
]


class TextFormat(DataFormat):
    name, title, fields = "text", "text", ("text",)
    marks, shape = ("text",), '{"text": ...}'

    def validate(self, obj: Mapping[str, Any], fail: Fail) -> None:
        expect_str(obj["text"], fail, "text")
        if not obj["text"]:
            raise fail("text", "is empty: remove the record or give it text")

    def encode(self, data: Mapping[str, Any], tokenizer: Any, mask_prompt: bool, where: Where) -> tuple[list[int], list[bool]]:
        return encode_text(data["text"], tokenizer)

    def prompt_and_reference(self, data: Mapping[str, Any]) -> tuple[Any, str]:
        return data["text"], ""


class CompletionFormat(DataFormat):
    name, title, fields = "completion", "prompt/completion", ("prompt", "completion")
    marks, shape = ("prompt", "completion"), '{"prompt": ..., "completion": ...}'
    masks_prompt = has_answers = True

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

    def prompt_and_reference(self, data: Mapping[str, Any]) -> tuple[Any, str]:
        return data["prompt"], data["completion"]

    def prompt_key(self, data: Mapping[str, Any]) -> str | None:
        return json.dumps(data["prompt"])


class AlpacaFormat(DataFormat):
    """Alpaca: the instruction, a blank line and the input (when there is one) are the user turn; the output is trained.

    Through the chat template when the model has one (``system`` as the system
    turn); without, as plain text: the system (when given) and a blank line,
    the user turn, then a newline and the output (the newline trained with it).
    """

    name, title, fields = "alpaca", "Alpaca", ("instruction", "input", "output", "system")
    marks, shape = ("instruction",), '{"instruction": ..., "input": ..., "output": ...}'
    masks_prompt = has_answers = True

    def validate(self, obj: Mapping[str, Any], fail: Fail) -> None:
        expect_str(obj["instruction"], fail, "instruction")
        if not obj["instruction"] and not optional_str(obj, fail, "input"):
            raise fail("instruction", "is empty, and there is no 'input': the model would be asked nothing")
        optional_str(obj, fail, "input")
        if "output" not in obj:
            raise fail("output", "is missing: an Alpaca record needs the answer to train on in 'output'")
        expect_str(obj["output"], fail, "output")
        if not obj["output"]:
            raise fail("output", "is empty: there is nothing to train on")
        optional_str(obj, fail, "system")

    def encode(self, data: Mapping[str, Any], tokenizer: Any, mask_prompt: bool, where: Where) -> tuple[list[int], list[bool]]:
        if has_chat_template(tokenizer):
            messages = _alpaca_prompt(data) + [{"role": "assistant", "content": data["output"]}]
            return encode_chat(messages, None, tokenizer, mask_prompt, where)
        prompt = "\n\n".join(m["content"] for m in _alpaca_prompt(data))
        return encode_plain_completion(prompt, "\n" + data["output"], tokenizer, mask_prompt)

    def prompt_and_reference(self, data: Mapping[str, Any]) -> tuple[Any, str]:
        """The user turn (a string), or the system and user turns (messages) when the record has a system."""
        messages = _alpaca_prompt(data)
        return (messages if len(messages) > 1 else messages[0]["content"]), data["output"]

    def prompt_key(self, data: Mapping[str, Any]) -> str | None:
        return json.dumps(_alpaca_prompt(data), sort_keys=True)

    def record_key(self, data: Mapping[str, Any]) -> str:
        """As trained: an empty 'input' or 'system' is the same as none."""
        return json.dumps([_alpaca_prompt(data), data["output"]], sort_keys=True)


def _alpaca_prompt(data: Mapping[str, Any]) -> list[dict[str, str]]:
    user = "\n\n".join(p for p in (data["instruction"], data.get("input") or "") if p)
    system = [{"role": "system", "content": data["system"]}] if data.get("system") else []
    return system + [{"role": "user", "content": user}]


class PreferenceFormat(DataFormat):
    """Preference pairs: a prompt with a chosen and a rejected answer, for preference tuning.

    Strings, or chat messages: the prompt a list of messages, each answer a
    string or a list holding assistant message(s). A record that also has a
    'completion' is prompt/completion (``--field completion=chosen`` makes one).
    """

    name, title, fields = "preference", "preference pair", ("prompt", "chosen", "rejected")
    marks, shape = ("chosen", "rejected"), '{"prompt": ..., "chosen": ..., "rejected": ...}'
    masks_prompt = has_answers = True
    trainable = False
    untrainable = (
        "preference pairs ('prompt', 'chosen', 'rejected') are for preference tuning, which this version of mlxtune "
        "does not have: to train on the chosen answers, map them to prompt/completion records with --field completion=chosen"
    )

    def claimed_by(self, obj: Mapping[str, Any]) -> str | None:
        return None if "completion" in obj else super().claimed_by(obj)

    def validate(self, obj: Mapping[str, Any], fail: Fail) -> None:
        for key in self.fields:
            if key not in obj:
                raise fail(key, "is missing: a preference pair needs 'prompt', 'chosen' and 'rejected'")
        prompt = obj["prompt"]
        if isinstance(prompt, list):
            if not prompt:
                raise fail("prompt", "is empty: the model would be asked nothing")
            for i, message in enumerate(prompt):
                validate_message(message, f"prompt[{i}]", fail)
        else:
            expect_str(prompt, fail, "prompt")
        for key in ("chosen", "rejected"):
            _validate_answer(obj[key], key, fail)
        if isinstance(obj["chosen"], str) != isinstance(obj["rejected"], str):
            raise fail("rejected", f"is a {json_type(obj['rejected'])} but 'chosen' is a {json_type(obj['chosen'])}: give both answers the same way")
        if obj["chosen"] == obj["rejected"]:
            raise fail("rejected", "is the same as 'chosen': a preference pair needs two different answers")

    def encode(self, data: Mapping[str, Any], tokenizer: Any, mask_prompt: bool, where: Where) -> tuple[list[int], list[bool]]:
        raise DataError(self.untrainable, *where)

    def prompt_and_reference(self, data: Mapping[str, Any]) -> tuple[Any, str]:
        """The prompt and the chosen answer (an answer of several messages: the conversation up to its last assistant turn)."""
        prompt, chosen = data["prompt"], data["chosen"]
        if isinstance(chosen, str):
            return prompt, chosen
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)) + list(chosen)
        return CHAT.prompt_and_reference({"messages": messages})

    def prompt_key(self, data: Mapping[str, Any]) -> str | None:
        return json.dumps(data["prompt"], sort_keys=True)


def _validate_answer(answer: Any, key: str, fail: Fail) -> None:
    if isinstance(answer, list):
        if not answer:
            raise fail(key, "is empty: give the answer as a string or a list of assistant messages")
        for i, message in enumerate(answer):
            validate_message(message, f"{key}[{i}]", fail)
        if last_trained(answer) is None:
            raise fail(key, "has no assistant message: an answer is the assistant's")
        return
    expect_str(answer, fail, key)
    if not answer:
        raise fail(key, "is empty: a preference pair needs two answers")


TEXT, COMPLETION, ALPACA, PREFERENCE = TextFormat(), CompletionFormat(), AlpacaFormat(), PreferenceFormat()
SHAREGPT = ShareGPTFormat()
FORMATS: tuple[DataFormat, ...] = (TEXT, COMPLETION, CHAT, ALPACA, SHAREGPT, PREFERENCE)
# The first that claims a record is its format: 'messages' is a chat, 'conversations' ShareGPT,
# 'instruction' Alpaca, 'chosen'/'rejected' a preference pair, 'prompt'/'completion', then 'text'.
_DETECTION = (CHAT, SHAREGPT, ALPACA, PREFERENCE, COMPLETION, TEXT)


def detect(obj: Mapping[str, Any]) -> DataFormat | None:
    """The format a record claims by its keys (in the order of ``_DETECTION``), or None."""
    return next((f for f in _DETECTION if f.claims(obj)), None)


def get(fmt: DataFormat | str) -> DataFormat:
    """A format, or the format of that ``name`` (as a run's adapter_config.json stores it)."""
    if isinstance(fmt, DataFormat):
        return fmt
    found = next((f for f in FORMATS if f.name == fmt), None)
    if found is None:
        raise ValueError(f"unknown data format {fmt!r}: one of {', '.join(f.name for f in FORMATS)}")
    return found


def validate_record(obj: Mapping[str, Any], fail: Fail) -> DataFormat:
    """Detect a record's format and check its fields; return the format.

    Errors (``fail(field, message)``) say which format was detected from which
    key and why the record does not fit it, or, for a record no format claims,
    which keys each format needs (``no_format``).
    """
    fmt = detect(obj)
    if fmt is None:
        raise fail(None, no_format(obj))
    told = f"detected as {fmt.title} (has '{fmt.claimed_by(obj)}')"
    fmt.validate(obj, lambda fld, message: fail(fld, f"{told}: '{fld}' {message}" if fld else f"{told}: {message}"))
    return fmt


def no_format(obj: Mapping[str, Any]) -> str:
    """Why a record is of no format: the keys each format is known by, the keys it has, and how to map a column."""
    found = ", ".join(repr(k if len(k) <= 30 else k[:27] + "...") for k in list(obj)[:6]) or "none"
    known = "; ".join(f"{f.title}: {f.keys}" for f in _DETECTION)
    return (
        f"record has none of the fields that mark a data format ({known}), found: {found}: "
        "if a column holds one of these fields under another name, map it with --field NAME=COLUMN, "
        "e.g. --field completion=answer"
    )
