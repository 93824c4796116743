"""One run of one checker: bounded by a timeout, every failure turned into a result.

The monitor's only I/O step. ``run_check`` never raises (except on cancellation):
a timeout is an unhealthy ``"timed out after Xs"`` result, any other error an
unhealthy result carrying the error's text with the checker's secrets scrubbed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import cast

from .checker import HealthChecker
from .redact import MAX_ERROR_LENGTH, redact_data, shown_error
from .result import HealthCheckResult, HealthStatus, SupportsHealthCheck, error_text

__all__ = ["checker_timeout", "close_checker", "failure", "run_check"]


def checker_timeout(checker: object) -> float | None:
    """The checker's own ``timeout`` (seconds), if it has a usable one."""
    value = getattr(checker, "timeout", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    return None


def _secrets_of(checker: object) -> tuple[str, ...]:
    secrets = getattr(checker, "secrets", None)
    if callable(secrets):
        value = secrets()
        if isinstance(value, tuple):
            return tuple(str(item) for item in value)
    return ()


def _describe(checker: object) -> dict[str, object]:
    describe = getattr(checker, "describe", None)
    if callable(describe):
        value = describe()
        if isinstance(value, dict):
            return dict(value)
    return {}


def failure(
    checker: object, name: str, timestamp: float, started: float, error: str
) -> HealthCheckResult:
    """An unhealthy result for ``name``, timed from ``started`` (``time.perf_counter()``)."""
    return HealthCheckResult(
        service=name,
        status=HealthStatus.UNHEALTHY,
        response_time=time.perf_counter() - started,
        timestamp=timestamp,
        details=_describe(checker),
        error=error,
    )


async def run_check(
    checker: SupportsHealthCheck, name: str, timeout: float, clock: Callable[[], float]
) -> HealthCheckResult:
    """``checker.check()`` bounded by ``timeout``, attributed to ``name``; never raises."""
    timestamp = clock()
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout) as deadline:
            result = await checker.check()
        if not isinstance(result, HealthCheckResult):
            raise TypeError(f"check() must return a HealthCheckResult: {type(result).__name__}")
        if result.service != name:
            result = replace(result, service=name)
        if result.error is not None:
            # A checker of the user's own returns its error as it likes: masked here,
            # as every error is, before it reaches a report, a log or a page.
            error = shown_error(str(result.error), _secrets_of(checker))
            if error != result.error:
                result = replace(result, error=error)
        if result.details and not isinstance(checker, HealthChecker):
            # ... and its details (a HealthChecker masks what its probe reports itself).
            masked = redact_data(result.details, _secrets_of(checker), limit=MAX_ERROR_LENGTH)
            details = cast(dict[str, object], masked)
            if details is not result.details:
                result = replace(result, details=details)
    except TimeoutError as exc:
        if deadline.expired():
            error = f"timed out after {timeout:g}s"
        else:
            error = shown_error(error_text(exc), _secrets_of(checker))
        result = failure(checker, name, timestamp, started, error)
    except Exception as exc:
        result = failure(
            checker, name, timestamp, started, shown_error(error_text(exc), _secrets_of(checker))
        )
    return result


async def close_checker(checker: object, name: str, log: logging.Logger) -> None:
    """Call the checker's ``aclose()`` if it has one; a failure is logged."""
    aclose = getattr(checker, "aclose", None)
    if not callable(aclose):
        return
    try:
        outcome = aclose()
        if inspect.isawaitable(outcome):
            await outcome
    except Exception:
        log.exception("closing a health checker failed", extra={"xnai.service": name})
