"""Gemma 3: how mlx-lm's ``models/gemma3_text.py`` reads its rotary settings (``model_config.normalize_config``).

Its sliding-window layers rotate with their own base (``rope_local_base_freq``),
and mlx-lm places them by a period (``sliding_window_pattern``: every Nth
layer is full attention) rather than by transformers 5's ``layer_types`` list.
"""

from .base import Family

FAMILY = Family(
    name="gemma3",
    model_types=("gemma3_text", "gemma3"),
    local_rope_base_field="rope_local_base_freq",
    layer_pattern_field="sliding_window_pattern",
)
