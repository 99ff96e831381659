"""Which linear layers a ``--target-modules`` list selects: one rule, on key names, for every backend.

A block's linear layers are named relative to the block (``self_attn.q_proj``,
``mlp.down_proj``). A target names one by its full key or by its last parts
(``q_proj``, ``self_attn.q_proj``); ``all-linear`` (or ``all``) names them all.
Blocks may differ (LFM2 interleaves convolution and attention blocks), so a
model's keys are the union over its blocks, as mlx-lm's
``linear_to_lora_layers`` takes them.

The mlx backend reads the keys from its modules (``backends.mlx.lora``), the
numpy backend has its family's fixed block (``backends.numpy.trainer``), and
``--init-adapter`` reads them from the weight files (``training.init_adapter``);
all three select through this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import ConfigError

ALL_LINEAR = ("all-linear", "all")

_BLOCK_WEIGHT = re.compile(r"^(?:[^.]+\.)*?layers\.\d+\.(?P<key>.+)\.weight$")


def matches(key: str, target: str) -> bool:
    """Whether ``target`` names the block-relative ``key``: the whole key or its last dotted parts."""
    return key == target or key.endswith("." + target)


def union_over_blocks(blocks: Iterable[Iterable[str]]) -> list[str]:
    """The sorted union of the linear keys of each block."""
    return sorted({key for block in blocks for key in block})


def linear_keys_of_weights(tensors: Iterable[tuple[str, tuple[int, ...]]]) -> list[str]:
    """Block-relative names of a model's linear layers from its weights' (name, shape): 2-d ``...layers.N.KEY.weight``, over all blocks."""
    found = set()
    for name, shape in tensors:
        m = _BLOCK_WEIGHT.match(name)
        if m and len(shape) == 2:
            found.add(m["key"])
    return sorted(found)


def short_names(keys: Iterable[str]) -> str:
    """The layers' last names, once each, sorted: what an error offers to choose from."""
    return ", ".join(sorted({k.rsplit(".", 1)[-1] for k in keys}))


def resolve(targets: list[str] | None, available: list[str], everywhere: list[str] | None = None, *, adapted_blocks: int = 0, num_layers: int = -1) -> list[str]:
    """Block-relative keys for user targets ("q_proj", "self_attn.v_proj", "all-linear"), in the order of ``available``.

    ``available``: the linear keys of the blocks adapted; ``everywhere``: those
    of all blocks (None: the same). A target may be in some blocks only (it is
    applied where it is), but it must be in at least one adapted block: a
    target found only in blocks left alone is refused naming ``--layers``
    (``adapted_blocks`` of them, from ``num_layers``), one found nowhere
    naming the layers there are. A lone ``all-linear`` (or ``all``) gives
    ``available``.
    """
    if not targets or targets in ([ALL_LINEAR[0]], [ALL_LINEAR[1]]):
        return list(available)
    everywhere = available if everywhere is None else everywhere
    keys: list[str] = []
    for t in targets:
        found = [k for k in available if matches(k, t)]
        if not found:
            if any(matches(k, t) for k in everywhere):
                raise ConfigError(f"target module '{t}' is in none of the last {adapted_blocks} blocks (--layers {num_layers}); adapt more blocks, or choose from: {short_names(available)} (or all-linear)")
            raise ConfigError(f"target module '{t}' is not a linear layer of this model; choose from: {short_names(everywhere)} (or all-linear)")
        keys.extend(k for k in found if k not in keys)
    return keys


def selected(targets: Iterable[str], linear: list[str]) -> set[str]:
    """The keys a target list names, never refusing: ``all-linear`` (or ``all``) anywhere in it names every key.

    For comparing a list with an adapter's keys (``--init-adapter``), where
    a target naming nothing only makes the two differ.
    """
    chosen: set[str] = set()
    for t in targets:
        chosen |= set(linear) if t in ALL_LINEAR else {k for k in linear if matches(k, t)}
    return chosen
