"""The model-family registry (mlxtune/models/families): one file per family, read by every architecture-dependent module."""

from __future__ import annotations

import pytest

from mlxtune.errors import UnsupportedModelError
from mlxtune.models import families
from mlxtune.models.families.base import Family


def test_each_family_file_defines_its_family():
    assert families.FAMILY_MODULES == tuple(sorted(families.FAMILY_MODULES))
    for name, family in zip(families.FAMILY_MODULES, families.FAMILIES):
        assert isinstance(family, Family) and family.name == name and family.model_types
    types = [t for f in families.FAMILIES for t in f.model_types]
    assert len(types) == len(set(types)), "a model_type belongs to one family"


def test_the_tables_the_readers_had_before():
    """What numpy_model, backends, export_gguf, gguf_import, export_hf and model_config each kept in a table of their own."""
    assert families.numpy_model_types() == ["gemma3_text", "gemma3", "llama", "mistral", "phi3", "qwen2", "qwen3", "smollm3"]
    assert families.gguf_export_model_types() == ["gemma3_text", "gemma3", "llama", "mistral", "phi3", "qwen2", "qwen3", "smollm3"]
    assert {t: families.get(t).gguf_arch for t in families.gguf_export_model_types()} == {
        "gemma3_text": "gemma3", "gemma3": "gemma3", "llama": "llama", "mistral": "llama", "phi3": "phi3", "qwen2": "qwen2", "qwen3": "qwen3",
        "smollm3": "smollm3"}
    assert families.gguf_import_archs() == ["gemma3", "llama", "phi3", "qwen2", "qwen3", "smollm3"]
    assert [(f.model_types[0], f.hf_class, f.gguf_permute_qk) for f in map(families.for_gguf_arch, ("gemma3", "llama", "phi3", "qwen2", "qwen3", "smollm3"))] == [
        ("gemma3_text", "Gemma3ForCausalLM", False), ("llama", "LlamaForCausalLM", True), ("phi3", "Phi3ForCausalLM", False),
        ("qwen2", "Qwen2ForCausalLM", False), ("qwen3", "Qwen3ForCausalLM", False), ("smollm3", "SmolLM3ForCausalLM", True)]
    assert families.hf_classes() == {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                                     "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM", "phi3": "Phi3ForCausalLM",
                                     "smollm3": "SmolLM3ForCausalLM", "gemma3_text": "Gemma3ForCausalLM", "gemma3": "Gemma3ForCausalLM"}
    assert families.local_rope_base_fields() == {"gemma3_text": "rope_local_base_freq", "gemma3": "rope_local_base_freq"}
    assert families.layer_pattern_fields() == {"gemma3_text": "sliding_window_pattern", "gemma3": "sliding_window_pattern"}
    assert sorted(families.per_layer_type_rope_readers()) == ["gemma4", "gemma4_text", "laguna"]
    assert families.for_gguf_arch("gpt2") is None and families.for_gguf_arch(None) is None


def test_family_rules_as_mlx_lm_reads_config():
    config = {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 32, "attention_bias": True, "mlp_bias": True}
    llama, qwen2 = families.family_for("llama"), families.family_for("qwen2")
    assert (llama.head_dim(config), qwen2.head_dim(config)) == (32, 16)  # mlx-lm's qwen2 ignores head_dim
    assert llama.biases(config) == (True, True, True) and qwen2.biases({}) == (True, False, False)
    assert (llama.rope_theta({}), qwen2.rope_theta({}), qwen2.rope_theta({"rope_theta": 5.0})) == (10000.0, 1000000.0, 5.0)
    assert families.head_dim({"model_type": "some_new_model", **config}) == 32  # unknown: read as llama is


def test_family_for_names_the_known_ones():
    with pytest.raises(UnsupportedModelError, match=r"model type 'gpt2' is not one mlxtune knows \(it knows gemma, .*llama, mistral"):
        families.family_for("gpt2")
    assert families.get(None) is None and families.get(["llama"]) is None


