"""Chat templates of real models (tests/chat_templates.json, each with where it came from): where generation stops,
Qwen3's and SmolLM3's thinking switch (off unless asked for, in training, generation and the templates written out),
and the Ollama Modelfile of each chat format."""

import json

import pytest

from mlxtune.models.chat_template import THINKING_OFF, end_of_turn, no_think_text, with_thinking, write_thinking
from mlxtune.models.tokenizer import load_tokenizer, stop_token_ids

from tiny import chat_template_fixtures, make_chat_model

FIXTURES = chat_template_fixtures()
# family -> (the token its template ends an assistant turn with, every token generation stops on)
STOPS = {
    "qwen3": ("<|im_end|>", {"<|im_end|>", "<|endoftext|>"}),  # eos, generation_config's list
    "smollm3": ("<|im_end|>", {"<|im_end|>"}),
    "llama3": ("<|eot_id|>", {"<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"}),  # <|eom_id|>: generation_config.json only
    "gemma3": ("<end_of_turn>", {"<eos>", "<end_of_turn>"}),
    "phi3.5": ("<|end|>", {"<|endoftext|>", "<|end|>"}),  # no generation_config: <|end|> comes from the template
    "phi4-mini": ("<|end|>", {"<|endoftext|>", "<|end|>"}),
    "mistral": ("</s>", {"</s>"}),
}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    return {family: make_chat_model(root / family, family) for family in FIXTURES}


def test_every_fixture_says_where_it_came_from():
    assert set(FIXTURES) == set(STOPS)
    for family, fx in FIXTURES.items():
        assert fx["source"] and fx["model"] and fx["chat_template"], family


@pytest.mark.parametrize("family", sorted(STOPS))
def test_generation_stops_on_the_end_of_turn_the_files_define(models, family):
    tok = load_tokenizer(models[family])
    turn_end, stops = STOPS[family]
    assert tok.convert_ids_to_tokens(end_of_turn(tok)) == [turn_end]
    assert set(tok.convert_ids_to_tokens(sorted(stop_token_ids(models[family], tok)))) == stops


def test_both_backends_stop_on_the_template_end_of_turn(backend, tmp_path):
    """Phi-3.5: eos <|endoftext|>, no generation_config.json; its template ends a turn with <|end|>, where generation stops."""
    from mlxtune.formats import safetensors as npio
    from mlxtune.generate import generate
    from mlxtune.inference import load

    model = make_chat_model(tmp_path / "phi", "phi3.5", first="<|end|>")  # <|end|> is id 0 ...
    weights = npio.load_weights(model)[1]
    weights["model.norm.weight"][:] = 0  # ... and every logit 0: greedy decoding picks id 0 at once
    npio.write_safetensors(model / "model.safetensors", weights, metadata={"format": "mlx"})
    loaded = load(str(model), backend=backend)
    tok = load_tokenizer(model)
    assert {tok.convert_tokens_to_ids(t) for t in ("<|end|>", "<|endoftext|>")} <= loaded.eos_ids
    chunks = list(generate(loaded, "Hi", max_tokens=5))
    assert [c.token for c in chunks] == [0] and chunks[-1].finish_reason == "stop" and "".join(c.text for c in chunks) == ""


