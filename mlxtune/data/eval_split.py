"""The records a model is measured on: a split of the data as a run split it, and their prompts and references.

``mlxtune eval`` measures on them, the training report answers a few of its
validation prompts, and ``fuse -q`` measures what re-quantizing kept on the
run's validation split: all three read the run's data again exactly as
training read and split it (its seed, validation fraction and skipped lines),
so "valid" is the part the run held out and "train" the part it learned from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, UsageError
from .formats import DataFormat
from .records import Record, load_data, trains_prompt_masked

if TYPE_CHECKING:
    from ..training.run_schema import RunSettings

SPLITS = ("test", "valid", "train", "all")


def eval_records(
    data: Path, split: str | None, run_cfg: RunSettings, own: bool = False, skip_bad_lines: bool | None = None, fields: Mapping[str, str] | None = None
) -> tuple[list, DataFormat, list, str, str, list[str], list]:
    """(records to evaluate, format, training records, split name, the records in words, notes, skipped lines) for ``data``.

    A directory: its ``test.jsonl`` (default), else the validation split
    (``valid.jsonl``, or the part of ``train.jsonl`` training held out);
    ``train``; ``all`` (every record). A single file has no test split: it is
    split by ``data.load_data`` with the run's seed and fraction, so ``valid``
    (the default for the run's ``own`` data) is exactly the part the run held
    out and ``train`` the part it trained on; ``all`` (the default for any
    other file, e.g. one kept apart for testing) is the whole file.
    ``skip_bad_lines`` as in ``data.load_data``; the notes list each line left out.
    ``fields`` (``--field``) renames columns; None: as the run read its data (its ``fields``).
    """
    if split is not None and split not in SPLITS:
        raise UsageError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
    seed, fraction = int(run_cfg.seed or 0), float(run_cfg.valid_fraction or 0.1)
    fields = run_cfg.fields if fields is None else fields
    splits = load_data(data, valid_fraction=fraction, seed=seed, skip_bad_lines=skip_bad_lines, fields=fields)
    notes: list[str] = splits.skipped_notes()
    parts = {"test": list(splits.test), "valid": list(splits.valid), "train": list(splits.train)}
    parts["all"] = parts["train"] + parts["valid"] + parts["test"]
    if data.is_file():
        if split == "test":
            raise UsageError(f"{data} is a single file: it has no test split. Choose --split valid (the records a run held out), "
                             "--split all (the whole file), or --data a file or directory (with test.jsonl) kept apart for testing")
        split = split or ("valid" if own else "all")
        total = len(parts["all"])
        parts["all"].sort(key=lambda r: r.line)  # the file's order
        where = {"all": f"{data} (whole file)", "valid": f"{data} validation split ({len(splits.valid)} of {total} records, seed {seed})",
                 "train": f"{data} training split ({len(splits.train)} of {total} records, seed {seed})"}[split]
        if own and split == "valid":
            notes.append(f"{data} is a single file: evaluating on the validation split the run held out of it, which training watched "
                         "(its figures flatter the model a little); for an unbiased measure keep a test file apart (a directory with test.jsonl)")
        return parts[split], splits.format, parts["train"], split, where, notes, splits.skipped
    if split == "test" and not len(splits.test):
        raise DataError(f"has no {data / 'test.jsonl'}, which --split test evaluates: add one, or choose "
                        "--split valid (valid.jsonl, or the part of train.jsonl training held out), train or all", data)
    if split is None:
        split = "test" if len(splits.test) else "valid"
        if split == "valid":
            notes.append(f"{data} has no test.jsonl: evaluating on the validation split, which training watched (its figures flatter the model a little)")
    return parts[split], splits.format, parts["train"], split, f"{data} {split} split", notes, splits.skipped


def run_skips_bad_lines(run_cfg: RunSettings) -> bool | None:
    """How the run's own data is read again (eval, report, fuse): skipping the bad lines it skipped."""
    return True if run_cfg.skip_bad_lines else None


def run_encoding(run_cfg: RunSettings, fmt: DataFormat) -> tuple[bool, int]:
    """(mask_prompt, max_seq_len) as the run trained: the loss counts the tokens training counted."""
    return trains_prompt_masked(fmt, run_cfg.mask_prompt), int(run_cfg.max_seq_len or 1024)


def trained_on(records: list, run_data: Path | None, run_cfg: RunSettings, notes: list[str], trained: list | None = None) -> int | None:
    """How many of ``records`` are in the run's training split (the run's data split as training split it), or None if unknown.

    ``trained``: that split when the caller has read it already (evaluating the run's own data), so the file is not read twice.
    """
    if run_data is None:
        return None
    if trained is None:
        if not run_data.exists():
            notes.append(f"cannot tell which records the run trained on: its data {run_data} is not there any more")
            return None
        trained = eval_records(run_data, "train", run_cfg, skip_bad_lines=run_skips_bad_lines(run_cfg))[0]
    seen = {json.dumps(r.data, sort_keys=True) for r in trained}
    return sum(json.dumps(r.data, sort_keys=True) in seen for r in records)


def prompt_and_reference(record: Record, fmt: DataFormat) -> tuple[Any, str]:
    """(the prompt: chat messages or a string, the reference answer) of a record, as its format has them."""
    return fmt.prompt_and_reference(record)


def prompt_text(prompt: Any) -> str:
    """A prompt as one text for people: itself, or the conversation one ``[role] content`` line per message."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)
