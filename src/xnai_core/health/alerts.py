"""Alerts: threshold crossings raised once, resolved once, to the handlers you register.

An alert has a stable ``key`` (``"<service>:<kind>"``) so a pager or chat
integration can deduplicate it and match the resolved notice to the alert.
Kinds the monitor raises by itself:

- ``status``: the service became ``unhealthy`` (critical); resolved when it no
  longer is.
- ``success_rate``: the success rate over the last ``alert_window`` results fell
  below the threshold, in percent (warning).
- ``response_time``: the mean response time over that window rose above the
  threshold, in seconds (warning).

  Both window kinds are judged only once the window holds ``min_samples``
  results (the monitor's ``alert_min_samples``, by default a full window): one
  failure among the first three checks is not a 67% success rate worth a page.
- ``consecutive_failures``: that many failed checks in a row (critical).

Other components (the recovery manager) raise their own alerts through
``HealthMonitor.emit_alert`` and reach the same handlers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from .._dispatch import Dispatcher
from ._validate import check_int
from .result import HealthCheckResult, HealthStatus

__all__ = ["Alert", "AlertHandler", "AlertThresholds", "Severity", "deliver", "evaluate"]

logger = logging.getLogger("xnai_core.health.alerts")

Severity = Literal["info", "warning", "critical"]
_SEVERITIES: tuple[str, ...] = get_args(Severity)


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One alert, or the notice that it resolved.

    ``key`` defaults to ``"<service>:<kind>"``. ``details`` carries the measured
    value and the threshold where there is one.
    """

    service: str
    kind: str
    severity: Severity
    message: str
    resolved: bool = False
    timestamp: float = field(default_factory=time.time)
    details: dict[str, object] = field(default_factory=dict)
    key: str = ""

    def __post_init__(self) -> None:
        if self.severity not in _SEVERITIES:
            raise ValueError(f"'severity' must be one of {_SEVERITIES}: {self.severity!r}")
        if not self.kind:
            raise ValueError(f"'kind' must be a non-empty string: {self.kind!r}")
        if not self.key:
            object.__setattr__(self, "key", f"{self.service}:{self.kind}")

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready copy."""
        return {
            "key": self.key,
            "service": self.service,
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "resolved": self.resolved,
            "timestamp": self.timestamp,
            "details": dict(self.details),
        }


AlertHandler = Callable[[Alert], Awaitable[None] | None]


def _threshold(name: str, value: object, low: float, high: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"'alert_thresholds[{name!r}]' must be a number: {value!r}")
    number = float(value)
    if math.isnan(number) or not low < number <= high:
        raise ValueError(f"'alert_thresholds[{name!r}]' must be in ({low:g}, {high:g}]: {value!r}")
    return number


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertThresholds:
    """Validated ``alert_thresholds``; ``None`` disables a kind."""

    success_rate: float | None = None  # percent, 0 < x <= 100
    response_time: float | None = None  # seconds
    consecutive_failures: int | None = None

    @classmethod
    def from_mapping(cls, thresholds: Mapping[str, object] | None) -> AlertThresholds:
        """Parse the seed's ``{"success_rate": 95, "response_time": 5.0}`` form."""
        if thresholds is None:
            return cls()
        known = ("consecutive_failures", "response_time", "success_rate")
        for key in thresholds:
            if key not in known:
                raise ValueError(f"'alert_thresholds' has an unknown key (known: {known}): {key!r}")
        rate = thresholds.get("success_rate")
        latency = thresholds.get("response_time")
        failures = thresholds.get("consecutive_failures")
        return cls(
            success_rate=None if rate is None else _threshold("success_rate", rate, 0.0, 100.0),
            response_time=(
                None if latency is None else _threshold("response_time", latency, 0.0, math.inf)
            ),
            consecutive_failures=(
                None
                if failures is None
                else check_int("alert_thresholds['consecutive_failures']", failures, 1)
            ),
        )

    def as_dict(self) -> dict[str, float]:
        """The thresholds that are set."""
        pairs = {
            "success_rate": self.success_rate,
            "response_time": self.response_time,
            "consecutive_failures": self.consecutive_failures,
        }
        return {key: float(value) for key, value in pairs.items() if value is not None}


def success_rate(window: Iterable[HealthCheckResult]) -> float | None:
    """Percent of decisive results that succeeded; None if there are none."""
    decided = [result for result in window if result.status is not HealthStatus.UNKNOWN]
    if not decided:
        return None
    return 100.0 * sum(result.ok for result in decided) / len(decided)


