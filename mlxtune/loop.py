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
from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoint
from .adapters import ADAPTER_WEIGHTS
from .checkpoint import latest_checkpoint
from .config import TrainConfig
from .distributed import DistributedError
from .errors import MlxtuneError
from .fsutil import atomic_write_text
from .schedule import Schedule, learning_rate_at  # noqa: F401 (learning_rate_at: part of this module's interface)


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


class Run:
    """The training loop of one session of a run (a new run, or a resumed one)."""

    def __init__(self, setup, trainer, run_dir: Path, ad_config: dict, on_event, state: dict | None = None, world=None):
        from .distributed import World

        self.setup, self.cfg, self.trainer, self.run_dir = setup, setup.cfg, trainer, run_dir
        self.ad_config, self.on_event, self.state = ad_config, on_event, state
        self.world = world or World()

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
            "learning_rate": self.schedule.lr(step), "schedule": self.schedule.to_list(),
            "batches_drawn": self.batches.consumed, "seed": self.cfg.seed, "data_fingerprint": self.setup.fingerprint,
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
        self.schedule = Schedule.of(cfg, total, state)
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
            changed = {k: state[k] for k in ("extended", "schedule_change") if state.get(k)}  # set by train.resume for a new total
            self.on_event(Event("resume", start_info | {"step": start_step, "checkpoint": str(latest_checkpoint(self.run_dir))} | changed))
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