def test_thinking_is_off_unless_asked_for(models):
    qwen3, smol = (load_tokenizer(models[f]) for f in ("qwen3", "smollm3"))
    prompt = qwen3.apply_chat_template(HI, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # the caller still decides: transformers' (and llama.cpp's) enable_thinking=True thinks
    assert qwen3.apply_chat_template(HI, tokenize=False, add_generation_prompt=True, enable_thinking=True).endswith("<|im_start|>assistant\n")
    thinking = load_tokenizer(models["qwen3"], thinking=True)
    assert thinking.apply_chat_template(HI, tokenize=False, add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    prompt = smol.apply_chat_template(HI, tokenize=False, add_generation_prompt=True)
    assert "Reasoning Mode: /no_think" in prompt and prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n")
    assert "Reasoning Mode: /think" in load_tokenizer(models["smollm3"], thinking=True).apply_chat_template(HI, tokenize=False, add_generation_prompt=True)
    assert (no_think_text(qwen3), no_think_text(smol), no_think_text(load_tokenizer(models["gemma3"]))) == ("<think>\n\n</think>\n\n", "<think>\n\n</think>\n", "")


def test_with_thinking_changes_only_templates_with_the_switch():
    qwen3, llama3 = FIXTURES["qwen3"]["chat_template"], FIXTURES["llama3"]["chat_template"]
    off = with_thinking(qwen3, False)
    assert off == THINKING_OFF + qwen3 and with_thinking(off, False) == off and with_thinking(off, True) == qwen3
    assert with_thinking(llama3, False) == llama3
    named = [{"name": "default", "template": qwen3}, {"name": "tool_use", "template": llama3}]
    assert with_thinking(named, False) == [{"name": "default", "template": off}, {"name": "tool_use", "template": llama3}]


def test_training_data_renders_without_thinking(models):
    from mlxtune.data.rendering import encode_chat

    messages = HI + [{"role": "assistant", "content": "Hello there"}]
    for thinking, trained_text in ((False, "Hello there<|im_end|>"), (True, "<think>\n\n</think>\n\nHello there<|im_end|>")):
        tok = load_tokenizer(models["qwen3"], thinking=thinking)
        ids, mask = encode_chat(messages, None, tok, True, (None, None))
        prompt = tok.decode([i for i, m in zip(ids, mask) if not m])
        assert tok.decode([i for i, m in zip(ids, mask) if m]) == trained_text
        # what is not trained ends exactly as generation's prompt does, so the model answers as it was taught
        assert prompt.rstrip("\n") == tok.apply_chat_template(HI, tokenize=False, add_generation_prompt=True).rstrip("\n")


# family -> (the end of an answer, what the template writes after the last one: Phi's conversation ends with eos)
@pytest.mark.parametrize("family, end, last", [("qwen3", "<|im_end|>", ""), ("phi3.5", "<|end|>", "\n<|endoftext|>"), ("phi4-mini", "<|end|>", "<|endoftext|>")])
def test_every_turn_of_a_conversation_is_trained(models, family, end, last):
    """Qwen3's template puts the empty think block before the last answer only, Phi's ends a conversation with eos:
    earlier answers render otherwise once the conversation goes on, and are found in it, each with its end of turn."""
    from mlxtune.data.rendering import encode_chat

    tok = load_tokenizer(models[family])
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you"}]
    ids, mask = encode_chat(messages, None, tok, True, (None, None))
    runs, run = [], []
    for i, m in zip(ids, mask):
        if m:
            run.append(i)
        elif run:
            runs, run = runs + [tok.decode(run)], []
    runs += [tok.decode(run)] if run else []
    assert runs == ["Hello there" + end, "See you" + end + last]
    ids, mask = encode_chat(messages, None, tok, True, (None, None), untrained={1})
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "See you" + end + last


@pytest.mark.parametrize("thinking", [None, True])
def test_generate_renders_as_asked(models, backend, thinking):
    from mlxtune.inference import load, prompt_ids

    loaded = load(str(models["qwen3"]), backend=backend, thinking=thinking)
    text = loaded.tokenizer.decode(prompt_ids(loaded.tokenizer, "Hi"))
    assert text.endswith("<|im_start|>assistant\n" if thinking else "<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_templates_written_out_think_only_when_asked(models, tmp_path):
    from mlxtune.export.hf import export_hf

    original = FIXTURES["qwen3"]["chat_template"]
    export_hf(models["qwen3"], tmp_path / "off")
    export_hf(models["qwen3"], tmp_path / "on", thinking=True)
    assert json.loads((tmp_path / "off" / "tokenizer_config.json").read_text())["chat_template"] == THINKING_OFF + original
    assert json.loads((tmp_path / "on" / "tokenizer_config.json").read_text())["chat_template"] == original
    # a template in chat_template.jinja (transformers 4.50+) is rewritten too; one without the switch is left alone
    (tmp_path / "on" / "chat_template.jinja").write_text(original)
    assert write_thinking(tmp_path / "on", False) and (tmp_path / "on" / "chat_template.jinja").read_text() == THINKING_OFF + original
    assert not write_thinking(models["llama3"], False)


# --- the Ollama Modelfile of each chat format -------------------------------------------------------------

# family -> (the format named, a line of the TEMPLATE, the stops in order: the GGUF's eos first)
MODELFILES = {
    "qwen3": ("ChatML", "<|im_start|>assistant\n<think>\n\n</think>\n\n{{ end }}", ["<|im_end|>", "<|endoftext|>"]),
    "smollm3": ("ChatML", "<|im_start|>assistant\n<think>\n\n</think>\n{{ end }}", ["<|im_end|>"]),
    # Llama 3.2 writes a system header into every conversation: its preamble, less the day's date, as Ollama's own template
    "llama3": ("Llama 3", "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n{{ if .System }}{{ .System }}{{ end }}<|eot_id|>\n", ["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"]),
    "gemma3": ("Gemma", "{{ if $last }}<start_of_turn>model\n{{ end }}", ["<eos>", "<end_of_turn>"]),
    "phi3.5": ("Phi-3", "<|{{ .Role }}|>\n{{ .Content }}{{ if not $last }}<|end|>\n{{ end }}", ["<|endoftext|>", "<|end|>"]),
    "phi4-mini": ("Phi-3", "<|{{ .Role }}|>{{ .Content }}{{ if not $last }}<|end|>{{ end }}", ["<|endoftext|>", "<|end|>"]),
    "mistral": ("Mistral [INST]", "{{ end }}{{ .Content }} [/INST]", ["</s>"]),
}


@pytest.mark.parametrize("family", sorted(MODELFILES))
def test_modelfile_has_the_family_template_and_stops(models, tmp_path, family):
    from mlxtune.export.gguf import export_gguf
    from mlxtune.formats.gguf import read_header

    r = export_gguf(models[family], tmp_path / f"{family}.gguf", "f32")
    text = r.modelfile.read_text()
    name, line, stops = MODELFILES[family]
    assert f"# TEMPLATE: the model's {name} chat template" in text
    assert line in text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert [x for x in text.splitlines() if x.startswith("PARAMETER")] == [f'PARAMETER stop "{s}"' for s in stops]
    written = read_header(r.path)[0]["tokenizer.chat_template"]
    original = FIXTURES[family]["chat_template"]
    assert written == with_thinking(original, False)  # thinking off by default where the template has the switch


def test_modelfile_thinks_when_asked(models, tmp_path):
    from mlxtune.export.gguf import export_gguf
    from mlxtune.formats.gguf import read_header

    r = export_gguf(models["qwen3"], tmp_path / "q.gguf", "f32", thinking=True)
    template = r.modelfile.read_text().split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert "<think>" not in template and "<|im_start|>assistant\n{{ end }}" in template
    assert read_header(r.path)[0]["tokenizer.chat_template"] == FIXTURES["qwen3"]["chat_template"]


def test_a_run_records_thinking_and_fuse_and_export_follow_it(models, tmp_path):
    from pathlib import Path

    from click.testing import CliRunner

    from mlxtune.cli import cli
    from mlxtune.training.run_schema import RunConfig

    def run(*args):
        r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.output

    notes = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"
    original = FIXTURES["qwen3"]["chat_template"]

    def fused_template(out):
        return json.loads((out / "tokenizer_config.json").read_text())["chat_template"]

    for thinking in (False, True):
        run_dir = tmp_path / f"run-{thinking}"
        run("lora", "--data", notes, "--model", models["qwen3"], "--iters", 1, "--backend", "numpy", "-o", run_dir, "--no-report", "--quiet", *(["--thinking"] if thinking else []))
        assert RunConfig.from_file(run_dir).thinking is thinking
        out = run("fuse", "--adapter", run_dir, "-o", tmp_path / f"fused-{thinking}", "--backend", "numpy")
        assert fused_template(tmp_path / f"fused-{thinking}") == (original if thinking else THINKING_OFF + original)
        assert ("thinking mode (enable_thinking) is off by default" in out) is not thinking
    # asked for, against the run's setting
    run("fuse", "--adapter", tmp_path / "run-True", "-o", tmp_path / "fused-off", "--backend", "numpy", "--no-thinking")
    assert fused_template(tmp_path / "fused-off") == THINKING_OFF + original
    run("export", "-f", "hf", "--adapter", tmp_path / "run-False", "-o", tmp_path / "hf-on", "--thinking")
    assert fused_template(tmp_path / "hf-on") == original


def test_llama3_without_a_system_header_keeps_the_plain_template(models):
    from mlxtune.export.ollama import LLAMA3, chat_format, go_template

    # Meta-Llama-3-8B-Instruct's template, as llama.cpp's tests/test-chat-template.cpp quotes it ("Llama-3")
    plain = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    assert chat_format(plain) is LLAMA3
    text = go_template(LLAMA3, load_tokenizer(models["llama3"]), plain, "")
    assert text == LLAMA3.template.replace("@NO_THINK@", "") and "Cutting Knowledge" not in text
