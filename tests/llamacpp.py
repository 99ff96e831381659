"""llama.cpp as the independent reference: its converter, its quantizer, its dequantization and its loss.

llama-cpp-python (pinned, built once per machine by ``scripts/setup.sh --test``)
gives the C library: ``llama_model_quantize`` and a model that evaluates token
ids. Its source distribution, which setup.sh keeps in ``.cache/`` (or
``MLXTUNE_LLAMACPP_SRC`` names), vendors llama.cpp's ``convert_hf_to_gguf.py``
and the gguf-py it is written against (the converter puts that first on its
path); we run it in a subprocess of the test interpreter (it needs torch and transformers, as the tests do).

Tests using these are marked ``llama_cpp`` and call ``need_llama_cpp()`` (and
``need_converter()``) first, which skip them with the reason when a piece is
missing.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

VERSION = "0.3.36"  # scripts/setup.sh pins the same
ROOT = Path(__file__).resolve().parent.parent
SETUP_HINT = "bash scripts/setup.sh --test builds it (MLXTUNE_TEST_LLAMACPP=0 skips that)"

# llama.cpp's quantization presets (llama_ftype) that the import tests cover, and the
# tensor type each must produce at least once in a model whose rows are whole 256-blocks.
PRESETS = {
    "Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K", "Q3_K_M": "Q3_K", "Q2_K": "Q2_K",
    "Q5_0": "Q5_0", "Q5_1": "Q5_1", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS", "BF16": "BF16",
}


def need_llama_cpp():
    """The llama_cpp module, or skip the test saying how to get it."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip(f"llama-cpp-python {VERSION} is not installed; {SETUP_HINT}")
    import llama_cpp

    return llama_cpp


def source_dir() -> Path | None:
    """The unpacked llama-cpp-python source distribution, if setup.sh (or MLXTUNE_LLAMACPP_SRC) provides one."""
    env = os.environ.get("MLXTUNE_LLAMACPP_SRC")
    for candidate in ([Path(env)] if env else []) + [ROOT / ".cache" / "llama-cpp-python" / f"llama_cpp_python-{VERSION}"]:
        if (candidate / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py").is_file():
            return candidate
    return None


def need_converter() -> Path:
    """llama.cpp's vendored source tree, or skip the test saying what is missing."""
    src = source_dir()
    if src is None:
        pytest.skip(f"llama.cpp's convert_hf_to_gguf.py (llama-cpp-python {VERSION} sdist) is not in .cache/; {SETUP_HINT}")
    if importlib.util.find_spec("torch") is None:
        pytest.skip("llama.cpp's convert_hf_to_gguf.py needs torch, which this environment does not have")
    return src / "vendor" / "llama.cpp"


def convert_hf(hf_dir: Path, out: Path, outtype: str = "f32") -> Path:
    """Run llama.cpp's convert_hf_to_gguf.py on a Hugging Face directory; returns the GGUF path."""
    llama = need_converter()
    cmd = [sys.executable, str(llama / "convert_hf_to_gguf.py"), str(hf_dir), "--outfile", str(out), "--outtype", outtype]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"convert_hf_to_gguf.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return out


def quantize(src: Path, out: Path, preset: str, requantize: bool = False) -> Path:
    """llama.cpp's ``llama_model_quantize``: ``preset`` is a llama_ftype name (Q4_K_M, BF16, ..., ALL_F32).

    ``ALL_F32`` with ``requantize`` writes llama.cpp's own dequantization of a
    quantized file: every tensor through ggml's ``to_float``.
    """
    llama_cpp = need_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_ALL_F32" if preset == "ALL_F32" else f"LLAMA_FTYPE_MOSTLY_{preset}")
    params.allow_requantize = requantize
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    assert rc == 0 and out.is_file(), f"llama_model_quantize {src.name} -> {preset} failed ({rc})"
    return out


def logits(path: Path, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits (T, V) for the token ids, every position."""
    llama_cpp = need_llama_cpp()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=max(64, len(ids)), n_batch=max(64, len(ids)), logits_all=True, verbose=False, n_threads=2)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float64)
    llm.close()
    return out


def mean_loss(all_logits: np.ndarray, ids: list[int]) -> float:
    """Mean cross-entropy of predicting ids[1:] from the logits (T, V) at positions 0..T-2, in float64."""
    z = np.asarray(all_logits, dtype=np.float64)[:-1]  # (T-1, V)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].mean())


def llama_cpp_loss(path: Path, ids: list[int]) -> float:
    """llama.cpp's mean loss on the token ids of the GGUF file ``path``."""
    return mean_loss(logits(path, ids), ids)


def stored_tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (type, float32 values in numpy's shape) of every tensor of a GGUF file, expanded by gguf-py."""
    import gguf

    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        out[t.name] = (t.tensor_type.name, values.reshape(tuple(reversed([int(d) for d in t.shape]))))
    return out
