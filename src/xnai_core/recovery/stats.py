"""Records of recovery attempts and the statistics built from them."""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from .._redact import redact
from .rule import RecoveryActionType


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended."""

    PENDING = "pending"  # the action ran (or runs); the grace period has not judged it yet
    SUCCEEDED = "succeeded"  # the service was seen healthy within the grace period
    FAILED = "failed"  # the action failed, or the service stayed sick past the grace period
    ESCALATED = "escalated"  # manual intervention: a critical alert, then the latch
    DRY_RUN = "dry_run"  # dry_run mode: recorded, not run


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryAttempt:
    """One action taken (or, in dry-run mode, one that would have been)."""

    service: str
    action: RecoveryActionType
    attempt: int
    """The n-th try of this rule since the service was last stable."""
    timestamp: float
    """Wall-clock time (``time.time()``) when the action started."""
    duration: float
    """Seconds the action itself ran."""
    outcome: AttemptOutcome
    detail: str
    reason: str | None = None
    """Why it failed or escalated; None on success."""
    recovery_time: float | None = None
    """Seconds from the action's start until the service was seen healthy."""
    exit_code: int | None = None
    output_tail: str | None = None
    timed_out: bool = False
    keys_deleted: int | None = None

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view (plain strings, numbers and None)."""
        return {
            "service": self.service,
            "action": self.action.value,
            "attempt": self.attempt,
            "timestamp": self.timestamp,
            "duration": round(self.duration, 6),
            "outcome": self.outcome.value,
            "detail": redact(self.detail),
            "reason": None if self.reason is None else redact(self.reason),
            "recovery_time": None if self.recovery_time is None else round(self.recovery_time, 6),
            "exit_code": self.exit_code,
            "output_tail": None if self.output_tail is None else redact(self.output_tail),
            "timed_out": self.timed_out,
            "keys_deleted": self.keys_deleted,
        }


class StatsBook:
    """Lifetime totals over all services, plus a bounded list of recent failures.

    An attempt counts when it is made (:meth:`started`, outcome ``pending``) and its
    outcome when the grace period has judged it (:meth:`finished`). Totals are
    counters, not sums over a history, so memory stays flat however long the process
    runs. Dry-run records are kept out of the totals: they did not happen.
    """

    def __init__(self, history_size: int) -> None:
        self.on_judged: Callable[[RecoveryAttempt], None] | None = None
        """Called with every attempt once its outcome is known (the manager's events)."""
        self.total_attempts = 0
        self.pending = 0
        self.successes = 0
        self.recovery_time_sum = 0.0
        self.by_type: Counter[RecoveryActionType] = Counter()
        self.recent_failures: deque[RecoveryAttempt] = deque(maxlen=history_size)

    def started(self, attempt: RecoveryAttempt) -> None:
        """An attempt was made: counted now; a pending one waits for :meth:`finished`."""
        if attempt.outcome is AttemptOutcome.DRY_RUN:
            return
        self.total_attempts += 1
        self.by_type[attempt.action] += 1
        if attempt.outcome is AttemptOutcome.PENDING:
            self.pending += 1
        else:
            self._judged(attempt)

    def finished(self, attempt: RecoveryAttempt) -> None:
        """The outcome of an attempt counted by :meth:`started` as pending."""
        if attempt.outcome in (AttemptOutcome.DRY_RUN, AttemptOutcome.PENDING):
            return
        self.pending = max(0, self.pending - 1)
        self._judged(attempt)

    def _judged(self, attempt: RecoveryAttempt) -> None:
        if self.on_judged is not None:
            self.on_judged(attempt)
        if attempt.outcome is AttemptOutcome.SUCCEEDED:
            self.successes += 1
            self.recovery_time_sum += attempt.recovery_time or 0.0
        else:
            self.recent_failures.append(attempt)

    def summary(self) -> dict[str, object]:
        """The seed's structure: totals, rate, mean recovery time, counts by action type.

        ``success_fraction`` (0..1) is over the attempts already judged: a pending one is
        neither. ``success_rate`` is the same fraction under the seed's name for it; the
        health monitor's ``success_rate`` (``alert_thresholds``) is a percent, hence the
        unit in the first name.
        """
        total = self.total_attempts
        judged = total - self.pending
        fraction = self.successes / judged if judged else 0.0
        return {
            "total_attempts": total,
            "success_rate": fraction,
            "success_fraction": fraction,
            "average_recovery_time": (
                self.recovery_time_sum / self.successes if self.successes else 0.0
            ),
            "actions_by_type": {
                action.value: self.by_type[action] for action in RecoveryActionType
            },
            "recent_failures": [attempt.as_dict() for attempt in self.recent_failures],
        }
