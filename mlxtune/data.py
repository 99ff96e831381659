"""Training data: JSONL files read, validated and split into train/valid/test.

Three record formats, one JSON object per line, one format per data set:

- ``{"text": str}``: plain text, every token trained.
- ``{"prompt": str, "completion": str}``: the completion is trained.
- ``{"messages": [{"role": ..., "content": ...}, ...], "tools": [...]}``: a chat,
  the assistant turns are trained (``tools`` is optional).

Unknown extra keys are ignored, so files written for other tools load as they
are. Everything a user can get wrong is caught here, before any model is
loaded, and reported as a ``DataError`` naming the file, the line and the
field: a bad line 9,000 should cost seconds, not a training run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError

FORMATS = ("text", "completion", "chat")
ROLES = ("system", "user", "assistant", "tool")
_FORMAT_NAMES = {"text": "a text", "completion": "a prompt/completion", "chat": "a chat"}
_SPLIT_FILES = ("train.jsonl", "valid.jsonl", "test.jsonl")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Record:
    """One record as read: its JSON object and where it came from (for errors)."""

    data: dict[str, Any]
    line: int
    path: str | None = None

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


@dataclass
class Dataset:
    """The validated records of one file (or part of one), all of one format."""

    records: list[Record]
    format: str
    path: str | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]


@dataclass
class Splits:
    """Train, valid and test data sets, and a line describing them for the CLI.

    ``test`` is always a Dataset; it has no records when there is no test file.
    ``note`` says what was decided on the user's behalf (e.g. a split made
    because ``valid.jsonl`` was missing), or is None.
    """

    train: Dataset
    valid: Dataset
    test: Dataset
    description: str
    note: str | None = None
    seed: int = 0

    @property
    def format(self) -> str:
        return self.train.format


# ---------------------------------------------------------------- reading


def load_jsonl(path: str | Path) -> Dataset:
    """Read and validate one JSONL file; every record must have the same format."""
    path = Path(path)
    if not path.exists():
        raise DataError("file does not exist: check the path given to --data", path)
    if path.is_dir():
        raise DataError("is a directory, expected a .jsonl file", path)
    raw = path.read_bytes()
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
        offset0 = len(_BOM)
    else:
        offset0 = 0
    _check_text(raw, path, offset0)

    records: list[Record] = []
    fmt: str | None = None
    first_line = 0
    offset = offset0
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        start = offset
        offset += len(line_bytes) + 1
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"not valid UTF-8 (byte offset {start + e.start} in the file): save the file as UTF-8",
                path,
                lineno,
            ) from None
        if not line.strip():
            continue
        obj = _parse_line(line, path, lineno)
        rec_fmt = _validate(obj, path, lineno)
        if fmt is None:
            fmt, first_line = rec_fmt, lineno
        elif rec_fmt != fmt:
            raise DataError(
                f"line {lineno} is {_FORMAT_NAMES[rec_fmt]} record but line {first_line} was "
                f"{_FORMAT_NAMES[fmt]} record: use one format per file",
                path,
                lineno,
            )
        records.append(Record(obj, lineno, str(path)))
    if fmt is None:
        raise DataError(
            'file is empty: expected one JSON object per line, e.g. {"text": "..."}', path
        )
    return Dataset(records, fmt, str(path))


def _check_text(raw: bytes, path: Path, offset0: int) -> None:
    """Reject binary files up front, with a hint for the usual culprit (UTF-16)."""
    nul = raw.find(b"\x00")
    if nul < 0:
        return
    line = raw.count(b"\n", 0, nul) + 1
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(raw) > 1 and (raw[0] == 0 or raw[1] == 0)):
        hint = "it looks like UTF-16: save it as UTF-8"
    else:
        hint = "expected a UTF-8 text file with one JSON object per line"
    raise DataError(
        f"not a text file (NUL byte at byte offset {nul + offset0}): {hint}", path, line
    )


def _parse_line(line: str, path: Path, lineno: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(
            f"invalid JSON at column {e.colno}: {e.msg} "
            "(each line must hold one complete JSON object)",
            path,
            lineno,
        ) from None
    if not isinstance(obj, dict):
        raise DataError(
            f"line is a JSON {_json_type(obj)}, not an object: each line must be one JSON object "
            'like {"text": ...}, {"prompt": ..., "completion": ...} or {"messages": [...]}',
            path,
            lineno,
        )
    return obj


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


# ------------------------------------------------------------- validation


def record_format(obj: Mapping[str, Any]) -> str | None:
    """The format a record claims by its keys (chat, then completion, then text), or None."""
    if "messages" in obj:
        return "chat"
    if "prompt" in obj or "completion" in obj:
        return "completion"
    if "text" in obj:
        return "text"
    return None


def _validate(obj: dict[str, Any], path: Path, lineno: int) -> str:
    """Check one record's fields; return its format."""
    fmt = record_format(obj)

    def fail(fld: str, message: str) -> DataError:
        return DataError(message, path, lineno, fld)

    if fmt is None:
        keys = ", ".join(repr(k) for k in list(obj)[:6]) or "none"
        raise DataError(
            f"record has none of the fields 'text', 'prompt'/'completion' or 'messages' "
            f"(found: {keys}): rename the field holding the training text",
            path,
            lineno,
        )
    if fmt == "text":
        _expect_str(obj["text"], fail, "text")
        if not obj["text"]:
            raise fail("text", "is empty: remove the record or give it text")
    elif fmt == "completion":
        for key in ("prompt", "completion"):
            if key not in obj:
                other = "completion" if key == "prompt" else "prompt"
                raise fail(key, f"is missing: a record with '{other}' also needs '{key}'")
            _expect_str(obj[key], fail, key)
        if not obj["completion"]:
            raise fail("completion", "is empty: there is nothing to train on")
    else:
        _validate_chat(obj, fail)
    return fmt


