"""The model card (``README.md``) of every model or adapter directory mlxtune writes.

One card for fused MLX models, Hugging Face exports and PEFT adapters: what it
is, the base model, the data, the settings and the losses the run measured,
and how to load it with mlx_lm, transformers, llama.cpp and Ollama. Its YAML
front matter follows the Hub's model-card fields (``base_model``,
``library_name``, ``tags``) and llama.cpp's ``model_name``, so the Hub shows
the lineage and a GGUF converted from the directory is named after the model.

The facts come from the run directory (``run_facts``); a fused model keeps them
in its ``mlxtune_fuse.json``, so a later export of it writes the same card.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

FUSE_INFO = "mlxtune_fuse.json"  # what fuse records in its output: base, adapter, dtype, name, the run's facts
CARD = "README.md"
_KINDS = {"mlx": "an MLX model directory", "hf": "a Hugging Face checkpoint", "peft": "a PEFT adapter", "lmstudio": "an MLX model directory placed for LM Studio"}


def run_facts(run_dir: str | Path) -> dict:
    """What a card says about a training run, read from what the run wrote (JSON-able, missing parts left out)."""
    from ..models.ollama import is_ollama_spec
    from ..training.checkpoint import read_metrics
    from ..training.run_schema import BaseModel, DataInfo, RunConfig

    run_dir = Path(run_dir)
    meta = RunConfig.from_file(run_dir)
    cfg, base, data, lp = meta.settings, meta.base_model or BaseModel(), meta.data or DataInfo(), meta.lora_parameters
    facts: dict = {"run": run_dir.resolve().name, "method": "DoRA" if meta.dora else "LoRA"}
    peft = (meta.source or {}).get("peft_config") or {}  # an adapter converted from PEFT
    facts["base_model"] = base.repo_id or base.spec or base.path or peft.get("base_model_name_or_path")
    if base.revision:
        facts["base_revision"] = base.revision
    if base.kind == "gguf" and base.path and not is_ollama_spec(base.spec):  # an Ollama blob's name is its digest: the spec says more
        facts["base_file"] = Path(base.path).name
    if data.description or cfg.data:
        facts["data"] = data.description or cfg.data
    facts["adapter"] = {"rank": lp.rank, "alpha": cfg.alpha, "scale": lp.scale, "dropout": lp.dropout, "keys": lp.keys, "blocks": meta.num_layers}
    facts["training"] = {k: getattr(cfg, k) for k in ("iters", "epochs", "batch_size", "grad_accumulation", "learning_rate", "max_seq_len", "seed", "recipe") if getattr(cfg, k) is not None}
    vals = [m for m in read_metrics(run_dir) if m.get("val_loss") is not None]
    if vals:
        picks = (("before training", vals[0]), ("best", min(vals, key=lambda m: m["val_loss"])), ("final", vals[-1]))
        facts["validation"] = [{"label": label, "step": m["step"], "loss": m["val_loss"]} for label, m in picks]
    facts["evals"] = [e for e in (_eval_summary(p) for p in sorted(run_dir.glob("eval-*.json"))) if e]
    return facts


def _eval_summary(path: Path) -> dict | None:
    """The losses of an ``mlxtune eval`` result file, or None when it cannot be read."""
    try:
        r = json.loads(path.read_text(encoding="utf-8"))
        scores = [{"name": s["name"], "loss": s.get("loss"), "perplexity": s.get("perplexity"), **{k: v for k, v in (s.get("metrics") or {}).items() if isinstance(v, (int, float))}} for s in r["scores"]]
        return {"split": r.get("split"), "source": r.get("source") or r.get("data"), "records": r.get("records"), "trained_on": r.get("trained_on"), "scores": scores}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fused_facts(model_dir: str | Path) -> tuple[str | None, dict | None]:
    """(name, run facts) a fused model directory recorded, (None, None) for any other model."""
    try:
        info = json.loads((Path(model_dir) / FUSE_INFO).read_text(encoding="utf-8"))
        return info.get("name"), info.get("run")
    except (OSError, ValueError, AttributeError):
        return None, None


def own_name(source) -> str:
    """A model's own name (a ``hub.ModelSource``): the Hub id's last part, the file's or folder's name, or the Ollama model's name and tag."""
    from ..models.ollama import is_ollama_spec, parse_name

    if is_ollama_spec(source.spec):
        n = parse_name(source.spec)
        return f"{n.model}-{n.tag}"
    return source.repo_id.split("/")[-1] if source.repo_id else source.path.stem if source.kind == "gguf" else source.path.name


