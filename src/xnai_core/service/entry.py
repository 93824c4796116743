"""The ``xnai-core`` console script: a clear message when the service extra is missing."""

from __future__ import annotations

import signal
import sys

_early_hups: list[int] = []


def _note_hup(signum: int, frame: object) -> None:
    _early_hups.append(signum)


def take_early_hup() -> bool:
    """Whether a SIGHUP came while ``serve`` was starting (and forget it): the running
    service then reloads once, as it would have had it been up."""
    came = bool(_early_hups)
    _early_hups.clear()
    return came


def main() -> None:
    if sys.argv[1:2] == ["serve"] and hasattr(signal, "SIGHUP"):
        # SIGHUP's default action ends the process: one sent while the service loads its
        # config and starts (`systemctl reload` right after `start`) would kill it. Until
        # the running service takes the signal over, it is noted and applied once up.
        signal.signal(signal.SIGHUP, _note_hup)
    try:
        from .cli import main as cli
    except ImportError as exc:  # click (or Starlette/uvicorn for serve) not installed
        sys.stderr.write(
            f"xnai-core: the command needs the 'service' extra "
            f"(pip install 'xnai-core[service]'): {exc}\n"
        )
        sys.exit(3)
    cli(prog_name="xnai-core")
