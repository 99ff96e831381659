"""Compute backends: ``mlx`` (the product's engine) and ``numpy`` (the reference).

Both implement one small contract, with no shared implementation:

* a trainer: ``Trainer(model_dir, cfg)`` loads the model, wraps the target
  layers in LoRA, and offers ``step(batch, lr) -> (loss, n_tokens)``,
  ``evaluate(batch) -> (summed loss, n_tokens)``, ``adapter_weights()`` and
  ``optimizer_state()`` as numpy arrays, plus ``num_layers``, ``keys``,
  ``n_trainable`` and ``description``;
* inference and fusing, in ``generate.py`` and ``fuse.py``, which ask
  ``choose_backend`` which one to use.

Parameter names, adapter files and the optimizer (AdamW with bias correction,
the same learning-rate schedule, global-norm clipping) are the same in both, so
an adapter trained on one loads on the other.
"""

from __future__ import annotations

from ..errors import UsageError

BACKENDS = ("auto", "mlx", "numpy")


def mlx_available() -> bool:
    """Whether mlx (and mlx-lm) can be imported here."""
    try:
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(requested: str | None, mlx_ok: bool) -> str:
    """``auto`` means mlx where it can be imported, numpy elsewhere."""
    requested = requested or "auto"
    if requested not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, not {requested!r}")
    if requested == "auto":
        return "mlx" if mlx_ok else "numpy"
    if requested == "mlx" and not mlx_ok:
        raise UsageError("--backend mlx: mlx is not installed here (pip install 'mlx[cpu]' mlx-lm on Linux, mlx mlx-lm on macOS); --backend numpy runs anywhere")
    return requested


def open_trainer(backend: str, model_dir, cfg):
    """The trainer of ``backend`` for ``model_dir`` under ``cfg`` (a TrainConfig)."""
    if backend == "mlx":
        from .mlx import MlxTrainer

        return MlxTrainer(model_dir, cfg)
    from .numpy import NumpyTrainer

    return NumpyTrainer(model_dir, cfg)
