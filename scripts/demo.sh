#!/usr/bin/env bash
# The main job: set everything up, then run the live demonstration.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m examples.demo "$@"
