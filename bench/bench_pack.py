"""Packing (``--pack``): trained tokens per second with and without it, on short records, both backends, one run.

    python bench/bench_pack.py                                        # style data and short synthetic records, mlx and numpy
    python bench/bench_pack.py --backends numpy --steps 12 --warmup 2 --json bench/results/pack-$(date +%F).json
    python bench/bench_pack.py --model DIR --steps 3 --warmup 1       # a quick check that it runs (any model directory)

Two data sets of short records:

  style   ``data/style``'s training split (chat records in one voice, the
          style recipe's example data), encoded as ``mlxtune lora`` encodes
          it (the chat template, the prompt masked);
  short   a synthetic set of text records under 64 tokens (seeded sentences
          of common words, written into the work directory): the tweets and
          one-line summaries packing is for.

For each data set, each backend (``--backends``) and packing off and on,
one process trains SmolLM2-135M-Instruct (converted once to a dense float32
directory, as ``bench_train.py`` does; ``--model`` for another) with LoRA rank 8
on every linear layer of every block, batch size 4 (rows, when packed) of at
most ``--max-seq-len`` 512 tokens, on the batches ``mlxtune lora`` would draw
(``data.batching.iterate_batches``, seed 0). Reported per process: trained
tokens per second in steady state (the steps after ``--warmup``), seconds per
step, the share of a step's positions that are real tokens, rows and steps per
epoch, the epoch's estimated time, and peak resident memory; then the gain of
packing (packed over unpacked trained tokens/s) per data set and backend.
Trained tokens are the targets the loss counts; packing trains the same ones,
in fewer steps. mlx compiles a step per input shape (unpacked batches come in
several, packed ones nearly always in one): give mlx 30 steps or more. The
figures are wall-clock rates: run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATASETS = ("style", "short")
RANK, ALPHA, LR = 8, 16.0, 1e-4
WORDS = ("the a of to and in is it that for on with as was at by this be from or have an are not but we you they "
         "new time day year work home team plan note call mail week meeting idea draft list today soon later").split()


def short_records(path: Path, n: int = 2000, seed: int = 0) -> Path:
    """``n`` seeded text records of 3 to 40 words (under 64 tokens with SmolLM2's tokenizer), as JSONL."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = (json.dumps({"text": " ".join(rng.choice(WORDS, int(rng.integers(3, 41)))).capitalize() + "."}) for _ in range(n))
    path.write_text("\n".join(lines) + "\n")
    return path


def emit(tag: str, payload: dict) -> None:
    print(f"{tag} {json.dumps(payload)}", flush=True)


def child(args) -> None:
    """One process: encode the data set, then train ``--steps`` steps on the batches a run would draw."""
    import mlxtune  # noqa: F401  (BLAS first)
    from mlxtune.backends import open_trainer
    from mlxtune.data.batching import encode_dataset, iterate_batches
    from mlxtune.data.records import load_data, trains_prompt_masked
    from mlxtune.models.tokenizer import load_tokenizer
    from mlxtune.training.config import TrainConfig
    from mlxtune.training.schedule import learning_rate_at

    cfg = TrainConfig(model=str(args.model), backend=args.backend, batch_size=args.batch_size, max_seq_len=args.max_seq_len, rank=RANK, alpha=ALPHA,
                      dropout=0.0, learning_rate=LR, iters=args.steps, pack=args.pack)
    splits = load_data(args.data)
    examples, _ = encode_dataset(splits.train, splits.format, load_tokenizer(args.model), trains_prompt_masked(splits.format, None), cfg.max_seq_len)
    if args.under:
        examples = [e for e in examples if len(e) < args.under]
    batches = iterate_batches(examples, cfg.batch_size, seed=0, loop=True, pack=cfg.max_seq_len if cfg.pack else None)
    trainer = open_trainer(args.backend, Path(args.model), cfg)
    emit("BENCH_RESULT", {"records": len(examples), "rows_per_epoch": batches.rows, "steps_per_epoch": batches.steps_per_epoch,
                          "record_tokens": sum(len(e) for e in examples), "compute": trainer.description})
    for step in range(1, args.steps + 1):
        batch = next(batches)
        t = time.perf_counter()
        loss, n = trainer.step(batch, learning_rate_at(cfg, step, args.steps))
        emit("BENCH", {"step": step, "seconds": time.perf_counter() - t, "trained": int(n), "loss": float(loss),
                       "positions": int(batch.inputs.size), "real": int(batch.lengths.sum())})


def run(cmd: list[str], log: Path) -> dict:
    """One child process: its step lines, its result line, and its peak RSS (its own rusage)."""
    steps, result = [], {}
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"})
        for line in iter(proc.stdout.readline, ""):
            tag, _, payload = line.partition(" ")
            if tag == "BENCH":
                steps.append(json.loads(payload))
            elif tag == "BENCH_RESULT":
                result |= json.loads(payload)
        _, status, usage = os.wait4(proc.pid, 0)
    out = {"returncode": os.waitstatus_to_exitcode(status), "step_log": steps, **result,
           "peak_rss_bytes": usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)}
    if out["returncode"] != 0:
        out["error"] = "\n".join(log.read_text().splitlines()[-15:])
    return out


