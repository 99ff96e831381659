"""Issue 13, item 11: data error messages and options, through the CLI.

(a) a JSON error names its real column; (b) ``lora --valid-fraction`` as
``data check`` has it; (c) ``--skip-bad-lines`` leaves out bad lines and lists
each, and without it the error names the option; (d) a chat assistant turn's
``"weight"`` (OpenAI's fine-tuning format): 0 is not trained, 1 is, anything
else is an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxtune.cli import cli

GOOD = [{"text": f"Note {i}: the quick brown fox."} for i in range(10)]
END = "<|im_end|>"


def write(path: Path, lines: list) -> Path:
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode() + b"\n")
    return path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: "), result.output
    return lines[-1]


def check(path: Path, model: Path, *flags) -> dict:
    r = invoke("data", "check", path, "--model", model, "--json", *flags)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


# ------------------------------------------------------------ (a) the column


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_json_error_at_the_end_of_a_line_names_its_column(tmp_path, tiny_model, ending):
    unclosed = '{"text": "a note whose writer forgot the brace!"'  # 48 characters: the error is at column 49
    assert len(unclosed) == 48
    path = tmp_path / "d.jsonl"
    path.write_bytes((json.dumps(GOOD[0]) + ending + unclosed + ending).encode())
    line = error_line(invoke("data", "check", path, "--model", tiny_model))
    assert f"{path}:2: invalid JSON at column 49 (the end of the line): Expecting ',' delimiter" in line


def test_json_error_mid_line_names_its_column(tmp_path, tiny_model):
    path = write(tmp_path / "d.jsonl", ['{"text": "ok", "n": 1 2}'])
    line = error_line(invoke("data", "check", path, "--model", tiny_model))
    assert "d.jsonl:1: invalid JSON at column 23: Expecting ',' delimiter" in line and "end of the line" not in line


# ------------------------------------------------------------ (b) --valid-fraction


def test_lora_valid_fraction_splits_as_data_check_does(tmp_path, tiny_model):
    path = write(tmp_path / "d.jsonl", [{"text": f"Note {i}: the quick brown fox."} for i in range(24)])
    r = invoke("lora", "--data", path, "--model", tiny_model, "-o", tmp_path / "run", "--iters", 1, "--no-report", "--valid-fraction", 0.25)
    assert r.exit_code == 0, r.output
    assert "split 18 train / 6 valid (seed 0)" in r.output
    cfg = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert cfg["config"]["valid_fraction"] == 0.25 and cfg["data"]["valid"] == 6
    report = check(path, tiny_model, "--valid-fraction", 0.25)
    assert [s["records"] for s in report["splits"][:2]] == [18, 6]


def test_lora_valid_fraction_out_of_range_is_refused(tmp_path, tiny_model):
    path = write(tmp_path / "d.jsonl", GOOD)
    line = error_line(invoke("lora", "--data", path, "--model", tiny_model, "-o", tmp_path / "run", "--valid-fraction", 1.5))
    assert "valid_fraction" in line and "1.5" in line
    assert not (tmp_path / "run").exists()


def test_data_check_names_the_format_by_its_title(tmp_path, tiny_model):
    path = write(tmp_path / "d.jsonl", [{"prompt": f"Q{i}?", "completion": f"A{i}."} for i in range(10)])
    r = invoke("data", "check", path, "--model", tiny_model)
    assert r.exit_code == 0, r.output
    assert "tokenizer sees the prompt/completion records (prompt masked)" in r.stdout and "the completion records" not in r.stdout


# ------------------------------------------------------------ (c) --skip-bad-lines


def _with_bad_lines(tmp_path: Path) -> Path:
    lines: list = list(GOOD)
    lines.insert(2, '{"text": "unclosed"')  # line 3
    lines.insert(6, {"text": 7})  # line 7
    lines.append({"prompt": "p", "completion": "c"})  # line 13: another format than the file's
    return write(tmp_path / "d.jsonl", lines)


@pytest.mark.parametrize("command", ["lora", "check"])
def test_a_bad_line_without_the_flag_names_it(tmp_path, tiny_model, command):
    path = _with_bad_lines(tmp_path)
    args = ("lora", "--data", path, "-o", tmp_path / "run") if command == "lora" else ("data", "check", path)
    line = error_line(invoke(*args, "--model", tiny_model))
    assert f"{path}:3: invalid JSON at column 20 (the end of the line)" in line
    assert "--skip-bad-lines" in line
    assert not (tmp_path / "run").exists()


def test_lora_skips_bad_lines_and_lists_each(tmp_path, tiny_model):
    path = _with_bad_lines(tmp_path)
    run_dir = tmp_path / "run"
    r = invoke("lora", "--data", path, "--model", tiny_model, "-o", run_dir, "--iters", 1, "--no-report", "--skip-bad-lines")
    assert r.exit_code == 0, r.output
    assert f"note: skipped 3 bad line(s) of {path} (--skip-bad-lines)" in r.output
    assert f"note: skipped {path}:3: invalid JSON at column 20" in r.output
    assert f"note: skipped {path}:7: field 'text': detected as text (has 'text'): 'text' must be a string, got a number (7)" in r.output
    assert f"note: skipped {path}:13: line 13 is a prompt/completion record but line 1 was a text record" in r.output
    meta = json.loads((run_dir / "adapter_config.json").read_text())
    assert "10 text records (3 bad line(s) skipped)" in meta["data"]["description"]
    assert meta["data"]["train"] + meta["data"]["valid"] == 10
    # eval reads the data as the run did: the bad lines are skipped again, not an error, and it says which
    r = invoke("eval", "--adapter", run_dir, "--json", tmp_path / "e.json", "--samples", 0)
    assert r.exit_code == 0, r.output
    assert f"note: skipped 3 bad line(s) of {path} (--skip-bad-lines)" in r.stderr
    assert f"note: skipped {path}:7: field 'text': detected as text (has 'text'): 'text' must be a string, got a number (7)" in r.stderr
    assert "(3 bad line(s) skipped, listed above)" in r.stdout
    result = json.loads((tmp_path / "e.json").read_text())
    assert [(s["line"], s["field"]) for s in result["skipped"]] == [(3, None), (7, "text"), (13, None)]


def test_eval_of_other_data_skips_bad_lines_only_when_asked(tmp_path, tiny_model):
    """The run's --skip-bad-lines is for the run's data: another file's bad lines stop eval until it is given --skip-bad-lines."""
    run_dir = tmp_path / "run"
    r = invoke("lora", "--data", _with_bad_lines(tmp_path), "--model", tiny_model, "-o", run_dir, "--iters", 1, "--no-report", "--skip-bad-lines")
    assert r.exit_code == 0, r.output
    other = write(tmp_path / "other.jsonl", GOOD[:4] + ['{"text": "cut', {"text": None}] + GOOD[4:])
    line = error_line(invoke("eval", "--adapter", run_dir, "--data", other, "--samples", 0))
    assert f"{other}:5: invalid JSON" in line and "--skip-bad-lines" in line
    r = invoke("eval", "--adapter", run_dir, "--data", other, "--samples", 0, "--skip-bad-lines", "--json", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    assert f"note: skipped 2 bad line(s) of {other} (--skip-bad-lines)" in r.stderr and f"note: skipped {other}:6: field 'text'" in r.stderr
    assert f"Eval: {other} (whole file): 10 records (2 bad line(s) skipped, listed above)" in r.stdout
    assert [s["line"] for s in json.loads((tmp_path / "e.json").read_text())["skipped"]] == [5, 6]


def test_data_check_skips_bad_lines_and_lists_each(tmp_path, tiny_model):
    path = _with_bad_lines(tmp_path)
    report = check(path, tiny_model, "--skip-bad-lines")
    assert [(s["line"], s["field"]) for s in report["skipped"]] == [(3, None), (7, "text"), (13, None)]
    assert report["skipped"][0]["path"] == str(path) and "invalid JSON at column 20" in report["skipped"][0]["reason"]
    assert sum(s["records"] for s in report["splits"]) == 10
    r = invoke("data", "check", path, "--model", tiny_model, "--skip-bad-lines")
    assert r.exit_code == 0 and f"{path}:7: field 'text'" in r.stderr and "OK: usable for training" in r.stdout


def test_skip_bad_lines_passes_over_lines_that_are_not_text(tmp_path, tiny_model):
    path = tmp_path / "d.jsonl"
    with open(path, "wb") as f:
        f.write(b"".join(json.dumps(g).encode() + b"\n" for g in GOOD[:4]))
        f.write(b'{"text": "caf\xe9"}\n')  # line 5: Latin-1, not UTF-8
        f.write(b'{"text": "' + b"a" * (9 << 20) + b'"}\n')  # line 6: over the 8 MB limit for one line
        f.write(b'{"text": NaN}\n')  # line 7
        f.write(b'{"text": "a", "x": ' + b"[" * 200 + b"]" * 200 + b"}\n")  # line 8: nested too deep
        f.write(b"".join(json.dumps(g).encode() + b"\n" for g in GOOD[4:]))
    report = check(path, tiny_model, "--skip-bad-lines")
    assert [s["line"] for s in report["skipped"]] == [5, 6, 7, 8]
    assert [w in s["reason"] for s, w in zip(report["skipped"], ["UTF-8", "longer than 8 MB", "NaN", "nested"])] == [True] * 4
    assert sum(s["records"] for s in report["splits"]) == 10


def test_skip_bad_lines_with_nothing_left_or_a_binary_file(tmp_path, tiny_model):
    path = write(tmp_path / "d.jsonl", ["{oops", {"text": 1}])
    line = error_line(invoke("data", "check", path, "--model", tiny_model, "--skip-bad-lines"))
    assert "no usable record: all 2 line(s) are bad" in line and f"{path}:1: invalid JSON" in line
    import gzip

    gz = tmp_path / "g.jsonl"
    gz.write_bytes(gzip.compress(b'{"text": "a"}\n' * 20))
    assert "gzip" in error_line(invoke("data", "check", gz, "--model", tiny_model, "--skip-bad-lines"))


# ------------------------------------------------------------ (d) chat "weight"


def _chat(w1=None, w2=None) -> dict:
    first = {"role": "assistant", "content": "Sorry, I cannot."} | ({} if w1 is None else {"weight": w1})
    second = {"role": "assistant", "content": "Paris."} | ({} if w2 is None else {"weight": w2})
    return {"messages": [{"role": "user", "content": "Capital of France?"}, first, {"role": "user", "content": "Try again."}, second]}


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def trained_runs(tok, tokens, mask) -> list[str]:
    runs, cur = [], []
    for t, m in zip(tokens.tolist(), mask.tolist()):
        if m:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


def test_weight_zero_turn_is_not_in_the_loss_mask(tok):
    from mlxtune.data.batching import encode

    ex = encode(_chat(w1=0), "chat", tok, True, 512)
    assert trained_runs(tok, ex.tokens, ex.loss_mask) == ["Paris." + END]
    both = encode(_chat(w1=1, w2=1), "chat", tok, True, 512)
    assert trained_runs(tok, both.tokens, both.loss_mask) == ["Sorry, I cannot." + END, "Paris." + END]
    assert (both.loss_mask == encode(_chat(), "chat", tok, True, 512).loss_mask).all()
    # --no-mask-prompt trains the prompts too, but still not a turn marked weight 0
    unmasked = encode(_chat(w1=0), "chat", tok, False, 512)
    runs = trained_runs(tok, unmasked.tokens, unmasked.loss_mask)
    assert len(runs) == 2 and "Sorry" not in "".join(runs) and ("Paris." + END) in runs[1]


def test_data_check_and_lora_count_only_weighted_turns(tmp_path, tiny_model):
    plain = write(tmp_path / "plain.jsonl", [_chat() for _ in range(12)])
    weighted = write(tmp_path / "weighted.jsonl", [_chat(w1=0) for _ in range(12)])
    a, b = check(plain, tiny_model), check(weighted, tiny_model)
    ta, tb = a["splits"][0], b["splits"][0]
    assert ta["lengths"] == tb["lengths"]  # the same tokens ...
    assert tb["trained_tokens"] < ta["trained_tokens"]  # ... fewer of them trained
    assert (ta["untrained_turns"], tb["untrained_turns"]) == (0, ta["records"])
    r = invoke("data", "check", weighted, "--model", tiny_model)
    assert r.exit_code == 0 and 'Assistant turns with "weight": 0 (not trained): train 11, valid 1' in r.output
    # lora trains exactly the tokens data check counts: one step over the whole train split
    run_dir = tmp_path / "run"
    r = invoke("lora", "--data", weighted, "--model", tiny_model, "-o", run_dir, "--iters", 1, "--batch-size", 16, "--no-report", "--no-auto")
    assert r.exit_code == 0, r.output
    step = next(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line)
    assert step["trained_tokens"] == tb["trained_tokens"]


@pytest.mark.parametrize(
    "messages,field,words",
    [
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}], "messages[1].weight", "must be 0 (not trained) or 1 (trained), got 2"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}], "messages[1].weight", "got 0.5"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": "0"}], "messages[1].weight", 'got "0"'),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": True}], "messages[1].weight", "got true"),
        ([{"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a"}], "messages[0].weight", "only assistant turns carry a weight"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}], "messages", 'every assistant turn has "weight": 0'),
    ],
)
def test_bad_weights_are_file_line_field_errors(tmp_path, tiny_model, messages, field, words):
    path = write(tmp_path / "d.jsonl", [_chat(), {"messages": messages}])
    line = error_line(invoke("data", "check", path, "--model", tiny_model))
    assert f"{path}:2: field '{field}': " in line and words in line, line
