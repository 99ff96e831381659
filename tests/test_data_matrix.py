"""Issue 17, acceptance 1: the same 40 records in every container and format mlxtune reads pass
``mlxtune data check`` and train with ``mlxtune lora``.

One set of 40 question/answer records is written as each user holds data: Alpaca JSONL and a JSON
array, ShareGPT, OpenAI chat with a weight-0 turn, CSV and TSV (other column names, mapped with
``--field``), Parquet with chat messages, a Hugging Face dataset directory (``data/train-*.parquet`` and
``data/test-*.parquet``) and plain text. Each must be read as the container and format it is, hold its
40 records (the text file: 40 paragraphs), and train two steps on the tiny model on both backends'
default (auto).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxtune.cli import cli

N = 40


def _pairs() -> list[tuple[str, str]]:
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
    return [(f"Who moves crate {i}, and when?", f"Crate {i} goes with Ana on {days[i % 5]}, \"fragile\", row {i % 7}.") for i in range(N)]


def _alpaca() -> list[dict]:
    return [{"instruction": q, "input": "Answer in one line." if i % 2 else "", "output": a} for i, (q, a) in enumerate(_pairs())]


def _chat() -> list[dict]:
    return [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in _pairs()]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _table(path: Path, rows: list[dict], delimiter: str) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def _parquet(path: Path, rows: list[dict]) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def alpaca_jsonl(d: Path):
    return _write_jsonl(d / "alpaca.jsonl", _alpaca()), [], "jsonl", "Alpaca"


def alpaca_json_array(d: Path):
    path = d / "alpaca.json"
    path.write_text(json.dumps(_alpaca(), indent=2), encoding="utf-8")
    return path, [], "json", "Alpaca"


def sharegpt(d: Path):
    rows = [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in _pairs()]
    return _write_jsonl(d / "sharegpt.jsonl", rows), [], "jsonl", "ShareGPT"


def chat_weight_zero(d: Path):
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Let me check.", "weight": 0}, {"role": "user", "content": "Well?"}, {"role": "assistant", "content": a}]}
        for q, a in _pairs()
    ]
    return _write_jsonl(d / "chat.jsonl", rows), [], "jsonl", "chat"


def csv_file(d: Path):
    rows = [{"id": i, "question": q, "answer": a} for i, (q, a) in enumerate(_pairs())]
    return _table(d / "qa.csv", rows, ","), ["--field", "prompt=question", "--field", "completion=answer"], "csv", "prompt/completion"


def tsv_file(d: Path):
    rows = [{"prompt": q, "completion": a} for q, a in _pairs()]
    return _table(d / "qa.tsv", rows, "\t"), [], "tsv", "prompt/completion"


def parquet_chat(d: Path):
    return _parquet(d / "chat.parquet", _chat()), [], "parquet", "chat"


def hf_dataset_dir(d: Path):
    rows = [{"prompt": q, "completion": a} for q, a in _pairs()]
    root = d / "hub-dataset"
    _parquet(root / "data" / "train-00000-of-00001.parquet", rows[:34])
    _parquet(root / "data" / "test-00000-of-00001.parquet", rows[34:])
    (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n---\n# a dataset card\n")
    return root, [], "parquet", "prompt/completion"


def plain_text(d: Path):
    path = d / "notes.txt"
    path.write_text("\n\n".join(f"{q}\n{a}" for q, a in _pairs()) + "\n", encoding="utf-8")
    return path, [], "text", "text"


CASES = [alpaca_jsonl, alpaca_json_array, sharegpt, chat_weight_zero, csv_file, tsv_file, parquet_chat, hf_dataset_dir, plain_text]


@pytest.mark.parametrize("make", CASES, ids=[c.__name__ for c in CASES])
def test_every_container_and_format_checks_and_trains(tmp_path, tiny_model, make):
    data, fields, container, title = make(tmp_path)
    runner = CliRunner()
    r = runner.invoke(cli, ["data", "check", str(data), "--model", str(tiny_model), *fields, "--json"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    checked = json.loads(r.stdout)
    from mlxtune.data import formats

    assert formats.get(checked["format"]).title == title
    used = [s for s in checked["splits"] if s["records"]]
    assert {s["container"] for s in used} == {container}, used
    assert sum(s["records"] for s in used) == N, used
    assert all(s["trained_tokens"] > 0 for s in used), used

    out = tmp_path / "run"
    r = runner.invoke(cli, ["lora", "--data", str(data), "--model", str(tiny_model), *fields, "-o", str(out), "--iters", "2", "--val-every", "2", "--no-report"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert (out / "adapters.safetensors").is_file()
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps if "loss" in m] == [1, 2], steps