def mean_response_time(window: Iterable[HealthCheckResult]) -> float | None:
    """Mean response time (seconds) of decisive results; None if there are none."""
    times = [r.response_time for r in window if r.status is not HealthStatus.UNKNOWN]
    return sum(times) / len(times) if times else None


@dataclass(frozen=True, slots=True)
class _Condition:
    kind: str
    severity: Severity
    breached: bool
    message: str
    details: dict[str, object]


def _conditions(
    service: str,
    status: HealthStatus,
    consecutive_failures: int,
    window: Sequence[HealthCheckResult],
    thresholds: AlertThresholds,
    min_samples: int,
) -> list[_Condition]:
    last_error = window[-1].error if window else None
    enough = len(window) >= min_samples
    found = [
        _Condition(
            "status",
            "critical",
            status is HealthStatus.UNHEALTHY,
            f"{service} is unhealthy" + (f": {last_error}" if last_error else ""),
            {"status": status.value},
        )
    ]
    if thresholds.success_rate is not None:
        rate = success_rate(window)
        found.append(
            _Condition(
                "success_rate",
                "warning",
                enough and rate is not None and rate < thresholds.success_rate,
                f"{service} success rate {rate or 0.0:.1f}% < {thresholds.success_rate:g}%",
                {"value": rate, "threshold": thresholds.success_rate, "window": len(window)},
            )
        )
    if thresholds.response_time is not None:
        mean = mean_response_time(window)
        found.append(
            _Condition(
                "response_time",
                "warning",
                enough and mean is not None and mean > thresholds.response_time,
                f"{service} mean response time {mean or 0.0:.3f}s > {thresholds.response_time:g}s",
                {"value": mean, "threshold": thresholds.response_time, "window": len(window)},
            )
        )
    if thresholds.consecutive_failures is not None:
        found.append(
            _Condition(
                "consecutive_failures",
                "critical",
                consecutive_failures >= thresholds.consecutive_failures,
                f"{service} failed {consecutive_failures} checks in a row",
                {"value": consecutive_failures, "threshold": thresholds.consecutive_failures},
            )
        )
    return found


def evaluate(
    service: str,
    *,
    status: HealthStatus,
    consecutive_failures: int,
    window: Sequence[HealthCheckResult],
    thresholds: AlertThresholds,
    active: Collection[str],
    now: float,
    min_samples: int = 1,
) -> list[Alert]:
    """The alerts to send after a result: new crossings, and resolved ones.

    ``active`` holds the keys of this service's alerts that are raised now; the
    caller adds the keys of returned alerts and removes those of resolved ones.
    The window kinds (success rate, response time) are judged only once
    ``window`` holds at least ``min_samples`` results.
    """
    alerts: list[Alert] = []
    conditions = _conditions(service, status, consecutive_failures, window, thresholds, min_samples)
    for condition in conditions:
        key = f"{service}:{condition.kind}"
        if condition.breached and key not in active:
            alerts.append(
                Alert(
                    key=key,
                    service=service,
                    kind=condition.kind,
                    severity=condition.severity,
                    message=condition.message,
                    timestamp=now,
                    details=condition.details,
                )
            )
        elif not condition.breached and key in active:
            alerts.append(
                Alert(
                    key=key,
                    service=service,
                    kind=condition.kind,
                    severity="info",
                    message=f"resolved: {service} {condition.kind.replace('_', ' ')} is back",
                    resolved=True,
                    timestamp=now,
                    details=condition.details,
                )
            )
    return alerts


async def deliver(
    alert: Alert,
    handlers: Sequence[AlertHandler],
    timeout: float | None,
    dispatcher: Dispatcher | None = None,
) -> None:
    """Call every handler with ``alert`` at once, each bounded by ``timeout`` seconds.

    Sync handlers run on ``dispatcher``'s worker threads (without one, on a small
    pool shared by callers that bring none), never on the event loop; a failing,
    slow or hung handler is logged and never holds back the others.
    """
    runner = dispatcher or _shared_dispatcher()
    if len(handlers) == 1:
        await runner.notify(handlers[0], alert, timeout=timeout, what="alert handler")
        return
    await asyncio.gather(
        *(runner.notify(h, alert, timeout=timeout, what="alert handler") for h in handlers)
    )


@functools.cache
def _shared_dispatcher() -> Dispatcher:
    return Dispatcher(max_workers=4, name="xnai-alert", log=logger)
