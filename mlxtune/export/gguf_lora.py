"""Export a run's adapter alone as a GGUF LoRA adapter, for llama.cpp (``--lora``) and Ollama (``ADAPTER``), with a Modelfile.

The file is what llama.cpp's ``convert_lora_to_gguf.py`` writes for the same
adapter: ``general.type`` "adapter", ``adapter.type`` "lora",
``adapter.lora.alpha`` (F32), and for each adapted linear layer the base
tensor's GGUF name with ``.lora_a`` and ``.lora_b``: ggml shapes (in, r) and
(r, out), that is numpy's (r, in) = Aᵀ and (out, r) = Bᵀ of mlx-lm's ``lora_a``
(in, r) and ``lora_b`` (r, out), PEFT's ``lora_A`` and ``lora_B``. llama.cpp
adds scale · lora_b(lora_a(x)) with scale = alpha / r (``src/llama-adapter.h``,
``get_scale``; alpha 0 means 1), so alpha is mlx-lm's scale times the rank:
PEFT's ``lora_alpha``. No tokenizer and no hyperparameters: llama.cpp takes them
from the base, and checks that the architecture and every tensor's shape match.

The base tensor names, the q/k row permutation llama.cpp applies to llama's
``attn_q``/``attn_k`` (here to ``lora_b``'s rows, the output rows of
ΔW = Bᵀ Aᵀ), and what llama.cpp would compute otherwise (refused) are
``export.gguf``'s (``tensor_name``, ``permuted_heads``, ``exportable``), read
from the family records: the adapter fits the GGUF that ``export -f gguf``
writes of the base, and one llama.cpp's converter writes. DoRA is refused:
llama.cpp has no DoRA.

The Modelfile beside it is ``FROM`` the base and ``ADAPTER`` the file, with the
base's chat template and stops as ``export -f gguf`` writes them
(``export.ollama``). The base is the run's (or ``model``): a .gguf file is
named by its path, a model from the Ollama store (``ollama:NAME``) by its
name; for any other base, the GGUF ``export -f gguf --model BASE -o DIR/``
writes beside the adapter (``<name>-F16.gguf``), which a note says how to make.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AdapterError, ModelFormatError, OutputExistsError, UsageError
from ..fsutil import atomic_write_text
from .gguf import exportable, permute, permuted_heads, stop_texts, tensor_name, written_whole

# --outtype -> GGML type of lora_a and lora_b (the converter's f32 and f16; ggml blocks do not fit rows of r values)
OUTTYPES = {"f32": "F32", "f16": "F16"}


@dataclass
class LoraExportResult:
    path: Path  # the .gguf written
    outtype: str
    modules: int  # adapted linear layers
    rank: int
    alpha: float  # adapter.lora.alpha
    size_bytes: int
    modelfile: Path
    base: str  # the Modelfile's FROM
    notes: list[str] = field(default_factory=list)


def lora_file_name(name: str, outtype: str) -> str:
    """The adapter's file name in an output folder: ``<name>-<TYPE>-LoRA.gguf`` (beside ``<name>-<TYPE>.gguf``, the model's)."""
    return f"{name}-{outtype.upper()}-LoRA.gguf"


def export_gguf_lora(run_dir: str | Path, out_path: str | Path, model: str | None = None, outtype: str = "f16", force: bool = False, name: str | None = None, offline: bool | None = None, thinking: bool | None = None) -> LoraExportResult:
    """Write the adapter of ``run_dir`` (a run, or a PEFT adapter) as a GGUF LoRA adapter at ``out_path``, and its Modelfile beside it.

    ``out_path``: the .gguf, or a folder for ``<name>-<OUTTYPE>-LoRA.gguf`` (llama.cpp's naming);
    ``model``: the base [default: the run's]; ``name``: general.name and the Ollama model [default: the run's directory name];
    ``thinking``: the Modelfile's template thinks unless told otherwise [default: as the run was trained].
    """
    import gguf

    from ..formats.peft import as_mlx_adapter
    from ..models.source import run_base_model
    from ..training.run_schema import RunConfig

    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise UsageError(f"--outtype for gguf-lora must be {' or '.join(OUTTYPES)}, not {outtype!r} (llama.cpp's LoRA adapters are not block-quantized; quantize the base instead)")
    name = name or Path(run_dir).resolve().name
    adapter_dir = as_mlx_adapter(run_dir)
    run = RunConfig.from_file(adapter_dir)
    if run.dora:
        raise AdapterError(
            f"{run_dir} is a DoRA adapter, which llama.cpp (and so Ollama) cannot apply: export it fused into its base with "
            f"'mlxtune export -f gguf --adapter {run_dir}', or as a PEFT adapter with -f peft"
        )
    out = Path(out_path)
    if out.is_dir() or str(out_path).endswith(("/", os.sep)):
        out = out / lora_file_name(name, outtype)
    modelfile = out.with_name(f"{out.stem if out.suffix.lower() == '.gguf' else out.name}.Modelfile")
    for p in (out, modelfile):
        if p.exists() and not force:
            raise OutputExistsError(f"{p} already exists: choose another output path, or pass --force to replace it")

    opened = run_base_model(adapter_dir, model, offline)
    notes = list(opened.notes)
    config, prefix = _text_config(opened.path)
    family, cfg = exportable(config, instead=f"export the adapter with 'mlxtune export -f peft --adapter {run_dir}', then run llama.cpp's convert_lora_to_gguf.py on it")
    rank, scale = int(run.lora_parameters.rank), float(run.lora_parameters.scale)
    tensors = _lora_tensors(adapter_dir, family, cfg, prefix, rank, scale == 0.0)
    alpha = scale * rank or float(rank)  # a zero scale is written as zero lora_b: llama.cpp reads alpha 0 as "scale 1"

    # the Modelfile first: what can fail there (the base's tokenizer and template) fails before any file is written
    from .ollama import modelfile as ollama_modelfile

    thinking = run.thinking if thinking is None else thinking
    base, comments = _base_reference(opened, out.parent, notes)
    template, stops, hf = _chat(opened.path, config, family, cfg, thinking, notes)
    origin = f"run {Path(run_dir).resolve()} on {opened.source.spec}"
    text = ollama_modelfile(out.name, modelfile.name, name, origin, template, stops, hf, thinking, base=base, comments=comments)

    writer = gguf.GGUFWriter(path=None, arch=family.gguf_arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    dtype = np.float32 if outtype == "f32" else np.float16
    for gname, values in tensors:
        writer.add_tensor(gname, np.ascontiguousarray(values, dtype=dtype))
    with written_whole(writer, out):
        writer.write_tensors_to_file()

    atomic_write_text(modelfile, text)
    return LoraExportResult(out, outtype, len(tensors) // 2, rank, alpha, out.stat().st_size, modelfile, base, notes)


def _text_config(base_dir: Path) -> tuple[dict, str]:
    """(config.json as GGUF export reads it, the prefix of the text model's weights): a multimodal base's text model, as ``export_gguf``."""
    from ..models import families
    from ..models.config import read_config

    config = read_config(base_dir)
    family = families.get(config.get("model_type"))
    if family is not None and isinstance(config.get("text_config"), dict):
        return family.text_part(config), family.text_prefix
    return config, ""


def _lora_tensors(adapter_dir: Path, family, cfg, prefix: str, rank: int, zero: bool) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, values in numpy's shape) of each ``.lora_a`` (r, in) and ``.lora_b`` (out, r), in the base GGUF's tensor order."""
    from ..formats import safetensors as npio
    from ..formats.adapters import ADAPTER_WEIGHTS
    from ..models.layout import expected_shapes

    path = adapter_dir / ADAPTER_WEIGHTS
    if not path.exists():
        raise AdapterError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}: the run may not have saved yet")
    weights, _ = npio.read_safetensors(path)
    shapes = expected_shapes(cfg)
    layers = {hf: i for i, (_, hf) in enumerate(family.gguf_block)}
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, values in weights.items():
        module, _, leaf = key.rpartition(".")
        stem = module.removeprefix(prefix) if prefix else module
        layer, _, rest = stem.removeprefix("model.layers.").partition(".")
        if leaf not in ("lora_a", "lora_b") or not stem.startswith("model.layers.") or not layer.isdigit() or rest not in layers or rest not in family.linear_keys:
            raise AdapterError(
                f"{path}: tensor {key} is not a LoRA tensor of a linear layer of this {cfg.model_type} model "
                f"({prefix}model.layers.N.<layer>.lora_a/lora_b, <layer> one of {', '.join(k for k in layers if k in family.linear_keys)})"
            )
        modules.setdefault(stem, {})[leaf] = values
    if not modules:
        raise AdapterError(f"{path} holds no adapter tensors")
    out: list[tuple[str, np.ndarray]] = []
    for stem in sorted(modules, key=lambda s: (int(s.split(".")[2]), layers[s.split(".", 3)[3]])):
        leaves = modules[stem]
        if set(leaves) != {"lora_a", "lora_b"}:
            raise AdapterError(f"{path}: {stem} has no {stem}.{'lora_b' if 'lora_a' in leaves else 'lora_a'} tensor")
        a, b = leaves["lora_a"], leaves["lora_b"]  # (in, r), (r, out)
        rows, cols = shapes[f"{stem}.weight"]  # (out, in)
        if a.shape != (cols, rank) or b.shape != (rank, rows):
            raise ModelFormatError(
                f"{path}: {stem}.lora_a {a.shape} and .lora_b {b.shape} do not fit the base's {stem}.weight {(rows, cols)} at rank {rank}: "
                "the base is not the model this run was trained on (pass --model with that model)"
            )
        lora_b = np.asarray(b, dtype=np.float32).T * (0.0 if zero else 1.0)  # (out, r)
        heads = permuted_heads(family, cfg, stem)
        gname = tensor_name(family, stem) + ".weight"
        out.append((gname + ".lora_a", np.asarray(a, dtype=np.float32).T))  # (r, in)
        out.append((gname + ".lora_b", permute(lora_b, heads) if heads else lora_b))
    return out


def _base_reference(opened, folder: Path, notes: list[str]) -> tuple[str, tuple[str, ...]]:
    """(the Modelfile's FROM for the base, comments saying how to get it): an Ollama model's name, a GGUF file's path, or the GGUF to export."""
    from ..models.ollama import PREFIX, is_ollama_spec
    from .model_card import fused_facts, own_name

    source = opened.source
    if is_ollama_spec(source.spec):
        return source.spec[len(PREFIX):], ()
    if source.kind == "gguf":
        path = Path(source.path).resolve()
        base = f"./{path.name}" if path.parent == folder.resolve() else str(path)
        if not path.is_file():
            notes.append(f"the Modelfile's FROM is {path}, the GGUF the run was trained on, which is no longer there: put it back or edit FROM")
        return base, ()
    gguf_name = f"{fused_facts(opened.path)[0] or own_name(source)}-F16.gguf"
    if (folder / gguf_name).is_file():
        return f"./{gguf_name}", ()
    command = f"mlxtune export -f gguf --model {source.spec} -o {folder}{os.sep}"
    notes.append(
        f"the Modelfile's FROM is ./{gguf_name}, the base as GGUF, which is not there yet: write it with '{command}' before "
        "'ollama create' (or export the adapter again with --model BASE.gguf, or --model ollama:NAME for the base in Ollama)"
    )
    return f"./{gguf_name}", (f"The base, {source.spec}, as GGUF (FROM): {command}",)


def _chat(base_dir: Path, config: dict, family, cfg, thinking: bool, notes: list[str]) -> tuple[str | None, list[str], object]:
    """(chat template, stop texts, Hugging Face tokenizer) of the base, as ``export_gguf`` writes them in its Modelfile."""
    import gguf

    from ..errors import MlxtuneError
    from ..models.tokenizer import load_tokenizer
    from .gguf_tokenizer import add_tokenizer

    hf = load_tokenizer(base_dir)
    writer = gguf.GGUFWriter(path=None, arch=family.gguf_arch)
    try:
        template = add_tokenizer(writer, base_dir, cfg.vocab_size, [], thinking)
    except MlxtuneError as e:
        notes.append(f"the Modelfile has no TEMPLATE or stops (Ollama takes the base GGUF's): the base's tokenizer does not export to GGUF ({e})")
        return None, [], hf
    md = {k: v.value for k, v in writer.kv_data[0].items()}
    return template, stop_texts(base_dir, hf, config, md), hf
