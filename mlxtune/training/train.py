"""``mlxtune lora``: fine-tune a model with LoRA on a JSONL data set.

The run directory it writes:

    adapters.safetensors     latest adapter weights (mlx-lm format)
    adapter_config.json      mlx-lm's fields + the full resolved configuration,
                             the base model, backend, library versions and a
                             fingerprint of the encoded data
    checkpoints/step-NNNNNNN/  adapters, optimizer state and state.json (step,
                             batches drawn, best so far): all a resume needs;
                             the last few kept
    best/                    the adapters with the lowest validation loss
    metrics.jsonl            one line per step: loss, val loss, lr, tokens/s,
                             peak memory

Everything is validated (data, model, options, output directory) before the
directory is created, every file is written atomically and every checkpoint
renamed into place whole. Ctrl-C or SIGTERM finishes the step, saves a
checkpoint and stops; ``mlxtune lora --resume RUN`` goes on from the last
checkpoint as if the run had never stopped.

This module sets a run up (data, model, backend, memory plan, agreement of
the processes of a distributed run, the run directory) and hands it to
``loop.Run``, which trains.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from .. import __version__
from . import checkpoint
from ..formats.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, library_versions
from .checkpoint import OPTIMIZER, latest_checkpoint  # noqa: F401 (latest_checkpoint: part of this module's interface)
from .config import TrainConfig
from .distributed import agree_on_run
from ..errors import DataError, MlxtuneError, UsageError
from ..fsutil import atomic_write_text, check_output_dir
from .loop import Event, Run, TrainingInterrupted, TrainResult, learning_rate_at  # noqa: F401 (the same)
from .run_schema import BaseModel, DataInfo, Distributed, LoraParameters, RunConfig, RunSettings, StartRecord
from .runlock import LOCK_NAME, own_run_dir


def default_output(cfg: TrainConfig) -> Path:
    stem = Path(cfg.data).stem if cfg.data and Path(cfg.data).is_file() else Path(cfg.data or "run").name
    return Path("runs") / stem


@dataclass
class _Setup:
    """Everything a run needs before its directory exists (all of it validated)."""

    cfg: TrainConfig
    splits: object
    source: object
    model_dir: Path
    backend: str
    train_set: object  # data.examples.ExampleStore
    valid_set: object
    n_truncated: int
    mask_prompt: bool
    steps_per_epoch: int
    total: int
    start: object = None  # init_adapter.InitAdapter: the adapter a new run starts from (--init-adapter)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hash of the encoded data (tokens and masks): a resumed run must see the same. Computed once."""
        import hashlib

        h = hashlib.sha256()
        for examples in (self.train_set, self.valid_set):
            examples.update_hash(h)  # per example: length, tokens, mask (the bytes runs were always hashed by)
        return h.hexdigest()[:32]


