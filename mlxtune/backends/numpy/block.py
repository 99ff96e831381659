"""One block of the numpy model, forward and backward: attention then MLP, each behind an RMSNorm and a residual.

``NumpyLlama`` (``model.py``) inherits these; they touch only its ``config``
(``models.layout.ModelConfig``), ``weights`` (Hugging Face names, each block's
q | k | v and gate | up stacked), ``adapters`` and ``attn_scale``. A block is

    x2  = x + o(attn(rope(qn(q(n1(x)))), rope(kn(k(n1(x)))), v(n1(x))))
    out = x2 + down(silu(gate(n2(x2))) * up(n2(x2)))

where qn, kn are the per-head RMSNorms of a ``qk_norm`` family (Qwen3; the
identity otherwise) and rope is the identity on the layers a family leaves
unrotated (SmolLM3's ``rope_layers``). q is scaled by head_dim**-0.5 (or
``ModelConfig.attention_scale``) together with its rotation (``model._rope``).

A ``sandwich_norms`` family (Gemma 3) also normalises each half's output
before its residual, its MLP's input with a norm of its own, and its MLP is
GeGLU (``ModelConfig.activation``); every norm multiplies by
``norm_offset`` + w; its sliding-window layers attend within
``ModelConfig.window`` and rotate with their own base:

    x2  = x + pn1(o(attn(...)))
    out = x2 + pn2(down(gelu(gate(n2(x2))) * up(n2(x2))))

q | k | v and gate | up are each one matmul (``weights.block_groups``): three
and two layers stacked, or a fused family's (Phi-3) one layer each, whose
single adapter sees the whole output; either way the forward splits the
output and the backward forms d(q | k | v) and d(gate | up) as one array. Rope
turns the first ``ModelConfig.rope_dims()`` dims of each head (partial rotary).

What a block keeps for its backward is ``Saved``: x, x2, two norm scales, the
attention's log-sum-exp and, unless checkpointed, what its matmuls produced.
For the llama layout that is rotated q, k, v and gate | up; a ``qk_norm``
family keeps the raw q | k | v projections instead, and its backward
normalises and rotates them again (element-wise work; the same bytes kept
as llama's).
"""

from __future__ import annotations

import numpy as np

from . import ops
from .geglu import ACTIVATIONS

# The layers of a block grouped by the input they read: each group is one stacked matmul (numpy_weights); q | k | v
# and gate | up are the model's ``qkv_group`` and ``gate_up_group`` (three and two layers, or one fused layer each).
O_PROJ, DOWN = ("self_attn.o_proj",), ("mlp.down_proj",)
# A sandwich_norms block's norms on the outputs of attention and the MLP, and on the MLP's input.
POST_ATTN, PRE_MLP, POST_MLP = "post_attention_layernorm.weight", "pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"


class Saved:
    """What one block keeps for its backward pass (only x, x2 and scales when checkpointed). Shapes as in ``_block_forward``."""

    __slots__ = ("x", "rstd1", "q", "k", "v", "qkv", "qk_rstd", "lse", "x2", "rstd2", "gu", "rng", "weights", "outs")

    def __init__(self, x, rstd1=None, q=None, k=None, v=None, lse=None, x2=None, rstd2=None, gu=None, qkv=None):
        self.x, self.rstd1, self.q, self.k, self.v = x, rstd1, q, k, v  # (B, T, C), (N, 1), (B, KVH, T*G, D), (B, KVH, T, D) x2
        self.qkv = qkv  # qk_norm: the raw q | k | v projections (N, (H + 2 KVH) D), instead of q, k, v
        self.qk_rstd = None  # qk_norm, in the backward: the norm scale of each q and k head (N, H + KVH, 1)
        self.lse, self.x2, self.rstd2, self.gu = lse, x2, rstd2, gu  # (B, KVH, T*G, 1), (N, C), (N, 1), (N, 2F)
        self.rng = None  # the generator state that replays this block's dropout masks
        self.weights: dict = {}  # stacked weights a recomputation formed, for the backward
        self.outs = None  # sandwich_norms: (o, its norm scale, down, its norm scale) (N, C), (N, 1) x2, kept even when checkpointed


