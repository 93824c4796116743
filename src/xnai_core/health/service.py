"""ServiceHealth: what the monitor knows about one service, as an immutable snapshot."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .hysteresis import Counters
from .report import ServiceReport
from .result import HealthCheckResult, HealthStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceHealth:
    """One service's status, streaks, totals and last result.

    Times are wall-clock seconds (``time.time()``); ``None`` until known.
    ``success_percent`` is the percent (0-100) of successful checks over the
    monitor's alert window (``success_rate`` reads the same value, under the name
    the seed's ``alert_thresholds`` use). ``interval`` is the seconds between its
    checks; ``timeout`` bounds one check (the checker's own timeout and the monitor's
    ``check_timeout``, never more than ``interval``).
    """

    name: str
    status: HealthStatus = HealthStatus.UNKNOWN
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    total_checks: int = 0
    total_failures: int = 0
    last_check: float | None = None
    response_time: float | None = None
    last_success: float | None = None
    last_failure: float | None = None
    success_percent: float | None = None
    last_result: HealthCheckResult | None = None
    component_type: str = "component"
    interval: float = 30.0
    timeout: float = 30.0

    def after(
        self, result: HealthCheckResult, counters: Counters, success_percent: float | None
    ) -> ServiceHealth:
        """This snapshot updated by one recorded ``result`` (pure)."""
        decided = result.status is not HealthStatus.UNKNOWN
        failed = decided and not result.ok
        return replace(
            self,
            status=counters.status,
            consecutive_failures=counters.consecutive_failures,
            consecutive_successes=counters.consecutive_successes,
            total_checks=self.total_checks + 1,
            total_failures=self.total_failures + failed,
            last_check=result.timestamp,
            response_time=result.response_time,
            last_success=result.timestamp if result.ok else self.last_success,
            last_failure=result.timestamp if failed else self.last_failure,
            success_percent=success_percent,
            last_result=result,
        )

    @property
    def success_rate(self) -> float | None:
        """The same as :attr:`success_percent`: a percent, like ``alert_thresholds``."""
        return self.success_percent

    def report_entry(self) -> ServiceReport:
        """The seed's per-service report entry, exactly its seven keys.

        ``details`` holds the last result's details, plus ``error`` when it failed.
        """
        details: dict[str, object] = {}
        if self.last_result is not None:
            details.update(self.last_result.details)
            if self.last_result.error is not None:
                details["error"] = self.last_result.error
        return {
            "status": self.status.value,
            "last_check": self.last_check,
            "response_time": self.response_time,
            "consecutive_failures": self.consecutive_failures,
            "consecutive_successes": self.consecutive_successes,
            "total_checks": self.total_checks,
            "details": details,
        }
