"""Regenerate tests/golden/tiny.{safetensors,json} from the numpy reference.

    python tests/make_golden.py

The golden file pins what the reference computes for one tiny model: logits,
loss and every LoRA gradient on a fixed batch, and the losses of ten AdamW
steps through the trainer (schedule, clipping and all). tests/test_golden.py
holds both backends to it. Regenerate only when the reference is meant to
change, and say why in the commit.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from tiny import tiny_config, tiny_weights  # noqa: E402

GOLDEN = HERE / "golden"
VOCAB = 96
SETTINGS = {"rank": 4, "alpha": 8.0, "learning_rate": 1e-2, "warmup": 2, "min_lr_ratio": 0.1, "grad_clip": 1.0, "iters": 10, "seed": 0}


def golden_inputs() -> dict:
    """Weights, adapter values and batches: everything a backend needs, drawn once."""
    config = tiny_config(VOCAB, num_hidden_layers=2)
    weights = tiny_weights(config, seed=7)
    rng = np.random.default_rng(11)
    keys = ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]
    lora = {}
    for i in range(config["num_hidden_layers"]):
        for k in keys:
            w = weights[f"model.layers.{i}.{k}.weight"]
            out_dim, in_dim = w.shape
            lora[f"model.layers.{i}.{k}.lora_a"] = rng.uniform(-1 / np.sqrt(in_dim), 1 / np.sqrt(in_dim), (in_dim, SETTINGS["rank"])).astype(np.float32)
            lora[f"model.layers.{i}.{k}.lora_b"] = (0.05 * rng.normal(size=(SETTINGS["rank"], out_dim))).astype(np.float32)
    batches = []
    for b in range(2):
        inputs = rng.integers(3, VOCAB, (2, 12)).astype(np.int32)
        targets = np.roll(inputs, -1, axis=1).astype(np.int32)
        mask = np.ones((2, 12), dtype=np.float32)
        mask[0, :4] = 0  # a masked prompt
        mask[1, 9:] = 0  # padding at the end
        batches.append((inputs, targets, mask))
    return {"config": config, "weights": weights, "lora": lora, "keys": keys, "batches": batches}


def write_model_dir(inputs: dict, out: Path) -> Path:
    from mlxtune.formats import safetensors as npio

    out.mkdir(parents=True, exist_ok=True)
    npio.write_safetensors(out / "model.safetensors", inputs["weights"])
    (out / "config.json").write_text(json.dumps(inputs["config"]))
    return out


def train_config(backend: str):
    from mlxtune.training.config import TrainConfig

    s = SETTINGS
    return TrainConfig(backend=backend, rank=s["rank"], alpha=s["alpha"], learning_rate=s["learning_rate"], warmup=s["warmup"], min_lr_ratio=s["min_lr_ratio"], grad_clip=s["grad_clip"], iters=s["iters"], seed=s["seed"], target_modules=["all-linear"])


class _Batch:
    def __init__(self, inputs, targets, mask):
        self.inputs, self.targets, self.mask = inputs, targets, mask
        self.n_tokens = int(mask.sum())


def run_steps(trainer, inputs: dict) -> list[float]:
    """Ten optimizer steps on alternating batches from the golden adapter values."""
    from mlxtune.training.train import learning_rate_at

    cfg = train_config(trainer.backend)
    trainer.set_adapter_weights(inputs["lora"])
    losses = []
    for step in range(1, SETTINGS["iters"] + 1):
        losses.append(trainer.step(_Batch(*inputs["batches"][(step - 1) % 2]), learning_rate_at(cfg, step, SETTINGS["iters"]))[0])
    return losses


def main() -> None:
    from mlxtune.formats import safetensors as npio
    from mlxtune.backends.numpy.trainer import NumpyTrainer
    from mlxtune.backends.numpy.model import ModelConfig, NumpyLlama

    inputs = golden_inputs()
    model = NumpyLlama(ModelConfig.from_dict(inputs["config"]), inputs["weights"])
    model.add_lora(-1, inputs["keys"], SETTINGS["rank"], SETTINGS["alpha"] / SETTINGS["rank"], np.random.default_rng(0))
    model.set_lora_params(inputs["lora"])
    x, y, m = inputs["batches"][0]
    logits = model.forward(x)
    loss, n, grads = model.loss_and_grads(x, y, m)
    with tempfile.TemporaryDirectory() as d:
        losses = run_steps(NumpyTrainer(write_model_dir(inputs, Path(d)), train_config("numpy")), inputs)
    arrays = {f"weight/{k}": v for k, v in inputs["weights"].items()}
    arrays.update({f"lora/{k}": v for k, v in inputs["lora"].items()})
    for i, (bx, by, bm) in enumerate(inputs["batches"]):
        arrays.update({f"batch{i}/inputs": bx, f"batch{i}/targets": by, f"batch{i}/mask": bm})
    arrays["expected/logits"] = logits.astype(np.float32)
    arrays.update({f"expected/grad/{k}": v.astype(np.float32) for k, v in grads.items()})
    GOLDEN.mkdir(exist_ok=True)
    npio.write_safetensors(GOLDEN / "tiny.safetensors", arrays)
    meta = {"config": inputs["config"], "keys": inputs["keys"], "settings": SETTINGS, "loss": float(loss), "n_tokens": float(n), "step_losses": [float(v) for v in losses], "made_by": "tests/make_golden.py (numpy reference backend)"}
    (GOLDEN / "tiny.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {GOLDEN}/tiny.safetensors and tiny.json: loss {loss:.6f}, ten-step losses {[round(v, 4) for v in losses]}")


if __name__ == "__main__":
    main()
