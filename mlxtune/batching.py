"""From validated records to training batches: tokenize, template, mask, batch.

An ``Example`` is one record's token ids and a loss mask: ``loss_mask[t]`` says
token ``t`` is a training target, predicted from ``tokens[:t]`` (so
``loss_mask[0]`` is always False: nothing predicts the first token). Which
tokens are targets is what makes a fine-tune learn the answers rather than the
questions:

- text: every token, plus an end-of-sequence token so the model learns to stop;
- prompt/completion: the completion and the end-of-turn (or eos) after it;
- chat: every assistant turn, its content and its end-of-turn marker.

Without ``mask_prompt`` every token after the first is a target.

A ``Batch`` holds ``inputs = tokens[:-1]``, ``targets = tokens[1:]`` and
``mask = loss_mask[1:]``, right-padded (mask 0 on padding). Both backends
compute the loss the same way, as the mean over trained tokens::

    loss = sum(CE(logits, targets) * mask) / sum(mask)

so a batch's loss does not depend on how much padding or prompt it carries.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import Record
from .errors import DataError, ModelFormatError


@dataclass
class Example:
    """One encoded record: ``tokens`` (L,) int32 and ``loss_mask`` (L,) bool."""

    tokens: np.ndarray
    loss_mask: np.ndarray
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def n_targets(self) -> int:
        return int(self.loss_mask.sum())


@dataclass
class Batch:
    """Padded arrays for one step; row b is real for its first ``lengths[b]`` positions."""

    inputs: np.ndarray  # (B, T) int32
    targets: np.ndarray  # (B, T) int32
    mask: np.ndarray  # (B, T) float32, 1 where the target is trained
    lengths: np.ndarray  # (B,) int32, unpadded length of each row
    n_tokens: int  # trained targets in the batch, sum(mask)


# ------------------------------------------------------------------ encoding


def encode(
    record: Record | Mapping[str, Any],
    fmt: str,
    tokenizer: Any,
    mask_prompt: bool,
    max_seq_len: int,
) -> Example:
    """Tokenize one record and mark its training targets; truncate to ``max_seq_len``.

    ``tokenizer`` is a Hugging Face fast tokenizer (an mlx-lm TokenizerWrapper
    is unwrapped). Chat renderings are tokenized without added special tokens,
    as ``apply_chat_template`` does, so a template that writes its own BOS does
    not get a second one.
    """
    tokenizer = hf_tokenizer(tokenizer)
    data = record.data if isinstance(record, Record) else record
    where = (record.path, record.line) if isinstance(record, Record) else (None, None)
    if fmt == "text":
        tokens, mask = _encode_text(data["text"], tokenizer)
    elif fmt == "completion":
        if _has_chat_template(tokenizer):
            messages = [
                {"role": "user", "content": data["prompt"]},
                {"role": "assistant", "content": data["completion"]},
            ]
            tokens, mask = _encode_chat(messages, None, tokenizer, mask_prompt, where)
        else:
            tokens, mask = _encode_completion(data["prompt"], data["completion"], tokenizer, mask_prompt)
    elif fmt == "chat":
        if not _has_chat_template(tokenizer):
            raise DataError(
                "chat records need a tokenizer with a chat template, and this model has none: "
                "use a chat model, or write the data as prompt/completion or text records",
                *where,
            )
        tokens, mask = _encode_chat(data["messages"], data.get("tools"), tokenizer, mask_prompt, where)
    else:
        raise ValueError(f"unknown data format {fmt!r}")

    tokens = np.asarray(tokens, dtype=np.int32)
    mask = np.asarray(mask, dtype=bool)
    if len(mask):
        mask[0] = False  # nothing predicts the first token
    truncated = len(tokens) > max_seq_len
    if truncated:
        tokens, mask = tokens[:max_seq_len], mask[:max_seq_len]
    return Example(tokens, mask, truncated)


def encode_dataset(
    records: Sequence[Record | Mapping[str, Any]],
    fmt: str,
    tokenizer: Any,
    mask_prompt: bool,
    max_seq_len: int,
) -> tuple[list[Example], int]:
    """Encode every record; return the examples and how many were truncated.

    A record with no training target left (its answer lay wholly beyond
    ``max_seq_len``) is dropped, since it would only cost time: the number
    dropped is ``len(records) - len(examples)``, and dropped records also count
    as truncated.
    """
    examples: list[Example] = []
    n_truncated = 0
    for record in records:
        example = encode(record, fmt, tokenizer, mask_prompt, max_seq_len)
        n_truncated += example.truncated
        if example.loss_mask.any():
            examples.append(example)
    return examples, n_truncated


def hf_tokenizer(tokenizer: Any) -> Any:
    """The Hugging Face tokenizer inside mlx-lm's TokenizerWrapper, or the tokenizer itself."""
    # mlx-lm's TokenizerWrapper keeps the Hugging Face tokenizer in ._tokenizer;
    # a Hugging Face fast tokenizer also has a ._tokenizer (the Rust one), so
    # unwrap by type name, not by attribute.
    if type(tokenizer).__name__ == "TokenizerWrapper":
        return tokenizer._tokenizer
    return tokenizer


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _eos(tokenizer: Any) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return [] if eos is None else [int(eos)]


