"""Import a llama.cpp GGUF file as Hugging Face-named MLX weights, config and tokenizer.

Q4_0/Q4_1/Q8_0 blocks become MLX affine triplets (group size 32) bit for bit;
the other common block types are expanded exactly to float32 (``gguf_types``).
``mx.load`` would read some of this, but it cannot be handed an arbitrary file:
it segfaults on corrupt counts or lengths, silently drops tensors of types it
does not know (TQ2_0, MXFP4, ...), fails on a whole file for others (Q5_0,
IQ4_NL), turns K-quants and BF16 into float16 (lossy), and keeps llama.cpp's
names and rotary row order. So we parse and check the header ourselves, refuse
the types we do not know, read each tensor's bytes ourselves, then rename and
undo the q/k row permutation.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError, ModelNotFoundError, UnsupportedModelError
from .gguf_rope import rope_fields, shortest
from .gguf_tokenizer import build_tokenizer
from .gguf_types import EXPANDED_TYPES, QUANT_BITS, SUPPORTED_TYPES, expand, mlx_triplet, stored, unsupported_message
from ..models import families
from ..models.families.base import Family

GROUP_SIZE = 32
ROPE_TENSORS = ("rope_freqs.", "rope_factors_long.", "rope_factors_short.")  # rope settings as tensors: config, not weights


@dataclass
class GGUFModel:
    """Everything a model directory needs, taken from one GGUF file."""

    weights: dict  # HF parameter name -> mx.array (quantized: .weight uint32, .scales, .biases)
    config: dict  # config.json for mlx_lm
    tokenizer_files: dict[str, str]  # file name -> text
    generation_config: dict
    source: dict = field(default_factory=dict)  # facts to show the user


def read_gguf(path: str | Path, dense: bool | None = None, expanded_dtype: str = "float32") -> GGUFModel:
    """Read a GGUF file into Hugging Face layout, losslessly, or explain why not.

    By default Q4_0/Q4_1/Q8_0 blocks become MLX quantized triplets and the other
    block types (K-quants, Q5_0/Q5_1, IQ4_NL/IQ4_XS) float32 ``mx.array``s.
    With ``dense`` (the default where mlx cannot be imported) every tensor is
    dequantized with the ``gguf`` package into float32 numpy arrays. Both are
    exact: llama.cpp's block formats expand to float32 without rounding.
    ``expanded_dtype`` (not with ``dense``): the dtype the expanded block types are
    stored in (``runtime.choose_expanded_dtype``: float16 on a GPU).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such GGUF file; check the path")
    md, tensors = read_header(path)
    arch = md.get("general.architecture")
    family = families.for_gguf_arch(arch)
    if family is None:
        raise UnsupportedModelError(
            f"{path.name}: GGUF architecture {arch!r} is not supported (supported: "
            f"{', '.join(families.gguf_import_archs())}); use the original Hugging Face model instead "
            "(--model HUB_ID_OR_DIR, or mlxtune convert HUB_ID_OR_DIR), which the mlx backend runs"
        )
    bad = [t for t in tensors if t.type not in SUPPORTED_TYPES]
    if bad:
        raise UnsupportedModelError(unsupported_message(path.name, bad[0].name, bad[0].type, len(bad), sorted({t.type for t in bad})))
    names = {t.name: _hf_name(t.name, family, path) for t in tensors if not t.name.startswith(ROPE_TENSORS)}
    hp = _hyperparameters(md, arch, path)
    tokenizer = build_tokenizer(md, path)
    if dense is None:
        dense = not _mlx_importable()
    if dense:
        weights, bits, extra = _load_weights_dense(path, family, hp, tensors, names)
    else:
        weights, bits, extra = _load_weights(path, family, hp, tensors, names, np.dtype(expanded_dtype))
    config = _config(md, family, hp, weights, bits, tokenizer, extra, path)
    source = {
        "path": str(path),
        "architecture": arch,
        "name": md.get("general.name"),
        "file_type": _file_type(md.get("general.file_type")),
        "tensor_types": dict(Counter(t.type for t in tensors).most_common()),
        "tokenizer": f"{md.get('tokenizer.ggml.model')}/{md.get('tokenizer.ggml.pre', 'default')}",
    }
    ids = (("bos_token_id", tokenizer.bos_token_id), ("eos_token_id", tokenizer.eos_token_id))
    return GGUFModel(weights, config, tokenizer.files, {k: v for k, v in ids if v is not None}, source)


