"""The numpy reference model: a llama-family transformer with LoRA, forward and backward by hand.

Two jobs. It is mlxtune's CPU training path (and the backend where mlx cannot
be installed), and it is the oracle the mlx path is tested against (logits,
loss, every LoRA gradient; see ``tests/test_parity.py``), as llm.c's reference
checks its fast kernels. So it is written to be read: one function per block, a
shape comment on each tensor line, each op a forward/backward pair in
``ops``. Semantics are mlx-lm's ``models/llama.py`` (mistral is the same
model there), ``models/qwen2.py``, ``models/qwen3.py`` (per-head q/k norms
before rope), ``models/smollm3.py`` (layers without rope) and
``models/gemma3_text.py`` (embeddings scaled by sqrt(C), norms of 1 + w
around each half, GeGLU, sliding-window layers: ``block.py``) and
``models/phi3.py`` (q | k | v and gate | up as one layer each, rope on part
of each head, LongRoPE's factors chosen by the sequence's length as
transformers chooses them: ``_rope``):

    x = embed(tokens)
    for each block:  x = x + o(attn(rope(qn(q(n1(x)))), rope(kn(k(n1(x)))), v(n1(x))))
                     x = x + down(silu(gate(n2(x))) * up(n2(x)))
    logits = norm(x) @ head.T            (head = embed_tokens.weight when tied)

This module holds the model as a whole (loading, the embedding, the loss head,
the KV cache, which blocks keep what); one block's forward and backward is
``block.py``.

with RMSNorm, rotary embeddings as ``mlx_lm.models.rope_utils.initialize_rope``,
causal grouped-query attention scaled by head_dim**-0.5, and LoRA updates
``y += scale * (dropout(x) A) B`` on the chosen projections.

Only LoRA parameters train. The backward pass therefore never forms a weight
gradient of a frozen layer, only activation gradients through it, and stops at
the first block that carries an adapter: nothing before it needs a gradient.

Memory, for a batch of N = B * T rows (SmolLM2-135M: C 576, F 1536):

* the output head is applied only to the positions that have a training
  target, a few rows at a time, with its backward right behind its forward,
  so (N, V) logits never exist (at V = 49152 they would be 0.2 GB per 1000 rows);
* a block keeps for its backward only what matmuls produced (x, x2, q, k, v,
  gate, up: 9C floats a row) and recomputes the cheap rest there: norm
  outputs, the attention probabilities (from q, k and a log-sum-exp, a chunk
  of query positions at a time), the attention output, the SwiGLU product;
* past ``activation_budget``, blocks are checkpointed: they keep only their
  two residual inputs (2C a row) and recompute q, k, v, gate and up.

How config.json is read (per family) and which tensors the model has is
``mlxtune.models.layout``; checking and stacking the weights, ``weights.py``;
placing LoRA and its arrays, ``lora.py``.

This module imports numpy (and mlxtune's error types, config reading and objectives) only; never mlx.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from ...errors import ModelFormatError
from ...models import families
from ...models.families.base import LLAMA_LINEAR_KEYS
from ...models.layout import ModelConfig
from ...training.objectives import CROSS_ENTROPY, Objective, TokenLogProbs
from . import ops
from .activations import block_bytes, checkpointed_blocks
from .block import BlockMethods, Saved
from .lora import LoRAMethods
from .weights import QKV, block_groups, check_weights, stacked_weights

# The linear layers of a block that LoRA can target (block-relative names, as mlxtune.backends.mlx.lora): the llama layout's.
LINEAR_KEYS = LLAMA_LINEAR_KEYS
_QKV = QKV  # the layers of a block that read the attention's input, stacked into one matmul (numpy_weights)
# Logits computed at a time by the loss head: (rows, V) of this many bytes.
HEAD_CHUNK_BYTES = 32 * 2**20


KV_CACHE_START = 256  # positions a cache has room for before it first grows


class KVCache:
    """Keys and values (after RoPE) of every block for the positions seen so far.

    Each layer's keys and values live in a buffer with room to grow (doubling
    when full), so a decoding step writes its one new position instead of
    copying the whole cache.
    """

    def __init__(self, num_layers: int):
        self.keys: list[np.ndarray | None] = [None] * num_layers  # each (B, KVH, capacity, D)
        self.values: list[np.ndarray | None] = [None] * num_layers  # each (B, KVH, capacity, D)
        self.offset = 0  # positions already cached

    def update(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append this step's k, v (B, KVH, T, D) to the layer's; return all (B, KVH, S, D) (views of the buffers)."""
        start, T = self.offset, k.shape[2]
        end = start + T
        buf_k, buf_v = self.keys[layer], self.values[layer]
        if buf_k is None or buf_k.shape[2] < end:
            capacity = max(end, KV_CACHE_START, 0 if buf_k is None else 2 * buf_k.shape[2])
            new_k = np.empty(k.shape[:2] + (capacity, k.shape[3]), dtype=k.dtype)
            new_v = np.empty(new_k.shape, dtype=v.dtype)
            if buf_k is not None:
                new_k[:, :, :start], new_v[:, :, :start] = buf_k[:, :, :start], buf_v[:, :, :start]
            buf_k, buf_v = self.keys[layer], self.values[layer] = new_k, new_v
        buf_k[:, :, start:end], buf_v[:, :, start:end] = k, v
        return buf_k[:, :, :end], buf_v[:, :, :end]


