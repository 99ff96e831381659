"""Issue 17, the record formats: Alpaca, ShareGPT and preference pairs beside text, prompt/completion and chat.

Which tokens each format trains (through the tiny model's ChatML template, and
as plain text without one), how a record is detected, and what the errors
say: the file, line and field as before, plus the format detected, from which
key, and why the record does not fit it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxtune.cli import cli
from mlxtune.data import formats
from mlxtune.data.batching import encode
from mlxtune.data.chat_formats import as_chat
from mlxtune.data.records import load_jsonl
from mlxtune.errors import DataError

END = "<|im_end|>"


def write(path: Path, *records: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def plain_tok(tiny_model):
    """The same tokenizer without a chat template (a base model's)."""
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_model)
    t.chat_template = None
    return t


def trained(tok, ex) -> list[str]:
    """The trained tokens, decoded run by run."""
    runs, cur = [], []
    for t, m in zip(ex.tokens.tolist(), ex.loss_mask.tolist()):
        if m:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


def rendered(tok, ex) -> str:
    return tok.decode(ex.tokens.tolist())


# ------------------------------------------------------------------ masks, per format


def test_alpaca_trains_the_output_of_a_user_turn_made_of_instruction_and_input(tok):
    record = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour", "system": "Be exact."}
    ex = encode(record, formats.ALPACA, tok, True, 512)
    assert trained(tok, ex) == ["Bonjour" + END]
    text = rendered(tok, ex)
    assert "<|im_start|>system\nBe exact." in text and "<|im_start|>user\nTranslate to French.\n\nGood morning" + END in text
    # the same tokens as the chat it stands for
    chat = {"messages": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Translate to French.\n\nGood morning"}, {"role": "assistant", "content": "Bonjour"}]}
    same = encode(chat, formats.CHAT, tok, True, 512)
    assert ex.tokens.tolist() == same.tokens.tolist() and ex.loss_mask.tolist() == same.loss_mask.tolist()
    # no input (empty or absent), no system: the instruction alone is the user turn
    for bare in ({"instruction": "Say hi.", "input": "", "output": "Hi"}, {"instruction": "Say hi.", "output": "Hi"}):
        ex = encode(bare, "alpaca", tok, True, 512)
        assert "system" not in rendered(tok, ex) and "<|im_start|>user\nSay hi." + END in rendered(tok, ex)
        assert trained(tok, ex) == ["Hi" + END]
    # --no-mask-prompt trains it all
    assert encode(record, formats.ALPACA, tok, False, 512).loss_mask[1:].all()


def test_alpaca_without_a_chat_template_is_plain_prompt_and_output(plain_tok):
    record = {"instruction": "Translate.", "input": "Good morning", "output": "Bonjour", "system": "Be exact."}
    ex = encode(record, formats.ALPACA, plain_tok, True, 512)
    assert rendered(plain_tok, ex) == "Be exact.\n\nTranslate.\n\nGood morning\nBonjour" + END
    assert "".join(trained(plain_tok, ex)) == "\nBonjour" + END


def test_sharegpt_trains_as_the_chat_it_converts_to(tok):
    record = {
        "system": "Be brief.",
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": "18C, sunny"},
            {"from": "gpt", "value": "Sunny, 18C."},
        ],
    }
    ex = encode(record, formats.SHAREGPT, tok, True, 512)
    assert trained(tok, ex) == ['{"name": "weather", "arguments": {"city": "Paris"}}' + END, "Sunny, 18C." + END]
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
                         {"role": "assistant", "content": record["conversations"][1]["value"]}, {"role": "tool", "content": "18C, sunny"},
                         {"role": "assistant", "content": "Sunny, 18C."}]}
    same = encode(chat, formats.CHAT, tok, True, 512)
    assert ex.tokens.tolist() == same.tokens.tolist() and ex.loss_mask.tolist() == same.loss_mask.tolist()
    assert "<|im_start|>tool\n18C, sunny" in rendered(tok, ex)
    # every accepted speaker name maps to its role
    for speaker, role in (("user", "user"), ("model", "assistant"), ("chatgpt", "assistant"), ("assistant", "assistant"), ("function", "tool"), ("tool", "tool"), ("system", "system")):
        msgs = as_chat({"conversations": [{"from": speaker, "value": "x"}]})["messages"]
        assert msgs == [{"role": role, "content": "x"}]


