"""The commands around a training run: lora, plan (its memory, before it starts) and data check (its data)."""

from __future__ import annotations

import contextlib

import click

from . import BACKEND_HELP, BACKENDS, CONTEXT, DTYPES
from .progress import fmt_bytes, fmt_duration


# ---------------------------------------------------------------- lora


@click.command(context_settings=CONTEXT)
@click.option("-d", "--data", type=click.Path(), help="Data file: JSONL, JSON array, CSV, TSV, Parquet, .txt/.md (split into train/valid); or a directory of train/valid/test files in any of these, or a Hugging Face dataset.")
@click.option("-m", "--model", help="Hub id, model directory, .gguf file or ollama:NAME[:TAG] (a model in Ollama). [default: HuggingFaceTB/SmolLM2-135M-Instruct]")
@click.option("-o", "--output", type=click.Path(), help="Run directory. [default: runs/<data name>]")
@click.option("-c", "--config", "config_file", type=click.Path(), help="YAML file of settings; flags override it.")
@click.option("--recipe", help="Start from a recipe's settings (mlxtune recipes lists them; or a recipe .yaml); -c and flags override it.")
@click.option("--iters", type=int, help="Training steps (default: one epoch). With --resume: the run's new total, to extend it.")
@click.option("--epochs", type=float, help="Passes over the training set (instead of --iters). With --resume: the run's new total.")
@click.option("-b", "--batch-size", type=int, help="Sequences per micro-batch (one forward and backward). [default: 4]")
@click.option("--grad-accumulation", type=int, help="Micro-batches per optimizer step: the effective batch is batch size x this, at the memory of one micro-batch. [default: 1]")
@click.option("--grad-checkpoint/--no-grad-checkpoint", default=None, help="Recompute activations in the backward pass: less memory, ~1-30% more time. [default: numpy: only past its activation budget; mlx: off]")
@click.option("--auto/--no-auto", "auto_fit", default=None, help="Plan memory first; if the run would not fit, checkpoint, then shrink the micro-batch and accumulate (the effective batch stays). See mlxtune plan. [default: on]")
@click.option("--learning-rate", "--lr", "learning_rate", type=float, help="Peak learning rate (AdamW; warmup, then cosine decay). [default: 1e-3]")
@click.option("-r", "--rank", type=int, help="LoRA rank. [default: 8]")
@click.option("--alpha", type=float, help="LoRA alpha; the update is scaled by alpha/rank (mlx-lm's 'scale'). [default: 16]")
@click.option("--dropout", type=float, help="Dropout on the LoRA input. [default: 0]")
@click.option("--dora", is_flag=True, default=None, help="Train DoRA (weight-decomposed LoRA) instead of LoRA.")
@click.option("--layers", type=int, help="Adapt only the last N transformer blocks. [default: all]")
@click.option("--target-modules", help="Comma-separated linear layers to adapt, e.g. q_proj,v_proj. A fused projection is one target: Phi-3's qkv_proj and gate_up_proj. [default: all-linear]")
@click.option("--max-seq-len", type=int, help="Longer records are truncated (with a warning). [default: 1024]")
@click.option("--pack/--no-pack", default=None, help="Pack several records into each row of up to --max-seq-len tokens (each attends to itself only): far fewer steps on short records; --batch-size then counts rows. [default: off]")
@click.option("--mask-prompt/--no-mask-prompt", default=None, help="Train only on completions/assistant turns. [default: on for prompt/completion and chat data]")
@click.option("--thinking/--no-thinking", default=None, help="Render chat data with the chat template's thinking mode on (templates with enable_thinking: Qwen3, SmolLM3); fuse, export and generate then keep it on. [default: off]")
@click.option("--valid-fraction", type=float, help="Share of a single file (or of train.jsonl without valid.jsonl) held out for validation. [default: 0.1]")
@click.option("--skip-bad-lines", is_flag=True, default=None, help="Leave out data lines that fail validation, listing each (file:line and why), instead of stopping at the first.")
@click.option("--field", "field_specs", multiple=True, metavar="FIELD=COLUMN", help="Read the data's COLUMN (or key) as FIELD, before the format is detected; repeatable: --field prompt=question --field completion=answer.")
@click.option("--val-every", type=int, help="Steps between validations (there is one before training and one at the end too). 0: never validate: no validation loss, no best/ adapters, no --early-stop. [default: 25]")
@click.option("--val-batches", type=int, help="Validate on the first N batches (of --batch-size) of the validation split, the same N each time, instead of all of it: quicker, noisier. [default: all]")
@click.option("--save-every", type=int, help="Steps between checkpoints. [default: 50]")
@click.option("--early-stop", type=int, help="Stop after this many validations without a new best validation loss (needs validation: not with --val-every 0). The adapters with the best validation loss are kept in RUN/best. [default: off]")
@click.option("--seed", type=int, help="Seed for the data split, order and LoRA init. [default: 0]")
@click.option("--backend", type=BACKENDS, help="mlx, or numpy (runs anywhere; the faster on a CPU for the llama family); auto: mlx on a GPU, numpy on a CPU where it implements the model (see README). [default: auto]")
@click.option("--dtype", type=DTYPES, help="Compute dtype. [default: float32 on CPU, the model's on a GPU]")
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
@click.option("--force", is_flag=True, help="Replace an existing run directory.")
@click.option("--distributed", is_flag=True, default=None, help="Require a data-parallel run of several processes started by mlx.launch (one is detected without it; see README).")
@click.option("--resume", "resume_run", type=click.Path(), help="Continue this run directory from its last checkpoint, with the settings it was started with; with --iters/--epochs (a new total) a finished run goes on too, its added steps a new warmup + cosine cycle.")
@click.option("--init-adapter", type=click.Path(), help="Start from this adapter's weights (a run directory, its best/ or checkpoints/step-N, an mlx-lm or PEFT adapter): its base model, rank, targets and scale; optimizer and schedule start afresh.")
@click.option("--report/--no-report", default=True, help="Write report.md and loss.png, with a few answers of the base and the tuned model, when done. [default: on]")
@click.option("--quiet", is_flag=True, help="Print only the final summary (and warnings about the data or model, on stderr).")
@click.option("--json", "as_json", is_flag=True, help="For scripts: one JSON object per line on stdout for every event (start, step, val, save, note, done, ...), nothing else.")
@click.pass_context
def lora(ctx, config_file, recipe, force, resume_run, report, quiet, as_json, **options) -> None:
    """Fine-tune a model with LoRA on your data (JSONL, CSV, Parquet, a Hugging Face dataset, ...).

    Writes adapters.safetensors and adapter_config.json (mlx-lm format),
    checkpoints and metrics.jsonl to the run directory. Ctrl-C (or SIGTERM)
    finishes the step, saves a checkpoint and stops; --resume RUN goes on.

    \b
    Examples:
      mlxtune lora --data data/notes.jsonl
      mlxtune lora --data my_chats/ --model ./models/smollm2 --iters 300 -o runs/mine
      mlxtune lora --resume runs/mine
      mlxtune lora --resume runs/mine --iters 600      # a finished run, to 600 steps in all
      mlxtune lora --data more_chats/ --init-adapter runs/mine/best -o runs/more
    """
    from .printer import TrainPrinter
    from ..recipes import eval_for
    from ..training.train import resume, train

    if quiet and as_json:
        raise click.UsageError("--quiet and --json cannot be used together (--json already prints nothing but JSON lines)")
    options = _with_fields(options)
    hold = ctx.with_resource(contextlib.ExitStack())  # the run directory stays locked until the report is written
    if resume_run:
        given = _flags_given(ctx, exclude={"resume_run", "report", "quiet", "as_json", "iters", "epochs"})
        if given:
            raise click.UsageError(f"--resume continues a run with the settings it was started with (only --iters or --epochs, a new total, may be given); drop {', '.join(given)}")
        with TrainPrinter(quiet=quiet, as_json=as_json) as printer:
            result = resume(resume_run, on_event=printer, iters=options["iters"], epochs=options["epochs"], hold=hold)
        cfg = result.config
    else:
        cfg = _train_config(recipe, config_file, options)
        given = _file_settings(recipe, config_file) | {k: "--" + k.replace("_", "-") for k, v in options.items() if v is not None}
        with TrainPrinter(quiet=quiet, as_json=as_json) as printer:
            result = train(cfg, on_event=printer, force=force, given=given, hold=hold)
    if result.rank != 0:  # a distributed run: rank 0 reports (and writes the report) for all
        return
    say = printer.summary  # the human summary; --json has it in the done event
    iv, fv = result.initial_val_loss, result.final_val_loss
    val = f"; validation loss {iv:.3f} -> {fv:.3f} ({fv / iv:.0%} of the start)" if iv and fv is not None else ""
    before = result.total_before  # set when the resume went to another total than the checkpoint's
    resumed = "resumed" if before is None else "extended" if result.total > before else f"shortened from {before} steps,"
    session = f" ({resumed} after step {result.resumed_from}: {result.steps - result.resumed_from} steps)" if result.resumed_from is not None else ""
    say(f"Done: {result.steps} steps{session} in {fmt_duration(result.seconds)}, {result.tokens_per_sec:.0f} trained tokens/s, peak memory {fmt_bytes(result.peak_memory_bytes)}{val}")
    if result.best_step is not None:
        say(f"Best: step {result.best_step}, validation loss {result.best_val_loss:.3f}, in {result.run_dir / 'best'}" + (" (the adapters the run ends with are the last step's)" if result.best_step != result.steps else ""))
    if report:
        from ..report import write_report

        ev = eval_for(cfg.recipe)
        path = write_report(result.run_dir, n_samples=ev["samples"], max_tokens=min(ev["max_tokens"], 256), backend=cfg.backend)
        say(f"Report: {path} (loss curves in {path.parent / 'loss.png'})")
        printer.json_event("report", {"path": path, "plot": path.parent / "loss.png"})
    say(f"Adapters: {result.run_dir}  (next: mlxtune fuse --adapter {result.run_dir} -o fused)")


