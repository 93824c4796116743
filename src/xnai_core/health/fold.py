"""The monitor's fold, pure: one result in, the service's new state and what to announce out.

``fold(state, result, window, active, config, now)`` returns an :class:`Outcome`:
the new :class:`ServiceState` (status counters, outage flag, alert hysteresis), the
status change if any, whether the service just recovered from an outage, and the
alerts to raise or resolve. No clock (``now`` is given), no I/O, no task: the
monitor applies the outcome.

Alert hysteresis. The ``status`` alert follows the status (which has its own
hysteresis, :mod:`.hysteresis`). ``consecutive_failures`` is raised at its count
and resolved after ``success_threshold`` successes in a row. The window kinds
(``success_rate``, ``response_time``) are raised when the value crosses the
threshold and resolved only once it has been back past the clear threshold for
``clear_after`` results in a row; in between they stay as they are. So a service
hovering around its threshold pages once, not at every crossing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ._validate import check_int
from .alerts import Alert, AlertThresholds, Severity
from .hysteresis import Counters, StatusPolicy, step
from .result import HealthCheckResult, HealthStatus
from .window import ResultWindow

__all__ = ["FoldConfig", "Outcome", "ServiceState", "evaluate_alerts", "fold"]

HEALTHY = HealthStatus.HEALTHY
UNHEALTHY = HealthStatus.UNHEALTHY
UNKNOWN = HealthStatus.UNKNOWN

# What a condition says about one alert kind after a result.
_RAISE, _CLEAR, _HOLD = "raise", "clear", "hold"
_WINDOW_KINDS = ("success_rate", "response_time")


@dataclass(frozen=True, slots=True, kw_only=True)
class FoldConfig:
    """The rules of the fold: status policy, thresholds, window sizes."""

    policy: StatusPolicy = field(default_factory=StatusPolicy)
    thresholds: AlertThresholds = field(default_factory=AlertThresholds)
    min_samples: int = 1
    clear_after: int = 1

    def __post_init__(self) -> None:
        check_int("alert_min_samples", self.min_samples, 1)
        check_int("alert_clear_after", self.clear_after, 1)


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What the fold keeps per service between results."""

    counters: Counters = field(default_factory=Counters)
    in_outage: bool = False
    # Window alert kinds on their way to resolving: kind -> clear results in a row.
    clearing: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The fold's answer for one result."""

    state: ServiceState
    change: tuple[HealthStatus, HealthStatus] | None
    recovered: bool
    alerts: tuple[Alert, ...]


@dataclass(frozen=True, slots=True)
class _Verdict:
    kind: str
    severity: Severity
    verdict: str  # _RAISE, _CLEAR or _HOLD
    message: str
    details: dict[str, object]


