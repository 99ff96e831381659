"""One reading of a model's config.json, whichever transformers wrote it.

transformers 4 wrote a model's rotary embedding as ``rope_theta`` plus an
optional ``rope_scaling`` (``{"rope_type": "llama3", "factor": 32.0, ...}``).
transformers 5 writes one ``rope_parameters`` dict holding both
(``{"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, ...}``),
or, for models whose layer types rotate differently (Gemma 3), one such dict
per layer type (``{"full_attention": {...}, "sliding_attention": {...}}``).
mlx-lm's llama, mistral, qwen2 and gemma3 models, and mlxtune's numpy model,
read only the transformers 4 fields: given a transformers 5 config they fall
back to theta 10000 without scaling, and the model computes something else
without a word. So every config.json mlxtune reads goes through
``normalize_config`` first, which adds the transformers 4 fields a
``rope_parameters`` implies (and keeps ``rope_parameters``, which the mlx-lm
models of newer families read, and which transformers 5 reads back). A config
without ``rope_parameters`` is returned unchanged. What cannot be read without
guessing (a rope type no reader here implements, missing or contradicting
fields) is refused, naming the file and the field.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ..errors import ModelFormatError, UnsupportedModelError
from ..fsutil import read_json_object
from . import families

# The rope types of transformers that mlx-lm's rope_utils.initialize_rope implements,
# with the fields transformers requires of each (besides rope_type and rope_theta).
ROPE_TYPES: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings"),
    "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "proportional": (),
}
# Scaled types whose original context transformers takes from the config when the dict lacks it.
_ORIGINAL_CONTEXT = ("yarn", "longrope", "llama3")
# From the model families (models/families: Family.local_rope_base_field, layer_pattern_field, reads_per_layer_type_rope):
# Model types whose layer types rotate differently, and how mlx-lm's model reads that:
# the full-attention layers from rope_theta / rope_scaling, the sliding ones from this field.
LOCAL_BASE_FIELD = families.local_rope_base_fields()
# Model types whose mlx-lm model places its sliding-window layers by a period (every Nth layer is
# full attention) rather than by transformers 5's explicit ``layer_types`` list.
PATTERN_FIELD = families.layer_pattern_fields()
# Model types whose mlx-lm model reads a per-layer-type rope_parameters itself.
READS_PER_LAYER_TYPE = tuple(families.per_layer_type_rope_readers())
# Model types whose mlx-lm model reads rope_scaling["type"] (transformers 4's key) rather than "rope_type".
TYPE_KEY = tuple(families.rope_scaling_type_readers())


def read_config(model_dir: str | Path) -> dict:
    """``model_dir``/config.json, normalised (see ``normalize_config``)."""
    path, config = _read(model_dir)
    return normalize_config(config, path)


def implied_fields(model_dir: str | Path) -> dict:
    """Only the fields ``normalize_config`` adds to or changes in ``model_dir``/config.json.

    For readers that read the file themselves (mlx-lm's ``load_model`` takes
    them as overrides), so that what they also take from elsewhere (the
    generation config's eos_token_id) stays theirs.
    """
    path, config = _read(model_dir)
    normalized = normalize_config(config, path)
    return {k: v for k, v in normalized.items() if k not in config or config[k] != v}


def _read(model_dir: str | Path) -> tuple[Path, dict]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelFormatError(f"{model_dir} has no config.json: not a model directory")
    return path, read_json_object(path, ModelFormatError, "a model's configuration")


def normalize_config(config: dict, source: str | Path = "config.json") -> dict:
    """A copy of ``config`` that also carries the ``rope_theta`` / ``rope_scaling`` its ``rope_parameters`` implies.

    Idempotent, so a config that went through it once (a converted model's)
    reads the same again. ``source`` names the file in error messages. The
    nested ``text_config`` of a multimodal config is normalised too.
    """
    out = copy.deepcopy(config)
    if isinstance(out.get("text_config"), dict):
        out["text_config"] = normalize_config(out["text_config"], f"{source}: text_config")
        family = families.get(out.get("model_type"))
        if family is not None and family.text_config and out.get("vocab_size") is None and out["text_config"].get("vocab_size"):
            # transformers reads the text model's vocabulary from text_config; mlx-lm's multimodal model (Gemma 3)
            # reads the top-level field, and without it takes the largest model's (262208) whatever the weights hold
            out["vocab_size"] = out["text_config"]["vocab_size"]
    if out.get("model_type") in PATTERN_FIELD and isinstance(out.get("layer_types"), list):
        _set_pattern(out, PATTERN_FIELD[out["model_type"]], source)
    params = out.get("rope_parameters")
    if not params:
        return out
    if not isinstance(params, dict):
        raise ModelFormatError(
            f"{source}: rope_parameters is {json.dumps(params)[:40]}, not a JSON object: write it as transformers does, "
            'e.g. "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, or take config.json again from the model\'s source'
        )
    # Per layer type: a dict (or None, for layers without rotary embedding) under each layer type's name.
    nested = [k for k, v in params.items() if isinstance(v, dict) or (v is None and k.endswith("_attention"))]
    if not nested:
        _set_global(out, params, source, "rope_parameters")
        return out
    if nested != list(params):
        others = [k for k in params if k not in nested]
        for k in (k for k in others if k.endswith("_attention")):  # a layer type whose entry is not a dict
            raise ModelFormatError(
                f"{source}: rope_parameters.{k} is {json.dumps(params[k])[:40]}, not a JSON object (or null, for layers without rotary embedding): "
                f'write it as the other layer types\' entries are, e.g. "{k}": {{"rope_type": "default", "rope_theta": 10000.0}}'
            )
        raise ModelFormatError(
            f"{source}: rope_parameters mixes per-layer-type entries ({', '.join(nested)}) with other fields ({', '.join(others)}): "
            f"move those into each layer type's entry (e.g. rope_parameters.{nested[0]}.{others[0]}), or take config.json again from the model's source"
        )
    model_type = out.get("model_type")
    if model_type in READS_PER_LAYER_TYPE:
        return out
    given = {k: params[k] for k in nested if params[k] is not None}
    if len(given) == len(nested) and len({json.dumps(v, sort_keys=True) for v in given.values()}) == 1:  # the same everywhere: one global setting
        name = next(iter(given))
        _set_global(out, given[name], source, f"rope_parameters.{name}")
        return out
    if model_type in LOCAL_BASE_FIELD and set(given) == {"full_attention", "sliding_attention"}:
        _set_global(out, given["full_attention"], source, "rope_parameters.full_attention")
        local = given["sliding_attention"]
        where = "rope_parameters.sliding_attention"
        rope_type = _rope_type(local, source, where)
        if rope_type != "default":
            raise UnsupportedModelError(f"{source}: {where}.rope_type {rope_type!r}: {model_type}'s sliding-window layers are read with plain rotary embeddings only")
        _agree(out, LOCAL_BASE_FIELD[model_type], _theta(local, out, source, where, key=LOCAL_BASE_FIELD[model_type]), source, f"{where}.rope_theta")
        return out
    raise UnsupportedModelError(
        f"{source}: rope_parameters gives a rotary setting per layer type ({', '.join(given)}), which mlxtune reads for "
        f"{', '.join(sorted(set(LOCAL_BASE_FIELD) | set(READS_PER_LAYER_TYPE)))} models only, not {model_type!r}"
    )


def _set_global(out: dict, params: dict, source, where: str) -> None:
    """rope_theta, rope_scaling (None for plain rotary) and partial_rotary_factor from one rope_parameters dict."""
    if not isinstance(params, dict):
        raise ModelFormatError(
            f"{source}: {where} is {json.dumps(params)[:40]}, not a JSON object: write it as transformers does, "
            'e.g. {"rope_type": "default", "rope_theta": 10000.0}, or take config.json again from the model\'s source'
        )
    rope_type = _rope_type(params, source, where)
    _agree(out, "rope_theta", _theta(params, out, source, where), source, f"{where}.rope_theta")
    if params.get("partial_rotary_factor") is not None:
        _agree(out, "partial_rotary_factor", params["partial_rotary_factor"], source, f"{where}.partial_rotary_factor")
    scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor", "type")}
    scaling["rope_type"] = rope_type
    if rope_type in _ORIGINAL_CONTEXT and "original_max_position_embeddings" not in scaling:
        # transformers' own rule (RotaryEmbeddingConfigMixin.standardize_rope_params): the config's value
        original = out.get("original_max_position_embeddings") or out.get("max_position_embeddings")
        if original is not None:
            scaling["original_max_position_embeddings"] = original
    missing = [k for k in ROPE_TYPES[rope_type] if k not in scaling]
    if missing:
        raise ModelFormatError(f"{source}: {where} lacks {', '.join(missing)}, which rope_type {rope_type!r} needs")
    if set(scaling) == {"rope_type"} and rope_type == "default":
        scaling = None
    elif out.get("model_type") in TYPE_KEY:  # and the original context at the top level, where it reads it too
        scaling["type"] = rope_type
        if "original_max_position_embeddings" in scaling:
            out.setdefault("original_max_position_embeddings", scaling["original_max_position_embeddings"])
    existing = out.get("rope_scaling")
    if existing is not None and not _same_scaling(existing, scaling):
        raise ModelFormatError(f"{source}: rope_scaling {json.dumps(existing)} and {where} disagree; remove the one that is stale")
    out["rope_scaling"] = scaling


def _set_pattern(out: dict, key: str, source) -> None:
    """The period ``key`` that reproduces ``layer_types`` (layer i is full attention when (i + 1) % period == 0).

    transformers 5 lists each layer's type; mlx-lm's Gemma 3 reads only the
    period and falls back to 6 without it, so a model with another layout
    would be computed with the wrong layers attending globally, silently.
    """
    types = out["layer_types"]
    if not all(t in ("full_attention", "sliding_attention") for t in types):
        raise ModelFormatError(f"{source}: layer_types holds {sorted(set(map(str, types)))}; expected full_attention and sliding_attention")
    n = len(types)
    for period in range(1, n + 2):  # n + 1: every layer sliding
        if all((t == "full_attention") == ((i + 1) % period == 0) for i, t in enumerate(types)):
            _agree(out, key, period, source, "layer_types")
            return
    raise UnsupportedModelError(
        f"{source}: layer_types places its full-attention layers irregularly ({', '.join('F' if t == 'full_attention' else 'S' for t in types)}); "
        f"mlx-lm's {out['model_type']} model reads only a regular {key} (every Nth layer full attention)"
    )


def _rope_type(params: dict, source, where: str) -> str:
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in ROPE_TYPES:
        raise UnsupportedModelError(f"{source}: {where}.rope_type {rope_type!r} is not a rotary embedding mlxtune can compute (it knows {', '.join(ROPE_TYPES)})")
    return rope_type


def _theta(params: dict, out: dict, source, where: str, key: str = "rope_theta") -> float:
    """The dict's rope_theta; else the config's own ``key``; never a family default (they differ between readers)."""
    theta = params.get("rope_theta", out.get(key))
    if theta is None:
        raise ModelFormatError(f"{source}: {where} has no rope_theta; add the model's rotary base (e.g. \"rope_theta\": 10000.0)")
    return theta


def _agree(out: dict, key: str, value, source, where: str) -> None:
    """Set ``out[key]`` to ``value``, refusing a different value already there (which one is meant would be a guess)."""
    if out.get(key) is not None and out[key] != value:
        raise ModelFormatError(f"{source}: {key} ({out[key]}) and {where} ({value}) disagree; remove the one that is stale")
    out[key] = value


def _same_scaling(a: dict | None, b: dict | None) -> bool:
    """Equal rope_scaling dicts, ``type`` and ``rope_type`` being one field and plain rotary the same as none."""

    def canonical(s: dict | None) -> dict:
        s = dict(s or {})
        s["rope_type"] = s.pop("rope_type", None) or s.pop("type", None) or "default"
        s.pop("type", None)
        return s

    return canonical(a) == canonical(b)
