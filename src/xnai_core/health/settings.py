"""The monitor's settings, validated once at construction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .._validation import MAX_HISTORY, MAX_THREADS
from ._validate import check_int, check_seconds
from .alerts import AlertThresholds
from .fold import FoldConfig
from .hysteresis import StatusPolicy

__all__ = ["MonitorSettings"]


def _optional_seconds(field: str, value: float | None) -> float | None:
    return None if value is None else check_seconds(field, value)


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """Everything ``HealthMonitor(...)`` takes besides hooks, clock and jitter."""

    check_interval: float
    check_timeout: float | None
    history_size: int
    alert_window: int
    fold: FoldConfig
    alert_handler_timeout: float | None
    callback_timeout: float | None
    callback_workers: int

    @classmethod
    def parse(
        cls,
        *,
        check_interval: float,
        alert_thresholds: Mapping[str, float] | None,
        alert_clear_thresholds: Mapping[str, float] | None,
        failure_threshold: int,
        success_threshold: int,
        check_timeout: float | None,
        history_size: int,
        alert_window: int,
        alert_min_samples: int | None,
        alert_clear_after: int | None,
        alert_handler_timeout: float | None,
        callback_timeout: float | None,
        callback_workers: int,
    ) -> MonitorSettings:
        """Validate the constructor's arguments; errors name the field, rule and value."""
        interval = check_seconds("check_interval", check_interval)
        timeout = _optional_seconds("check_timeout", check_timeout)
        if timeout is not None and timeout > interval:
            raise ValueError(
                f"'check_timeout' must be <= check_interval ({interval:g}): {check_timeout!r}"
            )
        history = check_int("history_size", history_size, 1, maximum=MAX_HISTORY)
        window = check_int("alert_window", alert_window, 1)
        if window > history:
            raise ValueError(
                f"'alert_window' must be <= history_size ({history}): {alert_window!r}"
            )
        min_samples = window
        if alert_min_samples is not None:
            min_samples = check_int("alert_min_samples", alert_min_samples, 1)
            if min_samples > window:
                raise ValueError(
                    f"'alert_min_samples' must be <= alert_window ({window}): {alert_min_samples!r}"
                )
        clear_after = (
            window
            if alert_clear_after is None
            else check_int("alert_clear_after", alert_clear_after, 1)
        )
        return cls(
            check_interval=interval,
            check_timeout=timeout,
            history_size=history,
            alert_window=window,
            fold=FoldConfig(
                policy=StatusPolicy(
                    failure_threshold=failure_threshold, success_threshold=success_threshold
                ),
                thresholds=AlertThresholds.from_mapping(alert_thresholds, alert_clear_thresholds),
                min_samples=min_samples,
                clear_after=clear_after,
            ),
            alert_handler_timeout=_optional_seconds("alert_handler_timeout", alert_handler_timeout),
            callback_timeout=_optional_seconds("callback_timeout", callback_timeout),
            callback_workers=check_int(
                "callback_workers", callback_workers, 1, maximum=MAX_THREADS
            ),
        )
