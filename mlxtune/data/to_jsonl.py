"""``mlxtune data convert``: any data mlxtune reads, written as its canonical JSONL.

A file (any container) becomes one JSONL file; a directory (splits in any
container, a Hugging Face dataset) becomes a directory of train/valid/test.jsonl,
its splits as they were (nothing is held out here: lora does that). Every
record is validated before anything is written, with ``--field`` renaming
applied, so the output loads as it is; each line is the record's JSON object
(Arrow's nulls and empty CSV cells left out, JSON cells parsed). The output is
written under a temporary name and renamed whole: an interrupted conversion
leaves no partial file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, OutputExistsError, UsageError
from ..fsutil import atomic_text_file, staged_dir
from .records import Dataset, Record, load_file, load_split_files


@dataclass
class ConvertedSplit:
    name: str  # train, valid, test; "all" for a single file
    source: str  # the file(s) read
    container: str  # how they stored records (data.containers)
    format: str  # the records' format (data.formats name)
    records: int
    output: str  # the JSONL file written


@dataclass
class Converted:
    output: str
    splits: list[ConvertedSplit]
    skipped: list[DataError] = field(default_factory=list)  # records left out (skip_bad_lines)
    layout: str | None = None  # a directory's layout: files, Hub download, datasets.save_to_disk


def convert_data(src: str | Path, out: str | Path, fields: Mapping[str, str] | None = None, skip_bad_lines: bool | None = False, force: bool = False) -> Converted:
    """Write ``src`` (a file or a directory) as canonical JSONL at ``out`` (a .jsonl file, or a directory for a directory)."""
    src, out = Path(src), Path(out)
    if not src.exists():
        raise DataError("does not exist: give data convert a data file or a directory", src)
    if src.is_dir():
        if out.suffix.lower() == ".jsonl":
            raise UsageError(f"{src} is a directory of splits: give data convert an output directory (it writes train/valid/test.jsonl there), not {out}")
        if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents:
            raise UsageError(f"the output {out} holds the input {src}: replacing it would delete the data; write the conversion to another directory")
        if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
            raise OutputExistsError(f"{out} already exists: choose another output directory, or pass --force to replace it")
        loaded, layout = load_split_files(src, skip_bad_lines, fields)
        splits = []
        with staged_dir(out, force) as tmp:
            for name, ds in loaded.items():
                _write(ds, tmp / f"{name}.jsonl")
                splits.append(_converted(name, ds, out / f"{name}.jsonl"))
        return Converted(str(out), splits, [e for ds in loaded.values() for e in ds.skipped], layout)
    if out.suffix.lower() != ".jsonl":
        raise UsageError(f"data convert writes a .jsonl file for a single input file: name the output OUT.jsonl, not {out}")
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists: choose another output, or pass --force to replace it")
    if out.resolve() == src.resolve():
        raise UsageError(f"the output {out} is the input: write the conversion to another file")
    ds = load_file(src, skip_bad_lines, fields)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(ds, out)
    return Converted(str(out), [_converted("all", ds, out)], list(ds.skipped))


def _converted(name: str, ds: Dataset, output: Path) -> ConvertedSplit:
    return ConvertedSplit(name, str(ds.path), str(ds.container), ds.format.name, len(ds), str(output))


def _line(record: Record) -> str:
    return json.dumps(record.data, ensure_ascii=False, default=str) + "\n"  # default: an Arrow date or decimal column, as text


def _write(ds: Dataset, path: Path) -> None:
    """The records as JSONL, under a temporary name in the same folder renamed to ``path`` once complete."""
    with atomic_text_file(path) as f:
        for record in ds:
            f.write(_line(record))
