"""The OpenAI request bodies ``serve`` accepts, checked field by field, and its errors' JSON.

A request is validated here before it reaches the worker: a wrong field is a
``RequestError`` (HTTP 400 unless said otherwise) naming the field as the
OpenAI API names it (``param``), so clients show a useful message and the server
goes on serving. Only what the server honours is accepted with a value other
than the default (``n`` must be 1); fields it does not use (``user``,
``presence_penalty`` ...) are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_TOKENS = 512  # when a request gives none (clamped to what the context leaves)
MAX_STOPS = 4  # as OpenAI allows
MAX_BODY = 4 * 1024 * 1024  # bytes of a request body; more is refused with 413
TEXT_PART = "text"  # the type of a message content part the server reads (OpenAI's; image and audio parts are refused)


class RequestError(Exception):
    """A request the server refuses, as OpenAI words it: status, message, type, param and code."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.type = status, param, code, type_

    def body(self) -> dict:
        return error_body(str(self), self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    """The JSON of an OpenAI error response."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass
class Request:
    """A validated completion request: what to answer (chat messages or a prompt) and how to sample."""

    model: str
    messages: list[dict] | None = None  # chat completions
    prompt: str | list[int] | None = None  # completions: text, or token ids
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the token counts

    @property
    def chat(self) -> bool:
        return self.messages is not None


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body, or a RequestError saying what is wrong with it."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"We could not parse the JSON body of your request ({e}). Send a JSON object.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(f"The request body must be a JSON object, not {type(body).__name__}.", code="invalid_json")
    return body


def chat_request(body: dict) -> Request:
    """A ``POST /v1/chat/completions`` body, validated."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects.", param="messages")
    return _common(body, Request(model=_model(body), messages=[_message(m, i) for i, m in enumerate(messages)]))


def completion_request(body: dict) -> Request:
    """A ``POST /v1/completions`` body, validated."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
        pass  # token ids
    elif not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string or a list of token ids (one prompt per request).", param="prompt")
    if prompt == "":
        raise RequestError("'prompt' is empty: give the text to continue.", param="prompt")
    return _common(body, Request(model=_model(body), prompt=prompt))


def _model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("'model' is required: the name of one of the models GET /v1/models lists.", param="model")
    return model


def _message(m: Any, i: int) -> dict:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise RequestError(f"messages[{i}] must be an object with a 'role' and a 'content'.", param=f"messages[{i}]")
    content = m.get("content")
    if isinstance(content, list):  # content parts: text only
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != TEXT_PART or not isinstance(part.get("text"), str):
                raise RequestError(f"messages[{i}].content: only text parts are supported.", param=f"messages[{i}].content")
            texts.append(part["text"])
        content = "".join(texts)
    if content is None and m["role"] == "assistant":
        content = ""
    if not isinstance(content, str):
        raise RequestError(f"messages[{i}].content must be a string or a list of text parts.", param=f"messages[{i}].content")
    return {"role": m["role"], "content": content}


def _common(body: dict, req: Request) -> Request:
    """The sampling fields both endpoints share."""
    n = body.get("n", 1)
    if n is not None and n != 1:
        raise RequestError("Only n=1 is supported: send one request per answer.", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if not _is_int(max_tokens) or max_tokens < 1:
            raise RequestError(f"'max_tokens' must be a positive integer, not {max_tokens!r}.", param="max_tokens")
        req.max_tokens = max_tokens
    req.temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    req.top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if req.top_p == 0:
        raise RequestError("'top_p' must be in (0, 1].", param="top_p")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise RequestError(f"'seed' must be an integer, not {seed!r}.", param="seed")
    req.seed = seed
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"'stop' must be a non-empty string or a list of up to {MAX_STOPS} of them.", param="stop")
    req.stop = stops
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise RequestError("'stream' must be true or false.", param="stream")
    req.stream = bool(stream)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object.", param="stream_options")
    req.include_usage = bool((options or {}).get("include_usage", False))
    return req


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
        raise RequestError(f"'{name}' must be a number in [{low:g}, {high:g}], not {v!r}.", param=name)
    return float(v)
