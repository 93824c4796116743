"""The circuit breaker's state machine, pure: no I/O, no clock, no asyncio.

Every function takes a frozen :class:`Snapshot` and the time ``now`` (seconds on
whatever clock the store uses) and returns a new snapshot. Stores apply these
functions: :class:`MemoryStore` in-process, the Redis store as Lua scripts that
must make the same decisions.

Rules:

- closed: ``failure_threshold`` consecutive counted failures open the circuit;
  a success resets the count.
- open: every call is rejected until ``recovery_timeout`` has passed since it
  opened; the next call then half-opens it (unless it was forced open).
- half_open: at most ``half_open_max_calls`` trial calls per episode. Each holds a
  permit (a lease that expires, so a trial lost with its process cannot wedge the
  circuit). Any trial failure re-opens the circuit; ``half_open_max_calls``
  successful trials close it. A cancelled trial gives its permit back.
- Every transition bumps ``epoch``. A result carries the epoch its call was
  admitted under; a result from an older epoch changes nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import NamedTuple

from .config import CircuitBreakerConfig


class CircuitState(enum.StrEnum):
    """The three states of a circuit; the value is what metrics and JSON show."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the machine knows about one circuit."""

    state: CircuitState = CLOSED
    failure_count: int = 0
    opened_at: float = 0.0
    # Half-open trial permits in flight: (permit id, lease expiry).
    trials: tuple[tuple[int, float], ...] = ()
    half_open_successes: int = 0
    epoch: int = 0
    next_permit: int = 1
    # Forced open holds until forced closed or reset; it never half-opens by itself.
    forced: bool = False


# Ticket and Admission are made on every failure and rejection: named tuples are
# several times cheaper to build than frozen dataclasses, and as immutable.
class Ticket(NamedTuple):
    """What an admitted call carries back with its result."""

    epoch: int
    permit: int = 0  # 0: not a half-open trial


class Admission(NamedTuple):
    """The answer to "may this call run?"."""

    ticket: Ticket | None  # None: rejected
    retry_after: float | None = None  # seconds until a call may be admitted; None: unknown


_FORCED_OPEN = Admission(None, None)


def _open(snap: Snapshot, now: float, failure_count: int) -> Snapshot:
    return Snapshot(
        state=OPEN,
        failure_count=failure_count,
        opened_at=now,
        epoch=snap.epoch + 1,
        next_permit=snap.next_permit,
    )


def _close(snap: Snapshot) -> Snapshot:
    return Snapshot(state=CLOSED, epoch=snap.epoch + 1, next_permit=snap.next_permit)


def _half_open(snap: Snapshot) -> Snapshot:
    return Snapshot(
        state=HALF_OPEN,
        failure_count=snap.failure_count,
        opened_at=snap.opened_at,
        epoch=snap.epoch + 1,
        next_permit=snap.next_permit,
    )


def open_rejection(snap: Snapshot, config: CircuitBreakerConfig, now: float) -> Admission | None:
    """The rejection of an open circuit still inside its recovery timeout (or forced), else None.

    It changes nothing, so a store may answer with it without taking its lock.
    """
    if snap.state is not OPEN:
        return None
    if snap.forced:
        return _FORCED_OPEN
    reopen_at = snap.opened_at + config.recovery_timeout
    return Admission(None, reopen_at - now) if now < reopen_at else None


def admit(snap: Snapshot, config: CircuitBreakerConfig, now: float) -> tuple[Admission, Snapshot]:
    """Decide whether a call may run now, and take a trial permit if half-open."""
    if snap.state is CLOSED:
        return Admission(Ticket(snap.epoch)), snap
    if snap.state is OPEN:
        rejection = open_rejection(snap, config, now)
        if rejection is not None:
            return rejection, snap
        snap = _half_open(snap)
    live = tuple(trial for trial in snap.trials if trial[1] > now)
    if len(live) + snap.half_open_successes >= config.half_open_max_calls:
        # Every permit is taken; when one frees up is unknown: the trials decide.
        return Admission(None, None), replace(snap, trials=live)
    permit = snap.next_permit
    trials = (*live, (permit, now + config.lease_seconds))
    return Admission(Ticket(snap.epoch, permit)), replace(
        snap, trials=trials, next_permit=permit + 1
    )


def on_success(
    snap: Snapshot, config: CircuitBreakerConfig, now: float, ticket: Ticket
) -> Snapshot:
    """Record a call that succeeded."""
    if ticket.epoch != snap.epoch:
        return snap
    if snap.state is CLOSED:
        return snap if snap.failure_count == 0 else replace(snap, failure_count=0)
    if snap.state is HALF_OPEN and ticket.permit:
        trials = tuple(trial for trial in snap.trials if trial[0] != ticket.permit)
        if len(trials) == len(snap.trials):
            return snap  # its lease expired and was reclaimed: no longer a trial
        successes = snap.half_open_successes + 1
        if successes >= config.half_open_max_calls:
            return _close(snap)
        return replace(snap, trials=trials, half_open_successes=successes)
    return snap


def on_failure(
    snap: Snapshot, config: CircuitBreakerConfig, now: float, ticket: Ticket
) -> Snapshot:
    """Record a call that failed with a counted exception or timed out."""
    if ticket.epoch != snap.epoch:
        return snap
    if snap.state is CLOSED:
        failures = snap.failure_count + 1
        if failures >= config.failure_threshold:
            return _open(snap, now, failures)
        return replace(snap, failure_count=failures)
    if snap.state is HALF_OPEN:
        return _open(snap, now, snap.failure_count + 1)
    return snap


def on_release(snap: Snapshot, ticket: Ticket) -> Snapshot:
    """Give back the permit of a call that ended without a verdict (cancelled)."""
    if ticket.epoch != snap.epoch or snap.state is not HALF_OPEN or not ticket.permit:
        return snap
    trials = tuple(trial for trial in snap.trials if trial[0] != ticket.permit)
    return snap if len(trials) == len(snap.trials) else replace(snap, trials=trials)


def force(snap: Snapshot, state: CircuitState, now: float) -> Snapshot:
    """Move to ``state`` by hand. Forced open holds until forced closed or reset."""
    if state is OPEN:
        return replace(_open(snap, now, snap.failure_count), forced=True)
    if state is HALF_OPEN:
        return _half_open(snap)
    return _close(snap)


def transition_reason(old: Snapshot, new: Snapshot) -> str:
    """Why the machine moved from ``old`` to ``new``, in words for logs and listeners."""
    if new.forced and new.state is OPEN:
        return "forced open"
    if old.state is CLOSED and new.state is OPEN:
        return f"{new.failure_count} consecutive failures reached the threshold"
    if old.state is OPEN and new.state is HALF_OPEN:
        return "recovery timeout elapsed"
    if old.state is HALF_OPEN and new.state is OPEN:
        return "a trial call failed"
    if old.state is HALF_OPEN and new.state is CLOSED:
        return "trial calls succeeded"
    return "forced"
