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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .examples import Example, ExampleStore, encode, encode_dataset  # noqa: F401 (the encoding side, part of this module's interface)
from .rendering import hf_tokenizer  # noqa: F401 (part of this module's interface)


@dataclass
class Batch:
    """Padded arrays for one step; row b is real for its first ``lengths[b]`` positions."""

    inputs: np.ndarray  # (B, T) int32
    targets: np.ndarray  # (B, T) int32
    mask: np.ndarray  # (B, T) float32, 1 where the target is trained
    lengths: np.ndarray  # (B,) int32, unpadded length of each row
    n_tokens: int  # trained targets in the batch, sum(mask)


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
        lengths = self.examples.lengths if isinstance(self.examples, ExampleStore) else np.array([len(e) for e in self.examples])
        bs = self.batch_size
        while True:
            # Sort by length (ties broken at random, so equal-length examples meet
            # different neighbours each epoch), chunk, and shuffle the chunks.
            order = rng.permutation(len(lengths))
            order = order[np.argsort(lengths[order], kind="stable")]
            for c in rng.permutation(-(-len(order) // bs)):  # chunk c is order[c * bs : (c + 1) * bs], sliced when drawn
                yield order[c * bs : (c + 1) * bs]
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
