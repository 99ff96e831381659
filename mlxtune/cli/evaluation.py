"""The commands that measure and describe: eval (a model or adapter on held-out data) and recipes."""

from __future__ import annotations

import click

from . import BACKEND_HELP, BACKENDS, CONTEXT


# ---------------------------------------------------------------- eval


@click.command("eval", context_settings=CONTEXT)
@click.option("-a", "--adapter", type=click.Path(), help="Run directory written by 'mlxtune lora' (its base, data and recipe are the defaults below), or a PEFT adapter.")
@click.option("-m", "--model", help="Model to evaluate, or the base for --adapter. [default: the adapter's base]")
@click.option("-d", "--data", type=click.Path(), help="Data file (JSONL, CSV, Parquet, ...) or data directory (a Hugging Face dataset too). [default: the run's data]")
@click.option("--split", type=click.Choice(["test", "valid", "train", "all"]), help="Which records: test (a directory's test.jsonl), valid (the validation split; of a single file, the records the run held out), train, all. [default: test, else valid; another single file than the run's: all]")
@click.option("--task", type=click.Choice(["loss", "summarize", "style"]), help="What to measure beyond loss. [default: the run's recipe's, else loss]")
@click.option("--recipe", help="Take the eval settings of this recipe. [default: the run's]")
@click.option("--compare-base", is_flag=True, help="Also evaluate the base model, side by side.")
@click.option("--max-tokens", type=int, help="New tokens per answer. [default: the recipe's, else 256]")
@click.option("--limit", type=int, help="Evaluate only the first N records.")
@click.option("--samples", type=int, help="Side-by-side examples to show. [default: 3]")
@click.option("--json", "json_path", type=click.Path(), help="Write the results here. [default: <run>/eval-<split>.json with --adapter]")
@click.option("--skip-bad-lines", is_flag=True, help="Leave out data lines that fail validation, and list each (file:line and why). [default: as the run did, for the run's own data]")
@click.option("--field", "field_specs", multiple=True, metavar="FIELD=COLUMN", help="Read the data's COLUMN as FIELD (repeatable), e.g. --field prompt=question. [default: as the run did, for the run's own data]")
@click.option("--backend", type=BACKENDS, default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
def eval_(adapter, model, data, split, task, recipe, compare_base, max_tokens, limit, samples, json_path, skip_bad_lines, field_specs, backend, offline) -> None:
    """Measure a model (with or without an adapter) on held-out data.

    Loss and perplexity always; with a task, the greedy answers to the
    prompts and their measure (summarize: ROUGE-1/2/L against the references;
    style: the share of the style's markers, the phrases most training
    answers share); and a few prompts with the answers side by side. By
    default the records are held out: a directory's test.jsonl, or the
    validation split of the run's data.

    \b
    Examples:
      mlxtune eval --adapter runs/support_calls --compare-base
      mlxtune eval --model models/smollm2 --data data/support_calls --task summarize
    """
    import json
    from pathlib import Path

    from ..data.rows import parse_fields
    from ..evaluate import evaluate
    from ..fsutil import atomic_write_text

    if limit is not None and limit <= 0 or max_tokens is not None and max_tokens <= 0 or samples is not None and samples < 0:
        raise click.UsageError("--limit and --max-tokens must be positive, --samples >= 0")
    last = {}

    def progress(name: str, done: int, total: int) -> None:
        if done == total or done - last.get(name, 0) >= max(1, total // 10):
            last[name] = done
            click.echo(f"  {name}: {done}/{total} answers", err=True)

    r = evaluate(adapter=adapter, model=model, data=data, split=split, task=task, recipe=recipe, compare_base=compare_base, max_tokens=max_tokens,
                 limit=limit, samples=samples, backend=backend, offline=offline, on_progress=progress, skip_bad_lines=skip_bad_lines,
                 fields=parse_fields(field_specs) if field_specs else None)
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    held_out = ", none trained on" if r.trained_on == 0 else ""
    skipped = f" ({len(r.skipped)} bad line(s) skipped, listed above)" if r.skipped else ""
    click.echo(f"Eval: {r.source}: {r.records} records{skipped}{held_out}, task {r.task}")
    if r.trained_on:
        click.echo(f"Trained on: {r.trained_on} of these {r.records} records are in the run's training split: "
                   "the figures show how well it fits the data it learned from, not how it does on new data")
    _print_eval_table(r)
    if r.markers:
        click.echo(f"Style markers ({len(r.markers)}, from the training answers): " + ", ".join(f"'{m}'" for m in r.markers[:12]) + (" ..." if len(r.markers) > 12 else ""))
    result = r.to_dict()
    for i, sample in enumerate(result["side_by_side"], 1):
        click.echo(f"\n--- sample {i} ---\n[prompt]\n{_clip(sample['prompt'], 600)}\n[reference]\n{sample['reference']}")
        for s in r.scores:
            if s.name in sample:
                click.echo(f"[{s.name}]\n{sample[s.name] or '(empty answer)'}")
    out = Path(json_path) if json_path else (Path(adapter) / f"eval-{r.split}.json" if adapter else None)
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=1, ensure_ascii=False))
        click.echo(f"\nResults: {out}")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _print_eval_table(r) -> None:
    names = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "marker_score": "style markers"}
    rows = [("loss", None, lambda s: s.loss, "{:.3f}"), ("perplexity", None, lambda s: s.perplexity, "{:.2f}")]
    rows += [(names.get(k, k), k, (lambda s, k=k: s.metrics.get(k)), "{:.3f}") for k in dict.fromkeys(k for s in r.scores for k in s.metrics)]
    header = f"{'':<15}" + "".join(f"{s.name:>10}" for s in r.scores) + ("     tuned/base" if len(r.scores) == 2 else "") + ("   references" if r.reference_metrics else "")
    click.echo(header)
    for label, key, get, fmt in rows:
        values = [get(s) for s in r.scores]
        line = f"{label:<15}" + "".join(f"{fmt.format(v) if v is not None else '-':>10}" for v in values)
        if len(values) == 2 and all(v is not None for v in values) and values[0]:
            line += f"{values[1] / values[0]:>14.2f}x"
        ref = r.reference_metrics.get(key)
        if ref is not None:
            line += f"{ref:>13.3f}" if len(values) == 2 else f"{'':>15}{ref:>13.3f}"
        click.echo(line)


# ---------------------------------------------------------------- recipes


@click.command(context_settings=CONTEXT)
@click.argument("name", required=False)
def recipes(name) -> None:
    """List the recipes, or show one (its notes and settings).

    \b
    Examples:
      mlxtune recipes
      mlxtune recipes summarize
    """
    from .. import recipes as rc

    if name is None:
        paths = rc.available()
        if not paths:
            click.echo(f"no recipes found in {rc.RECIPES_DIR}")
        for path in paths:
            click.echo(f"{path.stem:<12} {rc.load(path).description}")
        click.echo("\nmlxtune recipes NAME shows one; mlxtune lora --recipe NAME --data ... uses it.")
        return
    r = rc.load(name)
    click.echo(r.header)
    click.echo(f"\nFile: {r.path}")
    click.echo("Training settings (beyond the defaults): " + (", ".join(f"{k}={v}" for k, v in r.train.items()) or "none"))
    click.echo("Evaluation: " + ", ".join(f"{k}={v}" for k, v in r.eval.items()))
