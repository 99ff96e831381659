"""The tokenizer of a GGUF export: write tokenizer.json as llama.cpp's converter would, and check it.

``add_tokenizer`` writes the ``tokenizer.ggml.*`` metadata and the chat template
the way ``convert_hf_to_gguf.py`` does (``get_vocab_base`` for byte-level BPE,
its SentencePiece reading for byte-fallback BPE, ``gguf.SpecialVocab`` for
merges, special ids and ``add_*`` flags). ``check_tokenizer`` rebuilds the
tokenizer from the metadata written, as llama.cpp would read it
(``gguf_tokenizer``, the reverse direction), and compares it with
tokenizer.json. ``export_gguf`` writes the rest of the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from hashlib import sha256
from pathlib import Path

from ..errors import ModelFormatError, UnsupportedModelError

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
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",  # Xenova/gpt-4o (o200k), Phi-4-mini's vocabulary
}
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # tokenizer.ggml.token_type


def add_tokenizer(writer, model_dir: Path, n_vocab: int, notes: list[str], thinking: bool = False):
    """tokenizer.ggml.* and tokenizer.chat_template; returns the chat template (or None), as the model has it.

    The template written thinks unless told otherwise only with ``thinking`` (``chat_template.with_thinking``).
    """
    import gguf

    from ..models.chat_template import with_thinking

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
    template = special.chat_template
    special.chat_template = with_thinking(template, thinking)
    if special.chat_template != template and not thinking:
        notes.append("the chat template's thinking mode (enable_thinking) is off by default in the GGUF (--thinking keeps it on)")
    special.add_to_gguf(writer, quiet=True)
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

    from ..formats.gguf_tokenizer import GPT4O_SPLIT, LLAMA3_SPLIT, QWEN2_SPLIT

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
        found = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2", GPT4O_SPLIT: "gpt-4o"}.get(pattern)
    if found is None:
        raise UnsupportedModelError(
            f"{path}: llama.cpp does not know this tokenizer's pre-tokenizer (hash {chkhsh[:16]}...), and it is not one of the "
            "shapes mlxtune can name (GPT-2, SmolLM digits, Llama 3, Qwen2 or GPT-4o split); llama.cpp would tokenize it wrongly"
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


def check_tokenizer(md: dict, model_dir: Path, notes: list[str]) -> None:
    """Rebuild the tokenizer from the metadata just written, as llama.cpp would read it (gguf_tokenizer
    mirrors it), and compare it with tokenizer.json on a few texts: a difference means llama.cpp
    would feed the model tokens it was not trained on."""
    from tokenizers import Tokenizer

    from ..formats.gguf_tokenizer import build_tokenizer

    source = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    rebuilt = build_tokenizer(md, "export.gguf").tokenizer
    texts = [CHKTXT, "Hello world! 12345 caf\u00e9", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "  two  spaces\n\nlines"]
    for text in texts:
        a, b = source.encode(text).ids, rebuilt.encode(text).ids
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            notes.append(f"warning: the GGUF's tokenizer splits {text[:30]!r} differently from tokenizer.json (from token {at}); llama.cpp may tokenize this model wrongly")
            return
