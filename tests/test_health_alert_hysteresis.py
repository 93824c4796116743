"""Alert hysteresis against a real HTTP service on loopback.

Issue 11, finding 7: window alerts resolved the moment the value crossed back, so a
service steadily at 91% success with ``success_rate: 95`` paged 17 times in 200
checks; and the response-time alert averaged in fast failures, so it "resolved"
when the slow service crashed.
"""

from __future__ import annotations

import math

from tests.test_health_support import LoopbackHTTPServer
from xnai_core.health.alerts import Alert
from xnai_core.health.checkers import HTTPHealthChecker
from xnai_core.health.monitor import HealthMonitor


def fails_at(check: int, failure_share: float) -> bool:
    """A steady share of failures, spread as evenly as whole checks allow."""
    return math.floor((check + 1) * failure_share) > math.floor(check * failure_share)


async def collect(monitor: HealthMonitor) -> list[Alert]:
    received: list[Alert] = []

    async def record(alert: Alert) -> None:
        received.append(alert)

    monitor.add_alert_handler(record)
    return received


async def test_steady_91_percent_success_pages_once() -> None:
    """200 checks at a steady 91% success with success_rate 95: one alert, never resolved."""
    async with LoopbackHTTPServer() as server:
        monitor = HealthMonitor(alert_thresholds={"success_rate": 95}, failure_threshold=5)
        monitor.add_checker(HTTPHealthChecker("api", server.url, timeout=2.0))
        received = await collect(monitor)
        failures = 0
        for check in range(200):
            server.status = 500 if fails_at(check, 0.09) else 200
            failures += server.status == 500
            await monitor.trigger_manual_check("api")
        await monitor.drain_notifications()
        await monitor.stop_monitoring()
    assert failures == 18  # 91% success
    rate_alerts = [(a.key, a.resolved) for a in received if a.kind == "success_rate"]
    assert rate_alerts == [("api:success_rate", False)]
    assert [a.key for a in monitor.get_active_alerts()] == ["api:success_rate"]


async def test_rate_alert_resolves_after_the_clear_threshold_holds() -> None:
    """Back to 100%: resolved once past the clear threshold for alert_clear_after results."""
    async with LoopbackHTTPServer() as server:
        monitor = HealthMonitor(
            alert_thresholds={"success_rate": 95},
            alert_window=10,
            alert_clear_after=5,
            failure_threshold=5,
        )
        monitor.add_checker(HTTPHealthChecker("api", server.url, timeout=2.0))
        received = await collect(monitor)
        outcomes: list[int] = [500] + [200] * 9 + [200] * 20
        resolved_at = None
        for check, status in enumerate(outcomes):
            server.status = status
            await monitor.trigger_manual_check("api")
            await monitor.drain_notifications()
            if resolved_at is None and any(a.resolved for a in received):
                resolved_at = check
        await monitor.stop_monitoring()
    # Raised at check 9 (window full, 90%); the failure leaves the window at check 10
    # (100% >= the 97.5% clear threshold), held five results in a row: checks 10-14.
    assert [(a.kind, a.resolved) for a in received if a.kind == "success_rate"] == [
        ("success_rate", False),
        ("success_rate", True),
    ]
    assert resolved_at == 14
    assert monitor.alert_clear_thresholds == {"success_rate": 97.5}


async def test_a_crash_does_not_resolve_a_slow_response_alert() -> None:
    """Slow answers raise response_time; fast failures after a crash do not resolve it."""
    async with LoopbackHTTPServer() as server:
        monitor = HealthMonitor(
            alert_thresholds={"response_time": 0.05},
            alert_window=3,
            failure_threshold=2,
        )
        monitor.add_checker(HTTPHealthChecker("api", server.url, timeout=2.0))
        received = await collect(monitor)
        server.delay = 0.1
        for _ in range(3):
            await monitor.trigger_manual_check("api")
        await monitor.drain_notifications()
        assert [(a.kind, a.resolved) for a in received] == [("response_time", False)]
        await server.stop()  # the slow service crashes: refused at once
        for _ in range(5):
            result = await monitor.trigger_manual_check("api")
            assert not result.ok
        await monitor.drain_notifications()
        kinds = [(a.kind, a.resolved) for a in received]
        assert ("response_time", True) not in kinds
        assert ("status", False) in kinds
        assert "api:response_time" in {a.key for a in monitor.get_active_alerts()}
        # Back, and fast: the alert resolves once answered checks are quick again.
        server.delay = 0.0
        await server.start()
        for _ in range(5):
            await monitor.trigger_manual_check("api")
        await monitor.drain_notifications()
        await monitor.stop_monitoring()
    assert ("response_time", True) in [(a.kind, a.resolved) for a in received]
    resolved = [a for a in received if a.kind == "response_time" and a.resolved]
    assert resolved[0].details["unit"] == "seconds"
