"""The health report's shape: exactly the seed's structure, typed."""

from __future__ import annotations

from typing import TypedDict

__all__ = ["HealthReport", "HealthSummary", "ServiceReport"]


class ServiceReport(TypedDict):
    """One service in the report."""

    status: str
    last_check: float | None
    response_time: float | None
    consecutive_failures: int
    consecutive_successes: int
    total_checks: int
    details: dict[str, object]


class HealthSummary(TypedDict):
    """How many services are in each status."""

    total: int
    healthy: int
    degraded: int
    unhealthy: int
    unknown: int


class HealthReport(TypedDict):
    """What ``HealthMonitor.get_health_report()`` returns."""

    timestamp: float
    monitoring_active: bool
    services: dict[str, ServiceReport]
    summary: HealthSummary
