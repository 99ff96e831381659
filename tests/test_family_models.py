"""Each model family on a tiny model built by transformers, through every step (issue 15: item 1, acceptance 2).

The reference is transformers itself: a tiny random model of the family's own
class, saved by ``save_pretrained`` (transformers 5's config layout, and the
same config rewritten as transformers 4 wrote it), and the loss it computes on
a batch. ``FAMILIES`` says, per family, which transformers classes build it and
what its tiny config sets; every test runs over it: convert, the loss on both
backends, LoRA and fuse, HF export (transformers loads it), PEFT export (peft
loads it), GGUF export in each outtype with llama.cpp's architecture and tensor
names, GGUF import back, and llama.cpp on the f32 export. Gradient checks and
mlx parity of the same families are in ``test_numpy_model.py`` and ``test_parity.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import llamacpp
from conftest import HAVE_MLX
from mlxtune.backends.numpy.model import ModelConfig, NumpyLlama, load_model
from mlxtune.backends.numpy.trainer import load_adapters
from mlxtune.cli import cli
from mlxtune.convert import convert
from mlxtune.errors import UnsupportedModelError
from mlxtune.export.gguf import export_gguf
from mlxtune.formats.gguf import read_gguf, read_header
from mlxtune.models import families
from tiny import make_tokenizer
from tolerances import TINY_LOGITS, scaled_diff

HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "peft"))
pytestmark = pytest.mark.skipif(not HAVE_TORCH, reason="torch, transformers and peft are not all installed")

# family -> (transformers config class, model class, what its tiny config sets beyond SHAPE)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"num_hidden_layers": 2}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"num_hidden_layers": 2, "sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_hidden_layers": 2}),  # biases on q, k and v
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 24, "num_hidden_layers": 2}),  # head_dim not 64 / 4
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", {"num_hidden_layers": 4}),  # its 4th layer has no rope
    # every 3rd layer global (llama.cpp's default: 6), the others within 8 positions with their own rope base (not 10000)
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "num_hidden_layers": 4, "head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 100000.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0}}}),
}
SHAPE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
             max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
ROPE = {"rope_type": "default", "rope_theta": 100000.0}
TOKENS = np.random.default_rng(0).integers(3, 300, size=(2, 33)).astype(np.int32)
INPUTS, TARGETS, MASK = TOKENS[:, :-1], TOKENS[:, 1:], np.ones((2, 32), np.float32)
LOSS_REL = 1e-4  # the issue's bound: mlxtune's loss against transformers', relative, float32
NOTES = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"


def run(*args, ok=True):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert (r.exit_code == 0) == ok, r.output
    return r.output


def save_family(src: Path, family: str, **overrides) -> Path:
    """A tiny random model of ``family`` built and saved by transformers (float32), with tiny.py's tokenizer."""
    import torch
    import transformers

    config_class, model_class, sets = FAMILIES[family]
    vocab = make_tokenizer(src)
    config = getattr(transformers, config_class)(vocab_size=vocab, **SHAPE, **{"rope_parameters": dict(ROPE), **sets, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():  # weights of tiny.py's scale, so that logits are O(10) and every part of the block matters
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5 if "embed" in name else p.shape[1] ** -0.5)
            else:  # norm weights near 1 (Gemma's are stored as w - 1: near 0)
                p.copy_((0 if "gemma" in model_class.lower() else 1) + 0.1 * torch.randn_like(p))
    model.save_pretrained(src)
    return src


def as_transformers4(src: Path, dst: Path) -> Path:
    """The same model with config.json as transformers 4 wrote it: rope_theta and rope_scaling, no rope_parameters.

    Gemma 3's: the sliding-window layers' base as rope_local_base_freq, their places as sliding_window_pattern.
    """
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    params = config.pop("rope_parameters")
    types = config.pop("layer_types", None)
    if "full_attention" in params:
        config["rope_local_base_freq"], params = params["sliding_attention"]["rope_theta"], params["full_attention"]
        config.pop("_sliding_window_pattern", None)
        config["sliding_window_pattern"] = types.index("full_attention") + 1
    config.update(rope_theta=params["rope_theta"], rope_scaling=None)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def transformers_loss(model_dir: Path, adapter: Path | None = None) -> float:
    """transformers' mean cross-entropy of TOKENS (labels shifted by the model), with a PEFT adapter if given."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        ids = torch.tensor(TOKENS, dtype=torch.long)
        return float(model(input_ids=ids, labels=ids).loss)


def numpy_loss(model: NumpyLlama) -> float:
    return float(model.loss(INPUTS, TARGETS, MASK)[0])


def mlx_loss(model_dir: Path) -> float:
    import mlx.core as mx

    from mlxtune.backends.mlx.trainer import load_model as load_mlx_model, loss_fn

    model, _ = load_mlx_model(model_dir)
    return float(loss_fn(model, mx.array(INPUTS), mx.array(TARGETS), mx.array(MASK))[0])


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(name, the transformers directory, transformers' loss, the directory converted by mlxtune in float32)."""
    root = tmp_path_factory.mktemp(request.param)
    src = save_family(root / "hf", request.param)
    return request.param, src, transformers_loss(src), convert(str(src), root / "mlx", dtype="float32").path


# ------------------------------------------------------------------ convert, both backends


@pytest.mark.parametrize("layout", ["transformers5", "transformers4"])
def test_loss_equals_transformers_on_both_backends(family, layout, tmp_path):
    name, src, reference, _ = family
    if layout == "transformers4":
        src = as_transformers4(src, tmp_path / "t4")
    converted = convert(str(src), tmp_path / "mlx", dtype="float32").path
    saved = json.loads((converted / "config.json").read_text())
    assert families.get(saved["model_type"]).name == name and float(saved["rope_theta"]) == ROPE["rope_theta"]
    losses = {"numpy": numpy_loss(load_model(converted)[0]), "numpy on the HF directory": numpy_loss(load_model(src)[0])}
    if HAVE_MLX:
        losses["mlx"] = mlx_loss(converted)
    print(f"\n[{name}, {layout}] transformers {reference:.7f}; " + ", ".join(f"{k} {v:.7f} ({rel(v, reference):.1e})" for k, v in losses.items()))
    assert all(rel(v, reference) <= LOSS_REL for v in losses.values())


# family -> (q/k norms, head_dim, rotary per layer, biases on q/k/v) as mlx-lm reads the tiny config
COMPUTES = {"qwen3": (True, 24, None, False), "smollm3": (False, 16, (True, True, True, False), False), "qwen2": (False, 16, None, True),
            "gemma3": (True, 16, None, False)}


def test_the_family_is_what_numpy_computes(family):
    """The config as mlx-lm reads it: q/k norms and head_dim (Qwen3), the layers without rope (SmolLM3), q/k/v biases (Qwen2), Gemma 3's."""
    name, _, _, converted = family
    cfg = load_model(converted)[0].config
    assert (cfg.qk_norm, cfg.head_dim, cfg.rope_layers, cfg.attention_bias) == COMPUTES.get(name, (False, 16, None, False))
    if name == "gemma3":
        assert (cfg.sandwich_norms, cfg.norm_offset, cfg.embed_scale, cfg.activation) == (True, 1.0, 8.0, "gelu_tanh")
        assert (cfg.sliding_window, cfg.sliding_layers, cfg.local_rope_theta, cfg.attention_scale()) == (8, (True, True, False, True), 1000.0, 16**-0.5)


def computed_alike_but_not_exported(src: Path, tmp_path: Path, refusal: str) -> None:
    """Both backends compute ``src`` as transformers does, and GGUF export refuses it with ``refusal`` (llama.cpp would not)."""
    reference = transformers_loss(src)
    assert rel(numpy_loss(load_model(src)[0]), reference) <= LOSS_REL
    if HAVE_MLX:
        assert rel(mlx_loss(src), reference) <= LOSS_REL
    with pytest.raises(UnsupportedModelError, match=refusal):
        export_gguf(src, tmp_path / "x.gguf", "f32")


def test_the_layers_without_rope_are_the_ones_config_json_names(tmp_path):
    """SmolLM3 with its own no_rope_layers (not every 4th): transformers and both backends agree; GGUF export refuses it."""
    src = save_family(tmp_path / "hf", "smollm3", no_rope_layers=[0, 1, 0, 1])
    computed_alike_but_not_exported(src, tmp_path, r"no rope in layers 0, 2, but llama\.cpp's smollm3 model has none in layers 3")


def test_gemma3_attention_scale_is_query_pre_attn_scalar(tmp_path):
    """Gemma 3 with query_pre_attn_scalar 24, not head_dim 16: transformers and both backends agree; GGUF export refuses it
    (llama.cpp scales by head_dim whatever the file says)."""
    src = save_family(tmp_path / "hf", "gemma3", query_pre_attn_scalar=24)
    computed_alike_but_not_exported(src, tmp_path, r"query_pre_attn_scalar = 24, but llama\.cpp's gemma3 model uses 16")


def save_multimodal(src: Path) -> Path:
    """A tiny multimodal Gemma 3 (Gemma3ForConditionalGeneration: text_config, weights under language_model., a vision tower)."""
    import torch
    import transformers

    vocab = make_tokenizer(src)
    text = {**SHAPE, **FAMILIES["gemma3"][2], "vocab_size": vocab}
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=5, boi_token_index=6, eoi_token_index=7)
    torch.manual_seed(0)
    model = transformers.Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name:
                p.normal_(0, 0.5 if "embed" in name else p.shape[1] ** -0.5) if p.dim() == 2 else p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(src)
    return src


