"""Memory plan: a run fitted to the machine before it starts (``mlxtune plan``, ``--auto``).

``mlxtune.training.memory.estimate`` predicts a run's peak memory; ``fit`` is
``--auto``: when the estimate exceeds a safe share of the memory available
(``runtime.available_memory``), it turns on gradient checkpointing, then
halves the micro-batch and doubles the gradient accumulation (the effective
batch stays), down to batch 1, and when nothing fits says what would: a
shorter --max-seq-len, fewer adapted blocks, a smaller or quantized model.
``plan_run`` makes the plan of a `mlxtune lora` run, ``plan_for`` that of
`mlxtune plan`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import MlxtuneError, UnsupportedModelError
from .memory import BASELINE_BYTES, PAD_MULTIPLE, Estimate, Tensor, batch_seq_len, data_bytes, estimate, quantized_stems, read_model  # noqa: F401 (estimate, read_model: part of this module's interface)
from ..runtime import MemoryLimit

# The share of the available memory a plan may fill: the rest is for the
# system, other programs and the estimate's error.
SAFE_SHARE = 0.8


class MemoryPlanError(MlxtuneError):
    """The run cannot fit in the memory of this machine."""


@dataclass
class Plan:
    """The settings a run should use, the estimate for them, and why (lines for the user)."""

    batch_size: int
    grad_accumulation: int
    grad_checkpoint: bool | None
    estimate: Estimate | None  # None: no memory model for this model
    available: MemoryLimit | None  # None where unknown
    verdict: str  # "fits", "adjusted", "does not fit", "unknown"
    auto: bool = True
    requested: Estimate | None = None  # the settings asked for, when they differ
    reasons: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.verdict != "does not fit"

    @property
    def limit(self) -> int | None:
        return None if self.available is None else int(SAFE_SHARE * self.available.bytes)

    def apply(self, cfg):
        """``cfg`` (a TrainConfig) with the plan's micro-batch, accumulation and checkpointing."""
        return dataclasses.replace(cfg, batch_size=self.batch_size, grad_accumulation=self.grad_accumulation, grad_checkpoint=self.grad_checkpoint)

    def check(self, always: bool = False) -> None:
        """Raise MemoryPlanError when --auto found nothing that fits.

        Without --auto the verdict is a warning for a run (the user chose the
        settings), unless ``always``: for `mlxtune plan` the verdict is the result.
        """
        if self.verdict == "does not fit" and (self.auto or always):
            raise MemoryPlanError(self.summary() + ("; " + "; ".join(self.advice) if self.advice else ""))

    def summary(self) -> str:
        """One line: the verdict."""
        e, lim = self.estimate, self.limit
        if e is None:
            return "memory plan: " + "; ".join(self.reasons)
        need = f"estimated peak {_fmt(e.total)}"
        if lim is None:
            return f"{need}; the available memory is unknown here, so it is not checked"
        room = f"{int(SAFE_SHARE * 100)}% of the {_fmt(self.available.bytes)} available is {_fmt(lim)}"
        if self.verdict == "fits":
            return f"{need}: fits ({room})"
        if self.verdict == "adjusted":
            return f"adjusted to fit: {_settings(self.batch_size, self.grad_accumulation, self.grad_checkpoint)}, {need} ({room})"
        if self.auto:
            return f"does not fit: even {_settings(self.batch_size, self.grad_accumulation, self.grad_checkpoint)} needs {_fmt(e.total)}, more than {room}"
        return f"{need}, more than {room}: the run may run out of memory (--auto adjusts the settings)"

    def lines(self, table: bool = True) -> list[str]:
        """The breakdown table (``table``), the available memory, the verdict, why and what to do.

        ``mlxtune plan`` prints all of it; ``mlxtune lora`` the verdict and, when
        the settings changed or do not fit, why (``table=False``).
        """
        e = self.estimate
        if e is None:
            return [self.summary()]
        if not table:
            return [f"Memory: {self.summary()}"] + ([] if self.verdict == "fits" else [f"  - {r}" for r in self.reasons] + [f"  try: {a}" for a in self.advice])
        out = [f"Memory plan: {e.backend} backend on the {e.device.upper()}, micro-batch {e.batch_size} x {e.seq_len} tokens, accumulation {self.grad_accumulation}"]
        for label, value, what in e.terms():
            out.append(f"  {label:<26}{_fmt(value):>9}  {what}")
        out.append(f"  {'= peak (estimated)':<26}{_fmt(e.total):>9}  loading the model: {_fmt(e.baseline + e.loading)}")
        if self.available is not None:
            out.append(f"Available: {_fmt(self.available.bytes)} ({self.available.source}); the plan may use {int(SAFE_SHARE * 100)}%: {_fmt(self.limit)}")
        out.append(self.summary()[0].upper() + self.summary()[1:])
        out += [f"  - {r}" for r in self.reasons]
        out += [f"  try: {a}" for a in self.advice]
        return out

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict, "auto": self.auto, "batch_size": self.batch_size, "grad_accumulation": self.grad_accumulation,
            "grad_checkpoint": self.grad_checkpoint, "estimate": None if self.estimate is None else self.estimate.to_dict(),
            "requested": None if self.requested is None else self.requested.to_dict(),
            "available": None if self.available is None else {"bytes": self.available.bytes, "source": self.available.source},
            "safe_share": SAFE_SHARE, "limit": self.limit, "reasons": self.reasons, "advice": self.advice,
        }


