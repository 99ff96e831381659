"""The mlx backend: load a model, compute the loss, take optimizer steps.

Models are mlx-lm's (one class per Hugging Face ``model_type``, parameter names
equal to the checkpoint's), so every architecture mlx-lm supports can be
fine-tuned. What this module adds is the compute policy of ``runtime``: on a
CPU, weights are expanded to float32, because mlx's CPU kernels for half
precision and quantized matmul are an order of magnitude slower than sgemm.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from ...training import objectives
from ...errors import ModelFormatError, UnsupportedModelError
from ...models.config import implied_fields
from ...training.objectives import CROSS_ENTROPY, Objective
from ...runtime import ComputeChoice
from .longrope import use_transformers_longrope
from .packing import packed_logits, use_packed_rope
from .weights import DTYPES, cast, dequantize_model


def load_model(path: Path, compute: ComputeChoice | None = None) -> tuple[nn.Module, dict]:
    """Load an MLX- or Hugging Face-layout model directory with mlx-lm's classes.

    With ``compute.expand_quantized`` quantized layers become float32 ones;
    with ``compute.dtype`` every floating-point parameter is cast to it.
    A model with LongRoPE computes it as transformers does (``longrope.py``).
    """
    from mlx_lm.utils import load_model as mlx_lm_load_model

    path = Path(path)
    implied = implied_fields(path)  # mlx-lm's llama, qwen2, gemma3 ... read no rope_parameters: give them rope_theta / rope_scaling
    try:
        model, config = mlx_lm_load_model(path, model_config=implied)
    except FileNotFoundError as e:
        raise ModelFormatError(f"{path}: {e}; the model directory is incomplete") from None
    except ValueError as e:
        if "not supported" in str(e):
            raise UnsupportedModelError(f"{path}: model type '{_model_type(path)}' is not supported by mlx-lm {_mlx_lm_version()}") from None
        raise ModelFormatError(f"{path}: cannot load the model ({e})") from None
    use_transformers_longrope(model, config)  # LongRoPE's factors chosen by the sequence's length, as transformers does
    if compute is not None:
        if compute.expand_quantized:
            model = dequantize_model(model, mx.float32)
        if compute.dtype is not None:
            cast(model, DTYPES[compute.dtype])
    mx.eval(model.parameters())
    return model, config


def load_tokenizer(path: Path, config: dict | None = None):
    """mlx-lm's tokenizer wrapper (streaming detokenizer, chat template, eos ids)."""
    from mlx_lm.utils import load_tokenizer as mlx_lm_load_tokenizer

    eos = (config or {}).get("eos_token_id")
    return mlx_lm_load_tokenizer(Path(path), eos_token_ids=eos)


def _model_type(path: Path) -> str:
    import json

    try:
        return json.loads((path / "config.json").read_text()).get("model_type", "?")
    except (OSError, ValueError):
        return "?"


def _mlx_lm_version() -> str:
    import mlx_lm

    return getattr(mlx_lm, "__version__", "")


def token_log_probs(model: nn.Module, inputs: mx.array, targets: mx.array, positions: mx.array | None = None, segments: mx.array | None = None) -> mx.array:
    """(B, T) float32 log-probability of each target token: what an objective reads.

    With ``positions`` and ``segments`` (a packed batch) each record of a row attends only to itself, its rope
    at its own positions (``packing.py``).
    """
    logits = model(inputs) if positions is None else packed_logits(model, inputs, positions, segments)  # (B, T, V)
    return -nn.losses.cross_entropy(logits.astype(mx.float32), targets)


def loss_fn(model: nn.Module, inputs: mx.array, targets: mx.array, *arrays: mx.array, objective: Objective = CROSS_ENTROPY) -> tuple[mx.array, mx.array]:
    """``objective``'s (loss, n) over ``arrays`` (its ``arrays(batch)``); by default mean cross-entropy over the mask's tokens."""
    return objective.mlx_loss(token_log_probs(model, inputs, targets), *arrays)


