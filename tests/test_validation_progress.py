"""Validation a user can see, stop and bound (issue 13, item 7).

The first validation over a whole validation split used to run for minutes
with no output, and a Ctrl-C during it was honoured only when it ended. Now it
reports its progress, stops between two batches on Ctrl-C (a mid-run one saves
the step with its validation pending, and --resume does it first, so the
resumed run still equals the straight one), and --val-batches N / --val-every 0
bound what it costs, with the consequences stated.
"""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import needs_mlx
from mlxtune.cli import cli
from mlxtune.training.config import TrainConfig
from mlxtune.cli.printer import TrainPrinter
from mlxtune.cli.progress import validation_line
from mlxtune.training.runlock import LOCK_NAME
from mlxtune.training.train import Event, TrainingInterrupted, latest_checkpoint, resume, train

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "data" / "notes.jsonl"


@pytest.fixture
def big_valid(tmp_path) -> Path:
    """24 train records and 240 validation records: a validation of 120 batches of 2, seconds long even on a tiny model."""
    notes = NOTES.read_text().splitlines(keepends=True)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(notes[:24]))
    (data / "valid.jsonl").write_text("".join(notes[30:270]))
    return data


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_ctrl_c_during_the_first_validation_stops_it_at_once(tiny_model, big_valid, tmp_path):
    """A real process, a real SIGINT while it validates before training: out within seconds, exit 130, nothing kept."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mlxtune", "lora", "--data", str(big_valid), "--model", str(tiny_model), "--iters", "1", "--batch-size", "2",
           "--backend", "numpy", "--no-report", "--json", "-o", str(run)]
    env = os.environ | {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    events, signalled = [], None
    try:
        for line in proc.stdout:
            events.append(json.loads(line))
            e = events[-1]
            if e["event"] == "validate" and e["batch"] >= 2 and signalled is None:
                signalled = time.monotonic()
                proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert signalled is not None, "no validation progress was reported: " + json.dumps(events[-3:])
    took = time.monotonic() - signalled
    progress = [e for e in events if e["event"] == "validate"]
    print(f"stopped {took:.1f} s after the signal, at batch {progress[-1]['batch']} of {progress[-1]['batches']}")
    assert proc.returncode == 130, err
    assert "Stopped: interrupted before the first step finished, nothing to keep" in err and "Traceback" not in err, err
    assert progress[0]["batch"] == 0 and progress[0]["batches"] == 120 and progress[0]["step"] == 0
    assert progress[-1]["batch"] <= 4 and took < 15  # a batch or two after the signal, not the 118 left
    assert any(e["event"] == "note" and "stopping the validation before training" in e["message"] for e in events)
    assert not any(e["event"] in ("val", "step") for e in events)
    assert latest_checkpoint(run) is None and not (run / LOCK_NAME).exists()


def _cfg(tiny_model, data, out, **kw):
    base = dict(model=str(tiny_model), data=str(data), output=str(out), iters=10, batch_size=1, grad_accumulation=2, learning_rate=5e-3, val_every=3, save_every=4,
                max_seq_len=256, backend="numpy")
    return TrainConfig(**(base | kw))


def test_ctrl_c_during_a_mid_run_validation_saves_the_step_and_resume_validates_it_first(tiny_model, small_data, tmp_path):
    """SIGINT in the validation of step 6 (2 batches; no checkpoint due): checkpoint 6, its validation pending; the resumed run equals the straight one."""
    straight = train(_cfg(tiny_model, small_data, tmp_path / "straight"))
    run = tmp_path / "run"
    seen = []

    def ctrl_c_in_validation(event):
        if event.kind == "validate":
            seen.append((event.data["step"], event.data["batch"]))
            if event.data["step"] == 6 and event.data["batch"] == 1:
                os.kill(os.getpid(), signal.SIGINT)
        if event.kind == "note":
            seen.append(event.data["message"])

    with pytest.raises(TrainingInterrupted, match=r"interrupted at step 6 of 10 \(its validation had not finished: the resumed run does it first\): checkpoint .*step-0000006"):
        train(_cfg(tiny_model, small_data, run), on_event=ctrl_c_in_validation)
    assert seen[-2:] == [(6, 1), "stopping the validation of step 6 and saving a checkpoint (Ctrl-C again to stop at once)"]  # no batch after the signal's
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["step"] == 6 and state["pending_validation"]["step"] == 6 and "val_loss" not in state["pending_validation"]
    assert max(m["step"] for m in _metrics(run)) == 5  # step 6 is logged once its validation is done

    events = []
    resumed = resume(run, on_event=events.append)
    first = next(e for e in events if e.kind == "validate")
    assert first.data["step"] == 6  # before any training step
    a, b = _metrics(tmp_path / "straight"), _metrics(run)
    assert [m["step"] for m in b] == list(range(11))
    for x, y in zip(a, b):
        assert {k: x.get(k) for k in ("step", "loss", "val_loss", "best")} == {k: y.get(k) for k in ("step", "loss", "val_loss", "best")}
    assert (resumed.best_step, resumed.best_val_loss, resumed.final_val_loss) == (straight.best_step, straight.best_val_loss, straight.final_val_loss)


def _lora(*args):
    return CliRunner().invoke(cli, ["lora", *map(str, args)])


def test_val_batches_validates_the_first_n_batches_and_says_so(tiny_model, small_data, tmp_path):
    common = ["--data", small_data, "--model", tiny_model, "--iters", 4, "--val-every", 2, "--batch-size", 1, "--backend", "numpy", "--no-report"]
    r = _lora(*common, "--val-batches", 2, "--json", "-o", tmp_path / "two")
    assert r.exit_code == 0, r.output
    events = [json.loads(line) for line in r.output.splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert start["validation"] == {"batches": 2, "of_batches": 2, "examples": 2, "of_examples": 2, "every": 2}  # 24 records: 2 held out
    r = _lora(*common, "--val-batches", 1, "-o", tmp_path / "one")
    assert r.exit_code == 0, r.output
    assert "Validation: the first 1 of 2 batches (1 of 2 examples; --val-batches), before training, every 2 steps and at the end" in r.output
    full, part = _metrics(tmp_path / "two"), _metrics(tmp_path / "one")
    assert full[0]["val_loss"] != part[0]["val_loss"] and [m["step"] for m in part if "val_loss" in m] == [0, 2, 4]
    r = _lora(*common, "--val-batches", 0, "-o", tmp_path / "zero")
    assert r.exit_code == 1 and "val_batches' must be positive" in r.output and "val_every to 0" in r.output


def test_val_every_0_skips_validation_and_says_what_that_costs(tiny_model, small_data, tmp_path):
    run = tmp_path / "run"
    r = _lora("--data", small_data, "--model", tiny_model, "--iters", 3, "--backend", "numpy", "--val-every", 0, "-o", run)
    assert r.exit_code == 0, r.output
    assert "Validation: none (--val-every 0): no validation loss, no best/ adapters, no early stopping" in r.output
    assert "val loss" not in r.output and "  val " not in r.output and "; validation loss" not in r.output and "Best:" not in r.output
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3] and not any("val_loss" in m for m in _metrics(run))
    assert not (run / "best").exists()
    assert "- **Validation**: none (val_every 0): no validation loss, no best/ adapters, no early stopping" in (run / "report.md").read_text()
    r = _lora("--data", small_data, "--model", tiny_model, "--val-every", 0, "--early-stop", 2, "-o", tmp_path / "never")
    assert r.exit_code == 1 and "--early-stop" in r.output and "--val-every 0" in r.output and "drop one of them" in r.output
    assert not (tmp_path / "never").exists()
    help_text = " ".join(_lora("--help").output.split())
    assert "0: never validate" in help_text and "--val-batches" in help_text and "not with --val-every 0" in help_text


def test_the_memory_plan_leaves_out_a_validation_that_never_runs(tiny_model, tmp_path):
    """A validation record far longer than any train record sets the planned sequence length only if it is validated."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps({"text": f"short note {i}"}) + "\n" for i in range(8)))
    (data / "valid.jsonl").write_text(json.dumps({"text": "a long record " * 60}) + "\n")

    def planned(*extra):
        r = _lora("--data", data, "--model", tiny_model, "--iters", 1, "--backend", "numpy", "--no-report", "--json", "-o", tmp_path / f"run{len(extra)}", *extra)
        assert r.exit_code == 0, r.output
        return next(json.loads(line) for line in r.output.splitlines() if '"plan"' in line)["plan"]["estimate"]["seq_len"]

    assert planned() > 100 and planned("--val-every", 0) <= 16


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_the_printer_shows_a_validation_bar_plain_lines_or_json(monkeypatch):
    start = {"data": "d", "model": "m", "backend": "numpy", "compute": "cpu", "trainable": 1e5, "layers": 2, "keys": ["q_proj"], "steps": 10,
             "steps_per_epoch": 5, "run_dir": "runs/x", "valid_examples": 30, "validation": {"batches": 8, "of_batches": 8, "examples": 30, "of_examples": 30, "every": 25}}
    assert validation_line(start) == "Validation: 30 examples in 8 batches, before training, every 25 steps and at the end"
    progress = [Event("validate", {"step": 0, "batch": i, "batches": 8, "elapsed": 2.0 * i}) for i in range(9)]

    tty = Tty()
    monkeypatch.setattr("shutil.get_terminal_size", lambda: os.terminal_size((100, 20)))
    with TrainPrinter(out=tty) as p:
        p(Event("start", start))
        for e in progress[:4]:
            p(e)
        shown = tty.getvalue()
        p(progress[-1])
        p(Event("val", {"step": 0, "val_loss": 2.5}))
    assert "Validation: 30 examples in 8 batches" in shown
    assert shown.endswith("validating before training: 3/8 batches, elapsed 0m06s, ETA 0m10s") and "\r\x1b[K[" in shown
    assert "step     0  val loss 2.500 (before training)" in tty.getvalue()

    now = [0.0]
    log = io.StringIO()
    with TrainPrinter(out=log) as p:
        p.throttle.clock = lambda: now[0]
        for e in progress:
            now[0] = e.data["elapsed"]
            p(e)
    lines = log.getvalue().splitlines()  # one line each 10 s of a 16 s validation, none at its start or end
    assert lines == ["validating before training: 5/8 batches, elapsed 0m10s, ETA 0m06s"]

    out = io.StringIO()
    with TrainPrinter(as_json=True, out=out) as p:
        for e in progress[:2]:
            p(e)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [{"event": "validate"} | e.data for e in progress[:2]]


