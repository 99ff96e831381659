"""Training configuration: defaults, YAML files, and validation.

One dataclass holds every setting of a run. A YAML file (``-c FILE.yaml``)
overrides the defaults, and command-line flags override the file. All problems
in a file are collected and reported together, each naming the file and key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError


@dataclass
class TrainConfig:
    model: str | None = None  # None: the default model (hub.DEFAULT_MODEL)
    revision: str | None = None
    data: str | None = None
    output: str | None = None  # run directory; default runs/<data name>
    backend: str = "auto"
    iters: int | None = None  # exactly one of iters/epochs decides the length
    epochs: float | None = None
    batch_size: int = 4  # sequences per micro-batch (one forward/backward)
    grad_accumulation: int = 1  # micro-batches per optimizer step: the effective batch is batch_size x this
    grad_checkpoint: bool | None = None  # recompute block activations in the backward; None: the backend decides (numpy: past its activation budget; mlx: off)
    auto_fit: bool = True  # plan memory first and shrink the micro-batch (keeping the effective batch) or checkpoint so the run fits
    learning_rate: float = 1e-3  # measured on data/notes.jsonl, one epoch: val loss 0.858 at 2e-4, 0.350 at 5e-4, 0.166 at 1e-3
    warmup: float = 0.05  # fraction of the steps (or a step count if >= 1)
    min_lr_ratio: float = 0.1  # cosine decay ends at learning_rate * this
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    rank: int = 8
    alpha: float = 16.0  # scale = alpha / rank, as in PEFT
    dropout: float = 0.0
    dora: bool = False
    layers: int = -1  # number of final blocks to adapt; -1 all
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    max_seq_len: int = 1024
    mask_prompt: bool | None = None  # None: on for prompt/completion and chat
    thinking: bool = False  # render chat data with the chat template's thinking mode on (enable_thinking: Qwen3, SmolLM3)
    val_every: int = 25  # 0: never validate (no validation loss, no best/, no early stopping)
    val_batches: int = -1  # validate on the first N batches of the validation split; -1: all of it
    save_every: int = 50
    early_stop: int | None = None  # stop after this many validations without a new best (None: never)
    seed: int = 0
    valid_fraction: float = 0.1
    skip_bad_lines: bool = False  # leave out (and list) data lines that fail validation, instead of stopping
    offline: bool | None = None
    dtype: str | None = None  # compute dtype; None: runtime.choose_compute decides
    recipe: str | None = None  # the recipe the settings came from (its eval section judges the run)
    distributed: bool = False  # require a run of several processes (mlx.launch); one is detected without it
    init_adapter: str | None = None  # start from this adapter's weights (its rank, targets and scale); see init_adapter.py
    objective: str = "cross-entropy"  # the training loss, a name in objectives.OBJECTIVES
    pack: bool = False  # several records per row of up to max_seq_len tokens, each attending to itself only (data.batching.pack_rows)
    fields: dict[str, str] = field(default_factory=dict)  # --field FIELD=COLUMN: data columns renamed to the fields formats read

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_ALIASES = {"lr": "learning_rate", "grad_accumulation_steps": "grad_accumulation", "lora_rank": "rank", "lora_alpha": "alpha", "num_layers": "layers", "adapter_path": "output", "resume_adapter_file": "init_adapter"}


def _expected_types(name: str) -> tuple[type, ...]:
    default = TrainConfig()
    value = getattr(default, name)
    annotation = str(_FIELDS[name].type)
    if annotation.startswith("dict"):
        return (dict,)
    if "list" in annotation:
        return (list,)
    if "bool" in annotation:
        return (bool,)
    if "float" in annotation:
        return (int, float)
    if "int" in annotation:
        return (int,)
    if "str" in annotation:
        return (str,)
    return (type(value),)


def validate(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Check keys and types of ``values``; return them normalised. Collects all errors."""
    errors: list[str] = []
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = _ALIASES.get(str(raw_key).replace("-", "_"), str(raw_key).replace("-", "_"))
        if key not in _FIELDS:
            errors.append(f"unknown key '{raw_key}'")
            continue
        if value is None:
            out[key] = None
            continue
        types = _expected_types(key)
        if bool in types and not isinstance(value, bool):
            errors.append(f"key '{raw_key}' must be true or false, not {value!r}")
            continue
        if isinstance(value, bool) and bool not in types:
            errors.append(f"key '{raw_key}' must be {types[0].__name__}, not {value!r}")
            continue
        if list in types and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, types):
            errors.append(f"key '{raw_key}' must be {' or '.join(t.__name__ for t in types)}, not {type(value).__name__} {value!r}")
            continue
        out[key] = float(value) if float in types and not isinstance(value, bool) else value
    errors.extend(_check_ranges({**TrainConfig().to_dict(), **out}))
    if errors:
        raise ConfigError(f"{source}: " + "; ".join(errors))
    return out