def _encode_text(text: str, tokenizer: Any) -> tuple[list[int], list[bool]]:
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = _eos(tokenizer)
    if eos and (not ids or ids[-1] != eos[0]):
        ids += eos
    return ids, [True] * len(ids)


def _encode_completion(
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


def _encode_chat(
    messages: list[dict[str, Any]],
    tools: list[Any] | None,
    tokenizer: Any,
    mask_prompt: bool,
    where: tuple[str | None, int | None],
) -> tuple[list[int], list[bool]]:
    full = _render(tokenizer, messages, tools, False, where)
    if not mask_prompt:
        ids = list(tokenizer(full, add_special_tokens=False)["input_ids"])
        return ids, [True] * len(ids)
    spans = _assistant_spans(tokenizer, messages, tools, full, where)
    ids, offsets = _tokenize_with_offsets(tokenizer, full, add_special_tokens=False)
    return ids, _mask_from_spans(offsets, spans)


def _render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[Any] | None,
    add_generation_prompt: bool,
    where: tuple[str | None, int | None],
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
    where: tuple[str | None, int | None],
) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in ``full``, found by rendering prefixes.

    The turn that answers ``messages[:i]`` starts where the rendering of
    ``messages[:i]`` with the generation prompt ends, which is exactly what the
    model sees at inference time, and ends where the rendering of
    ``messages[:i+1]`` ends (less trailing whitespace after the end-of-turn
    marker, which generation never reaches).
    """
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        try:
            prefix = _render(tokenizer, messages[:i], tools, True, where)
            upto = _render(tokenizer, messages[: i + 1], tools, False, where)
        except DataError:
            prefix = upto = None
        if prefix is None or not (upto.startswith(prefix) and full.startswith(upto)):
            raise DataError(
                f"the model's chat template does not render messages[{i}] (assistant) the same "
                "way in a partial and in the full conversation, so the assistant turns cannot be "
                "located: train with --no-mask-prompt",
                *where,
                "messages",
            )
        spans.append((len(prefix), len(upto.rstrip())))
    return spans


def _tokenize_with_offsets(
    tokenizer: Any, text: str, add_special_tokens: bool
) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    except NotImplementedError:
        raise ModelFormatError(
            "the tokenizer cannot map tokens to characters (it is not a 'fast' tokenizer), "
            "which masking the prompt needs: train with --no-mask-prompt"
        ) from None
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _mask_from_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """A token is a target when its characters overlap a trained span."""
    mask = []
    for s, e in offsets:
        mask.append(any(s < end and e > start for start, end in spans))
    return mask


# ------------------------------------------------------------------ batching


def epoch_steps(n_examples: int, batch_size: int) -> int:
    """Steps in one pass over the data; the last batch of an epoch may be smaller."""
    if n_examples <= 0:
        return 0
    return math.ceil(n_examples / min(batch_size, n_examples))


class BatchIterator:
    """Iterator over batches, with the facts a caller may want to report.

    ``note`` is set when the data set is smaller than the batch size (batches
    then hold every example); ``batch_size`` is the size actually used.
    ``consumed`` counts the batches handed out, and ``skip(n)`` passes over n
    without building them: a resumed run picks up the order where it stopped.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        batch_size: int,
        seed: int,
        loop: bool,
        pad_multiple: int = 8,
        shard: tuple[int, int] = (0, 1),
    ):
        if not examples:
            raise DataError("no examples to train on: every record was empty or dropped")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        n = len(examples)
        self.examples = examples
        self.batch_size = min(batch_size, n)
        self.steps_per_epoch = epoch_steps(n, batch_size)
        self.note = (
            f"only {n} examples, fewer than the batch size {batch_size}: using batches of {n}"
            if n < batch_size
            else None
        )
        self.consumed = 0
        self.shard = shard  # (rank, size): this process's share of each batch in a distributed run
        self._pad_multiple = pad_multiple
        self._chunks = self._order(np.random.default_rng(seed), loop)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Batch | None:
        """The next batch (this rank's share of it; None when that share is empty)."""
        rank, size = self.shard
        chunk = next(self._chunks)[rank::size]
        self.consumed += 1
        return make_batch([self.examples[i] for i in chunk], self._pad_multiple) if len(chunk) else None

    def skip(self, n: int) -> None:
        for _ in range(n):
            next(self._chunks)
            self.consumed += 1

    def _order(self, rng: np.random.Generator, loop: bool) -> Iterator[np.ndarray]:
        lengths = np.array([len(e) for e in self.examples])
        bs = self.batch_size
        while True:
            # Sort by length (ties broken at random, so equal-length examples meet
            # different neighbours each epoch), chunk, and shuffle the chunks.
            order = rng.permutation(len(lengths))
            order = order[np.argsort(lengths[order], kind="stable")]
            chunks = [order[i : i + bs] for i in range(0, len(order), bs)]
            for c in rng.permutation(len(chunks)):
                yield chunks[c]
            if not loop:
                return


