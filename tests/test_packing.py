"""Packing (issue 17, acceptance 2 on the numpy side): several records per row, each attending to itself only.

The promise: a packed batch is the same computation as its records unpacked.
Each record's per-token log-probabilities, loss and LoRA gradients in a packed
row equal those of the record alone, and the loss and every LoRA gradient of a
packed batch equal those of the same records as one unpacked batch (float32,
``tolerances.py``),
on the llama layout and on the families with attention of their own (Qwen3's
q/k norms, SmolLM3's layers without rope, Gemma 3's sliding windows, Phi-3's
partial rotary with LongRoPE on either side of its original context), with
and without gradient checkpointing. The rows themselves: every record in
exactly one row of at most max_seq_len input tokens, the same order for a
seed, a resumed run's batches the same as an uninterrupted one's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlxtune.backends.numpy.model import load_model
from mlxtune.data.batching import Example, batch_rows, epoch_steps, iterate_batches, make_batch, make_packed_batch, pack_rows
from tiny import make_tiny_model
from tolerances import GRADS, LOSS, grad_diff, scaled_diff

PHI3 = {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "partial_rotary_factor": 0.75, "rope_scaling": {
    "type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(6)], "long_factor": [2.0 + 0.5 * i for i in range(6)]}}
VARIANTS = {  # as tests/test_parity.py's TINY_VARIANTS
    "llama": {},
    "qwen3-qk-norm": {"model_type": "qwen3", "head_dim": 24},
    "smollm3-nope": {"model_type": "smollm3", "no_rope_layers": [1, 0]},
    "gemma3": {"model_type": "gemma3_text", "query_pre_attn_scalar": 24, "sliding_window": 4, "sliding_window_pattern": 2,
               "rope_local_base_freq": 1000.0, "rope_theta": 100000.0},
    # each record and each row within LongRoPE's original context (24: the short factors), or all beyond it (8: the long)
    "phi3-longrope-short": {**PHI3, "original_max_position_embeddings": 24},
    "phi3-longrope-long": {**PHI3, "original_max_position_embeddings": 8},
}
LENGTHS = (17, 10, 13, 11)  # tokens of the four records: 16, 9, 12 and 10 input positions


@pytest.fixture(scope="module", params=list(VARIANTS))
def adapted(request, tmp_path_factory):
    """(label, a NumpyLlama of the variant with LoRA on every linear layer, lora_b non-zero)."""
    model = load_model(make_tiny_model(tmp_path_factory.mktemp(request.param) / "model", **VARIANTS[request.param]))[0]
    model.add_lora(-1, list(model.linear_keys), 4, 2.0, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for key, p in model.lora_params().items():
        if key.endswith("lora_b"):
            p[...] = 0.05 * rng.normal(size=p.shape)
    return request.param, model


def records(vocab: int, lengths=LENGTHS, seed: int = 2) -> list[Example]:
    """Random records, the first third of each prompt (not trained)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        mask = np.ones(n, dtype=bool)
        mask[: n // 3] = False
        out.append(Example(rng.integers(0, vocab, n).astype(np.int32), mask))
    return out


def log_probs(model, batch) -> np.ndarray:
    """(B, T) log p of every real position's target."""
    scored = np.arange(batch.inputs.shape[1])[None, :] < batch.lengths[:, None]
    return model.token_log_probs(batch.inputs, batch.targets, scored, batch.positions, batch.segments).dense(scored.shape)


def test_each_record_in_a_packed_row_is_scored_as_alone(adapted):
    label, model = adapted
    examples = records(model.config.vocab_size)
    packed = make_packed_batch([examples])  # one row of 47 input positions
    lp = log_probs(model, packed)[0]
    start = 0
    for e in examples:
        alone = log_probs(model, make_batch([e]))[0, : len(e) - 1]
        d = scaled_diff(lp[start : start + len(e) - 1], alone)
        print(f"[{label}] record of {len(e)} tokens: {d:.1e}")
        assert d < LOSS
        start += len(e) - 1
    # the mask is what makes it so: the same row attended as one sequence scores the later records otherwise
    whole = model.token_log_probs(packed.inputs, packed.targets, packed.mask > -1).dense(packed.inputs.shape)[0]
    assert scaled_diff(whole[len(examples[0]) - 1 : 47], lp[len(examples[0]) - 1 : 47]) > 100 * LOSS


def test_each_records_loss_and_gradients_in_a_packed_row_are_its_own(adapted):
    """The mask of one record of a packed row: the loss and LoRA gradients of that record alone, unpacked."""
    label, model = adapted
    examples = records(model.config.vocab_size)
    packed = make_packed_batch([examples])
    for j, e in enumerate(examples, start=1):
        alone = make_batch([e])
        loss_a, n_a, grads_a = model.loss_and_grads(alone.inputs, alone.targets, alone.mask)
        mask = np.where(packed.segments == j, packed.mask, 0.0).astype(np.float32)  # (1, T) this record's targets only
        loss_p, n_p, grads_p = model.loss_and_grads(packed.inputs, packed.targets, mask, positions=packed.positions, segments=packed.segments)
        worst = max(grad_diff(grads_p[k], grads_a[k]) for k in grads_a)
        print(f"[{label}] record {j} ({len(e)} tokens): loss {loss_p:.7f} vs {loss_a:.7f}, worst gradient {worst:.1e}")
        assert n_p == n_a == e.loss_mask[1:].sum()
        assert scaled_diff(loss_p, loss_a) < LOSS and worst < GRADS


@pytest.mark.parametrize("checkpointed", [False, True])
def test_packed_loss_and_gradients_equal_the_unpacked_batch(adapted, checkpointed):
    """Two packed rows against four unpacked: the same loss, trained-token count and LoRA gradients."""
    label, model = adapted
    examples = records(model.config.vocab_size)
    unpacked = make_batch(examples)
    packed = make_packed_batch([examples[:2], examples[2:]])
    assert packed.n_tokens == unpacked.n_tokens and packed.lengths.sum() == unpacked.lengths.sum()
    loss_u, n_u, grads_u = model.loss_and_grads(unpacked.inputs, unpacked.targets, unpacked.mask)
    model.activation_budget = 0 if checkpointed else None  # 0: every block checkpointed (recomputed in the backward)
    try:
        assert model.activation_plan(*packed.inputs.shape)[1] == (2 if checkpointed else 0)
        loss_p, n_p, grads_p = model.loss_and_grads(packed.inputs, packed.targets, packed.mask, positions=packed.positions, segments=packed.segments)
    finally:
        model.activation_budget = None
    worst = max(grad_diff(grads_p[k], grads_u[k]) for k in grads_u)
    print(f"[{label}{', checkpointed' if checkpointed else ''}] loss {loss_p:.7f} vs {loss_u:.7f}; worst gradient {worst:.1e}")
    assert n_p == n_u and set(grads_p) == set(grads_u)
    assert scaled_diff(loss_p, loss_u) < LOSS
    assert worst < GRADS
    assert model.loss(packed.inputs, packed.targets, packed.mask, positions=packed.positions, segments=packed.segments) == pytest.approx((loss_p, n_p), rel=1e-6)


# ------------------------------------------------------------------ the rows


def examples_of(lengths, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    return [Example(rng.integers(3, 100, n).astype(np.int32), np.arange(n) > 0) for n in lengths]


def test_pack_rows_puts_every_record_in_one_row_within_the_capacity():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 64, size=500)
    rows = pack_rows(lengths, 256)
    assert sorted(np.concatenate(rows).tolist()) == list(range(500))
    fill = [int((lengths[r] - 1).sum()) for r in rows]
    assert max(fill) <= 256
    assert len(rows) == -(-int((lengths - 1).sum()) // 256)  # short records pack without a row wasted
    # another order of equal lengths moves records between rows, never changes how many rows there are
    other = pack_rows(lengths, 256, rng.permutation(500))
    assert len(other) == len(rows) and any(not np.array_equal(a, b) for a, b in zip(rows, other))
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([300], 256)


def test_a_packed_batch_keeps_each_records_pairs_positions_and_segment():
    a, b, c = examples_of([5, 3, 9])
    a.loss_mask[:3] = False
    batch = make_packed_batch([[a, b], [c]], pad_multiple=8)
    assert batch.inputs.shape == (2, 8) and batch.lengths.tolist() == [6, 8]
    assert batch.inputs[0, :6].tolist() == a.tokens[:-1].tolist() + b.tokens[:-1].tolist()
    assert batch.targets[0, :6].tolist() == a.tokens[1:].tolist() + b.tokens[1:].tolist()  # no target crosses into the next record
    assert batch.mask[0].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    assert batch.positions.tolist() == [[0, 1, 2, 3, 0, 1, 0, 0], list(range(8))]
    assert batch.segments.tolist() == [[1, 1, 1, 1, 2, 2, 0, 0], [1] * 8]
    assert batch.n_tokens == int(batch.mask.sum()) == 2 + 2 + 8
    assert make_batch([a, b]).positions is None and make_batch([a, b]).segments is None  # unpacked batches as before


def test_packed_epochs_cover_every_record_once_and_resume_where_they_stopped():
    lengths = np.random.default_rng(3).integers(2, 40, size=90)
    examples = examples_of(lengths)
    rows = batch_rows(examples, 64)
    it = iterate_batches(examples, 4, seed=7, loop=True, pack=64)
    assert it.rows == rows < len(examples) and it.steps_per_epoch == epoch_steps(rows, 4)
    epoch = [next(it) for _ in range(it.steps_per_epoch)]
    assert sum(len(b.lengths) for b in epoch) == rows and max(b.inputs.shape[1] for b in epoch) <= 64
    assert sum(int(b.lengths.sum()) for b in epoch) == int((lengths - 1).sum())  # the loop's "seen tokens"
    seen = sorted(int(s) for b in epoch for s in b.segments.max(axis=1))
    assert sum(seen) == len(examples)  # every record in exactly one row
    # the same seed: the same batches; a resumed iterator (skip) picks up where the first stopped, into the next epoch
    again = iterate_batches(examples, 4, seed=7, loop=True, pack=64)
    again.skip(3)
    first = iterate_batches(examples, 4, seed=7, loop=True, pack=64)
    expected = [next(first) for _ in range(3 + it.steps_per_epoch)][3:]
    for b, e in zip([next(again) for _ in range(it.steps_per_epoch)], expected):
        assert np.array_equal(b.inputs, e.inputs) and np.array_equal(b.segments, e.segments)
    # the next epoch packs other records together
    assert not all(np.array_equal(b.inputs, e.inputs) for b, e in zip([next(it) for _ in range(it.steps_per_epoch)], epoch))


def test_distributed_ranks_share_the_rows_of_each_packed_batch():
    examples = examples_of(np.random.default_rng(4).integers(2, 30, size=40))
    whole = iterate_batches(examples, 4, seed=1, loop=False, pack=48)
    ranks = [iterate_batches(examples, 4, seed=1, loop=False, shard=(r, 2), pack=48) for r in range(2)]
    for batch in whole:
        parts = [next(r) for r in ranks]
        got = sorted(tuple(row) for p in parts if p is not None for row in p.inputs[:, :8].tolist())
        assert got == sorted(tuple(row) for row in batch.inputs[:, :8].tolist())


# ------------------------------------------------------------------ a run


def losses(run) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in m}


def test_a_packed_run_trains_fewer_steps_and_resume_keeps_packing(tiny_model, tmp_path):
    """--pack on the numpy backend: one epoch of 40 short records takes the packed rows' steps, validates to the
    unpacked loss, the run's config records pack, and a resumed run replays the same packed batches."""
    from mlxtune.training.config import TrainConfig
    from mlxtune.training.train import TrainingInterrupted, resume, train

    data = tmp_path / "short.jsonl"
    rng = np.random.default_rng(0)
    words = "the a of to in is it on at by".split()
    data.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, rng.integers(2, 8)))}) + "\n" for _ in range(40)))

    def cfg(out, **kw):
        return TrainConfig(model=str(tiny_model), data=str(data), output=str(out), backend="numpy", epochs=1.0, batch_size=2, max_seq_len=64,
                           val_every=100, save_every=2, learning_rate=5e-3, **kw)

    unpacked = train(cfg(tmp_path / "unpacked"))
    events = []
    packed = train(cfg(tmp_path / "packed", pack=True), on_event=events.append)
    assert packed.steps <= unpacked.steps / 3
    assert any("--pack" in e.data.get("message", "") for e in events if e.kind == "note")
    assert json.loads((tmp_path / "packed" / "adapter_config.json").read_text())["config"]["pack"] is True
    assert packed.trained_tokens == unpacked.trained_tokens  # the same records, trained once each
    # validation is packed too: before training (the same adapters) its loss is the unpacked one
    assert packed.initial_val_loss == pytest.approx(unpacked.initial_val_loss, rel=1e-6)

    import os
    import signal

    def stop_at_2(event):
        if event.kind == "step" and event.data["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted):
        train(cfg(run, pack=True), on_event=stop_at_2)
    resumed = resume(run)
    assert resumed.steps == packed.steps and resumed.config.pack is True
    assert losses(run) == losses(tmp_path / "packed")


def test_the_plan_of_a_packed_run_is_rows_of_max_seq_len():
    from mlxtune.training.memory import batch_seq_len

    assert batch_seq_len([20, 30, 12], 512) == 32  # unpacked: the longest record
    assert batch_seq_len([20, 30, 12], 512, pack=True) == 64  # packed: the records' 59 inputs in one row
    assert batch_seq_len([200] * 10, 512, pack=True) == 512 and batch_seq_len(None, 512, pack=True) == 512


def test_plan_command_plans_packed_rows(tiny_model, tmp_path):
    from click.testing import CliRunner

    from mlxtune.cli import cli

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": "hello world " * n}) + "\n" for n in (1, 3, 10, 2, 4, 5, 6, 7, 8, 9) * 4))
    seq_len = {}
    for flag in ("--no-pack", "--pack"):
        r = CliRunner().invoke(cli, ["plan", "--model", str(tiny_model), "--data", str(data), "--backend", "numpy", "--max-seq-len", "256", flag, "--json"])
        assert r.exit_code == 0, r.output
        seq_len[flag] = json.loads(r.output)["estimate"]["seq_len"]
    assert seq_len["--no-pack"] < seq_len["--pack"] == 256  # the longest record's, then whole rows of --max-seq-len


def test_pack_is_a_yes_or_no_setting_off_by_default(tmp_path):
    from mlxtune.errors import ConfigError
    from mlxtune.training.config import TrainConfig, build, load_yaml

    assert TrainConfig().pack is False
    (tmp_path / "c.yaml").write_text("pack: true\nmax_seq_len: 512\n")
    assert build(load_yaml(tmp_path / "c.yaml"), {"pack": None}).pack is True
    assert build(load_yaml(tmp_path / "c.yaml"), {"pack": False}).pack is False  # a flag wins over the file
    (tmp_path / "bad.yaml").write_text("pack: yes please\n")
    with pytest.raises(ConfigError, match="bad.yaml: key 'pack' must be true or false"):
        load_yaml(tmp_path / "bad.yaml")
