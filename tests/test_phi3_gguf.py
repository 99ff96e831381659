"""phi3 (Phi-3.5, Phi-4-mini) to GGUF and back, held to transformers and llama.cpp (issue 15: item 1, acceptance 2).

Tiny random Phi3ForCausalLM models built by transformers are the reference:
partial rotary (Phi-4-mini's 0.75) and LongRoPE (transformers' Phi3Config takes no other scaling) with an
original context of 16. LongRoPE picks its factors by the length: llama.cpp
by its context (n_ctx, 64 here), transformers and both of mlxtune's backends
by the sequence's (33 tokens); all use the long factors beyond the original
context, where these tests run. The export is held to llama.cpp's own loss; a
file written by llama.cpp's converter is imported and held to transformers;
mlxtune's export imported back gives transformers' loss and logits, on both
backends and in transformers itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import llamacpp
from conftest import HAVE_MLX
from test_phi3 import save_phi3
from test_family_models import HAVE_TORCH, NOTES, OUTTYPES, SHAPE, TOKENS, mlx_loss, numpy_loss, rel, run, transformers_loss
from tiny import make_chat_model, make_tokenizer
from tolerances import TINY_LOGITS, scaled_diff

from mlxtune.backends.numpy.model import ModelConfig, NumpyLlama, load_model
from mlxtune.convert import convert
from mlxtune.export.gguf import export_gguf
from mlxtune.formats.gguf import read_gguf, read_header

pytestmark = pytest.mark.skipif(not HAVE_TORCH, reason="torch, transformers and peft are not all installed")
LOSS_REL = 1e-4
ORIGINAL = 16  # LongRoPE's original context: the 33-token rows and llama.cpp's n_ctx (64) both lie beyond it
ROPES = {
    "partial rotary": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": ORIGINAL, "partial_rotary_factor": 0.75,
                 "short_factor": [1.0 + 0.1 * i for i in range(6)], "long_factor": [2.0 + 0.5 * i for i in range(6)]},
}


def transformers_logits(model_dir: Path) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()


def gguf_model(path: Path) -> NumpyLlama:
    """The numpy model of a GGUF file read without mlx (every tensor expanded to float32)."""
    g = read_gguf(path, dense=True)
    return NumpyLlama(ModelConfig.from_dict(g.config), {k: np.asarray(v, dtype=np.float32) for k, v in g.weights.items()})


def llama_cpp_loss(path: Path) -> float:
    """llama.cpp's mean loss over TOKENS' rows (n_ctx 64: beyond LongRoPE's original context, as the rows are)."""
    return float(np.mean([llamacpp.llama_cpp_loss(path, [int(t) for t in row]) for row in TOKENS]))


@pytest.fixture(scope="module", params=list(ROPES))
def phi3(request, tmp_path_factory):
    """(rope name, the transformers directory, transformers' loss, mlxtune's float32 conversion)."""
    root = tmp_path_factory.mktemp("phi3")
    src = root / "hf"
    save_phi3(src, ROPES[request.param])
    return request.param, src, transformers_loss(src), convert(str(src), root / "mlx", dtype="float32").path


# ------------------------------------------------------------------ export


def test_export_writes_what_llama_cpps_converter_writes(phi3, tmp_path):
    """Fused attn_qkv, ffn_up holding gate then up (no ffn_gate), the rotated dims, the original context, LongRoPE's factors."""
    name, src, _, converted = phi3
    r = export_gguf(converted, tmp_path / "m.gguf", "f32")
    md, tensors = read_header(r.path)
    t = {x.name: x for x in tensors}
    C, F, kv_rows = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["num_key_value_heads"] * 16
    assert md["general.architecture"] == "phi3" and md["phi3.block_count"] == 2 and md["phi3.context_length"] == SHAPE["max_position_embeddings"]
    assert t["blk.1.attn_qkv.weight"].shape == (C + 2 * kv_rows, C) and t["blk.1.ffn_up.weight"].shape == (2 * F, C)
    assert not [n for n in t if n.split(".")[-2] in ("attn_q", "attn_k", "attn_v", "ffn_gate")]
    from safetensors.numpy import load_file

    hf = load_file(src / "model.safetensors")  # the rows in Hugging Face order: llama.cpp rotates half-split pairs for phi3
    stored = llamacpp.stored_tensors(r.path)
    assert np.array_equal(stored["blk.0.attn_qkv.weight"][1], hf["model.layers.0.self_attn.qkv_proj.weight"])
    assert np.array_equal(stored["blk.1.ffn_up.weight"][1], hf["model.layers.1.mlp.gate_up_proj.weight"])
    rope = ROPES[name]
    assert md["phi3.rope.dimension_count"] == int(16 * rope.get("partial_rotary_factor", 1.0))
    assert md["phi3.rope.scaling.original_context_length"] == rope.get("original_max_position_embeddings", 4096)
    assert md["phi3.attention.sliding_window"] == 0  # transformers' None, as the converter writes it
    if name == "longrope":
        assert md["phi3.rope.scaling.attn_factor"] == pytest.approx(np.sqrt(1 + np.log(2048 / ORIGINAL) / np.log(ORIGINAL)), rel=1e-6)
        for kind in ("long", "short"):
            assert stored[f"rope_factors_{kind}.weight"] == ("F32", pytest.approx(np.float32(rope[f"{kind}_factor"])))
    else:
        assert "phi3.rope.scaling.attn_factor" not in md and "rope_factors_long.weight" not in t


def test_a_transformers4_config_exports_the_same_file(phi3, tmp_path):
    """config.json as transformers 4 wrote it (Phi-3.5-mini's own: rope_scaling with "type", partial_rotary_factor and
    rope_theta at the top level): the same hyperparameters and tensors as from transformers 5's rope_parameters."""
    name, src, _, converted = phi3
    t4 = Path(shutil.copytree(src, tmp_path / "t4"))
    config = json.loads((t4 / "config.json").read_text())
    params = config.pop("rope_parameters")
    scaling = {k: params[k] for k in ("short_factor", "long_factor") if k in params}
    config.update(rope_theta=params["rope_theta"], partial_rotary_factor=params["partial_rotary_factor"], rope_scaling={"type": "longrope", **scaling} if scaling else None)
    (t4 / "config.json").write_text(json.dumps(config))
    files = [export_gguf(d, tmp_path / f"{i}.gguf", "f32", name="m").path for i, d in enumerate((converted, t4))]
    (md5, t5), (md4, t4s) = (read_header(f) for f in files)
    assert {k: v for k, v in md4.items() if k.startswith("phi3.")} == {k: v for k, v in md5.items() if k.startswith("phi3.")}
    assert [(t.name, t.shape, t.type) for t in t4s] == [(t.name, t.shape, t.type) for t in t5]
    assert files[0].read_bytes() == files[1].read_bytes()


@pytest.mark.llama_cpp
@pytest.mark.parametrize("outtype", list(OUTTYPES))
def test_llama_cpp_loads_each_export_with_the_transformers_loss(phi3, outtype, tmp_path):
    llamacpp.need_llama_cpp()
    name, _, reference, converted = phi3
    r = export_gguf(converted, tmp_path / "m.gguf", outtype)
    types = {t.name: t.type for t in read_header(r.path)[1]}
    assert types["blk.0.attn_qkv.weight"] == types["blk.0.ffn_up.weight"] == {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}[outtype]
    loss = llama_cpp_loss(r.path)
    print(f"\n[phi3 {name} {outtype}] llama.cpp {loss:.7f} vs transformers {reference:.7f}: {rel(loss, reference):.1e}")
    assert rel(loss, reference) <= OUTTYPES[outtype]


@pytest.mark.llama_cpp
def test_a_lora_run_exports_to_gguf_and_llama_cpp_computes_the_fused_model(phi3, tmp_path):
    """``export -f gguf --adapter RUN`` of a phi3 run (fused on mlx, the one backend that computes phi3 here): llama.cpp's loss is
    the fused model's."""
    if not HAVE_MLX:
        pytest.skip("mlx is not installed")
    llamacpp.need_llama_cpp()
    name, _, reference, converted = phi3
    run_dir = tmp_path / "run"
    run("lora", "--data", NOTES, "--model", converted, "--iters", 3, "--lr", "5e-2", "--backend", "mlx", "-o", run_dir, "--no-report")
    run("export", "-f", "gguf", "--adapter", run_dir, "-o", tmp_path / "tuned.gguf", "--outtype", "f32")
    run("fuse", "--adapter", run_dir, "-o", tmp_path / "fused", "--backend", "mlx", "--dtype", "float32")
    fused = mlx_loss(tmp_path / "fused")
    assert rel(fused, reference) > 20 * LOSS_REL  # the adapter does something
    loss = llama_cpp_loss(tmp_path / "tuned.gguf")
    print(f"\n[phi3 {name} tuned] llama.cpp {loss:.7f} vs the fused model on mlx {fused:.7f}: {rel(loss, fused):.1e}")
    assert rel(loss, fused) <= LOSS_REL


# ------------------------------------------------------------------ import


def test_export_imported_back_computes_the_transformers_loss_and_logits(phi3, tmp_path):
    """The f32 export converted back: the config fields the GGUF implies (partial_rotary_factor, the original context, LongRoPE's
    factors), the same loss on both backends, and the imported directory loads in transformers with the same logits."""
    name, src, reference, converted = phi3
    export_gguf(converted, tmp_path / "m.gguf", "f32")
    back = convert(str(tmp_path / "m.gguf"), tmp_path / "back", dtype="float32").path
    config, rope = json.loads((back / "config.json").read_text()), ROPES[name]
    assert (config["model_type"], config["architectures"], config["sliding_window"]) == ("phi3", ["Phi3ForCausalLM"], None)
    assert config["partial_rotary_factor"] == rope.get("partial_rotary_factor", 1.0)
    assert config["original_max_position_embeddings"] == rope.get("original_max_position_embeddings", 4096)
    if name == "longrope":
        scaling = config["rope_scaling"]
        assert (scaling["type"], scaling["original_max_position_embeddings"]) == ("longrope", ORIGINAL)
        assert scaling["short_factor"] == pytest.approx(rope["short_factor"]) and scaling["long_factor"] == pytest.approx(rope["long_factor"])
    assert scaled_diff(transformers_logits(back), transformers_logits(src)) <= TINY_LOGITS
    losses = {"numpy": numpy_loss(load_model(back)[0]), "numpy, read without mlx": numpy_loss(gguf_model(tmp_path / "m.gguf"))}
    if HAVE_MLX:
        losses["mlx"] = mlx_loss(back)
    assert all(rel(v, reference) <= LOSS_REL for v in losses.values()), losses


@pytest.mark.llama_cpp
def test_gguf_written_by_llama_cpps_converter_imports_and_trains(phi3, tmp_path):
    """A file mlxtune did not write: llama.cpp's converter on the transformers directory (a SentencePiece tokenizer, as
    Phi-3.5's), imported by ``mlxtune convert`` with the transformers loss on both backends, and trained by ``lora --model X.gguf``."""
    from gguf_fixtures import tiny_spm_model

    llamacpp.need_converter()
    name = phi3[0]
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "tokenizer.model").write_bytes(tiny_spm_model())  # Phi3MiniModel reads tokenizer.model without a GPT2Tokenizer config
    save_phi3(hf, ROPES[name], vocab=400)  # the SentencePiece vocabulary's size, which the converter's phi3 vocabulary needs
    reference = transformers_loss(hf)
    llamacpp.convert_hf(hf, tmp_path / "m.gguf", "f32")
    md = read_header(tmp_path / "m.gguf")[0]
    assert (md["general.architecture"], md["tokenizer.ggml.model"]) == ("phi3", "llama")
    run("convert", tmp_path / "m.gguf", "-o", tmp_path / "back", "--dtype", "float32")
    g = read_gguf(tmp_path / "m.gguf", dense=True)
    assert g.config["partial_rotary_factor"] == ROPES[name].get("partial_rotary_factor", 1.0)
    assert scaled_diff(transformers_logits(tmp_path / "back"), transformers_logits(hf)) <= TINY_LOGITS
    # exported again by mlxtune: the converter's hyperparameters (mlxtune adds vocab_size) and tensors
    ours = export_gguf(tmp_path / "back", tmp_path / "again.gguf", "f32").path
    (theirs_md, theirs), (ours_md, ours) = read_header(tmp_path / "m.gguf"), read_header(ours)
    assert {k: v for k, v in ours_md.items() if k.startswith("phi3.") and k != "phi3.vocab_size"} == {k: v for k, v in theirs_md.items() if k.startswith("phi3.")}
    assert sorted((t.name, t.shape, t.type) for t in ours) == sorted((t.name, t.shape, t.type) for t in theirs)
    losses = {"numpy": numpy_loss(load_model(tmp_path / "back")[0])}
    if HAVE_MLX:
        losses["mlx"] = mlx_loss(tmp_path / "back")
    print(f"\n[phi3 {name}] llama.cpp's converter, imported: " + ", ".join(f"{k} {v:.7f} ({rel(v, reference):.1e})" for k, v in losses.items()))
    assert all(rel(v, reference) <= LOSS_REL for v in losses.values())
    data = tmp_path / "text.jsonl"  # text records: the converter's SentencePiece vocabulary has no chat template
    data.write_text("".join(json.dumps({"text": f"The note {i} says the lamp is on the table."}) + "\n" for i in range(12)))
    backend = "mlx" if HAVE_MLX else "numpy"
    run("lora", "--data", data, "--model", tmp_path / "m.gguf", "--iters", 2, "--backend", backend, "-o", tmp_path / "run", "--no-report")
    assert (tmp_path / "run" / "adapters.safetensors").is_file()


