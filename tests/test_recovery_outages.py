"""Issue 11, findings 9, 11, 12 and 13, against real HTTP services on loopback and real
processes: a stopped monitor, attempts counted when made, a grace period derived from the
monitor, a service that comes back slow, a stuck recovery function, a chatty daemon."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import stat
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.recovery_services import Web
from xnai_core.health.checkers import HTTPHealthChecker
from xnai_core.health.monitor import HealthMonitor
from xnai_core.recovery import RecoveryManager, RecoveryRule, actions

PY = sys.executable


async def _until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def _quiet(count: Callable[[], int], for_: float, timeout: float = 20.0) -> int:
    """``count()`` once it has not changed for ``for_`` seconds."""
    deadline = time.monotonic() + timeout
    seen, since = count(), time.monotonic()
    while time.monotonic() - since < for_:
        if time.monotonic() > deadline:
            raise AssertionError(f"still changing after {timeout:g}s")
        await asyncio.sleep(0.02)
        if count() != seen:
            seen, since = count(), time.monotonic()
    return seen


def _detail(manager: RecoveryManager, service: str = "web") -> dict[str, object]:
    return manager.get_recovery_stats()["services"][service]  # type: ignore[index, no-any-return]


@pytest.fixture
async def stack() -> AsyncIterator[list[HealthMonitor | RecoveryManager]]:
    things: list[HealthMonitor | RecoveryManager] = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, HealthMonitor):
            await thing.stop_monitoring()
        else:
            await thing.aclose()


def _restarting(**rule: Any) -> RecoveryManager:
    """A manager with one restart_service rule for "web" (``rule``: its settings), asking
    for checks every 0.05 s."""
    manager = RecoveryManager(verify_interval=0.05)
    manager.add_rule(RecoveryRule("web", "restart_service", **rule))
    return manager


def _watch(
    stack: list[HealthMonitor | RecoveryManager],
    manager: RecoveryManager,
    url: str,
    *,
    interval: float = 0.1,
    degraded_threshold: float | None = None,
) -> HealthMonitor:
    monitor = HealthMonitor(
        check_interval=interval,
        recovery_manager=manager,
        failure_threshold=2,
        success_threshold=2,
        jitter=lambda interval: 0.0,
    )
    monitor.add_checker(
        HTTPHealthChecker("web", url, timeout=interval, degraded_threshold=degraded_threshold)
    )
    stack.extend([manager, monitor])
    return monitor


# -- finding 9: a stopped monitor runs no checks for a verifying manager ----------------


class CountingServer:
    """A real HTTP server on loopback that answers 503 and counts the requests it gets."""

    def __init__(self) -> None:
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/health"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def counting_server() -> Iterator[CountingServer]:
    server = CountingServer()
    yield server
    server.close()


async def test_a_stopped_monitor_is_not_made_to_check_by_a_verifying_manager(
    counting_server: CountingServer, stack: list[HealthMonitor | RecoveryManager]
) -> None:
    """Finding 9: stop the monitor mid-grace: no request reaches the service until it runs
    again; then verification resumes."""

    async def restart(service: str) -> None:
        return None  # "works", but the service keeps answering 503

    manager = _restarting(
        recovery_func=restart,
        failure_threshold=2,
        grace_period=60.0,
        stable_period=5.0,
    )
    monitor = _watch(stack, manager, counting_server.url)
    await monitor.start_monitoring()
    await _until(lambda: _detail(manager)["state"] == "verifying")
    await _until(lambda: counting_server.requests >= 5)  # it probes while it verifies
    await monitor.stop_monitoring()
    # A request sent just before the stop may reach the server's thread after it: wait
    # for quiet (the bug probed every 0.05 s, so it never comes), then for none at all.
    stopped_at = await _quiet(lambda: counting_server.requests, for_=0.3)
    await asyncio.sleep(0.6)  # a dozen probes' worth of time
    assert counting_server.requests == stopped_at
    assert _detail(manager)["state"] == "verifying"  # paused, not given up

    await monitor.start_monitoring()
    await _until(lambda: counting_server.requests > stopped_at + 3)


# -- finding 11: attempts count when made; the default grace period follows the monitor ---


async def test_an_attempt_counts_when_made_and_is_pending_until_judged(
    tmp_path: Path, stack: list[HealthMonitor | RecoveryManager]
) -> None:
    """Finding 11: right after the restart, total_attempts is 1 with its outcome pending."""
    web = Web.create(tmp_path, takes=0.0)
    web.start()
    try:
        # The restarted server comes up a second after the command exits, as many do.
        manager = _restarting(
            command=[PY, "-c", _SLOW_START, *web.restart_command("me")],
            failure_threshold=2,
            grace_period=30.0,
            stable_period=5.0,
        )
        monitor = _watch(stack, manager, web.url)
        await monitor.start_monitoring()
        assert await monitor.wait_for_status("web", "healthy", timeout=10)
        web.kill()
        await _until(lambda: _detail(manager)["state"] == "verifying")
        stats = manager.get_recovery_stats()
        assert stats["total_attempts"] == 1
        assert stats["actions_by_type"]["restart_service"] == 1  # type: ignore[index]
        assert stats["success_rate"] == stats["success_fraction"] == 0.0  # nothing judged
        detail = _detail(manager)
        assert (detail["attempts"], detail["pending"], detail["failures"]) == (1, 1, 0)
        assert detail["last_attempt"]["outcome"] == "pending"  # type: ignore[index]

        await manager.wait_idle()
        stats = manager.get_recovery_stats()
        assert (stats["total_attempts"], stats["success_fraction"]) == (1, 1.0)
        assert stats["success_rate"] == 1.0  # the seed's name: a fraction, as the seed shows
        assert _detail(manager)["pending"] == 0
        assert _detail(manager)["last_attempt"]["outcome"] == "succeeded"  # type: ignore[index]
    finally:
        web.stop()


# Runs the restart command given as arguments after a one-second pause of its own child:
# the command exits at once and the server comes up a second later.
_SLOW_START = textwrap.dedent(
    """
    import subprocess, sys
    subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; time.sleep(1); "
         "subprocess.run(sys.argv[1:])", *sys.argv[1:]],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    """
)


async def test_the_default_grace_period_follows_the_monitor(
    tmp_path: Path, stack: list[HealthMonitor | RecoveryManager]
) -> None:
    """Finding 11: with checks every 0.1 s, a restart that fixes nothing is known to have
    failed after about a second (the derived grace period), not 30 s."""
    web = Web.create(tmp_path)
    web.start()
    try:
        manager = _restarting(
            command=[PY, "-c", "pass"],  # exits 0, starts nothing
            failure_threshold=2,
            max_attempts=1,
            stable_period=5.0,
        )
        monitor = _watch(stack, manager, web.url)
        rule = _detail(manager)["rules"][0]  # type: ignore[index]
        # success_threshold 2 * (min(interval 0.1, verify 0.05) + timeout 0.1), floored at 1 s
        assert rule["grace_period"] == 1.0
        await monitor.start_monitoring()
        assert await monitor.wait_for_status("web", "healthy", timeout=10)
        web.kill()
        await _until(lambda: manager.is_escalated("web"), timeout=15)
        failure = manager.get_recovery_stats()["recent_failures"][0]  # type: ignore[index]
        assert failure["reason"] == "not healthy within 1s grace period"
    finally:
        web.stop()


# -- finding 12: a service that comes back slow is up: its counters reset ------------------


async def test_a_service_back_but_slow_resets_its_crash_loop_counters(
    tmp_path: Path, stack: list[HealthMonitor | RecoveryManager]
) -> None:
    """Finding 12: restarted, it answers slowly (degraded) and stays up past the stable
    period: the next outage is restarted, not escalated without a restart."""
    web = Web.create(tmp_path, answer_delay=0.05)
    web.start(answer_delay=0.05)
    try:
        manager = _restarting(
            command=web.restart_command("me"),
            failure_threshold=2,
            max_attempts=1,
            grace_period=3.0,  # a restarted Python server may take a while on a busy host
            cooldown=0.0,
            stable_period=1.0,
        )
        monitor = _watch(stack, manager, web.url, interval=0.2, degraded_threshold=0.02)
        await monitor.start_monitoring()
        for outage in (1, 2):
            assert await monitor.wait_for_status("web", "degraded", timeout=10)
            await manager.wait_idle()
            await _until(lambda: _detail(manager)["rules"][0]["tries_since_stable"] == 0)  # type: ignore[index]
            web.kill()
            await _until(lambda n=outage: len(web.restarts()) == n)  # type: ignore[misc]
        assert await monitor.wait_for_status("web", "degraded", timeout=10)
        await manager.wait_idle()
        assert not manager.is_escalated("web")
        assert _detail(manager)["escalations"] == 0
    finally:
        web.stop()


# -- finding 13: a stuck sync recovery function, a daemon that keeps writing ---------------


class StuckRestart:
    """A sync recovery function that hangs until released, counting how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def __call__(self, service: str) -> None:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.release.wait(20)
        with self._lock:
            self.running -= 1


