"""The CLI's training printer: renders each progress event for a person (a bar or plain lines) or a script (JSON lines).

One handler per kind of event, taking that kind's payload (``events``), from
one table a type checker holds to the kinds and their payloads; the text
itself comes from ``progress``. Only ``mlxtune.cli`` creates a printer:
library code reports events through a callback and never prints.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import click

from ..events import (
    DoneData, EarlyStopData, Event, EventHandlers, InitAdapterData, NoteData, PlanData, ResumeData, SaveData, StartData, StepData,
    ValData, ValidateData,
)
from .progress import Throttle, bar_line, fmt_bytes, fmt_duration, generic_line, json_line, run_lines, use_bar, validating_bar, validating_text


class TrainPrinter:
    """Renders training events for a person or a script.

    On a terminal (stdout a TTY) steps redraw one progress line in place and
    everything else prints as a permanent line above it; in a log, plain step
    lines, throttled (Throttle); with ``quiet`` only notes (stderr), the
    memory plan when --auto changed the settings or the run does not fit
    (stderr), and the summary; with ``as_json`` one JSON object per event on stdout and
    nothing else. The bar goes to stdout, where the step lines it replaces go:
    ``mlxtune lora > log`` keeps a plain log rather than a bar on the terminal
    and nothing in the file. Use it as a context manager around train(): the
    bar is finished with a newline however training ends (done, error, Ctrl-C).
    """

    def __init__(self, quiet: bool = False, as_json: bool = False, out=None) -> None:
        self.quiet, self.as_json, self.out = quiet, as_json, out  # out: None is stdout at the time of each write
        self.bar = not (quiet or as_json) and use_bar(out or sys.stdout)
        self.throttle = Throttle()
        self.last_step: StepData | None = None  # the step event the bar shows
        self.last_val: float | None = None
        self.validating: ValidateData | None = None  # the validate event the bar shows, while a validation runs
        self.val_since = 0.0  # when a log last had a line about the validation in progress
        self.drawn = False
        self.busy = False
        self.pending: list[Event] = []  # events that came during a write (busy), printed after it
        handlers: EventHandlers = {  # one per kind, each taking its kind's payload (a type checker holds them to it)
            "plan": self._on_plan, "init_adapter": self._on_init_adapter, "note": self._on_note, "start": self._on_start,
            "resume": self._on_resume, "validate": self._on_validate, "val": self._on_val, "step": self._on_step,
            "save": self._on_save, "early_stop": self._on_early_stop, "done": self._on_done,
        }
        self.handlers = cast("Mapping[str, Callable[[Any], None]]", handlers)  # looked up by the kind an event brings at run time

    def __enter__(self) -> "TrainPrinter":
        return self

    def __exit__(self, *exc) -> None:
        self._finish()

    def summary(self, line: str) -> None:
        if not self.as_json:
            self._say(line)

    def json_event(self, kind: str, data: Mapping[str, Any]) -> None:
        if self.as_json:
            click.echo(json_line(kind, data), file=self.out)

    def __call__(self, event: Event) -> None:
        if self.busy:  # from a signal handler (Ctrl-C's note) in the middle of a write: print it after
            self.pending.append(event)
            return
        self.busy = True
        try:
            self._handle(event)
            while self.pending:
                self._handle(self.pending.pop(0))
        finally:
            self.busy = False

    def _handle(self, event: Event) -> None:
        """The handler of the event's kind renders it; a kind not known, or a payload shaped otherwise, gets a generic line."""
        kind, d = event.kind, event.data
        if self.as_json:
            return self.json_event(kind, d)
        handler = self.handlers.get(kind)
        if handler is None:  # kinds this printer does not know yet
            return self._generic(kind, d)
        shown = self.last_step, self.last_val, self.validating
        try:
            handler(d)
        except (KeyError, TypeError, ValueError):  # an event shaped otherwise than declared must not stop training
            self.last_step, self.last_val, self.validating = shown  # nor stay on the bar
            self._generic(kind, d)

    def _generic(self, kind: str, d: Mapping[str, Any]) -> None:
        if not self.quiet:
            self._say(generic_line(kind, d))

    # One handler per kind of event (the table in __init__): what it prints, and what it still prints with --quiet.

    def _on_plan(self, d: PlanData) -> None:
        if not self.quiet:
            self._say_all(d["lines"])
        elif d["plan"]["verdict"] not in ("fits", "unknown"):  # --auto changed the settings, or the run does not fit: a warning too
            self._say_all(d["lines"], err=True)

    def _on_note(self, d: NoteData) -> None:
        self._say(f"note: {d['message']}", err=True)  # warnings: kept with --quiet

    def _on_init_adapter(self, d: InitAdapterData) -> None:
        if not self.quiet:
            self._say(d["message"])

    def _on_start(self, d: StartData) -> None:
        if not self.quiet:
            self._say_all(run_lines(d, [f"Training {d['steps']} steps ({d['steps_per_epoch']} per epoch) -> {d['run_dir']}"]))

    def _on_resume(self, d: ResumeData) -> None:
        if self.quiet:
            return
        if d.get("extended"):
            how = f"Extending the finished run from step {d['step']} to {d['steps']} ({d['steps_per_epoch']} per epoch), from {d['checkpoint']}"
        else:
            how = f"Resuming at step {d['step']} of {d['steps']} from {d['checkpoint']}"
        schedule = d.get("schedule_change")
        self._say_all(run_lines(d, [how] + ([f"Schedule: {schedule}"] if schedule else [])))

    def _on_validate(self, d: ValidateData) -> None:
        """A validation's progress: on a terminal, the bar; in a log, a line every PLAIN_INTERVAL seconds of a long one."""
        if self.quiet:
            return
        if self.bar:
            self.validating = d
            return self._draw()
        now = self.throttle.clock()
        if d["batch"] == 0:
            self.val_since = now
        elif d["batch"] < d["batches"] and now - self.val_since >= self.throttle.interval:
            self.val_since = now
            self._say(validating_text(d))

    def _on_val(self, d: ValData) -> None:
        self.validating = None
        val = d["val_loss"]
        if val is None:
            return
        self.last_val = val
        if not self.quiet:
            self._say(f"step {d['step']:>5}  val loss {val:.3f}" + (" (before training)" if d["step"] == 0 else ""))

    def _on_step(self, d: StepData) -> None:
        val = d.get("val_loss")
        if val is not None:
            self.last_val = val
        self.validating = None
        if self.quiet:
            return
        validated = "val_loss" in d
        if self.bar:
            self.last_step = d
            if validated:
                self._say(self._step_line(d))  # validation results stay, above the bar
            self._draw()
        elif self.throttle(d["step"], d["total"], validated):
            self._say(self._step_line(d))

    def _on_save(self, d: SaveData) -> None:
        if not self.quiet:
            self._say(f"saved step {d['step']} -> {d['path']}")

    def _on_early_stop(self, d: EarlyStopData) -> None:
        if not self.quiet:
            self._say(
                f"Stopping early at step {d['step']}: no better validation loss in {d['patience']} validations "
                f"(best: step {d['best_step']}, {d['best_val_loss']:.3f})"
            )

    def _on_done(self, d: DoneData) -> None:
        self._finish()

    @staticmethod
    def _step_line(d: StepData) -> str:
        val_loss = d.get("val_loss")
        val = f"  val {val_loss:.3f}" if val_loss is not None else ""
        return (
            f"step {d['step']:>5}/{d['total']}  loss {d['loss']:.3f}{val}  lr {d['lr']:.1e}  "
            f"{d['tokens_per_sec']:.0f} tok/s trained ({d['processed_tokens_per_sec']:.0f} processed)  peak {fmt_bytes(d['peak_memory_bytes'])}  ETA {fmt_duration(d['eta'])}"
        )

    def _say_all(self, lines: Iterable[str], err: bool = False) -> None:
        for line in lines:
            self._say(line, err=err)

    def _say(self, line: str, err: bool = False) -> None:
        """A permanent line: clear the bar, print, redraw the bar below it."""
        drawn = self.drawn
        if drawn:
            click.echo("\r\x1b[K", nl=False, file=self.out, color=True)
            self.drawn = False
        click.echo(line, err=err, file=None if err else self.out)
        if drawn:
            self._draw()

    def _draw(self) -> None:
        width = shutil.get_terminal_size().columns - 1  # - 1: no wrap at the last column
        if self.validating is not None:
            line = validating_bar(self.validating, width)
        elif self.last_step is not None:
            line = bar_line(self.last_step, width, self.last_val)
        else:
            return
        click.echo("\r\x1b[K" + line, nl=False, file=self.out, color=True)
        self.drawn = True

    def _finish(self) -> None:
        if self.drawn:
            click.echo("", file=self.out)
            self.drawn = False
