"""The numpy reference model on its own: gradients against finite differences, KV cache, loading, fusing.

Runs with numpy only (no mlx import here), so it also guards the backend that
machines without mlx use. Gradient checks run in float64, where central
differences are accurate to ~1e-9, so a relative error above 1e-6 is a bug.
"""

import subprocess
import sys

import numpy as np
import pytest

from mlxtune.formats import safetensors as npio
from mlxtune.backends.numpy import model as numpy_model
from mlxtune.backends.numpy import ops
from mlxtune.backends.numpy.model import ModelConfig, NumpyLlama, load_model
from mlxtune.errors import AdapterError, ConfigError, ModelFormatError, UnsupportedModelError
from mlxtune.models.layout import expected_shapes
import numpy_ops_ref as ref
from tiny import tiny_config
from tolerances import GRAD_CHECK

EPS = 1e-5  # central-difference step in float64


def numerical_grad(f, x: np.ndarray) -> np.ndarray:
    """Central differences of the scalar f() w.r.t. every entry of x (changed in place, then restored)."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + EPS
        plus = f()
        x[idx] = old - EPS
        minus = f()
        x[idx] = old
        grad[idx] = (plus - minus) / (2 * EPS)
    return grad


def rel_err(analytic, numeric) -> float:
    return float(np.max(np.abs(analytic - numeric)) / max(np.max(np.abs(numeric)), 1e-12))


def check_op(name, forward, backward, inputs: dict, dout_shape=None, seed=0):
    """Check backward(dout) of an op against finite differences of sum(forward(**inputs) * dout)."""
    rng = np.random.default_rng(seed)
    out, cache = forward(**inputs)
    dout = rng.normal(size=np.shape(out))
    grads = backward(dout, cache)
    errors = {}
    for key, analytic in grads.items():
        numeric = numerical_grad(lambda: float(np.sum(forward(**inputs)[0] * dout)), inputs[key])
        errors[key] = rel_err(analytic, numeric)
    print(f"{name}: " + ", ".join(f"d{k} {e:.1e}" for k, e in errors.items()))
    assert max(errors.values()) < GRAD_CHECK, errors


# ------------------------------------------------------------------ per op


@pytest.mark.parametrize("with_lora", [False, True])
def test_linear_backward(with_lora):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 5))
    w, bias = rng.normal(size=(4, 5)), rng.normal(size=4)
    lora = ops.LoRA(rng.normal(size=(5, 2)), rng.normal(size=(2, 4)), 0.7) if with_lora else None
    drop = ops.dropout_mask(x.shape, 0.3, rng, np.float64) if with_lora else None

    def backward(dy, cache):
        dx, g = ref.linear_backward(dy, cache)
        return {"x": dx} if g is None else {"x": dx, "a": g[0], "b": g[1]}

    def forward(x, a=None, b=None):
        return ref.linear_forward(x, w, bias, lora, drop)

    inputs = {"x": x, "a": lora.a, "b": lora.b} if with_lora else {"x": x}  # the LoRA arrays are live
    check_op("linear" + (" + LoRA + dropout" if with_lora else ""), forward, backward, inputs)


@pytest.mark.parametrize("dropout", [False, True])
def test_stacked_linears_backward(dropout):
    """Layers reading one input as one matmul: a folded adapter, a plain layer, another adapter (behind dropout)."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(7, 5))
    drop = ops.dropout_mask((7, 5), 0.3, rng, np.float64) if dropout else None
    layers = [
        ops.Linear(rng.normal(size=(4, 5)), rng.normal(size=4), ops.LoRA(rng.normal(size=(5, 2)), rng.normal(size=(2, 4)), 0.7)),
        ops.Linear(rng.normal(size=(3, 5))),
        ops.Linear(rng.normal(size=(6, 5)), None, ops.LoRA(rng.normal(size=(5, 3)), rng.normal(size=(3, 6)), 1.3, 0.3), drop),
    ]
    assert [l.folded for l in layers] == [True, False, not dropout]
    live = {"x": x, "a0": layers[0].lora.a, "b0": layers[0].lora.b, "a2": layers[2].lora.a, "b2": layers[2].lora.b}

    def forward(**_):
        return ops.linears_forward(x, layers), None

    def backward(dy, _):
        (da0, db0), none, (da2, db2) = ops.linears_backward_params(dy, x, layers)
        assert none is None
        return {"x": ops.linears_backward_input(dy, layers), "a0": da0, "b0": db0, "a2": da2, "b2": db2}

    check_op(f"stacked linears dropout={dropout}", forward, backward, live)
    # The stack is the layers side by side.
    y = ops.linears_forward(x, layers)
    np.testing.assert_allclose(y[:, 4:7], x @ layers[1].weight.T, rtol=1e-13)


