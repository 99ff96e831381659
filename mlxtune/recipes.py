"""Recipes: the proven settings for a task, in a YAML file.

A recipe file has a comment header for people (what it is for, the data it
expects, how to run it) and three keys::

    description: one line for ``mlxtune recipes``
    train:       TrainConfig settings that differ from the defaults
    eval:        how ``mlxtune eval`` judges the task (see EVAL_KEYS)

``mlxtune lora --recipe NAME`` starts from the recipe's ``train`` settings; a
``-c`` file and then command-line flags override them. The recipe's name is
recorded in the run, so ``mlxtune eval`` on the run uses its ``eval`` section.
Shipped recipes live in the repository's ``recipes/`` directory; ``--recipe``
also takes the path of a recipe file of your own.

This module is the registry (find, load, validate), a library that training's
and eval's settings read; the ``mlxtune recipes`` command that lists and shows
them is ``cli/evaluation.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
TASKS = ("loss", "summarize", "style")
# eval key -> (type, default, check, what the check demands)
EVAL_KEYS: dict[str, tuple[type, Any]] = {
    "task": (str, "loss"),  # loss | summarize (ROUGE) | style (style markers)
    "max_tokens": (int, 256),  # new tokens per generated answer
    "samples": (int, 3),  # side-by-side examples shown and kept
    "marker_share": (float, 0.5),  # style: an n-gram is a marker if this share of training answers has it
}


@dataclass
class Recipe:
    name: str
    path: Path
    description: str
    header: str  # the file's leading comment block, without the '#'
    train: dict[str, Any] = field(default_factory=dict)  # validated TrainConfig overrides
    eval: dict[str, Any] = field(default_factory=dict)  # every EVAL_KEYS key, defaults filled in

    @property
    def ref(self) -> str:
        """How a run records this recipe so that ``load`` finds it again: a shipped one by name, another by path."""
        return self.name if self.path.parent == RECIPES_DIR else str(self.path)


def available() -> list[Path]:
    """The shipped recipe files, by name."""
    return sorted(RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []


def find(name_or_path: str | Path) -> Path:
    """The file of a recipe given by name (``style``) or path (``my/recipe.yaml``)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():  # a path; a directory of the same name as a recipe is not one
        if not p.is_file():
            raise ConfigError(f"recipe file {p} does not exist")
        return p
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    names = ", ".join(q.stem for q in available()) or "none found in " + str(RECIPES_DIR)
    raise ConfigError(f"no recipe named '{name_or_path}'; the recipes are: {names} (or give the path of a .yaml recipe file)")


def load(name_or_path: str | Path) -> Recipe:
    """Read and validate a recipe; every problem names the file and the key."""
    import yaml

    from .training.config import validate

    path = find(name_or_path)
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping with keys description, train and eval")
    unknown = sorted(set(data) - {"description", "train", "eval"})
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (a recipe has description, train and eval)")
    description = data.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ConfigError(f"{path}: key 'description' must be a line of text")
    train = data.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{path}: key 'train' must be a mapping of training settings")
    for key in ("data", "output", "recipe"):
        if key in train:
            raise ConfigError(f"{path} (train): key '{key}' does not belong in a recipe (it is the user's to give)")
    train = validate(train, f"{path} (train)")
    return Recipe(path.stem, path, description.strip(), _header(text), train, _validate_eval(data.get("eval") or {}, path))


def _validate_eval(values: Any, path: Path) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: key 'eval' must be a mapping (task, max_tokens, samples, marker_share)")
    out = eval_settings()
    for key, value in values.items():
        if key not in EVAL_KEYS:
            raise ConfigError(f"{path} (eval): unknown key '{key}'; the keys are {', '.join(EVAL_KEYS)}")
        kind = EVAL_KEYS[key][0]
        ok = isinstance(value, kind) and not isinstance(value, bool) or (kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{path} (eval): key '{key}' must be {kind.__name__}, not {type(value).__name__} {value!r}")
        out[key] = kind(value)
    if out["task"] not in TASKS:
        raise ConfigError(f"{path} (eval): key 'task' must be one of {', '.join(TASKS)}, not {out['task']!r}")
    if out["max_tokens"] <= 0 or out["samples"] < 0 or not 0 < out["marker_share"] <= 1:
        raise ConfigError(f"{path} (eval): max_tokens must be positive, samples >= 0 and marker_share in (0, 1]")
    return out


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines).strip()


def eval_settings(task: str | None = None) -> dict[str, Any]:
    """The eval defaults, for a run without a recipe (``task`` given or 'loss')."""
    out = {k: default for k, (_, default) in EVAL_KEYS.items()}
    if task is not None:
        if task not in TASKS:
            raise ConfigError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
        out["task"] = task
    return out


def eval_for(recipe: str | None, task: str | None = None) -> dict[str, Any]:
    """The eval settings of ``recipe`` (the defaults without one), with ``task`` instead of its own if given."""
    settings = load(recipe).eval if recipe else eval_settings()
    return settings | {"task": eval_settings(task)["task"]} if task is not None else settings