def test_gemma3_multimodal_checkpoints_text_part_through_every_step(tmp_path):
    """The multimodal checkpoint's text model (config in text_config, weights under language_model.): transformers' loss on
    both backends, adapters named as mlx-lm names them, fuse on either backend, GGUF export of the text model."""
    import torch
    import transformers

    src = save_multimodal(tmp_path / "hf")
    with torch.no_grad():
        model = transformers.Gemma3ForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
        ids = torch.tensor(TOKENS, dtype=torch.long)
        reference = float(model(input_ids=ids, labels=ids).loss)
    converted = convert(str(src), tmp_path / "mlx", dtype="float32").path
    assert json.loads((converted / "config.json").read_text())["model_type"] == "gemma3"
    losses = {"numpy": numpy_loss(load_model(converted)[0]), "numpy on the HF directory": numpy_loss(load_model(src)[0])}
    if HAVE_MLX:
        losses["mlx"] = mlx_loss(converted)
    print(f"\n[gemma3 multimodal] transformers {reference:.7f}; " + ", ".join(f"{k} {v:.7f} ({rel(v, reference):.1e})" for k, v in losses.items()))
    assert all(rel(v, reference) <= LOSS_REL for v in losses.values())
    out = tmp_path / "run"
    run("lora", "--data", NOTES, "--model", converted, "--iters", 3, "--lr", "5e-2", "--backend", "numpy", "-o", out, "--no-report")
    from mlxtune.formats.safetensors import read_safetensors_header

    names = list(read_safetensors_header(out / "adapters.safetensors")[0])
    assert names and all(n.startswith("language_model.model.layers.") for n in names)  # mlx-lm's names for this model
    tuned = load_model(converted)[0]
    load_adapters(tuned, out)
    expected = numpy_loss(tuned)
    assert rel(expected, reference) > 20 * LOSS_REL
    for backend in ["numpy"] + (["mlx"] if HAVE_MLX else []):
        run("fuse", "--adapter", out, "-o", tmp_path / f"fused-{backend}", "--backend", backend, "--dtype", "float32")
        assert rel(numpy_loss(load_model(tmp_path / f"fused-{backend}")[0]), expected) <= LOSS_REL, backend
    if HAVE_MLX:
        assert rel(mlx_loss(tmp_path / "fused-numpy"), expected) <= LOSS_REL
    run("export", "-f", "peft", "--adapter", out, "-o", tmp_path / "peft", "--base-model", src)
    from peft import PeftModel

    with torch.no_grad():
        peft_model = PeftModel.from_pretrained(model, tmp_path / "peft").eval()
        assert rel(float(peft_model(input_ids=ids, labels=ids).loss), expected) <= LOSS_REL
    r = export_gguf(tmp_path / "fused-numpy", tmp_path / "m.gguf", "f32")
    assert read_header(r.path)[0]["general.architecture"] == "gemma3" and any("multimodal" in n for n in r.notes)
    assert rel(numpy_loss(gguf_model(r.path)), expected) <= LOSS_REL