def test_rmsnorm_backward():
    rng = np.random.default_rng(2)
    w = rng.normal(size=6)
    check_op("rmsnorm", lambda x: ref.rmsnorm_forward(x, w, 1e-5), lambda d, c: {"x": ref.rmsnorm_backward(d, c)}, {"x": rng.normal(size=(2, 3, 6))})


@pytest.mark.parametrize("traditional", [False, True])
def test_rope_backward(traditional):
    rng = np.random.default_rng(3)
    cos, sin = ops.rope_tables(np.arange(5, 9) * 0.5, 10000.0 ** (-np.arange(0, 8, 2) / 8), np.float64)
    check_op(
        f"rope traditional={traditional}",
        lambda x: ref.rope_forward(x, cos, sin, traditional),
        lambda d, c: {"x": ref.rope_backward(d, c)},
        {"x": rng.normal(size=(2, 3, 4, 8))},
    )


def test_rope_is_a_rotation_of_half_pairs():
    """Non-traditional RoPE pairs feature i with i + D/2 (mlx.nn.RoPE(traditional=False))."""
    x = np.zeros((1, 1, 1, 4))
    x[..., 0] = 1.0
    cos, sin = ops.rope_tables(np.array([3.0]), np.array([1.0, 0.01]), np.float64)
    out, _ = ref.rope_forward(x, cos, sin)
    np.testing.assert_allclose(out[0, 0, 0], [np.cos(3.0), 0, np.sin(3.0), 0], atol=1e-15)


