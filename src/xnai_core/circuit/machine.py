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
- Stored times never lie ahead of now (:func:`clamp`): after a clock steps back,
  an open circuit waits at most ``recovery_timeout`` more and a lease ends at most
  one lease from now.

A store shared between processes keeps a mirror of the circuit and answers some
questions without asking the others: :func:`answer_locally`, :func:`is_hot`,
:func:`trips` and the ``*_changes`` predicates say when that is the same answer the
machine would give. Every rule is here once; the Lua scripts of the Redis store
(:mod:`.redis_scripts`) are its only second copy.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple, TypeAlias

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


Step: TypeAlias = Callable[[Snapshot, float], Snapshot]
"""One event applied to a snapshot at a time: how a store applies the machine."""

_FORCED_OPEN = Admission(None, None)
_ALL_PERMITS_TAKEN = Admission(None, None)


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


def clamp(snap: Snapshot, config: CircuitBreakerConfig, now: float) -> Snapshot:
    """``snap`` with no time ahead of ``now``: ``opened_at`` at most now, each lease
    ending at most one lease from now (the clock stepped back since they were set)."""
    horizon = now + config.lease_seconds
    if snap.opened_at <= now and all(expiry <= horizon for _, expiry in snap.trials):
        return snap
    trials = tuple((permit, min(expiry, horizon)) for permit, expiry in snap.trials)
    return replace(snap, opened_at=min(snap.opened_at, now), trials=trials)


def open_rejection(snap: Snapshot, config: CircuitBreakerConfig, now: float) -> Admission | None:
    """The rejection of an open circuit still inside its recovery timeout (or forced), else None.

    It changes nothing, so a store may answer with it without taking its lock. None
    too when the circuit opened "in the future" (the clock stepped back): :func:`admit`
    clamps that first.
    """
    if snap.state is not OPEN:
        return None
    if snap.forced:
        return _FORCED_OPEN
    reopen_at = snap.opened_at + config.recovery_timeout
    if now < reopen_at and snap.opened_at <= now:
        return Admission(None, reopen_at - now)
    return None


def answer_locally(snap: Snapshot, config: CircuitBreakerConfig, now: float) -> Admission | None:
    """A shared store's answer from its mirror alone, when it is the machine's answer
    whatever the others did meanwhile; None: ask the shared state.

    Open inside its recovery timeout (or forced): rejected. Half-open with every
    permit held by a live lease: rejected, when one frees up is unknown. Closed:
    admitted. A time ahead of now (the clock stepped back): ask, so the shared state
    is clamped.
    """
    if snap.state is CLOSED:
        return Admission(Ticket(snap.epoch))
    if snap.state is OPEN:
        return open_rejection(snap, config, now)
    horizon = now + config.lease_seconds
    live = 0
    for _, expiry in snap.trials:
        if expiry > horizon:
            return None
        if expiry > now:
            live += 1
    if live + snap.half_open_successes >= config.half_open_max_calls:
        return _ALL_PERMITS_TAKEN
    return None


def is_hot(snap: Snapshot) -> bool:
    """Whether admitting a call and recording its success change nothing: closed with
    no failure counted (a shared store adds: and no failure report on its way)."""
    return snap.state is CLOSED and snap.failure_count == 0


def trips(snap: Snapshot, config: CircuitBreakerConfig, failures: int) -> bool:
    """Whether ``failures`` more counted failures of the current epoch open the circuit:
    any in a half-open episode, the threshold's in a closed one."""
    if snap.state is HALF_OPEN:
        return True
    return snap.state is CLOSED and snap.failure_count + failures >= config.failure_threshold


def success_changes(snap: Snapshot, ticket: Ticket) -> bool:
    """Whether :func:`on_success` with ``ticket`` would change ``snap``, as far as the
    mirror knows: False means a store need not report it."""
    if ticket.epoch != snap.epoch:
        return False
    if snap.state is CLOSED:
        return snap.failure_count != 0
    return snap.state is HALF_OPEN and ticket.permit != 0


def failure_changes(snap: Snapshot, ticket: Ticket) -> bool:
    """Whether :func:`on_failure` with ``ticket`` would change ``snap``: not for an
    older epoch's call (fenced), nor for an open circuit."""
    return ticket.epoch == snap.epoch and snap.state is not OPEN


def release_changes(snap: Snapshot, ticket: Ticket) -> bool:
    """Whether :func:`on_release` of ``ticket`` could change ``snap``."""
    return bool(ticket.permit) and ticket.epoch == snap.epoch and snap.state is HALF_OPEN


def admit(snap: Snapshot, config: CircuitBreakerConfig, now: float) -> tuple[Admission, Snapshot]:
    """Decide whether a call may run now, and take a trial permit if half-open."""
    if snap.state is CLOSED:
        return Admission(Ticket(snap.epoch)), snap
    snap = clamp(snap, config, now)
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


def reset(snap: Snapshot) -> Snapshot:
    """Back to a fresh closed circuit (a new epoch: no earlier call's result counts)."""
    return Snapshot(epoch=snap.epoch + 1, next_permit=snap.next_permit)


def force_reason(state: CircuitState) -> str:
    """What a transition made by :func:`force` to ``state`` is called."""
    return "forced open" if state is OPEN else f"forced {state.value}"


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
