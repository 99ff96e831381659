"""Going on from where training stopped: extending a run (--resume RUN --iters N), starting a run from an adapter (--init-adapter).

Through the command line, with the tiny model. An extended run goes on from
its last state (adapters, AdamW moments, data order, step), with the
learning-rate schedule it states; a run from an adapter starts where the
adapter's run ended (its step-0 validation loss is the source's last), in the
adapter's shape, on the adapter's base model only.
"""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlxtune.formats import safetensors as npio
from mlxtune.cli import cli
from mlxtune.training.config import TrainConfig
from mlxtune.training.train import TrainingInterrupted, learning_rate_at, train

from tiny import make_tiny_model

COMMON = ["--max-seq-len", 256, "-b", 2, "--lr", 5e-3, "--val-every", 5, "--no-report"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _state(run_dir: Path, step: int) -> dict:
    return json.loads((run_dir / "checkpoints" / f"step-{step:07d}" / "state.json").read_text())


def _train(tiny_model, data, out, backend, *extra):
    r = run("lora", "--data", data, "--model", tiny_model, "-o", out, "--backend", backend, *COMMON, *extra)
    assert r.exit_code == 0, r.output
    return r


# ---------------------------------------------------------------- (a) extending a run


def test_a_finished_run_is_extended_to_a_new_total_with_a_new_cycle(tiny_model, small_data, tmp_path, backend):
    run_dir = tmp_path / "run"
    _train(tiny_model, small_data, run_dir, backend, "--iters", 10, "--dropout", 0.1)
    before = _metrics(run_dir)
    r = run("lora", "--resume", run_dir)
    assert r.exit_code == 2 and "already finished (step 10 of 10)" in r.output and f"--resume {run_dir} --iters N" in r.output
    r = run("lora", "--resume", run_dir, "--iters", 10)
    assert r.exit_code == 2 and "is at step 10 already" in r.output and "new total, counted from the run's start" in r.output

    r = run("lora", "--resume", run_dir, "--iters", 20, "--no-report")
    assert r.exit_code == 0, r.output
    assert "Extending the finished run from step 10 to 20" in r.output
    assert "Schedule: a new cycle for steps 11-20" in r.output and "cosine decay to 5.0e-04 at step 20" in r.output
    assert "Done: 20 steps (extended after step 10: 10 steps)" in r.output

    after = _metrics(run_dir)
    assert [m["step"] for m in after] == list(range(21))  # each step once, going on from 10
    assert after[:11] == before  # the first ten untouched
    cfg = TrainConfig(learning_rate=5e-3)
    for m in after[11:]:  # a warmup + cosine cycle over the ten added steps
        assert m["lr"] == pytest.approx(learning_rate_at(cfg, m["step"] - 10, 10), rel=1e-12)
    loss = {m["step"]: m["loss"] for m in after if "loss" in m}
    assert abs(loss[11] - loss[10]) < 0.25 * (loss[1] - loss[10])  # the loss goes on from where it was, not from the start
    assert after[-1]["val_loss"] < before[-1]["val_loss"]
    assert after[-1]["trained_tokens"] > before[-1]["trained_tokens"]

    state = _state(run_dir, 20)
    assert state["finished"] and state["total"] == 20 and state["schedule"] == [[0, 10], [10, 20]]
    assert state["batches_drawn"] == 20  # the data order went on (one batch a step), not from the first batch again
    opt, _ = npio.read_safetensors(run_dir / "checkpoints" / "step-0000020" / "optimizer.safetensors")
    assert int(np.asarray(opt["step"]).reshape(-1)[0]) == 20  # AdamW's step (and moments) went on, not from 0
    config = json.loads((run_dir / "adapter_config.json").read_text())
    assert config["config"]["iters"] == 20 and config["schedule"] == [[0, 10], [10, 20]]
    best = json.loads((run_dir / "best" / "adapter_config.json").read_text())["best"]
    assert best["step"] == state["best_step"] and best["val_loss"] == pytest.approx(min(m["val_loss"] for m in after if "val_loss" in m))

    # and once more, by epochs (11 steps each): 2 epochs are 22 steps in all
    r = run("lora", "--resume", run_dir, "--epochs", 2)
    assert r.exit_code == 0, r.output
    assert "Extending the finished run from step 20 to 22" in r.output and "Report:" in r.output
    assert _state(run_dir, 22)["schedule"] == [[0, 10], [10, 20], [20, 22]]
    assert "**Extended**: learning-rate cycles over steps 1-10, 11-20, 21-22" in (run_dir / "report.md").read_text()


def test_an_extension_stopped_and_resumed_equals_the_extension_straight(tiny_model, small_data, tmp_path):
    """The new cycle is part of the checkpoint: a plain --resume of an interrupted extension follows it."""
    for name in ("straight", "stopped"):
        _train(tiny_model, small_data, tmp_path / name, "numpy", "--iters", 6, "--dropout", 0.1)
    assert run("lora", "--resume", tmp_path / "straight", "--iters", 12).exit_code == 0

    from mlxtune.training.train import resume

    def stop_at_9(event):
        if event.kind == "step" and event.data["step"] == 9:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="step 9 of 12"):
        resume(tmp_path / "stopped", on_event=stop_at_9, iters=12)
    r = run("lora", "--resume", tmp_path / "stopped")
    assert r.exit_code == 0 and "Resuming at step 9 of 12" in r.output, r.output
    assert _kept(tmp_path / "stopped") == _kept(tmp_path / "straight") and len(_kept(tmp_path / "straight")) == 13


