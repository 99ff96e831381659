"""``mlxtune eval``: how well a model (with or without an adapter) does on held-out data.

For every model evaluated (the tuned one, and the base with ``compare_base``):

* **loss and perplexity** on the split, over the same target tokens training
  uses (answers only for chat and prompt/completion data);
* the model's **greedy answers** to the split's prompts, and the task's
  measure of them against the references:
  - ``summarize``: ROUGE-1/2/L F-measures (``metrics.rouge``);
  - ``style``: the share of the style's markers each answer carries, the
    markers being the word n-grams that at least ``marker_share`` of the
    *training* answers contain (``metrics.style_markers``): a check of the
    style that needs no classifier, learned from the user's own data, with
    the held-out references' own score as its ceiling;
* side-by-side samples: prompt, reference, base answer, tuned answer.

Everything lands in one JSON-ready dict (``EvalResult.to_dict``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .data.records import trains_prompt_masked
from .errors import DataError, UsageError
from .data.formats import DataFormat
from .training.run_schema import RunConfig, RunSettings

SPLITS = ("test", "valid", "train", "all")


@dataclass
class ModelScores:
    name: str  # "base" | "tuned"
    model: str
    adapter: str | None
    loss: float | None
    perplexity: float | None
    tokens: int
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class EvalResult:
    data: str
    split: str  # test | valid | train | all
    source: str  # the records, in words
    task: str
    records: int
    scores: list[ModelScores]
    references: list[str]
    prompts: list[str]
    markers: list[str] = field(default_factory=list)
    reference_metrics: dict[str, float] = field(default_factory=dict)
    samples: int = 3
    notes: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # the bad lines left out (--skip-bad-lines, or the run's): path, line, field, reason
    trained_on: int | None = None  # how many of the records the run trained on (None: no run, or its data is gone)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["side_by_side"] = [
            {"prompt": self.prompts[i], "reference": self.references[i]} | {s.name: s.outputs[i] for s in self.scores if i < len(s.outputs)}
            for i in range(min(self.samples, len(self.prompts)))
        ]
        return d


def evaluate(
    adapter: str | Path | None = None,
    model: str | None = None,
    data: str | Path | None = None,
    split: str | None = None,
    task: str | None = None,
    recipe: str | None = None,
    compare_base: bool = False,
    max_tokens: int | None = None,
    limit: int | None = None,
    samples: int | None = None,
    backend: str = "auto",
    offline: bool | None = None,
    on_progress: Callable[[str, int, int], None] = lambda name, done, total: None,
    skip_bad_lines: bool = False,
) -> EvalResult:
    """Evaluate ``adapter`` (on its base, or on ``model``), or ``model`` alone, on a split of ``data``.

    Bad lines stop the evaluation unless ``skip_bad_lines``, or unless the data
    is the run's own and the run skipped them; the lines left out are listed
    in the result's notes and ``skipped``, never dropped silently.
    """
    from . import recipes

    if adapter is None and model is None:
        raise UsageError("give --adapter RUN (a run of mlxtune lora), --model MODEL, or both")
    if adapter is not None:
        from .formats.peft import as_mlx_adapter

        adapter = as_mlx_adapter(adapter)  # a PEFT adapter directory works too
    run = RunConfig.from_file(adapter) if adapter is not None else RunConfig()
    run_cfg = run.settings
    settings = recipes.eval_for(recipe or run_cfg.recipe, task)
    max_tokens = max_tokens or settings["max_tokens"]
    samples = settings["samples"] if samples is None else samples
    run_data = run.data_path
    data = Path(data) if data is not None else run_data
    if data is None:
        raise UsageError("no data: pass --data (a JSONL file or a directory with test.jsonl)")
    own = run_data is not None and data.resolve() == run_data.resolve()
    skip = bool(skip_bad_lines or own and run_cfg.skip_bad_lines)  # the run's setting is for the run's data only
    records, fmt, train_records, split, where, notes, skipped = _eval_records(data, split, run_cfg, own, skip)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise DataError(f"its {split} split has no records to evaluate: choose another --split ({', '.join(SPLITS)})", data)

    prompts, references = zip(*(_prompt_and_reference(r, fmt) for r in records))
    if not fmt.has_answers and samples:
        notes.append("text records have no prompt to answer: no side-by-side samples")
        samples = 0
    result = EvalResult(str(data), split, where, settings["task"], len(records), [], list(references), [_prompt_text(p) for p in prompts], samples=samples, notes=notes)
    result.skipped = [{"path": e.path, "line": e.line, "field": e.field, "reason": e.reason} for e in skipped]
    # the run's own data, read as the run read it: its training split is at hand already
    same_read = own and skip == bool(run_skips_bad_lines(run_cfg))
    result.trained_on = _trained_on(records, run_data, run_cfg, notes, train_records if same_read else None)
    # the task's measure needs every answer; the samples shown need theirs
    answered = len(prompts) if settings["task"] != "loss" and fmt.has_answers else min(samples, len(prompts))
    if settings["task"] == "style":
        from .metrics import marker_scores, style_markers

        result.markers = style_markers([_prompt_and_reference(r, fmt)[1] for r in train_records], min_share=settings["marker_share"])
        if not result.markers:
            notes.append(f"no word sequence is shared by {settings['marker_share']:.0%} of the training answers: the style measure is empty (lower eval.marker_share)")
        result.reference_metrics = {"marker_score": _mean(marker_scores(references, result.markers))}

    mask_prompt, max_seq_len = _encoding(run_cfg, fmt)
    variants = []
    if adapter is None or compare_base:
        variants.append(("base", None))
    if adapter is not None:
        variants.append(("tuned", Path(adapter)))
    for name, adapter_path in variants:
        result.scores.append(_score_model(name, model, adapter_path, adapter, backend, offline, records, fmt, prompts[:answered], mask_prompt, max_seq_len, max_tokens, settings, result, on_progress))
    return result


def _score_model(name, model, adapter_path, run_dir, backend, offline, records, fmt, prompts, mask_prompt, max_seq_len, max_tokens, settings, result, on_progress) -> ModelScores:
    start = time.perf_counter()
    loaded, notes = load_model(run_dir, model, adapter_path, backend, offline)
    result.notes.extend(notes)
    loss, n = _loss(loaded, records, fmt, mask_prompt, max_seq_len)
    scores = ModelScores(name, str(loaded.model_dir), str(adapter_path) if adapter_path else None, loss, math.exp(loss) if loss is not None and loss < 50 else None, n)
    if prompts:
        scores.outputs = answers(loaded, prompts, max_tokens, lambda done: on_progress(name, done, len(prompts)))
        if settings["task"] == "summarize":
            from .metrics import rouge

            scores.metrics = rouge(scores.outputs, result.references)
        elif settings["task"] == "style":
            from .metrics import marker_scores

            scores.metrics = {"marker_score": _mean(marker_scores(scores.outputs, result.markers))}
    scores.seconds = time.perf_counter() - start
    del loaded
    return scores


def load_model(run_dir, model: str | None, adapter: Path | None, backend: str = "auto", offline: bool | None = None):
    """(a ``generate.Loaded``, notes): ``model`` (with ``adapter``), or, with neither, the base ``run_dir`` was trained on."""
    from .generate import load

    if adapter is None and model is None:
        from .models.source import run_base_model

        base = run_base_model(Path(run_dir), None, offline)
        return load(str(base.path), backend=backend, offline=offline), list(base.notes)
    return load(model, adapter=adapter, backend=backend, offline=offline), []


def answers(loaded, prompts: list, max_tokens: int, on_each: Callable[[int], None] = lambda done: None) -> list[str]:
    """The greedy answers of a loaded model to prompts (chat messages or strings)."""
    from .generate import complete

    out = []
    for prompt in prompts:
        out.append(complete(loaded, _prompt_ids(loaded.tokenizer, prompt), max_tokens).strip())
        on_each(len(out))
    return out


def _encoding(run_cfg: RunSettings, fmt: DataFormat) -> tuple[bool, int]:
    """(mask_prompt, max_seq_len) as the run trained: the loss counts the tokens training counted."""
    return trains_prompt_masked(fmt, run_cfg.mask_prompt), int(run_cfg.max_seq_len or 1024)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _eval_records(data: Path, split: str | None, run_cfg: RunSettings, own: bool = False, skip_bad_lines: bool | None = None) -> tuple[list, str, list, str, str, list[str], list]:
    """(records to evaluate, format, training records, split name, the records in words, notes, skipped lines) for ``data``.

    A directory: its ``test.jsonl`` (default), else the validation split
    (``valid.jsonl``, or the part of ``train.jsonl`` training held out);
    ``train``; ``all`` (every record). A single file has no test split: it is
    split by ``data.load_data`` with the run's seed and fraction, so ``valid``
    (the default for the run's ``own`` data) is exactly the part the run held
    out and ``train`` the part it trained on; ``all`` (the default for any
    other file, e.g. one kept apart for testing) is the whole file.
    ``skip_bad_lines`` as in ``data.load_data``; the notes list each line left out.
    """
    from .data.records import load_data

    if split is not None and split not in SPLITS:
        raise UsageError(f"--split must be one of {', '.join(SPLITS)}, not {split!r}")
    seed, fraction = int(run_cfg.seed or 0), float(run_cfg.valid_fraction or 0.1)
    splits = load_data(data, valid_fraction=fraction, seed=seed, skip_bad_lines=skip_bad_lines)
    notes: list[str] = splits.skipped_notes()
    parts = {"test": list(splits.test), "valid": list(splits.valid), "train": list(splits.train)}
    parts["all"] = parts["train"] + parts["valid"] + parts["test"]
    if data.is_file():
        if split == "test":
            raise UsageError(f"{data} is a single file: it has no test split. Choose --split valid (the records a run held out), "
                             "--split all (the whole file), or --data a file or directory (with test.jsonl) kept apart for testing")
        split = split or ("valid" if own else "all")
        total = len(parts["all"])
        parts["all"].sort(key=lambda r: r.line)  # the file's order
        where = {"all": f"{data} (whole file)", "valid": f"{data} validation split ({len(splits.valid)} of {total} records, seed {seed})",
                 "train": f"{data} training split ({len(splits.train)} of {total} records, seed {seed})"}[split]
        if own and split == "valid":
            notes.append(f"{data} is a single file: evaluating on the validation split the run held out of it, which training watched "
                         "(its figures flatter the model a little); for an unbiased measure keep a test file apart (a directory with test.jsonl)")
        return parts[split], splits.format, parts["train"], split, where, notes, splits.skipped
    if split == "test" and not len(splits.test):
        raise DataError(f"has no {data / 'test.jsonl'}, which --split test evaluates: add one, or choose "
                        "--split valid (valid.jsonl, or the part of train.jsonl training held out), train or all", data)
    if split is None:
        split = "test" if len(splits.test) else "valid"
        if split == "valid":
            notes.append(f"{data} has no test.jsonl: evaluating on the validation split, which training watched (its figures flatter the model a little)")
    return parts[split], splits.format, parts["train"], split, f"{data} {split} split", notes, splits.skipped


def run_skips_bad_lines(run_cfg: RunSettings) -> bool | None:
    """How the run's own data is read again (eval, report, fuse): skipping the bad lines it skipped."""
    return True if run_cfg.skip_bad_lines else None


def _trained_on(records: list, run_data: Path | None, run_cfg: RunSettings, notes: list[str], trained: list | None = None) -> int | None:
    """How many of ``records`` are in the run's training split (the run's data split as training split it), or None if unknown.

    ``trained``: that split when the caller has read it already (evaluating the run's own data), so the file is not read twice.
    """
    import json

    if run_data is None:
        return None
    if trained is None:
        if not run_data.exists():
            notes.append(f"cannot tell which records the run trained on: its data {run_data} is not there any more")
            return None
        trained = _eval_records(run_data, "train", run_cfg, skip_bad_lines=run_skips_bad_lines(run_cfg))[0]
    seen = {json.dumps(r.data, sort_keys=True) for r in trained}
    return sum(json.dumps(r.data, sort_keys=True) in seen for r in records)


def _prompt_and_reference(record, fmt: DataFormat) -> tuple[Any, str]:
    """(the prompt: chat messages or a string, the reference answer) of a record, as its format has them."""
    return fmt.prompt_and_reference(record)


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"[{m['role']}] {m['content']}" for m in prompt)


