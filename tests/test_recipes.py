"""Recipes: every shipped recipe loads and validates; broken ones name the file and key; --recipe drives lora."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxtune import recipes
from mlxtune.cli import cli
from mlxtune.training.config import TrainConfig
from mlxtune.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_recipes_are_shipped():
    assert {p.stem for p in recipes.available()} >= {"style", "summarize"}


@pytest.mark.parametrize("path", recipes.available(), ids=lambda p: p.stem)
def test_shipped_recipe_is_valid(path):
    r = recipes.load(path.stem)
    assert r.description and r.header and "Run:" in r.header and "mlxtune lora --recipe " + path.stem in r.header
    defaults = TrainConfig().to_dict()
    assert r.train and all(defaults[k] != v for k, v in r.train.items()), "a recipe lists only what differs from the defaults"
    TrainConfig(**r.train)  # every key is a real setting
    assert r.eval["task"] in recipes.TASKS
    example = next(line.split("data/", 1)[1].split()[0].rstrip("/") for line in r.header.splitlines() if "Example data: data/" in line)
    assert (REPO / "data" / example / "train.jsonl").is_file(), f"the recipe's example data data/{example} is missing"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("description: x\ntrain:\n  epochz: 2\n", ["bad.yaml", "epochz"]),
        ("description: x\ntrain:\n  epochs: two\n", ["bad.yaml", "epochs"]),
        ("description: x\ntrain:\n  learning_rate: [1]\n", ["bad.yaml", "learning_rate"]),
        ("description: x\neval:\n  task: translate\n", ["bad.yaml", "task"]),
        ("description: x\neval:\n  max_tokens: many\n", ["bad.yaml", "max_tokens"]),
        ("description: x\neval:\n  sample: 3\n", ["bad.yaml", "sample"]),
        ("description: x\ntraining:\n  epochs: 2\n", ["bad.yaml", "training"]),
        ("train:\n  epochs: 2\n", ["bad.yaml", "description"]),
        ("description: x\ntrain:\n  data: my.jsonl\n", ["bad.yaml", "data"]),
        ("description: x\ntrain: [1, 2]\n", ["bad.yaml", "train"]),
        ("description: x\n  train: :\n", ["bad.yaml", "YAML"]),
    ],
)
def test_broken_recipe_names_file_and_key(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        recipes.load(str(path))
    assert all(s in str(e.value) for s in expected), str(e.value)


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(ConfigError, match="style"):
        recipes.load("no-such-recipe")


def test_cli_recipes_lists_and_shows():
    out = CliRunner().invoke(cli, ["recipes"])
    assert out.exit_code == 0 and "style" in out.output and "summarize" in out.output
    out = CliRunner().invoke(cli, ["recipes", "summarize"])
    assert out.exit_code == 0 and "task=summarize" in out.output and "mlxtune eval" in out.output
    out = CliRunner().invoke(cli, ["recipes", "nope"])
    assert out.exit_code == 1 and "Error: no recipe named 'nope'" in out.output


def test_lora_with_recipe_flags_override(tiny_model, tmp_path):
    """The recipe's settings apply, a flag overrides one of them, and the run records the recipe."""
    run = tmp_path / "run"
    out = CliRunner().invoke(cli, ["lora", "--recipe", "summarize", "--data", str(REPO / "data" / "notes.jsonl"), "--model", str(tiny_model), "--iters", "2", "--learning-rate", "2e-4", "-o", str(run), "--no-report"])
    assert out.exit_code == 0, out.output
    cfg = json.loads((run / "adapter_config.json").read_text())["config"]
    recipe = recipes.load("summarize")
    assert cfg["recipe"] == "summarize" and cfg["learning_rate"] == 2e-4 and cfg["val_every"] == recipe.train["val_every"]
    assert cfg["iters"] == 2  # --iters replaces the recipe's epochs


def test_a_directory_named_like_a_recipe_does_not_hide_it(tmp_path, monkeypatch):
    """A run directory called 'style' in the working directory (runs are named after their data) is not a recipe file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "style").mkdir()
    assert recipes.load("style").path == recipes.RECIPES_DIR / "style.yaml"
