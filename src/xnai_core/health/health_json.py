"""The ``application/health+json`` view and the HTTP status helper.

Follows the IETF draft "Health Check Response Format for HTTP APIs"
(draft-inadarei-api-health-check-06, Informational, expired): top-level
``status`` is ``pass`` / ``warn`` / ``fail``; ``checks`` maps
``"<service>:responseTime"`` to a one-element array. Extra keys
(``consecutiveFailures``...) are allowed by the draft (section 4.10).

Mapping: healthy -> pass, degraded -> warn, unhealthy -> fail, unknown -> warn
("no result yet"); the draft has no unknown. HTTP: pass and warn -> 200 (the
draft requires 2xx-3xx for warn), fail -> 503.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from .result import HealthStatus
from .service import ServiceHealth

__all__ = [
    "HEALTH_JSON_MEDIA_TYPE",
    "http_status_for",
    "overall_status",
    "to_health_json",
]

HEALTH_JSON_MEDIA_TYPE = "application/health+json"

_DRAFT_STATUS = {
    HealthStatus.HEALTHY: "pass",
    HealthStatus.DEGRADED: "warn",
    HealthStatus.UNHEALTHY: "fail",
    HealthStatus.UNKNOWN: "warn",
}
_HTTP_STATUS = {"pass": 200, "warn": 200, "fail": 503}


def overall_status(statuses: Iterable[HealthStatus]) -> HealthStatus:
    """The worst status: unhealthy > degraded > healthy.

    ``unknown`` counts only when every service is unknown (or there are none), so a
    checker that has not run yet does not drag a healthy system down.
    """
    seen = set(statuses)
    for status in (HealthStatus.UNHEALTHY, HealthStatus.DEGRADED, HealthStatus.HEALTHY):
        if status in seen:
            return status
    return HealthStatus.UNKNOWN


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def _check_entry(service: ServiceHealth) -> dict[str, object]:
    draft_status = _DRAFT_STATUS[service.status]
    entry: dict[str, object] = {
        "componentId": service.name,
        "componentType": service.component_type,
        "status": draft_status,
    }
    if service.response_time is not None:
        entry["observedValue"] = round(service.response_time * 1000.0, 3)
        entry["observedUnit"] = "ms"
    if service.last_check is not None:
        entry["time"] = _iso(service.last_check)
    if service.status is HealthStatus.UNKNOWN:
        entry["output"] = "no result yet"
    elif draft_status != "pass":
        last = service.last_result
        if last is not None and last.error:
            entry["output"] = last.error
        elif last is not None and "degraded_reason" in last.details:
            entry["output"] = str(last.details["degraded_reason"])
    entry["consecutiveFailures"] = service.consecutive_failures
    entry["consecutiveSuccesses"] = service.consecutive_successes
    entry["totalChecks"] = service.total_checks
    if service.success_percent is not None:
        entry["successPercent"] = round(service.success_percent, 3)
    return entry


def to_health_json(
    services: Iterable[ServiceHealth],
    *,
    service_id: str | None = None,
    description: str | None = None,
    version: str | None = None,
    release_id: str | None = None,
) -> dict[str, object]:
    """The health+json document for these services."""
    snapshots = list(services)
    overall = overall_status(s.status for s in snapshots)
    document: dict[str, object] = {"status": _DRAFT_STATUS[overall]}
    for key, value in (
        ("version", version),
        ("releaseId", release_id),
        ("serviceId", service_id),
        ("description", description),
    ):
        if value is not None:
            document[key] = value
    failing = sorted(s.name for s in snapshots if s.status is HealthStatus.UNHEALTHY)
    if failing:
        document["output"] = "unhealthy: " + ", ".join(failing)
    document["checks"] = {f"{s.name}:responseTime": [_check_entry(s)] for s in snapshots}
    return document


def http_status_for(status: HealthStatus | str | Mapping[str, object]) -> int:
    """The HTTP status code for an overall status: 503 when failing, else 200.

    Takes a :class:`HealthStatus`, a status string (``"healthy"`` or ``"pass"``
    style), a health+json document, or the monitor's health report (whose
    summary decides).
    """
    if isinstance(status, Mapping):
        summary = status.get("summary")
        if isinstance(summary, Mapping):
            return 503 if summary.get("unhealthy") else 200
        status = str(status.get("status", ""))
    text = status.value if isinstance(status, HealthStatus) else str(status).lower()
    if text in _HTTP_STATUS:
        return _HTTP_STATUS[text]
    try:
        return _HTTP_STATUS[_DRAFT_STATUS[HealthStatus(text)]]
    except ValueError:
        raise ValueError(
            f"'status' must be a HealthStatus, pass/warn/fail or a health document: {status!r}"
        ) from None
