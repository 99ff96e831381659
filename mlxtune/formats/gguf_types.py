"""GGUF tensor types: which ones mlxtune imports, and how each becomes weights.

Three kinds, by what MLX can hold without loss:

* float (F32, F16, BF16): kept as stored;
* Q4_0, Q4_1, Q8_0: a block of 32 weights with one scale (and, for Q4_1, one
  minimum) is exactly MLX's affine quantization with group size 32, so they
  stay quantized, bit for bit;
* the K-quants (Q2_K .. Q6_K), Q5_0, Q5_1, IQ4_NL and IQ4_XS: their
  super-blocks, 5-bit values, sub-block scales or non-linear code books have no
  MLX counterpart, so they are expanded to float32 exactly as llama.cpp's
  ``dequantize_row_*`` computes them (the gguf package's numpy port of it; the
  llama.cpp tests hold the two equal). ``convert -q`` can re-quantize them to
  MLX's format afterwards, and reports what that costs in loss.

Anything else (TQ1_0, MXFP4, the 1-3 bit IQ types, types newer than this
reader) is refused with the tensor's name and type.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

QUANT_BITS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}  # kept as MLX affine triplets, group size 32
FLOAT_TYPES = ("F32", "F16", "BF16")
EXPANDED_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS")
SUPPORTED_TYPES = FLOAT_TYPES + tuple(QUANT_BITS) + EXPANDED_TYPES


def unsupported_message(file: str, name: str, type_name: str, count: int, types: list[str]) -> str:
    """The one-line refusal for tensors of types mlxtune cannot import."""
    others = f" ({count} tensors in {', '.join(types)})" if count > 1 else ""
    return (
        f"{file}: tensor '{name}' is stored as {type_name}{others}, which mlxtune cannot import; supported types: "
        f"{', '.join(SUPPORTED_TYPES)}. Use a GGUF quantized to one of these (Q4_K_M, Q5_K_M, Q6_K, Q8_0, F16, ...), "
        "or the Hugging Face model"
    )


def expand(path: Path, shape: tuple[int, ...], type_name: str, offset: int, nbytes: int) -> np.ndarray:
    """The float32 values of a tensor of any supported type stored at ``offset`` in ``path``.

    ``shape`` is numpy's order (rows, columns); every row is a whole number of
    blocks (``read_header`` checked that), so the bytes split into rows. Rows are
    expanded a slab at a time: the numpy dequantizers make several temporaries
    the size of their input in float32, which for a 128k-token embedding would be
    gigabytes.
    """
    import gguf

    if type_name in ("F32", "F16"):
        return stored(path, shape, type_name, offset).astype(np.float32)
    kind = gguf.GGMLQuantizationType[type_name]
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(rows, nbytes // rows))
    out = np.empty((rows, shape[-1]), dtype=np.float32)
    step = max(1, (1 << 22) // shape[-1])  # ~4M weights per slab
    for i in range(0, rows, step):
        out[i : i + step] = gguf.quants.dequantize(np.array(raw[i : i + step]), kind)
    del raw
    return out.reshape(shape)


def stored(path: Path, shape: tuple[int, ...], type_name: str, offset: int) -> np.ndarray:
    """An F32, F16 or BF16 tensor as stored (BF16 as its uint16 bit patterns, which mlx views as bfloat16)."""
    dtype = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}[type_name]
    return np.fromfile(path, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)), offset=offset).reshape(shape)


# Bytes of one block of 32 weights, and where its parts are: a float16 scale d at 0, then
# Q4_1's float16 minimum m, then the values: 16 bytes holding weight j in the low nibble
# of byte j and weight j+16 in the high nibble (Q4_0/Q4_1), or 32 signed bytes (Q8_0).
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


def mlx_triplet(path: Path, shape: tuple[int, int], type_name: str, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Q4_0/Q4_1/Q8_0 tensor as MLX's affine quantization (group size 32): (packed uint32, scales, biases).

    w = d * (q - 8) (Q4_0), d * q + m (Q4_1), d * q with signed q (Q8_0) is, with
    MLX's unsigned values, scales = d and biases = -8 d, m, -128 d: products of a
    float16 and a power of two, so exact. MLX packs value k of a row into bits
    bits * (k % (32 // bits)) of word k // (32 // bits).
    """
    rows, cols = shape
    size, bits = _BLOCK_BYTES[type_name], QUANT_BITS[type_name]
    blocks = np.fromfile(path, dtype=np.uint8, count=rows * cols // 32 * size, offset=offset).reshape(rows, cols // 32, size)
    d = blocks[..., 0:2].copy().view("<f2")[..., 0]  # (rows, groups)
    if type_name == "Q8_0":
        q = (blocks[..., 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint32)  # (rows, groups, 32)
        biases = d * np.float16(-128)
    else:
        nibbles = blocks[..., size - 16 :]
        q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).astype(np.uint32)
        biases = blocks[..., 2:4].copy().view("<f2")[..., 0] if type_name == "Q4_1" else d * np.float16(-8)
    per_word = 32 // bits
    words = q.reshape(rows, cols // per_word, per_word) << (bits * np.arange(per_word, dtype=np.uint32))
    return np.bitwise_or.reduce(words, axis=-1).astype(np.uint32), d.astype(np.float16), biases.astype(np.float16)
