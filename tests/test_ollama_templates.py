"""The Ollama TEMPLATE of each chat format, run by Go's text/template (Ollama's engine; tests/gotemplate/render.go), renders a
conversation as the model's own Jinja chat template does (transformers), less what it does not translate (dated headers).
Skipped where Go is not installed (apt-get install golang-go)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mlxtune.export.ollama import chat_format, go_template
from mlxtune.models.chat_template import no_think_text
from mlxtune.models.tokenizer import load_tokenizer

from tiny import chat_template_fixtures, make_chat_model

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed (apt-get install golang-go): Ollama's template engine is Go's text/template")
SYSTEM = {"role": "system", "content": "Answer in one line."}
TALK = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}, {"role": "user", "content": "And 3+3?"}]


def go_render(cases: list[dict], tmp_path: Path) -> list[str]:
    env = os.environ | {"GOCACHE": str(tmp_path / "gocache"), "GOPATH": str(tmp_path / "gopath"), "GOTOOLCHAIN": "local", "GO111MODULE": "off"}
    src = Path(__file__).parent / "gotemplate" / "render.go"
    r = subprocess.run(["go", "run", str(src)], input=json.dumps(cases), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.mark.parametrize("thinking", [False, True])
def test_every_format_renders_as_the_model_template(tmp_path, thinking):
    fixtures = chat_template_fixtures()
    cases, expected = [], []
    for family, fx in fixtures.items():
        model = make_chat_model(tmp_path / family, family)
        tok = load_tokenizer(model, thinking=thinking)  # off by default, as exports are
        template = fx["chat_template"]
        go = go_template(chat_format(template), tok, template, "" if thinking else no_think_text(tok, template))
        conversations = [TALK] if family in ("mistral", "smollm3") else [[SYSTEM] + TALK[:1], TALK, [SYSTEM] + TALK]
        for messages in conversations:  # Mistral v0.2's template refuses a system message; SmolLM3's writes its own header
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            text = text.removeprefix(fx["bos_token"] or "")  # the tokenizer adds the BOS in Ollama (add_bos_token)
            text = re.sub(r"(?m)^Today Date: .*\n", "", text)  # Llama 3.2's date of the day, which the TEMPLATE leaves out
            if family == "smollm3":  # its system header (metadata, reasoning mode, tool lists) is not translated
                text = re.sub(r"^<\|im_start\|>system\n.*?<\|im_end\|>\n", "", text, flags=re.S)
            cases.append({"template": go, "messages": messages})
            expected.append((family, text))
    for (family, text), got in zip(expected, go_render(cases, tmp_path)):
        assert got == text, family
