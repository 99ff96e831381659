"""The run directory's ``adapter_config.json``, typed: what mlxtune writes there and reads back.

mlx-lm reads three fields of it (``fine_tune_type``, ``num_layers``,
``lora_parameters``); mlxtune adds its own beside them (the base model, the
resolved settings, the data, the backend, the library versions, where a run
started from, its learning-rate cycles, its best step). One dataclass per
section says which keys exist and what they hold, so that the commands that
read a run (report, eval, fuse, export, resume, ``--init-adapter``) agree by
type rather than by ``.get("config", {}).get(...)`` chains.

Files written by older versions, by mlx-lm or converted from PEFT have fewer
(or other) keys: an absent field reads as None, and keys this module does not
know are kept, in their place. ``to_dict()`` gives back the keys in the order
the file had them (or, for a record built here, in the order declared below),
so a run's config is rewritten byte for byte as ``json.dumps(..., indent=2)``
of the dict it replaced. Values are stored as read, never coerced (a ``2``
stays ``2``, not ``2.0``). Records are frozen: change one with ``updated()``,
which keeps the key order as ``dict | {...}`` does.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ..formats.adapters import read_adapter_config
from .config import TrainConfig

_R = TypeVar("_R", bound="_Record")


@dataclass(frozen=True)
class _Record:
    """A JSON object with typed fields, its unknown keys (``extra``) and its key order (``key_order``; None: built here)."""

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False)
    key_order: tuple[str, ...] | None = field(default=None, kw_only=True, repr=False)

    _nested: ClassVar[dict[str, type[_Record]]] = {}  # fields that hold a record of their own
    _omit_none: ClassVar[frozenset[str]] = frozenset()  # fields a record built here leaves out while None

    @classmethod
    def _names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("extra", "key_order")]

    @classmethod
    def from_dict(cls: type[_R], data: dict[str, Any]) -> _R:
        """The record of a JSON object as read: absent fields None, unknown keys kept, order kept.

        A field that should hold an object but holds something else (mlx-lm's
        own ``data`` is a path, its ``config`` a file name) reads as None and
        its value is kept as it was.
        """
        names, values, extra = set(cls._names()), {}, {}
        for key, value in data.items():
            if key not in names:
                extra[key] = value
            elif key in cls._nested:
                if isinstance(value, dict):
                    values[key] = cls._nested[key].from_dict(value)
                else:
                    extra[key] = value  # not ours: kept as is
            else:
                values[key] = value
        return cls(**values, extra=extra, key_order=tuple(data))

    def _order(self) -> list[str]:
        if self.key_order is not None:
            return list(self.key_order)
        return [n for n in self._names() if not (n in self._omit_none and getattr(self, n) is None)] + [k for k in self.extra if k not in self._names()]

    def present(self) -> tuple[str, ...]:
        """The keys the object has (a field read as None may have been written as null, or not at all)."""
        return tuple(self._order())

    def __bool__(self) -> bool:
        """False for an empty object, as its dict was (``if run.base_model:``)."""
        return bool(self._order())

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, its keys in the order read (or declared), unknown ones included."""
        out: dict[str, Any] = {}
        for key in self._order():
            if key in self.extra:
                out[key] = self.extra[key]
            else:
                value = getattr(self, key)
                out[key] = value.to_dict() if isinstance(value, _Record) else value
        return out

    def updated(self: _R, **changes: Any) -> _R:
        """A copy with ``changes``; a key new to the record goes last, as with ``dict | {...}``."""
        order = self._order()
        extra = {k: v for k, v in self.extra.items() if k not in changes}
        return dataclasses.replace(self, **changes, extra=extra, key_order=tuple(order + [k for k in changes if k not in order]))


@dataclass(frozen=True)
class LoraParameters(_Record):
    """mlx-lm's ``lora_parameters``: the adapters' rank, scale, dropout and the layer keys adapted (empty: all linear)."""

    rank: int | None = None
    scale: float | None = None
    dropout: float | None = None
    keys: list[str] | None = None


@dataclass(frozen=True)
class BaseModel(_Record):
    """The model a run trained on: how it was given (``spec``, ``kind``), where it was, and how to know it again."""

    spec: str | None = None
    kind: str | None = None  # hub, dir, gguf, cache
    path: str | None = None
    repo_id: str | None = None
    revision: str | None = None  # the commit trained on
    mlx_dir: str | None = None  # the converted model directory used
    signature: str | None = None  # checkpoint.model_signature: resume refuses another model
    weights_sample: Any = None


@dataclass(frozen=True)
class DataInfo(_Record):
    """The data a run trained on, as it resolved it."""

    description: str | None = None
    path: str | None = None
    format: str | None = None
    train: int | None = None
    valid: int | None = None
    truncated: int | None = None
    fingerprint: str | None = None


