"""export -f gguf-lora: a run's adapter alone, for llama.cpp and Ollama, held to llama.cpp (issue 16: acceptance 4).

For each family GGUF export writes (the tiny llama of tiny.py, and tiny
transformers models of the other families, built as test_family_models.py and
test_phi3.py build them): a short numpy LoRA run; mlxtune's f32 GGUF of
the base, of the run fused into it, and the adapter alone. llama.cpp
(llama-cpp-python) loads the base with the adapter, and its logits and loss
equal its own on the fused file's. Without llama.cpp, the file is read with
gguf-py: llama.cpp's keys, names and shapes, and base + alpha / r · lora_b ·
lora_a is the fused file's weight, tensor by tensor (the q/k permutation of
llama's attn_q and attn_k included). The Modelfile is FROM the base and
ADAPTER the file, with the template and stops of the fused model's Modelfile.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import llamacpp
from test_family_models import HAVE_TORCH, NOTES, TOKENS, convert, export_gguf, rel, run, save_family
from test_phi3 import ROPES, save_phi3
from tiny import make_tiny_model

from mlxtune.errors import AdapterError, ModelFormatError, UnsupportedModelError, UsageError
from mlxtune.export import export

pytestmark = pytest.mark.skipif(not HAVE_TORCH, reason="torch, transformers and peft are not all installed")

# The bound: llama.cpp on base + adapter against llama.cpp on the fused export, relative, float32.
# Measured (2026-12-07, llama-cpp-python 0.3.36): losses within 2.2e-6 (smollm3) and logits within 1.6e-4 of the largest logit.
LORA_REL = 1e-3
MERGED_ATOL = 1e-5  # base + alpha / r · lora_b · lora_a against the fused file's weight (float32 rounding only)
# family -> how the tiny base is made; "llama" is tiny.py's tiny llama-family test model
BUILDERS = ("llama", "qwen2", "qwen3", "smollm3", "gemma3", "phi3")
QUICK_RUN = ("--iters", 3, "--lr", "5e-2", "--batch-size", 2, "--val-every", 0, "--backend", "numpy", "--no-report")


def base_model(name: str, root: Path) -> Path:
    """The tiny base of ``name`` in MLX layout (float32)."""
    if name == "llama":
        return make_tiny_model(root / "mlx")
    if name == "phi3":
        save_phi3(root / "hf", ROPES["partial rotary"])
        src = root / "hf"
    else:
        src = save_family(root / "hf", name)
    return convert(str(src), root / "mlx", dtype="float32").path


@pytest.fixture(scope="module", params=BUILDERS)
def exported(request, tmp_path_factory):
    """(family, root): a numpy LoRA run, and f32 GGUFs of the base (base.gguf), the fused run (fused.gguf) and the adapter (lora.gguf)."""
    root = tmp_path_factory.mktemp(f"lora-{request.param}")
    base = base_model(request.param, root)
    run("lora", "--data", NOTES, "--model", base, *QUICK_RUN, "-o", root / "run")
    export_gguf(base, root / "base.gguf", "f32")
    run("export", "-f", "gguf", "--adapter", root / "run", "-o", root / "fused.gguf", "--outtype", "f32")
    run("export", "-f", "gguf-lora", "--adapter", root / "run", "-o", root / "lora.gguf", "--outtype", "f32")
    return request.param, root


def gguf_file(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, name -> float32 values in numpy's shape) of a GGUF file, read by gguf-py."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    md = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return md, {name: values for name, (_, values) in llamacpp.stored_tensors(path).items()}


def test_the_adapter_is_llama_cpps_lora_format_and_base_plus_it_is_the_fused_model(exported):
    name, root = exported
    md, lora = gguf_file(root / "lora.gguf")
    base_md, base = gguf_file(root / "base.gguf")
    _, fused = gguf_file(root / "fused.gguf")
    settings = json.loads((root / "run" / "adapter_config.json").read_text())["lora_parameters"]
    rank = settings["rank"]
    assert (md["general.type"], md["adapter.type"], md["general.architecture"]) == ("adapter", "lora", base_md["general.architecture"])
    assert md["adapter.lora.alpha"] == pytest.approx(settings["scale"] * rank)  # llama.cpp scales by alpha / r
    assert not any(k.startswith("tokenizer.") or k.startswith(base_md["general.architecture"] + ".") for k in md)
    pairs = sorted({n.rsplit(".", 1)[0] for n in lora})
    assert len(lora) == 2 * len(pairs) and pairs and all(n.startswith("blk.") for n in pairs)
    changed = set()
    for weight in pairs:
        a, b, w = lora[weight + ".lora_a"], lora[weight + ".lora_b"], base[weight]
        assert a.shape == (rank, w.shape[1]) and b.shape == (w.shape[0], rank), weight  # ggml: (in, r) and (r, out)
        merged = w + md["adapter.lora.alpha"] / rank * (b @ a)
        np.testing.assert_allclose(merged, fused[weight], rtol=0, atol=MERGED_ATOL, err_msg=weight)
        changed.add(weight)
    for tensor, values in base.items():  # what the adapter leaves alone is the fused model's
        if tensor not in changed:
            np.testing.assert_array_equal(values, fused[tensor], err_msg=tensor)
    assert any(np.abs(base[w] - fused[w]).max() > 100 * MERGED_ATOL for w in changed)  # the run changed something


@pytest.mark.llama_cpp
def test_llama_cpp_computes_the_fused_models_logits_from_base_and_adapter(exported):
    llama_cpp = llamacpp.need_llama_cpp()
    name, root = exported

    def logits(path: Path, lora: Path | None = None) -> list[np.ndarray]:
        """llama.cpp's logits (T, V) of each row of TOKENS, from the file ``path`` with the adapter ``lora``."""
        llm = llama_cpp.Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=2)
        out = []
        for row in TOKENS:
            llm.reset()
            llm.eval([int(t) for t in row])
            out.append(np.array(llm.scores[: len(row)], dtype=np.float64))
        llm.close()
        return out

    runs = {"fused": logits(root / "fused.gguf"), "base + adapter": logits(root / "base.gguf", root / "lora.gguf"), "base": logits(root / "base.gguf")}
    for fused, adapted in zip(runs["fused"], runs["base + adapter"]):
        scale = np.abs(fused).max()
        print(f"\n[{name}] logits: base + adapter vs fused max {np.abs(adapted - fused).max() / scale:.1e} (relative to max |logit| {scale:.1f})")
        assert np.abs(adapted - fused).max() <= LORA_REL * scale
    losses = {k: [llamacpp.mean_loss(z, [int(t) for t in row]) for z, row in zip(v, TOKENS)] for k, v in runs.items()}
    loss = {k: float(np.mean(v)) for k, v in losses.items()}
    print(f"[{name}] llama.cpp loss: " + ", ".join(f"{k} {v:.7f}" for k, v in loss.items()))
    assert rel(loss["base + adapter"], loss["fused"]) <= LORA_REL
    assert rel(loss["base"], loss["fused"]) > 5 * LORA_REL  # without the adapter llama.cpp computes another model


