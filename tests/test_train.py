"""A whole fine-tune on the tiny model: files written, loss going down, mlx-lm compatibility."""

import json

import numpy as np
import pytest

from mlxtune.training.config import TrainConfig
from mlxtune.errors import OutputExistsError
from mlxtune.training.train import learning_rate_at, train

from conftest import needs_mlx




def _cfg(tiny_model, data, out, **kw):
    base = dict(model=str(tiny_model), data=str(data), output=str(out), iters=12, batch_size=4, learning_rate=5e-3, val_every=6, save_every=4, max_seq_len=256)
    base.update(kw)
    return TrainConfig(**base)


def test_run_writes_the_run_dir(tiny_model, small_data, tmp_path, backend):
    out = tmp_path / "run"
    events = []
    result = train(_cfg(tiny_model, small_data, out, backend=backend), on_event=events.append)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapters.safetensors", "best", "checkpoints", "metrics.jsonl"]
    # the last three checkpoints, each with optimizer state
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-0000004", "step-0000008", "step-0000012"]
    assert (out / "checkpoints" / "step-0000012" / "optimizer.safetensors").exists()

    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "lora" and cfg["num_layers"] == 2
    assert cfg["lora_parameters"] == {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": cfg["lora_parameters"]["keys"]}
    assert len(cfg["lora_parameters"]["keys"]) == 7
    assert cfg["backend"] == backend and cfg["config"]["iters"] == 12 and cfg["versions"]["numpy"]
    assert cfg["base_model"]["kind"] == "dir"

    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(13))
    assert lines[0]["val_loss"] == result.initial_val_loss
    assert all({"loss", "lr", "tokens_per_sec", "peak_memory_bytes"} <= set(l) for l in lines[1:])
    assert lines[-1]["val_loss"] == result.final_val_loss
    assert result.final_val_loss < 0.7 * result.initial_val_loss
    kinds = [e.kind for e in events if e.kind not in ("note", "plan", "validate")]
    assert kinds[:2] == ["start", "val"] and kinds[-1] == "done"



@needs_mlx
@pytest.mark.parametrize("trained_on", ["mlx", "numpy"])
def test_adapters_load_in_mlx_lm_and_on_either_backend(tiny_model, small_data, tmp_path, trained_on):
    """Adapters are the same files whichever backend made them."""
    import mlx.core as mx
    import mlx_lm

    from mlxtune.inference import load

    out = tmp_path / "run"
    train(_cfg(tiny_model, small_data, out, iters=4, backend=trained_on))
    ids = [5, 17, 42, 99, 7]
    theirs, _ = mlx_lm.load(str(tiny_model), adapter_path=str(out))
    ref = np.array(theirs(mx.array([ids])))
    on_mlx = np.array(load(None, out, backend="mlx").model(mx.array([ids])))
    on_numpy = load(None, out, backend="numpy").model.forward(np.array([ids]))
    np.testing.assert_allclose(on_mlx, ref, atol=1e-4)
    np.testing.assert_allclose(on_numpy, ref, atol=1e-3)


def test_same_seed_same_losses(tiny_model, small_data, tmp_path, backend):
    a = train(_cfg(tiny_model, small_data, tmp_path / "a", iters=4, val_every=2, backend=backend))
    b = train(_cfg(tiny_model, small_data, tmp_path / "b", iters=4, val_every=2, backend=backend))
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


@needs_mlx
def test_dora_and_subset_of_layers(tiny_model, small_data, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_model, small_data, out, iters=2, dora=True, layers=1, target_modules=["q_proj", "v_proj"]))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "dora" and cfg["num_layers"] == 1
    assert cfg["lora_parameters"]["keys"] == ["self_attn.q_proj", "self_attn.v_proj"]


def test_truncation_is_reported_not_an_error(tiny_model, small_data, tmp_path):
    notes = []
    train(_cfg(tiny_model, small_data, tmp_path / "run", iters=1, max_seq_len=160), on_event=lambda e: notes.append(e.data.get("message")) if e.kind == "note" else None)
    assert any(n and "longer than --max-seq-len 160" in n and "will be cut" in n for n in notes)


def test_everything_truncated_away_is_an_error(tiny_model, small_data, tmp_path):
    from mlxtune.errors import DataError

    with pytest.raises(DataError, match="raise --max-seq-len"):
        train(_cfg(tiny_model, small_data, tmp_path / "run", iters=1, max_seq_len=16))
    assert not (tmp_path / "run").exists()


def test_learning_rate_schedule():
    cfg = TrainConfig(learning_rate=1e-3, warmup=0.1, min_lr_ratio=0.1)
    lrs = [learning_rate_at(cfg, s, 100) for s in range(1, 101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # 10 warmup steps
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then only down
    assert lrs[-1] == pytest.approx(1e-4)


def test_early_stopping_and_best_on_a_constructed_validation_curve(tiny_model, small_data, tmp_path, monkeypatch):
    """Validation losses 3.0 (before), 2.5, 2.0, 2.1, 2.2, 2.05, ...: with patience 3 the run stops at step 5, best/ holds step 2."""
    from mlxtune import backends
    from mlxtune.formats import safetensors as npio

    curve = iter([3.0, 2.5, 2.0, 2.1, 2.2, 2.05, 1.0, 1.0])
    weights_at = {}
    real_open = backends.open_trainer

    class Scripted:
        """The real trainer, with validation losses taken from ``curve`` (one value per validation round)."""

        def __init__(self, inner):
            self.inner, self.steps, self.round_value, self.rounds_seen = inner, 0, None, -1

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def step(self, batch, lr):
            out = self.inner.step(batch, lr)
            self.steps += 1
            weights_at[self.steps] = {k: np.array(v) for k, v in self.inner.adapter_weights().items()}
            return out

        def evaluate(self, batch):
            if self.rounds_seen != self.steps:  # first batch of a new validation round
                self.rounds_seen, self.round_value = self.steps, next(curve)
            return self.round_value * 10, 10

    monkeypatch.setattr(backends, "open_trainer", lambda *a: Scripted(real_open(*a)))
    out = tmp_path / "run"
    result = train(_cfg(tiny_model, small_data, out, iters=8, val_every=1, early_stop=3, backend="numpy"))
    assert result.stopped_early and result.steps == 5
    assert (result.best_step, result.best_val_loss) == (2, 2.0)
    best, _ = npio.read_safetensors(out / "best" / "adapters.safetensors")
    assert set(best) == set(weights_at[2]) and all(np.array_equal(best[k], weights_at[2][k]) for k in best)
    assert json.loads((out / "best" / "adapter_config.json").read_text())["best"] == {"step": 2, "val_loss": 2.0}
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["val_loss"] for m in lines[1:]] == [2.5, 2.0, 2.1, 2.2, 2.05]
    last, _ = npio.read_safetensors(out / "adapters.safetensors")  # the run itself ends with the last step's adapters
    assert all(np.array_equal(last[k], weights_at[5][k]) for k in last)