async def test_a_stuck_sync_recovery_func_never_runs_twice_at_once() -> None:
    """Finding 13: a sync function hung past its timeout is not started again beside
    itself; the later attempts fail at once and say it is stuck."""
    restart = StuckRestart()

    manager = RecoveryManager(verify_interval=0.02)
    manager.add_rule(
        RecoveryRule(
            "svc",
            "restart_service",
            recovery_func=restart,
            failure_threshold=1,
            max_attempts=3,
            backoff_base=0.05,
            backoff_max=0.05,
            cooldown=0.0,
            grace_period=0.05,
            timeout=0.2,
        )
    )
    try:
        await manager.on_status_change("svc", "healthy", "unhealthy", None)
        await _until(lambda: manager.is_escalated("svc"))
        assert restart.most == 1
        failures: list[dict[str, str]] = manager.get_recovery_stats()["recent_failures"]  # type: ignore[assignment]
        reasons = [failure["reason"] for failure in failures]
        assert reasons[0] == "timed out after 0.2s"
        assert all("earlier call still running" in r for r in reasons[1:3])
        assert "stuck" in str(_detail(manager, "svc")["escalation_reason"])
    finally:
        restart.release.set()
        await manager.aclose()


async def test_a_stuck_sync_recovery_func_is_not_run_beside_itself_by_a_rebuilt_manager() -> None:
    """Finding 13, across managers: a manager closed (a reload rebuilds it) while its sync
    function hangs; the manager that replaces it does not start that function again beside
    the stuck call (before: each manager had its own record of running calls, two ran)."""
    restart = StuckRestart()

    def rule() -> RecoveryRule:
        return RecoveryRule(
            "svc",
            "restart_service",
            recovery_func=restart,
            failure_threshold=1,
            max_attempts=2,
            backoff_base=0.05,
            backoff_max=0.05,
            cooldown=0.0,
            grace_period=0.05,
            timeout=0.2,
        )

    old = RecoveryManager([rule()], verify_interval=0.02)
    new = RecoveryManager([rule()], verify_interval=0.02)
    try:
        await old.on_status_change("svc", "healthy", "unhealthy", None)
        await _until(lambda: old.is_escalated("svc"))
        await old.aclose()
        await new.on_status_change("svc", "healthy", "unhealthy", None)
        await _until(lambda: new.is_escalated("svc"))
        assert restart.most == 1
        failures: list[dict[str, str]] = new.get_recovery_stats()["recent_failures"]  # type: ignore[assignment]
        assert "earlier call still running" in failures[0]["reason"]
    finally:
        restart.release.set()
        await old.aclose()
        await new.aclose()
    # Once the stuck call has returned, the function runs again.
    await _until(lambda: restart.running == 0)
    again = RecoveryManager([rule()], verify_interval=0.02)
    try:
        await again.on_status_change("svc", "healthy", "unhealthy", None)
        await _until(lambda: again.get_recovery_stats()["total_attempts"] == 1)
        await again.wait_idle()
        failures = again.get_recovery_stats()["recent_failures"]  # type: ignore[assignment]
        assert all("earlier call" not in f["reason"] for f in failures)
    finally:
        await again.aclose()


