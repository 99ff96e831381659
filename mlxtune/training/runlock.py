"""One process per run directory: the lock a training run holds on ``RUN/.mlxtune.lock``.

Two ``mlxtune lora -o runs/x`` started a few seconds apart would otherwise
both pass the "is the directory empty" check (a run creates its directory only
once its data and model are ready), both train, and interleave their steps in
one ``metrics.jsonl``. So the first thing a run does, before it reads its data,
is take this lock: the second is refused with the first one's pid, host, start
time and command, before it writes anything.

The lock is ``flock`` on a file in the run directory, which the kernel
releases when its process ends, however it ends. The file also names its
holder (one JSON line), for the message above and for what a process that was
killed (kill -9, a crash, a power cut) leaves behind: a file naming a process
that no longer holds the lock. The next run says so and takes it over. On a
clean exit (done, an error, Ctrl-C, SIGTERM) the holder removes the file.

Where the file system has no locks (some network mounts), the lock falls back
to the pid in the file: another live process on this host holding it refuses
the run, a holder on another host cannot be checked and is reported.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import MlxtuneError, OutputExistsError

LOCK_NAME = ".mlxtune.lock"


class RunLockedError(MlxtuneError):
    """Another process is training into the run directory."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a run directory's lock, as its lock file says."""

    pid: int | None
    host: str | None
    started: float | None  # seconds since the epoch
    command: str | None

    def describe(self, now: float | None = None) -> str:
        """``pid 4242 on mac.local since 2025-06-01 14:02:11 (3 min ago): mlxtune lora ...``."""
        who = f"pid {self.pid if self.pid is not None else '?'}" + (f" on {self.host}" if self.host else "")
        if self.started is not None:
            age = max(0.0, (time.time() if now is None else now) - self.started)
            ago = f"{age:.0f} s" if age < 120 else f"{age / 60:.0f} min" if age < 7200 else f"{age / 3600:.1f} h"
            who += f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))} ({ago} ago)"
        return who + (f": {self.command}" if self.command else "")


def _command() -> str:
    """This process's command line as the user typed it (``mlxtune lora ...``, not the script's full path)."""
    argv = list(sys.argv) or ["mlxtune"]
    first = Path(argv[0]).name
    argv[0] = "mlxtune" if first in ("__main__.py", "mlxtune", "-m", "-c") else first
    return " ".join(argv)


