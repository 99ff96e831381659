"""mlx weights as stored and as computed: dtypes by name, exact dequantization, casts.

The layer below both the mlx backend's loading and trainer (``backends.mlx``)
and the LoRA layers (``lora``, which fuse into a quantized base's dense
weight), so that neither has to import the other for it.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map, tree_unflatten

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def dequantize(weight: mx.array, scales: mx.array, biases: mx.array | None, group_size: int, bits: int, mode: str = "affine", dtype=mx.float32) -> mx.array:
    """Dequantize exactly: scales and biases in float32 first.

    ``mx.dequantize`` computes in the scales' dtype; with float16 scales (GGUF,
    most MLX checkpoints) ``q * s + b`` is rounded to float16, which changes most
    weights slightly. In float32 the result equals llama.cpp's dequantization.
    """
    scales = scales.astype(mx.float32)
    biases = biases.astype(mx.float32) if biases is not None else None
    return mx.dequantize(weight, scales, biases, group_size=group_size, bits=bits, mode=mode).astype(dtype)


def dequantize_model(model: nn.Module, dtype=None) -> nn.Module:
    """Replace quantized linear and embedding layers by dense ones (float32 by default).

    With ``dtype`` None the dense weights take the scales' dtype, as mlx-lm does.
    """
    dense = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            continue
        out_dtype = dtype or m.scales.dtype
        w = dequantize(m.weight, m.scales, m.get("biases"), m.group_size, m.bits, m.mode, out_dtype)
        if isinstance(m, nn.QuantizedLinear):
            layer = nn.Linear(w.shape[1], w.shape[0], bias="bias" in m)
            if "bias" in m:
                layer.bias = m.bias.astype(out_dtype)
        else:
            layer = nn.Embedding(w.shape[0], w.shape[1])
        layer.weight = w
        dense.append((name, layer))
    if dense:
        model.update_modules(tree_unflatten(dense))
    return model


def cast(model: nn.Module, dtype) -> None:
    """Cast floating-point parameters (not packed quantized weights) to ``dtype``."""
    model.update(tree_map(lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p, model.parameters()))
