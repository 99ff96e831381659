"""Packed rows on the mlx backend (``backends/mlx/packing.py``): each record as if it were alone (issue 17, acceptance 2).

Records of different lengths are packed by hand into rows (their shifted pairs one after the other, positions
restarting, segment ids 1, 2, ...; 0 on padding), the layout ``data.batching.Batch`` documents. On every family
mlxtune supports (tiny models: llama with GQA and with llama 3's rope scaling, mistral, qwen2, qwen3's q/k norms,
gemma3's sliding window smaller than a record, phi3's partial rotary and LongRoPE, smollm3's layers without rope):

* the log-probabilities of each record in a packed row equal those of the record alone;
* the loss and every LoRA gradient of the packed batch equal those of the same records as one unpacked batch, on
  mlx and on the numpy reference (so the mlx packed numbers equal numpy's unpacked ones);
* the trainer's step (plain, accumulated, checkpointed), evaluation and log-probabilities take packed batches.
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from mlxtune.backends.mlx.trainer import loss_fn, packed_loss_fn, token_log_probs  # noqa: E402
from test_parity import TINY_VARIANTS, adapted_pair, f32, smollm2_batch, smollm2_dir  # noqa: E402,F401 (a fixture)
from tiny import make_tiny_model  # noqa: E402
from tolerances import GRADS, LOSS, SMOL_GRADS, SMOL_LOSS, TINY_LOGITS, grad_diff, scaled_diff  # noqa: E402


class Batch:
    """The arrays of ``data.batching.Batch``, packed (positions and segments) or not (None)."""

    def __init__(self, inputs, targets, mask, lengths, positions=None, segments=None):
        self.inputs, self.targets, self.mask, self.lengths = inputs, targets, mask, lengths
        self.positions, self.segments = positions, segments
        self.n_tokens = int(mask.sum())


def make_records(vocab: int, lengths: tuple[int, ...], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(tokens, loss_mask) per record: random tokens, the first two not trained."""
    rng = np.random.default_rng(seed)
    records = []
    for n in lengths:
        mask = np.ones(n, bool)
        mask[:2] = False
        records.append((rng.integers(3, vocab, size=n).astype(np.int32), mask))
    return records


def pack(records, rows: list[list[int]], T: int) -> Batch:
    """Records ``rows[b]`` one after the other in row b, each its own tokens[:-1] -> tokens[1:], then padding."""
    B = len(rows)
    inputs, targets = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
    mask = np.zeros((B, T), np.float32)
    positions, segments = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
    for b, row in enumerate(rows):
        t = 0
        for seg, i in enumerate(row, start=1):
            tokens, loss_mask = records[i]
            n = len(tokens) - 1
            assert t + n <= T
            inputs[b, t : t + n], targets[b, t : t + n], mask[b, t : t + n] = tokens[:-1], tokens[1:], loss_mask[1:]
            positions[b, t : t + n], segments[b, t : t + n] = np.arange(n), seg
            t += n
    return Batch(inputs, targets, mask, (segments > 0).sum(axis=1).astype(np.int32), positions, segments)


def unpacked(records) -> Batch:
    """One record a row, right-padded to the longest (as ``data.batching.make_batch`` does)."""
    T = max(len(tokens) for tokens, _ in records) - 1
    inputs, targets = np.zeros((len(records), T), np.int32), np.zeros((len(records), T), np.int32)
    mask = np.zeros((len(records), T), np.float32)
    for b, (tokens, loss_mask) in enumerate(records):
        n = len(tokens) - 1
        inputs[b, :n], targets[b, :n], mask[b, :n] = tokens[:-1], tokens[1:], loss_mask[1:]
    return Batch(inputs, targets, mask, np.array([len(tokens) - 1 for tokens, _ in records], np.int32))


def packed_args(batch: Batch) -> tuple:
    return tuple(mx.array(a) for a in (batch.inputs, batch.targets, batch.positions, batch.segments, batch.mask))


