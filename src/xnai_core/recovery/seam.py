"""The manager's side of the seam with ``HealthMonitor`` (which never imports recovery).

The monitor calls ``attach(monitor)`` once and awaits ``on_status_change`` on every
status change. Back, the manager reads a service's failure streak, asks for a
fresh check during a grace period, and sends its escalation alert through the
monitor's handlers. Everything here also tolerates a monitor that lacks a part.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

from ..health.alerts import Alert
from ..health.result import HealthStatus
from .rule import RecoveryRule


class SupportsMonitor(Protocol):
    """The part of ``HealthMonitor`` the manager needs once attached."""

    def get_status(self, service_name: str) -> object: ...

    async def trigger_manual_check(self, service_name: str) -> object: ...

    async def emit_alert(self, alert: Alert) -> object: ...


# Optional parts, read with getattr: ``monitoring_active`` (bool), ``check_interval``,
# ``failure_threshold``, ``success_threshold`` and ``get_service_health(name)`` (with
# ``consecutive_failures`` and ``interval``).


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


def consecutive_failures(monitor: object | None, service_name: str) -> int | None:
    """The monitor's count of failed checks in a row; None if there is no monitor to say.

    Without a monitor (or one that cannot say), a service reported unhealthy is
    taken to have met every threshold.
    """
    get_service_health = getattr(monitor, "get_service_health", None)
    if get_service_health is None:
        return None
    try:
        return int(get_service_health(service_name).consecutive_failures)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def current_status(monitor: object | None, service_name: str) -> HealthStatus | None:
    """The monitor's status of the service; None if it does not watch it (or cannot say)."""
    get_status = getattr(monitor, "get_status", None)
    if get_status is None:
        return None
    try:
        status = get_status(service_name)
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
    return status if isinstance(status, HealthStatus) else None


def monitor_running(monitor: object | None) -> bool:
    """False only for an attached monitor that is not running (never started, or stopped).

    The manager then neither acts nor asks for checks: it cannot see what it would fix,
    and a stopped monitor must not be made to reopen its connections.
    """
    active = getattr(monitor, "monitoring_active", True) if monitor is not None else True
    return active is not False


GRACE_FLOOR = 1.0
"""Seconds: the shortest grace period derived from a monitor."""

GRACE_WITHOUT_MONITOR = 30.0
"""Seconds: the grace period of a rule without one, when no monitor is attached."""


def detection_time(
    monitor: object | None, service_name: str, verify_interval: float
) -> float | None:
    """How long the monitor needs to see a service healthy once it is back, while the
    manager asks for a check every ``verify_interval``; None without a monitor.

    ``success_threshold`` successful checks in a row, each started at most
    ``min(interval, verify_interval)`` after the one before it ended and each answering
    within the service's check timeout: the checker's own ``timeout`` (and the monitor's
    ``check_timeout``), capped at its ``interval`` as the monitor caps it.
    """
    if monitor is None:
        return None
    successes = getattr(monitor, "success_threshold", None)
    interval: object = getattr(monitor, "check_interval", None)
    timeout: object = interval  # a service it does not watch: the monitor's own cap
    get_service_health = getattr(monitor, "get_service_health", None)
    if get_service_health is not None:
        with contextlib.suppress(AttributeError, KeyError, TypeError, ValueError):
            health = get_service_health(service_name)
            every, bound = float(health.interval), float(health.timeout)
            interval, timeout = every, min(bound, every)
    if (
        not isinstance(successes, int)
        or not isinstance(interval, int | float)
        or not isinstance(timeout, int | float)
    ):
        return None
    return successes * (min(float(interval), verify_interval) + float(timeout))


def grace_period(
    rule: RecoveryRule, monitor: object | None, service_name: str, verify_interval: float
) -> float:
    """The rule's ``grace_period``, or the default: the monitor's detection time, at least
    :data:`GRACE_FLOOR` (:data:`GRACE_WITHOUT_MONITOR` with no monitor)."""
    if rule.grace_period is not None:
        return rule.grace_period
    detection = detection_time(monitor, service_name, verify_interval)
    return GRACE_WITHOUT_MONITOR if detection is None else max(GRACE_FLOOR, detection)
