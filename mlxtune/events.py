"""Progress events: what training reports to the CLI, one typed payload per kind.

The training loop (``loop.py``, ``train.py``) sends ``Event``s; the CLI's
printer (``cli.printer.TrainPrinter``) renders them, or writes each as one JSON
line with ``--json`` (``{"event": kind, ...data}``, the payload's keys in the
order given here). The payloads stay plain dicts at run time, so that the JSON
is the dict as sent; their keys and types are declared once, as a TypedDict
per kind, so that the sender and the printer agree by type (``Event``'s
overloads tie each kind to its payload) and a test checks every event a run
sends against them (``payload_problems``).
"""

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args, overload

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # typing's TypedDict knows NotRequired from 3.11 (typing_extensions comes with huggingface-hub)
    from typing_extensions import NotRequired, TypedDict

EventKind = Literal["plan", "init_adapter", "note", "start", "resume", "validate", "val", "step", "save", "early_stop", "done"]


class PlanData(TypedDict):
    """The memory plan, before the run directory exists (``plan.plan_run``)."""

    lines: list[str]  # for people
    plan: dict[str, Any]  # MemoryPlan.to_dict(): verdict, settings, estimates


class NoteData(TypedDict):
    """A warning or a remark; printed on stderr, kept with --quiet."""

    message: str


class InitAdapterData(TypedDict):
    """The adapter a run starts from (--init-adapter): a line for people, then ``InitAdapter.record()``."""

    message: str
    path: str
    kind: str
    step: int | None
    val_loss: float | None
    sha256: str
    base_model: dict[str, Any]
    rank: int
    scale: float
    num_layers: int
    keys: list[str]
    fine_tune_type: str


class ValidationPlan(TypedDict):
    """What each validation of a run covers (``Run.validation_plan()``): ``batches`` of ``of_batches``, every ``every`` steps."""

    batches: int
    of_batches: int
    examples: int
    of_examples: int
    every: int


class StartData(TypedDict):
    """What a run trains, on what, for how long (``Run.go``)."""

    run_dir: str
    data: str
    model: str
    compute: str
    backend: str
    trainable: int
    layers: int
    keys: list[str]
    steps: int
    steps_per_epoch: int
    train_examples: int
    valid_examples: int
    batch_size: int
    grad_accumulation: int
    grad_checkpoint: bool | None
    processes: int
    validation: ValidationPlan | None  # None: no validations


class ResumeData(StartData):
    """A start, from a checkpoint: its step, and what an extension changes."""

    step: int
    checkpoint: str
    extended: NotRequired[bool]  # a finished run going on to a new total
    schedule_change: NotRequired[str]


class ValidateData(TypedDict):
    """A validation's progress: before its first batch and after each."""

    step: int
    batch: int
    batches: int
    elapsed: float


class ValData(TypedDict):
    """The validation loss before training."""

    step: int
    val_loss: float | None


class StepData(TypedDict):
    """One optimizer step (also the line of metrics.jsonl, without ``total``)."""

    step: int
    loss: float
    lr: float
    tokens_per_sec: float
    processed_tokens_per_sec: float
    trained_tokens: int
    peak_memory_bytes: int
    elapsed: float
    eta: float
    val_loss: NotRequired[float | None]  # validated after this step
    best: NotRequired[bool]  # ... with a new best validation loss
    total: int


class SaveData(TypedDict):
    step: int
    path: str  # the checkpoint written


class EarlyStopData(TypedDict):
    step: int
    patience: int
    best_step: int | None
    best_val_loss: float | None


class DoneData(TypedDict):
    result: Any  # loop.TrainResult (not imported: loop imports this module); --json spreads its fields into the line


PAYLOADS: dict[str, Any] = {  # kind -> its TypedDict class (which has no static type of its own)
    "plan": PlanData, "init_adapter": InitAdapterData, "note": NoteData, "start": StartData, "resume": ResumeData, "validate": ValidateData,
    "val": ValData, "step": StepData, "save": SaveData, "early_stop": EarlyStopData, "done": DoneData,
}
assert set(PAYLOADS) == set(get_args(EventKind))


class EventHandlers(TypedDict):
    """A consumer's handler for each kind, taking that kind's payload: its table, checked by a type checker.

    A consumer builds one (``cli.printer.TrainPrinter``), so that a type checker
    holds each handler to its kind's payload and to every kind; a kind a
    consumer renders generically maps to its generic handler.
    """

    plan: Callable[[PlanData], None]
    init_adapter: Callable[[InitAdapterData], None]
    note: Callable[[NoteData], None]
    start: Callable[[StartData], None]
    resume: Callable[[ResumeData], None]
    validate: Callable[[ValidateData], None]
    val: Callable[[ValData], None]
    step: Callable[[StepData], None]
    save: Callable[[SaveData], None]
    early_stop: Callable[[EarlyStopData], None]
    done: Callable[[DoneData], None]


assert set(EventHandlers.__annotations__) == set(PAYLOADS)


@dataclass
class Event:
    """A progress report for the CLI: its ``kind`` and the payload of that kind (see ``PAYLOADS``).

    ``validate`` reports a validation's progress: before its first batch and
    after each (``batch`` of ``batches`` done, ``elapsed`` seconds). A printer
    meets kinds or shapes it does not know with a generic line, never an error.
    """

    kind: str
    data: dict = field(default_factory=dict)

    if TYPE_CHECKING:  # each kind with its payload, for a type checker; one dataclass at run time
        @overload
        def __init__(self, kind: Literal["plan"], data: PlanData) -> None: ...
        @overload
        def __init__(self, kind: Literal["init_adapter"], data: InitAdapterData) -> None: ...
        @overload
        def __init__(self, kind: Literal["note"], data: NoteData) -> None: ...
        @overload
        def __init__(self, kind: Literal["start"], data: StartData) -> None: ...
        @overload
        def __init__(self, kind: Literal["resume"], data: ResumeData) -> None: ...
        @overload
        def __init__(self, kind: Literal["validate"], data: ValidateData) -> None: ...
        @overload
        def __init__(self, kind: Literal["val"], data: ValData) -> None: ...
        @overload
        def __init__(self, kind: Literal["step"], data: StepData) -> None: ...
        @overload
        def __init__(self, kind: Literal["save"], data: SaveData) -> None: ...
        @overload
        def __init__(self, kind: Literal["early_stop"], data: EarlyStopData) -> None: ...
        @overload
        def __init__(self, kind: Literal["done"], data: DoneData) -> None: ...
        @overload
        def __init__(self, kind: str, data: dict | None = None) -> None: ...
        def __init__(self, kind: str, data: Mapping[str, Any] | None = None) -> None: ...  # a TypedDict is a Mapping, not a dict


def payload_problems(event: Event) -> list[str]:
    """How ``event``'s payload differs from its kind's declaration: unknown kind, keys missing, keys not declared, order."""
    payload = PAYLOADS.get(event.kind)
    if payload is None:
        return [f"{event.kind}: not a kind of event"]
    required, optional = set(payload.__required_keys__), set(payload.__optional_keys__)
    keys = list(event.data)
    problems = [f"{event.kind}: no {k}" for k in sorted(required - set(keys))]
    problems += [f"{event.kind}: {k} is not declared" for k in keys if k not in required | optional]
    declared = [k for k in payload.__annotations__ if k in keys]
    if not problems and keys != declared:
        problems.append(f"{event.kind}: keys in the order {keys}, declared {declared}")
    return problems
