"""Issue 17, containers: the same records in every container, errors that say where, directories of mixed containers and
Hugging Face datasets, ``--field``, ``data convert``, and JSONL records read back lazily instead of held as dicts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mlxtune.cli import cli
from mlxtune.data import containers
from mlxtune.data.records import load_data, load_file
from mlxtune.data.rows import JsonlRecords
from mlxtune.errors import DataError

CHATS = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}, \"quoted\", with a comma."}]} for i in range(8)]
QA = [{"prompt": f"Question {i}?", "completion": f"Answer {i}, with a comma\tand a tab."} for i in range(8)]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, records: list[dict], delimiter: str = ",") -> Path:
    columns = list(records[0])
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(columns)
        for r in records:
            w.writerow([json.dumps(r[c]) if isinstance(r[c], list) else r[c] for c in columns])
    return path


def write_arrow_stream(path: Path, records: list[dict]) -> Path:
    """An Arrow IPC stream file, the format datasets' save_to_disk writes its data-*.arrow files in."""
    table = pa.Table.from_pylist(records)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def as_data(ds) -> list[dict]:
    return [r.data for r in ds]


# ------------------------------------------------------------ the same records in every container


@pytest.mark.parametrize("records", [CHATS, QA], ids=["chat", "completion"])
@pytest.mark.parametrize("container", ["jsonl", "json", "csv", "tsv", "parquet", "arrow"])
def test_every_container_reads_the_same_records(tmp_path, container, records):
    path = tmp_path / f"d.{container}"
    if container == "jsonl":
        write_jsonl(path, records)
    elif container == "json":
        path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    elif container in ("csv", "tsv"):
        write_csv(path, records, "," if container == "csv" else "\t")
    elif container == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        write_arrow_stream(path, records)
    ds = load_file(path)
    assert ds.container == container and containers.detect(path) == container
    assert ds.format.name == ("chat" if records is CHATS else "completion")
    assert as_data(ds) == records
    assert as_data(ds.records[2:4]) == records[2:4] and ds[-1].data == records[-1]


def test_locations_per_container(tmp_path):
    """Lines of text containers (a CSV record's first line; a JSON array element's), rows of Parquet (0-based)."""
    pretty = tmp_path / "d.json"
    pretty.write_text(json.dumps(QA[:3], indent=2))
    assert [r.line for r in load_file(pretty)] == [2, 6, 10]
    multiline = [{"prompt": "p", "completion": "two\nlines"}] * 3
    assert [r.line for r in load_file(write_csv(tmp_path / "m.csv", multiline))] == [2, 4, 6]
    pq.write_table(pa.Table.from_pylist(QA[:3]), tmp_path / "d.parquet")
    assert [(r.line, r.unit) for r in load_file(tmp_path / "d.parquet")] == [(0, "row"), (1, "row"), (2, "row")]


def test_plain_text_is_split_at_blank_lines_and_says_so(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("# Title\n\nFirst paragraph,\nits second line.\n\n\n  \nSecond paragraph.\n")
    ds = load_file(path)
    assert ds.format.name == "text" and ds.container == "text"
    assert [(r.line, r["text"]) for r in ds] == [(1, "# Title"), (3, "First paragraph,\nits second line."), (8, "Second paragraph.")]
    assert "split at blank lines" in load_data(path).description


def test_detection_by_content_before_extension(tmp_path):
    parquet_named_jsonl = tmp_path / "d.jsonl"
    pq.write_table(pa.Table.from_pylist(QA), parquet_named_jsonl)
    assert containers.detect(parquet_named_jsonl) == "parquet"
    array_named_jsonl = tmp_path / "a.jsonl"
    array_named_jsonl.write_text("\ufeff  \n" + json.dumps(QA))
    assert as_data(load_file(array_named_jsonl)) == QA


def test_parquet_nulls_and_struct_columns(tmp_path):
    """A struct field absent in one message reads as missing (not null); an empty optional column too."""
    rows = [{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "weight": 0}, {"role": "assistant", "content": "b"}]}]
    pq.write_table(pa.Table.from_pylist(rows * 2), tmp_path / "w.parquet")
    ds = load_file(tmp_path / "w.parquet")
    assert ds[0]["messages"][2] == {"role": "assistant", "content": "b"}
    assert ds.format.untrained_turns(ds[0].data) == 1


