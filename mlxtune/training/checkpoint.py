"""Checkpoints of a training run: written whole or not at all, read back for ``--resume``.

A checkpoint is a directory ``RUN/checkpoints/step-NNNNNNN/`` holding the
adapters, the optimizer state and ``state.json`` (step, batches drawn, best
validation loss so far, ...). It is assembled under a hidden name beside its
place and renamed into it, so a reader never sees half of one; old ones are
renamed away before they are deleted, for the same reason. The stop handling
(Ctrl-C, SIGTERM) lives here too: it decides when a checkpoint may be cut short.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from ..formats.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from .config import TrainConfig
from ..errors import UsageError
from ..fsutil import atomic_write_text
from .run_schema import RunConfig

KEEP = 3  # checkpoints kept per run
STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"


def write(run_dir: Path, step: int, weights: dict, optimizer_state: dict, state: dict) -> Path:
    """Checkpoint ``step``: built beside its place, renamed in whole; the oldest beyond KEEP go."""
    from ..formats import safetensors as npio

    ckpts = Path(run_dir) / "checkpoints"
    ckpts.mkdir(exist_ok=True)
    final = ckpts / f"step-{step:07d}"
    tmp = ckpts / f".step-{step:07d}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    npio.write_safetensors(tmp / ADAPTER_WEIGHTS, weights, metadata={"format": "mlx"})
    npio.write_safetensors(tmp / OPTIMIZER, optimizer_state)
    atomic_write_text(tmp / STATE, json.dumps(state, indent=1))
    if final.exists():
        discard(final)
    os.replace(tmp, final)
    for old in sorted(p for p in ckpts.glob("step-*") if p.is_dir())[:-KEEP]:
        discard(old)
    return final


def write_state(run_dir: Path, step: int, state: dict) -> None:
    """Replace checkpoint ``step``'s state.json (atomically): a resume to a new total records it before training."""
    atomic_write_text(Path(run_dir) / "checkpoints" / f"step-{step:07d}" / STATE, json.dumps(state, indent=1))


def extend_to(run_dir: Path, cfg: TrainConfig, total: int, state: dict, ad_config: RunConfig, epochs: float | None = None, write: bool = True) -> tuple[dict, RunConfig]:
    """The last checkpoint's state and the run's config for going on to a new ``total`` (``--resume --iters/--epochs``).

    Both are written back at once (``write``: rank 0), state.json first: a
    stop before the next checkpoint (in the validation the resume does
    first) must not lose the new total, nor leave adapter_config.json saying
    one total and the checkpoint another. The returned state also carries
    what the session says (``schedule.extend_state``), which is not written.
    """
    from .schedule import extend_state

    step = int(state["step"])
    if total <= step:
        asked = f"--epochs {epochs:g} is {total} steps" if epochs is not None else f"--iters {total}"
        raise UsageError(f"{asked}, but {run_dir} is at step {step} already: --iters and --epochs give the new total, counted from the run's start (e.g. --iters {step + max(step // 2, 1)})")
    state, notes = extend_state(cfg, state, total)
    if not notes:  # an unfinished run, to the total it had: a plain resume
        return state, ad_config
    ad_config = ad_config.updated(config=ad_config.settings.updated(iters=total, epochs=epochs), schedule=state["schedule"])
    if write:
        write_state(run_dir, step, state)
        atomic_write_text(Path(run_dir) / ADAPTER_CONFIG, ad_config.write_text())
    return state | notes, ad_config


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (a directory is renamed into place only once whole)."""
    found = sorted(p for p in (Path(run_dir) / "checkpoints").glob("step-*") if (p / STATE).is_file())
    return found[-1] if found else None


def read_for_resume(run_dir: Path, extend: bool = False) -> dict[str, bytes]:
    """The run's configuration and its last checkpoint, as bytes: all a resume starts from.

    Every way these files can be missing or damaged is a UsageError that says
    what to do, never a traceback. A finished run has nothing to resume
    unless ``extend``: the caller then goes on to a new total.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / ADAPTER_CONFIG
    if not config_path.exists():
        raise UsageError(f"{run_dir} is not a training run ({ADAPTER_CONFIG} is missing): --resume takes the directory 'mlxtune lora' wrote")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or RunConfig.from_dict(raw).config is None:  # no settings: not a run of mlxtune
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{config_path} is damaged or not from mlxtune: cannot resume this run") from None
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise UsageError(f"{run_dir} has no checkpoint to resume from (one is written every --save-every steps and when a run is stopped): start it again with --force")
    try:
        state = json.loads((ckpt / STATE).read_text(encoding="utf-8"))
        step, total = int(state["step"]), int(state["total"])
        files = {"config": config_path.read_bytes(), "state": (ckpt / STATE).read_bytes(), "adapters": (ckpt / ADAPTER_WEIGHTS).read_bytes(), "optimizer": (ckpt / OPTIMIZER).read_bytes()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"checkpoint {ckpt} is damaged ({type(e).__name__}: {e}): delete it to resume from the one before, or start again with --force") from None
    if state.get("finished") and not extend:
        raise UsageError(f"{run_dir} already finished (step {step} of {total}): nothing to resume; to train it further, give the new total: mlxtune lora --resume {run_dir} --iters N (more than {step}) or --epochs N")
    return files


