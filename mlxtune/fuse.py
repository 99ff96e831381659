"""``mlxtune fuse``: merge trained adapters into the base weights.

The merging itself is ``fusing.fuse_run`` (``export`` fuses a run with it too);
see there for the dtype and the model card. What the command adds is the check
after re-quantizing: quantizing the merged weights can round away much of what
a small adapter learned, so ``fuse -q`` measures how much of the adapter's
validation-loss gain the result keeps, and warns when most of it is lost.
"""

from __future__ import annotations

from pathlib import Path

from .data.eval_split import eval_records, run_encoding, run_skips_bad_lines
from .fusing import FuseResult, fuse_run
from .inference import load_model_or_run_base, mean_loss
from .training.run_schema import RunConfig

SURVIVAL_WARNING = 0.5  # re-quantizing warns when the result keeps less than this share of the adapter's validation-loss gain


def fuse(
    adapter_dir: str | Path,
    out_dir: str | Path,
    model: str | None = None,
    dtype: str | None = None,
    quantize: bool = False,
    q_bits: int | None = None,
    q_group_size: int | None = None,
    offline: bool | None = None,
    force: bool = False,
    backend: str | None = "auto",
    name: str | None = None,
    thinking: bool | None = None,
) -> FuseResult:
    """Fuse the adapter in ``adapter_dir`` into its base model, writing ``out_dir`` with its model card.

    ``name``: what the card calls the model [default: the run's directory name].
    ``thinking``: the fused model's chat template thinks by default [default: as the run was trained; off].
    Re-quantized, the notes say how much of the adapter's gain the result keeps.
    """
    r = fuse_run(adapter_dir, out_dir, model=model, dtype=dtype, quantize=quantize, q_bits=q_bits, q_group_size=q_group_size, offline=offline, force=force, backend=backend, name=name, thinking=thinking)
    if r.quantization is not None:
        _check_kept(r.adapter, r.base, r.path, r.quantization, r.notes)
    return r


def _check_kept(adapter_dir: Path, base_dir: Path, out_dir: Path, quant: dict, notes: list[str]) -> None:
    """After re-quantizing: how much of the adapter's validation-loss gain the result keeps; warn when most is lost."""
    measured = kept_improvement(adapter_dir, base_dir, out_dir)
    if measured is None:
        notes.append("the run's validation data is not at hand: how much of the adapter survived re-quantization was not measured (mlxtune eval --model on the result tells)")
        return
    kept, losses = measured
    notes.append(f"re-quantized to {quant['bits']} bits keeps {kept:.0%} of the adapter's gain on the run's validation split (loss: base {losses['base']:.3f}, base + adapter {losses['adapter']:.3f}, fused {losses['fused']:.3f})")
    if kept < SURVIVAL_WARNING:
        notes.append(f"warning: most of the adapter is lost to {quant['bits']}-bit quantization; fuse without -q (float16), or use --q-bits 8 or a smaller --q-group-size")


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
    records, fmt, *_ = eval_records(data, "valid", run_cfg, skip_bad_lines=run_skips_bad_lines(run_cfg))
    if not records:
        return None
    mask_prompt, max_seq_len = run_encoding(run_cfg, fmt)
    losses = {}
    for name, model, adapter in (("base", base_dir, None), ("adapter", base_dir, run_dir), ("fused", fused_dir, None)):
        loaded, _ = load_model_or_run_base(run_dir, str(model), adapter, backend)
        losses[name] = mean_loss(loaded, records, fmt, mask_prompt, max_seq_len)[0]
        del loaded
    gain = losses["base"] - losses["adapter"]
    if not gain > 0:
        return None
    return (losses["base"] - losses["fused"]) / gain, losses