@pytest.mark.parametrize("T,S,KVH", [(4, 4, 2), (3, 5, 2), (4, 4, 4), (1, 6, 1)])
def test_attention_backward(T, S, KVH):
    rng = np.random.default_rng(4)
    B, H, D = 2, 4, 3
    inputs = {"q": rng.normal(size=(B, H, T, D)), "k": rng.normal(size=(B, KVH, S, D)), "v": rng.normal(size=(B, KVH, S, D))}
    check_op(
        f"attention T={T} S={S} H={H} KVH={KVH}",
        lambda q, k, v: ref.attention_forward(q, k, v, D**-0.5, offset=S - T),
        lambda d, c: dict(zip("qkv", ref.attention_backward(d, c))),
        inputs,
    )


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_attention_in_chunks_equals_one_chunk(chunk):
    """Causal chunks of query positions (each seeing only the keys it may) change nothing."""
    rng = np.random.default_rng(8)
    B, KVH, G, T, S, D = 2, 2, 3, 5, 7, 4
    q, k, v, do = rng.normal(size=(B, KVH, T * G, D)), rng.normal(size=(B, KVH, S, D)), rng.normal(size=(B, KVH, S, D)), rng.normal(size=(B, KVH, T * G, D))
    whole, lse = ops.causal_attention(q, k, v, offset=S - T, chunk=T)
    o, lse_c = ops.causal_attention(q, k, v, offset=S - T, chunk=chunk)
    np.testing.assert_allclose(o, whole, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(lse_c, lse, rtol=1e-13, atol=1e-14)
    for a, b in zip(ops.causal_attention_backward(do, q, k, v, lse, S - T, chunk), ops.causal_attention_backward(do, q, k, v, lse, S - T, T)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ops.causal_attention_backward(do, q, k, v, lse, S - T, chunk)[3], whole, rtol=1e-13, atol=1e-14)  # o comes along


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_sliding_window_attention_sees_the_last_window_positions(chunk):
    """window=3: each query sees itself and the 2 positions before it, in any chunking, with a cache offset; gradients too."""
    rng = np.random.default_rng(9)
    B, KVH, G, T, S, D, W = 1, 2, 2, 5, 8, 4, 3
    q, k, v, do = rng.normal(size=(B, KVH, T * G, D)), rng.normal(size=(B, KVH, S, D)), rng.normal(size=(B, KVH, S, D)), rng.normal(size=(B, KVH, T * G, D))
    o, lse = ops.causal_attention(q, k, v, offset=S - T, chunk=chunk, window=W)
    for row in range(T * G):
        pos = S - T + row // G
        keys = slice(pos - W + 1, pos + 1)
        s = np.einsum("hd,hwd->hw", q[0, :, row], k[0, :, keys])  # (KVH, W)
        p = np.exp(s - s.max(-1, keepdims=True))
        np.testing.assert_allclose(o[0, :, row], np.einsum("hw,hwd->hd", p / p.sum(-1, keepdims=True), v[0, :, keys]), rtol=1e-12, atol=1e-13)
    dq, dk, dv, o2 = ops.causal_attention_backward(do, q, k, v, lse, S - T, chunk, window=W)
    np.testing.assert_allclose(o2, o, rtol=1e-13, atol=1e-14)
    f = lambda q_, k_, v_: float(np.sum(ops.causal_attention(q_, k_, v_, offset=S - T, window=W)[0] * do))
    for name, x, g in (("q", q, dq), ("k", k, dk), ("v", v, dv)):
        e = np.zeros_like(x)
        e.flat[7] = 1e-6
        args = {"q": q, "k": k, "v": v}
        numeric = (f(**{n + "_": (a + e if n == name else a) for n, a in args.items()}) - f(**{n + "_": (a - e if n == name else a) for n, a in args.items()})) / 2e-6
        assert numeric == pytest.approx(g.flat[7], rel=1e-5, abs=1e-8), name
    assert not dk[0, :, : S - T - W + 1].any()  # keys before every query's window get no gradient


def test_attention_is_causal_and_grouped():
    """Query head h attends to key/value head h // G, and never to a later position."""
    rng = np.random.default_rng(5)
    B, H, KVH, T, D = 1, 4, 2, 5, 3
    q, k, v = rng.normal(size=(B, H, T, D)), rng.normal(size=(B, KVH, T, D)), rng.normal(size=(B, KVH, T, D))
    out, _ = ref.attention_forward(q, k, v, D**-0.5)
    for h in range(H):
        kv = h // (H // KVH)
        for t in range(T):
            s = q[0, h, t] @ k[0, kv, : t + 1].T * D**-0.5
            p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            np.testing.assert_allclose(out[0, h, t], p @ v[0, kv, : t + 1], atol=1e-12)


def test_swiglu_backward():
    rng = np.random.default_rng(6)
    gate = rng.normal(size=(2, 3, 5)) * 3
    gate[0, 0, 0] = -120.0  # exp overflow territory: silu -> 0, no NaN
    check_op("swiglu", ref.swiglu_forward, lambda d, c: dict(zip(("gate", "up"), ref.swiglu_backward(d, c))), {"gate": gate, "up": rng.normal(size=(2, 3, 5))})


def test_geglu_forward_and_backward_in_pieces(monkeypatch):
    """gelu(gate) * up with the tanh approximation (transformers' gelu_pytorch_tanh), and its gradient, a few rows a piece."""
    from mlxtune.backends.numpy import geglu

    monkeypatch.setattr(geglu, "PIECE", 12)  # 2 rows of F = 5 a piece
    rng = np.random.default_rng(13)
    gu, dm = rng.normal(size=(7, 10)) * 3, rng.normal(size=(7, 5))
    gate, up = gu[:, :5], gu[:, 5:]
    expected = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3))) * up
    np.testing.assert_allclose(geglu.geglu_rows(gu), expected, rtol=1e-14)
    m, dgu = geglu.geglu_rows_backward(dm, gu.copy())
    np.testing.assert_allclose(m, expected, rtol=1e-14)
    f = lambda x: float(np.sum(geglu.geglu_rows(x) * dm))
    numeric = np.zeros_like(gu)
    for idx in np.ndindex(gu.shape):
        e = np.zeros_like(gu)
        e[idx] = 1e-6
        numeric[idx] = (f(gu + e) - f(gu - e)) / 2e-6
    np.testing.assert_allclose(dgu, numeric, rtol=1e-6, atol=1e-8)


