"""mlxtune: LoRA fine-tuning of small language models on Apple silicon and CPUs.

Importing the package loads an optimized BLAS where mlx would otherwise use a
slow one, and splits the cores between the processes of a distributed run that
share a machine (see ``mlxtune.runtime``); both must happen before ``mlx`` or
numpy load their BLAS, which is why it is done here, the first module of ours
that any caller imports.
"""

from . import runtime as _runtime

__version__ = "0.1.0"

_runtime.share_cores()  # before numpy or mlx start their BLAS threads
_runtime.preload_blas()
