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

Packing (``--pack``, ``pack_rows``) puts several records in a row of up to
``max_seq_len`` input tokens, each attending to itself only (see ``Batch``):
short records then fill rows instead of padding them.
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
    and its loss and gradients equal those of the record alone. One exception,
    as in an unpacked batch: LongRoPE (Phi-3) chooses its factors by the
    longest sequence, so a short record packed (or batched) beside one beyond
    the original context is rotated with the long factors, as transformers does
    for a padded batch.
    """

    inputs: np.ndarray  # (B, T) int32
    targets: np.ndarray  # (B, T) int32
    mask: np.ndarray  # (B, T) float32, 1 where the target is trained
    lengths: np.ndarray  # (B,) int32, unpadded length of each row
    n_tokens: int  # trained targets in the batch, sum(mask)
    positions: np.ndarray | None = None  # (B, T) int32, position within the record; None when unpacked
    segments: np.ndarray | None = None  # (B, T) int32, record number in the row (1, 2, ...), 0 on padding


# ------------------------------------------------------------------ batching


def epoch_steps(n_examples: int, batch_size: int) -> int:
    """Steps in one pass over the data; the last batch of an epoch may be smaller.

    ``n_examples`` counts rows: examples, or packed rows (``batch_rows``).
    """
    if n_examples <= 0:
        return 0
    return math.ceil(n_examples / min(batch_size, n_examples))


def _lengths(examples: Sequence[Example]) -> np.ndarray:
    """The tokens of each example, (n,) int64: a store's own ``lengths`` array, or counted."""
    stored = getattr(examples, "lengths", None)
    if stored is not None:
        return np.asarray(stored, dtype=np.int64)
    return np.array([len(examples[i]) for i in range(len(examples))], dtype=np.int64)


def pack_rows(lengths: np.ndarray, capacity: int, order: np.ndarray | None = None) -> list[np.ndarray]:
    """Examples (by index) into rows of at most ``capacity`` input tokens: best-fit decreasing.

    An example of L tokens takes L - 1 input positions (``make_packed_batch``).
    Taken from the longest down, each goes into the row it fills most
    closely, or a new row. Among examples of equal length ``order`` (a
    permutation; None: by index) decides which goes first, so a shuffled
    order changes which records share a row but never how many rows there
    are: the number of rows of a data set is the same in every epoch.
    """
    sizes = np.asarray(lengths, dtype=np.int64) - 1  # input tokens of each example
    if len(sizes) and sizes.max() > capacity:
        raise ValueError(f"an example of {sizes.max() + 1} tokens does not fit rows of {capacity} input tokens")
    order = np.arange(len(sizes)) if order is None else np.asarray(order)
    order = order[np.argsort(-sizes[order], kind="stable")]  # longest first, ties as ``order`` has them
    rows: list[list[int]] = []
    by_room: list[list[int]] = [[] for _ in range(capacity + 1)]  # room left -> rows with that much room
    has_room = 0  # bit r set: by_room[r] is not empty (a Python int: finding the least room that fits is two int ops)
    for i, size in zip(order.tolist(), sizes[order].tolist()):
        fits = has_room >> size
        if fits:
            r = size + (fits & -fits).bit_length() - 1  # the least room that fits
            row = by_room[r].pop()
            if not by_room[r]:
                has_room &= ~(1 << r)
            rows[row].append(i)
        else:
            row, r = len(rows), capacity
            rows.append([i])
        by_room[r - size].append(row)
        has_room |= 1 << (r - size)
    return [np.array(row, dtype=np.int64) for row in rows]


def batch_rows(examples: Sequence[Example], pack: int | None = None) -> int:
    """The rows an epoch of ``examples`` makes: one per example, or packed into rows of ``pack`` input tokens."""
    return len(examples) if pack is None else len(pack_rows(_lengths(examples), pack))