def _prepare(cfg: TrainConfig, on_event: Callable[[Event], None], given: Mapping[str, str] | None = None, run_dir: Path | None = None) -> _Setup:
    """Read and check the data, find the model, choose the backend, encode: everything that can fail on bad input.

    ``given``: the settings the user set, which an --init-adapter's shape must not contradict.
    ``run_dir``: the run's directory, beside which its tokens are cached (``data.token_cache``).
    """
    from ..data.batching import batch_rows, epoch_steps
    from ..data.token_cache import encode_splits
    from ..data.records import load_data, trains_prompt_masked
    from ..models.source import open_model

    splits = load_data(cfg.data, valid_fraction=cfg.valid_fraction, seed=cfg.seed, skip_bad_lines=cfg.skip_bad_lines, fields=cfg.fields)
    for message in ([splits.note] if splits.note else []) + splits.skipped_notes():
        on_event(Event("note", {"message": message}))
    start = None
    if cfg.init_adapter:
        from .init_adapter import locate

        start = locate(cfg.init_adapter)
        cfg, note = start.default_model(cfg)
        if note:
            on_event(Event("note", {"message": note}))
    opened = open_model(cfg.model, revision=cfg.revision, offline=cfg.offline, on_note=lambda note: on_event(Event("note", {"message": note})))
    source, model_dir = opened.source, opened.path
    if start:
        cfg, notes = start.fit(cfg, source, model_dir, given)
        for note in notes:
            on_event(Event("note", {"message": note}))

    from ..backends import backend_for, choice_note
    from ..models.tokenizer import load_tokenizer

    backend = backend_for(cfg.backend, model_dir, mlx_only="DoRA" if cfg.dora else None)
    note = choice_note(cfg.backend, backend)
    if note:
        on_event(Event("note", {"message": note}))
    tokenizer = load_tokenizer(model_dir, thinking=cfg.thinking)
    mask_prompt = trains_prompt_masked(splits.format, cfg.mask_prompt)
    encoded = encode_splits(splits, tokenizer, mask_prompt, cfg, model_dir, run_dir, lambda message: on_event(Event("note", {"message": message})))
    (train_set, n_trunc), (valid_set, n_trunc_v) = (encoded.train, encoded.train_truncated), (encoded.valid, encoded.valid_truncated)
    n_truncated = n_trunc + n_trunc_v
    if not train_set:
        why = f"after truncation to --max-seq-len {cfg.max_seq_len} tokens nothing is left to learn from: raise --max-seq-len" if n_truncated else "no record has a token to learn from (are all completions empty?)"
        raise DataError(why, path=cfg.data)
    from ..data.check import check_splits

    # mlxtune data check's findings (truncation, duplicates, train/valid/test overlap), from what is already encoded
    report = check_splits(splits, cfg.max_seq_len, mask_prompt, {"train": (train_set, n_trunc), "valid": (valid_set, n_trunc_v)})
    for warning in report.warnings:
        on_event(Event("note", {"message": warning}))

    steps_per_epoch = epoch_steps(batch_rows(train_set, cfg.max_seq_len if cfg.pack else None), cfg.batch_size * cfg.grad_accumulation)
    if cfg.iters is not None:
        total = int(cfg.iters)
    else:
        total = max(1, math.ceil((cfg.epochs if cfg.epochs is not None else 1.0) * steps_per_epoch))
    return _Setup(cfg, splits, source, model_dir, backend, train_set, valid_set, n_truncated, mask_prompt, steps_per_epoch, total, start)


def train(
    cfg: TrainConfig, on_event: Callable[[Event], None] = lambda e: None, force: bool = False,
    given: Mapping[str, str] | None = None, hold: contextlib.ExitStack | None = None,
) -> TrainResult:
    """Run a LoRA fine-tune as ``cfg`` says, reporting progress through ``on_event``.

    ``given`` names the settings the user set, each with where (a flag, the
    -c file, the recipe): with ``cfg.init_adapter`` those must agree with the
    adapter's shape, and a refusal says where to change them.
    The run directory is locked for this process (``own_run_dir``) from the
    start, before the data is read, to the end; given ``hold``, until
    ``hold`` closes (the CLI writes the report under it).
    """
    if cfg.data is None:
        raise UsageError("no data: pass --data FILE.jsonl or a directory with train.jsonl")
    from .distributed import world_from_env

    world = world_from_env(required=cfg.distributed)
    on_event = on_event if world.main else _silent
    run_dir = Path(cfg.output) if cfg.output else default_output(cfg)
    with own_run_dir(run_dir, world.main, _notes(on_event), hold):
        if world.main:  # only rank 0 writes the run directory
            check_output_dir(run_dir, force, what="run", ignore=(LOCK_NAME,))
        return _train(cfg, on_event, force, world, run_dir, given)


