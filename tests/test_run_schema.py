"""The run directory's adapter_config.json, typed (mlxtune/training/run_schema.py).

What mlxtune writes reads back into typed records and is written again byte
for byte; files of older versions, of mlx-lm or converted from PEFT read too,
keeping what this version does not know.
"""

import dataclasses
import json

import pytest

from mlxtune.training.config import TrainConfig
from mlxtune.errors import AdapterError
from mlxtune.training.run_schema import BaseModel, Best, RunConfig, RunSettings
from mlxtune.training.train import resume, train


def test_the_settings_record_has_every_train_config_field_in_order():
    names = [f.name for f in dataclasses.fields(RunSettings) if f.name not in ("extra", "key_order")]
    assert names == [f.name for f in dataclasses.fields(TrainConfig)] + ["scale"]


def test_what_a_run_writes_reads_back_typed_and_is_rewritten_byte_for_byte(tiny_model, small_data, tmp_path):
    run = tmp_path / "run"
    base = dict(model=str(tiny_model), data=str(small_data), iters=4, batch_size=2, val_every=2, save_every=2, max_seq_len=256, backend="numpy")
    train(TrainConfig(**base, output=str(run)))
    resume(run, iters=6)
    for path in (run / "adapter_config.json", run / "best" / "adapter_config.json"):
        text = path.read_text()
        assert RunConfig.from_dict(json.loads(text)).write_text() == text
    rc = RunConfig.from_file(run)
    assert (rc.fine_tune_type, rc.num_layers, rc.lora_parameters.rank, rc.lora_parameters.scale) == ("lora", 2, 8, 2.0)
    assert rc.settings.iters == 6 and rc.schedule == [[0, 4], [4, 6]] and rc.best is None
    assert isinstance(rc.base_model, BaseModel) and rc.base_model.path == str(tiny_model) and rc.backend == "numpy"
    assert rc.data_path == small_data.resolve() and rc.data.train + rc.data.valid == 24
    best = RunConfig.from_file(run / "best")
    assert isinstance(best.best, Best) and best.best.step in (2, 4, 6)


def test_an_older_file_reads_with_defaults_and_keeps_unknown_keys_in_place():
    old = {"fine_tune_type": "lora", "num_layers": 4, "lora_parameters": {"rank": 4, "scale": 2, "dropout": 0, "keys": [], "future": 1},
           "someday": {"x": 1}, "config": {"seed": 3, "data": "d.jsonl"}}
    rc = RunConfig.from_dict(old)
    assert rc.base_model is None and rc.data is None and rc.settings.max_seq_len is None and rc.settings.seed == 3
    assert rc.data_path is not None and rc.data_path.name == "d.jsonl"
    assert list(rc.to_dict()) == list(old) and json.dumps(rc.to_dict()) == json.dumps(old)  # 2 stays 2
    extended = rc.updated(config=rc.settings.updated(iters=9, epochs=None), schedule=[[0, 4], [4, 9]])
    assert json.dumps(extended.to_dict()) == json.dumps(old | {"config": old["config"] | {"iters": 9, "epochs": None}, "schedule": [[0, 4], [4, 9]]})


def test_an_mlx_lm_adapter_config_reads_and_keeps_its_own_data_and_config():
    mlx_lm = {"model": "m", "data": "data/", "config": None, "num_layers": 16, "lora_parameters": {"rank": 8, "scale": 20.0, "dropout": 0.0}, "fine_tune_type": "lora"}
    rc = RunConfig.from_dict(mlx_lm)
    assert rc.data is None and rc.config is None and rc.data_path is None and rc.lora_parameters.keys is None
    assert json.dumps(rc.to_dict()) == json.dumps(mlx_lm)


def test_a_directory_without_a_config_is_refused_saying_what_to_pass(tmp_path):
    with pytest.raises(AdapterError, match="pass the run directory that 'mlxtune lora' wrote"):
        RunConfig.from_file(tmp_path)
