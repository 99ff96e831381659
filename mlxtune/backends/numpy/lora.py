"""LoRA on the numpy model: where adapters go, their arrays, and merging them into the weights.

``NumpyLlama`` inherits these; they touch only its ``config``, ``weights``
(Hugging Face names, each block's q | k | v and gate | up stacked, or fused),
``dtype`` and ``adapters`` ("model.layers.3.self_attn.q_proj" -> ``ops.LoRA``).
Placement and initialisation are ``mlxtune.backends.mlx.lora``'s, so an adapter trained
on either backend loads on the other.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import AdapterError, ConfigError
from . import ops


class LoRAMethods:
    """The LoRA half of ``NumpyLlama``."""

    config: object  # models.layout.ModelConfig
    weights: dict[str, np.ndarray]
    dtype: type
    adapters: dict[str, ops.LoRA]
    linear_keys: tuple[str, ...]  # the block's linear layers (ModelConfig.linear_keys)

    def add_lora(self, num_layers: int, keys: list[str], rank: int, scale: float, rng: np.random.Generator, dropout: float = 0.0) -> int:
        """Put LoRA on ``keys`` of the last ``num_layers`` blocks (-1 or more than there are: all).

        Placement and initialisation as ``mlxtune.backends.mlx.lora.apply_adapters`` /
        ``LoRALinear``: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0, so the model is
        unchanged until B trains. Returns the number of adapted layers.
        """
        unknown = [k for k in keys if k not in self.linear_keys]
        if unknown:
            raise ConfigError(f"LoRA target '{unknown[0]}' is not a linear layer of a {self.config.model_type} block; choose from: {', '.join(self.linear_keys)}")
        n_blocks = self.config.num_hidden_layers
        if num_layers < 0 or num_layers > n_blocks:
            num_layers = n_blocks
        count = 0
        for i in range(n_blocks - num_layers, n_blocks):
            for key in dict.fromkeys(keys):
                name = f"model.layers.{i}.{key}"
                out_dim, in_dim = self.weights[name + ".weight"].shape
                bound = 1 / math.sqrt(in_dim)
                a = rng.uniform(-bound, bound, size=(in_dim, rank)).astype(self.dtype)  # (in, r)
                b = np.zeros((rank, out_dim), dtype=self.dtype)  # (r, out)
                self.adapters[name] = ops.LoRA(a, b, float(scale), float(dropout))
                count += 1
        return count

    def lora_params(self) -> dict[str, np.ndarray]:
        """The live adapter arrays: "<layer>.lora_a" (in, r) and "<layer>.lora_b" (r, out)."""
        params = {}
        for name, lora in self.adapters.items():
            params[name + ".lora_a"] = lora.a
            params[name + ".lora_b"] = lora.b
        return params

    def external_lora_params(self) -> dict[str, np.ndarray]:
        """``lora_params`` under the checkpoint's names (``weight_prefix``): as adapter files and mlx-lm name them."""
        return {self.weight_prefix + k: v for k, v in self.lora_params().items()}

    def set_external_lora_params(self, params: dict[str, np.ndarray]) -> None:
        """``set_lora_params`` from the checkpoint's names (an adapter file's)."""
        p = self.weight_prefix
        self.set_lora_params({k[len(p):] if p and k.startswith(p) else k: v for k, v in params.items()})

    def set_lora_params(self, params: dict[str, np.ndarray]) -> None:
        """Replace every adapter array (copied, cast to the model dtype); keys and shapes must match exactly."""
        expected = self.lora_params()
        missing = [k for k in expected if k not in params]
        extra = [k for k in params if k not in expected]
        if missing or extra:
            example = (missing or extra)[0]
            raise AdapterError(f"adapter weights do not fit this model: {len(missing)} missing and {len(extra)} unexpected tensor(s), e.g. {example}")
        for key, value in params.items():
            if tuple(np.shape(value)) != expected[key].shape:
                raise AdapterError(f"adapter tensor {key} has shape {tuple(np.shape(value))}, but this model needs {expected[key].shape}")
        for name, lora in self.adapters.items():
            lora.a = np.array(params[name + ".lora_a"], dtype=self.dtype)
            lora.b = np.array(params[name + ".lora_b"], dtype=self.dtype)

    def merge_adapters(self) -> None:
        """Add every adapter into its frozen weight, in place, and drop the adapters (for inference).

        The sum is the one the forward forms for a folded adapter
        (``ops.stacked_weight``: delta, then + W), so outputs are bit for bit
        what they were; the stacked weights stay stacked, and no step copies
        them again.
        """
        for name, lora in self.adapters.items():
            w = self.weights[name + ".weight"]  # (out, in), a view into its block's stack
            np.add(ops.lora_delta(lora), w, out=w)
        self.adapters = {}

    def fused_weights(self) -> dict[str, np.ndarray]:
        """The dense weights with every adapter merged in: W + scale * (A B)ᵀ, under the checkpoint's names."""
        fused = dict(self.weights)
        for name, lora in self.adapters.items():
            fused[name + ".weight"] = self.weights[name + ".weight"] + lora.scale * (lora.a @ lora.b).T  # (out, in)
        return {self.weight_prefix + k: v for k, v in fused.items()}
