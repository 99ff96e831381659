"""Adapter files: ``adapters.safetensors`` + ``adapter_config.json``, as mlx-lm writes them.

Kept apart from ``lora.py`` (the mlx layers) so that the numpy backend can read
and write adapters where mlx is not installed.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AdapterError
from ..fsutil import read_json_object

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_LEAVES = ("lora_a", "lora_b", "m")


def adapter_config(num_layers: int, keys: list[str], rank: int, scale: float, dropout: float, dora: bool, **extra) -> dict:
    """The mlx-lm adapter_config.json fields, plus ours under their own keys."""
    config = {
        "fine_tune_type": "dora" if dora else "lora",
        "num_layers": num_layers,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": dropout, "keys": list(keys)},
    }
    config.update(extra)
    return config


def read_adapter_config(directory: Path) -> dict:
    """The ``adapter_config.json`` of ``directory``, checked for the fields mlx-lm needs; AdapterError saying what is wrong.

    The file is read by ``fsutil.read_json_object``, the project's one JSON
    reader: a file that is not JSON (its line and column said) or not an
    object is refused with what it should hold.
    """
    directory = Path(directory)
    path = directory / ADAPTER_CONFIG
    if not directory.exists():
        raise AdapterError(f"adapter directory {directory} does not exist")
    if not path.exists():
        raise AdapterError(f"{directory} has no {ADAPTER_CONFIG}: pass the run directory that 'mlxtune lora' wrote")
    config = read_json_object(path, AdapterError, "an adapter config")
    try:
        lp = config["lora_parameters"]
        int(lp["rank"]), float(lp["scale"]), int(config["num_layers"])
    except (ValueError, KeyError, TypeError) as e:
        raise AdapterError(f"{path} is not a valid adapter config ({type(e).__name__}: {e})") from None
    if config.get("fine_tune_type", "lora") not in ("lora", "dora"):
        raise AdapterError(f"{path}: fine_tune_type '{config.get('fine_tune_type')}' is not supported (lora or dora)")
    return config


def library_versions() -> dict:
    """Python, the platform and the libraries a run trained with, for its adapter_config.json."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version(), "platform": f"{platform.system()}-{platform.machine()}"}
    for name in ("mlx", "mlx-lm", "numpy", "transformers"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out
