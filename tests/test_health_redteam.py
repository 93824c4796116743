"""Health monitor promises a red team broke, each with the behaviour that must hold.

- A checker that ignores cancellation (it outlives twice its timeout) is a failed
  check: its schedule goes on in a new task, the next runs fail at once while it is
  stuck (one stuck call, never a pile), and neither a manual check, nor
  ``stop_monitoring()``, nor ``remove_checker()`` + ``drain_notifications()`` waits for it.
- ``stop_monitoring()`` called from inside a check: that check's result is not
  recorded and no alert reaches a handler after the stop.
- Kept results read back equal, whatever the keys of their details.
- The error a checker of the user's own returns is masked like every other error.

Scheduling tests run on a virtual-time event loop; the bounds (``asyncio.timeout``)
are what a hang would hit, in virtual seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math

import pytest

from tests.helpers import VirtualTimeLoop, run_virtual
from tests.secret_corpus import SHAPES, leaks
from xnai_core.health.alerts import Alert
from xnai_core.health.checkers import HealthCheckResult, HealthStatus
from xnai_core.health.monitor import HealthMonitor
from xnai_core.health.redact import MAX_ERROR_LENGTH

HEALTHY = HealthStatus.HEALTHY
UNHEALTHY = HealthStatus.UNHEALTHY


class Stubborn:
    """A checker whose calls from ``hang_from`` on swallow cancellation until released."""

    def __init__(self, name: str = "stub", *, hang_from: int = 2, timeout: float = 1.0) -> None:
        self.name = name
        self.timeout = timeout
        self.hang_from = hang_from
        self.calls = 0
        self.running = 0
        self.max_running = 0
        self.release = asyncio.Event()

    async def check(self) -> HealthCheckResult:
        self.calls += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.calls >= self.hang_from:
                while not self.release.is_set():
                    with contextlib.suppress(asyncio.CancelledError):  # its bug
                        await self.release.wait()
        finally:
            self.running -= 1
        return HealthCheckResult(self.name, HEALTHY)


def no_jitter(interval: float) -> float:
    return 0.0


def test_a_checker_that_ignores_cancellation_fails_and_its_schedule_goes_on() -> None:
    async def scenario() -> None:
        checker = Stubborn()
        monitor = HealthMonitor(check_interval=1.0, jitter=no_jitter, failure_threshold=2)
        monitor.add_checker(checker)
        await monitor.start_monitoring()
        try:
            await asyncio.sleep(30.0)
            health = monitor.get_service_health("stub")
            # Was: one result (the first), "healthy" for ever, the schedule stuck.
            assert health.total_checks >= 10, health
            assert monitor.get_status("stub") is UNHEALTHY
            errors = [r.error or "" for r in monitor.get_history("stub")[1:]]
            assert "does not stop at its 1s timeout" in errors[0]
            assert all("still running" in error for error in errors), errors
            # One stuck call, never a pile of them beside it.
            assert checker.max_running == 1
            assert checker.calls == 2
            # It comes back once the stuck call returns; its late result is not kept.
            checker.release.set()
            checker.hang_from = 10**9
            await asyncio.sleep(10.0)
            assert monitor.get_status("stub") is HEALTHY
            assert checker.calls >= 4
        finally:
            async with asyncio.timeout(60.0):
                await monitor.stop_monitoring()

    run_virtual(scenario())


def test_a_manual_check_and_stop_do_not_wait_for_a_stuck_checker() -> None:
    async def scenario() -> None:
        checker = Stubborn(hang_from=1)
        monitor = HealthMonitor(check_interval=100.0, failure_threshold=1)
        monitor.add_checker(checker)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(60.0):  # was: no answer, ever
            result = await monitor.trigger_manual_check("stub")
        assert result.status is UNHEALTHY
        assert loop.time() - started <= 2.0 + 1e-6  # virtual: its deadline, 2 x 1 s
        # The stuck call was recorded as failed; the next fails at once, with no new call.
        assert monitor.get_status("stub") is UNHEALTHY
        again = await monitor.trigger_manual_check("stub")
        assert "still running" in (again.error or "")
        assert checker.calls == 1
        await monitor.start_monitoring()
        await asyncio.sleep(1.0)
        async with asyncio.timeout(60.0):  # was: stop_monitoring() never returned
            await monitor.stop_monitoring()
        checker.release.set()
        await asyncio.sleep(0)

    run_virtual(scenario())


def test_remove_checker_does_not_hold_drain_notifications_on_a_stuck_check() -> None:
    async def scenario() -> None:
        checker = Stubborn(hang_from=1, timeout=1.0)
        monitor = HealthMonitor(check_interval=5.0, jitter=no_jitter)
        monitor.add_checker(checker)
        await monitor.start_monitoring()
        await asyncio.sleep(0.5)  # the first run is in flight, not yet past its deadline
        assert checker.running == 1
        monitor.remove_checker("stub")
        async with asyncio.timeout(60.0):  # was: waited for the stuck call for ever
            await monitor.drain_notifications()
        async with asyncio.timeout(60.0):
            await monitor.stop_monitoring()
        assert checker.calls == 1
        checker.release.set()
        await asyncio.sleep(0)

    run_virtual(scenario())


class StopsTheMonitor:
    """Healthy, then on its second call stops the monitor and reports a failure."""

    name = "svc"
    timeout = 1.0

    def __init__(self, monitor: HealthMonitor) -> None:
        self.monitor = monitor
        self.calls = 0

    async def check(self) -> HealthCheckResult:
        self.calls += 1
        if self.calls == 1:
            return HealthCheckResult(self.name, HEALTHY)
        await self.monitor.stop_monitoring()
        return HealthCheckResult(self.name, UNHEALTHY, error="down")


def test_stop_from_inside_a_check_records_and_delivers_nothing_after_it() -> None:
    async def scenario() -> None:
        monitor = HealthMonitor(
            check_interval=1.0,
            jitter=no_jitter,
            failure_threshold=1,
            alert_thresholds={"consecutive_failures": 1},
        )
        delivered: list[tuple[Alert, bool]] = []

        async def handler(alert: Alert) -> None:
            delivered.append((alert, monitor.monitoring_active))

        monitor.add_alert_handler(handler)
        checker = StopsTheMonitor(monitor)
        monitor.add_checker(checker)
        await monitor.start_monitoring()
        await asyncio.sleep(5.0)
        await monitor.drain_notifications()
        assert checker.calls == 2
        assert not monitor.monitoring_active
        # Was: the result recorded after the stop, and two alerts delivered to a
        # handler of a stopped monitor (through lanes made after stop_monitoring closed them).
        assert [r.status for r in monitor.get_history("svc")] == [HEALTHY]
        assert monitor.get_status("svc") is HEALTHY
        assert delivered == []
        assert monitor.get_active_alerts() == []

    run_virtual(scenario())


class Returns:
    """A checker of the user's own that returns a prepared result."""

    timeout = 1.0

    def __init__(self, name: str, result: HealthCheckResult) -> None:
        self.name = name
        self.result = result

    async def check(self) -> HealthCheckResult:
        return self.result


