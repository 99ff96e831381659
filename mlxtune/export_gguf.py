"""Export an MLX-layout model directory as a GGUF file for llama.cpp, with an Ollama Modelfile.

The file is what llama.cpp's ``convert_hf_to_gguf.py`` writes for the same
model (``LlamaModel`` for llama, mistral and SmolLM; ``Qwen2Model`` for qwen2):
the same tensor names, the rotary q/k rows of llama permuted the way it
permutes them (``gguf_import`` undoes exactly this), norms and other 1-D
tensors in F32, the same metadata keys and types, and the tokenizer as its
``get_vocab_base`` and ``gguf.SpecialVocab`` describe it. Weights are read with
numpy alone (``npio.load_weights``: MLX-quantized triplets are expanded
exactly), so export runs where mlx cannot. Quantized outputs use the ``gguf``
package's quantizers, which reproduce ggml's reference ones bit for bit.

What we do differently from llama.cpp, on purpose:

* ``q4_0``: its converter has no Q4_0 (``llama-quantize`` makes it from an F16
  file). We quantize every 2-D weight to Q4_0 from float32, like
  ``llama-quantize --pure``; its default would store the output head (the
  tied embedding, for SmolLM2) in Q6_K, which the gguf package cannot write.
* ``tokenizer.ggml.pre``: found, as llama.cpp does, from the hash of a test
  text's token ids; for a tokenizer it does not list, derived from the
  ``pre_tokenizer`` of tokenizer.json (the four shapes ``gguf_tokenizer``
  rebuilds), and otherwise refused.
* SentencePiece vocabularies are read from tokenizer.json, not tokenizer.model;
  scores (which llama.cpp merges by) are derived from the merge ranks.
* ``add_bos_token``/``add_eos_token`` are always written, as tokenizer.json
  behaves, instead of leaving them to llama.cpp's per-tokenizer defaults.
* ``attention.key_length`` only when head_dim is not hidden_size / heads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

import numpy as np

from .errors import ModelFormatError, ModelNotFoundError, OutputExistsError, UnsupportedModelError, UsageError
from . import gguf_import
from .fsutil import atomic_write_text

# --outtype -> (general.file_type, tensor type of 2-D weights)
OUTTYPES = {"f32": ("ALL_F32", "F32"), "f16": ("MOSTLY_F16", "F16"), "q8_0": ("MOSTLY_Q8_0", "Q8_0"), "q4_0": ("MOSTLY_Q4_0", "Q4_0")}
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}  # model_type -> general.architecture
BLOCK = 32  # values per Q8_0 / Q4_0 block

# Hugging Face name -> GGUF name: the inverse of what the importer reads.
_GLOBAL = {hf: name for name, hf in gguf_import._GLOBAL.items()}
_LAYER = {hf: name for name, hf in gguf_import._LAYER.items()}
# A block's tensors in the order convert_hf_to_gguf's tensor map lists them.
_BLOCK_ORDER = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")

# convert_hf_to_gguf.py's get_vocab_base_pre: the token ids of this text identify a
# pre-tokenizer. Hashes from its table, for the names gguf_tokenizer can rebuild.
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f (multiple emojis "
    "concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 "
    "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= \u043d\u0435\u0449\u043e \u043d\u0430 "
    "\u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told "
    "he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
KNOWN_PRE_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3": "pixtral",
    "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e": "dbrx",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 .. Qwen2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1": "megrez",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff": "refact",
    "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8": "command-r",
    "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f": "codeshell",
    "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae": "exaone",
    "1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35": "minerva-7b",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "olmo",  # also mpt's; llama.cpp's last match wins
    "b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901": "jais",
}
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # tokenizer.ggml.token_type
# Tokens that end a turn in chat templates; each one the template uses becomes an Ollama stop.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@dataclass
class ExportResult:
    path: Path  # the .gguf written
    outtype: str
    n_tensors: int
    size_bytes: int
    notes: list[str] = field(default_factory=list)  # what the user should know (fallbacks, limits)
    modelfile: Path | None = None
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGML type -> number of tensors


@dataclass
class _Tensor:
    name: str  # GGUF name, e.g. blk.0.attn_q.weight
    source: str | None  # HF name in the weights (None: computed, as rope_freqs)
    shape: tuple[int, ...]
    type: str  # GGML type name
    heads: int | None = None  # rotary rows to permute (llama q/k), in this many heads
    data: np.ndarray | None = None  # for computed tensors


def export_gguf(model_dir: str | Path, out_path: str | Path, outtype: str = "f16", force: bool = False) -> ExportResult:
    """Write ``model_dir`` (MLX layout) as a GGUF file at ``out_path`` and an Ollama Modelfile beside it.

    ``outtype``: f32, f16, q8_0 or q4_0 for the 2-D weights (norms stay F32).
    ``out_path`` may be an existing directory: the file is then named after the model.
    """
    import gguf

    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise UsageError(f"--outtype must be one of {', '.join(OUTTYPES)}, not {outtype!r}")
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelNotFoundError(f"{model_dir} is not a model directory (no config.json); pass a directory written by 'mlxtune convert' or 'mlxtune fuse'")
    out = Path(out_path)
    if out.is_dir():
        out = out / f"{model_dir.resolve().name}-{outtype.upper()}.gguf"
    modelfile = out.parent / "Modelfile"
    for p in (out, modelfile):
        if p.exists() and not force:
            raise OutputExistsError(f"{p} already exists: choose another output path, or pass --force to replace it")
    notes: list[str] = []

    from . import npio

    config, weights = npio.load_weights(model_dir)
    arch, plan, cfg = _plan(config, weights, OUTTYPES[outtype][1], notes)
    if config.get("quantization") and outtype in ("q8_0", "q4_0"):
        q = config["quantization"]
        notes.append(
            f"the source is MLX-quantized ({q.get('bits')}-bit, group size {q.get('group_size')}): its weights were expanded "
            f"exactly and quantized again to {outtype.upper()}, which rounds twice; export from the unquantized model if you have it"
        )
    writer = gguf.GGUFWriter(path=None, arch=arch)
    _add_general(writer, model_dir, OUTTYPES[outtype][0], sum(int(np.prod(t.shape)) for t in plan if t.source))
    _add_hyperparameters(writer, config, cfg)
    chat = _add_tokenizer(writer, model_dir, cfg.vocab_size, notes)
    md = {k: v.value for k, v in writer.kv_data[0].items()}
    _check_tokenizer(md, model_dir, notes)
    modelfile_text = _modelfile(out.name, md, chat, model_dir)

    for t in plan:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), _nbytes(t.shape, t.type), raw_dtype=gguf.GGMLQuantizationType[t.type])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in plan:  # one tensor converted at a time; each source array is let go once written
            writer.write_tensor_data(_tensor_bytes(t, weights.pop(t.source) if t.source else t.data))
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    atomic_write_text(modelfile, modelfile_text)
    return ExportResult(out, outtype, len(plan), out.stat().st_size, notes, modelfile, dict(Counter(t.type for t in plan).most_common()))


# --- tensors ----------------------------------------------------------------


def _plan(config: dict, weights: dict[str, np.ndarray], weight_type: str, notes: list[str]):
    """(architecture, the tensors to write in order, ModelConfig), every weight checked against config.json."""
    from .backends.numpy_model import ModelConfig, expected_shapes

    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"GGUF export supports the llama family ({', '.join(ARCHITECTURES)}; SmolLM is llama), not model type {model_type!r}; "
            "for other architectures use llama.cpp's convert_hf_to_gguf.py on the Hugging Face model"
        )
    arch = ARCHITECTURES[model_type]
    scaling = config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type not in ("default", "linear", "llama3") or (rope_type == "llama3" and arch != "llama"):
        raise UnsupportedModelError(f"rope scaling {rope_type!r} of this {model_type} model cannot be exported to GGUF (supported: linear; llama3 for llama)")
    if config.get("rope_traditional"):
        raise UnsupportedModelError("rope_traditional models cannot be exported to GGUF: llama.cpp's llama rotates half-split pairs")
    cfg = ModelConfig.from_dict(config)  # mlx-lm's reading of config.json, which the weights were trained under
    expected = expected_shapes(cfg)
    missing = [k for k in expected if k not in weights]
    if missing:
        raise ModelFormatError(f"the model weights lack {len(missing)} tensor(s) its config.json calls for, e.g. {missing[0]}; the directory is incomplete")
    unused = {k for k in weights if k.endswith(".rotary_emb.inv_freq") or (k == "lm_head.weight" and cfg.tie_word_embeddings)}
    extra = sorted(k for k in weights if k not in expected and k not in unused)
    if extra:
        raise UnsupportedModelError(f"tensor {extra[0]} ({len(extra)} in all) has no place in a GGUF {arch} model; this variant of {model_type} cannot be exported")
    for k, shape in expected.items():
        if tuple(weights[k].shape) != shape:
            raise ModelFormatError(f"tensor {k} has shape {tuple(weights[k].shape)}, but config.json calls for {shape}")
    for k in unused:
        del weights[k]
    plan: list[_Tensor] = []
    if rope_type == "llama3":
        factors = _llama3_rope_factors(cfg.rope_theta, cfg.head_dim, scaling, config)
        plan.append(_Tensor("rope_freqs.weight", None, factors.shape, "F32", data=factors))
    fallback = []
    for name in expected:  # embed, norm, then each block's, then lm_head
        stem, _, param = name.rpartition(".")
        if stem.startswith("model.layers."):
            layer, _, rest = stem.removeprefix("model.layers.").partition(".")
            gname = f"blk.{layer}.{_LAYER[rest]}.{param}"
        else:
            gname = f"{_GLOBAL[stem]}.{param}"
        shape = tuple(weights[name].shape)
        # convert_hf_to_gguf.py: 1-D tensors, norms and anything but a .weight stay F32.
        kind = "F32" if len(shape) == 1 or gname.endswith("_norm.weight") or param != "weight" else weight_type
        if kind in ("Q8_0", "Q4_0") and shape[-1] % BLOCK:
            kind = "F16"  # as llama.cpp falls back when gguf.quants refuses a row length
            fallback.append(gname)
        heads = None
        if arch == "llama" and stem.endswith(("self_attn.q_proj", "self_attn.k_proj")):
            heads = cfg.num_attention_heads if stem.endswith("q_proj") else cfg.num_key_value_heads
        plan.append(_Tensor(gname, name, shape, kind, heads))
    plan.sort(key=_order)
    if fallback:
        notes.append(f"{len(fallback)} tensor(s) stored as F16 because their rows are not a multiple of {BLOCK} (as llama.cpp does): {', '.join(fallback[:4])}{' ...' if len(fallback) > 4 else ''}")
    if weight_type == "Q4_0":
        notes.append("q4_0 quantizes every 2-D weight, the embedding and output head included (llama-quantize --pure); llama-quantize's default keeps the head in Q6_K")
    if weight_type == "F16":
        big = [t.name for t in plan if t.type == "F16" and float(np.max(np.abs(weights[t.source]))) > 65504]
        if big:
            notes.append(f"{', '.join(big[:3])} hold values beyond float16's range (65504), which became inf; export as f32 or q8_0 instead")
    return arch, plan, cfg


def _order(t: _Tensor) -> tuple:
    """rope_freqs, token_embd, blocks in order (each as convert_hf_to_gguf's tensor map lists them), output_norm, output."""
    parts = t.name.split(".")
    if parts[0] == "blk":
        return (2, int(parts[1]), _BLOCK_ORDER.index(parts[2]), parts[3])
    return ({"rope_freqs": 0, "token_embd": 1, "output_norm": 3, "output": 4}[parts[0]], 0, 0, parts[-1])


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: rows (n_head, 2, d/2) stored as (n_head, d/2, 2).

    llama.cpp rotates adjacent pairs of a head's rows; Hugging Face rotates its
    two halves. The inverse is ``gguf_import._unpermute``.
    """
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _nbytes(shape: tuple[int, ...], kind: str) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    return int(np.prod(shape)) // block * size


def _tensor_bytes(t: _Tensor, w: np.ndarray) -> np.ndarray:
    """The stored form of one tensor: float32, float16, or ggml blocks (uint8 rows)."""
    from gguf import GGMLQuantizationType, quants

    if t.heads:
        w = permute(w, t.heads)
    return quants.quantize(np.ascontiguousarray(w, dtype=np.float32), GGMLQuantizationType[t.type])


def _llama3_rope_factors(theta: float, dim: int, scaling: dict, config: dict) -> np.ndarray:
    """The ``rope_freqs`` tensor of Llama 3.1-style rope scaling, computed as convert_hf_to_gguf.py does (float32)."""
    f32 = np.float32
    freqs = f32(1.0) / (f32(theta) ** (np.arange(0, dim, 2, dtype=f32) / f32(dim)))
    factor = f32(scaling.get("factor", 8.0))
    low, high = f32(scaling.get("low_freq_factor", 1.0)), f32(scaling.get("high_freq_factor", 4.0))
    old = f32(scaling.get("original_max_position_embeddings", config.get("original_max_position_embeddings", 8192)))
    wavelen = f32(2 * np.pi) / freqs
    smooth = (old / wavelen - low) / (high - low)
    mid = f32(1) / ((f32(1) - smooth) / factor + smooth)
    return np.where(wavelen < old / high, f32(1), np.where(wavelen > old / low, factor, mid)).astype(f32)


# --- metadata ---------------------------------------------------------------


def _add_general(writer, model_dir: Path, file_type: str, n_params: int) -> None:
    """general.*: name and size label as convert_hf_to_gguf.py derives them (model card, directory name)."""
    import gguf

    meta = gguf.Metadata.load(None, model_dir.resolve(), None, n_params)
    if meta.name is None:
        meta.name = model_dir.resolve().name
    if meta.size_label is None:
        meta.size_label = gguf.size_label(n_params, 0, 0, 0)
    writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(writer)
    writer.add_file_type(gguf.LlamaFileType[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_hyperparameters(writer, config: dict, cfg) -> None:
    """{arch}.*: the shape of the model as llama.cpp reads it, from mlx-lm's reading of config.json (``cfg``)."""
    import gguf

    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_theta)  # always: llama.cpp's default (10000) is not qwen2's
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads:
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(cfg.head_dim)
    scaling = cfg.rope_scaling or {}
    if (scaling.get("rope_type") or scaling.get("type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))


# --- tokenizer --------------------------------------------------------------


def _add_tokenizer(writer, model_dir: Path, n_vocab: int, notes: list[str]):
    """tokenizer.ggml.* and tokenizer.chat_template; returns the chat template (or None)."""
    import gguf

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ModelFormatError(
            f"{model_dir} has no tokenizer.json, and a GGUF carries its tokenizer: copy the tokenizer files of the base model "
            f"(tokenizer.json, tokenizer_config.json) into {model_dir}"
        )
    tj = json.loads(path.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not (model.get("byte_fallback") or (tj.get("decoder") or {}).get("type") == "ByteLevel"):
        raise UnsupportedModelError(
            f"{path}: a {model.get('type')} tokenizer cannot be exported to GGUF by mlxtune (byte-level BPE and "
            "SentencePiece-style BPE only); use llama.cpp's convert_hf_to_gguf.py"
        )
    kind = "llama" if model.get("byte_fallback") else "gpt2"
    tokens, types = _tokens(tj, n_vocab, kind, path)
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        pre, derived = _pre_tokenizer(path, tj)
        if derived:
            notes.append(f"tokenizer.ggml.pre = {pre!r}, derived from tokenizer.json's pre_tokenizer: llama.cpp does not list this tokenizer's hash")
        config_path = model_dir / "tokenizer_config.json"
        prefix = json.loads(config_path.read_text(encoding="utf-8")).get("add_prefix_space") if config_path.is_file() else None
        if isinstance(prefix, bool):  # as LlamaModel.set_vocab copies it
            writer.add_add_space_prefix(prefix)
    else:
        pre = "default"
        writer.add_add_space_prefix(_adds_space_prefix(tj))
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    if kind == "llama":
        writer.add_token_scores(_scores(tokens, types, _merges(model)))
    writer.add_token_types(types)

    # gguf.SpecialVocab is what convert_hf_to_gguf.py uses for merges, special ids, add_* flags
    # and the chat template. Its warnings (logged) become notes instead of stderr lines.
    with _collect_warnings(logging.getLogger("gguf.vocab"), notes):
        special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    for flag, default in _adds_special_tokens(path, special.special_token_ids).items():
        special.add_special_token.setdefault(flag, default)
    special.add_to_gguf(writer, quiet=True)
    template = special.chat_template
    if isinstance(template, list):  # named templates: Ollama gets the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template


def _tokens(tj: dict, n_vocab: int, kind: str, path: Path) -> tuple[list[str], list[int]]:
    """Token texts and types by id, as convert_hf_to_gguf.py's get_vocab_base (gpt2) or its
    SentencePiece reading (llama) would have them; ids the tokenizer lacks become [PADi]."""
    vocab = dict(tj["model"].get("vocab") or {})
    added = {int(a["id"]): a for a in tj.get("added_tokens") or []}
    top = max([*vocab.values(), *added, -1])
    if top >= n_vocab:
        raise ModelFormatError(f"{path} has token id {top}, but the model's embedding has only {n_vocab} rows; the tokenizer does not belong to this model")
    texts: list[str | None] = [None] * n_vocab
    for text, i in vocab.items():
        texts[i] = text
    unk = tj["model"].get("unk_token")
    tokens, types = [], []
    for i in range(n_vocab):
        if i in added:
            text = added[i]["content"]
            if added[i].get("special") or _looks_special(text):
                ttype = CONTROL
            else:
                ttype = USER_DEFINED
                text = text.replace("\u2581", " ") if kind == "gpt2" else text
        elif texts[i] is None:
            text, ttype = f"[PAD{i}]", UNUSED
        else:
            text, ttype = texts[i], NORMAL
            if kind == "llama" and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
                ttype = BYTE
        if kind == "llama" and text == unk:
            ttype = UNKNOWN
        tokens.append(text)
        types.append(ttype)
    return tokens, types


def _looks_special(text: str) -> bool:
    """convert_hf_to_gguf.py's does_token_look_special: added tokens marked non-special that are control tokens."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _merges(model: dict) -> list[tuple[str, str]]:
    merges = model.get("merges") or []
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]


def _scores(tokens: list[str], types: list[int], merges: list[tuple[str, str]]) -> list[float]:
    """SentencePiece scores from merge ranks. llama.cpp merges the adjacent pair whose
    result scores highest, Hugging Face's BPE the pair of lowest rank: scoring each token
    minus the rank of the first merge that makes it orders the two alike. Normal pieces
    that no merge makes score below every merge result; single characters, bytes and
    special tokens (never the result of a merge) score 0."""
    made: dict[str, int] = {}
    for rank, (a, b) in enumerate(merges):
        made.setdefault(a + b, rank)
    last = len(merges)
    return [
        -float(made[t]) if t in made else (-float(last + i) if kind == NORMAL and len(t) > 1 else 0.0)
        for i, (t, kind) in enumerate(zip(tokens, types))
    ]


def _adds_space_prefix(tj: dict) -> bool:
    """Whether the SentencePiece-style tokenizer puts "▁" before the text (Llama's Prepend normalizer, or Metaspace)."""
    def steps(node: dict | None, key: str) -> list[dict]:
        node = node or {}
        return node.get(key, [node]) if node.get("type") == "Sequence" else [node]

    if any(s.get("type") == "Prepend" and s.get("prepend") == "\u2581" for s in steps(tj.get("normalizer"), "normalizers")):
        return True
    return any(
        s.get("type") == "Metaspace" and s.get("prepend_scheme", "always" if s.get("add_prefix_space", True) else "never") != "never"
        for s in steps(tj.get("pre_tokenizer"), "pretokenizers")
    )


def _pre_tokenizer(path: Path, tj: dict) -> tuple[str, bool]:
    """(tokenizer.ggml.pre, whether derived rather than recognised) for a byte-level BPE tokenizer."""
    from tokenizers import Tokenizer

    from .gguf_tokenizer import _LLAMA3_SPLIT, _QWEN2_SPLIT

    ids = Tokenizer.from_file(str(path)).encode(CHKTXT).ids
    chkhsh = sha256(str(ids).encode()).hexdigest()
    if chkhsh in KNOWN_PRE_HASHES:
        return KNOWN_PRE_HASHES[chkhsh], False
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    found = None
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        found = "gpt-2"
    elif kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        found = "smollm"
    elif kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        found = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}.get(pattern)
    if found is None:
        raise UnsupportedModelError(
            f"{path}: llama.cpp does not know this tokenizer's pre-tokenizer (hash {chkhsh[:16]}...), and it is not one of the "
            "shapes mlxtune can name (GPT-2, SmolLM digits, Llama 3 or Qwen2 split); llama.cpp would tokenize it wrongly"
        )
    return found, True


def _adds_special_tokens(path: Path, ids: dict[str, int]) -> dict[str, bool]:
    """{bos, eos}: whether tokenizer.json adds them around the text when encoding (its post-processor)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    full, plain = tok.encode("a", add_special_tokens=True).ids, tok.encode("a", add_special_tokens=False).ids
    bos, eos = ids.get("bos"), ids.get("eos")
    return {
        "bos": bos is not None and full[:1] == [bos] and plain[:1] != [bos],
        "eos": eos is not None and full[-1:] == [eos] and plain[-1:] != [eos],
    }


@contextlib.contextmanager
def _collect_warnings(logger: logging.Logger, notes: list[str]):
    class _ToNotes(logging.Handler):
        def emit(self, record):
            notes.append(f"tokenizer (gguf.SpecialVocab, as llama.cpp's converter): {record.getMessage()}")

    handler, propagate = _ToNotes(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _check_tokenizer(md: dict, model_dir: Path, notes: list[str]) -> None:
    """Rebuild the tokenizer from the metadata just written, as llama.cpp would read it (gguf_tokenizer
    mirrors it), and compare it with tokenizer.json on a few texts: a difference means llama.cpp
    would feed the model tokens it was not trained on."""
    from tokenizers import Tokenizer

    from .gguf_tokenizer import build_tokenizer

    source = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    rebuilt = build_tokenizer(md, "export.gguf").tokenizer
    texts = [CHKTXT, "Hello world! 12345 caf\u00e9", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "  two  spaces\n\nlines"]
    for text in texts:
        a, b = source.encode(text).ids, rebuilt.encode(text).ids
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            notes.append(f"warning: the GGUF's tokenizer splits {text[:30]!r} differently from tokenizer.json (from token {at}); llama.cpp may tokenize this model wrongly")
            return


# --- Ollama -----------------------------------------------------------------

_CHATML_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_end|>
<|im_start|>assistant
{{ end }}
{{- end }}"""


def _modelfile(gguf_name: str, md: dict, template: str | None, model_dir: Path) -> str:
    """An Ollama Modelfile: FROM the GGUF beside it, TEMPLATE for ChatML chat templates, a stop per end token."""
    tokens = md.get("tokenizer.ggml.tokens") or []
    lines = [
        f"# Ollama Modelfile for {gguf_name}, exported by mlxtune from {model_dir}",
        "# Create the Ollama model with: ollama create <name> -f Modelfile",
        f"FROM ./{gguf_name}",
    ]
    if template and "<|im_start|>" in template and "<|im_end|>" in template:
        lines.append("# TEMPLATE: the model's ChatML chat template (tokenizer_config.json), in Ollama's syntax")
        if "tool" in template:
            lines.append("# (its tool definitions and tool calls are not translated)")
        lines.append(f'TEMPLATE """{_CHATML_TEMPLATE}"""')
        # A default system prompt written out in the template becomes Ollama's default too.
        m = re.search(r"<\|im_start\|>system(?:\n|\\n)([^{}'\"<]+?)<\|im_end\|>", template)
        if m:
            lines.append("# SYSTEM: the chat template's default system prompt, used when a conversation has none")
            lines.append(f'SYSTEM """{m.group(1)}"""')
    elif template:
        lines.append("# No TEMPLATE: mlxtune translates ChatML chat templates only. Ollama tries to recognise the chat")
        lines.append("# template stored in the GGUF (tokenizer.chat_template); if it does not, write a TEMPLATE here.")
    else:
        lines.append("# No TEMPLATE: the model has no chat template (a base model): prompts reach it as they are.")
    stops = []
    eos = md.get("tokenizer.ggml.eos_token_id")
    if eos is not None and 0 <= eos < len(tokens):
        stops.append(tokens[eos])
    stops += [t for t in END_OF_TURN if template and t in template and t in tokens]
    for stop in dict.fromkeys(stops):
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"
