"""Progress events: every event a run sends has the payload its kind declares (mlxtune/events.py).

The printer and ``--json`` rely on these keys; a key renamed or added on one
side only shows here, not as a printer's fallback line in front of a user.
"""

import dataclasses

from mlxtune.training.config import TrainConfig
from mlxtune.events import PAYLOADS, Event, payload_problems
from mlxtune.training.train import resume, train


def test_every_event_of_a_run_an_extension_and_a_start_from_an_adapter_has_its_declared_payload(tiny_model, small_data, tmp_path):
    events: list[Event] = []
    base = TrainConfig(model=str(tiny_model), data=str(small_data), iters=4, batch_size=2, val_every=2, save_every=2, max_seq_len=256, backend="numpy")
    train(dataclasses.replace(base, output=str(tmp_path / "a")), on_event=events.append)
    resume(tmp_path / "a", on_event=events.append, iters=6)
    train(dataclasses.replace(base, output=str(tmp_path / "b"), init_adapter=str(tmp_path / "a" / "best"), early_stop=1, val_every=1), on_event=events.append)
    train(dataclasses.replace(base, output=str(tmp_path / "c"), val_every=0), on_event=events.append)
    assert [p for e in events for p in payload_problems(e)] == []
    assert {"plan", "init_adapter", "start", "resume", "validate", "val", "step", "save", "done"} <= {e.kind for e in events}
    steps = [e.data for e in events if e.kind == "step"]
    assert any("val_loss" in d for d in steps) and any("val_loss" not in d for d in steps)


def test_a_payload_otherwise_shaped_is_named():
    assert payload_problems(Event("start", {"step": 1}))[:2] == ["start: no backend", "start: no batch_size"]
    assert payload_problems(Event("save", {"path": "p", "step": 1})) == ["save: keys in the order ['path', 'step'], declared ['step', 'path']"]
    assert payload_problems(Event("pruned", {})) == ["pruned: not a kind of event"]
    assert payload_problems(Event("note", {"message": "m", "extra": 1})) == ["note: extra is not declared"]
    assert set(PAYLOADS) >= {"step", "done", "note"}
