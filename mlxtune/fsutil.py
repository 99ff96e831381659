"""Writing files and directories so that nothing is ever half-written.

Every file mlxtune produces is written under a temporary name in the same
directory and renamed into place (``os.replace`` is atomic on POSIX), and whole
model directories are assembled beside their destination and renamed at the
end. An interrupted or failed command leaves either the old state or the new
one, never a mixture.

Temporary names are made here rather than by ``tempfile``: ``mkstemp`` and
``mkdtemp`` create with mode 0600 and 0700 whatever the umask, and the rename
would carry that mode to the output. Ours are created with 0666 and 0777, so the
user's umask decides, as it does for any other tool (0644 and 0755 under the
usual 022; private under 077). Copies (``copy_file``) follow the same rule.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from .errors import MlxtuneError, OutputExistsError


_ATTEMPTS = 100  # random names tried before giving up (a clash needs 2^32 draws to be likely)


def _unique(parent: Path, prefix: str, suffix: str, create) -> Path:
    """A new path ``parent/prefix<random>suffix``, made by ``create(path)``, which fails if it exists."""
    for _ in range(_ATTEMPTS):
        path = Path(parent) / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            create(path)
            return path
        except FileExistsError:
            continue
    raise OutputExistsError(
        f"{Path(parent).absolute()} holds no unused temporary name {prefix}*{suffix} ({_ATTEMPTS} random names tried): "
        f"remove the {prefix}* leftovers of interrupted commands there, or write elsewhere"
    )


def make_temp_file(parent: Path, prefix: str, suffix: str = "") -> tuple[int, Path]:
    """An open file descriptor and path of a new empty file, mode 0666 less the umask (``mkstemp`` makes it 0600)."""
    fds: list[int] = []
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    path = _unique(parent, prefix, suffix, lambda p: fds.append(os.open(p, flags, 0o666)))
    return fds[0], path


def make_temp_dir(parent: Path, prefix: str, suffix: str = "") -> Path:
    """A new empty directory, mode 0777 less the umask (``mkdtemp`` makes it 0700)."""
    return _unique(parent, prefix, suffix, lambda p: os.mkdir(p, 0o777))


@contextlib.contextmanager
def temporary_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A scratch directory in ``parent`` (on the same file system as an output there), removed on exit."""
    tmp = make_temp_dir(parent, prefix)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def copy_file(src: Path, dst: Path) -> None:
    """Copy the contents only: ``dst`` gets the mode a new file gets under the umask, not ``src``'s
    (``copy2`` would make the copy of a world-readable cache file world-readable under umask 077)."""
    shutil.copyfile(src, dst)


@contextlib.contextmanager
def atomic_text_file(path: Path) -> Iterator:
    """A text file to write ``path`` through: written under a temporary name beside it, renamed to it once complete
    (and removed if the block raises)."""
    path = Path(path)
    fd, tmp = make_temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_text_file(path) as f:
        f.write(text)


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
    tmp = make_temp_dir(final.parent, prefix=f".{final.name}.partial-")
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


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 4 MB chunks: what a cache or a record names a file by."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json_object(path: Path, error: type[MlxtuneError], what: str) -> dict:
    """The JSON object in ``path``, else ``error`` naming the file, what is wrong, and that it should be ``what``.

    ``error`` is the caller's typed error (a model's config.json is a
    ModelFormatError, an adapter's config an AdapterError); ``what`` says what
    the file should hold, e.g. "a model's configuration".
    """
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise error(f"{path}: cannot read it ({e.strerror or e}): check its permissions") from None
    except ValueError as e:
        raise error(f"{path} is not valid JSON ({e}): it should hold {what}; replace it with a good copy") from None
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        raise error(f"{path} holds {kind}, not {what} (a JSON object): replace it with a good copy")
    return value


def mlxtune_home() -> Path:
    """mlxtune's own cache (converted GGUF models, imported PEFT adapters): $MLXTUNE_HOME, else ~/.cache/mlxtune."""
    return Path(os.environ.get("MLXTUNE_HOME") or Path.home() / ".cache" / "mlxtune")
