"""Export formats register themselves: export() dispatches by the registry, and the CLI's choices come from it."""

from pathlib import Path

import pytest

from mlxtune import export as export_mod
from mlxtune.cli.models import export as export_command
from mlxtune.errors import UsageError


def test_the_cli_offers_exactly_the_registered_formats():
    option = next(p for p in export_command.params if p.name == "fmt")
    assert list(option.type.choices) == list(export_mod.TARGETS) == ["gguf", "gguf-lora", "hf", "peft", "lmstudio"]
    for t in export_mod.TARGETS.values():
        assert f"{t.name}: {t.help}" in option.help


def test_a_registered_format_is_exported_through_export(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "TARGETS", dict(export_mod.TARGETS))
    seen = []

    @export_mod.target("toy", "a format of this test", exports="adapter")
    def _toy(req):
        seen.append(req)
        req.output.write_text("toy")
        return export_mod.Exported("toy", req.output, 3, "a toy file", name=req.name or "x")

    r = export_mod.export("toy", tmp_path / "out.toy", adapter=tmp_path, name="mine")
    assert (r.path, r.name, (tmp_path / "out.toy").read_text()) == (tmp_path / "out.toy", "mine", "toy")
    assert seen[0].adapter == tmp_path and seen[0].into_dir is False
    with pytest.raises(UsageError, match="--format toy exports an adapter: pass --adapter RUN"):
        export_mod.export("toy", tmp_path / "o", model="m")
    with pytest.raises(UsageError, match=r"--format must be one of gguf, gguf-lora, hf, peft, lmstudio, toy, not 'nope'"):
        export_mod.export("nope", Path("o"))
