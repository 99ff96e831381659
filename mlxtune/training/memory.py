"""The memory model: a training run's peak resident memory, from the model's config and headers.

``estimate`` predicts the peak resident memory of a training process from the
model's config.json and safetensors headers (never its weights), the backend,
the LoRA settings, the micro-batch and the longest sequence; ``mlxtune.training.plan``
compares it with the machine's memory and fits the run to it:

    peak = baseline + max(loading, weights + adapters + activations + transient)

* baseline: the interpreter with the backend's libraries, the tokenizer and
  the data, measured (``BASELINE_BYTES``, each backend's own);
* weights, activations, transient and loading: the backend's own memory
  model, beside its code (``backends.memory_model(name)``:
  ``backends/<name>/memory.py``), from what this
  module works out alike for every backend (``memory_base.EstimateInputs``);
* adapters: lora_a and lora_b, AdamW's two moments and the gradients (4P
  floats; 5P when micro-batch gradients are summed).

``bench/bench_plan.py`` measures the estimate against real runs' peaks.
"""

from __future__ import annotations

from pathlib import Path

from ..backends import BACKENDS, memory_model
from ..errors import ModelFormatError, UnsupportedModelError
from ..models.config import read_config
from ..models import families
from ..models.families.base import LLAMA_LINEAR_KEYS
from ..formats.safetensors import read_safetensors_header
from .memory_base import Estimate, EstimateInputs, Tensor, quant_params, quantized_stems  # noqa: F401 (Estimate, quantized_stems: part of this module's interface)

# Resident memory of a `mlxtune lora` process just before the trainer is
# created, by backend: each backend's memory model holds its own, measured by
# `bench/bench_plan.py --baseline`. The data's encoded examples come on top
# (DATA_BYTES_PER_TOKEN).
BASELINE_BYTES = {name: memory_model(name).BASELINE_BYTES for name in BACKENDS if name != "auto"}
# An encoded example: int32 tokens and a bool mask per token, two arrays and a dataclass per example.
DATA_BYTES_PER_TOKEN = 5
DATA_BYTES_PER_EXAMPLE = 400
PAD_MULTIPLE = 8  # batching.make_batch pads T up to a multiple of this
LINEAR_KEYS = LLAMA_LINEAR_KEYS  # the block layout the estimate counts for a family not known here (the llama layout)


# ---------------------------------------------------------------- the model's facts


def read_model(model_dir: str | Path) -> tuple[dict, list[Tensor]]:
    """config.json and every tensor's name, dtype and shape, from the safetensors headers only (no weights read)."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        raise ModelFormatError(f"{model_dir} has no model*.safetensors weights")
    tensors = []
    for path in files:
        header, _ = read_safetensors_header(path)
        tensors.extend(Tensor(name, info["dtype"], tuple(info["shape"])) for name, info in header.items())
    return config, tensors


def batch_seq_len(lengths, max_seq_len: int, pack: bool = False) -> int:
    """T of the longest batch the run will see: the longest example (cut at ``max_seq_len``) less one, padded to 8.

    ``lengths`` are the encoded examples' token counts; None or empty: ``max_seq_len``.
    ``pack`` (``--pack``): rows of ``max_seq_len`` input tokens (fewer if all the data has fewer).
    """
    if pack:
        longest = min(int(sum(lengths)) - len(lengths), max_seq_len) if lengths is not None and len(lengths) else max_seq_len
        return -(-max(longest, 1) // PAD_MULTIPLE) * PAD_MULTIPLE
    longest = min(max(lengths), max_seq_len) if lengths is not None and len(lengths) else max_seq_len
    return -(-max(longest - 1, 1) // PAD_MULTIPLE) * PAD_MULTIPLE


def data_bytes(lengths) -> int:
    """Memory of the encoded examples."""
    return 0 if lengths is None else int(sum(lengths)) * DATA_BYTES_PER_TOKEN + len(lengths) * DATA_BYTES_PER_EXAMPLE


def linear_keys(config: dict) -> list[str]:
    """The linear layers of a block of ``config``'s family (``Family.linear_keys``; a family not known here: the llama layout's)."""
    family = families.get(config.get("model_type"))
    return list(family.linear_keys if family and family.linear_keys else LINEAR_KEYS)


def _dims(config: dict) -> dict:
    """The sizes the memory depends on, as the backends read them (head size: ``families.head_dim``, ModelConfig's rule)."""
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if not config.get(k)]
    if missing:
        raise UnsupportedModelError(f"config.json lacks {', '.join(missing)}: no memory estimate for model type '{config.get('model_type')}'")
    C, H = int(config["hidden_size"]), int(config["num_attention_heads"])
    return {
        "C": C, "F": int(config["intermediate_size"]), "L": int(config["num_hidden_layers"]), "H": H,
        "KVH": int(config.get("num_key_value_heads") or H), "D": families.head_dim(config),
        "V": int(config["vocab_size"]), "tied": bool(config.get("tie_word_embeddings", True)),
        "fused": bool(getattr(families.get(config.get("model_type")), "fused_projections", False)),  # qkv_proj, gate_up_proj
    }