def packed_loss_fn(model: nn.Module, inputs: mx.array, targets: mx.array, positions: mx.array, segments: mx.array, *arrays: mx.array, objective: Objective = CROSS_ENTROPY) -> tuple[mx.array, mx.array]:
    """``loss_fn`` of a packed batch: its (B, T) ``positions`` and ``segments`` come after the targets."""
    return objective.mlx_loss(token_log_probs(model, inputs, targets, positions, segments), *arrays)


def is_packed(batch) -> bool:
    """Whether ``batch`` holds several records per row (``data.batching.Batch.positions`` and ``segments``)."""
    return getattr(batch, "positions", None) is not None


def clip_by_global_norm(grads, max_norm: float):
    norm = mx.sqrt(sum((g.astype(mx.float32) ** 2).sum() for _, g in tree_flatten(grads)))
    factor = mx.minimum(max_norm / (norm + 1e-6), 1.0)
    return tree_map(lambda g: g * factor.astype(g.dtype), grads), norm


def make_train_step(model: nn.Module, optimizer, grad_clip: float | None, objective: Objective = CROSS_ENTROPY, packed: bool = False):
    """A compiled function (inputs, targets, *objective arrays) -> (loss, n_tokens) that updates the model.

    ``packed``: (inputs, targets, positions, segments, *objective arrays), for packed batches.
    """
    loss_and_grad = nn.value_and_grad(model, partial(packed_loss_fn if packed else loss_fn, objective=objective))
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(inputs, targets, *arrays):
        (loss, n), grads = loss_and_grad(model, inputs, targets, *arrays)
        if grad_clip is not None:
            grads, _ = clip_by_global_norm(grads, grad_clip)
        optimizer.update(model, grads)
        return loss, n

    return step


