"""Hugging Face PEFT LoRA adapters <-> mlxtune / mlx-lm adapters, with numpy alone.

The two formats hold the same matrices, transposed, under other names::

    mlx-lm:  model.layers.3.self_attn.q_proj.lora_a   (in, r)    y += scale · (x A) B
             model.layers.3.self_attn.q_proj.lora_b   (r, out)
             model.layers.3.self_attn.q_proj.m        (out,)     DoRA magnitude
    PEFT:    base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight  (r, in)  = Aᵀ
             base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight  (out, r) = Bᵀ
             base_model.model.model.layers.3.self_attn.q_proj.lora_magnitude_vector (out,)

PEFT's multiplier is ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with
``use_rslora``), mlx-lm's is ``scale``; both apply DoRA the same way (the
row norm of W + ΔW taken as a constant). mlx-lm's format has one rank and
one scale, and adapts the same block-relative layers (``keys``) of the last
``num_layers`` blocks; PEFT can vary rank and alpha by layer and adapt any
set. Import bridges that without changing a single output: smaller ranks are
padded with zero rows and columns, a layer's other scale is folded into its
``lora_b``, and layers the PEFT adapter leaves alone get zero adapters. What
mlx-lm adapters cannot express (extra trainable modules, biases, embedding
LoRA, variants that change the forward pass) is refused, naming the file and
the field.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import safetensors as npio
from .adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_config
from ..errors import AdapterError
from ..fsutil import file_digest, mlxtune_home, read_json_object, staged_dir
from ..export.model_card import CARD, model_card, run_facts
from ..training.run_schema import BaseModel, RunConfig

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"  # the same name as mlx-lm's; the fields tell them apart
PREFIX = "base_model.model."

# "<stem>layers.<index>.<block-relative key>" (the first numbered segment is the block)
_BLOCK = re.compile(r"^(?P<stem>(?:[^.]+\.)*?layers)\.(?P<idx>\d+)\.(?P<key>.+)$")
_MLX_LEAF = re.compile(r"^(?P<module>.+)\.(?P<leaf>lora_a|lora_b|m)$")
_PEFT_AB = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_PEFT_MAG = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$")
# init_lora_weights values that change the base model's weights: the adapter only fits the changed base.
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


@dataclass
class ExportResult:
    path: Path
    modules: int  # adapted linear layers
    rank: int
    lora_alpha: float
    target_modules: list[str]
    layers_to_transform: list[int] | None
    dora: bool
    base_model_name_or_path: str | None
    size_bytes: int


@dataclass
class ConvertResult:
    path: Path
    modules: int  # adapted linear layers in the PEFT adapter
    num_layers: int
    keys: list[str]
    rank: int
    scale: float
    dora: bool
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- mlxtune -> PEFT


def export_peft(run_dir: str | Path, out_dir: str | Path, base_model_name_or_path: str | None = None, force: bool = False, card_name: str | None = None) -> ExportResult:
    """Write the adapter of ``run_dir`` as a PEFT LoRA adapter directory ``out_dir``, with its model card.

    ``card_name``: what the card calls the adapter [default: the run's directory name].

    ``PeftModel.from_pretrained(model, out_dir)`` then computes what mlxtune
    computes. Values are copied bit for bit (only transposed), in the dtype
    they were stored in.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if is_peft_adapter(run_dir):
        raise AdapterError(f"{run_dir} is a PEFT adapter already: pass the run directory that 'mlxtune lora' wrote")
    config = RunConfig.from_file(run_dir)
    lp = config.lora_parameters
    rank, scale, dora = int(lp.rank), float(lp.scale), config.dora
    path = run_dir / ADAPTER_WEIGHTS
    if not path.exists():
        raise AdapterError(f"{run_dir} has no {ADAPTER_WEIGHTS}: the run may not have saved yet")
    tensors, _ = npio.read_safetensors(path)
    bf16 = {k for k, v in _header_dtypes(path).items() if v == "BF16"}

    modules: dict[str, dict[str, np.ndarray]] = collections.defaultdict(dict)
    for name, a in tensors.items():
        m = _MLX_LEAF.match(name)
        if not m or (m["leaf"] == "m" and not dora) or not _BLOCK.match(m["module"]):
            allowed = "lora_a, lora_b" + (", m" if dora else "")
            raise AdapterError(f"{path}: tensor {name} is not an adapter tensor of a transformer block (model.layers.N.<layer>.{{{allowed}}})")
        modules[m["module"]][m["leaf"]] = a
    if not modules:
        raise AdapterError(f"{path} holds no adapter tensors")

    out: dict[str, np.ndarray] = {}
    out_bf16: set[str] = set()
    for module, leaves in sorted(modules.items()):
        needed = ("lora_a", "lora_b", "m") if dora else ("lora_a", "lora_b")
        missing = [leaf for leaf in needed if leaf not in leaves]
        if missing:
            raise AdapterError(f"{path}: {module} has no {module}.{missing[0]} tensor")
        a, b = leaves["lora_a"], leaves["lora_b"]  # (in, r), (r, out)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != rank or b.shape[0] != rank:
            raise AdapterError(f"{path}: {module}.lora_a {a.shape} and .lora_b {b.shape} do not have rank {rank}, the lora_parameters.rank of {run_dir / ADAPTER_CONFIG}")
        pairs = [(module + ".lora_a", "lora_A.weight", a.T), (module + ".lora_b", "lora_B.weight", b.T)]  # (r, in), (out, r)
        if dora:
            if leaves["m"].shape != (b.shape[1],):
                raise AdapterError(f"{path}: {module}.m has shape {leaves['m'].shape}, not ({b.shape[1]},) like the layer's output")
            pairs.append((module + ".m", "lora_magnitude_vector", leaves["m"]))
        for src, leaf, value in pairs:
            dst = f"{PREFIX}{module}.{leaf}"
            out[dst] = np.ascontiguousarray(value)
            if src in bf16:
                out_bf16.add(dst)

    blocks = [_BLOCK.match(module) for module in modules]
    layers = sorted({int(b["idx"]) for b in blocks})
    stems = sorted({b["stem"].rsplit(".", 1)[-1] for b in blocks})
    targets = sorted({b["key"].rsplit(".", 1)[-1] for b in blocks})
    # mlx-lm adapts the last num_layers blocks: when that includes block 0 it is every block.
    layers_to_transform = layers if layers[0] > 0 else None
    alpha = scale * rank
    alpha = int(alpha) if float(alpha).is_integer() else alpha
    base = config.base_model or BaseModel()
    name = base_model_name_or_path or base.repo_id or base.spec
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": name,
        "revision": base.revision if not base_model_name_or_path else None,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": float(lp.dropout or 0.0),
        "target_modules": targets,
        "layers_to_transform": layers_to_transform,
        "layers_pattern": (stems[0] if len(stems) == 1 else stems) if layers_to_transform else None,
        "bias": "none",
        "use_dora": dora,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
    }
    with staged_dir(out_dir, force) as tmp:
        npio.write_safetensors(tmp / PEFT_WEIGHTS, out, metadata={"format": "pt"}, bf16=out_bf16)
        (tmp / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2) + "\n")
        blocks = "every block" if not layers_to_transform else f"blocks {layers_to_transform[0]}-{layers_to_transform[-1]}"
        detail = f": r={rank}, lora_alpha {alpha} (scale {scale:g}) on {', '.join(targets)} of {blocks}, {len(modules)} layers"
        (tmp / CARD).write_text(model_card("peft", card_name or run_dir.resolve().name, str(out_dir), run_facts(run_dir), base_model=name, detail=detail))
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    return ExportResult(out_dir, len(modules), rank, alpha, targets, layers_to_transform, dora, name, size)


