"""Every file and directory mlxtune writes gets the mode the user's umask gives, as any other tool's would.

Temporary names (made to rename whole outputs into place) must not leak their
private 0600/0700 into the outputs: under umask 022 a run, a converted, fused
or exported model is readable by others; under 077 it is private, copies
included. Each kind of output is made through the command line.
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxtune import fsutil
from mlxtune.cli import cli
from mlxtune.training.config import TrainConfig
from mlxtune.training.train import TrainingInterrupted, train

from gguf_fixtures import write_tiny_gguf

UMASKS = [0o022, 0o077]


def run(*args) -> str:
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(params=UMASKS, ids=lambda m: f"umask{m:03o}")
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def wrong_modes(root: Path, umask: int) -> list[str]:
    """Each path under ``root`` (and root itself) whose permission bits are not what the umask gives."""
    wrong = []
    for p in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        mode = stat.S_IMODE(p.lstat().st_mode)
        if mode != want:
            wrong.append(f"{p.relative_to(root.parent)} {mode:04o} (want {want:04o})")
    return wrong


def test_temporary_names_take_the_umask(tmp_path, umask):
    tmp_path = tmp_path / "here"
    tmp_path.mkdir()
    fsutil.atomic_write_text(tmp_path / "a.txt", "x")
    with fsutil.staged_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("y")
    fd, path = fsutil.make_temp_file(tmp_path, ".t-")
    os.close(fd)
    assert wrong_modes(tmp_path, umask) == []
    with fsutil.temporary_dir(tmp_path, ".scratch-") as scratch:
        assert stat.S_IMODE(scratch.stat().st_mode) == 0o777 & ~umask
    assert not scratch.exists()


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory) -> Path:
    """A finished run, made under the usual umask (its files are inputs below)."""
    out = tmp_path_factory.mktemp("modes") / "run"
    notes = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"
    run("lora", "--data", notes, "--model", tiny_model, "--iters", 2, "--backend", "numpy", "-o", out, "--no-report")
    return out


def test_convert_outputs(tiny_model, tmp_path, umask):
    os.chmod(tiny_model / "tokenizer.json", 0o644)  # copied: the copy follows the umask, not the source
    run("convert", tiny_model, "-o", tmp_path / "from-dir")
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf").path
    run("convert", gguf, "-o", tmp_path / "from-gguf")
    assert wrong_modes(tmp_path / "from-dir", umask) + wrong_modes(tmp_path / "from-gguf", umask) == []


def test_fuse_and_export_outputs(tiny_model, run_dir, tmp_path, umask):
    run("fuse", "--adapter", run_dir, "--model", tiny_model, "-o", tmp_path / "fused", "--backend", "numpy")
    run("export", "-f", "hf", "--adapter", run_dir, "--model", tiny_model, "-o", tmp_path / "hf-model")
    run("export", "-f", "peft", "--adapter", run_dir, "-o", tmp_path / "peft")
    (tmp_path / "gguf").mkdir()
    run("export", "-f", "gguf", "--adapter", run_dir, "--model", tiny_model, "-o", tmp_path / "gguf")
    wrong = [w for name in ("fused", "hf-model", "peft", "gguf") for w in wrong_modes(tmp_path / name, umask)]
    assert wrong == []
    assert len(list((tmp_path / "gguf").iterdir())) >= 2  # the .gguf and its Modelfile were checked


def test_run_files_and_eval(tiny_model, small_data, tmp_path, umask):
    out = tmp_path / "run"
    run("lora", "--data", small_data, "--model", tiny_model, "--iters", 4, "--val-every", 2, "--save-every", 2, "--backend", "numpy", "-o", out)
    assert (out / "report.md").exists() and (out / "best").is_dir()
    run("eval", "--adapter", out, "--model", tiny_model, "--data", small_data, "--limit", 2, "--backend", "numpy", "--samples", 0)
    assert list(out.glob("eval-*.json"))
    assert wrong_modes(out, umask) == []


def test_run_files_after_resume(tiny_model, small_data, tmp_path, umask):
    """Stopped at step 3 (after its checkpoint at 2), then resumed from the command line: metrics.jsonl is rewritten."""
    stopped = tmp_path / "stopped"
    cfg = TrainConfig(model=str(tiny_model), data=str(small_data), output=str(stopped), iters=6, val_every=2, save_every=2, backend="numpy")

    def sigint_at_3(event):
        if event.kind == "step" and event.data["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(cfg, on_event=sigint_at_3)
    run("lora", "--resume", stopped)
    assert (stopped / "report.md").exists()
    assert wrong_modes(stopped, umask) == []
