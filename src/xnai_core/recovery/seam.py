"""The manager's side of the seam with ``HealthMonitor`` (which never imports recovery).

The monitor calls ``attach(monitor)`` once and awaits ``on_status_change`` on every
status change. Back, the manager reads a service's failure streak, asks for a
fresh check during a grace period, and sends its escalation alert through the
monitor's handlers. Everything here also tolerates a monitor that lacks a part.
"""

from __future__ import annotations

from typing import Protocol

from ..health.alerts import Alert
from .rule import RecoveryRule


class SupportsMonitor(Protocol):
    """The part of ``HealthMonitor`` the manager needs once attached."""

    def get_status(self, service_name: str) -> object: ...

    async def trigger_manual_check(self, service_name: str) -> object: ...

    async def emit_alert(self, alert: Alert) -> object: ...


def check_stable_period(rule: RecoveryRule, monitor: object) -> None:
    """Refuse a stable period the monitor cannot outlast: it would reset on every crash.

    A service that dies right after a restart still looks healthy until the
    monitor's next failed check, and unhealthy only after ``failure_threshold``
    checks ``check_interval`` apart. A stable period shorter than that passes on
    every lap of a crash loop, so max_attempts would never be reached: the
    systemd trap of a limit that can never trigger.
    """
    interval = getattr(monitor, "check_interval", None)
    threshold = getattr(monitor, "failure_threshold", None)
    if not isinstance(interval, int | float) or not isinstance(threshold, int):
        return
    detection = interval * threshold
    if rule.stable_period <= detection:
        raise ValueError(
            f"'stable_period' of the {rule.action_type.value!r} rule for "
            f"{rule.service_name!r} must be > the monitor's failure_threshold * "
            f"check_interval ({threshold} * {interval:g}s = {detection:g}s), or a crash "
            f"loop never escalates: {rule.stable_period!r}"
        )


def stable_period_too_short(rule: RecoveryRule, monitor: object | None) -> float | None:
    """The service's own detection time if ``rule.stable_period`` does not exceed it.

    The check at attach time knows only the monitor's default interval; a checker
    added with a longer ``interval`` of its own is caught here, at its first outage.
    """
    get_service_health = getattr(monitor, "get_service_health", None)
    threshold = getattr(monitor, "failure_threshold", None)
    if get_service_health is None or not isinstance(threshold, int):
        return None
    try:
        interval = float(get_service_health(rule.service_name).interval)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    detection = interval * threshold
    return detection if rule.stable_period <= detection else None


def failures_reached(monitor: object | None, service_name: str, threshold: int) -> bool:
    """Whether the monitor has counted ``threshold`` failed checks in a row.

    Without a monitor (or one that cannot say), a service reported unhealthy is
    taken to have met every threshold.
    """
    if monitor is None or threshold <= 1:
        return True
    get_service_health = getattr(monitor, "get_service_health", None)
    if get_service_health is None:
        return True
    try:
        return int(get_service_health(service_name).consecutive_failures) >= threshold
    except (AttributeError, KeyError, TypeError, ValueError):
        return True