def _header_dtypes(path: Path) -> dict[str, str]:
    """The stored dtype of each tensor of a safetensors file (npio widens bfloat16 on read)."""
    header, _ = npio.read_safetensors_header(path)
    return {k: v["dtype"] for k, v in header.items()}


# ---------------------------------------------------------------- PEFT -> mlxtune


def is_peft_adapter(path: str | Path) -> bool:
    """Whether ``path`` is a PEFT adapter directory (rather than an mlx-lm / mlxtune one)."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        config = json.loads((path / PEFT_CONFIG).read_text())
        if isinstance(config, dict) and "peft_type" in config:
            return True
    except (OSError, ValueError):
        pass
    has_peft_weights = (path / PEFT_WEIGHTS).exists() or (path / "adapter_model.bin").exists()
    return has_peft_weights and not (path / ADAPTER_WEIGHTS).exists()


def import_peft(peft_dir: str | Path, num_blocks: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The mlxtune adapter config and mlx-lm-named weights equal to a PEFT LoRA adapter.

    ``num_blocks``, the base model's number of transformer blocks, is needed
    only when the adapter leaves the last blocks alone; without it, it is read
    from a local ``base_model_name_or_path``, else taken to be one more than
    the last adapted block. bfloat16 tensors come back widened to float32.
    """
    config, weights, _ = _import(Path(peft_dir), num_blocks)
    return config, weights


