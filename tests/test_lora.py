"""LoRA/DoRA layers: placement, adapter files, mlx-lm compatibility, fusing."""

import json
from pathlib import Path

import pytest

mx = pytest.importorskip("mlx.core")
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxtune.backends.mlx.trainer import load_model
from mlxtune.errors import AdapterError, ConfigError
from mlxtune.formats.adapters import adapter_config
from mlxtune.backends.mlx.lora import (
    DoRALinear,
    LoRALinear,
    adapter_weights,
    apply_adapters,
    fuse_model,
    linear_keys,
    load_adapters,
    resolve_target_modules,
    save_adapters,
    trainable_only,
)


def _randomize(model):
    """Give the adapters non-zero values so that they change the output."""
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            m.lora_b = mx.random.normal(m.lora_b.shape) * 0.05
            if isinstance(m, DoRALinear):
                m.m = m.m * (1 + 0.1 * mx.random.normal(m.m.shape))


def test_keys_and_targets(tiny_model):
    model, _ = load_model(tiny_model)
    keys = linear_keys(model)
    assert "self_attn.q_proj" in keys and "mlp.down_proj" in keys and len(keys) == 7
    assert resolve_target_modules(model, ["q_proj", "v_proj"]) == ["self_attn.q_proj", "self_attn.v_proj"]
    assert resolve_target_modules(model, None) == keys
    with pytest.raises(ConfigError, match="qq_proj"):
        resolve_target_modules(model, ["qq_proj"])


def test_only_adapters_train_and_start_as_identity(tiny_model):
    model, _ = load_model(tiny_model)
    x = mx.array([[5, 6, 7, 8]])
    before = model(x)
    n = apply_adapters(model, 1, ["self_attn.q_proj", "self_attn.v_proj"], rank=4, scale=2.0)
    assert n == 2  # last block only
    trainable_only(model)
    names = [k for k, _ in tree_flatten(model.trainable_parameters())]
    assert names and all(k.startswith("model.layers.1.") and k.rsplit(".", 1)[-1] in ("lora_a", "lora_b") for k in names)
    np.testing.assert_allclose(np.array(model(x)), np.array(before), atol=1e-6)  # B starts at zero


@pytest.mark.parametrize("dora", [False, True])
def test_fused_equals_unfused(tiny_model, dora):
    model, _ = load_model(tiny_model)
    apply_adapters(model, -1, linear_keys(model), rank=4, scale=2.0, dora=dora)
    _randomize(model)
    x = mx.array([[3, 9, 27, 81, 100]])
    unfused = np.array(model(x))
    assert fuse_model(model) == 14
    fused = np.array(model(x))
    np.testing.assert_allclose(fused, unfused, atol=1e-4)
    assert not any(isinstance(m, LoRALinear) for _, m in model.named_modules())


def test_adapter_files_round_trip_and_mlx_lm_loads_them(tiny_model, tmp_path):
    import mlx_lm

    model, _ = load_model(tiny_model)
    keys = linear_keys(model)
    apply_adapters(model, 2, keys, rank=4, scale=2.0)
    _randomize(model)
    trainable_only(model)
    x = mx.array([[1, 2, 3, 4, 5]])
    expected = np.array(model(x))
    save_adapters(tmp_path, adapter_weights(model), adapter_config(2, keys, 4, 2.0, 0.0, False))
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "lora" and cfg["lora_parameters"]["rank"] == 4

    ours, _ = load_model(tiny_model)
    load_adapters(ours, tmp_path)
    np.testing.assert_allclose(np.array(ours(x)), expected, atol=1e-5)

    theirs, _ = mlx_lm.load(str(tiny_model), adapter_path=str(tmp_path))
    np.testing.assert_allclose(np.array(theirs(x)), expected, atol=1e-5)


def test_dora_adapter_loads_in_mlx_lm(tiny_model, tmp_path):
    import mlx_lm

    model, _ = load_model(tiny_model)
    keys = ["self_attn.q_proj", "mlp.up_proj"]
    apply_adapters(model, 2, keys, rank=2, scale=1.0, dora=True)
    _randomize(model)
    trainable_only(model)
    x = mx.array([[7, 8, 9]])
    save_adapters(tmp_path, adapter_weights(model), adapter_config(2, keys, 2, 1.0, 0.0, True))
    theirs, _ = mlx_lm.load(str(tiny_model), adapter_path=str(tmp_path))
    np.testing.assert_allclose(np.array(theirs(x)), np.array(model(x)), atol=1e-5)


def test_quantized_base_fuses_dense(tiny_model):
    model, _ = load_model(tiny_model)
    nn.quantize(model, group_size=32, bits=8)
    apply_adapters(model, -1, ["self_attn.q_proj"], rank=4, scale=2.0)
    _randomize(model)
    x = mx.array([[10, 20, 30]])
    unfused = np.array(model(x))
    fuse_model(model, mx.float32)
    assert isinstance(model.layers[0].self_attn.q_proj, nn.Linear)
    np.testing.assert_allclose(np.array(model(x)), unfused, atol=2e-3)


def test_requantized_fuse_reports_what_the_adapter_keeps(tiny_model, tmp_path, monkeypatch):
    """fuse -q measures the kept share of the validation-loss gain, and warns when most of it is lost."""
    from click.testing import CliRunner

    from mlxtune import fuse as fuse_mod
    from mlxtune.cli import cli

    notes = str(Path(__file__).resolve().parent.parent / "data" / "notes.jsonl")
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["lora", "--data", notes, "--model", str(tiny_model), "--iters", 3, "--lr", "1e-2", "--backend", "numpy", "-o", str(run), "--no-report"])
    assert r.exit_code == 0, r.output
    # Fused without re-quantizing, the model keeps the whole gain: the measurement itself is right.
    plain = fuse_mod.fuse(run, tmp_path / "f32", dtype="float32", backend="numpy")
    kept, losses = fuse_mod.kept_improvement(run, plain.base, plain.path)
    assert kept == pytest.approx(1.0, abs=1e-3) and losses["adapter"] < losses["base"]
    result = fuse_mod.fuse(run, tmp_path / "q8", quantize=True, q_bits=8, q_group_size=32, backend="mlx")
    assert any("keeps" in n and "validation split" in n for n in result.notes)
    monkeypatch.setattr(fuse_mod, "kept_improvement", lambda *a, **k: (0.2, {"base": 3.0, "adapter": 1.0, "fused": 2.6}))
    result = fuse_mod.fuse(run, tmp_path / "q4", quantize=True, q_bits=4, q_group_size=64, backend="mlx")
    assert any(n.startswith("warning: most of the adapter is lost to 4-bit") for n in result.notes)


def test_mismatched_adapter_is_rejected(tiny_model, tmp_path):
    model, _ = load_model(tiny_model)
    apply_adapters(model, -1, ["self_attn.q_proj"], rank=4, scale=2.0)
    trainable_only(model)
    weights = {k: v[:, :2] if k.endswith("lora_a") else v for k, v in adapter_weights(model).items()}
    save_adapters(tmp_path, weights, adapter_config(2, ["self_attn.q_proj"], 4, 2.0, 0.0, False))
    fresh, _ = load_model(tiny_model)
    with pytest.raises(AdapterError, match="does not fit this model"):
        load_adapters(fresh, tmp_path)


def test_missing_adapter_dir(tmp_path, tiny_model):
    model, _ = load_model(tiny_model)
    with pytest.raises(AdapterError, match="does not exist"):
        load_adapters(model, tmp_path / "nope")
    with pytest.raises(AdapterError, match="adapter_config.json"):
        load_adapters(model, tmp_path)