# ------------------------------------------------------------------ LoRA, fuse, HF and PEFT export


@pytest.fixture(scope="module")
def tuned(family, tmp_path_factory):
    """A short numpy LoRA run on the family's converted model, and its loss with the adapter."""
    name, src, _, converted = family
    out = tmp_path_factory.mktemp(f"{name}-run") / "run"
    run("lora", "--data", NOTES, "--model", converted, "--iters", 3, "--lr", "5e-2", "--backend", "numpy", "-o", out, "--no-report")
    model = load_model(converted)[0]
    load_adapters(model, out)
    return out, numpy_loss(model)


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_fuse_and_hf_export_load_in_transformers_with_the_same_loss(family, tuned, backend, tmp_path):
    if backend == "mlx" and not HAVE_MLX:
        pytest.skip("mlx is not installed")
    name, _, base_loss, _ = family
    run_dir, expected = tuned
    assert rel(expected, base_loss) > 20 * LOSS_REL  # the adapter does something
    run("fuse", "--adapter", run_dir, "-o", tmp_path / "fused", "--backend", backend, "--dtype", "float32")
    assert rel(numpy_loss(load_model(tmp_path / "fused")[0]), expected) <= LOSS_REL
    run("export", "-f", "hf", "--model", tmp_path / "fused", "-o", tmp_path / "hf", "--dtype", "float32")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [FAMILIES[name][1]]
    assert rel(transformers_loss(tmp_path / "hf"), expected) <= LOSS_REL