def ollama_name(name: str) -> str:
    """``name`` as Ollama accepts a model name: lower case letters, digits, '.', '_' and '-'."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "model"


def model_card(kind: str, name: str, where: str, facts: dict | None = None, base_model: str | None = None, detail: str = "") -> str:
    """The README.md of a ``kind`` directory ("mlx", "hf", "peft" or "lmstudio") called ``name``, written at ``where``.

    ``facts``: the run's (``run_facts``), None for a model mlxtune did not train;
    ``base_model``: what it was made from (a Hub id or a path), in place of the run's base;
    ``detail``: what else to say in its first paragraph (dtype, layers).
    """
    from ..models.hub import is_repo_id

    facts = facts or {}
    base = base_model or facts.get("base_model")
    hub_base = base if base and is_repo_id(base) and not Path(base).exists() else None
    front_base = base if kind == "peft" else hub_base  # as peft's own card: its base_model_name_or_path, whatever it is
    library = {"mlx": "mlx", "hf": "transformers", "peft": "peft", "lmstudio": "mlx"}[kind]
    tags = ["mlxtune"] + ([facts["method"].lower()] if facts else [])
    front = ["---", *([f"base_model: {front_base}"] if front_base else []), f"library_name: {library}", f"model_name: {json.dumps(name)}", "pipeline_tag: text-generation", "tags:", *(f"- {t}" for t in tags), "---", ""]
    if facts:
        of = base or "its base model"
        what = f"{facts['method']} adapter for {of}" if kind == "peft" else f"{of} fine-tuned with {facts['method']}, the adapter fused into its weights"
        intro = f"{what}: {_KINDS[kind]}, trained with mlxtune (run `{facts['run']}`){detail}."
    else:
        intro = f"{base or name} as {_KINDS[kind]}, written by mlxtune{detail}."
    lines = front + [f"# {name}", "", intro, ""] + _training(facts) + _measured(facts) + _usage(kind, name, where, hub_base or base)
    return "\n".join(lines).rstrip() + "\n"


def _training(facts: dict) -> list[str]:
    if not facts:
        return []
    a, t = facts.get("adapter") or {}, facts.get("training") or {}
    base = (facts.get("base_model") or "not recorded") + (f" (revision {facts['base_revision'][:12]})" if facts.get("base_revision") else "") + (f" (from {facts['base_file']})" if facts.get("base_file") else "")
    alpha = f", alpha {a['alpha']:g}" if isinstance(a.get("alpha"), (int, float)) else ""
    where = f" on {', '.join(a['keys'])}" if a.get("keys") else ""
    length = f"{t['iters']} steps" if t.get("iters") else f"{t.get('epochs')} epochs"
    lines = ["## Training", "", f"- **Base model**: {base}"]
    if facts.get("data"):
        lines.append(f"- **Data**: {facts['data']}")
    lines.append(f"- **Adapter**: {facts['method']} rank {a.get('rank')}{alpha} (scale {a.get('scale')}), dropout {a.get('dropout')}{where} of {a.get('blocks')} blocks")
    lines.append(
        f"- **Settings**: {length}, batch {t.get('batch_size')}" + (f" x {t['grad_accumulation']} accumulated" if (t.get("grad_accumulation") or 1) > 1 else "")
        + f", learning rate {t.get('learning_rate')}, max sequence {t.get('max_seq_len')} tokens, seed {t.get('seed')}" + (f", recipe {t['recipe']}" if t.get("recipe") else "")
    )
    return lines + [""]


def _measured(facts: dict) -> list[str]:
    rows = [f"| validation, {v['label']} | step {v['step']} | {v['loss']:.3f} | {_ppl(v['loss'])} |" for v in facts.get("validation") or []]
    for e in facts.get("evals") or []:
        trained = f", trained on {e['trained_on']} of them" if e.get("trained_on") else ""  # not held out: it measures fit, not generalisation
        what = f"eval, {e.get('split')} split ({e.get('records')} records{trained})"
        rows += [f"| {what}, {s['name']} | | {s['loss']:.3f} | {_ppl(s['loss'])} |" for s in e["scores"] if isinstance(s.get("loss"), (int, float))]
    if not rows:
        return []
    return ["## Measured", "", "| what | when | loss | perplexity |", "|---|---|---|---|", *rows, ""]


def _ppl(loss: float) -> str:
    return f"{math.exp(min(loss, 50)):.2f}"


def _usage(kind: str, name: str, where: str, base: str | None) -> list[str]:
    """How to load it with each tool: directly where the tool reads this layout, through an mlxtune export where not."""
    gguf, modelfile, tag = f"{name}.gguf", f"{name}.Modelfile", ollama_name(name)
    source = "--adapter" if kind == "peft" else "--model"
    lines = ["## How to use", ""]
    if kind == "peft":
        lines += ["With transformers and peft, on the base model:", "", "```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'base = AutoModelForCausalLM.from_pretrained("{base or "BASE_MODEL"}")', f'model = PeftModel.from_pretrained(base, "{where}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{base or "BASE_MODEL"}")', "```", "",
                  f"With mlx_lm: `mlxtune fuse --adapter {where} -o {name}-fused` merges it into its base, and `mlx_lm.load(\"{name}-fused\")` loads",
                  f"the result; `mlxtune generate --adapter {where} --prompt \"...\"` runs it as it is.", ""]
    else:
        hf = where if kind == "hf" else f"{name}-hf"
        if kind == "lmstudio":
            key = f"{Path(where).parent.name}/{Path(where).name}"
            lines += [f"In LM Studio: My Models lists it as `{key}`, run by its MLX engine (Apple silicon); `lms ls` lists it too.", ""]
        lines += ["With mlx_lm:", "", "```python", "from mlx_lm import generate, load", "", f'model, tokenizer = load("{where}")',
                  'print(generate(model, tokenizer, prompt="Hello", max_tokens=100))', "```", ""]
        if kind != "hf":
            lines += [f"With transformers, after `mlxtune export -f hf --model {where} -o {hf}`:", ""]
        else:
            lines += ["With transformers:", ""]
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "", f'model = AutoModelForCausalLM.from_pretrained("{hf}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{hf}")', "```", ""]
    lines += ["With llama.cpp and Ollama, as a GGUF file with its Modelfile:", "", "```sh", f"mlxtune export -f gguf {source} {where} -o {gguf} --outtype q8_0",
              f'llama-cli -m {gguf} -p "Hello"', f"ollama create {tag} -f {modelfile}", f"ollama run {tag}", "```", ""]
    return lines
