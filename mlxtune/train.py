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


def default_output(cfg: TrainConfig) -> Path:
    stem = Path(cfg.data).stem if cfg.data and Path(cfg.data).is_file() else Path(cfg.data or "run").name
    return Path("runs") / stem


def _schedule(cfg: TrainConfig, total: int):
    import mlx.optimizers as optim

    warmup = int(cfg.warmup if cfg.warmup >= 1 else round(cfg.warmup * total))
    warmup = min(max(warmup, 0), max(total - 1, 0))
    decay = optim.cosine_decay(cfg.learning_rate, max(total - warmup, 1), cfg.learning_rate * cfg.min_lr_ratio)
    if warmup == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(cfg.learning_rate / max(warmup, 1), cfg.learning_rate, warmup), decay], [warmup])


def train(cfg: TrainConfig, on_event: Callable[[Event], None] = lambda e: None, force: bool = False) -> TrainResult:
    """Run a LoRA fine-tune as ``cfg`` says, reporting progress through ``on_event``."""
    if cfg.data is None:
        raise UsageError("no data: pass --data FILE.jsonl or a directory with train.jsonl")
    if cfg.backend not in ("auto", "mlx"):
        raise UsageError(f"backend '{cfg.backend}' is not available in this version; use --backend mlx")
    run_dir = Path(cfg.output) if cfg.output else default_output(cfg)
    check_output_dir(run_dir, force, what="run")

    # ---- everything that can fail on bad input happens before the run directory exists
    from . import runtime
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

    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np

    from .backends import mlx as backend
    from .lora import adapter_config, adapter_weights, apply_adapters, resolve_target_modules, save_adapters, trainable_only

    device = runtime.current_device()
    compute = runtime.choose_compute(device, cfg.dtype)
    model, model_config = backend.load_model(model_dir, compute)
    tokenizer = backend.load_tokenizer(model_dir, model_config)
    hf_tokenizer = getattr(tokenizer, "_tokenizer", tokenizer)
    mask_prompt = cfg.mask_prompt if cfg.mask_prompt is not None else splits.format != "text"
    train_set, n_trunc = encode_dataset(splits.train, splits.format, hf_tokenizer, mask_prompt, cfg.max_seq_len)
    valid_set, n_trunc_v = encode_dataset(splits.valid, splits.format, hf_tokenizer, mask_prompt, cfg.max_seq_len)
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

    mx.random.seed(cfg.seed)
    n_blocks = len(model.layers)
    num_layers = n_blocks if cfg.layers < 0 or cfg.layers > n_blocks else cfg.layers
    keys = resolve_target_modules(model, cfg.target_modules)
    apply_adapters(model, num_layers, keys, cfg.rank, cfg.scale, cfg.dropout, cfg.dora)
    trainable_only(model)
    n_trainable = sum(v.size for v in adapter_weights(model).values())

    # ---- from here on, the run directory exists
    if run_dir.exists() and force:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    meta = {
        "mlxtune_version": __version__,
        "base_model": {"spec": source.spec, "kind": source.kind, "path": str(source.path), "repo_id": source.repo_id, "revision": source.revision, "mlx_dir": str(model_dir)},
        "backend": "mlx",
        "compute": {"device": device, "dtype": compute.dtype, "expand_quantized": compute.expand_quantized, "blas": runtime.preload_blas().name},
        "versions": _versions(),
        "config": cfg.to_dict() | {"output": str(run_dir), "scale": cfg.scale, "mask_prompt": mask_prompt, "iters": total},
        "data": {"description": splits.description, "format": splits.format, "train": len(train_set), "valid": len(valid_set), "truncated": n_truncated},
    }
    ad_config = adapter_config(num_layers, keys, cfg.rank, cfg.scale, cfg.dropout, cfg.dora, **meta)
    atomic_write_text(run_dir / "adapter_config.json", json.dumps(ad_config, indent=2))

    optimizer = optim.AdamW(learning_rate=_schedule(cfg, total), weight_decay=cfg.weight_decay)
    step_fn = backend.make_train_step(model, optimizer, cfg.grad_clip)
    eval_fn = backend.make_eval_step(model)

    def validate() -> float | None:
        if not valid_set:
            return None
        total_loss, total_n = 0.0, 0.0
        for i, batch in enumerate(iterate_batches(valid_set, cfg.batch_size, seed=cfg.seed, loop=False)):
            if 0 <= cfg.val_batches <= i:
                break
            s, n = eval_fn(*backend.to_device(batch))
            mx.eval(s, n)
            total_loss += s.item()
            total_n += n.item()
        return total_loss / max(total_n, 1)

    on_event(Event("start", {
        "run_dir": str(run_dir), "data": splits.description, "model": str(source.path), "compute": runtime.describe(),
        "trainable": n_trainable, "layers": num_layers, "keys": keys, "steps": total, "steps_per_epoch": steps_per_epoch,
        "train_examples": len(train_set), "valid_examples": len(valid_set),
    }))

    metrics_path = run_dir / "metrics.jsonl"
    metrics = open(metrics_path, "a", encoding="utf-8")

    def log(record: dict) -> None:
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()

    def save(step: int) -> None:
        weights = adapter_weights(model)
        save_adapters(run_dir, weights)
        ckpt = run_dir / "checkpoints" / f"step-{step:07d}"
        ckpt.mkdir(parents=True, exist_ok=True)
        save_adapters(ckpt, weights)
        from mlx.utils import tree_flatten

        state = {k: v for k, v in tree_flatten(optimizer.state) if isinstance(v, mx.array)}
        from .fsutil import save_safetensors_atomic

        save_safetensors_atomic(ckpt / "optimizer.safetensors", state)
        atomic_write_text(ckpt / "state.json", json.dumps({"step": step}))
        old = sorted((run_dir / "checkpoints").glob("step-*"))[:-KEEP_CHECKPOINTS]
        for d in old:
            shutil.rmtree(d, ignore_errors=True)
        on_event(Event("save", {"step": step, "path": str(ckpt)}))

    start = time.perf_counter()
    initial_val = validate()
    log({"step": 0, "val_loss": initial_val, "elapsed": time.perf_counter() - start})
    on_event(Event("val", {"step": 0, "val_loss": initial_val}))

    trained_tokens, window_tokens, window_start = 0, 0, time.perf_counter()
    train_start = time.perf_counter()
    step, applied, last_val = 0, 0, initial_val
    batches = iterate_batches(train_set, cfg.batch_size, seed=cfg.seed, loop=True)
    if batches.note:
        on_event(Event("note", {"message": batches.note}))
    try:
        for step in range(1, total + 1):
            batch = next(batches)
            loss, n = step_fn(*backend.to_device(batch))
            applied = step  # the update is in the model's (lazy) state from here on
            mx.eval(loss, n, model.trainable_parameters(), optimizer.state)
            loss_v = loss.item()
            if not math.isfinite(loss_v):
                raise MlxtuneError(f"the loss became {loss_v} at step {step}: the learning rate ({cfg.learning_rate}) is probably too high; adapters of the last good checkpoint are in {run_dir}")
            ntok = int(n.item())
            trained_tokens += ntok
            window_tokens += ntok
            now = time.perf_counter()
            lr = float(optimizer.learning_rate.item()) if isinstance(optimizer.learning_rate, mx.array) else float(optimizer.learning_rate)
            elapsed = now - train_start
            tps = window_tokens / max(now - window_start, 1e-9)
            report = {
                "step": step, "loss": loss_v, "lr": lr, "tokens_per_sec": tps, "trained_tokens": trained_tokens,
                "peak_memory_bytes": runtime.peak_memory_bytes(device), "elapsed": elapsed,
                "eta": elapsed / step * (total - step),
            }
            if step % cfg.val_every == 0 or step == total:
                last_val = validate()
                report["val_loss"] = last_val
                window_tokens, window_start = 0, time.perf_counter()
            log(report)
            on_event(Event("step", report | {"total": total}))
            if step % cfg.save_every == 0 or step == total:
                save(step)
    except KeyboardInterrupt:
        if applied > 0:
            save(applied)
        metrics.close()
        where = f"adapters of step {applied} saved in {run_dir}" if applied > 0 else f"no step had finished; {run_dir} holds no adapters"
        raise TrainingInterrupted(f"interrupted: {where}") from None
    metrics.close()
    seconds = time.perf_counter() - train_start
    result = TrainResult(run_dir, total, initial_val, last_val, trained_tokens, seconds, trained_tokens / max(seconds, 1e-9), runtime.peak_memory_bytes(device))
    on_event(Event("done", {"result": result}))
    return result


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": f"{platform.system()}-{platform.machine()}"}
    for name in ("mlx", "mlx-lm", "numpy", "transformers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
