"""What the manager knows about one service: its rules' counters, status, phase, tallies."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from ..health.result import HealthStatus
from .actions import ActionOutcome
from .decide import SlotView
from .rule import RecoveryActionType, RecoveryRule
from .stats import AttemptOutcome, RecoveryAttempt

logger = logging.getLogger("xnai_core.recovery")

HEALTHY = HealthStatus.HEALTHY
UNHEALTHY = HealthStatus.UNHEALTHY
ANSWERING = frozenset({HEALTHY, HealthStatus.DEGRADED})  # up: what the stable period counts
MANUAL = RecoveryActionType.MANUAL_INTERVENTION


def as_status(status: object) -> HealthStatus:
    """A status as a :class:`HealthStatus`: the monitor's own pass through, and so do their
    strings (``"healthy"``); anything else is ``UNKNOWN``, on which recovery never acts."""
    value = getattr(status, "value", status)
    try:
        return HealthStatus(str(value))
    except ValueError:
        return HealthStatus.UNKNOWN


class RecoveryPhase(enum.StrEnum):
    """Where a service's recovery stands (the ``state`` in its statistics)."""

    IDLE = "idle"
    WAITING = "waiting"  # for cooldown, backoff or a rule's failure threshold
    ACTING = "acting"
    VERIFYING = "verifying"  # action done; waiting to see the service healthy
    ESCALATED = "escalated"  # latched until reset()


@dataclass(slots=True, eq=False)
class RuleSlot:
    """A rule and its counters since the service was last stable."""

    rule: RecoveryRule
    tries: int = 0
    retry_at: float | None = None  # monotonic: the backoff ends here
    next_delay: float = 0.0

    @property
    def exhausted(self) -> bool:
        return self.rule.action_type is not MANUAL and self.tries >= self.rule.max_attempts

    def clear(self) -> None:
        self.tries, self.retry_at, self.next_delay = 0, None, 0.0

    def view(self) -> SlotView:
        rule = self.rule
        return SlotView(
            action=rule.action_type,
            tries=self.tries,
            max_attempts=rule.max_attempts,
            failure_threshold=rule.failure_threshold,
            retry_at=self.retry_at,
        )


@dataclass(slots=True, eq=False)
class Verifying:
    """An attempt whose action ran and whose grace period runs: judged by the runner."""

    slot: RuleSlot
    started: float  # monotonic: the action's start
    deadline: float  # monotonic: the grace period's end
    grace: float
    attempt: RecoveryAttempt  # the pending record, completed when judged
    outcome: ActionOutcome  # what the action itself did
    duration: float  # seconds the action ran
    unseen: bool = False  # the monitor was stopped for part of the grace period