def _model_tensors(d: dict) -> dict[str, tuple[int, int]]:
    """(out, in) of each matmul weight, and the embedding (and head), by name as models.layout.expected_shapes."""
    from ..models.layout import block_linears

    C, V = d["C"], d["V"]
    linears = block_linears(C, d["F"], d["H"], d["KVH"], d["D"], d.get("fused", False))
    out = {"model.embed_tokens.weight": (V, C)}
    for i in range(d["L"]):
        p = f"model.layers.{i}."
        for key, shape in linears.items():
            out[p + key + ".weight"] = shape
    if not d["tied"]:
        out["lm_head.weight"] = (V, C)
    return out


def _stored(config: dict, d: dict) -> list[Tensor]:
    """The tensors a converted directory would hold, when the headers are not at hand: float32, or MLX-quantized."""
    quantized = bool(config.get("quantization"))
    out = []
    for name, (o, i) in _model_tensors(d).items():
        if quantized:
            bits, group = quant_params(config, name[: -len(".weight")])
            stem = name[: -len(".weight")]
            out += [Tensor(stem + ".biases", "F16", (o, i // group)), Tensor(stem + ".scales", "F16", (o, i // group)), Tensor(name, "U32", (o, i * bits // 32))]
        else:
            out.append(Tensor(name, "F32", (o, i)))
    out += [Tensor(f"model.layers.{i}.{n}.weight", "F32", (d["C"],)) for i in range(d["L"]) for n in ("input_layernorm", "post_attention_layernorm")]
    family = families.get(config.get("model_type"))
    if family is not None and family.qk_norm:  # per-head q and k norms (Qwen3)
        out += [Tensor(f"model.layers.{i}.self_attn.{n}.weight", "F32", (d["D"],)) for i in range(d["L"]) for n in ("q_norm", "k_norm")]
    if family is not None and family.sandwich_norms:  # the MLP's own input norm and the norm of its output (Gemma 3)
        out += [Tensor(f"model.layers.{i}.{n}.weight", "F32", (d["C"],)) for i in range(d["L"]) for n in ("pre_feedforward_layernorm", "post_feedforward_layernorm")]
    return out + [Tensor("model.norm.weight", "F32", (d["C"],))]


# ---------------------------------------------------------------- the estimate


def estimate(
    config: dict,
    backend: str,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    tensors: list[Tensor] | None = None,
    rank: int = 8,
    num_layers: int = -1,
    keys: list[str] | None = None,
    batch_size: int = 4,
    seq_len: int = 1024,
    grad_checkpoint: bool | None = None,
    grad_accumulation: int = 1,
    baseline: int | None = None,
    activation_mb: str | None = None,
) -> Estimate:
    """Peak resident memory of training ``config``'s model with these settings.

    ``tensors``: the safetensors headers (``read_model``), for the stored
    layout (quantization, dtypes, the order of loading); without them the
    layout follows config.json's ``quantization``. ``keys``: block-relative
    LoRA targets (``training.targets.resolve``; None: every linear layer
    of the family's block, ``Family.linear_keys``). ``seq_len``: T of the longest batch (``batch_seq_len``).
    ``activation_mb``: MLXTUNE_ACTIVATION_MB, for a backend that honours it.
    """
    family = families.get(config.get("model_type"))  # its block's linear layers; a family not known here: the llama layout's
    d = _dims(family.text_part(config) if family else config)  # a multimodal checkpoint's text model
    tensors = tensors if tensors is not None else _stored(config, d)
    keys = list(keys) if keys is not None else linear_keys(config)
    n_blocks = d["L"] if num_layers < 0 or num_layers > d["L"] else num_layers
    shapes = _model_tensors(d)
    P = n_blocks * sum(rank * sum(shapes[f"model.layers.0.{k}.weight"]) for k in keys)  # each adapter: (in, r) + (r, out)
    model = memory_model(backend)  # ValueError: no memory model for this backend
    base = model.BASELINE_BYTES if baseline is None else baseline
    return model.estimate(EstimateInputs(
        config, d, tensors, keys, n_blocks, rank, P, batch_size, seq_len, grad_checkpoint, grad_accumulation, base, device, dtype, activation_mb,
    ))