def mlx_loss_and_grads(model, batch: Batch):
    if batch.positions is None:
        fn, args = loss_fn, (mx.array(batch.inputs), mx.array(batch.targets), mx.array(batch.mask))
    else:
        fn, args = packed_loss_fn, packed_args(batch)
    (loss, n), grads = nn.value_and_grad(model, fn)(model, *args)
    return float(loss), float(n), {k: f32(v) for k, v in tree_flatten(grads)}


# Per variant: record lengths (tokens) and how they are packed into rows of T inputs. Gemma3's sliding window is 4
# positions, shorter than every record; phi3-longrope-long's original context is 8: all its records are longer, so
# each row (by its longest record) and each record alone take the long factors.
LENGTHS = (10, 7, 13, 6)
ROWS = [[0, 1, 3], [2]]
# test_parity's families, and mistral (mlx-lm's llama) and llama 3's rope scaling (Llama3RoPE: its own frequencies)
VARIANTS = TINY_VARIANTS | {
    "mistral": {"model_type": "mistral", "architectures": ["MistralForCausalLM"]},
    "llama3-rope": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8}},
}
CASES = {name: LENGTHS for name in VARIANTS} | {"phi3-longrope-long": (10, 11, 13, 12)}
T_ROW = 30


@pytest.fixture(scope="module", params=list(CASES))
def variant(request, tiny_model, tmp_path_factory):
    if request.param == "tied-gqa":
        return request.param, tiny_model
    return request.param, make_tiny_model(tmp_path_factory.mktemp(request.param) / "model", **VARIANTS[request.param])


ROPES = {
    "default": (16, False, None),
    "traditional": (16, True, None),
    "partial": (12, False, None),
    "linear": (16, False, {"type": "linear", "factor": 4.0}),
    "llama3": (16, False, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8}),
    "yarn": (16, False, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "beta_fast": 32, "beta_slow": 1}),
}


@pytest.mark.parametrize("name", [*ROPES, "longrope"])
def test_packed_rope_rotates_each_record_as_alone(name):
    """Queries rotated at a packed row's positions equal each record's own rotation, for each rope mlx-lm builds.

    (Attention scores depend on relative positions only, so the model tests alone would not see absolute positions
    go wrong; the rotations themselves do.)"""
    from mlx_lm.models.rope_utils import initialize_rope

    from mlxtune.backends.mlx.longrope import LengthLongRoPE
    from mlxtune.backends.mlx.packing import PackedCache, PackedRope

    if name == "longrope":
        # original context 10: row 0's records (9, 6, 5 inputs) take the short factors, row 1's (12) the long ones
        rope = LengthLongRoPE(12, 10000.0, [1.0 + 0.1 * i for i in range(6)], [2.0 + 0.5 * i for i in range(6)], 10, 1.2)
    else:
        dims, traditional, scaling = ROPES[name]
        rope = initialize_rope(dims, 10000.0, traditional, scaling, 64)
    records = make_records(50, (10, 7, 13, 6))
    batch = pack(records, ROWS, T_ROW)
    x = mx.array(np.random.default_rng(4).normal(size=(2, 3, T_ROW, 16)).astype(np.float32))  # (B, H, T, D)
    cache = PackedCache(mx.array(batch.positions), mx.array(batch.segments))
    got = f32(PackedRope(rope)(x, offset=cache.offset))
    worst = 0.0
    for b, row in enumerate(ROWS):
        t = 0
        for i in row:
            n = len(records[i][0]) - 1
            worst = max(worst, scaled_diff(got[b, :, t : t + n], f32(rope(x[b : b + 1, :, t : t + n]))[0]))
            t += n
    assert np.array_equal(f32(PackedRope(rope)(x, offset=5)), f32(rope(x, offset=5)))  # not packed: the module itself
    print(f"\n[rope {name}] packed rotation against each record alone: {worst:.1e}")
    assert worst < 1e-6


