"""The encoded train and valid examples of a run, cached beside it so that the same data is tokenized once.

A run's tokens go to ``<the run's parent>/.mlxtune-tokens/<key>/`` (``runs/.mlxtune-tokens/``
by default): a resumed run, a second run on the same data, or a sweep's runs
beside each other read them back instead of tokenizing again. The key is a
digest of everything that decides the tokens (``cache_key``):

- the data's bytes: a SHA-256 of each file (every file of a data directory, by
  relative name). Reading a file to hash it costs about a second per GB, far
  less than tokenizing it; size and modification time would be cheaper but
  miss an edit that keeps them (an editor or ``git checkout`` restoring the
  time, a copy within the time's resolution), and a stale cache trains on the
  wrong data without a word;
- the tokenizer: its files (tokenizer.json, tokenizer_config.json, chat
  template files, ...), and the chat template and special tokens as loaded
  (mlxtune's template switches, ``--thinking``, change what it renders);
- the settings: format, mask_prompt, max_seq_len, thinking, the ``--field``
  mapping, the split (valid_fraction, seed, skip_bad_lines) and
  ``ENCODING_VERSION``, raised whenever this package encodes differently.

A cache entry is a directory of .npy files and a meta.json, written under a
temporary name and renamed whole: a reader sees a complete entry or none. Two
processes writing the same key both write a whole entry and the last rename
wins (the contents are the same); leftovers of an interrupted writer
(``.<key>.tmp-*``) are never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .examples import ExampleStore, encode_dataset
from .rendering import hf_tokenizer
from ..fsutil import file_digest, make_temp_dir

ENCODING_VERSION = 1  # raise when the tokens or masks of some record would come out otherwise
CACHE_DIR = ".mlxtune-tokens"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
_ARRAYS = ("tokens", "mask", "offsets", "truncated")
_STALE_SECONDS = 24 * 3600  # a temporary or replaced entry this old belongs to a writer that died


@dataclass
class Encoded:
    """A run's encoded splits, and how many records ``max_seq_len`` cut in each."""

    train: ExampleStore
    valid: ExampleStore
    train_truncated: int
    valid_truncated: int


def cache_root(run_dir: str | Path) -> Path:
    """Where the runs beside ``run_dir`` keep their tokens."""
    return Path(run_dir).absolute().parent / CACHE_DIR


def data_digest(path: str | Path) -> str:
    """SHA-256 over a data file's bytes, or over a directory's files (relative name and bytes; hidden entries skipped)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + file_digest(f).encode() + b"\0")
    return h.hexdigest()


def tokenizer_digest(model_dir: str | Path, tokenizer: Any) -> str:
    """SHA-256 over the tokenizer's files and the chat template and special tokens it was loaded with."""
    h = hashlib.sha256()
    for name in _TOKENIZER_FILES:
        f = Path(model_dir) / name
        if f.is_file():
            h.update(name.encode() + b"\0" + file_digest(f).encode() + b"\0")
    tok = hf_tokenizer(tokenizer)
    loaded = {"class": type(tok).__name__, "chat_template": getattr(tok, "chat_template", None),
              "bos": getattr(tok, "bos_token_id", None), "eos": getattr(tok, "eos_token_id", None)}
    h.update(json.dumps(loaded, sort_keys=True, default=str).encode())
    return h.hexdigest()