class NumpyLlama(LoRAMethods, BlockMethods):
    """A llama-layout model in numpy with LoRA adapters (``lora.py``), its blocks (``block.py``), a forward pass and a LoRA backward pass."""

    def __init__(self, config: ModelConfig, weights: dict[str, np.ndarray], dtype=np.float32, consume: bool = False):
        """``consume``: take the arrays out of ``weights`` as they are stored (the dict ends up empty), so
        that loading holds one copy of a tensor at a time rather than two copies of the model."""
        cfg = self.config = config
        self.dtype = np.dtype(dtype).type
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise ModelFormatError(f"num_attention_heads {cfg.num_attention_heads} is not a multiple of num_key_value_heads {cfg.num_key_value_heads}")
        expected = check_weights(cfg, weights)
        self.weights = stacked_weights(weights, list(expected), cfg.num_hidden_layers, self.dtype, consume, cfg.fused_projections)
        self.qkv_group, self.gate_up_group = block_groups(cfg.fused_projections)  # each one matmul (block.py)
        self.adapters: dict[str, ops.LoRA] = {}  # "model.layers.3.self_attn.q_proj" -> LoRA
        self.inv_freq, self.position_scale = cfg.rope_frequencies()  # (R/2,), float (LongRoPE: the short factors')
        self.local_inv_freq = cfg.rope_frequencies(local=True)[0] if cfg.local_rope_theta else None  # sliding-window layers' (D/2,)
        self.attn_scale = cfg.attention_scale()
        self.linear_keys = cfg.linear_keys()  # the block's linear layers (fused ones for a fused_projections family)
        self._norm_factors: dict[str, np.ndarray] = {}  # norm_offset + w of each norm (block._norm)
        # What the checkpoint's names had before these (a multimodal checkpoint's "language_model."): the names of
        # ``external_lora_params`` and ``fused_weights``, the files' names, as mlx-lm's model of the checkpoint has them.
        self.weight_prefix = ""
        # Bytes of activations a training step may keep for its backward pass
        # (see activation_plan); None keeps every block's.
        self.activation_budget: int | None = None
        self._scratch: dict[str, np.ndarray] = {}

    # --------------------------------------------------------------- forward

    def new_cache(self) -> KVCache:
        return KVCache(self.config.num_hidden_layers)

    def forward(self, inputs: np.ndarray, cache: KVCache | None = None, last_only: bool = False) -> np.ndarray:
        """Logits (B, T, V) for token ids (B, T); with a cache, positions continue from cache.offset.

        ``last_only``: only the last position's logits, (B, 1, V), which is
        all decoding needs (the head is the widest matmul of a prompt).
        """
        inputs = self._check_tokens(inputs)
        B, T = inputs.shape
        offset = 0 if cache is None else cache.offset
        rope = self._rope(offset, T)
        x = self._embed(inputs)  # (B, T, C)
        for i in range(self.config.num_hidden_layers):
            x, _ = self._block_forward(i, x, rope, kv=cache, offset=offset)
        if cache is not None:
            cache.offset += T
        if last_only:
            x, T = x[:, -1:], 1
        x2 = x.reshape(B * T, -1)  # (N, C)
        h = ops.rmsnorm_apply(x2, ops.rmsnorm_rstd(x2, self.config.rms_norm_eps), self._norm("model.norm.weight"))  # (N, C)
        return (h @ self._head_weight().T).reshape(B, T, -1)  # (B, T, V)

    def loss(self, inputs, targets, *arrays, objective: Objective = CROSS_ENTROPY, positions=None, segments=None) -> tuple[float, float]:
        """(loss, n) of ``objective`` over ``arrays`` (its ``arrays(batch)``; cross-entropy: the mask).

        ``positions``, ``segments`` (B, T): a packed batch's (``data.batching.Batch``), or None.
        """
        return objective.numpy_loss(self.token_log_probs(inputs, targets, objective.scored(*arrays), positions, segments), *arrays)

    def token_log_probs(self, inputs, targets, scored, positions=None, segments=None) -> TokenLogProbs:
        """log p(target) of the rows ``scored`` (B, T) marks, adapters as they are, no dropout: what objectives read."""
        inputs = self._check_tokens(inputs)
        rope, segments = self._packed_rope(inputs.shape, positions, segments)
        x = self._embed(inputs)  # (B, T, C)
        for i in range(self.config.num_hidden_layers):
            x, _ = self._block_forward(i, x, rope, segments=segments)
        return self._head(x, np.asarray(targets), scored, None)[0]

    def loss_and_grads(self, inputs, targets, *arrays, rng: np.random.Generator | None = None, objective: Objective = CROSS_ENTROPY,
                       positions=None, segments=None) -> tuple[float, float, dict[str, np.ndarray]]:
        """(loss, n, gradients of the loss w.r.t. every lora_params() tensor) of ``objective`` over ``arrays``.

        Dropout is applied to the LoRA inputs only when an adapter has
        dropout > 0 and ``rng`` is given. Which blocks keep what their
        backward needs and which are checkpointed (keep their inputs and
        recompute the rest there) is ``activation_plan``'s decision.
        ``positions``, ``segments`` (B, T): a packed batch's (``data.batching.Batch``:
        attention within each record, rope at each token's position in it), or None.
        """
        inputs = self._check_tokens(inputs)
        B, T = inputs.shape
        n_blocks = self.config.num_hidden_layers
        first = self._first_adapted()
        _, n_checkpointed = self.activation_plan(B, T)
        dropout = rng is not None and any(lora.dropout > 0 for lora in self.adapters.values())
        rope, segments = self._packed_rope(inputs.shape, positions, segments)
        x = self._embed(inputs)  # (B, T, C)
        saved: list[Saved] = []
        for i in range(n_blocks):
            if i < first:  # blocks before the first adapter need no backward pass
                x, _ = self._block_forward(i, x, rope, segments=segments)
                continue
            snapshot = copy.deepcopy(rng) if dropout else None  # replays this block's dropout masks in the backward
            drops = self._dropout_masks(i, B * T, rng) if dropout else {}
            x, s = self._block_forward(i, x, rope, drops=drops, save="inputs" if i - first < n_checkpointed else "all", segments=segments)
            s.rng = snapshot
            saved.append(s)
            del drops
        targets, scored = np.asarray(targets), objective.scored(*arrays)
        dlogp = objective.token_grad(self.dtype, *arrays)
        if dlogp is None:  # the gradient depends on the log-probabilities: a first pass computes them
            dlogp = objective.numpy_grad(self._head(x, targets, scored, None)[0], *arrays)
        logp, dx = self._head(x, targets, scored, dlogp)
        loss, n = objective.numpy_loss(logp, *arrays)
        del x
        grads: dict[str, np.ndarray] = {}
        for i in reversed(range(first, n_blocks)):
            s = saved.pop()
            drops = self._dropout_masks(i, B * T, s.rng) if s.rng is not None else {}
            if s.gu is None:  # checkpointed
                self._recompute(i, s, rope, drops)
            dx = self._block_backward(i, dx, s, rope, drops, grads, segments)
            del s, drops
        return loss, n, {k: grads[k] for k in self.lora_params()}

    # ------------------------------------------------------- activation memory

    def saved_bytes_per_block(self, rows: int) -> tuple[int, int]:
        """(bytes a block keeps for its backward, bytes a checkpointed block keeps) for ``rows`` = B * T.

        Kept: the block input x and the residual after attention x2 (C
        each), two norm scales, the attention's log-sum-exp per head (H),
        and, unless checkpointed, rotated q, k and v (H*D + 2*KVH*D) and the
        gate and up projections (2F). Everything else (norm outputs, attention
        probabilities and output, the SwiGLU product) is recomputed in the
        backward from these; a checkpointed block recomputes q, k, v, gate
        and up too (two of its four matmuls).
        """
        cfg = self.config
        return block_bytes(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size, rows,
                           np.dtype(self.dtype).itemsize, cfg.sandwich_norms)

    def activation_plan(self, B: int, T: int) -> tuple[int, int]:
        """(blocks that keep their activations, blocks checkpointed) for a (B, T) batch.

        With ``activation_budget`` (bytes) set, the fewest blocks are
        checkpointed that bring the activations kept across the step within
        it; each checkpointed block keeps about a fifth of the bytes and costs
        one more pass through its q, k, v, gate and up projections (about 1%
        of a step for SmolLM2-135M). None: keep all.
        """
        n = self.config.num_hidden_layers - self._first_adapted()
        k = checkpointed_blocks(n, *self.saved_bytes_per_block(B * T), self.activation_budget)
        return n - k, k

    # ------------------------------------------------------------- internals

    def _first_adapted(self) -> int:
        """The first block with an adapter (the number of blocks if none)."""
        return min((int(name.split(".")[2]) for name in self.adapters), default=self.config.num_hidden_layers)

    def _check_tokens(self, inputs) -> np.ndarray:
        inputs = np.asarray(inputs)
        if inputs.ndim != 2 or not np.issubdtype(inputs.dtype, np.integer):
            raise ValueError(f"inputs must be (B, T) integer token ids, not {inputs.dtype} {inputs.shape}")
        if inputs.size and (inputs.min() < 0 or inputs.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), found {inputs.min()}..{inputs.max()}")
        return inputs

    def _embed(self, inputs) -> np.ndarray:
        """The embeddings of token ids (B, T) -> (B, T, C), scaled by ``embed_scale`` (Gemma: sqrt(C), as transformers and llama.cpp)."""
        x = self.weights["model.embed_tokens.weight"][inputs]  # (B, T, C)
        if self.config.embed_scale != 1.0:
            x *= self.dtype(self.config.embed_scale)
        return x

    def _packed_rope(self, shape: tuple[int, int], positions, segments):
        """(rope tables, segments) for a batch of ``shape`` (B, T): ``_rope``'s (T, ...) tables for an unpacked
        batch (``positions`` None), a packed one's gathered per token, (B, T, ...) each."""
        if positions is None:
            return self._rope(0, shape[1]), None
        positions, segments = np.asarray(positions), np.asarray(segments)
        if positions.shape != tuple(shape) or segments.shape != tuple(shape):
            raise ValueError(f"positions {positions.shape} and segments {segments.shape} must have the inputs' shape {tuple(shape)}")
        if self.config.longrope is None:
            return self._rope(0, int(positions.max()) + 1, positions), segments
        # LongRoPE chooses its factors by length: a row's by its longest record (its largest position + 1)
        rows = [self._rope(0, int(p.max()) + 1, p[None]) for p in positions]  # each (1, T, ...)
        glob = tuple(np.concatenate(t) for t in zip(*(r[0] for r in rows)))  # (B, T, ...) each
        local = None if rows[0][1] is None else tuple(np.concatenate(t) for t in zip(*(r[1] for r in rows)))
        return (glob, local), segments

    def _rope(self, offset: int, T: int, positions=None) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...] | None]:
        """RoPE tables for positions offset .. offset+T-1: (COS, SIN) of q, scaled by the attention scale, then of k;
        the model's, and the sliding-window layers' own (their base, ``local_rope_theta``) or None.

        ``positions`` (B, T) of a packed batch (each below ``T``): the tables'
        rows gathered for them, (B, T, H*D) and (B, T, KVH*D) instead of (T, ...).
        Folding the attention scale into q's rotation costs nothing and
        leaves the scores as they are (the scale is a power of two for the
        usual even exponents of the head size, so even rounding is unchanged).
        """
        cfg = self.config
        D, R, m = cfg.head_dim, cfg.rope_dims(), cfg.rope_attention_factor()

        def tables(inv_freq, position_scale):
            if positions is not None:
                return tuple(t[positions] for t in unpacked(inv_freq, position_scale))  # (B, T, H*D) x2, (B, T, KVH*D) x2
            return unpacked(inv_freq, position_scale)

        def unpacked(inv_freq, position_scale):
            cos, sin = ops.rope_tables((offset + np.arange(T)) * position_scale, inv_freq, self.dtype)  # (T, R/2)
            if m != 1.0:  # LongRoPE scales cos and sin (transformers' attention factor)
                cos, sin = cos * self.dtype(m), sin * self.dtype(m)
            q_rot = ops.rope_rows(cos, sin, cfg.rope_traditional, cfg.num_attention_heads, self.attn_scale, D)  # (T, H*D) x2
            k_rot = ops.rope_rows(cos, sin, cfg.rope_traditional, cfg.num_key_value_heads, 1.0, D)  # (T, KVH*D) x2
            return (*q_rot, *k_rot)

        # LongRoPE chooses its factors by the sequence's length so far, as transformers does
        inv_freq = self.inv_freq if cfg.longrope is None else cfg.rope_frequencies(length=offset + T)[0]
        return tables(inv_freq, self.position_scale), None if self.local_inv_freq is None else tables(self.local_inv_freq, 1.0)

    def _head_weight(self) -> np.ndarray:
        return self.weights["model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"]  # (V, C)

    def _head_rows(self) -> int:
        """Rows of logits computed at a time: HEAD_CHUNK_BYTES of (rows, V) logits."""
        return max(8, HEAD_CHUNK_BYTES // (self.config.vocab_size * np.dtype(self.dtype).itemsize) // 8 * 8)

    def _head(self, x, targets, scored, dlogp):
        """Final norm, head and target log-probabilities, a chunk of rows at a time; with ``dlogp``, d loss / d x too.

        Only the rows ``scored`` (B, T) marks are computed: the others
        contribute nothing to the loss or its gradient. ``dlogp`` (n,) is
        d loss / d log p(target) of those rows (the objective's); the head is
        the last op, so the gradient of each chunk is computed as soon as its
        logits are and only d x (B, T, C) is kept: the (rows, V) logits never
        exist for the whole batch. Returns (TokenLogProbs, d x or None).
        """
        B, T, C = x.shape
        x2 = x.reshape(B * T, C)  # (N, C)
        targets = targets.reshape(-1)
        rows = np.flatnonzero(np.asarray(scored).reshape(-1))  # (n,)
        logp = TokenLogProbs(rows, self.dtype)
        head, norm, eps = self._head_weight(), self._norm("model.norm.weight"), self.config.rms_norm_eps
        dx = np.zeros_like(x2) if dlogp is not None else None  # (N, C)
        step = self._head_rows()
        buffer = self._logits_buffer(min(step, len(rows)))
        for start in range(0, len(rows), step):
            idx = rows[start : start + step]  # (r,)
            xs = x2[idx]  # (r, C)
            rstd = ops.rmsnorm_rstd(xs, eps)  # (r, 1)
            logits = np.matmul(ops.rmsnorm_apply(xs, rstd, norm), head.T, out=buffer[: len(idx)])  # (r, V)
            lp, dlogits = ops.log_probs_fused(logits, targets[idx], None if dlogp is None else dlogp[start : start + step])
            logp.chunks.append(lp)
            if dx is not None:
                dx[idx] = ops.rmsnorm_grad(dlogits @ head, xs, rstd, norm)  # (r, C)
        return logp, None if dx is None else dx.reshape(B, T, C)

    def _logits_buffer(self, rows: int) -> np.ndarray:
        """A (rows, V) scratch array kept across steps (a fresh one of this size costs page faults every step)."""
        buf = self._scratch.get("logits")
        if buf is None or buf.shape[0] < rows:
            buf = self._scratch["logits"] = np.empty((rows, self.config.vocab_size), dtype=self.dtype)
        return buf


def load_model(model_dir: str | Path, dtype=np.float32) -> tuple[NumpyLlama, dict]:
    """(the NumpyLlama, its config) of an MLX- or HF-layout directory, quantized weights expanded exactly: as mlx's ``load_model``."""
    from ...formats.safetensors import load_weights  # numpy only

    config, weights = load_weights(model_dir)
    family = families.get(config.get("model_type"))
    weights, prefix = family.text_weights(config, weights) if family else (weights, "")  # a multimodal checkpoint's text model
    model = NumpyLlama(ModelConfig.from_dict(config), weights, dtype=dtype, consume=True)
    model.weight_prefix = prefix
    return model, config
