"""From validated records to training batches: tokenize, template, mask, batch.

An ``Example`` is one record's token ids and a loss mask: ``loss_mask[t]`` says
token ``t`` is a training target, predicted from ``tokens[:t]`` (so
``loss_mask[0]`` is always False: nothing predicts the first token). Which
tokens are targets is what makes a fine-tune learn the answers rather than the
questions, and each data format decides it (``formats``):

- text: every token, plus an end-of-sequence token so the model learns to stop;
- prompt/completion: the completion and the end-of-turn (or eos) after it;
- chat: every assistant turn (but those with ``"weight": 0``), its content and
  its end-of-turn marker.

Without ``mask_prompt`` every token after the first is a target (but the
turns with weight 0).

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

from . import formats
from .records import Record
from ..errors import DataError
from .formats import DataFormat
from .rendering import hf_tokenizer


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
    """Padded arrays for one step; row b is real for its first ``lengths[b]`` positions.

    An unpacked batch holds one record per row and ``positions`` and
    ``segments`` are None. A packed batch (``--pack``) holds several records per
    row, each contributing its own shifted pairs ``tokens[:-1] -> tokens[1:]``
    (a target never crosses a record boundary), one after the other, then
    padding; ``inputs``/``targets``/``mask``/``lengths`` keep their meaning
    (``lengths[b]`` = the real positions of row b, all its records together).
    Two (B, T) int32 arrays then say where each input token sits:

    - ``positions[b, t]``: the token's position within its own record (0, 1, ...;
      0 on padding); rotary embeddings use it instead of ``t``;
    - ``segments[b, t]``: which record of the row the token belongs to (1, 2, ...;
      0 on padding).

    Attention of query t to key s in row b is allowed iff ``s <= t`` and
    ``segments[b, s] == segments[b, t]`` (a sliding-window layer also needs
    ``t - s < window``): block-diagonal causal, so each record sees only itself
    and its loss and gradients equal those of the record alone.
    """

    inputs: np.ndarray  # (B, T) int32
    targets: np.ndarray  # (B, T) int32
    mask: np.ndarray  # (B, T) float32, 1 where the target is trained
    lengths: np.ndarray  # (B,) int32, unpadded length of each row
    n_tokens: int  # trained targets in the batch, sum(mask)
    positions: np.ndarray | None = None  # (B, T) int32, position within the record; None when unpacked
    segments: np.ndarray | None = None  # (B, T) int32, record number in the row (1, 2, ...), 0 on padding


# ------------------------------------------------------------------ encoding


def encode(
    record: Record | Mapping[str, Any],
    fmt: DataFormat | str,
    tokenizer: Any,
    mask_prompt: bool,
    max_seq_len: int,
) -> Example:
    """Tokenize one record as its format says and mark its training targets; truncate to ``max_seq_len``.

    ``fmt`` is a ``formats.DataFormat`` (or its name); ``tokenizer`` a Hugging
    Face fast tokenizer (an mlx-lm TokenizerWrapper is unwrapped).
    """
    tokenizer = hf_tokenizer(tokenizer)
    data = record.data if isinstance(record, Record) else record
    where = (record.path, record.line) if isinstance(record, Record) else (None, None)
    tokens, mask = formats.get(fmt).encode(data, tokenizer, mask_prompt, where)

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
    fmt: DataFormat | str,
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
