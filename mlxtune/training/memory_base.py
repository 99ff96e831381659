"""What every backend's memory model counts with: the stored tensors, the model's sizes, the estimate it returns.

``training.memory.estimate`` works out what is the same for every backend
(the model's sizes, the stored layout, the LoRA parameter count, the
baseline) into an ``EstimateInputs``, and the backend's own memory model
(``backends.memory_model(name)``: ``backends/numpy/memory.py``,
``backends/mlx/memory.py``) turns it into an ``Estimate``. This module sits
below both, so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
DTYPE_SIZE = {"float32": 4, "float16": 2, "bfloat16": 2}  # bytes of a compute dtype
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class Tensor:
    """A tensor as a safetensors header describes it."""

    name: str
    dtype: str  # "F32", "U32", ...
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


@dataclass
class Estimate:
    """Predicted peak resident memory of a training process, term by term (bytes)."""

    backend: str
    device: str
    compute: str  # e.g. "float32 (quantized weights expanded)"
    batch_size: int
    seq_len: int
    grad_checkpoint: bool | None
    blocks: int  # blocks that keep activations for the backward (the adapted ones)
    blocks_checkpointed: int
    baseline: int
    weights: int
    adapters: int
    activations: int
    transient: int
    loading: int  # peak while loading the weights (over the baseline)

    @property
    def training(self) -> int:
        return self.weights + self.adapters + self.activations + self.transient

    @property
    def total(self) -> int:
        return self.baseline + max(self.loading, self.training)

    def terms(self) -> list[tuple[str, int, str]]:
        """(label, bytes, what) for the breakdown table."""
        ckpt = "every block checkpointed" if self.blocks_checkpointed == self.blocks else f"{self.blocks_checkpointed} of {self.blocks} blocks checkpointed" if self.blocks_checkpointed else f"{self.blocks} blocks"
        return [
            ("runtime baseline", self.baseline, "interpreter, libraries, tokenizer, data"),
            ("weights", self.weights, self.compute),
            ("adapters + AdamW + grads", self.adapters, "LoRA parameters, two moments, gradients"),
            ("activations kept", self.activations, f"{self.batch_size} x {self.seq_len} tokens, {ckpt}"),
            ("step transient", self.transient, "backward buffers and the loss head's logits"),
        ]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"training": self.training, "total": self.total}


@dataclass(frozen=True)
class EstimateInputs:
    """What a backend's memory model is asked about, with what every backend counts alike worked out."""

    config: dict[str, Any]  # config.json
    dims: dict[str, Any]  # C, F, L, H, KVH, D, V, tied (training.memory's ``_dims``)
    tensors: list[Tensor]  # the stored layout, in file order
    keys: list[str]  # block-relative LoRA targets
    n_blocks: int  # blocks adapted
    rank: int
    params: int  # LoRA parameters (P)
    batch_size: int  # B
    seq_len: int  # T
    grad_checkpoint: bool | None
    grad_accumulation: int
    baseline: int
    device: str
    dtype: str | None
    activation_mb: str | None  # MLXTUNE_ACTIVATION_MB


def quant_params(config: dict, stem: str) -> tuple[int, int]:
    """(bits, group size) of the layer ``stem`` under config.json's quantization (per layer, else global)."""
    quant = config.get("quantization") or config.get("quantization_config") or {}
    params = quant.get(stem) if isinstance(quant.get(stem), dict) else quant
    return int(params.get("bits", 4)), int(params.get("group_size", 64))


def elements(t: Tensor, config: dict) -> int:
    """Weights a tensor stands for: a packed quantized (out, in * bits / 32) uint32 weight holds out x in."""
    if t.dtype == "U32" and t.name.endswith(".weight"):
        bits, _ = quant_params(config, t.name[: -len(".weight")])
        return math.prod(t.shape) * 32 // bits
    return math.prod(t.shape)


def quantized_stems(tensors: list[Tensor]) -> set[str]:
    """The layers stored quantized (packed uint32 weights with scales and biases)."""
    return {t.name[: -len(".weight")] for t in tensors if t.dtype == "U32" and t.name.endswith(".weight")}
