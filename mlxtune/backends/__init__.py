"""Compute backends: ``mlx`` (the product's engine) and ``numpy`` (the reference).

Both implement one small contract, with no shared implementation:

* a trainer: ``Trainer(model_dir, cfg)`` loads the model, wraps the target
  layers in LoRA, and offers ``step(batch, lr) -> (loss, n_tokens)``,
  ``evaluate(batch) -> (summed loss, n_tokens)``, ``adapter_weights()``,
  ``optimizer_state()`` and ``token_log_probs(batch)`` (B, T) as numpy arrays,
  plus ``num_layers``, ``keys``, ``n_trainable``, ``description`` and the
  ``objective`` (``mlxtune.training.objectives``) whose loss ``step`` and ``evaluate`` compute;
* inference, evaluation loss and fusing: a ``base.Backend`` (``get(name)``),
  whose methods ``inference.py`` and ``fusing.py`` call after
  ``choose_backend`` / ``backend_for`` have chosen it;
* a memory model: the peak resident memory of its training process
  (``memory_model(name)``, which ``training.memory.estimate`` calls; it
  imports neither mlx nor the backend's model until asked).

The contracts are typed in ``base.py`` (``Trainer``, ``Backend``,
``MemoryModel``); ``get``, ``open_trainer`` and ``memory_model`` are the one
dispatch on the backend's name.

Parameter names, adapter files and the optimizer (AdamW with bias correction,
the same learning-rate schedule, global-norm clipping) are the same in both, so
an adapter trained on one loads on the other.
"""

from __future__ import annotations

from ..errors import UsageError
from ..models import families
from .base import BACKENDS, Backend, MemoryModel, Trainer



def mlx_available() -> bool:
    """Whether mlx (and mlx-lm) can be imported here.

    mlx.core is imported (it is needed to know the device anyway); mlx-lm is
    only looked up, since importing it imports transformers' model code and,
    where installed, PyTorch: a few hundred MB a numpy run would carry.
    """
    import importlib.util

    try:
        import mlx.core  # noqa: F401

        return importlib.util.find_spec("mlx_lm") is not None
    except (ImportError, ValueError):  # ValueError: a module blocked by a None in sys.modules
        return False


def choose_backend(requested: str | None, mlx_ok: bool, device: str | None = None, model_type: str | None = None, mlx_only: str | None = None) -> str:
    """Which backend runs: the user's choice, else the faster one for this device and model.

    ``auto``: numpy where mlx cannot be imported; mlx on a Metal GPU; on a CPU,
    numpy for the model types it implements, because there it is faster than
    mlx's CPU backend (bench/bench_train.py: 2.2x the training throughput on
    SmolLM2, and about 2x the generation speed) with less memory; mlx for
    every other architecture, and for what only mlx does (``mlx_only``
    names it: DoRA, re-quantization).
    """
    requested = requested or "auto"
    if requested not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, not {requested!r}")
    if requested == "mlx" and not mlx_ok:
        raise UsageError("--backend mlx: mlx is not installed here (pip install 'mlx[cpu]' mlx-lm on Linux, mlx mlx-lm on macOS); --backend numpy runs anywhere")
    if requested == "numpy" or (requested == "auto" and not mlx_ok):
        _check_numpy_runs(model_type, mlx_ok)
    if requested != "auto":
        return requested
    if not mlx_ok:
        return "numpy"
    if device == "gpu" or mlx_only:
        return "mlx"
    return "numpy" if model_type in families.numpy_model_types() else "mlx"  # models.layout.ModelConfig checks the details


def _check_numpy_runs(model_type: str | None, mlx_ok: bool) -> None:
    """UnsupportedModelError naming the family and the backend that runs it, for a model type the numpy backend does not implement."""
    if model_type is None or model_type in families.numpy_model_types():
        return
    from ..errors import UnsupportedModelError

    family = families.get(model_type)
    what = f"{family.name} models (model type '{model_type}')" if family and family.name != model_type else f"'{model_type}' models"
    how = "use --backend mlx, which runs every model mlx-lm supports" if mlx_ok else "install mlx (pip install 'mlx[cpu]' mlx-lm on Linux, mlx mlx-lm on macOS) and use --backend mlx"
    raise UnsupportedModelError(f"the numpy backend does not implement {what} (it runs {', '.join(families.numpy_model_types())}): {how}")


def backend_for(requested: str | None, model_dir, mlx_only: str | None = None) -> str:
    """``choose_backend`` with the facts of this machine and of the model in ``model_dir``."""
    import json
    from pathlib import Path

    mlx_ok = (requested or "auto") == "numpy" or mlx_available()  # numpy asked for: no need to load mlx
    device = None
    if mlx_ok and (requested or "auto") == "auto":
        from ..runtime import current_device

        device = current_device()
    try:
        model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        model_type = None
    return choose_backend(requested, mlx_ok, device, model_type, mlx_only)


def writer() -> Backend:
    """The backend that writes model files (convert): mlx wherever it is installed, so that mlx-lm's own
    writer lays out the directory mlx-lm reads; numpy, which writes the same layout, elsewhere."""
    return get("mlx" if mlx_available() else "numpy")


def choice_note(requested: str | None, chosen: str) -> str | None:
    """A line for the user when ``auto`` chose numpy although mlx is installed (they may expect mlx)."""
    if chosen == "numpy" and (requested or "auto") == "auto" and mlx_available():
        return "training with the numpy backend: on a CPU it is faster than mlx's CPU backend for this model (--backend mlx to choose mlx)"
    return None


def check_optimizer_state(names, state: dict) -> int:
    """Check that a saved AdamW state has both moments of every parameter in ``names``; return its step.

    The layout both backends save: ``<name>.m``, ``<name>.v`` and ``step``.
    """
    import numpy as np

    from ..errors import AdapterError

    missing = [f"{k}.{x}" for k in names for x in "mv" if f"{k}.{x}" not in state]
    if missing or "step" not in state:
        raise AdapterError(f"the optimizer state does not fit these adapters ({len(missing)} moments missing, e.g. {(missing or ['step'])[0]})")
    return int(np.asarray(state["step"]).reshape(-1)[0])


def get(name: str) -> Backend:
    """The inference, loss and fusing side of backend ``name`` ("mlx" or "numpy")."""
    if name == "mlx":
        from .mlx.backend import MlxBackend

        return MlxBackend()
    if name == "numpy":
        from .numpy.backend import NumpyBackend

        return NumpyBackend()
    raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, not {name!r}")


def open_trainer(backend: str, model_dir, cfg) -> Trainer:
    """The trainer of ``backend`` for ``model_dir`` under ``cfg`` (a TrainConfig)."""
    if backend == "mlx":
        from .mlx.trainer import MlxTrainer

        return MlxTrainer(model_dir, cfg)
    from .numpy.trainer import NumpyTrainer

    return NumpyTrainer(model_dir, cfg)


def memory_model(name: str) -> MemoryModel:
    """The memory model of backend ``name`` (``backends/<name>/memory.py``), importable where mlx is not installed."""
    if name == "mlx":
        from .mlx import memory as mlx_memory

        return mlx_memory
    if name == "numpy":
        from .numpy import memory as numpy_memory

        return numpy_memory
    raise ValueError(f"no memory model for backend {name!r}")
