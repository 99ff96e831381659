"""LM Studio: the fused MLX model placed where LM Studio finds it.

LM Studio lists every model in its models folder laid out as
``<publisher>/<model>/``; a folder holding ``config.json``, ``*.safetensors``
and the tokenizer files is an MLX model, which its MLX engine (mlx-lm, on
Apple silicon) loads. mlxtune's models go under the publisher ``mlxtune``, named
after the run (or ``--name``): ``mlxtune/<name>``.

The folder is LM Studio's own, so the model is written beside its place under a
temporary name and renamed into it when complete (``fsutil.staged_dir``); an
existing model of the same name is replaced only with ``force``.

Where the models folder is: ``--lmstudio-dir``, else ``LMSTUDIO_MODELS_DIR``,
else ``models/`` in LM Studio's home: the folder ``~/.lmstudio-home-pointer``
names (LM Studio writes it when its home was moved), else ``~/.lmstudio``, or
``~/.cache/lm-studio`` where only that older home exists. A models folder
chosen in LM Studio's settings is not read from them: pass it with
``--lmstudio-dir``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OutputExistsError

PUBLISHER = "mlxtune"
HOME_POINTER = ".lmstudio-home-pointer"
# What an MLX model folder needs: mlx-lm's load reads these; README.md is the card.
MODEL_FILES = ("config.json", "model.safetensors.index.json")


@dataclass
class Placed:
    path: Path  # <models>/<publisher>/<name>
    key: str  # "<publisher>/<name>", as LM Studio lists it
    size_bytes: int
    fused_layers: int | None  # None: a model exported as it is
    dtype: str | None
    notes: list[str] = field(default_factory=list)


def models_dir(given: str | Path | None = None) -> Path:
    """LM Studio's models folder (see the module's docstring for the order)."""
    if given is not None:
        return Path(given).expanduser()
    if os.environ.get("LMSTUDIO_MODELS_DIR"):
        return Path(os.path.expandvars(os.environ["LMSTUDIO_MODELS_DIR"])).expanduser()
    home = Path.home()
    try:
        pointed = (home / HOME_POINTER).read_text(encoding="utf-8").strip()
    except OSError:
        pointed = ""
    if pointed:
        return Path(pointed).expanduser() / "models"
    old = home / ".cache" / "lm-studio"
    if not (home / ".lmstudio").exists() and old.is_dir():
        return old / "models"
    return home / ".lmstudio" / "models"


def place_lmstudio(
    name: str,
    adapter: str | Path | None = None,
    model: str | None = None,
    lmstudio_dir: str | Path | None = None,
    force: bool = False,
    offline: bool | None = None,
    thinking: bool = False,
    dtype: str | None = None,
) -> Placed:
    """Write the run ``adapter`` fused into its base (``model``, default: the run's), or ``model`` as it is, as ``mlxtune/<name>`` in LM Studio's models folder.

    A run is fused as ``mlxtune fuse`` fuses it (in ``dtype``, by default the
    base's, float16 for a quantized base), so the placed model answers as the
    fused one does. A model is placed as it is stored (``dtype`` is refused:
    ``mlxtune convert --dtype`` first).
    """
    from ..errors import UsageError

    if dtype is not None and adapter is None:
        raise UsageError("--dtype applies to a run fused for LM Studio; a model is placed as it is stored: convert it first with `mlxtune convert MODEL -o DIR --dtype ...`")
    from ..fsutil import check_output_dir, staged_dir

    final = models_dir(lmstudio_dir).absolute() / PUBLISHER / name  # absolute: the card says where it is
    try:
        check_output_dir(final, force, what="LM Studio model")
    except OutputExistsError:
        raise OutputExistsError(f"LM Studio already has a model {PUBLISHER}/{name} ({final}): pass --force to replace it, or --name to place this one beside it") from None
    notes: list[str] = []
    with staged_dir(final, force=force) as tmp:
        if adapter is not None:
            n, dtype = _fuse(adapter, model, tmp, final, offline, thinking, dtype, notes)
        else:
            n, dtype = None, _copy_model(model, tmp, final, offline, thinking, notes)
    if not (sys.platform == "darwin" and platform.machine() == "arm64"):
        notes.append("LM Studio runs MLX models on Apple silicon Macs only; elsewhere export a GGUF (-f gguf) and import it with `lms import`")
    size = sum(p.stat().st_size for p in final.iterdir() if p.is_file())
    return Placed(final, f"{PUBLISHER}/{name}", size, n, dtype, notes)


def _fuse(adapter, model, out: Path, final: Path, offline, thinking: bool, dtype: str | None, notes: list[str]) -> tuple[int, str]:
    """The run fused into ``out`` (as ``mlxtune fuse``), with LM Studio's card for its place ``final``."""
    from ..fusing import fuse_run
    from .model_card import CARD, fused_facts, model_card

    r = fuse_run(adapter, out, model=model, dtype=dtype, offline=offline, force=True, name=final.name, thinking=thinking)
    notes.extend(r.notes)
    kind = f"{r.quantization['bits']}-bit" if r.quantization else r.dtype
    (out / CARD).write_text(model_card("lmstudio", final.name, str(final), fused_facts(out)[1], detail=f", {kind}"))
    return r.fused_layers, r.dtype


def _copy_model(model: str | None, out: Path, final: Path, offline, thinking: bool, notes: list[str]) -> str | None:
    """``model`` (any spec ``open_model`` takes) copied into ``out`` as an MLX model folder, with LM Studio's card for ``final``; its dtype."""
    from ..fsutil import copy_file
    from ..models.chat_template import write_thinking
    from ..models.directory import TOKENIZER_FILES
    from ..models.source import open_model
    from .model_card import CARD, FUSE_INFO, fused_facts, model_card

    opened = open_model(model, offline=offline)
    notes.extend(opened.notes)
    src = opened.path
    names = [*MODEL_FILES, *TOKENIZER_FILES, FUSE_INFO] + sorted(p.name for p in src.glob("model*.safetensors"))
    for file in dict.fromkeys(names):
        if (src / file).is_file():
            copy_file(src / file, out / file)
    write_thinking(out, thinking)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    quant = config.get("quantization")
    kind = f"{quant['bits']}-bit" if isinstance(quant, dict) and quant.get("bits") else config.get("torch_dtype")
    facts = fused_facts(src)[1]
    (out / CARD).write_text(model_card("lmstudio", final.name, str(final), facts, base_model=None if facts else opened.source.spec, detail=f", {kind}" if kind else ""))
    return kind