def convert_peft_to_mlx(peft_dir: str | Path, out_dir: str | Path, force: bool = False, num_blocks: int | None = None) -> ConvertResult:
    """Write a PEFT adapter as an mlxtune run-style adapter directory (mlx-lm's format)."""
    config, weights, bf16 = _import(Path(peft_dir), num_blocks)
    with staged_dir(Path(out_dir), force) as tmp:
        npio.write_safetensors(tmp / ADAPTER_WEIGHTS, weights, metadata={"format": "mlx"}, bf16=bf16)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    run = RunConfig.from_dict(config)
    lp, src = run.lora_parameters, run.source
    return ConvertResult(Path(out_dir), src["modules"], run.num_layers, lp.keys, lp.rank, lp.scale, run.dora, src["notes"])


def as_mlx_adapter(path: str | Path, num_blocks: int | None = None, cache_dir: Path | None = None) -> Path:
    """``path`` itself for an mlx-lm adapter directory; for a PEFT one, its conversion (cached by content)."""
    path = Path(path)
    if not is_peft_adapter(path):
        return path
    if not (path / PEFT_WEIGHTS).exists():
        _import(path, num_blocks)  # raises the precise error
    h = hashlib.sha256((path / PEFT_CONFIG).read_bytes() if (path / PEFT_CONFIG).exists() else b"")
    h.update(file_digest(path / PEFT_WEIGHTS).encode() + str(num_blocks).encode())
    target = (cache_dir or mlxtune_home() / "adapters") / f"peft-{path.resolve().name}-{h.hexdigest()[:12]}"
    if not (target / ADAPTER_WEIGHTS).exists():
        convert_peft_to_mlx(path, target, force=True, num_blocks=num_blocks)
    return target


