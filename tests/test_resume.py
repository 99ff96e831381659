"""Checkpoints with the whole state, resuming, Ctrl-C, gradient accumulation and checkpointing.

The promise tested here: a run stopped at step k and resumed takes the same
steps, on the same batches, with the same optimizer state, as a run never
stopped; and however it is stopped, the last checkpoint is whole.
"""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from mlxtune.training.config import TrainConfig
from mlxtune.errors import DataError, UsageError
from mlxtune.training.train import TrainingInterrupted, latest_checkpoint, resume, train





def _cfg(tiny_model, data, out, **kw):
    base = dict(model=str(tiny_model), data=str(data), output=str(out), iters=10, batch_size=2, grad_accumulation=2, learning_rate=5e-3,
                dropout=0.1, val_every=3, save_every=4, max_seq_len=256)
    return TrainConfig(**(base | kw))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in _metrics(run) if "loss" in m}


def _sigint_at(step: int):
    def on_event(event):
        if event.kind == "step" and event.data["step"] == step:
            os.kill(os.getpid(), signal.SIGINT)

    return on_event


def test_interrupt_and_resume_equals_the_straight_run(tiny_model, small_data, tmp_path, backend):
    """SIGINT at step 5 (between checkpoints, mid-epoch, with dropout and accumulation), resume: the same losses step for step."""
    straight = train(_cfg(tiny_model, small_data, tmp_path / "straight", backend=backend))
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match=r"step 5 of 10.*--resume"):
        train(_cfg(tiny_model, small_data, run, backend=backend), on_event=_sigint_at(5))
    assert latest_checkpoint(run).name == "step-0000005"
    state = json.loads((run / "checkpoints" / "step-0000005" / "state.json").read_text())
    assert state["step"] == 5 and state["batches_drawn"] == 10 and not state["finished"]
    events = []
    resumed = resume(run, on_event=events.append)
    assert resumed.resumed_from == 5 and resumed.steps == 10
    assert [e.kind for e in events if e.kind not in ("note", "plan")][0] == "resume"
    a, b = _losses(tmp_path / "straight"), _losses(run)
    assert sorted(a) == sorted(b) == list(range(1, 11))
    tol = 0 if backend == "numpy" else 1e-6
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=tol, abs=tol), step
    # validation, best/ and the final adapters agree too
    assert resumed.final_val_loss == pytest.approx(straight.final_val_loss, rel=max(tol, 1e-12))
    assert (resumed.best_step, _metrics(run)[0]["val_loss"]) == (straight.best_step, straight.initial_val_loss)
    from mlxtune.formats import safetensors as npio

    wa, _ = npio.read_safetensors(tmp_path / "straight" / "adapters.safetensors")
    wb, _ = npio.read_safetensors(run / "adapters.safetensors")
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=0, atol=max(tol, 0) * 10)
    # metrics.jsonl holds each step once
    assert [m["step"] for m in _metrics(run)] == list(range(11))


def test_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tiny_model, small_data, tmp_path):
    """A KeyboardInterrupt mid-run (what a second Ctrl-C raises) writes nothing more; the step-4 checkpoint is whole and resumable."""
    run = tmp_path / "run"

    def second_ctrl_c(event):
        if event.kind == "step" and event.data["step"] == 6:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="at once.*step-0000004.*--resume"):
        train(_cfg(tiny_model, small_data, run, backend="numpy"), on_event=second_ctrl_c)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000004"]
    assert max(m["step"] for m in _metrics(run)) == 6  # logged past the checkpoint ...
    resume(run)
    assert [m["step"] for m in _metrics(run)] == list(range(11))  # ... and replayed once on resume
    straight = train(_cfg(tiny_model, small_data, tmp_path / "straight", backend="numpy"))
    assert _losses(run) == _losses(tmp_path / "straight") and straight.steps == 10


def test_ctrl_c_while_a_checkpoint_is_written_leaves_the_previous_one_whole(tiny_model, small_data, tmp_path, monkeypatch):
    from mlxtune.formats import safetensors as npio

    run = tmp_path / "run"
    real = npio.write_safetensors

    def cut_short(path, arrays, *a, **kw):
        if "step-0000008" in str(path) and Path(path).name == "optimizer.safetensors":
            Path(path).write_bytes(b"half a fi")
            raise KeyboardInterrupt
        return real(path, arrays, *a, **kw)

    monkeypatch.setattr(npio, "write_safetensors", cut_short)
    with pytest.raises(TrainingInterrupted, match="step-0000004"):
        train(_cfg(tiny_model, small_data, run, backend="numpy"))
    monkeypatch.setattr(npio, "write_safetensors", real)
    assert latest_checkpoint(run).name == "step-0000004"
    result = resume(run)
    assert result.resumed_from == 4 and result.steps == 10
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_saves_and_says_how_to_go_on(tiny_model, small_data, tmp_path, signum):
    """A real signal (not an exception in a callback): the step finishes, its checkpoint is saved, the handlers are given back."""
    run = tmp_path / "run"
    before = signal.getsignal(signum)

    def send(event):
        if event.kind == "step" and event.data["step"] == 2:
            os.kill(os.getpid(), signum)

    with pytest.raises(TrainingInterrupted, match="step 2 of 10.*--resume"):
        train(_cfg(tiny_model, small_data, run, backend="numpy", save_every=100), on_event=send)
    assert latest_checkpoint(run).name == "step-0000002"
    assert json.loads((run / "checkpoints" / "step-0000002" / "state.json").read_text())["step"] == 2
    assert signal.getsignal(signum) is before


