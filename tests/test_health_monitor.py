"""HealthMonitor: scheduling, hysteresis, callbacks, alerts, the recovery seam, lifecycle.

Scheduling tests run on a virtual-time event loop (sleeps take no real time, timers
fire in exact order), with scripted checkers that record when they run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from tests.helpers import run_virtual
from xnai_core.health.alerts import Alert
from xnai_core.health.checkers import (
    CustomHealthChecker,
    HealthChecker,
    HealthCheckResult,
    HealthStatus,
)
from xnai_core.health.monitor import HealthMonitor

T = TypeVar("T")
HEALTHY = HealthStatus.HEALTHY
DEGRADED = HealthStatus.DEGRADED
UNHEALTHY = HealthStatus.UNHEALTHY
UNKNOWN = HealthStatus.UNKNOWN


class Scripted:
    """A checker that answers from a script and records when and how often it runs."""

    def __init__(
        self,
        name: str = "svc",
        script: list[HealthStatus] | None = None,
        *,
        default: HealthStatus = HEALTHY,
        duration: float = 0.0,
        timeout: float = 5.0,
    ) -> None:
        self.name = name
        self.script = list(script or [])
        self.default = default
        self.duration = duration
        self.timeout = timeout
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.running = 0
        self.max_running = 0
        self.closed = 0

    async def check(self) -> HealthCheckResult:
        loop = asyncio.get_running_loop()
        self.starts.append(loop.time())
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(self.duration)
        finally:
            self.running -= 1
            self.ends.append(loop.time())
        status = self.script.pop(0) if self.script else self.default
        error = "scripted failure" if status is UNHEALTHY else None
        return HealthCheckResult(self.name, status, response_time=self.duration, error=error)

    async def aclose(self) -> None:
        self.closed += 1


def virtual(coro: Coroutine[Any, Any, T]) -> T:
    return run_virtual(coro)


def no_jitter(interval: float) -> float:
    return 0.0


# -- scheduling ------------------------------------------------------------------------


def test_first_run_jittered_then_interval_after_each_end() -> None:
    """First run after the jitter; each next run check_interval after the previous END."""
    checker = Scripted(duration=0.3)

    async def scenario() -> float:
        monitor = HealthMonitor(check_interval=1.0, jitter=lambda interval: 0.25 * interval)
        monitor.add_checker(checker)
        began = asyncio.get_running_loop().time()
        await monitor.start_monitoring()
        await asyncio.sleep(3.0)
        await monitor.stop_monitoring()
        return began

    began = virtual(scenario())
    assert pytest.approx([s - began for s in checker.starts]) == [0.25, 1.55, 2.85]


def test_default_jitter_spreads_first_runs_within_the_interval() -> None:
    """Without a jitter function, first runs land anywhere in [0, interval)."""
    checkers = [Scripted(f"s{i}") for i in range(50)]

    async def scenario() -> float:
        monitor = HealthMonitor(check_interval=10.0)
        for checker in checkers:
            monitor.add_checker(checker)
        began = asyncio.get_running_loop().time()
        await monitor.start_monitoring()
        await asyncio.sleep(10.0)
        await monitor.stop_monitoring()
        return began

    began = virtual(scenario())
    firsts = [c.starts[0] - began for c in checkers]
    assert all(0.0 <= first <= 10.0 for first in firsts)
    assert len({round(first, 6) for first in firsts}) > 40  # spread, not a herd


def test_timeout_is_capped_at_the_interval() -> None:
    """A checker's own 10 s timeout is cut to the 1 s interval; a timeout is unhealthy."""
    checker = Scripted(duration=100.0, timeout=10.0)

    async def scenario() -> HealthCheckResult:
        monitor = HealthMonitor(check_interval=1.0, jitter=no_jitter)
        monitor.add_checker(checker)
        result = await monitor.trigger_manual_check("svc")
        await monitor.stop_monitoring()
        return result

    result = virtual(scenario())
    assert result.status == UNHEALTHY
    assert result.error == "timed out after 1s"
    assert pytest.approx([checker.ends[0] - checker.starts[0]]) == [1.0]


def test_check_timeout_must_not_exceed_interval() -> None:
    """check_timeout > check_interval is rejected, naming both."""
    with pytest.raises(ValueError, match=r"'check_timeout' must be <= check_interval \(5\): 6"):
        HealthMonitor(check_interval=5.0, check_timeout=6.0)


def test_runs_never_overlap_and_manual_checks_join_the_running_one() -> None:
    """Manual checks during a run wait for it; one check never runs twice at once."""
    checker = Scripted(duration=0.5)

    async def scenario() -> list[HealthCheckResult]:
        monitor = HealthMonitor(check_interval=0.1, jitter=no_jitter)
        monitor.add_checker(checker)
        await monitor.start_monitoring()
        await asyncio.sleep(0.2)  # the scheduled run is in flight
        joined = await asyncio.gather(*(monitor.trigger_manual_check("svc") for _ in range(3)))
        await asyncio.sleep(2.0)
        await monitor.stop_monitoring()
        return joined

    joined = virtual(scenario())
    assert checker.max_running == 1
    assert joined[0] is joined[1] is joined[2]
    gaps = [start - end for start, end in zip(checker.starts[1:], checker.ends, strict=False)]
    assert all(gap >= 0.1 - 1e-9 for gap in gaps)