def _train_config(recipe: str | None, config_file: str | None, options: dict):
    """lora's and plan's settings: the recipe's, then the YAML file's, then the flags given (``options``; None: not given)."""
    from ..training.config import build, load_yaml
    from ..recipes import load as load_recipe

    if options.get("target_modules"):
        options = options | {"target_modules": [t.strip() for t in options["target_modules"].split(",") if t.strip()]}
    chosen = load_recipe(recipe) if recipe else None
    settings = dict(chosen.train) | {"recipe": chosen.ref} if chosen else {}
    settings |= load_yaml(config_file) if config_file else {}
    return build(settings, options)


def _with_fields(options: dict) -> dict:
    """The options with ``--field`` (repeatable FIELD=COLUMN) as the setting ``fields`` (None: not given)."""
    from ..data.rows import parse_fields

    specs = options.pop("field_specs", ())
    return options | {"fields": parse_fields(specs) if specs else None}


def _file_settings(recipe: str | None, config_file: str | None) -> dict[str, str]:
    """The settings a recipe or a -c file sets (as _train_config reads them), each with where it is set."""
    from ..training.config import load_yaml
    from ..recipes import load as load_recipe

    keys = {k: f"recipe {recipe}" for k in load_recipe(recipe).train} if recipe else {}
    return keys | ({k: str(config_file) for k in load_yaml(config_file)} if config_file else {})


