"""What to do next for one service: a pure decision.

As tenacity's ``iter()`` decides and its driver acts, :func:`decide` reads a
snapshot of a service's recovery (:class:`View`) and the time, and returns one
:data:`Step`; the episode runner (``episode.py``) does that step, observes the
world again (status, the monitor, its peers through Redis) and asks again. No
clock, no I/O, no randomness here: every rule of when to act, wait, verify,
escalate or stop is in this one function, and is tested directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..health.result import HealthStatus
from .rule import RecoveryActionType

MANUAL = RecoveryActionType.MANUAL_INTERVENTION


@dataclass(frozen=True, slots=True)
class SlotView:
    """One rule of the service, cheapest first, with its counters since the last stable run."""

    action: RecoveryActionType
    tries: int
    max_attempts: int
    failure_threshold: int
    retry_at: float | None = None  # the rule's backoff ends here

    @property
    def exhausted(self) -> bool:
        return self.action is not MANUAL and self.tries >= self.max_attempts


@dataclass(frozen=True, slots=True, kw_only=True)
class View:
    """What the runner knows of one service at one moment; times on its monotonic clock.

    ``consecutive_failures`` is the monitor's count (None: no monitor, or it cannot
    say; every threshold is then met). ``monitor_running`` is False while an attached
    monitor is stopped: nothing can be seen, so nothing is done. ``verifying_until``
    is set while an attempt's grace period runs. ``peer_until``: before this, a peer
    holds the service's turn, or (``peer_settling``) its last action or recovery is
    so recent that our own view may lag behind it (with a coordinator). ``poll``: how
    soon to look again at what can only be polled.
    """

    status: HealthStatus
    slots: tuple[SlotView, ...]
    poll: float
    escalated: bool = False
    closed: bool = False
    monitor_running: bool = True
    consecutive_failures: int | None = None
    cooldown_until: float = -math.inf
    verifying_until: float | None = None
    peer_until: float = -math.inf
    peer_settling: bool = False


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing to do: the episode ends."""

    reason: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Do nothing until ``until`` or a status change; ``probe``: ask for a fresh check first."""

    until: float
    reason: str
    probe: bool = False


@dataclass(frozen=True, slots=True)
class Act:
    """Run the rule at ``slot`` (after taking the turn, with a coordinator)."""

    slot: int


@dataclass(frozen=True, slots=True)
class Verify:
    """An attempt's grace period runs until ``until``: look (``probe``) for health."""

    until: float
    probe: bool


@dataclass(frozen=True, slots=True)
class Conclude:
    """The attempt under verification is judged: seen healthy in time, or not."""

    succeeded: bool


@dataclass(frozen=True, slots=True)
class Escalate:
    """Page a human and latch; ``take_turn``: only if this process may (one page per cluster)."""

    take_turn: bool


Step = Idle | Wait | Act | Verify | Conclude | Escalate


def next_slot(slots: tuple[SlotView, ...]) -> int | None:
    """The cheapest rule with attempts left (a manual rule never runs out); None: give up."""
    return next((index for index, slot in enumerate(slots) if not slot.exhausted), None)


def threshold_met(slot: SlotView, consecutive_failures: int | None) -> bool:
    """Whether the monitor has counted the rule's failures in a row (unknown, or 1: met)."""
    return (
        consecutive_failures is None
        or slot.failure_threshold <= 1
        or consecutive_failures >= slot.failure_threshold
    )


def decide(view: View, now: float) -> Step:
    """The next step for a service in ``view`` at ``now``."""
    if view.closed:
        return Idle("closed")
    if view.verifying_until is not None:
        if view.status == HealthStatus.HEALTHY:
            return Conclude(succeeded=True)
        if now >= view.verifying_until:
            return Conclude(succeeded=False)
        return Verify(until=view.verifying_until, probe=view.monitor_running)
    if view.escalated:
        return Idle("escalated")
    if view.status != HealthStatus.UNHEALTHY:
        return Idle(f"service is {view.status}")
    index = next_slot(view.slots)
    if index is None:
        return Escalate(take_turn=False)  # this process made the attempts: it pages
    if not view.monitor_running:
        return Wait(now + view.poll, "monitor stopped")
    slot = view.slots[index]
    manual = slot.action is MANUAL
    # A page is never held back by cooldown or backoff: only the rule's threshold gates it.
    if not manual:
        if now < view.cooldown_until:
            return Wait(view.cooldown_until, "cooldown")
        if slot.retry_at is not None and now < slot.retry_at:
            return Wait(slot.retry_at, "backoff")
    if not threshold_met(slot, view.consecutive_failures):
        return Wait(now + view.poll, "failure threshold")
    if now < view.peer_until:
        # A peer acts now; or it just did, and our view may lag: then look afresh meanwhile.
        return Wait(view.peer_until, "peer", probe=view.peer_settling)
    return Escalate(take_turn=True) if manual else Act(index)
