#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, end-to-end tests included,
# twice: with mlx (.venv), and in an environment where mlx is not installed at
# all (.venv-nomlx), where the numpy backend must carry every command and only
# the tests that need mlx itself are skipped (and the tests held to llama.cpp,
# which the first run covers, numpy's GGUF import path included). MLXTUNE_TEST_NOMLX=0 skips the
# second run. Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not e2e"`.
set -uo pipefail
cd "$(dirname "$0")/.."

run_pytest() {  # $1: the venv; pytest's "no tests collected" (5) counts as a failure
    "$1/bin/python" -m pytest --durations=15 "${@:2}"
    local rc=$?
    if [ $rc -eq 5 ]; then
        echo "test.sh: pytest collected no tests in $1 - failing rather than passing silently" >&2
        return 1
    fi
    return $rc
}

bash scripts/setup.sh --test || exit 1
echo "== tests with mlx (.venv)"
run_pytest .venv "$@"
rc=$?
if [ "${MLXTUNE_TEST_NOMLX:-1}" != 0 ]; then
    bash scripts/setup.sh --no-mlx || exit 1
    echo "== tests without mlx installed (.venv-nomlx)"
    # The tests held to llama.cpp ran above, both GGUF import paths included (numpy's too): not again here.
    run_pytest .venv-nomlx -m "not llama_cpp" "$@"
    rc2=$?
    [ $rc -ne 0 ] || rc=$rc2
fi
exit $rc
