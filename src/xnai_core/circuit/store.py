"""The store seam: who owns a circuit's snapshot, and MemoryStore, the in-process one.

A breaker asks its store to admit calls and to record their outcomes; the store
applies :mod:`.machine` to its snapshot and reports transitions. ``MemoryStore``
keeps the snapshot in this process; the Redis store shares it between processes.
Both must pass the same conformance tests.

The hot path: ``hot_epoch`` is the current epoch while the circuit is closed with
no failure pending, else None. While it is an int, a call is admitted and a
success changes nothing, so the breaker need not await the store at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from .._redact import redact
from . import machine
from .config import CircuitBreakerConfig
from .machine import Admission, CircuitState, Snapshot, Ticket

TransitionCallback = Callable[[CircuitState, CircuitState, str, bool], None]
"""Called with (old state, new state, reason, remote) after every transition the store
sees; ``remote``: another process made it and this one mirrors it from the shared store
(any other store counts as another process, one of the same name in this process included)."""


@runtime_checkable
class StateStore(Protocol):
    """Where a circuit's state lives. Verbs mirror the machine's events."""

    config: CircuitBreakerConfig
    backend: str
    hot_epoch: int | None

    @property
    def available(self) -> bool | None:
        """Whether the shared backend is reachable; None for a store with no backend."""

    def snapshot(self) -> Snapshot:
        """The current (for a shared store: locally mirrored) snapshot."""

    def add_transition_callback(self, callback: TransitionCallback) -> None:
        """Call ``callback`` after every transition; it must not raise."""

    def acquire_nowait(self) -> Admission | None:
        """:meth:`acquire`'s answer when the store has it at hand; None: await acquire().

        An open circuit inside its recovery timeout is the case that matters: its
        rejections should cost no more than raising an exception.
        """

    async def acquire(self) -> Admission:
        """Admit a call or reject it; a half-open admission takes a trial permit."""

    async def record_success(self, ticket: Ticket) -> None:
        """Record a successful call admitted with ``ticket``."""

    async def record_failure(self, ticket: Ticket) -> None:
        """Record a counted failure (or timeout) of a call admitted with ``ticket``."""

    async def release(self, ticket: Ticket) -> None:
        """Give back ``ticket``'s trial permit: the call ended without a verdict."""

    async def force(self, state: CircuitState) -> None:
        """Move to ``state`` by hand."""

    async def reset(self) -> None:
        """Back to a fresh closed circuit."""

    async def close(self) -> None:
        """Release background tasks and connections."""

    def backend_metrics(self) -> dict[str, Any]:
        """Extra counters for ``get_metrics()`` (empty for a store with no backend)."""


@runtime_checkable
class QueuesFailures(Protocol):
    """A store that takes a failure report without its caller waiting for the answer.

    A breaker with a fallback uses it, so a fallback does not wait on a shared report
    that others' reports share. The store must still decide the next call as if the
    failure were counted (a report on its way makes the next caller wait for it).
    """

    def record_failure_nowait(self, ticket: Ticket) -> Awaitable[object] | None:
        """Queue the failure of a call admitted with ``ticket``. An awaitable when the
        caller should wait for the report after all (it alone trips the circuit, so the
        state read after the call is the tripped one), else None."""


class MemoryStore:
    """A circuit's state held in this process.

    Safe for several event loops in several threads: each update, and the
    announcement of the transition it made, runs under a short lock that is never
    held across the protected call, so callbacks see transitions in order.
    """

    backend = "memory"

    def __init__(
        self, config: CircuitBreakerConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self._clock = clock
        self._snap = Snapshot()
        self._lock = threading.RLock()  # re-entrant: a callback runs while it is held
        self._callbacks: list[TransitionCallback] = []
        self.hot_epoch: int | None = 0

    def __repr__(self) -> str:
        return f"<MemoryStore name={redact(self.config.name)!r} state={self._snap.state.value}>"

    @property
    def available(self) -> bool | None:
        return None

    def snapshot(self) -> Snapshot:
        return self._snap

    def add_transition_callback(self, callback: TransitionCallback) -> None:
        self._callbacks.append(callback)

    def _apply(
        self, step: Callable[[Snapshot, float], Snapshot], reason: str | None = None
    ) -> None:
        with self._lock:
            old = self._snap
            new = step(old, self._clock())
            self._install(new)
            self._announce(old, new, reason)

    def _install(self, new: Snapshot) -> None:
        self._snap = new
        self.hot_epoch = new.epoch if machine.is_hot(new) else None

    def _announce(self, old: Snapshot, new: Snapshot, reason: str | None) -> None:
        if new.epoch == old.epoch:
            return
        why = reason or machine.transition_reason(old, new)
        for callback in self._callbacks:
            callback(old.state, new.state, why, False)

    def acquire_nowait(self) -> Admission:
        snap = self._snap
        if snap.state is CircuitState.OPEN:
            rejection = machine.open_rejection(snap, self.config, self._clock())
            if rejection is not None:
                return rejection  # read-only: no lock needed
        with self._lock:
            old = self._snap
            admission, new = machine.admit(old, self.config, self._clock())
            if new is not old:
                self._install(new)
                self._announce(old, new, None)
        return admission

    async def acquire(self) -> Admission:
        return self.acquire_nowait()

    async def record_success(self, ticket: Ticket) -> None:
        self._apply(lambda snap, now: machine.on_success(snap, self.config, now, ticket))

    async def record_failure(self, ticket: Ticket) -> None:
        self._apply(lambda snap, now: machine.on_failure(snap, self.config, now, ticket))

    async def release(self, ticket: Ticket) -> None:
        self._apply(lambda snap, now: machine.on_release(snap, ticket))

    async def force(self, state: CircuitState) -> None:
        self._apply(lambda snap, now: machine.force(snap, state, now), machine.force_reason(state))

    async def reset(self) -> None:
        self._apply(lambda snap, now: machine.reset(snap), "reset")

    async def close(self) -> None:
        return None

    def backend_metrics(self) -> dict[str, Any]:
        return {}
