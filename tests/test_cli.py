"""The command line: exit codes, one-line errors, nothing half-written, fast help."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlxtune.cli import cli

from gguf_fixtures import write_tiny_gguf

NOTES = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"
CHAT_LINE = NOTES.read_text().splitlines()[0]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("cmd", [[], ["download"], ["convert"], ["lora"], ["fuse"], ["generate"], ["export"], ["eval"], ["recipes"]])
def test_help_is_fast_and_has_an_example(cmd):
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mlxtune", *cmd, "--help"], capture_output=True, text=True, check=True)
    assert time.perf_counter() - t < 5
    assert "mlxtune" in out.stdout and ("Example" in out.stdout or not cmd)
    # no heavy imports on the help path
    probe = subprocess.run([sys.executable, "-c", "import sys; from mlxtune.cli import cli; print('mlx.core' in sys.modules, 'mlx_lm' in sys.modules)"], capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "False False"


def _bad_data_cases(tmp: Path) -> dict[str, tuple[Path, list[str]]]:
    cases = {}

    def write(name, content, expected):
        p = tmp / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        cases[name] = (p, expected)

    good = CHAT_LINE + "\n"
    write("malformed.jsonl", good + '{"messages": [}\n', ["malformed.jsonl:2", "JSON"])
    write("unknown.jsonl", good + '{"question": "hi"}\n', ["unknown.jsonl:2"])
    write("wrongtype.jsonl", '{"prompt": "a", "completion": 5}\n', ["wrongtype.jsonl:1", "completion"])
    write("mixed.jsonl", good + '{"text": "hello"}\n', ["mixed.jsonl:2", "format"])
    write("empty.jsonl", "", ["empty.jsonl", "empty"])
    write("binary.jsonl", bytes(range(256)) * 4, ["binary.jsonl"])
    return cases


def test_bad_data_is_one_line_error_and_leaves_nothing(tiny_model, tmp_path):
    for name, (path, expected) in _bad_data_cases(tmp_path).items():
        out = tmp_path / f"run-{name}"
        before = _listing(tmp_path)
        r = run("lora", "--data", path, "--model", tiny_model, "-o", out, "--iters", 1)
        assert r.exit_code == 1, (name, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (name, r.output)
        for word in expected:
            assert word.lower() in lines[0].lower(), (name, lines[0])
        assert _listing(tmp_path) == before, name


def test_missing_model_path(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(CHAT_LINE + "\n" + CHAT_LINE + "\n")
    for cmd in (["lora", "--data", data, "--model", tmp_path / "no-such-model", "-o", tmp_path / "run"], ["convert", tmp_path / "no-such-model", "-o", tmp_path / "out"]):
        r = run(*cmd)
        assert r.exit_code == 1 and "no-such-model" in r.output and r.output.startswith("Error: ")
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


def test_truncated_and_unsupported_gguf(tmp_path):
    good = write_tiny_gguf(tmp_path / "good.gguf").path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(good[: len(good) // 2])
    r = run("convert", tmp_path / "cut.gguf", "-o", tmp_path / "out")
    assert r.exit_code == 1 and "cut.gguf" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_unsupported_gguf_architecture(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "rwkv.gguf"), "rwkv6")
    w.add_block_count(1)
    import numpy as np

    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = run("convert", tmp_path / "rwkv.gguf", "-o", tmp_path / "out")
    assert r.exit_code == 1 and "rwkv6" in r.output and "llama" in r.output
    assert not (tmp_path / "out").exists()


def test_existing_run_refused_then_forced(tiny_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(NOTES.read_text().splitlines(keepends=True)[:8]))
    out = tmp_path / "run"
    assert run("lora", "--data", data, "--model", tiny_model, "-o", out, "--iters", 1).exit_code == 0
    snapshot = (out / "adapters.safetensors").read_bytes()
    r = run("lora", "--data", data, "--model", tiny_model, "-o", out, "--iters", 1, "--seed", 3)
    assert r.exit_code == 1 and "--force" in r.output
    assert (out / "adapters.safetensors").read_bytes() == snapshot
    assert run("lora", "--data", data, "--model", tiny_model, "-o", out, "--iters", 1, "--seed", 3, "--force").exit_code == 0


def test_long_records_warn_once_and_count(tiny_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(NOTES.read_text().splitlines(keepends=True)[:8]))
    r = CliRunner().invoke(cli, ["lora", "--data", str(data), "--model", str(tiny_model), "-o", str(tmp_path / "run"), "--iters", "1", "--max-seq-len", "300"])
    assert r.exit_code == 0, r.output
    warnings = [l for l in r.output.splitlines() if "longer than --max-seq-len 300" in l]
    assert warnings and len(warnings) == len({w.split(":")[1] for w in warnings})  # once per split
    assert all(re.search(r"(train|valid): \d+ of \d+ records are longer", w) for w in warnings)


def test_journey_lora_fuse_generate(tiny_model, tmp_path, backend):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(NOTES.read_text().splitlines(keepends=True)[:12]))
    run_dir, fused = tmp_path / "run", tmp_path / "fused"
    r = run("lora", "--data", data, "--model", tiny_model, "-o", run_dir, "--iters", 3, "--lr", "1e-3", "--backend", backend)
    assert r.exit_code == 0, r.output
    assert "val loss" in r.output and "tok/s" in r.output and "ETA" in r.output and "peak" in r.output
    assert f"Compute: {backend} backend" in r.output
    assert json.loads((run_dir / "adapter_config.json").read_text())["backend"] == backend
    r = run("fuse", "--adapter", run_dir, "-o", fused, "--backend", backend)
    assert r.exit_code == 0, r.output
    assert json.loads((fused / "config.json").read_text())["model_type"] == "llama"
    a = run("generate", "--model", fused, "--prompt", "hello", "--max-tokens", 8, "--backend", backend)
    b = run("generate", "--adapter", run_dir, "--prompt", "hello", "--max-tokens", 8, "--backend", backend)
    assert a.exit_code == 0 and b.exit_code == 0 and a.output == b.output and a.output


def test_backend_mlx_where_it_is_missing_is_a_clear_error(tiny_model, tmp_path, monkeypatch):
    import mlxtune.backends as backends

    monkeypatch.setattr(backends, "mlx_available", lambda: False)
    r = run("generate", "--model", tiny_model, "--prompt", "hi", "--backend", "mlx")
    assert r.exit_code == 2 and "mlx is not installed" in r.output and "--backend numpy" in r.output


def test_config_file_and_flags(tiny_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(NOTES.read_text().splitlines(keepends=True)[:8]))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tiny_model}\nrank: 4\nalpha: 8\niters: 2\nlearning_rate: 0.001\n")
    r = run("lora", "-c", cfg, "--data", data, "-o", tmp_path / "run", "--rank", 2)
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert saved["lora_parameters"]["rank"] == 2 and saved["lora_parameters"]["scale"] == 4.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("rnak: 4\nlearning_rate: fast\n")
    r = run("lora", "-c", bad, "--data", data)
    assert r.exit_code == 1 and "bad.yaml" in r.output and "rnak" in r.output and "learning_rate" in r.output


def test_resume_names_the_flags_to_drop_as_they_were_typed(tmp_path):
    r = run("lora", "--resume", tmp_path / "run", "--no-grad-checkpoint", "--no-auto", "-b", 2, "--lr", "1e-3", "-c", "x.yaml", "--force", "--quiet", "--no-report")
    assert r.exit_code == 2
    assert "drop -c/--config, -b/--batch-size, --no-grad-checkpoint, --no-auto, --learning-rate/--lr, --force\n" in r.output, r.output
    r = run("lora", "--resume", tmp_path / "run", "--auto", "--grad-checkpoint", "--dora")
    assert r.exit_code == 2 and "drop --grad-checkpoint, --auto, --dora\n" in r.output, r.output
