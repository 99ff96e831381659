"""Both backends against the golden values the numpy reference wrote (tests/make_golden.py)."""

import json
from pathlib import Path

import numpy as np
import pytest

from make_golden import SETTINGS, run_steps, train_config, write_model_dir
from mlxtune.formats import safetensors as npio
from tolerances import GRADS, LOSS, TEN_STEPS, TINY_LOGITS, grad_diff, scaled_diff

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture(scope="module")
def golden():
    arrays, _ = npio.read_safetensors(GOLDEN / "tiny.safetensors")
    meta = json.loads((GOLDEN / "tiny.json").read_text())
    inputs = {
        "config": meta["config"],
        "keys": meta["keys"],
        "weights": {k[len("weight/"):]: v for k, v in arrays.items() if k.startswith("weight/")},
        "lora": {k[len("lora/"):]: v for k, v in arrays.items() if k.startswith("lora/")},
        "batches": [tuple(arrays[f"batch{i}/{p}"] for p in ("inputs", "targets", "mask")) for i in range(2)],
    }
    expected = {"logits": arrays["expected/logits"], "grads": {k[len("expected/grad/"):]: v for k, v in arrays.items() if k.startswith("expected/grad/")}}
    return inputs, expected, meta


def _numpy_forward(inputs):
    from mlxtune.backends.numpy.model import ModelConfig, NumpyLlama

    model = NumpyLlama(ModelConfig.from_dict(inputs["config"]), inputs["weights"])
    model.add_lora(-1, inputs["keys"], SETTINGS["rank"], SETTINGS["alpha"] / SETTINGS["rank"], np.random.default_rng(0))
    model.set_lora_params(inputs["lora"])
    x, y, m = inputs["batches"][0]
    loss, n, grads = model.loss_and_grads(x, y, m)
    return model.forward(x), loss, n, grads


def _mlx_forward(inputs, tmp_path):
    mx = pytest.importorskip("mlx.core")
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from mlxtune.backends.mlx.trainer import load_model, loss_fn
    from mlxtune.backends.mlx.lora import apply_adapters, trainable_only

    model, _ = load_model(write_model_dir(inputs, tmp_path / "m"))
    apply_adapters(model, -1, inputs["keys"], SETTINGS["rank"], SETTINGS["alpha"] / SETTINGS["rank"])
    model.load_weights([(k, mx.array(v)) for k, v in inputs["lora"].items()], strict=False)
    trainable_only(model)
    x, y, m = (mx.array(a) for a in inputs["batches"][0])
    (loss, n), grads = nn.value_and_grad(model, loss_fn)(model, x, y, m)
    return np.array(model(x)), loss.item(), n.item(), {k: np.array(v) for k, v in tree_flatten(grads)}


@pytest.mark.parametrize("which", ["numpy", "mlx"])
def test_logits_loss_and_gradients(golden, tmp_path, which):
    inputs, expected, meta = golden
    logits, loss, n, grads = _numpy_forward(inputs) if which == "numpy" else _mlx_forward(inputs, tmp_path)
    assert n == meta["n_tokens"]
    d_logits, d_loss = scaled_diff(logits, expected["logits"]), abs(loss - meta["loss"]) / max(1.0, abs(meta["loss"]))
    worst = max((grad_diff(grads[k], v), k) for k, v in expected["grads"].items())
    print(f"\n{which} vs golden: logits {d_logits:.1e}, loss {d_loss:.1e}, gradients worst {worst[0]:.1e} ({worst[1]})")
    assert set(grads) == set(expected["grads"])
    assert d_logits < TINY_LOGITS and d_loss < LOSS and worst[0] < GRADS


def test_ten_adamw_steps(golden, tmp_path, backend):
    from mlxtune.backends import open_trainer

    inputs, _, meta = golden
    trainer = open_trainer(backend, write_model_dir(inputs, tmp_path / "m"), train_config(backend))
    losses = run_steps(trainer, inputs)
    diffs = [abs(a - b) / max(1.0, abs(b)) for a, b in zip(losses, meta["step_losses"])]
    print(f"\n{backend} ten-step losses vs golden: worst {max(diffs):.1e}; {[round(v, 4) for v in losses]}")
    assert losses[-1] < losses[0] / 2  # the golden run learns
    assert max(diffs) < TEN_STEPS
