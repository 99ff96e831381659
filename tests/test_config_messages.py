"""Errors that say what to do, through the CLI: a model's config.json that is not what it should be, and
a folder whose temporary names are all taken (a typed error with advice, not a traceback)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxtune.cli import cli


def error_line(*args) -> str:
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    return r.output.strip().splitlines()[-1]


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    return copy


def with_config(model: Path, **changes) -> Path:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | changes))
    return model / "config.json"


@pytest.mark.parametrize(
    "rope_parameters,words",
    [
        ([500000.0], ["rope_parameters is [500000.0], not a JSON object: write it as transformers does", '"rope_theta": 10000.0']),
        ({"full_attention": {"rope_type": "default", "rope_theta": 1e4}, "rope_theta": 1e4}, ["mixes per-layer-type entries (full_attention) with other fields (rope_theta): move those into each layer type's entry (e.g. rope_parameters.full_attention.rope_theta)"]),
        ({"full_attention": {"rope_type": "default", "rope_theta": 1e4}, "sliding_attention": 7}, ["rope_parameters.sliding_attention is 7, not a JSON object", "write it as the other layer types' entries are"]),
    ],
)
def test_a_rope_parameters_that_cannot_be_read_says_what_to_write(model_copy, tmp_path, rope_parameters, words):
    path = with_config(model_copy, rope_parameters=rope_parameters)
    line = error_line("convert", model_copy, "-o", tmp_path / "out")
    assert line.startswith(f"Error: {path}: ") and all(w in line for w in words), line
    assert not (tmp_path / "out").exists()


def test_a_config_json_that_is_not_an_object_says_so(model_copy, tmp_path):
    path = model_copy / "config.json"
    path.write_text("[1, 2]")
    line = error_line("convert", model_copy, "-o", tmp_path / "out")
    assert line == f"Error: {path} holds an array, not a model's configuration (a JSON object): replace it with a good copy"
    path.write_text('{"model_type": "llama",')
    assert f"Error: {path} is not valid JSON (" in error_line("convert", model_copy, "-o", tmp_path / "out")


def test_no_free_temporary_name_is_an_error_with_advice(tiny_model, tmp_path, monkeypatch):
    import mlxtune.fsutil as fsutil

    monkeypatch.setattr(fsutil.secrets, "token_hex", lambda n: "00000000")
    (tmp_path / ".out.partial-00000000").mkdir()  # left by an interrupted command, and drawn every time
    line = error_line("convert", tiny_model, "-o", tmp_path / "out")
    assert line == (f"Error: {tmp_path} holds no unused temporary name .out.partial-* (100 random names tried): "
                    "remove the .out.partial-* leftovers of interrupted commands there, or write elsewhere")
