"""Training data: JSONL files read, validated and split into train/valid/test.

One JSON object per line, one format per data set; the formats (text,
prompt/completion, chat) and what each requires are in ``formats``.

Unknown extra keys are ignored, so files written for other tools load as they
are. Everything a user can get wrong is caught here, before any model is
loaded, and reported as a ``DataError`` naming the file, the line and the
field: a bad line 9,000 should cost seconds, not a training run. With
``skip_bad_lines`` such lines are left out instead, and every one is listed
(``Splits.skipped``): never dropped silently.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import formats
from ..errors import ConfigError, DataError
from .formats import DataFormat, json_type

_SPLIT_FILES = ("train.jsonl", "valid.jsonl", "test.jsonl")
_BOM = b"\xef\xbb\xbf"
_HEAD_BYTES = 8192  # like git, a NUL byte in the first 8 KB means binary
MAX_LINE_BYTES = 8 << 20  # one record; far more text than any --max-seq-len trains on
MAX_DEPTH = 100  # JSON nesting; real records nest a handful of levels
SKIP_HINT = "; or pass --skip-bad-lines to leave out such lines (each one is reported)"
_MAGIC = {
    b"\x1f\x8b": "a gzip-compressed file: decompress it first (gunzip -k FILE) and pass the .jsonl inside",
    b"PK\x03\x04": "a zip archive: extract it and pass the .jsonl inside",
    b"PAR1": "a Parquet file: convert it to JSONL first, e.g. pandas.read_parquet(F).to_json(OUT, orient='records', lines=True)",
    b"\x89PNG": "a PNG image: expected a UTF-8 text file with one JSON object per line",
    b"%PDF": "a PDF document: expected a UTF-8 text file with one JSON object per line",
}


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
    """The validated records of one file (or part of one), all of one format.

    ``skipped`` holds the error of each line left out with ``skip_bad_lines``.
    """

    records: list[Record]
    format: DataFormat
    path: str | None = None
    skipped: list[DataError] = field(default_factory=list)

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
    because ``valid.jsonl`` was missing), or is None. ``skipped`` lists the
    bad lines of every file left out with ``skip_bad_lines``.
    """

    train: Dataset
    valid: Dataset
    test: Dataset
    description: str
    note: str | None = None
    seed: int = 0
    skipped: list[DataError] = field(default_factory=list)

    @property
    def format(self) -> DataFormat:
        return self.train.format

    def skipped_notes(self, limit: int = 20) -> list[str]:
        """What the CLI says about the skipped lines: how many, then each (up to ``limit``) with its file, line and why."""
        if not self.skipped:
            return []
        files = sorted({e.path for e in self.skipped if e.path})
        out = [f"skipped {len(self.skipped)} bad line(s) of {', '.join(files)} (--skip-bad-lines): they are not used"]
        out += [f"skipped {e}" for e in self.skipped[:limit]]
        if len(self.skipped) > limit:
            out.append(f"... and {len(self.skipped) - limit} more (mlxtune data check --skip-bad-lines --json lists them all)")
        return out


def trains_prompt_masked(fmt: DataFormat, requested: bool | None) -> bool:
    """Whether only completions and assistant turns are trained: as asked, else as the format has it."""
    return formats.get(fmt).trains_prompt_masked(requested)


# ---------------------------------------------------------------- reading