def test_resume_refuses_what_cannot_be_replayed(tiny_model, small_data, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UsageError, match="not a training run"):
        resume(tmp_path)
    with pytest.raises(TrainingInterrupted):
        train(_cfg(tiny_model, small_data, run, backend="numpy", save_every=100), on_event=_sigint_at(3))
    lines = small_data.read_text().splitlines(keepends=True)
    small_data.write_text("".join(lines[1:] + lines[:1]))  # same records, another order: another split
    with pytest.raises(DataError, match="changed since the run started"):
        resume(run)
    small_data.write_text("".join(lines))
    assert resume(run).steps == 10
    with pytest.raises(UsageError, match="already finished"):
        resume(run)
    fresh = tmp_path / "fresh"
    with pytest.raises(TrainingInterrupted, match="before the first step"):
        train(_cfg(tiny_model, small_data, fresh, backend="numpy"), on_event=lambda e: os.kill(os.getpid(), signal.SIGINT) if e.kind == "val" else None)
    with pytest.raises(UsageError, match="no checkpoint"):
        resume(fresh)


def test_resume_from_the_cli_rejects_new_settings(tiny_model, small_data, tmp_path):
    from click.testing import CliRunner

    from mlxtune.cli import cli

    r = CliRunner().invoke(cli, ["lora", "--resume", str(tmp_path), "--lr", "1e-4"])
    assert r.exit_code == 2 and "--learning-rate" in r.output and "settings it was started with" in r.output


def test_accumulated_micro_batches_make_the_update_of_one_batch(tiny_model, tmp_path, backend):
    """Two micro-batches of 2 give the loss and update of one batch of 4 (token-weighted)."""
    from mlxtune.backends import open_trainer
    from mlxtune.data.batching import make_batch, Example

    rng = np.random.default_rng(0)
    examples = [Example(rng.integers(3, 300, n).astype(np.int32), rng.random(n) < 0.7) for n in (40, 33, 21, 40)]
    cfg = TrainConfig(model=str(tiny_model), backend=backend, seed=3)
    one, two = open_trainer(backend, tiny_model, cfg), open_trainer(backend, tiny_model, cfg)
    la, na = one.step(make_batch(examples), 1e-2)
    lb, nb = two.step([make_batch(examples[:2]), make_batch(examples[2:])], 1e-2)
    assert na == nb and lb == pytest.approx(la, rel=1e-5)
    wa, wb = one.adapter_weights(), two.adapter_weights()
    # Adam's first step is lr * g / (|g| + eps): for the few gradients near eps it magnifies
    # float32 summation-order differences, so the bound is a share of the step size lr.
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=1e-4, atol=5e-3 * 1e-2)
    assert any(np.abs(wa[k]).max() > 0 for k in wa if "lora_b" in k)  # the step moved something


def test_grad_checkpoint_changes_memory_not_results(tiny_model, backend):
    from mlxtune.backends import open_trainer
    from mlxtune.data.batching import make_batch, Example

    rng = np.random.default_rng(1)
    batch = make_batch([Example(rng.integers(3, 300, 48).astype(np.int32), np.ones(48, bool)) for _ in range(3)])
    results = {}
    for ckpt in (False, True):
        t = open_trainer(backend, tiny_model, TrainConfig(model=str(tiny_model), backend=backend, grad_checkpoint=ckpt))
        if backend == "numpy":
            n_blocks = t.model.config.num_hidden_layers
            assert t.model.activation_plan(3, 48) == ((0, n_blocks) if ckpt else (n_blocks, 0))
        results[ckpt] = (t.step(batch, 1e-2)[0], t.adapter_weights())
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-6)
    for k, v in results[False][1].items():
        np.testing.assert_allclose(results[True][1][k], v, rtol=1e-5, atol=1e-7)