# --- header ---------------------------------------------------------------

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, columns); GGUF stores dims reversed
    type: str  # GGML type name, e.g. "Q4_0", or "type 200" when unknown
    offset: int  # absolute byte offset in the file
    nbytes: int | None  # None when the type is unknown


class _Cursor:
    """Reads the header checking each length against the file size, so a truncated or
    corrupt file becomes a ModelFormatError instead of a huge allocation or a crash."""

    def __init__(self, f, path: Path, size: int):
        self.f, self.path, self.size, self.pos = f, path, size, 0

    def take(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise ModelFormatError(
                f"{self.path.name}: the file ends inside the {what} (byte {self.pos} of {self.size}); "
                "it is truncated or damaged - download it again"
            )
        self.pos += n
        return self.f.read(n)

    def num(self, code: str, what: str):
        return struct.unpack("<" + code, self.take(struct.calcsize(code), what))[0]

    def string(self, what: str) -> str:
        return self.take(self.num("Q", what), what).decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str):
        if vtype == _STRING:
            return self.string(what)
        if vtype in _SCALARS:
            return self.num(_SCALARS[vtype], what)
        if vtype == _ARRAY:
            etype, count = self.num("I", what), self.num("Q", what)
            if etype in _SCALARS:
                dtype = np.dtype("<" + _SCALARS[etype])
                return np.frombuffer(self.take(count * dtype.itemsize, what), dtype).tolist()
            if etype in (_STRING, _ARRAY):
                return [self.value(etype, what) for _ in range(count)]
        raise ModelFormatError(f"{self.path.name}: {what} has unknown value type {vtype}; the file is damaged")


