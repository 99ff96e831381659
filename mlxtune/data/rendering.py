"""Text and conversations to token ids and a loss mask, as the model's tokenizer renders them.

The data formats (``formats``) decide *what* is trained; this module knows
*how* a tokenizer and its chat template turn a record into tokens, and which
tokens came from which characters. Chat renderings are tokenized without
added special tokens, as ``apply_chat_template`` does, so a template that
writes its own BOS does not get a second one.

A mask here is one bool per token: True where the token is trained. The
first token's mask is fixed by ``batching.encode`` (nothing predicts it).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ..errors import DataError, ModelFormatError

Where = tuple[str | None, int | None]  # (file, line) of the record, for errors

# A slow (Python) tokenizer cannot say which characters a token came from.
NO_OFFSETS = "the tokenizer cannot map tokens to characters (it is not a 'fast' tokenizer), which masking the prompt needs: train with --no-mask-prompt"


def hf_tokenizer(tokenizer: Any) -> Any:
    """The Hugging Face tokenizer inside mlx-lm's TokenizerWrapper, or the tokenizer itself."""
    # mlx-lm's TokenizerWrapper keeps the Hugging Face tokenizer in ._tokenizer;
    # a Hugging Face fast tokenizer also has a ._tokenizer (the Rust one), so
    # unwrap by type name, not by attribute.
    if type(tokenizer).__name__ == "TokenizerWrapper":
        return tokenizer._tokenizer
    return tokenizer


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _eos(tokenizer: Any) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return [] if eos is None else [int(eos)]


def encode_text(text: str, tokenizer: Any) -> tuple[list[int], list[bool]]:
    """Every token trained, ending with eos so the model learns to stop."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = _eos(tokenizer)
    if eos and (not ids or ids[-1] != eos[0]):
        ids += eos
    return ids, [True] * len(ids)


def encode_texts(texts: list[str], tokenizer: Any) -> list[tuple[list[int], list[bool]]]:
    """``encode_text`` of each text, in one call of the tokenizer."""
    eos = _eos(tokenizer)
    out = []
    for ids, _ in _tokenize_batch(tokenizer, texts, offsets=False):
        if eos and (not ids or ids[-1] != eos[0]):
            ids = ids + eos
        out.append((ids, [True] * len(ids)))
    return out


def encode_plain_completions(pairs: list[tuple[str, str]], tokenizer: Any, mask_prompt: bool) -> list[tuple[list[int], list[bool]]]:
    """``encode_plain_completion`` of each (prompt, completion), in one call of the tokenizer."""
    texts = [prompt + completion for prompt, completion in pairs]
    eos = _eos(tokenizer)
    out = []
    for (prompt, _), text, (ids, offsets) in zip(pairs, texts, _tokenize_batch(tokenizer, texts, offsets=mask_prompt)):
        # as _mask_from_spans with the completion's span: a token overlapping it is trained
        mask = [s < len(text) and e > len(prompt) for s, e in offsets] if mask_prompt else [True] * len(ids)
        out.append((ids + eos, mask + [True] * len(eos)))
    return out


def _tokenize_batch(tokenizer: Any, texts: list[str], offsets: bool) -> list[tuple[list[int], list[tuple[int, int]] | None]]:
    """(ids, character offsets or None) of each text, special tokens added, in one call.

    A fast tokenizer's Rust tokenizer encodes the batch on every core; it is
    called directly (as transformers' own batch call does, without building
    its attention masks and dicts) unless it is set to truncate or pad, which
    transformers' call would turn off first.
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        return [(e.ids, e.offsets if offsets else None) for e in backend.encode_batch(texts, add_special_tokens=True)]
    if not offsets:
        return [(list(ids), None) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    try:
        enc = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True)
    except NotImplementedError:
        raise ModelFormatError(NO_OFFSETS) from None
    return [(list(ids), [tuple(o) for o in offs]) for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])]


def encode_plain_completion(
    prompt: str, completion: str, tokenizer: Any, mask_prompt: bool
) -> tuple[list[int], list[bool]]:
    """No chat template: plain ``prompt + completion + eos``."""
    text = prompt + completion
    ids, offsets = _tokenize_with_offsets(tokenizer, text, add_special_tokens=True)
    if mask_prompt:
        mask = _mask_from_spans(offsets, [(len(prompt), len(text))])
    else:
        mask = [True] * len(ids)
    eos = _eos(tokenizer)
    return ids + eos, mask + [True] * len(eos)