async def test_hung_sync_recovery_funcs_never_hold_back_a_page() -> None:
    """Finding 13 (and 6 for the manager): six services' sync recovery functions hang, more
    than the manager's action threads; each still escalates, and a sync pager (itself off
    the loop) gets every page."""
    release = threading.Event()
    pages: list[str] = []

    def restart(service: str) -> None:
        release.wait(20)

    def pager(alert: object) -> None:
        time.sleep(0.05)  # a blocking webhook call
        pages.append(getattr(alert, "service", "?"))

    services = [f"svc{n}" for n in range(6)]
    manager = RecoveryManager(verify_interval=0.02, alert_timeout=5.0)
    manager.add_alert_handler(pager)
    for service in services:
        manager.add_rule(
            RecoveryRule(
                service,
                "restart_service",
                recovery_func=restart,
                failure_threshold=1,
                max_attempts=1,
                grace_period=0.05,
                timeout=0.2,
            )
        )
    try:
        for service in services:
            await manager.on_status_change(service, "healthy", "unhealthy", None)
        await _until(lambda: sorted(pages) == services)
    finally:
        release.set()
        await manager.aclose()


async def test_a_daemon_left_by_a_restart_command_fills_no_file(tmp_path: Path) -> None:
    """Finding 13: the daemon a start script leaves holding its output writes into a pipe
    we drain and drop (no file grows, the daemon neither blocks nor dies), and the
    command still returns at its own exit."""
    pid_file = tmp_path / "daemon.pid"
    beats = tmp_path / "beats"
    daemon = (
        "import os, sys, time\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "chunk = b'x' * 65536\n"
        "for n in range(400):\n"  # 25 MB, then it exits
        "    sys.stdout.buffer.write(chunk); sys.stdout.flush()\n"
        f"    open({str(beats)!r}, 'w').write(str(n))\n"
        "    time.sleep(0.002)\n"
    )
    script = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {daemon!r}])\n"
    drains: set[actions.OutputCapture] = set()
    outcome = await actions.run_command([PY, "-c", script], timeout=20, drains=drains)
    assert outcome.ok
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    pid = int(pid_file.read_text())
    try:
        out = os.stat(f"/proc/{pid}/fd/1")
        assert stat.S_ISFIFO(out.st_mode), os.readlink(f"/proc/{pid}/fd/1")
        assert not drains  # handed to a drainer of its own, not read on our loop
        # It keeps writing (not blocked on a full pipe, not killed by SIGPIPE) to the end.
        await _until(lambda: beats.exists() and beats.read_text() == "399", timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


def _process_state(pid: int) -> str:
    """The state letter /proc gives for ``pid`` (Z: dead, not yet reaped)."""
    return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]