def test_openai_chat_weight_zero_turn_is_not_trained(tok):
    """Point 3 of the brief: a weight-0 assistant turn is outside the loss mask, the weight-1 one inside."""
    record = {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Lyon.", "weight": 0},
                           {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Paris.", "weight": 1}]}
    assert trained(tok, encode(record, formats.CHAT, tok, True, 512)) == ["Paris." + END]


def test_text_and_completion_masks(tok, plain_tok):
    ex = encode({"text": "The fox jumps."}, formats.TEXT, tok, True, 512)
    assert ex.loss_mask[1:].all()
    ex = encode({"prompt": "What is 2 plus 2?", "completion": " It is 4."}, formats.COMPLETION, plain_tok, True, 512)
    assert "".join(trained(plain_tok, ex)) == " It is 4." + END


def test_preference_pairs_do_not_encode_and_say_what_to_do(tok):
    with pytest.raises(DataError) as info:
        encode({"prompt": "p", "chosen": "a", "rejected": "b"}, formats.PREFERENCE, tok, True, 512)
    msg = str(info.value)
    assert "preference tuning" in msg and "--field completion=chosen" in msg


# ------------------------------------------------------------------ detection


@pytest.mark.parametrize(
    "record,name",
    [
        ({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}], "instruction": "i", "text": "t"}, "chat"),
        ({"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}], "instruction": "i"}, "sharegpt"),
        ({"instruction": "i", "output": "o", "prompt": "p", "chosen": "c", "rejected": "r"}, "alpaca"),
        ({"prompt": "p", "chosen": "c", "rejected": "r", "text": "t"}, "preference"),
        # --field completion=chosen renames 'chosen': what is left with 'completion' is prompt/completion
        ({"prompt": "p", "completion": "c", "rejected": "r"}, "completion"),
        ({"prompt": "p", "completion": "c", "text": "t"}, "completion"),
        ({"text": "t", "output": "o"}, "text"),
    ],
)
def test_detection_order(tmp_path, record, name):
    assert load_jsonl(write(tmp_path / "d.jsonl", record)).format.name == name


def test_preference_pairs_of_strings_and_of_messages_load(tmp_path):
    prompt = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}]
    records = [
        {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."},
        {"prompt": prompt, "chosen": [{"role": "assistant", "content": "Hello!"}], "rejected": [{"role": "assistant", "content": "Go away."}]},
        {"prompt": prompt, "chosen": "Hello!", "rejected": "Go away."},
    ]
    data = load_jsonl(write(tmp_path / "p.jsonl", *records))
    assert data.format is formats.PREFERENCE and len(data) == 3
    assert [formats.PREFERENCE.prompt_and_reference(r) for r in records] == [("Hi?", "Hello!"), (prompt, "Hello!"), (prompt, "Hello!")]


def test_prompt_and_reference_of_the_new_formats():
    alpaca = {"instruction": "Add.", "input": "2 and 2", "output": "4"}
    assert formats.ALPACA.prompt_and_reference(alpaca) == ("Add.\n\n2 and 2", "4")
    assert formats.ALPACA.prompt_and_reference(alpaca | {"system": "S"}) == ([{"role": "system", "content": "S"}, {"role": "user", "content": "Add.\n\n2 and 2"}], "4")
    share = {"conversations": [{"from": "human", "value": "u1"}, {"from": "gpt", "value": "a1"}, {"from": "human", "value": "u2"}, {"from": "gpt", "value": "a2"}]}
    prompt, ref = formats.SHAREGPT.prompt_and_reference(share)
    assert ref == "a2" and [m["content"] for m in prompt] == ["u1", "a1", "u2"] and prompt[1]["role"] == "assistant"
    # two records asking the same thing share a prompt key, whatever the answer
    assert formats.ALPACA.prompt_key(alpaca) == formats.ALPACA.prompt_key(alpaca | {"output": "5"}) != formats.ALPACA.prompt_key(alpaca | {"input": "3"})
    # an empty input or system is no input or system: the same record trained
    assert formats.ALPACA.record_key(alpaca | {"system": "", "id": 3}) == formats.ALPACA.record_key(alpaca) != formats.ALPACA.record_key(alpaca | {"output": "5"})


def test_one_format_per_file(tmp_path):
    path = write(tmp_path / "d.jsonl", {"instruction": "i", "output": "o"}, {"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]})
    with pytest.raises(DataError, match="line 2 is a ShareGPT record but line 1 was an Alpaca record: use one format per file"):
        load_jsonl(path)


# ------------------------------------------------------------------ errors


def error_for(tmp_path, record) -> DataError:
    path = write(tmp_path / "d.jsonl", "", record)  # after a blank line: line 2
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    err = info.value
    assert str(err).startswith(f"{path}:2: ") and err.line == 2 and "\n" not in str(err)
    return err


GOOD_TURNS = [{"from": "human", "value": "u"}, {"from": "gpt", "value": "a"}]


@pytest.mark.parametrize(
    "record,field,words",
    [
        ({"instruction": "i", "input": "x"}, "output", ["detected as Alpaca (has 'instruction'): 'output' is missing"]),
        ({"instruction": "i", "output": ""}, "output", ["detected as Alpaca (has 'instruction'): 'output' is empty"]),
        ({"instruction": "", "output": "o"}, "instruction", ["detected as Alpaca", "asked nothing"]),
        ({"instruction": "i", "input": 3, "output": "o"}, "input", ["'input' must be a string, got a number"]),
        ({"instruction": "i", "output": "o", "system": ["s"]}, "system", ["'system' must be a string, got a list"]),
        ({"conversations": GOOD_TURNS + [{"from": "human", "value": "u"}, {"from": "bot", "value": "b"}]}, "conversations[3].from",
         ["detected as ShareGPT (has 'conversations')", '"bot"', "not a known speaker", "human", "gpt", "observation"]),
        ({"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": ""}]}, "conversations[1].value", ["ShareGPT", "is empty"]),
        ({"conversations": [{"from": "human", "value": "u"}, {"from": "gpt"}]}, "conversations[1].value", ["is missing"]),
        ({"conversations": [{"value": "u"}]}, "conversations[0].from", ["is missing"]),
        ({"conversations": [{"from": "human", "value": 7}]}, "conversations[0].value", ["must be a string"]),
        ({"conversations": [{"from": "human", "value": "u"}]}, "conversations", ["ShareGPT", "has no assistant turn"]),
        ({"conversations": "hi"}, "conversations", ["must be a list"]),
        ({"conversations": GOOD_TURNS, "system": 1}, "system", ["must be a string"]),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected", ["detected as preference pair (has 'chosen'): 'rejected' is the same as 'chosen'"]),
        ({"chosen": "a", "rejected": "b"}, "prompt", ["preference pair", "'prompt' is missing"]),
        ({"prompt": "p", "rejected": "b"}, "chosen", ["(has 'rejected')", "'chosen' is missing"]),
        ({"prompt": "p", "chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}, "chosen", ["has no assistant message"]),
        ({"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}, "rejected", ["give both answers the same way"]),
        ({"prompt": [{"role": "bot", "content": "u"}], "chosen": "a", "rejected": "b"}, "prompt[0].role", ["unknown role"]),
        ({"prompt": "p", "chosen": "", "rejected": "b"}, "chosen", ["is empty"]),
        ({"prompt": "p"}, "completion", ["detected as prompt/completion (has 'prompt'): 'completion' is missing"]),
    ],
)
def test_errors_name_field_detected_format_and_reason(tmp_path, record, field, words):
    err = error_for(tmp_path, record)
    assert err.field == field and f"field '{field}'" in str(err)
    for word in words:
        assert word in str(err), str(err)


def test_a_record_of_no_format_lists_the_formats_and_says_how_to_map_a_column(tmp_path):
    err = error_for(tmp_path, {"question": "q", "answer": "a"})
    msg = str(err)
    assert err.field is None and "found: 'question', 'answer'" in msg
    for fmt in formats.FORMATS:
        assert f"{fmt.title}: {fmt.keys}" in msg
    assert "--field NAME=COLUMN" in msg and "--field completion=answer" in msg and "rename the field" not in msg


# ------------------------------------------------------------------ through the CLI


def test_data_check_reports_preference_pairs_and_lora_says_why_it_cannot_train(tmp_path, tiny_model):
    records = [{"prompt": f"What is {i} plus {i}?", "chosen": f"{2 * i}.", "rejected": f"{2 * i + 1}."} for i in range(10)]
    data = write(tmp_path / "pairs.jsonl", *records)
    r = invoke("data", "check", data, "--model", tiny_model, "--json", "--seed", 1)
    assert r.exit_code == 0, r.output
    report = json.loads(r.output[r.output.index("{"):])
    assert report["format"] == "preference" and sum(s["records"] for s in report["splits"]) == 10
    assert all(s["lengths"] is None for s in report["splits"]) and "not tokenized: preference pairs" in report["warnings"][0]
    r = invoke("data", "check", data, "--model", tiny_model)
    assert r.exit_code == 0 and "warning: not tokenized" in r.output and "cannot train" in r.output and "OK: usable" not in r.output
    r = invoke("lora", "--data", data, "--model", tiny_model, "-o", tmp_path / "run", "--iters", 1)
    assert r.exit_code == 1 and "preference tuning" in r.output and "--field completion=chosen" in r.output


@pytest.mark.parametrize("name", ["alpaca", "sharegpt"])
def test_data_check_names_the_format_and_counts_the_trained_tokens(tmp_path, tiny_model, name):
    records = {
        "alpaca": [{"instruction": "Add the numbers.", "input": f"{i} and {i}", "output": f"{2 * i}."} for i in range(10)],
        "sharegpt": [{"conversations": [{"from": "human", "value": f"Capital number {i}?"}, {"from": "gpt", "value": f"Paris, {i}."}]} for i in range(10)],
    }[name]
    r = invoke("data", "check", write(tmp_path / "d.jsonl", *records), "--model", tiny_model, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output[r.output.index("{"):])
    train = report["splits"][0]
    assert report["format"] == name and report["mask_prompt"] is True
    assert 0 < train["trained_tokens"] < train["lengths"]["total"] and train["no_target"] == 0


def test_alpaca_with_a_system_trains_and_evaluates_on_a_model_without_a_chat_template(tmp_path, tiny_model):
    """The prompt eval gives the model is the one plain training put before the output: system, blank line, user turn."""
    from transformers import AutoTokenizer

    from mlxtune.inference import prompt_ids

    model = tmp_path / "base"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    records = [{"instruction": "Add the numbers.", "input": f"{i} and {i}", "output": f"{2 * i}.", "system": "Be brief."} for i in range(12)]
    data = write(tmp_path / "alpaca.jsonl", *records)
    out = tmp_path / "run"
    r = invoke("lora", "--data", data, "--model", model, "-o", out, "--iters", 2, "--val-every", 2)
    assert r.exit_code == 0, r.output
    assert json.loads((out / "adapter_config.json").read_text())["data"]["format"] == "alpaca"
    r = invoke("eval", "--adapter", out, "--task", "summarize", "--max-tokens", 2, "--json", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    assert set(json.loads((tmp_path / "e.json").read_text())["references"]) <= {x["output"] for x in records}
    tok = AutoTokenizer.from_pretrained(model)
    prompt, _ = formats.ALPACA.prompt_and_reference(records[3])
    assert prompt_ids(tok, prompt) == tok.encode("Be brief.\n\nAdd the numbers.\n\n3 and 3")