def read_header(path: Path) -> tuple[dict, list[TensorInfo]]:
    """(metadata, tensor table) of a GGUF file, with every tensor checked to lie inside it."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    size = path.stat().st_size
    if size == 0:
        raise ModelFormatError(f"{path.name}: the file is empty; download it again")
    with open(path, "rb") as f:
        c = _Cursor(f, path, size)
        magic = c.take(4, "file signature")
        if magic != b"GGUF":
            raise ModelFormatError(f"{path.name}: not a GGUF file (it starts with {magic!r}, not b'GGUF'); pass a .gguf file from llama.cpp")
        version = c.num("I", "header")
        if version not in (2, 3):
            raise ModelFormatError(f"{path.name}: GGUF version {version} is not supported (only 2 and 3, little-endian); re-convert it with a current llama.cpp")
        n_tensors, n_kv = c.num("Q", "header"), c.num("Q", "header")
        md = {}
        for _ in range(n_kv):
            key = c.string("metadata")
            md[key] = c.value(c.num("I", f"metadata '{key}'"), f"metadata '{key}'")
        raw = []
        for _ in range(n_tensors):
            name = c.string("tensor table")
            n_dims = c.num("I", f"tensor table entry '{name}'")
            if not 1 <= n_dims <= 4:
                raise ModelFormatError(f"{path.name}: tensor '{name}' claims {n_dims} dimensions; the file is damaged")
            dims = [c.num("Q", f"tensor table entry '{name}'") for _ in range(n_dims)]
            raw.append((name, dims, c.num("I", f"tensor table entry '{name}'"), c.num("Q", f"tensor table entry '{name}'")))
    align = int(md.get("general.alignment", 32))
    start = -(-c.pos // align) * align
    tensors, seen = [], set()
    for name, dims, type_id, offset in raw:
        try:
            kind = GGMLQuantizationType(type_id)
        except ValueError:
            tensors.append(TensorInfo(name, tuple(reversed(dims)), f"type {type_id}", start + offset, None))
            continue
        block, block_bytes = GGML_QUANT_SIZES[kind]
        n = int(np.prod(dims, dtype=object))
        if name in seen or dims[0] % block or offset % align:
            raise ModelFormatError(f"{path.name}: tensor '{name}' is duplicated, misaligned or not whole {kind.name} blocks; the file is damaged")
        seen.add(name)
        t = TensorInfo(name, tuple(reversed(dims)), kind.name, start + offset, n // block * block_bytes)
        if t.offset + t.nbytes > size:
            raise ModelFormatError(
                f"{path.name}: tensor '{name}' ends at byte {t.offset + t.nbytes} but the file has only {size} bytes; "
                "it is truncated - download it again"
            )
        tensors.append(t)
    return md, tensors


# --- weights ----------------------------------------------------------------


def _hf_name(name: str, family: Family, path: Path) -> tuple[str, str]:
    """(HF module path, parameter) for a GGUF tensor name such as ``blk.3.attn_q.weight``."""
    stem, _, param = name.rpartition(".")
    parts = stem.split(".")
    outside, block = dict(family.gguf_global), dict(family.gguf_block)
    if stem in outside:
        return outside[stem], param
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in block:
        return f"model.layers.{parts[1]}.{block[parts[2]]}", param
    raise UnsupportedModelError(
        f"{path.name}: tensor '{name}' has no counterpart in the Hugging Face llama layout; "
        "this variant of the architecture is not supported"
    )


def _load_weights(path: Path, family: Family, hp: dict, tensors: list[TensorInfo], names: dict, expanded_dtype=np.dtype(np.float32)):
    """(HF-named weights, {module: bits} of quantized modules, {name: np.ndarray} of non-weights).

    We read every tensor ourselves rather than with ``mx.load``, which fails on a
    whole file for one tensor type it cannot turn into float16 (Q5_0, IQ4_NL, ...).
    """
    import mlx.core as mx

    n_head, n_kv = hp["num_attention_heads"], hp["num_key_value_heads"]
    weights, bits, extra = {}, {}, {}
    for t in tensors:
        stem = t.name.rpartition(".")[0]
        if t.name not in names:  # rope_freqs, rope_factors_*: become config, not weights
            extra[t.name] = expand(path, t.shape, t.type, t.offset, t.nbytes)
            continue
        if t.type in QUANT_BITS:
            triplet = mlx_triplet(path, t.shape, t.type, t.offset)
        elif t.type in EXPANDED_TYPES:
            value = expand(path, t.shape, t.type, t.offset, t.nbytes).astype(expanded_dtype, copy=False)
        else:
            value = stored(path, t.shape, t.type, t.offset)
        module, param = names[t.name]
        if t.type in QUANT_BITS:
            parts = dict(zip((f"{module}.{p}" for p in ("weight", "scales", "biases")), triplet))
            bits[module] = QUANT_BITS[t.type]
        else:
            parts = {f"{module}.{param}": value}
        if family.gguf_permute_qk and stem.endswith((".attn_q", ".attn_k")):
            heads = n_head if stem.endswith(".attn_q") else n_kv
            parts = {k: _unpermute(v, heads, t.name, path) for k, v in parts.items()}
        if family.norm_offset and f"{module}.{param}".endswith("norm.weight"):  # stored as norm_offset + w (export's shift): float32
            value = (value.astype(np.uint32) << 16).view(np.float32) if t.type == "BF16" else value  # bfloat16 bits, widened exactly
            weights[f"{module}.{param}"] = mx.array(np.asarray(value, dtype=np.float32) - np.float32(family.norm_offset))
            continue
        weights.update({k: mx.array(v).view(mx.bfloat16) if t.type == "BF16" else mx.array(v) for k, v in parts.items()})
    return weights, bits, extra


def _mlx_importable() -> bool:
    try:
        import mlx.core  # noqa: F401
    except ImportError:
        return False
    return True


def _load_weights_dense(path: Path, family: Family, hp: dict, tensors: list[TensorInfo], names: dict):
    """Like ``_load_weights`` but numpy-only: every tensor expanded to float32."""
    n_head, n_kv = hp["num_attention_heads"], hp["num_key_value_heads"]
    weights, extra = {}, {}
    for t in tensors:
        data = expand(path, t.shape, t.type, t.offset, t.nbytes)
        if t.name not in names:
            extra[t.name] = data
            continue
        module, param = names[t.name]
        stem = t.name.rpartition(".")[0]
        if family.gguf_permute_qk and stem.endswith((".attn_q", ".attn_k")):
            data = _unpermute(data, n_head if stem.endswith(".attn_q") else n_kv, t.name, path)
        if family.norm_offset and f"{module}.{param}".endswith("norm.weight"):  # stored as norm_offset + w (export's shift)
            data = data - np.float32(family.norm_offset)
        weights[f"{module}.{param}"] = np.ascontiguousarray(data)
    return weights, {}, extra


def _unpermute(w, n_head: int, name: str, path: Path):
    """Undo llama.cpp's ``permute``, which stored rows (n_head, 2, d/2) as (n_head, d/2, 2).

    Rows are independent in every stored form (float rows; packed rows with their
    scales and biases), so moving whole rows is lossless.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ModelFormatError(f"{path.name}: tensor '{name}' has {rows} rows, not a multiple of 2 x {n_head} heads; the file is inconsistent")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --- config -----------------------------------------------------------------


