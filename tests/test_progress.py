"""Training progress: the terminal's bar, the log's plain lines, --quiet and --json."""

import io
import json
import math
import re
from pathlib import Path
from typing import get_args

import pytest
from click.testing import CliRunner

from mlxtune import runtime
from mlxtune.cli import progress
from mlxtune.cli import cli
from mlxtune.cli.printer import TrainPrinter
from mlxtune.cli.progress import Throttle, bar_line, fmt_duration, json_line, use_bar
from mlxtune.training.train import Event, TrainResult
from mlxtune.events import EventKind

NOTES = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"


def step(n, total=30, **extra):
    return {"step": n, "total": total, "loss": 1.2345, "lr": 1e-3, "tokens_per_sec": 850.4, "processed_tokens_per_sec": 1200.0,
            "trained_tokens": 100 * n, "peak_memory_bytes": 3e8, "elapsed": 62.0, "eta": 93.0} | extra


class Tty(io.StringIO):
    def isatty(self):
        return True


# ---------------------------------------------------------------- pure rendering


def test_bar_line_has_everything_on_a_wide_terminal():
    line = bar_line(step(12), 120, last_val=1.3)
    assert line.startswith("[") and "12/30  40%" in line and "loss 1.234" in line and "val 1.300" in line
    assert "850 tok/s" in line and "elapsed 1m02s" in line and "ETA 1m33s" in line
    assert len(line) <= 120
    bar = re.match(r"\[([#-]+)\]", line).group(1)
    assert len(bar) == progress.BAR_MAX and bar.count("#") == int(progress.BAR_MAX * 0.4)


@pytest.mark.parametrize("width", range(0, 140, 7))
def test_bar_line_always_fits(width):
    for d, val in ((step(1), None), (step(30), 0.5), (step(7, total=1_000_000, loss=1e30, tokens_per_sec=1e12, eta=1e9), 1e30)):
        assert len(bar_line(d, width, val)) <= width


def test_narrow_terminal_drops_the_least_useful_fields_first():
    wide = bar_line(step(12), 200, last_val=1.3)
    narrow = bar_line(step(12), 60, last_val=1.3)
    assert "tok/s" in wide and "tok/s" not in narrow and "ETA" in narrow and "loss" in narrow
    assert not bar_line(step(12), 30, last_val=1.3).startswith("[")  # no room left for a bar
    assert bar_line(step(30, total=30), 80).count("#") > 0 and "-" not in bar_line(step(30, total=30), 80).split("]")[0]


def test_fmt_duration():
    assert fmt_duration(0) == "0m00s" and fmt_duration(59.9) == "0m59s" and fmt_duration(61) == "1m01s"
    assert fmt_duration(3600 + 125) == "1h02m" and fmt_duration(-5) == "0m00s"
    assert fmt_duration(None) == fmt_duration(math.nan) == fmt_duration(math.inf) == "?"


def test_bar_or_plain_lines_depends_on_the_stream():
    assert use_bar(Tty(), term="xterm-256color")
    assert not use_bar(Tty(), term="dumb")
    assert not use_bar(io.StringIO(), term="xterm")
    assert not use_bar(object(), term="xterm")
    closed = io.StringIO()
    closed.close()  # isatty() raises ValueError
    assert not use_bar(closed, term="xterm")


def test_throttle_keeps_first_last_and_validation_steps():
    now = [0.0]
    t = Throttle(interval=10, clock=lambda: now[0])
    kept = []
    for n in range(1, 101):
        now[0] = n * 0.5  # two steps a second
        if t(n, 100, validated=n % 25 == 0):
            kept.append(n)
    assert kept == [1, 21, 25, 45, 50, 70, 75, 95, 100]


