"""mlxtune.data.records: reading, validating and splitting JSONL data sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxtune.data.records import Dataset, Record, load_data, load_jsonl, split
from mlxtune.errors import ConfigError, DataError
from mlxtune.data.formats import TEXT

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, *lines: object) -> Path:
    """Write JSONL: dicts/lists are dumped, strings written as they are."""
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def error_for(path: Path) -> DataError:
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    return info.value


def assert_error(err: DataError, path: Path, line: int | None, field: str | None, *words: str) -> None:
    """The message names the file, the line and the field, as 'path:line: field 'x': ...'."""
    msg = str(err)
    assert "\n" not in msg
    assert str(path) in msg
    assert err.line == line
    assert err.field == field
    if line is not None:
        assert msg.startswith(f"{path}:{line}:")
    if field is not None:
        assert f"field '{field}'" in msg
    for word in words:
        assert word in msg, msg


# ----------------------------------------------------------------- formats


def test_three_formats_load_with_line_numbers(tmp_path):
    text = load_jsonl(write(tmp_path / "t.jsonl", {"text": "a"}, "", {"text": "b", "id": 7}))
    assert text.format.name == "text" and len(text) == 2
    assert [r.line for r in text] == [1, 3]
    assert text[1]["text"] == "b" and text[1].get("id") == 7  # extra keys kept, ignored
    assert text.path == str(tmp_path / "t.jsonl")

    comp = load_jsonl(write(tmp_path / "c.jsonl", {"prompt": "p", "completion": "c", "meta": {}}))
    assert comp.format.name == "completion"

    ds = load_jsonl(
        write(
            tmp_path / "m.jsonl",
            {**chat(("system", "s"), ("user", "u"), ("assistant", "a")), "tools": [{"type": "function"}]},
            chat(("user", "u"), ("assistant", "a"), ("tool", "t"), ("assistant", "b")),
        )
    )
    assert ds.format.name == "chat" and len(ds) == 2
    assert isinstance(ds[0], Record) and ds[0].path == str(tmp_path / "m.jsonl")


def test_blank_lines_crlf_and_bom_are_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\r\n\r\n   \n{"text": "two"}\r\n\n')
    ds = load_jsonl(path)
    assert [r["text"] for r in ds] == ["one", "two"]
    assert [r.line for r in ds] == [1, 4]


def test_assistant_tool_call_without_content_is_accepted(tmp_path):
    record = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "tool_calls": [{"function": {"name": "w", "arguments": {}}}]},
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ]
    }
    assert load_jsonl(write(tmp_path / "d.jsonl", record)).format.name == "chat"


# ------------------------------------------------------------- file errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    assert_error(error_for(path), path, None, None, "does not exist")


def test_directory_given_to_load_jsonl(tmp_path):
    assert_error(error_for(tmp_path), tmp_path, None, None, "directory")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    assert_error(error_for(path), path, None, None, "empty")


def test_binary_file(tmp_path):
    path = tmp_path / "model.jsonl"
    path.write_bytes(b'{"text": "a"}\n\x89PNG\x00\x00\x01')
    err = error_for(path)
    assert_error(err, path, 2, None, "not a text file", "byte offset 18")


def test_utf16_file_gets_a_hint(tmp_path):
    path = tmp_path / "u16.jsonl"
    path.write_bytes('{"text": "a"}\n'.encode("utf-16"))
    assert_error(error_for(path), path, 1, None, "UTF-16", "UTF-8")


def test_invalid_utf8_names_line_and_byte(tmp_path):
    path = tmp_path / "latin1.jsonl"
    first = b'{"text": "ok"}\n'
    path.write_bytes(first + b'{"text": "caf\xe9"}\n')
    offset = len(first) + len(b'{"text": "caf')
    assert_error(error_for(path), path, 2, None, "UTF-8", f"byte offset {offset}")


def test_malformed_json_gives_column(tmp_path):
    path = write(tmp_path / "bad.jsonl", {"text": "a"}, {"text": "b"}, '{"text": "c",, }')
    assert_error(error_for(path), path, 3, None, "invalid JSON", "column 14")


def test_json_array_file_is_read_as_one(tmp_path):
    """A JSON array is detected by its content ('[' first), whatever the extension (issue 17: it was refused)."""
    path = tmp_path / "array.jsonl"
    path.write_text('[\n  {"text": "a"}\n]\n')
    ds = load_jsonl(path)
    assert (ds.container, [r.line for r in ds], ds[0]["text"]) == ("json", [2], "a")
    path.write_text('[\n  {"text": "a"},\n  {"text": "b",, }\n]\n')
    assert_error(error_for(path), path, 3, None, "invalid JSON", "element 1 of the array")


@pytest.mark.parametrize(
    "line,kind", [('["a", "b"]', "list"), ('"just text"', "string"), ("42", "number"), ("null", "null")]
)
def test_line_not_an_object(tmp_path, line, kind):
    path = write(tmp_path / "d.jsonl", {"text": "a"}, line)
    assert_error(error_for(path), path, 2, None, f"JSON {kind}, not an object")


def test_record_without_known_fields(tmp_path):
    path = write(tmp_path / "d.jsonl", {"text": "a"}, {"input": "x", "output": "y"})
    assert_error(error_for(path), path, 2, None, "none of the fields", "'input'", "'output'")


# ----------------------------------------------------------- field errors


@pytest.mark.parametrize(
    "record,field,words",
    [
        ({"text": 3}, "text", ["must be a string", "number"]),
        ({"text": ""}, "text", ["empty"]),
        ({"prompt": "p", "completion": 5}, "completion", ["must be a string", "number", "5"]),
        ({"prompt": ["p"], "completion": "c"}, "prompt", ["must be a string", "list"]),
        ({"prompt": "p"}, "completion", ["missing"]),
        ({"completion": "c"}, "prompt", ["missing"]),
        ({"prompt": "p", "completion": ""}, "completion", ["empty"]),
        ({"messages": "hi"}, "messages", ["must be a list", "string"]),
        ({"messages": []}, "messages", ["empty"]),
        ({"messages": ["hi"]}, "messages[0]", ["object with 'role' and 'content'"]),
        ({"messages": [{"content": "hi"}]}, "messages[0].role", ["missing"]),
        ({"messages": [{"role": "user"}]}, "messages[0].content", ["missing"]),
        (chat(("user", "u"), ("bot", "b")), "messages[1].role", ["unknown role", '"bot"', "assistant"]),
        (chat(("user", "u"), ("assistant", 1)), "messages[1].content", ["must be a string"]),
        (chat(("user", "u"), ("assistant", None)), "messages[1].content", ["must be a string", "null"]),
        (chat(("system", "s"), ("user", "u")), "messages", ["no assistant turn"]),
        ({**chat(("user", "u"), ("assistant", "a")), "tools": "calc"}, "tools", ["must be a list"]),
    ],
)
def test_field_errors(tmp_path, record, field, words):
    path = write(tmp_path / "d.jsonl", "", record)  # after a blank line: line 2
    assert_error(error_for(path), path, 2, field, *words)


def test_mixed_formats(tmp_path):
    lines = [{"text": f"t{i}"} for i in range(6)] + [{"prompt": "p", "completion": "c"}]
    path = write(tmp_path / "mixed.jsonl", *lines)
    err = error_for(path)
    assert_error(
        err,
        path,
        7,
        None,
        "line 7 is a prompt/completion record but line 1 was a text record",
        "use one format per file",
    )


def test_mixed_formats_chat_after_completion(tmp_path):
    lines = ["", {"prompt": "p", "completion": "c"}, chat(("user", "u"), ("assistant", "a"))]
    path = write(tmp_path / "mixed.jsonl", *lines)
    assert_error(error_for(path), path, 3, None, "line 3 is a chat record but line 2 was a prompt/completion record")


# ---------------------------------------------------------------- splits


def test_single_file_split_sizes_and_description(tmp_path):
    path = write(tmp_path / "d.jsonl", *({"text": f"r{i}"} for i in range(300)))
    splits = load_data(path)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (270, 30, 0)
    assert splits.format.name == "text" and splits.note is None
    assert splits.description == f"{path}: 300 text records, split 270 train / 30 valid (seed 0)"
    lines = sorted(r.line for r in splits.train) + sorted(r.line for r in splits.valid)
    assert sorted(lines) == list(range(1, 301))  # a partition of the file
    assert [r.line for r in splits.train] == sorted(r.line for r in splits.train)  # file order kept


def test_split_is_deterministic_and_seeded(tmp_path):
    path = write(tmp_path / "d.jsonl", *({"text": f"r{i}"} for i in range(50)))
    valid = lambda **kw: [r.line for r in load_data(path, **kw).valid]  # noqa: E731
    assert valid() == valid()
    assert valid(seed=0) == valid(seed=0, valid_fraction=0.1)
    assert valid(seed=1) != valid(seed=0)
    assert len(valid(valid_fraction=0.25)) == 12  # round(12.5) (banker's) = 12


@pytest.mark.parametrize("n,n_valid", [(2, 1), (3, 1), (9, 1), (15, 2)])
def test_small_sets_keep_one_valid_and_some_train(tmp_path, n, n_valid):
    path = write(tmp_path / "d.jsonl", *({"text": f"r{i}"} for i in range(n)))
    splits = load_data(path)
    assert len(splits.valid) == n_valid and len(splits.train) == n - n_valid
    assert len(load_data(path, valid_fraction=0.9).train) >= 1


def test_single_record_cannot_be_split(tmp_path):
    path = write(tmp_path / "one.jsonl", {"text": "only"})
    with pytest.raises(DataError) as info:
        load_data(path)
    assert_error(info.value, path, None, None, "too few to split", "valid.jsonl")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_valid_fraction(tmp_path, fraction):
    path = write(tmp_path / "d.jsonl", {"text": "a"}, {"text": "b"})
    with pytest.raises(ConfigError, match="valid fraction"):
        load_data(path, valid_fraction=fraction)


def test_load_data_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(tmp_path / "missing")


def test_directory_with_all_three_files(tmp_path):
    write(tmp_path / "train.jsonl", *({"prompt": f"p{i}", "completion": "c"} for i in range(8)))
    write(tmp_path / "valid.jsonl", {"prompt": "v", "completion": "c"}, {"prompt": "w", "completion": "c"})
    write(tmp_path / "test.jsonl", {"prompt": "t", "completion": "c"})
    splits = load_data(tmp_path)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (8, 2, 1)
    assert splits.format.name == "completion" and splits.note is None
    assert splits.train.path == str(tmp_path / "train.jsonl")
    assert splits.test.path == str(tmp_path / "test.jsonl")
    assert splits.description == f"{tmp_path}: 8 train / 2 valid / 1 test prompt/completion records"


def test_directory_without_valid_splits_train_and_says_so(tmp_path):
    write(tmp_path / "train.jsonl", *({"text": f"r{i}"} for i in range(20)))
    splits = load_data(tmp_path, seed=3)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (18, 2, 0)
    assert "no valid.jsonl" in splits.note and "2 of 20" in splits.note and "seed 3" in splits.note
    assert "split from train.jsonl" in splits.description
    again = load_data(tmp_path, seed=3)
    assert [r.line for r in again.valid] == [r.line for r in splits.valid]


def test_directory_without_train(tmp_path):
    write(tmp_path / "valid.jsonl", {"text": "a"})
    write(tmp_path / "mydata.jsonl", {"text": "a"})
    with pytest.raises(DataError) as info:
        load_data(tmp_path)
    assert_error(info.value, tmp_path, None, None, "no train.jsonl", "mydata.jsonl")


def test_directory_formats_must_agree(tmp_path):
    write(tmp_path / "train.jsonl", {"text": "a"}, {"text": "b"})
    write(tmp_path / "valid.jsonl", {"prompt": "p", "completion": "c"})
    with pytest.raises(DataError) as info:
        load_data(tmp_path)
    assert_error(info.value, tmp_path / "valid.jsonl", None, None, "train.jsonl holds text records", "one format")


def test_directory_error_in_test_file_names_it(tmp_path):
    write(tmp_path / "train.jsonl", {"text": "a"}, {"text": "b"})
    write(tmp_path / "test.jsonl", {"text": "a"}, "{oops")
    with pytest.raises(DataError) as info:
        load_data(tmp_path)
    assert_error(info.value, tmp_path / "test.jsonl", 2, None, "invalid JSON")


def test_split_function_keeps_records_and_format():
    ds = Dataset([Record({"text": str(i)}, i + 1, "x.jsonl") for i in range(10)], TEXT, "x.jsonl")
    train, valid = split(ds, 0.2, seed=0)
    assert len(train) == 8 and len(valid) == 2
    assert train.format is valid.format is TEXT and train.path == "x.jsonl"
    assert {r.line for r in train} | {r.line for r in valid} == set(range(1, 11))


def test_shipped_notes_data_set():
    splits = load_data(REPO / "data" / "notes.jsonl")
    assert splits.format.name == "chat"
    assert (len(splits.train), len(splits.valid)) == (270, 30)
    assert splits.description.endswith("300 chat records, split 270 train / 30 valid (seed 0)")
