#!/usr/bin/env bash
# Creates .venv (Python >= 3.11) and installs xnai-core with its test and benchmark tools.
# Safe to run again: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
# The dashboard tests drive Debian's chromium (Playwright's own browser builds are not
# downloaded); they are skipped, saying so, only where it cannot be installed.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null \
      || echo "setup.sh: chromium could not be installed; the dashboard tests will be skipped" >&2
  else
    echo "setup.sh: chromium missing (apt-get install chromium); the dashboard tests will be skipped" >&2
  fi
fi
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.xnai-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev,bench]"
  touch "$stamp"
fi
# The alert delivery tests run the real Prometheus Alertmanager (Debian's package).
if ! command -v prometheus-alertmanager >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus-alertmanager >/dev/null
  else
    echo "setup.sh: prometheus-alertmanager is missing (apt-get install prometheus-alertmanager as root)" >&2
  fi
fi
# The observability tests run a real Prometheus server and promtool (Debian's package).
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
  else
    echo "setup.sh: prometheus/promtool are missing (apt-get install prometheus as root)" >&2
  fi
fi
