"""A whole fine-tune on the tiny model: files written, loss going down, mlx-lm compatibility."""

import json
from pathlib import Path

import numpy as np
import pytest

from mlxtune.config import TrainConfig
from mlxtune.errors import OutputExistsError
from mlxtune.train import TrainingInterrupted, train

NOTES = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"


@pytest.fixture
def small_data(tmp_path) -> Path:
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(NOTES.read_text().splitlines(keepends=True)[:24]))
    return path


def _cfg(tiny_model, data, out, **kw):
    base = dict(model=str(tiny_model), data=str(data), output=str(out), iters=12, batch_size=4, learning_rate=1e-3, val_every=6, save_every=4, max_seq_len=256)
    base.update(kw)
    return TrainConfig(**base)


def test_run_writes_mlx_lm_compatible_run_dir(tiny_model, small_data, tmp_path):
    import mlx.core as mx
    import mlx_lm

    out = tmp_path / "run"
    events = []
    result = train(_cfg(tiny_model, small_data, out), on_event=events.append)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapters.safetensors", "checkpoints", "metrics.jsonl"]
    # the last three checkpoints, each with optimizer state
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-0000004", "step-0000008", "step-0000012"]
    assert (out / "checkpoints" / "step-0000012" / "optimizer.safetensors").exists()

    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "lora" and cfg["num_layers"] == 2
    assert cfg["lora_parameters"] == {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": cfg["lora_parameters"]["keys"]}
    assert len(cfg["lora_parameters"]["keys"]) == 7
    assert cfg["backend"] == "mlx" and cfg["config"]["iters"] == 12 and cfg["versions"]["mlx"]
    assert cfg["base_model"]["kind"] == "dir"

    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(13))
    assert lines[0]["val_loss"] == result.initial_val_loss
    assert all({"loss", "lr", "tokens_per_sec", "peak_memory_bytes"} <= set(l) for l in lines[1:])
    assert lines[-1]["val_loss"] == result.final_val_loss
    assert result.final_val_loss < 0.7 * result.initial_val_loss
    kinds = [e.kind for e in events if e.kind != "note"]
    assert kinds[:2] == ["start", "val"] and kinds[-1] == "done"

    # mlx-lm loads the adapter unchanged and agrees with ours
    from mlxtune.generate import load

    ours = load(None, out)
    theirs, _ = mlx_lm.load(str(tiny_model), adapter_path=str(out))
    x = mx.array([[5, 17, 42, 99]])
    np.testing.assert_allclose(np.array(theirs(x)), np.array(ours.model(x)), atol=1e-4)


def test_same_seed_same_losses(tiny_model, small_data, tmp_path):
    a = train(_cfg(tiny_model, small_data, tmp_path / "a", iters=4, val_every=2))
    b = train(_cfg(tiny_model, small_data, tmp_path / "b", iters=4, val_every=2))
    la = [json.loads(l).get("loss") for l in (a.run_dir / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l).get("loss") for l in (b.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


def test_existing_run_is_refused_without_force(tiny_model, small_data, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_model, small_data, out, iters=2))
    before = (out / "adapters.safetensors").read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        train(_cfg(tiny_model, small_data, out, iters=2, seed=1))
    assert (out / "adapters.safetensors").read_bytes() == before
    train(_cfg(tiny_model, small_data, out, iters=2, seed=1), force=True)
    assert (out / "adapters.safetensors").read_bytes() != before


def test_ctrl_c_keeps_the_last_step(tiny_model, small_data, tmp_path):
    out = tmp_path / "run"

    def interrupt_at_step_5(event):
        if event.kind == "step" and event.data["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="step 5"):
        train(_cfg(tiny_model, small_data, out, save_every=100), on_event=interrupt_at_step_5)
    assert (out / "adapters.safetensors").exists()
    assert (out / "checkpoints" / "step-0000005" / "adapters.safetensors").exists()
    assert not list(out.rglob("*.tmp*"))


def test_dora_and_subset_of_layers(tiny_model, small_data, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_model, small_data, out, iters=2, dora=True, layers=1, target_modules=["q_proj", "v_proj"]))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "dora" and cfg["num_layers"] == 1
    assert cfg["lora_parameters"]["keys"] == ["self_attn.q_proj", "self_attn.v_proj"]


def test_truncation_is_reported_not_an_error(tiny_model, small_data, tmp_path):
    notes = []
    train(_cfg(tiny_model, small_data, tmp_path / "run", iters=1, max_seq_len=160), on_event=lambda e: notes.append(e.data.get("message")) if e.kind == "note" else None)
    assert any(n and "truncated" in n and "--max-seq-len 160" in n for n in notes)


def test_everything_truncated_away_is_an_error(tiny_model, small_data, tmp_path):
    from mlxtune.errors import DataError

    with pytest.raises(DataError, match="raise --max-seq-len"):
        train(_cfg(tiny_model, small_data, tmp_path / "run", iters=1, max_seq_len=16))
    assert not (tmp_path / "run").exists()
