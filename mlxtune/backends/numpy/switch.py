"""Several adapters on one numpy model, switched per request (``backends.base.AdapterSet``), for serving.

Each adapter's arrays are read once (``trainer.load_adapters``) and kept. The
active adapter is merged into the weights as ``generate`` merges it
(``LoRAMethods.merge_adapters``: W + scale (A B)ᵀ in place, so decoding costs
what the base costs); selecting another first puts back the original rows of
the layers the previous one changed, kept the first time a layer is merged.
The outputs are bit for bit those of the model loaded with that one adapter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import UsageError
from . import ops
from .trainer import load_adapters


class NumpyAdapterSet:
    """The numpy model with one adapter (or none) merged into its weights at a time."""

    def __init__(self, model, adapters: dict[str, Path]):
        self.model = model
        self.names = list(adapters)
        self.adapters: dict[str, dict[str, ops.LoRA]] = {}  # adapter -> layer name -> its LoRA arrays
        self.originals: dict[str, np.ndarray] = {}  # layer weight -> the base's, kept when first changed
        self.active: str | None = None
        for name, directory in adapters.items():
            model.adapters = {}
            load_adapters(model, directory)
            self.adapters[name] = model.adapters
        model.adapters = {}  # none active: the forward reads the weights alone

    def select(self, name: str | None) -> None:
        if name == self.active:
            return
        if name is not None and name not in self.adapters:
            raise UsageError(f"no adapter named {name!r} is loaded; loaded: {', '.join(self.names) or 'none'}")
        weights = self.model.weights
        if self.active is not None:
            for layer in self.adapters[self.active]:
                weights[layer + ".weight"][...] = self.originals[layer + ".weight"]
        self.active = None
        if name is not None:
            merged = []
            try:
                for layer, lora in self.adapters[name].items():
                    w = weights[layer + ".weight"]  # (out, in), a view into its block's stack
                    self.originals.setdefault(layer + ".weight", w.copy())
                    np.add(ops.lora_delta(lora), w, out=w)  # as merge_adapters adds it
                    merged.append(layer)
            except BaseException:  # a failure part-way (out of memory) leaves the base, not half an adapter
                for layer in merged:
                    weights[layer + ".weight"][...] = self.originals[layer + ".weight"]
                raise
            self.active = name
