"""HealthChecker: the base class every built-in checker extends.

A checker answers one question, "how is this service right now?", with a
:class:`~.result.HealthCheckResult`. Subclasses implement :meth:`HealthChecker.probe`
(return details on success, raise on failure) and inherit timing, error capture,
the slow-means-degraded rule and credential scrubbing.

Checkers never raise from ``check()``: a failure is an unhealthy result that
carries the error text. ``check()`` bounds the probe by the checker's own
``timeout`` (a timeout is an unhealthy "timed out after Xs" result); the monitor
further caps it at its interval.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Mapping
from typing import cast

from ._validate import check_name, check_seconds
from .redact import MAX_ERROR_LENGTH, redact_data, shown_error
from .result import DEGRADED, HEALTHY, UNHEALTHY, HealthCheckError, HealthCheckResult, error_text

__all__ = ["DEFAULT_TIMEOUT", "USER_AGENT", "HealthChecker"]

DEFAULT_TIMEOUT = 5.0
USER_AGENT = "xnai-core-health/0.1"


class HealthChecker(abc.ABC):
    """Base class for checkers: implement :meth:`probe`, get the rest.

    ``timeout`` bounds one check: :meth:`check` cancels a probe that outlives it
    and returns an unhealthy "timed out after Xs" result (the monitor further
    caps it at its interval).
    ``degraded_threshold``: a correct answer slower than this many seconds is
    ``degraded`` rather than ``healthy``; ``None`` disables the rule.
    """

    # health+json componentType: "component", or "datastore" for databases and caches.
    component_type: str = "component"

    def __init__(
        self,
        name: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        degraded_threshold: float | None = None,
    ) -> None:
        self._name = check_name(name)
        self.timeout = check_seconds("timeout", timeout)
        self.degraded_threshold = (
            None
            if degraded_threshold is None
            else check_seconds("degraded_threshold", degraded_threshold)
        )

    @property
    def name(self) -> str:
        """The service this checker watches; unique within a monitor."""
        return self._name

    @abc.abstractmethod
    async def probe(self) -> Mapping[str, object] | HealthCheckResult:
        """Look at the service once.

        Return details (a mapping) when it is fine, or a full
        :class:`HealthCheckResult` to choose the status yourself. Raise to fail:
        :class:`HealthCheckError` carries a message and details; any other
        exception becomes ``"<ExceptionType>: <message>"``.
        """

    def describe(self) -> dict[str, object]:
        """Static, credential-free facts put into every result's details."""
        return {}

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in a result (passwords, tokens)."""
        return ()

    async def aclose(self) -> None:  # noqa: B027  (optional hook, not abstract)
        """Release pooled connections; the checker reopens them when used again."""

    async def check(self) -> HealthCheckResult:
        """Run :meth:`probe`, timed and bounded by ``timeout``; never raises.

        (Except on cancellation, which propagates.)
        """
        timestamp = time.time()
        started = time.perf_counter()
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                outcome = await self.probe()
        except Exception as exc:
            extra = self._masked(exc.details) if isinstance(exc, HealthCheckError) else {}
            if isinstance(exc, TimeoutError) and deadline.expired():
                failure = f"timed out after {self.timeout:g}s"
            else:
                failure = shown_error(error_text(exc), self.secrets())
            return HealthCheckResult(
                service=self._name,
                status=UNHEALTHY,
                response_time=time.perf_counter() - started,
                timestamp=timestamp,
                details={**self.describe(), **extra},
                error=failure,
            )
        elapsed = time.perf_counter() - started
        if isinstance(outcome, HealthCheckResult):
            response_time = outcome.response_time if outcome.response_time > 0 else elapsed
            status = outcome.status
            details = {**self.describe(), **self._masked(outcome.details)}
            error = None if outcome.error is None else shown_error(outcome.error, self.secrets())
        else:
            response_time, status, error = elapsed, HEALTHY, None
            details = {**self.describe(), **self._masked(outcome)}
        if status is HEALTHY and self._is_slow(response_time):
            status = DEGRADED
            details["degraded_reason"] = (
                f"response time {response_time:.3f}s > {self.degraded_threshold:g}s"
            )
        return HealthCheckResult(
            service=self._name,
            status=status,
            response_time=response_time,
            timestamp=timestamp,
            details=details,
            error=error,
        )

    def _masked(self, details: Mapping[str, object]) -> dict[str, object]:
        # What a probe reports is masked as its error is: a check of one's own readily
        # reports the endpoint it checked (a DSN, a URL with its token) or a config it read.
        masked = redact_data(dict(details), self.secrets(), limit=MAX_ERROR_LENGTH)
        return cast(dict[str, object], masked)

    def _is_slow(self, response_time: float) -> bool:
        return self.degraded_threshold is not None and response_time > self.degraded_threshold

    def __repr__(self) -> str:
        facts = ", ".join(f"{key}={value!r}" for key, value in self.describe().items())
        return f"{type(self).__name__}(name={self._name!r}{', ' if facts else ''}{facts})"
