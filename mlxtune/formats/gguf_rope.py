"""What a GGUF file says of rotary embeddings and attention windows, as the config.json fields mlx-lm and transformers read.

llama.cpp stores some of it as metadata (``rope.scaling.*``, ``rope.dimension_count``,
``attention.sliding_window``), some as tensors (Llama 3's ``rope_freqs``,
LongRoPE's ``rope_factors_long`` / ``_short``), and leaves some to its graph
(Gemma 3's pattern and local base when absent: ``Family.gguf_swa_pattern``,
``gguf_swa_base``). Each is checked against what mlxtune would compute from the
config written, and refused where it cannot say the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelFormatError, UnsupportedModelError
from ..models.families.base import Family


def shortest(x) -> float:
    """Shortest decimal of a float32 (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(x)))


def rope_fields(md: dict, family: Family, config: dict, extra: dict, path: Path) -> dict:
    """config.json's rope and window fields for a file of ``family`` (``config``: its shape, rope_theta and context so far).

    ``extra``: the file's rope tensors by name (rope_freqs, rope_factors_*), as float32.
    """
    arch, head_dim, out = family.gguf_arch, config["head_dim"], {}
    if family.sliding_window:
        out.update(sliding_window(md, family, config["num_hidden_layers"], path))
    if family.partial_rotary:
        out["partial_rotary_factor"] = _partial_rotary(md, arch, head_dim, path)
    if family.gguf_context_keys:  # what llama.cpp's Phi3MiniModel writes besides the context length
        original = md.get(f"{arch}.rope.scaling.original_context_length")
        if original is not None:
            out["original_max_position_embeddings"] = int(original)
        out["sliding_window"] = int(md.get(f"{arch}.attention.sliding_window", 0)) or None
    scaling = _rope_scaling(md, arch, extra, head_dim, config["rope_theta"], path)
    if scaling and "long_factor" in scaling:
        scaling = _longrope(md, arch, scaling, {**config, **out}, path)
    if scaling:
        out["rope_scaling"] = scaling
    return out


def sliding_window(md: dict, family: Family, n_layers: int, path: Path) -> dict:
    """config.json's sliding window, its period of full-attention layers and its local rope base, as llama.cpp reads the file.

    Without ``attention.sliding_window`` no layer slides (a period of 1);
    without a pattern or ``rope.freq_base_swa``, llama.cpp's defaults for the
    architecture (``Family.gguf_swa_pattern``, ``gguf_swa_base``). A pattern
    stored as one flag per layer must be regular: mlx-lm reads a period.
    """
    arch = family.gguf_arch
    window = md.get(f"{arch}.attention.sliding_window")
    if not window:
        return {family.layer_pattern_field: 1}
    pattern = md.get(f"{arch}.attention.sliding_window_pattern", family.gguf_swa_pattern)
    if isinstance(pattern, (list, tuple)):  # one flag per layer: True where the layer slides
        flags = [bool(f) for f in pattern]
        period = next((p for p in range(1, n_layers + 2) if flags == [(i + 1) % p != 0 for i in range(n_layers)]), None)
        if period is None:
            raise UnsupportedModelError(f"{path.name}: {arch}.attention.sliding_window_pattern places its global layers irregularly; mlx-lm reads a regular period only")
        pattern = period
    return {"sliding_window": int(window), family.layer_pattern_field: int(pattern),
            family.local_rope_base_field: shortest(md.get(f"{arch}.rope.freq_base_swa", family.gguf_swa_base))}


def _rope_scaling(md: dict, arch: str, extra: dict, head_dim: int, theta: float, path: Path) -> dict | None:
    """HF ``rope_scaling`` for what the file says (linear), or implies with a rope_freqs tensor (Llama 3)."""
    kind = md.get(f"{arch}.rope.scaling.type", "none")
    if "rope_factors_long.weight" in extra or "rope_factors_short.weight" in extra:
        if "rope_factors_long.weight" not in extra or "rope_factors_short.weight" not in extra:
            raise ModelFormatError(f"{path.name}: the file has one of rope_factors_long and rope_factors_short, not both; it is incomplete")
        return {"type": "longrope", **{f"{k}_factor": [shortest(x) for x in extra[f"rope_factors_{k}.weight"].ravel()] for k in ("short", "long")}}
    if "rope_freqs.weight" in extra:
        return _llama3_scaling(extra["rope_freqs.weight"], head_dim, theta, path)
    if kind == "none":
        return None
    if kind == "linear":
        return {"type": "linear", "factor": shortest(md[f"{arch}.rope.scaling.factor"])}
    raise UnsupportedModelError(f"{path.name}: rope scaling {kind!r} is not supported; use the original Hugging Face model")


def _partial_rotary(md: dict, arch: str, head_dim: int, path: Path) -> float:
    """config.json's partial_rotary_factor from ``rope.dimension_count``, the dims of each head rope turns."""
    dims = int(md.get(f"{arch}.rope.dimension_count", head_dim))
    if not 0 < dims <= head_dim or dims % 2:
        raise ModelFormatError(f"{path.name}: {arch}.rope.dimension_count is {dims}, not an even count of at most head_dim {head_dim}; the file is damaged")
    return dims / head_dim


def _longrope(md: dict, arch: str, scaling: dict, config: dict, path: Path) -> dict:
    """LongRoPE's rope_scaling, with the attention factor llama.cpp reads (``rope.scaling.attn_factor``) where it is not
    the one transformers and mlxtune derive from the two contexts (``models.layout.LongRoPE``)."""
    from ..models.layout import LongRoPE

    original = config.get("original_max_position_embeddings")
    if original is None:
        raise ModelFormatError(f"{path.name}: LongRoPE factors without {arch}.rope.scaling.original_context_length; the file is incomplete")
    scaling = {**scaling, "original_max_position_embeddings": original}
    dims = round(config["head_dim"] * config.get("partial_rotary_factor", 1.0))
    try:
        derived = LongRoPE.from_config(config, scaling, dims).attention_factor
    except ModelFormatError as e:
        raise ModelFormatError(f"{path.name}: rope_factors_long/short do not fit the rotated dims ({e}); the file is inconsistent") from None
    stored = md.get(f"{arch}.rope.scaling.attn_factor")
    if stored is not None and abs(float(stored) - derived) > 1e-6 * derived:
        scaling["attention_factor"] = shortest(stored)
    return scaling


def _llama3_scaling(factors: np.ndarray, head_dim: int, theta: float, path: Path) -> dict:
    """Recover Llama 3.1's rope_scaling from the per-frequency factors llama.cpp stores.

    The converter computes them from factor, low/high frequency factors and the
    original context; only the factor varies between Llama 3.x releases, so we
    take it from the tensor and check the whole tensor against the formula.
    """
    factor, low, high, old = float(factors.max()), 1.0, 4.0, 8192
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    wavelen = 2 * np.pi / freqs
    smooth = (old / wavelen - low) / (high - low)
    expected = np.where(wavelen < old / high, 1.0, np.where(wavelen > old / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    if factors.shape != expected.shape or not np.allclose(factors, expected, rtol=1e-4):
        raise UnsupportedModelError(f"{path.name}: the rope_freqs tensor does not match Llama 3 rope scaling; use the original Hugging Face model")
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high, "original_max_position_embeddings": old}
