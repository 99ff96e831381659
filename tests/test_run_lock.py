"""One process per run directory (issue 13, item 3): the lock, with real processes.

Two `mlxtune lora -o runs/x` started a few seconds apart used to both train,
interleaving metrics.jsonl. Now the second is refused, naming the first, before
it writes anything; the lock is released however a run ends, and a lock left
by a killed run is reported and taken over.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxtune.cli import cli
from mlxtune.training.runlock import LOCK_NAME, RunLock, RunLockedError
from mlxtune.training.train import latest_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def _cmd(*args) -> list[str]:
    return [sys.executable, "-m", "mlxtune", "lora", *map(str, args)]


def _env() -> dict:
    return os.environ | {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def _long_run(tiny_model, small_data, run: Path, *extra) -> subprocess.Popen:
    """A run that trains until stopped, with a checkpoint every 5 steps."""
    args = ["--data", small_data, "--model", tiny_model, "--iters", 100000, "--batch-size", 2, "--save-every", 5, "--val-every", 1000000,
            "-o", run, "--no-report", "--backend", "numpy", *extra]
    return subprocess.Popen(_cmd(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_checkpoint(proc: subprocess.Popen, run: Path) -> None:
    deadline = time.monotonic() + 120
    while latest_checkpoint(run) is None:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.05)


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_second_run_into_a_directory_in_use_is_refused_naming_the_first(tiny_model, small_data, tmp_path):
    run = tmp_path / "run"
    first = _long_run(tiny_model, small_data, run)
    try:
        _wait_for_checkpoint(first, run)
        common = ["--data", small_data, "--model", tiny_model, "--iters", 3, "--no-report", "--backend", "numpy"]
        for extra in (["-o", run], ["-o", run, "--force"], ["--resume", run]):
            args = ["--resume", run, "--no-report"] if extra[0] == "--resume" else [*common, *extra]
            started = time.monotonic()
            second = subprocess.run(_cmd(*args), env=_env(), capture_output=True, text=True, timeout=120)
            assert second.returncode == 1, (extra, second.stdout, second.stderr)
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"Error: {run} is in use by another run, pid {first.pid} on "), (extra, second.stderr)
            assert " since " in lines[0] and " ago): " in lines[0] and "mlxtune lora" in lines[0], lines[0]
            assert second.stdout == "" and "Traceback" not in second.stderr
            print(f"{extra[-1]}: refused in {time.monotonic() - started:.1f} s: {lines[0]}")
            assert first.poll() is None  # the first goes on
        holder = json.loads((run / LOCK_NAME).read_text())
        assert holder["pid"] == first.pid and "lora" in holder["command"] and holder["host"]
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 130 and "Stopped: interrupted at step" in err, err
    assert not (run / LOCK_NAME).exists()  # released on SIGTERM
    steps = _steps(run)
    assert steps == list(range(steps[-1] + 1))  # every step once, in order: nobody else wrote
    r = CliRunner().invoke(cli, ["lora", "--data", str(small_data), "--model", str(tiny_model), "--iters", "2", "--no-report", "--backend", "numpy", "-o", str(run), "--force"])
    assert r.exit_code == 0 and "without releasing" not in r.output, r.output  # free, and not left stale


def test_a_lock_left_by_a_killed_run_is_reported_and_taken_over(tiny_model, small_data, tmp_path):
    run = tmp_path / "run"
    first = _long_run(tiny_model, small_data, run)
    try:
        _wait_for_checkpoint(first, run)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == first.pid  # left behind: nothing ran to remove it
    r = CliRunner().invoke(cli, ["lora", "--data", str(small_data), "--model", str(tiny_model), "--iters", "2", "--no-report", "--backend", "numpy", "-o", str(run), "--force"])
    assert r.exit_code == 0, r.output
    assert f"note: {run} was locked by a run that ended without releasing it (pid {first.pid} on " in r.output, r.output
    assert "taking it over" in r.output
    assert not (run / LOCK_NAME).exists() and _steps(run) == [0, 1, 2]


def test_the_lock_is_released_however_the_run_ends_and_held_while_the_report_is_written(tiny_model, small_data, tmp_path, monkeypatch):
    from mlxtune import report

    run = tmp_path / "run"
    seen = []
    real = report.write_report

    def write_report(run_dir, **kw):
        seen.append(json.loads((Path(run_dir) / LOCK_NAME).read_text())["pid"])
        return real(run_dir, **kw)

    monkeypatch.setattr(report, "write_report", write_report)
    r = CliRunner().invoke(cli, ["lora", "--data", str(small_data), "--model", str(tiny_model), "--iters", "2", "--backend", "numpy", "-o", str(run)])
    assert r.exit_code == 0, r.output
    assert seen == [os.getpid()] and not (run / LOCK_NAME).exists()
    # an error before anything is written: no directory left, no lock
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"oops": 1}\n')
    r = CliRunner().invoke(cli, ["lora", "--data", str(bad), "--model", str(tiny_model), "-o", str(tmp_path / "never")])
    assert r.exit_code == 1 and not (tmp_path / "never").exists()
    # Ctrl-C before the first step: the run directory stays (as before), the lock goes
    from mlxtune.training.config import TrainConfig
    from mlxtune.training.train import TrainingInterrupted, train

    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted):
        train(TrainConfig(model=str(tiny_model), data=str(small_data), output=str(stopped), iters=3, backend="numpy"),
              on_event=lambda e: os.kill(os.getpid(), signal.SIGINT) if e.kind == "start" else None)
    assert stopped.is_dir() and not (stopped / LOCK_NAME).exists()


def test_the_lock_itself(tmp_path):
    """Within one process: a second acquire is refused (flock is per open file), a dead holder's record is stale."""
    run = tmp_path / "a" / "b"
    with RunLock.acquire(run) as lock:
        assert run.is_dir() and lock.created and lock.stale is None
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()} on .* since "):
            RunLock.acquire(run)
    assert not run.exists()  # created by the lock, left empty: removed
    run.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (run / LOCK_NAME).write_text(json.dumps({"pid": int(dead), "host": "h", "started": time.time() - 300, "command": "mlxtune lora -o x"}))
    with RunLock.acquire(run) as lock:
        assert lock.stale.pid == int(dead) and "(5 min ago): mlxtune lora -o x" in lock.stale.describe()
    assert run.is_dir() and not list(run.iterdir())
    assert RunLock.acquire(tmp_path / "missing", create=False) is None and not (tmp_path / "missing").exists()
