"""``mlxtune export``: a model or an adapter in the format another tool reads.

* ``gguf``: llama.cpp and Ollama (``export_gguf``), with a Modelfile;
* ``hf``: a Hugging Face checkpoint ``transformers`` loads (``export_hf``);
* ``peft``: a LoRA adapter for ``peft`` on the Hugging Face base (``peft_format``).

For ``gguf`` and ``hf``, a run (``--adapter``) is first fused into its base in
float32 (so nothing is rounded twice), in a temporary directory beside the
output that is removed afterwards; a model (``--model``) may be a directory,
a Hub id or a .gguf file, converted first as ``mlxtune convert`` would.

Outputs are named after the model (``--name``; by default the run's directory,
or the model's own name): a GGUF written into a folder is ``<name>-<TYPE>.gguf``
beside ``<name>-<TYPE>.Modelfile``, its ``general.name`` is the name, and HF and
PEFT directories carry a model card that calls it so. Nothing names the
temporary directory a run is fused in.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import UsageError

FORMATS = ("gguf", "hf", "peft")


@dataclass
class Exported:
    format: str
    path: Path
    size_bytes: int
    what: str  # one line for the user
    notes: list[str] = field(default_factory=list)
    extra: Path | None = None  # the Modelfile beside a GGUF
    name: str = ""  # what the outputs call the model


def export(fmt: str, output: str | Path, adapter: str | Path | None = None, model: str | None = None, outtype: str = "f16", dtype: str | None = None, base_model: str | None = None, offline: bool | None = None, force: bool = False, name: str | None = None) -> Exported:
    """Export a model, or a run (``adapter``) fused into its base, or the run's adapter alone (peft), as ``output``.

    ``name``: what the outputs call the model [default: the run's directory name, else the model's].
    ``dtype`` (hf): [default: the base model's, float16 for a quantized one: what ``fuse`` writes].
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if name is not None and (not name.strip() or "/" in name or os.sep in name or name.startswith(".")):
        raise UsageError(f"--name must be a plain name (no '/', not starting with '.'), not {name!r}")
    into_dir = str(output).endswith(("/", os.sep)) or Path(output).is_dir()  # gguf: a folder to put <name>-<TYPE>.gguf in
    output = Path(output)
    if fmt == "peft":
        from .peft_format import export_peft

        if adapter is None:
            raise UsageError("--format peft exports an adapter: pass --adapter RUN")
        r = export_peft(adapter, output, base_model_name_or_path=base_model, force=force, card_name=name)
        what = f"PEFT {'DoRA' if r.dora else 'LoRA'} adapter on {r.modules} layers ({', '.join(r.target_modules)}), r={r.rank}, lora_alpha={r.lora_alpha:g}, for {r.base_model_name_or_path or 'its base (no name recorded: pass --base-model)'}"
        return Exported(fmt, r.path, r.size_bytes, what, name=name or Path(adapter).resolve().name)
    if adapter is None and model is None:
        raise UsageError(f"--format {fmt} exports a model: pass --model DIR (or a Hub id or .gguf), or --adapter RUN to export it fused into its base")
    notes: list[str] = []
    scratch = output if into_dir and fmt == "gguf" else output.parent
    with _source_dir(adapter, model, scratch, offline, notes, name) as (source, name, origin, default):
        if fmt == "gguf":
            from .export_gguf import export_gguf

            target = output / f"{name}-{outtype.upper()}.gguf" if into_dir else output
            r = export_gguf(source, target, outtype=outtype, force=force, name=name, origin=origin)
            types = ", ".join(f"{n} {k}" for k, n in sorted(r.tensor_types.items()))
            return Exported(fmt, r.path, r.size_bytes, f"GGUF {r.outtype.upper()}: {r.n_tensors} tensors ({types})", notes + r.notes, r.modelfile, name)
        from .export_hf import export_hf

        r = export_hf(source, output, dtype=dtype or default, force=force, name=name, base_model=origin)
        return Exported(fmt, r.path, r.size_bytes, f"Hugging Face checkpoint, {r.dtype}, {r.n_tensors} tensors", notes + r.notes, name=name)


@contextlib.contextmanager
def _source_dir(adapter, model, scratch: Path, offline, notes: list[str], name: str | None) -> Iterator[tuple[Path, str, str, str | None]]:
    """(the model directory to export, its name, where it came from in words, its default dtype).

    The model itself, or the run fused into its base in float32, in a temporary
    directory in ``scratch`` named after the model (llama.cpp's metadata
    heuristics read a directory's name), removed afterwards.
    """
    if adapter is None:
        from .model_card import fused_facts
        from .models.source import open_model

        opened = open_model(model, offline=offline)
        notes.extend(opened.notes)
        source, directory = opened.source, opened.path
        own = source.repo_id.split("/")[-1] if source.repo_id else source.path.stem if source.kind == "gguf" else source.path.name
        yield directory, name or fused_facts(directory)[0] or own, source.spec, None
        return
    from .fsutil import temporary_dir
    from .fuse import fuse
    from .model_card import fused_facts

    name = name or Path(adapter).resolve().name
    scratch.mkdir(parents=True, exist_ok=True)
    with temporary_dir(scratch, prefix=".mlxtune-export-") as tmp:
        r = fuse(adapter, tmp / name, model=model, dtype="float32", offline=offline, force=True, name=name)
        notes.extend(r.notes)
        notes.append(f"fused {r.fused_layers} adapter layers of {adapter} into {r.base} in float32 first")
        base = (fused_facts(r.path)[1] or {}).get("base_model") or str(r.base)
        yield r.path, name, f"run {adapter} fused into {base}", r.default_dtype