def cache_key(cfg: Any, model_dir: str | Path, tokenizer: Any, format_name: str, mask_prompt: bool) -> str:
    """The key of a run's tokens: ``cfg`` is its TrainConfig (data, split, max_seq_len, thinking, fields)."""
    parts = {
        "version": ENCODING_VERSION,
        "libraries": _library_versions(),  # rendering and tokenization are theirs: an upgrade may change the tokens
        "data": data_digest(cfg.data),
        "tokenizer": tokenizer_digest(model_dir, tokenizer),
        "format": format_name,
        "mask_prompt": bool(mask_prompt),
        "max_seq_len": int(cfg.max_seq_len),
        "thinking": bool(cfg.thinking),
        "fields": getattr(cfg, "fields", None) or None,
        "split": [cfg.valid_fraction, cfg.seed, bool(cfg.skip_bad_lines)],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in ("transformers", "tokenizers", "jinja2"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def load(root: Path, key: str) -> Encoded | None:
    """The cached entry ``key``, or None when there is none (or it cannot be read: it is then tokenized anew)."""
    entry = Path(root) / key
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("version") != ENCODING_VERSION or meta.get("key") != key:
            return None
        stores = [ExampleStore(*(np.load(entry / f"{split}.{name}.npy", allow_pickle=False) for name in _ARRAYS)) for split in ("train", "valid")]
        return Encoded(stores[0], stores[1], int(meta["train_truncated"]), int(meta["valid_truncated"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(root: Path, key: str, encoded: Encoded) -> Path:
    """Write ``encoded`` as the entry ``key`` (whole, or not at all); returns its directory. Raises OSError."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    tmp = make_temp_dir(root, f".{key}.tmp-")
    try:
        for split, store in (("train", encoded.train), ("valid", encoded.valid)):
            for name in _ARRAYS:
                np.save(tmp / f"{split}.{name}.npy", getattr(store, name), allow_pickle=False)
        meta = {"version": ENCODING_VERSION, "key": key, "train": len(encoded.train), "valid": len(encoded.valid),
                "train_truncated": encoded.train_truncated, "valid_truncated": encoded.valid_truncated}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        final = root / key
        try:
            os.rename(tmp, final)
        except OSError:  # an entry is there already (another writer's): the last writer wins
            old = make_temp_dir(root, f".{key}.old-")
            try:
                os.rename(final, old / "entry")
            except FileNotFoundError:
                pass
            try:
                os.rename(tmp, final)
            except OSError:  # a third writer renamed its entry in meanwhile: that one stands
                if not (final / "meta.json").is_file():
                    raise
            shutil.rmtree(old, ignore_errors=True)
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(root: Path) -> None:
    now = time.time()
    for p in [*root.glob(".*.tmp-*"), *root.glob(".*.old-*")]:
        try:
            if now - p.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def encode_splits(
    splits: Any, tokenizer: Any, mask_prompt: bool, cfg: Any, model_dir: str | Path, run_dir: str | Path | None,
    on_note: Callable[[str], None] = lambda message: None,
) -> Encoded:
    """A run's train and valid examples: read from the cache beside ``run_dir``, else encoded and cached there.

    ``on_note`` hears which it was. ``run_dir`` None: encoded, not cached.
    Failing to write the cache is a note, not an error: the run goes on.
    """
    fmt = splits.format
    root = key = None
    if run_dir is not None:
        root, key = cache_root(run_dir), cache_key(cfg, model_dir, tokenizer, fmt.name, mask_prompt)
        found = load(root, key)
        if found is not None:
            on_note(f"tokens: reused {len(found.train):,} train and {len(found.valid):,} valid examples cached in {root / key} (same data, tokenizer and settings): nothing tokenized")
            return found
    train, n_train = encode_dataset(splits.train, fmt, tokenizer, mask_prompt, cfg.max_seq_len)
    valid, n_valid = encode_dataset(splits.valid, fmt, tokenizer, mask_prompt, cfg.max_seq_len)
    encoded = Encoded(train, valid, n_train, n_valid)
    if root is None:
        return encoded
    try:
        where = save(root, key, encoded)
    except OSError as e:
        on_note(f"tokens: tokenized {len(splits.train):,} train and {len(splits.valid):,} valid records; could not cache them in {root} ({e}), so the next run tokenizes again")
    else:
        on_note(f"tokens: tokenized {len(splits.train):,} train and {len(splits.valid):,} valid records and cached them in {where} for later runs on the same data")
    return encoded
