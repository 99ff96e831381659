"""A run's adapter merged into its base model, written as a model directory: what ``mlxtune fuse`` and ``export`` build on.

The result is a plain MLX model directory (what ``mlx_lm.load`` reads) that
answers like base + adapter without any adapter machinery. A quantized base is
dequantized and the adapter merged in full precision; the fused model is dense
unless re-quantization is asked for, because quantizing the merged weights can
round away much of what a small adapter learned (the ``fuse`` command measures
how much survives).

Its dtype is the base model's (``models.directory.default_dtype``): the
precision the base was published in; float16 for a quantized base. ``export -f
hf`` follows the same rule. The output carries a model card (``model_card``)
and, in ``mlxtune_fuse.json``, the run's facts, so that exports of it can say
the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .export.model_card import CARD, FUSE_INFO, model_card, run_facts
from .fsutil import copy_file, staged_dir
from .models.chat_template import write_thinking
from .models.directory import TOKENIZER_FILES, default_dtype
from .models.source import run_base_model
from .training.run_schema import RunConfig

DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class FuseResult:
    path: Path
    base: Path
    fused_layers: int
    dtype: str
    quantization: dict | None
    size_bytes: int
    notes: list[str] = field(default_factory=list)
    name: str = ""  # what the model card (and exports of it) call the model
    default_dtype: str = "float16"  # the base's dtype: the default of fuse and of export -f hf
    adapter: Path | None = None  # the adapter fused, in mlx-lm's layout (a PEFT adapter as converted)


def fuse_run(
    adapter_dir: str | Path,
    out_dir: str | Path,
    model: str | None = None,
    dtype: str | None = None,
    quantize: bool = False,
    q_bits: int | None = None,
    q_group_size: int | None = None,
    offline: bool | None = None,
    force: bool = False,
    backend: str | None = "auto",
    name: str | None = None,
    thinking: bool | None = None,
) -> FuseResult:
    """Fuse the adapter in ``adapter_dir`` into its base model, writing ``out_dir`` with its model card.

    ``name``: what the card calls the model [default: the run's directory name].
    ``thinking``: whether the fused model's chat template thinks unless told otherwise (templates with an
    ``enable_thinking`` switch: Qwen3, SmolLM3) [default: as the run rendered its data: off unless it was
    trained with --thinking], so that a model tuned without thinking does not start thinking again.
    """
    from .backends import backend_for, choose_backend, get, mlx_available
    from .formats.peft import as_mlx_adapter

    run_name = Path(adapter_dir).resolve().name
    card_name = name or run_name
    adapter_dir = as_mlx_adapter(adapter_dir)  # a PEFT adapter directory works too
    facts = run_facts(adapter_dir) | {"run": run_name}
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype must be float32, float16 or bfloat16, not {dtype}")
    choose_backend(backend, mlx_available())  # a bad or unavailable choice fails before any loading
    base = run_base_model(adapter_dir, model, offline)
    base_dir, notes = base.path, list(base.notes)
    run = RunConfig.from_file(adapter_dir)
    dora = run.dora
    thinking = run.thinking if thinking is None else thinking
    backend = backend_for(backend, base_dir, mlx_only="re-quantization" if quantize else "DoRA" if dora else None)
    impl = get(backend)
    if quantize and not impl.can_requantize:
        raise UsageError("re-quantizing a fused model needs the mlx backend; drop -q or use --backend mlx")
    default = default_dtype(base_dir)
    dtype = dtype or default
    with staged_dir(Path(out_dir), force=force) as tmp:
        n, quant = impl.fuse(base_dir, adapter_dir, tmp, dtype, quantize, q_bits, q_group_size, notes)
        for name in TOKENIZER_FILES:
            if (base_dir / name).exists():
                copy_file(base_dir / name, tmp / name)
        if write_thinking(tmp, thinking) and not thinking:
            notes.append("the chat template's thinking mode (enable_thinking) is off by default in the fused model (--thinking keeps it on)")
        info = {"base_model": str(base_dir), "adapter": str(adapter_dir.resolve()), "dtype": dtype, "quantization": quant, "backend": backend, "name": card_name, "run": facts, "thinking": thinking}
        (tmp / FUSE_INFO).write_text(json.dumps(info, indent=2))
        kind = f"{quant['bits']}-bit" if quant else dtype
        (tmp / CARD).write_text(model_card("mlx", card_name, str(out_dir), facts, detail=f", {kind}"))
    size = sum(f.stat().st_size for f in Path(out_dir).glob("*.safetensors"))
    return FuseResult(Path(out_dir), base_dir, n, dtype, quant, size, notes, card_name, default, Path(adapter_dir))
