"""The mlx backend's inference, loss and fusing (the ``backends.base.Backend`` contract).

Decoding is mlx-lm's (KV cache, streaming detokenizer, samplers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ...errors import UsageError
from ...fsutil import copy_file
from ...models.directory import Q_BITS, Q_GROUP_SIZES, TOKENIZER_FILES
from ..base import Chunk


class MlxBackend:
    name = "mlx"
    can_requantize = True
    names_any_layers = True

    def device(self) -> str:
        from ...runtime import current_device

        return current_device()

    def describe(self) -> str:
        from ...runtime import describe

        return describe()

    def load_inference(self, model_dir: Path, adapter: Path | None, dtype: str | None):
        from ... import runtime
        from ...data.rendering import hf_tokenizer
        from ...models.tokenizer import stop_token_ids
        from .lora import load_adapters
        from .trainer import load_model, load_tokenizer

        compute = runtime.choose_compute(runtime.current_device(), dtype)
        net, config = load_model(model_dir, compute)
        if adapter is not None:
            load_adapters(net, adapter)
        net.eval()
        tokenizer = load_tokenizer(model_dir, config)
        # mlx-lm stops on its tokenizer's eos ids (tokenizer_config.json's, and config or generation_config.json's);
        # the chat template's end of turn joins them (Phi-3's <|end|>), as the numpy backend stops.
        for token in sorted(stop_token_ids(model_dir, hf_tokenizer(tokenizer), config) - set(tokenizer.eos_token_ids)):
            tokenizer.add_eos_token(token)
        return net, tokenizer, set(tokenizer.eos_token_ids)

    def load_adapter_set(self, model_dir: Path, adapters: dict[str, Path], dtype: str | None):
        """The base model loaded once, every adapter attached (``switch.MlxAdapterSet``), none active."""
        from .switch import MlxAdapterSet, thread_stream

        thread_stream()
        net, tokenizer, eos_ids = self.load_inference(model_dir, None, dtype)
        return MlxAdapterSet(net, adapters), tokenizer, eos_ids

    def stream(self, model, tokenizer, eos_ids: set[int], ids: list[int], max_tokens: int, temp: float, top_p: float, seed: int | None) -> Iterator[Chunk]:
        import mlx.core as mx
        from mlx_lm.generate import stream_generate
        from mlx_lm.sample_utils import make_sampler

        if seed is not None:
            mx.random.seed(seed)
        sampler = make_sampler(temp=temp, top_p=top_p if top_p < 1 else 0.0)
        for r in stream_generate(model, tokenizer, ids, max_tokens=max_tokens, sampler=sampler):
            yield Chunk(r.text, int(r.token), r.prompt_tokens, r.generation_tps, r.finish_reason)

    def summed_loss(self, model, batch) -> tuple[float, int]:
        import mlx.core as mx

        from .trainer import is_packed, loss_fn, packed_loss_fn

        if is_packed(batch):  # several records a row (``packing.py``)
            m, nn_ = packed_loss_fn(model, *(mx.array(a) for a in (batch.inputs, batch.targets, batch.positions, batch.segments, batch.mask)))
        else:
            m, nn_ = loss_fn(model, mx.array(batch.inputs), mx.array(batch.targets), mx.array(batch.mask))
        mean, n = float(m), float(nn_)
        return float(mean) * float(n), int(n)

    def fuse(self, base_dir: Path, adapter_dir: Path, out: Path, dtype: str, quantize: bool, q_bits, q_group_size, notes: list[str]) -> tuple[int, dict | None]:
        from .lora import fuse_model, load_adapters
        from .trainer import load_model
        from .weights import DTYPES as MX_DTYPES, cast, dequantize_model

        base, config = load_model(base_dir)
        base_quant = config.get("quantization")
        load_adapters(base, adapter_dir)
        if quantize:
            bits = q_bits or (base_quant or {}).get("bits") or 4
            group = q_group_size or (base_quant or {}).get("group_size") or 64
            if bits not in Q_BITS or group not in Q_GROUP_SIZES:
                raise UsageError(f"quantization must use --q-bits in {Q_BITS} and --q-group-size in {Q_GROUP_SIZES}")
        n = fuse_model(base, MX_DTYPES[dtype])
        base = dequantize_model(base, MX_DTYPES[dtype])  # layers without an adapter, and the embeddings
        cast(base, MX_DTYPES[dtype])
        config.pop("quantization", None)
        config.pop("quantization_config", None)
        config["torch_dtype"] = dtype
        quant = _quantize_and_save(base, config, out, (bits, group) if quantize else None)
        return n, quant

    def convert(self, src: Path, dst: Path, dtype, quantize, q_bits, q_group_size, notes: list[str]) -> dict | None:
        """Load ``src`` with mlx-lm, apply dtype/quantization, save the MLX layout into ``dst``."""
        from .trainer import load_model
        from .weights import DTYPES, cast, dequantize_model

        model, config = load_model(src)
        quant = config.get("quantization")
        if quantize and quant and (quant.get("bits"), quant.get("group_size")) == (q_bits, q_group_size) and not _has_overrides(quant):
            notes.append(f"source is already {q_bits}-bit with group size {q_group_size}; kept as is")
            quantize = False
        if (dtype is not None or quantize) and quant:
            model = dequantize_model(model, DTYPES[dtype] if dtype else None)
            config.pop("quantization", None)
            config.pop("quantization_config", None)
            if quantize:
                notes.append("source was quantized: dequantized before re-quantizing (lossy)")
            quant = None
        if dtype is not None:
            cast(model, DTYPES[dtype])
            config["torch_dtype"] = dtype
        _quantize_and_save(model, config, dst, (q_bits, q_group_size) if quantize else None)
        for name in TOKENIZER_FILES:
            if (src / name).exists():
                copy_file(src / name, dst / name)
        return config.get("quantization")


def _has_overrides(quant: dict) -> bool:
    return any(isinstance(v, dict) for v in quant.values())


def _quantize_and_save(model, config: dict, out: Path, quantize: tuple[int, int] | None) -> dict | None:
    """Quantize ``model`` in place when asked ((bits, group size): every layer whose width the group divides), then save it and ``config`` into ``out``.

    Returns the quantization written to the config (None when not quantized).
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import save_config, save_model

    quant = None
    if quantize:
        bits, group = quantize

        def predicate(path: str, module: nn.Module) -> bool:
            return hasattr(module, "to_quantized") and module.weight.shape[-1] % group == 0

        nn.quantize(model, group_size=group, bits=bits, class_predicate=predicate)
        quant = {"group_size": group, "bits": bits, "mode": "affine"}
        config["quantization"] = quant
    mx.eval(model.parameters())
    save_model(out, model)
    save_config(config, config_path=out / "config.json")
    return quant
