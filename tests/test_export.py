"""mlxtune export: Hugging Face checkpoints that transformers loads, and the export command's three formats."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlxtune.formats import safetensors as npio
from mlxtune.backends.numpy.model import load_model
from mlxtune.backends.numpy.trainer import load_adapters
from mlxtune.cli import cli
from mlxtune.convert import convert
from mlxtune.errors import OutputExistsError
from mlxtune.export.hf import export_hf
from mlxtune.formats.gguf import read_gguf
from tolerances import TINY_LOGITS, scaled_diff

NOTES = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"
TOKENS = np.array([[1, 5, 9, 23, 17, 4, 30, 2]], dtype=np.int32)
HAVE_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("peft") is not None


def run(*args, ok=True):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert (r.exit_code == 0) == ok, r.output
    return r.output


@pytest.fixture(scope="module")
def trained_run(tiny_model, tmp_path_factory):
    """A short numpy run on the tiny model (lora_b non-zero after two steps at a high learning rate)."""
    out = tmp_path_factory.mktemp("export") / "run"
    run("lora", "--data", NOTES, "--model", tiny_model, "--iters", 2, "--lr", "1e-2", "--backend", "numpy", "-o", out, "--no-report")
    return out


def test_hf_export_holds_the_same_weights(tiny_model, tmp_path):
    r = export_hf(tiny_model, tmp_path / "hf", dtype="float32")
    config = json.loads((r.path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "float32" and "quantization" not in config
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"} <= {p.name for p in r.path.iterdir()}
    _, source = npio.load_weights(tiny_model)
    exported, _ = npio.read_safetensors(r.path / "model.safetensors")
    source.pop("lm_head.weight", None)  # tied: not stored
    assert set(exported) == set(source) and all(np.array_equal(exported[k], source[k]) for k in source)
    with pytest.raises(OutputExistsError):
        export_hf(tiny_model, tmp_path / "hf")


def test_hf_export_then_convert_gives_the_same_logits(tiny_model, tmp_path):
    """The round trip HF export -> mlxtune convert: float32 exactly; float16 within its rounding."""
    before = load_model(tiny_model)[0].forward(TOKENS)
    for dtype, tol in (("float32", 0.0), ("float16", 2e-3)):
        hf = export_hf(tiny_model, tmp_path / f"hf-{dtype}", dtype=dtype).path
        back = convert(str(hf), tmp_path / f"back-{dtype}", dtype="float32").path
        assert scaled_diff(load_model(back)[0].forward(TOKENS), before) <= tol


@pytest.mark.skipif(not HAVE_TORCH, reason="torch and peft not installed")
def test_transformers_loads_the_export_and_peft_the_adapter(tiny_model, trained_run, tmp_path):
    """transformers reads the HF export unchanged; peft applies the exported adapter; both match our numpy forward."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hf = tmp_path / "hf"
    run("export", "-f", "hf", "--model", tiny_model, "-o", hf, "--dtype", "float32")
    peft_dir = tmp_path / "peft"
    out = run("export", "-f", "peft", "--adapter", trained_run, "-o", peft_dir, "--base-model", hf)
    assert "PEFT LoRA adapter" in out and (peft_dir / "adapter_model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    with torch.no_grad():
        theirs_base = base(torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()
        tuned = PeftModel.from_pretrained(base, peft_dir)
        theirs_tuned = tuned(torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()
    ours = load_model(tiny_model)[0]
    assert scaled_diff(theirs_base, ours.forward(TOKENS)) <= TINY_LOGITS
    load_adapters(ours, trained_run)
    ours_tuned = ours.forward(TOKENS)
    assert scaled_diff(theirs_tuned, ours_tuned) <= TINY_LOGITS
    assert scaled_diff(theirs_tuned, theirs_base) > 100 * TINY_LOGITS  # the adapter does something


def test_export_gguf_of_a_run_is_the_fused_model(tiny_model, trained_run, tmp_path):
    """export -f gguf --adapter: fused in float32, then written; read back it gives the fused logits; a Modelfile is beside it."""
    out = run("export", "-f", "gguf", "--adapter", trained_run, "-o", tmp_path / "tuned.gguf", "--outtype", "f32")
    assert "GGUF F32" in out and (tmp_path / "tuned.Modelfile").exists()
    assert not list(tmp_path.glob(".mlxtune-export-*")), "the temporary fused model is removed"
    g = read_gguf(tmp_path / "tuned.gguf", dense=True)
    from mlxtune.backends.numpy.model import ModelConfig, NumpyLlama

    from_gguf = NumpyLlama(ModelConfig.from_dict(g.config), {k: np.asarray(v, dtype=np.float32) for k, v in g.weights.items()})
    ours = load_model(tiny_model)[0]
    load_adapters(ours, trained_run)
    assert scaled_diff(from_gguf.forward(TOKENS), ours.forward(TOKENS)) <= TINY_LOGITS
    run("export", "-f", "gguf", "--adapter", trained_run, "-o", tmp_path / "tuned.gguf", ok=False)  # exists: refused without --force


def test_peft_adapter_works_where_a_run_does(tiny_model, trained_run, tmp_path):
    """generate and eval take a PEFT directory for --adapter, with the same result as the run it came from."""
    peft_dir = tmp_path / "peft"
    run("export", "-f", "peft", "--adapter", trained_run, "-o", peft_dir)
    args = ["generate", "--prompt", "tidy: ana to fix login", "--max-tokens", 12, "--backend", "numpy", "--model", tiny_model]
    assert run(*args, "--adapter", peft_dir) == run(*args, "--adapter", trained_run)


def test_export_usage_errors(tiny_model, tmp_path):
    assert "pass --adapter" in run("export", "-f", "peft", "--model", tiny_model, "-o", tmp_path / "p", ok=False)
    assert "pass --model" in run("export", "-f", "hf", "-o", tmp_path / "h", ok=False)
