"""The Ollama Modelfile of a GGUF export (FROM the file) or a GGUF LoRA export (FROM its base, ADAPTER the file): a TEMPLATE in Ollama's syntax for the model's chat format, its stops.

Ollama does not run a model's Jinja chat template; it runs a Go template
(``TEMPLATE``) over the conversation. mlxtune writes one for each chat format
it recognises in the model's template, by the markers the template writes:

* ChatML (``<|im_start|>``/``<|im_end|>``): SmolLM2, Qwen2.5, Qwen3, SmolLM3;
* Llama 3 headers (``<|start_header_id|>``, ``<|eot_id|>``): Llama 3.x;
* Gemma turns (``<start_of_turn>``/``<end_of_turn>``; the system message opens the first user turn, as Gemma's template puts it);
* Phi-3 tags (``<|assistant|>``, ``<|end|>``; Phi-4-mini builds ``<|user|>`` from the role): Phi-3, Phi-3.5, and Phi-4-mini (without the newline after a tag);
* Mistral's ``[INST] ... [/INST]`` (the spacing read from the template, which changed between its versions).

What the template adds when thinking is off (Qwen3's and SmolLM3's empty
``<think>`` block, ``chat_template.no_think_text``) follows the assistant's
header unless the export asks for thinking, and every token that ends a
generation (``tokenizer.stop_token_ids``: the eos ids and the template's end of
turn) is a ``PARAMETER stop``. Tool definitions and tool calls, the date of
the day Llama 3.1+ writes and SmolLM3's system header are not translated.
``tests/test_ollama_templates.py`` runs these templates with Go's text/template
(Ollama's engine) and holds them to the Jinja templates of the real models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NO_THINK = "@NO_THINK@"  # where the empty think block goes: right after the assistant's header
_PROBE = "mlxtune probe"


@dataclass(frozen=True)
class ChatFormat:
    name: str  # in words, for the Modelfile's comment
    markers: tuple[str, ...]  # the Jinja template writes every one of these
    template: str  # Ollama's Go template, with NO_THINK (and the format's own @...@ slots)


CHATML = ChatFormat("ChatML", ("<|im_start|>", "<|im_end|>"), """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
@HISTORY@{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_end|>
<|im_start|>assistant
@NO_THINK@{{ end }}
{{- end }}""")

LLAMA3 = ChatFormat("Llama 3", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}
{{- if and (ne .Role "assistant") $last }}<|eot_id|><|start_header_id|>assistant<|end_header_id|>

@NO_THINK@{{ end }}
{{- end }}""")

# Llama 3.1 and later write a system header into every conversation (a knowledge cutoff, the date, the system message):
# as Ollama's own llama3.x templates, the system messages go there (.System), the date left out.
LLAMA3_HEADER = """<|start_header_id|>system<|end_header_id|>

@PREAMBLE@{{ if .System }}{{ .System }}{{ end }}<|eot_id|>
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}
{{- if and (ne .Role "assistant") $last }}<|eot_id|><|start_header_id|>assistant<|end_header_id|>

@NO_THINK@{{ end }}
{{- end }}
{{- end }}"""

GEMMA = ChatFormat("Gemma", ("<start_of_turn>", "<end_of_turn>"), """{{- $system := "" }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "system" }}{{ $system = .Content }}
{{- else if eq .Role "user" }}<start_of_turn>user
{{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
@NO_THINK@{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}""")

PHI3 = ChatFormat("Phi-3", ("<|assistant|>", "<|end|>"), """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|{{ .Role }}|>@SEP@{{ .Content }}{{ if not $last }}<|end|>@SEP@{{ end }}
{{- if and (ne .Role "assistant") $last }}<|end|>@SEP@<|assistant|>@SEP@@NO_THINK@{{ end }}
{{- end }}""")

INST = ChatFormat("Mistral [INST]", ("[INST]", "[/INST]"), """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}[INST]@OPEN@{{ if and $.System $last }}{{ $.System }}

{{ end }}{{ .Content }}@CLOSE@[/INST]@ANSWER@@NO_THINK@
{{- else if eq .Role "assistant" }}{{ .Content }}{{ if not $last }}</s>{{ end }}
{{- end }}
{{- end }}""")

FORMATS = (CHATML, LLAMA3, GEMMA, PHI3, INST)


def chat_format(template: str | None) -> ChatFormat | None:
    """The chat format whose markers the Jinja template writes, or None."""
    return next((f for f in FORMATS if template and all(m in template for m in f.markers)), None)


