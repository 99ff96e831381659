"""The numpy backend's memory model: a training process's peak resident memory, from its code.

``training.memory.estimate`` reaches it through ``backends.memory_model("numpy")``
(N = B x T rows, C width, F MLP width, H, KVH heads, D head size, V
vocabulary; floats are float32):

* weights in float32 (quantized ones expanded when loaded);
* kept per adapted block ``NumpyLlama.saved_bytes_per_block`` (whole: 2C + 2
  + H + (H + 2 KVH) D + 2F a row; checkpointed: 2C + 2 + H), as many
  checkpointed as ``activation_plan`` says (``activations.py``, the same
  account the model decides with);
* transient: the backward of the last block (the larger of its MLP half, d
  out, d m and m: C + 2F a row, and its attention half, 2 (H + 2 KVH) D +
  2 H D, with q, k, v once more for a family with q/k norms, and C more
  in either half with sandwich norms; and its recomputation when
  checkpointed) and the loss head's logits chunk, kept across steps;
* loading: the safetensors as stored plus the expansion of one tensor at a time.

Nothing here imports the model or the trainer until an estimate is asked for.
"""

from __future__ import annotations

import math

from ...training.memory_base import FLOAT_DTYPES, Estimate, EstimateInputs, Tensor, elements, quantized_stems

# Resident memory of a `mlxtune lora --backend numpy` process just before the
# trainer is created (interpreter, numpy, click, the tokenizer, mlx.core
# imported to choose the backend), measured on Linux x86_64, Python 3.11,
# numpy 2.4 by `bench/bench_plan.py --baseline` (115 MB with --backend auto,
# 111 MB with --backend numpy). The data's encoded examples come on top
# (training.memory.DATA_BYTES_PER_TOKEN).
BASELINE_BYTES = 115 * 10**6


def estimate(x: EstimateInputs) -> Estimate:
    """The numpy backend, from its code: NumpyTrainer, NumpyLlama.loss_and_grads, npio.load_weights."""
    from .activations import block_bytes, checkpointed_blocks
    from .model import HEAD_CHUNK_BYTES
    from .trainer import activation_budget

    config, d, tensors, n_blocks, P, B, T = x.config, x.dims, x.tensors, x.n_blocks, x.params, x.batch_size, x.seq_len
    C, F, H, KVH, D, V = d["C"], d["F"], d["H"], d["KVH"], d["D"], d["V"]
    weights = weight_bytes(config)
    N, f32 = B * T, 4
    cfg = model_config(config)
    # what NumpyLlama.saved_bytes_per_block and activation_plan decide with
    keep, ckpt = block_bytes(C, H, KVH, D, F, N, f32, cfg.sandwich_norms)
    budget = activation_budget(weights, x.activation_mb, x.grad_checkpoint)
    n_ckpt = checkpointed_blocks(n_blocks, keep, ckpt, budget)
    activations = (n_blocks - n_ckpt) * keep + n_ckpt * ckpt
    # The backward of the last block, the larger of its two halves: the MLP's d out, d m and m
    # (C + 2F a row), or the attention's d q | k | v twice, d a and its output (2 (H + 2 KVH) D + 2 H D),
    # with q, k, v rebuilt beside the raw projections a qk_norm family keeps (``block.py``), and, with
    # sandwich norms, d of the normalised output (C) in either half; when every block is checkpointed,
    # that block's recomputed q, k, v, gate and up; the head's logits chunk.
    qkv = (H + 2 * KVH) * D
    attention = 2 * qkv + 2 * H * D + (qkv if cfg.qk_norm else 0)
    sandwich = C if cfg.sandwich_norms else 0
    head_rows = max(8, HEAD_CHUNK_BYTES // (V * f32) // 8 * 8)
    transient = N * (max(C + 2 * F, attention) + sandwich) * f32 + (keep - ckpt if n_blocks and n_ckpt == n_blocks else 0) + min(head_rows, N) * V * f32
    # lora_a, lora_b, AdamW's m and v, the step's gradients (and their sum over micro-batches)
    adapters = (4 + (1 if x.grad_accumulation > 1 else 0)) * P * f32
    quantized = bool(quantized_stems(tensors))
    return Estimate(
        "numpy", "cpu", "float32" + (" (quantized weights expanded)" if quantized else ""), B, T, x.grad_checkpoint, n_blocks, n_ckpt,
        x.baseline, weights, adapters, activations, transient, loading_bytes(config, tensors, d, weights),
    )


def model_config(config: dict):
    """config.json as the numpy model reads it (``models.layout.ModelConfig``: q/k norms, sandwich norms)."""
    from ...models.layout import ModelConfig

    return ModelConfig.from_dict(config)


def weight_bytes(config: dict) -> int:
    """Float32 bytes of every tensor the numpy model keeps (models.layout.expected_shapes)."""
    from ...models.layout import ModelConfig, expected_shapes

    return 4 * sum(math.prod(s) for s in expected_shapes(ModelConfig.from_dict(config)).values())


def loading_bytes(config: dict, tensors: list[Tensor], d: dict, weights: int) -> int:
    """Peak while npio.load_weights and NumpyLlama load: the file's tensors, less those converted, plus the dense ones so far.

    Tensors are converted in file order; expanding a quantized (out, in)
    weight holds four float32 (out, in) arrays at once (the codes, scales
    and biases repeated per weight, their product); stacking q | k | v and
    gate | up afterwards holds one more group.
    """
    quantized = quantized_stems(tensors)
    raw = {t.name: t.nbytes * (2 if t.dtype == "BF16" else 1) for t in tensors}  # bfloat16 is widened when read
    remaining, dense, peak = sum(raw.values()), 0, sum(raw.values())
    for t in tensors:
        stem = t.name.rsplit(".", 1)[0]
        if t.name.endswith((".scales", ".biases")) and stem in quantized:
            continue
        if stem in quantized and t.name.endswith(".weight"):
            n = elements(t, config)
            peak = max(peak, remaining + dense + 4 * n * 4)
            remaining -= raw[t.name] + raw.get(stem + ".scales", 0) + raw.get(stem + ".biases", 0)
        else:
            n = math.prod(t.shape)
            if t.dtype == "F16":  # widened to float32: both copies for a moment
                peak = max(peak, remaining + dense + n * 4)
            remaining -= raw[t.name]
        dense += n * 4 if t.dtype in FLOAT_DTYPES or stem in quantized else raw[t.name]
    group = max((d["H"] + 2 * d["KVH"]) * d["D"], 2 * d["F"]) * d["C"] * 4  # the largest stacked group
    return max(peak, weights + group)
