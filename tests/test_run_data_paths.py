"""A run's data is found by the path the run resolved, whatever the working directory of a later command.

``lora --data notes.jsonl`` records the relative path as given and the resolved
one; ``fuse -q`` (how much of the adapter survives re-quantization, measured on
the run's validation split) run from another directory must read the resolved
one, not skip its measure with "the run's validation data is not at hand".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import NOTES

from mlxtune.cli import cli

pytest.importorskip("mlx.core")


def test_fuse_q_from_another_directory_measures_on_the_runs_data(tmp_path, tiny_model, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    (work / "notes.jsonl").write_text("".join(NOTES.read_text().splitlines(keepends=True)[:40]))
    monkeypatch.chdir(work)
    r = CliRunner().invoke(cli, ["lora", "--data", "notes.jsonl", "--model", str(tiny_model), "--iters", "2", "--backend", "numpy", "-o", str(tmp_path / "run"), "--no-report"])
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(elsewhere)
    r = CliRunner().invoke(cli, ["fuse", "--adapter", str(tmp_path / "run"), "-o", str(tmp_path / "fused"), "-q"])
    assert r.exit_code == 0, r.output
    assert "validation data is not at hand" not in r.output
    assert "re-quantized to 4 bits keeps" in r.output and "on the run's validation split" in r.output
