"""Status hysteresis, pure: one blip must not flip a service's status.

``step(counters, outcome, policy)`` returns the new counters; no clock, no I/O.

- ``unknown`` until the first result.
- A failure (an ``unhealthy`` result) resets the success streak. After
  ``failure_threshold`` failures in a row the service is ``unhealthy``; fewer
  make a healthy (or unknown) service ``degraded``, and an unhealthy one stays so.
- A success (``healthy``, or ``degraded`` = answering but slow) resets the
  failure streak. A service that is ``unhealthy`` or ``degraded`` takes the
  result's status only after ``success_threshold`` successes in a row; an
  ``unknown`` or ``healthy`` one takes it at once (slow answers show at once).
- An ``unknown`` result (a check that could not decide) changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._validate import check_int
from .result import HealthStatus

HEALTHY = HealthStatus.HEALTHY
DEGRADED = HealthStatus.DEGRADED
UNHEALTHY = HealthStatus.UNHEALTHY
UNKNOWN = HealthStatus.UNKNOWN


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusPolicy:
    """How many results in a row it takes to change a status."""

    failure_threshold: int = 3
    success_threshold: int = 2

    def __post_init__(self) -> None:
        check_int("failure_threshold", self.failure_threshold, 1)
        check_int("success_threshold", self.success_threshold, 1)


@dataclass(frozen=True, slots=True)
class Counters:
    """A service's status and its current streaks."""

    status: HealthStatus = UNKNOWN
    consecutive_failures: int = 0
    consecutive_successes: int = 0


def step(counters: Counters, outcome: HealthStatus, policy: StatusPolicy) -> Counters:
    """The counters after one result whose status is ``outcome``."""
    if outcome is UNKNOWN:
        return counters
    if outcome is UNHEALTHY:
        failures = counters.consecutive_failures + 1
        if failures >= policy.failure_threshold or counters.status is UNHEALTHY:
            status = UNHEALTHY
        else:
            status = DEGRADED
        return Counters(status, failures, 0)
    successes = counters.consecutive_successes + 1
    if counters.status in (UNKNOWN, HEALTHY) or successes >= policy.success_threshold:
        status = outcome
    else:
        status = counters.status
    return Counters(status, 0, successes)
