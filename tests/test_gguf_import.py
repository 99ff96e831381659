"""GGUF import: names, exact weights, config, loading with mlx_lm, and every way a file can be wrong."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

import gguf
from gguf_fixtures import (
    HEAD_DIM, HEADS, KV_HEADS, llama3_rope_factors, load_mlx_lm, permute, smollm2_gguf, write_model_dir, write_tiny_gguf,
)
mx = pytest.importorskip("mlx.core", reason="these tests read GGUF through mx.load; test_gguf_dense.py covers the numpy path")

from mlxtune.errors import ModelFormatError, ModelNotFoundError, UnsupportedModelError
from mlxtune.formats.gguf import SUPPORTED_TYPES, read_gguf

QT = gguf.GGMLQuantizationType
BITS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}


def _deq(weights: dict, module: str, bits: int) -> np.ndarray:
    """MLX triplet -> float32, with float32 scales so no product is rounded."""
    w, s, b = (weights[f"{module}.{p}"] for p in ("weight", "scales", "biases"))
    return np.array(mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32), 32, bits))


def _heads(name: str) -> int | None:
    return HEADS if "q_proj" in name else KV_HEADS if "k_proj" in name else None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    t = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tied=False)
    return t, read_gguf(t.path)


def test_weights_have_hugging_face_names(tiny):
    t, m = tiny
    expected = set()
    for name, kind in t.types.items():
        module = name.rsplit(".", 1)[0]
        expected |= {f"{module}.weight", f"{module}.scales", f"{module}.biases"} if kind in BITS else {name}
    assert set(m.weights) == expected
    q = "model.layers.0.self_attn.q_proj"
    assert (m.weights[q + ".weight"].dtype, m.weights[q + ".scales"].dtype) == (mx.uint32, mx.float16)
    assert m.weights[q + ".weight"].shape == (HEADS * HEAD_DIM, 64 * 4 // 32)  # (rows, packed uint32)


def test_float_weights_equal_the_originals_exactly(tmp_path):
    # q in F16 and k in F32 are permuted by llama.cpp; BF16 is read by us, not mx.load.
    types = dict.fromkeys(("token_embd", "attn_v", "attn_output", "ffn_gate", "ffn_down", "output"), "F16")
    types.update({"attn_q": "F16", "attn_k": "F32", "blk.1.attn_k": "BF16", "ffn_up": "BF16", "token_embd": "F32"})

    def big(w):  # beyond float16's range: mx.load would make it inf
        w["model.layers.0.mlp.up_proj.weight"][0, 0] = 1e6

    t = write_tiny_gguf(tmp_path / "f.gguf", types=types, edit=big)
    m = read_gguf(t.path)
    cast = {"F32": np.float32, "F16": np.float16}
    for name, original in t.hf_weights.items():
        kind = t.types[name]
        got = np.array(m.weights[name].astype(mx.float32))
        if kind == "BF16":
            want = gguf.quants.dequantize(gguf.quants.quantize(original, QT.BF16), QT.BF16)
            assert m.weights[name].dtype == mx.bfloat16
        else:
            want = original.astype(cast[kind]).astype(np.float32)
        assert np.array_equal(got, want), name


def test_q4_0_q4_1_q8_0_and_floats_are_what_mx_load_makes_of_them(tmp_path):
    """We read the tensors ourselves (mx.load fails on a whole file for one Q5_0 tensor); the
    triplets and floats are still mx.load's, bit for bit and dtype for dtype, before renaming."""
    from mlxtune.formats.gguf import read_header
    from mlxtune.formats.gguf_types import mlx_triplet, stored

    t = write_tiny_gguf(tmp_path / "t.gguf", tied=False, types={"ffn_up": "Q4_1", "attn_v": "Q8_0", "attn_q": "Q4_0", "ffn_down": "F16"})
    raw = mx.load(str(t.path))
    kinds = set()
    for ti in read_header(t.path)[1]:
        stem = ti.name.rpartition(".")[0]
        if ti.type in BITS:
            ours = dict(zip(("weight", "scales", "biases"), mlx_triplet(t.path, ti.shape, ti.type, ti.offset)))
        else:
            ours = {ti.name.rpartition(".")[2]: stored(t.path, ti.shape, ti.type, ti.offset)}
        for part, value in ours.items():
            ref = np.array(raw[f"{stem}.{part}"])
            assert value.dtype == ref.dtype and np.array_equal(value, ref), (ti.name, part)
        kinds.add(ti.type)
    assert kinds == {"Q4_0", "Q4_1", "Q8_0", "F16", "F32"}


