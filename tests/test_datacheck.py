"""mlxtune data check: counts, token lengths, truncation, duplicates and overlaps of good data."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxtune.data.batching import encode, encode_dataset
from mlxtune.cli import cli
from mlxtune.data.records import load_data
from mlxtune.data.check import check_data, check_splits
from mlxtune.models.tokenizer import load_tokenizer


def write(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def chat(user: str, answer: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": messages + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model)


def _percentile(values: list[int], q: float) -> int:
    """The length of the record at quantile q (the inverted CDF), computed the plain way."""
    ordered = sorted(values)
    return ordered[max(math.ceil(len(ordered) * q / 100) - 1, 0)]


def test_counts_and_length_stats(tmp_path, tiny_model, tokenizer):
    records = [{"prompt": f"question {i}", "completion": "answer " * (i % 7 + 1)} for i in range(40)]
    data = write(tmp_path / "d.jsonl", records)
    r = run("data", "check", data, "--model", tiny_model)
    assert r.exit_code == 0, r.output
    assert "OK: usable for training" in r.output and "warning" not in r.output

    report = check_data(load_data(data), tokenizer, max_seq_len=1024)
    train, valid, test = report.splits
    assert (train.records, valid.records, test.records) == (36, 4, 0)
    assert report.format == "completion" and report.mask_prompt
    assert test.lengths is None
    splits = load_data(data)
    lengths = [len(encode(rec, "completion", tokenizer, True, sys.maxsize)) for rec in splits.train]
    s = train.lengths
    assert (s.min, s.max, s.total) == (min(lengths), max(lengths), sum(lengths))
    assert (s.median, s.p90, s.p99) == tuple(_percentile(lengths, q) for q in (50, 90, 99))
    assert s.min < s.median < s.p90 <= s.p99 <= s.max
    assert (train.truncated, train.no_target, train.duplicates) == (0, 0, 0)


def test_truncation_and_no_target_at_a_small_max_seq_len(tmp_path, tiny_model, tokenizer):
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 8
    records = [chat(f"hi {i}", "ok") for i in range(6)] + [chat(long_prompt, "ok") for _ in range(3)]
    records += [chat("hi", "Meeting notes: discuss the budget, plan the launch. " * 4 + str(i)) for i in range(3)]
    data = tmp_path / "d"
    data.mkdir()
    write(data / "train.jsonl", records)
    write(data / "valid.jsonl", [chat("hello", "fine")])
    splits = load_data(data)
    full = [len(encode(rec, "chat", tokenizer, True, sys.maxsize)) for rec in splits.train]
    limit = 40
    assert sum(n > limit for n in full) == 6  # the long prompts and the long answers

    report = check_data(splits, tokenizer, max_seq_len=limit)
    train = report.split("train")
    assert train.truncated == 6 and train.no_target == 3  # the answers after a long prompt lie beyond the limit
    assert train.lengths.max == max(full) > limit  # lengths are the records' own, before truncation
    assert any("6 of 12 records are longer than --max-seq-len 40" in w for w in report.warnings)
    assert any("3 records have no token to train on" in w for w in report.warnings)

    r = run("data", "check", data, "--model", tiny_model, "--max-seq-len", limit)
    assert r.exit_code == 0, r.output
    row = next(line.split() for line in r.output.splitlines() if line.startswith("train"))
    assert row[1] == "12" and row[-3:] == ["6", "3", "2"]  # records ... truncated, no target, duplicates (the long prompts)

    # the same figures from what a training run has already encoded
    encoded = {name: encode_dataset(getattr(splits, name), "chat", tokenizer, True, limit) for name in ("train", "valid")}
    again = check_splits(splits, limit, True, encoded)
    assert (again.split("train").truncated, again.split("train").no_target) == (6, 3)
    assert again.split("train").lengths.max == limit  # as trained: cut
    assert again.split("test").lengths is None
    assert [w for w in again.warnings if "no token" in w] == [w for w in report.warnings if "no token" in w]


def test_nothing_left_to_train_is_an_error(tmp_path, tiny_model):
    data = write(tmp_path / "d.jsonl", [chat("The quick brown fox jumps over the lazy dog. " * 8, "ok")] * 4)
    r = run("data", "check", data, "--model", tiny_model, "--max-seq-len", 20)
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "d.jsonl" in r.output
    assert "raise --max-seq-len" in r.output and "Traceback" not in r.output


def test_duplicates_and_overlaps(tmp_path, tiny_model, tokenizer):
    train = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(10)]
    train.append(train[3] | {"id": "copy"})  # a duplicate: extra fields do not count
    train.append({"completion": "answer 4", "prompt": "question 4"})  # another, keys reordered
    root = tmp_path / "d"
    root.mkdir()
    write(root / "train.jsonl", train)
    write(root / "valid.jsonl", [train[1], {"prompt": "v", "completion": "w"}])
    write(root / "test.jsonl", [train[2], {"prompt": "question 5", "completion": "a different answer"}, {"prompt": "t", "completion": "u"}])

    report = check_data(load_data(root), tokenizer, max_seq_len=1024)
    assert report.split("train").duplicates == 2
    assert report.split("train").duplicate_lines == [(11, 4), (12, 5)]
    valid, test = report.overlaps
    assert (valid.split, valid.records, valid.prompts, valid.lines) == ("valid", 1, 1, [(1, 2)])
    assert (test.split, test.records, test.prompts, test.lines) == ("test", 1, 2, [(1, 3)])
    text = "\n".join(report.warnings)
    assert "train: 2 record(s) repeat an earlier one" in text and "train.jsonl:11 repeats line 4" in text
    assert "valid: 1 of 2 records also appear in train" in text and "validation loss" in text
    assert "test: 1 of 3 records also appear in train" in text
    assert "test: 1 of 3 records ask a prompt that train also holds, with a different answer" in text

    r = run("data", "check", root, "--model", tiny_model)
    assert r.exit_code == 0, r.output
    assert "Shared with train: valid 1 of 2 records (same prompt: 1), test 1 of 3 records (same prompt: 2)" in r.output
    assert r.output.count("warning: ") == 4


def test_chat_prompt_overlap_is_everything_before_the_last_answer(tmp_path, tokenizer):
    root = tmp_path / "d"
    root.mkdir()
    write(root / "train.jsonl", [chat("what is 2+2?", "4", system="be brief"), chat("hi", "hello")])
    write(root / "valid.jsonl", [chat("hi", "hello")])
    write(root / "test.jsonl", [chat("what is 2+2?", "four", system="be brief"), chat("what is 2+2?", "4", system="be long")])
    report = check_data(load_data(root), tokenizer, max_seq_len=1024)
    valid, test = report.overlaps
    assert (valid.records, valid.prompts) == (1, 1)
    assert (test.records, test.prompts) == (0, 1)  # a different system message is a different prompt


def test_text_data_has_no_prompt_overlap(tmp_path, tiny_model):
    data = write(tmp_path / "t.jsonl", [{"text": f"note {i}"} for i in range(9)] + [{"text": "note 0"}])
    r = run("data", "check", data, "--model", tiny_model, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["format"] == "text" and report["mask_prompt"] is False
    assert [o["prompts"] for o in report["overlaps"]] == [None, None]
    dupes = sum(s["duplicates"] for s in report["splits"]) + report["overlaps"][0]["records"]
    assert dupes == 1  # "note 0" twice: a duplicate in train, or shared by train and valid


def test_json_output_parses_and_matches(tmp_path, tiny_model):
    records = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(20)] + [{"prompt": "q0", "completion": "a0"}]
    data = write(tmp_path / "d.jsonl", records)
    r = run("data", "check", data, "--model", tiny_model, "--json", "--max-seq-len", 100, "--seed", 3, "--valid-fraction", 0.2)
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)  # nothing but the JSON on stdout
    assert report["max_seq_len"] == 100 and report["format"] == "completion"
    assert "seed 3" in report["description"]
    train, valid, test = report["splits"]
    assert (train["records"], valid["records"], test["records"]) == (17, 4, 0)
    assert set(train["lengths"]) == {"min", "median", "p90", "p99", "max", "total"}
    assert train["lengths"]["max"] < 100 and train["truncated"] == 0
    assert train["duplicates"] + report["overlaps"][0]["records"] == 1  # q0 twice
    assert isinstance(report["warnings"], list) and report["model"] == str(tiny_model)


def test_help_has_an_example():
    r = run("data", "check", "--help")
    assert r.exit_code == 0 and "Example" in r.output and "--max-seq-len" in r.output
    assert run("data", "--help").exit_code == 0


def test_duplicates_and_overlaps_of_many_records_equal_the_plain_count(tmp_path, tokenizer):
    """Hashed into numpy arrays (data check at a million records): the same counts and lines as a dict of the keys."""
    import random

    rng = random.Random(0)
    pool = [f"q{i}" for i in range(300)]
    def record():
        q = rng.choice(pool)
        return {"prompt": q, "completion": rng.choice(["a", "b", "c"]) + q}
    d = tmp_path / "d"
    d.mkdir()
    for name, n in (("train", 2000), ("valid", 300), ("test", 300)):
        write(d / f"{name}.jsonl", [record() for _ in range(n)])
    splits = load_data(d)
    report = check_splits(splits, 64, True)
    fmt = splits.format
    first_train = {}
    for r in splits.train:
        first_train.setdefault(fmt.record_key(r), r.line)
    for name in ("train", "valid", "test"):
        ds, first, repeats = getattr(splits, name), {}, []
        for r in ds:
            line = first.setdefault(fmt.record_key(r), r.line)
            if line != r.line:
                repeats.append((r.line, line))
        s = report.split(name)
        assert s.duplicates == len(repeats) > 0 and s.duplicate_lines == repeats[:3]
        if name != "train":
            o = next(o for o in report.overlaps if o.split == name)
            shared = [(r.line, first_train[k]) for r in ds if (k := fmt.record_key(r)) in first_train]
            prompts = {fmt.prompt_key(r) for r in splits.train}
            assert o.records == len(shared) > 0 and o.lines == shared[:3]
            assert o.prompts == sum(fmt.prompt_key(r) in prompts for r in ds)
