"""The alert window: what the window alerts judge of a service's last results.

Each entry keeps only what the alerts read (status, answered or not, response time,
error), as a tuple of strings and numbers. CPython stops tracking such tuples at their
first collection, so a monitor of hundreds of services does not hand the garbage
collector a kept object per check: results held for a whole window outlived the young
collections, and the full collections they fed paused every schedule of the process.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from .result import HealthCheckResult, HealthStatus

__all__ = ["ResultWindow"]

_UNKNOWN = HealthStatus.UNKNOWN.value


class ResultWindow:
    """The outcomes of a service's last ``size`` results, oldest first."""

    __slots__ = ("_entries",)

    def __init__(self, size: int) -> None:
        # (status value, answered, response time, error)
        self._entries: deque[tuple[str, bool, float, str | None]] = deque(maxlen=size)

    @classmethod
    def of(cls, results: Iterable[HealthCheckResult], size: int | None = None) -> ResultWindow:
        """A window holding ``results`` (the last ``size`` of them, if given)."""
        listed = list(results)
        window = cls(len(listed) if size is None else size)
        for result in listed:
            window.append(result)
        return window

    def append(self, result: HealthCheckResult) -> None:
        """Add ``result``, dropping the oldest when full."""
        self._entries.append((result.status.value, result.ok, result.response_time, result.error))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def last_error(self) -> str | None:
        """The error of the newest result (None when it succeeded or there is none)."""
        return self._entries[-1][3] if self._entries else None

    def answered(self) -> int:
        """How many results answered (healthy or degraded)."""
        return sum(1 for entry in self._entries if entry[1])

    def success_percent(self) -> float | None:
        """Percent (0-100) of decisive results that succeeded; None if there are none."""
        decided = sum(1 for entry in self._entries if entry[0] != _UNKNOWN)
        if not decided:
            return None
        return 100.0 * self.answered() / decided

    def mean_response_time(self) -> float | None:
        """Mean response time (seconds) of the answered checks; None if none answered.

        A failed check's time says how fast it failed, not how fast the service
        answers: a crash must not make a slow service look fast.
        """
        answered = self.answered()
        if not answered:
            return None
        return sum(entry[2] for entry in self._entries if entry[1]) / answered
