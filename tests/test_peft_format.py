"""PEFT adapters: export, import, and agreement with PEFT itself on the tiny model.

The round trip mlxtune -> PEFT -> mlxtune runs with numpy alone and must be
bit-exact. The comparisons with PEFT (skipped without torch, peft and
transformers) load the tiny model's directory in transformers, apply the
adapter with ``PeftModel.from_pretrained`` and compare logits with the numpy
backend's, within tolerances.TINY_LOGITS (scaled max difference; measured
1.1e-7 .. 1.9e-7, while the adapters move the logits by 0.05 .. 0.42).
"""

import importlib.util
import json

import numpy as np
import pytest

from mlxtune.formats import safetensors as npio
from mlxtune.formats.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_config
from mlxtune.backends.numpy import trainer as npb
from mlxtune.backends.numpy.model import ModelConfig, NumpyLlama, load_model
from mlxtune.errors import AdapterError, OutputExistsError
from mlxtune.formats.peft import PEFT_CONFIG, PEFT_WEIGHTS, as_mlx_adapter, convert_peft_to_mlx, export_peft, import_peft, is_peft_adapter
from conftest import needs_mlx
from tolerances import TINY_LOGITS, scaled_diff

HAVE_PEFT = all(importlib.util.find_spec(m) for m in ("torch", "peft", "transformers"))
needs_peft = pytest.mark.skipif(not HAVE_PEFT, reason="torch, peft and transformers are not all installed")

IDS = np.array([[1, 5, 17, 42, 100, 7, 250, 3, 64, 9]], dtype=np.int32)
SOME_KEYS = ["mlp.down_proj", "self_attn.q_proj", "self_attn.v_proj"]


def make_run(tiny_model, out, num_layers=1, keys=SOME_KEYS, rank=4, scale=2.5, dora=False, bf16=False, seed=0):
    """A run directory with random (non-zero) adapter weights, as 'mlxtune lora' writes it."""
    rng = np.random.default_rng(seed)
    net, _ = load_model(tiny_model)
    net.add_lora(num_layers, keys, rank, scale, rng)
    weights = {}
    for name, a in net.lora_params().items():
        weights[name] = (rng.normal(0, 0.1, a.shape) if name.endswith("lora_b") else a).astype(np.float32)
    if dora:
        for module in net.adapters:
            w = net.weights[module + ".weight"]  # (out, in)
            weights[module + ".m"] = (np.linalg.norm(w, axis=1) * (1 + 0.2 * rng.normal(size=w.shape[0]))).astype(np.float32)
    out.mkdir(parents=True)
    npio.write_safetensors(out / ADAPTER_WEIGHTS, weights, metadata={"format": "mlx"}, bf16=set(weights) if bf16 else None)
    base = {"spec": str(tiny_model), "kind": "dir", "path": str(tiny_model), "repo_id": None, "revision": None, "mlx_dir": str(tiny_model)}
    (out / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(net.config.num_hidden_layers if num_layers < 0 else num_layers, keys, rank, scale, 0.0, dora, base_model=base)))
    return out


def numpy_logits(tiny_model, adapter_dir=None) -> np.ndarray:
    net, _ = load_model(tiny_model)
    if adapter_dir is not None:
        npb.load_adapters(net, adapter_dir)
    return net.forward(IDS)


def dora_logits(tiny_model, adapter_dir) -> np.ndarray:
    """The numpy model with a DoRA adapter fused in by hand: W' = m / ||W + s·(AB)ᵀ||_row · (W + s·(AB)ᵀ)."""
    cfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    scale = cfg["lora_parameters"]["scale"]
    config, weights = npio.load_weights(tiny_model)
    adapter, _ = npio.read_safetensors(adapter_dir / ADAPTER_WEIGHTS)
    for name in adapter:
        if name.endswith(".m"):
            module = name[:-2]
            w = weights[module + ".weight"].astype(np.float64)
            adapted = w + scale * (adapter[module + ".lora_a"] @ adapter[module + ".lora_b"]).T.astype(np.float64)  # (out, in)
            weights[module + ".weight"] = ((adapter[name] / np.linalg.norm(adapted, axis=1))[:, None] * adapted).astype(np.float32)
    return NumpyLlama(ModelConfig.from_dict(config), weights).forward(IDS)


