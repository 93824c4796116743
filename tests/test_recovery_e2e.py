"""Recovery end to end: a real HealthMonitor, real child processes, real HTTP on loopback.

Intervals, grace periods and backoffs are fractions of a second so the real
waits stay short; nothing here asserts how fast anything ran.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.recovery_services import PY, Web, listening
from xnai_core.health.alerts import Alert
from xnai_core.health.checkers import CustomHealthChecker, HTTPHealthChecker
from xnai_core.health.monitor import HealthMonitor
from xnai_core.recovery import RecoveryManager, RecoveryRule
from xnai_core.service.recovery_router import RecoveryRouter


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def _eventually(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    service = Web.create(tmp_path)
    yield service
    service.stop()


@pytest.fixture
async def stack() -> AsyncIterator[list[object]]:
    """Closes whatever monitors and managers a test builds, in reverse order."""
    things: list[object] = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, HealthMonitor):
            await thing.stop_monitoring()
        elif isinstance(thing, RecoveryManager):
            await thing.aclose()


def build(
    stack: list[object],
    checker_url: str,
    rule: RecoveryRule,
    *,
    interval: float = 0.1,
    failure_threshold: int = 2,
    **manager_kwargs: object,
) -> tuple[HealthMonitor, RecoveryManager]:
    manager = RecoveryManager(verify_interval=0.05, **manager_kwargs)  # type: ignore[arg-type]
    manager.add_rule(rule)
    monitor = HealthMonitor(
        check_interval=interval,
        recovery_manager=manager,
        failure_threshold=failure_threshold,
        success_threshold=2,
        jitter=lambda interval: 0.0,
    )
    monitor.add_checker(HTTPHealthChecker(rule.service_name, checker_url, timeout=interval))
    stack.extend([manager, monitor])
    return monitor, manager


async def test_killed_http_server_is_restarted_by_the_restart_command(
    web: Web, stack: list[object]
) -> None:
    """Killed server -> unhealthy -> restart command -> healthy; one successful restart."""
    web.start()
    rule = RecoveryRule(
        "web",
        "restart_service",
        command=web.restart_command("me"),
        failure_threshold=2,
        grace_period=10.0,
        backoff_base=0.1,
        backoff_max=1.0,
        cooldown=0.0,
        stable_period=5.0,
        timeout=10.0,
    )
    monitor, manager = build(stack, web.url, rule)
    await monitor.start_monitoring()
    assert await monitor.wait_for_status("web", "healthy", timeout=10)

    old_pid = web.kill()
    assert await monitor.wait_for_status("web", "unhealthy", timeout=10)
    await _eventually(lambda: manager.get_recovery_stats()["total_attempts"] == 1)
    await manager.wait_idle()

    assert monitor.get_status("web") == "healthy"
    assert web.pid() != old_pid
    assert not _alive(old_pid)
    stats = manager.get_recovery_stats()
    assert stats["total_attempts"] == 1
    assert stats["success_rate"] == 1.0
    assert stats["actions_by_type"]["restart_service"] == 1  # type: ignore[index]
    assert stats["average_recovery_time"] > 0  # type: ignore[operator]
    last = stats["services"]["web"]["last_attempt"]  # type: ignore[index]
    assert last["outcome"] == "succeeded"
    assert last["exit_code"] == 0
    assert last["output_tail"] == f"started web on port {web.port}\n"
    assert last["recovery_time"] == pytest.approx(stats["average_recovery_time"], abs=1e-5)
    assert stats["services"]["web"]["recovered_episodes"] == 1  # type: ignore[index]


async def test_service_that_never_comes_back_escalates_once_and_stays_latched(
    web: Web, stack: list[object], tmp_path: Path
) -> None:
    """Attempts follow the backoff, stop at max_attempts, escalate once, stay latched."""
    stamps = tmp_path / "attempts"
    # A "restart" that exits 0 and starts nothing: only the monitor can tell it failed.
    noop_restart = [
        PY,
        "-c",
        "import sys, time; open(sys.argv[1], 'a').write(f'{time.monotonic()}\\n')",
        str(stamps),
    ]
    rule = RecoveryRule(
        "web",
        "restart_service",
        command=noop_restart,
        failure_threshold=2,
        max_attempts=3,
        grace_period=0.4,
        backoff_base=0.2,
        backoff_max=0.3,
        jitter=0.5,
        cooldown=0.0,
        stable_period=5.0,
    )
    monitor, manager = build(stack, web.url, rule, random=lambda: 0.0)
    monitor_alerts: list[Alert] = []
    manager_alerts: list[Alert] = []
    monitor.add_alert_handler(monitor_alerts.append)
    manager.add_alert_handler(manager_alerts.append)
    await monitor.start_monitoring()
    await _eventually(lambda: manager.is_escalated("web"))
    await manager.wait_idle()

    times = [float(line) for line in stamps.read_text().split()]
    assert len(times) == 3
    # retry n waits min(0.3, 0.2 * 2**(n-1)) after a 0.4 s grace: at least 0.6 s, then 0.7 s
    assert times[1] - times[0] >= 0.4 + 0.2
    assert times[2] - times[1] >= 0.4 + 0.3
    escalations = [a for a in monitor_alerts if a.kind == "manual_intervention"]
    assert len(escalations) == 1
    assert escalations[0].severity == "critical"
    assert escalations[0].key == "web:manual_intervention"
    assert manager_alerts == escalations
    assert "web:manual_intervention" in [a.key for a in monitor.get_active_alerts()]

    # The service flaps (up, then down again): still latched, nothing runs, no new page.
    web.start()
    assert await monitor.wait_for_status("web", "healthy", timeout=10)
    web.kill()
    assert await monitor.wait_for_status("web", "unhealthy", timeout=10)
    await monitor.drain_notifications()
    await manager.wait_idle()
    assert len(stamps.read_text().split()) == 3
    assert len([a for a in monitor_alerts if a.kind == "manual_intervention"]) == 1
    detail = manager.get_recovery_stats()["services"]["web"]  # type: ignore[index]
    assert detail["state"] == "escalated"
    assert detail["suppressed_while_escalated"] >= 1

    # A human resets it: the page resolves and recovery resumes at once.
    assert await manager.reset("web")
    resolved = [a for a in monitor_alerts if a.kind == "manual_intervention" and a.resolved]
    assert len(resolved) == 1
    assert resolved[0].key == "web:manual_intervention"
    assert "web:manual_intervention" not in [a.key for a in monitor.get_active_alerts()]
    await _eventually(lambda: len(stamps.read_text().split()) >= 4)


async def test_checker_with_a_longer_interval_warns_at_its_first_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A checker's own longer interval, unknown at attach time, is caught at its first outage."""

    async def restart(service: str) -> None:
        return None

    manager = RecoveryManager(verify_interval=0.05)
    manager.add_rule(
        RecoveryRule(
            "slow",
            "restart_service",
            recovery_func=restart,
            failure_threshold=1,
            stable_period=1.0,
            grace_period=0.1,
            max_attempts=1,
        )
    )
    monitor = HealthMonitor(check_interval=0.1, failure_threshold=2, recovery_manager=manager)
    monitor.add_checker(HTTPHealthChecker("slow", "http://127.0.0.1:9/health"), interval=5.0)
    async with manager, monitor:
        await manager.on_status_change("slow", "healthy", "unhealthy", None)
        await manager.wait_idle()
    warnings = [r.getMessage() for r in caplog.records if "stable_period" in r.getMessage()]
    assert warnings == [
        "slow: stable_period 1.0s of the restart_service rule is not longer than this "
        "service's detection time (10.0s); a crash loop may never escalate"
    ]


