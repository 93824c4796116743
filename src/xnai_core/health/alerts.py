"""Alerts: threshold crossings raised once, resolved once, to the handlers you register.

An alert has a stable ``key`` (``"<service>:<kind>"``) so a pager or chat
integration can deduplicate it and match the resolved notice to the alert.
Kinds the monitor raises by itself (decided in :mod:`.fold`):

- ``status``: the service became ``unhealthy`` (critical); resolved when it no
  longer is (the status itself has hysteresis).
- ``success_rate``: the percent of successful checks over the last
  ``alert_window`` results fell below the threshold (warning).
- ``response_time``: the mean response time of the *answered* checks over that
  window rose above the threshold, in seconds (warning).
- ``consecutive_failures``: that many failed checks in a row (critical);
  resolved after ``success_threshold`` successes in a row.

The window kinds are judged once the window holds ``min_samples`` results, and
have hysteresis: raised when the value crosses the threshold, resolved only when
it is back past a separate clear threshold for ``clear_after`` results in a row.
Rates in this package's health modules are percents (0-100), named so.

Other components (the recovery manager) raise their own alerts through
``HealthMonitor.emit_alert`` and reach the same handlers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from .._dispatch import Dispatcher
from .._validation import MAX_SECONDS, value_text
from ._validate import check_int
from .result import HealthCheckResult, HealthStatus

__all__ = [
    "ActiveAlerts",
    "Alert",
    "AlertHandler",
    "AlertThresholds",
    "Severity",
    "deliver",
    "mean_response_time",
    "success_percent",
]

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
        raise TypeError(f"'{name}' must be a number: {value_text(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        number = math.inf
    if math.isnan(number) or not low < number <= high:
        raise ValueError(f"'{name}' must be in ({low:g}, {high:g}]: {value_text(value)}")
    return number


_KINDS = ("consecutive_failures", "response_time", "success_rate")
_WINDOW_KINDS = ("response_time", "success_rate")


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertThresholds:
    """Validated ``alert_thresholds``, with their clear thresholds; ``None`` disables a kind.

    ``success_rate`` is a percent (raise below it), ``response_time`` seconds (raise
    above it). A raised window alert resolves only once its value is back past the
    clear threshold: ``success_rate_clear`` (percent, default halfway from the
    threshold to 100) or ``response_time_clear`` (seconds, default 80% of the
    threshold), for ``clear_after`` results in a row (the monitor's
    ``alert_clear_after``, default a full alert window).
    """

    success_rate: float | None = None  # percent, 0 < x <= 100
    response_time: float | None = None  # seconds
    consecutive_failures: int | None = None
    success_rate_clear: float | None = None  # percent, >= success_rate
    response_time_clear: float | None = None  # seconds, <= response_time

    def __post_init__(self) -> None:
        rate, clear_rate = self.success_rate, self.success_rate_clear
        if rate is not None:
            if clear_rate is None:
                object.__setattr__(self, "success_rate_clear", rate + (100.0 - rate) / 2.0)
            elif not rate <= clear_rate <= 100.0:
                raise ValueError(
                    f"'alert_clear_thresholds['success_rate']' must be in"
                    f" [{rate:g}, 100]: {clear_rate!r}"
                )
        latency, clear_latency = self.response_time, self.response_time_clear
        if latency is not None:
            if clear_latency is None:
                object.__setattr__(self, "response_time_clear", 0.8 * latency)
            elif not 0.0 < clear_latency <= latency:
                raise ValueError(
                    f"'alert_clear_thresholds['response_time']' must be in"
                    f" (0, {latency:g}]: {clear_latency!r}"
                )

    @classmethod
    def from_mapping(
        cls,
        thresholds: Mapping[str, object] | None,
        clear: Mapping[str, object] | None = None,
    ) -> AlertThresholds:
        """Parse the seed's ``{"success_rate": 95, "response_time": 5.0}`` form.

        ``clear`` takes the same keys (window kinds only) for the clear thresholds.
        """
        thresholds = thresholds or {}
        clear = clear or {}
        for key in thresholds:
            if key not in _KINDS:
                raise ValueError(
                    f"'alert_thresholds' has an unknown key (known: {_KINDS}): {key!r}"
                )
        for key in clear:
            if key not in _WINDOW_KINDS:
                raise ValueError(
                    f"'alert_clear_thresholds' has an unknown key (known: {_WINDOW_KINDS}): {key!r}"
                )
            if key not in thresholds:
                raise ValueError(
                    f"'alert_clear_thresholds[{key!r}]' needs 'alert_thresholds[{key!r}]': missing"
                )

        def number(
            mapping: Mapping[str, object], where: str, key: str, high: float
        ) -> float | None:
            value = mapping.get(key)
            return None if value is None else _threshold(f"{where}[{key!r}]", value, 0.0, high)

        failures = thresholds.get("consecutive_failures")
        return cls(
            success_rate=number(thresholds, "alert_thresholds", "success_rate", 100.0),
            response_time=number(thresholds, "alert_thresholds", "response_time", MAX_SECONDS),
            consecutive_failures=(
                None
                if failures is None
                else check_int("alert_thresholds['consecutive_failures']", failures, 1)
            ),
            success_rate_clear=number(clear, "alert_clear_thresholds", "success_rate", 100.0),
            response_time_clear=number(
                clear, "alert_clear_thresholds", "response_time", MAX_SECONDS
            ),
        )

    def as_dict(self) -> dict[str, float]:
        """The thresholds that are set (the seed's keys)."""
        pairs = {
            "success_rate": self.success_rate,
            "response_time": self.response_time,
            "consecutive_failures": self.consecutive_failures,
        }
        return {key: float(value) for key, value in pairs.items() if value is not None}

    def clear_dict(self) -> dict[str, float]:
        """The clear thresholds in force (window kinds that are set)."""
        pairs = {"success_rate": self.success_rate_clear, "response_time": self.response_time_clear}
        return {key: float(value) for key, value in pairs.items() if value is not None}


def success_percent(window: Iterable[HealthCheckResult]) -> float | None:
    """Percent (0-100) of decisive results that succeeded; None if there are none."""
    decided = [result for result in window if result.status is not HealthStatus.UNKNOWN]
    if not decided:
        return None
    return 100.0 * sum(result.ok for result in decided) / len(decided)


def mean_response_time(window: Iterable[HealthCheckResult]) -> float | None:
    """Mean response time (seconds) of the answered checks; None if none answered.

    A failed check's time says how fast it failed, not how fast the service
    answers: a crash must not make a slow service look fast.
    """
    times = [result.response_time for result in window if result.ok]
    return sum(times) / len(times) if times else None


class ActiveAlerts:
    """The one record of the alerts raised and not yet resolved, by service then key."""

    def __init__(self) -> None:
        self._by_service: dict[str, dict[str, Alert]] = {}

    def apply(self, alert: Alert) -> None:
        """Record a raised alert, or forget the one a resolved notice resolves."""
        if alert.resolved:
            keyed = self._by_service.get(alert.service)
            if keyed is not None:
                keyed.pop(alert.key, None)
                if not keyed:
                    del self._by_service[alert.service]
        else:
            self._by_service.setdefault(alert.service, {})[alert.key] = alert

    def of(self, service: str) -> Mapping[str, Alert]:
        """The active alerts of ``service``, by key (read-only view)."""
        return self._by_service.get(service, _EMPTY)

    def all(self) -> list[Alert]:
        """Every active alert, oldest first."""
        alerts = [alert for keyed in self._by_service.values() for alert in keyed.values()]
        return sorted(alerts, key=lambda alert: alert.timestamp)


_EMPTY: Mapping[str, Alert] = {}


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