# ---------------------------------------------------------------- mlxtune -> PEFT -> mlxtune (numpy only)


@pytest.mark.parametrize("kind", ["last-block", "all-blocks-bf16", "dora"])
def test_round_trip_is_exact(tiny_model, tmp_path, kind):
    run = make_run(tiny_model, tmp_path / "run", num_layers=-1 if kind == "all-blocks-bf16" else 1, keys=npb.LINEAR_KEYS if kind == "all-blocks-bf16" else SOME_KEYS, bf16=kind == "all-blocks-bf16", dora=kind == "dora")
    exported = export_peft(run, tmp_path / "peft")
    back = convert_peft_to_mlx(tmp_path / "peft", tmp_path / "back")
    assert back.notes == [] and back.modules == exported.modules

    w0, _ = npio.read_safetensors(run / ADAPTER_WEIGHTS, keep_bf16_bits=True)
    w1, _ = npio.read_safetensors(tmp_path / "back" / ADAPTER_WEIGHTS, keep_bf16_bits=True)
    assert sorted(w0) == sorted(w1)
    for k in w0:
        assert w0[k].dtype == w1[k].dtype and np.array_equal(w0[k], w1[k]), k  # bit for bit (bfloat16 kept as bfloat16)

    c0 = json.loads((run / ADAPTER_CONFIG).read_text())
    c1 = json.loads((tmp_path / "back" / ADAPTER_CONFIG).read_text())
    for field in ("fine_tune_type", "num_layers", "lora_parameters"):
        assert c1[field] == c0[field], field
    assert c1["base_model"]["path"] == str(tiny_model) and c1["source"]["format"] == "peft"

    # import_peft gives the same, in memory
    config, weights = import_peft(tmp_path / "peft")
    assert config["lora_parameters"] == c0["lora_parameters"]
    plain, _ = npio.read_safetensors(run / ADAPTER_WEIGHTS)
    assert all(np.array_equal(weights[k], plain[k]) for k in plain)
    if kind != "dora":  # the numpy backend has no DoRA
        assert np.array_equal(numpy_logits(tiny_model, tmp_path / "back"), numpy_logits(tiny_model, run))


