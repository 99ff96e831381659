"""``mlxtune export``: a model or an adapter in the format another tool reads.

* ``gguf``: llama.cpp and Ollama (``export_gguf``), with a Modelfile;
* ``hf``: a Hugging Face checkpoint ``transformers`` loads (``export_hf``);
* ``peft``: a LoRA adapter for ``peft`` on the Hugging Face base (``peft_format``).

For ``gguf`` and ``hf``, a run (``--adapter``) is first fused into its base in
float32 (so nothing is rounded twice), in a temporary directory beside the
output that is removed afterwards; a model (``--model``) may be a directory,
a Hub id or a .gguf file, converted first as ``mlxtune convert`` would.
"""

from __future__ import annotations

import contextlib
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


def export(fmt: str, output: str | Path, adapter: str | Path | None = None, model: str | None = None, outtype: str = "f16", dtype: str | None = None, base_model: str | None = None, offline: bool | None = None, force: bool = False) -> Exported:
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    output = Path(output)
    if fmt == "peft":
        from .peft_format import export_peft

        if adapter is None:
            raise UsageError("--format peft exports an adapter: pass --adapter RUN")
        r = export_peft(adapter, output, base_model_name_or_path=base_model, force=force)
        what = f"PEFT {'DoRA' if r.dora else 'LoRA'} adapter on {r.modules} layers ({', '.join(r.target_modules)}), r={r.rank}, lora_alpha={r.lora_alpha:g}, for {r.base_model_name_or_path or 'its base (no name recorded: pass --base-model)'}"
        return Exported(fmt, r.path, r.size_bytes, what)
    if adapter is None and model is None:
        raise UsageError(f"--format {fmt} exports a model: pass --model DIR (or a Hub id or .gguf), or --adapter RUN to export it fused into its base")
    notes: list[str] = []
    with _source_dir(adapter, model, output, offline, notes) as source:
        if fmt == "gguf":
            from .export_gguf import export_gguf

            r = export_gguf(source, output, outtype=outtype, force=force)
            types = ", ".join(f"{n} {k}" for k, n in sorted(r.tensor_types.items()))
            return Exported(fmt, r.path, r.size_bytes, f"GGUF {r.outtype.upper()}: {r.n_tensors} tensors ({types})", notes + r.notes, r.modelfile)
        from .export_hf import export_hf

        r = export_hf(source, output, dtype=dtype, force=force)
        return Exported(fmt, r.path, r.size_bytes, f"Hugging Face checkpoint, {r.dtype}, {r.n_tensors} tensors", notes + r.notes)


@contextlib.contextmanager
def _source_dir(adapter, model, output: Path, offline, notes: list[str]) -> Iterator[Path]:
    """The model directory to export: the model itself, or the run fused into its base (a temporary directory)."""
    if adapter is None:
        from .convert import ensure_mlx_model
        from .hub import resolve_model

        source = resolve_model(model, offline=offline)
        if source.note:
            notes.append(source.note)
        yield ensure_mlx_model(source)
        return
    from .fsutil import temporary_dir
    from .fuse import fuse

    output.parent.mkdir(parents=True, exist_ok=True)
    with temporary_dir(output.parent, prefix=".mlxtune-export-") as tmp:
        r = fuse(adapter, tmp / "fused", model=model, dtype="float32", offline=offline, force=True)
        notes.extend(r.notes)
        notes.append(f"fused {r.fused_layers} adapter layers of {adapter} into {r.base} in float32 first")
        yield r.path
