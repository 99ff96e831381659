"""From validated records to encoded examples, held compactly: ``Example`` and ``ExampleStore``.

An ``Example`` is one record's token ids and a loss mask (what the mask means:
``batching``). A data set's examples are an ``ExampleStore``: three flat
arrays (every example's tokens one after another as int32, their loss masks as
one bit per token, and int64 offsets), so a million short records cost a
little over four bytes per token and thirteen per record, not a Python object,
two numpy arrays and their headers each. ``store[i]`` is an Example whose
tokens are a view into the store and whose mask is unpacked from its bits;
``store.lengths`` the tokens per example as an array.

Records are tokenized in chunks: a format whose tokenization batches (text,
prompt/completion without a chat template) encodes a chunk in one call of the
fast tokenizer (``DataFormat.encode_batch``), many times faster than a call
per record; chats go through the chat template one by one.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any

import numpy as np

from . import formats
from .formats import DataFormat
from .records import Record
from .rendering import hf_tokenizer

CHUNK = 2048  # records tokenized per call: large enough to amortise the call, small next to the data
_BLOCK_TOKENS = 1 << 22  # tokens per block while a store is built (16 MB of int32)
_BITS = np.array([bin(i).count("1") for i in range(256)], np.uint8)  # bits set in each byte value


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


class ExampleStore(Sequence):
    """The examples of a data set in flat arrays; example ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``.

    ``mask`` holds the loss mask of every token as bits (``np.packbits``,
    little-endian bit order: token t is bit ``t % 8`` of byte ``t // 8``);
    ``truncated`` (n,) bool says which examples ``max_seq_len`` cut. Indexing
    gives an ``Example``; a slice gives a list of them.
    """

    def __init__(self, tokens: np.ndarray, mask: np.ndarray, offsets: np.ndarray, truncated: np.ndarray | None = None):
        self.tokens = np.asarray(tokens, dtype=np.int32)  # (N,)
        self.mask = np.asarray(mask, dtype=np.uint8)  # (ceil(N / 8),) packed bits
        self.offsets = np.asarray(offsets, dtype=np.int64)  # (n + 1,)
        n = len(self.offsets) - 1
        self.truncated = np.zeros(n, bool) if truncated is None else np.asarray(truncated, dtype=bool)  # (n,)
        if n < 0 or self.offsets[0] != 0 or self.offsets[-1] != len(self.tokens) or len(self.mask) != -(-len(self.tokens) // 8) or len(self.truncated) != n:
            raise ValueError(f"inconsistent example store: {len(self.tokens)} tokens, {len(self.mask)} mask bytes, {len(self.offsets)} offsets, {len(self.truncated)} flags")
        self.lengths = np.diff(self.offsets).astype(np.int32)  # (n,): tokens per example

    @classmethod
    def from_examples(cls, examples: Sequence[Example]) -> ExampleStore:
        lengths = np.array([len(e) for e in examples], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = np.concatenate([e.tokens for e in examples]).astype(np.int32) if len(examples) else np.zeros(0, np.int32)
        mask = np.concatenate([e.loss_mask for e in examples]).astype(bool) if len(examples) else np.zeros(0, bool)
        return cls(tokens, np.packbits(mask, bitorder="little"), offsets, np.array([e.truncated for e in examples], dtype=bool))

    def loss_mask(self, a: int, b: int) -> np.ndarray:
        """(b - a,) bool: the loss mask of tokens a to b, unpacked."""
        first = a & 7
        return np.unpackbits(self.mask[a >> 3 : (b + 7) >> 3], bitorder="little")[first : first + b - a].view(np.bool_)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i):  # int -> Example, slice -> list[Example]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"example {i} of {n}")
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return Example(self.tokens[a:b], self.loss_mask(a, b), bool(self.truncated[i]))

    def __iter__(self) -> Iterator[Example]:
        return (self[i] for i in range(len(self)))

    @property
    def n_targets(self) -> int:
        """Trained tokens over all examples."""
        return int(_BITS[self.mask].sum(dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.tokens.nbytes + self.mask.nbytes + self.offsets.nbytes + self.truncated.nbytes

    def update_hash(self, h: Any, chunk: int = 1 << 16) -> None:
        """Feed ``h`` (a hashlib object) the examples as a list of them always was: the count, then per example
        its length (8 bytes), its tokens (int32 LE) and its mask (a byte per token). Built a chunk at a time."""
        n = len(self)
        h.update(n.to_bytes(8, "little"))
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            lengths = self.lengths[lo:hi].astype(np.int64)  # (k,)
            a, b = int(self.offsets[lo]), int(self.offsets[hi])
            sizes = 8 + 5 * lengths
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # where each example's bytes begin
            out = np.empty(int(sizes.sum()), np.uint8)
            for k in range(8):  # the length, little-endian, a byte at a time
                out[starts + k] = (lengths >> (8 * k)) & 0xFF
            within = np.arange(b - a) - np.repeat(self.offsets[lo:hi] - a, lengths)  # (T,) position in its example
            tok_at = np.repeat(starts + 8, lengths) + 4 * within
            tokens = self.tokens[a:b].astype("<i4").view(np.uint8).reshape(-1, 4)
            for k in range(4):
                out[tok_at + k] = tokens[:, k]
            out[np.repeat(starts + 8 + 4 * lengths, lengths) + within] = self.loss_mask(a, b)
            h.update(out.tobytes())


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


@dataclass
class Chunk:
    """Some records encoded, untruncated: their tokens and masks one after another, and their lengths."""

    tokens: np.ndarray  # (T,) int32
    mask: np.ndarray  # (T,) bool, False at each record's first token
    lengths: np.ndarray  # (k,) int64

    def within(self) -> np.ndarray:
        """(T,) each token's position in its record."""
        starts = np.cumsum(self.lengths) - self.lengths
        return np.arange(len(self.tokens)) - np.repeat(starts, self.lengths)


def encode_chunks(records: Sequence[Record | Mapping[str, Any]], fmt: DataFormat | str, tokenizer: Any, mask_prompt: bool, size: int = CHUNK) -> Iterator[Chunk]:
    """Encode ``records`` ``size`` at a time, in order (``encode`` of each, but for the truncation)."""
    fmt, tokenizer = formats.get(fmt), hf_tokenizer(tokenizer)
    it = iter(records)
    while batch := list(islice(it, size)):
        datas = [r.data if isinstance(r, Record) else r for r in batch]
        wheres = [(r.path, r.line) if isinstance(r, Record) else (None, None) for r in batch]
        encoded = fmt.encode_batch(datas, tokenizer, mask_prompt, wheres)
        lengths = np.fromiter((len(ids) for ids, _ in encoded), np.int64, len(encoded))
        total = int(lengths.sum())
        tokens = np.fromiter(chain.from_iterable(ids for ids, _ in encoded), np.int32, total)
        mask = np.fromiter(chain.from_iterable(m for _, m in encoded), bool, total)
        chunk = Chunk(tokens, mask, lengths)
        mask[chunk.within() == 0] = False  # nothing predicts the first token
        yield chunk


def encode_dataset(
    records: Sequence[Record | Mapping[str, Any]],
    fmt: DataFormat | str,
    tokenizer: Any,
    mask_prompt: bool,
    max_seq_len: int,
) -> tuple[ExampleStore, int]:
    """Encode every record; return the examples and how many were truncated.

    A record with no training target left (its answer lay wholly beyond
    ``max_seq_len``) is dropped, since it would only cost time: the number
    dropped is ``len(records) - len(examples)``, and dropped records also count
    as truncated.
    """
    builder = _Builder()
    n_truncated = 0
    for chunk in encode_chunks(records, fmt, tokenizer, mask_prompt):
        kept = chunk.within() < max_seq_len  # (T,)
        record = np.repeat(np.arange(len(chunk.lengths)), chunk.lengths)  # (T,) which record each token is of
        trained = np.bincount(record[kept & chunk.mask], minlength=len(chunk.lengths))  # (k,)
        keep = trained > 0
        cut = chunk.lengths > max_seq_len
        n_truncated += int(cut.sum())
        kept &= keep[record]
        builder.add(chunk.tokens[kept], chunk.mask[kept], np.minimum(chunk.lengths, max_seq_len)[keep], cut[keep])
    store = builder.store()
    release_free_memory()
    return store, n_truncated


def release_free_memory() -> None:
    """Give the memory freed while tokenizing back to the system, where the C library allows (glibc's malloc_trim).

    The tokenizer's threads leave their scratch memory in glibc's arenas,
    freed but held (about 25 MB after a few hundred thousand records): a
    training run would carry it to its peak, with the model loaded.
    """
    import ctypes
    import ctypes.util

    try:
        name = ctypes.util.find_library("c")
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
        if trim is not None:
            trim(0)
    except OSError:
        pass


def lazy_empty(n: int, dtype: Any) -> np.ndarray:
    """An (n,) array in memory of its own mapping: pages count once written, and go back to the system with the array."""
    dtype = np.dtype(dtype)
    return np.frombuffer(mmap.mmap(-1, n * dtype.itemsize), dtype) if n else np.zeros(0, dtype)


class _Builder:
    """Examples appended a chunk at a time into blocks, then laid out in one array per field.

    Growing one array would copy it at every growth (briefly twice its size);
    the blocks are released one by one while the final arrays fill, so the
    peak stays near the data's size plus one block.
    """

    def __init__(self):
        self.blocks: list[tuple[np.ndarray, np.ndarray, int]] = []  # (tokens, mask, used)
        self.lengths: list[np.ndarray] = []
        self.truncated: list[np.ndarray] = []

    def add(self, tokens: np.ndarray, mask: np.ndarray, lengths: np.ndarray, truncated: np.ndarray) -> None:
        self.lengths.append(lengths)
        self.truncated.append(truncated)
        if not self.blocks or self.blocks[-1][2] + len(tokens) > len(self.blocks[-1][0]):
            size = max(_BLOCK_TOKENS, len(tokens))
            self.blocks.append((lazy_empty(size, np.int32), lazy_empty(size, np.uint8), 0))
        block_tokens, block_mask, used = self.blocks[-1]
        block_tokens[used : used + len(tokens)] = tokens
        block_mask[used : used + len(tokens)] = mask
        self.blocks[-1] = (block_tokens, block_mask, used + len(tokens))

    def store(self) -> ExampleStore:
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        truncated = np.concatenate(self.truncated) if self.truncated else np.zeros(0, bool)
        total = int(lengths.sum())
        tokens, mask = lazy_empty(total, np.int32), lazy_empty(total, np.uint8)
        at = 0
        while self.blocks:
            block_tokens, block_mask, used = self.blocks.pop(0)
            tokens[at : at + used], mask[at : at + used] = block_tokens[:used], block_mask[:used]
            at += used
            del block_tokens, block_mask  # the block's mapping goes back to the system
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        bits = np.packbits(mask, bitorder="little")
        del mask  # its mapping goes back to the system: the bits are an eighth of it
        return ExampleStore(tokens, bits, offsets, truncated)