def _every_train_config_field(cls: type) -> type:
    """Give ``cls`` every ``TrainConfig`` field, in its order and before ``cls``'s own, typed Optional with default None.

    Applied before ``@dataclass``, so the record has one field per setting a run
    can have without a second list to keep in step with ``TrainConfig``.
    """
    own = dict(cls.__dict__.get("__annotations__", {}))
    derived: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        kind = str(f.type)  # a string: training/config.py has ``from __future__ import annotations``
        derived[f.name] = kind if kind.endswith("| None") else f"{kind} | None"
        setattr(cls, f.name, None)
    cls.__annotations__ = derived | own
    return cls


@dataclass(frozen=True)
@_every_train_config_field
class RunSettings(_Record):
    """``config``: the run's resolved settings, every ``TrainConfig`` field plus ``scale``.

    Built from ``TrainConfig`` (``_every_train_config_field``): its fields in its
    declaration order (model, revision, data, ... objective), each ``T | None``
    with default None (runs before a field existed lack it), then ``scale``.
    Type checkers see the fields through ``__getattr__`` below, as ``Any``.
    """

    scale: float | None = None  # alpha / rank, as trained

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...


@dataclass(frozen=True)
class StartRecord(_Record):
    """``init_adapter``: the adapter a run started from (``init_adapter.InitAdapter.record``)."""

    path: str | None = None
    kind: str | None = None  # run, best, checkpoint, mlx-lm or peft
    step: int | None = None
    val_loss: float | None = None
    sha256: str | None = None
    base_model: BaseModel | None = None
    rank: int | None = None
    scale: float | None = None
    num_layers: int | None = None
    keys: list[str] | None = None
    fine_tune_type: str | None = None

    _nested: ClassVar[dict[str, type[_Record]]] = {"base_model": BaseModel}


@dataclass(frozen=True)
class Distributed(_Record):
    processes: int | None = None
    backend: str | None = None


@dataclass(frozen=True)
class Best(_Record):
    """What ``best/adapter_config.json`` adds: the step of the lowest validation loss."""

    step: int | None = None
    val_loss: float | None = None


@dataclass(frozen=True)
class RunConfig(_Record):
    """A run directory's ``adapter_config.json``: mlx-lm's fields, then mlxtune's."""

    fine_tune_type: str = "lora"  # lora or dora
    num_layers: int = 0  # the number of final blocks adapted
    lora_parameters: LoraParameters = field(default_factory=LoraParameters)
    model: str | None = None  # the base model, as mlx-lm records it (mlxtune writes base_model)
    mlxtune_version: str | None = None
    base_model: BaseModel | None = None
    backend: str | None = None
    compute: str | None = None
    versions: dict[str, str] | None = None  # adapters.library_versions
    config: RunSettings | None = None
    data: DataInfo | None = None
    init_adapter: StartRecord | None = None
    distributed: Distributed | None = None
    schedule: list[list[int]] | None = None  # learning-rate cycles, once extended (schedule.extend_state)
    best: Best | None = None
    source: dict[str, Any] | None = None  # what an adapter converted from PEFT came from

    _nested: ClassVar[dict[str, type[_Record]]] = {
        "lora_parameters": LoraParameters, "base_model": BaseModel, "config": RunSettings, "data": DataInfo, "init_adapter": StartRecord, "distributed": Distributed, "best": Best,
    }
    _omit_none: ClassVar[frozenset[str]] = frozenset({
        "model", "mlxtune_version", "base_model", "backend", "compute", "versions", "config", "data", "init_adapter", "distributed", "schedule", "best", "source",
    })

    @property
    def dora(self) -> bool:
        return self.fine_tune_type == "dora"

    @property
    def thinking(self) -> bool:
        """Whether the run rendered its chats with thinking on (``lora --thinking``); False for adapters mlxtune did not train."""
        return bool(self.settings.thinking)

    @property
    def settings(self) -> RunSettings:
        """The run's settings; empty (all None) for an adapter mlxtune did not train."""
        return self.config or RunSettings()

    @property
    def data_path(self) -> Path | None:
        """The data the run trained on, as it resolved it (eval may run from another directory), or None."""
        path = (self.data.path if self.data else None) or self.settings.data
        return Path(path) if path else None

    @classmethod
    def from_file(cls, directory: str | Path) -> RunConfig:
        """The ``adapter_config.json`` of ``directory``: AdapterError (saying what to pass) if there is none or it is not valid."""
        return cls.from_dict(read_adapter_config(Path(directory)))

    def write_text(self) -> str:
        """The file's text, as mlxtune has always written it."""
        return json.dumps(self.to_dict(), indent=2)


__all__ = ["BaseModel", "Best", "DataInfo", "Distributed", "LoraParameters", "RunConfig", "RunSettings", "StartRecord"]
