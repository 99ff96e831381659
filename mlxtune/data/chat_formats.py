"""The message-based data formats: OpenAI chat and ShareGPT.

- ``{"messages": [{"role": ..., "content": ...}, ...], "tools": [...]}``: a chat,
  the assistant turns are trained (``tools`` is optional; an assistant turn
  with ``"weight": 0``, as in OpenAI's fine-tuning format, is not trained).
- ``{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}], "system": ...}``:
  ShareGPT (as LLaMA-Factory and axolotl read it), turned into chat messages
  and trained as a chat.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import DataError
from .format_base import DataFormat, Fail, expect_str, json_type, optional_str, short
from .rendering import Where, encode_chat, has_chat_template

ROLES = ("system", "user", "assistant", "tool")


class ChatFormat(DataFormat):
    name, title, fields = "chat", "chat", ("messages", "tools")
    marks, shape = ("messages",), '{"messages": [...]}'
    masks_prompt = has_answers = True

    def validate(self, obj: Mapping[str, Any], fail: Fail) -> None:
        messages = obj["messages"]
        if not isinstance(messages, list):
            raise fail("messages", f"must be a list of {{\"role\", \"content\"}} objects, got a {json_type(messages)} ({short(messages)})")
        if not messages:
            raise fail("messages", "is empty: a chat needs at least one assistant turn")
        for i, message in enumerate(messages):
            validate_message(message, f"messages[{i}]", fail)
        assistant = [m for m in messages if m["role"] == "assistant"]
        if not assistant:
            raise fail("messages", "has no assistant turn: there is nothing to train on")
        if all(m.get("weight", 1) == 0 for m in assistant):
            raise fail("messages", 'has nothing to train on: every assistant turn has "weight": 0; give one weight 1, or remove the record')
        tools = obj.get("tools")
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise fail("tools", f"must be a list of tool definitions (objects), got {short(tools)}")

    def encode(self, data: Mapping[str, Any], tokenizer: Any, mask_prompt: bool, where: Where) -> tuple[list[int], list[bool]]:
        if not has_chat_template(tokenizer):
            raise DataError(
                f"{self.title} records need a tokenizer with a chat template, and this model has none: "
                "use a chat model, or write the data as prompt/completion or text records",
                *where,
            )
        messages = data["messages"]
        untrained = [i for i, m in enumerate(messages) if m.get("weight", 1) == 0]
        return encode_chat(messages, data.get("tools"), tokenizer, mask_prompt, where, untrained)

    def prompt_and_reference(self, data: Mapping[str, Any]) -> tuple[Any, str]:
        """The conversation up to the last trained assistant turn, and that turn's content."""
        messages = list(data["messages"])
        last = last_trained(messages)
        if last is None:
            return messages, ""
        return messages[:last], messages[last].get("content") or ""

    def prompt_key(self, data: Mapping[str, Any]) -> str | None:
        messages = data["messages"]
        return json.dumps([messages[: last_trained(messages)], data.get("tools")], sort_keys=True)

    def untrained_turns(self, data: Mapping[str, Any]) -> int:
        return sum(m.get("weight", 1) == 0 for m in data["messages"])


CHAT = ChatFormat()

# ShareGPT's speakers ("from") as chat roles; function_call is the assistant calling a tool.
SPEAKERS = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant", "function_call": "assistant",
    "system": "system",
    "tool": "tool", "function": "tool", "observation": "tool",
}


class ShareGPTFormat(DataFormat):
    """A conversation as ShareGPT writes it, trained as the chat it converts to (``as_chat``)."""

    name, title, fields = "sharegpt", "ShareGPT", ("conversations", "system")
    marks, shape = ("conversations",), '{"conversations": [{"from": "human", "value": ...}, ...]}'
    masks_prompt = has_answers = True

    def validate(self, obj: Mapping[str, Any], fail: Fail) -> None:
        turns = obj["conversations"]
        if not isinstance(turns, list):
            raise fail("conversations", f"must be a list of {{\"from\", \"value\"}} objects, got a {json_type(turns)} ({short(turns)})")
        if not turns:
            raise fail("conversations", "is empty: a conversation needs at least one assistant (gpt) turn")
        for i, turn in enumerate(turns):
            at = f"conversations[{i}]"
            if not isinstance(turn, dict):
                raise fail(at, f"must be an object with 'from' and 'value', got a {json_type(turn)}")
            if "from" not in turn:
                raise fail(f"{at}.from", "is missing: each turn needs a 'from' (who speaks)")
            if not isinstance(turn["from"], str) or turn["from"] not in SPEAKERS:
                raise fail(f"{at}.from", f"is {short(turn['from'])}, not a known speaker: use one of {', '.join(SPEAKERS)}")
            if "value" not in turn:
                raise fail(f"{at}.value", "is missing: each turn needs a 'value' string")
            expect_str(turn["value"], fail, f"{at}.value")
        optional_str(obj, fail, "system")
        origin = ([None] if obj.get("system") else []) + list(range(len(turns)))

        def renamed(fld: str | None, message: str) -> DataError:
            """The chat's field as the ShareGPT record names it: messages[2].content -> conversations[1].value."""
            if fld and fld.startswith("messages["):
                i, rest = fld[len("messages[") :].split("]", 1)
                j = origin[int(i)]
                rest = {".content": ".value", ".role": ".from"}.get(rest, rest)
                fld = "system" if j is None else f"conversations[{j}]{rest}"
            elif fld == "messages":
                fld = "conversations"
            return fail(fld, message)

        CHAT.validate(as_chat(obj), renamed)

    def encode(self, data: Mapping[str, Any], tokenizer: Any, mask_prompt: bool, where: Where) -> tuple[list[int], list[bool]]:
        return CHAT.encode(as_chat(data), tokenizer, mask_prompt, where)

    def prompt_and_reference(self, data: Mapping[str, Any]) -> tuple[Any, str]:
        return CHAT.prompt_and_reference(as_chat(data))

    def prompt_key(self, data: Mapping[str, Any]) -> str | None:
        return CHAT.prompt_key(as_chat(data))


def as_chat(data: Mapping[str, Any]) -> dict[str, Any]:
    """A ShareGPT record as a chat record: the top-level system first, then each turn with its role."""
    system = [{"role": "system", "content": data["system"]}] if data.get("system") else []
    return {"messages": system + [{"role": SPEAKERS[t["from"]], "content": t["value"]} for t in data["conversations"]]}


def last_trained(messages: list[dict[str, Any]]) -> int | None:
    """The index of the last assistant turn that is trained (not "weight": 0), or None."""
    return max((i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight", 1) != 0), default=None)


def validate_message(message: Any, where: str, fail: Fail) -> None:
    """Check one chat message; ``where`` names it in errors ("messages[2]")."""
    if not isinstance(message, dict):
        raise fail(where, f"must be an object with 'role' and 'content', got a {json_type(message)}")
    if "role" not in message:
        raise fail(f"{where}.role", "is missing: each message needs a 'role'")
    role = message["role"]
    if role not in ROLES:
        raise fail(f"{where}.role", f"is {short(role)}, an unknown role: use one of {', '.join(ROLES)}")
    if "weight" in message:
        weight = message["weight"]
        if role != "assistant":
            raise fail(f"{where}.weight", f"is not allowed here: only assistant turns carry a weight (0: not trained, 1: trained), not a {short(role)} turn: remove it")
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