def test_peft_export_loads_in_peft_with_the_same_loss(family, tuned, tmp_path):
    _, src, _, _ = family
    run_dir, expected = tuned
    run("export", "-f", "peft", "--adapter", run_dir, "-o", tmp_path / "peft", "--base-model", src)
    assert rel(transformers_loss(src, adapter=tmp_path / "peft"), expected) <= LOSS_REL


# ------------------------------------------------------------------ GGUF export and import


def gguf_model(path: Path) -> NumpyLlama:
    g = read_gguf(path, dense=True)
    return NumpyLlama(ModelConfig.from_dict(g.config), {k: np.asarray(v, dtype=np.float32) for k, v in g.weights.items()})


ARCH = {name: families.get(name).gguf_arch for name in FAMILIES}  # llama.cpp's architecture of each family
IMPORTED_AS = {"mistral": "llama", "gemma3": "gemma3_text"}  # a GGUF says "llama" for both; gemma3 comes back as the text model


# outtype -> the loss of the file read back, relative to transformers' (f32 is the issue's 1e-4; the rest round weights)
OUTTYPES = {"f32": LOSS_REL, "f16": 1e-3, "q8_0": 1e-2, "q4_0": 3e-2}  # measured: f16 6e-5, q8_0 1.2e-3, q4_0 7e-3


