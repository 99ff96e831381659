"""LoRA training throughput of mlxtune and its peers, measured side by side.

    python bench/bench_train.py                                   # every system, defaults below
    python bench/bench_train.py --systems mlxtune-mlx,mlxtune-numpy --steps 4 --json out.json
    python bench/bench_train.py --steps 12 --warmup 3 --steps-for mlx-lm-default=4/1 --json bench/results/train-side-by-side.json
    python bench/bench_train.py --shape qwen3-0.6b --steps 4 --warmup 1    # a family at its real size, random weights

Systems (``--systems``, comma-separated; default all of them):

  mlxtune-mlx      mlxtune's mlx backend (float32, the BLAS mlxtune preloads)
  mlxtune-numpy    mlxtune's numpy reference backend
  mlxtune-numpy-4bit, mlxtune-mlx-4bit
                   the same, QLoRA: LoRA on the frozen 4-bit model (the GGUF's
                   own Q4_1 weights; on a CPU both backends expand them to
                   float32 for the matmuls, so this shows what that costs)
  mlx-lm-default   ``mlx_lm.lora`` as a user runs it: float16 weights, the
                   mlx[cpu] wheel's bundled reference BLAS
  mlx-lm-openblas  ``mlx_lm.lora`` at its best: float32 weights, OpenBLAS
                   preloaded (LD_PRELOAD)
  peft-float32     PyTorch CPU + PEFT LoRA, float32
  peft-bfloat16    the same under ``torch.autocast("cpu", dtype=torch.bfloat16)``

Every system trains the same model (SmolLM2-135M-Instruct, converted once by
``mlxtune.convert`` to a dense float32 directory, and to float16 for
mlx-lm-default), on the same batches of the same token sequences, with the
same LoRA (rank 8, alpha 16, dropout 0, on q/k/v/o/gate/up/down of all 30
blocks), batch size 4, every non-padding token trained (no prompt masking).
The data are ``data/notes.jsonl`` rendered through the model's chat template
into text records. To keep a short run's steady state free of recompilation
(mlx compiles a step per input shape) and its steps comparable between
systems, the batches are drawn from the largest group of records that pad to
the same shape in every system (here ~190 tokens, around the median), sorted
by length, chunked into batches of 4 and put in a seeded random order; a
system with more steps than batches goes round them again.

``--shape NAME`` trains a model of another family at its real size with
random weights instead (``bench/shapes.py``: qwen3-0.6b, gemma3-270m, phi4-mini-4l), on the same token
sequences, with mlxtune's two backends only (``--systems`` mlxtune-mlx,
mlxtune-numpy).

Each system runs in its own process. Reported per system: trained tokens per
second in steady state (the steps after ``--warmup``), seconds per step, time
from process start to the end of step 1, peak resident memory of the process
(its rusage), and model-FLOPs utilisation: trained tokens/s x 4 x (parameters
in matmuls, output head included) against the float32 sgemm rate of numpy
(best of several trials at the start and at the end of the run). Output: a Markdown table on stdout and, with
``--json``, every figure and per-step time as JSON. See bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from datetime import date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from shapes import SHAPES  # noqa: E402  (the --shape models)

SYSTEMS = {
    "mlxtune-mlx": "mlxtune, mlx backend",
    "mlxtune-numpy": "mlxtune, numpy backend",
    "mlxtune-numpy-4bit": "mlxtune, numpy backend, QLoRA on the 4-bit base",
    "mlxtune-mlx-4bit": "mlxtune, mlx backend, QLoRA on the 4-bit base",
    "mlx-lm-default": "mlx_lm.lora as installed (float16, reference BLAS)",
    "mlx-lm-openblas": "mlx_lm.lora, float32 + OpenBLAS (LD_PRELOAD)",
    "peft-float32": "PyTorch + PEFT, float32",
    "peft-bfloat16": "PyTorch + PEFT, bfloat16 autocast",
}
SHAPE_SYSTEMS = ("mlxtune-mlx", "mlxtune-numpy")  # the systems that train a --shape model
# Steps (and warm-up steps) per system unless --steps-for says otherwise:
# mlx_lm as installed trains at a few tokens per second.
DEFAULT_STEPS_FOR = {"mlx-lm-default": (3, 1)}
RANK, ALPHA, LR = 8, 16.0, 1e-4
LIBRARIES = ("mlx", "mlx-lm", "torch", "peft", "transformers", "numpy")


def sgemm_gflops(n: int = 1024, repeats: int = 10, trials: int = 5) -> float:
    """numpy float32 matmul rate, best of ``trials``: the machine's practical ceiling for this work."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    best = 0.0
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9)
    return best


