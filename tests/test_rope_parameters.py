"""Configs written by transformers 5 (``rope_parameters``) read as transformers reads them (issue 13, item 2).

transformers >= 5 saves a Llama 3.2 checkpoint's rotary settings as
``"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": ...}``
instead of ``rope_theta`` + ``rope_scaling``; mlx-lm's llama and mlxtune's numpy
model read only the latter and fell back to theta 10000 without scaling. The
reference here is transformers itself: a tiny LlamaForCausalLM it builds and
saves, and the logits it computes.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import HAVE_MLX
from mlxtune.cli import cli
from mlxtune.errors import ModelFormatError, UnsupportedModelError
from tiny import make_tokenizer, tiny_config, tiny_weights
from tolerances import TINY_LOGITS, scaled_diff

HAVE_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch and transformers not installed")

# Llama 3.2's rotary settings, with the original context shrunk to 32 positions so
# that scaling changes every frequency but the fastest within the 96 tested here.
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
T = 96
TOKENS = np.random.default_rng(0).integers(3, 300, size=(2, T)).astype(np.int32)


def run(*args, ok=True):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert (r.exit_code == 0) == ok, r.output
    return r.output


def save_with_transformers(out: Path, rope_parameters: dict, max_position_embeddings: int = 2048) -> Path:
    """A tiny LlamaForCausalLM (tiny.py's weights) saved by transformers' own save_pretrained."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = make_tokenizer(out)
    shape = tiny_config(vocab, max_position_embeddings=max_position_embeddings)
    config = LlamaConfig(**{k: shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps", "vocab_size", "tie_word_embeddings", "max_position_embeddings")}, rope_parameters=dict(rope_parameters))
    model = LlamaForCausalLM(config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tiny_weights(shape).items()}, strict=False)
    model.tie_weights()
    model.save_pretrained(out)
    return out


def transformers_logits(model_dir: Path) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()


def numpy_logits(model_dir: Path) -> np.ndarray:
    from mlxtune.backends.numpy.model import load_model

    return load_model(model_dir)[0].forward(TOKENS)


def mlx_lm_logits(model_dir: Path) -> np.ndarray:
    """mlx-lm's own loader on the directory: what ``mlx_lm.load`` makes of its config.json."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(model_dir))
    return np.array(model(mx.array(TOKENS)).astype(mx.float32))


def mlxtune_mlx_logits(model_dir: Path) -> np.ndarray:
    import mlx.core as mx

    from mlxtune.backends.mlx.trainer import load_model

    model, _ = load_model(Path(model_dir))
    return np.array(model(mx.array(TOKENS)).astype(mx.float32))


LOGITS = {"numpy": numpy_logits, "mlx": mlx_lm_logits}


@pytest.fixture(scope="module")
def llama32(tmp_path_factory) -> Path:
    if not HAVE_TORCH:
        pytest.skip("torch and transformers not installed")
    return save_with_transformers(tmp_path_factory.mktemp("rope") / "llama32", LLAMA3)


@pytest.fixture(scope="module")
def reference(llama32) -> np.ndarray:
    return transformers_logits(llama32)


def converted(src: Path, out: Path, monkeypatch, with_mlx: bool) -> Path:
    """``mlxtune convert`` through the CLI, by mlx-lm (with mlx) or by numpy alone (without)."""
    if with_mlx and not HAVE_MLX:
        pytest.skip("mlx is not installed")
    if not with_mlx:
        import mlxtune.backends as backends

        monkeypatch.setattr(backends, "mlx_available", lambda: False)
    run("convert", src, "-o", out)
    monkeypatch.undo()
    return out


def test_transformers_5_writes_rope_parameters_and_the_scaling_matters(llama32, reference, tmp_path):
    """The layout under test, and a reference that a reader ignoring the scaling (or the theta) cannot match."""
    config = json.loads((llama32 / "config.json").read_text())
    assert config["rope_parameters"] == LLAMA3 and "rope_theta" not in config and "rope_scaling" not in config
    unscaled = transformers_logits(save_with_transformers(tmp_path / "unscaled", {"rope_type": "default", "rope_theta": 500000.0}))
    assert scaled_diff(unscaled, reference) > 100 * TINY_LOGITS


@needs_torch
@pytest.mark.parametrize("convert_with", ["mlx", "numpy"])
@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_convert_then_logits_match_transformers(llama32, reference, tmp_path, monkeypatch, convert_with, backend):
    if backend == "mlx" and not HAVE_MLX:
        pytest.skip("mlx is not installed")
    out = converted(llama32, tmp_path / "mlx-model", monkeypatch, convert_with == "mlx")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == 500000.0
    assert config["rope_scaling"] == {k: v for k, v in LLAMA3.items() if k != "rope_theta"}
    d = scaled_diff(LOGITS[backend](out), reference)
    print(f"\n[convert by {convert_with}, {backend}] max scaled logits difference against transformers: {d:.2e}")
    assert d <= TINY_LOGITS


@needs_torch
@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_training_straight_from_the_hf_directory(llama32, reference, backend):
    """Without convert: each backend's loader reads the transformers-5 config.json itself."""
    if backend == "mlx" and not HAVE_MLX:
        pytest.skip("mlx is not installed")
    logits = numpy_logits(llama32) if backend == "numpy" else mlxtune_mlx_logits(llama32)
    assert scaled_diff(logits, reference) <= TINY_LOGITS


@needs_torch
@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_transformers_4_layout_still_works(llama32, reference, tmp_path, monkeypatch, backend):
    """rope_theta + rope_scaling, as transformers 4 wrote it: read as before, and kept unchanged by convert."""
    if backend == "mlx" and not HAVE_MLX:
        pytest.skip("mlx is not installed")
    v4 = tmp_path / "v4"
    v4.mkdir()
    for f in llama32.iterdir():
        (v4 / f.name).write_bytes(f.read_bytes())
    config = json.loads((llama32 / "config.json").read_text())
    del config["rope_parameters"]
    config["rope_theta"] = LLAMA3["rope_theta"]
    config["rope_scaling"] = {k: v for k, v in LLAMA3.items() if k != "rope_theta"}
    (v4 / "config.json").write_text(json.dumps(config))
    assert scaled_diff(transformers_logits(v4), reference) == 0  # transformers reads both layouts alike
    out = converted(v4, tmp_path / "v4-mlx", monkeypatch, HAVE_MLX)
    written = json.loads((out / "config.json").read_text())
    assert (written["rope_theta"], written["rope_scaling"]) == (config["rope_theta"], config["rope_scaling"]) and "rope_parameters" not in written
    assert scaled_diff(LOGITS[backend](out), reference) <= TINY_LOGITS


@needs_torch
def test_unknown_rope_type_is_refused_naming_file_and_field(llama32, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in llama32.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    config = json.loads((llama32 / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "wobbly", "rope_theta": 500000.0, "factor": 4.0}
    (bad / "config.json").write_text(json.dumps(config))
    out = run("convert", bad, "-o", tmp_path / "out", ok=False)
    assert "Error:" in out and str(bad / "config.json") in out and "rope_parameters.rope_type" in out and "'wobbly'" in out
    assert "Traceback" not in out and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the normalisation itself


def normalize_config(*args):
    from mlxtune.models.config import normalize_config

    return normalize_config(*args)


def test_flat_rope_parameters_become_rope_theta_and_rope_scaling():
    config = {"model_type": "llama", "rope_parameters": dict(LLAMA3), "max_position_embeddings": 2048}
    out = normalize_config(config)
    assert out["rope_theta"] == 500000.0 and out["rope_scaling"] == {k: v for k, v in LLAMA3.items() if k != "rope_theta"}
    assert out["rope_parameters"] == LLAMA3 and config == {"model_type": "llama", "rope_parameters": LLAMA3, "max_position_embeddings": 2048}
    assert normalize_config(out) == out  # idempotent: a converted config reads the same again
    default = normalize_config({"model_type": "qwen2", "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}})
    assert default["rope_theta"] == 1000000.0 and default.get("rope_scaling") is None


def test_transformers_4_layout_is_returned_unchanged():
    config = {"model_type": "llama", "rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    assert normalize_config(config) == config
    assert normalize_config({"model_type": "llama"}) == {"model_type": "llama"}


def test_gemma3_per_layer_type_rope_parameters():
    config = {
        "model_type": "gemma3_text",
        "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}, "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
    }
    out = normalize_config(config)
    assert (out["rope_theta"], out["rope_scaling"], out["rope_local_base_freq"]) == (1000000.0, {"rope_type": "linear", "factor": 8.0}, 10000.0)
    assert normalize_config(out) == out
    wrapped = normalize_config({"model_type": "gemma3", "text_config": config})  # the multimodal config nests the text model's
    assert wrapped["text_config"] == out
    scaled_local = json.loads(json.dumps(config))
    scaled_local["rope_parameters"]["sliding_attention"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(UnsupportedModelError, match=r"rope_parameters\.sliding_attention\.rope_type"):
        normalize_config(scaled_local, "m/config.json")


def test_per_layer_type_rope_parameters_the_same_for_every_type_are_read_as_one():
    same = {"rope_type": "default", "rope_theta": 500000.0}
    out = normalize_config({"model_type": "llama", "layer_types": ["full_attention"] * 2, "rope_parameters": {"full_attention": dict(same)}})
    assert out["rope_theta"] == 500000.0 and out.get("rope_scaling") is None
    no_rope = {"model_type": "llama", "rope_parameters": {"full_attention": dict(same), "no_rope_attention": None}}
    with pytest.raises(UnsupportedModelError, match="per layer type"):  # rotary for every layer would be a guess
        normalize_config(no_rope)


@pytest.mark.parametrize(
    "config, error, match",
    [
        ({"model_type": "llama", "rope_parameters": {"rope_type": "wobbly", "rope_theta": 1.0}}, UnsupportedModelError, r"m/config\.json: rope_parameters\.rope_type 'wobbly'"),
        ({"model_type": "llama", "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, ModelFormatError, r"rope_parameters lacks low_freq_factor"),
        ({"model_type": "llama", "rope_parameters": {"rope_type": "default"}}, ModelFormatError, r"rope_parameters has no rope_theta"),
        ({"model_type": "llama", "rope_theta": 10000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}, ModelFormatError, r"rope_theta \(10000.0\) and rope_parameters\.rope_theta \(500000.0\) disagree"),
        ({"model_type": "llama", "rope_scaling": {"type": "linear", "factor": 2.0}, "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}}, ModelFormatError, r"rope_scaling .* and rope_parameters disagree"),
        ({"model_type": "mistral", "layer_types": ["full_attention", "sliding_attention"], "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6}, "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}, UnsupportedModelError, r"a rotary setting per layer type"),
    ],
)
def test_what_cannot_be_honoured_is_refused(config, error, match):
    with pytest.raises(error, match=match):
        normalize_config(config, "m/config.json")


# ---------------------------------------------------------------- the way out: fuse, HF and GGUF export

# Llama 3.2's own values (the original context 8192 that gguf_import recovers from rope_freqs).
LLAMA32_REAL = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@needs_torch
def test_lora_on_the_hf_directory_then_fuse_keeps_the_rotary_settings(llama32, small_data, tmp_path):
    """lora straight on the transformers-5 directory, then fuse: the fused model is the base + adapter, rope included."""
    from mlxtune.backends.numpy.model import load_model
    from mlxtune.backends.numpy.trainer import load_adapters

    run("lora", "--data", small_data, "--model", llama32, "--iters", 2, "--lr", "1e-2", "--backend", "numpy", "-o", tmp_path / "run", "--no-report")
    run("fuse", "--adapter", tmp_path / "run", "-o", tmp_path / "fused", "--backend", "numpy", "--dtype", "float32")
    config = json.loads((tmp_path / "fused" / "config.json").read_text())
    assert (config["rope_theta"], config["rope_scaling"]["rope_type"], config["rope_scaling"]["factor"]) == (500000.0, "llama3", 8.0)
    tuned = load_model(llama32)[0]
    load_adapters(tuned, tmp_path / "run")
    expected = tuned.forward(TOKENS)
    assert scaled_diff(expected, transformers_logits(llama32)) > 100 * TINY_LOGITS  # the adapter does something
    assert scaled_diff(numpy_logits(tmp_path / "fused"), expected) <= TINY_LOGITS
    if HAVE_MLX:
        assert scaled_diff(mlx_lm_logits(tmp_path / "fused"), expected) <= TINY_LOGITS


@needs_torch
def test_hf_export_is_read_back_right_by_transformers(llama32, reference, tmp_path):
    run("convert", llama32, "-o", tmp_path / "mlx-model")
    run("export", "-f", "hf", "--model", tmp_path / "mlx-model", "-o", tmp_path / "hf", "--dtype", "float32")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["rope_parameters"] == LLAMA3 and config["rope_theta"] == 500000.0  # read alike by transformers 5 and 4
    assert scaled_diff(transformers_logits(tmp_path / "hf"), reference) <= TINY_LOGITS


@needs_torch
def test_gguf_export_and_import_keep_llama3_scaling(tmp_path):
    """export -f gguf writes rope_freqs from the transformers-5 config; convert of that GGUF reads the scaling back."""
    src = save_with_transformers(tmp_path / "llama32", LLAMA32_REAL, max_position_embeddings=131072)
    reference = transformers_logits(src)
    run("export", "-f", "gguf", "--model", src, "-o", tmp_path / "m.gguf", "--outtype", "f32")
    from mlxtune.formats.gguf import read_gguf

    g = read_gguf(tmp_path / "m.gguf", dense=True)
    assert g.config["rope_theta"] == 500000.0
    assert g.config["rope_scaling"] == {k: v for k, v in LLAMA32_REAL.items() if k != "rope_theta"}
    run("convert", tmp_path / "m.gguf", "-o", tmp_path / "back")
    assert scaled_diff(numpy_logits(tmp_path / "back"), reference) <= TINY_LOGITS


def save_gemma3(src: Path, **config) -> tuple[Path, np.ndarray]:
    """A tiny Gemma3ForCausalLM saved by transformers into ``src``, and its logits on TOKENS."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    vocab = make_tokenizer(src)
    config = Gemma3TextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, **config)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # weights of tiny.py's scale, so that logits are O(10)
        for name, p in model.named_parameters():
            p.normal_(0, (0.3 if "embed" in name else p.shape[1] ** -0.5) if p.dim() == 2 else 0.1)
        reference = model(torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()
    model.save_pretrained(src)
    return src, reference


@needs_torch
def test_gemma3_convert_then_logits_match_transformers(tmp_path):
    """Gemma 3's per-layer-type form: full-attention layers scaled (linear, theta 1e6), sliding ones plain (theta 1e4); mlx only."""
    if not HAVE_MLX:
        pytest.skip("mlx is not installed")
    rope = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}, "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
    src, reference = save_gemma3(tmp_path / "gemma3", num_hidden_layers=6, rope_parameters=rope)
    assert json.loads((src / "config.json").read_text())["rope_parameters"] == rope
    run("convert", src, "-o", tmp_path / "mlx-model")
    assert scaled_diff(mlx_lm_logits(tmp_path / "mlx-model"), reference) <= TINY_LOGITS


def test_gemma3_layer_types_become_the_period_mlx_lm_reads():
    """transformers 5 lists Gemma 3's layer types; mlx-lm reads only sliding_window_pattern (default 6)."""
    every_third = ["sliding_attention", "sliding_attention", "full_attention"] * 2
    out = normalize_config({"model_type": "gemma3_text", "layer_types": every_third})
    assert out["sliding_window_pattern"] == 3 and normalize_config(out) == out
    assert normalize_config({"model_type": "gemma3_text", "layer_types": ["sliding_attention"] * 4})["sliding_window_pattern"] == 5
    irregular = ["sliding_attention", "full_attention", "full_attention", "sliding_attention"]
    with pytest.raises(UnsupportedModelError, match=r"m/config\.json: layer_types places its full-attention layers irregularly \(S, F, F, S\)"):
        normalize_config({"model_type": "gemma3_text", "layer_types": irregular}, "m/config.json")
    with pytest.raises(ModelFormatError, match=r"sliding_window_pattern \(6\) and layer_types \(3\) disagree"):
        normalize_config({"model_type": "gemma3_text", "layer_types": every_third, "sliding_window_pattern": 6}, "m/config.json")


@needs_torch
def test_gemma3_with_a_layer_pattern_other_than_six_matches_transformers(tmp_path):
    """Every second layer full attention, saved by transformers 5 as layer_types only: mlx-lm alone would assume 6."""
    if not HAVE_MLX:
        pytest.skip("mlx is not installed")
    types = ["sliding_attention", "full_attention"] * 2
    src, reference = save_gemma3(tmp_path / "gemma3", num_hidden_layers=4, sliding_window=4, layer_types=types)
    saved = json.loads((src / "config.json").read_text())
    saved.pop("sliding_window_pattern", None)  # what a config listing layer_types alone looks like
    (src / "config.json").write_text(json.dumps(saved))
    run("convert", src, "-o", tmp_path / "mlx-model")
    assert json.loads((tmp_path / "mlx-model" / "config.json").read_text())["sliding_window_pattern"] == 2
    assert scaled_diff(mlx_lm_logits(tmp_path / "mlx-model"), reference) <= TINY_LOGITS
