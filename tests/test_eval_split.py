"""``mlxtune eval``: which records it scores and what it calls them (issue 13, item 4), and the answers it shows (item 12).

One run of ``mlxtune lora`` on a single chat file (24 records, ``--seed 3``: the
run holds out 2), evaluated through the CLI in several ways.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import NOTES
from tiny import make_tiny_model

from mlxtune.cli import cli
from mlxtune.data.records import load_data

SEED = 3


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    # untied embeddings: a random tied model's greedy answer is its last prompt token repeated (blank lines)
    return make_tiny_model(tmp_path_factory.mktemp("untied") / "model", tie_word_embeddings=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory, model) -> tuple[Path, Path]:
    """(run directory, its data file) of a one-step run on a single file."""
    root = tmp_path_factory.mktemp("evalsplit")
    data = root / "notes.jsonl"
    data.write_text("".join(NOTES.read_text().splitlines(keepends=True)[:24]))
    run_dir = root / "runs" / "notes"
    r = CliRunner().invoke(cli, ["lora", "--data", str(data), "--model", str(model), "--iters", "1", "--seed", str(SEED), "--backend", "numpy", "-o", str(run_dir), "--no-report"])
    assert r.exit_code == 0, r.output
    return run_dir, data


def _eval(run_dir: Path, *args: str):
    return CliRunner().invoke(cli, ["eval", "--adapter", str(run_dir), "--backend", "numpy", "--max-tokens", "6", *args])


def _reference(record) -> str:
    return [m for m in record["messages"] if m["role"] == "assistant"][-1]["content"]


def test_default_is_the_runs_own_validation_split(run):
    """The records the run held out (same seed and fraction), named valid, in eval-valid.json: not the whole file as 'test'."""
    run_dir, data = run
    r = _eval(run_dir, "--samples", "0")
    assert r.exit_code == 0, r.output
    held_out = load_data(data, valid_fraction=0.1, seed=SEED).valid
    result = json.loads((run_dir / "eval-valid.json").read_text())
    assert not (run_dir / "eval-test.json").exists()
    assert result["split"] == "valid" and result["records"] == len(held_out) == 2 and result["trained_on"] == 0
    assert result["references"] == [_reference(rec) for rec in held_out]
    assert f"validation split (2 of 24 records, seed {SEED}): 2 records, none trained on" in r.stdout
    assert "which training watched" in r.output  # the note: validation loss chose best/, so the figure flatters a little


@pytest.mark.parametrize(
    "args,split,records,trained",
    [(["--split", "train"], "train", 22, 22), (["--split", "all"], "all", 24, 22), (["--data", "DATA", "--split", "all"], "all", 24, 22)],
)
def test_records_the_run_trained_on_are_named(run, args, split, records, trained):
    run_dir, data = run
    r = _eval(run_dir, "--samples", "0", *[str(data) if a == "DATA" else a for a in args])
    assert r.exit_code == 0, r.output
    assert f"Trained on: {trained} of these {records} records are in the run's training split" in r.stdout
    result = json.loads((run_dir / f"eval-{split}.json").read_text())
    assert (result["split"], result["records"], result["trained_on"]) == (split, records, trained)


def test_a_single_file_has_no_test_split(run):
    r = _eval(run[0], "--split", "test")
    assert r.exit_code == 2
    assert "is a single file: it has no test split" in r.output and "--split valid" in r.output


def test_a_directory_without_test_jsonl_names_it_for_split_test(run, tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(NOTES.read_text().splitlines(keepends=True)[24:40]))
    r = _eval(run[0], "--data", str(tmp_path), "--split", "test")
    assert r.exit_code == 1
    line = r.output.strip().splitlines()[-1]
    assert line.startswith(f"Error: {tmp_path}: has no {tmp_path / 'test.jsonl'}") and "--split valid" in line and "train or all" in line
    assert "split split" not in line


def test_a_directory_is_scored_on_its_test_file(run, tmp_path):
    """A directory's test.jsonl by default; a test record that is also a training record is counted as trained on."""
    run_dir, data = run
    lines = NOTES.read_text().splitlines(keepends=True)[24:48]  # records the run never saw
    (tmp_path / "train.jsonl").write_text("".join(lines[:18]))
    (tmp_path / "valid.jsonl").write_text("".join(lines[18:21]))
    # a copy of the run's first training record slipped into the test file
    first_trained = json.dumps(load_data(data, valid_fraction=0.1, seed=SEED).train[0].data)
    (tmp_path / "test.jsonl").write_text("".join(lines[21:]) + first_trained + "\n")
    r = _eval(run_dir, "--data", str(tmp_path), "--samples", "0", "--json", str(tmp_path / "out.json"))
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "out.json").read_text())
    assert (result["split"], result["records"], result["trained_on"]) == ("test", 4, 1)
    assert "Trained on: 1 of these 4 records" in r.stdout


def test_samples_show_both_answers_without_a_recipe(run, model):
    """No recipe (task loss): the samples still carry the base's and the tuned model's greedy answers, at most --max-tokens long."""
    from mlxtune.data.eval_split import prompt_and_reference
    from mlxtune.data.formats import CHAT
    from mlxtune.inference import complete, load, prompt_ids

    run_dir, data = run
    r = _eval(run_dir, "--compare-base", "--samples", "2", "--json", str(run_dir / "answers.json"))
    assert r.exit_code == 0, r.output
    result = json.loads((run_dir / "answers.json").read_text())
    assert result["task"] == "loss" and len(result["side_by_side"]) == 2
    held_out = load_data(data, valid_fraction=0.1, seed=SEED).valid
    sample = r.stdout.split("--- sample 1 ---")[1].split("--- sample 2 ---")[0]
    for name, adapter in (("base", None), ("tuned", run_dir)):
        loaded = load(str(model), adapter=adapter, backend="numpy")
        expected = [complete(loaded, prompt_ids(loaded.tokenizer, prompt_and_reference(rec, CHAT)[0]), 6).strip() for rec in held_out]
        assert [row[name] for row in result["side_by_side"]] == expected and all(expected)
        assert next(s for s in result["scores"] if s["name"] == name)["outputs"] == expected
        assert f"[{name}]\n{expected[0]}\n" in sample


def test_text_data_shows_no_samples(tmp_path, model):
    """Text records have no prompt to answer: no samples (as report.md), rather than texts without answers."""
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"note {i}: the quick brown fox jumps over the lazy dog."}) + "\n" for i in range(6)))
    r = CliRunner().invoke(cli, ["eval", "--model", str(model), "--data", str(data), "--backend", "numpy", "--json", str(tmp_path / "out.json")])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["split"] == "all" and result["records"] == 6 and result["trained_on"] is None and result["side_by_side"] == []
    assert "--- sample" not in r.stdout and "no side-by-side samples" in r.output