def _verdicts(
    service: str,
    counters: Counters,
    window: ResultWindow,
    config: FoldConfig,
) -> list[_Verdict]:
    thresholds = config.thresholds
    last_error = window.last_error
    found = [
        _Verdict(
            "status",
            "critical",
            _RAISE if counters.status is UNHEALTHY else _CLEAR,
            f"{service} is unhealthy" + (f": {last_error}" if last_error else ""),
            {"status": counters.status.value},
        )
    ]
    enough = len(window) >= config.min_samples
    if thresholds.success_rate is not None and thresholds.success_rate_clear is not None:
        percent = window.success_percent()
        if not enough or percent is None:
            verdict = _HOLD
        elif percent < thresholds.success_rate:
            verdict = _RAISE
        elif percent >= thresholds.success_rate_clear:
            verdict = _CLEAR
        else:
            verdict = _HOLD
        found.append(
            _Verdict(
                "success_rate",
                "warning",
                verdict,
                f"{service} success rate {percent or 0.0:.1f}% < {thresholds.success_rate:g}%",
                {
                    "value": percent,
                    "unit": "percent",
                    "threshold": thresholds.success_rate,
                    "clear_threshold": thresholds.success_rate_clear,
                    "window": len(window),
                },
            )
        )
    if thresholds.response_time is not None and thresholds.response_time_clear is not None:
        mean = window.mean_response_time()
        if not enough or mean is None:
            verdict = _HOLD  # nothing answered: a crash says nothing about speed
        elif mean > thresholds.response_time:
            verdict = _RAISE
        elif mean <= thresholds.response_time_clear:
            verdict = _CLEAR
        else:
            verdict = _HOLD
        found.append(
            _Verdict(
                "response_time",
                "warning",
                verdict,
                f"{service} mean response time {mean or 0.0:.3f}s > {thresholds.response_time:g}s",
                {
                    "value": mean,
                    "unit": "seconds",
                    "threshold": thresholds.response_time,
                    "clear_threshold": thresholds.response_time_clear,
                    "window": len(window),
                    "answered": window.answered(),
                },
            )
        )
    if thresholds.consecutive_failures is not None:
        failures = counters.consecutive_failures
        if failures >= thresholds.consecutive_failures:
            verdict = _RAISE
        elif counters.consecutive_successes >= config.policy.success_threshold:
            verdict = _CLEAR
        else:
            verdict = _HOLD
        found.append(
            _Verdict(
                "consecutive_failures",
                "critical",
                verdict,
                f"{service} failed {failures} checks in a row",
                {"value": failures, "threshold": thresholds.consecutive_failures},
            )
        )
    return found


def evaluate_alerts(
    service: str,
    counters: Counters,
    window: ResultWindow,
    active: Mapping[str, Alert] | frozenset[str] | set[str],
    clearing: Mapping[str, int],
    config: FoldConfig,
    now: float,
) -> tuple[tuple[Alert, ...], dict[str, int]]:
    """The alerts to raise or resolve after a result, and the new clear streaks.

    ``active`` holds the keys of this service's raised alerts; ``clearing`` the
    clear streaks of its window kinds.
    """
    alerts: list[Alert] = []
    streaks: dict[str, int] = {}
    for found in _verdicts(service, counters, window, config):
        key = f"{service}:{found.kind}"
        raised = key in active
        if found.verdict == _RAISE:
            if not raised:
                alerts.append(
                    Alert(
                        key=key,
                        service=service,
                        kind=found.kind,
                        severity=found.severity,
                        message=found.message,
                        timestamp=now,
                        details=found.details,
                    )
                )
            continue
        if not raised:
            continue
        if found.kind in _WINDOW_KINDS:
            # Resolved after clear_after clear results in a row; a result between the
            # two thresholds starts the count again, one with nothing to judge (no
            # answered check in the window) leaves it as it is.
            if found.verdict == _CLEAR:
                streak = clearing.get(found.kind, 0) + 1
            elif found.details.get("value") is None:
                streak = clearing.get(found.kind, 0)
            else:
                streak = 0
            if streak < config.clear_after:
                if streak:
                    streaks[found.kind] = streak
                continue
        elif found.verdict != _CLEAR:
            continue
        alerts.append(
            Alert(
                key=key,
                service=service,
                kind=found.kind,
                severity="info",
                message=f"resolved: {service} {found.kind.replace('_', ' ')} is back",
                resolved=True,
                timestamp=now,
                details=found.details,
            )
        )
    return tuple(alerts), streaks


def fold(
    state: ServiceState,
    result: HealthCheckResult,
    window: ResultWindow,
    active: Mapping[str, Alert],
    config: FoldConfig,
    now: float,
) -> Outcome:
    """Fold one ``result`` (already the last of ``window``) into ``state``."""
    before = state.counters
    after = step(before, result.status, config.policy)
    change = None if after.status is before.status else (before.status, after.status)
    in_outage = state.in_outage
    recovered = False
    if change is not None:
        if after.status is UNHEALTHY:
            in_outage = True
        elif after.status is HEALTHY and in_outage:
            in_outage, recovered = False, True
    alerts, clearing = evaluate_alerts(
        result.service, after, window, active, state.clearing, config, now
    )
    return Outcome(ServiceState(after, in_outage, clearing), change, recovered, alerts)
