"""``mlxtune lora``: fine-tune a model with LoRA on a JSONL data set.

The run directory it writes:

    adapters.safetensors     latest adapter weights (mlx-lm format)
    adapter_config.json      mlx-lm's fields + the full resolved configuration,
                             the base model, backend, library versions and a
                             fingerprint of the encoded data
    checkpoints/step-NNNNNNN/  adapters, optimizer state and state.json (step,
                             batches drawn, best so far): all a resume needs;
                             the last few kept
    best/                    the adapters with the lowest validation loss
    metrics.jsonl            one line per step: loss, val loss, lr, tokens/s,
                             peak memory

Everything is validated (data, model, options, output directory) before the
directory is created, every file is written atomically and every checkpoint
renamed into place whole. Ctrl-C or SIGTERM finishes the step, saves a
checkpoint and stops; ``mlxtune lora --resume RUN`` goes on from the last
checkpoint as if the run had never stopped.
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
from .distributed import DistributedError
from .errors import DataError, MlxtuneError, UsageError
from .fsutil import atomic_write_text, check_output_dir
from .adapters import ADAPTER_WEIGHTS
from . import checkpoint
from .checkpoint import OPTIMIZER, latest_checkpoint  # noqa: F401 (latest_checkpoint: part of the module's interface)



class TrainingInterrupted(MlxtuneError):
    """Ctrl-C or SIGTERM during training; says what was kept and how to go on."""

    exit_code = 130
    label = "Stopped"


@dataclass
class Event:
    """A progress report for the CLI: ``kind`` is start, resume, step, val, save, note, early_stop or done."""

    kind: str
    data: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    initial_val_loss: float | None
    final_val_loss: float | None
    trained_tokens: int  # in this session (since the resume, for a resumed run)
    seconds: float  # of this session
    tokens_per_sec: float
    peak_memory_bytes: int
    best_step: int | None = None  # the step whose adapters are in best/ (lowest validation loss)
    best_val_loss: float | None = None
    stopped_early: bool = False
    resumed_from: int | None = None  # the checkpoint's step, for a resumed run
    config: TrainConfig | None = None  # the settings the run trained with
    rank: int = 0  # this process's rank in a distributed run; only rank 0 reports and writes
    processes: int = 1


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


@dataclass
class _Setup:
    """Everything a run needs before its directory exists (all of it validated)."""

    cfg: TrainConfig
    splits: object
    source: object
    model_dir: Path
    backend: str
    train_set: list
    valid_set: list
    n_truncated: int
    mask_prompt: bool
    steps_per_epoch: int
    total: int

    def fingerprint(self) -> str:
        """A hash of the encoded data (tokens and masks): a resumed run must see the same."""
        import hashlib

        h = hashlib.sha256()
        for examples in (self.train_set, self.valid_set):
            h.update(len(examples).to_bytes(8, "little"))
            for e in examples:
                h.update(len(e.tokens).to_bytes(8, "little"))
                h.update(e.tokens.astype("<i4").tobytes())
                h.update(e.loss_mask.astype("u1").tobytes())
        return h.hexdigest()[:32]


def _prepare(cfg: TrainConfig, on_event: Callable[[Event], None]) -> _Setup:
    """Read and check the data, find the model, choose the backend, encode: everything that can fail on bad input."""
    from .batching import encode_dataset, epoch_steps
    from .convert import ensure_mlx_model
    from .data import load_data, trains_prompt_masked
    from .hub import resolve_model

    splits = load_data(cfg.data, valid_fraction=cfg.valid_fraction, seed=cfg.seed)
    if splits.note:
        on_event(Event("note", {"message": splits.note}))
    source = resolve_model(cfg.model, revision=cfg.revision, offline=cfg.offline)
    if source.note:
        on_event(Event("note", {"message": source.note}))
    model_dir = ensure_mlx_model(source)

    from .backends import backend_for, mlx_available
    from .tokenizer import load_tokenizer

    backend = backend_for(cfg.backend, model_dir, mlx_only="DoRA" if cfg.dora else None)
    if backend == "numpy" and cfg.backend in (None, "auto") and mlx_available():
        on_event(Event("note", {"message": "training with the numpy backend: on a CPU it is faster than mlx's CPU backend for this model (--backend mlx to choose mlx)"}))
    tokenizer = load_tokenizer(model_dir)
    mask_prompt = trains_prompt_masked(splits.format, cfg.mask_prompt)
    train_set, n_trunc = encode_dataset(splits.train, splits.format, tokenizer, mask_prompt, cfg.max_seq_len)
    valid_set, n_trunc_v = encode_dataset(splits.valid, splits.format, tokenizer, mask_prompt, cfg.max_seq_len)
    n_truncated = n_trunc + n_trunc_v
    if not train_set:
        why = f"after truncation to --max-seq-len {cfg.max_seq_len} tokens nothing is left to learn from: raise --max-seq-len" if n_truncated else "no record has a token to learn from (are all completions empty?)"
        raise DataError(why, path=cfg.data)
    from .datacheck import check_splits

    # mlxtune data check's findings (truncation, duplicates, train/valid/test overlap), from what is already encoded
    report = check_splits(splits, cfg.max_seq_len, mask_prompt, {"train": (train_set, n_trunc), "valid": (valid_set, n_trunc_v)})
    for warning in report.warnings:
        on_event(Event("note", {"message": warning}))

    steps_per_epoch = epoch_steps(len(train_set), cfg.batch_size * cfg.grad_accumulation)
    if cfg.iters is not None:
        total = int(cfg.iters)
    else:
        total = max(1, math.ceil((cfg.epochs if cfg.epochs is not None else 1.0) * steps_per_epoch))
    return _Setup(cfg, splits, source, model_dir, backend, train_set, valid_set, n_truncated, mask_prompt, steps_per_epoch, total)


def train(cfg: TrainConfig, on_event: Callable[[Event], None] = lambda e: None, force: bool = False) -> TrainResult:
    """Run a LoRA fine-tune as ``cfg`` says, reporting progress through ``on_event``."""
    if cfg.data is None:
        raise UsageError("no data: pass --data FILE.jsonl or a directory with train.jsonl")
    from .distributed import world_from_env

    world = world_from_env(required=cfg.distributed)
    on_event = on_event if world.main else _silent
    run_dir = Path(cfg.output) if cfg.output else default_output(cfg)
    if world.main:  # only rank 0 writes the run directory
        check_output_dir(run_dir, force, what="run")
    setup = _prepare(cfg, on_event)
    cfg = setup.cfg = _plan_memory(setup, on_event, world)
    _agree(world, setup)  # after the plan: the micro-batch it chose is part of what must agree

    from .adapters import adapter_config
    from .backends import open_trainer

    trainer = open_trainer(setup.backend, setup.model_dir, cfg)
    source, splits = setup.source, setup.splits
    meta = {
        "mlxtune_version": __version__,
        "base_model": {"spec": source.spec, "kind": source.kind, "path": str(source.path), "repo_id": source.repo_id, "revision": source.revision, "mlx_dir": str(setup.model_dir),
                       "signature": checkpoint.model_signature(setup.model_dir)},
        "backend": setup.backend,
        "compute": trainer.description,
        "versions": _versions(),
        "config": cfg.to_dict() | {"output": str(run_dir), "backend": setup.backend, "scale": cfg.scale, "mask_prompt": setup.mask_prompt, "iters": setup.total},
        "data": {"description": splits.description, "path": str(Path(cfg.data).resolve()), "format": splits.format, "train": len(setup.train_set), "valid": len(setup.valid_set), "truncated": setup.n_truncated, "fingerprint": setup.fingerprint()},
    }
    if world.size > 1:
        meta["distributed"] = {"processes": world.size, "backend": world.backend}
    ad_config = adapter_config(trainer.num_layers, trainer.keys, cfg.rank, cfg.scale, cfg.dropout, cfg.dora, **meta)
    if world.main:  # ---- from here on, the run directory exists
        if run_dir.exists() and force:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)  # it may exist, empty
        atomic_write_text(run_dir / "adapter_config.json", json.dumps(ad_config, indent=2))
    return _Run(setup, trainer, run_dir, ad_config, on_event, world=world).go()


def _plan_memory(setup: _Setup, on_event: Callable[[Event], None], world) -> TrainConfig:
    """Estimate the run's peak memory against what the machine has; with --auto, change what must change to fit.

    The micro-batch, accumulation and checkpointing may change, the effective
    batch (and so the steps) never. A resumed run does not come here: other
    micro-batches would be other batches. Distributed, each process plans for
    its share of the batch on its own machine (``_agree`` then checks that
    all chose alike).
    """
    import dataclasses

    from .plan import plan_run

    cfg = setup.cfg
    share = dataclasses.replace(cfg, batch_size=math.ceil(cfg.batch_size / world.size))
    memory = plan_run(share, setup.model_dir, setup.backend, [len(e) for e in setup.train_set] + [len(e) for e in setup.valid_set])
    on_event(Event("plan", {"lines": memory.lines(table=False), "plan": memory.to_dict()}))
    memory.check()  # nothing fits: an error before the run directory exists
    planned = memory.apply(share)
    if planned.batch_size != share.batch_size:
        cfg = dataclasses.replace(cfg, batch_size=planned.batch_size * world.size, grad_accumulation=planned.grad_accumulation)
    return dataclasses.replace(cfg, grad_checkpoint=planned.grad_checkpoint)


def _silent(event: Event) -> None:
    """What ranks other than 0 print: nothing (their errors still reach the CLI)."""


def _agree(world, setup: _Setup) -> None:
    """All processes of a distributed run must train the same model on the same data with the same settings."""
    if world.size == 1:
        return
    from .distributed import fingerprint_files

    model_files = [p for p in Path(setup.model_dir).iterdir() if p.suffix == ".safetensors" or p.name == "config.json"]
    settings = {k: v for k, v in setup.cfg.to_dict().items() if k not in ("data", "output", "model", "offline", "revision")}
    world.agree({
        "model": fingerprint_files(model_files),
        "data": setup.fingerprint(),
        "settings": json.dumps(settings, sort_keys=True) + setup.backend,
    })


def resume(run_dir: str | Path, on_event: Callable[[Event], None] = lambda e: None) -> TrainResult:
    """Continue a run from its last checkpoint, with the settings it was started with.

    The checkpoint holds the adapters, the optimizer's moments and step, and
    where the run was (step, batches drawn, best validation loss so far); the
    learning rate and the dropout masks are functions of the step. So the
    resumed run takes the same steps, on the same batches, as one never
    stopped.
    """
    from .backends import open_trainer
    from .distributed import world_from_env
    from . import npio

    run_dir = Path(run_dir)
    world = world_from_env()
    if world.size == 1:
        files = checkpoint.read_for_resume(run_dir)
    else:  # rank 0 reads the checkpoint and sends it: the ranks need not share a file system
        try:
            files = checkpoint.read_for_resume(run_dir) if world.main else {}
        except MlxtuneError as e:
            files = {"error": str(e).encode()}
        files = world.broadcast(files)
        if "error" in files:
            raise UsageError(files["error"].decode())
    ad_config, state = json.loads(files["config"]), json.loads(files["state"])
    fields = {f for f in TrainConfig.__dataclass_fields__}
    base = ad_config.get("base_model") or {}
    cfg = TrainConfig(**{k: v for k, v in ad_config["config"].items() if k in fields} | {"epochs": None, "iters": state["total"]})
    cfg.revision = cfg.revision or base.get("revision")  # the commit trained on, not the Hub's latest
    data_path = (ad_config.get("data") or {}).get("path")
    if data_path and not Path(cfg.data).exists():
        cfg.data = data_path  # resumed from another working directory
    on_event = on_event if world.main else _silent
    setup = _prepare(cfg, on_event)
    _agree(world, setup)
    if setup.fingerprint() != state.get("data_fingerprint"):
        raise DataError("the data (or the tokenizer, or --max-seq-len) changed since the run started, so its batches cannot be replayed: resume with the same data, or start a new run", path=cfg.data)
    if base.get("signature") and checkpoint.model_signature(setup.model_dir) != base["signature"]:
        raise UsageError(f"the base model {setup.source.spec} is not the one the run started on (its files in {setup.model_dir} differ): resume with the same model")
    if setup.backend != state.get("backend"):
        raise UsageError(f"the run was trained with the {state.get('backend')} backend, which is not available here (this machine would use {setup.backend})")
    trainer = open_trainer(setup.backend, setup.model_dir, cfg)
    ckpt = run_dir / "checkpoints" / f"step-{state['step']:07d}"
    weights, _ = npio.read_safetensors(ckpt / ADAPTER_WEIGHTS, data=files["adapters"])
    opt_state, _ = npio.read_safetensors(ckpt / OPTIMIZER, data=files["optimizer"])
    trainer.load_state(weights, opt_state)
    return _Run(setup, trainer, run_dir, ad_config, on_event, state, world).go()


class _Run:
    """The training loop of one session of a run (a new run, or a resumed one)."""

    def __init__(self, setup: _Setup, trainer, run_dir: Path, ad_config: dict, on_event, state: dict | None = None, world=None):
        from .distributed import World

        self.setup, self.cfg, self.trainer, self.run_dir = setup, setup.cfg, trainer, run_dir
        self.ad_config, self.on_event, self.state = ad_config, on_event, state
        self.world = world or World()
        self.fingerprint = setup.fingerprint()

    def step(self, micro: list, lr: float) -> tuple[float, int, int, bool]:
        """One optimizer step on the global batch: (loss, trained tokens, tokens seen, stop), all global.

        Alone, the trainer's own step. Distributed, this rank's gradient sums
        are added to the others' (with the tokens and whether any rank was
        asked to stop, so that all stop after the same step), and every rank
        applies the same update.
        """
        seen = sum(int(b.lengths.sum()) for b in micro if b is not None)
        if self.world.size == 1:
            loss, n = self.trainer.step(micro if len(micro) > 1 else micro[0], lr)
            return loss, n, seen, False  # alone, the loop reads the stop request itself, as late as it can
        sums, loss_sum, n = self.trainer.gradients([b for b in micro if b is not None], rank=self.world.rank)
        sums, (loss_sum, n, seen, stops) = self.world.all_sum(sums, [loss_sum, n, seen, float(self.stop.requested)])
        self.trainer.apply(sums, n, lr)
        return loss_sum / max(n, 1.0), int(n), int(seen), stops > 0

    def validate(self) -> float | None:
        from .batching import iterate_batches

        if not self.setup.valid_set:
            return None
        total_loss, total_n = 0.0, 0
        world = self.world
        for i, batch in enumerate(iterate_batches(self.setup.valid_set, self.cfg.batch_size, seed=self.cfg.seed, loop=False)):
            if 0 <= self.cfg.val_batches <= i:
                break
            if i % world.size != world.rank:  # distributed: batches dealt out to the ranks
                continue
            s, n = self.trainer.evaluate(batch)
            total_loss += s
            total_n += n
        if world.size > 1:
            _, (total_loss, total_n) = world.all_sum({}, [total_loss, total_n])
        return total_loss / max(total_n, 1)

    def save(self, step: int, finished: bool = False) -> Path:
        """A checkpoint with everything needed to continue (rank 0 writes it; the others only note the step)."""
        from . import npio

        self.saved = step
        if not self.world.main:
            return self.run_dir / "checkpoints" / f"step-{step:07d}"
        weights = self.trainer.adapter_weights()
        state = {
            "step": step, "total": self.setup.total, "finished": finished, "backend": self.setup.backend,
            "learning_rate": learning_rate_at(self.cfg, step, self.setup.total),
            "batches_drawn": self.batches.consumed, "seed": self.cfg.seed, "data_fingerprint": self.fingerprint,
            "random_state": "dropout masks are drawn from generators seeded by (seed, step, rank)",
            "initial_val_loss": self.initial_val, "last_val_loss": self.last_val,
            "best_step": self.best_step, "best_val_loss": self.best_val, "validations_since_best": self.stale,
            "trained_tokens": self.trained_before + self.trained_tokens, "train_seconds": self.seconds_before + (time.perf_counter() - self.train_start),
        }
        final = checkpoint.write(self.run_dir, step, weights, self.trainer.optimizer_state(), state)
        npio.write_safetensors(self.run_dir / ADAPTER_WEIGHTS, weights, metadata={"format": "mlx"})
        self.on_event(Event("save", {"step": step, "path": str(final)}))
        return final

    def save_best(self, step: int, val: float) -> None:
        """best/: the adapters with the lowest validation loss so far, loadable like the run itself."""
        from . import npio

        if not self.world.main:
            return
        best = self.run_dir / "best"
        best.mkdir(exist_ok=True)
        npio.write_safetensors(best / ADAPTER_WEIGHTS, self.trainer.adapter_weights(), metadata={"format": "mlx"})
        atomic_write_text(best / "adapter_config.json", json.dumps(self.ad_config | {"best": {"step": step, "val_loss": val}}, indent=2))

    def go(self) -> TrainResult:
        from .batching import iterate_batches

        cfg, setup, run_dir = self.cfg, self.setup, self.run_dir
        state, total = self.state, setup.total
        start_step = state["step"] if state else 0
        self.saved = start_step
        self.trained_tokens, self.trained_before = 0, (state or {}).get("trained_tokens", 0)
        self.seconds_before = (state or {}).get("train_seconds", 0.0)
        self.batches = iterate_batches(setup.train_set, cfg.batch_size, seed=cfg.seed, loop=True, shard=(self.world.rank, self.world.size))
        if self.batches.note and not state:
            self.on_event(Event("note", {"message": self.batches.note}))
        if state:
            self.batches.skip(state["batches_drawn"])
        if state and self.world.main:
            checkpoint.keep_metrics_until(run_dir / "metrics.jsonl", start_step)
            checkpoint.clean_leftovers(run_dir)
        start_info = {
            "run_dir": str(run_dir), "data": setup.splits.description, "model": str(setup.source.path), "compute": self.trainer.description, "backend": setup.backend,
            "trainable": self.trainer.n_trainable, "layers": self.trainer.num_layers, "keys": self.trainer.keys, "steps": total, "steps_per_epoch": setup.steps_per_epoch,
            "train_examples": len(setup.train_set), "valid_examples": len(setup.valid_set),
            "batch_size": cfg.batch_size, "grad_accumulation": cfg.grad_accumulation, "grad_checkpoint": cfg.grad_checkpoint,
            "processes": self.world.size,
        }
        self.metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if self.world.main else None
        self.train_start = time.perf_counter()
        try:
            asked = Event("note", {"message": "stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)"})
            with checkpoint.GracefulStop(lambda: self.on_event(asked)) as stop:
                self.stop = stop
                return self._loop(start_step, state, start_info)
        except KeyboardInterrupt:  # a second Ctrl-C: out at once, without writing anything more
            raise TrainingInterrupted(f"at once, on the second Ctrl-C; {self._kept()}") from None
        except DistributedError as e:  # another process was lost
            raise DistributedError(f"{e}; {self._kept()}") from None
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def _kept(self) -> str:
        last = latest_checkpoint(self.run_dir)
        if last:
            return f"the last checkpoint ({last.name}) is intact; continue with: mlxtune lora --resume {self.run_dir}"
        return f"no checkpoint had been written yet: start again (--force replaces {self.run_dir})"

    def _log(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()

    def _interrupted(self, completed: int) -> TrainingInterrupted:
        if completed == 0:
            return TrainingInterrupted(f"interrupted before the first step finished, nothing to keep: start again with --force (it replaces {self.run_dir})")
        where = self.save(completed) if self.saved != completed else latest_checkpoint(self.run_dir)
        if not self.world.main:
            # Wait for rank 0's checkpoint, then leave with success: a launcher (mlx.launch)
            # ends the others when one exits with an error, and rank 0 still has to say where it saved.
            self.world.all_sum({}, [0.0])
            stopped = TrainingInterrupted(f"rank {self.world.rank} stopped with the others after step {completed}; rank 0 saved the checkpoint")
            stopped.exit_code = 0
            return stopped
        self.world.all_sum({}, [0.0])  # the checkpoint is written: the others may go
        return TrainingInterrupted(f"interrupted at step {completed} of {self.setup.total}: checkpoint {where}; continue with: mlxtune lora --resume {self.run_dir}")

    def _loop(self, start_step: int, state: dict | None, start_info: dict) -> TrainResult:
        cfg, total, trainer = self.cfg, self.setup.total, self.trainer
        if state:
            self.initial_val, self.last_val = state["initial_val_loss"], state["last_val_loss"]
            self.best_step, self.best_val, self.stale = state["best_step"], state["best_val_loss"], state["validations_since_best"]
            if self.best_step is None:
                self.best_val = self.initial_val
            self.on_event(Event("resume", start_info | {"step": start_step, "checkpoint": str(latest_checkpoint(self.run_dir))}))
        else:
            self.on_event(Event("start", start_info))
            self.initial_val = self.last_val = self.validate()
            self._log({"step": 0, "val_loss": self.initial_val, "elapsed": time.perf_counter() - self.train_start})
            self.on_event(Event("val", {"step": 0, "val_loss": self.initial_val}))
            self.best_step, self.best_val, self.stale = None, self.initial_val, 0
            if self.stop.requested and self.world.size == 1:  # distributed: the first step's vote stops every rank
                raise self._interrupted(0)
        window_tokens, window_seen, window_start = 0, 0, time.perf_counter()
        self.train_start = time.perf_counter()
        completed, stopped_early = start_step, False
        for step in range(start_step + 1, total + 1):
            micro = [next(self.batches) for _ in range(cfg.grad_accumulation)]
            lr = learning_rate_at(cfg, step, total)
            loss_v, ntok, seen, stop_now = self.step(micro, lr)
            if not math.isfinite(loss_v):
                last = latest_checkpoint(self.run_dir)
                kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
                raise MlxtuneError(f"the loss became {loss_v} at step {step}: the learning rate ({cfg.learning_rate}) is probably too high; {kept}; start again with a lower --lr")
            completed = step
            self.trained_tokens += ntok
            window_tokens += ntok
            window_seen += seen
            now = time.perf_counter()
            elapsed = now - self.train_start
            report = {
                "step": step, "loss": loss_v, "lr": lr, "tokens_per_sec": window_tokens / max(now - window_start, 1e-9),
                "processed_tokens_per_sec": window_seen / max(now - window_start, 1e-9),
                "trained_tokens": self.trained_before + self.trained_tokens, "peak_memory_bytes": trainer.peak_memory(),
                "elapsed": self.seconds_before + elapsed, "eta": elapsed / (step - start_step) * (total - step),
            }
            improved = False
            if step % cfg.val_every == 0 or step == total:
                self.last_val = self.validate()
                report["val_loss"] = self.last_val
                window_tokens, window_seen, window_start = 0, 0, time.perf_counter()
                if self.last_val is not None:
                    improved = self.best_val is None or self.last_val < self.best_val
                    self.stale = 0 if improved else self.stale + 1
                    stopped_early = bool(cfg.early_stop) and self.stale >= cfg.early_stop and step < total
            if improved:
                self.best_step, self.best_val = step, self.last_val
                self.save_best(step, self.last_val)
                report["best"] = True
            self._log(report)
            self.on_event(Event("step", report | {"total": total}))
            if stopped_early:
                self.save(step, finished=True)
                self.on_event(Event("early_stop", {"step": step, "patience": cfg.early_stop, "best_step": self.best_step, "best_val_loss": self.best_val}))
                break
            if step % cfg.save_every == 0 or step == total:
                self.save(step, finished=step == total)
            if (stop_now or (self.world.size == 1 and self.stop.requested)) and step < total:  # at the last step, the run is done
                raise self._interrupted(step)
        seconds = time.perf_counter() - self.train_start
        result = TrainResult(
            self.run_dir, completed, self.initial_val, self.last_val, self.trained_tokens, seconds, self.trained_tokens / max(seconds, 1e-9), trainer.peak_memory(),
            self.best_step, self.best_val if self.best_step is not None else None, stopped_early, start_step if state else None, cfg,
            self.world.rank, self.world.size,
        )
        self.on_event(Event("done", {"result": result}))
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
