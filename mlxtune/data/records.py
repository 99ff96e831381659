"""Training data: files read, validated and split into train/valid/test.

How records are stored (JSONL, a JSON array, CSV, TSV, Parquet, Arrow, plain
text; a directory of splits, a Hugging Face dataset) is ``containers``'
business; what a record holds, one format per data set, is ``formats``'. This
module validates each record a container yields and keeps the good ones as a
``Dataset`` (a JSONL file's records as byte offsets, read back on access:
``rows``), and splits.

Unknown extra keys are ignored, so files written for other tools load as they
are. Everything a user can get wrong is caught here, before any model is
loaded, and reported as a ``DataError`` naming the file, the line (or row) and
the field: a bad line 9,000 should cost seconds, not a training run. With
``skip_bad_lines`` such lines are left out instead, and every one is listed
(``Splits.skipped``): never dropped silently.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import containers, formats
from ..errors import ConfigError, DataError
from .formats import DataFormat
from .rows import ChainedRecords, Record, take

__all__ = ["Dataset", "Record", "Splits", "load_data", "load_file", "load_jsonl", "load_split_files", "split", "trains_prompt_masked"]

SKIP_HINT = "; or pass --skip-bad-lines to leave out such lines (each one is reported)"


@dataclass
class Dataset:
    """The validated records of one file (or part of one, or a split's shards), all of one format.

    ``records`` is a sequence of ``Record`` (for JSONL read back from the file
    on access, not held as dicts). ``skipped`` holds the error of each line left
    out with ``skip_bad_lines``; ``container`` is the file's (``containers``).
    """

    records: Sequence[Record]
    format: DataFormat
    path: str | None = None
    skipped: list[DataError] = field(default_factory=list)
    container: str | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]

    @property
    def container_words(self) -> str:
        """The container as a description says it: nothing for JSONL, else e.g. " (parquet)"."""
        if self.container in (None, "jsonl"):
            return ""
        note = containers.READERS[self.container].note
        return f" ({self.container}{': ' + note if note else ''})"


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


def load_file(path: str | Path, skip_bad_lines: bool | None = None, fields: Mapping[str, str] | None = None) -> Dataset:
    """Read and validate one data file, in any container; every record must have the same format.

    ``fields`` (``--field FIELD=COLUMN``) renames columns before the format is
    detected. A bad record raises its DataError; with ``skip_bad_lines`` it is
    left out and its error kept in ``Dataset.skipped`` (a record of another
    format than the first good one counts as bad). ``skip_bad_lines=False``
    means the caller offers the option, and the error says so; None, that it
    does not. Problems of the whole file (binary, empty, unreadable) always raise.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("file does not exist: check the path given to --data", path)
    if path.is_dir():
        raise DataError("is a directory, expected a data file (.jsonl, .json, .csv, .tsv, .parquet, .txt)", path)
    if not path.is_file():
        raise DataError("is not a regular file: give --data a .jsonl file", path)
    kept = array("q")
    skipped: list[DataError] = []
    fmt: DataFormat | None = None
    first_line = 0
    try:
        reader = containers.open_reader(path, fields)
        unit = reader.unit
        for position, (where, obj) in enumerate(reader):
            try:
                if isinstance(obj, DataError):
                    raise obj
                rec_fmt = _validate_in(obj, path, where, unit)
                if fmt is not None and rec_fmt is not fmt:
                    raise DataError(
                        f"{unit} {where} is {rec_fmt.a_record} but {unit} {first_line} was {fmt.a_record}: use one format per file",
                        path,
                        where,
                        unit=unit,
                    )
            except DataError as e:
                if not skip_bad_lines:
                    raise (e if skip_bad_lines is None else DataError(e.reason + SKIP_HINT, e.path, e.line, e.field, e.unit)) from None
                skipped.append(e)
                continue
            if fmt is None:
                fmt, first_line = rec_fmt, where
            kept.append(position)
    except OSError as e:
        raise DataError(f"cannot read the file ({e.strerror or e}): check its permissions", path) from None
    if fmt is None and skipped:
        first = skipped[0]
        raise DataError(f"no usable record: all {len(skipped)} {unit}(s) are bad (--skip-bad-lines), the first: {first}", path)
    if fmt is None:
        raise DataError(reader.empty, path)
    records = reader.records(np.frombuffer(kept, dtype=np.int64) if len(kept) else np.zeros(0, dtype=np.int64))
    return Dataset(records, fmt, str(path), skipped, reader.name)


def load_jsonl(path: str | Path, skip_bad_lines: bool | None = None, fields: Mapping[str, str] | None = None) -> Dataset:
    """``load_file`` under its old name: the file may be in any container, JSONL or not."""
    return load_file(path, skip_bad_lines, fields)


def _validate_in(obj: dict[str, Any], path: Path, where: int, unit: str) -> DataFormat:
    """``_validate`` of a record at a line, or at a row (Parquet, Arrow: the error then names the row)."""
    if unit == "line":
        return _validate(obj, path, where)
    try:
        return _validate(obj, path, where)
    except DataError as e:
        raise DataError(e.reason, e.path, e.line, e.field, unit) from None


def _validate(obj: dict[str, Any], path: Path, lineno: int) -> DataFormat:
    """Check one record's fields; return its format."""
    return formats.validate_record(obj, lambda fld, message: DataError(message, path, lineno, fld))


# -------------------------------------------------------------- splitting


def load_data(
    path: str | Path,
    valid_fraction: float = 0.1,
    seed: int = 0,
    skip_bad_lines: bool | None = None,
    fields: Mapping[str, str] | None = None,
) -> Splits:
    """Load a data set: one file (any container), or a directory of splits (``containers.split_files``).

    A single file is split into train and valid with a fixed seed, so that the
    same command always holds out the same records and validation losses of
    different runs compare. ``skip_bad_lines`` as in ``load_file``; the
    lines left out are in ``Splits.skipped`` and counted in the description.
    ``fields`` (``--field``) renames columns in every file.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ConfigError(f"valid fraction must be between 0 and 1, got {valid_fraction}")
    path = Path(path)
    if not path.exists():
        raise DataError("does not exist: give --data a data file (.jsonl, .json, .csv, .parquet, ...) or a directory with train.jsonl", path)
    if path.is_file():
        data = load_file(path, skip_bad_lines, fields)
        train, valid = split(data, valid_fraction, seed)
        description = (
            f"{path}: {len(data)} {data.format} records{data.container_words}{_skipped(data.skipped)}, split {len(train)} train / "
            f"{len(valid)} valid (seed {seed})"
        )
        empty = Dataset([], data.format, None)
        return Splits(train, valid, empty, description, None, seed, data.skipped)
    if not path.is_dir():
        raise DataError("is neither a regular file nor a directory: give --data a .jsonl file or a directory with train.jsonl", path)
    return _load_dir(path, valid_fraction, seed, skip_bad_lines, fields)


def _skipped(errors: list[DataError]) -> str:
    return f" ({len(errors)} bad line(s) skipped)" if errors else ""


def _load_split(files: list[Path], skip_bad_lines: bool | None, fields: Mapping[str, str] | None) -> Dataset:
    """One split's file, or its shards read one after another as one data set (named by their common glob)."""
    parts = [load_file(f, skip_bad_lines, fields) for f in files]
    if len(parts) == 1:
        return parts[0]
    for part in parts[1:]:
        if part.format is not parts[0].format:
            raise DataError(f"holds {part.format} records but {Path(parts[0].path).name} holds {parts[0].format} records: "
                            "use one format for all files of a data set", part.path)
    name = os.path.commonprefix([f.name for f in files]) + "*" + files[0].suffix
    skipped = [e for p in parts for e in p.skipped]
    return Dataset(ChainedRecords([p.records for p in parts]), parts[0].format, str(files[0].parent / name), skipped, parts[0].container)


def load_split_files(path: Path, skip_bad_lines: bool | None = None, fields: Mapping[str, str] | None = None) -> tuple[dict[str, Dataset], str]:
    """A data directory's splits as its files have them, not split further: ({train, valid?, test?: Dataset}, its layout).

    Every split must hold records of train's format.
    """
    layout = containers.split_files(path)
    loaded = {name: _load_split(files, skip_bad_lines, fields) for name, files in layout.files.items()}
    train = loaded["train"]
    for ds in loaded.values():
        if ds.format is not train.format:
            raise DataError(
                f"{Path(ds.path).name} holds {ds.format} records but {Path(train.path).name} holds {train.format} records: "
                "use one format for all files of a data set",
                ds.path,
            )
    return loaded, layout.kind


def _load_dir(path: Path, valid_fraction: float, seed: int, skip_bad_lines: bool | None, fields: Mapping[str, str] | None) -> Splits:
    loaded, kind = load_split_files(path, skip_bad_lines, fields)
    train = loaded["train"]
    note = None
    train_name = Path(train.path).name
    if "valid" in loaded:
        valid = loaded["valid"]
    else:
        n_train = len(train)
        train, valid = split(train, valid_fraction, seed)
        missing = "no valid.jsonl" if train.container == "jsonl" else "no valid split (valid, validation, dev or eval)"
        note = f"{missing} in {path}: held out {len(valid)} of {n_train} train records for validation (seed {seed})"
    test = loaded.get("test") or Dataset([], train.format, None)
    skipped = [e for ds in loaded.values() for e in ds.skipped]
    parts = [f"{len(train)} train", f"{len(valid)} valid"]
    if len(test):
        parts.append(f"{len(test)} test")
    description = f"{path}: {' / '.join(parts)} {train.format} records{_skipped(skipped)}"
    kinds = {name: ds.container for name, ds in loaded.items()}
    if kind != "files" or set(kinds.values()) != {"jsonl"}:
        notes = {c: containers.READERS[c].note for c in kinds.values() if containers.READERS[c].note}
        description += f" ({kind}: " + ", ".join(f"{name} {c}" for name, c in kinds.items()) + "".join(f"; {n}" for n in notes.values()) + ")"
    if note:
        description += f" (valid split from {train_name}, seed {seed})"
    return Splits(train, valid, test, description, note, seed, skipped)


def split(data: Dataset, valid_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Deterministically hold out ``valid_fraction`` of the records (at least one).

    The indices are shuffled with numpy's ``default_rng(seed)``; each part then
    keeps the file's order, which makes it easy to see which lines went where.
    The parts index into ``data``'s records: nothing is read here.
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
    valid_idx = np.sort(order[:n_valid])
    train_idx = np.sort(order[n_valid:])
    train = Dataset(take(data.records, train_idx), data.format, data.path, container=data.container)
    valid = Dataset(take(data.records, valid_idx), data.format, data.path, container=data.container)
    return train, valid
