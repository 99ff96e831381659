#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, end-to-end tests included.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not e2e"`.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
    echo "test.sh: pytest collected no tests - failing rather than passing silently" >&2
    exit 1
fi
exit $rc
