"""The short report a training run leaves in its directory: ``report.md`` and ``loss.png``.

Built from what the run wrote (``adapter_config.json``, ``metrics.jsonl``), so
it can be made again for any run: the settings, the training and validation
loss curves as a picture, validation loss and perplexity before and after,
and a few validation prompts answered by the base model and by the tuned one.
"""

from __future__ import annotations

import math
from pathlib import Path

from .training.checkpoint import read_metrics
from .fsutil import atomic_write_text
from .training.run_schema import DataInfo, RunConfig, RunSettings

PNG_SIZE = (800, 480)  # width, height of loss.png


def loss_curves(metrics: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """{'train': (steps, losses), 'valid': (steps, losses)} from metrics.jsonl records."""
    train = [(m["step"], m["loss"]) for m in metrics if m.get("loss") is not None]
    valid = [(m["step"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
    return {name: ([p[0] for p in pts], [p[1] for p in pts]) for name, pts in (("train", train), ("valid", valid)) if pts}


def write_loss_png(run_dir: Path, metrics: list[dict]) -> Path:
    from .plot import encode_png, line_chart

    img = line_chart(loss_curves(metrics), *PNG_SIZE, title="loss", xlabel="step", ylabel="loss")
    path = Path(run_dir) / "loss.png"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encode_png(img))
    tmp.replace(path)
    return path


def samples(run_dir: Path, n: int, max_tokens: int, backend: str = "auto") -> list[dict]:
    """The first ``n`` validation prompts with their reference, the base's answer and the tuned model's."""
    from .data.eval_split import eval_records, prompt_and_reference, prompt_text, run_skips_bad_lines
    from .inference import answers, load_model_or_run_base

    run = RunConfig.from_file(run_dir)
    run_cfg, data = run.settings, run.data_path
    if n <= 0 or data is None or not data.exists():
        return []
    records, fmt, *_ = eval_records(data, "valid", run_cfg, skip_bad_lines=run_skips_bad_lines(run_cfg))
    if not fmt.has_answers or not records:
        return []
    prompts, references = zip(*(prompt_and_reference(r, fmt) for r in records[:n]))
    out = [{"prompt": prompt_text(p), "reference": ref} for p, ref in zip(prompts, references)]
    for name, adapter in (("base", None), ("tuned", run_dir)):
        loaded, _ = load_model_or_run_base(run_dir, None, adapter, backend)
        for row, answer in zip(out, answers(loaded, prompts, max_tokens)):
            row[name] = answer
        del loaded
    return out


def write_report(run_dir: str | Path, n_samples: int = 3, max_tokens: int = 160, backend: str = "auto") -> Path:
    """Write ``report.md`` and ``loss.png`` into the run directory; returns the report's path."""
    run_dir = Path(run_dir)
    meta = RunConfig.from_file(run_dir)
    cfg = meta.settings
    metrics = read_metrics(run_dir)
    write_loss_png(run_dir, metrics)
    vals = [m for m in metrics if m.get("val_loss") is not None]
    steps = [m for m in metrics if m.get("loss") is not None]
    lines = [f"# Training report: {run_dir.name}", ""]
    base = meta.base_model
    data = meta.data or DataInfo()
    lines += [
        f"- **Model**: {(base.spec or base.path) if base else None}",
        f"- **Data**: {data.description if data.description is not None else cfg.data}",
        f"- **Recipe**: {cfg.recipe or 'none'}",
        f"- **Compute**: {meta.backend} backend; {meta.compute if meta.compute is not None else ''}",
        f"- **LoRA**: rank {cfg.rank}, alpha {cfg.alpha} (scale {cfg.scale}), dropout {cfg.dropout}"
        f"{', DoRA' if cfg.dora else ''}, on {', '.join(meta.lora_parameters.keys or ['all linear layers'])} of {meta.num_layers} blocks",
        f"- **Training**: {cfg.iters} steps, batch {cfg.batch_size}{_accumulation(cfg)}, learning rate {cfg.learning_rate} (warmup {cfg.warmup}, cosine to {cfg.min_lr_ratio}x), max sequence {cfg.max_seq_len} tokens, seed {cfg.seed}",
    ]
    lines.append(f"- **Validation**: {_validation(cfg, data)}")
    if len(meta.schedule or []) > 1:  # extended with --resume --iters: one warmup + cosine cycle per extension
        lines.append("- **Extended**: learning-rate cycles over steps " + ", ".join(f"{a + 1}-{b}" for a, b in meta.schedule) + " (each a warmup and a cosine decay)")
    start = meta.init_adapter
    if start:
        lines.append(f"- **Started from**: the {start.kind} adapter {start.path}" + (f" (step {start.step})" if start.step is not None else ""))
    if steps:
        last = steps[-1]
        lines.append(f"- **Run**: {last['step']} steps in {last.get('elapsed', 0) / 60:.1f} min, {last.get('trained_tokens', 0)} trained tokens, peak memory {last.get('peak_memory_bytes', 0) / 1e9:.2f} GB")
    lines += ["", "![loss](loss.png)", ""]
    if vals:
        first, best, final = vals[0], min(vals, key=lambda m: m["val_loss"]), vals[-1]
        lines += ["| validation | step | loss | perplexity |", "|---|---|---|---|"]
        for label, m in (("before training", first), ("best", best), ("final", final)):
            lines.append(f"| {label} | {m['step']} | {m['val_loss']:.3f} | {math.exp(min(m['val_loss'], 50)):.2f} |")
        lines += ["", f"Validation loss {final['val_loss'] / first['val_loss']:.0%} of where it started." if first["val_loss"] else "", ""]
    rows = samples(run_dir, n_samples, max_tokens, backend) if n_samples else []
    if rows:
        lines += ["## Samples (validation prompts, greedy)", ""]
        for i, row in enumerate(rows, 1):
            lines += [f"### {i}", "", "**Prompt**", "", _quote(row["prompt"]), "", "**Reference**", "", _quote(row["reference"]), "", "**Base model**", "", _quote(row["base"]), "", "**Tuned**", "", _quote(row["tuned"]), ""]
    lines.append("Measure it on held-out data: `mlxtune eval --adapter " + str(run_dir) + " --compare-base`")
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _validation(cfg: RunSettings, data: DataInfo) -> str:
    """What the validation losses below are measured on, or why there are none."""
    if cfg.val_every == 0:
        return "none (val_every 0): no validation loss, no best/ adapters, no early stopping"
    if not data.valid:
        return "none: no validation records"
    every = f"every {cfg.val_every} steps and at the end"
    n = cfg.val_batches
    if n is not None and n > 0:
        return f"the first {n} batches of {cfg.batch_size} of the {data.valid} validation examples (val_batches), {every}"
    return f"all {data.valid} validation examples, {every}"


def _accumulation(cfg: RunSettings) -> str:
    parts = [f" x {cfg.grad_accumulation} micro-batches a step" if (cfg.grad_accumulation or 1) > 1 else "", ", gradient checkpointing" if cfg.grad_checkpoint else ""]
    return "".join(parts)


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text or "(empty)").splitlines()) or "> (empty)"