def _last_beat(beats: Path) -> int:
    """The daemon's last beat, or -1 while the file is missing or caught mid-rewrite
    (the shell truncates it before writing the next number)."""
    try:
        text = beats.read_text().strip()
    except FileNotFoundError:
        return -1
    return int(text) if text else -1


async def test_a_daemon_left_by_a_restart_command_outlives_the_manager(tmp_path: Path) -> None:
    """The service a restart command leaves running (a daemon writing to the command's
    output, with SIGPIPE's default action, as a shell or a Go program has) lives on when
    the manager is closed (a reload, a shutdown): before, closing the manager closed the
    pipe and the next write killed the daemon with SIGPIPE."""
    pid_file = tmp_path / "daemon.pid"
    beats = tmp_path / "beats"
    script = (
        f"(trap - PIPE; n=0; while [ $n -lt 2000 ]; do echo tick $n; echo $n > {beats}; "
        f"n=$((n+1)); sleep 0.01; done) & echo $! > {pid_file}"
    )
    manager = RecoveryManager(verify_interval=0.02)
    manager.add_rule(
        RecoveryRule(
            "svc",
            "restart_service",
            command=["sh", "-c", script],
            failure_threshold=1,
            max_attempts=1,
            cooldown=0.0,
            grace_period=0.1,
            timeout=5.0,
        )
    )
    pid = 0
    try:
        await manager.on_status_change("svc", "healthy", "unhealthy", None)
        await _until(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
        pid = int(pid_file.read_text())
        await manager.wait_idle()
        await manager.aclose()
        beat = _last_beat(beats)
        await _until(lambda: _last_beat(beats) >= beat + 20)
        state = _process_state(pid)
        # Alive (asleep, running, or in a disk wait while it writes its beat on a busy
        # host), not a zombie killed by SIGPIPE.
        assert state in ("S", "R", "D"), state
    finally:
        await manager.aclose()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
