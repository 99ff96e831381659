"""GGUF import without mlx: every tensor expanded to float32 with the gguf package, exactly."""

import json

import gguf
import numpy as np
import pytest

from gguf_fixtures import write_tiny_gguf
from mlxtune.formats.gguf import read_gguf


def _expected(x: np.ndarray, type_name: str) -> np.ndarray:
    """What llama.cpp's dequantization of ``x`` stored as ``type_name`` gives, in float32."""
    if type_name == "F32":
        return x.astype(np.float32)
    if type_name == "F16":
        return x.astype(np.float16).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[type_name]
    return gguf.quants.dequantize(gguf.quants.quantize(x, qtype), qtype).astype(np.float32)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_dense_import_equals_llama_cpp_dequantization(tmp_path, arch):
    g = write_tiny_gguf(tmp_path / "m.gguf", arch=arch)
    m = read_gguf(g.path, dense=True)
    assert "quantization" not in m.config
    assert set(m.weights) == set(g.hf_weights)
    for name, x in g.hf_weights.items():
        got = m.weights[name]
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == x.shape, name
        np.testing.assert_array_equal(got, _expected(x, g.types[name]), err_msg=name)


def test_dense_directory_loads_with_numpy_alone(tmp_path):
    from mlxtune.formats import safetensors as npio
    from mlxtune.models.source import write_gguf_dir

    g = write_tiny_gguf(tmp_path / "m.gguf")
    write_gguf_dir(g.path, tmp_path / "out", dense=True)
    config, weights = npio.load_weights(tmp_path / "out")
    assert config["model_type"] == "llama" and json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["chat_template"]
    np.testing.assert_array_equal(weights["model.embed_tokens.weight"], _expected(g.hf_weights["model.embed_tokens.weight"], g.types["model.embed_tokens.weight"]))
