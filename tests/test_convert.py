"""convert: Hugging Face / MLX directories and GGUF files into the MLX layout mlx-lm reads."""

import json

import numpy as np
import pytest

from conftest import needs_mlx
from gguf_fixtures import write_tiny_gguf
from mlxtune.formats import safetensors as npio
from mlxtune.convert import convert
from mlxtune.errors import ModelFormatError, ModelNotFoundError, OutputExistsError, UsageError
from mlxtune.models.hub import ModelSource
from mlxtune.models.source import ensure_mlx_model

IDS = [[1, 5, 9, 13, 17, 21]]


def _logits(path):
    """Logits in float32 compute (quantized weights expanded), so differences are the weights'."""
    import mlx.core as mx
    import mlx_lm

    from mlxtune.backends.mlx.trainer import load_model
    from mlxtune.runtime import choose_compute

    mlx_lm.load(str(path))  # the layout is mlx-lm's
    model, _ = load_model(path, choose_compute("cpu"))
    return np.array(model(mx.array(IDS)))


@needs_mlx
def test_plain_copy_is_exact_and_loads_in_mlx_lm(tiny_model, tmp_path):
    r = convert(str(tiny_model), tmp_path / "out")
    assert r.quantization is None and r.n_parameters > 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "out" / name).exists()
    np.testing.assert_array_equal(_logits(tmp_path / "out"), _logits(tiny_model))


@needs_mlx
@pytest.mark.parametrize("bits,group", [(4, 32), (8, 64)])
def test_quantize(tiny_model, tmp_path, bits, group):
    out = tmp_path / "q"
    r = convert(str(tiny_model), out, quantize=True, q_bits=bits, q_group_size=group)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"]["bits"] == bits and cfg["quantization"]["group_size"] == group
    assert r.quantization["bits"] == bits
    ref = _logits(tiny_model)
    rel = np.abs(_logits(out) - ref).max() / np.abs(ref).max()
    assert 0 < rel < (0.1 if bits == 4 else 0.01)


@needs_mlx
def test_dtype(tiny_model, tmp_path):
    import mlx.core as mx

    convert(str(tiny_model), tmp_path / "h", dtype="bfloat16")
    w = mx.load(str(tmp_path / "h" / "model.safetensors"))
    assert all(v.dtype == mx.bfloat16 for v in w.values())


def test_without_mlx_convert_writes_dense_weights(tiny_model, tmp_path, monkeypatch):
    """Where mlx is missing, convert still works: dense weights, quantized sources expanded exactly."""
    import mlxtune.backends as backends

    monkeypatch.setattr(backends, "mlx_available", lambda: False)
    g = write_tiny_gguf(tmp_path / "tiny.gguf")
    r = convert(str(g.path), tmp_path / "dense")
    config, weights = npio.load_weights(tmp_path / "dense")
    assert "quantization" not in config and r.quantization is None and r.n_parameters > 0
    assert any("expanded" in n for n in r.notes) or all(v.dtype == np.float32 for v in weights.values())
    convert(str(tiny_model), tmp_path / "bf16", dtype="bfloat16")
    raw, _ = npio.read_safetensors(tmp_path / "bf16" / "model.safetensors", keep_bf16_bits=True)
    assert all(v.dtype == np.uint16 for v in raw.values())  # stored as bfloat16
    with pytest.raises(UsageError, match="quantizing needs mlx"):
        convert(str(tiny_model), tmp_path / "q", quantize=True)


@needs_mlx
def test_gguf_to_mlx_lossless(tmp_path):
    g = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "m"
    r = convert(str(g.path), out)
    assert r.source.kind == "gguf"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "quantization" in cfg
    assert _logits(out).shape[-1] == len(g.tokens)
    # dequantizing to float32 on conversion gives the same model, densely
    convert(str(g.path), tmp_path / "f32", dtype="float32")
    np.testing.assert_allclose(_logits(tmp_path / "f32"), _logits(out), atol=1e-4)


def test_gguf_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXTUNE_HOME", str(tmp_path / "home"))
    g = write_tiny_gguf(tmp_path / "tiny.gguf")
    src = ModelSource(kind="gguf", path=g.path, spec=str(g.path))
    first = ensure_mlx_model(src)
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_mlx_model(src) == first and (first / "model.safetensors").stat().st_mtime_ns == mtime
    assert first.parent.parent == tmp_path / "home"


def test_bad_options_and_sources_leave_nothing(tiny_model, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="--q-bits"):
        convert(str(tiny_model), out, quantize=True, q_bits=3)
    with pytest.raises(ModelNotFoundError):
        convert(str(tmp_path / "missing-model"), out)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(write_tiny_gguf(tmp_path / "ok.gguf").path.read_bytes()[:5000])
    with pytest.raises(ModelFormatError, match="bad.gguf"):
        convert(str(bad), out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_existing_output_needs_force(tiny_model, tmp_path):
    out = tmp_path / "out"
    convert(str(tiny_model), out)
    with pytest.raises(OutputExistsError, match="--force"):
        convert(str(tiny_model), out)
    convert(str(tiny_model), out, dtype="float16", force=True)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
