"""LoRA and DoRA layers for the mlx backend, and the adapter files they live in.

A LoRA layer wraps a frozen linear layer and adds a low-rank update:

    y = x Wᵀ + b + scale · (x A) B        A: (in, r) "lora_a",  B: (r, out) "lora_b"

DoRA (Liu et al. 2024) also learns a per-row magnitude ``m`` and normalises the
adapted weight row by row, with the norm treated as a constant in the backward
pass (section 4.3 of the paper, as mlx-lm does).

Parameter names, shapes, initialisation and the adapter files are those of
mlx-lm (``adapters.safetensors`` + ``adapter_config.json`` with
``fine_tune_type``, ``num_layers`` and ``lora_parameters``), so an adapter made
here loads with ``mlx_lm.load(model, adapter_path=...)`` unchanged, and one made
by ``mlx_lm.lora`` loads here. ``scale`` is mlx-lm's multiplier; PEFT and most
papers write it as ``alpha / rank``, which is how ``--alpha`` is turned into it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ...formats.adapters import ADAPTER_CONFIG, ADAPTER_LEAVES, ADAPTER_WEIGHTS
from ...errors import AdapterError
from ...fsutil import atomic_write_text, save_safetensors_atomic
from ...training.targets import resolve, union_over_blocks
from ...training.run_schema import RunConfig


def _dense_weight(linear: nn.Module) -> mx.array:
    """The (out, in) weight of a plain or quantized linear layer, dequantized."""
    if isinstance(linear, nn.QuantizedLinear):
        from .weights import dequantize

        return dequantize(linear.weight, linear.scales, linear.get("biases"), linear.group_size, linear.bits, linear.mode)
    return linear.weight


def _dims(linear: nn.Module) -> tuple[int, int]:
    out_dims, in_dims = linear.weight.shape
    if isinstance(linear, nn.QuantizedLinear):
        in_dims = in_dims * 32 // linear.bits
    return in_dims, out_dims


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update."""

    @classmethod
    def from_base(cls, linear: nn.Module, rank: int, scale: float, dropout: float = 0.0) -> "LoRALinear":
        in_dims, out_dims = _dims(linear)
        layer = cls(in_dims, out_dims, rank, scale, dropout, dtype=_float_dtype(linear))
        layer.linear = linear
        return layer

    def __init__(self, in_dims: int, out_dims: int, rank: int, scale: float, dropout: float = 0.0, dtype=mx.float32):
        super().__init__()
        self.linear = nn.Linear(in_dims, out_dims, bias=False)
        self.dropout = nn.Dropout(p=dropout)
        self.scale = scale
        bound = 1 / math.sqrt(in_dims)
        self.lora_a = mx.random.uniform(low=-bound, high=bound, shape=(in_dims, rank)).astype(dtype)  # (in, r)
        self.lora_b = mx.zeros((rank, out_dims), dtype=dtype)  # (r, out)

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        z = (self.dropout(x) @ self.lora_a) @ self.lora_b
        return y + (self.scale * z).astype(x.dtype)

    def delta(self) -> mx.array:
        """The (out, in) weight update this adapter stands for."""
        return (self.scale * self.lora_b.T) @ self.lora_a.T

    def fuse(self, dtype=None) -> nn.Linear:
        """A plain linear layer equal to this one (dequantizing a quantized base)."""
        weight = _dense_weight(self.linear)
        dtype = dtype or weight.dtype
        w = weight.astype(mx.float32) + self.delta().astype(mx.float32)
        return _linear_like(self.linear, w.astype(dtype))


class DoRALinear(LoRALinear):
    """LoRA with a learned per-output-row magnitude (weight-decomposed LoRA)."""

    @classmethod
    def from_base(cls, linear: nn.Module, rank: int, scale: float, dropout: float = 0.0) -> "DoRALinear":
        layer = super().from_base(linear, rank, scale, dropout)
        layer.m = mx.linalg.norm(_dense_weight(linear).astype(mx.float32), axis=1).astype(layer.lora_a.dtype)  # (out,)
        return layer

    def __init__(self, in_dims: int, out_dims: int, rank: int, scale: float, dropout: float = 0.0, dtype=mx.float32):
        super().__init__(in_dims, out_dims, rank, scale, dropout, dtype)
        self.m = mx.ones((out_dims,), dtype=dtype)

    def __call__(self, x: mx.array) -> mx.array:
        w = _dense_weight(self.linear)
        bias = self.linear.get("bias") if "bias" in self.linear else None
        y = x @ w.T.astype(x.dtype)
        z = (self.dropout(x) @ self.lora_a) @ self.lora_b
        out = y + (self.scale * z).astype(x.dtype)
        adapted = w.astype(mx.float32) + self.delta().astype(mx.float32)
        denom = mx.stop_gradient(mx.linalg.norm(adapted, axis=1))  # (out,)
        out = (self.m / denom).astype(x.dtype) * out
        return out + bias if bias is not None else out

    def fuse(self, dtype=None) -> nn.Linear:
        weight = _dense_weight(self.linear)
        dtype = dtype or weight.dtype
        w = weight.astype(mx.float32) + self.delta().astype(mx.float32)
        w = (self.m.astype(mx.float32) / mx.linalg.norm(w, axis=1))[:, None] * w
        return _linear_like(self.linear, w.astype(dtype))


