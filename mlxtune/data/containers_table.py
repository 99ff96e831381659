"""The tabular and plain containers: CSV and TSV, Parquet, Arrow files (``datasets.save_to_disk``), plain text.

CSV and TSV have a header row naming the columns; a record is located by the
line it starts on, an empty cell is "" (a missing field in a list column), and a cell of a list
field (``rows.LIST_FIELDS``: chat ``messages`` ...) holding JSON is parsed.
Parquet and Arrow are read with pyarrow (the ``parquet`` extra); their list and
struct columns become lists and dicts, so chat ``messages`` columns work, and
a record is located by its row number (0-based, as ``table[N]``). A plain
``.txt``/``.md`` file is text records, one per paragraph (split at blank lines).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import formats
from ..errors import DataError, UsageError
from .containers_json import MAX_LINE_BYTES, read_text
from .rows import HoldingReader, LIST_FIELDS, ONLY_LISTS, Record, TableRecords, map_fields

PYARROW_PIP = "pip install 'mlxtune[parquet]' (or: pip install pyarrow)"


class CsvReader(HoldingReader):
    """Comma-separated values with a header row."""

    name, unit, delimiter = "csv", "line", ","
    note = None
    empty = "has no records: expected a header row naming the columns (e.g. prompt,completion), then one row per record"

    def __init__(self, path: Path, fields: Mapping[str, str] | None):
        self.path, self.fields = path, dict(fields or {})
        self.held: list[Record] = []

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
        path = self.path
        csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
        text = read_text(path, f"a header row and one row per record, cells separated by {'tabs' if self.delimiter == chr(9) else 'commas'}")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=self.delimiter, strict=True)  # strict: an unclosed quote is an error
        header = None
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(f"not valid {self.name.upper()} ({e}): check the quoting of the row that starts here", path, start) from None
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = self._header(row, start)
                lists = set(LIST_FIELDS) | {column for fld, column in self.fields.items() if fld in LIST_FIELDS}  # columns of list fields
                continue
            self.held.append(Record({}, start, str(path)))
            try:
                if len(row) > len(header):
                    raise DataError(f"row has {len(row)} cells but the header has {len(header)} columns: quote cells that hold "
                                    f"the delimiter {self.delimiter!r}", path, start)
                # An empty cell is an empty string, as "" in JSON, but where a list belongs: there it is a missing field.
                cells = {h: cell for h, cell in zip(header, row) if cell != "" or h not in lists}
                obj = map_fields(cells, self.fields, lambda m: DataError(m, path, start))
                obj = {k: self._cell(k, v, start) for k, v in obj.items()}
            except DataError as e:
                yield start, e
                continue
            self.held[-1] = Record(obj, start, str(path))
            yield start, obj

    def _header(self, row: list[str], line: int) -> list[str]:
        header = [cell.strip() for cell in row]
        for i, name in enumerate(header):
            if not name:
                raise DataError(f"column {i + 1} of the header row has no name: the first row must name every column", self.path, line)
            if header.index(name) != i:
                raise DataError(f"the header row names column '{name}' twice: name each column once", self.path, line)
        known = {f for fmt in formats.FORMATS for f in fmt.fields} | set(self.fields.values())
        if not known & set(header):
            shown = ", ".join(repr(h if len(h) <= 30 else h[:27] + "...") for h in header[:6])
            raise DataError(
                f"the header row ({shown}) names none of the fields {formats.listed([f.keys for f in formats.FORMATS])}: "
                "the first row must name the columns (e.g. prompt,completion); map other names with --field FIELD=COLUMN",
                self.path,
                line,
            )
        return header

    def _cell(self, fld: str, value: str, line: int) -> Any:
        """A list field's cell holding JSON, parsed; every other cell as it is (a chosen or rejected answer that only
        looks like JSON, as "[docs](url) explains it", is text)."""
        if fld not in LIST_FIELDS or not value.lstrip().startswith(("[", "{")):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            if fld not in ONLY_LISTS:
                return value
            raise DataError(f"the cell is not valid JSON ({e.msg} at character {e.pos}): a {fld} cell holds a JSON list, "
                            'e.g. [{"role": "user", "content": "..."}]', self.path, line, fld) from None


class TsvReader(CsvReader):
    """Tab-separated values with a header row."""

    name, delimiter = "tsv", "\t"


class TextReader(HoldingReader):
    """Plain text (``.txt``, ``.md``): text records, one per paragraph, split at blank lines."""

    name, unit = "text", "line"
    note = "one record per paragraph, split at blank lines; a paragraph longer than --max-seq-len is truncated in training"
    empty = "has no text: expected paragraphs separated by blank lines"

    def __init__(self, path: Path, fields: Mapping[str, str] | None):
        self.path, self.fields = path, fields
        self.held: list[Record] = []

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
        paragraph: list[str] = []
        start = 0
        for lineno, line in enumerate([*read_text(self.path, "text, paragraphs separated by blank lines").splitlines(), ""], 1):
            if line.strip():
                start = start or lineno
                paragraph.append(line)
                continue
            if paragraph:
                at = start
                try:
                    obj = map_fields({"text": "\n".join(paragraph)}, self.fields, lambda m: DataError(m, self.path, at))
                except DataError as e:
                    self.held.append(Record({}, at, str(self.path)))
                    yield at, e
                else:
                    self.held.append(Record(obj, at, str(self.path)))
                    yield at, obj
            paragraph, start = [], 0


def pyarrow_module():
    """pyarrow, or the UsageError that says how to install it."""
    try:
        import pyarrow
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UsageError(f"reading Parquet and Arrow data needs pyarrow: {PYARROW_PIP}") from None
    return pyarrow


def _without_nulls(value: Any) -> Any:
    """Arrow's nulls for absent struct fields and empty cells dropped, so they read as missing fields."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


class ParquetReader:
    """A Parquet file: one record per row; list and struct columns are lists and dicts."""

    name, unit = "parquet", "row"
    note = None
    empty = "has no rows"

    def __init__(self, path: Path, fields: Mapping[str, str] | None):
        self.path, self.fields = path, fields
        self.table = None

    def _read_table(self) -> Any:
        pa = pyarrow_module()
        try:
            return pa.parquet.read_table(self.path)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"not a readable Parquet file ({e}): check that it was written completely", self.path) from None

    def _convert(self, raw: dict[str, Any], row: int) -> dict[str, Any]:
        return map_fields(_without_nulls(raw), self.fields, lambda m: DataError(m, self.path, row, unit="row"))

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
        self.table = self._read_table()
        row = 0
        for batch in self.table.to_batches(max_chunksize=1024):
            for raw in batch.to_pylist():
                try:
                    yield row, self._convert(raw, row)
                except DataError as e:
                    yield row, e
                row += 1

    def records(self, kept: np.ndarray) -> TableRecords:
        return TableRecords(self.table, str(self.path), np.asarray(kept, dtype=np.int64), self._convert)


class ArrowReader(ParquetReader):
    """An Arrow IPC file, as ``datasets.save_to_disk`` writes (``train/data-00000-of-00001.arrow``, the stream format)."""

    name = "arrow"

    def _read_table(self) -> Any:
        pa = pyarrow_module()
        errors = []
        for open_ in (pa.ipc.open_stream, pa.ipc.open_file):
            try:  # the table's buffers are the mapped file's: it stays mapped while the table lives
                return open_(pa.memory_map(str(self.path))).read_all()
            except (pa.ArrowException, OSError) as e:
                errors.append(str(e))
        raise DataError(f"not a readable Arrow file ({errors[0]}): check that it was written completely", self.path)
