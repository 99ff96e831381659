"""What training progress looks like: the terminal's progress line, the log's pacing, the JSON lines.

Pure functions (and one small clock-driven class) so they can be tested
without a terminal, and ``TrainPrinter``, which renders training events with
them: one handler per kind of event, taking that kind's payload (``events``).
Only ``mlxtune.cli`` creates a printer: library code reports events through
a callback and never prints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import click

from ..events import (
    DoneData, EarlyStopData, Event, EventHandlers, InitAdapterData, NoteData, PlanData, ResumeData, SaveData, StartData, StepData,
    ValData, ValidateData,
)

PLAIN_INTERVAL = 10.0  # seconds: in a log, at most one step line this often (validation, first and last steps aside)
BAR_MIN, BAR_MAX = 10, 30  # characters of the bar itself; below BAR_MIN fields are dropped, then the bar
DROP_ORDER = ("speed", "elapsed", "val")  # the fields a narrow terminal loses first


def use_bar(stream, term: str | None = None) -> bool:
    """A line redrawn in place only on an interactive terminal; pipes, files and CI logs get plain lines.

    ``term`` defaults to $TERM: a "dumb" terminal (Emacs shell, some CI runners) cannot clear a line.
    """
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no isatty(), or a closed stream
        return False
    return bool(tty) and (os.environ.get("TERM") if term is None else term) != "dumb"


def fmt_duration(s: float | None) -> str:
    """``45s`` as ``0m45s``, ``1h02m`` past an hour; ``?`` when unknown (None, NaN, infinite)."""
    if s is None or not math.isfinite(s):
        return "?"
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def fmt_bytes(n: int | float) -> str:
    """``850 MB``, ``1.25 GB``."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def bar_line(d: StepData, width: int, last_val: float | None = None) -> str:
    """The progress line for a step event's data ``d``, at most ``width`` characters.

    ``[#####-----] 12/30  40%  loss 1.234  val 1.300  850 tok/s  elapsed 1m02s  ETA 1m33s``;
    a narrow terminal shrinks the bar, then drops tok/s, elapsed and val, then the bar,
    and finally cuts the text.
    """
    step, total = d["step"], d["total"]
    frac = min(max(step / total, 0.0), 1.0) if total else 1.0
    fields = {
        "count": f"{step}/{total} {frac:4.0%}",
        "loss": f"loss {_num(d['loss'])}",
        "val": f"val {_num(last_val)}" if last_val is not None else "",
        "speed": f"{d['tokens_per_sec']:.0f} tok/s",
        "elapsed": f"elapsed {fmt_duration(d['elapsed'])}",
        "eta": f"ETA {fmt_duration(d['eta'])}",
    }
    width = max(width, 0)
    for n in range(len(DROP_ORDER) + 1):
        text = "  ".join(v for k, v in fields.items() if v and k not in DROP_ORDER[:n])
        room = width - len(text) - 3  # "[" + bar + "] "
        if room >= BAR_MIN:
            size = min(room, BAR_MAX)
            filled = int(size * frac)
            return f"[{'#' * filled}{'-' * (size - filled)}] {text}"
    return text[:width]


def validation_line(d: StartData | ResumeData) -> str | None:
    """What a run's validations cover, from a start or resume event's data ``d``: the line that says so before the first one.

    None when ``d`` does not say (an event from elsewhere).
    """
    if "validation" not in d:
        return None
    v = d["validation"]
    if v is None:
        if not d["valid_examples"]:
            return "Validation: none (no validation records): no validation loss, no best/ adapters"
        return "Validation: none (--val-every 0): no validation loss, no best/ adapters, no early stopping"
    before = "before training, " if "step" not in d else ""  # a start validates before training, a resume does not
    when = before + ("every step" if v["every"] == 1 else f"every {v['every']} steps") + " and at the end"
    if v["batches"] == v["of_batches"]:
        return f"Validation: {v['examples']} examples in {v['batches']} batches, {when}"
    return f"Validation: the first {v['batches']} of {v['of_batches']} batches ({v['examples']} of {v['of_examples']} examples; --val-batches), {when}"


def validating_text(d: ValidateData) -> str:
    """``validating at step 25: 3/8 batches, elapsed 0m12s, ETA 0m20s`` for a validate event's data ``d``."""
    done, n = d["batch"], d["batches"]
    eta = d["elapsed"] / done * (n - done) if done else None
    where = "before training" if d["step"] == 0 else f"at step {d['step']}"
    return f"validating {where}: {done}/{n} batches, elapsed {fmt_duration(d['elapsed'])}, ETA {fmt_duration(eta)}"


def validating_bar(d: ValidateData, width: int) -> str:
    """The progress line of a validation, at most ``width`` characters: ``[####------] validating at step 25: 3/8 batches, ...``."""
    done, n = d["batch"], d["batches"]
    text = validating_text(d)
    room = max(width, 0) - len(text) - 3
    if room < BAR_MIN:
        return text[: max(width, 0)]
    size = min(room, BAR_MAX)
    filled = int(size * min(done / n, 1.0)) if n else size
    return f"[{'#' * filled}{'-' * (size - filled)}] {text}"


class Throttle:
    """Which step lines a log gets: the first, the last, each validation step, else one per ``interval`` seconds."""

    def __init__(self, interval: float | None = None, clock=time.monotonic):
        self.interval = PLAIN_INTERVAL if interval is None else interval
        self.clock = clock
        self.last: float | None = None

    def __call__(self, step: int, total: int, validated: bool) -> bool:
        now = self.clock()
        if self.last is None or step >= total or validated or now - self.last >= self.interval:
            self.last = now
            return True
        return False


def _plain(x: Any) -> Any:
    """``x`` as JSON can hold it: paths as strings, NaN and infinities as null, dataclasses as objects."""
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [_plain(v) for v in x]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if hasattr(x, "tolist"):  # numpy scalars and arrays
        return _plain(x.tolist())
    return str(x)


def event_record(kind: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """``{"event": kind, ...data}``; the done event's result is spread into it (run_dir, steps, losses, ...)."""
    fields = dict(data)
    if kind == "done" and dataclasses.is_dataclass(fields.get("result")):
        fields = _plain(fields.pop("result")) | fields
    return {"event": kind} | {k: v for k, v in _plain(fields).items() if k != "event"}


def json_line(kind: str, data: Mapping[str, Any]) -> str:
    """One line of ``--json`` output; always valid JSON (``allow_nan=False`` guards the conversion)."""
    return json.dumps(event_record(kind, data), allow_nan=False)


def generic_line(kind: str, data: Mapping[str, Any]) -> str:
    """``kind: key=value, ...``: an event of a kind the printer does not know, or not shaped as its kind declares."""
    return f"{kind}: " + ", ".join(f"{k}={v}" for k, v in data.items()) if data else kind


def run_lines(d: StartData, how: list[str]) -> list[str]:
    """What a start or resume event's data ``d`` says: data, model, compute, LoRA, then ``how`` the run goes, then its validations."""
    keys = ", ".join(dict.fromkeys(k.rsplit(".", 1)[-1] for k in d["keys"]))
    lines = [
        f"Data: {d['data']}",
        f"Model: {d['model']}",
        f"Compute: {d['backend']} backend; {d['compute']}",
        f"LoRA: {d['trainable'] / 1e6:.2f}M trainable parameters in {d['layers']} blocks ({keys})",
        *how,
    ]
    validation = validation_line(d)
    return lines if validation is None else lines + [validation]


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