def test_the_modelfile_is_from_the_base_with_the_adapter_and_the_fused_models_template(exported):
    name, root = exported
    lines = (root / "lora.Modelfile").read_text().splitlines()
    assert "FROM ./mlx-F16.gguf" in lines and "ADAPTER ./lora.gguf" in lines  # the base, as export -f gguf --model BASE -o DIR/ names it
    assert any(line.startswith("# The base") and "mlxtune export -f gguf --model" in line for line in lines)

    def chat_part(text: str) -> str:
        return text[text.index("TEMPLATE") if "TEMPLATE" in text else text.index("PARAMETER"):]

    assert chat_part("\n".join(lines) + "\n") == chat_part((root / "fused.Modelfile").read_text())


# ------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A numpy LoRA run on tiny.py's llama, and the f32 GGUF of its base beside the exports."""
    root = tmp_path_factory.mktemp("lora-cli")
    base = make_tiny_model(root / "model")
    run("lora", "--data", NOTES, "--model", base, *QUICK_RUN, "-o", root / "notes")
    return root


def test_the_command_names_the_files_after_the_run_and_prints_the_ollama_command(tiny_run, tmp_path):
    out = run("export", "-f", "gguf-lora", "--adapter", tiny_run / "notes", "-o", f"{tmp_path}/")
    gguf_path, modelfile = tmp_path / "notes-F16-LoRA.gguf", tmp_path / "notes-F16-LoRA.Modelfile"
    assert f"Exported {gguf_path}: GGUF LoRA adapter F16 on 14 layers, r=8, alpha=16" in out
    assert f"ollama create notes -f {modelfile}" in out
    assert "note: the Modelfile's FROM is ./model-F16.gguf" in out and f"mlxtune export -f gguf --model {tiny_run / 'model'} -o {tmp_path}/" in out
    md, _ = gguf_file(gguf_path)
    assert md["general.name"] == "notes" and {kind for kind, _ in llamacpp.stored_tensors(gguf_path).values()} == {"F16"}
    # the base exported where the note says: the Modelfile's FROM is there, and a second export needs no note
    run("export", "-f", "gguf", "--model", tiny_run / "model", "-o", f"{tmp_path}/")
    assert (tmp_path / "model-F16.gguf").is_file()
    out = run("export", "-f", "gguf-lora", "--adapter", tiny_run / "notes", "-o", f"{tmp_path}/", "--force")
    assert "note:" not in out