def load_jsonl(path: str | Path, skip_bad_lines: bool | None = None) -> Dataset:
    """Read and validate one JSONL file; every record must have the same format.

    The file is read a line at a time, and no line may exceed ``MAX_LINE_BYTES``,
    so a binary or runaway file costs bounded memory and fails fast. A bad
    line raises its DataError; with ``skip_bad_lines`` it is left out and
    its error kept in ``Dataset.skipped`` (a record of another format than the
    first good one counts as bad). ``skip_bad_lines=False`` means the caller
    offers the option, and the error says so; None, that it does not.
    Problems of the whole file (binary, empty, unreadable) always raise.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file does not exist: check the path given to --data", path)
    if path.is_dir():
        raise DataError("is a directory, expected a .jsonl file", path)
    if not path.is_file():
        raise DataError("is not a regular file: give --data a .jsonl file", path)
    records: list[Record] = []
    skipped: list[DataError] = []
    fmt: DataFormat | None = None
    first_line = 0
    try:
        with open(path, "rb") as f:
            _check_text(f.read(_HEAD_BYTES), path)
            f.seek(0)
            for lineno, line in _lines(f, path):
                try:
                    if isinstance(line, DataError):
                        raise line
                    if not line.strip():
                        continue
                    obj = _parse_line(line, path, lineno)
                    rec_fmt = _validate(obj, path, lineno)
                    if fmt is not None and rec_fmt is not fmt:
                        raise DataError(
                            f"line {lineno} is {rec_fmt.a_record} but line {first_line} was "
                            f"{fmt.a_record}: use one format per file",
                            path,
                            lineno,
                        )
                except DataError as e:
                    if not skip_bad_lines:
                        raise (e if skip_bad_lines is None else DataError(e.reason + SKIP_HINT, e.path, e.line, e.field)) from None
                    skipped.append(e)
                    continue
                if fmt is None:
                    fmt, first_line = rec_fmt, lineno
                records.append(Record(obj, lineno, str(path)))
    except OSError as e:
        raise DataError(f"cannot read the file ({e.strerror or e}): check its permissions", path) from None
    if fmt is None and skipped:
        first = skipped[0]
        raise DataError(f"no usable record: all {len(skipped)} line(s) are bad (--skip-bad-lines), the first: {first}", path)
    if fmt is None:
        raise DataError(
            'file is empty: expected one JSON object per line, e.g. {"text": "..."}', path
        )
    return Dataset(records, fmt, str(path), skipped)


def _lines(f, path: Path) -> Iterator[tuple[int, str | DataError]]:
    """(line number, decoded text) of each line, each at most MAX_LINE_BYTES; a line that is not text gives its DataError."""
    offset = 0
    for lineno in itertools.count(1):
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        start = offset
        offset += len(raw)
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # pass over the rest of the line, a piece at a time
                raw = f.readline(MAX_LINE_BYTES + 1)
                offset += len(raw)
            yield lineno, DataError(
                f"line is longer than {MAX_LINE_BYTES >> 20} MB, the limit for one record: "
                "check that the file holds one JSON object per line, and split very long "
                "texts into several records (training sees at most --max-seq-len tokens of one)",
                path,
                lineno,
            )
            continue
        if lineno == 1 and raw.startswith(_BOM):
            raw, start = raw[len(_BOM) :], start + len(_BOM)
        nul = raw.find(b"\x00")
        if nul >= 0:
            yield lineno, DataError(
                f"not a text file (NUL byte at byte offset {start + nul}): expected a UTF-8 "
                "text file with one JSON object per line",
                path,
                lineno,
            )
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield lineno, DataError(
                f"not valid UTF-8 (byte offset {start + e.start} in the file): save the file as UTF-8",
                path,
                lineno,
            )
            continue
        yield lineno, text


def _check_text(head: bytes, path: Path) -> None:
    """Reject binary files up front, naming the usual culprits (UTF-16, archives, Parquet)."""
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise DataError(f"not a text file: it looks like {what}", path)
    nul = head.find(b"\x00")
    if nul < 0:
        return
    line = head.count(b"\n", 0, nul) + 1
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or head[0] == 0 or head[1:2] == b"\x00":
        hint = "it looks like UTF-16: save it as UTF-8"
    else:
        hint = "expected a UTF-8 text file with one JSON object per line"
    raise DataError(f"not a text file (NUL byte at byte offset {nul}): {hint}", path, line)


def _parse_line(line: str, path: Path, lineno: int) -> dict[str, Any]:
    def reject_constant(name: str) -> None:
        raise DataError(f"{name} is not valid JSON: write a number, null or a string", path, lineno)

    # Without its line break: json would read past it as whitespace and place an
    # error at the end of the line at "line 2, column 1" of the one-line document.
    line = line.rstrip("\r\n")
    try:
        obj = json.loads(line, parse_constant=reject_constant)
        deep = _too_deep(line, obj)
    except json.JSONDecodeError as e:
        at_end = " (the end of the line)" if e.pos >= len(line) else ""
        raise DataError(
            f"invalid JSON at column {e.colno}{at_end}: {e.msg} "
            "(each line must hold one complete JSON object)",
            path,
            lineno,
        ) from None
    except ValueError:  # Python refuses integers of more than 4300 digits
        raise DataError("invalid JSON: a number is too long to read: write it as a string", path, lineno) from None
    except RecursionError:
        deep = True
    if deep:
        raise DataError(
            f"JSON nested more than {MAX_DEPTH} levels deep: records are objects of strings and "
            "lists of messages; flatten the structure",
            path,
            lineno,
        )
    if not isinstance(obj, dict):
        raise DataError(
            f"line is a JSON {json_type(obj)}, not an object: each line must be one JSON object "
            f"like {formats.listed([f.shape for f in formats.FORMATS])}",
            path,
            lineno,
        )
    return obj


def _too_deep(line: str, obj: Any) -> bool:
    """Whether ``obj`` nests deeper than MAX_DEPTH (deep records break json.dumps and templates later)."""
    if line.count("[") + line.count("{") <= MAX_DEPTH:  # cheap bound: most records stop here
        return False
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _validate(obj: dict[str, Any], path: Path, lineno: int) -> DataFormat:
    """Check one record's fields; return its format."""
    return formats.validate_record(obj, lambda fld, message: DataError(message, path, lineno, fld))


