import os
import sys
from pathlib import Path

import pytest

if os.environ.get("MLXTUNE_TEST_WITHOUT_MLX") == "1":
    # Make `import mlx` fail as it does where mlx is not installed (a None entry
    # in sys.modules does that, and find_spec then reports it absent). CI goes
    # further and runs the suite in a venv without mlx (scripts/test.sh).
    for _name in ("mlx", "mlx.core", "mlx.nn", "mlx.optimizers", "mlx.utils", "mlx_lm"):
        sys.modules[_name] = None

import mlxtune  # noqa: F401  (loads the optimized BLAS before anything imports mlx)

from tiny import make_tiny_model

# Tests never reach the Hugging Face Hub and never touch the user's caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_sessionstart(session):
    """CI sets MLXTUNE_REQUIRE_LLAMACPP=1: the tests held to llama.cpp must run there, not skip."""
    if os.environ.get("MLXTUNE_REQUIRE_LLAMACPP") != "1" or "not llama_cpp" in (session.config.getoption("markexpr") or ""):
        return
    import importlib.util

    import llamacpp

    missing = [what for what, ok in (("the llama_cpp module", importlib.util.find_spec("llama_cpp") is not None),
                                      ("llama.cpp's source (convert_hf_to_gguf.py)", llamacpp.source_dir() is not None)) if not ok]
    if missing:
        raise pytest.UsageError(f"MLXTUNE_REQUIRE_LLAMACPP=1 but {' and '.join(missing)} not found; run bash scripts/llamacpp.sh {sys.prefix}")


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.getbasetemp() / "state"
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLXTUNE_HOME", str(home / "mlxtune"))


def _mlx_ok() -> bool:
    from mlxtune.backends import mlx_available

    return mlx_available()


HAVE_MLX = _mlx_ok()
needs_mlx = pytest.mark.skipif(not HAVE_MLX, reason="mlx is not installed")


@pytest.fixture(params=["mlx", "numpy"])
def backend(request) -> str:
    """Each backend in turn; mlx is skipped where it cannot be imported."""
    if request.param == "mlx" and not HAVE_MLX:
        pytest.skip("mlx is not installed")
    return request.param


NOTES = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"


@pytest.fixture
def small_data(tmp_path) -> Path:
    """The first 24 records of data/notes.jsonl: a chat data set a tiny model trains on in a second."""
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(NOTES.read_text().splitlines(keepends=True)[:24]))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random tiny llama model directory (float32, tied embeddings)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def data_script(name: str):
    """The module of a data generator in data/ (e.g. ``make_style``), imported from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "data" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