def _import(peft_dir: Path, num_blocks: int | None) -> tuple[dict, dict[str, np.ndarray], set[str]]:
    """(mlxtune config, mlx-lm weights, names to store as bfloat16) of a PEFT adapter directory."""
    pc, cfg_path = _read_peft_config(peft_dir)
    path = peft_dir / PEFT_WEIGHTS
    if not path.exists():
        if (peft_dir / "adapter_model.bin").exists():
            raise AdapterError(f"{peft_dir} holds adapter_model.bin, a PyTorch pickle mlxtune does not read: re-save it with save_pretrained(..., safe_serialization=True) to get {PEFT_WEIGHTS}")
        raise AdapterError(f"{peft_dir} has no {PEFT_WEIGHTS}")
    found = _peft_layers(path, pc, cfg_path)
    dora = bool(pc.get("use_dora"))
    bf16_in = {k for k, v in _header_dtypes(path).items() if v == "BF16"}

    # ---- mlx-lm's layout: the same keys in each of the last num_layers blocks, one rank, one scale
    notes: list[str] = []
    blocks = {module: _BLOCK.match(module) for module in found}
    stems = {m["stem"] for m in blocks.values()}
    if len(stems) > 1:
        raise AdapterError(f"{path} adapts layers of more than one block list ({', '.join(sorted(stems))}): mlx-lm adapters cover one")
    stem = stems.pop()
    layers = sorted({int(m["idx"]) for m in blocks.values()})
    keys = sorted({m["key"] for m in blocks.values()})
    n_blocks = num_blocks or _base_blocks(pc) or layers[-1] + 1
    if layers[-1] >= n_blocks:
        raise AdapterError(f"{path} adapts block {layers[-1]}, but the base model has {n_blocks} blocks: is it an adapter for another model?")
    first = layers[0]
    filled = [f"{stem}.{i}.{k}" for i in range(first, n_blocks) for k in keys if f"{stem}.{i}.{k}" not in found]
    if filled and dora:
        raise AdapterError(f"{path}: DoRA adapts only some of {', '.join(keys)} in blocks {first}..{n_blocks - 1} (e.g. not {filled[0]}): mlx-lm adapters adapt the same layers of the last blocks, and a DoRA layer cannot be left out without the base weights")
    if filled:
        notes.append(f"{len(filled)} layers the PEFT adapter leaves alone (e.g. {filled[0]}) get zero adapters: mlx-lm adapters adapt the same layers in each of the last {n_blocks - first} blocks")

    ranks = {module: layer.rank for module, layer in found.items()}
    rank = max(ranks.values())
    counts = collections.Counter(layer.scale for layer in found.values())
    default = _scale(pc, float(pc["lora_alpha"]), int(pc["r"]))
    scale = default if counts[default] == max(counts.values()) else counts.most_common(1)[0][0]  # most layers unchanged
    if len(set(ranks.values())) > 1:
        notes.append(f"ranks {sorted(set(ranks.values()))} (rank_pattern) padded with zeros to {rank}")
    if len(counts) > 1:
        notes.append(f"{sum(layer.scale != scale for layer in found.values())} layers with another scale (alpha_pattern, rank_pattern) have it folded into lora_b: scale {scale:g} for all")

    weights: dict[str, np.ndarray] = {}
    bf16: set[str] = set()
    key_dims = {blocks[module]["key"]: (layer.a.shape[1], layer.b.shape[0]) for module, layer in found.items()}
    for i in range(first, n_blocks):
        for k in keys:
            module = f"{stem}.{i}.{k}"
            layer = found.get(module)
            if layer is None:  # an exact no-op: x A B = 0
                d_in, d_out = key_dims[k]
                weights[module + ".lora_a"] = np.zeros((d_in, rank), np.float32)
                weights[module + ".lora_b"] = np.zeros((rank, d_out), np.float32)
                continue
            lora_a = np.zeros((layer.a.shape[1], rank), layer.a.dtype)  # (in, R)
            lora_a[:, : layer.rank] = layer.a.T
            lora_b = np.zeros((rank, layer.b.shape[0]), layer.b.dtype)  # (R, out)
            lora_b[: layer.rank] = layer.b.T
            if layer.scale != scale:
                lora_b = (lora_b.astype(np.float64) * (layer.scale / scale)).astype(np.float32)
            weights[module + ".lora_a"], weights[module + ".lora_b"] = lora_a, lora_b
            if dora:
                weights[module + ".m"] = np.ascontiguousarray(layer.m)
            # bfloat16 stays bfloat16, bit for bit (zero padding is exact; a rescaled lora_b is float32)
            bf16.update(module + leaf for leaf, src in ((".lora_a", layer.names[0]), (".lora_b", layer.names[1] if layer.scale == scale else None), (".m", layer.names[2])) if src in bf16_in)

    config = adapter_config(
        n_blocks - first, keys, rank, scale, float(pc.get("lora_dropout") or 0.0), dora,
        base_model=_base_model(pc),
        source={"format": "peft", "path": str(peft_dir.resolve()), "modules": len(found), "notes": notes, "peft_config": pc},
    )
    return config, weights, bf16