def model_signature(model_dir: Path) -> str:
    """A cheap hash of a model directory: config.json, and each safetensors file's name, size and header.

    Tells a resumed run whether its base model is the one it started on
    (another revision, another conversion) without reading gigabytes.
    """
    h = hashlib.sha256()
    for p in sorted(Path(model_dir).iterdir()):
        if p.name == "config.json":
            h.update(p.read_bytes())
        elif p.suffix == ".safetensors":
            with open(p, "rb") as f:
                head = f.read(8)
                h.update(p.name.encode() + p.stat().st_size.to_bytes(8, "little") + head + f.read(int.from_bytes(head, "little") if len(head) == 8 else 0))
    return h.hexdigest()[:32]


def weights_sample(model_dir: Path, samples: int = 16, size: int = 65536) -> str:
    """A hash of a few slices of each safetensors file of a model directory (about 1 MB a file).

    ``model_signature`` sees names, shapes and dtypes, so two models of one
    architecture (a base model and its instruct tune, two seeds) look alike
    to it; their weights do not. An adapter records this of its base so that
    ``--init-adapter`` can tell them apart without reading gigabytes.
    """
    h = hashlib.sha256()
    for p in sorted(Path(model_dir).glob("*.safetensors")):
        n = p.stat().st_size
        with open(p, "rb") as f:
            for i in range(samples):
                f.seek(n * i // samples)
                h.update(f.read(size))
    return h.hexdigest()[:32]


def discard(path: Path) -> None:
    """Remove a directory so that it is never seen half-deleted: renamed away first."""
    trash = path.parent / f".{path.name}.trash-{os.getpid()}"
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def clean_leftovers(run_dir: Path) -> None:
    """Remove what a save cut short by a hard stop left behind (hidden partial or trash directories)."""
    for leftover in (Path(run_dir) / "checkpoints").glob(".*"):
        shutil.rmtree(leftover, ignore_errors=True)


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (none without one); a line cut short by a hard stop is passed over."""
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a hard stop
    return out


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop what a hard-stopped session logged after its last checkpoint: the resumed run logs it again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue  # a line cut short
    atomic_write_text(path, "".join(line + "\n" for line in kept))


class GracefulStop:
    """Ctrl-C (or SIGTERM) asks the loop to stop after the current step; a second one stops at once.

    A step is never cut in half by the first signal, so the checkpoint saved on
    the way out is that of a whole step. The second raises KeyboardInterrupt
    wherever the loop is; checkpoints are renamed into place whole, so the last
    one stays intact. Outside the main thread (where signal handlers cannot be
    installed) Ctrl-C keeps Python's default behaviour.
    """

    def __init__(self, on_first: Callable[[], None] = lambda: None):
        self.on_first = on_first

    def __enter__(self) -> "GracefulStop":
        import signal
        import threading

        self.requested = False
        self._old: dict = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.on_first()

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._old.items():
            if signal.getsignal(sig) == self._handle:  # a handler set meanwhile (distributed's, on a lost process) stays
                signal.signal(sig, handler)