def test_scheduled_run_due_during_a_manual_run_joins_it() -> None:
    """A scheduled run coming due while a manual run is in flight waits for it."""
    checker = Scripted(duration=0.4)

    async def scenario() -> float:
        monitor = HealthMonitor(check_interval=0.5, jitter=lambda interval: 0.2)
        monitor.add_checker(checker)
        began = asyncio.get_running_loop().time()
        await monitor.start_monitoring()
        await monitor.trigger_manual_check("svc")  # runs 0 .. 0.4; the schedule wakes at 0.2
        await asyncio.sleep(1.0)
        await monitor.stop_monitoring()
        return began

    began = virtual(scenario())
    assert checker.max_running == 1
    # The 0.2 run joined the manual one; the next comes 0.5 after that run's end.
    assert pytest.approx([s - began for s in checker.starts]) == [0.0, 0.9]


def test_per_checker_interval_override() -> None:
    """add_checker(interval=...) schedules that checker on its own interval."""
    fast, slow = Scripted("fast"), Scripted("slow")

    async def scenario() -> None:
        monitor = HealthMonitor(check_interval=10.0, jitter=no_jitter)
        monitor.add_checker(fast, interval=1.0)
        monitor.add_checker(slow)
        await monitor.start_monitoring()
        await asyncio.sleep(9.5)
        await monitor.stop_monitoring()

    virtual(scenario())
    assert (len(fast.starts), len(slow.starts)) == (10, 1)


# -- status ----------------------------------------------------------------------------


async def test_unknown_until_the_first_result() -> None:
    """A new service is unknown, with no check time, until a result arrives."""
    monitor = HealthMonitor()
    monitor.add_checker(Scripted())
    assert monitor.get_status("svc") == UNKNOWN
    entry = monitor.get_health_report()["services"]["svc"]
    assert (entry["last_check"], entry["response_time"], entry["total_checks"]) == (None, None, 0)


async def test_hysteresis_through_the_monitor() -> None:
    """Failures degrade then make unhealthy; it takes success_threshold successes back."""
    monitor = HealthMonitor(failure_threshold=3, success_threshold=2)
    monitor.add_checker(Scripted(script=[UNHEALTHY, UNHEALTHY, UNHEALTHY, HEALTHY, HEALTHY]))
    seen = []
    for _ in range(5):
        await monitor.trigger_manual_check("svc")
        seen.append(monitor.get_status("svc"))
    assert seen == [DEGRADED, DEGRADED, UNHEALTHY, UNHEALTHY, HEALTHY]
    health = monitor.get_service_health("svc")
    assert (
        health.consecutive_successes,
        health.consecutive_failures,
        health.total_checks,
        health.total_failures,
    ) == (2, 0, 5, 3)


async def test_report_reads_state_and_never_runs_a_check() -> None:
    """get_health_report and get_health_json do not call the checker."""
    checker = Scripted()
    monitor = HealthMonitor()
    monitor.add_checker(checker)
    monitor.get_health_report()
    monitor.get_health_json()
    await asyncio.sleep(0.05)  # anything it scheduled would have run by now
    assert checker.starts == []
    assert monitor.get_service_health("svc").total_checks == 0


async def test_report_has_exactly_the_seed_structure() -> None:
    """Top-level, per-service and summary keys are exactly the seed's."""
    monitor = HealthMonitor(clock=lambda: 1234567890.123)
    monitor.add_checker(Scripted("rag_api"))
    monitor.add_checker(Scripted("redis", default=UNHEALTHY))
    await monitor.trigger_manual_check("rag_api")
    report = monitor.get_health_report()
    assert list(report) == ["timestamp", "monitoring_active", "services", "summary"]
    assert report["timestamp"] == 1234567890.123
    assert list(report["services"]["rag_api"]) == [
        "status",
        "last_check",
        "response_time",
        "consecutive_failures",
        "consecutive_successes",
        "total_checks",
        "details",
    ]
    assert report["summary"] == {
        "total": 2,
        "healthy": 1,
        "degraded": 0,
        "unhealthy": 0,
        "unknown": 1,
    }


async def test_failing_checker_is_an_unhealthy_result() -> None:
    """A checker that raises or returns garbage gives unhealthy results, not crashes."""

    class Broken:
        name = "broken"

        async def check(self) -> HealthCheckResult:
            raise OSError("disk on fire")

    class Garbage:
        name = "garbage"

        async def check(self) -> HealthCheckResult:
            return "fine"  # type: ignore[return-value]

    monitor = HealthMonitor()
    monitor.add_checker(Broken())
    monitor.add_checker(Garbage())
    broken = await monitor.trigger_manual_check("broken")
    garbage = await monitor.trigger_manual_check("garbage")
    assert (broken.status, broken.error) == ("unhealthy", "OSError: disk on fire")
    assert garbage.error is not None
    assert garbage.error.startswith("TypeError: check() must return a HealthCheckResult")