@dataclass
class _Layer:
    """One adapted layer of a PEFT adapter, as stored."""

    a: np.ndarray  # lora_A.weight (r, in)
    b: np.ndarray  # lora_B.weight (out, r)
    m: np.ndarray | None  # lora_magnitude_vector (out,)
    names: tuple[str, str, str | None]  # their tensor names
    rank: int
    scale: float


def _read_peft_config(peft_dir: Path) -> tuple[dict, Path]:
    cfg_path = peft_dir / PEFT_CONFIG
    if not peft_dir.is_dir():
        raise AdapterError(f"adapter directory {peft_dir} does not exist")
    if not cfg_path.exists():
        raise AdapterError(f"{peft_dir} has no {PEFT_CONFIG}: not a PEFT adapter directory")
    pc = read_json_object(cfg_path, AdapterError, "a PEFT adapter config")
    _check_config(pc, cfg_path)
    return pc, cfg_path


def _peft_layers(path: Path, pc: dict, cfg_path: Path) -> dict[str, _Layer]:
    """The adapted layers of adapter_model.safetensors by module name, each checked against the config."""
    dora = bool(pc.get("use_dora"))
    tensors, _ = npio.read_safetensors(path)
    parts: dict[str, dict[str, tuple[str, np.ndarray]]] = collections.defaultdict(dict)  # module -> A|B|m -> (name, array)
    for name, a in tensors.items():
        short = name[len(PREFIX):] if name.startswith(PREFIX) else name
        ab, mag = _PEFT_AB.match(short), _PEFT_MAG.match(short)
        if ab:
            module, part = ab["module"], ab["ab"]
        elif mag and dora:
            module, part = mag["module"], "m"
        else:
            raise AdapterError(f"{path}: tensor {name} is {_why_not(short)}")
        if not _BLOCK.match(module):
            raise AdapterError(f"{path}: tensor {name} adapts {module}, which is not a layer of a transformer block (model.layers.N...): mlx-lm adapters cover transformer blocks only")
        parts[module][part] = (name, a)
    if not parts:
        raise AdapterError(f"{path} holds no LoRA tensors")

    layers = {}
    for module, got in sorted(parts.items()):
        for part, leaf in (("A", "lora_A.weight"), ("B", "lora_B.weight"), ("m", "lora_magnitude_vector"))[: 3 if dora else 2]:
            if part not in got:
                raise AdapterError(f"{path}: {module} has no {leaf} tensor" + (" (field 'use_dora' is true)" if part == "m" else ""))
        (name_a, a), (name_b, b) = got["A"], got["B"]  # (r, in), (out, r)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(f"{path}: {name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} do not fit together (lora_A is (r, in), lora_B is (out, r))")
        r_field, r = _pattern_value(pc, "rank_pattern", module, "r", int(pc["r"]), cfg_path)
        if a.shape[0] != r:
            raise AdapterError(f"{path}: {name_a} has rank {a.shape[0]}, but field '{r_field}' of {cfg_path} says {r}")
        name_m, m = got.get("m", (None, None))
        if m is not None and m.shape != (b.shape[0],):
            raise AdapterError(f"{path}: {name_m} has shape {tuple(m.shape)}, not ({b.shape[0]},) like the layer's output")
        _, alpha = _pattern_value(pc, "alpha_pattern", module, "lora_alpha", float(pc["lora_alpha"]), cfg_path)
        layers[module] = _Layer(a, b, m, (name_a, name_b, name_m), r, _scale(pc, float(alpha), r))
    return layers


def _scale(pc: dict, alpha: float, r: int) -> float:
    """PEFT's multiplier: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora."""
    return alpha / math.sqrt(r) if pc.get("use_rslora") else alpha / r


