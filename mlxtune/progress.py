"""What training progress looks like: the terminal's progress line, the log's pacing, the JSON lines.

Pure functions (and one small clock-driven class) so they can be tested
without a terminal; ``cli.py`` decides where the text goes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path

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


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def bar_line(d: dict, width: int, last_val: float | None = None) -> str:
    """The progress line for a step event's data ``d``, at most ``width`` characters.

    ``[#####-----] 12/30  40%  loss 1.234  val 1.300  850 tok/s  elapsed 1m02s  ETA 1m33s``;
    a narrow terminal shrinks the bar, then drops tok/s, elapsed and val, then the bar,
    and finally cuts the text.
    """
    step, total = d.get("step", 0), d.get("total") or 0
    frac = min(max(step / total, 0.0), 1.0) if total else 1.0
    fields = {
        "count": f"{step}/{total} {frac:4.0%}",
        "loss": f"loss {_num(d.get('loss'))}",
        "val": f"val {_num(last_val)}" if last_val is not None else "",
        "speed": f"{d['tokens_per_sec']:.0f} tok/s" if d.get("tokens_per_sec") is not None else "",
        "elapsed": f"elapsed {fmt_duration(d.get('elapsed'))}",
        "eta": f"ETA {fmt_duration(d.get('eta'))}",
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


def _plain(x):
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


def event_record(kind: str, data: dict) -> dict:
    """``{"event": kind, ...data}``; the done event's result is spread into it (run_dir, steps, losses, ...)."""
    fields = dict(data)
    if kind == "done" and dataclasses.is_dataclass(fields.get("result")):
        fields = _plain(fields.pop("result")) | fields
    return {"event": kind} | {k: v for k, v in _plain(fields).items() if k != "event"}


def json_line(kind: str, data: dict) -> str:
    """One line of ``--json`` output; always valid JSON (``allow_nan=False`` guards the conversion)."""
    return json.dumps(event_record(kind, data), allow_nan=False)