@pytest.mark.llama_cpp
def test_a_file_with_another_longrope_attention_factor_imports_it_as_attention_factor(tmp_path):
    """llama.cpp reads rope.scaling.attn_factor, transformers and mlxtune derive it from the contexts unless rope_scaling
    gives attention_factor: a file whose factor is not the derived one imports with it, and computes llama.cpp's loss."""
    import gguf

    llamacpp.need_llama_cpp()
    src = tmp_path / "hf"
    save_phi3(src, ROPES["longrope"])
    path = export_gguf(convert(str(src), tmp_path / "mlx", dtype="float32").path, tmp_path / "m.gguf", "f32").path
    reader = gguf.GGUFReader(str(path), "r+")
    field = reader.fields["phi3.rope.scaling.attn_factor"]
    field.parts[field.data[0]][0] = 1.25  # not the 1.658 derived from 2048 / 16
    reader.data.flush()
    del reader
    theirs = llama_cpp_loss(path)
    back = convert(str(path), tmp_path / "back", dtype="float32").path
    assert json.loads((back / "config.json").read_text())["rope_scaling"]["attention_factor"] == 1.25
    losses = {"transformers": transformers_loss(back), "numpy": numpy_loss(load_model(back)[0])}
    if HAVE_MLX:
        losses["mlx"] = mlx_loss(back)
    print(f"\n[phi3 attn_factor 1.25] llama.cpp {theirs:.7f}; " + ", ".join(f"{k} {v:.7f} ({rel(v, theirs):.1e})" for k, v in losses.items()))
    assert rel(theirs, transformers_loss(src)) > 1e-2  # another model than the one exported
    assert all(rel(v, theirs) <= LOSS_REL for v in losses.values())


