"""The check cadence holds while handlers, callbacks, hooks and sync checks misbehave.

A healthy HTTP service on loopback is checked every 50 ms. Beside it: a flapping
service (so alerts, status changes and recovery callbacks keep coming), alert
handlers that hang, sleep or raise (sync and async), recovery callbacks and a
recovery hook that hang or raise, and sync checks that hang, sleep past their
timeout or raise. The healthy service's runs must keep their schedule. Blocking
calls are bounded (3 s), and the bound on lateness is generous for a shared machine:
the old code, which ran sync callbacks on the loop, was late by whole seconds.
"""

from __future__ import annotations

import asyncio
import threading
import time

from tests.test_health_support import LoopbackHTTPServer
from xnai_core.health.alerts import Alert
from xnai_core.health.checkers import (
    CustomHealthChecker,
    HealthCheckResult,
    HealthStatus,
    HTTPHealthChecker,
)
from xnai_core.health.monitor import HealthMonitor

INTERVAL = 0.05
RELEASE = threading.Event()


def hang(*args: object) -> None:
    RELEASE.wait(3.0)


def sleep(*args: object) -> None:
    time.sleep(0.2)


def explode(*args: object) -> None:
    raise RuntimeError("misbehaving callback")


async def hang_async(*args: object) -> None:
    await asyncio.sleep(3600)


async def explode_async(*args: object) -> None:
    raise RuntimeError("misbehaving async callback")


class Timed:
    """Wraps a checker and records how late each run starts behind its schedule."""

    def __init__(self, inner: HTTPHealthChecker) -> None:
        self.inner = inner
        self.name = inner.name
        self.timeout = inner.timeout
        self.last_end: float | None = None
        self.lags: list[float] = []
        self.statuses: list[HealthStatus] = []

    async def check(self) -> HealthCheckResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self.last_end is not None:
            self.lags.append(start - (self.last_end + INTERVAL))
        try:
            result = await self.inner.check()
        finally:
            self.last_end = loop.time()
        self.statuses.append(result.status)
        return result

    async def aclose(self) -> None:
        await self.inner.aclose()


class Hook:
    """A recovery hook that blocks on every other call and raises on the rest."""

    def __init__(self) -> None:
        self.calls = 0

    def on_status_change(
        self, name: str, old: HealthStatus, new: HealthStatus, result: HealthCheckResult, /
    ) -> None:
        self.calls += 1
        if self.calls % 2:
            hang()
        else:
            explode()


async def flap(server: LoopbackHTTPServer, stop: asyncio.Event) -> None:
    """Switch the flapping service between up and down every 150 ms."""
    while not stop.is_set():
        server.status = 500 if server.status == 200 else 200
        await asyncio.sleep(0.15)


async def test_cadence_holds_while_everything_around_it_misbehaves() -> None:
    """Hung, slow and raising handlers, callbacks, hooks and sync checks never delay a check."""
    RELEASE.clear()
    hook = Hook()
    delivered: list[Alert] = []

    async def record(alert: Alert) -> None:
        delivered.append(alert)

    async with LoopbackHTTPServer() as healthy, LoopbackHTTPServer() as flapping:
        monitor = HealthMonitor(
            check_interval=INTERVAL,
            alert_thresholds={"success_rate": 95, "consecutive_failures": 2},
            alert_window=4,
            failure_threshold=1,
            success_threshold=1,
            alert_handler_timeout=0.5,
            callback_timeout=0.5,
            recovery_manager=hook,
            jitter=lambda interval: 0.0,
        )
        timed = Timed(HTTPHealthChecker("api", healthy.url, timeout=1.0))
        monitor.add_checker(timed)
        monitor.add_checker(HTTPHealthChecker("flappy", flapping.url, timeout=1.0))
        monitor.add_checker(CustomHealthChecker("hung_check", hang, timeout=0.04))
        monitor.add_checker(CustomHealthChecker("slow_check", sleep, timeout=0.04))
        monitor.add_checker(CustomHealthChecker("raising_check", explode, timeout=0.04))
        for handler in (hang, sleep, explode, hang_async, explode_async, record):
            monitor.add_alert_handler(handler)
        for callback in (hang, sleep, explode, hang_async, explode_async):
            monitor.add_recovery_callback("flappy", callback)
        stop = asyncio.Event()
        flapper = asyncio.create_task(flap(flapping, stop))
        await monitor.start_monitoring()
        try:
            await asyncio.sleep(2.0)  # the window observed, not a wait for a condition
        finally:
            stop.set()
            await flapper
            RELEASE.set()
            await monitor.stop_monitoring()
    # The healthy service kept its schedule: about 2 s / 50 ms runs, none late by much.
    assert len(timed.lags) >= 10, timed.lags
    assert max(timed.lags) < 1.0, max(timed.lags)
    assert set(timed.statuses) == {HealthStatus.HEALTHY}
    # The misbehaviour really happened: alerts flowed, the hook ran (and hung: its
    # later calls were skipped while its thread was stuck).
    assert any(alert.service == "flappy" for alert in delivered)
    assert hook.calls >= 1