async def test_rule_threshold_counts_the_monitors_failed_checks(
    web: Web, stack: list[object]
) -> None:
    """A rule with failure_threshold=5 waits for five failed checks, not the monitor's two."""
    seen: list[int] = []
    monitor_ref: list[HealthMonitor] = []

    async def restart(service: str) -> None:
        seen.append(monitor_ref[0].get_service_health(service).consecutive_failures)
        await asyncio.to_thread(web.start)

    rule = RecoveryRule(
        "web",
        "restart_service",
        recovery_func=restart,
        failure_threshold=5,
        grace_period=10.0,
        stable_period=5.0,
    )
    monitor, manager = build(stack, web.url, rule)
    monitor_ref.append(monitor)
    await monitor.start_monitoring()
    await _eventually(lambda: manager.get_recovery_stats()["total_attempts"] == 1)
    await manager.wait_idle()
    assert len(seen) == 1
    assert seen[0] >= 5
    assert manager.get_recovery_stats()["success_rate"] == 1.0
    assert monitor.get_status("web") == "healthy"


def test_stable_period_the_monitor_cannot_outlast_is_refused() -> None:
    """stable_period <= failure_threshold * check_interval could never catch a crash loop."""
    manager = RecoveryManager()
    manager.add_rule(RecoveryRule("web", "manual_intervention", stable_period=60.0))
    with pytest.raises(ValueError, match=r"'stable_period' of the 'manual_intervention' rule"):
        HealthMonitor(check_interval=30.0, failure_threshold=3, recovery_manager=manager)
    monitor = HealthMonitor(check_interval=10.0, failure_threshold=3, recovery_manager=manager)
    assert manager.monitor is monitor
    with pytest.raises(ValueError, match=r"must be > the monitor's failure_threshold"):
        manager.add_rule(RecoveryRule("api", "manual_intervention", stable_period=30.0))