def summarize(r: dict, warmup: int) -> dict:
    steady = r["step_log"][warmup:]
    if r.get("error") or not steady:
        return r
    seconds = sum(s["seconds"] for s in steady)
    r["trained_tokens_per_sec"] = sum(s["trained"] for s in steady) / seconds
    r["seconds_per_step"] = seconds / len(steady)
    r["real_share"] = sum(s["real"] for s in steady) / sum(s["positions"] for s in steady)
    r["epoch_seconds"] = r["seconds_per_step"] * r["steps_per_epoch"]
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--backends", default="mlx,numpy", help="comma-separated: mlx, numpy (default both)")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: style, short (default both)")
    p.add_argument("--model", help="a model directory to train as it is; default: SmolLM2-135M-Instruct converted to float32")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--workdir", type=Path, help="keep the converted model and the synthetic data here (default: a temporary directory)")
    p.add_argument("--json", type=Path, help="write every figure as JSON to this file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--pack", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--under", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if not 0 <= args.warmup < args.steps:
        raise SystemExit(f"need at least one step after the warm-up ({args.steps} steps, {args.warmup} warm-up)")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if set(backends) - {"mlx", "numpy"} or set(datasets) - set(DATASETS):
        raise SystemExit(f"--backends takes mlx and numpy, --datasets {', '.join(DATASETS)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mlxtune-bench-pack-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        model = work / "model-float32"
        if not (model / "config.json").exists():
            import mlxtune  # noqa: F401
            from mlxtune.convert import convert

            print(f"converting SmolLM2-135M-Instruct to float32 in {model} ...", file=sys.stderr)
            convert(None, model, dtype="float32", force=True)
    data = {"style": (ROOT / "data" / "style", 0), "short": (short_records(work / "short.jsonl"), 64)}
    result = {"started": datetime.now().isoformat(timespec="seconds"), "loadavg_before": os.getloadavg(), "cores": os.cpu_count(),
              "settings": {"model": str(args.model or "HuggingFaceTB/SmolLM2-135M-Instruct (float32)"), "steps": args.steps, "warmup": args.warmup,
                           "batch_size": args.batch_size, "max_seq_len": args.max_seq_len, "lora": {"rank": RANK, "alpha": ALPHA, "layers": "all", "modules": "all-linear"}},
              "results": []}
    for name in datasets:
        path, under = data[name]
        for backend in backends:
            for pack in (False, True):
                label = f"{name} {backend} {'packed' if pack else 'unpacked'}"
                print(f"{label}: {args.steps} steps ({args.warmup} warm-up) ...", file=sys.stderr)
                cmd = [sys.executable, __file__, "--child", "--backend", backend, "--data", str(path), "--model", str(model), "--steps", str(args.steps),
                       "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len), "--under", str(under)] + (["--pack"] if pack else [])
                r = summarize({"data": name, "backend": backend, "pack": pack} | run(cmd, work / f"{name}-{backend}-{pack}.log"), args.warmup)
                result["results"].append(r)
                print(f"{label}: " + (f"{r['trained_tokens_per_sec']:.0f} trained tok/s" if "trained_tokens_per_sec" in r else f"FAILED\n{r.get('error')}"), file=sys.stderr)
                if args.json:
                    args.json.write_text(json.dumps(result, indent=1))
    result["loadavg_after"] = os.getloadavg()
    result["parent_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


def print_table(result: dict) -> None:
    s = result["settings"]
    print(f"Packing, {result['started']}: {s['model']}, LoRA rank {RANK} on every linear layer, batch {s['batch_size']} (rows when packed) of at most "
          f"{s['max_seq_len']} tokens, {s['steps']} steps ({s['warmup']} warm-up); {result['cores']} cores, load average {result['loadavg_before'][0]:.2f} before, "
          f"{result['loadavg_after'][0]:.2f} after.\n")
    print("| data | backend | packing | records | rows/epoch | steps/epoch | real tokens / positions | trained tok/s | s/step | epoch (est.) | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rates = {}
    for r in result["results"]:
        if "trained_tokens_per_sec" not in r:
            print(f"| {r['data']} | {r['backend']} | {'on' if r['pack'] else 'off'} | failed | | | | | | | |")
            continue
        rates[(r["data"], r["backend"], r["pack"])] = r["trained_tokens_per_sec"]
        print(f"| {r['data']} | {r['backend']} | {'on' if r['pack'] else 'off'} | {r['records']} | {r['rows_per_epoch']} | {r['steps_per_epoch']} | {r['real_share']:.0%} | "
              f"{r['trained_tokens_per_sec']:.0f} | {r['seconds_per_step']:.2f} | {r['epoch_seconds']:.0f} s | {r['peak_rss_bytes'] / 1e9:.2f} GB |")
    print()
    for (data, backend, pack), rate in rates.items():
        if pack and (data, backend, False) in rates:
            print(f"- {data}, {backend}: packing trains {rate / rates[(data, backend, False)]:.2f}x the tokens per second")


if __name__ == "__main__":
    main()