def _float_dtype(linear: nn.Module):
    return linear.scales.dtype if isinstance(linear, nn.QuantizedLinear) else linear.weight.dtype


def _linear_like(base: nn.Module, weight: mx.array) -> nn.Linear:
    out_dims, in_dims = weight.shape
    has_bias = "bias" in base
    fused = nn.Linear(in_dims, out_dims, bias=has_bias)
    fused.weight = weight
    if has_bias:
        fused.bias = base.bias.astype(weight.dtype)
    return fused


# ---------------------------------------------------------------- applying adapters


def linear_keys(model: nn.Module, blocks: list[nn.Module] | None = None) -> list[str]:
    """Names, relative to a transformer block, of the linear layers LoRA can target.

    The union over ``blocks`` (all of the model's by default), as mlx-lm's
    ``linear_to_lora_layers`` takes it (``training.targets.union_over_blocks``): blocks
    may differ, and each block is given the targets it has.
    """
    return union_over_blocks(
        (name for name, module in block.named_modules() if isinstance(module, (nn.Linear, nn.QuantizedLinear)))
        for block in (model.layers if blocks is None else blocks)
    )


def resolve_target_modules(model: nn.Module, targets: list[str] | None, num_layers: int = -1) -> list[str]:
    """Turn user targets ("q_proj", "self_attn.v_proj", "all-linear") into block-relative keys (``training.targets.resolve``).

    A target may be in some blocks only (it is applied where it is), but it
    must be in at least one of the last ``num_layers`` blocks, those adapted.
    """
    n_blocks = len(model.layers)
    adapted = model.layers[n_blocks - num_layers:] if 0 <= num_layers < n_blocks else model.layers
    available = linear_keys(model, adapted)
    return resolve(targets, available, linear_keys(model), adapted_blocks=len(adapted), num_layers=num_layers)


def apply_adapters(model: nn.Module, num_layers: int, keys: list[str], rank: int, scale: float, dropout: float = 0.0, dora: bool = False) -> int:
    """Wrap ``keys`` of the last ``num_layers`` blocks in LoRA (or DoRA) layers.

    Same placement as mlx-lm's ``linear_to_lora_layers``, so the two agree on
    which layers an ``adapter_config.json`` describes. Returns the number of
    wrapped layers.
    """
    n_blocks = len(model.layers)
    if num_layers < 0 or num_layers > n_blocks:
        num_layers = n_blocks
    cls = DoRALinear if dora else LoRALinear
    count = 0
    for block in model.layers[n_blocks - num_layers:]:
        wrapped = [(k, cls.from_base(m, rank, scale, dropout)) for k, m in block.named_modules() if k in keys]
        if wrapped:
            block.update_modules(tree_unflatten(wrapped))
            count += len(wrapped)
    return count


def trainable_only(model: nn.Module) -> None:
    """Freeze everything but the adapter parameters."""
    model.freeze()
    for _, module in model.named_modules():
        if isinstance(module, LoRALinear):
            module.unfreeze(keys=[k for k in ADAPTER_LEAVES if k in module], recurse=False)


def adapter_weights(model: nn.Module) -> dict[str, mx.array]:
    return {k: v for k, v in tree_flatten(model.trainable_parameters())}


def fuse_model(model: nn.Module, dtype=None) -> int:
    """Replace every adapter layer by a plain linear layer; returns how many."""
    fused = [(name, m.fuse(dtype)) for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    if fused:
        model.update_modules(tree_unflatten(fused))
    return len(fused)


# ---------------------------------------------------------------- adapter files (mlx arrays)


def save_adapters(directory: Path, weights: dict[str, mx.array], config: dict | None = None, name: str = ADAPTER_WEIGHTS) -> None:
    """Write adapter weights (and config) atomically: a reader never sees half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(directory / name, weights, metadata={"format": "mlx"})
    if config is not None:
        atomic_write_text(directory / ADAPTER_CONFIG, json.dumps(config, indent=2, sort_keys=False))


def load_adapters(model: nn.Module, directory: Path) -> RunConfig:
    """Wrap the model as the adapter config says and load its weights; returns the config."""
    directory = Path(directory)
    config = RunConfig.from_file(directory)
    lp = config.lora_parameters
    keys = lp.keys or linear_keys(model)
    apply_adapters(model, int(config.num_layers), keys, int(lp.rank), float(lp.scale), 0.0, config.dora)
    weights_path = directory / ADAPTER_WEIGHTS
    if not weights_path.exists():
        raise AdapterError(f"{directory} has no {ADAPTER_WEIGHTS}: the run may not have saved yet")
    weights = mx.load(str(weights_path))
    expected = {k: v for k, v in tree_flatten(model.parameters()) if k.rsplit(".", 1)[-1] in ADAPTER_LEAVES}
    problems = [k for k in weights if k not in expected or weights[k].shape != expected[k].shape]
    missing = [k for k in expected if k not in weights]
    if problems or missing:
        example = (problems or missing)[0]
        raise AdapterError(f"adapter {weights_path} does not fit this model ({len(problems)} unexpected or misshaped, {len(missing)} missing tensors, e.g. {example}): was it trained on a different base model?")
    dtype = next(iter(expected.values())).dtype
    model.load_weights([(k, v.astype(dtype)) for k, v in weights.items()], strict=False)
    return config
