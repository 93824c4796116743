"""The health monitor reports every check and every alert to the hooks."""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import CollectorRegistry, generate_latest

from tests.metrics_helpers import Recorder, no_global_hooks, parse  # noqa: F401
from xnai_core import CustomHealthChecker, HealthMonitor
from xnai_core.events import AlertChanged, HealthChecked
from xnai_core.metrics import enable_prometheus

E = TypeVar("E")


def monitor_of(up: dict[str, bool]) -> HealthMonitor:
    monitor = HealthMonitor(check_interval=3600, failure_threshold=2, success_threshold=1)
    monitor.add_checker(CustomHealthChecker("vector_db", lambda: up["ok"], in_thread=False))
    return monitor


async def test_checks_and_alerts_reach_the_hooks() -> None:
    hook = Recorder()
    up = {"ok": True}
    monitor = monitor_of(up)
    monitor.hooks.install(hook)
    await monitor.trigger_manual_check("vector_db")
    up["ok"] = False
    await monitor.trigger_manual_check("vector_db")  # failed once: not yet unhealthy
    await monitor.trigger_manual_check("vector_db")  # the second failure: unhealthy
    checks = hook.of(HealthChecked)
    assert [(c.service, c.result, c.status) for c in checks] == [
        ("vector_db", "healthy", "healthy"),
        ("vector_db", "unhealthy", "degraded"),  # one failure: degraded, not yet down
        ("vector_db", "unhealthy", "unhealthy"),
    ]
    assert all(c.duration >= 0 for c in checks)
    raised = [a for a in hook.of(AlertChanged) if a.active]
    assert ("vector_db", "status", "critical") in {(a.service, a.alert, a.severity) for a in raised}
    monitor.remove_checker("vector_db")
    await monitor.stop_monitoring()
    resolved = [a for a in hook.of(AlertChanged) if not a.active]
    assert {a.alert for a in resolved} >= {"status"}


async def test_health_metrics_from_the_live_monitor_and_its_events() -> None:
    metrics = enable_prometheus(CollectorRegistry())
    try:
        up = {"ok": False}
        monitor = monitor_of(up)
        text = generate_latest(metrics.registry).decode()
        assert 'xnai_health_status{service="vector_db",status="unknown"} 1.0' in text
        for _ in range(2):
            await monitor.trigger_manual_check("vector_db")
        text = generate_latest(metrics.registry).decode()
        await monitor.stop_monitoring()
    finally:
        metrics.disable()
    samples = parse(text)
    vdb = ("service", "vector_db")
    assert samples["xnai_health_status", (vdb, ("status", "unhealthy"))] == 1
    assert samples["xnai_health_status", (vdb, ("status", "healthy"))] == 0
    assert samples["xnai_health_checks_total", (("result", "unhealthy"), vdb)] == 2
    assert samples["xnai_health_check_duration_seconds_count", (vdb,)] == 2
    assert samples["xnai_alerts_active", (("alert", "status"), vdb)] == 1
