"""mlxtune before and after a change, measured in one run on one machine.

    python bench/compare_revisions.py BEFORE [AFTER]            # AFTER: the work tree as it is
    python bench/compare_revisions.py 9dc1360 HEAD --rounds 3 --json bench/results/compare.json

Speed can only be compared within one run (the CPU may differ from one
session to the next, and other load comes and goes), so this checks out
BEFORE (and AFTER, if it is a revision) into temporary git worktrees and runs
``bench_train.py`` and ``bench_generate.py`` from each tree on its own code,
alternating the trees round after round (B A, then A B, ...), so that drift in the
machine's speed falls on both alike. The systems are mlxtune's own
(``--systems``; default the float32 numpy and mlx backends); the converted
models are shared (``--workdir``) so that both trees train and generate from
the same files.

Reported per system and figure: each round's value for both trees, the
medians and their ratio (AFTER / BEFORE), and, as a check of behaviour
rather than speed, whether the training losses and the generated tokens are
the same. Markdown on stdout; every figure as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {  # bench -> (figure, unit, higher is better)
    "train": [("trained_tokens_per_sec", "tok/s", True), ("peak_rss_bytes", "MB", False)],
    "generate": [("decode_tps", "tok/s", True), ("prefill_seconds", "s", False), ("load_seconds", "s", False), ("peak_rss_bytes", "MB", False)],
}
# What must not change between the trees: each step's training loss, and the generated tokens.
SAME = {
    "train": ("losses", lambda r: [s["loss"] for s in r["step_log"]] if "step_log" in r else None),
    "generate": ("tokens", lambda r: r.get("tokens")),
}


def checkout(rev: str, into: Path) -> Path:
    """A detached worktree of ``rev`` (the repository's own objects; nothing is fetched)."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(into), rev], check=True)
    return into


def run_bench(tree: Path, bench: str, systems: str, workdir: Path, out: Path, extra: list[str]) -> dict:
    """One run of ``tree``'s bench script on ``tree``'s mlxtune; its JSON."""
    env = os.environ | {"PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(tree / "bench" / f"bench_{bench}.py"), "--systems", systems, "--workdir", str(workdir / bench), "--json", str(out), *extra]
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def value(result: dict, figure: str) -> float | None:
    v = result.get(figure)
    if v is None:
        return None
    return v / 1e6 if figure.endswith("_bytes") else float(v)


def table(runs: dict, benches: list[str], trees: list[str]) -> list[str]:
    lines = ["| bench | system | figure | " + " | ".join(f"{t} (rounds)" for t in trees) + " | median ratio after/before |", "|---|---|---|" + "---|" * (len(trees) + 1)]
    for bench in benches:
        systems = sorted({r["system"] for rnd in runs[trees[0]][bench] for r in rnd["results"]})
        for s in systems:
            for figure, unit, _ in FIGURES[bench]:
                cols, medians = [], []
                for t in trees:
                    vals = [value(r, figure) for rnd in runs[t][bench] for r in rnd["results"] if r["system"] == s]
                    vals = [v for v in vals if v is not None]
                    cols.append(", ".join(f"{v:.3g}" for v in vals) or "-")
                    medians.append(statistics.median(vals) if vals else None)
                ratio = f"{medians[1] / medians[0]:.3f}" if None not in medians and medians[0] else "-"
                lines.append(f"| {bench} | {s} | {figure} ({unit}) | " + " | ".join(cols) + f" | {ratio} |")
    return lines


def same_behaviour(runs: dict, benches: list[str], trees: list[str]) -> list[str]:
    notes = []
    for bench in benches:
        key, value = SAME[bench]
        seen: dict[str, set] = {}
        for t in trees:
            for rnd in runs[t][bench]:
                for r in rnd["results"]:
                    got = value(r)
                    seen.setdefault(r["system"], set()).add("missing" if got is None else json.dumps(got))
        for s, values in sorted(seen.items()):
            if "missing" in values:
                notes.append(f"{bench} {s}: {key} NOT RECORDED in some run (cannot tell whether behaviour changed)")
                continue
            notes.append(f"{bench} {s}: {key} " + ("identical in every round of both trees" if len(values) == 1 else f"DIFFER ({len(values)} distinct)"))
    return notes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("before", help="a git revision")
    p.add_argument("after", nargs="?", help="a git revision (default: this work tree as it is)")
    p.add_argument("--benches", default="train,generate", help="comma-separated: train, generate")
    p.add_argument("--systems", default="mlxtune-numpy,mlxtune-mlx", help="bench systems, comma-separated (mlxtune's)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each bench per tree, alternating (default 2)")
    p.add_argument("--train-args", default="", help="extra arguments for bench_train.py, e.g. '--steps 8 --warmup 2'")
    p.add_argument("--workdir", type=Path, help="keep converted models here and reuse them (default: a temporary directory)")
    p.add_argument("--json", type=Path, help="write every run's JSON here")
    args = p.parse_args()
    benches = [b.strip() for b in args.benches.split(",") if b.strip()]
    with tempfile.TemporaryDirectory(prefix="mlxtune-compare-") as tmp:
        tmp = Path(tmp)
        work = args.workdir or tmp / "work"
        trees = {"before": checkout(args.before, tmp / "before")}
        trees["after"] = checkout(args.after, tmp / "after") if args.after else ROOT
        try:
            runs = {t: {b: [] for b in benches} for t in trees}
            for rnd in range(args.rounds):
                order = list(trees) if rnd % 2 == 0 else list(reversed(trees))
                for bench in benches:
                    for t in order:
                        extra = args.train_args.split() if bench == "train" else []
                        out = tmp / f"{t}-{bench}-{rnd}.json"
                        runs[t][bench].append(run_bench(trees[t], bench, args.systems, work, out, extra))
                        print(f"round {rnd + 1} {bench} {t}: done", file=sys.stderr, flush=True)
        finally:
            for t, tree in trees.items():
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    names = list(trees)
    print(f"before: {args.before}, after: {args.after or 'work tree'}; {args.rounds} rounds, alternating\n")
    print("\n".join(table(runs, benches, names)))
    print("\n" + "\n".join(same_behaviour(runs, benches, names)))
    if args.json:
        args.json.write_text(json.dumps({"before": args.before, "after": args.after, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
