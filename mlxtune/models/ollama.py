"""The model already in Ollama: ``ollama:NAME[:TAG]`` names the GGUF blob that ``ollama pull`` left on disk.

Ollama keeps its models in one folder (``OLLAMA_MODELS``, else ``~/.ollama/models``
for a user and for macOS, ``/usr/share/ollama/.ollama/models`` for the Linux
service install, whichever exists): ``manifests/<host>/<namespace>/<model>/<tag>``
is a JSON manifest whose layers name blobs by digest, and
``blobs/sha256-<hex>`` holds each blob. The layer of media type
``application/vnd.ollama.image.model`` is the GGUF file; others carry the
template, parameters, license, a vision projector, or a LoRA adapter on top of
the model (a fine-tune: mlxtune trains the base instead).

A name is ``[host/][namespace/]model[:tag]`` as Ollama reads it: host
``registry.ollama.ai``, namespace ``library`` and tag ``latest`` unless given.
Nothing here talks to the Ollama server or the network; the store is read only.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFormatError, ModelNotFoundError, UnsupportedModelError, UsageError

PREFIX = "ollama:"
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
MODEL_LAYER = "application/vnd.ollama.image.model"
ADAPTER_LAYER = "application/vnd.ollama.image.adapter"
PROJECTOR_LAYER = "application/vnd.ollama.image.projector"
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a namespace, model or tag: what Ollama accepts, roughly


def is_ollama_spec(spec: str | None) -> bool:
    """Whether a --model value names a model in the Ollama store."""
    return bool(spec) and spec.startswith(PREFIX)


@dataclass(frozen=True)
class OllamaName:
    host: str
    namespace: str
    model: str
    tag: str

    def __str__(self) -> str:
        """The name as ``ollama list`` shows it: the default host and namespace left out."""
        prefix = "" if self.host == DEFAULT_HOST else f"{self.host}/"
        prefix += "" if self.host == DEFAULT_HOST and self.namespace == DEFAULT_NAMESPACE else f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def repository(self) -> str:
        """Everything but the tag, as ``ollama pull`` takes it."""
        return str(self).rsplit(":", 1)[0]


# a registry host, with a port or not (localhost:5000, hf.co): never "." or "..", which would leave the store
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]+)?")


def parse_name(text: str) -> OllamaName:
    """``[host/][namespace/]model[:tag]`` (with or without the ``ollama:`` prefix) as its four parts."""
    given = text if text.startswith(PREFIX) else PREFIX + text
    text = text[len(PREFIX):] if text.startswith(PREFIX) else text
    slash = text.rfind("/")
    colon = text.rfind(":")
    tag = DEFAULT_TAG
    if colon > slash:
        text, tag = text[:colon], text[colon + 1:]
    parts = text.split("/")
    if len(parts) > 3 or not tag or not all(parts):
        raise UsageError(f"'{given}' is not an Ollama model name: write ollama:NAME[:TAG], e.g. ollama:smollm2:135m (NAME may be namespace/model or host/namespace/model)")
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace = parts[0], parts[1]
    elif len(parts) == 2:
        namespace = parts[0]
    if not _HOST.fullmatch(host) or ".." in host:
        raise UsageError(f"'{host}' in '{given}' is not a registry host (such as registry.ollama.ai or hf.co)")
    for part in (namespace, parts[-1], tag):
        if not _PART.fullmatch(part) or part in (".", ".."):
            raise UsageError(f"'{part}' in '{given}' is not a valid part of an Ollama model name (letters, digits, '_', '.', '-')")
    return OllamaName(host, namespace, parts[-1], tag)


def store_candidates() -> list[Path]:
    """Where Ollama keeps its models, in the order looked at: OLLAMA_MODELS alone when set, else the platform's defaults."""
    if os.environ.get("OLLAMA_MODELS"):
        return [Path(os.path.expandvars(os.environ["OLLAMA_MODELS"])).expanduser()]
    home = Path.home() / ".ollama" / "models"
    if sys.platform.startswith("linux"):
        return [home, Path("/usr/share/ollama/.ollama/models")]
    return [home]


def store_dir() -> Path:
    """The Ollama store in use: the first candidate with a manifests folder (else an error saying where it looked)."""
    candidates = store_candidates()
    found = next((p for p in candidates if (p / "manifests").is_dir()), None)
    if found is None:
        where = " or ".join(str(p) for p in candidates)
        how = "OLLAMA_MODELS" if os.environ.get("OLLAMA_MODELS") else "the default places; set OLLAMA_MODELS to the folder that holds manifests/ and blobs/ if Ollama keeps its models elsewhere"
        raise ModelNotFoundError(f"no Ollama model store at {where} ({how}); pull a model first with `ollama pull NAME`")
    return found


def list_models(store: Path) -> list[OllamaName]:
    """Every model:tag with a manifest in ``store``, sorted."""
    root = store / "manifests"
    names = []
    for path in root.glob("*/*/*/*"):
        if path.is_file() and not path.name.startswith("."):
            host, namespace, model, tag = path.relative_to(root).parts
            names.append(OllamaName(host, namespace, model, tag))
    return sorted(names, key=str)


@dataclass(frozen=True)
class OllamaModel:
    """A model in the Ollama store: its name, manifest, the GGUF blob of its model layer, and what else it carries."""

    name: OllamaName
    manifest: Path
    blob: Path
    digest: str  # hex sha256 of the blob (its name: Ollama stores blobs by content)
    layers: tuple[str, ...]  # media types, in the manifest's order
    notes: tuple[str, ...] = ()