def matmul_params(config: dict) -> int:
    """Parameters that take part in a matmul per token: every projection, and the output head."""
    d, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    hd = config.get("head_dim") or d // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * f
    return layers * per_layer + d * config["vocab_size"]


def emit(tag: str, payload: dict) -> None:
    print(f"{tag} {json.dumps(payload)}", flush=True)


# ------------------------------------------------------------------ children


def prepare(args) -> None:
    """Child: model directories, rendered and tokenized data, and the batches every system trains on."""
    import numpy as np

    import mlxtune  # noqa: F401  (BLAS first)
    from mlxtune.convert import convert
    from mlxtune.models.tokenizer import load_tokenizer

    work = args.workdir
    notes = []
    for dtype in ["float32"] + (["float16"] if args.float16 else []):
        out = work / f"model-{dtype}"
        stamp = {"model": args.model, "dtype": dtype}
        if (out / "config.json").exists() and _read_json(out / "bench-stamp.json") == stamp:
            continue
        r = convert(args.model, out, dtype=dtype, force=True)
        notes.extend(r.notes)
        (out / "bench-stamp.json").write_text(json.dumps(stamp))
    four_bit = work / "model-4bit"
    stamp = {"model": args.model, "dtype": "4bit"}
    if not args.shape and not ((four_bit / "config.json").exists() and _read_json(four_bit / "bench-stamp.json") == stamp):
        from mlxtune.models.hub import resolve_model

        is_gguf = resolve_model(args.model).kind == "gguf"
        r = convert(args.model, four_bit, force=True, **({} if is_gguf else {"quantize": True, "q_bits": 4, "q_group_size": 32}))
        notes.extend(r.notes)
        (four_bit / "bench-stamp.json").write_text(json.dumps(stamp))
    model = work / "model-float32"
    if args.shape:  # the family's real sizes, random weights, this model's tokenizer
        from shapes import write_random_model

        stamp = {"model": args.model, "shape": args.shape}
        shaped = work / f"model-{args.shape}"
        if _read_json(shaped / "bench-stamp.json") != stamp:
            write_random_model(shaped, args.shape, model)
            (shaped / "bench-stamp.json").write_text(json.dumps(stamp))
        model = shaped
    tok = load_tokenizer(model)
    eos = tok.eos_token_id
    texts, tokens = [], []
    for line in args.data.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if "messages" in rec:
            text = tok.apply_chat_template(rec["messages"], tools=rec.get("tools"), tokenize=False)
        elif "prompt" in rec and "completion" in rec:
            msgs = [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec["completion"]}]
            text = tok.apply_chat_template(msgs, tokenize=False) if tok.chat_template else rec["prompt"] + rec["completion"]
        else:
            text = rec["text"]
        ids = tok.encode(text)  # what mlx_lm's TextDataset does: encode, then eos unless last
        if not ids or ids[-1] != eos:
            ids.append(eos)
        if len(ids) <= args.max_seq_len:
            texts.append(text)
            tokens.append(ids)
    lengths = np.array([len(t) for t in tokens])
    B = args.batch_size

    # Group by the padded shape in every system: mlxtune pads the len-1 inputs
    # to a multiple of 8, mlx_lm pads len to one plus a multiple of 32.
    def key(n: int) -> tuple[int, int]:
        return (math.ceil((n - 1) / 8), math.ceil(n / 32))

    groups: dict = {}
    for i, n in enumerate(lengths):
        groups.setdefault(key(int(n)), []).append(i)
    median = float(np.median(lengths))
    best = max(groups.values(), key=lambda g: (len(g) // B, -abs(float(np.mean(lengths[g])) - median)))
    if len(best) < B:  # a tiny data set: use everything
        best = list(range(len(tokens)))
    best = sorted(best, key=lambda i: lengths[i])
    chunks = [best[i : i + B] for i in range(0, len(best) - B + 1, B)]
    order = np.random.default_rng(0).permutation(len(chunks))
    batches = [chunks[c] for c in order]
    used = sorted(i for b in batches for i in b)
    prepared = {
        "model": str(model),
        "model_float16": str(work / "model-float16") if args.float16 else None,
        "config": _read_json(model / "config.json"),
        "notes": notes,
        "records": len(lengths),
        "record_lengths": {"min": int(lengths.min()), "median": median, "max": int(lengths.max())},
        "batch_lengths": {"min": int(lengths[used].min()), "max": int(lengths[used].max())},
        "batches": [[tokens[i] for i in b] for b in batches],
        "texts": [[texts[i] for i in b] for b in batches],
        "pad_id": int(eos),
    }
    (work / "batches.json").write_text(json.dumps(prepared))
    emit("BENCH_RESULT", {k: v for k, v in prepared.items() if k not in ("batches", "texts")} | {"n_batches": len(batches)})


def run_mlxtune(args, backend: str) -> None:
    """Child: mlxtune's trainer for ``backend`` on the prepared batches; one BENCH line per step."""
    import numpy as np

    import mlxtune  # noqa: F401  (BLAS first)
    from mlxtune.backends import open_trainer
    from mlxtune.data.batching import encode, make_batch
    from mlxtune.training.config import TrainConfig
    from mlxtune.models.tokenizer import load_tokenizer
    from mlxtune.training.train import learning_rate_at

    prep = json.loads((args.workdir / "batches.json").read_text())
    backend, _, variant = backend.partition("-")
    model = args.workdir / "model-4bit" if variant == "4bit" else Path(prep["model"])
    cfg = TrainConfig(model=str(model), backend=backend, batch_size=args.batch_size, max_seq_len=args.max_seq_len, rank=RANK, alpha=ALPHA, dropout=0.0, learning_rate=LR, iters=args.steps, mask_prompt=False)
    tokenizer = load_tokenizer(model)
    batches = []
    for texts, ids in zip(prep["texts"], prep["batches"]):
        examples = [encode({"text": t}, "text", tokenizer, False, cfg.max_seq_len) for t in texts]
        for e, want in zip(examples, ids):  # the same token sequences as every other system
            if e.tokens.tolist() != want:
                raise SystemExit(f"mlxtune's text encoding differs from the prepared tokens: {e.tokens.tolist()[:12]}... vs {want[:12]}...")
        batches.append(make_batch(examples))
    trainer = open_trainer(backend, model, cfg)
    for step in range(1, args.steps + 1):
        batch = batches[(step - 1) % len(batches)]
        t = time.perf_counter()
        loss, n = trainer.step(batch, learning_rate_at(cfg, step, args.steps))
        emit("BENCH", {"step": step, "seconds": time.perf_counter() - t, "trained": int(n), "loss": float(loss), "positions": int(np.prod(batch.inputs.shape))})
    emit("BENCH_RESULT", {"compute": f"mlxtune {backend} backend{' on the 4-bit model' if variant else ''}: {trainer.description}", "n_trainable": int(trainer.n_trainable)})


def child(args) -> None:
    if args.child == "prepare":
        prepare(args)
    elif args.child.startswith("mlxtune-"):
        run_mlxtune(args, args.child.removeprefix("mlxtune-"))
    elif args.child.startswith("peft-"):
        import peers

        prep = json.loads((args.workdir / "batches.json").read_text())
        peers.run_peft(Path(prep["model"]), prep["batches"], prep["pad_id"], args.steps, args.child.removeprefix("peft-"), RANK, ALPHA, LR)
    else:
        raise SystemExit(f"unknown child {args.child}")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------ parent


def run_process(cmd: list[str], env: dict, log: Path) -> dict:
    """Run one child; timestamp its BENCH lines; take its peak RSS from its own rusage."""
    t0 = time.perf_counter()
    with open(log, "w") as err, open(log.with_suffix(".out"), "w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
        steps, result, info, first, tail = [], None, {}, None, deque(maxlen=30)
        for line in iter(proc.stdout.readline, ""):
            if line.startswith("BENCH "):
                s = json.loads(line[6:])
                steps.append(s)
                if first is None:
                    first = time.perf_counter() - t0
            elif line.startswith("BENCH_RESULT "):
                result = json.loads(line[13:])
            elif line.startswith("BENCH_INFO "):
                info |= json.loads(line[11:])
            else:
                tail.append(line.rstrip())
                out.write(line)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    run = {"returncode": proc.returncode, "step_log": steps, "result": info | (result or {}), "time_to_first_step": first, "wall_seconds": wall}
    # ru_maxrss: kilobytes on Linux, bytes on macOS
    run["peak_rss_bytes"] = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    if proc.returncode != 0 or result is None:
        run["error"] = "\n".join(list(tail)[-10:] + log.read_text().splitlines()[-25:])
    return run


def skip_reason(system: str, blas: str | None) -> str | None:
    have = lambda m: importlib.util.find_spec(m) is not None  # noqa: E731
    if system in ("mlxtune-mlx", "mlxtune-mlx-4bit", "mlx-lm-default", "mlx-lm-openblas") and not (have("mlx") and have("mlx_lm")):
        return "mlx / mlx-lm not installed"
    if system == "mlx-lm-openblas":
        if platform.system() != "Linux":
            return "preloading OpenBLAS concerns the Linux mlx[cpu] wheel only (macOS mlx uses Accelerate)"
        if blas is None:
            return "no libopenblas.so found (Debian/Ubuntu: apt-get install libopenblas0)"
    if system.startswith("peft-"):
        missing = [m for m in ("torch", "peft") if not have(m)]
        if missing:
            return f"{' and '.join(missing)} not installed (first pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu, then pip install 'mlxtune[bench]')"
    return None


def find_openblas() -> str | None:
    from mlxtune.runtime import find_blas_libraries

    libs = [p for p in find_blas_libraries() if "openblas" in Path(p).name]
    return next((p for p in libs if os.path.isabs(p)), libs[0] if libs else None)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            cpu = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True).stdout.strip() or cpu
        except OSError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(), "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def versions() -> dict:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def parse_steps_for(values: list[str]) -> dict:
    out = dict(DEFAULT_STEPS_FOR)
    for v in values:
        name, _, spec = v.partition("=")
        if name not in SYSTEMS or not spec:
            raise SystemExit(f"--steps-for takes SYSTEM=STEPS[/WARMUP] with SYSTEM one of {', '.join(SYSTEMS)}, not {v!r}")
        n, _, w = spec.partition("/")
        out[name] = (int(n), int(w) if w else None)
    return out


def summarize(name: str, run: dict, steps: int, warmup: int, expected: list[int]) -> dict:
    """The figures of one system from its per-step log; ``expected`` is the trained tokens of each prepared batch."""
    r = {"system": name, "what": SYSTEMS[name], "steps": steps, "warmup": warmup, **{k: v for k, v in run.items() if k != "result"}, **run["result"]}
    done = run["step_log"]
    steady = done[warmup:]
    if len(done) < steps or not steady:
        return r
    seconds = sum(s["seconds"] for s in steady)
    tps = sum(s["trained"] for s in steady) / seconds
    r |= {
        "steady_steps": len(steady),
        "trained_tokens_per_sec": tps,
        "seconds_per_step": seconds / len(steady),
        "trained_tokens_per_step": sum(s["trained"] for s in steady) / len(steady),
        "loss_step_1": done[0]["loss"],
        "batches_in_common_order": [s["trained"] for s in done] == [expected[i % len(expected)] for i in range(len(done))],
    }
    return r


def add_mfu(r: dict, rate: float, flops_per_token: int) -> None:
    """Model-FLOPs utilisation against the float32 sgemm rate (and, for bfloat16, against PyTorch's bfloat16 matmul rate)."""
    if "trained_tokens_per_sec" not in r:
        return
    flops = r["trained_tokens_per_sec"] * flops_per_token
    r["mfu"] = flops / (rate * 1e9)
    bf16 = r.get("torch_gemm_gflops", {}).get("bfloat16") if r["system"] == "peft-bfloat16" else None
    if bf16:
        r["mfu_vs_bf16_gemm"] = flops / (bf16 * 1e9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, from: " + ", ".join(SYSTEMS))
    p.add_argument("--backends", help=argparse.SUPPRESS)  # the old option: mlx,numpy -> mlxtune-mlx,mlxtune-numpy
    p.add_argument("--model", default=None, help="model to convert (Hub id, directory or .gguf); default: SmolLM2-135M-Instruct")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "notes.jsonl")
    p.add_argument("--steps", type=int, default=6, help="steps per system (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the steady-state figures (compilation, allocator); default 2")
    p.add_argument("--steps-for", action="append", default=[], metavar="SYSTEM=STEPS[/WARMUP]", help="steps for one system (default: mlx-lm-default=3/1)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--workdir", type=Path, help="keep converted models and data here and reuse them (default: a temporary directory, removed)")
    p.add_argument("--json", type=Path, help="write every figure as JSON to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--float16", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shape", choices=sorted(SHAPES), help="train a model of this family's real size with random weights (bench/shapes.py) instead; mlxtune's backends only")
    args = p.parse_args()
    if args.child:
        child(args)
        return

    if args.shape and args.systems == ",".join(SYSTEMS):
        args.systems = ",".join(SHAPE_SYSTEMS)
    systems = [s.strip() for s in (args.systems if not args.backends else ",".join(f"mlxtune-{b}" for b in args.backends.split(","))).split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    if args.shape and set(systems) - set(SHAPE_SYSTEMS):
        raise SystemExit(f"--shape runs {', '.join(SHAPE_SYSTEMS)} only (the peers load llama models, the 4-bit rows need the real weights)")
    steps_for = parse_steps_for(args.steps_for)
    plan = {}
    for s in systems:
        n, w = steps_for.get(s, (args.steps, args.warmup))
        n = n or args.steps
        w = args.warmup if w is None else w
        if n < 1 or not 0 <= w < n:
            raise SystemExit(f"{s}: need at least one step after the warm-up ({n} steps, {w} warm-up)")
        plan[s] = (n, w)
    blas = find_openblas() if platform.system() == "Linux" else None
    skipped = {s: r for s in systems if (r := skip_reason(s, blas))}

    work = args.workdir or Path(tempfile.mkdtemp(prefix="mlxtune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.now().isoformat(timespec="seconds")
    load_before = os.getloadavg()
    rate = sgemm_gflops()
    base_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["--workdir", str(work), "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len)] + (["--shape", args.shape] if args.shape else [])
    runs: list[dict] = []
    result = {
        "date": date.today().isoformat(), "started": started, "machine": machine(), "versions": versions(),
        "sgemm_gflops": rate, "sgemm": "numpy float32 1024x1024 matmul, best of 5 trials before and of 5 after the systems run (MFU uses the higher)",
        "settings": {"systems": systems, "steps": {s: {"steps": n, "warmup": w} for s, (n, w) in plan.items()}, "model": f"{args.shape} (random weights)" if args.shape else args.model or "HuggingFaceTB/SmolLM2-135M-Instruct",
                     "data": str(args.data), "batch_size": args.batch_size, "max_seq_len": args.max_seq_len, "lora": {"rank": RANK, "alpha": ALPHA, "dropout": 0.0, "modules": "q,k,v,o,gate,up,down", "layers": "all"},
                     "learning_rate": LR, "openblas": blas},
        "results": runs,
    }
    try:
        print(f"preparing models and data in {work} ...", file=sys.stderr)
        cmd = [sys.executable, __file__, "--child", "prepare", *common, "--data", str(args.data)] + (["--model", args.model] if args.model else []) + (["--float16"] if "mlx-lm-default" in systems and "mlx-lm-default" not in skipped else [])
        prep_run = run_process(cmd, base_env, work / "prepare.log")
        if prep_run["returncode"] != 0 or not prep_run["result"]:
            raise SystemExit(f"preparing the models and data failed:\n{prep_run.get('error', '')}")
        prep = prep_run["result"]
        result["data"] = {k: prep[k] for k in ("records", "record_lengths", "batch_lengths", "n_batches")} | {"notes": prep["notes"]}
        flops_per_token = 4 * matmul_params(prep["config"])
        result["flops_per_trained_token"] = flops_per_token
        prepared = json.loads((work / "batches.json").read_text())
        num_layers = prep["config"]["num_hidden_layers"]
        expected = [sum(len(row) - 1 for row in b) for b in prepared["batches"]]

        for s in systems:
            n, w = plan[s]
            if s in skipped:
                runs.append({"system": s, "what": SYSTEMS[s], "steps": n, "warmup": w, "skipped": skipped[s]})
                print(f"{s}: skipped ({skipped[s]})", file=sys.stderr)
                continue
            env = dict(base_env)
            user_cmd = None
            if s.startswith("mlx-lm-"):
                import peers

                model = Path(prepared["model_float16"] if s == "mlx-lm-default" else prepared["model"])
                data, config, adapters = peers.mlx_lm_files(work, s, prepared["texts"][:n], RANK, ALPHA)
                lora_args = peers.mlx_lm_args(model, data, config, adapters, n, args.batch_size, num_layers, args.max_seq_len, LR)
                cmd = [sys.executable, str(BENCH / "peers.py"), "mlx-lm", str(args.batch_size), "--", *lora_args]
                if s == "mlx-lm-openblas":
                    env["LD_PRELOAD"] = blas
                user_cmd = ("LD_PRELOAD=" + blas + " " if s == "mlx-lm-openblas" else "") + "python -m mlx_lm lora " + " ".join(lora_args)
            else:
                cmd = [sys.executable, __file__, "--child", s, "--steps", str(n), *common]
            print(f"{s}: {n} steps ({w} warm-up) ...", file=sys.stderr)
            r = summarize(s, run_process(cmd, env, work / f"{s}.log"), n, w, expected)
            add_mfu(r, rate, flops_per_token)
            if user_cmd:
                r["command"] = user_cmd
            runs.append(r)
            if "trained_tokens_per_sec" in r:
                print(f"{s}: {r['trained_tokens_per_sec']:.1f} trained tok/s, first step {r['time_to_first_step']:.1f} s, peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB", file=sys.stderr)
            else:
                r["failed"] = r.pop("error", None) or f"{len(r['step_log'])} of {n} steps reported"
                print(f"{s}: FAILED\n{r['failed']}", file=sys.stderr)
            if args.json:
                args.json.write_text(json.dumps(result, indent=2))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    result["loadavg"] = {"before": load_before, "after": os.getloadavg()}
    result["sgemm_gflops_before_after"] = [rate, sgemm_gflops()]
    rate = result["sgemm_gflops"] = max(result["sgemm_gflops_before_after"])  # a busy moment at one end does not lower the ceiling
    for r in runs:
        add_mfu(r, rate, flops_per_token)
    result["parent_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    print_table(result, args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def print_table(result: dict, args) -> None:
    m, v = result["machine"], result["versions"]
    libs = ", ".join(f"{k} {x}" for k, x in v.items() if x)
    d = result.get("data", {})
    print(f"LoRA training side by side, {result['date']}: {result['settings']['model']}, LoRA rank 8 (alpha 16) on q/k/v/o/gate/up/down of every block, "
          f"batch {args.batch_size}, every non-padding token trained; {args.data.name} through the chat template, "
          f"{d.get('n_batches', '?')} batches of records of {d.get('batch_lengths', {}).get('min', '?')}-{d.get('batch_lengths', {}).get('max', '?')} tokens.")
    print(f"Machine: {m['cpu']}, {m['cores']} cores, {m['os']}; {libs}; float32 sgemm (numpy) {result['sgemm_gflops']:.0f} GFLOP/s; "
          f"load average {result['loadavg']['before'][0]:.2f} before, {result['loadavg']['after'][0]:.2f} after.\n")
    print("| system | steps (warm-up) | trained tok/s | s/step | first step (s) | peak RSS | MFU vs fp32 sgemm | loss, step 1 |")
    print("|---|---|---|---|---|---|---|---|")
    notes = []
    for r in result["results"]:
        name = f"{r['system']}"
        if "skipped" in r:
            print(f"| {name} | skipped | | | | | | |")
            notes.append(f"{r['system']}: skipped, {r['skipped']}")
            continue
        if "trained_tokens_per_sec" not in r:
            print(f"| {name} | failed | | | | | | |")
            notes.append(f"{r['system']}: failed (see the JSON)")
            continue
        mfu = f"{r['mfu']:.1%}"
        if "mfu_vs_bf16_gemm" in r:
            mfu += f" ({r['mfu_vs_bf16_gemm']:.1%} vs bf16 GEMM)"
        print(f"| {name} | {r['steps']} ({r['warmup']}) | {r['trained_tokens_per_sec']:.1f} | {r['seconds_per_step']:.2f} | {r['time_to_first_step']:.1f} | {r['peak_rss_bytes'] / 1e9:.2f} GB | {mfu} | {r['loss_step_1']:.4f} |")
        notes.append(f"{r['system']}: {r.get('compute', r['what'])}" + ("" if r["batches_in_common_order"] else "; NB: its steps saw the batches in another order than the other systems' (see step_log in the JSON)"))
    print()
    for n in notes:
        print(f"- {n}")
    print("- Trained tokens: every real next-token target (sequence length - 1 per row). mlx_lm also trains one target past the end of each row"
          " (it predicts the padding after the eos); its step-1 loss includes those, and the extra targets are not counted in its tokens/s here.")
    gemm = next((r["torch_gemm_gflops"] for r in result["results"] if "torch_gemm_gflops" in r), None)
    if gemm:
        print(f"- MFU is against numpy's float32 sgemm rate for every system, bfloat16 included; PyTorch's own matmul rates: float32 {gemm['float32']:.0f}, bfloat16 {gemm['bfloat16']:.0f} GFLOP/s (the bfloat16 row's second figure is against the latter).")


if __name__ == "__main__":
    main()