def test_quantized_weights_equal_llama_cpp_dequantization(tiny):
    """Re-applying llama.cpp's permute to our dequantized rows gives, bit for bit, what
    gguf.quants.dequantize makes of the raw tensor bytes in the file."""
    t, m = tiny
    reader = gguf.GGUFReader(t.path)
    raw = {r.name: r for r in reader.tensors}
    checked = 0
    for name, kind in t.types.items():
        if kind not in BITS:
            continue
        module = name.rsplit(".", 1)[0]
        ours = _deq(m.weights, module, BITS[kind])
        gname = {"model.embed_tokens": "token_embd", "lm_head": "output"}.get(module)
        if gname is None:
            layer, rest = module.split(".")[2], module.split(".", 3)[3]
            gname = f"blk.{layer}." + {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                                        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}[rest]
        r = raw[gname + ".weight"]
        llama_cpp = gguf.quants.dequantize(np.array(r.data), r.tensor_type)
        as_stored = ours if _heads(name) is None else permute(ours, HEADS, _heads(name))
        assert np.array_equal(as_stored, llama_cpp), name
        # ...and equal to quantizing the unpermuted original: the unpermutation is lossless.
        assert np.array_equal(ours, gguf.quants.dequantize(gguf.quants.quantize(t.hf_weights[name], QT[kind]), QT[kind])), name
        checked += 1
    assert checked == 14  # 6 per layer, embeddings, lm_head


def test_config(tiny):
    t, m = tiny
    c = m.config
    assert {k: c[k] for k in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                              "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "vocab_size",
                              "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id")} == {
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": len(t.tokens),
        "max_position_embeddings": 2048, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    }
    eight = {"group_size": 32, "bits": 8}
    assert c["quantization"] == {
        "group_size": 32, "bits": 4, "model.embed_tokens": eight, "lm_head": eight,
        "model.layers.0.self_attn.v_proj": eight, "model.layers.1.self_attn.v_proj": eight,
    }
    assert m.generation_config == {"bos_token_id": 1, "eos_token_id": 2}
    assert m.source["architecture"] == "llama" and m.source["tensor_types"] == {"Q4_1": 6, "F32": 5, "Q4_0": 4, "Q8_0": 4, "F16": 2}


def test_tied_embeddings_when_there_is_no_output_tensor(tmp_path):
    m = read_gguf(write_tiny_gguf(tmp_path / "t.gguf", tied=True).path)
    assert m.config["tie_word_embeddings"] is True and not any(k.startswith("lm_head") for k in m.weights)


def _reference_logits(t, config: dict, ids: mx.array) -> np.ndarray:
    """Logits of an mlx_lm model built from the original HF weights, rounded as the file rounds them."""
    from mlx_lm.utils import _get_classes

    config = {k: v for k, v in config.items() if not k.startswith("quantization")}
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    weights = {}
    for name, x in t.hf_weights.items():
        kind = t.types[name]
        weights[name] = gguf.quants.dequantize(gguf.quants.quantize(x, QT[kind]), QT[kind]) if kind in BITS else x.astype(
            np.float16 if kind == "F16" else np.float32).astype(np.float32)
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()])
    return np.array(model(ids))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_mlx_lm_loads_the_written_directory_and_matches_the_original(tmp_path, arch):
    """Logits equal those of the original (unpermuted) weights, which a wrong q/k row order would break."""
    t = write_tiny_gguf(tmp_path / "m.gguf", arch=arch, tied=(arch == "qwen2"))
    m = read_gguf(t.path)
    if arch == "qwen2":  # biases present and not permuted (llama.cpp permutes only llama's q/k)
        for n in ("q", "k", "v"):
            key = f"model.layers.0.self_attn.{n}_proj.bias"
            assert np.array_equal(np.array(m.weights[key]), t.hf_weights[key])
    out = write_model_dir(m, tmp_path / "out")
    ids = mx.array([[1, 5, 42, 7, 99, 2]])
    model, tokenizer = load_mlx_lm(out, expand=True)
    np.testing.assert_allclose(np.array(model(ids)), _reference_logits(t, m.config, ids), atol=1e-4, rtol=1e-4)
    quantized, _ = load_mlx_lm(out)  # the packed form runs too, in float16 compute
    assert quantized(ids).shape == (1, 6, len(t.tokens))
    assert tokenizer.encode("hi<|im_end|>")[-1] == 2


def test_llama3_rope_scaling_recovered_from_rope_freqs(tmp_path):
    factors = llama3_rope_factors(HEAD_DIM, 10000.0, factor=32.0)
    m = read_gguf(write_tiny_gguf(tmp_path / "r.gguf", extra_tensors={"rope_freqs.weight": factors}).path)
    assert m.config["rope_scaling"] == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8192}
    assert not any("rope_freqs" in k for k in m.weights)
    model, _ = load_mlx_lm(write_model_dir(m, tmp_path / "out"))
    assert model(mx.array([[1, 2]])).shape[1] == 2
    with pytest.raises(UnsupportedModelError, match="rope_freqs"):
        read_gguf(write_tiny_gguf(tmp_path / "bad.gguf", extra_tensors={"rope_freqs.weight": factors[::-1].copy()}).path)


