"""The model families mlxtune knows, one file each, found by name.

Every module of this folder but ``base`` is a family file: ``<name>.py``
defining one ``FAMILY`` (a ``base.Family``) whose ``name`` is the file's. They
are found by listing the folder, so adding a family is adding its file; the
registry is read in the order of the files' names, which is the order of the
messages that list families ("llama, mistral, qwen2").
"""

from __future__ import annotations

import importlib
import pkgutil

from ...errors import UnsupportedModelError
from .base import Family

FAMILY_MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base" and not m.name.startswith("_")))
FAMILIES: tuple[Family, ...] = tuple(importlib.import_module(f"{__name__}.{name}").FAMILY for name in FAMILY_MODULES)
_BY_MODEL_TYPE: dict[str, Family] = {t: f for f in FAMILIES for t in f.model_types}
_UNKNOWN = Family("unknown", ())  # every rule at its default


def get(model_type: str | None) -> Family | None:
    """The family of ``model_type`` (config.json's), or None when mlxtune knows nothing of it."""
    return _BY_MODEL_TYPE.get(model_type) if isinstance(model_type, str) else None


def family_for(model_type: str | None) -> Family:
    """The family of ``model_type``; UnsupportedModelError naming the ones mlxtune knows when there is none."""
    family = get(model_type)
    if family is None:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not one mlxtune knows (it knows {', '.join(model_types())}); "
            "the mlx backend runs what mlx-lm supports"
        )
    return family


def head_dim(config: dict) -> int:
    """head_dim as the family of config.json's model_type reads it; a model type mlxtune does not know is read as llama is."""
    return (get(config.get("model_type")) or _UNKNOWN).head_dim(config)


def for_gguf_arch(arch: str | None) -> Family | None:
    """The family a GGUF file of ``general.architecture`` ``arch`` is imported as, or None."""
    return next((f for f in FAMILIES if f.gguf_import and f.gguf_arch == arch), None)


def model_types() -> list[str]:
    """Every model_type mlxtune knows, in registry order."""
    return list(_BY_MODEL_TYPE)


def numpy_model_types() -> list[str]:
    """The model types the numpy backend implements."""
    return [t for f in FAMILIES if f.numpy for t in f.model_types]


def gguf_export_model_types() -> list[str]:
    """The model types GGUF export writes."""
    return [t for f in FAMILIES if f.gguf_arch for t in f.model_types]


def gguf_import_archs() -> list[str]:
    """The GGUF architectures GGUF import reads."""
    return [f.gguf_arch for f in FAMILIES if f.gguf_import and f.gguf_arch]


def hf_classes() -> dict[str, str]:
    """model_type -> the transformers class HF export names in config.json's "architectures"."""
    return {t: f.hf_class for f in FAMILIES if f.hf_class for t in f.model_types}


def local_rope_base_fields() -> dict[str, str]:
    """model_type -> the field its sliding-window layers' rope_theta is read from (model_config)."""
    return {t: f.local_rope_base_field for f in FAMILIES if f.local_rope_base_field for t in f.model_types}


def layer_pattern_fields() -> dict[str, str]:
    """model_type -> the field its period of full-attention layers is read from (model_config)."""
    return {t: f.layer_pattern_field for f in FAMILIES if f.layer_pattern_field for t in f.model_types}


def rope_scaling_type_readers() -> list[str]:
    """The model types whose mlx-lm model reads rope_scaling["type"] rather than "rope_type" (model_config)."""
    return [t for f in FAMILIES if f.rope_scaling_type_key for t in f.model_types]


def per_layer_type_rope_readers() -> list[str]:
    """The model types whose mlx-lm model reads a per-layer-type rope_parameters itself (model_config)."""
    return [t for f in FAMILIES if f.reads_per_layer_type_rope for t in f.model_types]