def test_optimizer_state_round_trips(tiny_model, backend):
    from mlxtune.backends import open_trainer
    from mlxtune.data.batching import make_batch, Example
    from mlxtune.errors import AdapterError

    rng = np.random.default_rng(2)
    batch = make_batch([Example(rng.integers(3, 300, 30).astype(np.int32), np.ones(30, bool)) for _ in range(2)])
    cfg = TrainConfig(model=str(tiny_model), backend=backend, layers=1, target_modules=["q_proj", "down_proj"])
    a = open_trainer(backend, tiny_model, cfg)
    a.step(batch, 1e-2)
    a.step(batch, 1e-2)
    b = open_trainer(backend, tiny_model, cfg)
    b.load_state(a.adapter_weights(), a.optimizer_state())
    assert a.step(batch, 5e-3) == pytest.approx(b.step(batch, 5e-3), rel=1e-6)
    wa, wb = a.adapter_weights(), b.adapter_weights()
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=1e-6, atol=1e-8)
    broken = {k: v for k, v in a.optimizer_state().items() if not k.endswith(".v")}
    with pytest.raises(AdapterError, match="optimizer state does not fit"):
        open_trainer(backend, tiny_model, cfg).load_state(a.adapter_weights(), broken)


def test_lora_fits_itself_into_memory_keeping_the_effective_batch(tiny_model, small_data, tmp_path, monkeypatch):
    """With less memory than batch 4 needs (checkpointing refused), --auto trains batch 2 x accumulation 2, and says so."""
    from mlxtune import runtime
    from mlxtune.training.plan import MemoryPlanError

    events = []
    monkeypatch.setattr(runtime, "available_memory", lambda: None)
    cfg = _cfg(tiny_model, small_data, tmp_path / "probe", iters=1, batch_size=4, grad_accumulation=1, grad_checkpoint=False, backend="numpy")
    train(cfg, on_event=events.append)
    need = next(e.data["plan"] for e in events if e.kind == "plan")["estimate"]["total"]

    monkeypatch.setattr(runtime, "available_memory", lambda: runtime.MemoryLimit(int((need - 1) / 0.8), "test"))
    events = []
    result = train(_cfg(tiny_model, small_data, tmp_path / "run", iters=3, batch_size=4, grad_accumulation=1, grad_checkpoint=False, backend="numpy"), on_event=events.append)
    plan = next(e.data for e in events if e.kind == "plan")
    assert plan["plan"]["verdict"] == "adjusted" and (plan["plan"]["batch_size"], plan["plan"]["grad_accumulation"]) == (2, 2)
    assert any("batch 2 x accumulation 2" in line for line in plan["lines"])
    saved = json.loads((tmp_path / "run" / "adapter_config.json").read_text())["config"]
    assert (saved["batch_size"], saved["grad_accumulation"], saved["grad_checkpoint"]) == (2, 2, False)
    assert result.steps == 3 and result.config.batch_size * result.config.grad_accumulation == 4

    # without --auto the run goes ahead as asked, warned; with --auto and nothing that fits, it never starts
    events = []
    train(_cfg(tiny_model, small_data, tmp_path / "asked", iters=1, batch_size=4, grad_checkpoint=False, auto_fit=False, backend="numpy"), on_event=events.append)
    assert next(e.data for e in events if e.kind == "plan")["plan"]["verdict"] == "does not fit"
    monkeypatch.setattr(runtime, "available_memory", lambda: runtime.MemoryLimit(10_000_000, "test"))
    with pytest.raises(MemoryPlanError, match="does not fit|needs"):
        train(_cfg(tiny_model, small_data, tmp_path / "never", iters=1, backend="numpy"))
    assert not (tmp_path / "never").exists()


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeping_the_last_good_checkpoint(tiny_model, small_data, tmp_path, monkeypatch):
    from mlxtune import backends
    from mlxtune.formats import safetensors as npio
    from mlxtune.errors import MlxtuneError

    real_open = backends.open_trainer
    kept = {}

    class Diverging:
        """The real trainer, whose third step reports a NaN loss."""

        def __init__(self, inner):
            self.inner, self.steps = inner, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def step(self, batch, lr):
            loss, n = self.inner.step(batch, lr)
            self.steps += 1
            if self.steps == 2:
                kept.update(self.inner.adapter_weights())
            return (float("nan") if self.steps == 3 else loss), n

    monkeypatch.setattr(backends, "open_trainer", lambda *a: Diverging(real_open(*a)))
    run = tmp_path / "run"
    with pytest.raises(MlxtuneError, match=r"loss became nan at step 3: the learning rate \(0.005\) is probably too high; the last good checkpoint is .*step-0000002"):
        train(_cfg(tiny_model, small_data, run, backend="numpy", grad_accumulation=1, save_every=2))
    weights, _ = npio.read_safetensors(run / "adapters.safetensors")
    assert all(np.array_equal(weights[k], kept[k]) for k in kept)
    assert latest_checkpoint(run).name == "step-0000002"
