"""The numpy backend: the reference implementation, and the fallback without mlx.

Training, generation and fusing with numpy alone. The model itself (forward
and hand-written backward) is ``numpy_model.NumpyLlama``; this module adds the
optimizer, the trainer contract of ``backends/__init__.py``, sampling with a KV
cache, and loading adapters. It never imports mlx.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ...training import objectives
from ...errors import AdapterError, UsageError
from ...models.families.base import LLAMA_LINEAR_KEYS

if TYPE_CHECKING:
    from ...training.run_schema import RunConfig

# The activations a training step keeps for its backward pass may take this
# fraction of the model's weight memory (at least ACTIVATION_FLOOR bytes);
# beyond it, blocks are checkpointed (NumpyLlama.activation_plan), at about 1%
# of a step each. For SmolLM2-135M (538 MB of float32 weights) that is 430 MB:
# a batch of 4 x 300 tokens keeps 13 of its 30 blocks whole, 4 x 512 keeps 4,
# and the whole training process stays near 1.5 GB. MLXTUNE_ACTIVATION_MB
# overrides it (a number of megabytes, or "all" to keep every block whole).
ACTIVATION_FRACTION = 0.8
ACTIVATION_FLOOR = 256 * 2**20


def activation_budget(weight_bytes: int, env: str | None = None, grad_checkpoint: bool | None = None) -> int | None:
    """Bytes of activations a step may keep (None: no limit).

    ``grad_checkpoint`` True checkpoints every block (a budget of 0), False
    none; None follows MLXTUNE_ACTIVATION_MB, else the model size.
    """
    if grad_checkpoint is not None:
        return 0 if grad_checkpoint else None
    if env:
        if env.strip().lower() in ("all", "none", "unlimited"):
            return None
        try:
            return int(float(env) * 2**20)
        except ValueError:
            raise UsageError(f"MLXTUNE_ACTIVATION_MB must be a number of megabytes or 'all', not {env!r}") from None
    return max(ACTIVATION_FLOOR, int(ACTIVATION_FRACTION * weight_bytes))

LINEAR_KEYS = LLAMA_LINEAR_KEYS  # the numpy model's llama-layout block (numpy_model.LINEAR_KEYS)


def resolve_keys(targets: list[str] | None, linear_keys=LINEAR_KEYS) -> list[str]:
    """Block-relative keys for user targets (``training.targets.resolve``), over the numpy model's fixed block
    (``linear_keys``: the model's, ``NumpyLlama.linear_keys``; a fused family's differ)."""
    from ...training.targets import resolve

    return resolve(targets, list(linear_keys))


class AdamW:
    """mlx.optimizers.AdamW with bias correction, written out: the same update, step for step."""

    def __init__(self, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}
        self.step = 0

    def update(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        """Update ``params`` in place."""
        b1, b2 = self.betas
        self.step += 1
        for k, g in grads.items():
            p = params[k]
            m = self.m.get(k, np.zeros_like(p))
            v = self.v.get(k, np.zeros_like(p))
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * np.square(g)
            self.m[k], self.v[k] = m, v
            p *= 1 - lr * self.weight_decay
            c1 = lr / (1 - b1**self.step)
            c2 = 1 / np.sqrt(1 - b2**self.step)
            p -= (c1 * m / (np.sqrt(v) * c2 + self.eps)).astype(p.dtype)

    def state(self) -> dict[str, np.ndarray]:
        out = {f"{k}.m": v for k, v in self.m.items()}
        out.update({f"{k}.v": v for k, v in self.v.items()})
        out["step"] = np.array(self.step, dtype=np.int64)
        return out

    def load_state(self, state: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> None:
        """The inverse of ``state()``, checked against the parameters it is for."""
        from .. import check_optimizer_state

        self.step = check_optimizer_state(params, state)
        self.m = {k: np.array(state[f"{k}.m"], dtype=params[k].dtype) for k in params}
        self.v = {k: np.array(state[f"{k}.v"], dtype=params[k].dtype) for k in params}


def clip_by_global_norm(grads: dict[str, np.ndarray], max_norm: float) -> dict[str, np.ndarray]:
    norm = np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
    factor = min(max_norm / (norm + 1e-6), 1.0)
    return {k: g * np.asarray(factor, dtype=g.dtype) for k, g in grads.items()}


def packing(batch) -> dict:
    """A batch's ``positions`` and ``segments`` as the model's keyword arguments: None, None for a batch without them (unpacked, or any object with inputs, targets and mask)."""
    return {"positions": getattr(batch, "positions", None), "segments": getattr(batch, "segments", None)}


class NumpyTrainer:
    """LoRA training with the numpy reference model."""

    backend = "numpy"

    def __init__(self, model_dir: Path, cfg):
        if cfg.dora:
            raise UsageError("--dora is available with the mlx backend only")
        if cfg.dtype not in (None, "float32"):
            raise UsageError("the numpy backend computes in float32 (or float64 in tests); drop --dtype")
        from ... import runtime
        from .model import load_model

        self.model, self.config = load_model(model_dir)
        # After loading, not before: with glibc's own thresholds the file's tensors, freed as they are stacked, go
        # back to the kernel; with the step's (blocks up to 32 MB kept in the heap) they left holes that kept the
        # process 0.6 GB (Qwen3-0.6B) above its weights for good, and made the loading phase the run's peak.
        runtime.tune_allocator()
        weight_bytes = sum(w.nbytes for w in self.model.weights.values())
        self.model.activation_budget = activation_budget(weight_bytes, os.environ.get("MLXTUNE_ACTIVATION_MB"), cfg.grad_checkpoint)
        n_blocks = self.model.config.num_hidden_layers
        self.num_layers = n_blocks if cfg.layers < 0 or cfg.layers > n_blocks else cfg.layers
        self.keys = resolve_keys(cfg.target_modules, self.model.linear_keys)
        self.seed = cfg.seed
        self.objective = objectives.get(cfg.objective)
        self.model.add_lora(self.num_layers, self.keys, cfg.rank, cfg.scale, np.random.default_rng(cfg.seed), dropout=cfg.dropout)
        self.n_trainable = sum(v.size for v in self.model.lora_params().values())
        self.optimizer = AdamW(cfg.weight_decay)
        self.grad_clip = cfg.grad_clip
        self.description = f"CPU, float32, numpy {np.__version__}"
        self._peak = lambda: runtime.peak_memory_bytes("cpu")

    def step(self, batch, lr: float) -> tuple[float, int]:
        """One optimizer step on a batch, or on a list of micro-batches whose gradients accumulate."""
        parts = list(batch) if isinstance(batch, (list, tuple)) else [batch]
        if len(parts) == 1:
            loss, n, grads = self.model.loss_and_grads(parts[0].inputs, parts[0].targets, *self.objective.arrays(parts[0]), rng=self._step_rng(), objective=self.objective,
                                                       **packing(parts[0]))
            self._update(grads, lr)
            return float(loss), int(n)
        sums, loss_sum, n = self.gradients(parts)
        self.apply(sums, n, lr)
        return loss_sum / max(n, 1.0), int(n)

    def gradients(self, parts: list, rank: int = 0) -> tuple[dict[str, np.ndarray], float, float]:
        """Token-weighted sums over micro-batches: (sum of n_i * grad_i, sum of n_i * loss_i, sum of n_i).

        Sums, not means, so that they add up across micro-batches and across
        the processes of a distributed run; ``apply`` divides by the total.
        Dropout draws from a generator seeded by (seed, step, rank): a resumed
        run draws the same masks as an uninterrupted one.
        """
        rng = self._step_rng(rank)
        sums = {k: np.zeros_like(v) for k, v in self.model.lora_params().items()}
        loss_sum, total = 0.0, 0.0
        for b in parts:
            loss, n, g = self.model.loss_and_grads(b.inputs, b.targets, *self.objective.arrays(b), rng=rng, objective=self.objective, **packing(b))
            for k, v in g.items():
                sums[k] += v * np.asarray(n, dtype=v.dtype)
            loss_sum += float(loss) * float(n)
            total += float(n)
        return sums, loss_sum, total

    def apply(self, sums: dict[str, np.ndarray], n: float, lr: float) -> None:
        """The optimizer step for gradient sums over ``n`` trained tokens."""
        self._update({k: v / np.asarray(max(n, 1.0), dtype=v.dtype) for k, v in sums.items()}, lr)

    def _update(self, grads: dict[str, np.ndarray], lr: float) -> None:
        if self.grad_clip is not None:
            grads = clip_by_global_norm(grads, self.grad_clip)
        self.optimizer.update(self.model.lora_params(), grads, lr)

    def _step_rng(self, rank: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.optimizer.step + 1, rank])

    def evaluate(self, batch) -> tuple[float, int]:
        loss, n = self.model.loss(batch.inputs, batch.targets, *self.objective.arrays(batch), objective=self.objective, **packing(batch))
        return float(loss) * float(n), int(n)

    def token_log_probs(self, batch) -> np.ndarray:
        """(B, T) log p of each target the objective scores (0 elsewhere), under the adapters as they are."""
        scored = self.objective.scored(*self.objective.arrays(batch))
        return self.model.token_log_probs(batch.inputs, batch.targets, scored, **packing(batch)).dense(np.shape(scored))

    def adapter_weights(self) -> dict[str, np.ndarray]:
        return {k: v.astype(np.float32) for k, v in self.model.external_lora_params().items()}

    def set_adapter_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.model.set_external_lora_params({k: np.asarray(v, dtype=self.model.dtype) for k, v in weights.items()})

    def optimizer_state(self) -> dict[str, np.ndarray]:
        return self.optimizer.state()

    def load_state(self, weights: dict[str, np.ndarray], optimizer_state: dict[str, np.ndarray]) -> None:
        """Continue from a checkpoint: its adapter weights and optimizer moments and step."""
        self.set_adapter_weights(weights)
        self.optimizer.load_state(optimizer_state, self.model.lora_params())

    def peak_memory(self) -> int:
        return self._peak()


# ---------------------------------------------------------------- inference


def load_adapters(model, adapter_dir: Path) -> RunConfig:
    """Add the LoRA layers an adapter directory describes and load its weights."""
    from ...formats import safetensors as npio
    from ...formats.adapters import ADAPTER_WEIGHTS
    from ...training.run_schema import RunConfig

    config = RunConfig.from_file(adapter_dir)
    if config.dora:
        raise UsageError(f"{adapter_dir} holds a DoRA adapter, which the numpy backend does not implement; use --backend mlx")
    lp = config.lora_parameters
    keys = lp.keys or list(model.linear_keys)
    model.add_lora(int(config.num_layers), keys, int(lp.rank), float(lp.scale), np.random.default_rng(0))
    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not path.exists():
        raise AdapterError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}: the run may not have saved yet")
    weights, _ = npio.read_safetensors(path)
    try:
        model.set_external_lora_params({k: v.astype(model.dtype) for k, v in weights.items()})
    except AdapterError as e:
        raise AdapterError(f"adapter {path} does not fit this model ({e}): was it trained on a different base model?") from None
    return config


def sample(logits: np.ndarray, temp: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy at temp 0; otherwise temperature with optional nucleus (top-p) filtering."""
    if temp == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temp
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < top_p  # the smallest prefix reaching top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0)
        p /= p.sum()
    return int(rng.choice(len(p), p=p))


def generate_tokens(model, prompt: list[int], max_tokens: int, eos_ids: set[int], temp: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> Iterator[int]:
    """Token ids after ``prompt``, one at a time, with a KV cache; stops after an end token."""
    rng = np.random.default_rng(seed)
    cache = model.new_cache()
    logits = model.forward(np.array([prompt], dtype=np.int32), cache, last_only=True)[0, -1]
    for _ in range(max_tokens):
        token = sample(logits, temp, top_p, rng)
        yield token
        if token in eos_ids:
            return
        logits = model.forward(np.array([[token]], dtype=np.int32), cache)[0, -1]
