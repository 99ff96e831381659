"""Writing files and directories so that nothing is ever half-written.

Every file mlxtune produces is written under a temporary name in the same
directory and renamed into place (``os.replace`` is atomic on POSIX), and whole
model directories are assembled beside their destination and renamed at the
end. An interrupted or failed command leaves either the old state or the new
one, never a mixture.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_safetensors_atomic(path: Path, arrays: dict, metadata: dict | None = None) -> None:
    import mlx.core as mx

    path = Path(path)
    # mx.save_safetensors appends ".safetensors" to names that lack it.
    tmp = path.parent / f".{path.stem}.tmp{os.getpid()}.safetensors"
    try:
        mx.save_safetensors(str(tmp), arrays, metadata=metadata or {})
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def is_nonempty_dir(path: Path, ignore: tuple[str, ...] = ()) -> bool:
    return path.is_dir() and any(p.name not in ignore for p in path.iterdir())


def check_output_dir(path: Path, force: bool, what: str = "output", ignore: tuple[str, ...] = ()) -> None:
    """Refuse to overwrite a non-empty directory unless ``force``; entries named in ``ignore`` (a run's lock) do not count."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{what} path {path} exists and is not a directory")
    if is_nonempty_dir(path, ignore) and not force:
        raise OutputExistsError(f"{what} directory {path} already exists and is not empty: choose another with -o, or pass --force to replace it")


@contextlib.contextmanager
def staged_dir(final: Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``final`` on success.

    On any exception (including Ctrl-C) the temporary directory is removed and
    ``final`` is untouched. With ``force`` an existing ``final`` is replaced
    only once the new one is complete.
    """
    final = Path(final)
    check_output_dir(final, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
