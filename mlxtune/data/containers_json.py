"""The JSON containers: JSONL (one object per line) and a JSON array file, and the text checks every text container shares.

A reader yields ``(line, object)`` for each record, or ``(line, DataError)``
for one that cannot be read (so ``--skip-bad-lines`` can leave it out), and
afterwards gives the records it kept (``records(kept)``). JSONL is read a
line at a time, no line longer than ``MAX_LINE_BYTES``; its records are kept
as byte offsets (``rows.JsonlRecords``), not dicts. A JSON array is read whole
and parsed element by element with ``json.JSONDecoder.raw_decode``, so an
error names the line its element starts on.
"""

from __future__ import annotations

import itertools
import json
from array import array
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import formats
from ..errors import DataError
from .formats import json_type
from .rows import HoldingReader, JsonlRecords, Record, map_fields

BOM = b"\xef\xbb\xbf"
HEAD_BYTES = 8192  # like git, a NUL byte in the first 8 KB means binary
MAX_LINE_BYTES = 8 << 20  # one record; far more text than any --max-seq-len trains on
MAX_DEPTH = 100  # JSON nesting; real records nest a handful of levels
MAGIC = {
    b"\x1f\x8b": "a gzip-compressed file: decompress it first (gunzip -k FILE) and pass the .jsonl inside",
    b"PK\x03\x04": "a zip archive: extract it and pass the .jsonl inside",
    b"\x89PNG": "a PNG image: expected a UTF-8 text file with one JSON object per line",
    b"%PDF": "a PDF document: expected a UTF-8 text file with one JSON object per line",
}


def check_text(head: bytes, path: Path, holding: str = "one JSON object per line") -> None:
    """Reject binary files up front, naming the usual culprits (UTF-16, archives); ``holding``: what the text should hold."""
    for magic, what in MAGIC.items():
        if head.startswith(magic):
            raise DataError(f"not a text file: it looks like {what}", path)
    nul = head.find(b"\x00")
    if nul < 0:
        return
    line = head.count(b"\n", 0, nul) + 1
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or head[0] == 0 or head[1:2] == b"\x00":
        hint = "it looks like UTF-16: save it as UTF-8"
    else:
        hint = f"expected a UTF-8 text file with {holding}"
    raise DataError(f"not a text file (NUL byte at byte offset {nul}): {hint}", path, line)


def read_text(path: Path, holding: str) -> str:
    """A whole text file (JSON array, CSV, plain text) as a string: UTF-8, a BOM dropped, no NUL byte; ``holding``: what it should hold."""
    raw = path.read_bytes()
    check_text(raw[:HEAD_BYTES], path, holding)
    start = len(BOM) if raw.startswith(BOM) else 0
    nul = raw.find(b"\x00", start)
    if nul >= 0:
        raise DataError(f"not a text file (NUL byte at byte offset {nul}): expected a UTF-8 text file with {holding}", path, raw.count(b"\n", 0, nul) + 1)
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = start + e.start
        raise DataError(f"not valid UTF-8 (byte offset {at} in the file): save the file as UTF-8", path, raw.count(b"\n", 0, at) + 1) from None


class JsonlReader:
    """One JSON object per line."""

    name, unit = "jsonl", "line"
    note = None
    empty = 'file is empty: expected one JSON object per line, e.g. {"text": "..."}'

    def __init__(self, path: Path, fields: Mapping[str, str] | None):
        self.path, self.fields = path, fields
        self.offsets, self.lines = array("q"), array("q")

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
        with open(self.path, "rb") as f:
            check_text(f.read(HEAD_BYTES), self.path)
            f.seek(0)
            for lineno, start, line in _lines(f, self.path):
                if isinstance(line, str) and not line.strip():
                    continue
                self.offsets.append(start)
                self.lines.append(lineno)
                try:
                    if isinstance(line, DataError):
                        raise line
                    obj = parse_line(line, self.path, lineno)
                    yield lineno, map_fields(obj, self.fields, lambda m: DataError(m, self.path, lineno))
                except DataError as e:
                    yield lineno, e

    def records(self, kept: np.ndarray) -> JsonlRecords:
        offsets = np.frombuffer(self.offsets, dtype=np.int64)[kept].copy()
        lines = np.frombuffer(self.lines, dtype=np.int64)[kept].copy()
        return JsonlRecords(str(self.path), offsets, lines, self.fields)


def _lines(f, path: Path) -> Iterator[tuple[int, int, str | DataError]]:
    """(line number, byte offset, decoded text) of each line, each at most MAX_LINE_BYTES; a line that is not text gives its DataError."""
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
            yield lineno, start, DataError(
                f"line is longer than {MAX_LINE_BYTES >> 20} MB, the limit for one record: "
                "check that the file holds one JSON object per line, and split very long "
                "texts into several records (training sees at most --max-seq-len tokens of one)",
                path,
                lineno,
            )
            continue
        if lineno == 1 and raw.startswith(BOM):
            raw, start = raw[len(BOM) :], start + len(BOM)
        nul = raw.find(b"\x00")
        if nul >= 0:
            yield lineno, start, DataError(
                f"not a text file (NUL byte at byte offset {start + nul}): expected a UTF-8 "
                "text file with one JSON object per line",
                path,
                lineno,
            )
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield lineno, start, DataError(f"not valid UTF-8 (byte offset {start + e.start} in the file): save the file as UTF-8", path, lineno)
            continue
        yield lineno, start, text