def go_template(fmt: ChatFormat, tokenizer, template: str, no_think: str) -> str:
    """``fmt``'s Go template for this model: its spacing read from the Jinja template's rendering, ``no_think`` after the assistant's header."""
    text = fmt.template.replace(NO_THINK, no_think)
    if fmt is CHATML:  # SmolLM3 writes the empty think block before every answer, Qwen3 before the last one only
        rendered = _render(tokenizer, [{"role": "user", "content": _PROBE}, {"role": "assistant", "content": _PROBE + "!"}, {"role": "user", "content": _PROBE}], template, {"enable_thinking": False}) or ""
        history = no_think and f"<|im_start|>assistant\n{no_think}{_PROBE}!" in rendered
        text = text.replace("@HISTORY@", f'{{{{ if eq .Role "assistant" }}}}{no_think}{{{{ end }}}}' if history else "")
    elif fmt is LLAMA3:  # a system header in every conversation (3.1 and later): its preamble, less the date of the day
        system = "<|start_header_id|>system<|end_header_id|>\n\n"
        if system in (_render(tokenizer, [{"role": "user", "content": _PROBE}], template) or ""):
            rendered = _render(tokenizer, [{"role": "system", "content": _PROBE + "!"}, {"role": "user", "content": _PROBE}], template) or ""
            m = re.search(re.escape(system) + r"(.*?)" + re.escape(_PROBE + "!"), rendered, re.S)
            preamble = re.sub(r"(?m)^Today Date:.*\n", "", m.group(1)) if m else ""
            text = LLAMA3_HEADER.replace("@PREAMBLE@", preamble).replace(NO_THINK, no_think)
    elif fmt is PHI3:  # Phi-3.5: "<|user|>\n" + content + "<|end|>\n"; Phi-4-mini: no newlines
        rendered = _render(tokenizer, [{"role": "user", "content": _PROBE}], template) or ""
        text = text.replace("@SEP@", "\n" if f"<|user|>\n{_PROBE}" in rendered else "")
    elif fmt is INST:  # v0.1/v0.2: "[INST] " + content + " [/INST]"; v0.3: "[INST]" + content + "[/INST]" and " " + answer
        rendered = _render(tokenizer, [{"role": "user", "content": _PROBE}, {"role": "assistant", "content": _PROBE + "!"}], template) or ""
        m = re.search(r"\[INST\]( ?)" + re.escape(_PROBE) + r"( ?)\[/INST\]( ?)" + re.escape(_PROBE + "!"), rendered)
        opening, closing, answer = m.groups() if m else (" ", " ", "")
        text = text.replace("@OPEN@", opening).replace("@CLOSE@", closing).replace("@ANSWER@", answer)
    return text


def _render(tokenizer, messages: list[dict], template: str, kwargs: dict | None = None) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=False, **(kwargs or {}))
    except Exception:  # the template refuses the probe (jinja errors, raise_exception())
        return None


def modelfile(gguf_name: str, modelfile_name: str, name: str, origin: str, template: str | None, stops: list[str], tokenizer, thinking: bool, base: str | None = None, comments: tuple[str, ...] = ()) -> str:
    """An Ollama Modelfile: FROM the GGUF beside it, TEMPLATE for a chat format it recognises (SYSTEM when the template has a default one), a stop per end token.

    ``stops``: the texts of the tokens that end a generation; ``tokenizer``: the model's (Hugging Face), to render ``template`` with.
    ``base``: the GGUF is a LoRA adapter: FROM ``base`` (a GGUF file's path, ``./`` for one beside it, or an Ollama model's
    name) and ADAPTER the GGUF beside it. ``comments``: more to say before FROM (how to get the base).
    """
    from ..models.chat_template import no_think_text
    from .model_card import ollama_name

    what = f"the LoRA adapter {gguf_name}" if base else gguf_name
    lines = [
        f"# Ollama Modelfile for {what} ({name}), exported by mlxtune from {origin}",
        f"# Create the Ollama model with: ollama create {ollama_name(name)} -f {modelfile_name}",
        *(f"# {c}" for c in comments),
        f"FROM {base}" if base else f"FROM ./{gguf_name}",
    ]
    if base:
        lines.append(f"ADAPTER ./{gguf_name}")
    fmt = chat_format(template)
    if fmt is not None:
        no_think = "" if thinking or tokenizer is None else no_think_text(tokenizer, template)
        lines.append(f"# TEMPLATE: the model's {fmt.name} chat template (tokenizer_config.json), in Ollama's syntax")
        if no_think:
            lines.append("# (thinking off: the empty think block its template writes for enable_thinking=false follows the assistant's header; export --thinking leaves it out)")
        if "tool" in template:
            lines.append("# (its tool definitions and tool calls are not translated)")
        lines.append(f'TEMPLATE """{go_template(fmt, tokenizer, template, no_think)}"""')
        # A default system prompt written out in a ChatML template becomes Ollama's default too.
        m = re.search(r"<\|im_start\|>system(?:\n|\\n)([^{}'\"<]+?)<\|im_end\|>", template) if fmt is CHATML else None
        if m:
            lines.append("# SYSTEM: the chat template's default system prompt, used when a conversation has none")
            lines.append(f'SYSTEM """{m.group(1)}"""')
    elif template:
        lines.append("# No TEMPLATE: mlxtune translates ChatML, Llama 3, Gemma, Phi-3 and Mistral [INST] chat templates. Ollama tries")
        lines.append("# to recognise the chat template stored in the GGUF (tokenizer.chat_template); if it does not, write a TEMPLATE here.")
    else:
        lines.append("# No TEMPLATE: the model has no chat template (a base model): prompts reach it as they are.")
    for stop in dict.fromkeys(stops):
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"
