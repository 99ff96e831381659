"""The peers mlxtune is measured against, for bench/bench_train.py.

* ``mlx_lm.lora``, run through its own command line (``mlx_lm.lora.main``) in a
  child process: as installed (the mlx[cpu] wheel's bundled reference BLAS,
  float16 weights) and at its best (float32 weights, OpenBLAS preloaded with
  LD_PRELOAD). The only addition is a training callback that prints mlx_lm's
  own per-step figures (``iterations_per_second``, ``trained_tokens``) at full
  precision, since its console rounds tokens/s to an integer.
* PyTorch CPU + PEFT LoRA, float32 and bfloat16 autocast, with a plain
  training loop written here (AdamW, the same batches as every other system).

Every child prints one ``BENCH {json}`` line per step (``step``, ``seconds``,
``trained``, ``loss``) as soon as the step has finished, and a last
``BENCH_RESULT {json}``; the parent timestamps the lines (time to first step)
and takes the peak resident set from the child's rusage.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

LORA_KEYS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MLX_LM_KEYS = [f"self_attn.{k}" for k in LORA_KEYS[:4]] + [f"mlp.{k}" for k in LORA_KEYS[4:]]


def emit(tag: str, payload: dict) -> None:
    print(f"{tag} {json.dumps(payload)}", flush=True)


# ------------------------------------------------------------------ mlx_lm.lora


def mlx_lm_files(work: Path, name: str, batches: list[list[str]], rank: int, alpha: float, seed: int = 0) -> tuple[Path, Path, Path]:
    """Data directory, YAML config and adapter directory for one mlx_lm.lora run.

    ``batches`` are the texts of the batches the run should train on, in the
    order the other systems see them. mlx_lm chunks its training set into
    consecutive batches (its sort "by length" compares the raw records, which
    for text data all have length 1, so the file order stands) and visits the
    chunks in the order of ``np.random.permutation`` after ``np.random.seed(seed)``;
    the file is laid out so that this order is ours. (If a later mlx_lm
    changes either, it still trains on the same batches, in another order; the
    per-step token counts in the output show which.) No valid.jsonl: mlx_lm
    then skips validation, which the other systems do not do either.
    """
    import numpy as np

    run = work / name
    data = run / "data"
    data.mkdir(parents=True, exist_ok=True)
    perm = np.random.RandomState(seed).permutation(len(batches))
    chunks: list = [None] * len(batches)
    for k, chunk in enumerate(perm):
        chunks[chunk] = batches[k]
    with open(data / "train.jsonl", "w") as f:
        for chunk in chunks:
            for text in chunk:
                f.write(json.dumps({"text": text}) + "\n")
    (data / "valid.jsonl").unlink(missing_ok=True)
    config = run / "lora.yaml"
    config.write_text(
        "lora_parameters:\n"
        f"  rank: {rank}\n  scale: {alpha / rank}\n  dropout: 0.0\n"
        f"  keys: [{', '.join(MLX_LM_KEYS)}]\n"
    )
    return data, config, run / "adapters"


def mlx_lm_args(model: Path, data: Path, config: Path, adapters: Path, steps: int, batch_size: int, num_layers: int, max_seq_len: int, lr: float) -> list[str]:
    """The mlx_lm.lora command line, as a user types it after ``python -m mlx_lm lora``."""
    return [
        "--train", "--model", str(model), "--data", str(data), "-c", str(config),
        "--fine-tune-type", "lora", "--optimizer", "adamw", "--learning-rate", str(lr),
        "--iters", str(steps), "--batch-size", str(batch_size), "--num-layers", str(num_layers),
        "--max-seq-length", str(max_seq_len), "--steps-per-report", "1",
        "--save-every", str(10**9), "--adapter-path", str(adapters), "--seed", "0",
    ]


def run_mlx_lm(batch_size: int, argv: list[str]) -> None:
    """Child: ``mlx_lm.lora.main()`` with ``argv``, reporting each step as it ends.

    mlx_lm counts as trained every target up to and including the one after
    the last token (which predicts the padding: its mask is
    ``steps <= length``), one more per sequence than the tokens' own next-token
    targets that mlxtune and PEFT train; ``trained`` here is mlx_lm's count
    less one per row, so that every system counts the same targets.
    """
    import mlx.core as mx
    import mlx_lm
    from mlx_lm import lora
    from mlx_lm.tuner.callbacks import TrainingCallback

    state = {"counted": 0}

    class Report(TrainingCallback):
        def on_train_loss_report(self, info: dict) -> None:
            counted = int(round(info["trained_tokens"])) - state["counted"]
            state["counted"] = int(round(info["trained_tokens"]))
            step = {"step": info["iteration"], "seconds": 1.0 / info["iterations_per_second"], "trained": counted - batch_size, "mlx_lm_counted": counted, "loss": info["train_loss"]}
            emit("BENCH", step)

    def count_trainable(model):
        from mlx.utils import tree_flatten

        emit("BENCH_INFO", {"n_trainable": sum(v.size for _, v in tree_flatten(model.trainable_parameters()))})
        print_trainable(model)

    print_trainable = lora.print_trainable_parameters
    if not hasattr(lora, "get_reporting_callbacks"):
        sys.exit(f"mlx_lm {mlx_lm.__version__}: mlx_lm.lora has no get_reporting_callbacks, through which the benchmark reads its step times; use mlx-lm >= 0.28")
    lora.print_trainable_parameters = count_trainable
    lora.get_reporting_callbacks = lambda *a, **k: Report()
    sys.argv = ["mlx_lm.lora", *argv]
    lora.main()
    model = Path(argv[argv.index("--model") + 1])
    dtype = json.loads((model / "config.json").read_text()).get("torch_dtype", "?")
    preload = os.environ.get("LD_PRELOAD")
    blas = f"BLAS preloaded with LD_PRELOAD={preload}" if preload else "the wheel's own BLAS"
    emit("BENCH_RESULT", {"compute": f"mlx_lm {mlx_lm.__version__} (mlx {mx.__version__}), CPU, {dtype} weights, {blas}, mx.compile'd step", "mlx_peak_memory_bytes": int(mx.get_peak_memory())})


# ------------------------------------------------------------------ PyTorch + PEFT


def run_peft(model_dir: Path, batches: list[list[list[int]]], pad_id: int, steps: int, dtype: str, rank: int, alpha: float, lr: float) -> None:
    """Child: PEFT LoRA training in float32 or under bfloat16 autocast; one BENCH line per step.

    ``batches`` are token-id lists, batch by batch; each batch is padded on
    the right to its longest row, with labels -100 on the padding, so the
    loss (transformers' mean over non-ignored shifted labels) covers every
    real next-token target, as in the other systems.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    import transformers

    old = tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (4, 56)  # torch_dtype became dtype
    model = LlamaForCausalLM.from_pretrained(model_dir, **{"torch_dtype" if old else "dtype": torch.float32})
    assert model.dtype == torch.float32, model.dtype
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(LORA_KEYS), bias="none", task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    autocast = dtype == "bfloat16"
    for step in range(1, steps + 1):
        rows = batches[(step - 1) % len(batches)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            attn[i, : len(r)] = 1
        labels = ids.masked_fill(attn == 0, -100)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t
        emit("BENCH", {"step": step, "seconds": seconds, "trained": sum(len(r) - 1 for r in rows), "loss": float(loss)})
    import peft

    what = "float32" if not autocast else "bfloat16 autocast over float32 weights"
    emit("BENCH_RESULT", {
        "compute": f"PyTorch {torch.__version__} + PEFT {peft.__version__} (transformers {transformers.__version__}), CPU, {what}, {torch.get_num_threads()} threads, attention {model.config._attn_implementation}",
        "n_trainable": sum(p.numel() for p in params),
        "torch_gemm_gflops": torch_gemm_gflops(torch),
    })


def torch_gemm_gflops(torch, n: int = 1024, repeats: int = 10, trials: int = 3) -> dict:
    """PyTorch's own float32 and bfloat16 matmul rates, best of ``trials`` (measured after training, so they cost the first step nothing)."""
    rates = {}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=g).to(dt), torch.randn(n, n, generator=g).to(dt)
        a @ b
        rates[name] = 0.0
        for _ in range(trials):
            t = time.perf_counter()
            for _ in range(repeats):
                a @ b
            rates[name] = max(rates[name], 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9)
    return rates


if __name__ == "__main__":
    # python bench/peers.py mlx-lm BATCH_SIZE -- <mlx_lm.lora arguments>
    if len(sys.argv) > 3 and sys.argv[1] == "mlx-lm" and sys.argv[3] == "--":
        run_mlx_lm(int(sys.argv[2]), sys.argv[4:])
    else:
        sys.exit("usage: python bench/peers.py mlx-lm BATCH_SIZE -- <mlx_lm.lora arguments>  (run by bench/bench_train.py)")