# -------------------------------------------------------------- splitting


def load_data(path: str | Path, valid_fraction: float = 0.1, seed: int = 0, skip_bad_lines: bool | None = None) -> Splits:
    """Load a data set: one JSONL file, or a directory of train/valid/test.jsonl.

    A single file is split into train and valid with a fixed seed, so that the
    same command always holds out the same records and validation losses of
    different runs compare. ``skip_bad_lines`` as in ``load_jsonl``; the
    lines left out are in ``Splits.skipped`` and counted in the description.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ConfigError(f"valid fraction must be between 0 and 1, got {valid_fraction}")
    path = Path(path)
    if not path.exists():
        raise DataError("does not exist: give --data a .jsonl file or a directory with train.jsonl", path)
    if path.is_file():
        data = load_jsonl(path, skip_bad_lines)
        train, valid = split(data, valid_fraction, seed)
        description = (
            f"{path}: {len(data)} {data.format} records{_skipped(data.skipped)}, split {len(train)} train / "
            f"{len(valid)} valid (seed {seed})"
        )
        empty = Dataset([], data.format, None)
        return Splits(train, valid, empty, description, None, seed, data.skipped)
    if not path.is_dir():
        raise DataError("is neither a regular file nor a directory: give --data a .jsonl file or a directory with train.jsonl", path)
    return _load_dir(path, valid_fraction, seed, skip_bad_lines)


def _skipped(errors: list[DataError]) -> str:
    return f" ({len(errors)} bad line(s) skipped)" if errors else ""


def _load_dir(path: Path, valid_fraction: float, seed: int, skip_bad_lines: bool | None) -> Splits:
    train_path = path / "train.jsonl"
    if not train_path.is_file():
        others = sorted(p.name for p in path.glob("*.jsonl") if p.name not in _SPLIT_FILES)
        hint = f"; or pass one of {', '.join(others[:3])} directly" if others else ""
        raise DataError(
            f"no train.jsonl: a data directory needs train.jsonl (valid.jsonl and test.jsonl "
            f"are optional){hint}",
            path,
        )
    train = load_jsonl(train_path, skip_bad_lines)
    loaded = {"train.jsonl": train}
    note = None
    valid_path = path / "valid.jsonl"
    if valid_path.is_file():
        valid = load_jsonl(valid_path, skip_bad_lines)
        loaded["valid.jsonl"] = valid
    else:
        n_train = len(train)
        train, valid = split(train, valid_fraction, seed)
        note = (
            f"no valid.jsonl in {path}: held out {len(valid)} of {n_train} train records "
            f"for validation (seed {seed})"
        )
    test_path = path / "test.jsonl"
    test = load_jsonl(test_path, skip_bad_lines) if test_path.is_file() else Dataset([], train.format, None)
    if test.path is not None:
        loaded["test.jsonl"] = test
    for name, ds in loaded.items():
        if ds.format is not train.format:
            raise DataError(
                f"{name} holds {ds.format} records but train.jsonl holds {train.format} records: "
                "use one format for all files of a data set",
                ds.path,
            )
    skipped = [e for ds in loaded.values() for e in ds.skipped]
    parts = [f"{len(train)} train", f"{len(valid)} valid"]
    if len(test):
        parts.append(f"{len(test)} test")
    description = f"{path}: {' / '.join(parts)} {train.format} records{_skipped(skipped)}"
    if note:
        description += f" (valid split from train.jsonl, seed {seed})"
    return Splits(train, valid, test, description, note, seed, skipped)


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