def test_packed_records_log_probs_equal_each_record_alone(variant):
    label, model_dir = variant
    ours, theirs = adapted_pair(model_dir)
    records = make_records(ours.config.vocab_size, CASES[label])
    batch = pack(records, ROWS, T_ROW)
    logp = f32(token_log_probs(theirs, *(mx.array(a) for a in (batch.inputs, batch.targets, batch.positions, batch.segments))))
    worst = 0.0
    for b, row in enumerate(ROWS):
        t = 0
        for i in row:
            alone = unpacked([records[i]])
            expected = f32(token_log_probs(theirs, mx.array(alone.inputs), mx.array(alone.targets)))[0]
            n = len(expected)
            worst = max(worst, scaled_diff(logp[b, t : t + n], expected))
            t += n
    print(f"\n[{label}] packed log-probabilities against each record alone: {worst:.2e}")
    assert worst < TINY_LOGITS


def test_packed_loss_and_grads_equal_unpacked_batch(variant):
    """mlx packed against mlx unpacked and against the numpy reference's unpacked loss and gradients."""
    label, model_dir = variant
    ours, theirs = adapted_pair(model_dir)
    records = make_records(ours.config.vocab_size, CASES[label], seed=1)
    flat = unpacked(records)
    loss_p, n_p, grads_p = mlx_loss_and_grads(theirs, pack(records, ROWS, T_ROW))
    loss_u, n_u, grads_u = mlx_loss_and_grads(theirs, flat)
    loss_np, n_np, grads_np = ours.loss_and_grads(flat.inputs, flat.targets, flat.mask)
    assert n_p == n_u == n_np
    assert set(grads_p) == set(grads_u) == set(grads_np)
    for name, loss, grads in (("mlx unpacked", loss_u, grads_u), ("numpy unpacked", loss_np, grads_np)):
        d_loss = scaled_diff(loss_p, loss)
        d_grads = {k: grad_diff(grads_p[k], grads[k]) for k in grads}
        worst = max(d_grads, key=d_grads.get)
        print(f"\n[{label}] mlx packed vs {name}: loss {loss_p:.7f} vs {loss:.7f} ({d_loss:.2e}), {len(d_grads)} gradients, worst {d_grads[worst]:.2e} ({worst})")
        assert d_loss < LOSS
        assert d_grads[worst] < GRADS, f"{worst}: {d_grads[worst]:.2e}"


def test_packed_loss_and_grads_equal_numpy_packed(variant):
    """The mlx and the numpy backend on the same packed batch."""
    label, model_dir = variant
    ours, theirs = adapted_pair(model_dir)
    batch = pack(make_records(ours.config.vocab_size, CASES[label], seed=5), ROWS, T_ROW)
    if label == "phi3-longrope-long":  # a row within the original context (short factors) beside a row beyond it
        batch = pack(make_records(ours.config.vocab_size, (6, 8, 12, 5), seed=5), [[0, 1], [2, 3]], 16)
    loss_mx, n_mx, grads_mx = mlx_loss_and_grads(theirs, batch)
    loss_np, n_np, grads_np = ours.loss_and_grads(batch.inputs, batch.targets, batch.mask, positions=batch.positions, segments=batch.segments)
    d_loss = scaled_diff(loss_np, loss_mx)
    d_grads = {k: grad_diff(grads_np[k], grads_mx[k]) for k in grads_np}
    worst = max(d_grads, key=d_grads.get)
    print(f"\n[{label}] packed, numpy vs mlx: loss {loss_np:.7f} vs {loss_mx:.7f} ({d_loss:.2e}), worst gradient {d_grads[worst]:.2e} ({worst})")
    assert n_np == n_mx and set(grads_np) == set(grads_mx)
    assert d_loss < LOSS
    assert d_grads[worst] < GRADS, f"{worst}: {d_grads[worst]:.2e}"


def test_summed_loss_of_a_packed_batch(tiny_model):
    """The backend's summed loss (``inference``'s evaluation path) takes a packed batch: the unpacked one's sum."""
    from mlxtune.backends.mlx.backend import MlxBackend

    model = adapted_pair(tiny_model)[1]
    records = make_records(320, LENGTHS, seed=6)
    (s_p, n_p), (s_u, n_u) = (MlxBackend().summed_loss(model, b) for b in (pack(records, ROWS, T_ROW), unpacked(records)))
    assert n_p == n_u and scaled_diff(s_p, s_u) < LOSS


