"""The style-mimicry example data set in data/style/ (written by data/make_style.py)."""

import json
from pathlib import Path

import pytest

from conftest import data_script

REPO = Path(__file__).resolve().parent.parent
STYLE = REPO / "data" / "style"


@pytest.fixture(scope="module")
def make_style():
    return data_script("make_style")


@pytest.fixture(scope="module")
def files():
    return {name: (STYLE / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() for name in ("train", "valid", "test")}


def test_generate_is_deterministic(make_style):
    assert make_style.generate() == make_style.generate()


def test_files_are_what_the_generator_writes(make_style, files):
    splits = make_style.generate()
    assert set(splits) == set(files)
    for name, records in splits.items():
        assert files[name] == [json.dumps(r, ensure_ascii=False) for r in records], name


def test_held_out_topics_never_reach_train(make_style, files):
    train_text = "\n".join(files["train"])
    for topic in make_style.TEST_TOPICS + make_style.VALID_TOPICS:
        assert topic not in train_text
    held_out = {t: facts for t, facts, _ in make_style.TOPICS if t in make_style.TEST_TOPICS}
    assert len(held_out) == len(make_style.TEST_TOPICS) == 5
    for topic, facts in held_out.items():
        assert any(topic in line for line in files["test"])
        for fact in facts:  # no test content in train, not even a fact on its own
            assert json.dumps(fact, ensure_ascii=False)[1:-1] not in train_text
    assert not set(make_style.TEST_TOPICS) & set(make_style.VALID_TOPICS)


def test_replies_keep_the_voice_and_records_are_unique(files):
    records = [json.loads(line) for lines in files.values() for line in lines]
    assert len(records) >= 290
    for r in records:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        reply = r["messages"][1]["content"]
        assert reply.startswith("Hey friends,\n\n") and reply.endswith("Stay curious,\nMira")
        assert "\n\nQuick tip: " in reply
    lines = [line for lines in files.values() for line in lines]
    assert len(set(lines)) == len(lines)
    replies = [r["messages"][1]["content"] for r in records]
    assert len(set(replies)) == len(replies)
