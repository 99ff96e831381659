"""Export a model directory as a Hugging Face checkpoint that ``transformers`` loads unchanged.

The MLX layout mlxtune writes already uses Hugging Face parameter names and
config fields; what a transformers checkpoint must not have is MLX's
quantization (packed uint32 weights with scales and biases), and what it
should have is a ``torch_dtype``, the ``architectures`` entry, the tokenizer
and a generation config. Weights are read with numpy (quantized ones expanded
exactly), stored as float16, bfloat16 or float32 (by default the model's own
dtype, float16 for a quantized one, as ``fuse`` writes:
``models.directory.default_dtype``), with a model card, and the directory is
assembled beside its destination and renamed into place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelNotFoundError, UsageError
from ..models import families

DTYPES = ("float16", "bfloat16", "float32")
# Keys MLX configs carry that are not transformers config fields.
_MLX_KEYS = ("quantization", "quantization_config")


@dataclass
class ExportResult:
    path: Path
    dtype: str
    n_tensors: int
    size_bytes: int
    notes: list[str] = field(default_factory=list)


def export_hf(model_dir: str | Path, out_dir: str | Path, dtype: str | None = None, force: bool = False, name: str | None = None, base_model: str | None = None, thinking: bool = False) -> ExportResult:
    """Write ``model_dir`` as a Hugging Face checkpoint (config.json, model.safetensors, tokenizer, generation_config.json, README.md).

    ``thinking``: the chat template thinks unless told otherwise (``enable_thinking``: Qwen3, SmolLM3); off by default.

    ``name``: what the model card calls it [default: the name a fused model recorded, else the directory's];
    ``base_model``: what the card says it was made from, when it is not a fused model [default: the directory].
    """
    from ..formats import safetensors as npio
    from ..models.directory import TOKENIZER_FILES  # with generation_config.json
    from ..fsutil import check_output_dir, copy_file, staged_dir
    from ..models.chat_template import write_thinking
    from ..models.directory import default_dtype
    from .model_card import CARD, fused_facts, model_card

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelNotFoundError(f"{model_dir} is not a model directory (no config.json): export a directory written by mlxtune convert or fuse")
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    check_output_dir(out_dir, force)
    notes: list[str] = []
    config, weights = npio.load_weights(model_dir)
    if config.get("quantization"):
        q = config["quantization"]
        notes.append(f"the source is {q.get('bits')}-bit quantized (MLX affine): its weights were expanded exactly, so the checkpoint holds the same values in {dtype or 'float16'}")
    dtype = dtype or default_dtype(model_dir)
    for key in _MLX_KEYS:
        config.pop(key, None)
    if config.get("tie_word_embeddings"):
        weights.pop("lm_head.weight", None)
    model_type = config.get("model_type")
    if not config.get("architectures"):
        hf_classes = families.hf_classes()  # model_type -> transformers class
        if model_type not in hf_classes:
            raise UsageError(f"{model_dir}/config.json has no 'architectures' and model_type {model_type!r} is not one mlxtune knows the class of: add \"architectures\": [\"<Class>ForCausalLM\"] to it")
        config["architectures"] = [hf_classes[model_type]]
    config["torch_dtype"] = dtype
    fused_name, facts = fused_facts(model_dir)
    card = model_card("hf", name or fused_name or model_dir.resolve().name, str(out_dir), facts, base_model=None if facts else base_model or str(model_dir), detail=f", {dtype}")
    stored = {k: _cast(v, dtype) for k, v in weights.items()}
    del weights
    with staged_dir(out_dir, force) as tmp:
        npio.write_safetensors(tmp / "model.safetensors", stored, metadata={"format": "pt"}, bf16={k for k, v in stored.items() if v.dtype == np.float32} if dtype == "bfloat16" else None)
        (tmp / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=2) + "\n")
        copied = [name for name in TOKENIZER_FILES if (model_dir / name).is_file()]
        for name in copied:
            copy_file(model_dir / name, tmp / name)
        if write_thinking(tmp, thinking) and not thinking:
            notes.append("the chat template's thinking mode is off by default (enable_thinking=True still turns it on; --thinking keeps the template as it was)")
        if "tokenizer.json" not in copied and "tokenizer.model" not in copied:
            notes.append(f"{model_dir} has no tokenizer files: the checkpoint has none either")
        if "generation_config.json" not in copied:
            gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        (tmp / CARD).write_text(card)
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    return ExportResult(out_dir, dtype, len(stored), size, notes)


def _cast(a: np.ndarray, dtype: str) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.floating):
        return a
    if dtype == "float16":
        return a.astype(np.float16)
    return a.astype(np.float32, copy=False)  # bfloat16 is rounded from float32 on write
