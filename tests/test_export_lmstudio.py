"""``mlxtune export -f lmstudio``: the fused MLX model placed in LM Studio's models folder as mlxtune/<name>."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import needs_mlx
from mlxtune.backends.numpy.model import load_model
from mlxtune.backends.numpy.trainer import load_adapters
from mlxtune.cli import cli
from mlxtune.export import lmstudio
from tolerances import TINY_LOGITS, scaled_diff

NOTES = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"
TOKENS = np.array([[1, 5, 9, 23, 17, 4, 30, 2]], dtype=np.int32)


def run(*args, code=0):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == code, r.output
    return r.output


@pytest.fixture(scope="module")
def trained_run(tiny_model, tmp_path_factory):
    """A short numpy run on the tiny model (lora_b non-zero after two steps at a high learning rate)."""
    out = tmp_path_factory.mktemp("lmstudio") / "notes-run"
    run("lora", "--data", NOTES, "--model", tiny_model, "--iters", 2, "--lr", "1e-2", "--backend", "numpy", "-o", out, "--no-report")
    return out


def test_the_run_is_placed_as_lm_studio_lays_out_models(tiny_model, trained_run, tmp_path):
    models = tmp_path / "lms-models"
    out = run("export", "-f", "lmstudio", "--adapter", trained_run, "--lmstudio-dir", models)
    placed = models / "mlxtune" / "notes-run"
    assert f"Exported {placed}: MLX model for LM Studio, listed as mlxtune/notes-run (fused " in out, out
    assert [p.name for p in models.iterdir()] == ["mlxtune"] and [p.name for p in (models / "mlxtune").iterdir()] == ["notes-run"]  # no partial left
    files = {p.name for p in placed.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md", "mlxtune_fuse.json"} <= files, files
    card = (placed / "README.md").read_text()
    assert "library_name: mlx" in card and "My Models lists it as `mlxtune/notes-run`" in card and f'load("{placed}")' in card
    assert "fine-tuned with LoRA" in card

    # the placed model answers as base + adapter does (numpy reference)
    model, _ = load_model(placed)
    ref, _ = load_model(tiny_model)
    load_adapters(ref, trained_run)
    assert scaled_diff(model.forward(TOKENS), ref.forward(TOKENS)) <= TINY_LOGITS


@needs_mlx
def test_mlx_lm_loads_it_with_the_fused_models_logits(trained_run, tmp_path):
    import mlx.core as mx
    from mlx_lm import load

    run("export", "-f", "lmstudio", "--adapter", trained_run, "--lmstudio-dir", tmp_path / "lms", "--name", "tuned")
    run("fuse", "--adapter", trained_run, "-o", tmp_path / "fused")
    placed, _ = load(str(tmp_path / "lms" / "mlxtune" / "tuned"))
    fused, _ = load(str(tmp_path / "fused"))
    ours, theirs = placed(mx.array(TOKENS)), fused(mx.array(TOKENS))
    assert np.array_equal(np.array(ours), np.array(theirs))


def test_it_refuses_to_overwrite_without_force(trained_run, tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTUDIO_MODELS_DIR", str(tmp_path / "env-models"))
    run("export", "-f", "lmstudio", "--adapter", trained_run)
    placed = tmp_path / "env-models" / "mlxtune" / "notes-run"
    stamp = (placed / "model.safetensors").stat().st_mtime_ns
    out = run("export", "-f", "lmstudio", "--adapter", trained_run, code=1)
    assert f"Error: LM Studio already has a model mlxtune/notes-run ({placed}): pass --force to replace it, or --name to place this one beside it" in out
    assert (placed / "model.safetensors").stat().st_mtime_ns == stamp
    run("export", "-f", "lmstudio", "--adapter", trained_run, "--force")
    assert (placed / "model.safetensors").stat().st_mtime_ns != stamp
    assert sorted(p.name for p in placed.parent.iterdir()) == ["notes-run"]


def test_a_model_is_placed_as_it_is(tiny_model, trained_run, tmp_path):
    run("export", "-f", "lmstudio", "--model", tiny_model, "--lmstudio-dir", tmp_path / "m", "--name", "tiny")
    half = run("export", "-f", "lmstudio", "--adapter", trained_run, "--lmstudio-dir", tmp_path / "m", "--dtype", "float16")
    assert "(fused 14 adapter layers, float16)" in half and json.loads((tmp_path / "m" / "mlxtune" / "notes-run" / "config.json").read_text())["torch_dtype"] == "float16"
    placed = tmp_path / "m" / "mlxtune" / "tiny"
    assert (placed / "README.md").is_file() and json.loads((placed / "config.json").read_text()) == json.loads((tiny_model / "config.json").read_text())
    a, b = load_model(placed)[0], load_model(tiny_model)[0]
    assert np.array_equal(a.forward(TOKENS), b.forward(TOKENS))


def test_usage_errors(tiny_model, trained_run, tmp_path):
    out = run("export", "-f", "lmstudio", "--adapter", trained_run, "-o", tmp_path / "x", code=2)
    assert "--format lmstudio places the model in the tool's own models folder (another with --lmstudio-dir): drop -o" in out
    out = run("export", "-f", "lmstudio", "--model", tiny_model, "--dtype", "float16", "--lmstudio-dir", tmp_path / "l", code=2)
    assert "--dtype applies to a run fused for LM Studio; a model is placed as it is stored" in out
    out = run("export", "-f", "lmstudio", "--lmstudio-dir", tmp_path / "l", code=2)
    assert "--format lmstudio exports a model: pass --model DIR" in out
    out = run("export", "-f", "hf", "--adapter", trained_run, code=2)
    assert "--format hf writes to -o/--output: pass it" in out


def test_where_lm_studio_keeps_its_models(tmp_path, monkeypatch):
    monkeypatch.delenv("LMSTUDIO_MODELS_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert lmstudio.models_dir() == tmp_path / ".lmstudio" / "models"
    (tmp_path / ".cache" / "lm-studio").mkdir(parents=True)
    assert lmstudio.models_dir() == tmp_path / ".cache" / "lm-studio" / "models"  # an older install, only
    (tmp_path / lmstudio.HOME_POINTER).write_text(str(tmp_path / "moved") + "\n")
    assert lmstudio.models_dir() == tmp_path / "moved" / "models"
    monkeypatch.setenv("LMSTUDIO_MODELS_DIR", str(tmp_path / "env"))
    assert lmstudio.models_dir() == tmp_path / "env"
    assert lmstudio.models_dir(tmp_path / "given") == tmp_path / "given"
