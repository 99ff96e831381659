"""Hostile data files: each ends in one 'Error: FILE:LINE: ...' line, never a traceback or a hang.

Every case runs through the real CLI, both ``mlxtune data check`` and
``mlxtune lora``, and must leave nothing behind (no run directory).
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxtune.cli import cli

GOOD = '{"text": "a good first line"}\n'
CHAT_OK = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
HUGE = 100_000_000  # bytes of one line
CAFE = b'{"text": "caf'  # then a Latin-1 e-acute, invalid in UTF-8


def _chat(**fields) -> str:
    return json.dumps({"messages": CHAT_OK} | fields)


def _msgs(*messages) -> str:
    return json.dumps({"messages": list(messages)})


def _huge_line(path: Path) -> None:
    """A 100 MB record on line 2, written in 1 MB pieces (the test holds none of it in memory)."""
    with open(path, "wb") as f:
        f.write(GOOD.encode() + b'{"text": "')
        piece = b"a" * 1_000_000
        for _ in range(HUGE // len(piece)):
            f.write(piece)
        f.write(b'"}\n')


# name -> (file content: bytes, str or a writer, line number in the error or None, words the error has)
CASES: dict[str, tuple] = {
    "random-bytes": (random.Random(0).randbytes(64 * 1024), None, ["not a text file"]),
    "png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(64), None, ["PNG"]),
    "gzip-renamed": (gzip.compress((GOOD * 50).encode()), None, ["gzip", "gunzip"]),
    "utf16": (GOOD.encode("utf-16"), 1, ["UTF-16"]),
    "invalid-utf8-mid-line": (GOOD.encode() + CAFE + b"\xe9 au lait\"}\n", 2, ["UTF-8", f"byte offset {len(GOOD) + len(CAFE)}"]),
    "nul-after-8k": ((GOOD * 400).encode() + b'{"text": "a\x00b"}\n', 401, ["NUL byte"]),
    "line-of-100MB": (_huge_line, 2, ["longer than 8 MB", "one JSON object per line"]),
    "deep-nesting-100k": (GOOD + '{"text": "a", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n", 2, ["nested"]),
    "deep-nesting-500": (GOOD + '{"text": "a", "x": ' + "[" * 500 + "]" * 500 + "}\n", 2, ["nested"]),
    "nan": (GOOD + '{"text": NaN}\n', 2, ["NaN is not valid JSON"]),
    "infinity": (GOOD + '{"text": "a", "score": -Infinity}\n', 2, ["-Infinity"]),
    "huge-integer": (GOOD + '{"text": "a", "n": ' + "1" * 5000 + "}\n", 2, ["number"]),
    "broken-surrogate": (GOOD + '{"text": "cut \\ud83d here"}\n', 2, ["field 'text'", "\\ud83d"]),
    "invalid-json": (GOOD + '{"text": "unterminated\n', 2, ["invalid JSON"]),
    "json-array-unclosed": ('[\n {"text": "a"},\n {"text": "b"}\n', 3, ["array ends without its ']' after element 1"]),  # a whole array is read (issue 17)
    "top-level-array": (GOOD + '["a", "b"]\n', 2, ["JSON list, not an object"]),
    "top-level-string": (GOOD + '"text"\n', 2, ["JSON string, not an object"]),
    "top-level-number": (GOOD + "3\n", 2, ["JSON number, not an object"]),
    "top-level-null": (GOOD + "null\n", 2, ["JSON null, not an object"]),
    "top-level-bool": (GOOD + "true\n", 2, ["JSON boolean, not an object"]),
    "no-known-field": (GOOD + '{"input": "a", "output": "b"}\n', 2, ["'input'"]),
    "text-number": ('{"text": 5}\n', 1, ["field 'text'", "number"]),
    "text-list": ('{"text": ["a"]}\n', 1, ["field 'text'", "list"]),
    "text-null": ('{"text": null}\n', 1, ["field 'text'", "null"]),
    "text-object": ('{"text": {"a": 1}}\n', 1, ["field 'text'", "object"]),
    "text-bool": ('{"text": true}\n', 1, ["field 'text'", "boolean"]),
    "text-empty": ('{"text": ""}\n', 1, ["field 'text'", "empty"]),
    "prompt-number": ('{"prompt": 1, "completion": "c"}\n', 1, ["field 'prompt'", "number"]),
    "prompt-null": ('{"prompt": null, "completion": "c"}\n', 1, ["field 'prompt'", "null"]),
    "prompt-missing": ('{"completion": "c"}\n', 1, ["field 'prompt'", "missing"]),
    "completion-list": ('{"prompt": "p", "completion": ["c"]}\n', 1, ["field 'completion'", "list"]),
    "completion-object": ('{"prompt": "p", "completion": {}}\n', 1, ["field 'completion'", "object"]),
    "completion-empty": ('{"prompt": "p", "completion": ""}\n', 1, ["field 'completion'", "empty"]),
    "messages-string": ('{"messages": "hi"}\n', 1, ["field 'messages'", "string"]),
    "messages-object": ('{"messages": {"role": "user"}}\n', 1, ["field 'messages'", "object"]),
    "messages-null": ('{"messages": null}\n', 1, ["field 'messages'", "null"]),
    "messages-empty": ('{"messages": []}\n', 1, ["field 'messages'", "empty"]),
    "message-string": (_msgs("hi") + "\n", 1, ["field 'messages[0]'"]),
    "message-null": (_msgs(None, *CHAT_OK) + "\n", 1, ["field 'messages[0]'", "null"]),
    "role-number": (_msgs({"role": 5, "content": "x"}, *CHAT_OK) + "\n", 1, ["field 'messages[0].role'"]),
    "role-null": (_msgs({"role": None, "content": "x"}, *CHAT_OK) + "\n", 1, ["field 'messages[0].role'"]),
    "role-list": (_msgs({"role": ["user"], "content": "x"}, *CHAT_OK) + "\n", 1, ["field 'messages[0].role'"]),
    "role-unknown": (_msgs({"role": "bot", "content": "x"}, *CHAT_OK) + "\n", 1, ["unknown role", "assistant"]),
    "role-missing": (_msgs({"content": "x"}, *CHAT_OK) + "\n", 1, ["field 'messages[0].role'", "missing"]),
    "content-number": (_msgs({"role": "user", "content": 5}, CHAT_OK[1]) + "\n", 1, ["field 'messages[0].content'"]),
    "content-null": (_msgs({"role": "user", "content": None}, CHAT_OK[1]) + "\n", 1, ["field 'messages[0].content'", "null"]),
    "content-parts-list": (_msgs(CHAT_OK[0], {"role": "assistant", "content": [{"type": "text", "text": "x"}]}) + "\n", 1, ["field 'messages[1].content'", "list"]),
    "content-object": (_msgs(CHAT_OK[0], {"role": "assistant", "content": {}}) + "\n", 1, ["field 'messages[1].content'", "object"]),
    "content-missing": (_msgs({"role": "user"}, CHAT_OK[1]) + "\n", 1, ["field 'messages[0].content'", "missing"]),
    "assistant-content-empty": (_msgs(CHAT_OK[0], {"role": "assistant", "content": ""}) + "\n", 1, ["field 'messages[1].content'", "empty"]),
    "no-assistant-turn": (_msgs(CHAT_OK[0]) + "\n", 1, ["no assistant turn"]),
    "tool-calls-string": (_msgs(CHAT_OK[0], {"role": "assistant", "content": None, "tool_calls": "f()"}) + "\n", 1, ["field 'messages[1].tool_calls'"]),
    "tools-string": (_chat(tools="calc") + "\n", 1, ["field 'tools'", "list"]),
    "tools-object": (_chat(tools={"name": "calc"}) + "\n", 1, ["field 'tools'", "list"]),
    "tools-of-numbers": (_chat(tools=[1, 2]) + "\n", 1, ["field 'tools'", "list"]),
    "empty-file": (b"", None, ["empty"]),
    "only-blank-lines": ("\n\n   \n\t\n", None, ["empty"]),
    "only-bom": (b"\xef\xbb\xbf\n", None, ["empty"]),
    "mixed-formats": (GOOD + '{"prompt": "p", "completion": "c"}\n', 2, ["one format per file"]),
    "single-record": (GOOD, None, ["too few to split"]),
}

DIR_CASES: dict[str, tuple] = {
    # name -> ({file: content}, the file the error names, line, words)
    "dir-without-train": ({"valid.jsonl": GOOD, "notes.jsonl": GOOD}, ".", None, ["no train.jsonl", "notes.jsonl"]),
    "dir-broken-valid": ({"train.jsonl": GOOD * 3, "valid.jsonl": GOOD + "{oops\n"}, "valid.jsonl", 2, ["invalid JSON"]),
    "dir-formats-differ": ({"train.jsonl": GOOD * 3, "test.jsonl": '{"prompt": "p", "completion": "c"}\n'}, "test.jsonl", None, ["one format"]),
}


def _write_case(tmp_path: Path, name: str) -> tuple[Path, Path, int | None, list[str]]:
    """The data path to pass, the file the error must name, its line, the words."""
    if name in DIR_CASES:
        files, named, line, words = DIR_CASES[name]
        root = tmp_path / name
        root.mkdir()
        for fname, content in files.items():
            (root / fname).write_text(content, encoding="utf-8")
        return root, (root / named).resolve() if named == "." else root / named, line, words
    content, line, words = CASES[name]
    path = tmp_path / f"{name}.jsonl"
    if callable(content):
        content(path)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    return path, path, line, words


def _command(kind: str, data: Path, model: Path, run_dir: Path) -> list[str]:
    if kind == "check":
        return ["data", "check", str(data), "--model", str(model)]
    return ["lora", "--data", str(data), "--model", str(model), "-o", str(run_dir), "--iters", "1", "--no-report"]


def _listing(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize("kind", ["check", "lora"])
@pytest.mark.parametrize("name", [*CASES, *DIR_CASES])
def test_hostile_file_is_one_clean_error(tmp_path, tiny_model, name, kind):
    data, named, line, words = _write_case(tmp_path, name)
    run_dir = tmp_path / "run"
    before = _listing(tmp_path)
    try:
        result = CliRunner().invoke(cli, _command(kind, data, tiny_model, run_dir))
    finally:
        if name == "line-of-100MB":
            data.unlink()  # do not leave 100 MB in pytest's kept temporary directories
    out = result.output
    assert result.exit_code == 1, out
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out
    where = f"{named}:{line}:" if line is not None else f"{named}:"
    assert where in lines[0], (where, lines[0])
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not run_dir.exists()
    if name != "line-of-100MB":
        assert _listing(tmp_path) == before  # nothing written anywhere


def test_100mb_line_is_refused_without_reading_it(tmp_path, tiny_model):
    data = tmp_path / "huge.jsonl"
    _huge_line(data)
    tracemalloc.start()
    try:
        result = CliRunner().invoke(cli, _command("check", data, tiny_model, tmp_path / "run"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        data.unlink()
    assert result.exit_code == 1 and "huge.jsonl:2:" in result.output
    assert peak < 40e6, f"{peak / 1e6:.0f} MB allocated while refusing a 100 MB line"


@pytest.mark.parametrize("name,kind", [("random-bytes", "check"), ("deep-nesting-100k", "lora"), ("broken-surrogate", "lora")])
def test_real_process_exit_code_and_no_traceback(tmp_path, tiny_model, name, kind):
    data, named, line, words = _write_case(tmp_path, name)
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "mlxtune", *_command(kind, data, tiny_model, run_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("Error: ") and str(named) in proc.stderr
    assert not run_dir.exists()