def _train(cfg: TrainConfig, on_event: Callable[[Event], None], force: bool, world, run_dir: Path, given: Mapping[str, str] | None) -> TrainResult:
    setup = _prepare(cfg, on_event, given, run_dir)
    if setup.start is not None and setup.start.within(run_dir):
        raise UsageError(f"--init-adapter {cfg.init_adapter} is inside {run_dir}, the directory this run writes: give the new run another one (-o)")
    cfg = setup.cfg = _plan_memory(setup, on_event, world)
    agree_on_run(world, setup.model_dir, setup.cfg.to_dict(), setup.backend, setup.fingerprint)  # after the plan: the micro-batch it chose is part of what must agree

    from ..backends import open_trainer

    trainer = open_trainer(setup.backend, setup.model_dir, cfg)
    if setup.start is not None:
        setup.start.load_into(trainer)
        on_event(Event("init_adapter", {"message": setup.start.describe(), **setup.start.record()}))
    source, splits = setup.source, setup.splits
    ad_config = RunConfig(
        fine_tune_type="dora" if cfg.dora else "lora", num_layers=trainer.num_layers,
        lora_parameters=LoraParameters(rank=cfg.rank, scale=cfg.scale, dropout=cfg.dropout, keys=list(trainer.keys)),
        mlxtune_version=__version__,
        base_model=BaseModel(spec=source.spec, kind=source.kind, path=str(source.path), repo_id=source.repo_id, revision=source.revision, mlx_dir=str(setup.model_dir),
                             signature=checkpoint.model_signature(setup.model_dir), weights_sample=checkpoint.weights_sample(setup.model_dir)),
        backend=setup.backend,
        compute=trainer.description,
        versions=library_versions(),
        config=RunSettings.from_dict(cfg.to_dict() | {"output": str(run_dir), "backend": setup.backend, "scale": cfg.scale, "mask_prompt": setup.mask_prompt, "iters": setup.total}),
        data=DataInfo(description=splits.description, path=str(Path(cfg.data).resolve()), format=splits.format.name, train=len(setup.train_set), valid=len(setup.valid_set), truncated=setup.n_truncated, fingerprint=setup.fingerprint),
        init_adapter=StartRecord.from_dict(setup.start.record()) if setup.start is not None else None,
        distributed=Distributed(processes=world.size, backend=world.backend) if world.size > 1 else None,
    )
    if world.main:  # ---- from here on, the run directory exists
        if force:  # what was there goes; the lock this process holds stays
            for old in (p for p in run_dir.iterdir() if p.name != LOCK_NAME):
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old)
                else:
                    old.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / ADAPTER_CONFIG, ad_config.write_text())
    return Run(setup, trainer, run_dir, ad_config, on_event, world=world).go()


def _plan_memory(setup: _Setup, on_event: Callable[[Event], None], world) -> TrainConfig:
    """Estimate the run's peak memory against what the machine has; with --auto, change what must change to fit.

    The micro-batch, accumulation and checkpointing may change, the effective
    batch (and so the steps) never. A resumed run does not come here: other
    micro-batches would be other batches. Distributed, each process plans for
    its share of the batch on its own machine (``agree_on_run`` then checks that
    all chose alike).
    """
    import dataclasses

    from .plan import plan_run

    cfg = setup.cfg
    share = dataclasses.replace(cfg, batch_size=math.ceil(cfg.batch_size / world.size))
    train, valid = setup.train_set.lengths.tolist(), setup.valid_set.lengths.tolist()
    memory = plan_run(share, setup.model_dir, setup.backend, *((train + valid, []) if cfg.val_every > 0 else (train, valid)))  # --val-every 0: valid never goes through the model
    on_event(Event("plan", {"lines": memory.lines(table=False), "plan": memory.to_dict()}))
    memory.check()  # nothing fits: an error before the run directory exists
    planned = memory.apply(share)
    if planned.batch_size != share.batch_size:
        cfg = dataclasses.replace(cfg, batch_size=planned.batch_size * world.size, grad_accumulation=planned.grad_accumulation)
    return dataclasses.replace(cfg, grad_checkpoint=planned.grad_checkpoint)


def _notes(on_event: Callable[[Event], None]) -> Callable[[str], None]:
    """What the run-directory lock says, as the run's notes."""
    return lambda message: on_event(Event("note", {"message": message}))


def _silent(event: Event) -> None:
    """What ranks other than 0 print: nothing (their errors still reach the CLI)."""


