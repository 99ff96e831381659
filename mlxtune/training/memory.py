"""The memory model: a training run's peak resident memory, from the model's config and headers.

``estimate`` predicts the peak resident memory of a training process from the
model's config.json and safetensors headers (never its weights), the backend,
the LoRA settings, the micro-batch and the longest sequence; ``mlxtune.training.plan``
compares it with the machine's memory and fits the run to it. From the
backends' code (N = B x T rows, C width, F MLP width, H, KVH heads, D head
size, V vocabulary, r rank; floats of the compute dtype):

    peak = baseline + max(loading, weights + adapters + activations + transient)

* baseline: the interpreter with numpy (and mlx-lm for mlx), the tokenizer
  and the data, measured (``BASELINE_BYTES``);
* numpy: weights in float32 (quantized ones expanded when loaded); kept per
  adapted block ``NumpyLlama.saved_bytes_per_block`` (whole: 2C + 2 + H +
  (H + 2 KVH) D + 2F a row; checkpointed: 2C + 2 + H), as many checkpointed
  as ``activation_plan`` says; transient: the backward of the last block
  (d out, d m and m: C + 2F a row, and its recomputation when checkpointed)
  and the loss head's logits chunk, kept across steps; loading: the
  safetensors as stored plus the expansion of one tensor at a time;
* mlx: weights as stored on a GPU, in float32 on a CPU; its autodiff keeps
  per adapted block the inputs of every op whose gradient needs them (2C +
  H D + 2 KVH D + 4F, the input of each adapted projection and r per
  adapter a row, plus the attention probabilities, H T a row), or only the
  block input (C) with checkpointing (and two blocks' worth while the
  backward recomputes them); transient: the (N, V) float32 logits and the
  three (N, V) arrays of their gradient;
* adapters: lora_a and lora_b, AdamW's two moments and the gradients (4P
  floats; 5P when micro-batch gradients are summed).

``bench/bench_plan.py`` measures the estimate against real runs' peaks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelFormatError, UnsupportedModelError
from ..models.config import read_config
from ..models import families
from ..models.families.base import LLAMA_LINEAR_KEYS
from ..formats.safetensors import read_safetensors_header

# Resident memory of a `mlxtune lora` process just before the trainer is
# created (interpreter, numpy, click, the tokenizer, mlx.core imported to
# choose the backend; mlx-lm and what it imports for mlx), measured on Linux
# x86_64, Python 3.11, numpy 2.4, mlx 0.32 by `bench/bench_plan.py --baseline`
# (numpy: 115 MB with --backend auto, 111 MB with --backend numpy; mlx: 284 MB).
# The data's encoded examples come on top (DATA_BYTES_PER_TOKEN).
BASELINE_BYTES = {"numpy": 115 * 10**6, "mlx": 285 * 10**6}
# An encoded example: int32 tokens and a bool mask per token, two arrays and a dataclass per example.
DATA_BYTES_PER_TOKEN = 5
DATA_BYTES_PER_EXAMPLE = 400
PAD_MULTIPLE = 8  # batching.make_batch pads T up to a multiple of this
LINEAR_KEYS = LLAMA_LINEAR_KEYS  # the block layout the estimate counts (the numpy model's; mlx-lm's llama-like models')

_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_DTYPE_SIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
_FLOAT = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class Tensor:
    """A tensor as a safetensors header describes it."""

    name: str
    dtype: str  # "F32", "U32", ...
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _ITEMSIZE[self.dtype]


@dataclass
class Estimate:
    """Predicted peak resident memory of a training process, term by term (bytes)."""

    backend: str
    device: str
    compute: str  # e.g. "float32 (quantized weights expanded)"
    batch_size: int
    seq_len: int
    grad_checkpoint: bool | None
    blocks: int  # blocks that keep activations for the backward (the adapted ones)
    blocks_checkpointed: int
    baseline: int
    weights: int
    adapters: int
    activations: int
    transient: int
    loading: int  # peak while loading the weights (over the baseline)

    @property
    def training(self) -> int:
        return self.weights + self.adapters + self.activations + self.transient

    @property
    def total(self) -> int:
        return self.baseline + max(self.loading, self.training)

    def terms(self) -> list[tuple[str, int, str]]:
        """(label, bytes, what) for the breakdown table."""
        ckpt = "every block checkpointed" if self.blocks_checkpointed == self.blocks else f"{self.blocks_checkpointed} of {self.blocks} blocks checkpointed" if self.blocks_checkpointed else f"{self.blocks} blocks"
        return [
            ("runtime baseline", self.baseline, "interpreter, libraries, tokenizer, data"),
            ("weights", self.weights, self.compute),
            ("adapters + AdamW + grads", self.adapters, "LoRA parameters, two moments, gradients"),
            ("activations kept", self.activations, f"{self.batch_size} x {self.seq_len} tokens, {ckpt}"),
            ("step transient", self.transient, "backward buffers and the loss head's logits"),
        ]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"training": self.training, "total": self.total}


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


def batch_seq_len(lengths, max_seq_len: int) -> int:
    """T of the longest batch the run will see: the longest example (cut at ``max_seq_len``) less one, padded to 8.

    ``lengths`` are the encoded examples' token counts; None or empty: ``max_seq_len``.
    """
    longest = min(max(lengths), max_seq_len) if lengths is not None and len(lengths) else max_seq_len
    return -(-max(longest - 1, 1) // PAD_MULTIPLE) * PAD_MULTIPLE


def data_bytes(lengths) -> int:
    """Memory of the encoded examples."""
    return 0 if lengths is None else int(sum(lengths)) * DATA_BYTES_PER_TOKEN + len(lengths) * DATA_BYTES_PER_EXAMPLE


def _quant_params(config: dict, stem: str) -> tuple[int, int]:
    quant = config.get("quantization") or config.get("quantization_config") or {}
    params = quant.get(stem) if isinstance(quant.get(stem), dict) else quant
    return int(params.get("bits", 4)), int(params.get("group_size", 64))


def _elements(t: Tensor, config: dict) -> int:
    """Weights a tensor stands for: a packed quantized (out, in * bits / 32) uint32 weight holds out x in."""
    if t.dtype == "U32" and t.name.endswith(".weight"):
        bits, _ = _quant_params(config, t.name[: -len(".weight")])
        return math.prod(t.shape) * 32 // bits
    return math.prod(t.shape)


def quantized_stems(tensors: list[Tensor]) -> set[str]:
    """The layers stored quantized (packed uint32 weights with scales and biases)."""
    return {t.name[: -len(".weight")] for t in tensors if t.dtype == "U32" and t.name.endswith(".weight")}


def _dims(config: dict) -> dict:
    """The sizes the memory depends on, as the backends read them (numpy: ModelConfig's rules)."""
    missing = [k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if not config.get(k)]
    if missing:
        raise UnsupportedModelError(f"config.json lacks {', '.join(missing)}: no memory estimate for model type '{config.get('model_type')}'")
    C, H = int(config["hidden_size"]), int(config["num_attention_heads"])
    return {
        "C": C, "F": int(config["intermediate_size"]), "L": int(config["num_hidden_layers"]), "H": H,
        "KVH": int(config.get("num_key_value_heads") or H), "D": families.head_dim(config),
        "V": int(config["vocab_size"]), "tied": bool(config.get("tie_word_embeddings", True)),
    }


def _model_tensors(d: dict) -> dict[str, tuple[int, int]]:
    """(out, in) of each matmul weight, and the embedding (and head), by name as models.layout.expected_shapes."""
    from ..models.layout import block_linears

    C, V = d["C"], d["V"]
    linears = block_linears(C, d["F"], d["H"], d["KVH"], d["D"])
    out = {"model.embed_tokens.weight": (V, C)}
    for i in range(d["L"]):
        p = f"model.layers.{i}."
        for key, shape in linears.items():
            out[p + key + ".weight"] = shape
    if not d["tied"]:
        out["lm_head.weight"] = (V, C)
    return out


def _numpy_weight_bytes(config: dict) -> int:
    """Float32 bytes of every tensor the numpy model keeps (models.layout.expected_shapes)."""
    from ..models.layout import ModelConfig, expected_shapes

    return 4 * sum(math.prod(s) for s in expected_shapes(ModelConfig.from_dict(config)).values())


def _stored(config: dict, d: dict) -> list[Tensor]:
    """The tensors a converted directory would hold, when the headers are not at hand: float32, or MLX-quantized."""
    quantized = bool(config.get("quantization"))
    out = []
    for name, (o, i) in _model_tensors(d).items():
        if quantized:
            bits, group = _quant_params(config, name[: -len(".weight")])
            stem = name[: -len(".weight")]
            out += [Tensor(stem + ".biases", "F16", (o, i // group)), Tensor(stem + ".scales", "F16", (o, i // group)), Tensor(name, "U32", (o, i * bits // 32))]
        else:
            out.append(Tensor(name, "F32", (o, i)))
    out += [Tensor(f"model.layers.{i}.{n}.weight", "F32", (d["C"],)) for i in range(d["L"]) for n in ("input_layernorm", "post_attention_layernorm")]
    return out + [Tensor("model.norm.weight", "F32", (d["C"],))]


# ---------------------------------------------------------------- the estimate


def estimate(
    config: dict,
    backend: str = "numpy",
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
    LoRA targets (``backends.numpy.resolve_keys``; None: every linear layer
    of the family's block, ``Family.linear_keys``). ``seq_len``: T of the longest batch (``batch_seq_len``).
    ``activation_mb``: MLXTUNE_ACTIVATION_MB, which the numpy trainer honours.
    """
    d = _dims(config)
    tensors = tensors if tensors is not None else _stored(config, d)
    family = families.get(config.get("model_type"))  # its block's linear layers; a family not known here: the llama layout's
    keys = list(keys) if keys is not None else list(family.linear_keys if family and family.linear_keys else LINEAR_KEYS)
    n_blocks = d["L"] if num_layers < 0 or num_layers > d["L"] else num_layers
    shapes = _model_tensors(d)
    P = n_blocks * sum(rank * sum(shapes[f"model.layers.0.{k}.weight"]) for k in keys)  # each adapter: (in, r) + (r, out)
    base = BASELINE_BYTES.get(backend, BASELINE_BYTES["numpy"]) if baseline is None else baseline
    args = (config, d, tensors, keys, n_blocks, rank, P, batch_size, seq_len, grad_checkpoint, grad_accumulation, base)
    if backend == "numpy":
        return _numpy(*args, activation_mb)
    if backend == "mlx":
        return _mlx(*args, device, dtype)
    raise ValueError(f"no memory model for backend {backend!r}")


def _numpy(config, d, tensors, keys, n_blocks, rank, P, B, T, grad_checkpoint, accumulation, base, activation_mb) -> Estimate:
    """The numpy backend, from its code: NumpyTrainer, NumpyLlama.loss_and_grads, npio.load_weights."""
    from ..backends.numpy.trainer import activation_budget
    from ..backends.numpy.activations import block_bytes, checkpointed_blocks
    from ..backends.numpy.model import HEAD_CHUNK_BYTES

    C, F, H, KVH, D, V = d["C"], d["F"], d["H"], d["KVH"], d["D"], d["V"]
    weights = _numpy_weight_bytes(config)
    N, f32 = B * T, 4
    # what NumpyLlama.saved_bytes_per_block and activation_plan decide with
    keep, ckpt = block_bytes(C, H, KVH, D, F, N, f32)
    budget = activation_budget(weights, activation_mb, grad_checkpoint)
    n_ckpt = checkpointed_blocks(n_blocks, keep, ckpt, budget)
    activations = (n_blocks - n_ckpt) * keep + n_ckpt * ckpt
    # The backward of the last block: d out, d m and m at once (C + 2F a row), and, when every
    # block is checkpointed, that block's recomputed q, k, v, gate and up; the head's logits chunk.
    head_rows = max(8, HEAD_CHUNK_BYTES // (V * f32) // 8 * 8)
    transient = N * (C + 2 * F) * f32 + (keep - ckpt if n_blocks and n_ckpt == n_blocks else 0) + min(head_rows, N) * V * f32
    # lora_a, lora_b, AdamW's m and v, the step's gradients (and their sum over micro-batches)
    adapters = (4 + (1 if accumulation > 1 else 0)) * P * f32
    quantized = bool(quantized_stems(tensors))
    return Estimate(
        "numpy", "cpu", "float32" + (" (quantized weights expanded)" if quantized else ""), B, T, grad_checkpoint, n_blocks, n_ckpt,
        base, weights, adapters, activations, transient, _numpy_loading(config, tensors, d, weights),
    )


def _numpy_loading(config: dict, tensors: list[Tensor], d: dict, weights: int) -> int:
    """Peak while npio.load_weights and NumpyLlama load: the file's tensors, less those converted, plus the dense ones so far.

    Tensors are converted in file order; expanding a quantized (out, in)
    weight holds four float32 (out, in) arrays at once (the codes, scales
    and biases repeated per weight, their product); stacking q | k | v and
    gate | up afterwards holds one more group.
    """
    quantized = quantized_stems(tensors)
    raw = {t.name: t.nbytes * (2 if t.dtype == "BF16" else 1) for t in tensors}  # bfloat16 is widened when read
    remaining, dense, peak = sum(raw.values()), 0, sum(raw.values())
    for t in tensors:
        stem = t.name.rsplit(".", 1)[0]
        if t.name.endswith((".scales", ".biases")) and stem in quantized:
            continue
        if stem in quantized and t.name.endswith(".weight"):
            n = _elements(t, config)
            peak = max(peak, remaining + dense + 4 * n * 4)
            remaining -= raw[t.name] + raw.get(stem + ".scales", 0) + raw.get(stem + ".biases", 0)
        else:
            n = math.prod(t.shape)
            if t.dtype == "F16":  # widened to float32: both copies for a moment
                peak = max(peak, remaining + dense + n * 4)
            remaining -= raw[t.name]
        dense += n * 4 if t.dtype in _FLOAT or stem in quantized else raw[t.name]
    group = max((d["H"] + 2 * d["KVH"]) * d["D"], 2 * d["F"]) * d["C"] * 4  # the largest stacked group
    return max(peak, weights + group)


def _mlx(config, d, tensors, keys, n_blocks, rank, P, B, T, grad_checkpoint, accumulation, base, device, dtype) -> Estimate:
    """The mlx backend (MlxTrainer on mlx-lm's models), as far as its autodiff can be counted from the ops."""
    from ..runtime import choose_compute

    C, F, H, KVH, D, V = d["C"], d["F"], d["H"], d["KVH"], d["D"], d["V"]
    compute = choose_compute(device, dtype)
    quantized = quantized_stems(tensors)
    stored = sum(t.nbytes for t in tensors)
    if compute.expand_quantized:  # a CPU: every weight dense in float32
        weights = 4 * sum(_elements(t, config) for t in tensors if not (t.name.endswith((".scales", ".biases")) and t.name.rsplit(".", 1)[0] in quantized))
    elif compute.dtype:  # floating tensors (scales and biases too) cast, packed codes kept
        weights = sum(math.prod(t.shape) * _DTYPE_SIZE[compute.dtype] if t.dtype in _FLOAT else t.nbytes for t in tensors)
    else:
        weights = stored
    loading = stored + (weights if weights != stored else 0)  # the model as stored and as converted, until evaluated
    act = _DTYPE_SIZE[compute.dtype] if compute.dtype else _stored_float_size(tensors, quantized)
    N = B * T
    # What the vjps need, a row of one block: the block input and h (RMSNorm), q, k, v and the
    # attention probabilities (H T), gate, up, sigmoid(gate), silu(gate) (SwiGLU), and the input
    # of each adapted projection (its lora_a gradient) with x A (r) of each adapter.
    inputs = (C if any(k in keys for k in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")) else 0) + (H * D if "self_attn.o_proj" in keys else 0)
    inputs += (C if any(k in keys for k in ("mlp.gate_proj", "mlp.up_proj")) else 0) + (F if "mlp.down_proj" in keys else 0)
    per_row = 2 * C + H * D + 2 * KVH * D + H * T + 4 * F + inputs + rank * len(keys)
    whole = N * per_row * act
    if grad_checkpoint:
        # mx.checkpoint keeps each block's input; its backward recomputes the block, and mlx's
        # evaluation order has the next block's recomputation done before the current one is
        # freed: two blocks' worth at once (mx.get_peak_memory at 1x256, 2x256, 1x512: within 1%).
        activations, n_ckpt, recompute = n_blocks * N * C * act, n_blocks, min(2, n_blocks) * whole
    else:
        activations, n_ckpt, recompute = n_blocks * whole, 0, 0
    # The loss: (N, V) logits in float32 (and in the compute dtype first), and the softmax,
    # the target's one-hot and their sum, each (N, V), in the backward; the final norm's input.
    transient = recompute + N * (4 * V * 4 + (V * act if act != 4 else 0) + C * act)
    adapters = (4 + (1 if accumulation > 1 else 0)) * P * act
    what = compute.reason.split(", ", 1)[-1] if device == "cpu" else (compute.dtype or "stored dtype") + (", weights quantized" if quantized else "")
    return Estimate("mlx", device, what, B, T, grad_checkpoint, n_blocks, n_ckpt, base, weights, adapters, activations, transient, loading)


def _stored_float_size(tensors: list[Tensor], quantized: set[str]) -> int:
    """Bytes of the model's own compute dtype: its embedding's (the scales' when quantized)."""
    by_name = {t.name: t for t in tensors}
    t = by_name.get("model.embed_tokens.scales" if "model.embed_tokens" in quantized else "model.embed_tokens.weight")
    return _ITEMSIZE.get(t.dtype, 4) if t is not None and t.dtype in _FLOAT else 4
