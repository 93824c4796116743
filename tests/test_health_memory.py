"""What a monitor keeps costs the garbage collector nothing per kept result.

A monitor of 500 services keeps 50,000 results at the default ``history_size``. When
they were objects, every full collection walked them all; its pauses (up to 175 ms)
delayed every schedule of the process, and ``bench_health``'s p99 lag rose to
150-270 ms. The history and the alert window now keep flat tuples that CPython stops
tracking, and rebuild equal results when read.
"""

from __future__ import annotations

import gc

from xnai_core.health.checkers import HealthCheckResult, HealthStatus
from xnai_core.health.monitor import HealthMonitor

STATUSES = [
    HealthStatus.HEALTHY,
    HealthStatus.DEGRADED,
    HealthStatus.UNHEALTHY,
    HealthStatus.UNKNOWN,
]


class Detailed:
    """A checker whose results carry details and errors, as HTTP checks' do."""

    def __init__(self, name: str = "svc") -> None:
        self.name = name
        self.timeout = 5.0
        self.runs = 0

    async def check(self) -> HealthCheckResult:
        self.runs += 1
        status = STATUSES[self.runs % len(STATUSES)]
        return HealthCheckResult(
            self.name,
            status,
            response_time=0.001 * self.runs,
            details={"url": "http://127.0.0.1:8000/health", "status_code": 200 + self.runs},
            error=None if status is HealthStatus.HEALTHY else f"failure {self.runs}",
        )


async def _tracked_growth(history_size: int, checks: int) -> int:
    gc.collect()
    before = len(gc.get_objects())
    monitor = HealthMonitor(history_size=history_size, alert_window=5)
    monitor.add_checker(Detailed())
    for _ in range(checks):
        await monitor.trigger_manual_check("svc")
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert len(monitor.get_history("svc")) == min(history_size, checks)
    await monitor.stop_monitoring()
    return grown


async def test_kept_results_are_not_tracked_by_the_collector() -> None:
    """2,000 kept results cost the collector what 10 do (it was one object each)."""
    small = await _tracked_growth(10, 2000)
    large = await _tracked_growth(2000, 2000)
    assert large - small < 200, (small, large)


async def test_history_gives_back_results_equal_to_those_recorded() -> None:
    """Status, times, details and errors read back as they were returned."""
    monitor = HealthMonitor(history_size=8, alert_window=4)
    monitor.add_checker(Detailed())
    returned = [await monitor.trigger_manual_check("svc") for _ in range(12)]
    history = monitor.get_history("svc")
    assert history == tuple(returned[-8:])
    assert all(type(result.status) is HealthStatus for result in history)
    assert history[-1].details == {"url": "http://127.0.0.1:8000/health", "status_code": 212}
    history[-1].details["mutated"] = True  # a reader's copy: the kept one is untouched
    assert "mutated" not in monitor.get_history("svc")[-1].details
    await monitor.stop_monitoring()


async def test_nested_details_are_kept_too() -> None:
    """Details holding containers (still tracked then) read back as they were."""
    monitor = HealthMonitor(history_size=3, alert_window=3)

    class Nested(Detailed):
        async def check(self) -> HealthCheckResult:
            return HealthCheckResult(self.name, HealthStatus.HEALTHY, details={"pool": {"size": 4}})

    monitor.add_checker(Nested())
    await monitor.trigger_manual_check("svc")
    assert monitor.get_history("svc")[-1].details == {"pool": {"size": 4}}
    await monitor.stop_monitoring()