# ------------------------------------------------------------ errors with their location


def test_errors_name_the_row_line_or_element(tmp_path):
    pq.write_table(pa.Table.from_pylist([QA[0], {"prompt": "p", "completion": None}, QA[1]]), tmp_path / "bad.parquet")
    with pytest.raises(DataError) as info:
        load_file(tmp_path / "bad.parquet")
    assert str(info.value).startswith(f"{tmp_path / 'bad.parquet'}, row 1: field 'completion'") and info.value.line == 1

    array = tmp_path / "bad.json"
    array.write_text('[\n {"text": "a"},\n "just text"\n]')
    with pytest.raises(DataError, match=r"bad.json:3: element 1 of the array is a JSON string, not an object"):
        load_file(array)
    array.write_text('[\n {"text": "a"}\n {"text": "b"}\n]')
    with pytest.raises(DataError, match=r"bad.json:3: expected ',' or '\]' after element 0"):
        load_file(array)

    cells = tmp_path / "bad.csv"
    cells.write_text('messages\n"[{""role"": ""user""}"\n')
    with pytest.raises(DataError) as info:
        load_file(cells)
    assert (info.value.line, info.value.field) == (2, "messages") and "not valid JSON" in str(info.value)
    cells.write_text("prompt,completion\np,c,extra\n")
    with pytest.raises(DataError, match=r"bad.csv:2: row has 3 cells but the header has 2 columns"):
        load_file(cells)
    cells.write_text("question,answer\nq,a\n")
    with pytest.raises(DataError, match=r"bad.csv:1: the header row \('question', 'answer'\) names none of the fields.*--field"):
        load_file(cells)


