"""The training loop of one session of a run: steps, validation, checkpoints, best/, stopping.

``train.py`` sets a run up (new or resumed) and hands it here. One session
runs from a start step (0, or a checkpoint's) to the end, an early stop, a
NaN, or a stop request; in a distributed run every rank runs this loop and
rank 0 alone writes and reports.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint
from ..formats.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from .checkpoint import latest_checkpoint
from .config import TrainConfig
from .distributed import DistributedError
from ..errors import MlxtuneError
from ..events import Event
from ..fsutil import atomic_write_text
from .run_schema import Best, RunConfig
from .schedule import Schedule, learning_rate_at  # noqa: F401 (learning_rate_at: part of this module's interface)


class TrainingInterrupted(MlxtuneError):
    """Ctrl-C or SIGTERM during training; says what was kept and how to go on."""

    exit_code = 130
    label = "Stopped"


class _ValidationStopped(Exception):
    """Ctrl-C or SIGTERM during a validation, which stops between two batches."""


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
    total: int | None = None  # the steps the run goes to
    total_before: int | None = None  # a resume to a new total (--iters/--epochs): the total the checkpoint had


class Run:
    """The training loop of one session of a run (a new run, or a resumed one)."""

    def __init__(self, setup, trainer, run_dir: Path, ad_config: RunConfig, on_event, state: dict | None = None, world=None):
        from .distributed import World

        self.setup, self.cfg, self.trainer, self.run_dir = setup, setup.cfg, trainer, run_dir
        self.ad_config, self.on_event, self.state = ad_config, on_event, state
        self.world = world or World()

    @property
    def _pack(self) -> int | None:
        """The rows' length of a packed run (``--pack``: ``max_seq_len`` tokens); None unpacked."""
        return self.cfg.max_seq_len if self.cfg.pack else None

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

    def validation_plan(self) -> dict | None:
        """What each validation covers, for the start line: None when the run does not validate.

        ``--val-batches N`` takes the first N batches of the split's seeded
        order, so every validation of the run sees the same examples. With
        ``--pack`` the validation batches are packed too (the loss is the same).
        """
        from itertools import islice

        from ..data.batching import batch_rows, epoch_steps, iterate_batches

        valid, cfg = self.setup.valid_set, self.cfg
        if cfg.val_every <= 0 or not valid:
            return None
        every = epoch_steps(batch_rows(valid, self._pack), cfg.batch_size)
        batches = every if cfg.val_batches < 0 else min(cfg.val_batches, every)
        first = islice(iterate_batches(valid, cfg.batch_size, seed=cfg.seed, loop=False, pack=self._pack), batches)
        examples = len(valid) if batches == every else sum(len(b.lengths) if b.segments is None else int(b.segments.max(axis=1).sum()) for b in first)
        return {"batches": batches, "of_batches": every, "examples": examples, "of_examples": len(valid), "every": cfg.val_every}

    def validate(self, step: int, stopping: bool = False) -> float | None:
        """The validation loss (token-weighted mean over the validated batches); None when the run does not validate.

        Reports its progress (``validate`` events) and checks for a stop
        request between batches: Ctrl-C raises _ValidationStopped at the next
        one (``stopping``: one came before it began). Distributed, the batches
        are dealt out to the ranks, and after each round (a batch per rank)
        the ranks add up their losses and whether any was asked to stop, so
        all stop after the same round.
        """
        from ..data.batching import iterate_batches

        if self.val_plan is None:
            return None
        if stopping:
            raise _ValidationStopped
        world, n = self.world, self.val_plan["batches"]
        started, self.validating = time.perf_counter(), step
        total_loss, total_n, round_loss, round_n = 0.0, 0.0, 0.0, 0.0
        self.on_event(Event("validate", {"step": step, "batch": 0, "batches": n, "elapsed": 0.0}))
        try:
            for i, batch in enumerate(iterate_batches(self.setup.valid_set, self.cfg.batch_size, seed=self.cfg.seed, loop=False, pack=self._pack)):
                if i >= n:
                    break
                if i % world.size == world.rank:  # distributed: batches dealt out to the ranks
                    s, k = self.trainer.evaluate(batch)
                    round_loss, round_n = round_loss + s, round_n + k
                if i % world.size != world.size - 1 and i != n - 1:
                    continue  # the round goes on
                self.on_event(Event("validate", {"step": step, "batch": i + 1, "batches": n, "elapsed": time.perf_counter() - started}))
                stop = self.stop.requested
                if world.size > 1:
                    _, (round_loss, round_n, votes) = world.all_sum({}, [round_loss, round_n, float(stop)])
                    stop = votes > 0
                total_loss, total_n, round_loss, round_n = total_loss + round_loss, total_n + round_n, 0.0, 0.0
                if stop and i < n - 1:
                    raise _ValidationStopped
        finally:
            self.validating = None
        return total_loss / max(total_n, 1)

    def save(self, step: int, finished: bool = False) -> Path:
        """A checkpoint with everything needed to continue (rank 0 writes it; the others only note the step)."""
        from ..formats import safetensors as npio

        self.saved = step
        if not self.world.main:
            return self.run_dir / "checkpoints" / f"step-{step:07d}"
        weights = self.trainer.adapter_weights()
        state = {
            "step": step, "total": self.setup.total, "finished": finished, "backend": self.setup.backend,
            "learning_rate": self.schedule.lr(step), "schedule": self.schedule.to_list(),
            "batches_drawn": self.batches.consumed, "seed": self.cfg.seed, "data_fingerprint": self.setup.fingerprint,
            "random_state": "dropout masks are drawn from generators seeded by (seed, step, rank)",
            "initial_val_loss": self.initial_val, "last_val_loss": self.last_val, "pending_validation": self.pending,
            "best_step": self.best_step, "best_val_loss": self.best_val, "validations_since_best": self.stale,
            "trained_tokens": self.trained_before + self.trained_tokens, "train_seconds": self.seconds_before + (time.perf_counter() - self.train_start),
        }
        final = checkpoint.write(self.run_dir, step, weights, self.trainer.optimizer_state(), state)
        npio.write_safetensors(self.run_dir / ADAPTER_WEIGHTS, weights, metadata={"format": "mlx"})
        self.on_event(Event("save", {"step": step, "path": str(final)}))
        return final

    def save_best(self, step: int, val: float) -> None:
        """best/: the adapters with the lowest validation loss so far, loadable like the run itself."""
        from ..formats import safetensors as npio

        if not self.world.main:
            return
        best = self.run_dir / "best"
        best.mkdir(exist_ok=True)
        npio.write_safetensors(best / ADAPTER_WEIGHTS, self.trainer.adapter_weights(), metadata={"format": "mlx"})
        atomic_write_text(best / ADAPTER_CONFIG, self.ad_config.updated(best=Best(step=step, val_loss=val)).write_text())

    def go(self) -> TrainResult:
        from ..data.batching import iterate_batches

        cfg, setup, run_dir = self.cfg, self.setup, self.run_dir
        state, total = self.state, setup.total
        start_step = state["step"] if state else 0
        self.saved, self.validating = start_step, None
        self.schedule = Schedule.of(cfg, total, state)
        self.pending = (state or {}).get("pending_validation")  # a step whose validation a stop cut short
        self.trained_tokens, self.trained_before = 0, (state or {}).get("trained_tokens", 0)
        self.seconds_before = (state or {}).get("train_seconds", 0.0)
        self.batches = iterate_batches(setup.train_set, cfg.batch_size, seed=cfg.seed, loop=True, shard=(self.world.rank, self.world.size), pack=self._pack)
        self.val_plan = self.validation_plan()
        if self.batches.note and not state:
            self.on_event(Event("note", {"message": self.batches.note}))
        if cfg.pack and not state:
            self.on_event(Event("note", {"message": f"--pack: {len(setup.train_set)} training records in {self.batches.rows} rows of up to {cfg.max_seq_len} tokens"}))
        if state:
            self.batches.skip(state["batches_drawn"])
        if state and self.world.main:
            checkpoint.keep_metrics_until(run_dir / "metrics.jsonl", start_step)
            checkpoint.clean_leftovers(run_dir)
        start_info = {
            "run_dir": str(run_dir), "data": setup.splits.description, "model": setup.source.shown, "compute": self.trainer.description, "backend": setup.backend,
            "trainable": self.trainer.n_trainable, "layers": self.trainer.num_layers, "keys": self.trainer.keys, "steps": total, "steps_per_epoch": setup.steps_per_epoch,
            "train_examples": len(setup.train_set), "valid_examples": len(setup.valid_set),
            "batch_size": cfg.batch_size, "grad_accumulation": cfg.grad_accumulation, "grad_checkpoint": cfg.grad_checkpoint,
            "processes": self.world.size, "validation": self.val_plan,
        }
        self.metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if self.world.main else None
        self.train_start = time.perf_counter()
        try:
            with checkpoint.GracefulStop(lambda: self.on_event(Event("note", {"message": self._stopping()}))) as stop:
                self.stop = stop
                return self._loop(start_step, state, start_info)
        except KeyboardInterrupt:  # a second Ctrl-C: out at once, without writing anything more
            raise TrainingInterrupted(f"at once, on the second Ctrl-C; {self._kept()}") from None
        except DistributedError as e:  # another process was lost
            raise DistributedError(f"{e}; {self._kept()}") from None
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def _stopping(self) -> str:
        """What the first Ctrl-C does, said when it arrives."""
        if self.validating == 0:
            return "stopping the validation before training; nothing is trained yet (Ctrl-C again to stop at once)"
        if self.validating is not None:
            return f"stopping the validation of step {self.validating} and saving a checkpoint (Ctrl-C again to stop at once)"
        return "stopping after this step and saving a checkpoint (Ctrl-C again to stop at once)"

    def _kept(self) -> str:
        last = latest_checkpoint(self.run_dir)
        if last:
            return f"the last checkpoint ({last.name}) is intact; continue with: mlxtune lora --resume {self.run_dir}"
        return f"no checkpoint had been written yet: start again (--force replaces {self.run_dir})"

    def _log(self, record: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()

    def _interrupted(self, completed: int, pending: dict | None = None) -> TrainingInterrupted:
        """Save what a stop after step ``completed`` keeps; ``pending``: the step's record, its validation cut short (the resume does it first)."""
        if completed == 0:
            return TrainingInterrupted(f"interrupted before the first step finished, nothing to keep: start again with --force (it replaces {self.run_dir})")
        self.pending = pending
        where = self.save(completed) if self.saved != completed else latest_checkpoint(self.run_dir)
        if not self.world.main:
            # Wait for rank 0's checkpoint, then leave with success: a launcher (mlx.launch)
            # ends the others when one exits with an error, and rank 0 still has to say where it saved.
            self.world.all_sum({}, [0.0])
            stopped = TrainingInterrupted(f"rank {self.world.rank} stopped with the others after step {completed}; rank 0 saved the checkpoint")
            stopped.exit_code = 0
            return stopped
        self.world.all_sum({}, [0.0])  # the checkpoint is written: the others may go
        during = " (its validation had not finished: the resumed run does it first)" if pending else ""
        return TrainingInterrupted(f"interrupted at step {completed} of {self.setup.total}{during}: checkpoint {where}; continue with: mlxtune lora --resume {self.run_dir}")

    def _loop(self, start_step: int, state: dict | None, start_info: dict) -> TrainResult:
        cfg, total, trainer = self.cfg, self.setup.total, self.trainer
        completed, stopped_early = start_step, False
        if state:
            self.initial_val, self.last_val = state["initial_val_loss"], state["last_val_loss"]
            self.best_step, self.best_val, self.stale = state["best_step"], state["best_val_loss"], state["validations_since_best"]
            if self.best_step is None:
                self.best_val = self.initial_val
            changed = {k: state[k] for k in ("extended", "schedule_change") if state.get(k)}  # set by train.resume for a new total
            self.on_event(Event("resume", start_info | {"step": start_step, "checkpoint": str(latest_checkpoint(self.run_dir))} | changed))
            if self.pending:  # the validation a stop cut short, then what followed it in the step
                report, self.pending = dict(self.pending), None
                self._validate_step(start_step, report, stopping=self.world.size == 1 and self.stop.requested)
                stopped_early = self._after_step(start_step, report)
        else:
            self.on_event(Event("start", start_info))
            try:
                self.initial_val = self.last_val = self.validate(0, stopping=self.world.size == 1 and self.stop.requested)
            except _ValidationStopped:
                raise self._interrupted(0) from None
            if self.val_plan is not None:
                self._log({"step": 0, "val_loss": self.initial_val, "elapsed": time.perf_counter() - self.train_start})
                self.on_event(Event("val", {"step": 0, "val_loss": self.initial_val}))
            self.best_step, self.best_val, self.stale = None, self.initial_val, 0
            if self.stop.requested and self.world.size == 1:  # distributed: the first step's vote stops every rank
                raise self._interrupted(0)
        window_tokens, window_seen, window_start = 0, 0, time.perf_counter()
        self.train_start = time.perf_counter()
        for step in range(start_step + 1, total + 1) if not stopped_early else ():
            micro = [next(self.batches) for _ in range(cfg.grad_accumulation)]
            lr = self.schedule.lr(step)
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
            stopping = stop_now or (self.world.size == 1 and self.stop.requested)
            if self.val_plan is not None and (step % cfg.val_every == 0 or step == total):
                self._validate_step(step, report, stopping)
                window_tokens, window_seen, window_start = 0, 0, time.perf_counter()
            stopped_early = self._after_step(step, report)
            if stopped_early:
                break
            if (stop_now or (self.world.size == 1 and self.stop.requested)) and step < total:  # at the last step, the run is done
                raise self._interrupted(step)
        seconds = time.perf_counter() - self.train_start
        result = TrainResult(
            self.run_dir, completed, self.initial_val, self.last_val, self.trained_tokens, seconds, self.trained_tokens / max(seconds, 1e-9), trainer.peak_memory(),
            self.best_step, self.best_val if self.best_step is not None else None, stopped_early, start_step if state else None, cfg,
            self.world.rank, self.world.size, total, (state or {}).get("total_before"),
        )
        self.on_event(Event("done", {"result": result}))
        return result

    def _validate_step(self, step: int, report: dict, stopping: bool) -> None:
        """Validate after step ``step`` into its ``report``; a stop during it saves the step, its validation pending."""
        try:
            self.last_val = report["val_loss"] = self.validate(step, stopping)
        except _ValidationStopped:
            raise self._interrupted(step, pending=report) from None

    def _after_step(self, step: int, report: dict) -> bool:
        """best/, the early-stop count, the metrics line and event, the checkpoint; True when the run stops early here."""
        cfg, total = self.cfg, self.setup.total
        improved = stopped_early = False
        if report.get("val_loss") is not None:
            improved = self.best_val is None or report["val_loss"] < self.best_val
            self.stale = 0 if improved else self.stale + 1
            stopped_early = bool(cfg.early_stop) and self.stale >= cfg.early_stop and step < total
        if improved:
            self.best_step, self.best_val = step, report["val_loss"]
            self.save_best(step, report["val_loss"])
            report["best"] = True
        self._log(report)
        self.on_event(Event("step", report | {"total": total}))
        if stopped_early:
            self.save(step, finished=True)
            self.on_event(Event("early_stop", {"step": step, "patience": cfg.early_stop, "best_step": self.best_step, "best_val_loss": self.best_val}))
        elif step % cfg.save_every == 0 or step == total:
            self.save(step, finished=step == total)
        return stopped_early
