"""``mlxtune export``: a model or an adapter in the format another tool reads.

* ``gguf``: llama.cpp and Ollama (``export_gguf``), with a Modelfile;
* ``gguf-lora``: the adapter alone for llama.cpp and Ollama, on the base's GGUF (``export_gguf_lora``), with a Modelfile;
* ``hf``: a Hugging Face checkpoint ``transformers`` loads (``export_hf``);
* ``peft``: a LoRA adapter for ``peft`` on the Hugging Face base (``peft_format``);
* ``lmstudio``: the MLX model placed in LM Studio's models folder (``place_lmstudio``).

For ``gguf`` and ``hf``, a run (``--adapter``) is first fused into its base in
float32 (so nothing is rounded twice), in a temporary directory beside the
output that is removed afterwards; a model (``--model``) may be a directory,
a Hub id or a .gguf file, converted first as ``mlxtune convert`` would.

Outputs are named after the model (``--name``; by default the run's directory,
or the model's own name): a GGUF written into a folder is ``<name>-<TYPE>.gguf``
beside ``<name>-<TYPE>.Modelfile``, its ``general.name`` is the name, and HF,
PEFT and LM Studio directories carry a model card that calls it so. Nothing
names the temporary directory a run is fused in.

A target that ``places`` its output in another tool's own folder (LM Studio)
takes no ``-o``, and fuses a run itself, in the base's dtype as ``mlxtune fuse``
does: what it writes is the model the user runs, not an intermediate.

Each format registers itself here with ``@target`` (its name, its help, whether
it writes a model or an adapter); the CLI's ``-f`` choices and their help come
from ``TARGETS``, so a new format is one function in this module (and the
module that writes the files).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import UsageError


@dataclass
class Exported:
    format: str
    path: Path
    size_bytes: int
    what: str  # one line for the user
    notes: list[str] = field(default_factory=list)
    extra: Path | None = None  # the Modelfile beside a GGUF
    name: str = ""  # what the outputs call the model


@dataclass(frozen=True)
class Request:
    """What the user asked of ``export``, as every target receives it."""

    output: Path | None  # None for a target that places its output itself
    into_dir: bool  # ``output`` is a folder to write into (gguf: ``<name>-<TYPE>.gguf``)
    adapter: str | Path | None
    model: str | None
    outtype: str
    dtype: str | None
    base_model: str | None
    offline: bool | None
    force: bool
    name: str | None
    thinking: bool | None = False  # gguf, hf, lmstudio: the chat template (and the Modelfile) think by default; adapter targets: None, as the run
    lmstudio_dir: Path | None = None  # lmstudio: LM Studio's models folder [default: its own]


@dataclass(frozen=True)
class Source:
    """The model a model target writes: its directory (a run already fused into its base), name, origin in words, default dtype."""

    directory: Path
    name: str
    origin: str
    default_dtype: str | None


@dataclass(frozen=True)
class Target:
    """An export format: ``exports`` "model" (a model, or a run fused into its base) or "adapter" (the run's adapter alone)."""

    name: str
    help: str  # what -f NAME is for, in the CLI's help
    exports: str
    write: Callable[..., Exported]  # model targets: (Request, Source); adapter and placing targets: (Request,)
    places: bool = False  # writes into another tool's folder (no -o) and fuses a run itself


# The export formats, in the order the CLI lists them; each registers itself below with ``@target``.
TARGETS: dict[str, Target] = {}


def target(name: str, help: str, exports: str = "model", places: bool = False) -> Callable[[Callable[..., Exported]], Callable[..., Exported]]:
    """Register the decorated function as the export format ``name`` (``mlxtune export -f NAME``)."""

    def register(write: Callable[..., Exported]) -> Callable[..., Exported]:
        TARGETS[name] = Target(name, help, exports, write, places)
        return write

    return register


@target("gguf", "llama.cpp and Ollama")
def _gguf(req: Request, src: Source) -> Exported:
    from .gguf import export_gguf

    path = req.output / f"{src.name}-{req.outtype.upper()}.gguf" if req.into_dir else req.output
    r = export_gguf(src.directory, path, outtype=req.outtype, force=req.force, name=src.name, origin=src.origin, thinking=req.thinking)
    types = ", ".join(f"{n} {k}" for k, n in sorted(r.tensor_types.items()))
    return Exported("gguf", r.path, r.size_bytes, f"GGUF {r.outtype.upper()}: {r.n_tensors} tensors ({types})", r.notes, r.modelfile, src.name)


@target("gguf-lora", "the adapter alone for llama.cpp (--lora) and Ollama (ADAPTER), with a Modelfile", exports="adapter")
def _gguf_lora(req: Request) -> Exported:
    from .gguf_lora import export_gguf_lora, lora_file_name

    name = req.name or Path(req.adapter).resolve().name
    path = req.output / lora_file_name(name, req.outtype) if req.into_dir else req.output
    r = export_gguf_lora(req.adapter, path, model=req.model, outtype=req.outtype, force=req.force, name=name, offline=req.offline, thinking=req.thinking)
    what = f"GGUF LoRA adapter {r.outtype.upper()} on {r.modules} layers, r={r.rank}, alpha={r.alpha:g}, for the base {r.base}"
    return Exported("gguf-lora", r.path, r.size_bytes, what, r.notes, r.modelfile, name)


@target("hf", "transformers")
def _hf(req: Request, src: Source) -> Exported:
    from .hf import export_hf

    r = export_hf(src.directory, req.output, dtype=req.dtype or src.default_dtype, force=req.force, name=src.name, base_model=src.origin, thinking=req.thinking)
    return Exported("hf", r.path, r.size_bytes, f"Hugging Face checkpoint, {r.dtype}, {r.n_tensors} tensors", r.notes, name=src.name)


@target("peft", "the adapter for peft", exports="adapter")
def _peft(req: Request) -> Exported:
    from ..formats.peft import export_peft

    r = export_peft(req.adapter, req.output, base_model_name_or_path=req.base_model, force=req.force, card_name=req.name)
    what = f"PEFT {'DoRA' if r.dora else 'LoRA'} adapter on {r.modules} layers ({', '.join(r.target_modules)}), r={r.rank}, lora_alpha={r.lora_alpha:g}, for {r.base_model_name_or_path or 'its base (no name recorded: pass --base-model)'}"
    return Exported("peft", r.path, r.size_bytes, what, name=req.name or Path(req.adapter).resolve().name)


@target("lmstudio", "the MLX model in LM Studio's models folder", places=True)
def _lmstudio(req: Request) -> Exported:
    from .lmstudio import place_lmstudio

    r = place_lmstudio(req.name, req.adapter, req.model, req.lmstudio_dir, req.force, req.offline, req.thinking, req.dtype)
    made = f"fused {r.fused_layers} adapter layers, {r.dtype}" if r.fused_layers is not None else (r.dtype or "as stored")
    return Exported("lmstudio", r.path, r.size_bytes, f"MLX model for LM Studio, listed as {r.key} ({made})", r.notes, name=req.name)


def export(fmt: str, output: str | Path | None, adapter: str | Path | None = None, model: str | None = None, outtype: str = "f16", dtype: str | None = None, base_model: str | None = None, offline: bool | None = None, force: bool = False, name: str | None = None, thinking: bool | None = None, lmstudio_dir: str | Path | None = None) -> Exported:
    """Export a model, or a run (``adapter``) fused into its base, or the run's adapter alone (peft), as ``output``.

    ``name``: what the outputs call the model [default: the run's directory name, else the model's].
    ``dtype`` (hf): [default: the base model's, float16 for a quantized base: what ``fuse`` writes].
    ``thinking`` (gguf, gguf-lora, hf): the exported chat template, and the Ollama Modelfile, think unless told
    otherwise (templates with an ``enable_thinking`` switch: Qwen3, SmolLM3) [default: as the run was
    trained (off unless with --thinking); off for a model].
    ``output`` is None for a target that places its output itself (lmstudio: in ``lmstudio_dir``
    [default: LM Studio's own models folder]).
    """
    if fmt not in TARGETS:
        raise UsageError(f"--format must be one of {', '.join(TARGETS)}, not {fmt!r}")
    if name is not None and (not name.strip() or "/" in name or os.sep in name or name.startswith(".")):
        raise UsageError(f"--name must be a plain name (no '/', not starting with '.'), not {name!r}")
    chosen = TARGETS[fmt]
    if chosen.places and output is not None:
        raise UsageError(f"--format {fmt} places the model in the tool's own models folder (another with --lmstudio-dir): drop -o")
    if not chosen.places and output is None:
        raise UsageError(f"--format {fmt} writes to -o/--output: pass it")
    into_dir = output is not None and (str(output).endswith(("/", os.sep)) or Path(output).is_dir())
    if thinking is None and chosen.exports != "adapter":  # an adapter alone carries no chat template
        from ..training.run_schema import RunConfig

        thinking = RunConfig.from_file(Path(adapter)).thinking if adapter is not None else False
    lm_dir = Path(lmstudio_dir) if lmstudio_dir is not None else None
    req = Request(Path(output) if output is not None else None, into_dir, adapter, model, outtype, dtype, base_model, offline, force, name, thinking if chosen.exports == "adapter" else bool(thinking), lm_dir)
    if chosen.exports == "adapter":
        if adapter is None:
            raise UsageError(f"--format {fmt} exports an adapter: pass --adapter RUN")
        return chosen.write(req)
    if adapter is None and model is None:
        raise UsageError(f"--format {fmt} exports a model: pass --model DIR (or a Hub id or .gguf), or --adapter RUN to export it fused into its base")
    if chosen.places:
        name = name or (Path(adapter).resolve().name if adapter is not None else _own_name(model, offline))
        return chosen.write(dataclasses.replace(req, name=name))
    notes: list[str] = []
    scratch = req.output if into_dir and fmt == "gguf" else req.output.parent
    with _source_dir(adapter, model, scratch, offline, notes, name, thinking) as (directory, src_name, origin, default):
        r = chosen.write(req, Source(directory, src_name, origin, default))
    r.notes[:0] = notes
    return r


@contextlib.contextmanager
def _source_dir(adapter, model, scratch: Path, offline, notes: list[str], name: str | None, thinking: bool) -> Iterator[tuple[Path, str, str, str | None]]:
    """(the model directory to export, its name, where it came from in words, its default dtype).

    The model itself, or the run fused into its base in float32, in a temporary
    directory in ``scratch`` named after the model (llama.cpp's metadata
    heuristics read a directory's name), removed afterwards.
    """
    if adapter is None:
        from .model_card import fused_facts, own_name
        from ..models.source import open_model

        opened = open_model(model, offline=offline)
        notes.extend(opened.notes)
        source, directory = opened.source, opened.path
        yield directory, name or fused_facts(directory)[0] or own_name(source), source.spec, None
        return
    from ..fsutil import temporary_dir
    from ..fusing import fuse_run
    from .model_card import fused_facts

    name = name or Path(adapter).resolve().name
    scratch.mkdir(parents=True, exist_ok=True)
    with temporary_dir(scratch, prefix=".mlxtune-export-") as tmp:
        r = fuse_run(adapter, tmp / name, model=model, dtype="float32", offline=offline, force=True, name=name, thinking=thinking)
        notes.extend(r.notes)
        notes.append(f"fused {r.fused_layers} adapter layers of {adapter} into {r.base} in float32 first")
        base = (fused_facts(r.path)[1] or {}).get("base_model") or str(r.base)
        yield r.path, name, f"run {adapter} fused into {base}", r.default_dtype


def _own_name(model: str | None, offline) -> str:
    """The name a model is exported under when none is given: the one a fused model recorded, else its own."""
    from .model_card import fused_facts, own_name
    from ..models.source import open_model

    opened = open_model(model, offline=offline)
    return fused_facts(opened.path)[0] or own_name(opened.source)
