"""A service's recent results, kept where the garbage collector does not look.

A monitor of 500 services keeps 50,000 results at the default ``history_size``. Kept as
objects, every full collection walks them all, and its pause delays every schedule of
the process: with 500 HTTP checks a second, full collections over the kept results took
up to 175 ms and put the schedule's p99 lag at 150-270 ms. Kept as flat tuples of
strings and numbers, which CPython stops tracking at their first collection, they cost
the collector nothing; a result is rebuilt, equal to the one recorded, when it is read.
"""

from __future__ import annotations

from collections import deque
from itertools import chain
from typing import Any, cast

from .result import HealthCheckResult, HealthStatus

__all__ = ["ResultHistory"]

# service, status value, response time, timestamp, error, then the details' keys and
# values in turn. Flat on purpose: CPython untracks a tuple only when none of its items
# can hold references, and a nested dict (or a nested tuple it has not untracked yet)
# could; for the details checkers make (strings and numbers) the entry is untracked.
_Entry = tuple[object, ...]
_FIELDS = 5


class ResultHistory:
    """The last ``size`` results of one service, oldest first."""

    __slots__ = ("_entries",)

    def __init__(self, size: int) -> None:
        self._entries: deque[_Entry] = deque(maxlen=size)

    def append(self, result: HealthCheckResult) -> None:
        """Keep ``result``, dropping the oldest when full."""
        self._entries.append(
            (
                result.service,
                result.status.value,
                result.response_time,
                result.timestamp,
                result.error,
                *chain.from_iterable(result.details.items()),
            )
        )

    def __len__(self) -> int:
        return len(self._entries)

    def results(self) -> tuple[HealthCheckResult, ...]:
        """The kept results, oldest first."""
        return tuple(_rebuild(entry) for entry in self._entries)


def _rebuild(entry: _Entry) -> HealthCheckResult:
    service, status, seconds, timestamp, error = entry[:_FIELDS]
    pairs = entry[_FIELDS:]
    # Every item back as it was kept: a detail's key may be any hashable (a checker's
    # ``{1: ...}`` must not come back as ``{"1": ...}``, nor lose a colliding ``"1"``).
    details: dict[Any, object] = dict(zip(pairs[::2], pairs[1::2], strict=True))
    return HealthCheckResult(
        service=cast(str, service),
        status=HealthStatus(cast(str, status)),
        response_time=cast(float, seconds),
        timestamp=cast(float, timestamp),
        details=details,
        error=cast("str | None", error),
    )
