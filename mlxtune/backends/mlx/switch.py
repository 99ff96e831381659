"""Several adapters on one mlx model, switched per request (``backends.base.AdapterSet``), for serving.

Each adapter is loaded once as ``lora.load_adapters`` loads it for ``generate``:
its LoRA (or DoRA) layers wrap the model's own linear layers. The layers are then
taken out of the model and kept; selecting an adapter puts its layers back in
place of the plain ones (and takes the previous adapter's out). The base weights
are shared by every adapter's layers and never copied, and the computation is
the one ``generate`` runs with that adapter, so the answers are the same.
"""

from __future__ import annotations

import threading
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from ...errors import UsageError
from .lora import LoRALinear, load_adapters


class MlxAdapterSet:
    """The model with its linear layers swapped per adapter; ``model`` is what decoding uses."""

    def __init__(self, model: nn.Module, adapters: dict[str, Path]):
        self.model = model
        self.names = list(adapters)
        self.layers: dict[str, list[tuple[str, LoRALinear]]] = {}  # adapter -> (module path, its layer around the base's)
        self.active: str | None = None
        for name, directory in adapters.items():
            load_adapters(model, directory)
            wrapped = [(path, m) for path, m in model.named_modules() if isinstance(m, LoRALinear)]
            for _, layer in wrapped:
                layer.eval()
            self.layers[name] = wrapped
            self._put([(path, layer.linear) for path, layer in wrapped])  # the plain layers back, for the next adapter

    def select(self, name: str | None) -> None:
        if name == self.active:
            return
        if name is not None and name not in self.layers:
            raise UsageError(f"no adapter named {name!r} is loaded; loaded: {', '.join(self.names) or 'none'}")
        if self.active is not None:
            self._put([(path, layer.linear) for path, layer in self.layers[self.active]])
        if name is not None:
            self._put(self.layers[name])
        self.active = name

    def _put(self, modules: list[tuple[str, nn.Module]]) -> None:
        if modules:
            self.model.update_modules(tree_unflatten(modules))


def thread_stream() -> None:
    """Give a worker thread a default stream: mlx ops outside the main thread need one."""
    if threading.current_thread() is not threading.main_thread():
        mx.set_default_stream(mx.new_stream(mx.default_device()))
