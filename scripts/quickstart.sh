#!/usr/bin/env bash
# From a fresh clone to a fine-tuned adapter: set up, then train on the example
# notes with default settings (SmolLM2-135M-Instruct, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mlxtune lora --data data/notes.jsonl "$@"
