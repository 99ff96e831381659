"""The training objective as a plug-in (mlxtune/training/objectives.py).

A sequence-level loss, written against the objective protocol only, trains on
both backends with no change to them: its gradients match finite differences
on the numpy reference (which takes its two-pass head for it) and mlx's
autodiff, and ``TrainConfig.objective`` picks it for the trainer.
"""

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import needs_mlx
from mlxtune.training import objectives
from mlxtune.cli import cli
from mlxtune.training.config import TrainConfig
from test_numpy_model import batch, numerical_grad, rel_err, small_model
from tolerances import GRAD_CHECK, GRADS, LOSS, grad_diff, scaled_diff


class SequenceMargin:
    """mean over rows of softplus(-beta * s_b), s_b = sum_t mask * logp: the shape of DPO's loss.

    A function of each sequence's summed log-probability, so its gradient
    depends on the log-probabilities (``token_grad`` None).
    """

    name = "test-sequence-margin"
    beta = 0.5

    def arrays(self, batch):
        return (np.asarray(batch.mask, dtype=np.float32),)

    def scored(self, mask):
        return mask

    def _sums(self, logp, mask):
        B, T = mask.shape
        s = np.zeros(B)
        np.add.at(s, logp.rows // T, logp.values() * mask.reshape(-1)[logp.rows])
        return s

    def numpy_loss(self, logp, mask):
        s = self._sums(logp, mask)
        return float(np.mean(np.logaddexp(0.0, -self.beta * s))), float(mask.sum())

    def token_grad(self, dtype, mask):
        return None

    def numpy_grad(self, logp, mask):
        B, T = mask.shape
        s = self._sums(logp, mask)
        per_row = -self.beta / (1.0 + np.exp(self.beta * s)) / B  # d mean softplus(-beta s) / d s
        return (per_row[logp.rows // T] * mask.reshape(-1)[logp.rows]).astype(logp.dtype)

    def mlx_loss(self, logp, mask):
        import mlx.core as mx

        s = (logp * mask).sum(axis=1)  # (B,)
        return mx.logaddexp(mx.zeros_like(s), -self.beta * s).mean(), mask.sum()


class Batch:
    def __init__(self, inputs, targets, mask):
        self.inputs, self.targets, self.mask = inputs, targets, mask


def test_a_sequence_objective_gets_exact_gradients_from_the_numpy_head():
    model, objective = small_model(), SequenceMargin()
    inputs, targets, mask = batch()
    loss, n, grads = model.loss_and_grads(inputs, targets, mask, objective=objective)
    assert n == mask.sum() and loss == pytest.approx(model.loss(inputs, targets, mask, objective=objective)[0], rel=1e-12)
    assert loss != pytest.approx(model.loss(inputs, targets, mask)[0], rel=1e-3)  # not cross-entropy under another name
    worst = 0.0
    for key, p in model.lora_params().items():
        numeric = numerical_grad(lambda: model.loss(inputs, targets, mask, objective=objective)[0], p)
        worst = max(worst, rel_err(grads[key], numeric))
    print(f"sequence objective: worst relative error {worst:.1e}")
    assert worst < GRAD_CHECK


def test_cross_entropy_is_the_default_objective():
    assert objectives.get(None) is objectives.CROSS_ENTROPY is objectives.get("cross-entropy")
    assert TrainConfig().objective == "cross-entropy"
    model = small_model()
    inputs, targets, mask = batch()
    default = model.loss_and_grads(inputs, targets, mask)
    explicit = model.loss_and_grads(inputs, targets, mask, objective=objectives.CROSS_ENTROPY)
    assert default[:2] == explicit[:2]
    assert all(np.array_equal(default[2][k], explicit[2][k]) for k in default[2])


@needs_mlx
def test_a_sequence_objective_agrees_across_backends(tiny_model):
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlxtune.backends.mlx.trainer import loss_fn
    from test_parity import adapted_pair, tiny_batch

    objective = SequenceMargin()
    ours, theirs = adapted_pair(tiny_model)
    inputs, targets, mask = tiny_batch(ours.config.vocab_size)
    loss_np, n_np, grads_np = ours.loss_and_grads(inputs, targets, mask, objective=objective)
    fn = lambda model, *args: loss_fn(model, *args, objective=objective)  # noqa: E731
    (loss_mx, n_mx), grads_mx = nn.value_and_grad(theirs, fn)(theirs, mx.array(inputs), mx.array(targets), mx.array(mask))
    assert n_np == n_mx.item()
    assert scaled_diff(loss_np, loss_mx.item()) < LOSS
    worst = max(grad_diff(grads_np[k], np.array(v)) for k, v in tree_flatten(grads_mx))
    print(f"sequence objective numpy vs mlx: loss {loss_np:.6f} vs {loss_mx.item():.6f}, gradients worst {worst:.1e}")
    assert worst < GRADS


def test_the_trainer_uses_the_configured_objective(tiny_model, backend, monkeypatch):
    from mlxtune.backends import open_trainer

    objective = SequenceMargin()
    monkeypatch.setitem(objectives.OBJECTIVES, objective.name, objective)
    trainer = open_trainer(backend, tiny_model, TrainConfig(backend=backend, objective=objective.name, rank=4, learning_rate=1e-2))
    assert trainer.objective is objective
    inputs, targets, mask = batch(vocab=200, B=3, T=12)
    b = Batch(inputs, targets, mask)
    before, n = trainer.evaluate(b)
    loss, n_step = trainer.step(b, 1e-2)
    assert n_step == n == mask.sum()
    assert loss == pytest.approx(before / n, rel=1e-5)  # the step's loss is the objective's, before the update
    assert trainer.evaluate(b)[0] < before  # and the update lowers it


def test_an_unknown_objective_in_a_config_file_is_a_config_error(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("objective: nope\n")
    result = CliRunner().invoke(cli, ["lora", "-c", str(cfg), "--data", str(tmp_path / "none.jsonl")])
    assert result.exit_code != 0
    assert "key 'objective' must be cross-entropy, not 'nope'" in result.output


def test_token_log_probs_read_what_the_loss_reads(tiny_model, backend):
    """The per-token readout a preference objective's reference needs: -sum(logp * mask) / n is the validation loss."""
    from mlxtune.backends import open_trainer

    trainer = open_trainer(backend, tiny_model, TrainConfig(backend=backend, rank=4))
    inputs, targets, mask = batch(vocab=200, B=3, T=12)
    b = Batch(inputs, targets, mask)
    logp = trainer.token_log_probs(b)
    summed, n = trainer.evaluate(b)
    assert logp.shape == mask.shape and np.all(logp[mask == 0] == 0) and np.all(logp[mask != 0] < 0)
    assert -float(np.sum(logp * mask)) == pytest.approx(summed, rel=1e-5)