def make_grad_step(model: nn.Module, objective: Objective = CROSS_ENTROPY, packed: bool = False):
    """A compiled function (inputs, targets, *objective arrays) -> (loss, n_tokens, grads), for accumulation.

    ``packed``: (inputs, targets, positions, segments, *objective arrays), for packed batches.
    """
    loss_and_grad = nn.value_and_grad(model, partial(packed_loss_fn if packed else loss_fn, objective=objective))
    state = [model.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(inputs, targets, *arrays):
        (loss, n), grads = loss_and_grad(model, inputs, targets, *arrays)
        return loss, n, grads

    return step


def checkpoint_blocks(model: nn.Module) -> None:
    """Recompute each transformer block's activations in the backward pass (mx.checkpoint).

    Each block gets a subclass of its own class whose ``__call__`` is
    checkpointed, so parameter names stay those of the model and no other
    instance of the class is touched.
    """
    for block in model.layers:
        cls = type(block)
        if getattr(cls, "_mlxtune_checkpointed", False):
            continue
        call = cls.__call__

        def checkpointed(self, *args, _call=call, **kwargs):
            def inner(params, *args, **kwargs):
                self.update(params)
                return _call(self, *args, **kwargs)

            return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

        block.__class__ = type(cls.__name__, (cls,), {"__call__": checkpointed, "_mlxtune_checkpointed": True})


def make_eval_step(model: nn.Module, objective: Objective = CROSS_ENTROPY, packed: bool = False):
    # The parameters are inputs of the compiled graph, not constants baked in
    # at trace time: evaluation runs between training steps that change them.
    fn = packed_loss_fn if packed else loss_fn

    @partial(mx.compile, inputs=[model.state])
    def step(inputs, targets, *arrays):
        loss, n = fn(model, inputs, targets, *arrays, objective=objective)
        return loss * n, n

    return step


def to_device(batch, objective: Objective = CROSS_ENTROPY) -> tuple[mx.array, ...]:
    """(inputs, targets, *the objective's arrays) as mx arrays: the compiled steps' arguments.

    A packed batch's positions and segments come after the targets (``packed_loss_fn``'s order).
    """
    packed = (mx.array(batch.positions), mx.array(batch.segments)) if is_packed(batch) else ()
    return (mx.array(batch.inputs), mx.array(batch.targets), *packed, *(mx.array(a) for a in objective.arrays(batch)))


class MlxTrainer:
    """LoRA training on mlx: the model, its adapters, AdamW, compiled steps."""

    backend = "mlx"

    def __init__(self, model_dir: Path, cfg):
        import mlx.optimizers as optim
        import numpy as np

        from ... import runtime
        from .lora import adapter_weights, apply_adapters, resolve_target_modules, trainable_only

        self.device = runtime.current_device()
        self.compute = runtime.choose_compute(self.device, cfg.dtype)
        self.description = runtime.describe() if cfg.dtype is None else self.compute.reason
        self.model, self.config = load_model(model_dir, self.compute)
        mx.random.seed(cfg.seed)
        n_blocks = len(self.model.layers)
        self.num_layers = n_blocks if cfg.layers < 0 or cfg.layers > n_blocks else cfg.layers
        self.keys = resolve_target_modules(self.model, cfg.target_modules, self.num_layers)
        apply_adapters(self.model, self.num_layers, self.keys, cfg.rank, cfg.scale, cfg.dropout, cfg.dora)
        trainable_only(self.model)
        # Before any step is compiled (the compiled steps hold the model's state tree): a packed batch's rope at
        # per-token positions; with an integer offset, or none, each wrapped rope is the module itself.
        use_packed_rope(self.model)
        if cfg.grad_checkpoint:
            checkpoint_blocks(self.model)
        self.n_trainable = sum(v.size for v in adapter_weights(self.model).values())
        self.optimizer = optim.AdamW(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, bias_correction=True)
        self.grad_clip = cfg.grad_clip
        self.seed = cfg.seed
        self.steps_taken = 0
        self.objective = objectives.get(cfg.objective)
        self._compiled: dict[tuple[str, bool], Callable] = {}  # ("step" | "grads" | "eval", packed): see ``compiled``
        self._np = np

    def step(self, batch, lr: float) -> tuple[float, int]:
        """One optimizer step on a batch, or on a list of micro-batches whose gradients accumulate."""
        parts = list(batch) if isinstance(batch, (list, tuple)) else [batch]
        if len(parts) > 1:
            sums, loss_sum, n = self.gradients(parts)
            self.apply(sums, n, lr)
            return loss_sum / max(n, 1.0), int(n)
        self._seed_step()
        self.steps_taken += 1
        self.optimizer.learning_rate = mx.array(lr, dtype=mx.float32)
        loss, n = self.compiled("step", parts[0])(*to_device(parts[0], self.objective))
        mx.eval(loss, n, self.model.trainable_parameters(), self.optimizer.state)
        return loss.item(), int(n.item())

    def gradients(self, parts: list, rank: int = 0) -> tuple[dict, float, float]:
        """Token-weighted sums over micro-batches: (sum of n_i * grad_i, sum of n_i * loss_i, sum of n_i).

        Sums, not means, so that they add up across micro-batches and across
        the processes of a distributed run; ``apply`` divides by the total.
        The random state (dropout) is reseeded from (seed, step, rank) first,
        so a resumed run draws what an uninterrupted one would.
        """
        self._seed_step(rank)
        sums = {k: mx.zeros_like(v) for k, v in tree_flatten(self.model.trainable_parameters())}
        loss_sum, total = 0.0, 0.0
        for b in parts:
            loss, n, g = self.compiled("grads", b)(*to_device(b, self.objective))
            sums = {k: sums[k] + v * n.astype(v.dtype) for k, v in tree_flatten(g)}
            mx.eval(loss, n, sums)
            loss_sum += loss.item() * n.item()
            total += n.item()
        return sums, loss_sum, total

    def apply(self, sums: dict, n: float, lr: float) -> None:
        """The optimizer step for gradient sums over ``n`` trained tokens."""
        from mlx.utils import tree_unflatten

        self.steps_taken += 1
        self.optimizer.learning_rate = mx.array(lr, dtype=mx.float32)
        grads = tree_unflatten([(k, v / max(n, 1.0)) for k, v in sums.items()])
        if self.grad_clip is not None:
            grads, _ = clip_by_global_norm(grads, self.grad_clip)
        self.optimizer.update(self.model, grads)
        mx.eval(self.model.trainable_parameters(), self.optimizer.state)

    def compiled(self, kind: str, batch) -> Callable:
        """The compiled function of ``kind`` ("step", "grads" or "eval") for ``batch``'s layout (packed or not),
        made on first use: a run without packed batches never builds a packed graph."""
        key = (kind, is_packed(batch))
        if key not in self._compiled:
            if kind == "step":
                self._compiled[key] = make_train_step(self.model, self.optimizer, self.grad_clip, self.objective, key[1])
            elif kind == "grads":
                self._compiled[key] = make_grad_step(self.model, self.objective, key[1])
            else:
                self._compiled[key] = make_eval_step(self.model, self.objective, key[1])
        return self._compiled[key]

    def _seed_step(self, rank: int = 0) -> None:
        mx.random.seed((self.seed * 1_000_003 + self.steps_taken + 1) * 64 + rank)

    def evaluate(self, batch) -> tuple[float, int]:
        self.model.eval()  # no dropout: a validation loss must not depend on the random state
        try:
            s, n = self.compiled("eval", batch)(*to_device(batch, self.objective))
            mx.eval(s, n)
        finally:
            self.model.train()
        return s.item(), int(n.item())

    def token_log_probs(self, batch):
        """(B, T) log p of each target the objective scores (0 elsewhere), under the adapters as they are, no dropout."""
        scored = self.objective.scored(*self.objective.arrays(batch))
        self.model.eval()
        try:
            packed = (mx.array(batch.positions), mx.array(batch.segments)) if is_packed(batch) else ()
            logp = token_log_probs(self.model, mx.array(batch.inputs), mx.array(batch.targets), *packed)
            mx.eval(logp)
        finally:
            self.model.train()
        return self._np.where(scored != 0, self._np.array(logp), 0.0).astype(self._np.float32)

    def adapter_weights(self) -> dict:
        from .lora import adapter_weights

        return {k: self._np.array(v.astype(mx.float32)) for k, v in adapter_weights(self.model).items()}

    def set_adapter_weights(self, weights: dict) -> None:
        dtype = next(iter(dict(tree_flatten(self.model.trainable_parameters())).values())).dtype
        self.model.load_weights([(k, mx.array(v).astype(dtype)) for k, v in weights.items()], strict=False)

    def optimizer_state(self) -> dict:
        return {k: self._np.array(v.astype(mx.float32)) for k, v in tree_flatten(self.optimizer.state) if isinstance(v, mx.array) and k != "learning_rate"}

    def load_state(self, weights: dict, optimizer_state: dict) -> None:
        """Continue from a checkpoint: its adapter weights and optimizer moments and step.

        The optimizer's state dict is updated in place: the compiled step holds it.
        """
        from ...errors import AdapterError
        from .. import check_optimizer_state

        self.set_adapter_weights(weights)
        params = dict(tree_flatten(self.model.trainable_parameters()))
        step = check_optimizer_state(params, optimizer_state)
        self.optimizer.init(self.model.trainable_parameters())  # every moment's place exists now
        for key, value in optimizer_state.items():
            if key == "step":
                continue
            node = self.optimizer.state
            *parents, leaf = key.split(".")
            try:
                for part in parents:
                    node = node[int(part)] if isinstance(node, list) else node[part]
                node[leaf] = mx.array(value).astype(params[key.rsplit(".", 1)[0]].dtype)
            except (KeyError, IndexError, ValueError, TypeError):
                raise AdapterError(f"the optimizer state does not fit these adapters ({key} has no parameter)") from None
        self.steps_taken = step
        self.optimizer.state["step"] = mx.array(step, dtype=mx.uint64)
        mx.eval(self.optimizer.state)

    def peak_memory(self) -> int:
        from ... import runtime

        return runtime.peak_memory_bytes(self.device)
