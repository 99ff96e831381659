"""Packed rows on the mlx backend: several records in one row, each attending only to itself, rope at its own positions.

A packed batch (``data.batching.Batch`` with ``positions`` and ``segments``,
both (B, T) int32) lets query t of row b see key s iff s <= t and
``segments[b, s] == segments[b, t]`` (and t - s < window on a sliding-window
layer), and rotates token t by ``positions[b, t]``, its position within its
own record. mlx-lm's models build their mask inside (``create_attention_mask(h,
cache)``) and rotate by ``cache.offset``; both go through the per-layer
``cache`` they take. So the packed forward passes its own ``PackedCache`` as
every layer's cache, without forking a model file:

* ``make_mask(N, return_array, window_size)`` (what ``create_attention_mask``
  asks a cache for, gemma3's sliding-window call included) returns the
  block-diagonal causal (windowed) (B, 1, T, T) bool mask;
* ``update_and_fetch(k, v)`` returns k and v unchanged (nothing is cached);
* ``offset`` is a ``PackedPositions``, which each attention's rope, wrapped
  once in a ``PackedRope`` (``use_packed_rope``), turns into per-token
  rotations.

``PackedRope`` gets the rotation from the wrapped module itself, not from its
attributes: it lays the (B, H, T, D) heads out as B*T sequences of one token
and calls the module with an offset array of the B*T positions
(``mx.fast.rope`` takes one offset per sequence). Every rope variant mlx-lm
builds (default, linear, llama3, yarn with its mscale, partial rotary,
LongRoPE) is then exactly its own code at each token's position, with nothing
re-implemented that could drift from it; smollm3's layers without rope keep
their ``NoPE`` (no wrapper). LongRoPE (``longrope.LengthLongRoPE``) chooses its
factors by the length of the sequence: in a packed row by its longest record
(positions restart), which its ``packed`` method does per row.

Unpacked batches never reach this module: the trainer's steps for them are
today's (``trainer.loss_fn``), and a wrapped rope called with an integer
offset (generation's KV cache) is the module it wraps.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ...errors import UnsupportedModelError

# mlx-lm ropes whose frequencies depend on the sequence's length, which per-token offsets do not give them
LENGTH_DEPENDENT = ("DynamicNTKScalingRoPE",)


class PackedPositions:
    """A packed forward's ``cache.offset``: each input token's position within its record, (B, T) int32."""

    def __init__(self, positions: mx.array):
        self.positions = positions
        self.rotations = 0  # calls, counted at trace time (``packed_logits`` checks every rope took them)

    def rotate(self, rope, x: mx.array) -> mx.array:
        """``rope`` applied to the heads ``x`` (B, H, T, D) at the per-token positions."""
        if type(rope).__name__ in LENGTH_DEPENDENT:
            raise UnsupportedModelError(f"--pack: this model's rope ({type(rope).__name__}) depends on the sequence's length, which a packed row does not give each record; train without --pack")
        self.rotations += 1
        packed = getattr(rope, "packed", None)
        if packed is not None:  # a rope whose frequencies depend on the row (LongRoPE)
            return packed(x, self.positions)
        return per_token(rope, x, self.positions)


def per_token(rope, x: mx.array, positions: mx.array) -> mx.array:
    """``rope`` (any module called as ``rope(x, offset=...)``) at position ``positions[b, t]`` for token t of row b.

    The heads become B*T sequences of one token, each with its own offset.
    """
    B, H, T, D = x.shape
    flat = x.transpose(0, 2, 1, 3).reshape(B * T, H, 1, D)  # (B*T, H, 1, D)
    out = rope(flat, offset=positions.reshape(B * T))
    return out.reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D)


class PackedRope(nn.Module):
    """An attention's rope that also rotates by a packed batch's per-token positions (``PackedPositions``).

    Called with anything else as ``offset`` (an int, a KV cache's array) it
    is the wrapped module. The wrapped module is an underscored attribute,
    which mlx leaves out of ``parameters()``: parameter names are unchanged.
    """

    def __init__(self, rope: nn.Module):
        super().__init__()
        self._rope = rope

    def __call__(self, x: mx.array, offset=0) -> mx.array:
        if isinstance(offset, PackedPositions):
            return offset.rotate(self._rope, x)
        return self._rope(x, offset=offset)


def use_packed_rope(model: nn.Module) -> int:
    """Wrap each attention's rope of ``model`` in a ``PackedRope`` (once; layers without rope are left alone).

    Returns how many are wrapped now.
    """
    count = 0
    for layer in getattr(model, "layers", []):
        attention = getattr(layer, "self_attn", None)
        rope = getattr(attention, "rope", None)
        if rope is None or type(rope).__name__ == "NoPE":
            continue
        if not isinstance(rope, PackedRope):
            attention.rope = PackedRope(rope)
        count += 1
    return count


def block_causal_mask(segments: mx.array, window: int | None = None) -> mx.array:
    """(B, 1, T, T) bool: query t sees key s iff s <= t, same segment, and t - s < window when given."""
    T = segments.shape[1]
    t = mx.arange(T)
    allowed = t[:, None] >= t[None]  # (T, T) causal
    if window is not None:
        allowed = allowed & (t[:, None] < t[None] + window)
    same = segments[:, None, :, None] == segments[:, None, None, :]  # (B, 1, T, T)
    return same & allowed


class PackedCache:
    """What a packed forward passes as every layer's ``cache`` (see the module docstring).

    Masks are built once per window size and shared by the layers.
    """

    def __init__(self, positions: mx.array, segments: mx.array):
        self.offset = PackedPositions(positions)
        self.segments = segments
        self._masks: dict[int | None, mx.array] = {}
        self.masks_made = 0

    def make_mask(self, N: int, return_array: bool = False, window_size: int | None = None) -> mx.array:
        if N != self.segments.shape[1]:
            raise ValueError(f"a packed forward takes the whole row at once ({self.segments.shape[1]} tokens), not {N}")
        self.masks_made += 1
        if window_size not in self._masks:
            self._masks[window_size] = block_causal_mask(self.segments, window_size)
        return self._masks[window_size]

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        return keys, values


def packed_logits(model: nn.Module, inputs: mx.array, positions: mx.array, segments: mx.array) -> mx.array:
    """(B, T, V) logits of a packed batch: each record as if it were alone in its row.

    Wraps the ropes if they are not yet; a compiled step wraps them before it is first traced (the trainer does it
    when it loads the model), since wrapping changes the state tree the compiled function holds.
    """
    ropes = use_packed_rope(model)
    cache = PackedCache(positions, segments)
    logits = model(inputs, cache=[cache] * len(model.layers))
    # A model that builds its mask or rotates without its cache would attend across records: refuse it. (Counted
    # while mx.compile traces; a compiled step does not run this Python again.)
    if cache.masks_made == 0 or cache.offset.rotations != 2 * ropes:
        kind = getattr(model, "model_type", type(model).__module__)
        raise UnsupportedModelError(f"--pack: model type '{kind}' does not take its attention mask and rope positions from the cache as mlxtune's packing needs (masks {cache.masks_made}, rotations {cache.offset.rotations} of {2 * ropes}); train without --pack")
    return logits
