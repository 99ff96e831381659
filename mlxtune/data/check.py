"""``mlxtune data check``: what a data set holds, before a training run spends time on it.

Beyond the validation ``data.load_data`` does, it measures what a run would
meet: token lengths as the model sees them (chat template applied), records
that ``--max-seq-len`` would cut or leave with nothing to learn, duplicates,
and records shared between train and valid/test, which make validation and
test scores look better than they are. Problems that make the data unusable
raise ``DataError``; the rest are warnings in the report. What a record
trains on, and what makes two records the same, its format says (``formats``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import containers
from .batching import Example, encode
from .records import Dataset, Splits, load_data, trains_prompt_masked
from ..errors import DataError

_EXAMPLES = 3  # line pairs kept to show where duplicates and overlaps are


@dataclass
class LengthStats:
    """Tokens per record: ``total`` over the split, percentiles are actual record lengths."""

    min: int
    median: int
    p90: int
    p99: int
    max: int
    total: int


@dataclass
class SplitReport:
    name: str  # train, valid or test
    path: str | None  # the file its records came from
    records: int
    lengths: LengthStats | None = None  # None: not tokenized, or no records
    trained_tokens: int | None = None  # tokens trained within max_seq_len (None: not tokenized)
    untrained_turns: int = 0  # chat assistant turns with "weight": 0, not trained
    truncated: int = 0  # records longer than max_seq_len
    no_target: int = 0  # records with no trained token within max_seq_len (training skips them)
    duplicates: int = 0  # records equal to an earlier record of the same split
    duplicate_lines: list[tuple[int, int]] = field(default_factory=list)  # (line, line it repeats)
    container: str | None = None  # how its file stores records (data.containers): jsonl, json, csv, tsv, parquet, arrow, text


@dataclass
class Overlap:
    """Records of ``split`` (valid or test) that train also holds."""

    split: str
    records: int  # exact copies of a train record
    prompts: int | None  # records whose prompt a train record also has (includes the copies); None for text
    lines: list[tuple[int, int]] = field(default_factory=list)  # (line in split, line in train)


@dataclass
class DataReport:
    description: str
    format: str
    max_seq_len: int
    mask_prompt: bool
    splits: list[SplitReport]
    overlaps: list[Overlap]
    warnings: list[str]
    notes: list[str] = field(default_factory=list)  # decisions made on the user's behalf
    model: str | None = None  # whose tokenizer counted the tokens
    skipped: list[dict[str, Any]] = field(default_factory=list)  # bad lines left out (--skip-bad-lines): path, line, field, reason

    def split(self, name: str) -> SplitReport:
        return next(s for s in self.splits if s.name == name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Tokens:
    lengths: list[int]
    truncated: int
    no_target: int
    targets: int = 0  # trained tokens within max_seq_len


# ------------------------------------------------------------------ entry points


def check(
    path: str | Path,
    model: str | None = None,
    max_seq_len: int = 1024,
    mask_prompt: bool | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
    offline: bool | None = None,
    skip_bad_lines: bool = False,
    thinking: bool = False,
    fields: Mapping[str, str] | None = None,
) -> DataReport:
    """Load ``path`` as ``mlxtune lora --data`` would and report on it, counting with ``model``'s tokenizer
    (its chat template rendering with thinking on or off, as lora's ``--thinking`` says).

    The data is read before the model, so a broken file fails fast (or, with
    ``skip_bad_lines``, its bad lines are left out and listed in the report).
    ``fields`` (``--field``) renames columns, as lora's.
    """
    from ..models.source import open_model
    from ..models.tokenizer import load_tokenizer

    splits = load_data(path, valid_fraction=valid_fraction, seed=seed, skip_bad_lines=skip_bad_lines, fields=fields)
    opened = open_model(model, offline=offline)
    tokenizer = load_tokenizer(opened.path, thinking=thinking)
    report = check_data(splits, tokenizer, max_seq_len, mask_prompt)
    report.model = opened.source.spec
    report.notes += list(opened.notes)
    return report


def check_data(splits: Splits, tokenizer: Any, max_seq_len: int, mask_prompt: bool | None = None) -> DataReport:
    """Tokenize every split without truncation (so lengths are the records' own) and report.

    Raises DataError when no train record has a token to learn from.
    """
    mask_prompt = trains_prompt_masked(splits.format, mask_prompt)
    if not splits.format.trainable:  # nothing to tokenize: report what the data holds, and why it cannot train
        report = _report(splits, max_seq_len, mask_prompt, {})
        report.warnings.insert(0, f"not tokenized: {splits.format.untrainable}")
        return report
    tokens = {}
    for name, ds in _named(splits):
        t = tokens[name] = _Tokens([], 0, 0)
        for record in ds:
            example = encode(record, ds.format, tokenizer, mask_prompt, sys.maxsize)
            trained = int(example.loss_mask[:max_seq_len].sum())
            t.lengths.append(len(example))
            t.truncated += len(example) > max_seq_len
            t.no_target += not trained
            t.targets += trained
    train = tokens["train"]
    if train.no_target == len(splits.train):
        why = (
            f"no train record has a token to learn from within --max-seq-len {max_seq_len}: raise --max-seq-len"
            if train.truncated
            else "no train record has a token to learn from"
        )
        raise DataError(why, splits.train.path)
    return _report(splits, max_seq_len, mask_prompt, tokens)


def check_splits(
    splits: Splits,
    max_seq_len: int,
    mask_prompt: bool,
    encoded: Mapping[str, tuple[Sequence[Example], int]] | None = None,
) -> DataReport:
    """The report for a training run, from what it has already loaded and encoded.

    ``encoded`` maps a split name to what ``batching.encode_dataset`` returned
    for it, ``(examples, n_truncated)``; splits not in it get no token
    figures. Lengths are then those of the examples as trained: cut at
    ``max_seq_len``, without the records dropped for having no target.
    Nothing is tokenized here: duplicates and overlaps only hash the records.
    """
    tokens = {}
    for name, (examples, n_truncated) in (encoded or {}).items():
        ds = getattr(splits, name)
        tokens[name] = _Tokens([len(e) for e in examples], n_truncated, len(ds) - len(examples), sum(e.n_targets for e in examples))
    return _report(splits, max_seq_len, mask_prompt, tokens)


# ------------------------------------------------------------------ the report


def _named(splits: Splits) -> list[tuple[str, Dataset]]:
    return [("train", splits.train), ("valid", splits.valid), ("test", splits.test)]


def _report(splits: Splits, max_seq_len: int, mask_prompt: bool, tokens: Mapping[str, _Tokens]) -> DataReport:
    fmt = splits.format
    reports = []
    keys = {}
    for name, ds in _named(splits):
        s = SplitReport(name, ds.path, len(ds), container=ds.container)
        t = tokens.get(name)
        if t is not None and t.lengths:
            s.lengths, s.truncated, s.no_target, s.trained_tokens = _stats(t.lengths), t.truncated, t.no_target, t.targets
        k = keys[name] = _Keys.of(ds)  # one pass over the records (a JSONL data set's are read back from the file)
        s.untrained_turns = k.untrained
        repeats = k.duplicates()
        s.duplicates, s.duplicate_lines = len(repeats), repeats[:_EXAMPLES]
        reports.append(s)
    train = keys["train"]
    overlaps = []
    for name, _ in _named(splits)[1:]:
        k = keys[name]
        shared = train.shared(k)
        prompts = int(np.isin(k.prompts, train.prompts).sum()) if fmt.has_answers else None
        overlaps.append(Overlap(name, len(shared), prompts, shared[:_EXAMPLES]))
    report = DataReport(splits.description, fmt.name, max_seq_len, mask_prompt, reports, overlaps, [])
    report.notes = ([splits.note] if splits.note else []) + splits.skipped_notes()
    report.skipped = [{"path": e.path, "line": e.line, "field": e.field, "reason": e.reason} for e in splits.skipped]
    report.warnings = _warnings(report, splits)
    return report


def _stats(lengths: list[int]) -> LengthStats:
    a = np.asarray(lengths)
    # inverted_cdf: every figure is the length of an actual record
    p50, p90, p99 = (int(np.percentile(a, q, method="inverted_cdf")) for q in (50, 90, 99))
    return LengthStats(int(a.min()), p50, p90, p99, int(a.max()), int(a.sum()))


def _digest(key: str | None) -> int:
    """A record's key (``formats``' canonical JSON) as 64 bits: a million records compared without holding their text."""
    if key is None:
        return 0
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


@dataclass
class _Keys:
    """What makes each record of a split the same as another (``record_key``, ``prompt_key``), hashed, with its line."""

    records: np.ndarray  # (N,) uint64
    prompts: np.ndarray  # (N,) uint64
    lines: np.ndarray  # (N,) int64
    untrained: int  # chat assistant turns with "weight": 0

    @classmethod
    def of(cls, ds: Dataset) -> _Keys:
        fmt, n = ds.format, len(ds)
        records, prompts, lines = np.zeros(n, np.uint64), np.zeros(n, np.uint64), np.zeros(n, np.int64)
        untrained = 0
        for i, r in enumerate(ds):
            records[i], prompts[i], lines[i] = _digest(fmt.record_key(r)), _digest(fmt.prompt_key(r)), r.line
            untrained += fmt.untrained_turns(r)
        return cls(records, prompts, lines, untrained)

    def _firsts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distinct keys sorted, the position of each one's first record, each record's distinct key's index)."""
        return np.unique(self.records, return_index=True, return_inverse=True)

    def duplicates(self) -> list[tuple[int, int]]:
        """(line, line of the earlier record it repeats) of every record equal to an earlier one, in file order."""
        _, first, inverse = self._firsts()
        earlier = first[inverse]
        repeat = np.flatnonzero(earlier != np.arange(len(self.records)))
        return list(zip(self.lines[repeat].tolist(), self.lines[earlier[repeat]].tolist()))

    def shared(self, other: _Keys) -> list[tuple[int, int]]:
        """(line in other, line of the first equal record here) of other's records that this split also holds."""
        distinct, first, _ = self._firsts()
        if not len(distinct):
            return []
        at = np.minimum(np.searchsorted(distinct, other.records), len(distinct) - 1)
        hit = np.flatnonzero(distinct[at] == other.records)
        return list(zip(other.lines[hit].tolist(), self.lines[first[at[hit]]].tolist()))


def _warnings(report: DataReport, splits: Splits) -> list[str]:
    out = []
    limit = report.max_seq_len
    for s in report.splits:
        where = s.path or s.name
        if s.duplicates:
            line, earlier = s.duplicate_lines[0]
            out.append(
                f"{s.name}: {s.duplicates} record(s) repeat an earlier one (e.g. {_at(where, line, s.container)} repeats "
                f"{_unit(s.container)} {earlier}): repeats weigh more in training; remove them unless that is meant"
            )
        if s.truncated:
            longest = f" (the longest: {s.lengths.max})" if s.lengths and s.lengths.max > limit else ""
            out.append(
                f"{s.name}: {s.truncated} of {s.records} records are longer than --max-seq-len {limit} "
                f"tokens{longest} and will be cut: raise --max-seq-len, or shorten them"
            )
        if s.no_target:
            out.append(
                f"{s.name}: {s.no_target} records have no token to train on within the first {limit} "
                "tokens and will be skipped: raise --max-seq-len, or shorten their prompts"
            )
    train_path = splits.train.path or "train"
    for o in report.overlaps:
        ds = getattr(splits, o.split)
        effect = "the validation loss will look better than it is" if o.split == "valid" else "test results will look better than they are"
        if o.records:
            line, train_line = o.lines[0]
            out.append(
                f"{o.split}: {o.records} of {len(ds)} records also appear in train (e.g. {_at(ds.path, line, ds.container)} = "
                f"{_at(train_path, train_line, splits.train.container)}): {effect}; remove them from one side"
            )
        if o.split == "test" and o.prompts and o.prompts > o.records:
            out.append(
                f"test: {o.prompts - o.records} of {len(ds)} records ask a prompt that train also holds, "
                "with a different answer: test results partly measure recall of training prompts"
            )
    return out


def _unit(container: str | None) -> str:
    """Where a record of this container is: a line, or a row (Parquet, Arrow)."""
    return containers.READERS[container].unit if container else "line"


def _at(path: str | None, line: int, container: str | None) -> str:
    """A record's place as errors write it: 'file:17', or 'file, row 17'."""
    return f"{path}:{line}" if _unit(container) == "line" else f"{path}, row {line}"
