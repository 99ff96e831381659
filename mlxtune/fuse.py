"""``mlxtune fuse``: merge trained adapters into the base weights.

The result is a plain MLX model directory (what ``mlx_lm.load`` reads) that
answers like base + adapter without any adapter machinery. A quantized base is
dequantized and the adapter merged in full precision; the fused model is dense
unless re-quantization is asked for, because quantizing the merged weights can
round away much of what a small adapter learned (measure before shipping it).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AdapterError, UsageError
from .fsutil import staged_dir


@dataclass
class FuseResult:
    path: Path
    base: Path
    fused_layers: int
    dtype: str
    quantization: dict | None
    size_bytes: int
    notes: list[str] = field(default_factory=list)


def base_model_dir(adapter_dir: Path, model: str | None, offline: bool | None = None) -> tuple[Path, list[str]]:
    """The model directory an adapter applies to: ``model`` if given, else the one it was trained on."""
    from .convert import ensure_mlx_model
    from .hub import resolve_model
    from .lora import read_adapter_config

    notes: list[str] = []
    if model is None:
        base = read_adapter_config(adapter_dir).get("base_model") or {}
        if base.get("mlx_dir") and (Path(base["mlx_dir"]) / "config.json").exists():
            return Path(base["mlx_dir"]), notes
        if base.get("spec") or base.get("path"):
            model = base.get("path") if base.get("kind") in ("dir", "gguf") and Path(base.get("path", "")).exists() else base.get("spec")
        else:
            raise AdapterError(f"{adapter_dir}/adapter_config.json does not say which model it was trained on: pass --model")
    source = resolve_model(model, offline=offline, allow_fallback=True)
    if source.note:
        notes.append(source.note)
    return ensure_mlx_model(source), notes


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
) -> FuseResult:
    """Fuse the adapter in ``adapter_dir`` into its base model, writing ``out_dir``."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import save_config, save_model

    from .backends.mlx import _DTYPES, cast, dequantize_model, load_model
    from .convert import Q_BITS, Q_GROUP_SIZES, TOKENIZER_FILES
    from .lora import fuse_model, load_adapters

    adapter_dir = Path(adapter_dir)
    if dtype is not None and dtype not in _DTYPES:
        raise UsageError(f"--dtype must be float32, float16 or bfloat16, not {dtype}")
    base_dir, notes = base_model_dir(adapter_dir, model, offline)
    base, config = load_model(base_dir)
    base_quant = config.get("quantization")
    load_adapters(base, adapter_dir)
    if dtype is None:
        # The dtype the base computes in: its scales' for a quantized base.
        dtype = "float16" if base_quant else _dtype_name(_first_float(base))
    n = fuse_model(base, _DTYPES[dtype])
    base = dequantize_model(base, _DTYPES[dtype])  # layers without an adapter, and the embeddings
    cast(base, _DTYPES[dtype])
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    config["torch_dtype"] = dtype
    quant = None
    if quantize:
        bits = q_bits or (base_quant or {}).get("bits") or 4
        group = q_group_size or (base_quant or {}).get("group_size") or 64
        if bits not in Q_BITS or group not in Q_GROUP_SIZES:
            raise UsageError(f"quantization must use --q-bits in {Q_BITS} and --q-group-size in {Q_GROUP_SIZES}")

        def predicate(path: str, module: nn.Module) -> bool:
            return hasattr(module, "to_quantized") and module.weight.shape[-1] % group == 0

        nn.quantize(base, group_size=group, bits=bits, class_predicate=predicate)
        quant = {"group_size": group, "bits": bits, "mode": "affine"}
        config["quantization"] = quant
        notes.append(f"re-quantized to {bits} bits (group size {group}) after fusing: check the result with 'mlxtune generate'")
    mx.eval(base.parameters())
    with staged_dir(Path(out_dir), force=force) as tmp:
        save_model(tmp, base)
        save_config(config, config_path=tmp / "config.json")
        for name in TOKENIZER_FILES:
            if (base_dir / name).exists():
                shutil.copy2(base_dir / name, tmp / name)
        info = {"base_model": str(base_dir), "adapter": str(adapter_dir.resolve()), "dtype": dtype, "quantization": quant}
        (tmp / "mlxtune_fuse.json").write_text(json.dumps(info, indent=2))
    size = sum(f.stat().st_size for f in Path(out_dir).glob("*.safetensors"))
    return FuseResult(Path(out_dir), base_dir, n, dtype, quant, size, notes)


def _first_float(model):
    from mlx.utils import tree_flatten
    import mlx.core as mx

    for _, v in tree_flatten(model.parameters()):
        if mx.issubdtype(v.dtype, mx.floating):
            return v.dtype
    return mx.float32


def _dtype_name(dtype) -> str:
    return str(dtype).rsplit(".", 1)[-1]