async def test_kept_results_read_back_equal_whatever_their_detail_keys() -> None:
    details: dict[object, object] = {
        1: "one",
        "1": "string one",
        None: "none",
        (2, 3): "pair",
        "nested": {"a": [1, {"b": 2}]},
        "huge": "x" * 100_000,
    }
    monitor = HealthMonitor(check_interval=60.0)
    prepared = HealthCheckResult("elsewhere", HEALTHY, 0.25, 5, details)  # type: ignore[arg-type]
    monitor.add_checker(Returns("svc", prepared))
    result = await monitor.trigger_manual_check("svc")
    assert result.service == "svc"
    (kept,) = monitor.get_history("svc")
    # Was: {"1": "one"} for the first two keys, "None" and "(2, 3)" as strings.
    assert kept == result
    # Each string is masked and cut to MAX_ERROR_LENGTH (a megabyte body is not kept whole).
    assert kept.details == {**details, "huge": "x" * (MAX_ERROR_LENGTH - 3) + "..."}
    assert type(kept.timestamp) is int


async def test_the_error_a_users_own_checker_returns_is_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="xnai_core")
    monitor = HealthMonitor(
        check_interval=60.0, failure_threshold=1, alert_thresholds={"consecutive_failures": 1}
    )
    alerts: list[Alert] = []
    monitor.add_alert_handler(alerts.append)
    names = []
    for index, shape in enumerate(SHAPES):
        name = f"own{index}"
        failed = HealthCheckResult(name, UNHEALTHY, error=f"probe failed: {shape.text}")
        monitor.add_checker(Returns(name, failed))
        names.append(name)
    shown: list[str] = []
    try:
        for name in names:
            shown.append(repr(await monitor.trigger_manual_check(name)))
        await monitor.drain_notifications()
        shown += [
            json.dumps(monitor.get_health_report(), default=str),
            json.dumps(monitor.get_health_json(), default=str),
            *(repr(monitor.get_history(name)) for name in names),
            *(repr(alert) for alert in alerts),
            *(repr(alert) for alert in monitor.get_active_alerts()),
        ]
    finally:
        await monitor.stop_monitoring()
    shown += [record.getMessage() for record in caplog.records]
    assert len(alerts) >= len(names)
    # Was: every core of the corpus, in results, report, health+json, pages and logs.
    assert leaks(shown) == []


