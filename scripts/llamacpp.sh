#!/usr/bin/env bash
# llama.cpp, the tests' independent reference for GGUF files: llama-cpp-python,
# pinned, built from its source distribution ONCE per machine into a wheel kept in
# .cache/llama-cpp-python/, then installed from that wheel into each environment.
# The unpacked source stays there too: it vendors llama.cpp's convert_hf_to_gguf.py
# and gguf-py, which tests/llamacpp.py runs.
#
#   bash scripts/llamacpp.sh .venv          # build the wheel if needed, install it
#   bash scripts/llamacpp.sh .venv-nomlx --no-build   # install the wheel only if built
#
# Does nothing where llama_cpp of this version is already importable (and its
# source is unpacked), or with MLXTUNE_TEST_LLAMACPP=0. Called by setup.sh --test.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
CACHE=.cache/llama-cpp-python
SRC=$CACHE/llama_cpp_python-$VERSION
VENV=${1:?usage: scripts/llamacpp.sh VENV [--no-build]}
PY=$VENV/bin/python

[ "${MLXTUNE_TEST_LLAMACPP:-1}" != 0 ] || exit 0
have_module() { "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; }

quiet() {  # run "$@", showing its output only when it fails
    local log
    log=$(mktemp)
    if "$@" >"$log" 2>&1; then rm -f "$log"; else cat "$log" >&2; rm -f "$log"; return 1; fi
}

mkdir -p $CACHE
if [ ! -f $SRC/vendor/llama.cpp/convert_hf_to_gguf.py ]; then
    if [ "${2:-}" = --no-build ] && [ ! -f $CACHE/llama_cpp_python-$VERSION.tar.gz ]; then exit 0; fi
    [ -f $CACHE/llama_cpp_python-$VERSION.tar.gz ] \
        || quiet "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: -d $CACHE "llama-cpp-python==$VERSION"
    tar -xzf $CACHE/llama_cpp_python-$VERSION.tar.gz -C $CACHE
fi
have_module && exit 0

wheel=$(ls $CACHE/llama_cpp_python-$VERSION-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
    [ "${2:-}" != --no-build ] || exit 0
    echo "setup: building llama-cpp-python $VERSION (llama.cpp, CPU only; once per machine, several minutes)"
    start=$(date +%s)
    # Only the libraries the Python binding loads: no multimodal library, tools, examples,
    # server or tests; no HTTPS; ggml tuned for this CPU. NB: the wheel is for this machine.
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc 2>/dev/null || echo 2) \
        quiet "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w $CACHE $CACHE/llama_cpp_python-$VERSION.tar.gz
    wheel=$(ls $CACHE/llama_cpp_python-$VERSION-*.whl | head -1)
    echo "setup: built $(basename "$wheel") in $(( $(date +%s) - start ))s"
fi
quiet "$PY" -m pip install -q --disable-pip-version-check "$wheel"
have_module || { echo "setup: llama_cpp $VERSION does not import in $VENV after installing $wheel" >&2; exit 1; }
echo "setup: llama-cpp-python $VERSION installed in $VENV"