@pytest.mark.parametrize("name,content,where,words", [
    ("unclosed.csv", b'prompt,completion\n"p,c\n', ":2:", ["not valid CSV", "quoting"]),
    ("empty.csv", b"", ":", ["header row"]),
    ("header-only.tsv", b"prompt\tcompletion\n", ":", ["has no records"]),
    ("nul.csv", b"prompt,completion\np\x00,c\n", ":2:", ["NUL byte", "a header row"]),
    ("latin1.tsv", b"prompt\tcompletion\np\tcaf\xe9\n", ":2:", ["not valid UTF-8"]),
    ("cut.parquet", b"PAR1\x15\x04", ":", ["not a readable Parquet file"]),
    ("fake.arrow", b"hello", ":", ["not a readable Arrow file"]),
    ("empty.json", b"[ ]", ":", ["array is empty"]),
    ("unclosed.json", b'[{"text": "a"}', ":1:", ["array ends without its ']'"]),
    ("deep.json", b"[" + b"[" * 100_000 + b"]" * 100_000 + b"]", ":1:", ["nested more than 100 levels"]),
    ("blank.md", b"\n  \n\n", ":", ["has no text"]),
])
def test_broken_files_of_each_container_are_one_clean_error(tmp_path, name, content, where, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_file(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}{where}") and "\n" not in msg, msg
    assert all(w in msg for w in words), msg


def test_bad_rows_can_be_skipped_and_are_listed(tmp_path):
    pq.write_table(pa.Table.from_pylist([QA[0], {"prompt": "p", "completion": None}, QA[1]]), tmp_path / "bad.parquet")
    ds = load_file(tmp_path / "bad.parquet", skip_bad_lines=True)
    assert as_data(ds) == QA[:2] and [r.line for r in ds] == [0, 2]
    assert [(e.line, e.unit, e.field) for e in ds.skipped] == [(1, "row", "completion")]


def test_binary_and_compressed_files_keep_their_messages(tmp_path):
    import gzip

    gz = tmp_path / "d.csv"
    gz.write_bytes(gzip.compress(b"prompt,completion\np,c\n"))
    with pytest.raises(DataError, match="gzip-compressed"):
        load_file(gz)
    utf16 = tmp_path / "d.json"
    utf16.write_bytes(json.dumps(QA).encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16"):
        load_file(utf16)


def test_parquet_without_pyarrow_says_the_pip_line(tmp_path, monkeypatch):
    import builtins

    from mlxtune.errors import UsageError

    pq.write_table(pa.Table.from_pylist(QA), tmp_path / "d.parquet")
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(UsageError, match=r"pip install 'mlxtune\[parquet\]'"):
        load_file(tmp_path / "d.parquet")


# ------------------------------------------------------------ directories


def test_directory_mixes_containers_per_split(tmp_path):
    pq.write_table(pa.Table.from_pylist(QA), tmp_path / "train.parquet")
    write_jsonl(tmp_path / "validation.jsonl", QA[:2])
    write_csv(tmp_path / "test.csv", QA[:3])
    splits = load_data(tmp_path)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (8, 2, 3)
    assert (splits.train.container, splits.valid.container, splits.test.container) == ("parquet", "jsonl", "csv")
    assert splits.description.endswith("8 train / 2 valid / 3 test prompt/completion records (files: train parquet, valid jsonl, test csv)")


def test_hub_download_layout_with_shards(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.Table.from_pylist(CHATS[:5]), data / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(CHATS[5:]), data / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(CHATS[:2]), data / "test-00000-of-00001.parquet")
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n")
    splits = load_data(tmp_path, seed=1)
    assert (len(splits.train) + len(splits.valid), len(splits.test)) == (8, 2)
    assert sorted(r["messages"][0]["content"] for r in [*splits.train, *splits.valid]) == sorted(c["messages"][0]["content"] for c in CHATS)
    assert splits.train.path == str(data / "train-0000*.parquet")
    assert "no valid split" in splits.note and "Hub download: train parquet, test parquet" in splits.description
    assert {r.path for r in splits.train} == {str(data / "train-00000-of-00002.parquet"), str(data / "train-00001-of-00002.parquet")}


def test_save_to_disk_layout_written_by_datasets(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(QA), "validation": datasets.Dataset.from_list(QA[:2])})
    dd.save_to_disk(str(tmp_path / "saved"))
    splits = load_data(tmp_path / "saved")
    assert (as_data(splits.train), as_data(splits.valid), splits.train.container) == (QA, QA[:2], "arrow")
    assert "datasets.save_to_disk" in splits.description


def test_save_to_disk_layout_as_arrow_stream_files(tmp_path):
    """The same layout written with pyarrow alone: dataset_dict.json and each split's data-*.arrow stream files."""
    saved = tmp_path / "saved"
    for name, records in (("train", QA), ("test", QA[:1])):
        (saved / name).mkdir(parents=True)
        write_arrow_stream(saved / name / "data-00000-of-00001.arrow", records)
    (saved / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    splits = load_data(saved)
    assert (len(splits.train) + len(splits.valid), as_data(splits.test)) == (8, QA[:1])


def test_directory_without_splits_says_what_it_looked_for(tmp_path):
    write_csv(tmp_path / "questions.csv", QA)
    with pytest.raises(DataError) as info:
        load_data(tmp_path)
    msg = str(info.value)
    assert "train.jsonl (or train.json, .csv, .tsv, .parquet" in msg and "data/train-*.parquet" in msg and "save_to_disk" in msg
    assert "questions.csv" in msg


def test_two_kinds_of_one_split_are_refused(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", QA)
    write_csv(tmp_path / "train.csv", QA)
    with pytest.raises(DataError, match="more than one file kind"):
        load_data(tmp_path)


# ------------------------------------------------------------ --field


def test_field_mapping_renames_columns_before_detection(tmp_path):
    renamed = [{"question": r["prompt"], "answer": r["completion"], "id": i} for i, r in enumerate(QA)]
    path = write_csv(tmp_path / "qa.csv", renamed)
    ds = load_file(path, fields={"prompt": "question", "completion": "answer"})
    assert ds.format.name == "completion"
    assert [{k: r[k] for k in ("prompt", "completion")} for r in ds] == QA and ds[0]["id"] == "0"
    with pytest.raises(DataError) as info:
        load_file(write_jsonl(tmp_path / "qa.jsonl", renamed[:1] + [{"question": "q"}]), fields={"prompt": "question", "completion": "answer"})
    assert str(info.value).startswith(f"{tmp_path / 'qa.jsonl'}:2: has no column 'answer', which --field completion=answer reads as 'completion'")


def test_field_through_data_check_lora_and_eval(tmp_path, tiny_model):
    renamed = [{"question": r["prompt"], "answer": r["completion"]} for r in QA]
    pq.write_table(pa.Table.from_pylist(renamed), tmp_path / "qa.parquet")
    flags = ("--field", "prompt=question", "--field", "completion=answer")
    r = invoke("data", "check", tmp_path / "qa.parquet", "--model", tiny_model, "--json", *flags)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["format"] == "completion" and [s["container"] for s in report["splits"][:2]] == ["parquet", "parquet"]
    text = invoke("data", "check", tmp_path / "qa.parquet", "--model", tiny_model, *flags)
    assert f"Read as: prompt/completion records; train/valid parquet ({tmp_path / 'qa.parquet'})" in text.output
    r = invoke("plan", "--data", tmp_path / "qa.parquet", "--model", tiny_model, "--json", *flags)
    assert r.exit_code == 0, r.output
    r = invoke("lora", "--data", tmp_path / "qa.parquet", "--model", tiny_model, "-o", tmp_path / "run", "--iters", 1, "--no-report", *flags)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["config"]["fields"] == {"prompt": "question", "completion": "answer"}
    r = invoke("lora", "--resume", tmp_path / "run", "--iters", 2, "--no-report")  # the mapping comes from the run
    assert r.exit_code == 0, r.output
    r = invoke("eval", "--adapter", tmp_path / "run", "--samples", 0, "--json", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e.json").read_text())["records"] == 1  # the run's held-out row, read through its mapping
    bad = invoke("data", "check", tmp_path / "qa.parquet", "--model", tiny_model, "--field", "prompt")
    assert bad.exit_code == 2 and "FIELD=COLUMN" in bad.output


# ------------------------------------------------------------ data convert


def test_convert_a_file_round_trip(tmp_path):
    pq.write_table(pa.Table.from_pylist(CHATS), tmp_path / "chats.parquet")
    r = invoke("data", "convert", tmp_path / "chats.parquet", tmp_path / "out" / "chats.jsonl")
    assert r.exit_code == 0, r.output
    assert f"all: 8 chat records from {tmp_path / 'chats.parquet'} (parquet)" in r.output
    back = load_file(tmp_path / "out" / "chats.jsonl")
    assert back.container == "jsonl" and as_data(back) == CHATS
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["chats.jsonl"]  # no temporary file left
    again = invoke("data", "convert", tmp_path / "chats.parquet", tmp_path / "out" / "chats.jsonl")
    assert again.exit_code == 1 and "--force" in again.output


def test_convert_validates_before_writing_anything(tmp_path):
    write_csv(tmp_path / "qa.csv", QA + [{"prompt": "p", "completion": ""}])
    r = invoke("data", "convert", tmp_path / "qa.csv", tmp_path / "qa.jsonl")
    assert r.exit_code == 1 and "qa.csv:10: field 'completion'" in r.output
    assert not list(tmp_path.glob("*qa.jsonl*"))
    r = invoke("data", "convert", tmp_path / "qa.csv", tmp_path / "qa.jsonl", "--skip-bad-lines", "--json")
    assert r.exit_code == 0, r.output
    assert as_data(load_file(tmp_path / "qa.jsonl")) == QA and json.loads(r.stdout)["skipped"][0]["line"] == 10


def test_convert_a_directory_keeps_its_splits(tmp_path):
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"q": r["prompt"], "a": r["completion"]} for r in QA]), src / "data" / "train-00000-of-00001.parquet")
    write_csv(src / "data" / "validation-00000-of-00001.csv", [{"q": "Q?", "a": "A."}])
    r = invoke("data", "convert", src, tmp_path / "out", "--field", "prompt=q", "--field", "completion=a", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["layout"], [(s["name"], s["container"], s["format"], s["records"]) for s in out["splits"]]) == (
        "Hub download", [("train", "parquet", "completion", 8), ("valid", "csv", "completion", 1)])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train.jsonl", "valid.jsonl"]
    splits = load_data(tmp_path / "out")
    assert as_data(splits.train) == QA and as_data(splits.valid) == [{"prompt": "Q?", "completion": "A."}]
    again = invoke("data", "convert", src, tmp_path / "out")
    assert again.exit_code == 1 and "already exists" in again.output and "--force" in again.output