# ------------------------------------------------------------------ the Ollama Modelfile


@pytest.mark.parametrize("chat", ["phi3.5", "phi4-mini"])
def test_modelfile_of_a_phi3_export_has_phi3s_template_and_stops(chat, tmp_path):
    """A phi3 model with Phi-3.5's or Phi-4-mini's tokenizer files: the Modelfile's TEMPLATE is Phi-3's, it stops on eos then <|end|>."""
    model = make_chat_model(tmp_path / "m", chat)
    ids = json.loads((model / "config.json").read_text())
    vocab = ids["vocab_size"]
    save_phi3(model, ROPES["partial rotary"], vocab=vocab, bos_token_id=ids.get("bos_token_id"), eos_token_id=ids["eos_token_id"], pad_token_id=None)
    r = export_gguf(model, tmp_path / "x.gguf", "f32")
    text = r.modelfile.read_text()
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert "# TEMPLATE: the model's Phi-3 chat template" in text and "<|{{ .Role }}|>" in template and "<|end|>" in template
    assert [x for x in text.splitlines() if x.startswith("PARAMETER")] == ['PARAMETER stop "<|endoftext|>"', 'PARAMETER stop "<|end|>"']
    assert read_header(r.path)[0]["general.architecture"] == "phi3"


# ------------------------------------------------------------------ Phi-3.5's tokenizer: SentencePiece, its chat tokens added after it

