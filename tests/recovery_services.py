"""A real HTTP service on loopback for the recovery tests: killed like a crash, restarted
by a real command that logs who ran it, optionally slow to start or slow to answer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from xnai_core.recovery import RecoveryCoordinator, RecoveryManager, RecoveryRule

PY = sys.executable

# argv: port, pid file, seconds each answer takes, status code it answers.
SERVER = textwrap.dedent(
    """
    import http.server, os, sys, time
    port, pid_file = int(sys.argv[1]), sys.argv[2]
    delay, code = float(sys.argv[3]), int(sys.argv[4])

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(delay)
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Health)
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pid_file + ".tmp", pid_file)
    server.serve_forever()
    """
)

# argv: server script, port, pid file, log, who, seconds to take, answer delay, answer code.
# A restart as `systemctl restart` does it: it takes a while, starts the server detached
# (its own session, no shared output), logs who ran it, and exits.
START = textwrap.dedent(
    """
    import subprocess, sys, time
    server, port, pid_file, log, who, takes, delay, code = sys.argv[1:9]
    with open(log, "a") as f:
        f.write(who + "\\n")
    time.sleep(float(takes))
    subprocess.Popen(
        [sys.executable, server, port, pid_file, delay, code],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    print("started web on port", port)
    """
)

# Start argv[1:] detached (its own session, no shared output) and exit: no child of ours.
DETACH = (
    "import subprocess, sys; subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, "
    "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)"
)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class Web:
    """One service; ``restart_command(who)`` is what a replica's rule runs."""

    tmp: Path
    port: int
    takes: float = 0.0  # seconds the restart command takes before it starts the server
    answer_delay: float = 0.0  # seconds each answer of the restarted server takes
    answer_code: int = 200

    @classmethod
    def create(cls, tmp: Path, **kwargs: float) -> Web:
        (tmp / "server.py").write_text(SERVER)
        (tmp / "start.py").write_text(START)
        return cls(tmp, free_port(), **kwargs)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    @property
    def pid_file(self) -> Path:
        return self.tmp / "web.pid"

    @property
    def log(self) -> Path:
        return self.tmp / "restarts.log"

    def restarts(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    def restart_command(self, who: str) -> list[str]:
        return [
            PY,
            str(self.tmp / "start.py"),
            str(self.tmp / "server.py"),
            str(self.port),
            str(self.pid_file),
            str(self.log),
            who,
            str(self.takes),
            str(self.answer_delay),
            str(self.answer_code),
        ]

    def start(self, *, answer_delay: float = 0.0) -> None:
        """Start the server directly (not a restart: nothing is logged)."""
        self.pid_file.unlink(missing_ok=True)
        server = [PY, str(self.tmp / "server.py"), str(self.port), str(self.pid_file)]
        server += [str(answer_delay), str(self.answer_code)]
        subprocess.run([PY, "-c", DETACH, *server], check=True)
        deadline = time.monotonic() + 10
        while not (self.pid_file.exists() and listening(self.port)):
            if time.monotonic() > deadline:
                raise RuntimeError("web service did not start")
            time.sleep(0.02)

    def pid(self) -> int:
        """The running server's pid."""
        return int(self.pid_file.read_text())

    def kill(self) -> int:
        """SIGKILL the server, as a crash would, and wait until its port is closed; returns
        the dead server's pid."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while listening(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)
        return pid

    def stop(self) -> None:
        """Kill every server of this service, not only the one the pid file names: a
        restart a killed replica started can land after the file was read (a server
        left behind outlived a test run once)."""
        pids = set(self._servers())
        if self.pid_file.exists():
            with contextlib.suppress(ValueError):
                pids.add(int(self.pid_file.read_text()))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def _servers(self) -> list[int]:
        script = str(self.tmp / "server.py").encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # gone meanwhile
            if script in argv:
                found.append(int(entry.name))
        return found


def restarting_replica(
    who: str,
    coordinator: RecoveryCoordinator,
    restarts: list[str],
    *,
    verify_interval: float,
    **rule: Any,
) -> RecoveryManager:
    """One replica's RecoveryManager, coordinated through ``coordinator``: its one rule
    restarts "web" at the first failure (no cooldown, a 1 s timeout), each restart adds
    ``who`` to ``restarts``; ``rule`` gives the rule's other settings."""
    manager = RecoveryManager(verify_interval=verify_interval, coordinator=coordinator)

    async def restart(service: str) -> None:
        restarts.append(who)

    manager.add_rule(
        RecoveryRule(
            "web",
            "restart_service",
            recovery_func=restart,
            failure_threshold=1,
            cooldown=0.0,
            timeout=1.0,
            **rule,
        )
    )
    return manager


async def web_healthy_again(
    managers: Sequence[RecoveryManager], timeout: float | None = None
) -> None:
    """Tell each of ``managers`` that "web" is healthy again, then wait (up to ``timeout``
    seconds each, if given) until each is idle."""
    for manager in managers:
        await manager.on_status_change("web", "unhealthy", "healthy", None)
    for manager in managers:
        await asyncio.wait_for(manager.wait_idle(), timeout)


async def close_replicas(managers: Sequence[RecoveryManager], clients: Sequence[Any]) -> None:
    """Close ``managers``, then the Redis ``clients`` they used."""
    for manager in managers:
        await manager.aclose()
    for client in clients:
        await client.aclose()
