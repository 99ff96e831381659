"""Export an MLX-layout model directory as a GGUF file for llama.cpp, with an Ollama Modelfile.

The file is what llama.cpp's ``convert_hf_to_gguf.py`` writes for the same
model (``LlamaModel`` for llama, mistral and SmolLM; ``Qwen2Model`` for qwen2,
``Qwen3Model`` for qwen3, ``SmolLM3Model`` for smollm3, ``Gemma3Model`` for gemma3,
``Phi3MiniModel`` for phi3; each family's names and rules are its ``Family`` record): the same tensor names, the rotary q/k rows of llama permuted the way it
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
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError, ModelNotFoundError, OutputExistsError, UnsupportedModelError, UsageError
from .gguf_tokenizer import add_tokenizer, check_tokenizer
from ..fsutil import atomic_write_text
from ..models import families

# --outtype -> (general.file_type, tensor type of 2-D weights)
OUTTYPES = {"f32": ("ALL_F32", "F32"), "f16": ("MOSTLY_F16", "F16"), "q8_0": ("MOSTLY_Q8_0", "Q8_0"), "q4_0": ("MOSTLY_Q4_0", "Q4_0")}
BLOCK = 32  # values per Q8_0 / Q4_0 block



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
    shift: float = 0.0  # added to the values: a norm of a family whose norms multiply by norm_offset + w


def export_gguf(model_dir: str | Path, out_path: str | Path, outtype: str = "f16", force: bool = False, name: str | None = None, origin: str | None = None, thinking: bool = False) -> ExportResult:
    """Write ``model_dir`` (MLX layout) as a GGUF file at ``out_path`` and its Ollama Modelfile beside it.

    ``outtype``: f32, f16, q8_0 or q4_0 for the 2-D weights (norms stay F32).
    ``out_path`` may be an existing directory: the file is then named ``<name>-<OUTTYPE>.gguf``.
    ``name``: general.name [default: as llama.cpp's converter finds it: the model card, else the directory's name].
    ``origin``: where the model came from, for the Modelfile's comment [default: ``model_dir``].
    The Modelfile is ``<gguf stem>.Modelfile``: one per GGUF, so exports of other models into the same folder keep theirs.
    ``thinking``: the chat template written (and the Modelfile's) think unless told otherwise; off by default
    (``models.chat_template``: templates with an ``enable_thinking`` switch, as Qwen3's and SmolLM3's).
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
        out = out / f"{name or model_dir.resolve().name}-{outtype.upper()}.gguf"
    modelfile = out.with_name(f"{out.stem if out.suffix.lower() == '.gguf' else out.name}.Modelfile")
    for p in (out, modelfile):
        if p.exists() and not force:
            raise OutputExistsError(f"{p} already exists: choose another output path, or pass --force to replace it")
    notes: list[str] = []

    from ..formats import safetensors as npio

    config, weights = npio.load_weights(model_dir)
    family = families.get(config.get("model_type"))
    if family is not None and isinstance(config.get("text_config"), dict):  # a multimodal checkpoint: its text model, as llama.cpp's converter
        weights, _ = family.text_weights(config, weights)
        config = {**family.text_part(config), **{k: config[k] for k in ("quantization", "quantization_config") if k in config}}
        notes.append("the model is multimodal: its text model was exported (llama.cpp keeps the vision tower in a separate mmproj file)")
    arch, plan, cfg = _plan(config, weights, OUTTYPES[outtype][1], notes)
    if config.get("quantization") and outtype in ("q8_0", "q4_0"):
        q = config["quantization"]
        notes.append(
            f"the source is MLX-quantized ({q.get('bits')}-bit, group size {q.get('group_size')}): its weights were expanded "
            f"exactly and quantized again to {outtype.upper()}, which rounds twice; export from the unquantized model if you have it"
        )
    writer = gguf.GGUFWriter(path=None, arch=arch)
    general_name = _add_general(writer, model_dir, OUTTYPES[outtype][0], sum(int(np.prod(t.shape)) for t in plan if t.source), name)
    _add_hyperparameters(writer, config, cfg, families.get(config.get("model_type")), notes)
    chat = add_tokenizer(writer, model_dir, cfg.vocab_size, notes, thinking)
    md = {k: v.value for k, v in writer.kv_data[0].items()}
    check_tokenizer(md, model_dir, notes)
    from ..models.tokenizer import load_tokenizer
    from .ollama import modelfile as ollama_modelfile

    hf = load_tokenizer(model_dir)
    modelfile_text = ollama_modelfile(out.name, modelfile.name, general_name, origin or str(model_dir), chat, stop_texts(model_dir, hf, config, md), hf, thinking)

    for t in plan:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), _nbytes(t.shape, t.type), raw_dtype=gguf.GGMLQuantizationType[t.type])
    with written_whole(writer, out):
        writer.write_ti_data_to_file()
        for t in plan:  # one tensor converted at a time; each source array is let go once written
            writer.write_tensor_data(_tensor_bytes(t, weights.pop(t.source) if t.source else t.data))
    atomic_write_text(modelfile, modelfile_text)
    return ExportResult(out, outtype, len(plan), out.stat().st_size, notes, modelfile, dict(Counter(t.type for t in plan).most_common()))


