"""A new run that starts from an existing adapter: ``mlxtune lora --data ... --init-adapter PATH``.

PATH is what ``mlxtune lora`` wrote (a run directory, its ``best/``, one of
its ``checkpoints/step-N``, or the ``adapters.safetensors`` file in one), an
mlx-lm adapter directory, or a PEFT adapter directory (read by
``peft_format``). The new run takes the adapter's shape (rank, scale, the
layers it adapts, LoRA or DoRA) and its weights; everything else starts
afresh: step 0, the optimizer's moments, the learning-rate schedule, the
data order. It trains on the model the adapter was made for: without
``--model`` that one; with another, an error (an adapter is a correction of
particular weights). Where it started from is recorded in the new run's
``adapter_config.json`` under ``init_adapter``.

To continue a run itself (its optimizer state, step and data order too),
``mlxtune lora --resume RUN --iters N`` is the tool instead.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..formats.adapters import ADAPTER_WEIGHTS
from .config import TrainConfig
from ..errors import AdapterError, UsageError
from ..fsutil import file_digest
from .run_schema import BaseModel, RunConfig
from .targets import linear_keys_of_weights, selected

# The settings that make an adapter's shape, and the flags that set them.
SHAPE_FLAGS = {"rank": "--rank", "alpha": "--alpha", "target_modules": "--target-modules", "layers": "--layers", "dora": "--dora"}


@dataclass
class InitAdapter:
    """An adapter a run starts from: where it is, what it is, and (once the model is known) its weights."""

    path: Path  # what was named, resolved
    kind: str  # "run", "best", "checkpoint", "mlx-lm" or "peft"
    config: RunConfig  # mlx-lm's adapter config (lora_parameters, num_layers, fine_tune_type), plus base_model where known
    weights_file: Path  # adapters.safetensors, or PEFT's adapter_model.safetensors
    step: int | None = None  # the training step the weights are from, where known
    val_loss: float | None = None  # their validation loss, where known
    weights: dict | None = None  # mlx-lm names -> arrays; set by fit()

    @property
    def rank(self) -> int:
        return int(self.config.lora_parameters.rank)

    @property
    def scale(self) -> float:
        return float(self.config.lora_parameters.scale)

    @property
    def keys(self) -> list[str]:
        return list(self.config.lora_parameters.keys or [])

    @property
    def num_layers(self) -> int:
        return int(self.config.num_layers)

    @property
    def dora(self) -> bool:
        return self.config.dora

    @property
    def base(self) -> BaseModel:
        """The model it was trained on, as recorded: mlxtune's base_model, or the ``model`` mlx-lm records (empty: not known)."""
        if self.config.base_model:
            return self.config.base_model
        model = self.config.model
        if not isinstance(model, str) or not model:
            return BaseModel.from_dict({})
        if Path(model).expanduser().is_dir():
            return BaseModel.from_dict({"spec": model, "kind": "dir", "path": str(Path(model).expanduser().resolve())})
        return BaseModel.from_dict({"spec": model, "kind": "hub", "repo_id": model})

    def default_model(self, cfg: TrainConfig) -> tuple[TrainConfig, str | None]:
        """``cfg`` training on the adapter's base model when no --model was given (and a note saying so)."""
        base = self.base
        if cfg.model is not None or not (base.spec or base.path):
            return cfg, None
        local = base.kind in ("dir", "gguf") and base.path and Path(base.path).exists()
        model = base.path if local else base.spec
        return dataclasses.replace(cfg, model=model, revision=cfg.revision or base.revision), f"training on {model}, the model the adapter in {self.path} was trained on"

    def fit(self, cfg: TrainConfig, source, model_dir: Path, given: Mapping[str, str] | set[str] | None = None) -> tuple[TrainConfig, list[str]]:
        """Check the adapter against the run's model and options; read its weights; ``cfg`` in its shape, and notes.

        ``given``: the settings the user set, each with where (``--rank``, a
        config file, ``recipe NAME``), which the refusal names; besides them,
        any that differs from its default counts as set. A shape setting set
        that differs from the adapter's is refused, never silently replaced.
        """
        notes = self._check_base(source, model_dir)
        config, _ = _read_model(model_dir)
        n_blocks = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
        if self.kind == "peft":  # imported anew for this model's block count (adapters that leave the last blocks alone)
            from ..formats.peft import import_peft

            config, self.weights = import_peft(self.path, num_blocks=n_blocks or None)
            self.config = RunConfig.from_dict(config)
        else:
            from ..formats import safetensors as npio

            self.weights, _ = npio.read_safetensors(self.weights_file)
        want = {"rank": self.rank, "alpha": self.scale * self.rank, "target_modules": self.keys or ["all-linear"], "layers": self.num_layers, "dora": self.dora}
        defaults = TrainConfig()
        conflicts = []
        for key, flag in SHAPE_FLAGS.items():
            value = getattr(cfg, key)
            set_by_user = value != getattr(defaults, key) or key in (given or ())
            if set_by_user and not self._agrees(key, value, cfg, n_blocks, model_dir):
                conflicts.append(f"{_setting(key, flag, value, given)} (the adapter's: {_shown(want[key]) if key != 'alpha' else f'scale {self.scale:g}, alpha {want[key]:g} at rank {self.rank}'})")
        if conflicts:
            raise UsageError(f"a run from --init-adapter {self.path} keeps the adapter's rank, scale and adapted layers; drop " + ", ".join(conflicts))
        return dataclasses.replace(cfg, **want), notes

    def _agrees(self, key: str, value, cfg: TrainConfig, n_blocks: int, model_dir: Path) -> bool:
        if key == "rank":
            return int(value) == self.rank
        if key == "alpha":
            return abs(float(value) / self.rank - self.scale) <= 1e-9 * max(abs(self.scale), 1.0)
        if key == "dora":
            return bool(value) == self.dora
        if key == "layers":
            norm = lambda n: n_blocks if n < 0 or (n_blocks and n > n_blocks) else n  # noqa: E731
            return norm(int(value)) == norm(self.num_layers)
        linear = _linear_keys(model_dir)
        return selected(value, linear) == set(self.keys or linear)

    def _check_base(self, source, model_dir: Path) -> list[str]:
        """The adapter's base must be this run's model: its weights, files and Hub id, as far as recorded.

        An mlxtune run records a sample of its base's weights and a
        signature of its files; a PEFT adapter names a Hub id or a local
        directory (whose files are then compared); what cannot be compared
        is said in a note.
        """
        from .checkpoint import model_signature, weights_sample

        base = self.base
        if not base:
            return [f"the adapter in {self.path} does not say which model it was trained on: only the shapes of its tensors can be checked against {source.spec}"]
        mine_dirs = [model_dir] + ([source.path] if source.kind == "dir" and Path(source.path) != Path(model_dir) else [])
        their_dir = Path(base.path) if base.kind == "dir" and base.path and Path(base.path).is_dir() else None
        differs, checked = [], False
        for name, measure, why in (("weights_sample", weights_sample, "their weights differ"), ("signature", model_signature, "their config.json or weight files differ")):
            theirs = getattr(base, name) or (measure(their_dir) if their_dir else None)
            if theirs and not differs:
                checked = True
                if theirs not in {measure(d) for d in mine_dirs}:
                    differs.append(why)
        theirs_id, mine_id = base.repo_id, source.repo_id
        if theirs_id and mine_id:
            checked = True
            if theirs_id.lower() != mine_id.lower():
                differs.append("they are other Hub models")
            elif base.revision and source.revision and base.revision != source.revision:
                differs.append(f"the adapter's is revision {base.revision[:12]}, this one {source.revision[:12]}")
        name = base.spec or base.path
        if differs:
            raise AdapterError(
                f"the adapter in {self.path} was trained on {name}, not on this run's model {source.spec} ({'; '.join(differs)}): "
                f"leave out --model to train on {name}, or start from an adapter of {source.spec}"
            )
        if not checked:
            return [f"the adapter in {self.path} was trained on {name}; whether that is {source.spec} cannot be checked here (only the shapes of its tensors are)"]
        return []

    def load_into(self, trainer) -> None:
        """Put the weights into a trainer opened in the adapter's shape; every tensor must be there, in its shape."""
        expected = trainer.adapter_weights()
        missing = [k for k in expected if k not in self.weights]
        misfit = [k for k in self.weights if k not in expected or tuple(np.shape(self.weights[k])) != tuple(expected[k].shape)]
        if missing or misfit:
            example = (misfit or missing)[0]
            raise AdapterError(f"the adapter in {self.path} does not fit this model ({len(misfit)} unexpected or misshaped, {len(missing)} missing tensors, e.g. {example}): was it trained on a different base model?")
        trainer.set_adapter_weights(self.weights)

    def record(self) -> dict:
        """What the new run's adapter_config.json says about where it started."""
        return {
            "path": str(self.path), "kind": self.kind, "step": self.step, "val_loss": self.val_loss,
            "sha256": file_digest(self.weights_file), "base_model": self.base.to_dict(),
            "rank": self.rank, "scale": self.scale, "num_layers": self.num_layers, "keys": self.keys, "fine_tune_type": "dora" if self.dora else "lora",
        }

    def describe(self) -> str:
        """One line for the user."""
        what = {"run": "the run", "best": "the best adapters of", "checkpoint": "the checkpoint", "mlx-lm": "the mlx-lm adapter", "peft": "the PEFT adapter"}[self.kind]
        at = f" (step {self.step}" + (f", validation loss {self.val_loss:.3f})" if self.val_loss is not None else ")") if self.step is not None else ""
        shape = f"{'DoRA' if self.dora else 'LoRA'} rank {self.rank}, scale {self.scale:g}, {', '.join(k.rsplit('.', 1)[-1] for k in self.keys)} of {self.num_layers} blocks"
        return f"Starting from {what} {self.path}{at}: {shape}; step, optimizer state, schedule and data order start afresh"

    def within(self, run_dir: Path) -> bool:
        run_dir = Path(run_dir).resolve()
        return self.path == run_dir or run_dir in self.path.parents