@needs_mlx
def test_ctrl_c_during_a_distributed_validation_stops_every_rank(tiny_model, big_valid, tmp_path):
    """Two processes (mlx.launch): SIGINT to both while they validate; after the same round of batches both stop, within seconds."""
    from test_distributed import _children, _launch

    run = tmp_path / "run"
    proc = _launch(2, ["lora", "--data", big_valid, "--model", tiny_model, "--iters", 1, "--batch-size", 1, "--backend", "numpy", "--no-report", "--json", "-o", run],
                   tmp_path, start_new_session=True)
    lines, signalled = [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            e = json.loads(line) if line.startswith("{") else {}
            if e.get("event") == "validate" and e["batch"] >= 2 and signalled is None:
                for pid in _children(proc.pid):
                    if b"MLX_RANK=" in Path(f"/proc/{pid}/environ").read_bytes():
                        os.kill(pid, signal.SIGINT)
                signalled = time.monotonic()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = "".join(lines)
    assert signalled is not None and time.monotonic() - signalled < 20, out
    progress = [json.loads(line) for line in lines if '"validate"' in line]
    assert progress[0]["batches"] == 240 and progress[-1]["batch"] < 20, progress[-1]
    assert "Traceback" not in out and out.count("Stopped: interrupted before the first step finished, nothing to keep") == 2, out
    assert latest_checkpoint(run) is None