async def test_result_is_attributed_to_the_registered_name() -> None:
    """A checker reporting under another service name is recorded under its own."""

    class Misnamed:
        name = "mine"

        async def check(self) -> HealthCheckResult:
            return HealthCheckResult("theirs", HEALTHY)

    monitor = HealthMonitor()
    monitor.add_checker(Misnamed())
    assert (await monitor.trigger_manual_check("mine")).service == "mine"


# -- recovery callbacks ----------------------------------------------------------------


async def test_recovery_callback_once_per_outage() -> None:
    """Called once per unhealthy -> healthy, never for a blip or a mere success."""
    script = [HEALTHY, UNHEALTHY, UNHEALTHY, HEALTHY, HEALTHY, HEALTHY, UNHEALTHY, HEALTHY, HEALTHY]
    script += [UNHEALTHY, UNHEALTHY, HEALTHY, HEALTHY]
    monitor = HealthMonitor(failure_threshold=2, success_threshold=2)
    monitor.add_checker(Scripted(script=script))
    calls: list[str] = []

    async def on_recovery(name: str) -> None:
        calls.append(name)

    monitor.add_recovery_callback("svc", on_recovery)
    monitor.add_recovery_callback("svc", calls.append)  # sync works too
    for _ in range(len(script)):
        await monitor.trigger_manual_check("svc")
        await monitor.drain_notifications()
    assert calls == ["svc"] * 4  # two outages, two callbacks each


