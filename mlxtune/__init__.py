"""mlxtune: LoRA fine-tuning of small language models on Apple silicon and CPUs.

Importing the package loads an optimized BLAS where mlx would otherwise use a
slow one (see ``mlxtune.runtime``); this must happen before ``mlx`` is imported,
which is why it is done here, the first module of ours that any caller imports.
"""

from . import runtime as _runtime

__version__ = "0.1.0"

_runtime.preload_blas()