def locate(path: str | Path) -> InitAdapter:
    """What ``path`` names: a run, its best/, a checkpoint, an mlx-lm or a PEFT adapter; AdapterError if none."""
    from ..formats.peft import PEFT_WEIGHTS, import_peft, is_peft_adapter

    given = Path(path).expanduser()
    if not given.exists():
        raise AdapterError(f"--init-adapter {path}: no such file or directory")
    given = given.resolve()
    weights = given if given.is_file() else None
    directory = given.parent if weights else given
    if weights is None and is_peft_adapter(directory):
        config, _ = import_peft(directory)  # checks it, and reads base_model_name_or_path
        return InitAdapter(directory, "peft", RunConfig.from_dict(config), directory / PEFT_WEIGHTS)
    weights = weights or directory / ADAPTER_WEIGHTS
    if weights.suffix != ".safetensors" or not weights.is_file():
        raise AdapterError(f"--init-adapter {path}: no {ADAPTER_WEIGHTS} there; pass a run directory of 'mlxtune lora' (or its best/ or checkpoints/step-N), an mlx-lm or a PEFT adapter directory")
    state = _json(directory / "state.json")
    if state is not None and directory.parent.name == "checkpoints":  # RUN/checkpoints/step-N: the run's config
        run = directory.parent.parent
        return InitAdapter(given, "checkpoint", RunConfig.from_file(run), weights, int(state.get("step", 0)) or None, state.get("last_val_loss"))
    config = RunConfig.from_file(directory)  # the precise error where there is none
    if config.best is not None:
        return InitAdapter(given, "best", config, weights, config.best.step, config.best.val_loss)
    if "config" in config.present():  # a run: its adapters are those of its last checkpoint
        from .checkpoint import latest_checkpoint

        last = latest_checkpoint(directory)
        state = _json(last / "state.json") if last else None
        return InitAdapter(given, "run", config, weights, (state or {}).get("step"), (state or {}).get("last_val_loss"))
    return InitAdapter(given, "mlx-lm", config, weights)


def _json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def _read_model(model_dir: Path):
    from .memory import read_model

    return read_model(model_dir)


def _linear_keys(model_dir: Path) -> list[str]:
    """Block-relative names of the model's linear layers (2-d weights in its blocks), over all blocks."""
    _, tensors = _read_model(model_dir)
    return linear_keys_of_weights((t.name, t.shape) for t in tensors)


def _setting(key: str, flag: str, value, given: Mapping[str, str] | set[str] | None) -> str:
    """A shape setting as the user set it: ``--rank 16``, ``rank: 16 in c.yaml``, ``rank: 16 in recipe style``."""
    where = given.get(key) if isinstance(given, Mapping) else None
    if where is None or where.startswith("--"):
        return f"{flag} {_shown(value)}"
    return f"{key}: {_shown(value)} in {where}"


def _shown(value) -> str:
    if isinstance(value, list):
        return ",".join(str(v).rsplit(".", 1)[-1] if "." in str(v) else str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)