class ServiceState:
    """One service: rules cheapest first, last known status, the episode task, tallies.

    Times named ``*_since``/``*_until``/``retry_at`` are on the manager's monotonic
    clock; ``escalated_at`` is wall-clock, for people. ``up_since``: since when the
    service has answered (healthy, or degraded: answering slowly); the stable period
    counts from it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.slots: list[RuleSlot] = []
        self.status = HealthStatus.UNKNOWN
        self.healthy_since: float | None = None
        self.up_since: float | None = None
        self.verifying: Verifying | None = None
        self.peer_until = -math.inf  # a peer's turn or settling action: not before this
        self.peer_settling = False  # ... and it is a settling action: our view may lag
        # A peer's settling action as last seen in Redis, on our clock: honoured even if
        # Redis then loses the record (flushed, restarted empty), so we never repeat it.
        self.peer_settled_until = -math.inf
        # A peer's lease as last seen in Redis, on our clock: while Redis is away (a
        # failover), we wait for it rather than act alone beside a peer still at work.
        self.peer_lease_until = -math.inf
        self.pending = 0  # attempts made and not yet judged
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.phase = RecoveryPhase.IDLE
        self.cooldown_until = -math.inf
        self.escalated_at: float | None = None
        self.escalation_reason: str | None = None
        self.last_attempt: RecoveryAttempt | None = None
        self.episodes = 0
        self.recovered_episodes = 0
        self.time_to_recovery_sum = 0.0
        self.attempts = 0
        self.successes = 0
        self.escalations = 0
        self.deferred_by_cooldown = 0
        self.suppressed_while_escalated = 0
        self.dry_run_actions = 0
        self.deferred_to_peer = 0
        self.holds_lease = False
        self.waited_for_peer = False  # in the current episode
        # With a coordinator: whether the latch is known to be in Redis, and the id of
        # the last reset Redis held when it was (only a different id is a reset).
        self.latch_shared = False
        self.latch_reset_seen: str | None = None
        self.latch_task: asyncio.Task[None] | None = None  # re-writes a latch Redis missed

    @property
    def escalated(self) -> bool:
        return self.escalated_at is not None

    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def add(self, rule: RecoveryRule) -> None:
        """Insert ``rule`` after every rule of the same or a cheaper action."""
        cost = rule.action_type.cost
        index = sum(1 for slot in self.slots if slot.rule.action_type.cost <= cost)
        self.slots.insert(index, RuleSlot(rule))

    def slot_views(self) -> tuple[SlotView, ...]:
        return tuple(slot.view() for slot in self.slots)

    def note_status(self, status: HealthStatus, now: float) -> None:
        """Take a new status; wake the episode if it changed."""
        if status == self.status:
            return
        if status in ANSWERING:
            if self.up_since is None:
                self.up_since = now
        elif self.up_since is not None:
            self.apply_stable_reset(now)
            self.up_since = None
        if status == HEALTHY:
            self.healthy_since = now
        elif self.status == HEALTHY:
            self.healthy_since = None
        self.status = status
        self.changed.set()

    def apply_stable_reset(self, now: float) -> None:
        """Forget a rule's attempts once the service has answered for its stable period.

        Degraded counts: a service that came back answering slowly is up, not crash
        looping, and its counters must not carry over to an outage months later.
        """
        if self.status not in ANSWERING or self.up_since is None:
            return
        up_for = now - self.up_since
        for slot in self.slots:
            if slot.tries and up_for >= slot.rule.stable_period:
                logger.info(
                    "%s up for %.1fs: %s counters reset",
                    self.name,
                    up_for,
                    slot.rule.action_type.value,
                    extra={"service": self.name},
                )
                slot.clear()

    def reset(self) -> None:
        """An operator's reset: no latch, no counters, no cooldown."""
        self.escalated_at = None
        self.escalation_reason = None
        self.latch_shared = False
        self.latch_reset_seen = None
        if self.latch_task is not None:
            self.latch_task.cancel()
            self.latch_task = None
        self.cooldown_until = -math.inf
        for slot in self.slots:
            slot.clear()
        if self.phase is RecoveryPhase.ESCALATED:
            self.phase = RecoveryPhase.IDLE

    def started(self, attempt: RecoveryAttempt) -> None:
        """An attempt made (pending until judged), an escalation, or a dry-run record."""
        self.last_attempt = attempt
        if attempt.outcome is AttemptOutcome.DRY_RUN:
            self.dry_run_actions += 1
        elif attempt.outcome is AttemptOutcome.ESCALATED:
            self.escalations += 1
        else:
            self.attempts += 1
            if attempt.outcome is AttemptOutcome.PENDING:
                self.pending += 1
            elif attempt.outcome is AttemptOutcome.SUCCEEDED:
                self.successes += 1

    def finished(self, pending: RecoveryAttempt, attempt: RecoveryAttempt) -> None:
        """The judged outcome of the ``pending`` attempt."""
        if self.last_attempt is pending:
            self.last_attempt = attempt
        if pending.outcome is AttemptOutcome.DRY_RUN:
            return
        self.pending = max(0, self.pending - 1)
        if attempt.outcome is AttemptOutcome.SUCCEEDED:
            self.successes += 1

    def detail(self, now: float, grace: Callable[[RecoveryRule], float]) -> dict[str, object]:
        """The per-service part of ``get_recovery_stats()``; ``grace``: a rule's grace period
        in force (its own, or the one derived from the monitor)."""
        recovered = self.recovered_episodes
        return {
            "status": self.status.value,
            "state": self.phase.value,
            "escalated": self.escalated,
            "escalated_at": self.escalated_at,
            "escalation_reason": self.escalation_reason,
            "episodes": self.episodes,
            "recovered_episodes": recovered,
            "mean_time_to_recovery": self.time_to_recovery_sum / recovered if recovered else None,
            "attempts": self.attempts,
            "successes": self.successes,
            "failures": self.attempts - self.successes - self.pending,
            "pending": self.pending,
            "escalations": self.escalations,
            "deferred_by_cooldown": self.deferred_by_cooldown,
            "suppressed_while_escalated": self.suppressed_while_escalated,
            "dry_run_actions": self.dry_run_actions,
            "deferred_to_peer": self.deferred_to_peer,
            "cooldown_remaining": max(0.0, self.cooldown_until - now),
            "healthy_for": None if self.healthy_since is None else now - self.healthy_since,
            "rules": [
                {
                    "action": slot.rule.action_type.value,
                    "runs": slot.rule.describe(),
                    "failure_threshold": slot.rule.failure_threshold,
                    "max_attempts": slot.rule.max_attempts,
                    "grace_period": grace(slot.rule),
                    "tries_since_stable": slot.tries,
                    "backoff_remaining": (
                        max(0.0, slot.retry_at - now) if slot.retry_at is not None else 0.0
                    ),
                }
                for slot in self.slots
            ],
            "last_attempt": self.last_attempt.as_dict() if self.last_attempt else None,
        }