def test_json_lines_are_valid_json():
    line = json_line("step", step(3, loss=math.nan, eta=math.inf) | {"path": Path("runs/x")})
    record = json.loads(line)
    assert record["event"] == "step" and record["loss"] is None and record["eta"] is None and record["path"] == "runs/x"
    result = TrainResult(Path("runs/x"), 3, 2.0, math.nan, 300, 1.5, 200.0, 10**8, best_step=3, best_val_loss=1.5)
    done = json.loads(json_line("done", {"result": result}))
    assert done["event"] == "done" and done["run_dir"] == "runs/x" and done["steps"] == 3 and done["final_val_loss"] is None
    assert done["best_step"] == 3 and done["peak_memory_bytes"] == 10**8 and done["tokens_per_sec"] == 200.0
    assert json.loads(json_line("resume", {"event": "x", "from": 4})) == {"event": "resume", "from": 4}


# ---------------------------------------------------------------- the printer on a terminal


def test_terminal_bar_is_redrawn_and_finished(monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    out = Tty()
    with TrainPrinter(out=out) as p:
        assert p.bar
        p(Event("val", {"step": 0, "val_loss": 2.5}))
        p(Event("step", step(1, total=2)))
        p(Event("save", {"step": 1, "path": "runs/x/checkpoints/step-0000001"}))
        p(Event("pruned", {"step": 1}))  # a kind the printer does not know
        p(Event("start", {"step": 1}))  # nor this shape
        p(Event("step", step(2, total=2, val_loss=2.25)))
        p(Event("done", {"result": None}))
    text = out.getvalue()
    assert text.endswith("\n") and "\r\x1b[K[" in text
    bars = [seg.split("\n")[0] for seg in text.split("\r\x1b[K") if seg.startswith("[")]
    assert len(bars) == 6 and all(len(bar) <= 69 for bar in bars)  # each redraw fits the terminal
    screen = [seg.rsplit("\r\x1b[K", 1)[-1] for seg in text.split("\n")]  # what stays on screen, line by line
    assert screen[0] == "step     0  val loss 2.500 (before training)"
    assert screen[1] == "saved step 1 -> runs/x/checkpoints/step-0000001"
    assert screen[2:4] == ["pruned: step=1", "start: step=1"]
    assert screen[4].startswith("step     2/2  loss 1.234  val 2.250")
    assert screen[5].startswith("[") and "2/2 100%" in screen[5] and "val 2.250" in screen[5]


def test_terminal_bar_is_finished_when_training_fails(monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    out = Tty()
    with pytest.raises(KeyboardInterrupt):
        with TrainPrinter(out=out) as p:
            p(Event("step", step(1)))
            raise KeyboardInterrupt
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_an_event_from_a_signal_handler_waits_for_the_write_in_progress(monkeypatch):
    """Ctrl-C's note arrives from a signal handler, maybe in the middle of drawing the bar."""
    monkeypatch.setenv("COLUMNS", "70")

    class Interrupting(Tty):
        def write(self, text):
            if printer.busy and not self.fired:
                self.fired = True
                printer(Event("early_stop", {"step": 1, "patience": 1, "best_step": 1, "best_val_loss": 2.0}))
            return super().write(text)

    out = Interrupting()
    out.fired = False
    with TrainPrinter(out=out) as printer:
        printer(Event("step", step(1)))
    assert out.fired and out.getvalue().rsplit("\r\x1b[K", 2)[1].startswith("Stopping early at step 1")


def test_every_kind_of_event_has_its_handler():
    assert set(TrainPrinter().handlers) == set(get_args(EventKind))  # none left to the generic line


def test_a_step_otherwise_shaped_gets_a_generic_line_and_leaves_the_bar_as_it_was(monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    for out in (Tty(), io.StringIO()):
        with TrainPrinter(out=out) as p:
            p(Event("step", step(1, total=2)))
            p(Event("step", {"step": 2}))
        screen = [seg.rsplit("\r\x1b[K", 1)[-1] for seg in out.getvalue().split("\n")]
        assert "step: step=2" in screen and not any("2/2" in line for line in screen)
        assert any("1/2" in line for line in screen) and out.getvalue().endswith("\n")


def test_resume_event(monkeypatch):
    out = io.StringIO()
    info = {"run_dir": "runs/x", "data": "d.jsonl", "model": "m", "compute": "CPU", "backend": "numpy", "trainable": 20000,
            "layers": 2, "keys": ["model.layers.0.self_attn.q_proj"], "steps": 30, "steps_per_epoch": 3}
    with TrainPrinter(out=out) as p:
        p(Event("resume", info | {"step": 12, "checkpoint": "runs/x/checkpoints/step-0000012"}))
    assert out.getvalue().splitlines()[-1] == "Resuming at step 12 of 30 from runs/x/checkpoints/step-0000012"


def test_quiet_keeps_the_plan_when_auto_changed_the_settings_or_nothing_fits(capsys):
    out = io.StringIO()
    with TrainPrinter(quiet=True, out=out) as p:
        for verdict in ("fits", "unknown", "adjusted", "does not fit"):
            p(Event("plan", {"lines": [f"Memory: {verdict}", "  - why"], "plan": {"verdict": verdict}}))
    assert out.getvalue() == ""
    assert capsys.readouterr().err.splitlines() == ["Memory: adjusted", "  - why", "Memory: does not fit", "  - why"]


# ---------------------------------------------------------------- mlxtune lora


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(NOTES.read_text().splitlines(keepends=True)[:8]))
    return path


def lora(tiny_model, data, run_dir, *extra):
    args = ["lora", "--data", data, "--model", tiny_model, "--iters", 3, "-o", run_dir, "--no-report", *extra]
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_lora_json(tiny_model, data, tmp_path):
    r = lora(tiny_model, data, tmp_path / "run", "--json")
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = [rec["event"] for rec in records]
    assert kinds[0] in ("note", "plan", "start") and "plan" in kinds and "start" in kinds and kinds[-1] == "done"
    assert [rec["step"] for rec in records if rec["event"] == "step"] == [1, 2, 3]
    done = records[-1]
    assert done["run_dir"] == str(tmp_path / "run") and done["steps"] == 3 and done["best_step"] in (3, None)
    assert isinstance(done["initial_val_loss"], float) and done["peak_memory_bytes"] >= 0 and done["tokens_per_sec"] > 0
    assert "Error" not in r.stderr and "Done:" not in r.output


def test_lora_quiet(tiny_model, data, tmp_path):
    r = lora(tiny_model, data, tmp_path / "run", "--quiet")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if not line.startswith("Best:")] == ["Done", "Adapters"], r.stdout


def test_lora_plain_lines_in_a_log(tiny_model, data, tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 1e9)
    r = lora(tiny_model, data, tmp_path / "run")
    assert r.exit_code == 0, r.output
    steps = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("step ")]
    assert steps == ["0", "1/3", "3/3"]  # before training, the first step, the last (a validation step)
    assert "\r" not in r.output and "\x1b" not in r.output
    assert "saved step 3 -> " in r.stdout and "Done: 3 steps" in r.stdout


def test_lora_quiet_still_says_why_the_run_does_not_fit(tiny_model, data, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "available_memory", lambda: runtime.MemoryLimit(10_000_000, "test"))
    r = lora(tiny_model, data, tmp_path / "run", "--quiet", "--backend", "numpy")
    assert r.exit_code == 1 and r.stdout == ""
    lines = [line for line in r.stderr.splitlines() if not line.startswith("note: ")]
    assert lines[0].startswith("Memory: does not fit") and any(line.startswith("  try: ") for line in lines), r.stderr
    assert lines[-1].startswith("Error: does not fit") and not (tmp_path / "run").exists()


def test_quiet_and_json_together_is_a_usage_error(tmp_path):
    r = CliRunner().invoke(cli, ["lora", "--data", str(tmp_path / "d.jsonl"), "--quiet", "--json"])
    assert r.exit_code == 2 and "--quiet and --json" in r.output
