"""A replica SIGKILLed while its restart command runs (finding C of the hardening pass).

The replica that holds the service's lease runs a restart command that hangs (it records
its pid, then sleeps far past its ``timeout``), and is SIGKILLed mid-command, as the OOM
killer or a node's loss would. Nobody of ours is left to kill that command at its
timeout; once the dead replica's lease and settle record expire, a peer that still sees
the service down restarts it. The two restarts must never run at once: the first command
is killed at its own timeout whether or not its replica is alive.

Real processes only: the replica is ``tests/recovery_worker.py`` in a process of its own,
the shared state is in a private redis-server on a free port.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.conftest import PrivateRedis, free_port
from xnai_core.health.checkers import HTTPHealthChecker
from xnai_core.health.monitor import HealthMonitor
from xnai_core.recovery import RecoveryCoordinator, RecoveryManager, RecoveryRule
from xnai_core.recovery.actions import _SUPERVISOR, run_command

TIMEOUT = 5.0  # the worker's rule (tests/recovery_worker.py): timeout 5 s


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not reaped yet) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _started(pids: Path) -> dict[str, int]:
    """Who started a restart command, and its pid (the first of each)."""
    found: dict[str, int] = {}
    if pids.exists():
        for line in pids.read_text().splitlines():
            pid, who = line.split()
            found.setdefault(who, int(pid))
    return found


def _command(pids: Path, who: str) -> list[str]:
    # Records its pid, then hangs: a restart stuck far past its timeout.
    return ["sh", "-c", f"echo $$ {who} >> '{pids}'; exec sleep 120"]


async def _until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.mark.slow
async def test_a_killed_holder_s_hung_restart_never_runs_beside_its_peer_s(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    pids = tmp_path / "pids"
    down = f"http://127.0.0.1:{free_port()}/"  # nothing listens: the service is down
    prefix = "xnai-test-orphan"
    spec = {"url": private_redis.url, "prefix": prefix, "web_url": down}
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.recovery_worker",
        json.dumps({**spec, "command": _command(pids, "worker")}),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    client = aioredis.Redis.from_url(private_redis.url)
    manager = RecoveryManager(
        verify_interval=0.05, coordinator=RecoveryCoordinator(client, key_prefix=prefix)
    )
    manager.add_rule(
        RecoveryRule(
            "web",
            "restart_service",
            command=_command(pids, "peer"),
            failure_threshold=1,
            cooldown=0.0,
            grace_period=1.0,
            stable_period=10.0,
            timeout=TIMEOUT,
        )
    )
    monitor = HealthMonitor(
        check_interval=0.05,
        failure_threshold=2,
        recovery_manager=manager,
        jitter=lambda interval: 0.0,
    )
    monitor.add_checker(HTTPHealthChecker("web", down, timeout=0.25))
    try:
        assert worker.stdout is not None
        async with asyncio.timeout(30):
            assert await worker.stdout.readline() == b"ready\n"
        assert await _until(lambda: "worker" in _started(pids), 30)
        first = _started(pids)["worker"]
        worker.kill()  # SIGKILL, mid-command
        await worker.wait()
        assert _alive(first)  # the command outlived its replica, as a restart under way does

        # A peer looks at once: the outage goes on, so it restarts the service once the
        # dead holder's lease and settle record have run out...
        await monitor.start_monitoring()
        assert await _until(lambda: "peer" in _started(pids), 60), pids.read_text()
        # ...and never while the first restart still runs: that one was ended at its own
        # timeout (SIGTERM, then SIGKILL a grace later), though the manager that started
        # it is gone. Unsupervised, it would sleep for two minutes.
        assert not _alive(first), "the killed replica's restart still runs beside its peer's"
    finally:
        await monitor.stop_monitoring()
        await manager.aclose()
        await client.aclose()
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        for pid in _started(pids).values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# -- the supervisor on its own ----------------------------------------------------------


def test_the_supervisor_ends_its_command_at_the_timeout_with_nobody_watching(
    tmp_path: Path,
) -> None:
    # Started as the manager starts it; then nobody of ours waits, signals or kills.
    pid_file = tmp_path / "pid"
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-S",
            _SUPERVISOR,
            "0.5",
            "1.0",
            "--",
            "sh",
            "-c",
            f"echo $$ > '{pid_file}'; trap '' TERM; exec sleep 60",
        ],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        command = int(pid_file.read_text())
        # The command ignores SIGTERM: the SIGKILL a grace later ends it, and the group.
        assert supervisor.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while _alive(command):
            assert time.monotonic() < deadline, "the command outlived its timeout"
            time.sleep(0.01)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        if pid_file.exists() and pid_file.read_text().strip():
            pid = int(pid_file.read_text())
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_a_supervised_command_reports_its_own_ending() -> None:
    exited = await run_command(["sh", "-c", "exit 3"], timeout=10)
    assert (exited.ok, exited.exit_code, exited.error) == (False, 3, "exited with status 3")
    killed = await run_command(["sh", "-c", "kill -TERM $$"], timeout=10)
    assert (killed.exit_code, killed.error) == (-15, "killed by signal 15")
    fine = await run_command(["sh", "-c", "echo done"], timeout=10)
    assert (fine.ok, fine.exit_code, fine.output_tail) == (True, 0, "done\n")


async def test_a_supervised_command_starts_with_the_default_signal_actions() -> None:
    # Python ignores SIGPIPE in itself; the command must not inherit that from its
    # supervisor (a pipeline such as `yes | head` would then never end by SIGPIPE).
    outcome = await run_command(["grep", "^SigIgn:", "/proc/self/status"], timeout=10)
    assert outcome.ok, outcome
    assert outcome.output_tail is not None
    ignored = int(outcome.output_tail.split()[1], 16)
    for sig in (signal.SIGPIPE, signal.SIGTERM, signal.SIGXFSZ):
        assert not ignored & (1 << (sig - 1)), sig
