"""Families the mlx backend carries alone (phi3: Phi-3.5, Phi-4-mini), on a tiny model built by transformers.

The numpy backend and GGUF export do not implement phi3 yet (fused qkv and
gate_up projections, partial rotary, LongRoPE): mlxtune refuses them with one
line naming the command that works, and the mlx backend takes the model
through every other step. transformers is the reference: convert keeps its
loss (float32), a LoRA run on mlx fuses into a model whose HF export
transformers loads with the fused loss, and the PEFT export (the fused
``qkv_proj`` and ``gate_up_proj`` are one target each) loads in peft on the
transformers model with that same loss.
"""

from __future__ import annotations

import json

import pytest

from conftest import HAVE_MLX
from test_family_models import HAVE_TORCH, NOTES, SHAPE, mlx_loss, rel, run, transformers_loss
from tiny import make_tokenizer

pytestmark = [pytest.mark.skipif(not HAVE_TORCH, reason="torch, transformers and peft are not all installed"),
              pytest.mark.skipif(not HAVE_MLX, reason="mlx is not installed")]
LOSS_REL = 1e-4
# Phi-4-mini rotates 3/4 of each head; Phi-3.5 scales its rotary with LongRoPE. mlx-lm's LongRoPE always
# applies long_factor, transformers only beyond original_max_position_embeddings: the test's 32 tokens are beyond 16.
ROPES = {
    "partial rotary": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 16,
                 "short_factor": [1.0 + 0.1 * i for i in range(8)], "long_factor": [2.0 + 0.5 * i for i in range(8)]},
}


@pytest.fixture(scope="module", params=list(ROPES))
def phi3(request, tmp_path_factory):
    """(the transformers directory, its loss, mlxtune's float32 conversion)."""
    import torch
    import transformers

    from mlxtune.convert import convert

    root = tmp_path_factory.mktemp("phi3")
    src = root / "hf"
    vocab = make_tokenizer(src)
    rope = dict(ROPES[request.param])
    original = {"original_max_position_embeddings": rope["original_max_position_embeddings"]} if "original_max_position_embeddings" in rope else {}
    config = transformers.Phi3Config(vocab_size=vocab, **SHAPE, **original, num_hidden_layers=2, rope_parameters=rope)
    torch.manual_seed(0)
    model = transformers.Phi3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.5 if "embed" in name else p.shape[1] ** -0.5) if p.dim() == 2 else p.copy_(1 + 0.1 * torch.randn_like(p))
    model.save_pretrained(src)
    return src, transformers_loss(src), convert(str(src), root / "mlx", dtype="float32").path


def test_mlx_computes_the_transformers_loss(phi3):
    src, reference, converted = phi3
    assert json.loads((converted / "config.json").read_text())["model_type"] == "phi3"
    assert rel(mlx_loss(converted), reference) <= LOSS_REL


def test_greedy_generation_on_mlx_is_transformers(phi3):
    """mlx-lm's KV-cache generation on the converted model gives transformers' greedy tokens.

    The prompt is longer than the LongRoPE case's original context (16), where
    both use long_factor; below it transformers uses short_factor and mlx-lm
    still long_factor (mlx-lm's SuScaledRoPE), so the two differ there.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from mlxtune.inference import load, stream

    src, _, converted = phi3
    prompt = [5, 17, 42, 99, 7, 64, 3, 250, 11, 180, 33, 76, 121, 8, 200, 45, 9, 150, 61, 27]
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    loaded = load(str(converted), backend="mlx")
    loaded.eos_ids.clear()  # the tiny random model may emit its eos: compare all twelve tokens
    ours = [c.token for c in stream(loaded, prompt, max_tokens=12)]
    assert ours == out[0, len(prompt):].tolist()


def test_lora_fuse_hf_and_peft_export_on_mlx(phi3, tmp_path):
    src, reference, converted = phi3
    run("lora", "--data", NOTES, "--model", converted, "--iters", 3, "--lr", "5e-2", "--backend", "mlx", "-o", tmp_path / "run", "--no-report")
    run("fuse", "--adapter", tmp_path / "run", "-o", tmp_path / "fused", "--backend", "mlx", "--dtype", "float32")
    fused = mlx_loss(tmp_path / "fused")
    assert rel(fused, reference) > 20 * LOSS_REL  # the adapter does something
    run("export", "-f", "hf", "--model", tmp_path / "fused", "-o", tmp_path / "hf", "--dtype", "float32")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["Phi3ForCausalLM"]
    assert rel(transformers_loss(tmp_path / "hf"), fused) <= LOSS_REL
    out = run("export", "-f", "peft", "--adapter", tmp_path / "run", "-o", tmp_path / "peft", "--base-model", src)
    targets = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["target_modules"]
    assert {"qkv_proj", "gate_up_proj"} <= set(targets) and "qkv_proj" in out
    assert rel(transformers_loss(src, adapter=tmp_path / "peft"), fused) <= LOSS_REL


def test_numpy_backend_and_gguf_export_refuse_it_naming_what_works(phi3, tmp_path):
    _, _, converted = phi3
    out = run("lora", "--data", NOTES, "--model", converted, "--iters", 1, "--backend", "numpy", "-o", tmp_path / "run", ok=False)
    assert "'phi3'" in out and "--backend mlx" in out and not (tmp_path / "run").exists()
