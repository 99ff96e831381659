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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .data.eval_split import SPLITS, eval_records, prompt_and_reference, prompt_text, run_encoding, run_skips_bad_lines, trained_on
from .errors import DataError, UsageError
from .inference import answers, load_model_or_run_base, mean_loss
from .training.run_schema import RunConfig

if TYPE_CHECKING:
    from .data.formats import DataFormat
    from .inference import Loaded


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
    *,
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
    fields: Mapping[str, str] | None = None,
) -> EvalResult:
    """Evaluate ``adapter`` (on its base, or on ``model``), or ``model`` alone, on a split of ``data``.

    Bad lines stop the evaluation unless ``skip_bad_lines``, or unless the data
    is the run's own and the run skipped them; the lines left out are listed
    in the result's notes and ``skipped``, never dropped silently. The
    settings are keyword-only: a dozen positional ones are too easy to swap.
    ``fields`` (``--field``) renames the data's columns; None: as the run read
    its data, for the run's own data, else none.
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
    fields = fields if fields is not None else None if own else {}
    records, fmt, train_records, split, where, notes, skipped = eval_records(data, split, run_cfg, own, skip, fields)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise DataError(f"its {split} split has no records to evaluate: choose another --split ({', '.join(SPLITS)})", data)

    prompts, references = zip(*(prompt_and_reference(r, fmt) for r in records))
    if not fmt.has_answers and samples:
        notes.append("text records have no prompt to answer: no side-by-side samples")
        samples = 0
    result = EvalResult(str(data), split, where, settings["task"], len(records), [], list(references), [prompt_text(p) for p in prompts], samples=samples, notes=notes)
    result.skipped = [{"path": e.path, "line": e.line, "field": e.field, "reason": e.reason} for e in skipped]
    # the run's own data, read as the run read it: its training split is at hand already
    same_read = own and skip == bool(run_skips_bad_lines(run_cfg))
    result.trained_on = trained_on(records, run_data, run_cfg, notes, train_records if same_read else None)
    # the task's measure needs every answer; the samples shown need theirs
    answered = len(prompts) if settings["task"] != "loss" and fmt.has_answers else min(samples, len(prompts))
    if settings["task"] == "style":
        from .metrics import marker_scores, style_markers

        result.markers = style_markers([prompt_and_reference(r, fmt)[1] for r in train_records], min_share=settings["marker_share"])
        if not result.markers:
            notes.append(f"no word sequence is shared by {settings['marker_share']:.0%} of the training answers: the style measure is empty (lower eval.marker_share)")
        result.reference_metrics = {"marker_score": _mean(marker_scores(references, result.markers))}

    mask_prompt, max_seq_len = run_encoding(run_cfg, fmt)
    variants = []
    if adapter is None or compare_base:
        variants.append(("base", None))
    if adapter is not None:
        variants.append(("tuned", Path(adapter)))
    work = _Workload(records, fmt, list(prompts[:answered]), mask_prompt, max_seq_len, max_tokens, settings["task"])
    for name, adapter_path in variants:
        loaded, load_notes = load_model_or_run_base(adapter, model, adapter_path, backend, offline)
        result.notes.extend(load_notes)
        result.scores.append(_score_model(name, loaded, adapter_path, work, result, on_progress))
        del loaded  # one model in memory at a time: the base is freed before the tuned one loads
    return result


@dataclass(frozen=True)
class _Workload:
    """What every model of one evaluation is measured on: the records, the prompts answered, how they are encoded."""

    records: list
    fmt: DataFormat
    prompts: list
    mask_prompt: bool
    max_seq_len: int
    max_tokens: int
    task: str


def _score_model(name: str, loaded: Loaded, adapter_path: Path | None, work: _Workload, result: EvalResult, on_progress) -> ModelScores:
    """The loss of ``loaded`` on the records, and its answers to the prompts scored by the task's measure."""
    start = time.perf_counter()
    loss, n = mean_loss(loaded, work.records, work.fmt, work.mask_prompt, work.max_seq_len)
    scores = ModelScores(name, str(loaded.model_dir), str(adapter_path) if adapter_path else None, loss, math.exp(loss) if loss is not None and loss < 50 else None, n)
    if work.prompts:
        scores.outputs = answers(loaded, work.prompts, work.max_tokens, lambda done: on_progress(name, done, len(work.prompts)))
        if work.task == "summarize":
            from .metrics import rouge

            scores.metrics = rouge(scores.outputs, result.references)
        elif work.task == "style":
            from .metrics import marker_scores

            scores.metrics = {"marker_score": _mean(marker_scores(scores.outputs, result.markers))}
    scores.seconds = time.perf_counter() - start
    return scores


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
