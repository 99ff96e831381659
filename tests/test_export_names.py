"""Exports are named after the model, keep one Modelfile per GGUF, carry a model card, and share fuse's dtype.

Through the command line, as a user meets them: ``export -f gguf --adapter
runs/notes -o exp/`` writes ``exp/notes-<TYPE>.gguf`` named "notes" with
``exp/notes-<TYPE>.Modelfile`` beside it, and nothing names the temporary
directory the run was fused in; fuse, HF and PEFT outputs have a README.md
that says what the model is, what it was trained on and how, what was
measured, and how to load it with each tool; fuse and ``export -f hf`` store
the base model's dtype unless asked otherwise.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import pytest
import yaml
from click.testing import CliRunner

from mlxtune.cli import cli

NOTES = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"


def run(*args) -> str:
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def notes_run(tiny_model, tmp_path_factory) -> Path:
    """runs/notes: a short numpy run on the tiny model (float32)."""
    out = tmp_path_factory.mktemp("names") / "runs" / "notes"
    run("lora", "--data", NOTES, "--model", tiny_model, "--iters", 2, "--backend", "numpy", "-o", out, "--no-report")
    return out


def general(path: Path) -> dict:
    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items() if k.startswith("general.")}


def stored_dtypes(path: Path) -> set[str]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__" and k.endswith(".weight")}


def test_gguf_exports_into_a_folder_are_named_after_the_run(notes_run, tmp_path):
    exp = tmp_path / "exp"
    out = run("export", "-f", "gguf", "--adapter", notes_run, "-o", f"{exp}/", "--outtype", "q4_0")
    assert f"Ollama: {exp / 'notes-Q4_0.Modelfile'} (ollama create notes -f {exp / 'notes-Q4_0.Modelfile'})" in out
    assert general(exp / "notes-Q4_0.gguf")["general.name"] == "notes"
    # a second export, and another model, into the same folder: each keeps its own Modelfile
    run("export", "-f", "gguf", "--adapter", notes_run, "-o", exp, "--outtype", "q8_0")
    run("export", "-f", "gguf", "--adapter", notes_run, "-o", exp, "--name", "meeting-notes")
    assert sorted(p.name for p in exp.iterdir()) == [
        "meeting-notes-F16.Modelfile", "meeting-notes-F16.gguf", "notes-Q4_0.Modelfile", "notes-Q4_0.gguf", "notes-Q8_0.Modelfile", "notes-Q8_0.gguf",
    ]
    assert general(exp / "meeting-notes-F16.gguf")["general.name"] == "meeting-notes"
    for modelfile in exp.glob("*.Modelfile"):
        text = modelfile.read_text()
        assert f"FROM ./{modelfile.stem}.gguf" in text.splitlines() and f"-f {modelfile.name}" in text
        assert ".mlxtune-export" not in text and "fused into" in text
    for path in exp.glob("*.gguf"):
        assert b".mlxtune-export" not in path.read_bytes()


def _card(directory: Path) -> tuple[dict, str]:
    text = (directory / "README.md").read_text()
    front, body = text.split("---\n")[1], text.split("---\n", 2)[2]
    return yaml.safe_load(front), body


def _check_card(directory: Path, run_dir: Path, library: str) -> str:
    front, body = _card(directory)
    assert front["library_name"] == library and front["model_name"] == "notes" and "mlxtune" in front["tags"]
    final = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "val_loss" in line][-1]
    for expected in (
        "## Training", "**Base model**", f"**Data**: {NOTES}: 300 chat records", "**Adapter**: LoRA rank 8", "**Settings**: 2 steps, batch",
        "## Measured", f"| validation, final | step {final['step']} | {final['val_loss']:.3f} |",
        "## How to use", "mlx_lm", "from_pretrained", "llama-cli -m notes.gguf", "ollama create notes -f notes.Modelfile",
    ):
        assert expected in body, (directory.name, expected)
    assert ".mlxtune-export" not in body
    return body


def test_fuse_hf_and_peft_outputs_carry_the_same_model_card(notes_run, tiny_model, tmp_path):
    run("eval", "--adapter", notes_run, "--limit", 2, "--samples", 0, "--backend", "numpy")  # its losses join the card
    run("eval", "--adapter", notes_run, "--split", "train", "--limit", 2, "--samples", 0, "--backend", "numpy")  # records it trained on: said so
    run("fuse", "--adapter", notes_run, "-o", tmp_path / "fused", "--backend", "numpy")
    body = _check_card(tmp_path / "fused", notes_run, "mlx")
    assert 'load("' + str(tmp_path / "fused") + '")' in body and "| eval, valid split (2 records), tuned |" in body
    assert "| eval, train split (2 records, trained on 2 of them), tuned |" in body
    run("export", "-f", "hf", "--adapter", notes_run, "-o", tmp_path / "hf-model")
    assert 'AutoModelForCausalLM.from_pretrained("' + str(tmp_path / "hf-model") + '")' in _check_card(tmp_path / "hf-model", notes_run, "transformers")
    run("export", "-f", "peft", "--adapter", notes_run, "-o", tmp_path / "peft")
    assert "PeftModel.from_pretrained" in _check_card(tmp_path / "peft", notes_run, "peft")
    # an export of the fused model says the same: fuse kept the run's facts
    run("export", "-f", "hf", "--model", tmp_path / "fused", "-o", tmp_path / "hf-of-fused")
    _check_card(tmp_path / "hf-of-fused", notes_run, "transformers")
    run("export", "-f", "gguf", "--model", tmp_path / "fused", "-o", f"{tmp_path / 'g'}/")
    assert general(tmp_path / "g" / "notes-F16.gguf")["general.name"] == "notes"


def test_a_model_card_for_a_model_mlxtune_did_not_train(tiny_model, tmp_path):
    run("export", "-f", "hf", "--model", tiny_model, "-o", tmp_path / "hf", "--name", "tiny-llama")
    front, body = _card(tmp_path / "hf")
    assert front["model_name"] == "tiny-llama" and "## Training" not in body and f"{tiny_model} as a Hugging Face checkpoint, written by mlxtune" in body


def test_fuse_and_hf_export_store_the_base_dtype(tiny_model, tmp_path):
    """A float16 base: fuse and export -f hf --adapter both write float16 (the HF export wrote float32 before)."""
    base = tmp_path / "base16"
    run("convert", tiny_model, "-o", base, "--dtype", "float16")
    run_dir = tmp_path / "runs" / "notes"
    run("lora", "--data", NOTES, "--model", base, "--iters", 1, "--backend", "numpy", "-o", run_dir, "--no-report", "--val-every", 1)
    assert "(float16," in run("fuse", "--adapter", run_dir, "-o", tmp_path / "fused", "--backend", "numpy", "--name", "notes16")
    assert _card(tmp_path / "fused")[0]["model_name"] == "notes16"
    assert "Hugging Face checkpoint, float16" in run("export", "-f", "hf", "--adapter", run_dir, "-o", tmp_path / "hf")
    for d in (tmp_path / "fused", tmp_path / "hf"):
        assert json.loads((d / "config.json").read_text())["torch_dtype"] == "float16"
        assert stored_dtypes(d / "model.safetensors") == {"F16"}
    assert "Hugging Face checkpoint, float32" in run("export", "-f", "hf", "--adapter", run_dir, "-o", tmp_path / "hf32", "--dtype", "float32")


def test_a_bad_name_is_refused(notes_run, tmp_path):
    r = CliRunner().invoke(cli, ["export", "-f", "gguf", "--adapter", str(notes_run), "-o", str(tmp_path), "--name", "../x"])
    assert r.exit_code == 2 and "--name must be a plain name" in r.output
