"""The reviewer's findings on issue 13's merged change, each where the user meets it.

An extension (--resume RUN --iters N) is written into the checkpoint before
the first step, so a Ctrl-C in the validation the resume does first keeps it;
a run whose last step's validation was cut short is extended as a finished
one; the Done line says "extended" only when the total grew; a failed lora
leaves no empty runs/ behind; an --init-adapter refusal names where the
conflicting value was set.
"""

import json
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxtune.cli import cli
from mlxtune.training.config import TrainConfig
from mlxtune.training.train import TrainingInterrupted, latest_checkpoint, resume, train


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _cfg(tiny_model, data, out, **kw):
    base = dict(model=str(tiny_model), data=str(data), output=str(out), iters=6, batch_size=1, grad_accumulation=2, learning_rate=5e-3, val_every=3, save_every=4,
                max_seq_len=256, backend="numpy", warmup=0.1)
    return TrainConfig(**(base | kw))


def _ctrl_c_in_validation_of(step):
    def on_event(event):
        if event.kind == "validate" and event.data["step"] == step and event.data["batch"] == 1:
            os.kill(os.getpid(), signal.SIGINT)
    return on_event


def _kept(run_dir: Path) -> list[dict]:
    return [{k: m.get(k) for k in ("step", "loss", "lr", "val_loss")} for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def test_an_extension_stopped_in_the_validation_it_resumes_with_keeps_its_new_total(tiny_model, small_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="step 6 of 6"):
        train(_cfg(tiny_model, small_data, out), on_event=_ctrl_c_in_validation_of(6))
    with pytest.raises(TrainingInterrupted, match="step 6 of 12"):  # Ctrl-C again, in the pending validation the extension starts with
        resume(out, on_event=_ctrl_c_in_validation_of(6), iters=12)
    state = json.loads((latest_checkpoint(out) / "state.json").read_text())
    assert (state["step"], state["total"], state["schedule"]) == (6, 12, [[0, 6], [6, 12]])
    assert "extended" not in state and "schedule_change" not in state  # what the session said, not part of the checkpoint

    r = run("lora", "--resume", out, "--no-report")  # a plain resume goes on to the new total
    assert r.exit_code == 0, r.output
    assert "Resuming at step 6 of 12" in r.output and "Done: 12 steps (resumed after step 6: 6 steps)" in r.output
    assert json.loads((out / "adapter_config.json").read_text())["config"]["iters"] == 12
    assert [m["step"] for m in _kept(out)] == list(range(13))


def test_a_run_cut_short_in_its_last_validation_is_extended_as_a_finished_one(tiny_model, small_data, tmp_path):
    with pytest.raises(TrainingInterrupted, match="step 6 of 6"):
        train(_cfg(tiny_model, small_data, tmp_path / "cut"), on_event=_ctrl_c_in_validation_of(6))
    train(_cfg(tiny_model, small_data, tmp_path / "done"))
    outputs = {}
    for name in ("cut", "done"):
        r = run("lora", "--resume", tmp_path / name, "--iters", 12, "--no-report")
        assert r.exit_code == 0, r.output
        assert "Extending the finished run from step 6 to 12" in r.output and "Schedule: a new cycle for steps 7-12" in r.output, r.output
        assert "Done: 12 steps (extended after step 6: 6 steps)" in r.output
        outputs[name] = _kept(tmp_path / name)
    assert outputs["cut"] == outputs["done"]  # the same rates (a warmup, then the decay), losses and validations


def test_the_done_line_says_extended_only_when_the_total_grew(tiny_model, small_data, tmp_path):
    def stop_at_3(event):
        if event.kind == "step" and event.data["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    for name in ("same", "longer", "shorter"):
        with pytest.raises(TrainingInterrupted, match="step 3 of 6"):
            train(_cfg(tiny_model, small_data, tmp_path / name, val_every=50), on_event=stop_at_3)
    r = run("lora", "--resume", tmp_path / "same", "--iters", 6, "--no-report")  # the total it had: a plain resume
    assert r.exit_code == 0 and "Done: 6 steps (resumed after step 3: 3 steps)" in r.output, r.output
    r = run("lora", "--resume", tmp_path / "longer", "--iters", 8, "--no-report")
    assert r.exit_code == 0 and "Done: 8 steps (extended after step 3: 5 steps)" in r.output, r.output
    r = run("lora", "--resume", tmp_path / "shorter", "--iters", 5, "--no-report")
    assert r.exit_code == 0 and "Done: 5 steps (shortened from 6 steps, after step 3: 2 steps)" in r.output, r.output


@pytest.mark.parametrize("out", [None, "a/b/run"])
def test_a_failed_lora_leaves_no_directory_behind(tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    r = run("lora", "--data", "missing.jsonl", *(["-o", out] if out else []))
    assert r.exit_code == 1 and "missing.jsonl" in r.output, r.output
    assert os.listdir(tmp_path) == []  # not runs/ (the default runs/missing), nor a/b


def test_an_init_adapter_refusal_names_where_the_value_was_set(tiny_model, small_data, tmp_path):
    source = tmp_path / "source"
    assert run("lora", "--data", small_data, "--model", tiny_model, "-o", source, "--iters", 2, "--rank", 4, "--max-seq-len", 256, "--no-report").exit_code == 0
    conf = tmp_path / "c.yaml"
    conf.write_text("rank: 16\n")
    r = run("lora", "--data", small_data, "--init-adapter", source, "-c", conf, "--layers", 1, "-o", tmp_path / "new", "--iters", 1, "--no-report")
    assert r.exit_code == 2, r.output
    assert f"drop rank: 16 in {conf} (the adapter's: 4), --layers 1 (the adapter's: " in r.output
    assert "--rank" not in r.output
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("description: rank 16\ntrain:\n  rank: 16\n")
    r = run("lora", "--data", small_data, "--init-adapter", source, "--recipe", recipe, "-o", tmp_path / "new", "--iters", 1, "--no-report")
    assert r.exit_code == 2 and f"drop rank: 16 in recipe {recipe} (the adapter's: 4)" in r.output, r.output