def test_row_pieces_equal_whole_arrays(monkeypatch):
    """SwiGLU and the RMSNorm backward work a piece of rows at a time (for the cache); the result is the same."""
    monkeypatch.setattr(ops, "PIECE", 12)  # 2 rows of F = 5 a piece, 2 rows of C = 6
    rng = np.random.default_rng(12)
    gu, dm = rng.normal(size=(7, 10)) * 3, rng.normal(size=(7, 5))
    m, cache = ref.swiglu_forward(gu[:, :5], gu[:, 5:])
    dgate, dup = ref.swiglu_backward(dm, cache)
    np.testing.assert_array_equal(ops.swiglu_rows(gu), m)
    m2, dgu = ops.swiglu_rows_backward(dm, gu.copy())
    np.testing.assert_array_equal(m2, m)
    np.testing.assert_array_equal(dgu, np.concatenate([dgate, dup], axis=1))
    x, w, dout = rng.normal(size=(7, 6)), rng.normal(size=6), rng.normal(size=(7, 6))
    rstd = ops.rmsnorm_rstd(x, 1e-5)
    whole = rstd * (dout * w - x * rstd * np.mean(dout * w * x * rstd, axis=-1, keepdims=True))
    np.testing.assert_allclose(ops.rmsnorm_grad(dout, x, rstd, w), whole, rtol=1e-13)


def test_cross_entropy_backward():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(5, 11)) * 4
    targets = rng.integers(0, 11, size=5)
    weights = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    check_op(
        "cross_entropy",
        lambda logits: ref.cross_entropy_forward(logits, targets, weights),
        lambda d, c: {"logits": ref.cross_entropy_backward(float(d), c)},
        {"logits": logits},
    )
    total, _ = ref.cross_entropy_forward(logits, targets, weights)
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(total, np.sum((lse - logits[np.arange(5), targets]) * weights), rtol=1e-12)


# --------------------------------------------------------------- the model

SMALL = dict(hidden_size=16, intermediate_size=24, num_attention_heads=4, num_key_value_heads=2, head_dim=4, num_hidden_layers=2)
VARIANTS = {
    "tied-gqa": {},
    "untied": {"tie_word_embeddings": False},
    "qwen2-qkv-bias": {"model_type": "qwen2", "attention_bias": True},
    "llama-all-biases": {"attention_bias": True, "mlp_bias": True},
    "mha-traditional-linear-rope": {"num_key_value_heads": 4, "rope_traditional": True, "rope_scaling": {"type": "linear", "factor": 2.0}},
    "llama3-rope": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16}},
    "qwen3-qk-norm": {"model_type": "qwen3", "head_dim": 6},  # per-head q/k norms before rope; head_dim not hidden / heads
    "smollm3-nope": {"model_type": "smollm3", "no_rope_layers": [0, 1]},  # the first block without rope
    # (1 + w) norms around each half, GeGLU, scores scaled by 6 ** -0.5, the first block within 3 positions with its own rope base
    "gemma3-sandwich": {"model_type": "gemma3_text", "query_pre_attn_scalar": 6, "sliding_window": 3, "sliding_window_pattern": 2, "rope_local_base_freq": 100.0},
    # fused qkv_proj and gate_up_proj, rope on half of each head (2 of 4 dims), LongRoPE's long factor (6 positions > 4) and its scale
    "phi3-fused-longrope": {"model_type": "phi3", "partial_rotary_factor": 0.5, "original_max_position_embeddings": 4,
                            "rope_scaling": {"type": "longrope", "short_factor": [1.5], "long_factor": [3.0]}},
}


