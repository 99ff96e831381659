"""The numpy backend's inference, loss and fusing (the ``backends.base.Backend`` contract)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from ...fsutil import copy_file
from ...models.directory import TOKENIZER_FILES
from ..base import Chunk
from .trainer import packing


class NumpyBackend:
    name = "numpy"
    can_requantize = False
    names_any_layers = False

    def device(self) -> str:
        return "cpu"

    def describe(self) -> str:
        return "numpy backend, float32"

    def load_inference(self, model_dir: Path, adapter: Path | None, dtype: str | None):
        from ...models.tokenizer import load_tokenizer, stop_token_ids
        from .model import load_model
        from .trainer import load_adapters

        net, config = load_model(model_dir)
        if adapter is not None:
            load_adapters(net, adapter)
            net.merge_adapters()  # the same outputs, without re-adding the adapter at every token
        tokenizer = load_tokenizer(model_dir)
        return net, tokenizer, stop_token_ids(model_dir, tokenizer, config)

    def load_adapter_set(self, model_dir: Path, adapters: dict[str, Path], dtype: str | None):
        """The base model loaded once, every adapter's arrays attached (``switch.NumpyAdapterSet``), none active."""
        from .switch import NumpyAdapterSet

        net, tokenizer, eos_ids = self.load_inference(model_dir, None, dtype)
        return NumpyAdapterSet(net, adapters), tokenizer, eos_ids

    def stream(self, model, tokenizer, eos_ids: set[int], ids: list[int], max_tokens: int, temp: float, top_p: float, seed: int | None) -> Iterator[Chunk]:
        """Numpy decoding with a KV cache; text is streamed as soon as it is whole UTF-8."""
        from .trainer import generate_tokens

        out: list[int] = []
        shown = ""
        start = time.perf_counter()
        for i, token in enumerate(generate_tokens(model, ids, max_tokens, eos_ids, temp, top_p, seed)):
            finish = "stop" if token in eos_ids else ("length" if i + 1 == max_tokens else None)
            if token not in eos_ids:
                out.append(token)
            text = tokenizer.decode(out, skip_special_tokens=False)
            new = text[len(shown):] if finish or not text.endswith("\ufffd") else ""
            shown += new
            tps = (i + 1) / max(time.perf_counter() - start, 1e-9)
            yield Chunk(new, token, len(ids), tps, finish)

    def summed_loss(self, model, batch) -> tuple[float, int]:
        mean, n = model.loss(batch.inputs, batch.targets, batch.mask, **packing(batch))
        return float(mean) * float(n), int(n)

    def fuse(self, base_dir: Path, adapter_dir: Path, out: Path, dtype: str, quantize: bool, q_bits, q_group_size, notes: list[str]) -> tuple[int, None]:
        from ...formats import safetensors as npio
        from .model import load_model
        from .trainer import load_adapters

        model, config = load_model(base_dir)
        adapter = load_adapters(model, adapter_dir)
        weights = model.fused_weights()
        n = sum(1 for k in model.lora_params() if k.endswith(".lora_a"))
        if dtype == "float16":
            weights = {k: v.astype(np.float16) for k, v in weights.items()}
        npio.write_safetensors(out / "model.safetensors", weights, metadata={"format": "mlx"}, bf16=set(weights) if dtype == "bfloat16" else None)
        config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
        config["torch_dtype"] = dtype
        (out / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=4))
        del adapter
        return n, None

    def convert(self, src: Path, dst: Path, dtype, quantize, q_bits, q_group_size, notes: list[str]) -> None:
        """Without mlx: the same layout, dense (quantized sources are expanded exactly in float32)."""
        from ...formats import safetensors as npio

        config, weights = npio.load_weights(src)
        if config.pop("quantization", None) is not None:
            config.pop("quantization_config", None)
            notes.append("mlx is not installed: quantized weights were expanded to dense float32 with numpy")
        dtype = dtype or "float32"
        if dtype == "float16":
            weights = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()}
        npio.write_safetensors(dst / "model.safetensors", weights, metadata={"format": "mlx"}, bf16={k for k, v in weights.items() if v.dtype == np.float32} if dtype == "bfloat16" else None)
        config["torch_dtype"] = dtype
        (dst / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=4))
        for name in TOKENIZER_FILES:
            if (src / name).exists():
                copy_file(src / name, dst / name)
        return None