def encode_chat(
    messages: list[dict[str, Any]],
    tools: list[Any] | None,
    tokenizer: Any,
    mask_prompt: bool,
    where: Where,
    untrained: Collection[int] = (),
) -> tuple[list[int], list[bool]]:
    """A conversation through the chat template.

    With ``mask_prompt`` only the assistant turns are trained, less those whose
    index is in ``untrained`` (``"weight": 0``); without it every token is,
    again less the ``untrained`` turns: a turn marked not to be learned stays
    unlearned whatever else is trained.
    """
    full = _render(tokenizer, messages, tools, False, where)
    if not mask_prompt and not untrained:
        ids = list(tokenizer(full, add_special_tokens=False)["input_ids"])
        return ids, [True] * len(ids)
    if mask_prompt:
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i not in untrained]
    else:
        turns = sorted(untrained)
    advice = "train with --no-mask-prompt" if mask_prompt else 'remove the "weight": 0 marks'
    spans = _assistant_spans(tokenizer, messages, tools, full, turns, where, advice)
    ids, offsets = _tokenize_with_offsets(tokenizer, full, add_special_tokens=False)
    in_spans = _mask_from_spans(offsets, spans)
    return ids, in_spans if mask_prompt else [not m for m in in_spans]


def _render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[Any] | None,
    add_generation_prompt: bool,
    where: Where,
) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False
        )
    except Exception as e:  # jinja errors, or raise_exception() inside the template
        raise DataError(
            f"the model's chat template cannot render this conversation: {e}", *where, "messages"
        ) from None


def _assistant_spans(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[Any] | None,
    full: str,
    turns: list[int],
    where: Where,
    advice: str,
) -> list[tuple[int, int]]:
    """Character spans in ``full`` of the assistant turns ``turns``, found by rendering prefixes.

    The turn that answers ``messages[:i]`` starts where the rendering of
    ``messages[:i]`` with the generation prompt ends, which is exactly what the
    model sees at inference time, and ends where the rendering of
    ``messages[:i+1]`` ends (less trailing whitespace after the end-of-turn
    marker, which generation never reaches). A turn the template renders
    otherwise once more follows it is found in the history (``_span_in_history``).
    """
    spans = []
    marker = None  # the template's end of turn, found when a turn needs it
    for i in turns:
        try:
            prefix = _render(tokenizer, messages[:i], tools, True, where)
            upto = _render(tokenizer, messages[: i + 1], tools, False, where)
        except DataError:
            prefix = upto = None
        if prefix is not None and upto.startswith(prefix) and full.startswith(upto):
            spans.append((len(prefix), len(upto.rstrip())))
            continue
        try:
            before = _render(tokenizer, messages[:i], tools, False, where) if i else ""
        except DataError:
            before = None
        if marker is None:
            from ..models.chat_template import end_of_turn

            marker = "".join(tokenizer.convert_ids_to_tokens(end_of_turn(tokenizer)))
        span = _span_in_history(messages[i], full, prefix, before, marker)
        if span is None:
            raise DataError(
                f"the model's chat template does not render messages[{i}] (assistant) the same "
                "way in a partial and in the full conversation, so the assistant turns cannot be "
                f"located: {advice}",
                *where,
                "messages",
            )
        spans.append(span)
    return spans


def _span_in_history(message: dict[str, Any], full: str, prefix: str | None, before: str | None, marker: str) -> tuple[int, int] | None:
    """The span of an earlier assistant turn that the template renders otherwise in the history than as the last turn.

    Qwen3's template puts an empty think block before the last answer only, and
    Phi-3's ends a conversation with eos: a turn followed by more is found in
    ``full`` instead, after the conversation before it (with or without the
    generation prompt, whichever ``full`` starts with), as its text and the end
    of turn the template writes after it (``marker``: ``chat_template.end_of_turn``),
    which is trained too, so that the model learns to stop. None when it is not there.
    """
    content = message.get("content")
    anchor = next((len(p) for p in (prefix, before) if p is not None and full.startswith(p)), None)
    if not isinstance(content, str) or not content.strip() or anchor is None or not marker:
        return None
    start = full.find(content, anchor)
    end = start + len(content)
    return (start, end + len(marker)) if start >= 0 and full.startswith(marker, end) else None


def _tokenize_with_offsets(
    tokenizer: Any, text: str, add_special_tokens: bool
) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    except NotImplementedError:
        raise ModelFormatError(NO_OFFSETS) from None
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _mask_from_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """A token is in the spans when its characters overlap one."""
    return [any(s < end and e > start for start, end in spans) for s, e in offsets]