# ------------------------------------------------------------ lazy JSONL records


def test_jsonl_records_are_offsets_not_dicts(tmp_path):
    n = 100_000
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(f'{{"text": "record {i}"}}\n' if i % 1000 else f'\n{{"text": "record {i}", "id": {i}}}\n')
    ds = load_file(path)
    assert isinstance(ds.records, JsonlRecords) and not isinstance(ds.records, list)
    assert ds.records.offsets.dtype == np.int64 and ds.records.offsets.nbytes == 8 * n
    held = {name: type(v).__name__ for name, v in vars(ds.records).items()}
    assert held == {"path": "str", "offsets": "ndarray", "lines": "ndarray", "fields": "dict", "index": "ndarray"} and ds.records.fields == {}
    assert len(ds) == n and ds[12345]["text"] == "record 12345" and ds[-1].line == n + n // 1000
    assert ds[1000].data == {"text": "record 1000", "id": 1000} and ds[1000].line == 1003
    assert [r["text"] for r in ds.records[:3]] == ["record 0", "record 1", "record 2"]
    splits = load_data(path)
    assert isinstance(splits.train.records, JsonlRecords) and isinstance(splits.valid.records, JsonlRecords)
    got = sorted(int(r["text"].split()[1]) for r in [*splits.valid, *splits.train])
    assert got == list(range(n))
    assert [r.line for r in splits.valid] == sorted(r.line for r in splits.valid)
    with open(path, "r+b") as f:  # a record's line overwritten after reading: said, not a JSON traceback
        f.seek(int(ds.records.offsets[5]))
        f.write(b"#")
    with pytest.raises(DataError, match=r"big.jsonl:7: the file changed since it was read"):
        ds[5]


