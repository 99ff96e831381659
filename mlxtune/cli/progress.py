"""What training progress looks like: the terminal's progress line, the log's pacing, the JSON lines.

Pure functions (and one small clock-driven class), each reading the payload
type of the event it renders (``events``), so they can be tested without a
terminal; ``printer.TrainPrinter`` renders training events with them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..events import ResumeData, StartData, StepData, ValidateData

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
