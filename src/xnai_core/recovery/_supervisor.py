"""The supervisor of one restart command: it ends the command at its timeout, whether or
not the manager that started it is still alive.

``RecoveryManager`` runs a rule's command through this script, as a process of its own
that leads the command's process group and session::

    python -I -S _supervisor.py TIMEOUT GRACE -- ARGV...

It starts ARGV in its group and waits for it. At TIMEOUT (seconds after its own start) it
sends SIGTERM to the group, and SIGKILL once the command has exited or GRACE seconds have
passed, exactly as the manager does at the command's timeout. So a replica SIGKILLed
while its restart runs (the OOM killer, a node lost) leaves no command running past its
timeout, and the peers that its settle record holds off until then never restart the
service while that command still runs. When the command exits, the supervisor exits with
its status (a signal that ended the command ends the supervisor too), and whatever the
command left behind in the group (a daemon) is left alone, as before.

Standard library only, run by path with ``-I -S``: it loads nothing of the library and no
site packages. SIGTERM sent to the whole group (the manager's own timeout, ``aclose()``)
is for the command: the supervisor waits on to report how the command ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

# Python ignores SIGPIPE (and SIGXFSZ) in itself; the command gets the defaults a
# program expects, as subprocess gives them. Handlers of ours are reset by exec anyway.
_DEFAULTS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGTERM") if hasattr(signal, name)
)


def _wait(pid: int, until: float) -> int | None:
    """The command's wait status, or None if it still runs at ``until`` (monotonic)."""
    pause = 0.005
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return status
        left = until - time.monotonic()
        if left <= 0:
            return None
        # Polled: portable, and a restart command is short-lived. At most 10 wake-ups/s.
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.1)


def _signal_group(sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgrp(), sig)


def _exit_as(status: int) -> None:
    """End this process as the command ended."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file of ours
        except (ImportError, OSError, ValueError):
            pass
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal whose default action is not to end a process
    os._exit(os.waitstatus_to_exitcode(status))


def main(args: list[str]) -> None:
    timeout, grace = float(args[0]), float(args[1])
    argv = args[3:]
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    started = time.monotonic()
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ, setsigdef=_DEFAULTS)
    except OSError as exc:
        sys.stderr.write(f"cannot run {os.path.basename(argv[0])!r}: {exc.strerror}\n")
        sys.stderr.flush()
        os._exit(127)
    status = _wait(pid, started + timeout)
    if status is None:  # past its timeout: whoever started it may be gone
        _signal_group(signal.SIGTERM)
        status = _wait(pid, time.monotonic() + grace)
        # Children the command started share its group and may outlive it: this ends
        # them, and the supervisor with them.
        _signal_group(signal.SIGKILL)
        if status is None:
            status = os.waitpid(pid, 0)[1]
    _exit_as(status)


if __name__ == "__main__":
    main(sys.argv[1:])