@pytest.mark.parametrize("outtype", list(OUTTYPES))
def test_gguf_export_has_llama_cpps_names_and_reads_back(family, outtype, tmp_path):
    name, _, reference, converted = family
    r = export_gguf(converted, tmp_path / "m.gguf", outtype)
    md, tensors = read_header(r.path)
    names = {t.name: t for t in tensors}
    arch = ARCH[name]
    assert md["general.architecture"] == arch and md["tokenizer.ggml.model"] == "gpt2"
    assert md[f"{arch}.block_count"] == load_model(converted)[0].config.num_hidden_layers
    if name == "qwen3":  # head_dim 24 is not 64 / 4: written, as llama.cpp's converter does
        assert md["qwen3.attention.key_length"] == md["qwen3.attention.value_length"] == 24
        assert names["blk.1.attn_q_norm.weight"].shape == names["blk.1.attn_k_norm.weight"].shape == (24,)
        assert names["blk.1.attn_q_norm.weight"].type == "F32"
    elif name == "gemma3":  # llama.cpp's Gemma3Model: the norms around each half, the sliding window, its pattern and rope base
        assert md["gemma3.attention.sliding_window"] == 8 and md["gemma3.rope.freq_base"] == 100000.0
        assert md["gemma3.attention.sliding_window_pattern"] == 3 and md["gemma3.rope.freq_base_swa"] == 1000.0  # not llama.cpp's 6, 10000
        assert any("llama.cpp's defaults" in n for n in r.notes)
        for n in ("attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            assert names[f"blk.3.{n}.weight"].type == "F32", n
        assert "output.weight" not in names  # tied
    else:
        assert not any("norm" in n and "attn_q" in n for n in names)
    assert names["blk.0.attn_q.weight"].type == {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}[outtype]
    loss = numpy_loss(gguf_model(r.path))
    print(f"\n[{name} {outtype}] read back {loss:.7f} vs transformers {reference:.7f}: {rel(loss, reference):.1e}")
    assert rel(loss, reference) <= OUTTYPES[outtype]


def test_gguf_import_is_the_inverse_of_the_export(family, tmp_path):
    """The f32 GGUF converted back (mlxtune's GGUF import): the same config as mlx-lm reads it (Gemma 3's sliding window,
    its pattern and rope base included), the same loss on both backends and in transformers after HF export.

    Mistral comes back as llama: llama.cpp has one architecture for both, and they compute alike.
    """
    name, _, reference, converted = family
    export_gguf(converted, tmp_path / "m.gguf", "f32")
    back = convert(str(tmp_path / "m.gguf"), tmp_path / "back", dtype="float32").path
    ours, theirs = load_model(converted)[0].config, load_model(back)[0].config
    assert theirs == dataclasses.replace(ours, model_type=IMPORTED_AS.get(name, name))
    losses = {"numpy": numpy_loss(load_model(back)[0])}
    if HAVE_MLX:
        losses["mlx"] = mlx_loss(back)
    # the config.json fields the GGUF omits (Gemma 3's pattern and rope base, the pad token), as transformers reads them
    run("export", "-f", "hf", "--model", back, "-o", tmp_path / "hf", "--dtype", "float32")
    losses["transformers, HF export"] = transformers_loss(tmp_path / "hf")
    assert all(rel(v, reference) <= LOSS_REL for v in losses.values()), losses


@pytest.mark.llama_cpp
def test_llama_cpp_computes_the_same_loss_on_the_f32_export(family, tmp_path):
    llamacpp.need_llama_cpp()
    name, _, reference, converted = family
    path = export_gguf(converted, tmp_path / "m.gguf", "f32").path
    loss = float(np.mean([llamacpp.llama_cpp_loss(path, [int(t) for t in row]) for row in TOKENS]))  # rows of equal length: the batch's mean
    print(f"\n[{name}] llama.cpp {loss:.7f} vs transformers {reference:.7f}: {rel(loss, reference):.1e}")
    assert rel(loss, reference) <= LOSS_REL


@pytest.mark.llama_cpp
def test_gguf_written_by_llama_cpps_converter_imports_with_the_transformers_loss(family, tmp_path):
    """A file mlxtune did not write: llama.cpp's own converter on the transformers directory, imported by mlxtune."""
    from gguf_fixtures import tiny_spm_model

    llamacpp.need_converter()
    name, src, reference, _ = family
    if name == "gemma3":  # the converter writes neither the period of global layers nor the local rope base: llama.cpp's own
        src = save_family(tmp_path / "defaults", name, num_hidden_layers=6, layer_types=["sliding_attention"] * 5 + ["full_attention"], rope_parameters={
            "full_attention": dict(ROPE), "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})
        reference = transformers_loss(src)
    hf = Path(shutil.copytree(src, tmp_path / "hf"))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (hf / f).unlink(missing_ok=True)
    (hf / "tokenizer.model").write_bytes(tiny_spm_model())  # a tokenizer the converter knows (it refuses tiny.py's BPE: unknown pre-tokenizer hash)
    llamacpp.convert_hf(hf, tmp_path / "m.gguf", "f32")
    assert read_header(tmp_path / "m.gguf")[0]["general.architecture"] == ARCH[name]
    back = convert(str(tmp_path / "m.gguf"), tmp_path / "back", dtype="float32").path
    expected = dataclasses.replace(load_model(src)[0].config, model_type=IMPORTED_AS.get(name, name))
    assert load_model(back)[0].config == expected  # what llama.cpp's file implies, the layers without rope included
    losses = {"numpy": numpy_loss(load_model(back)[0])}
    if HAVE_MLX:
        losses["mlx"] = mlx_loss(back)
    print(f"\n[{name}] llama.cpp's converter, imported: " + ", ".join(f"{k} {v:.7f} ({rel(v, reference):.1e})" for k, v in losses.items()))
    assert all(rel(v, reference) <= LOSS_REL for v in losses.values())
