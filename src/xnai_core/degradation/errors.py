"""Errors of graceful degradation.

Exception tree::

    Exception
    ├── ExceptionGroup
    │   └── AllStrategiesFailedError   raised when the primary call and every strategy
    │                                  of a service failed; carries all their errors
    ├── LookupError
    │   └── StrategyDeclinedError      raised by a strategy that has nothing to offer for
    │                                  this call (a cache miss); lands in the group above
    ├── ConnectionError
    │   └── CacheClearError            raised by RedisCache.clear() when Redis fails, hangs
    │                                  or is unreachable before every key was removed
    └── TimeoutError
        └── ServiceTimeoutError        raised when the primary call outlives the service's
                                       timeout; it triggers the strategies like any failure
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self


class StrategyDeclinedError(LookupError):
    """Raised by a strategy that has no answer for this call, such as a cache miss."""


class CacheClearError(ConnectionError):
    """``RedisCache.clear()`` could not finish: Redis failed, hung past ``op_timeout`` on a
    round trip, or could not be reached. Entries may remain under ``prefix``.

    ``removed`` is how many keys were removed before it stopped; the Redis error is
    the ``__cause__``.
    """

    def __init__(self, prefix: str, removed: int, reason: str) -> None:
        self.prefix = prefix
        self.removed = removed
        self.reason = reason
        super().__init__(
            f"clearing the cache under {prefix!r} stopped after {removed} keys: {reason}"
        )

    def __reduce__(self) -> tuple[type[CacheClearError], tuple[str, int, str]]:
        return (type(self), (self.prefix, self.removed, self.reason))


class ServiceTimeoutError(TimeoutError):
    """Raised when a service's primary call runs past the manager's timeout for it."""

    def __init__(self, service_name: str, timeout: float) -> None:
        self.service_name = service_name
        self.timeout = timeout
        super().__init__(f"service {service_name!r} timed out after {timeout:g}s")

    def __reduce__(self) -> tuple[type[ServiceTimeoutError], tuple[str, float]]:
        return (type(self), (self.service_name, self.timeout))


class AllStrategiesFailedError(ExceptionGroup[Exception]):
    """Raised when a service's primary call and all of its strategies failed.

    An ``ExceptionGroup`` whose first exception is the primary failure, followed
    by each strategy's failure in the order the strategies were tried, so
    ``except* ConnectionError`` matches whichever of them was one. The same
    errors are attached by role: ``primary_error``, and ``strategy_errors`` as
    ``(strategy name, exception)`` pairs. ``split()`` and ``subgroup()`` return
    plain ``ExceptionGroup``s, since a part may lack the primary error.
    """

    service_name: str
    primary_error: Exception
    strategy_errors: tuple[tuple[str, Exception], ...]

    def __new__(
        cls,
        service_name: str,
        primary_error: Exception,
        strategy_errors: Sequence[tuple[str, Exception]] = (),
    ) -> Self:
        failures = tuple(strategy_errors)
        self = super().__new__(
            cls,
            _message(service_name, primary_error, failures),
            [primary_error, *(error for _, error in failures)],
        )
        self.service_name = service_name
        self.primary_error = primary_error
        self.strategy_errors = failures
        return self

    def __init__(
        self,
        service_name: str,
        primary_error: Exception,
        strategy_errors: Sequence[tuple[str, Exception]] = (),
    ) -> None:
        # BaseExceptionGroup reads its message and members in __new__; __init__
        # only has to accept our signature.
        super().__init__(self.message, self.exceptions)

    def __reduce__(
        self,
    ) -> tuple[
        type[AllStrategiesFailedError],
        tuple[str, Exception, tuple[tuple[str, Exception], ...]],
    ]:
        return (type(self), (self.service_name, self.primary_error, self.strategy_errors))


def _message(
    service_name: str, primary_error: Exception, failures: tuple[tuple[str, Exception], ...]
) -> str:
    primary = type(primary_error).__name__
    if not failures:
        return (
            f"service {service_name!r}: the primary call failed ({primary}) "
            "and no strategy offers a fallback"
        )
    tried = ", ".join(f"{name}: {type(error).__name__}" for name, error in failures)
    count = len(failures)
    noun = "strategy" if count == 1 else "strategies"
    return (
        f"service {service_name!r}: the primary call failed ({primary}) "
        f"and {count} {noun} failed ({tried})"
    )
