"""mlxtune.data.token_cache: a run's tokens are computed once and read back while nothing that decides them changed."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from mlxtune.data import token_cache
from mlxtune.data.examples import encode_dataset
from mlxtune.data.records import load_data, trains_prompt_masked
from mlxtune.models.tokenizer import load_tokenizer
from mlxtune.training.config import TrainConfig
from mlxtune.training.train import resume, train


def _encode(cfg, model_dir, run_dir):
    """What train._prepare does: load, tokenize (or read the cache); the notes it gives."""
    splits = load_data(cfg.data, valid_fraction=cfg.valid_fraction, seed=cfg.seed)
    tokenizer = load_tokenizer(model_dir, thinking=cfg.thinking)
    notes = []
    mask_prompt = trains_prompt_masked(splits.format, cfg.mask_prompt)
    encoded = token_cache.encode_splits(splits, tokenizer, mask_prompt, cfg, model_dir, run_dir, notes.append)
    return splits, tokenizer, encoded, notes


@pytest.fixture
def setting(tiny_model, small_data, tmp_path):
    cfg = TrainConfig(model=str(tiny_model), data=str(small_data), max_seq_len=256)
    return cfg, tiny_model, tmp_path / "runs" / "a"


def _entries(run_dir):
    root = token_cache.cache_root(run_dir)
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_miss_then_hit_with_the_same_examples(setting):
    cfg, model_dir, run_dir = setting
    splits, tokenizer, first, notes = _encode(cfg, model_dir, run_dir)
    assert len(notes) == 1 and notes[0].startswith("tokens: tokenized 22 train and 2 valid records and cached them in ")
    assert len(_entries(run_dir)) == 1
    _, _, second, notes = _encode(cfg, model_dir, run_dir.parent / "b")  # another run beside it
    assert len(notes) == 1 and notes[0].startswith("tokens: reused 22 train and 2 valid examples cached in ") and "nothing tokenized" in notes[0]
    fresh, n_truncated = encode_dataset(splits.train, splits.format, tokenizer, True, cfg.max_seq_len)
    for store in (first.train, second.train):
        assert np.array_equal(store.tokens, fresh.tokens) and np.array_equal(store.mask, fresh.mask)
        assert np.array_equal(store.offsets, fresh.offsets) and np.array_equal(store.truncated, fresh.truncated)
    assert second.train_truncated == first.train_truncated == n_truncated and len(second.valid) == len(first.valid) == 2


def test_invalidated_by_data_tokenizer_and_settings(setting, tmp_path):
    cfg, model_dir, run_dir = setting
    _encode(cfg, model_dir, run_dir)
    key = token_cache.cache_key(cfg, model_dir, load_tokenizer(model_dir), "chat", True)

    # the data changed (same size: one letter swapped)
    changed = tmp_path / "changed.jsonl"
    text = open(cfg.data).read()
    i = text.index("a", text.index('"content"'))
    changed.write_text(text[:i] + "e" + text[i + 1 :])
    assert len(changed.read_bytes()) == len(open(cfg.data, "rb").read())
    other = dataclasses.replace(cfg, data=str(changed))
    assert "tokenized" in _encode(other, model_dir, run_dir)[3][0]

    # the tokenizer changed: same model, another chat template
    other_model = tmp_path / "model2"
    shutil.copytree(model_dir, other_model)
    tc = json.loads((other_model / "tokenizer_config.json").read_text())
    tc["chat_template"] = tc["chat_template"].replace("<|im_start|>", "<|im_start|> ")
    (other_model / "tokenizer_config.json").write_text(json.dumps(tc))
    assert token_cache.cache_key(cfg, other_model, load_tokenizer(other_model), "chat", True) != key
    assert "tokenized" in _encode(cfg, other_model, run_dir)[3][0]

    # a setting that changes the tokens
    for change in ({"max_seq_len": 128}, {"valid_fraction": 0.2}, {"thinking": True}):
        changed_cfg = dataclasses.replace(cfg, **change)
        assert token_cache.cache_key(changed_cfg, model_dir, load_tokenizer(model_dir), "chat", True) != key, change
    assert token_cache.cache_key(cfg, model_dir, load_tokenizer(model_dir), "chat", False) != key
    assert "tokenized" in _encode(dataclasses.replace(cfg, max_seq_len=128), model_dir, run_dir)[3][0]
    # the tokenizer library upgraded (its rendering and normalisation may change the tokens)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(token_cache, "_library_versions", lambda: {"transformers": "99.0", "tokenizers": "0.1", "jinja2": "3.1"})
        assert token_cache.cache_key(cfg, model_dir, load_tokenizer(model_dir), "chat", True) != key
    # and what does not: the learning rate, the run's directory
    assert token_cache.cache_key(dataclasses.replace(cfg, learning_rate=1.0, output="x"), model_dir, load_tokenizer(model_dir), "chat", True) == key
    assert len(_entries(run_dir)) == 4
    assert "reused" in _encode(cfg, model_dir, run_dir)[3][0]


def test_data_directory_digest_covers_its_files(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "train.jsonl").write_text('{"text": "a"}\n')
    first = token_cache.data_digest(d)
    (d / "valid.jsonl").write_text('{"text": "b"}\n')
    second = token_cache.data_digest(d)
    (d / ".hidden").write_text("x")
    assert first != second == token_cache.data_digest(d)
    (d / "valid.jsonl").write_text('{"text": "c"}\n')
    assert token_cache.data_digest(d) != second


def test_leftovers_and_broken_entries_are_not_read(setting):
    cfg, model_dir, run_dir = setting
    key = token_cache.cache_key(cfg, model_dir, load_tokenizer(model_dir), "chat", True)
    root = token_cache.cache_root(run_dir)
    # a writer that died mid-way left its temporary directory with the entry's files, but for meta.json
    leftover = root / f".{key}.tmp-0badc0de"
    leftover.mkdir(parents=True)
    (leftover / "train.tokens.npy").write_bytes(b"garbage")
    assert token_cache.load(root, key) is None
    assert "tokenized" in _encode(cfg, model_dir, run_dir)[3][0]
    assert leftover.is_dir() and (root / key / "meta.json").is_file()  # a fresh leftover may be a writer at work: kept
    import os
    import time

    stale = [root / f".{key}.tmp-00000001", root / f".{key}.old-00000002"]
    for p in stale:
        (p / "entry").mkdir(parents=True)
        os.utime(p, (time.time() - 3 * 86400,) * 2)
    _, _, encoded, _ = _encode(cfg, model_dir, None)
    token_cache.save(root, key, encoded)
    assert leftover.is_dir() and not any(p.exists() for p in stale)  # those of writers that died days ago are removed
    assert "reused" in _encode(cfg, model_dir, run_dir)[3][0]
    # an entry whose arrays were damaged is tokenized again, and replaced
    np.save(root / key / "train.offsets.npy", np.array([0, 5, 3], np.int64))
    assert token_cache.load(root, key) is None
    assert "tokenized" in _encode(cfg, model_dir, run_dir)[3][0]
    assert "reused" in _encode(cfg, model_dir, run_dir)[3][0]


def test_two_writers_of_one_key_leave_one_whole_entry(setting):
    cfg, model_dir, run_dir = setting
    _, _, encoded, _ = _encode(cfg, model_dir, None)
    root = token_cache.cache_root(run_dir)
    token_cache.save(root, "k" * 32, encoded)
    token_cache.save(root, "k" * 32, encoded)  # the entry is there: replaced whole (the last writer wins)
    assert sorted(p.name for p in root.iterdir()) == ["k" * 32]  # no temporary or old copies left behind
    back = token_cache.load(root, "k" * 32)
    assert back is not None and np.array_equal(back.train.tokens, encoded.train.tokens) and back.valid_truncated == encoded.valid_truncated


def test_unwritable_cache_is_a_note_not_an_error(setting):
    cfg, model_dir, run_dir = setting
    run_dir.parent.mkdir(parents=True)
    token_cache.cache_root(run_dir).write_text("a file where the cache directory would go")
    _, _, encoded, notes = _encode(cfg, model_dir, run_dir)
    assert len(encoded.train) == 22 and "could not cache them" in notes[0]


def test_a_second_run_on_the_same_data_reuses_the_tokens(tiny_model, small_data, tmp_path):
    def run(name):
        notes = []
        cfg = TrainConfig(model=str(tiny_model), data=str(small_data), output=str(tmp_path / name), iters=1, batch_size=2, max_seq_len=256, backend="numpy")
        train(cfg, on_event=lambda e: notes.append(e.data["message"]) if e.kind == "note" else None)
        return [n for n in notes if n.startswith("tokens: ")]

    assert run("one")[0].startswith("tokens: tokenized 22 train")
    assert run("two")[0].startswith("tokens: reused 22 train")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mlxtune-tokens", "notes.jsonl", "one", "two"]
    notes = []
    resume(tmp_path / "one", on_event=lambda e: notes.append(e.data["message"]) if e.kind == "note" else None, iters=2)  # a resumed run, too
    assert [n for n in notes if n.startswith("tokens: reused 22 train")]
