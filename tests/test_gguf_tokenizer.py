"""The tokenizer rebuilt from GGUF metadata tokenizes exactly like the original."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from gguf_fixtures import (
    SAMPLES, load_mlx_lm, smollm2_gguf, tiny_spm_model, write_model_dir, write_spm_gguf, write_tiny_gguf,
)
from mlxtune.errors import ModelFormatError, UnsupportedModelError
from mlxtune.formats.gguf import read_gguf, read_header
from mlxtune.formats.gguf_tokenizer import build_tokenizer
from mlxtune.models.tokenizer import load_tokenizer
from tiny import CHATML, make_tokenizer


def _rebuilt(path: Path):
    return build_tokenizer(read_header(path)[0], path)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Tokenizer:
    """The tiny tokenizer the GGUF vocabulary was taken from (GPT-2 split, byte-level BPE)."""
    d = tmp_path_factory.mktemp("orig")
    make_tokenizer(d)
    return Tokenizer.from_file(str(d / "tokenizer.json"))


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tok") / "tiny.gguf", pre="gpt-2").path


def test_byte_level_bpe_matches_the_original(original, tiny_gguf):
    tok = _rebuilt(tiny_gguf).tokenizer
    for text in SAMPLES:
        ids = tok.encode(text).ids
        assert ids == original.encode(text).ids, text
        assert tok.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_are_whole_and_skipped_when_decoding(tiny_gguf):
    tok = _rebuilt(tiny_gguf).tokenizer
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>").ids
    assert ids[0] == 1 and ids[-1] == 2 and 1 not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"


def test_user_defined_tokens_are_whole_but_text(tmp_path):
    t = write_tiny_gguf(tmp_path / "u.gguf", user_tokens=("<think>",))
    tok = _rebuilt(t.path).tokenizer
    think = t.tokens.index("<think>")
    ids = tok.encode("a<think>b").ids
    assert think in ids and len(ids) == 3
    assert tok.decode(ids, skip_special_tokens=True) == "a<think>b"


@pytest.mark.parametrize("pre,add_bos,expect_bos", [("smollm", None, False), ("smollm", True, True), ("llama-bpe", None, True), ("llama-bpe", False, False)])
def test_add_bos_token_flag(tmp_path, pre, add_bos, expect_bos):
    """The file's flag wins; without one, llama.cpp's default for that pre-tokenizer."""
    from transformers import AutoTokenizer

    t = write_tiny_gguf(tmp_path / "b.gguf", pre=pre, add_bos=add_bos)
    ids = _rebuilt(t.path).tokenizer.encode("Hello world").ids
    assert (ids[0] == 1) is expect_bos and ids.count(1) == int(expect_bos)
    out = write_model_dir(read_gguf(t.path), tmp_path / "out")
    assert json.loads((out / "tokenizer_config.json").read_text())["add_bos_token"] is expect_bos
    auto = AutoTokenizer.from_pretrained(str(out))  # what mlx_lm.load uses
    assert auto.encode("Hello world") == ids
    assert load_tokenizer(out).encode("Hello world") == ids  # what mlxtune uses (without AutoTokenizer)


def test_end_of_turn_tokens_also_end_generation(tmp_path):
    pytest.importorskip("mlx_lm")
    """llama.cpp stops at eot/eom tokens too (Llama 3's <|eot_id|>); mlx_lm reads them from config.json."""
    m = read_gguf(write_tiny_gguf(tmp_path / "e.gguf", kv={"tokenizer.ggml.eot_token_id": 0}).path)
    assert m.config["eos_token_id"] == m.generation_config["eos_token_id"] == [2, 0]
    _, tokenizer = load_mlx_lm(write_model_dir(m, tmp_path / "out"))
    assert tokenizer.eos_token_ids == {0, 2}


def test_tokenizer_files(tiny_gguf):
    files = _rebuilt(tiny_gguf).files
    config = json.loads(files["tokenizer_config.json"])
    assert config["chat_template"] == CHATML
    assert (config["bos_token"], config["eos_token"], config["pad_token"], config["unk_token"]) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|endoftext|>")
    assert config["add_bos_token"] is False and config["add_eos_token"] is False
    assert json.loads(files["special_tokens_map.json"])["eos_token"] == "<|im_end|>"
    Tokenizer.from_str(files["tokenizer.json"])  # valid


@pytest.mark.parametrize("pre,pieces", [
    ("smollm", ["abc", "Ġ", "1", "2", "3", "4", "5", "Ġ", "Â½"]),  # every \p{N} alone, then GPT-2's split
    ("gpt-2", ["abc", "Ġ12345", "ĠÂ½"]),
    ("llama-bpe", ["abc", "Ġ", "123", "45", "Ġ", "Â½"]),  # digits in threes
    ("qwen2", ["abc", "Ġ", "1", "2", "3", "4", "5", "Ġ", "Â½"]),
])
def test_pre_tokenizer_follows_tokenizer_ggml_pre(tmp_path, pre, pieces):
    tok = _rebuilt(write_tiny_gguf(tmp_path / "p.gguf", pre=pre).path).tokenizer
    assert [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("abc 12345 \u00bd")] == pieces


def test_qwen2_normalizes_to_nfc(tmp_path):
    tok = _rebuilt(write_tiny_gguf(tmp_path / "q.gguf", pre="qwen2").path).tokenizer
    assert tok.encode("cafe\u0301").ids == tok.encode("caf\u00e9").ids


def _error(md_change, tiny_gguf):
    md = read_header(tiny_gguf)[0]
    md_change(md)
    return build_tokenizer(md, tiny_gguf)


def test_unknown_pre_tokenizer_is_refused(tiny_gguf):
    with pytest.raises(UnsupportedModelError, match=r"tiny.gguf: GGUF pre-tokenizer 'made-up' is not supported .*smollm") as e:
        _error(lambda md: md.update({"tokenizer.ggml.pre": "made-up"}), tiny_gguf)
    assert "\n" not in str(e.value)


def test_unknown_tokenizer_model_is_refused(tiny_gguf):
    with pytest.raises(UnsupportedModelError, match=r"tiny.gguf: GGUF tokenizer type 'bert' is not supported \(supported: gpt2, llama\)"):
        _error(lambda md: md.update({"tokenizer.ggml.model": "bert"}), tiny_gguf)


def test_missing_tokenizer_is_a_format_error(tiny_gguf):
    with pytest.raises(ModelFormatError, match="tiny.gguf: the GGUF has no tokenizer"):
        _error(lambda md: md.pop("tokenizer.ggml.tokens"), tiny_gguf)


# --- SentencePiece ----------------------------------------------------------


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    import sentencepiece

    path = write_spm_gguf(tmp_path_factory.mktemp("spm") / "spm.gguf").path
    return path, _rebuilt(path).tokenizer, sentencepiece.SentencePieceProcessor(model_proto=tiny_spm_model())


def test_sentencepiece_matches_sentencepiece(spm):
    _, tok, sp = spm
    for text in SAMPLES:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == text


def test_sentencepiece_bos_and_control_tokens_like_llama_cpp(spm):
    """BOS by default; a control token in the text is whole, and the text after it
    gets its own leading space, as llama.cpp does (and sentencepiece per piece)."""
    _, tok, sp = spm
    assert tok.encode("hi</s>there").ids == [1] + sp.encode("hi") + [2] + sp.encode("there")
    assert tok.decode(tok.encode("hi there").ids, skip_special_tokens=True) == "hi there"


# --- against transformers' own GGUF tokenizer (needs torch) ---------------------


def _transformers_gguf(path: Path):
    pytest.importorskip("torch")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_tiny_matches_transformers(tiny_gguf):
    ref, tok = _transformers_gguf(tiny_gguf), _rebuilt(tiny_gguf).tokenizer
    assert [tok.encode(t).ids for t in SAMPLES] == [ref.encode(t) for t in SAMPLES]


def test_sentencepiece_matches_transformers_except_where_it_drops_llama_cpps_space(spm):
    """transformers' GGUF loader uses Metaspace(prepend_scheme="first"): no prefix space when
    the text already starts with one, none after special tokens. Llama's tokenizer.json,
    sentencepiece and llama.cpp add it; we follow them."""
    path, tok, sp = spm
    ref = _transformers_gguf(path)
    plain = [t for t in SAMPLES if not t[:1].isspace() and "<" not in t]
    assert [tok.encode(t).ids for t in plain] == [ref.encode(t) for t in plain]
    assert tok.encode("  two").ids == [1] + sp.encode("  two") != ref.encode("  two")


# --- the real SmolLM2 tokenizer ---------------------------------------------------

NUMERALS = "x\u00b2 \u00bd \u0663\u0664 \u216b"  # non-ASCII \p{N}: superscript, fraction, Arabic-Indic, Roman


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf()
    return path, _rebuilt(path)


@pytest.mark.e2e
def test_smollm2_matches_transformers_and_known_ids(smollm2):
    path, rebuilt = smollm2
    tok, ref = rebuilt.tokenizer, _transformers_gguf(path)
    for text in SAMPLES:
        ids = tok.encode(text).ids
        assert ids == ref.encode(text), text
        assert tok.decode(ids, skip_special_tokens=False) == text
    # Ids of the published SmolLM2 tokenizer for a few texts.
    known = {"Hello, we can use": [19556, 28, 392, 416, 722], "Hello world! 123": [19556, 905, 17, 216, 33, 34, 35],
             "Caf\u00e9 d\u00e9j\u00e0 vu.": [51, 1939, 2756, 32564, 90, 16739, 386, 101, 30], "  multiple   spaces": [216, 2701, 256, 5600]}
    assert {t: tok.encode(t).ids for t in known} == known
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert tok.encode(chat).ids == ref.encode(chat)


@pytest.mark.e2e
def test_smollm2_splits_every_numeral_like_llama_cpp(smollm2):
    """SmolLM2's tokenizer (StarCoder's) and llama.cpp's "smollm" isolate every \\p{N}
    character; transformers' GGUF loader does not, so here we differ from it, on purpose."""
    tok = smollm2[1].tokenizer
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(NUMERALS)]
    assert pieces == ["x", "Â²", "Ġ", "Â½", "Ġ", "Ù£", "Ù¤", "Ġ", "âħ«"]
    assert tok.decode(tok.encode(NUMERALS).ids) == NUMERALS


@pytest.mark.e2e
def test_smollm2_written_files_load_as_the_same_tokenizer(smollm2, tmp_path):
    from transformers import AutoTokenizer

    path, rebuilt = smollm2
    for name, text in rebuilt.files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    auto = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in SAMPLES + [NUMERALS]:
        assert auto.encode(text) == rebuilt.tokenizer.encode(text).ids, text
    assert (auto.bos_token, auto.eos_token, auto.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert auto.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
