"""Health check results: what every checker returns, with no driver imported.

:class:`HealthStatus` is how a service is doing, :class:`HealthCheckResult` one
check's outcome, :class:`HealthCheckError` how a probe fails with details, and
:class:`SupportsHealthCheck` what the monitor needs from a checker. Importing this
module imports neither httpx, nor redis, nor asyncpg.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ._validate import check_seconds

__all__ = [
    "DEGRADED",
    "HEALTHY",
    "UNHEALTHY",
    "UNKNOWN",
    "HealthCheckError",
    "HealthCheckResult",
    "HealthStatus",
    "SupportsHealthCheck",
    "error_text",
]


class HealthStatus(enum.StrEnum):
    """How a service is doing; the value is what reports and JSON show.

    Compares equal to its string: ``HealthStatus.HEALTHY == "healthy"``.
    """

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


HEALTHY = HealthStatus.HEALTHY
DEGRADED = HealthStatus.DEGRADED
UNHEALTHY = HealthStatus.UNHEALTHY
UNKNOWN = HealthStatus.UNKNOWN


@dataclass(frozen=True, slots=True)
class HealthCheckResult:
    """The outcome of one check of one service.

    ``response_time`` is in seconds, ``timestamp`` is wall-clock (``time.time()``)
    at the start of the check. ``error`` is set when the check failed; it never
    contains credentials.
    """

    service: str
    status: HealthStatus
    response_time: float = 0.0
    timestamp: float = field(default_factory=time.time)
    details: dict[str, object] = field(default_factory=dict)
    error: str | None = None

    def __post_init__(self) -> None:
        # Accept "healthy" as well as HealthStatus.HEALTHY; reject anything else early.
        object.__setattr__(self, "status", HealthStatus(self.status))
        response_time = check_seconds("response_time", self.response_time, allow_zero=True)
        object.__setattr__(self, "response_time", response_time)
        _check_timestamp(self.timestamp)
        if not isinstance(self.details, dict):
            object.__setattr__(self, "details", dict(self.details))

    @property
    def ok(self) -> bool:
        """True when the service answered correctly (healthy, or degraded but answering)."""
        return self.status in (HEALTHY, DEGRADED)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready copy."""
        return {
            "service": self.service,
            "status": self.status.value,
            "response_time": self.response_time,
            "timestamp": self.timestamp,
            "details": dict(self.details),
            "error": self.error,
        }


# The datetime range (years 1 to 9999): the health+json view writes "time" from it.
_EARLIEST, _LATEST = -62135596800.0, 253402300799.0


def _check_timestamp(value: object) -> None:
    """A wall-clock time in seconds that reports and health+json can show.

    A NaN, infinite, out-of-range or non-numeric timestamp from a checker of your own
    made ``get_health_json()`` raise (and the report invalid JSON) for every service.
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"'timestamp' must be a number of seconds: {value!r}")
    if not _EARLIEST <= value <= _LATEST:  # False for NaN too
        raise ValueError(f"'timestamp' must be a time between years 1 and 9999: {value!r}")


class HealthCheckError(RuntimeError):
    """Raised by a probe to fail its check with a message and extra details."""

    def __init__(self, message: str, *, details: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.details: dict[str, object] = dict(details or {})


@runtime_checkable
class SupportsHealthCheck(Protocol):
    """What the monitor needs from a checker: a name and an async check().

    Optional attributes it uses when present: ``timeout`` (seconds),
    ``component_type`` (for the health+json view), ``describe()`` (static details
    for results the monitor creates itself) and ``async aclose()``.
    """

    @property
    def name(self) -> str: ...

    async def check(self) -> HealthCheckResult: ...


def error_text(exc: BaseException) -> str:
    """An exception as a one-line error: ``"Type: message"`` (a probe's own message alone)."""
    message = str(exc)
    if isinstance(exc, HealthCheckError):
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