def resume(
    run_dir: str | Path, on_event: Callable[[Event], None] = lambda e: None,
    iters: int | None = None, epochs: float | None = None, hold: contextlib.ExitStack | None = None,
) -> TrainResult:
    """Continue a run from its last checkpoint, with the settings it was started with.

    The checkpoint holds the adapters, the optimizer's moments and step, and
    where the run was (step, batches drawn, best validation loss so far); the
    learning rate and the dropout masks are functions of the step. So the
    resumed run takes the same steps, on the same batches, as one never
    stopped. The run directory is locked as ``train`` locks it.

    ``iters`` or ``epochs`` give a new total, counted from the run's start:
    the run, finished or not, goes on to it (``schedule.Schedule.extended``
    says what the learning rate does then).
    """
    from .config import validate
    from .distributed import world_from_env

    run_dir = Path(run_dir)
    extend = iters is not None or epochs is not None
    if extend:
        validate({"iters": iters, "epochs": epochs}, "--resume")  # positive, and not both
    world = world_from_env()
    with own_run_dir(run_dir, world.main, _notes(on_event), hold, create=False):
        return _resume(run_dir, on_event, world, iters, epochs)


def _resume(run_dir: Path, on_event: Callable[[Event], None], world, iters: int | None, epochs: float | None) -> TrainResult:
    extend = iters is not None or epochs is not None
    from ..backends import open_trainer
    from ..formats import safetensors as npio

    if world.size == 1:
        files = checkpoint.read_for_resume(run_dir, extend)
    else:  # rank 0 reads the checkpoint and sends it: the ranks need not share a file system
        try:
            files = checkpoint.read_for_resume(run_dir, extend) if world.main else {}
        except MlxtuneError as e:
            files = {"error": str(e).encode()}
        files = world.broadcast(files)
        if "error" in files:
            raise UsageError(files["error"].decode())
    ad_config, state = RunConfig.from_dict(json.loads(files["config"])), json.loads(files["state"])
    fields = {f for f in TrainConfig.__dataclass_fields__}
    base = ad_config.base_model or BaseModel()
    cfg = TrainConfig(**{k: v for k, v in ad_config.settings.to_dict().items() if k in fields} | {"epochs": None, "iters": state["total"], "init_adapter": None})
    if extend:
        cfg.iters, cfg.epochs = iters, epochs
    cfg.revision = cfg.revision or base.revision  # the commit trained on, not the Hub's latest
    data_path = ad_config.data.path if ad_config.data else None
    if data_path and not Path(cfg.data).exists():
        cfg.data = data_path  # resumed from another working directory
    on_event = on_event if world.main else _silent
    setup = _prepare(cfg, on_event, run_dir=run_dir)
    agree_on_run(world, setup.model_dir, setup.cfg.to_dict(), setup.backend, setup.fingerprint)
    if setup.fingerprint != state.get("data_fingerprint"):
        raise DataError("the data (or the tokenizer, or --max-seq-len) changed since the run started, so its batches cannot be replayed: resume with the same data, or start a new run", path=cfg.data)
    if base.signature and checkpoint.model_signature(setup.model_dir) != base.signature:
        raise UsageError(f"the base model {setup.source.spec} is not the one the run started on (its files in {setup.model_dir} differ): resume with the same model")
    if setup.backend != state.get("backend"):
        raise UsageError(f"the run was trained with the {state.get('backend')} backend, which is not available here (this machine would use {setup.backend})")
    if extend:
        state, ad_config = checkpoint.extend_to(run_dir, setup.cfg, setup.total, state, ad_config, epochs, write=world.main)
    trainer = open_trainer(setup.backend, setup.model_dir, cfg)
    ckpt = run_dir / "checkpoints" / f"step-{state['step']:07d}"
    weights, _ = npio.read_safetensors(ckpt / ADAPTER_WEIGHTS, data=files["adapters"])
    opt_state, _ = npio.read_safetensors(ckpt / OPTIMIZER, data=files["optimizer"])
    trainer.load_state(weights, opt_state)
    return Run(setup, trainer, run_dir, ad_config, on_event, state, world).go()