def _flags_given(ctx: click.Context, exclude: set[str]) -> list[str]:
    """The options given on the command line (or the environment), spelled as the user can have typed them.

    ``--no-grad-checkpoint`` when that is the value given; an option with
    aliases as its help shows it (``-b/--batch-size``): click does not record
    which of them was typed.
    """
    from click.core import ParameterSource

    given = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in exclude:
            continue
        if ctx.get_parameter_source(param.name) not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        opts = param.secondary_opts if param.secondary_opts and ctx.params.get(param.name) is False else param.opts
        given.append("/".join(opts))
    return given


# ---------------------------------------------------------------- plan


@click.command(context_settings=CONTEXT)
@click.option("-m", "--model", help="Hub id, model directory, .gguf file or ollama:NAME[:TAG] (a model in Ollama). [default: HuggingFaceTB/SmolLM2-135M-Instruct]")
@click.option("-d", "--data", type=click.Path(), help="The data lora will train on: the sequence length planned for is its longest record's. [default: --max-seq-len]")
@click.option("-c", "--config", "config_file", type=click.Path(), help="YAML file of settings, as lora's; flags override it.")
@click.option("--recipe", help="Start from a recipe's settings, as lora does.")
@click.option("-b", "--batch-size", type=int, help="Sequences per micro-batch. [default: 4]")
@click.option("--grad-accumulation", type=int, help="Micro-batches per optimizer step. [default: 1]")
@click.option("--max-seq-len", type=int, help="Longest sequence, in tokens. [default: 1024]")
@click.option("--pack/--no-pack", default=None, help="Plan for packed rows of --max-seq-len tokens, as lora --pack trains. [default: off]")
@click.option("-r", "--rank", type=int, help="LoRA rank. [default: 8]")
@click.option("--layers", type=int, help="Adapt only the last N transformer blocks. [default: all]")
@click.option("--target-modules", help="Comma-separated linear layers to adapt (a fused projection, as Phi-3's qkv_proj, is one target). [default: all-linear]")
@click.option("--backend", type=BACKENDS, help=BACKEND_HELP + " [default: auto]")
@click.option("--dtype", type=DTYPES, help="Compute dtype. [default: float32 on CPU, the model's on a GPU]")
@click.option("--grad-checkpoint/--no-grad-checkpoint", default=None, help="Gradient checkpointing. [default: numpy: past its activation budget; mlx: off]")
@click.option("--auto/--no-auto", "auto_fit", default=None, help="Adjust batch, accumulation and checkpointing until the run fits. [default: on]")
@click.option("--skip-bad-lines", is_flag=True, default=None, help="Leave out data lines that fail validation, as lora does.")
@click.option("--field", "field_specs", multiple=True, metavar="FIELD=COLUMN", help="Read the data's COLUMN (or key) as FIELD, before the format is detected; repeatable: --field prompt=question --field completion=answer.")
@click.option("--thinking/--no-thinking", default=None, help="Render chat data with the chat template's thinking mode on, as lora --thinking would. [default: off]")
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(config_file, recipe, as_json, **options) -> None:
    """Estimate a training run's peak memory and check it against this machine's.

    Reads the model's config.json and safetensors headers, not its weights.
    Prints the estimate term by term, the memory available, and the verdict:
    fits, adjusted (with --auto: the micro-batch, accumulation and
    checkpointing lora will use) or does not fit (then an Error line and exit
    code 1, with what would). mlxtune lora makes the same plan before it trains.

    \b
    Examples:
      mlxtune plan --batch-size 8 --max-seq-len 2048
      mlxtune plan --data data/notes.jsonl --model ./models/smollm2 --json
    """
    import json

    from ..training.plan import plan_for

    p = plan_for(_train_config(recipe, config_file, _with_fields(options)))
    if as_json:
        click.echo(json.dumps(p.to_dict(), indent=1))
    else:
        for line in p.lines():
            click.echo(line)
    p.check(always=True)  # does not fit: 'Error: ...' and exit code 1, after the table (or the JSON) that says why


