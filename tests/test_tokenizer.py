"""mlxtune.models.tokenizer: the tokenizer mlxtune loads is the one AutoTokenizer (and so mlx-lm) loads, without PyTorch."""

import importlib.util
import subprocess
import sys

import pytest

from mlxtune.models.tokenizer import load_tokenizer, stop_token_ids

TEXTS = ["Hello world", "  leading spaces\tand tabs\n\nnewlines", "ünïcödé 日本語 😀", "x=1; y = x**2  # code", "<|im_start|>user\nhi<|im_end|>"]


def test_same_as_auto_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    ours, auto = load_tokenizer(tiny_model), AutoTokenizer.from_pretrained(tiny_model)
    for text in TEXTS:
        assert ours.encode(text) == auto.encode(text)
        assert ours.decode(ours.encode(text)) == auto.decode(auto.encode(text))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.all_special_ids) == (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id, auto.all_special_ids)
    assert stop_token_ids(tiny_model, ours) == stop_token_ids(tiny_model, auto)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="only meaningful where PyTorch is installed")
def test_loading_a_tokenizer_does_not_import_torch(tiny_model):
    code = f"import sys; from mlxtune.models.tokenizer import load_tokenizer; load_tokenizer({str(tiny_model)!r}); assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
