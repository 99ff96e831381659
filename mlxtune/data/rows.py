"""Records as a data set holds them: one ``Record`` each, kept whole or read back on access.

A JSONL file of a million short records would cost gigabytes as a list of
dicts; ``JsonlRecords`` keeps two numpy arrays (byte offsets, line numbers)
and parses a line again when it is indexed or iterated. ``TableRecords`` keeps
an Arrow table and makes dicts of its rows on access; ``HeldRecords`` is a
plain list for the containers read whole (a JSON array, CSV, text). All three
are a ``Sequence[Record]`` with ``take(indices)``, which the train/valid split
uses to index into them without materialising anything.

``--field FIELD=COLUMN`` renames a container's columns (or a JSON object's
keys) to the fields the data formats read, before format detection:
``map_fields`` does it to one raw row, the same way at reading and on access.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError

# Fields a data format reads as a list (of messages or turns): a CSV cell holding JSON is parsed for them.
LIST_FIELDS = ("messages", "conversations", "chosen", "rejected", "tools")  # a table cell of these may hold a JSON list
ONLY_LISTS = ("messages", "conversations")  # ... and of these must (chosen, rejected may also be plain text)
_CHUNK = 1024  # rows made into dicts at a time when iterating an Arrow table


@dataclass(frozen=True)
class Record:
    """One record as read: its JSON object and where it came from (for errors).

    ``line`` is the line of a text container (JSONL, JSON array, CSV, text),
    or the row number (0-based, as ``table[N]``/``dataset[N]``) of Parquet and
    Arrow data, which ``unit`` then says ("row").
    """

    data: dict[str, Any]
    line: int
    path: str | None = None
    unit: str = "line"

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


def map_fields(obj: dict[str, Any], fields: Mapping[str, str] | None, fail: Callable[[str], DataError]) -> dict[str, Any]:
    """``obj`` with each mapped COLUMN renamed to its FIELD (``--field FIELD=COLUMN``); other keys kept.

    A mapped column the record lacks raises ``fail(message)``, naming the column and the mapping.
    """
    if not fields:
        return obj
    out = {k: v for k, v in obj.items() if k not in fields.values()}
    for fld, column in fields.items():
        if column not in obj:
            found = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
            raise fail(f"has no column '{column}', which --field {fld}={column} reads as '{fld}' (found: {found}): "
                       "check the column name, or drop the --field")
        out[fld] = obj[column]
    return out


def parse_fields(specs: Iterable[str]) -> dict[str, str]:
    """``["prompt=question", ...]`` (``--field``, repeatable) as ``{"prompt": "question"}``."""
    from ..errors import UsageError

    out: dict[str, str] = {}
    for spec in specs:
        fld, sep, column = spec.partition("=")
        fld, column = fld.strip(), column.strip()
        if not sep or not fld or not column:
            raise UsageError(f"--field takes FIELD=COLUMN (e.g. --field prompt=question), not {spec!r}")
        if fld in out:
            raise UsageError(f"--field {fld} is given twice ({fld}={out[fld]} and {fld}={column}): give it once")
        out[fld] = column
    return out


def _index(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


class RecordSequence(Sequence[Record]):
    """Records read on access: ``index`` selects, in order, the positions of the rows this sequence holds."""

    def __init__(self, index: np.ndarray):
        self.index = np.asarray(index, dtype=np.int64)

    def _read(self, positions: np.ndarray) -> Iterator[Record]:
        raise NotImplementedError

    def _with(self, index: np.ndarray) -> RecordSequence:
        raise NotImplementedError

    def take(self, indices: Sequence[int] | np.ndarray) -> RecordSequence:
        """The records at ``indices`` (of this sequence), still unread."""
        return self._with(self.index[np.asarray(indices, dtype=np.int64)])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self._with(self.index[i])
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} of {len(self)}")
        return next(self._read(self.index[i : i + 1] if i != -1 else self.index[-1:]))

    def __iter__(self) -> Iterator[Record]:
        return self._read(self.index)

    def __add__(self, other: Sequence[Record]) -> list[Record]:
        return list(self) + list(other)

    def __radd__(self, other: Sequence[Record]) -> list[Record]:
        return list(other) + list(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {len(self)} records>"


class HeldRecords(RecordSequence):
    """Records kept whole, as read (containers read in one piece)."""

    def __init__(self, records: Sequence[Record], index: np.ndarray | None = None):
        self.records = records
        super().__init__(_index(len(records)) if index is None else index)

    def _read(self, positions: np.ndarray) -> Iterator[Record]:
        return (self.records[p] for p in positions.tolist())

    def _with(self, index: np.ndarray) -> HeldRecords:
        return HeldRecords(self.records, index)


class HoldingReader:
    """A reader that keeps every record it yields (JSON arrays, CSV/TSV, text): ``records(kept)`` hands over those kept."""

    held: list[Record]

    def records(self, kept: np.ndarray) -> HeldRecords:
        held, self.held = self.held, []
        return HeldRecords([held[i] for i in kept.tolist()])


class JsonlRecords(RecordSequence):
    """The records of a JSONL file as byte offsets and line numbers; a line is parsed again when read."""

    def __init__(self, path: str, offsets: np.ndarray, lines: np.ndarray, fields: Mapping[str, str] | None, index: np.ndarray | None = None):
        self.path, self.offsets, self.lines, self.fields = path, offsets, lines, dict(fields or {})
        super().__init__(_index(len(offsets)) if index is None else index)

    def _read(self, positions: np.ndarray) -> Iterator[Record]:
        with open(self.path, "rb") as f:
            for p in positions.tolist():
                f.seek(int(self.offsets[p]))
                line = int(self.lines[p])
                try:
                    obj = json.loads(f.readline().decode("utf-8"))
                except ValueError:  # JSONDecodeError, UnicodeDecodeError: not the line that was validated
                    obj = None
                if not isinstance(obj, dict):
                    raise DataError("the file changed since it was read: this line no longer holds the record it held; "
                                    "keep a data file unchanged while a command reads it", self.path, line)
                obj = map_fields(obj, self.fields, lambda m: DataError(m, self.path, line))
                yield Record(obj, line, self.path)

    def _with(self, index: np.ndarray) -> JsonlRecords:
        return JsonlRecords(self.path, self.offsets, self.lines, self.fields, index)


class TableRecords(RecordSequence):
    """The rows of an Arrow table (Parquet, Arrow files), made dicts on access; ``rows`` are their numbers in the file."""

    def __init__(self, table: Any, path: str, rows: np.ndarray, convert: Callable[[dict, int], dict], index: np.ndarray | None = None):
        self.table, self.path, self.rows, self.convert = table, path, rows, convert
        super().__init__(_index(len(rows)) if index is None else index)

    def _read(self, positions: np.ndarray) -> Iterator[Record]:
        for start in range(0, len(positions), _CHUNK):
            chunk = positions[start : start + _CHUNK]
            taken = self.table.take(self.rows[chunk])
            for row, raw in zip(self.rows[chunk].tolist(), taken.to_pylist()):
                yield Record(self.convert(raw, row), row, self.path, "row")

    def _with(self, index: np.ndarray) -> TableRecords:
        return TableRecords(self.table, self.path, self.rows, self.convert, index)


def take(records: Sequence[Record], indices: Sequence[int]) -> Sequence[Record]:
    """``records`` at ``indices``: still unread for a ``RecordSequence``, else a list."""
    if isinstance(records, (RecordSequence, ChainedRecords)):
        return records.take(indices)
    return [records[i] for i in indices]


class ChainedRecords(Sequence[Record]):
    """The records of several files of one split (a Hub data set's shards), one after another."""

    def __init__(self, parts: Sequence[Sequence[Record]]):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = i + len(self) if i < 0 else i
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} of {len(self)}")
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[part][i - int(self.starts[part])]

    def __iter__(self) -> Iterator[Record]:
        for p in self.parts:
            yield from p

    def take(self, indices: Sequence[int] | np.ndarray) -> ChainedRecords:
        idx = np.asarray(indices, dtype=np.int64)
        part_of = np.searchsorted(self.starts, idx, side="right") - 1
        # take keeps each part's records in the order asked; split() asks in ascending order, so order is kept
        return ChainedRecords([take(p, (idx[part_of == k] - self.starts[k]).tolist()) for k, p in enumerate(self.parts)])

    def __add__(self, other: Sequence[Record]) -> list[Record]:
        return list(self) + list(other)
