"""The backend contract, as typed protocols: what every compute backend offers.

A backend is found by name with ``backends.get(name)``; the feature modules
(``inference.py``, ``fusing.py``) call only these methods and
never branch on the backend's name. What a backend cannot do is a capability
it reports (``can_requantize``), not a name the caller knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol

if TYPE_CHECKING:
    from ..training.memory_base import Estimate, EstimateInputs

BACKENDS = ("auto", "mlx", "numpy")  # the choices of --backend and of a config file's backend key; backends.get dispatches on them


@dataclass
class Chunk:
    """One streamed piece of generated text and the token that ended it."""

    text: str
    token: int
    prompt_tokens: int
    generation_tps: float
    finish_reason: str | None


class AdapterSet(Protocol):
    """A base model loaded once with several adapters attached, of which one (or none: the base) is active.

    ``model`` is what ``Backend.stream`` decodes with; ``select`` switches the
    active adapter without reloading the base or re-reading an adapter's file.
    """

    model: Any
    names: list[str]

    def select(self, name: str | None) -> None:
        """Make adapter ``name`` active, or none with None (the base model alone)."""
        ...


class Trainer(Protocol):
    """Training: LoRA layers on a loaded model, one optimizer step at a time."""

    num_layers: int
    keys: list[str]
    n_trainable: int
    description: str
    objective: Any  # an mlxtune.training.objectives.Objective

    def step(self, batch, lr: float) -> tuple[float, int]: ...

    def evaluate(self, batch) -> tuple[float, int]: ...

    def adapter_weights(self) -> dict: ...

    def optimizer_state(self) -> dict: ...

    def token_log_probs(self, batch) -> Any: ...


class Backend(Protocol):
    """Inference, loss and fusing: everything besides training that depends on the backend."""

    name: str
    can_requantize: bool  # whether ``fuse`` can quantize the merged weights again
    names_any_layers: bool  # whether it loads layouts beyond the llama one, naming their linear layers itself

    def device(self) -> str:
        """The device the computation runs on, whose peak memory counts: "gpu" or "cpu"."""
        ...

    def describe(self) -> str:
        """What the computation runs on, in words (device, dtype, BLAS)."""
        ...

    def load_inference(self, model_dir: Path, adapter: Path | None, dtype: str | None) -> tuple[Any, Any, set[int]]:
        """(the model with ``adapter`` applied, its tokenizer, its end-token ids) ready for generation."""
        ...

    def load_adapter_set(self, model_dir: Path, adapters: dict[str, Path], dtype: str | None) -> tuple[AdapterSet, Any, set[int]]:
        """(the base with every adapter attached and none active, its tokenizer, its end-token ids), for serving.

        Call it, ``AdapterSet.select`` and ``stream`` from one thread: generation is not thread-safe.
        """
        ...

    def stream(self, model: Any, tokenizer: Any, eos_ids: set[int], ids: list[int], max_tokens: int, temp: float, top_p: float, seed: int | None) -> Iterator[Chunk]:
        """The continuation of the token ids ``ids``, chunk by chunk, decoded with a KV cache."""
        ...

    def summed_loss(self, model: Any, batch) -> tuple[float, int]:
        """(the loss summed over the batch's target tokens, their number), for evaluation."""
        ...

    def fuse(self, base_dir: Path, adapter_dir: Path, out: Path, dtype: str, quantize: bool, q_bits: int | None, q_group_size: int | None, notes: list[str]) -> tuple[int, dict | None]:
        """Write the base model with the adapter merged into ``out``; return (fused layers, quantization or None)."""
        ...

    def convert(self, src: Path, dst: Path, dtype: str | None, quantize: bool, q_bits: int, q_group_size: int, notes: list[str]) -> dict | None:
        """Write the model in ``src`` into ``dst`` in mlx-lm's layout (dtype, quantization); return its quantization or None."""
        ...


class MemoryModel(Protocol):
    """A backend's memory model (a module, ``backends/<name>/memory.py``): its training process's peak resident memory."""

    BASELINE_BYTES: int  # the process before the trainer is created (interpreter, libraries, tokenizer), measured

    def estimate(self, x: EstimateInputs) -> Estimate:
        """The peak, term by term, of training with ``x`` (what ``training.memory.estimate`` worked out alike for every backend)."""
        ...
