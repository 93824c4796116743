"""The ``xnai-core`` console script: a clear message when the service extra is missing.

For ``serve``, its first lines take SIGHUP, SIGTERM and SIGINT over, before anything but
this module, its (lazy) packages and the standard library's ``signal`` is imported: the
config, the library and uvicorn load afterwards, so a signal sent while they load finds
the service's own handling, not the default action.
"""

from __future__ import annotations

import signal
import sys

_early_hups: list[int] = []


def _note_hup(signum: int, frame: object) -> None:
    _early_hups.append(signum)


def _stop_early(signum: int, frame: object) -> None:
    # Nothing runs yet (no check, no restart command, no connection): stopping now is
    # exiting, with the status a stop asked for ends with (uvicorn's own handling, with
    # the runtime's orderly stop, takes over once the server starts).
    raise SystemExit(0)


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
        # SIGTERM or Ctrl-C while it starts: exit 0, quietly (no traceback of whatever
        # import was under way), before anything has been started.
        signal.signal(signal.SIGTERM, _stop_early)
        signal.signal(signal.SIGINT, _stop_early)
    try:
        from .cli import main as cli
    except ImportError as exc:  # click (or Starlette/uvicorn for serve) not installed
        sys.stderr.write(
            f"xnai-core: the command needs the 'service' extra "
            f"(pip install 'xnai-core[service]'): {exc}\n"
        )
        sys.exit(3)
    cli(prog_name="xnai-core")