def _check_ranges(v: dict[str, Any]) -> list[str]:
    errors = []
    positive = ["batch_size", "grad_accumulation", "rank", "max_seq_len", "save_every", "early_stop"]
    for k in positive:
        if v.get(k) is not None and v[k] <= 0:
            errors.append(f"key '{k}' must be positive, not {v[k]}")
    if v.get("val_every") is not None and v["val_every"] < 0:
        errors.append(f"key 'val_every' must be positive, or 0 to never validate, not {v['val_every']}")
    if v.get("val_batches") is not None and v["val_batches"] != -1 and v["val_batches"] <= 0:
        errors.append(f"key 'val_batches' must be positive (-1: the whole validation split), not {v['val_batches']}; to skip validation, set val_every to 0")
    for k in ["iters", "epochs"]:
        if v.get(k) is not None and v[k] <= 0:
            errors.append(f"key '{k}' must be positive, not {v[k]}")
    if v.get("iters") is not None and v.get("epochs") is not None:
        errors.append("give either 'iters' or 'epochs', not both")
    if v.get("learning_rate") is not None and not 0 < v["learning_rate"] < 1:
        errors.append(f"key 'learning_rate' must be between 0 and 1, not {v['learning_rate']}")
    if v.get("dropout") is not None and not 0 <= v["dropout"] < 1:
        errors.append(f"key 'dropout' must be in [0, 1), not {v['dropout']}")
    if v.get("valid_fraction") is not None and not 0 < v["valid_fraction"] < 1:
        errors.append(f"key 'valid_fraction' must be in (0, 1), not {v['valid_fraction']}")
    from ..backends.base import BACKENDS

    if v.get("backend") is not None and v["backend"] not in BACKENDS:
        errors.append(f"key 'backend' must be {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}, not {v['backend']!r}")
    if v.get("dtype") not in (None, "float32", "float16", "bfloat16"):
        errors.append(f"key 'dtype' must be float32, float16 or bfloat16, not {v['dtype']!r}")
    if v.get("fields") is not None and not all(isinstance(k, str) and isinstance(c, str) and k and c for k, c in v["fields"].items()):
        errors.append(f"key 'fields' must map field names to column names (e.g. prompt: question), not {v['fields']!r}")
    if v.get("objective") is not None:
        from .objectives import OBJECTIVES

        if v["objective"] not in OBJECTIVES:
            errors.append(f"key 'objective' must be {' or '.join(OBJECTIVES)}, not {v['objective']!r}")
    return errors


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into validated overrides."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (key: value), found {type(data).__name__}")
    return validate(data, str(path))


def build(file_values: dict[str, Any] | None, cli_values: dict[str, Any]) -> TrainConfig:
    """Defaults, then the file, then the flags the user actually gave."""
    merged = dict(file_values or {})
    merged.update(validate({k: v for k, v in cli_values.items() if v is not None}, "command line"))
    if "iters" in cli_values and cli_values.get("iters") is not None:
        merged.pop("epochs", None)
    if "epochs" in cli_values and cli_values.get("epochs") is not None:
        merged.pop("iters", None)
    cfg = TrainConfig(**merged)
    if cfg.early_stop and cfg.val_every == 0:  # the two may come from different places (a file, a flag): checked together
        raise ConfigError("--early-stop (early_stop) stops after validations without a better loss, and --val-every 0 (val_every: 0) turns validation off: drop one of them")
    return cfg