# ---------------------------------------------------------------- data


@click.group(context_settings=CONTEXT)
def data() -> None:
    """Inspect a data set before training on it, or convert it to JSONL.

    \b
    Examples:
      mlxtune data check data/notes.jsonl
      mlxtune data convert qa.parquet qa.jsonl --field prompt=question --field completion=answer
    """


@data.command("check", context_settings=CONTEXT)
@click.argument("path", type=click.Path())
@click.option("-m", "--model", help="Whose tokenizer counts the tokens: Hub id, model directory, .gguf or ollama:NAME. [default: HuggingFaceTB/SmolLM2-135M-Instruct]")
@click.option("--max-seq-len", type=click.IntRange(min=1), help="Count the records lora would truncate at this many tokens. [default: 1024]")
@click.option("--mask-prompt/--no-mask-prompt", default=None, help="Train only on completions/assistant turns, as lora would. [default: on for prompt/completion and chat data]")
@click.option("--valid-fraction", type=float, help="Share of a single file held out for validation, as lora does. [default: 0.1]")
@click.option("--seed", type=int, help="Seed of that split. [default: 0]")
@click.option("--skip-bad-lines", is_flag=True, help="Leave out lines that fail validation, as lora --skip-bad-lines would, and list each (file:line and why).")
@click.option("--thinking", is_flag=True, help="Render chats with the chat template's thinking mode on, as lora --thinking would.")
@click.option("--field", "field_specs", multiple=True, metavar="FIELD=COLUMN", help="Read the data's COLUMN (or key) as FIELD, as lora --field would; repeatable.")
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def data_check(path, model, max_seq_len, mask_prompt, valid_fraction, seed, skip_bad_lines, thinking, field_specs, offline, as_json) -> None:
    """Check a data set without training: sizes, token lengths, truncation, duplicates, overlaps.

    PATH is what lora's --data takes: a data file (JSONL, JSON array, CSV,
    TSV, Parquet, text; split into train/valid as lora splits it) or a
    directory of train/valid/test files or a Hugging Face dataset. Exits with
    'Error: ...' when the data cannot be trained on; warnings do not fail.

    \b
    Examples:
      mlxtune data check data/notes.jsonl
      mlxtune data check my_chats/ --model ./models/smollm2 --max-seq-len 512 --json
    """
    import json

    from ..data import formats
    from ..data.rows import parse_fields
    from ..training.config import TrainConfig
    from ..data.check import check

    d = TrainConfig()
    r = check(
        path, model, max_seq_len or d.max_seq_len, mask_prompt,
        d.valid_fraction if valid_fraction is None else valid_fraction, d.seed if seed is None else seed, offline, skip_bad_lines, thinking,
        parse_fields(field_specs),
    )
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=1))
        return
    click.echo(f"Data: {r.description}")
    sources: dict[tuple, list[str]] = {}
    for s in (s for s in r.splits if s.records and s.path):
        sources.setdefault((s.container, s.path), []).append(s.name)
    click.echo(f"Read as: {formats.get(r.format).title} records; " + ", ".join(f"{'/'.join(names)} {c} ({p})" for (c, p), names in sources.items()))
    click.echo(f"Tokens: as {r.model}'s tokenizer sees the {formats.get(r.format).title} records ({'prompt masked' if r.mask_prompt else 'every token trained'}), --max-seq-len {r.max_seq_len}")
    columns = {"split": 6, "records": 8, "tokens": 9, "trained": 9, "min": 6, "median": 7, "p90": 6, "p99": 6, "max": 6, "truncated": 10, "no target": 10, "duplicates": 11}
    click.echo("".join(f"{h:<{w}}" if h == "split" else f"{h:>{w}}" for h, w in columns.items()))
    for s in (s for s in r.splits if s.records):
        n = s.lengths
        tokens = [n.total, s.trained_tokens, n.min, n.median, n.p90, n.p99, n.max, s.truncated, s.no_target] if n else ["-"] * 9
        values = [s.name, s.records, *tokens, s.duplicates]
        click.echo("".join(f"{v:<{w}}" if h == "split" else f"{v:>{w}}" for (h, w), v in zip(columns.items(), values)))
    shared = [f"{o.split} {o.records} of {r.split(o.split).records} records" + (f" (same prompt: {o.prompts})" if o.prompts is not None else "") for o in r.overlaps if r.split(o.split).records]
    click.echo("Shared with train: " + ", ".join(shared))
    untrained = [f"{s.name} {s.untrained_turns}" for s in r.splits if s.untrained_turns]
    if untrained:
        click.echo('Assistant turns with "weight": 0 (not trained): ' + ", ".join(untrained))
    for w in r.warnings:
        click.echo(f"warning: {w}")
    fmt = formats.get(r.format)
    if not fmt.trainable:
        click.echo(f"Read: {fmt.title} records, which this version cannot train on (see the warning above)")
        return
    click.echo("OK: usable for training" + (f", with {len(r.warnings)} warning(s) above" if r.warnings else ""))


