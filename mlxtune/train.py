"""``mlxtune lora``: fine-tune a model with LoRA on a JSONL data set.

The run directory it writes:

    adapters.safetensors     latest adapter weights (mlx-lm format)
    adapter_config.json      mlx-lm's fields + the full resolved configuration,
                             the base model, backend and library versions
    checkpoints/step-NNNNNNN/  adapters + optimizer state, the last few kept
    metrics.jsonl            one line per report: step, loss, val loss, lr,
                             tokens/s, peak memory

Everything is validated (data, model, options, output directory) before the
directory is created, every file is written atomically, and Ctrl-C saves the
adapters of the last completed step before stopping.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import __version__
from .config import TrainConfig
from .errors import DataError, MlxtuneError, UsageError
from .fsutil import atomic_write_text, check_output_dir
from .adapters import ADAPTER_WEIGHTS

KEEP_CHECKPOINTS = 3


class TrainingInterrupted(MlxtuneError):
    """Ctrl-C during training; the adapters of the last step were saved."""

    exit_code = 130


@dataclass
class Event:
    """A progress report for the CLI: ``kind`` is start, step, val, save, note or done."""

    kind: str
    data: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    initial_val_loss: float | None
    final_val_loss: float | None
    trained_tokens: int
    seconds: float
    tokens_per_sec: float
    peak_memory_bytes: int
    best_step: int | None = None  # the step whose adapters are in best/ (lowest validation loss)
    best_val_loss: float | None = None
    stopped_early: bool = False


def default_output(cfg: TrainConfig) -> Path:
    stem = Path(cfg.data).stem if cfg.data and Path(cfg.data).is_file() else Path(cfg.data or "run").name
    return Path("runs") / stem


def learning_rate_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Linear warmup to the peak, then cosine decay to ``min_lr_ratio`` of it (step counts from 1).

    Plain Python, so both backends follow exactly the same schedule.
    """
    warmup = int(cfg.warmup if cfg.warmup >= 1 else round(cfg.warmup * total))
    warmup = min(max(warmup, 0), max(total - 1, 0))
    peak, low = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    if step <= warmup:
        return peak * step / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(cfg: TrainConfig, on_event: Callable[[Event], None] = lambda e: None, force: bool = False) -> TrainResult:
    """Run a LoRA fine-tune as ``cfg`` says, reporting progress through ``on_event``."""
    if cfg.data is None:
        raise UsageError("no data: pass --data FILE.jsonl or a directory with train.jsonl")
    run_dir = Path(cfg.output) if cfg.output else default_output(cfg)
    check_output_dir(run_dir, force, what="run")

    # ---- everything that can fail on bad input happens before the run directory exists
    from .batching import encode_dataset, epoch_steps, iterate_batches
    from .convert import ensure_mlx_model
    from .data import load_data
    from .hub import resolve_model

    splits = load_data(cfg.data, valid_fraction=cfg.valid_fraction, seed=cfg.seed)
    if splits.note:
        on_event(Event("note", {"message": splits.note}))
    source = resolve_model(cfg.model, revision=cfg.revision, offline=cfg.offline)
    if source.note:
        on_event(Event("note", {"message": source.note}))
    model_dir = ensure_mlx_model(source)

    from . import npio
    from .backends import backend_for, mlx_available, open_trainer
    from .adapters import adapter_config
    from .tokenizer import load_tokenizer

    backend = backend_for(cfg.backend, model_dir, mlx_only="DoRA" if cfg.dora else None)
    if backend == "numpy" and cfg.backend in (None, "auto") and mlx_available():
        on_event(Event("note", {"message": "training with the numpy backend: on a CPU it is faster than mlx's CPU backend for this model (--backend mlx to choose mlx)"}))
    tokenizer = load_tokenizer(model_dir)
    mask_prompt = cfg.mask_prompt if cfg.mask_prompt is not None else splits.format != "text"
    train_set, n_trunc = encode_dataset(splits.train, splits.format, tokenizer, mask_prompt, cfg.max_seq_len)
    valid_set, n_trunc_v = encode_dataset(splits.valid, splits.format, tokenizer, mask_prompt, cfg.max_seq_len)
    n_truncated = n_trunc + n_trunc_v
    if not train_set:
        why = f"after truncation to --max-seq-len {cfg.max_seq_len} tokens nothing is left to learn from: raise --max-seq-len" if n_truncated else "no record has a token to learn from (are all completions empty?)"
        raise DataError(why, path=cfg.data)
    if n_truncated:
        on_event(Event("note", {"message": f"{n_truncated} records are longer than --max-seq-len {cfg.max_seq_len} tokens and were truncated"}))

    steps_per_epoch = epoch_steps(len(train_set), cfg.batch_size)
    if cfg.iters is not None:
        total = int(cfg.iters)
    else:
        total = max(1, math.ceil((cfg.epochs if cfg.epochs is not None else 1.0) * steps_per_epoch))
    trainer = open_trainer(backend, model_dir, cfg)

    # ---- from here on, the run directory exists
    if run_dir.exists() and force:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    meta = {
        "mlxtune_version": __version__,
        "base_model": {"spec": source.spec, "kind": source.kind, "path": str(source.path), "repo_id": source.repo_id, "revision": source.revision, "mlx_dir": str(model_dir)},
        "backend": backend,
        "compute": trainer.description,
        "versions": _versions(),
        "config": cfg.to_dict() | {"output": str(run_dir), "backend": backend, "scale": cfg.scale, "mask_prompt": mask_prompt, "iters": total},
        "data": {"description": splits.description, "format": splits.format, "train": len(train_set), "valid": len(valid_set), "truncated": n_truncated},
    }
    ad_config = adapter_config(trainer.num_layers, trainer.keys, cfg.rank, cfg.scale, cfg.dropout, cfg.dora, **meta)
    atomic_write_text(run_dir / "adapter_config.json", json.dumps(ad_config, indent=2))

    def validate() -> float | None:
        if not valid_set:
            return None
        total_loss, total_n = 0.0, 0
        for i, batch in enumerate(iterate_batches(valid_set, cfg.batch_size, seed=cfg.seed, loop=False)):
            if 0 <= cfg.val_batches <= i:
                break
            s, n = trainer.evaluate(batch)
            total_loss += s
            total_n += n
        return total_loss / max(total_n, 1)

    on_event(Event("start", {
        "run_dir": str(run_dir), "data": splits.description, "model": str(source.path), "compute": trainer.description, "backend": backend,
        "trainable": trainer.n_trainable, "layers": trainer.num_layers, "keys": trainer.keys, "steps": total, "steps_per_epoch": steps_per_epoch,
        "train_examples": len(train_set), "valid_examples": len(valid_set),
    }))

    metrics_path = run_dir / "metrics.jsonl"
    metrics = open(metrics_path, "a", encoding="utf-8")

    def log(record: dict) -> None:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()

    def save(step: int) -> None:
        weights = trainer.adapter_weights()
        ckpt = run_dir / "checkpoints" / f"step-{step:07d}"
        ckpt.mkdir(parents=True, exist_ok=True)
        npio.write_safetensors(ckpt / ADAPTER_WEIGHTS, weights, metadata={"format": "mlx"})
        npio.write_safetensors(ckpt / "optimizer.safetensors", trainer.optimizer_state())
        atomic_write_text(ckpt / "state.json", json.dumps({"step": step, "backend": backend}))
        npio.write_safetensors(run_dir / ADAPTER_WEIGHTS, weights, metadata={"format": "mlx"})
        for old in sorted((run_dir / "checkpoints").glob("step-*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        on_event(Event("save", {"step": step, "path": str(ckpt)}))

    def save_best(step: int, val: float) -> None:
        """best/: the adapters with the lowest validation loss so far, loadable like the run itself."""
        best = run_dir / "best"
        best.mkdir(exist_ok=True)
        npio.write_safetensors(best / ADAPTER_WEIGHTS, trainer.adapter_weights(), metadata={"format": "mlx"})
        atomic_write_text(best / "adapter_config.json", json.dumps(ad_config | {"best": {"step": step, "val_loss": val}}, indent=2))

    start = time.perf_counter()
    initial_val = validate()
    log({"step": 0, "val_loss": initial_val, "elapsed": time.perf_counter() - start})
    on_event(Event("val", {"step": 0, "val_loss": initial_val}))

    trained_tokens, window_tokens, window_seen, window_start = 0, 0, 0, time.perf_counter()
    train_start = time.perf_counter()
    completed, in_step, saved, last_val = 0, False, 0, initial_val
    best_step, best_val, stale, stopped_early = None, initial_val, 0, False
    batches = iterate_batches(train_set, cfg.batch_size, seed=cfg.seed, loop=True)
    if batches.note:
        on_event(Event("note", {"message": batches.note}))

    def stop_here() -> TrainingInterrupted:
        if completed > saved and not in_step:
            save(completed)
        metrics.close()
        where = f"adapters of step {completed} saved in {run_dir}" if completed > 0 else f"no step had finished; {run_dir} holds no adapters"
        return TrainingInterrupted(f"interrupted: {where}")

    try:
        with _GracefulStop() as stop:
            for step in range(1, total + 1):
                batch = next(batches)
                lr = learning_rate_at(cfg, step, total)
                in_step = True
                loss_v, ntok = trainer.step(batch, lr)
                in_step, completed = False, step
                if not math.isfinite(loss_v):
                    metrics.close()
                    raise MlxtuneError(f"the loss became {loss_v} at step {step}: the learning rate ({cfg.learning_rate}) is probably too high; the adapters of step {saved} in {run_dir} are the last good ones")
                trained_tokens += ntok
                window_tokens += ntok
                window_seen += int(batch.lengths.sum())
                now = time.perf_counter()
                elapsed = now - train_start
                report = {
                    "step": step, "loss": loss_v, "lr": lr, "tokens_per_sec": window_tokens / max(now - window_start, 1e-9),
                    "processed_tokens_per_sec": window_seen / max(now - window_start, 1e-9),
                    "trained_tokens": trained_tokens, "peak_memory_bytes": trainer.peak_memory(), "elapsed": elapsed,
                    "eta": elapsed / step * (total - step),
                }
                improved = False
                if step % cfg.val_every == 0 or step == total:
                    last_val = validate()
                    report["val_loss"] = last_val
                    window_tokens, window_seen, window_start = 0, 0, time.perf_counter()
                    if last_val is not None:
                        improved = best_val is None or last_val < best_val
                        stale = 0 if improved else stale + 1
                        stopped_early = bool(cfg.early_stop) and stale >= cfg.early_stop and step < total
                if improved:
                    best_step, best_val = step, last_val
                    save_best(step, last_val)
                    report["best"] = True
                log(report)
                on_event(Event("step", report | {"total": total}))
                if stopped_early:
                    save(step)
                    saved = step
                    on_event(Event("early_stop", {"step": step, "patience": cfg.early_stop, "best_step": best_step, "best_val_loss": best_val}))
                    break
                if step % cfg.save_every == 0 or step == total:
                    save(step)
                    saved = step
                if stop.requested:
                    raise stop_here()
    except KeyboardInterrupt:
        raise stop_here() from None
    metrics.close()
    seconds = time.perf_counter() - train_start
    result = TrainResult(run_dir, completed, initial_val, last_val, trained_tokens, seconds, trained_tokens / max(seconds, 1e-9), trainer.peak_memory(), best_step, best_val if best_step is not None else None, stopped_early)
    on_event(Event("done", {"result": result}))
    return result


class _GracefulStop:
    """Ctrl-C (or SIGTERM) asks the loop to stop after the current step; a second Ctrl-C stops at once.

    A step is never cut in half by the first signal, so the adapters saved on the
    way out are those of a whole step. Outside the main thread (where signal
    handlers cannot be installed) Ctrl-C keeps Python's default behaviour.
    """

    def __enter__(self) -> "_GracefulStop":
        import signal
        import threading

        self.requested = False
        self._old: dict = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        import signal

        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": f"{platform.system()}-{platform.machine()}"}
    for name in ("mlx", "mlx-lm", "numpy", "transformers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
