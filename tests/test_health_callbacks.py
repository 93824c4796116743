"""Alert handlers, recovery callbacks and the recovery hook never hold up a health check.

Issue 11, finding 6: one ``time.sleep(3)`` alert handler froze every check for 6 s.
Here the blocking callbacks wait on an event (bounded) while a real HTTP service on
loopback is checked every 20 ms: the checks must go on while they block.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from tests.test_health_support import LoopbackHTTPServer
from xnai_core.health.alerts import Alert
from xnai_core.health.checkers import HealthCheckResult, HealthStatus, HTTPHealthChecker
from xnai_core.health.monitor import HealthMonitor


class Blocking:
    """A sync callable that blocks its thread (as ``time.sleep`` or ``requests.post`` would)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()

    def __call__(self, *args: object) -> None:
        self.entered.set()
        self.release.wait(3.0)
        self.returned.set()


class SyncHook:
    """A recovery hook whose on_status_change is sync and blocks."""

    def __init__(self) -> None:
        self.blocking = Blocking()

    def on_status_change(
        self, name: str, old: HealthStatus, new: HealthStatus, result: HealthCheckResult, /
    ) -> None:
        self.blocking()


async def wait_until(condition: Callable[[], bool], bound: float = 10.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def checks_go_on_while(blocking: Blocking, server: LoopbackHTTPServer) -> None:
    """Ten more requests reach the server while ``blocking`` is still blocked."""
    await wait_until(blocking.entered.is_set)
    seen = server.requests
    await wait_until(lambda: server.requests >= seen + 10 or blocking.returned.is_set())
    still_blocked = not blocking.returned.is_set()
    blocking.release.set()
    assert still_blocked, "checks stopped while a sync callback blocked"


@pytest.mark.parametrize("where", ["alert handler", "recovery callback", "recovery hook"])
async def test_blocking_sync_callback_never_delays_checks(where: str) -> None:
    """A sync handler, callback or hook that blocks runs off the loop; checks keep going."""
    hook = SyncHook()
    blocking = hook.blocking if where == "recovery hook" else Blocking()
    async with LoopbackHTTPServer() as server:
        monitor = HealthMonitor(
            check_interval=0.02,
            failure_threshold=1,
            success_threshold=1,
            jitter=lambda interval: 0.0,
            recovery_manager=hook if where == "recovery hook" else None,
        )
        monitor.add_checker(HTTPHealthChecker("api", server.url, timeout=0.02 * 0.9))
        if where == "alert handler":
            monitor.add_alert_handler(blocking)
        elif where == "recovery callback":
            monitor.add_recovery_callback("api", blocking)
        if where == "recovery callback":
            server.status = 500
            await monitor.trigger_manual_check("api")
            server.status = 200
        else:
            server.status = 500
        await monitor.start_monitoring()
        try:
            await checks_go_on_while(blocking, server)
        finally:
            blocking.release.set()
            await monitor.stop_monitoring()


async def test_sync_alert_handler_past_its_timeout_does_not_hold_back_the_others() -> None:
    """A sync handler still blocked at alert_handler_timeout: the next handler already has it."""
    blocking = Blocking()
    received: list[Alert] = []
    async with LoopbackHTTPServer() as server:
        server.status = 500
        monitor = HealthMonitor(check_interval=1.0, failure_threshold=1, alert_handler_timeout=5.0)
        monitor.add_checker(HTTPHealthChecker("api", server.url, timeout=1.0))
        monitor.add_alert_handler(blocking)
        monitor.add_alert_handler(received.append)
        await monitor.trigger_manual_check("api")
        try:
            await wait_until(lambda: bool(received))
            assert not blocking.returned.is_set()
            assert [alert.key for alert in received] == ["api:status"]
        finally:
            blocking.release.set()
            await monitor.drain_notifications()
            await monitor.stop_monitoring()


async def test_emit_alert_runs_sync_handlers_off_the_loop() -> None:
    """emit_alert awaits sync handlers on worker threads: the loop keeps running meanwhile."""
    blocking = Blocking()
    monitor = HealthMonitor()
    monitor.add_alert_handler(blocking)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    emitting = asyncio.create_task(
        monitor.emit_alert(Alert(service="x", kind="manual", severity="critical", message="m"))
    )
    try:
        await wait_until(blocking.entered.is_set)
        seen = ticks
        await wait_until(lambda: ticks >= seen + 10 or blocking.returned.is_set())
        assert not blocking.returned.is_set()
    finally:
        blocking.release.set()
        await emitting
        ticking.cancel()
        await monitor.stop_monitoring()


def test_a_stuck_handler_holds_back_only_itself() -> None:
    """Raise and resolve reach a good handler while another handler is stuck on the raise."""
    from tests.helpers import run_virtual
    from tests.test_health_monitor import Scripted

    received: list[tuple[str, bool]] = []

    async def stuck(alert: Alert) -> None:
        await asyncio.Event().wait()

    async def record(alert: Alert) -> None:
        received.append((alert.key, alert.resolved))

    async def scenario() -> None:
        monitor = HealthMonitor(
            failure_threshold=1, success_threshold=1, alert_handler_timeout=30.0
        )
        monitor.add_checker(Scripted(script=[HealthStatus.UNHEALTHY, HealthStatus.HEALTHY]))
        monitor.add_alert_handler(stuck)
        monitor.add_alert_handler(record)
        await monitor.trigger_manual_check("svc")
        await monitor.trigger_manual_check("svc")
        await asyncio.sleep(1.0)  # virtual time: well before the stuck handler's 30 s bound
        assert received == [("svc:status", False), ("svc:status", True)]
        await monitor.stop_monitoring()

    run_virtual(scenario())


async def test_a_slow_sync_alert_handler_gets_every_page_when_services_fail_at_once() -> None:
    """Three services fail at once, one sync handler still busy with the first page: no page lost.

    The per-service alert lanes call the handler concurrently; its calls queue (one at
    a time, never two at once) instead of being refused while the first is running.
    """
    blocking = Blocking()
    received: list[str] = []

    def pager(alert: Alert) -> None:
        if not received:
            blocking()
        received.append(alert.service)

    async with LoopbackHTTPServer() as server:
        server.status = 500
        monitor = HealthMonitor(
            check_interval=60.0, failure_threshold=1, alert_handler_timeout=10.0
        )
        for n in range(3):
            monitor.add_checker(HTTPHealthChecker(f"svc{n}", server.url, timeout=1.0))
        monitor.add_alert_handler(pager)
        await asyncio.gather(*(monitor.trigger_manual_check(f"svc{n}") for n in range(3)))
        try:
            await wait_until(blocking.entered.is_set)
            await asyncio.sleep(
                0.1
            )  # the other pages arrive while the first is still with the pager
            blocking.release.set()
            await wait_until(lambda: len(received) == 3)
            assert sorted(received) == ["svc0", "svc1", "svc2"]
        finally:
            blocking.release.set()
            await monitor.drain_notifications()
            await monitor.stop_monitoring()
