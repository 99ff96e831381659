"""The mlx backend's memory model: a training process's peak resident memory, as far as its autodiff can be counted.

``training.memory.estimate`` reaches it through ``backends.memory_model("mlx")``
(N = B x T rows, C width, F MLP width, H, KVH heads, D head size, V
vocabulary, r rank; floats of the compute dtype):

* weights as stored on a GPU, in float32 on a CPU;
* its autodiff keeps per adapted block the inputs of every op whose gradient
  needs them (2C + H D + 2 KVH D + 4F, the input of each adapted projection
  and r per adapter a row, plus the attention probabilities, H T a row), or
  only the block input (C) with checkpointing (and two blocks' worth while
  the backward recomputes them);
* transient: the (N, V) float32 logits and the three (N, V) arrays of their gradient.

A packed batch (``--pack``, ``packing.py``) is planned as rows of T tokens like any
other; its block-diagonal (B, 1, T, T) mask, shared by the layers, is not
counted: a step's peak grew by 4.5 B T^2 bytes (19 MB at B = 4, T = 1024; the
tiny model, CPU), against the attention probabilities above, 4 H B T^2 bytes
per adapted block in float32 (SmolLM2's 30 blocks of 9 heads: 1080 B T^2),
so under 0.5% of a real model's activations.

It imports no mlx: ``mlxtune plan`` and the tests estimate an mlx run where
mlx is not installed.
"""

from __future__ import annotations

import math

from ...training.memory_base import DTYPE_SIZE, FLOAT_DTYPES, ITEMSIZE, Estimate, EstimateInputs, Tensor, elements, quantized_stems

# Resident memory of a `mlxtune lora --backend mlx` process just before the
# trainer is created (interpreter, numpy, click, the tokenizer, mlx-lm and what
# it imports), measured on Linux x86_64, Python 3.11, numpy 2.4, mlx 0.32 by
# `bench/bench_plan.py --baseline` (284 MB). The data's encoded examples come
# on top (training.memory.DATA_BYTES_PER_TOKEN).
BASELINE_BYTES = 285 * 10**6


def estimate(x: EstimateInputs) -> Estimate:
    """The mlx backend (MlxTrainer on mlx-lm's models), as far as its autodiff can be counted from the ops."""
    from ...runtime import choose_compute

    config, d, tensors, keys, n_blocks, rank, P, B, T = x.config, x.dims, x.tensors, x.keys, x.n_blocks, x.rank, x.params, x.batch_size, x.seq_len
    device, grad_checkpoint = x.device, x.grad_checkpoint
    C, F, H, KVH, D, V = d["C"], d["F"], d["H"], d["KVH"], d["D"], d["V"]
    compute = choose_compute(device, x.dtype)
    quantized = quantized_stems(tensors)
    stored = sum(t.nbytes for t in tensors)
    if compute.expand_quantized:  # a CPU: every weight dense in float32
        weights = 4 * sum(elements(t, config) for t in tensors if not (t.name.endswith((".scales", ".biases")) and t.name.rsplit(".", 1)[0] in quantized))
    elif compute.dtype:  # floating tensors (scales and biases too) cast, packed codes kept
        weights = sum(math.prod(t.shape) * DTYPE_SIZE[compute.dtype] if t.dtype in FLOAT_DTYPES else t.nbytes for t in tensors)
    else:
        weights = stored
    loading = stored + (weights if weights != stored else 0)  # the model as stored and as converted, until evaluated
    act = DTYPE_SIZE[compute.dtype] if compute.dtype else stored_float_size(tensors, quantized)
    N = B * T
    # What the vjps need, a row of one block: the block input and h (RMSNorm), q, k, v and the
    # attention probabilities (H T), gate, up, sigmoid(gate), silu(gate) (SwiGLU), and the input
    # of each adapted projection (its lora_a gradient) with x A (r) of each adapter.
    # (a fused family's qkv_proj and gate_up_proj read the same inputs as q, k, v and gate, up)
    inputs = (C if any(k in keys for k in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.qkv_proj")) else 0) + (H * D if "self_attn.o_proj" in keys else 0)
    inputs += (C if any(k in keys for k in ("mlp.gate_proj", "mlp.up_proj", "mlp.gate_up_proj")) else 0) + (F if "mlp.down_proj" in keys else 0)
    per_row = 2 * C + H * D + 2 * KVH * D + H * T + 4 * F + inputs + rank * len(keys)
    whole = N * per_row * act
    if grad_checkpoint:
        # mx.checkpoint keeps each block's input; its backward recomputes the block, and mlx's
        # evaluation order has the next block's recomputation done before the current one is
        # freed: two blocks' worth at once (mx.get_peak_memory at 1x256, 2x256, 1x512: within 1%).
        activations, n_ckpt, recompute = n_blocks * N * C * act, n_blocks, min(2, n_blocks) * whole
    else:
        activations, n_ckpt, recompute = n_blocks * whole, 0, 0
    # The loss: (N, V) logits in float32 (and in the compute dtype first), and the softmax,
    # the target's one-hot and their sum, each (N, V), in the backward; the final norm's input.
    transient = recompute + N * (4 * V * 4 + (V * act if act != 4 else 0) + C * act)
    adapters = (4 + (1 if x.grad_accumulation > 1 else 0)) * P * act
    what = compute.reason.split(", ", 1)[-1] if device == "cpu" else (compute.dtype or "stored dtype") + (", weights quantized" if quantized else "")
    return Estimate("mlx", device, what, B, T, grad_checkpoint, n_blocks, n_ckpt, x.baseline, weights, adapters, activations, transient, loading)


def stored_float_size(tensors: list[Tensor], quantized: set[str]) -> int:
    """Bytes of the model's own compute dtype: its embedding's (the scales' when quantized)."""
    by_name = {t.name: t for t in tensors}
    t = by_name.get("model.embed_tokens.scales" if "model.embed_tokens" in quantized else "model.embed_tokens.weight")
    return ITEMSIZE.get(t.dtype, 4) if t is not None and t.dtype in FLOAT_DTYPES else 4