def _hyperparameters(md: dict, arch: str, path: Path) -> dict:
    """The integer shape parameters, checked: every later step relies on them."""
    def get(key, default=None):
        return md.get(f"{arch}.{key}", default)

    try:
        hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
        hp = {
            "hidden_size": hidden,
            "intermediate_size": int(get("feed_forward_length")),
            "num_hidden_layers": int(get("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(get("attention.head_count_kv", heads)),
            "head_dim": int(get("attention.key_length", hidden // heads)),
        }
    except (TypeError, ValueError, ZeroDivisionError) as e:  # missing, or per-layer lists
        raise ModelFormatError(f"{path.name}: the GGUF metadata lacks a usable {arch}.* hyperparameter ({e}); the file is incomplete") from e
    if min(hp.values()) <= 0:
        raise ModelFormatError(f"{path.name}: the GGUF metadata has a non-positive {arch}.* hyperparameter; the file is damaged")
    return hp


def _config(md: dict, family: Family, hp: dict, weights: dict, bits: dict, tokenizer, extra: dict, path: Path) -> dict:
    arch = family.gguf_arch

    def get(key, default=None):
        return md.get(f"{arch}.{key}", default)

    rows = (hp["num_attention_heads"] + (2 * hp["num_key_value_heads"] if family.fused_projections else 0)) * hp["head_dim"]
    q = weights.get(f"model.layers.0.self_attn.{'qkv_proj' if family.fused_projections else 'q_proj'}.weight")  # q, or q | k | v
    if q is None or q.shape[0] != rows or "model.embed_tokens.weight" not in weights:
        raise ModelFormatError(
            f"{path.name}: the tensors do not match the metadata ({hp['num_attention_heads']} heads x {hp['head_dim']}); the file is inconsistent"
        )
    model_type, hf_class = family.model_types[0], family.hf_class
    theta = shortest(get("rope.freq_base", 10000.0))
    config = {
        "model_type": model_type,
        "architectures": [hf_class],
        **hp,
        "rms_norm_eps": shortest(get("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": theta,
        "vocab_size": int(weights["model.embed_tokens.weight"].shape[0]),
        "max_position_embeddings": int(get("context_length", 2048)),
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,  # None (null) where the file has none: transformers' family default may lie outside the vocabulary
    }
    if family.gguf_attention_bias_key:
        config["attention_bias"] = "model.layers.0.self_attn.q_proj.bias" in weights
    config.update(family.gguf_config_fields(hp["num_hidden_layers"]))  # what llama.cpp's graph fixes and the file omits
    scalar = family.gguf_query_pre_attn_scalar(hp["hidden_size"], hp["num_attention_heads"], hp["head_dim"], hp["num_hidden_layers"])
    if scalar is not None:
        config[family.query_scale_field] = scalar
    config.update(rope_fields(md, family, config, extra, path))  # rope scaling, partial rotary, the sliding window
    if bits:
        default = Counter(bits.values()).most_common(1)[0][0]
        quant: dict = {"group_size": GROUP_SIZE, "bits": default}
        quant.update({m: {"group_size": GROUP_SIZE, "bits": b} for m, b in bits.items() if b != default})
        config["quantization"] = quant
        config["quantization_config"] = quant
    return config


def _file_type(value) -> str | None:
    from gguf import LlamaFileType

    try:
        return None if value is None else LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    except ValueError:
        return str(value)