class BatchIterator:
    """Iterator over batches, with the facts a caller may want to report.

    ``note`` is set when the data set is smaller than the batch size (batches
    then hold every example); ``batch_size`` is the size actually used.
    ``consumed`` counts the batches handed out, and ``skip(n)`` passes over n
    without building them: a resumed run picks up the order where it stopped.

    ``pack``: rows of up to this many input tokens, each holding as many
    examples as fit (``pack_rows``, on each epoch's seeded shuffle);
    ``batch_size`` then counts rows, and each batch is a packed ``Batch``.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        batch_size: int,
        seed: int,
        loop: bool,
        pad_multiple: int = 8,
        shard: tuple[int, int] = (0, 1),
        pack: int | None = None,
    ):
        if not examples:
            raise DataError("no examples to train on: every record was empty or dropped")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.examples, self.pack = examples, pack
        self.lengths = _lengths(examples)
        rng = np.random.default_rng(seed)
        first = None if pack is None else pack_rows(self.lengths, pack, rng.permutation(len(examples)))  # the first epoch's rows
        self.rows = n = len(examples) if first is None else len(first)  # rows per epoch (the same in every epoch)
        self.batch_size = min(batch_size, n)
        self.steps_per_epoch = epoch_steps(n, batch_size)
        what = "examples" if pack is None else f"packed rows (of {len(examples)} examples)"
        self.note = (
            f"only {n} {what}, fewer than the batch size {batch_size}: using batches of {n}"
            if n < batch_size
            else None
        )
        self.consumed = 0
        self.shard = shard  # (rank, size): this process's share of each batch in a distributed run
        self._pad_multiple = pad_multiple
        self._chunks = self._order(rng, loop, first)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Batch | None:
        """The next batch (this rank's share of it; None when that share is empty)."""
        rank, size = self.shard
        chunk = next(self._chunks)[rank::size]  # example indices, or packed rows of them
        self.consumed += 1
        if not len(chunk):
            return None
        if self.pack is not None:
            return make_packed_batch([[self.examples[i] for i in row] for row in chunk], self._pad_multiple)
        return make_batch([self.examples[i] for i in chunk], self._pad_multiple)

    def skip(self, n: int) -> None:
        for _ in range(n):
            next(self._chunks)
            self.consumed += 1

    def _order(self, rng: np.random.Generator, loop: bool, rows: list[np.ndarray] | None) -> Iterator[np.ndarray | list[np.ndarray]]:
        bs = self.batch_size
        while True:
            lengths = self.lengths
            if self.pack is not None:  # packed anew each epoch, from a shuffle: other records share a row
                rows = rows or pack_rows(self.lengths, self.pack, rng.permutation(len(self.lengths)))
                lengths = np.array([int(self.lengths[row].sum()) - len(row) for row in rows])  # input tokens of each row
            # Sort by length (ties broken at random, so equal-length examples meet
            # different neighbours each epoch), chunk, and shuffle the chunks.
            order = rng.permutation(len(lengths))
            order = order[np.argsort(lengths[order], kind="stable")]
            for c in rng.permutation(-(-len(order) // bs)):  # chunk c is order[c * bs : (c + 1) * bs], sliced when drawn
                chunk = order[c * bs : (c + 1) * bs]
                yield chunk if self.pack is None else [rows[j] for j in chunk]
            if not loop:
                return
            rows = None


def iterate_batches(
    examples: Sequence[Example], batch_size: int, seed: int, loop: bool, shard: tuple[int, int] = (0, 1), pack: int | None = None
) -> BatchIterator:
    """Batches of similar-length examples in a seeded random order.

    Grouping by length keeps padding small; padding T to a multiple of 8 keeps
    the number of distinct shapes (and so of compiled graphs) small. With
    ``loop`` the examples are reshuffled into new batches each epoch, forever.
    ``pack``: packed rows of up to this many input tokens (``BatchIterator``).
    """
    return BatchIterator(examples, batch_size, seed, loop, shard=shard, pack=pack)


def make_batch(examples: Sequence[Example], pad_multiple: int = 8) -> Batch:
    """Shift by one into inputs/targets and right-pad to a common length."""
    lengths = np.array([max(len(e) - 1, 0) for e in examples], dtype=np.int32)
    inputs, targets, mask = _padded(lengths, pad_multiple, np.int32, np.int32, np.float32)  # (B, T) each
    for b, (e, n) in enumerate(zip(examples, lengths)):
        inputs[b, :n] = e.tokens[:-1]
        targets[b, :n] = e.tokens[1:]
        mask[b, :n] = e.loss_mask[1:]
    return Batch(inputs, targets, mask, lengths, int(mask.sum()))


def make_packed_batch(rows: Sequence[Sequence[Example]], pad_multiple: int = 8) -> Batch:
    """A packed ``Batch``: each row the examples' shifted pairs one after the other, then padding.

    An example contributes ``tokens[:-1] -> tokens[1:]`` (mask ``loss_mask[1:]``)
    at positions 0 .. L-2 of its own, numbered as the row's j-th segment (1, 2, ...).
    """
    sizes = [[max(len(e) - 1, 0) for e in row] for row in rows]
    lengths = np.array([sum(s) for s in sizes], dtype=np.int32)
    inputs, targets, mask, positions, segments = _padded(lengths, pad_multiple, np.int32, np.int32, np.float32, np.int32, np.int32)  # (B, T) each
    for b, (row, row_sizes) in enumerate(zip(rows, sizes)):
        t = 0
        for j, (e, n) in enumerate(zip(row, row_sizes), start=1):
            tokens = e.tokens
            inputs[b, t : t + n] = tokens[:-1]
            targets[b, t : t + n] = tokens[1:]
            mask[b, t : t + n] = e.loss_mask[1:]
            positions[b, t : t + n] = np.arange(n)
            segments[b, t : t + n] = j
            t += n
    return Batch(inputs, targets, mask, lengths, int(mask.sum()), positions, segments)


def _padded(lengths: np.ndarray, pad_multiple: int, *dtypes) -> list[np.ndarray]:
    """Zeroed (B, T) arrays of these dtypes, T the longest row rounded up to ``pad_multiple`` (at least one)."""
    T = max(int(lengths.max()), 1)
    T = -(-T // pad_multiple) * pad_multiple
    return [np.zeros((len(lengths), T), dtype=dtype) for dtype in dtypes]