def test_hub_configurations(tmp_path):
    """A Hub data set with configuration folders (main/, socratic/): the one there is is read; of several, the error names them."""
    for config in ("main", "socratic"):
        (tmp_path / config).mkdir()
        pq.write_table(pa.Table.from_pylist(QA), tmp_path / config / "train-00000-of-00001.parquet")
        pq.write_table(pa.Table.from_pylist(QA[:1]), tmp_path / config / "test-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"holds 2 configurations of a data set \(main, socratic\): pass one of them, e.g. --data .*main"):
        load_data(tmp_path)
    splits = load_data(tmp_path / "main")
    assert (len(splits.train) + len(splits.valid), len(splits.test)) == (8, 1)
    import shutil

    shutil.rmtree(tmp_path / "socratic")
    assert "Hub download, configuration main: train parquet, test parquet" in load_data(tmp_path).description


def test_mixed_directory_and_text_file_check_and_train(tmp_path, tiny_model):
    data = tmp_path / "chats"
    data.mkdir()
    pq.write_table(pa.Table.from_pylist(CHATS), data / "train.parquet")
    write_csv(data / "dev.csv", CHATS[:2])
    write_jsonl(data / "test.jsonl", CHATS[2:3])
    r = invoke("data", "check", data, "--model", tiny_model, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert [(s["name"], s["records"], s["container"]) for s in report["splits"]] == [("train", 8, "parquet"), ("valid", 2, "csv"), ("test", 1, "jsonl")]
    assert report["splits"][0]["lengths"]["min"] > 0 and report["overlaps"][0]["records"] == 2  # dev.csv repeats two train chats
    r = invoke("lora", "--data", data, "--model", tiny_model, "-o", tmp_path / "run", "--iters", 1, "--no-report")
    assert r.exit_code == 0, r.output
    assert "8 train / 2 valid / 1 test chat records (files: train parquet, valid csv, test jsonl)" in r.output
    assert f"valid: 2 of 2 records also appear in train (e.g. {data / 'dev.csv'}:2 = {data / 'train.parquet'}, row 0)" in r.output

    notes = tmp_path / "notes.txt"
    notes.write_text("\n\n".join(f"Note {i}: the quick brown fox jumps over the lazy dog." for i in range(10)) + "\n")
    r = invoke("data", "check", notes, "--model", tiny_model)
    assert r.exit_code == 0, r.output
    assert "10 text records (text: one record per paragraph, split at blank lines; a paragraph longer than --max-seq-len" in r.output
    assert f"Read as: text records; train/valid text ({notes})" in r.output


def test_alpaca_csv_and_sharegpt_parquet(tmp_path):
    """Formats and containers are independent: Alpaca in CSV (an empty input cell is no input), ShareGPT in Parquet."""
    alpaca = [{"instruction": f"Do {i}.", "input": "" if i % 2 else f"with {i}", "output": f"Done {i}."} for i in range(4)]
    ds = load_file(write_csv(tmp_path / "alpaca.csv", alpaca))
    assert ds.format.name == "alpaca" and ds[1].data == {"instruction": "Do 1.", "input": "", "output": "Done 1."} and ds[0]["input"] == "with 0"
    share = [{"conversations": [{"from": "human", "value": f"Hi {i}"}, {"from": "gpt", "value": f"Hello {i}"}]} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(share), tmp_path / "share.parquet")
    ds = load_file(tmp_path / "share.parquet")
    assert ds.format.name == "sharegpt" and as_data(ds) == share
from mlxtune.data.records import load_file
from mlxtune.errors import DataError

def test_empty_csv_cell_is_an_empty_string(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("prompt,completion\n,only a completion\n")
    ds = load_file(p)
    assert ds.records[0].data == {"prompt": "", "completion": "only a completion"}

def test_alpaca_with_empty_instruction_cell(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("instruction,input,output\n,some input,an answer\n")
    assert load_file(p).records[0].data["instruction"] == ""

def test_answer_that_looks_like_json_is_text(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("prompt,chosen,rejected\nWhat is a link?,[docs](http://x) explains it,no idea\n")
    assert load_file(p).records[0].data["chosen"] == "[docs](http://x) explains it"

def test_broken_messages_cell_still_fails(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text('messages\n"[{""role"": ""user""}"\n')
    with pytest.raises(DataError, match="not valid JSON"):
        load_file(p)


@pytest.mark.parametrize("out", [".", ".."])
def test_convert_never_replaces_the_directory_holding_its_input(tmp_path, out):
    from mlxtune.data.to_jsonl import convert_data
    from mlxtune.errors import UsageError

    src = tmp_path / "data" / "set"
    src.mkdir(parents=True)
    (src / "train.csv").write_text("prompt,completion\nq,a\nq2,a2\n")
    (src / "notes.txt.bak").write_text("keep me")
    with pytest.raises(UsageError, match="would delete the data"):
        convert_data(src, (src / out).resolve(), force=True)
    assert (src / "train.csv").is_file() and (src / "notes.txt.bak").read_text() == "keep me"
