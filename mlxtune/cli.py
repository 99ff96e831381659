"""The ``mlxtune`` command line. The only module that decides to print, and that exits.

Training progress is rendered by ``progress.TrainPrinter``, which the
``lora`` command creates and hands to the trainer as its event callback.

Commands import their implementation lazily, so ``mlxtune --help`` and
``mlxtune CMD --help`` never pay for importing mlx.
"""

from __future__ import annotations

import sys

import click

from .errors import MlxtuneError
from .progress import fmt_bytes, fmt_duration

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DTYPES = click.Choice(["float32", "float16", "bfloat16"])
BACKENDS = click.Choice(["auto", "mlx", "numpy"])
BACKEND_HELP = "Compute backend: mlx, or numpy (runs anywhere); auto: mlx on a GPU, numpy on a CPU where it implements the model."


class _Group(click.Group):
    """Turns mlxtune's own errors into one line and an exit code; tracebacks are for bugs."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MlxtuneError as e:
            click.echo(f"{e.label}: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:  # before anything was written (training handles its own)
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(package_name="mlxtune")
def cli() -> None:
    """Fine-tune small language models with LoRA on a laptop, offline.

    \b
    The everyday journey:
      mlxtune lora --data data/notes.jsonl      # train an adapter (runs/notes)
      mlxtune fuse --adapter runs/notes -o fused
      mlxtune generate --model fused --prompt "Tidy up these notes: ..."
    """


# ---------------------------------------------------------------- download


@cli.command(context_settings=CONTEXT)
@click.argument("model")
@click.option("--revision", help="Branch, tag or commit hash on the Hub.")
@click.option("--offline", is_flag=True, default=None, help="Only look in the local cache (also HF_HUB_OFFLINE=1).")
def download(model: str, revision: str | None, offline: bool | None) -> None:
    """Download a model from the Hugging Face Hub into the local cache.

    Only the files a model needs (config, safetensors weights, tokenizer) are
    fetched. Prints the local path; afterwards the model works offline.

    \b
    Example:
      mlxtune download HuggingFaceTB/SmolLM2-135M-Instruct
    """
    from .hub import download as do_download

    click.echo(str(do_download(model, revision=revision, offline=offline)))


# ---------------------------------------------------------------- convert


@cli.command(context_settings=CONTEXT)
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="Directory to write the MLX model to.")
@click.option("--dtype", type=DTYPES, help="Store dense weights in this dtype (dequantizes a quantized source).")
@click.option("-q", "--quantize", is_flag=True, help="Quantize the weights (affine, like mlx-lm).")
@click.option("--q-bits", type=click.Choice(["4", "8"]), default="4", show_default=True, help="Bits per weight when quantizing.")
@click.option("--q-group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True, help="Weights per quantization group.")
@click.option("--revision", help="Hub revision (branch, tag or commit).")
@click.option("--offline", is_flag=True, default=None, help="Resolve Hub ids from the local cache only.")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
def convert(model, output, dtype, quantize, q_bits, q_group_size, revision, offline, force) -> None:
    """Convert a Hub id, a Hugging Face directory or a .gguf file to MLX layout.

    The result loads with mlx_lm.load and with every mlxtune command. GGUF
    Q4_0/Q4_1/Q8_0 tensors stay quantized without loss; the tokenizer and chat
    template are rebuilt from the GGUF metadata.

    \b
    Examples:
      mlxtune convert SmolLM2-135M-Instruct.Q4_1.gguf -o models/smollm2
      mlxtune convert HuggingFaceTB/SmolLM2-135M-Instruct -o models/smollm2-q8 -q --q-bits 8
    """
    from .convert import convert as do_convert

    r = do_convert(model, output, dtype=dtype, quantize=quantize, q_bits=int(q_bits), q_group_size=int(q_group_size), revision=revision, offline=offline, force=force)
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    q = r.quantization
    what = f"{q['bits']}-bit (group {q['group_size']})" if q else (r.dtype or "weights as stored")
    overrides = [v for v in (q or {}).values() if isinstance(v, dict)]
    if overrides:
        what += f", {len(overrides)} layer(s) at other widths ({', '.join(sorted({str(v.get('bits')) + '-bit' for v in overrides}))})"
    click.echo(f"Converted {r.source.spec} ({r.source.kind}) -> {r.path}: {r.n_parameters / 1e6:.1f}M parameters, {what}, {fmt_bytes(r.size_bytes)}")


# ---------------------------------------------------------------- lora


@cli.command(context_settings=CONTEXT)
@click.option("-d", "--data", type=click.Path(), help="JSONL file (split into train/valid) or directory with train/valid/test.jsonl.")
@click.option("-m", "--model", help="Hub id, model directory or .gguf file. [default: HuggingFaceTB/SmolLM2-135M-Instruct]")
@click.option("-o", "--output", type=click.Path(), help="Run directory. [default: runs/<data name>]")
@click.option("-c", "--config", "config_file", type=click.Path(), help="YAML file of settings; flags override it.")
@click.option("--recipe", help="Start from a recipe's settings (mlxtune recipes lists them; or a recipe .yaml); -c and flags override it.")
@click.option("--iters", type=int, help="Training steps (default: one epoch).")
@click.option("--epochs", type=float, help="Passes over the training set (instead of --iters).")
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
@click.option("--target-modules", help="Comma-separated linear layers to adapt, e.g. q_proj,v_proj. [default: all-linear]")
@click.option("--max-seq-len", type=int, help="Longer records are truncated (with a warning). [default: 1024]")
@click.option("--mask-prompt/--no-mask-prompt", default=None, help="Train only on completions/assistant turns. [default: on for prompt/completion and chat data]")
@click.option("--val-every", type=int, help="Steps between validation-loss reports. [default: 25]")
@click.option("--save-every", type=int, help="Steps between checkpoints. [default: 50]")
@click.option("--early-stop", type=int, help="Stop after this many validations without a new best validation loss. The best adapters are always kept in RUN/best. [default: off]")
@click.option("--seed", type=int, help="Seed for the data split, order and LoRA init. [default: 0]")
@click.option("--backend", type=BACKENDS, help="mlx, or numpy (runs anywhere; the faster on a CPU for the llama family); auto: mlx on a GPU, numpy on a CPU where it implements the model (see README). [default: auto]")
@click.option("--dtype", type=DTYPES, help="Compute dtype. [default: float32 on CPU, the model's on a GPU]")
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
@click.option("--force", is_flag=True, help="Replace an existing run directory.")
@click.option("--distributed", is_flag=True, default=None, help="Require a data-parallel run of several processes started by mlx.launch (one is detected without it; see README).")
@click.option("--resume", "resume_run", type=click.Path(), help="Continue this run directory from its last checkpoint, with the settings it was started with.")
@click.option("--report/--no-report", default=True, help="Write report.md and loss.png, with a few answers of the base and the tuned model, when done. [default: on]")
@click.option("--quiet", is_flag=True, help="Print only the final summary (and warnings about the data or model, on stderr).")
@click.option("--json", "as_json", is_flag=True, help="For scripts: one JSON object per line on stdout for every event (start, step, val, save, note, done, ...), nothing else.")
@click.pass_context
def lora(ctx, config_file, recipe, force, resume_run, report, quiet, as_json, **options) -> None:
    """Fine-tune a model with LoRA on your JSONL data.

    Writes adapters.safetensors and adapter_config.json (mlx-lm format),
    checkpoints and metrics.jsonl to the run directory. Ctrl-C (or SIGTERM)
    finishes the step, saves a checkpoint and stops; --resume RUN goes on.

    \b
    Examples:
      mlxtune lora --data data/notes.jsonl
      mlxtune lora --data my_chats/ --model ./models/smollm2 --iters 300 -o runs/mine
      mlxtune lora --resume runs/mine
    """
    from .progress import TrainPrinter
    from .recipes import eval_for
    from .train import resume, train

    if quiet and as_json:
        raise click.UsageError("--quiet and --json cannot be used together (--json already prints nothing but JSON lines)")
    if resume_run:
        given = _flags_given(ctx, exclude={"resume_run", "report", "quiet", "as_json"})
        if given:
            raise click.UsageError(f"--resume continues a run with the settings it was started with; drop {', '.join(given)}")
        with TrainPrinter(quiet=quiet, as_json=as_json) as printer:
            result = resume(resume_run, on_event=printer)
        cfg = result.config
    else:
        cfg = _train_config(recipe, config_file, options)
        with TrainPrinter(quiet=quiet, as_json=as_json) as printer:
            result = train(cfg, on_event=printer, force=force)
    if result.rank != 0:  # a distributed run: rank 0 reports (and writes the report) for all
        return
    say = printer.summary  # the human summary; --json has it in the done event
    iv, fv = result.initial_val_loss, result.final_val_loss
    val = f"; validation loss {iv:.3f} -> {fv:.3f} ({fv / iv:.0%} of the start)" if iv and fv is not None else ""
    session = f" (resumed after step {result.resumed_from}: {result.steps - result.resumed_from} steps)" if result.resumed_from is not None else ""
    say(f"Done: {result.steps} steps{session} in {fmt_duration(result.seconds)}, {result.tokens_per_sec:.0f} trained tokens/s, peak memory {fmt_bytes(result.peak_memory_bytes)}{val}")
    if result.best_step is not None:
        say(f"Best: step {result.best_step}, validation loss {result.best_val_loss:.3f}, in {result.run_dir / 'best'}" + (" (the adapters the run ends with are the last step's)" if result.best_step != result.steps else ""))
    if report:
        from .report import write_report

        ev = eval_for(cfg.recipe)
        path = write_report(result.run_dir, n_samples=ev["samples"], max_tokens=min(ev["max_tokens"], 256), backend=cfg.backend)
        say(f"Report: {path} (loss curves in {path.parent / 'loss.png'})")
        printer.json_event("report", {"path": path, "plot": path.parent / "loss.png"})
    say(f"Adapters: {result.run_dir}  (next: mlxtune fuse --adapter {result.run_dir} -o fused)")


def _train_config(recipe: str | None, config_file: str | None, options: dict):
    """lora's and plan's settings: the recipe's, then the YAML file's, then the flags given (``options``; None: not given)."""
    from .config import build, load_yaml
    from .recipes import load as load_recipe

    if options.get("target_modules"):
        options = options | {"target_modules": [t.strip() for t in options["target_modules"].split(",") if t.strip()]}
    chosen = load_recipe(recipe) if recipe else None
    settings = dict(chosen.train) | {"recipe": chosen.ref} if chosen else {}
    settings |= load_yaml(config_file) if config_file else {}
    return build(settings, options)


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


@cli.command(context_settings=CONTEXT)
@click.option("-m", "--model", help="Hub id, model directory or .gguf file. [default: HuggingFaceTB/SmolLM2-135M-Instruct]")
@click.option("-d", "--data", type=click.Path(), help="The data lora will train on: the sequence length planned for is its longest record's. [default: --max-seq-len]")
@click.option("-c", "--config", "config_file", type=click.Path(), help="YAML file of settings, as lora's; flags override it.")
@click.option("--recipe", help="Start from a recipe's settings, as lora does.")
@click.option("-b", "--batch-size", type=int, help="Sequences per micro-batch. [default: 4]")
@click.option("--grad-accumulation", type=int, help="Micro-batches per optimizer step. [default: 1]")
@click.option("--max-seq-len", type=int, help="Longest sequence, in tokens. [default: 1024]")
@click.option("-r", "--rank", type=int, help="LoRA rank. [default: 8]")
@click.option("--layers", type=int, help="Adapt only the last N transformer blocks. [default: all]")
@click.option("--target-modules", help="Comma-separated linear layers to adapt. [default: all-linear]")
@click.option("--backend", type=BACKENDS, help=BACKEND_HELP + " [default: auto]")
@click.option("--dtype", type=DTYPES, help="Compute dtype. [default: float32 on CPU, the model's on a GPU]")
@click.option("--grad-checkpoint/--no-grad-checkpoint", default=None, help="Gradient checkpointing. [default: numpy: past its activation budget; mlx: off]")
@click.option("--auto/--no-auto", "auto_fit", default=None, help="Adjust batch, accumulation and checkpointing until the run fits. [default: on]")
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

    from .plan import plan_for

    p = plan_for(_train_config(recipe, config_file, options))
    if as_json:
        click.echo(json.dumps(p.to_dict(), indent=1))
    else:
        for line in p.lines():
            click.echo(line)
    p.check(always=True)  # does not fit: 'Error: ...' and exit code 1, after the table (or the JSON) that says why


# ---------------------------------------------------------------- fuse


@cli.command(context_settings=CONTEXT)
@click.option("-a", "--adapter", required=True, type=click.Path(), help="Run directory written by 'mlxtune lora', or a PEFT LoRA adapter directory.")
@click.option("-m", "--model", help="Base model. [default: the one the adapter was trained on]")
@click.option("-o", "--output", required=True, type=click.Path(), help="Directory for the fused model.")
@click.option("--dtype", type=DTYPES, help="dtype of the fused weights. [default: the base's; float16 for a quantized base]")
@click.option("-q", "--quantize", is_flag=True, help="Re-quantize after fusing (may lose part of the adapter's effect).")
@click.option("--q-bits", type=click.Choice(["4", "8"]), help="Bits when re-quantizing. [default: the base's, else 4]")
@click.option("--q-group-size", type=click.Choice(["32", "64", "128"]), help="Group size when re-quantizing. [default: the base's, else 64]")
@click.option("--backend", type=BACKENDS, default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
def fuse(adapter, model, output, dtype, quantize, q_bits, q_group_size, backend, offline, force) -> None:
    """Merge LoRA adapters into the base weights: a standalone model.

    \b
    Example:
      mlxtune fuse --adapter runs/notes -o fused
    """
    from .fuse import fuse as do_fuse

    r = do_fuse(adapter, output, model=model, dtype=dtype, quantize=quantize, q_bits=int(q_bits) if q_bits else None, q_group_size=int(q_group_size) if q_group_size else None, offline=offline, force=force, backend=backend)
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    kind = f"{r.quantization['bits']}-bit" if r.quantization else r.dtype
    click.echo(f"Fused {r.fused_layers} adapter layers into {r.base} -> {r.path} ({kind}, {fmt_bytes(r.size_bytes)})")


# ---------------------------------------------------------------- generate


@cli.command(context_settings=CONTEXT)
@click.option("-m", "--model", help="Model: Hub id, directory or .gguf. [default: the adapter's base, else SmolLM2-135M-Instruct]")
@click.option("-a", "--adapter", type=click.Path(), help="Run directory with adapters to apply, or a PEFT LoRA adapter directory.")
@click.option("-p", "--prompt", required=True, help="The prompt ('-' reads standard input).")
@click.option("--max-tokens", type=int, default=256, show_default=True, help="Most tokens to generate.")
@click.option("--temp", type=float, default=0.0, show_default=True, help="Sampling temperature; 0 is greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling threshold.")
@click.option("--seed", type=int, help="Random seed for sampling.")
@click.option("--system", help="System message (chat models).")
@click.option("--chat/--no-chat", default=True, help="Use the model's chat template. [default: on]")
@click.option("--backend", type=BACKENDS, default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
@click.option("-v", "--verbose", is_flag=True, help="Print speed and memory after the text.")
def generate(model, adapter, prompt, max_tokens, temp, top_p, seed, system, chat, backend, offline, verbose) -> None:
    """Generate text from a model (and adapter), streaming tokens as they come.

    \b
    Examples:
      mlxtune generate --model fused --prompt "Tidy up these notes: alice to fix login b4 fri"
      mlxtune generate --adapter runs/notes --prompt "..." --temp 0.7 --seed 1
    """
    from . import runtime
    from .generate import generate as do_generate, load

    if prompt == "-":
        prompt = sys.stdin.read()
    loaded = load(model, adapter, offline=offline, backend=backend)
    for note in loaded.notes:
        click.echo(f"note: {note}", err=True)
    last = None
    for chunk in do_generate(loaded, prompt, max_tokens=max_tokens, temp=temp, top_p=top_p, seed=seed, chat=chat, system=system):
        click.echo(chunk.text, nl=False)
        last = chunk
    click.echo()
    if verbose and last is not None:
        where = runtime.describe() if loaded.backend == "mlx" else "numpy backend, float32"
        device = runtime.current_device() if loaded.backend == "mlx" else "cpu"
        click.echo(f"[{last.prompt_tokens} prompt tokens, {last.generation_tps:.1f} tokens/s, peak {fmt_bytes(runtime.peak_memory_bytes(device))}; {where}]", err=True)


# ---------------------------------------------------------------- export


@cli.command(context_settings=CONTEXT)
@click.option("-f", "--format", "fmt", required=True, type=click.Choice(["gguf", "hf", "peft"]), help="gguf: llama.cpp and Ollama; hf: transformers; peft: the adapter for peft.")
@click.option("-a", "--adapter", type=click.Path(), help="Run directory of 'mlxtune lora' (gguf/hf: fused into its base first).")
@click.option("-m", "--model", help="Model directory, Hub id or .gguf (gguf/hf); with --adapter, its base. [default: the adapter's base]")
@click.option("-o", "--output", required=True, type=click.Path(), help="gguf: the .gguf file (or a directory for it); hf, peft: a directory.")
@click.option("--outtype", type=click.Choice(["f32", "f16", "q8_0", "q4_0"]), default="f16", show_default=True, help="gguf: tensor type of the weights.")
@click.option("--dtype", type=DTYPES, help="hf: stored dtype. [default: the source's, else float16]")
@click.option("--base-model", help="peft: the base_model_name_or_path to record. [default: the run's Hub id]")
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
def export(fmt, adapter, model, output, outtype, dtype, base_model, offline, force) -> None:
    """Export a model or an adapter for llama.cpp/Ollama, transformers or peft.

    \b
    Examples:
      mlxtune export -f gguf --adapter runs/notes -o notes.gguf --outtype q8_0
      ollama create notes -f Modelfile          # the Modelfile is written beside the .gguf
      mlxtune export -f hf --model fused -o hf-model
      mlxtune export -f peft --adapter runs/notes -o notes-peft
    """
    from .export import export as do_export

    r = do_export(fmt, output, adapter=adapter, model=model, outtype=outtype, dtype=dtype, base_model=base_model, offline=offline, force=force)
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"Exported {r.path}: {r.what}, {fmt_bytes(r.size_bytes)}")
    if r.extra is not None:
        click.echo(f"Ollama: {r.extra} (ollama create NAME -f {r.extra})")


# ---------------------------------------------------------------- eval


@cli.command("eval", context_settings=CONTEXT)
@click.option("-a", "--adapter", type=click.Path(), help="Run directory written by 'mlxtune lora' (its base, data and recipe are the defaults below), or a PEFT adapter.")
@click.option("-m", "--model", help="Model to evaluate, or the base for --adapter. [default: the adapter's base]")
@click.option("-d", "--data", type=click.Path(), help="JSONL file or data directory. [default: the run's data]")
@click.option("--split", type=click.Choice(["test", "valid", "train"]), help="Which records. [default: test.jsonl of a directory, else valid; a single file: the whole file]")
@click.option("--task", type=click.Choice(["loss", "summarize", "style"]), help="What to measure beyond loss. [default: the run's recipe's, else loss]")
@click.option("--recipe", help="Take the eval settings of this recipe. [default: the run's]")
@click.option("--compare-base", is_flag=True, help="Also evaluate the base model, side by side.")
@click.option("--max-tokens", type=int, help="New tokens per answer. [default: the recipe's, else 256]")
@click.option("--limit", type=int, help="Evaluate only the first N records.")
@click.option("--samples", type=int, help="Side-by-side examples to show. [default: 3]")
@click.option("--json", "json_path", type=click.Path(), help="Write the results here. [default: <run>/eval-<split>.json with --adapter]")
@click.option("--backend", type=BACKENDS, default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
def eval_(adapter, model, data, split, task, recipe, compare_base, max_tokens, limit, samples, json_path, backend, offline) -> None:
    """Measure a model (with or without an adapter) on held-out data.

    Loss and perplexity always; with a task, the greedy answers to the test
    prompts and their measure (summarize: ROUGE-1/2/L against the references;
    style: the share of the style's markers, the phrases most training
    answers share); and a few answers side by side.

    \b
    Examples:
      mlxtune eval --adapter runs/support_calls --compare-base
      mlxtune eval --model models/smollm2 --data data/support_calls --task summarize
    """
    import json
    from pathlib import Path

    from .evaluate import evaluate
    from .fsutil import atomic_write_text

    if limit is not None and limit <= 0 or max_tokens is not None and max_tokens <= 0 or samples is not None and samples < 0:
        raise click.UsageError("--limit and --max-tokens must be positive, --samples >= 0")
    last = {}

    def progress(name: str, done: int, total: int) -> None:
        if done == total or done - last.get(name, 0) >= max(1, total // 10):
            last[name] = done
            click.echo(f"  {name}: {done}/{total} answers", err=True)

    r = evaluate(adapter, model, data, split, task, recipe, compare_base, max_tokens, limit, samples, backend, offline, on_progress=progress)
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"Eval: {r.source}: {r.records} records, task {r.task}")
    _print_eval_table(r)
    if r.markers:
        click.echo(f"Style markers ({len(r.markers)}, from the training answers): " + ", ".join(f"'{m}'" for m in r.markers[:12]) + (" ..." if len(r.markers) > 12 else ""))
    result = r.to_dict()
    for i, sample in enumerate(result["side_by_side"], 1):
        click.echo(f"\n--- sample {i} ---\n[prompt]\n{_clip(sample['prompt'], 600)}\n[reference]\n{sample['reference']}")
        for s in r.scores:
            if s.name in sample:
                click.echo(f"[{s.name}]\n{sample[s.name]}")
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


@cli.command(context_settings=CONTEXT)
@click.argument("name", required=False)
def recipes(name) -> None:
    """List the recipes, or show one (its notes and settings).

    \b
    Examples:
      mlxtune recipes
      mlxtune recipes summarize
    """
    from . import recipes as rc

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


# ---------------------------------------------------------------- data


@cli.group(context_settings=CONTEXT)
def data() -> None:
    """Inspect a data set before training on it.

    \b
    Example:
      mlxtune data check data/notes.jsonl
    """


@data.command("check", context_settings=CONTEXT)
@click.argument("path", type=click.Path())
@click.option("-m", "--model", help="Whose tokenizer counts the tokens: Hub id, model directory or .gguf. [default: HuggingFaceTB/SmolLM2-135M-Instruct]")
@click.option("--max-seq-len", type=click.IntRange(min=1), help="Count the records lora would truncate at this many tokens. [default: 1024]")
@click.option("--mask-prompt/--no-mask-prompt", default=None, help="Train only on completions/assistant turns, as lora would. [default: on for prompt/completion and chat data]")
@click.option("--valid-fraction", type=float, help="Share of a single file held out for validation, as lora does. [default: 0.1]")
@click.option("--seed", type=int, help="Seed of that split. [default: 0]")
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def data_check(path, model, max_seq_len, mask_prompt, valid_fraction, seed, offline, as_json) -> None:
    """Check a data set without training: sizes, token lengths, truncation, duplicates, overlaps.

    PATH is what lora's --data takes: a JSONL file (split into train/valid as
    lora splits it) or a directory with train/valid/test.jsonl. Exits with
    'Error: ...' when the data cannot be trained on; warnings do not fail.

    \b
    Examples:
      mlxtune data check data/notes.jsonl
      mlxtune data check my_chats/ --model ./models/smollm2 --max-seq-len 512 --json
    """
    import json

    from .config import TrainConfig
    from .datacheck import check

    d = TrainConfig()
    r = check(
        path, model, max_seq_len or d.max_seq_len, mask_prompt,
        d.valid_fraction if valid_fraction is None else valid_fraction, d.seed if seed is None else seed, offline,
    )
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=1))
        return
    click.echo(f"Data: {r.description}")
    click.echo(f"Tokens: as {r.model}'s tokenizer sees the {r.format} records ({'prompt masked' if r.mask_prompt else 'every token trained'}), --max-seq-len {r.max_seq_len}")
    columns = {"split": 6, "records": 8, "tokens": 9, "min": 6, "median": 7, "p90": 6, "p99": 6, "max": 6, "truncated": 10, "no target": 10, "duplicates": 11}
    click.echo("".join(f"{h:<{w}}" if h == "split" else f"{h:>{w}}" for h, w in columns.items()))
    for s in (s for s in r.splits if s.records):
        n = s.lengths
        tokens = [n.total, n.min, n.median, n.p90, n.p99, n.max, s.truncated, s.no_target] if n else ["-"] * 8
        values = [s.name, s.records, *tokens, s.duplicates]
        click.echo("".join(f"{v:<{w}}" if h == "split" else f"{v:>{w}}" for (h, w), v in zip(columns.items(), values)))
    shared = [f"{o.split} {o.records} of {r.split(o.split).records} records" + (f" (same prompt: {o.prompts})" if o.prompts is not None else "") for o in r.overlaps if r.split(o.split).records]
    click.echo("Shared with train: " + ", ".join(shared))
    for w in r.warnings:
        click.echo(f"warning: {w}")
    click.echo("OK: usable for training" + (f", with {len(r.warnings)} warning(s) above" if r.warnings else ""))


def main() -> None:
    try:
        cli(prog_name="mlxtune")
    except KeyboardInterrupt:  # a Ctrl-C landing after a command's own handling (e.g. while it prints its last words)
        click.echo("Interrupted.", err=True)
        sys.exit(130)
