"""The ``xnai-core`` console script: a clear message when the service extra is missing."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .cli import main as cli
    except ImportError as exc:  # click (or Starlette/uvicorn for serve) not installed
        sys.stderr.write(
            f"xnai-core: the command needs the 'service' extra "
            f"(pip install 'xnai-core[service]'): {exc}\n"
        )
        sys.exit(3)
    cli(prog_name="xnai-core")
