"""Model files with numpy alone: safetensors, MLX quantization, model directories.

The numpy backend must run where mlx cannot be imported, so it reads and writes
the same files as the mlx path without mlx: safetensors (an 8-byte header
length, a JSON header, then raw little-endian tensors), bfloat16 (which numpy
lacks: widened to float32 exactly, by shifting the bits), and MLX's affine
quantization (``w = q * scale + bias`` per group, ``q`` packed little-endian
into uint32 words), dequantized in float32 exactly as mlx does it.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError
from ..models.config import read_config

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,  # widened to float32 on read
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items() if k != "BF16"}


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 (as uint16 bits) -> float32, exactly."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even, as mlx and torch do."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (0x7FFF + ((u >> 16) & 1))
    nan = np.isnan(x)
    out = (rounded >> 16).astype(np.uint16)
    out[nan] = 0x7FC0
    return out


def read_safetensors_header(path: str | Path) -> tuple[dict[str, dict], dict[str, str]]:
    """The tensors a safetensors file holds (name -> dtype, shape, data_offsets) and its metadata, without reading weights."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header, metadata, _ = _read_header(f, path)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    return header, metadata


def _read_header(f, path: Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """(tensors, metadata, header length) from the start of an open safetensors file."""
    raw = f.read(8)
    if len(raw) < 8:
        raise ModelFormatError(f"{path} is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw)
    if n > 100_000_000:
        raise ModelFormatError(f"{path} is not a safetensors file (header length {n})")
    header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path} is not a safetensors file (its header is not a JSON object)")
    metadata = header.pop("__metadata__", {}) or {}
    return header, metadata, n


def read_safetensors(path: str | Path, keep_bf16_bits: bool = False, data: bytes | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and metadata of a safetensors file (bfloat16 widened to float32).

    Each tensor is read straight into an array of its own (no memory map: the
    pages of a mapped file would count once more in the process's resident
    memory while the arrays are copied out of it). With ``data``, the file's
    bytes are those (``path`` names them in errors).
    """
    import io

    path = Path(path)
    try:
        with (io.BytesIO(data) if data is not None else open(path, "rb")) as f:
            header, metadata, n = _read_header(f, path)
            size = (len(data) if data is not None else path.stat().st_size) - 8 - n
            out = {}
            for name, info in header.items():
                dtype = _DTYPES.get(info["dtype"])
                if dtype is None:
                    raise ModelFormatError(f"{path}: tensor {name} has dtype {info['dtype']}, which mlxtune cannot read")
                start, end = info["data_offsets"]
                arr = np.empty(info["shape"], dtype=dtype)
                if end > size or end - start != arr.nbytes:
                    raise ModelFormatError(f"{path} is truncated or damaged: tensor {name} spans bytes {start}..{end} of {size}")
                f.seek(8 + n + start)
                if f.readinto(memoryview(arr.reshape(-1)).cast("B")) != arr.nbytes:
                    raise ModelFormatError(f"{path} is truncated: tensor {name} ends past the end of the file")
                out[name] = bf16_to_f32(arr) if info["dtype"] == "BF16" and not keep_bf16_bits else arr
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ModelFormatError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    return out, metadata


def write_safetensors(path: str | Path, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None, bf16: set[str] | None = None) -> None:
    """Write tensors atomically; names in ``bf16`` are stored as bfloat16."""
    path = Path(path)
    header: dict = {"__metadata__": dict(metadata or {})} if metadata else {}
    blobs, offset = [], 0
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        if bf16 and name in bf16:
            a, dtype = f32_to_bf16(a.astype(np.float32)), "BF16"
        else:
            dtype = _NAMES.get(a.dtype)
            if dtype is None:
                raise ValueError(f"cannot store {name} of dtype {a.dtype} in safetensors")
        b = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(head)))
            f.write(head)
            for b in blobs:
                f.write(b)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dequantize(weight: np.ndarray, scales: np.ndarray, biases: np.ndarray, group_size: int, bits: int) -> np.ndarray:
    """MLX affine dequantization in float32: (out, in*bits/32) uint32 -> (out, in) float32."""
    if 32 % bits:
        raise ModelFormatError(f"{bits}-bit quantization is not supported by the numpy backend (2, 4 or 8 bits)")
    per_word = 32 // bits
    shifts = (np.arange(per_word, dtype=np.uint32) * bits)  # element i of a word sits at bits [i*bits, (i+1)*bits)
    q = (weight[..., None] >> shifts) & np.uint32((1 << bits) - 1)  # (out, words, per_word)
    q = q.reshape(weight.shape[0], -1).astype(np.float32)  # (out, in)
    s = np.repeat(scales.astype(np.float32), group_size, axis=-1)
    b = np.repeat(biases.astype(np.float32), group_size, axis=-1)
    return q * s + b


def load_weights(model_dir: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """config.json and the dense float32 weights of an MLX- or HF-layout directory.

    Quantized triplets (``.weight`` uint32, ``.scales``, ``.biases``) are
    dequantized; every float tensor is returned as float32.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)  # transformers 5's rope_parameters read as transformers reads them
    files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        raise ModelFormatError(f"{model_dir} has no model*.safetensors weights")
    raw: dict[str, np.ndarray] = {}
    for f in files:
        raw.update(read_safetensors(f)[0])
    quant = config.get("quantization") or {}
    quantized = {name[: -len(".weight")] for name, a in raw.items() if a.dtype == np.uint32 and name.endswith(".weight")}
    weights: dict[str, np.ndarray] = {}
    for name in list(raw):  # each raw tensor is let go as soon as it is converted: one model's worth in memory, not two
        if name.endswith((".scales", ".biases")) and name.rsplit(".", 1)[0] in quantized:
            continue
        a = raw.pop(name)
        stem = name[: -len(".weight")]
        if stem in quantized:
            params = quant.get(stem) if isinstance(quant.get(stem), dict) else quant
            if (params or {}).get("mode", "affine") != "affine":
                raise ModelFormatError(f"{model_dir}: {name} uses {params.get('mode')} quantization; the numpy backend reads affine only")
            try:
                scales, biases = raw.pop(stem + ".scales"), raw.pop(stem + ".biases")
            except KeyError as e:
                raise ModelFormatError(f"{model_dir}: quantized tensor {name} has no {e.args[0]}") from None
            weights[name] = dequantize(a, scales, biases, int(params["group_size"]), int(params["bits"]))
        elif np.issubdtype(a.dtype, np.floating):
            weights[name] = a.astype(np.float32, copy=False)
        else:
            weights[name] = a
    return config, weights