# --- errors -----------------------------------------------------------------


def _one_line(e: pytest.ExceptionInfo, *words: str) -> str:
    text = str(e.value)
    assert "\n" not in text
    for w in words:
        assert w in text, (w, text)
    return text


def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError) as e:
        read_gguf(tmp_path / "nope.gguf")
    _one_line(e, "nope.gguf")


def test_empty_file(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelFormatError) as e:
        read_gguf(tmp_path / "empty.gguf")
    _one_line(e, "empty.gguf", "empty")


def test_not_a_gguf_file(tmp_path):
    (tmp_path / "model.gguf").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelFormatError) as e:
        read_gguf(tmp_path / "model.gguf")
    _one_line(e, "model.gguf", "not a GGUF file")


@pytest.fixture(scope="module")
def tiny_bytes(tiny) -> bytes:
    return tiny[0].path.read_bytes()


def _cut_points(data: bytes, data_offset: int) -> dict[str, int]:
    """Where to cut a file so each part of it is left unfinished."""
    return {
        "magic": 2,
        "counts": 20,
        "tokens": data.index(b"tokenizer.ggml.tokens") + 100,
        "merges": data.index(b"tokenizer.ggml.merges") + 300,
        "chat template": data.index(b"tokenizer.chat_template") + 60,
        "tensor table": data.index(b"blk.1.attn_q.weight") + 5,
        "no tensor data": data_offset,
        "first tensor": data_offset + 100,
        "middle": len(data) // 2,
        "last byte": len(data) - 1,
    }


@pytest.mark.parametrize("where", ["magic", "counts", "tokens", "merges", "chat template", "tensor table", "no tensor data",
                                   "first tensor", "middle", "last byte"])
def test_truncated_file(tmp_path, tiny, tiny_bytes, where):
    cut = _cut_points(tiny_bytes, gguf.GGUFReader(tiny[0].path).data_offset)[where]
    path = tmp_path / "cut.gguf"
    path.write_bytes(tiny_bytes[:cut])
    with pytest.raises(ModelFormatError) as e:
        read_gguf(path)
    _one_line(e, "cut.gguf", "truncated", "download it again")


def _patched(tmp_path, data: bytes, at: int, fmt: str, value) -> Path:
    b = bytearray(data)
    struct.pack_into(fmt, b, at, value)
    (tmp_path / "bad.gguf").write_bytes(bytes(b))
    return tmp_path / "bad.gguf"


def _tensor_entry(data: bytes, name: bytes) -> int:
    """Offset of the n_dims field of a tensor's entry in the tensor table."""
    return data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)


@pytest.mark.parametrize("what", ["n_tensors", "n_kv", "key length", "n_dims", "version", "tensor offset", "unaligned"])
def test_corrupt_header_is_a_format_error_not_a_crash(tmp_path, tiny_bytes, what):
    """mx.load segfaults on the first four of these; we must refuse them first."""
    entry = _tensor_entry(tiny_bytes, b"token_embd.weight")
    at = {"n_tensors": (8, "<Q", 2**40), "n_kv": (16, "<Q", 2**40), "key length": (24, "<Q", 2**62), "n_dims": (entry, "<I", 9),
          "version": (4, "<I", 1), "tensor offset": (entry + 4 + 16 + 4, "<Q", 2**50), "unaligned": (entry + 4 + 16 + 4, "<Q", 3)}[what]
    with pytest.raises(ModelFormatError) as e:
        read_gguf(_patched(tmp_path, tiny_bytes, *at))
    assert not isinstance(e.value, UnsupportedModelError)
    _one_line(e, "bad.gguf")


def test_unsupported_architecture(tmp_path):
    t = write_tiny_gguf(tmp_path / "phi.gguf", arch="phi2")
    with pytest.raises(UnsupportedModelError) as e:
        read_gguf(t.path)
    _one_line(e, "phi.gguf", "'phi2'", "llama", "phi3", "qwen2")


# Q5_0, Q5_1, Q4_K and Q6_K were refused here until issue 15; now they import (below).
@pytest.mark.parametrize("kind,stem", [("MXFP4", "attn_v"), ("TQ2_0", "ffn_down"), ("TQ1_0", "ffn_down"), ("IQ2_XXS", "ffn_down")])
def test_unsupported_tensor_type(tmp_path, kind, stem):
    t = write_tiny_gguf(tmp_path / "k.gguf", types={stem: kind}, intermediate=256)
    with pytest.raises(UnsupportedModelError) as e:
        read_gguf(t.path)
    _one_line(e, "k.gguf", f"blk.0.{stem}.weight", kind, "supported types: " + ", ".join(SUPPORTED_TYPES))


