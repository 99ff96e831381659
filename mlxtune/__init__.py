"""mlxtune: LoRA fine-tuning of small language models on Apple silicon and CPUs.

Importing the package has one effect, ``runtime.prepare_process()``: it splits
the cores between the processes of a distributed run that share a machine and
loads an optimized BLAS where mlx would otherwise use a slow one. Both must
happen before ``mlx`` or numpy load their BLAS, which is why it is done here,
the first module of ours that any caller imports.
"""

from . import runtime as _runtime

__version__ = "0.1.0"

_runtime.prepare_process()