def _reject_constant(path: Path, lineno: int):
    def reject(name: str) -> None:
        raise DataError(f"{name} is not valid JSON: write a number, null or a string", path, lineno)

    return reject


def parse_line(line: str, path: Path, lineno: int) -> dict[str, Any]:
    """One JSONL line as its object, or the DataError saying why it is not one."""
    # Without its line break: json would read past it as whitespace and place an
    # error at the end of the line at "line 2, column 1" of the one-line document.
    line = line.rstrip("\r\n")
    obj = None
    try:
        obj = json.loads(line, parse_constant=_reject_constant(path, lineno))
        deep = too_deep(line, obj)
    except json.JSONDecodeError as e:
        at_end = " (the end of the line)" if e.pos >= len(line) else ""
        raise DataError(
            f"invalid JSON at column {e.colno}{at_end}: {e.msg} (each line must hold one complete JSON object)",
            path,
            lineno,
        ) from None
    except ValueError:  # Python refuses integers of more than 4300 digits
        raise DataError("invalid JSON: a number is too long to read: write it as a string", path, lineno) from None
    except RecursionError:
        deep = True
    return _object(obj, deep, "line is", path, lineno)


def _object(obj: Any, deep: bool, what: str, path: Path, lineno: int) -> dict[str, Any]:
    if deep:
        raise DataError(
            f"JSON nested more than {MAX_DEPTH} levels deep: records are objects of strings and "
            "lists of messages; flatten the structure",
            path,
            lineno,
        )
    if not isinstance(obj, dict):
        raise DataError(
            f"{what} a JSON {json_type(obj)}, not an object: each record must be one JSON object "
            f"like {formats.listed([f.shape for f in formats.FORMATS])}",
            path,
            lineno,
        )
    return obj


def too_deep(text: str, obj: Any) -> bool:
    """Whether ``obj`` nests deeper than MAX_DEPTH (deep records break json.dumps and templates later)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:  # cheap bound: most records stop here
        return False
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


class JsonArrayReader(HoldingReader):
    """A JSON array of objects (``[{...}, {...}]``), each record located by the line its element starts on."""

    name, unit = "json", "line"
    note = None
    empty = 'the JSON array is empty: expected records in it, e.g. [{"text": "..."}]'

    def __init__(self, path: Path, fields: Mapping[str, str] | None):
        self.path, self.fields = path, fields
        self.held: list[Record] = []

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
        text, path = read_text(self.path, "a JSON array of records"), self.path
        at = [1]  # the line of the element being parsed, for the error of a NaN or Infinity in it
        decoder = json.JSONDecoder(parse_constant=lambda name: _reject_constant(path, at[0])(name))
        pos, line, element = _skip(text, 0), 1, 0
        line += text.count("\n", 0, pos)
        if text[pos : pos + 1] != "[":
            raise DataError("expected a JSON array of records ('[' first)", path, line)
        pos, counted = _skip(text, pos + 1), pos
        if text[pos : pos + 1] == "]":
            return
        while True:
            line, counted = line + text.count("\n", counted, pos), pos
            at[0] = line
            try:
                obj, end = decoder.raw_decode(text, pos)
                obj = _object(obj, too_deep(text[pos:end], obj), f"element {element} of the array is", path, line)
            except json.JSONDecodeError as e:
                end_of = " (the end of the file)" if e.pos >= len(text) else ""
                raise DataError(f"invalid JSON at column {e.colno}{end_of}: {e.msg} (in element {element} of the array)", path, e.lineno) from None
            except RecursionError:
                raise DataError(f"JSON nested more than {MAX_DEPTH} levels deep: flatten the structure", path, line) from None
            start_line = line
            try:
                obj = map_fields(obj, self.fields, lambda m: DataError(m, path, start_line))
                self.held.append(Record(obj, start_line, str(path)))
                yield start_line, obj
            except DataError as e:
                self.held.append(Record({}, start_line, str(path)))
                yield start_line, e
            pos = _skip(text, end)
            if text[pos : pos + 1] == "]":
                return
            if pos >= len(text):
                raise DataError(f"the array ends without its ']' after element {element}: is the file cut short?", path, line)
            if text[pos : pos + 1] != ",":
                raise DataError(f"expected ',' or ']' after element {element} of the array", path, line + text.count("\n", counted, pos))
            element, pos = element + 1, _skip(text, pos + 1)


def _skip(text: str, pos: int) -> int:
    """The position of the next character that is not JSON whitespace."""
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos
