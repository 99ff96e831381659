"""``mlxtune chat``: history through the chat template, commands, trimming, piped input, Ctrl-C at a terminal.

The tiny random model repeats the last token of its prompt (tied embeddings), so its
chat template here ends the assistant's opening with "Answer: the": it then answers
" the the the ...", visible text whose length only the token limits set.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import mlxtune
from mlxtune.chat import ChatSession, Sampling
from mlxtune.cli import cli
from mlxtune.inference import chat_prompt, load
from tiny import CHATML, make_chat_model, make_tiny_model

TRIM_NOTE = "no longer fits the model's context"


def the_model(path: Path, context: int) -> Path:
    """A tiny model with a ``context``-token context whose answers are " the the ..."."""
    d = make_tiny_model(path, max_position_embeddings=context)
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["chat_template"] = CHATML.replace("'<|im_start|>assistant\n'", repr("<|im_start|>assistant\nAnswer: the"))
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return d


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return the_model(tmp_path_factory.mktemp("chat") / "m", 1024)


@pytest.fixture(scope="module")
def small_context(tmp_path_factory) -> Path:
    return the_model(tmp_path_factory.mktemp("chat") / "m128", 128)


def chat(*args, input: str):
    return CliRunner().invoke(cli, ["chat", *map(str, args)], input=input)


def test_piped_lines_are_turns_and_stdout_holds_only_the_answers(model, backend):
    r = chat("--model", model, "--max-tokens", 6, "--backend", backend, input="hello\n\nhow are you?\n/quit\nnot asked\n")
    assert r.exit_code == 0, r.output
    answers = r.stdout.splitlines()
    assert len(answers) == 2 and all(a.split() == ["the"] * 6 for a in answers), r.stdout
    g = CliRunner().invoke(cli, ["generate", "--model", str(model), "--prompt", "hello", "--max-tokens", "6", "--backend", backend])
    assert g.exit_code == 0 and g.stdout.splitlines()[0] == answers[0]  # the first turn is generate's prompt


def test_an_adapter_answers_as_generate_does(model, small_data, tmp_path):
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(cli, ["lora", "--data", str(small_data), "--model", str(model), "-o", str(run_dir), "--iters", "3", "--lr", "1e-1", "--backend", "numpy", "--no-report"])
    assert r.exit_code == 0, r.output
    r = chat("--adapter", run_dir, "--max-tokens", 8, "--backend", "numpy", input="hello\n/settings\n")
    assert r.exit_code == 0, r.output
    g = CliRunner().invoke(cli, ["generate", "--adapter", str(run_dir), "--prompt", "hello", "--max-tokens", "8", "--backend", "numpy"])
    assert r.stdout.splitlines()[0] == g.stdout.splitlines()[0] and f"adapter      {run_dir}" in r.stdout
    base = chat("--model", model, "--max-tokens", 8, "--backend", "numpy", input="hello\n")
    assert base.stdout.splitlines()[0] != r.stdout.splitlines()[0]  # the adapter changed the answer


def test_history_reaches_the_next_prompt_and_reset_forgets_it(model):
    loaded = load(str(model), backend="numpy")
    session = ChatSession(loaded, Sampling(max_tokens=5), system="Be brief.")
    first = "".join(c.text for c in session.ask("hello"))
    assert first.split() == ["the"] * 5
    "".join(c.text for c in session.ask("and again?"))
    expected = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": first.strip()}, {"role": "user", "content": "and again?"}]
    assert session.last_prompt == chat_prompt(loaded.tokenizer, expected)
    text = loaded.tokenizer.decode(session.last_prompt)
    assert "user\nhello<|im_end|>" in text and "assistant\nthe the the the the<|im_end|>" in text
    assert session.command("/reset").name == "/reset" and session.history == []
    "".join(c.text for c in session.ask("fresh"))
    assert session.last_prompt == chat_prompt(loaded.tokenizer, [expected[0], {"role": "user", "content": "fresh"}])


def test_a_stopped_answer_keeps_what_it_said(model):
    """What the CLI does on Ctrl-C: close the answer's stream part way."""
    session = ChatSession(load(str(model), backend="numpy"), Sampling(max_tokens=500))
    chunks = session.reply("hello", session.prompt("hello")[0])
    said = "".join(next(chunks).text for _ in range(3))
    chunks.close()
    assert session.history == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": said.strip()}]
    chunks = session.reply("again", session.prompt("again")[0])
    chunks.close()  # stopped before its first word: the question goes too
    assert len(session.history) == 2


def test_settings_and_commands(model):
    r = chat("--model", model, "--system", "Be brief.", "--max-tokens", 3, "--temp", 0.5, "--top-p", 0.9, "--seed", 7, "--backend", "numpy",
             input="hello\n/settings\n/reset\n/settings\n/help\n")
    assert r.exit_code == 0, r.output
    s = {k: v.strip() for k, v in (line.split("  ", 1) for line in r.stdout.splitlines() if "  " in line and not line.startswith("/"))}
    assert s["model"] == str(model) and s["adapter"] == "none" and s["backend"].startswith("numpy")
    assert s["system"] == "Be brief." and s["max tokens"] == "3" and s["temperature"] == "0.5"
    assert s["top p"] == "0.9" and s["seed"] == "7" and s["context"] == "1024 tokens"
    assert [line.split()[-2:] for line in r.stdout.splitlines() if line.startswith("history")] == [["1", "turn"], ["0", "turns"]]
    assert "(conversation forgotten)" in r.stderr and "(conversation forgotten)" not in r.stdout
    assert all(c in r.stdout for c in ("/reset", "/settings", "/help", "/quit"))


def test_a_long_conversation_is_trimmed_from_its_oldest_turns(small_context):
    loaded = load(str(small_context), backend="numpy")
    session = ChatSession(loaded, Sampling(max_tokens=16))
    trims = []
    for i in range(8):
        ids, trim = session.prompt(f"question number {i}")
        "".join(c.text for c in session.reply(f"question number {i}", ids))
        trims.append(trim)
        assert len(ids) <= 128 - 16
    firsts = [t.first for t in trims if t is not None]
    assert firsts[0] and not any(firsts[1:]) and session.trimmed == sum(t.turns for t in trims if t)
    text = loaded.tokenizer.decode(session.last_prompt)
    assert "question number 7" in text and "question number 0" not in text and session.history[0]["role"] == "user"
    r = chat("--model", small_context, "--max-tokens", 16, "--backend", "numpy", input="".join(f"question number {i}\n" for i in range(8)))
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 8 and r.stderr.count(TRIM_NOTE) == 1, r.output


def test_a_message_longer_than_the_context_is_refused_and_the_session_goes_on(small_context):
    r = chat("--model", small_context, "--max-tokens", 16, "--backend", "numpy", input="word " * 200 + "\nhello\n/nonsense\nhello\n")
    assert r.exit_code == 2 and len(r.stdout.splitlines()) == 2, r.output
    assert "more than the 112 the model's context of 128 leaves" in r.stderr and "unknown command /nonsense" in r.stderr


@pytest.mark.parametrize("option, message", [(("--max-tokens", "0"), "--max-tokens must be positive"), (("--temp", "-1"), "--temp must be >= 0"),
                                             (("--top-p", "0"), "--top-p in (0, 1]"), (("--top-p", "1.5"), "--top-p in (0, 1]")])
def test_bad_sampling_options_fail_before_loading(option, message, tmp_path):
    r = chat("--model", tmp_path / "nothing-here", *option, input="hello\n")
    assert r.exit_code == 2 and message in r.stderr and r.stdout == "", r.output


def test_a_model_without_a_chat_template_is_refused(model, tmp_path):
    plain = Path(shutil.copytree(model, tmp_path / "plain"))
    config = json.loads((plain / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    r = chat("--model", plain, "--backend", "numpy", input="hello\n")
    assert r.exit_code == 2 and "has no chat template" in r.stderr and "generate --no-chat" in r.stderr, r.output


def test_a_template_that_refuses_a_system_message_fails_at_once_and_alternates_without_one(tmp_path):
    mistral = make_chat_model(tmp_path / "mistral", "mistral")  # its template raises on roles out of turn
    r = chat("--model", mistral, "--system", "Be brief.", "--backend", "numpy", input="hello\n")
    assert r.exit_code == 2 and "refuses this conversation" in r.stderr and "try without --system" in r.stderr and r.stdout == "", r.output
    r = chat("--model", mistral, "--max-tokens", 4, "--backend", "numpy", input="hello\nand again\nonce more\n")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 3, r.output


# ---------------------------------------------------------------- at a terminal (tmux)


class Pane:
    """A command in a tmux pane of its own server: keys in, the screen (with its scrollback) out."""

    def __init__(self, socket: Path, command: str, cwd: Path):
        self.tmux = ["tmux", "-S", str(socket)]
        subprocess.run(self.tmux + ["new-session", "-d", "-x", "100", "-y", "30", "-c", str(cwd), command], check=True)

    def keys(self, *keys: str) -> None:
        subprocess.run(self.tmux + ["send-keys", "-t", "0", *keys], check=True)

    def text(self) -> str:
        out = subprocess.run(self.tmux + ["capture-pane", "-p", "-J", "-S", "-", "-t", "0"], capture_output=True, text=True)
        return out.stdout.rstrip()

    def wait(self, ok, what: str, timeout: float = 90) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.text()
            if ok(text):
                return text
            time.sleep(0.02)
        raise AssertionError(f"no {what} after {timeout}s; the pane shows:\n{self.text()[-2000:]}")

    def close(self) -> None:
        subprocess.run(self.tmux + ["kill-server"], capture_output=True)


def at_prompt(text: str) -> bool:
    return text.splitlines()[-1].rstrip() == ">>>" if text else False


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux; bash scripts/setup.sh --test installs it)")
def test_ctrl_c_stops_the_answer_not_the_session(model, backend, tmp_path):
    env = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "MLXTUNE_"))} | {"PYTHONPATH": str(Path(mlxtune.__file__).parent.parent)}
    rc = tmp_path / "rc"
    run = " ".join(["env", *(shlex.quote(f"{k}={v}") for k, v in env.items()), shlex.quote(sys.executable), "-m", "mlxtune", "chat",
                    "--model", shlex.quote(str(model)), "--max-tokens", "100000", "--backend", backend])
    pane = Pane(tmp_path / "tmux.sock", f"{run}; echo $? > {shlex.quote(str(rc))}", cwd=tmp_path)  # not a folder with another mlxtune in it
    try:
        pane.wait(at_prompt, "prompt")
        pane.keys("hello", "Enter")
        pane.wait(lambda t: "the the the" in t, "answer")
        pane.keys("C-c")
        text = pane.wait(lambda t: "[stopped]" in t and at_prompt(t), "stopped answer and a new prompt")
        assert text.count("[stopped]") == 1
        pane.keys("and again?", "Enter")  # answered up to the end of the 1024-token context
        text = pane.wait(lambda t: at_prompt(t) and "and again?" in t.split("[stopped]")[-1], "second answer", timeout=120)
        assert "the the the" in text.split("and again?")[-1]
        pane.keys("/settings", "Enter")
        text = pane.wait(lambda t: "history" in t.split("/settings")[-1] and at_prompt(t), "settings")
        assert "history      2 turns" in text  # the stopped answer stayed
        pane.keys("C-c")  # at the prompt: the end
        deadline = time.monotonic() + 30
        while not (rc.exists() and rc.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rc.read_text().strip() == "0"
    finally:
        pane.close()


def test_help_has_examples_and_imports_no_mlx():
    out = subprocess.run([sys.executable, "-m", "mlxtune", "chat", "--help"], capture_output=True, text=True, check=True).stdout
    assert "Example" in out and "/reset" in out and "Ctrl-C" in out and "--system" in out
    probe = "import sys; import mlxtune.cli.chatting, mlxtune.chat; print('mlx.core' in sys.modules, 'mlx_lm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False False"
