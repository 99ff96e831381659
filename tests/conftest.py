import os
from pathlib import Path

import pytest

import mlxtune  # noqa: F401  (loads the optimized BLAS before anything imports mlx)

from tiny import make_tiny_model

# Tests never reach the Hugging Face Hub and never touch the user's caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.getbasetemp() / "state"
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLXTUNE_HOME", str(home / "mlxtune"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random tiny llama model directory (float32, tied embeddings)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