def _check_config(pc: dict, cfg_path: Path) -> None:
    """Every field mlx-lm's format cannot express, reported together."""
    problems = []

    def bad(name: str, why: str) -> None:
        problems.append(f"field '{name}' is {pc.get(name)!r}: {why}")

    if pc.get("peft_type") != "LORA":
        bad("peft_type", "only LoRA adapters (peft_type LORA) convert to mlx-lm's format")
    for name in ("r", "lora_alpha"):
        v = pc.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (name == "r" and int(v) != v):
            bad(name, "must be a positive " + ("integer" if name == "r" else "number"))
    if pc.get("bias", "none") not in (None, "none"):
        bad("bias", "the adapter also trains biases of the base model, which mlx-lm adapters do not hold (only bias 'none' converts)")
    if pc.get("lora_bias"):
        bad("lora_bias", "lora_B has a bias, which mlx-lm adapters do not hold")
    if pc.get("modules_to_save"):
        bad("modules_to_save", "the adapter carries whole trained copies of these modules, which mlx-lm adapters cannot hold: merge it with PEFT (merge_and_unload) and fine-tune the merged model instead")
    if pc.get("trainable_token_indices"):
        bad("trainable_token_indices", "trained embedding rows are not part of mlx-lm adapters")
    # (fan_in_fan_out needs nothing: it says how the base weight is laid out, while lora_A / lora_B are (r, in) / (out, r) either way)
    for name in ("layer_replication", "target_parameters", "alora_invocation_tokens", "arrow_config", "monteclora_config", "kasa_config", "use_bdlora", "use_qalora"):
        if pc.get(name):
            bad(name, "this LoRA variant changes the model or the forward pass in a way mlx-lm adapters cannot express")
    init = pc.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        bad("init_lora_weights", "this initialisation changes the base model's weights, so the adapter only fits that changed base: save it with PEFT's path_initial_model_for_weight_conversion to get a plain LoRA adapter")
    for name, kind in (("rank_pattern", int), ("alpha_pattern", (int, float))):
        values = pc.get(name) or {}
        if not isinstance(values, dict) or any(isinstance(v, bool) or not isinstance(v, kind) or v <= 0 for v in values.values()):
            bad(name, "must map module patterns to positive " + ("integers" if kind is int else "numbers"))
    if problems:
        raise AdapterError(f"{cfg_path}: cannot use this PEFT adapter: " + "; ".join(problems))


def _pattern_value(pc: dict, pattern_field: str, module: str, default_field: str, default, cfg_path: Path):
    """(field it came from, value) of rank_pattern / alpha_pattern for ``module``, as PEFT matches them."""
    for key, value in (pc.get(pattern_field) or {}).items():
        try:
            hit = re.match(rf"(.*\.)?({key})$", module)
        except re.error as e:
            raise AdapterError(f"{cfg_path}: field '{pattern_field}' has key {key!r}, which is not a valid regular expression ({e})") from None
        if hit:
            return f"{pattern_field}[{key!r}]", value
    return default_field, default


def _why_not(short: str) -> str:
    if "lora_embedding_" in short:
        return "a LoRA of an embedding layer, which mlx-lm adapters do not hold"
    if ".lora_B." in short and short.endswith(".bias"):
        return "a bias of lora_B (field 'lora_bias'), which mlx-lm adapters do not hold"
    if "lora_magnitude_vector" in short:
        return "a DoRA magnitude, but field 'use_dora' is not true"
    if "modules_to_save" in short or not re.search(r"\.lora_", short):
        return "not a LoRA tensor (a module saved whole, field 'modules_to_save'?), which mlx-lm adapters do not hold"
    return "not a LoRA tensor mlxtune understands (lora_A.weight, lora_B.weight, lora_magnitude_vector)"


def _base_blocks(pc: dict) -> int | None:
    """num_hidden_layers of a local base_model_name_or_path, when there is one."""
    name = pc.get("base_model_name_or_path")
    try:
        cfg = json.loads((Path(name) / "config.json").read_text()) if name else None
        return int(cfg["num_hidden_layers"]) if cfg else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _base_model(pc: dict) -> dict:
    """The base_model entry mlxtune's commands read to find the model an adapter goes on."""
    name = pc.get("base_model_name_or_path")
    if not name:
        return {}
    if Path(name).is_dir():
        return {"spec": name, "kind": "dir", "path": str(Path(name).resolve()), "repo_id": None, "revision": pc.get("revision")}
    return {"spec": name, "kind": "hub", "repo_id": name, "revision": pc.get("revision")}