def find_model(spec: str) -> OllamaModel:
    """The model ``spec`` (``ollama:NAME[:TAG]``) names in the store, checked; typed errors say what is there instead."""
    name = parse_name(spec)
    store = store_dir()
    manifest = _manifest_path(store, name)
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        layers = [(layer["mediaType"], layer["digest"]) for layer in data["layers"]]
    except PermissionError:
        raise ModelNotFoundError(_unreadable(manifest)) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFormatError(f"{manifest} is not an Ollama manifest mlxtune can read ({type(e).__name__}: {e}); pull the model again with `ollama pull {name}`") from None
    types = tuple(t for t, _ in layers)
    models = [d for t, d in layers if t == MODEL_LAYER]
    if not models:
        raise ModelFormatError(f"Ollama's {name} has no model layer ({MODEL_LAYER}) in {manifest}, only {', '.join(types) or 'no layers'}: it is not a model mlxtune can read")
    match = _DIGEST.fullmatch(models[0])
    if match is None:
        raise ModelFormatError(f"the model layer of Ollama's {name} names its blob {models[0]!r}, not sha256:<64 hex digits>; pull it again with `ollama pull {name}`")
    digest = match.group(1)
    if ADAPTER_LAYER in types:
        base = _base_of(store, digest, name)
        use = f"pass --model {PREFIX}{base}" if base else f"pull its base model (the FROM line of `ollama show --modelfile {name}`) and pass it as --model {PREFIX}NAME"
        raise UnsupportedModelError(f"Ollama's {name} is a fine-tune: a LoRA adapter layer ({ADAPTER_LAYER}) on top of a base model. mlxtune trains the base: {use}")
    blob = _blob_path(store, digest)
    if blob is None:
        raise ModelNotFoundError(f"the model blob of Ollama's {name} is missing ({store / 'blobs' / f'sha256-{digest}'}): the download did not finish; run `ollama pull {name}` again")
    try:
        with open(blob, "rb") as f:
            magic = f.read(4)
    except PermissionError:
        raise ModelNotFoundError(_unreadable(blob)) from None
    if magic != b"GGUF":
        raise ModelFormatError(f"the model blob of Ollama's {name} ({blob}) is not a GGUF file (it starts with {magic!r}, not b'GGUF'): mlxtune reads Ollama models stored as GGUF")
    notes = []
    if len(models) > 1:
        notes.append(f"Ollama's {name} has {len(models)} model layers; using the first ({blob.name})")
    if PROJECTOR_LAYER in types:
        notes.append(f"Ollama's {name} also has a vision projector, left out: mlxtune uses its text model")
    return OllamaModel(name, manifest, blob, digest, types, tuple(notes))


def blob_digest(path: Path) -> str | None:
    """The sha256 an Ollama blob is named by (``blobs/sha256-<hex>``), None for any other file."""
    match = _DIGEST.fullmatch(Path(path).name)
    return match.group(1) if match and Path(path).parent.name == "blobs" else None


def _unreadable(path: Path) -> str:
    return (f"cannot read {path} (permission denied): the store of Ollama's Linux service belongs to the user 'ollama'; "
            "run mlxtune as a user who may read it (e.g. one in the 'ollama' group), or set OLLAMA_MODELS to a store you can read")


def _manifest_path(store: Path, name: OllamaName) -> Path:
    """The manifest of ``name``, matched without regard to case as Ollama does; else an error listing what is there."""
    exact = store / "manifests" / name.host / name.namespace / name.model / name.tag
    if exact.is_file():
        return exact
    present = list_models(store)
    for other in present:
        if str(other).lower() == str(name).lower():
            return store / "manifests" / other.host / other.namespace / other.model / other.tag
    same = [n for n in present if n.repository.lower() == name.repository.lower()]
    if same:
        tags = ", ".join(n.tag for n in same)
        raise ModelNotFoundError(f"Ollama has {name.repository} but not its tag '{name.tag}' (in {store}); its tags there: {tags}. Pull it with `ollama pull {name}`, or pass one of those")
    there = ", ".join(str(n) for n in present) or "none"
    raise ModelNotFoundError(f"Ollama has no model {name} in {store}; the models there: {there}. Pull it with `ollama pull {name}`, or pass one of those as --model {PREFIX}NAME")


def _blob_path(store: Path, digest: str) -> Path | None:
    """``blobs/sha256-<hex>``, or ``sha256:<hex>``, as older Ollama versions named them outside Windows."""
    return next((p for p in (store / "blobs" / f"sha256-{digest}", store / "blobs" / f"sha256:{digest}") if p.is_file()), None)


def _base_of(store: Path, digest: str, fine_tune: OllamaName) -> OllamaName | None:
    """Another model in the store whose model layer is ``digest`` and that has no adapter: the fine-tune's base."""
    for other in list_models(store):
        if other == fine_tune:
            continue
        try:
            layers = json.loads((store / "manifests" / other.host / other.namespace / other.model / other.tag).read_text(encoding="utf-8"))["layers"]
            types = {layer["mediaType"] for layer in layers}
            if ADAPTER_LAYER not in types and any(layer["mediaType"] == MODEL_LAYER and layer["digest"].endswith(digest) for layer in layers):
                return other
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None