def _expect_str(value: Any, fail, fld: str) -> None:
    if not isinstance(value, str):
        raise fail(fld, f"must be a string, got a {_json_type(value)} ({_short(value)})")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 30 else text[:27] + "..."


def _validate_chat(obj: dict[str, Any], fail) -> None:
    messages = obj["messages"]
    if not isinstance(messages, list):
        raise fail(
            "messages",
            f"must be a list of {{\"role\", \"content\"}} objects, got a {_json_type(messages)} "
            f"({_short(messages)})",
        )
    if not messages:
        raise fail("messages", "is empty: a chat needs at least one assistant turn")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise fail(where, f"must be an object with 'role' and 'content', got a {_json_type(message)}")
        if "role" not in message:
            raise fail(f"{where}.role", "is missing: each message needs a 'role'")
        role = message["role"]
        if role not in ROLES:
            raise fail(
                f"{where}.role",
                f"unknown role {_short(role)}: use one of {', '.join(ROLES)}",
            )
        # An assistant turn that only calls tools may carry no content.
        tool_call = role == "assistant" and message.get("tool_calls") and message.get("content") is None
        if tool_call:
            continue
        if "content" not in message:
            raise fail(f"{where}.content", "is missing: each message needs a 'content' string")
        _expect_str(message["content"], fail, f"{where}.content")
    if not any(m["role"] == "assistant" for m in messages):
        raise fail("messages", "has no assistant turn: there is nothing to train on")
    if "tools" in obj and obj["tools"] is not None and not isinstance(obj["tools"], list):
        raise fail("tools", f"must be a list of tool definitions, got a {_json_type(obj['tools'])}")


# -------------------------------------------------------------- splitting


def load_data(path: str | Path, valid_fraction: float = 0.1, seed: int = 0) -> Splits:
    """Load a data set: one JSONL file, or a directory of train/valid/test.jsonl.

    A single file is split into train and valid with a fixed seed, so that the
    same command always holds out the same records and validation losses of
    different runs compare.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ConfigError(f"valid fraction must be between 0 and 1, got {valid_fraction}")
    path = Path(path)
    if not path.exists():
        raise DataError("does not exist: give --data a .jsonl file or a directory with train.jsonl", path)
    if path.is_file():
        data = load_jsonl(path)
        train, valid = split(data, valid_fraction, seed)
        description = (
            f"{path}: {len(data)} {data.format} records, split {len(train)} train / "
            f"{len(valid)} valid (seed {seed})"
        )
        empty = Dataset([], data.format, None)
        return Splits(train, valid, empty, description, None, seed)
    return _load_dir(path, valid_fraction, seed)


def _load_dir(path: Path, valid_fraction: float, seed: int) -> Splits:
    train_path = path / "train.jsonl"
    if not train_path.is_file():
        others = sorted(p.name for p in path.glob("*.jsonl") if p.name not in _SPLIT_FILES)
        hint = f"; or pass one of {', '.join(others[:3])} directly" if others else ""
        raise DataError(
            f"no train.jsonl: a data directory needs train.jsonl (valid.jsonl and test.jsonl "
            f"are optional){hint}",
            path,
        )
    train = load_jsonl(train_path)
    loaded = {"train.jsonl": train}
    note = None
    valid_path = path / "valid.jsonl"
    if valid_path.is_file():
        valid = load_jsonl(valid_path)
        loaded["valid.jsonl"] = valid
    else:
        n_train = len(train)
        train, valid = split(train, valid_fraction, seed)
        note = (
            f"no valid.jsonl in {path}: held out {len(valid)} of {n_train} train records "
            f"for validation (seed {seed})"
        )
    test_path = path / "test.jsonl"
    test = load_jsonl(test_path) if test_path.is_file() else Dataset([], train.format, None)
    if test.path is not None:
        loaded["test.jsonl"] = test
    for name, ds in loaded.items():
        if ds.format != train.format:
            raise DataError(
                f"{name} holds {ds.format} records but train.jsonl holds {train.format} records: "
                "use one format for all files of a data set",
                ds.path,
            )
    parts = [f"{len(train)} train", f"{len(valid)} valid"]
    if len(test):
        parts.append(f"{len(test)} test")
    description = f"{path}: {' / '.join(parts)} {train.format} records"
    if note:
        description += f" (valid split from train.jsonl, seed {seed})"
    return Splits(train, valid, test, description, note, seed)


def split(data: Dataset, valid_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Deterministically hold out ``valid_fraction`` of the records (at least one).

    The indices are shuffled with numpy's ``default_rng(seed)``; each part then
    keeps the file's order, which makes it easy to see which lines went where.
    """
    n = len(data)
    if n < 2:
        raise DataError(
            f"has {n} record, too few to split into train and valid: add records, or pass "
            "a directory with train.jsonl and valid.jsonl",
            data.path,
        )
    n_valid = min(n - 1, max(1, int(round(n * valid_fraction))))
    order = np.random.default_rng(seed).permutation(n)
    valid_idx = sorted(order[:n_valid].tolist())
    train_idx = sorted(order[n_valid:].tolist())
    train = Dataset([data.records[i] for i in train_idx], data.format, data.path)
    valid = Dataset([data.records[i] for i in valid_idx], data.format, data.path)
    return train, valid