def test_manager_belongs_to_one_monitor() -> None:
    """A second monitor cannot take over a manager that already has one."""
    manager = RecoveryManager()
    HealthMonitor(recovery_manager=manager)
    with pytest.raises(ValueError, match="already attached"):
        HealthMonitor(recovery_manager=manager)


async def test_sighup_reload_end_to_end(stack: list[object], tmp_path: Path) -> None:
    """A service that answers 503 until it reloads its config: SIGHUP via pid file heals it."""
    script = tmp_path / "reloadable.py"
    script.write_text(
        textwrap.dedent(
            """
            import http.server, os, signal, sys, threading
            port, pid_file = int(sys.argv[1]), sys.argv[2]
            state = {"ok": False}
            signal.signal(signal.SIGHUP, lambda *a: state.update(ok=True))

            class Health(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    self.send_response(200 if state["ok"] else 503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

                def log_message(self, *args):
                    pass

            server = http.server.HTTPServer(("127.0.0.1", port), Health)
            open(pid_file, "w").write(str(os.getpid()))
            server.serve_forever()
            """
        )
    )
    port = free_port()
    pid_file = tmp_path / "reloadable.pid"
    proc = await asyncio.create_subprocess_exec(PY, str(script), str(port), str(pid_file))
    try:
        deadline = time.monotonic() + 10
        while not (pid_file.exists() and listening(port)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        rule = RecoveryRule(
            "cfg",
            "config_reload",
            pid_file=pid_file,
            failure_threshold=2,
            grace_period=5.0,
            stable_period=5.0,
        )
        monitor, manager = build(stack, f"http://127.0.0.1:{port}/health", rule)
        await monitor.start_monitoring()
        await _eventually(lambda: manager.get_recovery_stats()["total_attempts"] == 1)
        await manager.wait_idle()
        last = manager.get_recovery_stats()["services"]["cfg"]["last_attempt"]  # type: ignore[index]
        assert last["outcome"] == "succeeded"
        assert last["detail"] == f"sent SIGHUP to pid {proc.pid}"
        assert monitor.get_status("cfg") == "healthy"
    finally:
        proc.kill()
        await proc.wait()


# -- closing the manager while it waits or acts ------------------------------------------


def _children() -> set[int]:
    """This process's children, zombies included (an unreaped child is left behind too)."""
    me = os.getpid()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.add(int(entry))
    return found


def _sick_rule(**kwargs: object) -> RecoveryRule:
    settings: dict[str, object] = {
        "failure_threshold": 1,
        "max_attempts": 3,
        "backoff_base": 60.0,
        "backoff_max": 60.0,
        "cooldown": 0,
        "grace_period": 0.05,
        "timeout": 30.0,
    }
    settings.update(kwargs)
    return RecoveryRule("svc", "restart_service", **settings)  # type: ignore[arg-type]


async def test_closing_mid_backoff_returns_promptly_with_nothing_left_running() -> None:
    """aclose() during a 60 s backoff returns at once: no task of the manager's survives."""
    tasks_before = asyncio.all_tasks()
    children_before = _children()
    calls: list[str] = []

    async def restart(service: str) -> bool:
        calls.append(service)
        return False

    manager = RecoveryManager(verify_interval=0.05)
    manager.add_rule(_sick_rule(recovery_func=restart))
    await manager.on_status_change("svc", "healthy", "unhealthy", None)

    def waiting() -> bool:
        detail = manager.get_recovery_stats()["services"]["svc"]  # type: ignore[index]
        return bool(calls) and detail["state"] == "waiting"

    await _eventually(waiting)
    started = time.monotonic()
    await manager.aclose()
    assert time.monotonic() - started < 1.0
    assert asyncio.all_tasks() - tasks_before == set()
    assert _children() - children_before == set()
    assert calls == ["svc"]
    await manager.on_status_change("svc", "unhealthy", "unhealthy", None)
    assert asyncio.all_tasks() - tasks_before == set()  # closed: nothing starts again


async def test_closing_mid_command_kills_it_and_returns_promptly(tmp_path: Path) -> None:
    """aclose() while the restart command runs kills it and reaps it: no orphan, no zombie,
    no task left, and no 30 s wait for the command's timeout."""
    tasks_before = asyncio.all_tasks()
    children_before = _children()
    pid_file = tmp_path / "cmd.pid"
    script = (
        "import os, sys, time\n"
        "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\n"
        "os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
        "time.sleep(60)\n"
    )
    manager = RecoveryManager(verify_interval=0.05)
    manager.add_rule(_sick_rule(command=[PY, "-c", script, str(pid_file)]))
    await manager.on_status_change("svc", "healthy", "unhealthy", None)
    await _eventually(pid_file.exists)
    pid = int(pid_file.read_text())
    assert _alive(pid)
    started = time.monotonic()
    await manager.aclose()
    assert time.monotonic() - started < 2.0
    assert not _alive(pid)
    assert _children() - children_before == set()
    assert asyncio.all_tasks() - tasks_before == set()
    stats = manager.get_recovery_stats()  # the attempt counted, and judged: not left pending
    assert stats["total_attempts"] == 1
    assert stats["services"]["svc"]["pending"] == 0  # type: ignore[index]
    last = stats["services"]["svc"]["last_attempt"]  # type: ignore[index]
    assert (last["outcome"], last["reason"]) == ("failed", "recovery closed while the action ran")


async def test_a_manager_rebuilt_mid_grace_does_not_restart_again(tmp_path: Path) -> None:
    """Without Redis: a reload that changes a service's rules replaces its manager (the
    service's RecoveryRouter closes the old one and attaches a new one to the same monitor)
    while the restart the old one ran is in its grace period (the service is starting).
    The new manager took the status (still unhealthy) and restarted the service again: two
    restarts for one outage. It now leaves it alone while that action settles."""
    log, up = tmp_path / "restarts", tmp_path / "up"
    # The service comes back when the test says so (after the reload), not after a fixed
    # second that a stalled host could spend before the reload.
    command = ["sh", "-c", f"echo restart >> {log}"]

    def rule(max_attempts: int) -> RecoveryRule:
        return RecoveryRule(
            "svc",
            "restart_service",
            command=command,
            timeout=5,
            grace_period=10,
            max_attempts=max_attempts,
            backoff_base=0.5,
            cooldown=1,
            stable_period=10,
        )

    def restarts() -> int:
        return log.read_text().count("restart") if log.exists() else 0

    def state() -> object:
        return router.get_recovery_stats()["services"]["svc"]["state"]  # type: ignore[index]

    router = RecoveryRouter(coordinator=None, verify_interval=0.1)  # no Redis
    await router.set_rules("svc", [rule(3)])
    monitor = HealthMonitor(
        check_interval=0.2,
        failure_threshold=2,
        jitter=lambda interval: 0.0,
        recovery_manager=router,
    )
    monitor.add_checker(CustomHealthChecker("svc", up.exists, timeout=0.5))
    await monitor.start_monitoring()
    try:
        await _eventually(lambda: state() == "verifying")  # restarted; the service starts
        assert restarts() == 1
        assert await router.set_rules("svc", [rule(4)])  # the reload
        await asyncio.sleep(0.6)  # the new manager sees the service still down, 3 checks
        up.touch()  # the restart done, the service answers
        await _eventually(lambda: monitor.get_status("svc") == "healthy")
        await _eventually(lambda: state() == "idle")
        assert restarts() == 1
        stats = router.get_recovery_stats()["services"]["svc"]  # type: ignore[index]
        assert (stats["attempts"], stats["deferred_to_peer"]) == (0, 1)
    finally:
        await monitor.stop_monitoring()
        await router.aclose()