def test_packed_longrope_factors_chosen_per_row_by_its_longest_record(tmp_path):
    """Row 0 holds records within phi3's original context (8 positions: short factors), row 1 one beyond it (long
    factors for the whole row): each record of row 0 and the long record of row 1 equal the record alone."""
    model_dir = make_tiny_model(tmp_path / "model", **TINY_VARIANTS["phi3-longrope-long"])
    ours, theirs = adapted_pair(model_dir)
    records = make_records(ours.config.vocab_size, (6, 8, 12, 5), seed=2)
    batch = pack(records, [[0, 1], [2, 3]], 16)
    logp = f32(token_log_probs(theirs, *(mx.array(a) for a in (batch.inputs, batch.targets, batch.positions, batch.segments))))
    diffs = []
    for b, t, i in ((0, 0, 0), (0, 5, 1), (1, 0, 2)):
        alone = unpacked([records[i]])
        expected = f32(token_log_probs(theirs, mx.array(alone.inputs), mx.array(alone.targets)))[0]
        diffs.append(scaled_diff(logp[b, t : t + len(expected)], expected))
    # the short record in the long row takes the long factors: not what it would alone
    alone = unpacked([records[3]])
    short_alone = f32(token_log_probs(theirs, mx.array(alone.inputs), mx.array(alone.targets)))[0]
    moved = scaled_diff(logp[1, 11:15], short_alone)
    print(f"\n[phi3 longrope per row] {[f'{d:.1e}' for d in diffs]}; short record in the long row moved by {moved:.1e}")
    assert max(diffs) < TINY_LOGITS
    assert moved > 1e-3


@pytest.mark.parametrize("label,checkpoint", [("tied-gqa", False), ("gemma3", True), ("phi3-longrope-long", False)])
def test_trainer_steps_on_a_packed_batch_as_on_the_unpacked_one(label, checkpoint, tiny_model, tmp_path):
    """The trainer's compiled step (alone, accumulated over micro-batches, with checkpointed blocks), its
    evaluation and its log-probabilities: a packed batch gives the unpacked batch's numbers, and unpacked batches
    still train after packed ones."""
    from mlxtune.backends import open_trainer
    from mlxtune.training.config import TrainConfig

    model_dir = tiny_model if label == "tied-gqa" else make_tiny_model(tmp_path / "model", **VARIANTS[label])
    records = make_records(320, CASES[label], seed=3)
    packed, flat = pack(records, ROWS, T_ROW), unpacked(records)
    cfg = TrainConfig(rank=4, alpha=8.0, learning_rate=1e-3, iters=4, seed=0, grad_checkpoint=checkpoint)
    results = {}
    for kind, batch in (("packed", packed), ("unpacked", flat)):
        t = open_trainer("mlx", model_dir, cfg)
        start = t.adapter_weights()
        t.set_adapter_weights({k: v + (0.05 if k.endswith("lora_b") else 0.0) for k, v in start.items()})
        evaluated = t.evaluate(batch)
        logp = t.token_log_probs(batch)
        losses = [t.step(batch, 1e-3)[0], t.step([batch, batch], 1e-3)[0]]
        after = t.evaluate(flat)  # an unpacked batch after packed steps
        results[kind] = (evaluated, logp, losses, after)
    (ev_p, logp_p, losses_p, after_p), (ev_u, logp_u, losses_u, after_u) = results["packed"], results["unpacked"]
    print(f"\n[{label} trainer, checkpoint={checkpoint}] losses {losses_p} vs {losses_u}; after the steps {after_p} vs {after_u}")
    assert ev_p[1] == ev_u[1] and scaled_diff(ev_p[0], ev_u[0]) < LOSS
    by_record = [np.sort(logp[logp != 0]) for logp in (logp_p, logp_u)]
    assert scaled_diff(*by_record) < TINY_LOGITS
    assert max(scaled_diff(a, b) for a, b in zip(losses_p, losses_u)) < LOSS
    assert after_p[1] == after_u[1] and scaled_diff(after_p[0] / after_p[1], after_u[0] / after_u[1]) < LOSS