def test_exported_files(tiny_model, tmp_path):
    run = make_run(tiny_model, tmp_path / "run", num_layers=1, rank=4, scale=2.5)
    r = export_peft(run, tmp_path / "peft")
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == ["README.md", PEFT_CONFIG, PEFT_WEIGHTS]
    pc = json.loads((tmp_path / "peft" / PEFT_CONFIG).read_text())
    assert pc["peft_type"] == "LORA" and pc["task_type"] == "CAUSAL_LM"
    assert pc["r"] == 4 and pc["lora_alpha"] == 10 and pc["lora_alpha"] / pc["r"] == 2.5
    assert pc["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    assert pc["layers_to_transform"] == [1] and pc["layers_pattern"] == "layers"  # the tiny model has 2 blocks
    assert pc["bias"] == "none" and pc["use_dora"] is False and pc["use_rslora"] is False and pc["fan_in_fan_out"] is False
    assert pc["base_model_name_or_path"] == str(tiny_model)
    weights, meta = npio.read_safetensors(tmp_path / "peft" / PEFT_WEIGHTS)
    assert meta == {"format": "pt"} and len(weights) == 6 == 2 * r.modules
    assert weights["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].shape == (4, 64)  # (r, in)
    assert weights["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].shape == (64, 4)  # (out, r)
    assert "base_model: " + str(tiny_model) in (tmp_path / "peft" / "README.md").read_text()

    assert export_peft(run, tmp_path / "named", base_model_name_or_path="org/model").base_model_name_or_path == "org/model"
    with pytest.raises(OutputExistsError):
        export_peft(run, tmp_path / "peft")
    assert export_peft(run, tmp_path / "peft", force=True).path == tmp_path / "peft"
    with pytest.raises(AdapterError, match="is a PEFT adapter already"):
        export_peft(tmp_path / "peft", tmp_path / "again")

    all_blocks = make_run(tiny_model, tmp_path / "run-all", num_layers=-1)
    export_peft(all_blocks, tmp_path / "peft-all")
    assert json.loads((tmp_path / "peft-all" / PEFT_CONFIG).read_text())["layers_to_transform"] is None


def test_export_needs_weights(tiny_model, tmp_path):
    run = make_run(tiny_model, tmp_path / "run")
    (run / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(AdapterError, match=ADAPTER_WEIGHTS):
        export_peft(run, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_detection_and_cached_conversion(tiny_model, tmp_path):
    run = make_run(tiny_model, tmp_path / "run")
    export_peft(run, tmp_path / "peft")
    assert is_peft_adapter(tmp_path / "peft") and not is_peft_adapter(run) and not is_peft_adapter(tmp_path / "nothing")
    assert as_mlx_adapter(run) == run
    converted = as_mlx_adapter(tmp_path / "peft")
    assert converted != tmp_path / "peft" and (converted / ADAPTER_WEIGHTS).exists()
    stamp = (converted / ADAPTER_WEIGHTS).stat().st_mtime_ns
    assert as_mlx_adapter(tmp_path / "peft") == converted and (converted / ADAPTER_WEIGHTS).stat().st_mtime_ns == stamp
    assert np.array_equal(numpy_logits(tiny_model, converted), numpy_logits(tiny_model, run))


def test_keys_without_prefix_and_with_adapter_name(tiny_model, tmp_path):
    run = make_run(tiny_model, tmp_path / "run")
    export_peft(run, tmp_path / "peft")
    expected = import_peft(tmp_path / "peft")[1]
    weights, _ = npio.read_safetensors(tmp_path / "peft" / PEFT_WEIGHTS)
    for variant, rename in (("bare", lambda k: k.removeprefix("base_model.model.")), ("named", lambda k: k.replace(".weight", ".default.weight"))):
        d = tmp_path / variant
        d.mkdir()
        (d / PEFT_CONFIG).write_text((tmp_path / "peft" / PEFT_CONFIG).read_text())
        npio.write_safetensors(d / PEFT_WEIGHTS, {rename(k): v for k, v in weights.items()})
        got = import_peft(d)[1]
        assert sorted(got) == sorted(expected) and all(np.array_equal(got[k], expected[k]) for k in got), variant


# ---------------------------------------------------------------- broken PEFT adapters


@pytest.fixture
def peft_dir(tiny_model, tmp_path):
    export_peft(make_run(tiny_model, tmp_path / "run"), tmp_path / "peft")
    return tmp_path / "peft"


def _edit_config(d, **fields):
    path = d / PEFT_CONFIG
    path.write_text(json.dumps(json.loads(path.read_text()) | fields))


def _edit_weights(d, fn):
    weights, _ = npio.read_safetensors(d / PEFT_WEIGHTS)
    npio.write_safetensors(d / PEFT_WEIGHTS, fn(weights))


@pytest.mark.parametrize("fields, words", [
    ({"rank_pattern": {"q_proj": 8}}, ["rank_pattern['q_proj']", "rank 4", "says 8"]),
    ({"rank_pattern": {"q_proj(": 8}}, ["'rank_pattern'", "regular expression"]),
    ({"r": 8}, ["field 'r'", "says 8"]),
    ({"modules_to_save": ["lm_head"]}, ["field 'modules_to_save'", "merge_and_unload"]),
    ({"bias": "all"}, ["field 'bias'", "'all'"]),
    ({"bias": "lora_only", "modules_to_save": ["score"]}, ["field 'bias'", "field 'modules_to_save'"]),  # reported together
    ({"peft_type": "IA3"}, ["field 'peft_type'"]),
    ({"lora_alpha": "high"}, ["field 'lora_alpha'"]),
    ({"init_lora_weights": "pissa_niter_4"}, ["field 'init_lora_weights'", "path_initial_model_for_weight_conversion"]),
    ({"alora_invocation_tokens": [5, 6]}, ["field 'alora_invocation_tokens'"]),
    ({"alpha_pattern": {"q_proj": "x"}}, ["field 'alpha_pattern'", "positive numbers"]),
])
def test_refused_configs_name_file_and_field(peft_dir, fields, words):
    _edit_config(peft_dir, **fields)
    with pytest.raises(AdapterError) as e:
        import_peft(peft_dir)
    message = str(e.value)
    assert str(peft_dir) in message and ("adapter_config.json" in message or PEFT_WEIGHTS in message)
    for w in words:
        assert w in message


@pytest.mark.parametrize("edit, words", [
    (lambda w: w | {"base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight": np.zeros((64, 3), np.float32)}, ["q_proj.lora_A.weight (4, 64)", "(64, 3)", "do not fit"]),
    (lambda w: {k: v for k, v in w.items() if not k.endswith("q_proj.lora_B.weight")}, ["model.layers.1.self_attn.q_proj has no lora_B.weight"]),
    (lambda w: w | {"base_model.model.lm_head.lora_A.weight": np.zeros((4, 64), np.float32)}, ["lm_head", "not a layer of a transformer block"]),
    (lambda w: w | {"base_model.model.model.embed_tokens.lora_embedding_A": np.zeros((4, 320), np.float32)}, ["lora_embedding_A", "embedding"]),
    (lambda w: w | {"base_model.model.lm_head.weight": np.zeros((320, 64), np.float32)}, ["lm_head.weight", "modules_to_save"]),
    (lambda w: w | {"base_model.model.model.layers.1.self_attn.q_proj.lora_B.bias": np.zeros(64, np.float32)}, ["lora_B.bias", "lora_bias"]),
])
def test_refused_weights_name_file_and_tensor(peft_dir, edit, words):
    _edit_weights(peft_dir, edit)
    with pytest.raises(AdapterError) as e:
        import_peft(peft_dir)
    assert str(peft_dir / PEFT_WEIGHTS) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_missing_or_pickled_weights(peft_dir, tmp_path):
    (peft_dir / PEFT_WEIGHTS).rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(AdapterError, match=f"{peft_dir} has no {PEFT_WEIGHTS}"):
        convert_peft_to_mlx(peft_dir, tmp_path / "out")
    (peft_dir / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(AdapterError, match="safe_serialization=True"):
        as_mlx_adapter(peft_dir)
    assert not (tmp_path / "out").exists()
    (peft_dir / PEFT_CONFIG).unlink()
    with pytest.raises(AdapterError, match=f"{peft_dir} has no {PEFT_CONFIG}"):
        import_peft(peft_dir)


def test_block_beyond_the_model(peft_dir):
    with pytest.raises(AdapterError, match="adapts block 1, but the base model has 1 blocks"):
        import_peft(peft_dir, num_blocks=1)


def test_first_block_only_needs_the_block_count(tiny_model, tmp_path, peft_dir):
    """A PEFT adapter of block 0 alone: mlx-lm's format needs zero adapters on block 1, so it must know there is one."""
    _edit_config(peft_dir, base_model_name_or_path="org/not-here", layers_to_transform=[0])
    _edit_weights(peft_dir, lambda w: {k.replace(".layers.1.", ".layers.0."): v for k, v in w.items()})
    r = convert_peft_to_mlx(peft_dir, tmp_path / "guessed")  # block count unknown: taken as 1
    assert r.num_layers == 1 and r.notes == []
    with pytest.raises(AdapterError, match="does not fit this model"):  # fails loudly on the 2-block model
        numpy_logits(tiny_model, tmp_path / "guessed")

    r = convert_peft_to_mlx(peft_dir, tmp_path / "filled", num_blocks=2)
    assert r.num_layers == 2 and "3 layers the PEFT adapter leaves alone" in r.notes[0]
    weights, _ = npio.read_safetensors(tmp_path / "filled" / ADAPTER_WEIGHTS)
    assert not weights["model.layers.1.self_attn.q_proj.lora_b"].any()
    # the same outputs as the adapter on block 0 through the numpy backend directly
    net, _ = load_model(tiny_model)
    net.add_lora(2, r.keys, r.rank, r.scale, np.random.default_rng(0))
    theirs, _ = npio.read_safetensors(peft_dir / PEFT_WEIGHTS)
    direct = {k: np.zeros_like(v) for k, v in net.lora_params().items()}
    for k, v in theirs.items():
        module = k.removeprefix("base_model.model.").rsplit(".", 2)[0]
        direct[module + (".lora_a" if ".lora_A." in k else ".lora_b")] = v.T
    net.set_lora_params(direct)
    assert np.array_equal(numpy_logits(tiny_model, tmp_path / "filled"), net.forward(IDS))


# ---------------------------------------------------------------- against PEFT itself


def _hf_model(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()


def peft_logits(tiny_model, peft_dir) -> np.ndarray:
    import torch
    from peft import PeftModel

    model = PeftModel.from_pretrained(_hf_model(tiny_model), str(peft_dir)).eval()
    with torch.no_grad():
        return model(torch.tensor(IDS, dtype=torch.long)).logits.numpy()


@needs_peft
@pytest.mark.parametrize("kind", ["last-block", "all-blocks", "dora"])
def test_exported_adapter_matches_in_peft(tiny_model, tmp_path, kind):
    run = make_run(tiny_model, tmp_path / "run", num_layers=-1 if kind == "all-blocks" else 1, keys=npb.LINEAR_KEYS if kind == "all-blocks" else SOME_KEYS, dora=kind == "dora")
    export_peft(run, tmp_path / "peft")
    theirs = peft_logits(tiny_model, tmp_path / "peft")
    ours = dora_logits(tiny_model, run) if kind == "dora" else numpy_logits(tiny_model, run)
    assert scaled_diff(ours, theirs) < TINY_LOGITS
    assert scaled_diff(numpy_logits(tiny_model), theirs) > 100 * TINY_LOGITS  # the adapter does change the logits


PEFT_CASES = {
    # name: (LoraConfig arguments, dtype the adapter is saved in, notes expected)
    "float16": (dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]), "float16", 0),
    "all-linear-rslora-bf16": (dict(r=4, lora_alpha=6, target_modules="all-linear", use_rslora=True), "bfloat16", 0),
    "patterns": (dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], layers_to_transform=[1], rank_pattern={"v_proj": 2}, alpha_pattern={"q_proj": 3}), "float32", 2),
    "first-block": (dict(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"], layers_to_transform=[0]), "float32", 1),
    "dora": (dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True), "float32", 0),
}


@needs_peft
@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_adapter_made_by_peft_imports(tiny_model, tmp_path, case):
    import torch
    from peft import LoraConfig, get_peft_model

    kwargs, dtype, n_notes = PEFT_CASES[case]
    torch.manual_seed(0)
    model = get_peft_model(_hf_model(tiny_model), LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **kwargs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # PEFT starts B at zero: make the adapter do something
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.randn_like(p))
            if "lora_" in name:
                p.data = p.data.to(getattr(torch, dtype))
    model.save_pretrained(tmp_path / "peft")
    assert is_peft_adapter(tmp_path / "peft")

    r = convert_peft_to_mlx(tmp_path / "peft", tmp_path / "mlx")
    assert len(r.notes) == n_notes, r.notes
    assert r.num_layers == (1 if case == "patterns" else 2) and r.dora == (case == "dora")
    theirs = peft_logits(tiny_model, tmp_path / "peft")
    ours = dora_logits(tiny_model, tmp_path / "mlx") if case == "dora" else numpy_logits(tiny_model, tmp_path / "mlx")
    assert scaled_diff(ours, theirs) < TINY_LOGITS
    assert scaled_diff(numpy_logits(tiny_model), theirs) > 100 * TINY_LOGITS


@needs_peft
@needs_mlx
def test_dora_made_by_peft_runs_on_mlx(tiny_model, tmp_path):
    """mlxtune's own DoRA layers (mlx backend) compute what PEFT computes for an imported DoRA adapter."""
    import mlx.core as mx
    import torch
    from peft import LoraConfig, get_peft_model

    from mlxtune.inference import load

    torch.manual_seed(1)
    model = get_peft_model(_hf_model(tiny_model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"], use_dora=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "peft")
    loaded = load(str(tiny_model), as_mlx_adapter(tmp_path / "peft"), backend="mlx")
    ours = np.array(loaded.model(mx.array(IDS)).astype(mx.float32))
    assert scaled_diff(ours, peft_logits(tiny_model, tmp_path / "peft")) < TINY_LOGITS