@contextlib.contextmanager
def written_whole(writer, out: Path):
    """A GGUF file from ``writer`` under a temporary name beside ``out`` (header and key-values written here, the
    tensors by the caller within the block), renamed to ``out`` once complete and removed if anything fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        yield
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --- tensors ----------------------------------------------------------------


def _plan(config: dict, weights: dict[str, np.ndarray], weight_type: str, notes: list[str]):
    """(architecture, the tensors to write in order, ModelConfig), every weight checked against config.json."""
    from ..models.layout import expected_shapes

    model_type = config.get("model_type")
    family, cfg = exportable(config)
    arch = family.gguf_arch
    scaling = config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type") or scaling.get("type") or "default"
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
    if cfg.longrope is not None:  # LongRoPE's per-frequency factors, as llama.cpp's Phi3MiniModel writes them
        for kind, factors in (("long", cfg.longrope.long_factor), ("short", cfg.longrope.short_factor)):
            data = np.asarray(factors, dtype=np.float32)
            plan.append(_Tensor(f"rope_factors_{kind}.weight", None, data.shape, "F32", data=data))
    fallback = []
    for name in expected:  # embed, norm, then each block's, then lm_head
        stem, _, param = name.rpartition(".")
        gname = f"{tensor_name(family, stem)}.{param}"
        shape = tuple(weights[name].shape)
        # convert_hf_to_gguf.py: 1-D tensors, norms and anything but a .weight stay F32.
        kind = "F32" if len(shape) == 1 or gname.endswith("_norm.weight") or param != "weight" else weight_type
        if kind in ("Q8_0", "Q4_0") and shape[-1] % BLOCK:
            kind = "F16"  # as llama.cpp falls back when gguf.quants refuses a row length
            fallback.append(gname)
        heads = permuted_heads(family, cfg, stem)
        shift = family.norm_offset if name.endswith("norm.weight") else 0.0  # llama.cpp's graph multiplies by the stored norm
        plan.append(_Tensor(gname, name, shape, kind, heads, shift=shift))
    order = [name for name, _ in family.gguf_block]
    plan.sort(key=lambda t: _order(t, order))
    if fallback:
        notes.append(f"{len(fallback)} tensor(s) stored as F16 because their rows are not a multiple of {BLOCK} (as llama.cpp does): {', '.join(fallback[:4])}{' ...' if len(fallback) > 4 else ''}")
    if weight_type == "Q4_0":
        notes.append("q4_0 quantizes every 2-D weight, the embedding and output head included (llama-quantize --pure); llama-quantize's default keeps the head in Q6_K")
    if weight_type == "F16":
        big = [t.name for t in plan if t.type == "F16" and float(np.max(np.abs(weights[t.source]))) > 65504]
        if big:
            notes.append(f"{', '.join(big[:3])} hold values beyond float16's range (65504), which became inf; export as f32 or q8_0 instead")
    return arch, plan, cfg


def exportable(config: dict, instead: str = "run mlxtune export -f hf with the same --model or --adapter, then llama.cpp's convert_hf_to_gguf.py on that directory"):
    """(the family, mlx-lm's reading of config.json) of a model llama.cpp computes as mlxtune does; UnsupportedModelError saying why not.

    What GGUF export refuses, GGUF LoRA export refuses too (``gguf_lora``): a
    family without a llama.cpp architecture, a rope scaling or rope layout, or
    an attention scale that llama.cpp's graph would compute otherwise.
    ``instead``: what to do with a family GGUF export does not write.
    """
    from ..models.layout import ModelConfig

    model_type = config.get("model_type")
    family = families.get(model_type)
    if family is None or not family.gguf_arch:
        what = f"{family.name} models (model type {model_type!r})" if family and family.name != model_type else f"{model_type!r} models"
        raise UnsupportedModelError(
            f"GGUF export does not write {what} (it writes {', '.join(families.gguf_export_model_types())}; SmolLM is llama): {instead}"
        )
    scaling = config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type not in family.gguf_rope_types:
        raise UnsupportedModelError(
            f"rope scaling {rope_type!r} of this {model_type} model cannot be exported to GGUF (it exports {', '.join(family.gguf_rope_types)} for {model_type})"
        )
    if config.get("rope_traditional"):
        raise UnsupportedModelError("rope_traditional models cannot be exported to GGUF: llama.cpp's llama rotates half-split pairs")
    cfg = ModelConfig.from_dict(config)  # mlx-lm's reading of config.json, which the weights were trained under
    _check_rope_layers(cfg, family, family.gguf_arch)
    _check_attention_scale(cfg, family, family.gguf_arch)
    return family, cfg


def tensor_name(family, stem: str) -> str:
    """The GGUF name of the Hugging Face module ``stem`` (``model.layers.3.self_attn.q_proj`` -> ``blk.3.attn_q``), without its ``.weight``."""
    if stem.startswith("model.layers."):
        layer, _, rest = stem.removeprefix("model.layers.").partition(".")
        return f"blk.{layer}.{dict((hf, name) for name, hf in family.gguf_block)[rest]}"
    return dict((hf, name) for name, hf in family.gguf_global)[stem]


def permuted_heads(family, cfg, stem: str) -> int | None:
    """The heads whose rotary rows llama.cpp's converter permutes in module ``stem``'s output rows (``permute``), or None: left as they are."""
    if family.gguf_permute_qk and stem.endswith(("self_attn.q_proj", "self_attn.k_proj")):
        return cfg.num_attention_heads if stem.endswith("q_proj") else cfg.num_key_value_heads
    return None


def _check_rope_layers(cfg, family, arch: str) -> None:
    """Refuse a model whose layers without rope are not the ones llama.cpp's ``arch`` graph leaves unrotated (it reads none from the file)."""
    n = cfg.num_hidden_layers
    ours, theirs = cfg.rope_layers or (True,) * n, family.gguf_rope_layers(n) or (True,) * n
    if ours != theirs:
        def without(flags):
            return ", ".join(str(i) for i, r in enumerate(flags) if not r) or "none"

        raise UnsupportedModelError(
            f"this {cfg.model_type} model has no rope in layers {without(ours)}, but llama.cpp's {arch} model has none in layers "
            f"{without(theirs)} whatever the file says, so it would compute another model; use the model with mlxtune or mlx-lm instead of GGUF"
        )


def _check_attention_scale(cfg, family, arch: str) -> None:
    """Refuse a model whose attention scale llama.cpp's ``arch`` graph would not compute (it reads none from the file)."""
    theirs = family.gguf_query_pre_attn_scalar(cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.num_hidden_layers)
    if theirs is not None and cfg.query_pre_attn_scalar != theirs:
        raise UnsupportedModelError(
            f"this {cfg.model_type} model scales attention by {family.query_scale_field} = {cfg.query_pre_attn_scalar:g}, but llama.cpp's {arch} "
            f"model uses {theirs:g} whatever the file says, so it would compute another model; use the model with mlxtune or mlx-lm instead of GGUF"
        )


def _order(t: _Tensor, block_order: list[str]) -> tuple:
    """rope_freqs, token_embd, blocks in order (each as convert_hf_to_gguf's tensor map lists them), output_norm, output."""
    parts = t.name.split(".")
    if parts[0] == "blk":
        return (2, int(parts[1]), block_order.index(parts[2]), parts[3])
    first = {"rope_freqs": 0, "rope_factors_long": 0, "rope_factors_short": 0, "token_embd": 1, "output_norm": 3, "output": 4}
    return (first[parts[0]], 0, 0, parts[0])


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: rows (n_head, 2, d/2) stored as (n_head, d/2, 2).

    llama.cpp rotates adjacent pairs of a head's rows; Hugging Face rotates its
    two halves. The inverse is ``gguf_import._unpermute``; which families need it: ``Family.gguf_permute_qk``.
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
    if t.shift:
        w = w.astype(np.float32) + np.float32(t.shift)
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


def _add_general(writer, model_dir: Path, file_type: str, n_params: int, name: str | None) -> str:
    """general.*: name and size label as convert_hf_to_gguf.py derives them (model card, directory name); returns the name."""
    import gguf

    meta = gguf.Metadata.load(None, model_dir.resolve(), name, n_params)
    if meta.name is None:
        meta.name = model_dir.resolve().name
    if meta.size_label is None:
        meta.size_label = gguf.size_label(n_params, 0, 0, 0)
    writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(writer)
    writer.add_file_type(gguf.LlamaFileType[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return meta.name


def _add_hyperparameters(writer, config: dict, cfg, family, notes: list[str]) -> None:
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
    writer.add_rope_dimension_count(cfg.rope_dims())  # partial rotary (phi3): the dims rope turns
    scaling = cfg.rope_scaling or {}
    rope_type = scaling.get("rope_type") or scaling.get("type")
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    if family.gguf_context_keys:  # as llama.cpp's Phi3MiniModel: the original context, the sliding window (0: none)
        original = cfg.longrope.original_max if cfg.longrope else int(config.get("original_max_position_embeddings") or 4096)  # mlx-lm's default
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_sliding_window(int(config.get("sliding_window") or 0))
        if cfg.longrope is not None:  # what cos and sin are scaled by, as mlxtune computes it (transformers' rule)
            writer.add_rope_scaling_attn_factors(cfg.rope_attention_factor())
    if cfg.sliding_layers is not None and any(cfg.sliding_layers):
        _add_sliding_window(writer, cfg, family, notes)


def _add_sliding_window(writer, cfg, family, notes: list[str]) -> None:
    """The sliding window, as the converter writes it; its pattern and rope base only where llama.cpp's defaults differ.

    llama.cpp's converter writes neither (real Gemma 3 models have llama.cpp's
    defaults); llama.cpp reads both when present. Builds older than these keys
    ignore them and compute another model, which the note says.
    """
    writer.add_sliding_window(cfg.sliding_window)
    period = next((i + 1 for i, s in enumerate(cfg.sliding_layers) if not s), len(cfg.sliding_layers) + 1)
    written = []
    if period != family.gguf_swa_pattern:
        writer.add_sliding_window_pattern(period)
        written.append(f"attention.sliding_window_pattern {period}")
    if cfg.local_rope_theta != family.gguf_swa_base:
        writer.add_rope_freq_base_swa(cfg.local_rope_theta)
        written.append(f"rope.freq_base_swa {cfg.local_rope_theta:g}")
    if written:
        notes.append(f"this model's {' and '.join(written)} differ from llama.cpp's defaults; llama.cpp builds older than these keys ignore them")


def stop_texts(model_dir: Path, tokenizer, config: dict, md: dict) -> list[str]:
    """The texts of the tokens that end a generation: the GGUF's eos, then what the model's files say (``models.tokenizer.stop_token_ids``)."""
    from ..models.tokenizer import stop_token_ids

    tokens = md.get("tokenizer.ggml.tokens") or []
    eos = md.get("tokenizer.ggml.eos_token_id")
    ids = stop_token_ids(model_dir, tokenizer, config)
    ordered = ([eos] if eos is not None else []) + sorted(ids - {eos})  # the GGUF's own eos, which llama.cpp stops on, first
    return [tokens[i] for i in ordered if 0 <= i < len(tokens)]