@pytest.mark.parametrize("kind,stem", [("Q5_0", "attn_q"), ("Q5_1", "ffn_up"), ("Q2_K", "ffn_down"), ("Q3_K", "ffn_down"), ("Q4_K", "ffn_down"),
                                       ("Q5_K", "ffn_down"), ("Q6_K", "ffn_down"), ("IQ4_NL", "attn_k"), ("IQ4_XS", "ffn_down")])
def test_other_block_types_are_expanded_exactly_to_float32(tmp_path, kind, stem):
    """mx.load would round these to float16 (or drop IQ4): they come out as gguf-py's (llama.cpp's) float32 values.

    tests/test_gguf_llama_cpp.py holds gguf-py's expansion to llama.cpp's on files llama.cpp quantized.
    """
    t = write_tiny_gguf(tmp_path / "k.gguf", types={stem: kind}, intermediate=256)
    m = read_gguf(t.path)
    assert m.source["tensor_types"][kind] == 2  # one per layer
    for r in gguf.GGUFReader(t.path).tensors:
        if not r.name.endswith(f".{stem}.weight"):
            continue
        layer = r.name.split(".")[1]
        name = next(n for n, k in t.types.items() if k == kind and f"layers.{layer}." in n)
        ours = m.weights[name]
        assert ours.dtype == mx.float32, (name, ours.dtype)
        ours = np.array(ours)
        as_stored = ours if _heads(name) is None else permute(ours, HEADS, _heads(name))
        np.testing.assert_array_equal(as_stored, gguf.quants.dequantize(np.array(r.data), r.tensor_type), err_msg=name)


def test_unknown_tensor_type_id(tmp_path, tiny_bytes):
    """mx.load silently drops such a tensor; we name it."""
    entry = _tensor_entry(tiny_bytes, b"blk.0.attn_v.weight")
    with pytest.raises(UnsupportedModelError) as e:
        read_gguf(_patched(tmp_path, tiny_bytes, entry + 4 + 16, "<I", 200))
    _one_line(e, "blk.0.attn_v.weight", "type 200")


def test_unknown_tensor_name(tmp_path):
    t = write_tiny_gguf(tmp_path / "n.gguf", extra_tensors={"blk.0.attn_q_norm.weight": np.ones(16, np.float32)})
    with pytest.raises(UnsupportedModelError) as e:
        read_gguf(t.path)
    _one_line(e, "blk.0.attn_q_norm.weight")


# --- the real model -----------------------------------------------------------


@pytest.mark.e2e
def test_smollm2_every_tensor_equals_llama_cpp_dequantization():
    path = smollm2_gguf()
    m = read_gguf(path)
    assert m.source["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    heads, kv = m.config["num_attention_heads"], m.config["num_key_value_heads"]
    stems = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}
    for r in gguf.GGUFReader(path).tensors:
        stem = r.name.rsplit(".", 1)[0]
        if stem.startswith("blk."):
            _, layer, short = stem.split(".")
            module = f"model.layers.{layer}.{stems[short]}"
        else:
            module = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}[stem]
        kind = r.tensor_type.name
        ours = _deq(m.weights, module, BITS[kind]) if kind in BITS else np.array(m.weights[module + ".weight"])
        if stem.endswith((".attn_q", ".attn_k")):
            ours = permute(ours, heads, heads if stem.endswith("attn_q") else kv)
        assert np.array_equal(ours, gguf.quants.dequantize(np.array(r.data), r.tensor_type)), r.name


@pytest.mark.e2e
def test_smollm2_answers_paris(tmp_path):
    m = read_gguf(smollm2_gguf())
    out = write_model_dir(m, tmp_path / "smollm2")
    from mlx_lm import generate

    model, tokenizer = load_mlx_lm(out, expand=True)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    answer = generate(model, tokenizer, prompt, max_tokens=12)
    assert "Paris" in answer, answer



def test_expanded_block_types_take_the_dtype_asked_for_and_quantized_blocks_stay(tmp_path):
    """On a GPU (runtime.choose_expanded_dtype) K-quants are stored in float16; Q8_0 stays an MLX triplet."""
    t = write_tiny_gguf(tmp_path / "k.gguf", types={"ffn_down": "Q6_K", "attn_q": "Q8_0"}, intermediate=256)
    f32, f16 = read_gguf(t.path), read_gguf(t.path, expanded_dtype="float16")
    names = [n for n, k in t.types.items() if k == "Q6_K"]
    assert names
    for name in names:
        assert f16.weights[name].dtype == mx.float16
        np.testing.assert_array_equal(np.array(f16.weights[name]), np.array(f32.weights[name]).astype(np.float16))
    quantized = [k for k in f32.weights if k.endswith(".scales")]
    assert quantized and all(np.array_equal(np.array(f16.weights[k]), np.array(f32.weights[k])) for k in quantized)
