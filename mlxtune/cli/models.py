"""The commands that fetch, convert, merge, run and export models: download, convert, fuse, generate, export."""

from __future__ import annotations

import sys

import click

from . import BACKEND_HELP, BACKENDS, CONTEXT, DTYPES
from ..export import TARGETS as EXPORT_TARGETS
from .progress import fmt_bytes


# ---------------------------------------------------------------- download


@click.command(context_settings=CONTEXT)
@click.argument("model")
@click.option("--revision", help="Branch, tag or commit hash on the Hub.")
@click.option("--offline", is_flag=True, default=None, help="Only look in the local cache (also HF_HUB_OFFLINE=1).")
def download(model: str, revision: str | None, offline: bool | None) -> None:
    """Download a model from the Hugging Face Hub into the local cache.

    Only the files a model needs (config, safetensors weights, tokenizer) are
    fetched. Prints the local path; afterwards the model works offline.

    \b
    Example:
      mlxtune download HuggingFaceTB/SmolLM2-135M-Instruct
    """
    from ..models.hub import download as do_download

    click.echo(str(do_download(model, revision=revision, offline=offline)))


# ---------------------------------------------------------------- convert


@click.command(context_settings=CONTEXT)
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(), help="Directory to write the MLX model to.")
@click.option("--dtype", type=DTYPES, help="Store dense weights in this dtype (dequantizes a quantized source).")
@click.option("-q", "--quantize", is_flag=True, help="Quantize the weights (affine, like mlx-lm).")
@click.option("--q-bits", type=click.Choice(["4", "8"]), default="4", show_default=True, help="Bits per weight when quantizing.")
@click.option("--q-group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True, help="Weights per quantization group.")
@click.option("--revision", help="Hub revision (branch, tag or commit).")
@click.option("--offline", is_flag=True, default=None, help="Resolve Hub ids from the local cache only.")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
def convert(model, output, dtype, quantize, q_bits, q_group_size, revision, offline, force) -> None:
    """Convert a Hub id, a Hugging Face directory, a .gguf file or a model in Ollama to MLX layout.

    The result loads with mlx_lm.load and with every mlxtune command. GGUF
    Q4_0/Q4_1/Q8_0 tensors stay quantized without loss; K-quants, Q5_0/Q5_1,
    IQ4_NL/IQ4_XS and BF16 are expanded exactly to float (with -q re-quantized,
    and the loss change that causes is printed); the tokenizer and chat template
    are rebuilt from the GGUF metadata.

    \b
    Examples:
      mlxtune convert SmolLM2-135M-Instruct.Q4_1.gguf -o models/smollm2
      mlxtune convert ollama:smollm2:135m -o models/smollm2   # the GGUF 'ollama pull' left
      mlxtune convert HuggingFaceTB/SmolLM2-135M-Instruct -o models/smollm2-q8 -q --q-bits 8
    """
    from ..convert import convert as do_convert

    r = do_convert(model, output, dtype=dtype, quantize=quantize, q_bits=int(q_bits), q_group_size=int(q_group_size), revision=revision, offline=offline, force=force)
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    q = r.quantization
    what = f"{q['bits']}-bit (group {q['group_size']})" if q else (r.dtype or "weights as stored")
    overrides = [v for v in (q or {}).values() if isinstance(v, dict)]
    if overrides:
        what += f", {len(overrides)} layer(s) at other widths ({', '.join(sorted({str(v.get('bits')) + '-bit' for v in overrides}))})"
    click.echo(f"Converted {r.source.spec} ({r.source.kind}) -> {r.path}: {r.n_parameters / 1e6:.1f}M parameters, {what}, {fmt_bytes(r.size_bytes)}")
    c = r.requantization
    if c is not None:
        click.echo(f"Re-quantizing changed the loss on {c.tokens} tokens of sample text from {c.before:.4f} (weights as the GGUF stores them) "
                   f"to {c.after:.4f} ({(c.after - c.before) / c.before:+.2%}); convert without -q to keep them exact")


# ---------------------------------------------------------------- fuse


@click.command(context_settings=CONTEXT)
@click.option("-a", "--adapter", required=True, type=click.Path(), help="Run directory written by 'mlxtune lora', or a PEFT LoRA adapter directory.")
@click.option("-m", "--model", help="Base model. [default: the one the adapter was trained on]")
@click.option("-o", "--output", required=True, type=click.Path(), help="Directory for the fused model.")
@click.option("--dtype", type=DTYPES, help="dtype of the fused weights. [default: the base model's; float16 for a quantized base]")
@click.option("--name", help="What the model card calls the model. [default: the run's directory name]")
@click.option("-q", "--quantize", is_flag=True, help="Re-quantize after fusing (may lose part of the adapter's effect).")
@click.option("--q-bits", type=click.Choice(["4", "8"]), help="Bits when re-quantizing. [default: the base's, else 4]")
@click.option("--q-group-size", type=click.Choice(["32", "64", "128"]), help="Group size when re-quantizing. [default: the base's, else 64]")
@click.option("--thinking/--no-thinking", default=None, help="The fused model's chat template thinks unless told otherwise (templates with enable_thinking: Qwen3, SmolLM3). [default: as the run was trained; off]")
@click.option("--backend", type=BACKENDS, default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
def fuse(adapter, model, output, dtype, quantize, q_bits, q_group_size, name, thinking, backend, offline, force) -> None:
    """Merge LoRA adapters into the base weights: a standalone model.

    \b
    Example:
      mlxtune fuse --adapter runs/notes -o fused
    """
    from ..fuse import fuse as do_fuse

    r = do_fuse(adapter, output, model=model, dtype=dtype, quantize=quantize, q_bits=int(q_bits) if q_bits else None, q_group_size=int(q_group_size) if q_group_size else None, offline=offline, force=force, backend=backend, name=name, thinking=thinking)
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    kind = f"{r.quantization['bits']}-bit" if r.quantization else r.dtype
    click.echo(f"Fused {r.fused_layers} adapter layers into {r.base} -> {r.path} ({kind}, {fmt_bytes(r.size_bytes)})")


# ---------------------------------------------------------------- generate


@click.command(context_settings=CONTEXT)
@click.option("-m", "--model", help="Model: Hub id, directory, .gguf or ollama:NAME[:TAG]. [default: the adapter's base, else SmolLM2-135M-Instruct]")
@click.option("-a", "--adapter", type=click.Path(), help="Run directory with adapters to apply, or a PEFT LoRA adapter directory.")
@click.option("-p", "--prompt", required=True, help="The prompt ('-' reads standard input).")
@click.option("--max-tokens", type=int, default=256, show_default=True, help="Most tokens to generate.")
@click.option("--temp", type=float, default=0.0, show_default=True, help="Sampling temperature; 0 is greedy.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling threshold.")
@click.option("--seed", type=int, help="Random seed for sampling.")
@click.option("--system", help="System message (chat models).")
@click.option("--chat/--no-chat", default=True, help="Use the model's chat template. [default: on]")
@click.option("--thinking/--no-thinking", default=None, help="Let the model think first (chat templates with enable_thinking: Qwen3, SmolLM3). [default: as the adapter's run was trained; off]")
@click.option("--backend", type=BACKENDS, default="auto", show_default=True, help=BACKEND_HELP)
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
@click.option("-v", "--verbose", is_flag=True, help="Print speed and memory after the text.")
def generate(model, adapter, prompt, max_tokens, temp, top_p, seed, system, chat, thinking, backend, offline, verbose) -> None:
    """Generate text from a model (and adapter), streaming tokens as they come.

    \b
    Examples:
      mlxtune generate --model fused --prompt "Tidy up these notes: alice to fix login b4 fri"
      mlxtune generate --adapter runs/notes --prompt "..." --temp 0.7 --seed 1
    """
    from .. import runtime
    from ..generate import generate as do_generate
    from ..inference import load

    if prompt == "-":
        prompt = sys.stdin.read()
    loaded = load(model, adapter, offline=offline, backend=backend, thinking=thinking)
    for note in loaded.notes:
        click.echo(f"note: {note}", err=True)
    last = None
    for chunk in do_generate(loaded, prompt, max_tokens=max_tokens, temp=temp, top_p=top_p, seed=seed, chat=chat, system=system):
        click.echo(chunk.text, nl=False)
        last = chunk
    click.echo()
    if verbose and last is not None:
        from ..backends import get

        impl = get(loaded.backend)
        where, device = impl.describe(), impl.device()
        click.echo(f"[{last.prompt_tokens} prompt tokens, {last.generation_tps:.1f} tokens/s, peak {fmt_bytes(runtime.peak_memory_bytes(device))}; {where}]", err=True)


# ---------------------------------------------------------------- export


@click.command(context_settings=CONTEXT)
@click.option("-f", "--format", "fmt", required=True, type=click.Choice(list(EXPORT_TARGETS)), help="; ".join(f"{t.name}: {t.help}" for t in EXPORT_TARGETS.values()) + ".")
@click.option("-a", "--adapter", type=click.Path(), help="Run directory of 'mlxtune lora' (gguf/hf: fused into its base first; lmstudio: fused as 'mlxtune fuse' does).")
@click.option("-m", "--model", help="Model directory, Hub id, .gguf or ollama:NAME[:TAG] (gguf/hf/lmstudio); with --adapter, its base. [default: the adapter's base]")
@click.option("-o", "--output", type=click.Path(), help="gguf, gguf-lora: the .gguf file, or a folder for <name>-<TYPE>.gguf (gguf-lora: <name>-<TYPE>-LoRA.gguf; its Modelfile beside it); hf, peft: a directory. (lmstudio: none)")
@click.option("--name", help="What the outputs call the model (file name, GGUF general.name, Ollama, LM Studio's mlxtune/<name>, model card). [default: the run's directory name, else the model's]")
@click.option("--outtype", type=click.Choice(["f32", "f16", "q8_0", "q4_0"]), default="f16", show_default=True, help="gguf: tensor type of the weights; gguf-lora: of the adapter (f32 or f16).")
@click.option("--dtype", type=DTYPES, help="hf, lmstudio: stored dtype. [default: the base model's; float16 for a quantized base, as fuse]")
@click.option("--base-model", help="peft: the base_model_name_or_path to record. [default: the run's Hub id]")
@click.option("--thinking/--no-thinking", default=None, help="gguf, gguf-lora, hf: the chat template (and the Ollama Modelfile) think unless told otherwise (templates with enable_thinking: Qwen3, SmolLM3). [default: as the run was trained; off]")
@click.option("--lmstudio-dir", type=click.Path(), help="lmstudio: LM Studio's models folder (also LMSTUDIO_MODELS_DIR). [default: ~/.lmstudio/models, or where ~/.lmstudio-home-pointer says]")
@click.option("--offline", is_flag=True, default=None, help="Never contact the Hub.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
def export(fmt, adapter, model, output, name, outtype, dtype, base_model, thinking, lmstudio_dir, offline, force) -> None:
    """Export a model or an adapter for llama.cpp/Ollama, transformers, peft or LM Studio.

    \b
    Examples:
      mlxtune export -f gguf --adapter runs/notes -o notes.gguf --outtype q8_0
      ollama create notes -f notes.Modelfile    # the Modelfile is written beside the .gguf
      mlxtune export -f gguf-lora --adapter runs/notes -o notes-lora.gguf   # the adapter alone: llama.cpp --lora, Ollama ADAPTER
      mlxtune export -f hf --model fused -o hf-model
      mlxtune export -f peft --adapter runs/notes -o notes-peft
      mlxtune export -f lmstudio --adapter runs/notes   # LM Studio lists it as mlxtune/notes
    """
    from ..export import export as do_export

    r = do_export(fmt, output, adapter=adapter, model=model, outtype=outtype, dtype=dtype, base_model=base_model, offline=offline, force=force, name=name, thinking=thinking, lmstudio_dir=lmstudio_dir)
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"Exported {r.path}: {r.what}, {fmt_bytes(r.size_bytes)}")
    if r.extra is not None:
        from ..export.model_card import ollama_name

        click.echo(f"Ollama: {r.extra} (ollama create {ollama_name(r.name)} -f {r.extra})")