def test_a_packed_run_on_mlx(tiny_model, tmp_path):
    """``--pack`` through the training loop on mlx: the packed rows' fewer steps, the same trained tokens, and the
    first step's loss (adapters still the identity: lora_b = 0) equal to the numpy backend's on the same packed batch."""
    import json

    from mlxtune.training.config import TrainConfig
    from mlxtune.training.train import train

    data = tmp_path / "short.jsonl"
    rng = np.random.default_rng(0)
    words = "the a of to in is it on at by".split()
    data.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, rng.integers(2, 8)))}) + "\n" for _ in range(40)))

    def run(name, backend, pack):
        cfg = TrainConfig(model=str(tiny_model), data=str(data), output=str(tmp_path / name), backend=backend, epochs=1.0, batch_size=2,
                          max_seq_len=64, val_every=2, save_every=100, learning_rate=5e-3, pack=pack)
        result = train(cfg)
        metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return result, [m["loss"] for m in metrics if "loss" in m], [m["val_loss"] for m in metrics if m.get("val_loss") is not None]

    unpacked, _, _ = run("unpacked", "mlx", False)
    packed, losses, val = run("packed", "mlx", True)
    _, losses_np, _ = run("numpy", "numpy", True)
    print(f"\n[packed run] mlx {packed.steps} steps (unpacked {unpacked.steps}), losses {losses}, validation {val}; numpy first loss {losses_np[0]}")
    assert packed.steps <= unpacked.steps / 3 and packed.trained_tokens == unpacked.trained_tokens
    assert all(np.isfinite(losses + val)) and val
    assert scaled_diff(losses[0], losses_np[0]) < LOSS


def test_a_rope_that_depends_on_the_length_is_refused(tmp_path):
    """Dynamic NTK scaling takes its base from the sequence's length: a packed row cannot give each record its own,
    so a packed batch is refused with what to do (an unpacked one still trains)."""
    from mlxtune.backends.mlx.trainer import load_model
    from mlxtune.errors import UnsupportedModelError

    model_dir = make_tiny_model(tmp_path / "model", rope_scaling={"type": "dynamic", "factor": 2.0}, max_position_embeddings=16)
    model = load_model(model_dir)[0]
    records = make_records(320, LENGTHS, seed=7)
    flat, packed = unpacked(records), pack(records, ROWS, T_ROW)
    assert np.isfinite(f32(token_log_probs(model, mx.array(flat.inputs), mx.array(flat.targets)))).all()
    with pytest.raises(UnsupportedModelError, match="train without --pack"):
        token_log_probs(model, *(mx.array(a) for a in (packed.inputs, packed.targets, packed.positions, packed.segments)))


@pytest.mark.e2e
def test_smollm2_packed_chat_records_equal_unpacked(smollm2_dir):
    """SmolLM2-135M (30 blocks), LoRA on every linear layer: three chat records packed into one row give the loss and
    gradients of the same records as an unpacked batch (mlx both times: the mask and the positions, at scale)."""
    from mlxtune.runtime import choose_compute

    batch = smollm2_batch(smollm2_dir, n_records=3, max_seq_len=128)
    records = [(np.append(batch.inputs[b, :n], batch.targets[b, n - 1]), np.append(False, batch.mask[b, :n] > 0)) for b, n in enumerate(batch.lengths)]
    T = -(-sum(len(tokens) - 1 for tokens, _ in records) // 8) * 8
    theirs = adapted_pair(smollm2_dir, compute=choose_compute("cpu"), rank=8, scale=2.0, b_std=0.02)[1]
    loss_p, n_p, grads_p = mlx_loss_and_grads(theirs, pack(records, [list(range(len(records)))], T))
    loss_u, n_u, grads_u = mlx_loss_and_grads(theirs, unpacked(records))
    d_grads = {k: grad_diff(grads_p[k], grads_u[k]) for k in grads_u}
    worst = max(d_grads, key=d_grads.get)
    print(f"\n[smollm2 packed] one row of {T}: loss {loss_p:.7f} vs {loss_u:.7f}, {len(d_grads)} gradients, worst {d_grads[worst]:.2e} ({worst})")
    assert n_p == n_u and scaled_diff(loss_p, loss_u) < SMOL_LOSS
    assert d_grads[worst] < SMOL_GRADS
