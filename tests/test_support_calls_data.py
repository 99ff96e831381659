"""data/support_calls/: the files are what data/make_support_calls.py writes, and the summaries hold up."""

import json
import re
from pathlib import Path

import pytest

from conftest import data_script

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "support_calls"
SPLITS = ("train", "valid", "test")


def _load_generator():
    return data_script("make_support_calls")


@pytest.fixture(scope="module")
def gen():
    return _load_generator()


@pytest.fixture(scope="module")
def files() -> dict[str, list[dict]]:
    return {s: [json.loads(line) for line in (DATA / f"{s}.jsonl").open(encoding="utf-8")] for s in SPLITS}


def _split_record(record: dict) -> tuple[str, list[str], str]:
    user, assistant = record["messages"]
    assert (user["role"], assistant["role"]) == ("user", "assistant")
    instruction, transcript = user["content"].split("\n\n", 1)
    return instruction, transcript.splitlines(), assistant["content"]


def test_generation_is_deterministic(gen):
    assert gen.generate() == gen.generate()


def test_files_are_what_the_generator_writes(gen):
    for name, records in gen.generate().items():
        lines = (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert lines == [json.dumps(r, ensure_ascii=False) for r in records], name


def test_split_sizes(files):
    assert {s: len(r) for s, r in files.items()} == {"train": 240, "valid": 30, "test": 40}


def test_transcripts_alternate_agent_and_customer(gen, files):
    instructions = set()
    for records in files.values():
        for record in records:
            instruction, lines, summary = _split_record(record)
            instructions.add(instruction)
            assert 8 <= len(lines) <= 16
            for i, line in enumerate(lines):
                assert line.startswith("Customer: " if i % 2 else "Agent: "), line
            assert len(record["messages"][0]["content"]) + len(summary) <= gen.MAX_CHARS
    assert len(instructions) >= 10


def test_summary_facts_are_in_the_transcript(gen, files):
    for records in files.values():
        for record in records:
            _, lines, summary = _split_record(record)
            transcript = "\n".join(lines)
            name, ticket = gen.customer_and_ticket(record)
            assert name in transcript, summary
            org, plan = re.match(r"[^(]+ \((.+), (\w+) plan\) reported that ", summary).groups()
            assert (org if org != "personal account" else "personal").lower() in transcript.lower(), summary
            # exactly one plan and at most one company are named, so the facts are unambiguous
            assert {p for p in gen.PLANS if re.search(rf"\b{p}\b", transcript)} == {plan}, summary
            assert {c for c in gen.COMPANIES if c in transcript} == ({org} if org in gen.COMPANIES else set())
            since = summary.split(". ")[0].rsplit(" since ", 1)[1]
            assert f"since {since}".lower() in transcript.lower(), summary
            if ticket is not None:
                assert re.fullmatch(r"\d{5}", ticket) and ticket in transcript, summary
            for day in re.findall(r"(?:callback|technician visit) (?:on )?([\w ]+?)(?:,|\.$)", summary):
                assert day in transcript, summary


def test_summaries_have_the_house_shape(files):
    for records in files.values():
        for record in records:
            summary = record["messages"][1]["content"]
            sentences = re.split(r"(?<=\.) (?=[A-Z])", summary)
            assert 2 <= len(sentences) <= 3, summary
            assert " reported that " in sentences[0]
            last = sentences[-1]
            assert last == "No follow-up needed." or (last.startswith("Follow-up: ") and last.endswith(".")), summary


def test_records_are_unique(files):
    records = [r for split in files.values() for r in split]
    users = [r["messages"][0]["content"] for r in records]
    summaries = [r["messages"][1]["content"] for r in records]
    assert len(set(users)) == len(users) and len(set(summaries)) == len(summaries)


def test_test_callers_and_tickets_are_not_in_train(gen, files):
    train = [gen.customer_and_ticket(r) for r in files["train"]]
    test = [gen.customer_and_ticket(r) for r in files["test"]]
    assert not {name for name, _ in test} & {name for name, _ in train}
    test_tickets = {t for _, t in test if t is not None}
    assert test_tickets and not test_tickets & {t for _, t in train if t is not None}