def test_numpy_families_have_the_layout_the_numpy_model_computes():
    """A family the numpy backend claims must have the llama layout it computes, and GGUF names for each of its tensors."""
    from mlxtune.backends.numpy.model import LINEAR_KEYS
    from mlxtune.models.families.base import FUSED_LINEAR_KEYS

    for family in families.FAMILIES:
        if family.numpy:  # the llama layout's block, or its fused one (Phi-3's qkv_proj and gate_up_proj)
            assert family.linear_keys == (FUSED_LINEAR_KEYS if family.fused_projections else LINEAR_KEYS) and family.rope_types
        if family.gguf_arch:
            assert set(family.linear_keys) <= {hf for _, hf in family.gguf_block} and family.gguf_global and family.gguf_rope_types
    assert all(f.gguf_arch for f in map(families.for_gguf_arch, families.gguf_import_archs()))


def test_qwen3_and_smollm3_rules_as_mlx_lm_reads_config():
    """Qwen3: q/k norms, head_dim from config.json, no biases; SmolLM3: the layers without rope, as mlx-lm and transformers read them."""
    from mlxtune.errors import ModelFormatError

    qwen3, smollm3 = families.family_for("qwen3"), families.family_for("smollm3")
    config = {"hidden_size": 64, "num_attention_heads": 4, "head_dim": 32, "attention_bias": True, "num_hidden_layers": 8}
    assert (qwen3.qk_norm, qwen3.head_dim(config), qwen3.biases(config), qwen3.rope_layers(config)) == (True, 32, (False, False, False), None)
    assert smollm3.biases(config) == (True, True, False) and not smollm3.qk_norm
    assert smollm3.rope_layers(config) == (True, True, True, False) * 2  # every 4th layer without rope, by default
    assert smollm3.rope_layers({**config, "no_rope_layer_interval": 3}) == (True, True, False, True, True, False, True, True)
    assert smollm3.rope_layers({**config, "no_rope_layers": [0, 1] * 4}) == (False, True) * 4  # the list wins over the interval
    with pytest.raises(ModelFormatError, match="no_rope_layers must list 0 or 1 for each of the 8 layers"):
        smollm3.rope_layers({**config, "no_rope_layers": [1, 0]})
    # llama.cpp's smollm3 graph fixes every 4th layer without rope; a GGUF file of it implies the config fields
    assert smollm3.gguf_rope_layers(4) == (True, True, True, False) and qwen3.gguf_rope_layers(4) is None
    assert smollm3.gguf_config_fields(4) == {"no_rope_layer_interval": 4, "no_rope_layers": [1, 1, 1, 0]} and qwen3.gguf_config_fields(4) == {}


def test_gemma3_rules_as_mlx_lm_reads_config():
    """Gemma 3: every sliding_window_pattern-th layer global (6 by default), the multimodal config's text part as mlx-lm reads it."""
    from mlxtune.models.layout import ModelConfig

    gemma3 = families.family_for("gemma3_text")
    assert families.family_for("gemma3") is gemma3 and gemma3.qk_norm and gemma3.sandwich_norms and gemma3.norm_offset == 1.0
    assert gemma3.sliding_layers({"num_hidden_layers": 7}) == (True,) * 5 + (False, True)
    assert gemma3.sliding_layers({"num_hidden_layers": 4, "sliding_window_pattern": 2}) == (True, False, True, False)
    assert families.family_for("qwen3").sliding_layers({"num_hidden_layers": 4}) is None
    multimodal = {"model_type": "gemma3", "vocab_size": 300, "text_config": {"model_type": "gemma3_text", "hidden_size": 64, "vocab_size": 262208}}
    assert gemma3.text_part(multimodal) == {"model_type": "gemma3_text", "hidden_size": 64, "vocab_size": 300, "num_attention_heads": 8, "num_key_value_heads": 4}
    config = {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
              "num_key_value_heads": 1, "head_dim": 32, "rms_norm_eps": 1e-6, "vocab_size": 40, "sliding_window": 5,
              "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
              "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                  "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    cfg = ModelConfig.from_dict(config)
    assert (cfg.sliding_layers, cfg.window(0), cfg.window(1), cfg.local_rope_theta, cfg.rope_theta) == ((True, False, True), 5, None, 1e4, 1e6)
    assert cfg.rope_scaling["factor"] == 8.0 and cfg.attention_scale() == 256**-0.5 and cfg.embed_scale == 8.0  # query_pre_attn_scalar's default
    assert ModelConfig.from_dict({"model_type": "gemma3", "vocab_size": 40, "text_config": {k: v for k, v in config.items() if k != "vocab_size"}}) == cfg
    with pytest.raises(UnsupportedModelError, match="final_logit_softcapping"):
        ModelConfig.from_dict({**config, "final_logit_softcapping": 30.0})
