#!/usr/bin/env bash
# The main job: set everything up, then start a small demo stack on loopback (a toy RAG
# API and UI) and `xnai-core serve --config examples/stack.toml` watching it. Prints the
# dashboard's URL; Ctrl-C stops everything it started. Extra arguments go to
# `python -m examples.demo_stack up` (e.g. --port 9200).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m examples.demo_stack up "$@"
