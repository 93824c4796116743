"""The service's own checkers (``command``, ``tcp``) against real processes and ports."""

from __future__ import annotations

import os
import sys
import tracemalloc
from pathlib import Path

from tests.service_helpers import wait_for
from xnai_core import HealthStatus
from xnai_core.service.checks import CommandHealthChecker


async def test_a_command_that_prints_megabytes_costs_its_tail_not_its_output() -> None:
    """A check command that prints a lot (a verbose script, a debug dump) had all of it
    read into memory (``communicate()``), at every check: 400 MB of output took the
    service to 800 MB. Only the tail, shown as the error, is kept now."""
    script = (
        "import sys\n"
        "for _ in range(320): sys.stdout.write('x' * 65535 + '\\n')\n"
        "sys.stdout.write('password=hunter2secret the end\\n')\n"
        "sys.exit(3)\n"
    )
    checker = CommandHealthChecker("loud", (sys.executable, "-c", script), timeout=60)
    tracemalloc.start()
    try:
        result = await checker.check()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status is HealthStatus.UNHEALTHY
    assert result.error is not None
    assert result.error.startswith("exit status 3")
    assert result.error.endswith("the end")
    assert "hunter2secret" not in result.error
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB kept for 20 MiB of output"


async def test_a_command_that_exits_0_leaving_a_process_behind_is_healthy_at_once(
    tmp_path: Path,
) -> None:
    """``sh -c 'daemon & echo ok'``: the command exits 0 at once, but what it left holds
    the output pipe, and the check waited for the pipe to close: "timed out", unhealthy.
    Its exit status is its answer; what it left behind is killed (no check leaves a
    process behind)."""
    pid_file = tmp_path / "left.pid"
    command = ("/bin/sh", "-c", f"sleep 60 & echo $! > {pid_file}; echo ok")
    checker = CommandHealthChecker("leaves", command, timeout=20)
    result = await checker.check()
    assert result.status is HealthStatus.HEALTHY, result.error
    left = int(pid_file.read_text())

    def gone() -> bool:
        try:
            os.kill(left, 0)
        except ProcessLookupError:
            return True
        # A zombie is gone too: its parent (sh) has exited, init reaps it.
        try:
            with open(f"/proc/{left}/stat") as stat:
                return stat.read().split(") ")[1].startswith("Z")
        except FileNotFoundError:
            return True

    assert wait_for(gone, 10)