def _fmt(n: int | float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _settings(batch: int, accumulation: int, checkpoint: bool | None) -> str:
    ckpt = {True: "gradient checkpointing on", False: "no checkpointing", None: "checkpointing as the backend decides"}[checkpoint]
    return f"batch {batch} x accumulation {accumulation} (effective {batch * accumulation}), {ckpt}"


def fit(cfg, config: dict, backend: str, *, seq_len: int, available: MemoryLimit | None, device: str = "cpu", tensors: list[Tensor] | None = None,
        n_examples: int | None = None, baseline: int | None = None, activation_mb: str | None = None) -> Plan:
    """``--auto``: the settings of ``cfg`` (a TrainConfig) if they fit, else the first that does of:
    checkpointing on (unless --no-grad-checkpoint), then half the micro-batch and twice the
    accumulation, down to batch 1. The effective batch (batch x accumulation) is kept.

    ``available``: ``runtime.available_memory()`` (None: unknown, nothing is checked).
    Without ``cfg.auto_fit`` the settings stay, and the verdict says whether they fit.
    """
    from ..backends import get
    from ..errors import ConfigError
    from .memory import linear_keys
    from .targets import resolve

    try:
        keys = resolve(cfg.target_modules, linear_keys(config))
    except ConfigError:
        if not get(backend).names_any_layers:
            raise
        keys = None  # mlx names other architectures' layers otherwise: count all seven

    def est(batch: int, accumulation: int, checkpoint: bool | None, T: int = seq_len, layers: int = cfg.layers) -> Estimate:
        return estimate(config, backend, device=device, dtype=cfg.dtype, tensors=tensors, rank=cfg.rank, num_layers=layers, keys=keys,
                        batch_size=min(batch, n_examples) if n_examples else batch, seq_len=T, grad_checkpoint=checkpoint,
                        grad_accumulation=accumulation, baseline=baseline, activation_mb=activation_mb)

    B, A, gc = cfg.batch_size, cfg.grad_accumulation, cfg.grad_checkpoint
    asked = est(B, A, gc)
    if available is None:
        return Plan(B, A, gc, asked, None, "unknown", cfg.auto_fit)
    limit = int(SAFE_SHARE * available.bytes)
    if asked.total <= limit:
        return Plan(B, A, gc, asked, available, "fits", cfg.auto_fit)
    tried = [(B, A, gc, asked)]
    ckpt = f" ({asked.blocks_checkpointed} of {asked.blocks} blocks checkpointed)" if asked.blocks_checkpointed else ""
    reasons = [f"batch {B} x {asked.seq_len} tokens{ckpt} needs {_fmt(asked.total)}"]
    candidates = []
    if gc is False:
        reasons.append("gradient checkpointing stays off, as asked (--no-grad-checkpoint)")
    elif gc is None:
        gc = True
        if asked.blocks_checkpointed < asked.blocks:  # the backend's own rule may have checkpointed every block already
            candidates.append((B, A, True))
    b, a = B, A
    while b > 1:
        nb = max(k for k in range(1, b // 2 + 1) if b % k == 0)
        a, b = a * (b // nb), nb
        candidates.append((b, a, gc))
    chosen = None
    for b, a, c in candidates:
        e = est(b, a, c)
        tried.append((b, a, c, e))
        if e.total <= limit:
            chosen = (b, a, c, e)
            break
    for b, a, c, e in tried[1:]:
        reasons.append(f"{_settings(b, a, c)}: {_fmt(e.total)}")
    best = chosen or min(tried, key=lambda t: t[3].total)
    advice = [] if chosen else _advice(est, best, limit, device, tensors)
    if not cfg.auto_fit:
        note = [f"with --auto: {_settings(*chosen[:3])}, {_fmt(chosen[3].total)}"] if chosen else []
        return Plan(B, A, cfg.grad_checkpoint, asked, available, "does not fit", auto=False, reasons=reasons[:1] + note, advice=advice)
    b, a, c, e = best
    return Plan(b, a, c, e, available, "adjusted" if chosen else "does not fit", auto=True, requested=asked, reasons=reasons, advice=advice)


def _advice(est, best, limit: int, device: str, tensors) -> list[str]:
    """What would fit when no batch does: a shorter --max-seq-len, fewer adapted blocks, a smaller or quantized model."""
    b, a, c, e = best
    out = []
    lo, hi = 0, e.seq_len // PAD_MULTIPLE  # in units of 8 tokens
    while lo < hi:  # the longest T that fits at batch 1
        mid = (lo + hi + 1) // 2
        if est(b, a, c, T=mid * PAD_MULTIPLE).total <= limit:
            lo = mid
        else:
            hi = mid - 1
    if lo:
        out.append(f"--max-seq-len {lo * PAD_MULTIPLE} (longer records are truncated): {_fmt(est(b, a, c, T=lo * PAD_MULTIPLE).total)}")
    for n in range(e.blocks - 1, 0, -1):
        if est(b, a, c, layers=n).total <= limit:
            out.append(f"--layers {n} (adapt only the last {n} blocks): {_fmt(est(b, a, c, layers=n).total)}")
            break
    floor = e.baseline + max(e.loading, e.weights + e.adapters)
    if floor > limit or not out:
        if device == "gpu" and not quantized_stems(tensors or []):
            out.append("a quantized base model (mlxtune convert MODEL -o DIR -q): the weights alone take " + _fmt(e.weights))
        else:
            out.append(f"a smaller model: the weights alone take {_fmt(e.weights)} ({e.compute}), with the runtime {_fmt(floor)}")
    return out


# ---------------------------------------------------------------- for the commands


def plan_run(cfg, model_dir, backend: str, lengths, idle=()) -> Plan:
    """The memory plan of a `mlxtune lora` run, once the model, backend and encoded data are known.

    ``lengths``: the token counts of the encoded examples that go through the
    model, in batches of ``cfg.batch_size`` (train, and validation if the run
    validates); ``idle``: those of examples only held in memory (validation
    with ``val_every`` 0: its longest record must not shrink the batch).
    With ``cfg.pack`` a batch is ``cfg.batch_size`` rows of ``max_seq_len``
    tokens, as many as the examples fill (``data.batching.pack_rows``).
    """
    import os

    from .. import runtime
    from ..backends import get

    config, tensors = read_model(model_dir)
    device = get(backend).device()
    lengths = list(lengths) if lengths is not None else None
    rows = len(lengths) if lengths else None
    if cfg.pack and lengths:
        from ..data.batching import pack_rows

        rows = len(pack_rows([min(n, cfg.max_seq_len) for n in lengths], cfg.max_seq_len))
    try:
        return fit(cfg, config, backend, seq_len=batch_seq_len(lengths, cfg.max_seq_len, pack=bool(cfg.pack)), available=runtime.available_memory(), device=device,
                   tensors=tensors, n_examples=rows, baseline=BASELINE_BYTES[backend] + data_bytes(None if lengths is None else lengths + list(idle)),
                   activation_mb=os.environ.get("MLXTUNE_ACTIVATION_MB"))
    except UnsupportedModelError as e:
        return Plan(cfg.batch_size, cfg.grad_accumulation, cfg.grad_checkpoint, None, None, "unknown", cfg.auto_fit, reasons=[f"no estimate ({e})"])


def plan_for(cfg) -> Plan:
    """`mlxtune plan`: resolve the model and backend as `lora` would, read the data if given, and plan.

    Reads config.json and the safetensors headers, not the weights (a .gguf
    source is converted into mlxtune's cache first, once, as `lora` does).
    """
    from ..backends import backend_for
    from ..models.source import open_model

    model_dir = open_model(cfg.model, revision=cfg.revision, offline=cfg.offline).path
    backend = backend_for(cfg.backend, model_dir, mlx_only="DoRA" if cfg.dora else None)
    lengths = None
    if cfg.data:
        from ..data.batching import encode_dataset
        from ..data.records import load_data, trains_prompt_masked
        from ..models.tokenizer import load_tokenizer

        splits = load_data(cfg.data, valid_fraction=cfg.valid_fraction, seed=cfg.seed, skip_bad_lines=cfg.skip_bad_lines, fields=cfg.fields)
        tokenizer = load_tokenizer(model_dir, thinking=cfg.thinking)
        mask_prompt = trains_prompt_masked(splits.format, cfg.mask_prompt)
        train, valid = (encode_dataset(part, splits.format, tokenizer, mask_prompt, cfg.max_seq_len)[0].lengths.tolist() for part in (splits.train, splits.valid))
        lengths, idle = (train + valid, []) if cfg.val_every > 0 else (train, valid)
        return plan_run(cfg, model_dir, backend, lengths, idle)
    return plan_run(cfg, model_dir, backend, lengths)
