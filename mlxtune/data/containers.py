"""Containers: how records are stored in a file, read separately from what they hold (``formats``).

One reader class per container (JSONL, a JSON array, CSV, TSV, Parquet, Arrow,
plain text) behind ``READERS``; ``detect`` chooses by content, then extension:
``PAR1`` first is Parquet, ``.csv``/``.tsv``/``.txt``/``.md``/``.arrow`` are
what they say, and otherwise a file whose first character is ``[`` is a JSON
array, anything else JSONL. A reader yields ``(line or row, object or
DataError)`` per record and then gives the records kept (``records(kept)``);
``records.load_file`` validates each and builds the data set.

A data directory's splits (``split_files``): train, valid and test (also
named validation, dev, eval) in any container, mixed per split; the files of
a Hugging Face dataset as a Hub download leaves it (``data/train-00000-of-
00001.parquet``, one or more shards per split) or as ``datasets.save_to_disk``
does (``dataset_dict.json`` and ``train/data-00000-of-00001.arrow``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import DataError
from .containers_json import BOM, HEAD_BYTES, JsonArrayReader, JsonlReader
from .containers_table import ArrowReader, CsvReader, ParquetReader, TextReader, TsvReader
from .rows import Record


class Reader(Protocol):
    """One file being read: its records in order, then the ones kept."""

    name: str  # the container: jsonl, json, csv, tsv, parquet, arrow, text
    unit: str  # where a record is: "line" or "row"
    note: str | None  # how records were made, when that was a choice (text: split at blank lines)
    empty: str  # the error of a file with no record

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any] | DataError]]: ...

    def records(self, kept: np.ndarray) -> Sequence[Record]: ...


READERS: dict[str, type] = {r.name: r for r in (JsonlReader, JsonArrayReader, CsvReader, TsvReader, ParquetReader, ArrowReader, TextReader)}
EXTENSIONS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".arrow": "arrow", ".txt": "text", ".md": "text"}
SPLIT_NAMES = {"train": "train", "valid": "valid", "validation": "valid", "dev": "valid", "eval": "valid", "test": "test"}
_BY_EXTENSION = ("csv", "tsv", "arrow", "text")


def detect(path: Path) -> str:
    """The container of a file, by its first bytes and its extension."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1"):
        return "arrow"
    by_name = EXTENSIONS.get(path.suffix.lower())
    if by_name in _BY_EXTENSION or by_name == "parquet":
        return by_name
    text = head[len(BOM) :] if head.startswith(BOM) else head
    return "json" if text.lstrip(b" \t\r\n")[:1] == b"[" else "jsonl"


def open_reader(path: Path, fields: Mapping[str, str] | None = None) -> Reader:
    """The reader of ``path``'s container (``detect``), renaming columns as ``fields`` (``--field``) says."""
    return READERS[detect(path)](path, fields)


# ---------------------------------------------------------------- directories


@dataclass
class Layout:
    """The files of each split of a data directory, and the layout they were found in (for messages)."""

    files: dict[str, list[Path]]  # train, valid, test -> files, in order (shards of one split)
    kind: str  # "files", "Hub download", "datasets.save_to_disk"


def split_of(path: Path) -> str | None:
    """train, valid or test for a file named by its split (``train.jsonl``, ``validation-00000-of-00001.parquet``)."""
    m = re.fullmatch(r"([A-Za-z]+)(?:[-_]\d[\w.-]*)?", path.name[: -len(path.suffix)] if path.suffix else path.name)
    return SPLIT_NAMES.get(m.group(1).lower()) if m else None


_METADATA = frozenset({"state.json", "dataset_info.json", "dataset_dict.json", "readme.md"})  # datasets' and the Hub's own files


def _data_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS and p.name.lower() not in _METADATA)


def _folder_splits(folder: Path) -> dict[str, list[Path]]:
    """The files of each split in one folder: named by their split (train.csv, train-00000-of-00002.parquet) or in a split's folder (train/)."""
    files: dict[str, list[Path]] = {}
    for p in _data_files(folder):
        split = split_of(p)
        if split:
            files.setdefault(split, []).append(p)
    for sub in sorted(folder.iterdir()) if folder.is_dir() else ():
        split = SPLIT_NAMES.get(sub.name.lower())
        if sub.is_dir() and split and split not in files and _data_files(sub):
            files[split] = _data_files(sub)
    for split, found in files.items():
        kinds = sorted({EXTENSIONS[p.suffix.lower()] for p in found})
        named = {m.group(0).lower() for p in found if (m := re.match(r"[A-Za-z]+", p.name)) and split_of(p)}  # valid and validation
        if len(kinds) > 1 or len(named) > 1:
            names = ", ".join(p.name for p in found[:4])
            raise DataError(f"holds {split} data in more than one file kind or name ({names}): keep one of them", folder)
    return {name: files[name] for name in ("train", "valid", "test") if name in files}


def split_files(path: Path) -> Layout:
    """Where each split's records are in a data directory; DataError saying what was looked for when there is no train split.

    In order: a ``datasets.save_to_disk`` folder; split files in the directory; in its ``data/`` (a Hub
    download); in the one configuration folder of a Hub data set that has them (``main/train-*.parquet``).
    """
    if (path / "dataset_dict.json").is_file():
        return _saved_to_disk(path)
    if (path / "state.json").is_file() and list(path.glob("data-*.arrow")):  # one datasets.Dataset, saved whole
        return Layout({"train": sorted(path.glob("data-*.arrow"))}, "datasets.save_to_disk")
    for folder, kind in ((path, "files"), (path / "data", "Hub download")):
        files = _folder_splits(folder)
        if "train" in files:
            return Layout(files, kind)
    configs = {sub: files for sub in sorted(path.iterdir()) if sub.is_dir() and not sub.name.startswith(".")
               and "train" in (files := _folder_splits(sub) or _folder_splits(sub / "data"))}
    if len(configs) == 1:
        (sub, files), = configs.items()
        return Layout(files, f"Hub download, configuration {sub.name}")
    if configs:
        raise DataError(f"holds {len(configs)} configurations of a data set ({', '.join(sub.name for sub in configs)}): "
                        f"pass one of them, e.g. --data {next(iter(configs))}", path)
    others = sorted(p.name for p in _data_files(path) if not split_of(p))
    hint = f"; or pass one of {', '.join(others[:3])} directly" if others else ""
    raise DataError(
        "no train.jsonl: a data directory needs a train split: train.jsonl (or train.json, .csv, .tsv, .parquet, .txt, .md), "
        "data/train-*.parquet as a Hugging Face Hub download has it, or a datasets.save_to_disk folder (dataset_dict.json, "
        f"train/); valid and test are optional (also named validation, dev, eval){hint}",
        path,
    )


def _saved_to_disk(path: Path) -> Layout:
    try:
        names = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"dataset_dict.json is not readable ({e}): save the data set again with datasets' save_to_disk", path) from None
    files: dict[str, list[Path]] = {}
    for name in names:
        split = SPLIT_NAMES.get(str(name).lower())
        shards = sorted((path / str(name)).glob("*.arrow"))
        if split and shards and split not in files:
            files[split] = shards
    if "train" not in files:
        raise DataError(f"dataset_dict.json lists the splits {', '.join(map(str, names)) or 'none'}, none of them train with "
                        "its .arrow files: save a DatasetDict with a train split", path)
    return Layout({name: files[name] for name in ("train", "valid", "test") if name in files}, "datasets.save_to_disk")