def random_weights(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights of the right names and shapes, float32 like a checkpoint."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in expected_shapes(cfg).items():
        if name.endswith("norm.weight"):
            w = 1 + 0.1 * rng.normal(size=shape)
        elif name.endswith(".bias"):
            w = 0.1 * rng.normal(size=shape)
        elif name == "model.embed_tokens.weight":
            w = rng.normal(size=shape)
        else:
            w = rng.uniform(-1, 1, size=shape) / np.sqrt(shape[1])
        weights[name] = w.astype(np.float32)
    return weights


def small_model(variant="tied-gqa", dtype=np.float64, vocab=40, dropout=0.0, seed=0) -> NumpyLlama:
    """A small model with LoRA on every linear layer and non-zero lora_b (so dA is not trivially zero)."""
    cfg = ModelConfig.from_dict(tiny_config(vocab, **{**SMALL, **VARIANTS[variant]}))
    model = NumpyLlama(cfg, random_weights(cfg, seed), dtype)
    rng = np.random.default_rng(seed + 1)
    model.add_lora(-1, list(model.linear_keys), rank=2, scale=1.5, rng=rng, dropout=dropout)  # LINEAR_KEYS, or the fused layers
    for key, p in model.lora_params().items():
        if key.endswith("lora_b"):
            p[...] = 0.2 * rng.normal(size=p.shape)
    return model


def batch(vocab=40, B=2, T=6, seed=0):
    """Right-padded batch: row 1 is 4 tokens long, and the first two targets of row 0 are prompt."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, vocab, size=(B, T)).astype(np.int32)
    targets = rng.integers(0, vocab, size=(B, T)).astype(np.int32)
    mask = np.ones((B, T), dtype=np.float32)
    mask[0, :2] = 0
    mask[1, 4:] = 0
    inputs[1, 4:] = 0
    targets[1, 4:] = 0
    return inputs, targets, mask


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lora_gradients_match_finite_differences(variant):
    model = small_model(variant)
    inputs, targets, mask = batch()
    loss, n, grads = model.loss_and_grads(inputs, targets, mask)
    assert n == mask.sum() and loss == pytest.approx(model.loss(inputs, targets, mask)[0], rel=1e-12)
    params = model.lora_params()
    assert list(grads) == list(params)
    worst = 0.0
    for key, p in params.items():
        numeric = numerical_grad(lambda: model.loss(inputs, targets, mask)[0], p)
        err = rel_err(grads[key], numeric)
        worst = max(worst, err)
        assert err < GRAD_CHECK, f"{key}: relative error {err:.2e}"
    print(f"{variant}: {len(params)} LoRA tensors, worst relative error {worst:.1e}")


def test_lora_gradients_with_dropout():
    """With rng given, dropout masks the LoRA input; the same seed gives the same masks."""
    model = small_model(dropout=0.25)
    inputs, targets, mask = batch()
    _, _, grads = model.loss_and_grads(inputs, targets, mask, rng=np.random.default_rng(9))
    worst = 0.0
    for key, p in model.lora_params().items():
        numeric = numerical_grad(lambda: model.loss_and_grads(inputs, targets, mask, rng=np.random.default_rng(9))[0], p)
        worst = max(worst, rel_err(grads[key], numeric))
    print(f"dropout: worst relative error {worst:.1e}")
    assert worst < GRAD_CHECK
    # No rng: no dropout, the same as a model without it.
    loss_no_rng = model.loss_and_grads(inputs, targets, mask)[0]
    assert loss_no_rng == pytest.approx(model.loss(inputs, targets, mask)[0], rel=1e-12)
    assert loss_no_rng != pytest.approx(model.loss_and_grads(inputs, targets, mask, rng=np.random.default_rng(9))[0], rel=1e-9)


def test_loss_is_masked_mean_of_cross_entropy():
    model = small_model()
    inputs, targets, mask = batch()
    logits = model.forward(inputs)  # (B, T, V)
    lse = np.log(np.exp(logits).sum(-1))
    ce = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    loss, n = model.loss(inputs, targets, mask)
    assert n == 8.0
    assert loss == pytest.approx(float((ce * mask).sum() / mask.sum()), rel=1e-12)
    # Nothing to train on: loss 0, n 0, zero gradients (no division by zero).
    loss, n, grads = model.loss_and_grads(inputs, targets, np.zeros_like(mask))
    assert (loss, n) == (0.0, 0.0) and all(not g.any() for g in grads.values())


@pytest.mark.parametrize("variant,dropout", [("tied-gqa", 0.0), ("tied-gqa", 0.25), ("qwen3-qk-norm", 0.25), ("smollm3-nope", 0.0)])
def test_checkpointed_blocks_give_the_same_gradients(variant, dropout):
    """A checkpointed block recomputes q, k, v, gate and up (replaying its dropout masks) in the backward."""
    model = small_model(variant, dropout=dropout)
    inputs, targets, mask = batch()
    model.activation_budget = None
    assert model.activation_plan(*inputs.shape) == (2, 0)
    loss, n, grads = model.loss_and_grads(inputs, targets, mask, rng=np.random.default_rng(9))
    keep, ckpt = model.saved_bytes_per_block(inputs.size)
    for budget, plan in ((keep + ckpt, (1, 1)), (0, (0, 2))):
        model.activation_budget = budget
        assert model.activation_plan(*inputs.shape) == plan
        loss_c, n_c, grads_c = model.loss_and_grads(inputs, targets, mask, rng=np.random.default_rng(9))
        assert (loss_c, n_c) == (loss, n)
        for k, g in grads.items():
            np.testing.assert_allclose(grads_c[k], g, rtol=1e-12, atol=1e-15, err_msg=k)


def test_activation_plan_counts_what_a_block_keeps():
    model = small_model(dtype=np.float32)  # C 16, F 24, H 4, KVH 2, D 4
    keep, ckpt = model.saved_bytes_per_block(10)
    assert keep == 10 * (16 + 16 + 4 * 4 + 2 * 2 * 4 + 2 * 24 + 2 + 4) * 4  # x, x2, q, k, v, gate, up, two norm scales, lse
    assert ckpt == 10 * (16 + 16 + 2 + 4) * 4  # x, x2, norm scales, lse
    model.activation_budget = 2 * keep
    assert model.activation_plan(2, 5) == (2, 0)
    model.activation_budget = 2 * keep - 1
    assert model.activation_plan(2, 5) == (1, 1)
    model.activation_budget = 0
    assert model.activation_plan(2, 5) == (0, 2)


def test_head_in_chunks_equals_one_chunk(monkeypatch):
    """The loss head computes a few rows of logits at a time; the result does not depend on how many."""
    from mlxtune.backends.numpy import model as numpy_model

    model = small_model()
    inputs, targets, mask = batch()
    monkeypatch.setattr(numpy_model, "HEAD_CHUNK_BYTES", 1)  # the minimum: 8 rows a chunk
    assert model._head_rows() == 8
    mask3 = mask.copy()
    mask3[1, 4] = 1  # 9 rows with a target: a chunk of 8 and one of 1
    loss9, n9, grads9 = model.loss_and_grads(inputs, targets, mask3)
    monkeypatch.setattr(numpy_model, "HEAD_CHUNK_BYTES", 2**30)
    loss9_one, _, grads9_one = model.loss_and_grads(inputs, targets, mask3)
    assert n9 == 9 and loss9 == pytest.approx(loss9_one, rel=1e-13)
    for k, g in grads9_one.items():
        np.testing.assert_allclose(grads9[k], g, rtol=1e-12, atol=1e-15, err_msg=k)
    assert model.loss(inputs, targets, mask3)[0] == pytest.approx(loss9_one, rel=1e-13)


def test_only_blocks_after_the_first_adapter_get_gradients():
    cfg = ModelConfig.from_dict(tiny_config(40, **SMALL))
    model = NumpyLlama(cfg, random_weights(cfg), np.float64)
    assert model.loss_and_grads(*batch())[2] == {}
    assert model.add_lora(1, ["self_attn.v_proj", "mlp.down_proj"], 2, 1.0, np.random.default_rng(0)) == 2
    assert sorted(model.lora_params()) == [
        "model.layers.1.mlp.down_proj.lora_a",
        "model.layers.1.mlp.down_proj.lora_b",
        "model.layers.1.self_attn.v_proj.lora_a",
        "model.layers.1.self_attn.v_proj.lora_b",
    ]
    grads = model.loss_and_grads(*batch())[2]
    assert set(grads) == set(model.lora_params())
    assert not grads["model.layers.1.self_attn.v_proj.lora_a"].any()  # lora_b = 0
    assert grads["model.layers.1.self_attn.v_proj.lora_b"].any()


def test_add_lora_placement_and_init():
    cfg = ModelConfig.from_dict(tiny_config(40, **SMALL))
    base = NumpyLlama(cfg, random_weights(cfg), np.float64)
    inputs = batch()[0]
    before = base.forward(inputs)
    for num_layers, blocks in ((0, []), (1, [1]), (2, [0, 1]), (-1, [0, 1]), (99, [0, 1])):
        model = NumpyLlama(cfg, random_weights(cfg), np.float64)
        n = model.add_lora(num_layers, ["self_attn.q_proj", "mlp.up_proj"], 3, 2.0, np.random.default_rng(0))
        assert n == 2 * len(blocks)
        assert {int(k.split(".")[2]) for k in model.lora_params()} == set(blocks)
    a = model.lora_params()["model.layers.0.mlp.up_proj.lora_a"]
    assert a.shape == (16, 3) and a.dtype == np.float64 and np.abs(a).max() <= 1 / 4
    assert model.lora_params()["model.layers.0.mlp.up_proj.lora_b"].shape == (3, 24)
    np.testing.assert_array_equal(model.forward(inputs), before)  # lora_b starts at zero
    with pytest.raises(ConfigError, match="qq_proj"):
        model.add_lora(1, ["self_attn.qq_proj"], 2, 1.0, np.random.default_rng(0))


def test_set_lora_params_checks_keys_and_shapes():
    model = small_model()
    params = {k: v.copy() * 2 for k, v in model.lora_params().items()}
    model.set_lora_params(params)
    for k, v in model.lora_params().items():
        np.testing.assert_array_equal(v, params[k])
    key = "model.layers.0.self_attn.q_proj.lora_a"
    with pytest.raises(AdapterError, match=key):
        model.set_lora_params({k: v for k, v in params.items() if k != key})
    with pytest.raises(AdapterError, match=r"model.layers.9.*lora_a"):
        model.set_lora_params({**params, "model.layers.9.self_attn.q_proj.lora_a": params[key]})
    with pytest.raises(AdapterError, match=rf"{key} has shape \(16, 3\).*\(16, 2\)"):
        model.set_lora_params({**params, key: np.zeros((16, 3))})


@pytest.mark.parametrize("variant", ["tied-gqa", "qwen2-qkv-bias", "qwen3-qk-norm"])
def test_fused_weights_forward_equals_lora_forward(variant):
    model = small_model(variant)
    base = {k: v.copy() for k, v in model.weights.items()}
    fused = model.fused_weights()
    assert set(fused) == set(base)
    inputs = batch()[0]
    np.testing.assert_allclose(NumpyLlama(model.config, fused, np.float64).forward(inputs), model.forward(inputs), rtol=0, atol=1e-12)
    for k, v in base.items():  # the base weights are untouched
        np.testing.assert_array_equal(model.weights[k], v)


@pytest.mark.parametrize("variant,dtype,atol", [("tied-gqa", np.float64, 1e-12), ("tied-gqa", np.float32, 2e-5), ("qwen3-qk-norm", np.float64, 1e-12), ("smollm3-nope", np.float64, 1e-12)])
def test_kv_cache_forward_equals_full_forward(variant, dtype, atol, monkeypatch):
    monkeypatch.setattr(numpy_model, "KV_CACHE_START", 5)  # so the cache grows twice
    model = small_model(variant, dtype=dtype)
    tokens = np.random.default_rng(3).integers(0, 40, size=(2, 10))
    full = model.forward(tokens)  # (B, T, V)
    cache = model.new_cache()
    pieces = [model.forward(tokens[:, :4], cache)]
    for t in range(4, 6):  # one token at a time, as in generation
        pieces.append(model.forward(tokens[:, t : t + 1], cache))
    pieces.append(model.forward(tokens[:, 6:], cache))  # a chunk on top of a cache
    assert cache.offset == 10 and cache.keys[0].shape == (2, 2, 10, model.config.head_dim)  # grown 5 -> 10 (to fit 4 + 6)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=0, atol=atol)
    last = model.forward(tokens[:, :7], model.new_cache(), last_only=True)  # (B, 1, V)
    np.testing.assert_allclose(last, full[:, 6:7], rtol=0, atol=atol)


def test_grouped_weights_are_stored_stacked_and_used_without_a_copy():
    model = small_model()
    model.adapters = {}
    layers = model._layers(0, numpy_model._QKV, {})
    stack = ops.stacked_weight(layers)
    assert all(np.shares_memory(l.weight, stack) for l in layers)
    np.testing.assert_array_equal(stack, np.concatenate([l.weight for l in layers]))
    model.add_lora(-1, ["self_attn.k_proj"], 2, 2.0, np.random.default_rng(0))
    folded = ops.stacked_weight(model._layers(0, numpy_model._QKV, {}))  # an adapter in the group: a fresh sum
    assert not np.shares_memory(folded, stack)


def test_merge_adapters_leaves_outputs_bit_for_bit():
    model = small_model()  # LoRA on every linear layer, lora_b non-zero
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 40, size=(2, 7))
    before = model.forward(tokens)
    model.merge_adapters()
    assert not model.adapters
    np.testing.assert_array_equal(model.forward(tokens), before)


# ----------------------------------------------------------------- loading


def test_loads_the_tiny_model_directory(tiny_model):
    model = load_model(tiny_model)[0]
    config, weights = npio.load_weights(tiny_model)
    assert model.config.vocab_size == config["vocab_size"] and model.config.head_dim == 16
    assert set(model.weights) == set(weights) and all(w.dtype == np.float32 for w in model.weights.values())
    logits = model.forward(np.array([[1, 2, 3]]))
    assert logits.shape == (1, 3, config["vocab_size"]) and np.isfinite(logits).all()


def test_loader_names_missing_misshaped_and_unexpected_tensors():
    cfg = ModelConfig.from_dict(tiny_config(40, **SMALL))
    weights = random_weights(cfg)
    key = "model.layers.1.mlp.up_proj.weight"
    with pytest.raises(ModelFormatError, match=rf"lack 1 tensor.*{key}"):
        NumpyLlama(cfg, {k: v for k, v in weights.items() if k != key})
    with pytest.raises(ModelFormatError, match=rf"{key} has shape \(24, 15\).*\(24, 16\)"):
        NumpyLlama(cfg, {**weights, key: np.zeros((24, 15), np.float32)})
    with pytest.raises(ModelFormatError, match="model.layers.0.mlp.extra.weight"):
        NumpyLlama(cfg, {**weights, "model.layers.0.mlp.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ModelFormatError, match="lm_head.weight"):
        untied = ModelConfig.from_dict(tiny_config(40, **SMALL, tie_word_embeddings=False))
        NumpyLlama(untied, weights)
    # What mlx-lm's sanitize drops is ignored: rotary tables, a head of a tied model.
    extra = {"model.layers.0.self_attn.rotary_emb.inv_freq": np.zeros(2, np.float32), "lm_head.weight": np.zeros((40, 16), np.float32)}
    NumpyLlama(cfg, {**weights, **extra})


def test_config_defaults_and_unsupported_models():
    llama = ModelConfig.from_dict(tiny_config(40, **SMALL))
    assert (llama.rope_theta, llama.head_dim, llama.attention_bias, llama.o_proj_bias) == (10000.0, 4, False, False)
    raw = tiny_config(40, model_type="qwen2", head_dim=99)
    del raw["rope_theta"]
    qwen = ModelConfig.from_dict(raw)
    assert (qwen.rope_theta, qwen.head_dim, qwen.attention_bias, qwen.o_proj_bias, qwen.mlp_bias) == (1e6, 16, True, False, False)
    assert ModelConfig.from_dict(tiny_config(40, model_type="mistral")).model_type == "mistral"
    with pytest.raises(UnsupportedModelError, match=r"'gpt2'.*llama, mistral, phi3, qwen2"):
        ModelConfig.from_dict(tiny_config(40, model_type="gpt2"))
    with pytest.raises(UnsupportedModelError, match=r"'yarn'.*default, linear, llama3"):
        ModelConfig.from_dict(tiny_config(40, rope_scaling={"type": "yarn", "factor": 4.0}))
    with pytest.raises(UnsupportedModelError, match="sliding_attention"):
        ModelConfig.from_dict(tiny_config(40, num_hidden_layers=2, layer_types=["full_attention", "sliding_attention"]))
    with pytest.raises(ModelFormatError, match="hidden_size"):
        ModelConfig.from_dict({k: v for k, v in tiny_config(40).items() if k != "hidden_size"})


def test_llama3_rope_frequencies():
    """Llama 3 scaling: long wavelengths slowed by `factor`, short ones kept, a smooth ramp between."""
    cfg = ModelConfig.from_dict(tiny_config(40, head_dim=64, hidden_size=256, rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}))
    inv, scale = cfg.rope_frequencies()
    plain = 500000.0 ** (-np.arange(0, 64, 2) / 64)
    wavelen = 2 * np.pi / plain
    assert scale == 1.0
    np.testing.assert_allclose(inv[wavelen < 2048], plain[wavelen < 2048])
    np.testing.assert_allclose(inv[wavelen > 8192], plain[wavelen > 8192] / 8)
    mid = (wavelen > 2048) & (wavelen < 8192)
    assert mid.any() and np.all(inv[mid] < plain[mid]) and np.all(inv[mid] > plain[mid] / 8)


def test_numpy_backend_does_not_import_mlx():
    code = "import sys, mlxtune.backends.numpy.model; sys.exit(any(m == 'mlx' or m.startswith(('mlx.', 'mlx_lm')) for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_trainer_activation_budget():
    from mlxtune.backends.numpy.trainer import ACTIVATION_FLOOR, activation_budget
    from mlxtune.errors import UsageError

    assert activation_budget(538_000_000) == int(0.8 * 538_000_000)  # SmolLM2-135M in float32
    assert activation_budget(1000) == ACTIVATION_FLOOR  # tiny models never need to checkpoint
    assert activation_budget(538_000_000, "1024") == 1024 * 2**20
    assert activation_budget(538_000_000, "all") is None
    with pytest.raises(UsageError, match="MLXTUNE_ACTIVATION_MB"):
        activation_budget(1, "lots")
