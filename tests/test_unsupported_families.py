"""Families mlx-lm runs that the numpy backend or GGUF export does not (gemma2, granite, olmo2): every command that
refuses says so in one typed line naming the family and what works instead (--backend mlx; export -f hf + llama.cpp)."""

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxtune.backends import choose_backend
from mlxtune.cli import cli
from mlxtune.errors import UnsupportedModelError

from gguf_fixtures import write_tiny_gguf

NOTES = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"
MLX_LM_ONLY = ["gemma2", "granite", "olmo2"]  # model types mlx-lm has a model file for, the numpy backend and GGUF export none


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(r) -> str:
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    return lines[0]


@pytest.fixture(scope="module")
def other(tiny_model, tmp_path_factory):
    """model type -> a model directory of that type (the tiny llama's files under another model_type)."""
    root = tmp_path_factory.mktemp("other")
    out = {}
    for model_type in MLX_LM_ONLY:
        shutil.copytree(tiny_model, root / model_type)
        config = json.loads((root / model_type / "config.json").read_text())
        (root / model_type / "config.json").write_text(json.dumps(config | {"model_type": model_type, "architectures": []}))
        out[model_type] = root / model_type
    return out


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    assert run("lora", "--data", NOTES, "--model", tiny_model, "--iters", 1, "--backend", "numpy", "-o", out, "--no-report", "--quiet").exit_code == 0
    return out


def numpy_refusal(model_type: str) -> str:
    # the families it runs are listed in registry order (other families may come before llama)
    return rf"Error: the numpy backend does not implement '{model_type}' models \(it runs [^)]*\bllama\b[^)]*\): "


@pytest.mark.parametrize("model_type", MLX_LM_ONLY)
def test_every_numpy_command_names_the_family_and_the_mlx_backend(other, run_dir, tmp_path, model_type):
    model = other[model_type]
    commands = {
        "generate": ["generate", "--backend", "numpy", "-m", model, "-p", "hi"],
        "lora": ["lora", "--backend", "numpy", "-m", model, "-d", NOTES, "-o", tmp_path / "run", "--quiet"],
        "plan": ["plan", "--backend", "numpy", "-m", model],
        "eval": ["eval", "--backend", "numpy", "--model", model, "--data", NOTES],
        "fuse": ["fuse", "--backend", "numpy", "--adapter", run_dir, "-m", model, "-o", tmp_path / "fused"],
    }
    for name, args in commands.items():
        line = one_line_error(run(*args))
        assert re.match(numpy_refusal(model_type), line), (name, line)
        assert line.endswith("use --backend mlx, which runs every model mlx-lm supports"), (name, line)
    assert not (tmp_path / "run").exists() and not (tmp_path / "fused").exists()


def test_auto_without_mlx_says_to_install_it():
    with pytest.raises(UnsupportedModelError, match=r"does not implement 'olmo2' models .*install mlx \(pip install 'mlx\[cpu\]' mlx-lm.*--backend mlx$"):
        choose_backend("auto", mlx_ok=False, model_type="olmo2")
    with pytest.raises(UnsupportedModelError, match=r"does not implement gemma4 models \(model type 'gemma4_text'\)"):  # a family mlxtune knows by name
        choose_backend("numpy", mlx_ok=True, model_type="gemma4_text")
    assert choose_backend("numpy", mlx_ok=True, model_type="llama") == "numpy"


@pytest.mark.parametrize("model_type", MLX_LM_ONLY)
def test_gguf_export_names_the_family_and_the_hf_route(other, tmp_path, model_type):
    line = one_line_error(run("export", "-f", "gguf", "--model", other[model_type], "-o", tmp_path / "x.gguf"))
    assert re.match(rf"Error: GGUF export does not write '{model_type}' models \(it writes [^)]*\bllama\b", line), line
    assert line.endswith("run mlxtune export -f hf with the same --model or --adapter, then llama.cpp's convert_hf_to_gguf.py on that directory")
    assert not (tmp_path / "x.gguf").exists()


def test_gguf_import_names_the_architecture_and_the_hf_model(tmp_path):
    write_tiny_gguf(tmp_path / "g.gguf", arch="gemma2")
    line = one_line_error(run("convert", tmp_path / "g.gguf", "-o", tmp_path / "out"))
    assert re.search(r"g\.gguf: GGUF architecture 'gemma2' is not supported \(supported: [^)]*\bllama\b", line), line
    assert line.endswith("use the original Hugging Face model instead (--model HUB_ID_OR_DIR, or mlxtune convert HUB_ID_OR_DIR), which the mlx backend runs")