async def test_failing_recovery_callback_is_logged_and_harmless(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A raising callback is logged; the next callback and the monitor carry on."""
    monitor = HealthMonitor(failure_threshold=1, success_threshold=1)
    monitor.add_checker(Scripted(script=[UNHEALTHY, HEALTHY, HEALTHY]))
    calls: list[str] = []

    def broken(name: str) -> None:
        raise RuntimeError("callback bug")

    monitor.add_recovery_callback("svc", broken)
    monitor.add_recovery_callback("svc", calls.append)
    with caplog.at_level(logging.ERROR, logger="xnai_core.health"):
        for _ in range(3):
            await monitor.trigger_manual_check("svc")
        await monitor.drain_notifications()
    assert calls == ["svc"]
    assert any("recovery callback failed" in r.message for r in caplog.records)
    assert monitor.get_status("svc") == HEALTHY


# -- alerts ----------------------------------------------------------------------------


async def test_threshold_alert_raised_once_and_resolved_once() -> None:
    """success_rate below threshold alerts once; the resolved notice comes when it clears."""
    script = [HEALTHY, HEALTHY, UNHEALTHY, UNHEALTHY] + [HEALTHY] * 4
    monitor = HealthMonitor(
        alert_thresholds={"success_rate": 95},
        alert_window=4,
        alert_clear_after=1,
        failure_threshold=5,
    )
    monitor.add_checker(Scripted(script=script))
    alerts: list[Alert] = []
    monitor.add_alert_handler(alerts.append)
    for _ in script:
        await monitor.trigger_manual_check("svc")
    await monitor.drain_notifications()
    assert [(a.key, a.resolved) for a in alerts] == [
        ("svc:success_rate", False),
        ("svc:success_rate", True),
    ]
    assert monitor.get_active_alerts() == []


async def run_success_rate_alerts(script: list[HealthStatus], **kwargs: Any) -> list[Alert]:
    monitor = HealthMonitor(alert_thresholds={"success_rate": 95}, failure_threshold=5, **kwargs)
    monitor.add_checker(Scripted(script=script))
    alerts: list[Alert] = []
    monitor.add_alert_handler(alerts.append)
    for _ in script:
        await monitor.trigger_manual_check("svc")
    await monitor.drain_notifications()
    return alerts


async def test_one_early_failure_does_not_page_on_success_rate() -> None:
    """Rate alerts wait for a full window: a blip at check 6 is judged like one at 41."""
    early = await run_success_rate_alerts([HEALTHY] * 5 + [UNHEALTHY] + [HEALTHY] * 40)
    late = await run_success_rate_alerts([HEALTHY] * 40 + [UNHEALTHY] + [HEALTHY] * 40)
    assert early == late == []


async def test_alert_min_samples_lets_rate_alerts_start_earlier() -> None:
    """alert_min_samples=5: the same early blip (1 in 6 = 83%) raises, then resolves."""
    alerts = await run_success_rate_alerts(
        [HEALTHY] * 5 + [UNHEALTHY] + [HEALTHY] * 40, alert_min_samples=5
    )
    assert [(a.key, a.resolved, a.details["window"]) for a in alerts] == [
        ("svc:success_rate", False, 6),
        ("svc:success_rate", True, 20),
    ]


async def test_status_alert_follows_unhealthy() -> None:
    """Going unhealthy raises a critical status alert, recovering resolves it."""
    monitor = HealthMonitor(failure_threshold=1, success_threshold=1)
    monitor.add_checker(Scripted(script=[UNHEALTHY, UNHEALTHY, HEALTHY]))
    alerts: list[Alert] = []

    async def handler(alert: Alert) -> None:
        alerts.append(alert)

    monitor.add_alert_handler(handler)
    await monitor.trigger_manual_check("svc")
    await monitor.drain_notifications()
    assert [a.key for a in monitor.get_active_alerts()] == ["svc:status"]
    for _ in range(2):
        await monitor.trigger_manual_check("svc")
    await monitor.drain_notifications()
    assert [(a.severity, a.resolved) for a in alerts] == [("critical", False), ("info", True)]


async def test_failing_alert_handler_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A raising handler is logged; later handlers still receive the alert."""
    monitor = HealthMonitor(failure_threshold=1)
    monitor.add_checker(Scripted(default=UNHEALTHY))
    received: list[Alert] = []

    def broken(alert: Alert) -> None:
        raise RuntimeError("webhook down")

    monitor.add_alert_handler(broken)
    monitor.add_alert_handler(received.append)
    with caplog.at_level(logging.ERROR, logger="xnai_core.health"):
        await monitor.trigger_manual_check("svc")
        await monitor.drain_notifications()
    assert [a.key for a in received] == ["svc:status"]
    assert any("alert handler failed" in r.message for r in caplog.records)


def test_stuck_async_alert_handler_is_bounded() -> None:
    """An async handler that never returns is cut off by alert_handler_timeout."""
    received: list[Alert] = []

    async def stuck(alert: Alert) -> None:
        await asyncio.Event().wait()

    async def record(alert: Alert) -> None:  # async: sync handlers run on real threads
        received.append(alert)

    async def scenario() -> None:
        monitor = HealthMonitor(failure_threshold=1, alert_handler_timeout=5.0)
        monitor.add_checker(Scripted(default=UNHEALTHY))
        monitor.add_alert_handler(stuck)
        monitor.add_alert_handler(record)
        await monitor.trigger_manual_check("svc")
        await monitor.drain_notifications()
        await monitor.stop_monitoring()

    virtual(scenario())
    assert [a.key for a in received] == ["svc:status"]


async def test_emit_alert_reaches_handlers_and_tracks_it() -> None:
    """emit_alert (used by the recovery manager) delivers now and tracks until resolved."""
    monitor = HealthMonitor()
    received: list[Alert] = []
    monitor.add_alert_handler(received.append)
    alert = Alert(
        service="rag_api",
        kind="manual_intervention",
        severity="critical",
        message="recovery gave up",
    )
    await monitor.emit_alert(alert)
    assert [alert] == received
    assert [alert] == monitor.get_active_alerts()
    resolved = Alert(
        service="rag_api", kind="manual_intervention", severity="info", message="ok", resolved=True
    )
    await monitor.emit_alert(resolved)
    assert monitor.get_active_alerts() == []


# -- the recovery manager seam ---------------------------------------------------------


class RecordingRecovery:
    """Stands in for issue 6's RecoveryManager at the agreed seam."""

    def __init__(self, *, fail: bool = False, gate: asyncio.Event | None = None) -> None:
        self.attached: list[HealthMonitor] = []
        self.changes: list[tuple[str, HealthStatus, HealthStatus, HealthStatus]] = []
        self.fail = fail
        self.gate = gate

    def attach(self, monitor: HealthMonitor) -> None:
        self.attached.append(monitor)

    async def on_status_change(
        self,
        service_name: str,
        old_status: HealthStatus,
        new_status: HealthStatus,
        result: HealthCheckResult,
    ) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.changes.append((service_name, old_status, new_status, result.status))
        if self.fail:
            raise RuntimeError("recovery bug")


async def test_recovery_manager_is_attached_once_and_told_every_change() -> None:
    """attach(monitor) once; on_status_change(name, old, new, result) per change, in order."""
    recovery = RecordingRecovery()
    monitor = HealthMonitor(recovery_manager=recovery, failure_threshold=2, success_threshold=1)
    assert [monitor] == recovery.attached
    monitor.add_checker(Scripted(script=[HEALTHY, UNHEALTHY, UNHEALTHY, UNHEALTHY, HEALTHY]))
    for _ in range(5):
        await monitor.trigger_manual_check("svc")
    await monitor.drain_notifications()
    assert recovery.changes == [
        ("svc", UNKNOWN, HEALTHY, HEALTHY),
        ("svc", HEALTHY, DEGRADED, UNHEALTHY),
        ("svc", DEGRADED, UNHEALTHY, UNHEALTHY),
        ("svc", UNHEALTHY, HEALTHY, HEALTHY),
    ]


async def test_recovery_hook_exception_is_logged_and_harmless(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A raising on_status_change is logged; the monitor and later changes go on."""
    recovery = RecordingRecovery(fail=True)
    monitor = HealthMonitor(recovery_manager=recovery, failure_threshold=1, success_threshold=1)
    monitor.add_checker(Scripted(script=[UNHEALTHY, HEALTHY]))
    with caplog.at_level(logging.ERROR, logger="xnai_core.health"):
        await monitor.trigger_manual_check("svc")
        await monitor.trigger_manual_check("svc")
        await monitor.drain_notifications()
    assert len(recovery.changes) == 2
    assert sum("recovery hook failed" in r.message for r in caplog.records) == 2


def test_slow_recovery_hook_never_delays_checks() -> None:
    """While the hook is busy (a long restart), checks keep their schedule."""
    gate = asyncio.Event()
    recovery = RecordingRecovery(gate=gate)
    checker = Scripted(default=UNHEALTHY)

    async def scenario() -> None:
        monitor = HealthMonitor(
            check_interval=1.0, recovery_manager=recovery, failure_threshold=1, jitter=no_jitter
        )
        monitor.add_checker(checker)
        await monitor.start_monitoring()
        await asyncio.sleep(5.5)
        assert recovery.changes == []  # the hook is still blocked
        gate.set()
        await monitor.drain_notifications()
        await monitor.stop_monitoring()

    virtual(scenario())
    assert len(checker.starts) == 6
    assert len(recovery.changes) == 1


def test_wait_for_status() -> None:
    """wait_for_status returns True when reached, False when the timeout passes first."""
    checker = Scripted(script=[HEALTHY, UNHEALTHY], default=UNHEALTHY)

    async def scenario() -> tuple[bool, bool, HealthStatus]:
        monitor = HealthMonitor(check_interval=1.0, failure_threshold=3, jitter=no_jitter)
        monitor.add_checker(checker)
        await monitor.start_monitoring()
        reached = await monitor.wait_for_status("svc", "unhealthy", timeout=10.0)
        missed = await monitor.wait_for_status("svc", HEALTHY, timeout=3.0)
        await monitor.stop_monitoring()
        return reached, missed, monitor.get_status("svc")

    assert virtual(scenario()) == (True, False, UNHEALTHY)


# -- lifecycle and bookkeeping ---------------------------------------------------------


async def test_stop_leaves_nothing_running_and_restart_works() -> None:
    """stop_monitoring cancels and awaits every task; start again resumes checks."""
    checker = Scripted()
    monitor = HealthMonitor(check_interval=0.01, jitter=no_jitter)
    monitor.add_checker(checker)
    before = asyncio.all_tasks()
    await monitor.start_monitoring()
    await monitor.start_monitoring()  # idempotent
    await asyncio.sleep(0.05)
    assert monitor.monitoring_active
    await monitor.stop_monitoring()
    await monitor.stop_monitoring()  # idempotent
    assert before == asyncio.all_tasks()
    assert not monitor.monitoring_active
    assert checker.closed >= 1
    runs = len(checker.starts)
    async with monitor:
        await asyncio.sleep(0.05)
    assert len(checker.starts) > runs
    assert before == asyncio.all_tasks()


async def test_history_is_bounded() -> None:
    """However long it runs, a service keeps at most history_size results."""
    monitor = HealthMonitor(history_size=10, alert_window=5)
    monitor.add_checker(Scripted())
    for _ in range(500):
        await monitor.trigger_manual_check("svc")
    assert len(monitor.get_history("svc")) == 10
    assert monitor.get_service_health("svc").total_checks == 500


async def test_add_while_active_starts_and_remove_stops() -> None:
    """A checker added while monitoring runs at once; removing it stops and closes it."""
    checker = Scripted()
    monitor = HealthMonitor(check_interval=0.01, jitter=no_jitter)
    await monitor.start_monitoring()
    before = asyncio.all_tasks()
    monitor.add_checker(checker)
    await asyncio.sleep(0.05)
    assert checker.starts
    monitor.remove_checker("svc")
    await asyncio.sleep(0)
    await monitor.stop_monitoring()
    assert checker.closed == 1
    assert monitor.services == ()
    assert before >= asyncio.all_tasks()
    with pytest.raises(KeyError, match="no health checker named 'svc'"):
        monitor.remove_checker("svc")


async def test_unknown_names_are_key_errors() -> None:
    """trigger_manual_check, get_status and wait_for_status name the missing service."""
    monitor = HealthMonitor()
    with pytest.raises(KeyError, match="no health checker named 'nope'"):
        await monitor.trigger_manual_check("nope")
    with pytest.raises(KeyError, match="'nope'"):
        monitor.get_status("nope")
    with pytest.raises(KeyError, match="'nope'"):
        await monitor.wait_for_status("nope", HEALTHY, timeout=0.01)


def test_add_checker_validates() -> None:
    """Duplicates, colon names and non-checkers are refused with clear messages."""
    monitor = HealthMonitor()
    monitor.add_checker(Scripted("api"))
    with pytest.raises(ValueError, match="'name' must be unique in a monitor: 'api'"):
        monitor.add_checker(Scripted("api"))
    with pytest.raises(ValueError, match="'name' must not contain ':'"):
        monitor.add_checker(Scripted("a:b"))
    with pytest.raises(TypeError, match="'checker' must have a name and an async check"):
        monitor.add_checker(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"check_interval": 0}, "'check_interval' must be > 0 seconds: 0"),
        ({"check_interval": -1}, "'check_interval' must be > 0 seconds: -1"),
        ({"failure_threshold": 0}, "'failure_threshold' must be >= 1: 0"),
        ({"history_size": 5, "alert_window": 6}, "'alert_window' must be <= history_size"),
        ({"alert_thresholds": {"latency": 1}}, "unknown key"),
        ({"alert_min_samples": 0}, "'alert_min_samples' must be >= 1: 0"),
        (
            {"alert_window": 5, "alert_min_samples": 6},
            r"'alert_min_samples' must be <= alert_window \(5\): 6",
        ),
    ],
)
def test_monitor_validates_its_arguments(kwargs: dict[str, Any], message: str) -> None:
    """Bad settings fail at construction with the field, the rule and the value."""
    with pytest.raises(ValueError, match=message):
        HealthMonitor(**kwargs)


async def test_custom_checker_sync_in_thread_and_async() -> None:
    """Sync functions run in a thread, async ones are awaited; dict/bool/None returns."""
    monitor = HealthMonitor()

    async def async_check() -> dict[str, object]:
        return {"status": "degraded", "queue": 7}

    monitor.add_checker(CustomHealthChecker("sync_ok", lambda: True))
    monitor.add_checker(CustomHealthChecker("sync_none", lambda: None))
    monitor.add_checker(CustomHealthChecker("sync_false", lambda: False))
    monitor.add_checker(CustomHealthChecker("async_dict", async_check))
    monitor.add_checker(CustomHealthChecker("flag", lambda: {"healthy": False, "why": "x"}))
    statuses = {
        name: (await monitor.trigger_manual_check(name)).status for name in monitor.services
    }
    assert statuses == {
        "sync_ok": HEALTHY,
        "sync_none": HEALTHY,
        "sync_false": UNHEALTHY,
        "async_dict": DEGRADED,
        "flag": UNHEALTHY,
    }
    assert monitor.get_history("async_dict")[-1].details == {"queue": 7}
    await monitor.stop_monitoring()


async def test_custom_checker_exception_is_an_unhealthy_result() -> None:
    """An exception in the check function is an unhealthy result carrying the error."""

    def explode() -> bool:
        raise ValueError("bad config")

    result = await CustomHealthChecker("cfg", explode).check()
    assert (result.status, result.error) == ("unhealthy", "ValueError: bad config")


async def test_custom_checker_returning_a_result_keeps_its_status() -> None:
    """A HealthCheckResult from the function is the verdict, under the checker's name."""
    checker = CustomHealthChecker(
        "x", lambda: HealthCheckResult("other", DEGRADED, 0.5, details={"a": 1})
    )
    result = await checker.check()
    assert (
        result.service,
        result.status,
        result.response_time,
        result.details,
    ) == ("x", DEGRADED, 0.5, {"a": 1})


async def test_stuck_sync_check_does_not_pile_up_threads() -> None:
    """A sync function still running from a timed-out call is not started again."""

    release = threading.Event()
    calls = []

    def stuck() -> bool:
        calls.append(1)
        release.wait(5)
        return True

    monitor = HealthMonitor(check_interval=0.05)
    monitor.add_checker(CustomHealthChecker("stuck", stuck, timeout=0.05))
    first = await monitor.trigger_manual_check("stuck")
    second = await monitor.trigger_manual_check("stuck")
    release.set()
    await monitor.stop_monitoring()
    assert first.error == "timed out after 0.05s"
    assert second.error == "previous call of the check function is still running"
    assert len(calls) == 1


async def test_checker_bounds_its_own_probe_by_its_timeout() -> None:
    """check() cancels a probe that outlives ``timeout``: an unhealthy result, no raise."""

    class Hanging(HealthChecker):
        async def probe(self) -> dict[str, object]:
            await asyncio.sleep(30)
            return {}

    class OwnTimeout(HealthChecker):
        async def probe(self) -> dict[str, object]:
            raise TimeoutError("socket read timed out")

    async def forever() -> bool:
        await asyncio.sleep(30)
        return True

    async with asyncio.timeout(5):
        hung = await Hanging("hung", timeout=0.1).check()
        custom = await CustomHealthChecker("custom", forever, timeout=0.1).check()
        own = await OwnTimeout("own", timeout=5).check()
    assert (hung.status, hung.error) == (UNHEALTHY, "timed out after 0.1s")
    assert 0.1 <= hung.response_time < 1.0
    assert (custom.status, custom.error) == (UNHEALTHY, "timed out after 0.1s")
    assert (own.status, own.error) == (UNHEALTHY, "TimeoutError: socket read timed out")


async def test_overall_status_drives_the_http_status() -> None:
    """One unhealthy service makes the health+json document fail and the helper 503."""
    from xnai_core.health.health_json import http_status_for

    monitor = HealthMonitor(failure_threshold=1)
    monitor.add_checker(Scripted("api"))
    monitor.add_checker(Scripted("db", default=UNHEALTHY))
    monitor.add_checker(Scripted("idle"))
    assert monitor.get_overall_status() == UNKNOWN
    await monitor.trigger_manual_check("api")
    assert (monitor.get_overall_status(), http_status_for(monitor.get_health_json())) == (
        HEALTHY,
        200,
    )
    await monitor.trigger_manual_check("db")
    document = monitor.get_health_json(service_id="rag", version="1")
    assert (monitor.get_overall_status(), document["status"], http_status_for(document)) == (
        UNHEALTHY,
        "fail",
        503,
    )
    assert http_status_for(monitor.get_health_report()) == 503
    assert (document["serviceId"], document["version"]) == ("rag", "1")


async def test_removed_alert_handler_gets_nothing() -> None:
    """remove_alert_handler stops delivery; removing an unknown handler is a ValueError."""
    monitor = HealthMonitor(failure_threshold=1)
    monitor.add_checker(Scripted(default=UNHEALTHY))
    received: list[Alert] = []
    monitor.add_alert_handler(received.append)
    monitor.remove_alert_handler(received.append)
    await monitor.trigger_manual_check("svc")
    await monitor.drain_notifications()
    assert received == []
    with pytest.raises(ValueError, match=r"x not in list"):
        monitor.remove_alert_handler(received.append)


def test_manual_check_interrupted_by_stop_raises_clearly() -> None:
    """A caller waiting on a check that stop_monitoring cancels gets a RuntimeError."""
    checker = Scripted(duration=10.0)

    async def scenario() -> BaseException | HealthCheckResult:
        monitor = HealthMonitor(check_interval=30.0)
        monitor.add_checker(checker)
        waiting = asyncio.ensure_future(monitor.trigger_manual_check("svc"))
        await asyncio.sleep(1.0)
        await monitor.stop_monitoring()
        return (await asyncio.gather(waiting, return_exceptions=True))[0]

    outcome = virtual(scenario())
    assert isinstance(outcome, RuntimeError)
    assert "was cancelled (monitor stopped)" in str(outcome)


def test_manual_check_joining_a_scheduled_run_that_stop_cancels_raises_clearly() -> None:
    """A scheduled run runs in its schedule's task: stopping ends it, and a manual
    check that joined it gets the same RuntimeError, not a bare cancellation."""
    checker = Scripted(duration=10.0)

    async def scenario() -> tuple[BaseException | HealthCheckResult, int]:
        monitor = HealthMonitor(check_interval=30.0, jitter=no_jitter)
        monitor.add_checker(checker)
        await monitor.start_monitoring()
        await asyncio.sleep(1.0)  # the scheduled run is in flight
        tasks_during_run = len(asyncio.all_tasks())
        waiting = asyncio.ensure_future(monitor.trigger_manual_check("svc"))
        await asyncio.sleep(1.0)
        await monitor.stop_monitoring()
        outcome = (await asyncio.gather(waiting, return_exceptions=True))[0]
        return outcome, tasks_during_run

    outcome, tasks_during_run = virtual(scenario())
    assert isinstance(outcome, RuntimeError)
    assert "was cancelled (monitor stopped)" in str(outcome)
    assert len(checker.starts) == 1  # the manual check joined; it did not start a second
    assert tasks_during_run == 2  # the scenario and the schedule: no task per run


def test_manual_check_of_a_checker_removed_meanwhile_raises_key_error() -> None:
    """A reload removes a checker while a manual check waits on its run (the dashboard's
    "check now"): the caller got RuntimeError "... cancelled (monitor stopped)", though the
    monitor runs on. It gets the documented KeyError of a name no longer monitored."""
    checker = Scripted(duration=10.0)

    async def scenario() -> tuple[BaseException | HealthCheckResult, bool]:
        monitor = HealthMonitor(check_interval=30.0, jitter=no_jitter)
        monitor.add_checker(checker)
        await monitor.start_monitoring()
        await asyncio.sleep(1.0)  # the scheduled run is in flight
        waiting = asyncio.ensure_future(monitor.trigger_manual_check("svc"))
        await asyncio.sleep(1.0)
        monitor.remove_checker("svc")
        outcome = (await asyncio.gather(waiting, return_exceptions=True))[0]
        active = monitor.monitoring_active
        await monitor.stop_monitoring()
        return outcome, active

    outcome, active = virtual(scenario())
    assert active
    assert isinstance(outcome, KeyError)
    assert "no health checker named 'svc' (removed while it was checked)" in str(outcome)


async def test_cancelled_joiner_does_not_cancel_the_check() -> None:
    """One caller giving up does not cancel the run the others are waiting for."""
    release = asyncio.Event()

    class Slow:
        name = "svc"

        async def check(self) -> HealthCheckResult:
            await release.wait()
            return HealthCheckResult("svc", HEALTHY)

    monitor = HealthMonitor()
    monitor.add_checker(Slow())
    impatient = asyncio.ensure_future(monitor.trigger_manual_check("svc"))
    patient = asyncio.ensure_future(monitor.trigger_manual_check("svc"))
    await asyncio.sleep(0.01)
    impatient.cancel()
    await asyncio.sleep(0.01)
    release.set()
    assert (await patient).status == HEALTHY
    assert impatient.cancelled()
    assert monitor.get_service_health("svc").total_checks == 1
    await monitor.stop_monitoring()


# -- calling back into the monitor from its own callbacks -------------------------------


@pytest.mark.parametrize(
    "where", ["recovery_callback", "alert_handler", "recovery_hook", "check_function"]
)
async def test_stop_monitoring_from_inside_a_callback_returns(where: str) -> None:
    """stop_monitoring() from a callback, handler, hook or check returns and stops it all."""
    before = asyncio.all_tasks()
    returned = asyncio.Event()
    outcome: list[str] = []
    monitor: HealthMonitor

    async def stop() -> None:
        await monitor.stop_monitoring()
        outcome.append("stop returned")
        returned.set()

    class Hook:
        async def on_status_change(
            self, name: str, old: HealthStatus, new: HealthStatus, result: HealthCheckResult
        ) -> None:
            if (old, new) == (UNHEALTHY, HEALTHY):
                await stop()

    async def alert_handler(alert: Alert) -> None:
        if not alert.resolved:
            await stop()

    runs: list[int] = []

    async def check_function() -> bool:
        runs.append(1)
        if len(runs) == 3:
            await stop()
        return True

    monitor = HealthMonitor(
        check_interval=0.01,
        failure_threshold=1,
        success_threshold=1,
        jitter=no_jitter,
        recovery_manager=Hook() if where == "recovery_hook" else None,
    )
    if where == "check_function":
        monitor.add_checker(CustomHealthChecker("svc", check_function))
    else:
        monitor.add_checker(Scripted(script=[UNHEALTHY]))
    monitor.add_checker(Scripted("other"))
    if where == "recovery_callback":
        monitor.add_recovery_callback("svc", lambda name: stop())
    if where == "alert_handler":
        monitor.add_alert_handler(alert_handler)
    await monitor.start_monitoring()
    async with asyncio.timeout(5):
        await returned.wait()
    await asyncio.sleep(0.05)  # the calling task finishes what it was doing
    checks = [monitor.get_service_health(n).total_checks for n in monitor.services]
    await asyncio.sleep(0.05)
    assert outcome == ["stop returned"]
    assert not monitor.monitoring_active
    assert [monitor.get_service_health(n).total_checks for n in monitor.services] == checks
    assert asyncio.all_tasks() == before
    await monitor.stop_monitoring()  # still idempotent


async def test_remove_checker_from_its_own_alert_handler_lets_the_handler_finish() -> None:
    """remove_checker() inside a handler neither cancels the handler nor leaves tasks."""
    before = asyncio.all_tasks()
    monitor = HealthMonitor(check_interval=0.01, failure_threshold=1, jitter=no_jitter)
    monitor.add_checker(Scripted(default=UNHEALTHY))
    finished = asyncio.Event()
    seen: list[tuple[str, bool]] = []

    async def handler(alert: Alert) -> None:
        seen.append((alert.key, alert.resolved))
        if not alert.resolved:
            monitor.remove_checker("svc")
            await asyncio.sleep(0.01)
            finished.set()

    monitor.add_alert_handler(handler)
    await monitor.start_monitoring()
    async with asyncio.timeout(5):
        await finished.wait()
    await monitor.drain_notifications()
    await monitor.stop_monitoring()
    assert monitor.services == ()
    assert seen == [("svc:status", False), ("svc:status", True)]
    assert asyncio.all_tasks() == before


async def test_remove_checker_resolves_its_active_alerts() -> None:
    """Removing a service sends a resolved notice for each of its alerts, after the raises."""
    monitor = HealthMonitor(
        failure_threshold=1, alert_thresholds={"consecutive_failures": 1}, alert_window=1
    )
    monitor.add_checker(Scripted(default=UNHEALTHY))
    monitor.add_checker(Scripted("other", default=UNHEALTHY))
    received: list[Alert] = []

    async def handler(alert: Alert) -> None:
        await asyncio.sleep(0.01)  # slow enough that the raises are still queued
        received.append(alert)

    monitor.add_alert_handler(handler)
    await monitor.trigger_manual_check("other")
    await monitor.emit_alert(
        Alert(service="svc", kind="manual_intervention", severity="critical", message="gave up")
    )
    await monitor.trigger_manual_check("svc")
    monitor.remove_checker("svc")
    assert {a.service for a in monitor.get_active_alerts()} == {"other"}
    await monitor.drain_notifications()
    await monitor.stop_monitoring()
    mine = [(a.key, a.resolved) for a in received if a.service == "svc"]
    assert mine == [
        ("svc:manual_intervention", False),
        ("svc:status", False),
        ("svc:consecutive_failures", False),
        ("svc:consecutive_failures", True),
        ("svc:manual_intervention", True),
        ("svc:status", True),
    ]
    assert all(a.severity == "info" for a in received if a.resolved)
    assert [a.key for a in monitor.get_active_alerts()] == [
        "other:status",
        "other:consecutive_failures",
    ]