def test_a_gguf_base_is_the_modelfiles_from(tiny_run, tmp_path):
    """--model BASE.gguf: the adapter is checked against it, and the Modelfile is FROM it (./ beside, else its path)."""
    base = tmp_path / "base.gguf"
    export_gguf(tiny_run / "model", base, "q8_0")
    run("export", "-f", "gguf-lora", "--adapter", tiny_run / "notes", "--model", base, "-o", tmp_path / "a.gguf")
    assert "FROM ./base.gguf" in (tmp_path / "a.Modelfile").read_text().splitlines()
    (tmp_path / "elsewhere").mkdir()
    run("export", "-f", "gguf-lora", "--adapter", tiny_run / "notes", "--model", base, "-o", tmp_path / "elsewhere" / "a.gguf")
    assert f"FROM {base.resolve()}" in (tmp_path / "elsewhere" / "a.Modelfile").read_text().splitlines()


def test_a_base_in_the_ollama_store_is_the_modelfiles_from_by_name(tiny_run, tmp_path, monkeypatch):
    """--model ollama:NAME (the base as `ollama pull` leaves it): the Modelfile is FROM NAME, which Ollama resolves itself."""
    from test_ollama_store import pull

    export_gguf(tiny_run / "model", tmp_path / "base.gguf", "f32")
    pull(tmp_path / "ollama-models", "tinybase:f32", tmp_path / "base.gguf")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama-models"))
    out = run("export", "-f", "gguf-lora", "--adapter", tiny_run / "notes", "--model", "ollama:tinybase:f32", "-o", tmp_path / "out" / "notes.gguf")
    lines = (tmp_path / "out" / "notes.Modelfile").read_text().splitlines()
    assert "FROM tinybase:f32" in lines and "ADAPTER ./notes.gguf" in lines and "note:" not in out


def test_what_llama_cpp_cannot_apply_is_refused_saying_what_works(tiny_run, tmp_path):
    dora = Path(shutil.copytree(tiny_run / "notes", tmp_path / "dora"))
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "fine_tune_type": "dora"}))
    with pytest.raises(AdapterError, match=r"DoRA adapter, which llama\.cpp \(and so Ollama\) cannot apply: export it fused into its base with 'mlxtune export -f gguf"):
        export("gguf-lora", tmp_path / "x.gguf", adapter=dora)
    with pytest.raises(UsageError, match="--outtype for gguf-lora must be f32 or f16, not 'q8_0'"):
        export("gguf-lora", tmp_path / "x.gguf", adapter=tiny_run / "notes", outtype="q8_0")
    other = Path(shutil.copytree(tiny_run / "model", tmp_path / "other"))
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "laguna"}))
    with pytest.raises(UnsupportedModelError, match=r"GGUF export does not write 'laguna' models \(it writes gemma3_text, gemma3, llama, mistral, phi3, qwen2, qwen3, smollm3; SmolLM is llama\): export the adapter with 'mlxtune export -f peft"):
        export("gguf-lora", tmp_path / "x.gguf", adapter=tiny_run / "notes", model=str(other))
    wider = make_tiny_model(tmp_path / "wider", intermediate_size=96)
    with pytest.raises(ModelFormatError, match=r"gate_proj\.lora_a \(64, 8\) and \.lora_b \(8, 128\) do not fit the base's model\.layers\.0\.mlp\.gate_proj\.weight \(96, 64\) at rank 8: the base is not"):
        export("gguf-lora", tmp_path / "x.gguf", adapter=tiny_run / "notes", model=str(wider))
    assert not list(tmp_path.glob("x*"))


def test_a_base_whose_tokenizer_fails_writes_neither_file(tiny_run, tmp_path):
    """The Modelfile is made before the adapter is written: a base whose tokenizer cannot be read fails the export
    with no .gguf left behind (nor a Modelfile that would not match it)."""
    base = tmp_path / "base"
    shutil.copytree(tiny_run / "model", base)
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        (base / name).unlink(missing_ok=True)
    run("export", "-f", "gguf-lora", "--adapter", tiny_run / "notes", "--model", base, "-o", f"{tmp_path}/out/", ok=False)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir()), list((tmp_path / "out").iterdir())
