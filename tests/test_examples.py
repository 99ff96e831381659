"""mlxtune.data.examples: the compact ExampleStore equals the per-record encoding, record for record."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from mlxtune.data.batching import iterate_batches, make_batch
from mlxtune.data.examples import Example, ExampleStore, encode, encode_dataset
from mlxtune.data.records import load_jsonl

from conftest import NOTES


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def plain_tok(tiny_model):
    """The tiny tokenizer without its chat template: prompt/completion is then plain text, batched."""
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_model)
    t.chat_template = None
    return t


WORDS = "the cat sat on a mat and then it ran far away from home today with some friends".split()


def _text(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _records(tmp_path, kind: str, n: int = 60):
    rng = np.random.default_rng(0)
    path = tmp_path / f"{kind}.jsonl"
    rows = []
    for i in range(n):
        if kind == "text":
            rows.append({"text": _text(rng, int(rng.integers(1, 40)))})
        elif kind == "completion":
            rows.append({"prompt": _text(rng, int(rng.integers(1, 30))) + " ->", "completion": " " + _text(rng, int(rng.integers(1, 20)))})
    if kind == "chat":
        path.write_text("".join(NOTES.read_text().splitlines(keepends=True)[:n]))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_jsonl(path)


def _old_encoding(ds, tokenizer, mask_prompt, max_seq_len):
    """The list of Examples encode_dataset returned before the store: one ``encode`` per record, empty ones dropped."""
    examples, n_truncated = [], 0
    for record in ds:
        e = encode(record, ds.format, tokenizer, mask_prompt, max_seq_len)
        n_truncated += e.truncated
        if e.loss_mask.any():
            examples.append(e)
    return examples, n_truncated


@pytest.mark.parametrize("kind, which", [("text", "tok"), ("completion", "plain_tok"), ("completion", "tok"), ("chat", "tok")])
@pytest.mark.parametrize("mask_prompt", [True, False])
@pytest.mark.parametrize("max_seq_len", [10_000, 24, 8])
def test_store_equals_the_per_record_encoding(tmp_path, request, kind, which, mask_prompt, max_seq_len):
    tokenizer = request.getfixturevalue(which)
    ds = _records(tmp_path, kind, n=24 if kind == "chat" else 60)
    old, old_truncated = _old_encoding(ds, tokenizer, mask_prompt, max_seq_len)
    store, n_truncated = encode_dataset(ds, ds.format, tokenizer, mask_prompt, max_seq_len)
    assert isinstance(store, ExampleStore) and store.tokens.dtype == np.int32 and len(store.mask) == -(-len(store.tokens) // 8)
    assert n_truncated == old_truncated and len(store) == len(old)
    if max_seq_len == 8 and kind != "text" and mask_prompt:
        assert len(store) < len(ds)  # some records dropped: their targets lay beyond the cut
    if max_seq_len < 100:
        assert n_truncated > 0
    assert store.lengths.tolist() == [len(e) for e in old]
    for new, ref in zip(store, old):
        assert new.tokens.tolist() == ref.tokens.tolist()
        assert new.loss_mask.dtype == np.bool_ and new.loss_mask.tolist() == ref.loss_mask.tolist()
        assert new.truncated == ref.truncated
    assert store.n_targets == sum(e.n_targets for e in old)


def test_batched_text_encoding_is_the_per_record_one(tok, plain_tok):
    """encode_batch (one tokenizer call per chunk) against encode (one call per record), straight from the format."""
    from mlxtune.data import formats

    rng = np.random.default_rng(1)
    texts = [{"text": _text(rng, int(rng.integers(1, 30)))} for _ in range(40)]
    pairs = [{"prompt": _text(rng, 5), "completion": " " + _text(rng, 6)} for _ in range(40)]
    alpaca = [{"instruction": _text(rng, 4), "output": _text(rng, 5)} | ({"input": _text(rng, 3)} if i % 2 else {}) | ({"system": "be brief"} if i % 3 == 0 else {}) for i in range(40)]
    where = [(None, None)] * 40
    cases = ((formats.TEXT, texts, tok), (formats.COMPLETION, pairs, plain_tok), (formats.COMPLETION, pairs, tok), (formats.ALPACA, alpaca, plain_tok), (formats.ALPACA, alpaca, tok))
    for fmt, datas, t in cases:
        for mask_prompt in (True, False):
            assert fmt.encode_batch(datas, t, mask_prompt, where) == [fmt.encode(d, t, mask_prompt, w) for d, w in zip(datas, where)]


def test_store_indexing_slicing_and_batches(tmp_path, tok):
    ds = _records(tmp_path, "chat", n=24)
    store, _ = encode_dataset(ds, ds.format, tok, True, 512)
    old, _ = _old_encoding(ds, tok, True, 512)
    assert store[-1].tokens.tolist() == old[-1].tokens.tolist()
    assert [e.tokens.tolist() for e in store[2:5]] == [e.tokens.tolist() for e in old[2:5]]
    assert np.shares_memory(store[3].tokens, store.tokens)  # a view, not a copy
    with pytest.raises(IndexError):
        store[len(store)]
    # the batches are the same, in the same order, whether the examples are a list or a store
    for a, b in zip(iterate_batches(store, 4, seed=3, loop=False), iterate_batches(old, 4, seed=3, loop=False)):
        assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.mask, b.mask)
    assert np.array_equal(make_batch(store[:3]).targets, make_batch(old[:3]).targets)
    assert np.array_equal(make_batch(store).mask, make_batch(old).mask)  # the store itself, as a sequence
    again = ExampleStore.from_examples(old)
    assert np.array_equal(again.tokens, store.tokens) and np.array_equal(again.offsets, store.offsets)


def test_update_hash_is_the_fingerprint_runs_always_had(tmp_path, tok):
    """A resumed run compares this digest with the one its checkpoint holds: it must not change with the storage."""
    ds = _records(tmp_path, "chat", n=24)
    store, _ = encode_dataset(ds, ds.format, tok, True, 40)
    old, _ = _old_encoding(ds, tok, True, 40)
    h = hashlib.sha256()
    h.update(len(old).to_bytes(8, "little"))
    for e in old:  # as train._Setup.fingerprint hashed a list of Examples
        h.update(len(e.tokens).to_bytes(8, "little"))
        h.update(e.tokens.astype("<i4").tobytes())
        h.update(e.loss_mask.astype("u1").tobytes())
    for chunk in (1, 5, 1 << 16):
        mine = hashlib.sha256()
        store.update_hash(mine, chunk=chunk)
        assert mine.hexdigest() == h.hexdigest()


def test_store_of_many_records_is_compact(tok):
    """Ten thousand records: a few flat arrays, a bit over four bytes a token and thirteen a record."""
    records = [{"text": f"record {i} " + "cat " * (i % 7)} for i in range(10_000)]
    store, _ = encode_dataset(records, "text", tok, False, 512)
    assert len(store) == 10_000
    assert store.nbytes <= 4.125 * len(store.tokens) + 13 * len(store) + 9
    assert store[1234].tokens.tolist() == encode(records[1234], "text", tok, False, 512).tokens.tolist()


def test_empty_store():
    store = ExampleStore.from_examples([])
    assert len(store) == 0 and not store and store.lengths.tolist() == [] and store[0:3] == []
    one = ExampleStore.from_examples([Example(np.array([5, 6], np.int32), np.array([False, True]))])
    assert len(one) == 1 and one[0].n_targets == 1


def test_a_tokenizer_set_to_truncate_is_not_cut_short(tiny_model):
    """A tokenizer.json may carry truncation: transformers' call turns it off, and so does the batched encoding."""
    from transformers import AutoTokenizer

    from mlxtune.data import formats

    t = AutoTokenizer.from_pretrained(tiny_model)
    t.backend_tokenizer.enable_truncation(8)
    datas = [{"text": "the cat sat on a mat " * 6}, {"text": "and then it ran far away " * 5}]
    batched = formats.TEXT.encode_batch(datas, t, False, [(None, None)] * 2)
    assert all(len(ids) > 20 for ids, _ in batched)
    assert batched == [formats.TEXT.encode(d, t, False, (None, None)) for d in datas]