def _kept(run_dir: Path) -> list[dict]:
    """What must be the same step for step, whatever the timing: losses and learning rates."""
    return [{k: m.get(k) for k in ("step", "loss", "lr", "val_loss")} for m in _metrics(run_dir)]


def test_a_stopped_run_resumed_to_another_total_replans_its_decay(tiny_model, small_data, tmp_path):
    """Stopped at 5 of 10: --iters 10 is the straight run; --iters 15 re-plans the cosine to end at 15."""
    cfg = TrainConfig(model=str(tiny_model), data=str(small_data), iters=10, batch_size=2, learning_rate=5e-3, val_every=5, save_every=50, max_seq_len=256, backend="numpy")

    def stop_at_5(event):
        if event.kind == "step" and event.data["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)

    import dataclasses

    straight = tmp_path / "straight"
    train(dataclasses.replace(cfg, output=str(straight)))
    for name in ("same", "longer"):
        with pytest.raises(TrainingInterrupted):
            train(dataclasses.replace(cfg, output=str(tmp_path / name)), on_event=stop_at_5)

    r = run("lora", "--resume", tmp_path / "same", "--iters", 10, "--no-report")
    assert r.exit_code == 0 and "Resuming at step 5 of 10" in r.output and "Schedule:" not in r.output, r.output
    assert _kept(tmp_path / "same") == _kept(straight)

    r = run("lora", "--resume", tmp_path / "longer", "--iters", 15, "--no-report")
    assert r.exit_code == 0, r.output
    assert "Resuming at step 5 of 15" in r.output and "Schedule: the cosine decay is re-planned to end at step 15 instead of 10" in r.output
    lrs = {m["step"]: m["lr"] for m in _metrics(tmp_path / "longer") if "lr" in m}
    assert [lrs[s] for s in range(1, 6)] == [learning_rate_at(cfg, s, 10) for s in range(1, 6)]
    assert [lrs[s] for s in range(6, 16)] == pytest.approx([learning_rate_at(cfg, s, 15) for s in range(6, 16)], rel=1e-12)
    assert _state(tmp_path / "longer", 15)["schedule"] == [[0, 15]]


def test_an_extension_refuses_other_settings_other_data_and_two_totals(tiny_model, small_data, tmp_path):
    run_dir = tmp_path / "run"
    _train(tiny_model, small_data, run_dir, "numpy", "--iters", 3)
    r = run("lora", "--resume", run_dir, "--iters", 6, "--lr", 1e-4)
    assert r.exit_code == 2 and "drop --learning-rate" in r.output and "only --iters or --epochs" in r.output
    r = run("lora", "--resume", run_dir, "--iters", 6, "--epochs", 2)
    assert r.exit_code == 1 and "either 'iters' or 'epochs'" in r.output
    lines = small_data.read_text().splitlines(keepends=True)
    small_data.write_text("".join(lines[:-1]))
    r = run("lora", "--resume", run_dir, "--iters", 6)
    assert r.exit_code == 1 and "changed since the run started" in r.output
    assert [m["step"] for m in _metrics(run_dir)] == [0, 1, 2, 3]  # nothing written
    assert json.loads((run_dir / "adapter_config.json").read_text())["config"]["iters"] == 3


def test_the_schedule_of_an_early_stopped_run_gets_a_new_cycle_from_where_it_stopped():
    from mlxtune.training.schedule import Schedule

    cfg = TrainConfig(learning_rate=1e-3, warmup=2)
    first = Schedule.of(cfg, 10, {"step": 6, "total": 10})  # a checkpoint written before there were cycles
    assert first.cycles == [(0, 10)]
    longer, text = first.extended(6, 12, finished=True)
    assert longer.cycles == [(0, 10), (6, 12)] and "had stopped early at step 6" in text and "warmup over 2 steps" in text
    assert [longer.lr(s) for s in range(1, 7)] == [learning_rate_at(cfg, s, 10) for s in range(1, 7)]
    assert [longer.lr(s) for s in range(7, 13)] == [learning_rate_at(cfg, s - 6, 6) for s in range(7, 13)]
    assert Schedule.of(cfg, 12, {"schedule": longer.to_list()}).cycles == longer.cycles


# ---------------------------------------------------------------- (b) a new run from an adapter


@pytest.fixture
def source_run(tiny_model, small_data, tmp_path):
    """A finished run in a shape other than the defaults: rank 4, alpha 12, q_proj and v_proj of the last block."""
    out = tmp_path / "source"
    _train(tiny_model, small_data, out, "numpy", "--iters", 10, "--rank", 4, "--alpha", 12, "--target-modules", "q_proj,v_proj", "--layers", 1)
    return out


def test_a_run_starts_from_a_runs_adapter_where_it_ended(source_run, small_data, tmp_path, backend):
    final_val = _metrics(source_run)[-1]["val_loss"]
    for i, start in enumerate([source_run, source_run / "best", source_run / "checkpoints" / "step-0000010"]):
        out = tmp_path / f"new{i}"
        r = run("lora", "--data", small_data, "--init-adapter", start, "-o", out, "--backend", backend, "--iters", 2, *COMMON)  # no --model: the adapter's
        assert r.exit_code == 0, r.output
        assert "Starting from" in r.output and "LoRA rank 4, scale 3, q_proj, v_proj of 1 blocks" in r.output and "start afresh" in r.output
        tol = 1e-12 if backend == "numpy" else 1e-5
        assert _metrics(out)[0]["val_loss"] == pytest.approx(final_val, rel=tol)  # step 0: where the source ended
        config = json.loads((out / "adapter_config.json").read_text())
        assert config["lora_parameters"] | {"dropout": 0} == {"rank": 4, "scale": 3.0, "dropout": 0, "keys": ["self_attn.q_proj", "self_attn.v_proj"]}
        assert config["num_layers"] == 1 and config["config"]["init_adapter"] == str(start)
        kind = ["run", "best", "checkpoint"][i]
        record = config["init_adapter"]
        assert (record["path"], record["kind"], record["step"]) == (str(start.resolve()), kind, 10)
        assert record["base_model"]["path"] == config["base_model"]["path"]
        opt, _ = npio.read_safetensors(out / "checkpoints" / "step-0000002" / "optimizer.safetensors")
        assert int(np.asarray(opt["step"]).reshape(-1)[0]) == 2  # a fresh optimizer
        assert [m["step"] for m in _metrics(out)] == [0, 1, 2]
        if backend == "mlx":
            break
    # a run started from an adapter resumes and extends like any other (from its own checkpoint, not the adapter)
    (source_run / "adapters.safetensors").unlink()
    r = run("lora", "--resume", tmp_path / "new0", "--iters", 4)
    assert r.exit_code == 0 and "Extending the finished run from step 2 to 4" in r.output, r.output


def test_a_run_starts_from_a_peft_adapter(source_run, small_data, tmp_path, backend):
    assert run("export", "-f", "peft", "--adapter", source_run, "-o", tmp_path / "peft").exit_code == 0
    out = tmp_path / "new"
    r = run("lora", "--data", small_data, "--init-adapter", tmp_path / "peft", "-o", out, "--backend", backend, "--iters", 2, *COMMON)
    assert r.exit_code == 0, r.output
    assert "Starting from the PEFT adapter" in r.output
    assert _metrics(out)[0]["val_loss"] == pytest.approx(_metrics(source_run)[-1]["val_loss"], rel=1e-5)
    record = json.loads((out / "adapter_config.json").read_text())["init_adapter"]
    assert record["kind"] == "peft" and (record["rank"], record["scale"], record["num_layers"]) == (4, 3.0, 1)


def test_an_adapter_of_another_base_or_shape_is_refused(source_run, tiny_model, small_data, tmp_path):
    other = make_tiny_model(tmp_path / "other", seed=1)  # the same architecture, other weights
    out = tmp_path / "new"
    r = run("lora", "--data", small_data, "--init-adapter", source_run, "--model", other, "-o", out, "--iters", 1, *COMMON)
    assert r.exit_code == 1 and f"was trained on {tiny_model}, not on this run's model {other} (their weights differ)" in r.output, r.output
    wider = make_tiny_model(tmp_path / "wider", intermediate_size=96)
    r = run("lora", "--data", small_data, "--init-adapter", source_run, "--model", wider, "-o", out, "--iters", 1, *COMMON)
    assert r.exit_code == 1 and "not on this run's model" in r.output
    r = run("lora", "--data", small_data, "--init-adapter", source_run, "--rank", 8, "--target-modules", "q_proj,v_proj", "--alpha", 24, "-o", out, "--iters", 1, *COMMON)
    assert r.exit_code == 2 and "keeps the adapter's rank, scale and adapted layers; drop --rank 8 (the adapter's: 4), --alpha 24" in r.output, r.output
    assert "--target-modules" not in r.output.split("drop", 1)[1]  # the same targets are no conflict
    r = run("lora", "--data", small_data, "--init-adapter", source_run / "best", "-o", source_run, "--force", "--iters", 1, *COMMON)
    assert r.exit_code == 2 and "is inside" in r.output and (source_run / "best" / "adapters.safetensors").exists()
    r = run("lora", "--data", small_data, "--init-adapter", tmp_path / "nothing", "-o", out, "--iters", 1, *COMMON)
    assert r.exit_code == 1 and "no such file or directory" in r.output
    assert not out.exists()
