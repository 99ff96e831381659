"""Rebuild a Hugging Face tokenizer from a GGUF file's ``tokenizer.ggml.*`` metadata.

A GGUF carries no tokenizer.json: only the vocabulary, merges (or scores),
token types, special ids and a ``tokenizer.ggml.pre`` name for the
pre-tokenizer, which llama.cpp maps to a hard-coded split regex. We rebuild the
tokenizer.json that the original model shipped, with the ``tokenizers``
library, so the converted model tokenizes exactly as the model was trained:

* ``gpt2``: byte-level BPE; the split comes from ``tokenizer.ggml.pre`` (same
  table as llama.cpp's llama-vocab.cpp); control tokens become special added
  tokens, user-defined ones plain added tokens, so they are never split.
* ``llama``: SentencePiece BPE with byte fallback, as Llama's tokenizer.json
  has it: merges from the file, or derived from token scores.

An unknown pre-tokenizer name is an error: guessing would tokenize wrongly
without any visible failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelFormatError, UnsupportedModelError

# Split regexes of the original tokenizer.json files (llama.cpp spells the same in C++).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# GPT-4o's (o200k), which Phi-4-mini's tokenizer.json splits by: cased words with their contraction, digits in threes
GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.ggml.pre -> pre-tokenizer family (grouped as llama.cpp groups them)
PRE_TOKENIZERS = {
    **dict.fromkeys(("default", "gpt-2", "phi-2", "mpt", "olmo", "jais"), "gpt2"),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), "digits"),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe"), "llama3"),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), "qwen2"),
    "gpt-4o": "gpt4o",  # GPT-4o, Phi-4-mini
}
# llama.cpp (and these models' tokenizer.json) take a whole pre-token from the
# vocabulary before trying merges; llama.cpp also adds BOS for them by default.
_IGNORE_MERGES = {"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"}

CONTROL, USER_DEFINED, UNKNOWN = 3, 4, 2  # tokenizer.ggml.token_type values


@dataclass
class GGUFTokenizer:
    """The rebuilt tokenizer and the files that describe it."""

    tokenizer: object  # tokenizers.Tokenizer
    files: dict[str, str] = field(default_factory=dict)  # tokenizer.json, tokenizer_config.json, special_tokens_map.json
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None  # a list when the file names end-of-turn tokens too
    pad_token_id: int | None = None


def build_tokenizer(md: dict, path: str | Path = "model.gguf") -> GGUFTokenizer:
    """Rebuild the tokenizer described by GGUF metadata ``md`` (as read by gguf_import)."""
    name = Path(path).name
    kind = md.get("tokenizer.ggml.model")
    tokens = md.get("tokenizer.ggml.tokens")
    if kind is None or not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ModelFormatError(f"{name}: the GGUF has no tokenizer (tokenizer.ggml.* metadata missing); use the Hugging Face model instead")
    ids = {k: _id(md, f"tokenizer.ggml.{k}_token_id", len(tokens)) for k in ("bos", "eos", "unknown", "padding")}
    if kind == "gpt2":
        tok, add_bos = _byte_level_bpe(md, tokens, name)
    elif kind == "llama":
        tok, add_bos = _sentencepiece_bpe(md, tokens, ids["unknown"], name)
    else:
        raise UnsupportedModelError(f"{name}: GGUF tokenizer type {kind!r} is not supported (supported: gpt2, llama); use the Hugging Face model")
    add_bos = bool(md.get("tokenizer.ggml.add_bos_token", add_bos))
    add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False))
    _add_special_tokens(tok, md, tokens, ids, kind)
    _set_post_processor(tok, tokens, ids, add_bos, add_eos, kind)

    def text(i):
        return None if i is None else tokens[i]

    special = {"bos_token": text(ids["bos"]), "eos_token": text(ids["eos"]), "unk_token": text(ids["unknown"]), "pad_token": text(ids["padding"])}
    special = {k: v for k, v in special.items() if v is not None}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(md.get(f"{md.get('general.architecture')}.context_length", 2048)),
    }
    if md.get("tokenizer.chat_template"):
        config["chat_template"] = md["tokenizer.chat_template"]
    files = {
        "tokenizer.json": tok.to_str(),
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False),
        "special_tokens_map.json": json.dumps(special, indent=2, ensure_ascii=False),
    }
    # llama.cpp also ends generation at end-of-turn tokens (Llama 3's <|eot_id|>, ...).
    stops = [i for i in (ids["eos"], _id(md, "tokenizer.ggml.eot_token_id", len(tokens)), _id(md, "tokenizer.ggml.eom_token_id", len(tokens))) if i is not None]
    stops = list(dict.fromkeys(stops))
    eos = stops[0] if len(stops) == 1 else (stops or None)
    return GGUFTokenizer(tok, files, ids["bos"], eos, ids["padding"])


def _id(md: dict, key: str, n: int) -> int | None:
    value = md.get(key)
    return int(value) if value is not None and 0 <= int(value) < n else None


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a repeated token keeps its first id, as llama.cpp's lookup does
    return vocab


def _byte_level_bpe(md: dict, tokens: list[str], name: str):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    pre = md.get("tokenizer.ggml.pre", "default")
    family = PRE_TOKENIZERS.get(pre)
    if family is None:
        raise UnsupportedModelError(
            f"{name}: GGUF pre-tokenizer {pre!r} is not supported (supported: {', '.join(sorted(PRE_TOKENIZERS))}); "
            "use the Hugging Face model, whose tokenizer.json describes it"
        )
    merges = [tuple(m.split(" ", 1)) for m in md.get("tokenizer.ggml.merges", [])]
    try:
        model = models.BPE(vocab=_vocab(tokens), merges=merges, ignore_merges=pre in _IGNORE_MERGES)
    except Exception as e:  # tokenizers raises its own error types for bad merges
        raise ModelFormatError(f"{name}: the GGUF vocabulary and merges do not fit together ({e}); the file is damaged") from e
    tok = Tokenizer(model)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=family in ("gpt2", "digits"))
    if family == "digits":  # StarCoder/SmolLM: every digit alone, then GPT-2's split
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif family in ("llama3", "qwen2", "gpt4o"):
        split = {"llama3": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT, "gpt4o": GPT4O_SPLIT}[family]
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    if family == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    return tok, pre in _IGNORE_MERGES


def _sentencepiece_bpe(md: dict, tokens: list[str], unk: int | None, name: str):
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = _vocab(tokens)
    if "tokenizer.ggml.merges" in md:
        merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    elif "tokenizer.ggml.scores" in md:
        merges = _merges_from_scores(vocab, dict(zip(tokens, md["tokenizer.ggml.scores"])))
    else:
        raise ModelFormatError(f"{name}: the SentencePiece vocabulary has neither merges nor scores; the file is incomplete")
    unk_token = None if unk is None else tokens[unk]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk_token, fuse_unk=True, byte_fallback=True))
    # Llama's own tokenizer.json: a space before every piece of text, also before text
    # that follows a special token, and even if it starts with a space - as sentencepiece
    # and llama.cpp do. (transformers' GGUF loader uses Metaspace "first", which does not.)
    prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
    steps = [normalizers.Prepend("\u2581")] if prefix else []
    tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "\u2581")])
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tok, True  # llama.cpp and transformers add BOS to SentencePiece vocabularies unless told not to


def _merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Merges a SentencePiece BPE vocabulary implies: every split of a token into two
    tokens, best merged-token score first (as transformers' ``generate_merges``)."""
    merges = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _add_special_tokens(tok, md: dict, tokens: list[str], ids: dict, kind: str) -> None:
    """Control tokens (and bos/eos/unk/pad) match whole and are skipped when decoding
    with skip_special_tokens; user-defined tokens also match whole but are text."""
    from tokenizers import AddedToken

    types = md.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    special_ids = {i for i in ids.values() if i is not None}
    special_ids |= {i for i, t in enumerate(types) if t == CONTROL or (t == UNKNOWN and kind == "llama")}
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in sorted(special_ids) if tokens[i]])
    user = [AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == USER_DEFINED and tokens[i]]
    if user:
        tok.add_tokens(user)


def _set_post_processor(tok, tokens: list[str], ids: dict, add_bos: bool, add_eos: bool, kind: str) -> None:
    from tokenizers import processors

    bos = ids["bos"] if add_bos else None
    eos = ids["eos"] if add_eos else None
    if bos is None and eos is None:
        tok.post_processor = processors.ByteLevel(trim_offsets=False) if kind == "gpt2" else None
        return

    def seq(part: str, seg: int) -> list[str]:
        return [f"{tokens[i]}:{seg}" for i in (bos,) if i is not None] + [f"{part}:{seg}"] + [f"{tokens[i]}:{seg}" for i in (eos,) if i is not None]

    single, pair = seq("$A", 0), seq("$A", 0) + seq("$B", 1)
    special = [(tokens[i], i) for i in (bos, eos) if i is not None]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(dict.fromkeys(special)))