class Sleeper:
    """A well-behaved checker: its call ends as soon as it is cancelled."""

    name = "sleeper"
    timeout = 1.0

    async def check(self) -> HealthCheckResult:
        await asyncio.sleep(100.0)
        return HealthCheckResult(self.name, HEALTHY)


def test_a_loop_lagging_past_the_deadline_is_not_taken_for_a_stuck_checker() -> None:
    """The timeout and the deadline fire in one pass of a lagging loop: still a timeout."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        monitor = HealthMonitor(check_interval=100.0)
        monitor.add_checker(Sleeper())

        def lag() -> None:
            loop.virtual_now += 10.0  # as if the loop had been blocked for 10 s

        loop.call_later(0.5, lag)
        result = await monitor.trigger_manual_check("sleeper")
        assert result.error == "timed out after 1s"
        assert [r.error for r in monitor.get_history("sleeper")] == ["timed out after 1s"]
        again = await monitor.trigger_manual_check("sleeper")  # not "still running"
        assert again.error == "timed out after 1s"

    run_virtual(scenario())


def test_remove_checker_from_a_sync_alert_handler_resolves_and_closes() -> None:
    """A sync handler runs on a worker thread; removing its service from there is safe."""

    class Failing:
        name = "svc"
        timeout = 1.0
        closed = 0

        async def check(self) -> HealthCheckResult:
            return HealthCheckResult(self.name, UNHEALTHY, error="down")

        async def aclose(self) -> None:
            self.closed += 1

    async def scenario() -> None:
        monitor = HealthMonitor(check_interval=0.05, jitter=no_jitter, failure_threshold=1)
        seen: list[tuple[str, bool]] = []

        def handler(alert: Alert) -> None:
            seen.append((alert.key, alert.resolved))
            if not alert.resolved:
                monitor.remove_checker(alert.service)

        monitor.add_alert_handler(handler)
        checker = Failing()
        monitor.add_checker(checker)
        await monitor.start_monitoring()
        try:
            for _ in range(1000):  # 10 s at most
                if len(seen) >= 2 and checker.closed:
                    break
                await asyncio.sleep(0.01)
            await monitor.drain_notifications()
            # Was: removed from the thread, with no resolved notice, the checker
            # never closed (not even by stop_monitoring), and its lanes left open.
            assert seen == [("svc:status", False), ("svc:status", True)]
            assert monitor.services == ()
            assert monitor.get_active_alerts() == []
        finally:
            await monitor.stop_monitoring()
        assert checker.closed == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("timestamp", [math.nan, math.inf, 1e300, "now"])
async def test_a_result_with_an_unusable_timestamp_never_breaks_the_health_views(
    timestamp: object,
) -> None:
    """Was: get_health_json() raised (for every service) and the report was not JSON."""
    monitor = HealthMonitor(check_interval=60.0)

    class Odd:
        name = "odd"
        timeout = 1.0

        async def check(self) -> HealthCheckResult:
            return HealthCheckResult(self.name, HEALTHY, timestamp=timestamp)  # type: ignore[arg-type]

    monitor.add_checker(Odd())
    monitor.add_checker(Returns("fine", HealthCheckResult("fine", HEALTHY)))
    result = await monitor.trigger_manual_check("odd")
    await monitor.trigger_manual_check("fine")
    assert result.status is UNHEALTHY
    assert "'timestamp' must be" in (result.error or "")
    document = monitor.get_health_json()
    json.dumps(document, allow_nan=False)
    json.dumps(monitor.get_health_report(), allow_nan=False)
    checks = document["checks"]
    assert isinstance(checks, dict)
    assert set(checks) == {"odd:responseTime", "fine:responseTime"}