class BlockMethods:
    """The block half of ``NumpyLlama``."""

    config: object  # models.layout.ModelConfig
    weights: dict[str, np.ndarray]
    adapters: dict[str, ops.LoRA]
    attn_scale: float
    dtype: type
    qkv_group: tuple[str, ...]  # weights.block_groups
    gate_up_group: tuple[str, ...]

    def _layers(self, i: int, group: tuple[str, ...], drops: dict) -> list[ops.Linear]:
        """The linear layers ``group`` of block i (which read the same input), with their adapters and masks."""
        p = f"model.layers.{i}."
        return [ops.Linear(self.weights[p + k + ".weight"], self.weights.get(p + k + ".bias"), self.adapters.get(p + k), drops.get(k)) for k in group]

    def _dropout_masks(self, i: int, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Block i's dropout masks for the LoRA inputs, drawn in a fixed order (so a saved rng replays them)."""
        drops = {}
        for key in self.qkv_group + O_PROJ + self.gate_up_group + DOWN:  # the order a block uses them in
            lora = self.adapters.get(f"model.layers.{i}.{key}")
            if lora is not None and lora.dropout > 0:
                in_dim = self.weights[f"model.layers.{i}.{key}.weight"].shape[1]
                drops[key] = ops.dropout_mask((rows, in_dim), lora.dropout, rng, self.dtype)  # (N, in)
        return drops

    def _block_forward(self, i: int, x, rope, kv=None, offset: int = 0, drops: dict | None = None, save: str | None = None, segments=None):
        """x + attention(norm(x)), then + mlp(norm(.)).  x: (B, T, C) -> (out (B, T, C), Saved or None).

        ``kv``: a ``model.KVCache``. ``save="all"`` also returns what
        ``_block_backward`` needs; ``save="inputs"`` (a checkpointed block)
        only the inputs of the two halves of the block, x and x2, and the
        attention's log-sum-exp, from which ``_recompute`` rebuilds the rest.
        ``segments`` (B, T): a packed batch's records (``data.batching.Batch``), each attending to itself only;
        ``rope``'s tables are then per token (``model._packed_rope``).
        """
        cfg, p = self.config, f"model.layers.{i}."
        B, T, C = x.shape
        eps, drops, rope = cfg.rms_norm_eps, drops or {}, self._layer_rope(i, rope)
        x2d = x.reshape(B * T, C)  # (N, C)
        rstd1 = ops.rmsnorm_rstd(x2d, eps)  # (N, 1)
        h = ops.rmsnorm_apply(x2d, rstd1, self._norm(p + "input_layernorm.weight"))  # (N, C)
        qkv = ops.linears_forward(h, self._layers(i, self.qkv_group, drops))  # (N, (H + 2 KVH) D): q | k | v
        del h
        q, k, v, qk_rstd = self._attention_inputs(i, qkv, B, T, rope)  # (B, KVH, T*G, D), (B, KVH, T, D) x2, (N, H + KVH, 1) or None
        if kv is not None:
            k, v = kv.update(i, k, v)  # (B, KVH, S, D)
        att, lse = ops.causal_attention(q, k, v, offset, window=cfg.window(i), segments=segments)  # (B, KVH, T*G, D), (B, KVH, T*G, 1)
        a = self._merge_heads(att, B, T)  # (N, H*D)
        del att
        o = ops.linears_forward(a, self._layers(i, O_PROJ, drops))  # (N, C): o
        del a
        outs = None
        if cfg.sandwich_norms:  # o normalised before the residual
            rstd_o = ops.rmsnorm_rstd(o, eps)  # (N, 1)
            outs, o = (o, rstd_o), ops.rmsnorm_apply(o, rstd_o, self._norm(p + POST_ATTN))  # (N, C)
        x2 = o
        x2 += x2d  # (N, C) the residual after attention, x + o
        rstd2 = ops.rmsnorm_rstd(x2, eps)  # (N, 1)
        h = ops.rmsnorm_apply(x2, rstd2, self._norm(p + self._mlp_norm()))  # (N, C)
        gu = ops.linears_forward(h, self._layers(i, self.gate_up_group, drops))  # (N, 2F): gate | up
        del h
        if save == "all" and qk_rstd is not None:  # raw projections: the backward normalises and rotates them again
            saved = Saved(x, rstd1, lse=lse, x2=x2, rstd2=rstd2, gu=gu, qkv=qkv)
        elif save == "all":
            saved = Saved(x, rstd1, q, k, v, lse, x2, rstd2, gu)
        elif save == "inputs":
            saved = Saved(x, rstd1, lse=lse, x2=x2, rstd2=rstd2)
        else:
            saved = None
        del q, k, v, lse, qkv
        m = ACTIVATIONS[cfg.activation][0](gu)  # (N, F) silu(gate) * up, or gelu(gate) * up
        del gu
        out = ops.linears_forward(m, self._layers(i, DOWN, drops))  # (N, C): down
        del m
        if cfg.sandwich_norms:  # down normalised before the residual
            rstd_d = ops.rmsnorm_rstd(out, eps)  # (N, 1)
            outs, out = (*outs, out, rstd_d), ops.rmsnorm_apply(out, rstd_d, self._norm(p + POST_MLP))  # (N, C)
            if saved is not None:
                saved.outs = outs
        out += x2  # (N, C) x2 + down
        return out.reshape(B, T, C), saved

    def _recompute(self, i: int, s: Saved, rope, drops: dict) -> None:
        """Fill in what a checkpointed block did not keep: q | k | v (as ``_block_forward`` keeps them) and gate | up, from x and x2.

        The attention itself is not recomputed here: its backward recomputes
        the probabilities from q, k and the kept log-sum-exp anyway.
        """
        p = f"model.layers.{i}."
        B, T, C = s.x.shape
        layers = self._layers(i, self.qkv_group, drops)
        s.weights["qkv"] = ops.stacked_weight(layers)  # kept for the backward, which needs it again
        h = ops.rmsnorm_apply(s.x.reshape(B * T, C), s.rstd1, self._norm(p + "input_layernorm.weight"))  # (N, C)
        qkv = ops.linears_forward(h, layers, s.weights["qkv"])  # (N, (H + 2 KVH) D)
        del h
        if self.config.qk_norm:
            s.qkv = qkv
        else:
            s.q, s.k, s.v, _ = self._attention_inputs(i, qkv, B, T, self._layer_rope(i, rope))
        del qkv
        layers = self._layers(i, self.gate_up_group, drops)
        s.weights["gate_up"] = ops.stacked_weight(layers)
        h = ops.rmsnorm_apply(s.x2, s.rstd2, self._norm(p + self._mlp_norm()))  # (N, C)
        s.gu = ops.linears_forward(h, layers, s.weights["gate_up"])  # (N, 2F)

    def _block_backward(self, i: int, dout, s: Saved, rope, drops: dict, grads: dict, segments=None) -> np.ndarray:
        """-> d block input (B, T, C); the block's LoRA gradients go into ``grads`` (``segments``: as ``_block_forward``'s)."""
        cfg, p = self.config, f"model.layers.{i}."
        B, T, C = dout.shape
        rope = self._layer_rope(i, rope)
        dout = dout.reshape(B * T, C)  # (N, C)
        # MLP branch: out = x2 + pn2(down(silu(g) * u)), (g | u) = gate_up(n2(x2)); pn2 the identity but for sandwich_norms
        dd = ops.rmsnorm_grad(dout, s.outs[2], s.outs[3], self._norm(p + POST_MLP)) if cfg.sandwich_norms else dout  # (N, C) d down
        down = self._layers(i, DOWN, drops)
        dm = ops.linears_backward_input(dd, down)  # (N, F)
        m, dgu = ACTIVATIONS[cfg.activation][1](dm, s.gu)  # (N, F) recomputed, (N, 2F) d gate | d up, over s.gu
        del dm
        s.gu = None
        self._collect(grads, p, DOWN, ops.linears_backward_params(dd, m, down))
        del m, dd
        gate_up = self._layers(i, self.gate_up_group, drops)
        dh = ops.linears_backward_input(dgu, gate_up, s.weights.pop("gate_up", None))  # (N, C)
        norm2 = self._norm(p + self._mlp_norm())
        self._collect(grads, p, self.gate_up_group, ops.linears_backward_params(dgu, ops.rmsnorm_apply(s.x2, s.rstd2, norm2), gate_up))
        del dgu
        dx2 = ops.rmsnorm_grad(dh, s.x2, s.rstd2, norm2)  # (N, C)
        dx2 += dout  # d x2: through the norm and the residual
        del dh
        # attention branch: x2 = x + pn1(o(attn(q, k, v))), (q | k | v) = rope(qk_norm(qkv(n1(x))))
        if s.qkv is not None:  # a qk_norm block kept its raw projections: normalise and rotate them again
            s.q, s.k, s.v, s.qk_rstd = self._attention_inputs(i, s.qkv, B, T, rope)
        do = ops.rmsnorm_grad(dx2, s.outs[0], s.outs[1], self._norm(p + POST_ATTN)) if cfg.sandwich_norms else dx2  # (N, C) d o
        s.outs = None
        o_proj = self._layers(i, O_PROJ, drops)
        da = ops.linears_backward_input(do, o_proj)  # (N, H*D)
        dq, dk, dv, att = ops.causal_attention_backward(self._split_rows(da, B, T), s.q, s.k, s.v, s.lse, window=cfg.window(i),
                                                             segments=segments)
        del da
        s.q = s.k = s.v = None
        self._collect(grads, p, O_PROJ, ops.linears_backward_params(do, self._merge_heads(att, B, T), o_proj))
        del att, do
        dqkv = self._merge_qkv_grads(dq, dk, dv, B, T, rope)  # (N, (H + 2 KVH) D)
        del dq, dk, dv
        if s.qkv is not None:
            self._qk_norm_backward(i, dqkv, s.qkv, s.qk_rstd)
            s.qkv = None
        qkv = self._layers(i, self.qkv_group, drops)
        dh = ops.linears_backward_input(dqkv, qkv, s.weights.pop("qkv", None))  # (N, C)
        norm1 = self._norm(p + "input_layernorm.weight")
        x = s.x.reshape(B * T, C)
        self._collect(grads, p, self.qkv_group, ops.linears_backward_params(dqkv, ops.rmsnorm_apply(x, s.rstd1, norm1), qkv))
        del dqkv
        dx = ops.rmsnorm_grad(dh, x, s.rstd1, norm1)  # (N, C)
        dx += dx2
        return dx.reshape(B, T, C)

    @staticmethod
    def _collect(grads: dict, prefix: str, group: tuple[str, ...], layer_grads) -> None:
        """Store each adapter's (dA, dB) under its parameter names."""
        for key, g in zip(group, layer_grads):
            if g is not None:
                grads[prefix + key + ".lora_a"], grads[prefix + key + ".lora_b"] = g

    # ------------------------------------------------------------ q, k and v

    def _layer_rope(self, i: int, rope):
        """The rope tables of block i from ``model._rope``'s (global, local): the sliding-window layers' own when they
        have them (``ModelConfig.window``), None for a layer that does not rotate (``ModelConfig.rotates``)."""
        if not self.config.rotates(i):
            return None
        tables, local = rope
        return local if local is not None and self.config.window(i) is not None else tables

    def _norm(self, name: str) -> np.ndarray:
        """The factor RMSNorm ``name`` multiplies by: its weight, or ``norm_offset`` + weight (Gemma), formed once."""
        if not self.config.norm_offset:
            return self.weights[name]
        factor = self._norm_factors.get(name)
        if factor is None:
            factor = self._norm_factors[name] = self.weights[name] + self.dtype(self.config.norm_offset)
        return factor

    def _mlp_norm(self) -> str:
        """The norm of the MLP's input: post_attention_layernorm's in the llama layout, a norm of its own with sandwich_norms."""
        return PRE_MLP if self.config.sandwich_norms else "post_attention_layernorm.weight"

    def _qk_norm_weights(self, i: int) -> np.ndarray:
        """The norm weight of each q and k head of block i: (H + KVH, D), q_norm for the H query heads, k_norm for the rest."""
        cfg, p = self.config, f"model.layers.{i}.self_attn."
        return np.concatenate([np.broadcast_to(self._norm(p + "q_norm.weight"), (cfg.num_attention_heads, cfg.head_dim)),
                               np.broadcast_to(self._norm(p + "k_norm.weight"), (cfg.num_key_value_heads, cfg.head_dim))])

    def _attention_inputs(self, i: int, qkv, B: int, T: int, rope):
        """q | k | v projections (N, (H + 2 KVH) D) -> q, k, v as attention takes them (``_split_heads``), and, for a
        ``qk_norm`` family, the norm scale of each q and k head (N, H + KVH, 1) (else None); ``qkv`` is left as it is."""
        cfg = self.config
        if not cfg.qk_norm:
            return (*self._split_heads(qkv, B, T, rope), None)
        H, KVH, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        raw = qkv[:, : (H + KVH) * D].reshape(B * T, H + KVH, D)  # (N, H + KVH, D), a view
        rstd = ops.rmsnorm_rstd(raw, cfg.rms_norm_eps)  # (N, H + KVH, 1)
        qk = ops.rmsnorm_apply(raw, rstd, self._qk_norm_weights(i)).reshape(B * T, (H + KVH) * D)  # (N, (H + KVH) D)
        return (*self._split_heads(qkv, B, T, rope, qk), rstd)

    def _qk_norm_backward(self, i: int, dqkv, qkv, rstd) -> None:
        """d(normalised q | k) in ``dqkv``'s first (H + KVH) D columns -> d(raw q | k), in place."""
        cfg = self.config
        H, KVH, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        N, cols = len(dqkv), slice(0, (H + KVH) * D)
        d = ops.rmsnorm_grad(dqkv[:, cols].reshape(N, H + KVH, D), qkv[:, cols].reshape(N, H + KVH, D), rstd, self._qk_norm_weights(i))
        dqkv[:, cols] = d.reshape(N, (H + KVH) * D)

    def _split_heads(self, qkv, B: int, T: int, rope, qk=None):
        """q | k | v projections (N, (H + 2 KVH) D) -> rotated q (B, KVH, T*G, D), rotated k and v (B, KVH, T, D).

        ``qk``: q | k to use instead of ``qkv``'s first (H + KVH) D columns
        (normalised ones). q's rows per key/value head are ordered (position,
        query head), the layout of ``ops.causal_attention``, and q is scaled
        (see ``model._rope``). ``rope`` None: q is only scaled, k left as it is.
        """
        cfg = self.config
        H, KVH, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        G, trad = H // KVH, cfg.rope_traditional
        qk = qkv if qk is None else qk
        q_rows = qk[:, : H * D].reshape(B, T, H * D)
        k_rows = qk[:, H * D : (H + KVH) * D].reshape(B, T, KVH * D)
        if rope is None:
            q, k = q_rows * self.attn_scale, k_rows  # (B, T, H*D), (B, T, KVH*D)
        else:
            q_cos, q_sin, k_cos, k_sin = rope  # (T, H*D) x2, (T, KVH*D) x2
            q = ops.rotate(q_rows, q_cos, q_sin, trad, D, rotary=cfg.rotary_dims)  # (B, T, H*D)
            k = ops.rotate(k_rows, k_cos, k_sin, trad, D, rotary=cfg.rotary_dims)  # (B, T, KVH*D)
        q = np.ascontiguousarray(q.reshape(B, T, KVH, G, D).transpose(0, 2, 1, 3, 4)).reshape(B, KVH, T * G, D)
        k = np.ascontiguousarray(k.reshape(B, T, KVH, D).transpose(0, 2, 1, 3))  # (B, KVH, T, D)
        v = np.ascontiguousarray(qkv[:, (H + KVH) * D :].reshape(B, T, KVH, D).transpose(0, 2, 1, 3))  # (B, KVH, T, D)
        return q, k, v

    def _merge_qkv_grads(self, dq, dk, dv, B: int, T: int, rope) -> np.ndarray:
        """The inverse of ``_split_heads`` for gradients: -> d(q | k | v) (N, (H + 2 KVH) D), RoPE and scale undone."""
        cfg = self.config
        H, KVH, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        G, trad = H // KVH, cfg.rope_traditional
        dqkv = np.empty((B * T, (H + 2 * KVH) * D), dtype=dq.dtype)
        dq = np.ascontiguousarray(dq.reshape(B, KVH, T, G, D).transpose(0, 2, 1, 3, 4)).reshape(B, T, H * D)
        dk = np.ascontiguousarray(dk.transpose(0, 2, 1, 3)).reshape(B, T, KVH * D)
        dq_out, dk_out = _view(dqkv[:, : H * D], B, T, H * D), _view(dqkv[:, H * D : (H + KVH) * D], B, T, KVH * D)
        if rope is None:
            np.multiply(dq, self.attn_scale, out=dq_out)
            dk_out[...] = dk
        else:
            q_cos, q_sin, k_cos, k_sin = rope
            ops.rotate(dq, q_cos, -q_sin, trad, D, out=dq_out, rotary=cfg.rotary_dims)
            ops.rotate(dk, k_cos, -k_sin, trad, D, out=dk_out, rotary=cfg.rotary_dims)
        _view(dqkv[:, (H + KVH) * D :], B, T, KVH, D)[...] = dv.transpose(0, 2, 1, 3)
        return dqkv

    def _merge_heads(self, att, B: int, T: int) -> np.ndarray:
        """Attention output (B, KVH, T*G, D) -> rows (N, H*D), heads in Hugging Face order."""
        KVH, D = self.config.num_key_value_heads, self.config.head_dim
        G = self.config.num_attention_heads // KVH
        return np.ascontiguousarray(att.reshape(B, KVH, T, G, D).transpose(0, 2, 1, 3, 4)).reshape(B * T, KVH * G * D)

    def _split_rows(self, a, B: int, T: int) -> np.ndarray:
        """The inverse of ``_merge_heads``: (N, H*D) -> (B, KVH, T*G, D)."""
        KVH, D = self.config.num_key_value_heads, self.config.head_dim
        G = self.config.num_attention_heads // KVH
        return np.ascontiguousarray(a.reshape(B, T, KVH, G, D).transpose(0, 2, 1, 3, 4)).reshape(B, KVH, T * G, D)


def _view(a: np.ndarray, *shape: int) -> np.ndarray:
    """``a`` reshaped without a copy (for writing through); fails loudly where numpy would copy."""
    v = a.reshape(shape)
    if not np.may_share_memory(v, a):
        raise AssertionError(f"reshaping {a.shape} with strides {a.strides} to {shape} would copy")
    return v
