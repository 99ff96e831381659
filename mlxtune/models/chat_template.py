"""What a model's chat template says besides how to render a conversation: where an assistant turn ends, and its thinking switch.

Both are read from the template itself, by rendering it, not from a table of
model names: the token(s) a template writes right after an assistant's words
(``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3, ``<end_of_turn>`` for
Gemma, ``<|end|>`` for Phi-3 and Phi-4-mini, ``</s>`` for Mistral) are where
generation must stop, and what a template adds to the generation prompt when
``enable_thinking`` is false (Qwen3's and SmolLM3's empty ``<think>`` block)
is how the Ollama Modelfile turns thinking off.

Thinking is off by default everywhere mlxtune renders a chat (training data,
generate, eval) and in the templates it writes into fused and exported models,
so that a model fine-tuned without thinking data does not start thinking again
once it leaves mlxtune: ``with_thinking`` gives a template whose
``enable_thinking`` defaults to false (a caller that passes the variable still
decides, as llama.cpp's ``--chat-template-kwargs`` or transformers'
``apply_chat_template(enable_thinking=True)`` do). Templates without the switch
are left as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

THINKING_SWITCH = "enable_thinking"  # the variable Qwen3's and SmolLM3's templates read (mlx-lm passes the same)
# Put in front of a template: thinking is off unless the caller passes enable_thinking. It renders no text.
THINKING_OFF = "{%- if enable_thinking is not defined %}{%- set enable_thinking = false %}{%- endif %}"
_PROBE_USER = "mlxtune probe question"
_PROBE_ANSWER = "mlxtune probe answer"


def has_thinking_switch(template: Any) -> bool:
    """Whether a chat template (a string, or transformers' named templates) reads ``enable_thinking``."""
    if isinstance(template, dict):
        return any(has_thinking_switch(t) for t in template.values())
    if isinstance(template, list):  # tokenizer_config.json's [{"name": ..., "template": ...}]
        return any(has_thinking_switch(t.get("template")) for t in template if isinstance(t, dict))
    return isinstance(template, str) and THINKING_SWITCH in template


def with_thinking(template: Any, thinking: bool) -> Any:
    """The template with thinking off by default (``thinking`` False) or as its authors wrote it (True).

    Only templates with the switch change; the change is undone by asking for
    thinking again, so a fused model can be fused or exported once more either way.
    """
    if isinstance(template, dict):
        return {k: with_thinking(t, thinking) for k, t in template.items()}
    if isinstance(template, list):
        return [t | {"template": with_thinking(t.get("template"), thinking)} if isinstance(t, dict) else t for t in template]
    if not has_thinking_switch(template):
        return template
    bare = template.removeprefix(THINKING_OFF)
    return bare if thinking else THINKING_OFF + bare


def set_thinking(tokenizer: Any, thinking: bool) -> None:
    """Make ``tokenizer``'s chat template render with thinking on or off by default (a Hugging Face tokenizer)."""
    template = getattr(tokenizer, "chat_template", None)
    if has_thinking_switch(template):
        tokenizer.chat_template = with_thinking(template, thinking)


def write_thinking(model_dir: Path, thinking: bool) -> bool:
    """Rewrite the chat template files of ``model_dir`` (tokenizer_config.json, chat_template.jinja, chat_template.json) with thinking on or off by default.

    Returns whether a file changed. Files are rewritten in place: call it on a
    directory being assembled (fuse's, export's), not on a user's model.
    """
    changed = False
    for name in ("tokenizer_config.json", "chat_template.json"):  # {"chat_template": ...} in a JSON object
        path = model_dir / name
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        new = with_thinking(data.get("chat_template"), thinking) if isinstance(data, dict) else None
        if new != (data.get("chat_template") if isinstance(data, dict) else None):
            path.write_text(json.dumps(data | {"chat_template": new}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            changed = True
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        text = jinja.read_text(encoding="utf-8")
        if with_thinking(text, thinking) != text:
            jinja.write_text(with_thinking(text, thinking), encoding="utf-8")
            changed = True
    return changed


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool, thinking: bool | None = None, template: str | None = None) -> str | None:
    """The template's text for ``messages``, or None when the template refuses them (or there is none)."""
    kwargs = {} if thinking is None else {THINKING_SWITCH: thinking}
    if template is not None:
        kwargs["chat_template"] = template
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs)
    except Exception:  # jinja errors, raise_exception() in the template, no template at all
        return None
    return text if isinstance(text, str) else None


def end_of_turn(tokenizer: Any, template: str | None = None) -> list[int]:
    """The id of the token the chat template writes right after an assistant's words (empty: none found).

    Found by rendering a user turn and an assistant turn: the first token after
    the answer's text, when it is one of the tokenizer's added tokens (a
    special marker, not a piece of text). ``template``: another template than
    the tokenizer's own (a GGUF's, for example).
    """
    messages = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ANSWER}]
    text = _render(tokenizer, messages, False, False, template)
    if text is None or _PROBE_ANSWER not in text:
        return []
    tail = text[text.rindex(_PROBE_ANSWER) + len(_PROBE_ANSWER):]
    ids = list(tokenizer(tail, add_special_tokens=False)["input_ids"]) if tail else []
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {}) | set(getattr(tokenizer, "all_special_ids", []) or [])
    return [int(ids[0])] if ids and ids[0] in added else []


def no_think_text(tokenizer: Any, template: str | None = None) -> str:
    """What the template adds after the assistant's header when thinking is off ("" when it has no switch).

    Qwen3: ``<think>\\n\\n</think>\\n\\n``; SmolLM3: ``<think>\\n\\n</think>\\n``. Found as
    the difference between its generation prompts with thinking on and off.
    """
    source = template if template is not None else getattr(tokenizer, "chat_template", None)
    if not has_thinking_switch(source):
        return ""
    messages = [{"role": "user", "content": _PROBE_USER}]
    on, off = (_render(tokenizer, messages, True, t, template) for t in (True, False))
    if on is None or off is None or _PROBE_USER not in on or _PROBE_USER not in off:
        return ""
    on_tail, off_tail = on[on.rindex(_PROBE_USER):], off[off.rindex(_PROBE_USER):]
    return off_tail[len(on_tail):] if off_tail.startswith(on_tail) else ""