def iterate_batches(
    examples: Sequence[Example], batch_size: int, seed: int, loop: bool, shard: tuple[int, int] = (0, 1)
) -> BatchIterator:
    """Batches of similar-length examples in a seeded random order.

    Grouping by length keeps padding small; padding T to a multiple of 8 keeps
    the number of distinct shapes (and so of compiled graphs) small. With
    ``loop`` the examples are reshuffled into new batches each epoch, forever.
    """
    return BatchIterator(examples, batch_size, seed, loop, shard=shard)


def make_batch(examples: Sequence[Example], pad_multiple: int = 8) -> Batch:
    """Shift by one into inputs/targets and right-pad to a common length."""
    lengths = np.array([max(len(e) - 1, 0) for e in examples], dtype=np.int32)
    T = max(int(lengths.max()), 1)
    T = -(-T // pad_multiple) * pad_multiple
    B = len(examples)
    inputs = np.zeros((B, T), dtype=np.int32)  # (B, T)
    targets = np.zeros((B, T), dtype=np.int32)  # (B, T)
    mask = np.zeros((B, T), dtype=np.float32)  # (B, T)
    for b, (e, n) in enumerate(zip(examples, lengths)):
        inputs[b, :n] = e.tokens[:-1]
        targets[b, :n] = e.tokens[1:]
        mask[b, :n] = e.loss_mask[1:]
    return Batch(inputs, targets, mask, lengths, int(mask.sum()))