PHI35_TEXTS = ["Hello world <|end|>", "<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>", "Caf\u00e9 \U0001f600 123 numbers"]


@pytest.mark.llama_cpp
def test_phi35_style_tokenizer_exports_as_llama_cpps_converter_writes_it(tmp_path):
    """tokenizer.model with Phi-3.5's chat tokens added after it (tokenizer.json, LlamaTokenizer): mlxtune's export has the
    converter's vocabulary, token types and special ids, and llama.cpp tokenizes both files alike."""
    import transformers
    from gguf_fixtures import tiny_spm_model

    llama_cpp = llamacpp.need_llama_cpp()
    src = tmp_path / "hf"
    src.mkdir()
    (src / "tokenizer.model").write_bytes(tiny_spm_model())
    (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": False}))
    tok = transformers.AutoTokenizer.from_pretrained(src)
    tok.add_special_tokens({"additional_special_tokens": ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>"]})
    tok.eos_token = "<|endoftext|>"
    tok.save_pretrained(src)  # tokenizer.json and tokenizer_config.json beside tokenizer.model, as Phi-3.5 ships them
    save_phi3(src, ROPES["partial rotary"], vocab=len(tok), bos_token_id=1, eos_token_id=tok.eos_token_id, pad_token_id=None)
    theirs = llamacpp.convert_hf(src, tmp_path / "theirs.gguf", "f32")
    ours = export_gguf(src, tmp_path / "ours.gguf", "f32").path
    a, b = read_header(theirs)[0], read_header(ours)[0]
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id"):
        assert b.get(key) == a.get(key), key
    assert b["tokenizer.ggml.add_bos_token"] is False  # as tokenizer_config.json says (the converter leaves llama.cpp's default)
    pieces = {}
    for name, path in (("theirs", theirs), ("ours", ours)):
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        pieces[name] = [llm.tokenize(t.encode(), add_bos=False, special=True) for t in PHI35_TEXTS]
        llm.close()
    assert pieces["ours"] == pieces["theirs"]


# ------------------------------------------------------------------ Phi-4-mini's tokenizer: byte-level BPE behind GPT-4o's split

TEXTS = ["Hello World, it's THE Fox's 12345 dollars! Don't", "HelloWorld's DON'T", "CamelCaseWords and UPPERlower\nnew line  two spaces", "caf\u00e9 na\u00efve 3.14159 /path/to/x"]


def gpt4o_tokenizer(out_dir: Path) -> int:
    """tiny.py's tokenizer files with the vocabulary trained behind GPT-4o's split, as Phi-4-mini's tokenizer.json has it."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from mlxtune.formats.gguf_tokenizer import GPT4O_SPLIT

    make_tokenizer(out_dir)  # tokenizer_config.json and special_tokens_map.json
    tok = Tokenizer(models.BPE())
    split = pre_tokenizers.Split(Regex(GPT4O_SPLIT), behavior="isolated")
    tok.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXTS * 20 + ["Don't", "World's", "DON'T"] * 50, trainer=trainer)  # merges across Llama 3's and GPT-2's splits
    tok.save(str(out_dir / "tokenizer.json"))
    return tok.get_vocab_size()


@pytest.mark.llama_cpp
def test_phi4_mini_style_tokenizer_exports_as_gpt_4o_and_comes_back(tmp_path):
    """llama.cpp names Phi-4-mini's pre-tokenizer gpt-4o: the export says so (derived from the split), llama.cpp then
    tokenizes as tokenizer.json does, and the import rebuilds the same split."""
    from tokenizers import Tokenizer

    llama_cpp = llamacpp.need_llama_cpp()
    src = tmp_path / "hf"
    save_phi3(src, ROPES["partial rotary"], vocab=gpt4o_tokenizer(src))
    r = export_gguf(src, tmp_path / "m.gguf", "f32")
    assert read_header(r.path)[0]["tokenizer.ggml.pre"] == "gpt-4o"
    assert not [n for n in r.notes if "differently" in n], r.notes
    original = Tokenizer.from_file(str(src / "tokenizer.json"))
    llm = llama_cpp.Llama(model_path=str(r.path), vocab_only=True, verbose=False)
    rebuilt = Tokenizer.from_str(read_gguf(r.path, dense=True).tokenizer_files["tokenizer.json"])
    for text in TEXTS:
        ids = original.encode(text, add_special_tokens=False).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids, text
        assert rebuilt.encode(text, add_special_tokens=False).ids == ids, text
    llm.close()


@pytest.mark.parametrize("outtype", ["q8_0", "q4_0"])
def test_a_quantized_export_imports_as_mlx_quantized_weights(phi3, outtype, tmp_path):
    """Q8_0 and Q4_0 blocks of the fused attn_qkv and ffn_up come back as MLX quantized layers, computing the file's model."""
    if not HAVE_MLX:
        pytest.skip("mlx is not installed")
    name, _, reference, converted = phi3
    export_gguf(converted, tmp_path / "m.gguf", outtype)
    back = convert(str(tmp_path / "m.gguf"), tmp_path / "back").path
    assert json.loads((back / "config.json").read_text())["quantization"]["bits"] == {"q8_0": 8, "q4_0": 4}[outtype]
    dense = read_gguf(tmp_path / "m.gguf", dense=True).weights  # the same blocks expanded by gguf-py
    from mlxtune.formats import safetensors as npio

    expanded = npio.load_weights(back)[1]
    for key in ("model.layers.1.self_attn.qkv_proj.weight", "model.layers.1.mlp.gate_up_proj.weight"):
        assert np.array_equal(expanded[key], dense[key]), key
    loss = mlx_loss(back)
    print(f"\n[phi3 {name} {outtype}] imported on mlx {loss:.7f} vs transformers {reference:.7f}: {rel(loss, reference):.1e}")
    assert rel(loss, reference) <= OUTTYPES[outtype]