def _read(fd: int) -> Holder | None:
    """The holder an open lock file names; None when it names nobody (empty: released or never held)."""
    try:
        text = os.pread(fd, 1 << 16, 0).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if not text:
        return None
    try:
        d = json.loads(text)
        return Holder(int(d["pid"]), d.get("host"), float(d["started"]) if d.get("started") is not None else None, d.get("command"))
    except (ValueError, KeyError, TypeError):
        return Holder(None, None, None, None)  # half written by a holder stopped at that instant: someone, unknown


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunLock:
    """A held lock on a run directory. ``acquire`` takes it; ``release`` (or leaving the ``with``) gives it back.

    ``stale`` names a previous holder that ended without releasing the lock
    (its record was still in the file); ``unchecked`` says why the lock could
    not be enforced here (a file system without locks), else None.
    """

    def __init__(self, run_dir: Path, fd: int, created: list[Path], stale: Holder | None, unchecked: str | None):
        self.run_dir, self.path, self.fd, self.created = run_dir, run_dir / LOCK_NAME, fd, created
        self.stale, self.unchecked = stale, unchecked
        self._old_term = None
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            # SIGTERM before training's own handler (while the data or model load): end as Ctrl-C does, so the lock is released
            self._old_term = signal.signal(signal.SIGTERM, _terminated)

    @classmethod
    def acquire(cls, run_dir: str | Path, create: bool = True) -> "RunLock | None":
        """Lock ``run_dir`` for this process, creating it (and its parents) if ``create``.

        Raises RunLockedError naming the holder when another process has it;
        returns None when ``run_dir`` does not exist and ``create`` is False
        (there is nothing to lock: the caller's own checks say what is wrong).
        """
        run_dir = Path(run_dir)
        created: list[Path] = []  # the directories this lock made, deepest first
        if run_dir.exists() and not run_dir.is_dir():
            raise OutputExistsError(f"run path {run_dir} exists and is not a directory")
        if not run_dir.exists():
            if not create:
                return None
            missing = [d for d in [run_dir, *run_dir.parents] if not d.exists()]
            with contextlib.suppress(FileExistsError):  # another process may create it at the same moment
                run_dir.mkdir(parents=True)
                created = missing
        path = run_dir / LOCK_NAME
        for _ in range(100):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                unchecked = _flock(fd, path)
                if unchecked or _same_file(fd, path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder released and removed the file between our open and our lock: open the new one
        else:  # pragma: no cover - a hundred releases in a row
            raise RunLockedError(f"{run_dir} is being locked and released by other processes over and over: try again")
        stale = _read(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": _command()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return cls(run_dir, fd, created, stale, unchecked)

    def release(self) -> None:
        """Remove the lock file (while still holding it) and unlock; the directories this lock created and nothing filled go too."""
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None
        for made in self.created:  # the run directory, then the parents it needed (runs/ for runs/NAME)
            try:
                made.rmdir()  # only if empty: a run that failed before writing anything leaves nothing
            except OSError:
                break
        if self._old_term is not None and signal.getsignal(signal.SIGTERM) is _terminated:
            signal.signal(signal.SIGTERM, self._old_term)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def own_run_dir(run_dir: Path, main: bool, on_note: Callable[[str], None], hold: contextlib.ExitStack | None = None, create: bool = True) -> Iterator[None]:
    """Hold ``run_dir``'s lock while the block runs, and after it until ``hold`` closes.

    Only rank 0 locks (``main``): the other ranks of a distributed run never
    write. A second run into the directory is refused here, before it reads
    or writes anything; a lock left by a process that was killed is reported
    (``on_note``) and taken over. On an error or Ctrl-C the lock is released
    at once.
    """
    lock = RunLock.acquire(run_dir, create=create) if main else None
    if lock is None:
        yield
        return
    if lock.stale:
        on_note(f"{run_dir} was locked by a run that ended without releasing it ({lock.stale.describe()}): taking it over")
    if lock.unchecked:
        on_note(lock.unchecked)
    try:
        yield
    except BaseException:
        lock.release()
        raise
    if hold is None:
        lock.release()
    else:
        hold.callback(lock.release)


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt


def _flock(fd: int, path: Path) -> str | None:
    """Take the lock on ``fd`` or raise RunLockedError; returns why it could not be enforced, if it could not."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        holder = _read(fd)
        if holder is None:  # the holder took the lock this instant and is writing its name
            time.sleep(0.1)
            holder = _read(fd) or Holder(None, None, None, None)
        raise RunLockedError(_in_use(path.parent, holder)) from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    # No locks on this file system: the pid in the file is all there is to go by.
    holder = _read(fd)
    if holder and holder.pid is not None and holder.pid != os.getpid():
        if holder.host == socket.gethostname() and _alive(holder.pid):
            raise RunLockedError(_in_use(path.parent, holder))
        if holder.host != socket.gethostname():
            raise RunLockedError(
                f"{path.parent} names another run ({holder.describe()}), on a file system without locks, so it cannot be checked: "
                f"if that run has ended, delete {path} and start again"
            )
    return f"the file system of {path.parent} has no locks: a second run into it is refused only from this host"


def _in_use(run_dir: Path, holder: Holder) -> str:
    stop = f" (Ctrl-C in its terminal, or kill -INT {holder.pid})" if holder.pid is not None else ""
    return f"{run_dir} is in use by another run, {holder.describe()}; wait for it to end or stop it{stop}, or write to another directory"


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
