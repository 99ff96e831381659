"""LoRA targets are the union over all blocks, for models whose blocks differ (issue 13, item 5).

A tiny LFM2 (mlx-lm's class, random weights) interleaves convolution blocks
(``conv.in_proj``, ``conv.out_proj``) and attention blocks (``self_attn.q_proj``
...), all with ``feed_forward.w1/w2/w3``; block 0 is a convolution block.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import needs_mlx
from tiny import make_tokenizer

from mlxtune.cli import cli

pytestmark = needs_mlx

LAYER_TYPES = ["conv", "full_attention", "conv", "full_attention"]
CONV = ["conv.in_proj", "conv.out_proj"]
ATTENTION = ["self_attn.k_proj", "self_attn.out_proj", "self_attn.q_proj", "self_attn.v_proj"]
MLP = ["feed_forward.w1", "feed_forward.w2", "feed_forward.w3"]


def make_tiny_lfm2(out_dir: Path) -> Path:
    """A random tiny LFM2 model directory (mlx-lm's model class, float32, tied embeddings)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import lfm2

    vocab = make_tokenizer(out_dir)
    config = {
        "model_type": "lfm2", "vocab_size": vocab, "hidden_size": 64, "num_hidden_layers": len(LAYER_TYPES),
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048, "norm_eps": 1e-5,
        "conv_bias": False, "conv_L_cache": 3, "block_dim": 64, "block_multiple_of": 16, "block_ffn_dim_multiplier": 1.0,
        "block_auto_adjust_ff_dim": False, "intermediate_size": 128, "layer_types": LAYER_TYPES,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    }
    mx.random.seed(0)
    model = lfm2.Model(lfm2.ModelArgs.from_dict(config))
    mx.save_safetensors(str(out_dir / "model.safetensors"), dict(tree_flatten(model.parameters())), metadata={"format": "mlx"})
    (out_dir / "config.json").write_text(json.dumps(config))
    return out_dir


@pytest.fixture(scope="module")
def lfm2_model(tmp_path_factory) -> Path:
    return make_tiny_lfm2(tmp_path_factory.mktemp("lfm2") / "model")


def _lora(model: Path, data: Path, run: Path, *extra: str):
    args = ["lora", "--data", str(data), "--model", str(model), "-o", str(run), "--iters", "1", "--backend", "mlx", "--no-report", *extra]
    return CliRunner().invoke(cli, args)


def _adapted(run: Path) -> dict[int, list[str]]:
    """{block: its adapted layers} from the adapter file."""
    from safetensors import safe_open

    blocks: dict[int, list[str]] = {}
    with safe_open(str(run / "adapters.safetensors"), "np") as f:
        for name in f.keys():
            if name.endswith(".lora_a"):
                _, _, i, *layer, _ = name.split(".")
                blocks.setdefault(int(i), []).append(".".join(layer))
    return {i: sorted(v) for i, v in sorted(blocks.items())}


def test_all_linear_covers_every_kind_of_block(lfm2_model, small_data, tmp_path):
    r = _lora(lfm2_model, small_data, tmp_path / "run")
    assert r.exit_code == 0, r.output
    keys = json.loads((tmp_path / "run" / "adapter_config.json").read_text())["lora_parameters"]["keys"]
    assert keys == sorted(CONV + ATTENTION + MLP)
    conv, attention = sorted(CONV + MLP), sorted(ATTENTION + MLP)
    assert _adapted(tmp_path / "run") == {0: conv, 1: attention, 2: conv, 3: attention}


def test_a_target_of_the_attention_blocks_only(lfm2_model, small_data, tmp_path):
    r = _lora(lfm2_model, small_data, tmp_path / "run", "--target-modules", "q_proj,v_proj")
    assert r.exit_code == 0, r.output
    assert "(q_proj, v_proj)" in r.output
    assert _adapted(tmp_path / "run") == {1: ["self_attn.q_proj", "self_attn.v_proj"], 3: ["self_attn.q_proj", "self_attn.v_proj"]}
    # the adapter loads back: mlxtune's loader and mlx-lm's place the same layers
    import mlx_lm

    from mlxtune.inference import load

    load(str(lfm2_model), adapter=tmp_path / "run", backend="mlx")
    mlx_lm.load(str(lfm2_model), adapter_path=str(tmp_path / "run"))


def test_unknown_target_lists_the_union(lfm2_model, small_data, tmp_path):
    r = _lora(lfm2_model, small_data, tmp_path / "run", "--target-modules", "qq_proj")
    assert r.exit_code != 0
    assert "choose from: in_proj, k_proj, out_proj, q_proj, v_proj, w1, w2, w3 (or all-linear)" in r.output


def test_target_outside_the_adapted_blocks(lfm2_model, small_data, tmp_path):
    """--layers 1 adapts block 3, an attention block: conv.in_proj is in the model but not there."""
    r = _lora(lfm2_model, small_data, tmp_path / "run", "--target-modules", "in_proj", "--layers", "1")
    assert r.exit_code != 0
    assert "'in_proj' is in none of the last 1 blocks (--layers 1)" in r.output
    assert "choose from: k_proj, out_proj, q_proj, v_proj, w1, w2, w3" in r.output