def _prompt_ids(tokenizer, prompt) -> list[int]:
    from .data.batching import hf_tokenizer
    from .generate import chat_prompt

    if isinstance(prompt, str):
        hf = hf_tokenizer(tokenizer)
        if getattr(hf, "chat_template", None):
            return chat_prompt(tokenizer, [{"role": "user", "content": prompt}])
        return hf.encode(prompt)
    return chat_prompt(tokenizer, prompt)


def _loss(loaded, records, fmt: DataFormat, mask_prompt: bool, max_seq_len: int, batch_size: int = 4) -> tuple[float | None, int]:
    """Mean cross-entropy over the split's target tokens, and their number."""
    import numpy as np

    from .backends import get
    from .data.batching import encode_dataset, make_batch

    impl = get(loaded.backend)
    examples, _ = encode_dataset(records, fmt, loaded.tokenizer, mask_prompt, max_seq_len)
    examples.sort(key=len)
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = make_batch(examples[i : i + batch_size])
        summed, n = impl.summed_loss(loaded.model, batch)
        total += summed
        count += int(n)
    if not count:
        return None, 0
    return float(np.float64(total) / count), count


def kept_improvement(run_dir: Path, base_dir: Path, fused_dir: Path, backend: str = "auto") -> tuple[float, dict[str, float]] | None:
    """How much of a run's validation-loss improvement a fused (e.g. re-quantized) model keeps.

    (loss of the base - loss of the fused model) / (loss of the base - loss of
    base + adapter), on the run's validation split: 1 keeps all of it, 0 none.
    Returns (share kept, the three losses), or None when the run's data is not
    at hand or the adapter did not improve the loss.
    """
    run = RunConfig.from_file(run_dir)
    run_cfg, data = run.settings, run.data_path
    if data is None or not data.exists():
        return None
    records, fmt, *_ = _eval_records(data, "valid", run_cfg, skip_bad_lines=run_skips_bad_lines(run_cfg))
    if not records:
        return None
    mask_prompt, max_seq_len = _encoding(run_cfg, fmt)
    losses = {}
    for name, model, adapter in (("base", base_dir, None), ("adapter", base_dir, run_dir), ("fused", fused_dir, None)):
        loaded, _ = load_model(run_dir, str(model), adapter, backend)
        losses[name] = _loss(loaded, records, fmt, mask_prompt, max_seq_len)[0]
        del loaded
    gain = losses["base"] - losses["adapter"]
    if not gain > 0:
        return None
    return (losses["base"] - losses["fused"]) / gain, losses
