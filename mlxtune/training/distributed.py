"""Data-parallel training over MLX's distributed layer (``mx.distributed``, started by ``mlx.launch``).

Every process (a *rank*) holds the whole model and the same data. For each
global batch, every rank draws the same batch from the same seeded order and
trains on its share of the sequences; the token-weighted sums of the LoRA
gradients, the loss and the token counts are added across ranks with one
``all_sum`` per step, so every rank applies the gradient of the global batch:
the update a single process would make with that batch (up to the order of
float32 sums; with LoRA dropout, each rank draws its own masks, so the masks
differ from one process's). Rank 0 alone writes the run directory and prints
progress.

Nothing here is home-made communication: MLX's ring backend (TCP) or MPI does
the transport, whichever ``mlx.launch`` set up. A run not started by
``mlx.launch`` is a world of one, and never imports mlx for it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MlxtuneError, UsageError

# Set by mlx.launch (ring, jaccl) or by mpirun for the ranks it starts.
LAUNCH_VARIABLES = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


class DistributedError(MlxtuneError):
    """The processes of a distributed run disagree, or one of them was lost."""


def launched(env: Mapping[str, str]) -> bool:
    """Whether this process was started as one rank of several."""
    return any(v in env for v in LAUNCH_VARIABLES)


@dataclass
class World:
    """This process's place in the run: rank ``rank`` of ``size``. ``size`` 1 is a plain, single-process run."""

    rank: int = 0
    size: int = 1
    group: Any = None  # mx.distributed.Group when size > 1
    backend: str = "single"

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share of a global batch: every size-th item, from its rank on."""
        return items[self.rank :: self.size]

    def all_sum(self, arrays: dict[str, Any], scalars: list[float]) -> tuple[dict[str, Any], list[float]]:
        """Sum ``arrays`` (numpy or mlx) and ``scalars`` over all ranks, in one collective.

        Arrays come back as the kind they went in as. float32 throughout: the
        gradients are float32, and counts stay exact below 2**24 tokens a step.
        """
        if self.size == 1:
            return arrays, list(scalars)
        import mlx.core as mx

        names = list(arrays)
        parts = [mx.array(arrays[k]).astype(mx.float32).reshape(-1) for k in names]
        flat = mx.concatenate(parts + [mx.array(np.asarray(scalars, dtype=np.float32))])
        total = self._run(lambda: mx.distributed.all_sum(flat, group=self.group))
        out, offset = {}, 0
        for k, p in zip(names, parts):
            piece = total[offset : offset + p.size].reshape(arrays[k].shape)
            out[k] = np.array(piece).astype(arrays[k].dtype) if isinstance(arrays[k], np.ndarray) else piece.astype(arrays[k].dtype)
            offset += p.size
        return out, [float(x) for x in np.array(total[offset:])]

    def broadcast(self, blobs: dict[str, bytes]) -> dict[str, bytes]:
        """Rank 0's ``blobs`` on every rank (what the others pass is ignored).

        For what only rank 0 has on disk, e.g. the checkpoint a resumed run
        starts from, when the ranks do not share a file system.
        """
        if self.size == 1:
            return blobs
        import json

        import mlx.core as mx

        header = json.dumps({k: len(v) for k, v in blobs.items()}).encode() if self.main else b""
        payload = header + b"".join(blobs.values()) if self.main else b""
        sizes = np.array([len(header), len(payload)], dtype=np.int64)
        n_header, n_total = (int(x) for x in np.array(self._run(lambda: mx.distributed.all_sum(mx.array(sizes), group=self.group))))
        mine = np.frombuffer(payload, dtype=np.uint8) if self.main else np.zeros(n_total, dtype=np.uint8)
        data = np.array(self._run(lambda: mx.distributed.all_sum(mx.array(mine), group=self.group))).tobytes()
        out, offset = {}, n_header
        for name, length in json.loads(data[:n_header]).items():
            out[name] = data[offset : offset + length]
            offset += length
        return out

    def agree(self, facts: Mapping[str, str]) -> None:
        """Check that every rank has the same ``facts`` (name -> fingerprint); name the rank that differs.

        Each rank contributes a 16-byte digest per fact; all_gather gives every
        rank all of them, so every rank raises the same error and none waits
        for a peer that has given up.
        """
        if self.size == 1:
            return
        import mlx.core as mx

        names = sorted(facts)
        mine = np.frombuffer(b"".join(hashlib.sha256(facts[k].encode()).digest()[:16] for k in names), dtype=np.uint8)
        gathered = self._run(lambda: mx.distributed.all_gather(mx.array(mine), group=self.group))
        table = np.array(gathered).reshape(self.size, len(names), 16)
        for rank in range(1, self.size):
            differ = [k for i, k in enumerate(names) if not np.array_equal(table[rank, i], table[0, i])]
            if differ:
                raise DistributedError(
                    f"rank {rank} of {self.size} has a different {' and '.join(differ)} than rank 0 "
                    f"(this is rank {self.rank}): every process must train the same model, on the same data, with the same settings"
                )

    def _run(self, collective):
        import mlx.core as mx

        try:
            result = collective()
            mx.eval(result)
            return result
        except RuntimeError as e:
            _ignore_interrupts()  # the launcher interrupts the survivors next: that must not hide why this one stops
            raise DistributedError(
                f"rank {self.rank} of {self.size} lost touch with the other processes of the run ({e}): "
                "one of them failed or was stopped; its own output says why"
            ) from None


def _ignore_interrupts() -> None:
    """Ignore Ctrl-C and the launcher's SIGTERMs from now on in this process, which is about to end with an error."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def world_from_env(required: bool = False, env: Mapping[str, str] | None = None) -> World:
    """The world this process belongs to: the launched group, or a world of one.

    ``required`` (``--distributed``) makes a process that was not launched as
    one of several an error, rather than a run on one machine.
    """
    env = os.environ if env is None else env
    if not launched(env):
        if required:
            raise UsageError(
                "--distributed: this process was not started by mlx.launch; run e.g. "
                "mlx.launch -n 2 --backend ring -- mlxtune lora --distributed ... (see README: Training on several machines)"
            )
        return World()
    try:
        import mlx.core as mx
    except ImportError:
        raise UsageError("distributed training needs mlx (pip install 'mlx[cpu]' on Linux, mlx on macOS)") from None
    try:
        group = mx.distributed.init(strict=True)
    except RuntimeError as e:
        raise DistributedError(f"cannot join the other processes of the run ({e}): check the hostfile and that every host can reach the others") from None
    if group.size() == 1 and required:
        raise UsageError("--distributed: this process is the only one in its group; start several with mlx.launch -n N")
    kind = "mpi" if "OMPI_COMM_WORLD_RANK" in env or "PMI_RANK" in env else "ring"
    return World(group.rank(), group.size(), group, kind)


def fingerprint_files(paths: list[str | os.PathLike]) -> str:
    """A hash of the files' names and bytes (a model's weights and config)."""
    h = hashlib.sha256()
    for p in sorted(str(p) for p in paths):
        h.update(os.path.basename(p).encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def agree_on_run(world: World, model_dir: str | os.PathLike, settings: dict, backend: str, data_fingerprint: str) -> None:
    """All processes of a distributed run must train the same model on the same data with the same settings.

    ``settings``: the run's configuration; where each process finds its data
    and model, and which Hub commit, may differ between machines.
    """
    if world.size == 1:
        return
    import json

    model_files = [p for p in os.scandir(model_dir) if p.name.endswith(".safetensors") or p.name == "config.json"]
    same = {k: v for k, v in settings.items() if k not in ("data", "output", "model", "offline", "revision")}
    world.agree({
        "model": fingerprint_files([p.path for p in model_files]),
        "data": data_fingerprint,
        "settings": json.dumps(same, sort_keys=True) + backend,
    })
