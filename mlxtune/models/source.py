"""From what the user typed to a directory the backends can load: one way, for every command.

``open_model`` is the one place a model spec (Hub id, local directory, .gguf
file or ``ollama:NAME[:TAG]``; None for the default model) becomes a local MLX-layout directory:
``hub.resolve_model`` finds it, and a GGUF file is converted once into
mlxtune's cache (``ensure_mlx_model``). ``run_base_model`` is the same for
"the base a run was trained on", read from its ``adapter_config.json``.
Commands (train, generate, eval, fuse, export, data check, plan) call these
and show the notes; none repeats the steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..training.run_schema import BaseModel, RunConfig
from ..errors import AdapterError
from ..fsutil import file_digest, mlxtune_home, staged_dir
from .hub import ModelSource, resolve_model
from .ollama import blob_digest, is_ollama_spec, parse_name


@dataclass(frozen=True)
class OpenedModel:
    """A model ready to load: where it came from, its MLX-layout directory, what the user should be told."""

    source: ModelSource
    path: Path  # a directory mlx-lm and the numpy backend can load
    notes: tuple[str, ...] = ()  # for the CLI to show, in this order


def open_model(
    spec: str | None,
    *,
    revision: str | None = None,
    offline: bool | None = None,
    allow_fallback: bool = True,
    arg: str = "--model",
    on_note: Callable[[str], None] | None = None,
) -> OpenedModel:
    """Resolve ``spec`` (see ``hub.resolve_model``) and make it a local MLX-layout directory.

    ``on_note`` hears each note as soon as it is known, before a GGUF file is
    converted (which can take a while, and fail); the notes are also returned.
    """
    source = resolve_model(spec, revision=revision, offline=offline, allow_fallback=allow_fallback, arg=arg)
    notes = (source.note,) if source.note else ()
    if on_note is not None:
        for note in notes:
            on_note(note)
    return OpenedModel(source, ensure_mlx_model(source), notes)


def run_base_model(run_dir: Path, model: str | None = None, offline: bool | None = None) -> OpenedModel:
    """The model a run's adapter applies to: ``model`` if given, else the one the run was trained on.

    The run records its base (``base_model`` in adapter_config.json): the MLX
    directory it trained on is used while it exists; otherwise its path (a
    local directory or .gguf still there) or its spec is opened again.
    """
    if model is None:
        base = RunConfig.from_file(run_dir).base_model or BaseModel()
        if base.mlx_dir and (Path(base.mlx_dir) / "config.json").exists():
            return OpenedModel(_recorded_source(base), Path(base.mlx_dir))
        if base.spec or base.path:
            # a local directory or .gguf is opened where it was; a Hub id or an Ollama name (whose path is a blob
            # without the .gguf suffix) is resolved again from its spec
            model = base.path if base.kind in ("dir", "gguf") and Path(base.path or "").exists() and not is_ollama_spec(base.spec) else base.spec
        else:
            raise AdapterError(f"{run_dir}/adapter_config.json does not say which model it was trained on: pass --model")
    return open_model(model, offline=offline, allow_fallback=True)


def _recorded_source(base: BaseModel) -> ModelSource:
    """The ModelSource a run recorded (train writes spec, kind, path, repo_id, revision)."""
    path = Path(base.path or base.mlx_dir)
    return ModelSource(base.kind or "dir", path, base.spec or str(path), base.repo_id, base.revision)


def ensure_mlx_model(source: ModelSource) -> Path:
    """A directory mlx-lm can load for ``source``; GGUF files are converted once and cached."""
    if source.kind != "gguf":
        return source.path
    from ..backends import mlx_available

    dense = not mlx_available()  # without mlx, GGUF blocks are expanded to float32 with numpy
    target = mlxtune_home() / "models" / f"{_cache_name(source)}{'-f32' if dense else ''}"
    if (target / "config.json").exists():
        return target
    with staged_dir(target, force=True) as tmp:
        write_gguf_dir(source.path, tmp, dense=dense)
    return target


def _cache_name(source: ModelSource) -> str:
    """A converted GGUF's folder in the cache: its name and digest.

    An Ollama blob is named by its sha256 already (Ollama checks it on pull), so
    it is not hashed again; its folder is named after the Ollama model, so
    tags of the same blob (``latest``, ``135m``) share one conversion.
    """
    digest = blob_digest(source.path)
    if digest is None:
        return f"{source.path.stem}-{file_digest(source.path)[:12]}"
    name = f"-{parse_name(source.spec).model}" if is_ollama_spec(source.spec) else ""
    return f"ollama{name}-{digest[:12]}"


def write_gguf_dir(gguf_path: Path, out_dir: Path, dense: bool | None = None) -> list[str]:
    """Write a GGUF file's weights, config and tokenizer as an MLX model directory.

    Q4_0/Q4_1/Q8_0 blocks stay quantized (MLX triplets) and the other block types
    are expanded to the dtype this machine computes them in
    (``runtime.choose_expanded_dtype``), unless ``dense``, the default where mlx is
    not installed: then every weight is written as float32.
    """
    from .. import runtime
    from ..backends import mlx_available
    from ..formats.gguf import read_gguf

    if dense is None:
        dense = not mlx_available()
    expanded = "float32" if dense else runtime.choose_expanded_dtype(runtime.current_device())
    g = read_gguf(gguf_path, dense=dense, expanded_dtype=expanded)
    out_dir.mkdir(parents=True, exist_ok=True)
    if all(isinstance(v, np.ndarray) for v in g.weights.values()):
        from ..formats import safetensors as npio

        npio.write_safetensors(out_dir / "model.safetensors", g.weights, metadata={"format": "mlx"})
    else:
        import mlx.core as mx

        mx.save_safetensors(str(out_dir / "model.safetensors"), g.weights, metadata={"format": "mlx"})
    (out_dir / "config.json").write_text(json.dumps(g.config, indent=2, sort_keys=True))
    for name, text in g.tokenizer_files.items():
        (out_dir / name).write_text(text, encoding="utf-8")
    if g.generation_config:
        (out_dir / "generation_config.json").write_text(json.dumps(g.generation_config, indent=2))
    return []