@data.command("convert", context_settings=CONTEXT)
@click.argument("src", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--field", "field_specs", multiple=True, metavar="FIELD=COLUMN", help="Read the data's COLUMN (or key) as FIELD; repeatable: --field prompt=question --field completion=answer.")
@click.option("--skip-bad-lines", is_flag=True, help="Leave out records that fail validation, and list each (file:line and why), instead of stopping.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def data_convert(src, out, field_specs, skip_bad_lines, force, as_json) -> None:
    """Write any data mlxtune reads as its JSONL: a file as OUT.jsonl, a directory as OUT/train|valid|test.jsonl.

    SRC is a data file (JSONL, JSON array, CSV, TSV, Parquet, Arrow, .txt/.md)
    or a directory of splits (a Hugging Face dataset too). Every record is
    validated before anything is written; the output is renamed into place
    whole. Prints the container and format detected.

    \b
    Examples:
      mlxtune data convert alpaca.json alpaca.jsonl
      mlxtune data convert hf_dataset/ my_data/ --field prompt=question --field completion=answer
    """
    import dataclasses
    import json

    from ..data.rows import parse_fields
    from ..data.to_jsonl import convert_data

    r = convert_data(src, out, parse_fields(field_specs), skip_bad_lines, force)
    if as_json:
        click.echo(json.dumps({"output": r.output, "layout": r.layout, "splits": [dataclasses.asdict(s) for s in r.splits],
                               "skipped": [{"path": e.path, "line": e.line, "field": e.field, "reason": e.reason} for e in r.skipped]}, indent=1))
        return
    for e in r.skipped[:20]:
        click.echo(f"skipped {e}", err=True)
    if r.layout:
        click.echo(f"Read: {src} ({r.layout})")
    for s in r.splits:
        click.echo(f"{s.name}: {s.records} {s.format} records from {s.source} ({s.container}) -> {s.output}")
    click.echo(f"Wrote {r.output}" + (f" ({len(r.skipped)} bad record(s) left out)" if r.skipped else ""))
