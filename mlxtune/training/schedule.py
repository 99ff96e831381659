"""The learning-rate schedule of a run: one warmup + cosine cycle, and more when a run is extended.

A run plans its schedule over its total steps: linear warmup to the peak,
then cosine decay to ``min_lr_ratio`` of it at the last step. Extending it
(``mlxtune lora --resume RUN --iters N``) changes the plan in one of two ways:

* a run that **finished** has decayed to its lowest rate; the added steps
  get a cycle of their own (warmup over the same share of them, then cosine
  decay to the same floor), as in SGDR's warm restarts, so they learn as a
  run of that length would, from where the run was;
* a run that was **stopped** (Ctrl-C, SIGTERM) is still in its cycle: the
  cosine decay is re-planned to end at the new total, as if the run had been
  planned for it (the rate changes at the resume step, then decays smoothly).

The cycles are stored in every checkpoint (``state.json``, ``schedule``), so
every later resume follows the same rates. Plain Python, so both backends
follow exactly the same schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import TrainConfig


def learning_rate_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Linear warmup to the peak, then cosine decay to ``min_lr_ratio`` of it (step counts from 1)."""
    warmup = warmup_steps(cfg, total)
    peak, low = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    if step <= warmup:
        return peak * step / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def warmup_steps(cfg: TrainConfig, total: int) -> int:
    """The warmup of a cycle of ``total`` steps: ``cfg.warmup`` of them (a share below 1, else a count)."""
    warmup = int(cfg.warmup if cfg.warmup >= 1 else round(cfg.warmup * total))
    return min(max(warmup, 0), max(total - 1, 0))


@dataclass
class Schedule:
    """The rate of every step: ``cycles`` of (start, end), steps start+1..end one warmup + cosine cycle each."""

    cfg: TrainConfig
    cycles: list[tuple[int, int]]

    @classmethod
    def of(cls, cfg: TrainConfig, total: int, state: dict | None = None) -> "Schedule":
        """A new run's single cycle, or the cycles a checkpoint recorded (before there were cycles: one, to its total)."""
        saved = (state or {}).get("schedule")
        if saved:
            return cls(cfg, [(int(a), int(b)) for a, b in saved])
        return cls(cfg, [(0, int((state or {}).get("total", total)))])

    def lr(self, step: int) -> float:
        start, end = self.cycle(step)
        return learning_rate_at(self.cfg, step - start, end - start)

    def cycle(self, step: int) -> tuple[int, int]:
        """The cycle ``step`` belongs to: the last one that starts before it."""
        return next((c for c in reversed(self.cycles) if c[0] < step), self.cycles[0])

    @property
    def total(self) -> int:
        return self.cycles[-1][1]

    def to_list(self) -> list[list[int]]:
        return [list(c) for c in self.cycles]

    def extended(self, step: int, total: int, finished: bool) -> tuple["Schedule", str]:
        """The schedule to a new ``total`` from checkpoint ``step``, and one line saying what it does.

        ``finished``: a new cycle for steps step+1..total; otherwise the
        current cycle re-planned to end at ``total``.
        """
        start, end = self.cycles[-1]
        if finished:
            new = Schedule(self.cfg, self.cycles + [(step, total)])
            w = warmup_steps(self.cfg, total - step)
            why = "had finished" if step >= end else f"had stopped early at step {step}"
            return new, (
                f"a new cycle for steps {step + 1}-{total}: " + (f"warmup over {w} step{'s' if w != 1 else ''} to {self.cfg.learning_rate:.1e}, " if w else f"back to {self.cfg.learning_rate:.1e} (no warmup), ") +
                f"cosine decay to {self.cfg.learning_rate * self.cfg.min_lr_ratio:.1e} at step {total} "
                f"(the run {why}, its rate down to {self.lr(step):.1e}; the adapters, AdamW moments, data order and best/ carry on)"
            )
        if total == end:
            return self, ""
        new = Schedule(self.cfg, self.cycles[:-1] + [(start, total)])
        return new, (
            f"the cosine decay is re-planned to end at step {total} instead of {end}: "
            f"rate {new.lr(step + 1):.1e} at step {step + 1} (it would have been {self.lr(step + 1):.1e}), "
            f"{new.lr(total):.1e} at step {total}"
        )


def extend_state(cfg: TrainConfig, state: dict, total: int) -> tuple[dict, dict]:
    """A checkpoint's ``state`` for going on to a new ``total``, and what the session says about it.

    Returns (the state to write back into the checkpoint, the notes for the
    resume event and the result: ``extended``, ``schedule_change``,
    ``total_before``); ``state`` unchanged and no notes when nothing changes
    (a stopped run resumed to the total it had). A run at its total counts as
    finished even when a Ctrl-C cut its last validation short: its rate has
    decayed to the floor, so its added steps get a cycle of their own, as
    those of a run that ended normally do. The new total and cycles go into
    the checkpoint at once, so a stop before the next save keeps them.
    """
    step, before = int(state["step"]), int(state["total"])
    finished = bool(state.get("finished")) or step >= before
    schedule, change = Schedule.of(cfg, before, state).extended(step, total, finished)
    if not change:
        return state, {}
    new = state | {"total": total, "finished": False, "schedule": schedule.to_list()}
    if finished:
        new["validations_since_best"] = 0  # --early-stop counts afresh in the added steps
    return new, {"extended": finished, "schedule_change": change, "total_before": before}
