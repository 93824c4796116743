"""Single flight with deadlines: concurrent requests for one key share one call, for a while.

The package's one single-flight implementation (the degradation cache's misses, the health
monitor's manual and scheduled checks of one service).

The first caller for a key starts the call as a task: the flight. A caller arriving while it
runs joins it and gets its result or its exception. The task is shielded: a caller that is
cancelled stops waiting, and the call goes on for the others.

Every flight has a deadline, ``deadline`` seconds after it started, and is shared only until
then:

- a caller that joined stops waiting at the deadline with :class:`FlightTimeoutError` (a
  ``TimeoutError``), so it never waits longer than the flight was meant to take; nor
  longer than its own ``deadline`` (a flight started under a longer one, before a
  service's timeout was shortened, does not hold a caller that expects less);
- a caller arriving after the deadline does not join: it starts a fresh flight, so one hung
  call never blocks its key. The late flight runs on for the caller that started it (whose
  call carries its own timeout, if it has one) and lands without disturbing the fresh one.

Flights live within one process and event loop; a flight started on another loop is never
joined.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["FlightTimeoutError", "SingleFlight"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class FlightTimeoutError(TimeoutError):
    """A caller that joined a shared flight stopped waiting at the flight's deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        super().__init__(
            f"the shared call it joined was still running at its {deadline:g}s deadline"
        )

    def __reduce__(self) -> tuple[type[FlightTimeoutError], tuple[float]]:
        return (type(self), (self.deadline,))


@dataclass(slots=True)
class _Flight(Generic[T]):
    task: asyncio.Task[T]
    deadline: float  # seconds, as given
    due: float  # the loop's time when it stops being shared


class SingleFlight(Generic[K, T]):
    """Deduplicates concurrent calls by key, each shared until its deadline.

    Counters: ``started`` (flights), ``joined`` (callers that shared one), ``expired``
    (joined callers that stopped waiting at a deadline), ``overdue`` (flights still running
    past their deadline when a caller came, who started a fresh one).
    """

    def __init__(self) -> None:
        self._flights: dict[K, _Flight[T]] = {}
        self.started = 0
        self.joined = 0
        self.expired = 0
        self.overdue = 0

    def __len__(self) -> int:
        """How many flights are in the air and still shared."""
        return len(self._flights)

    async def run(
        self,
        key: K,
        call: Callable[[], Awaitable[T]],
        *,
        deadline: float,
        on_join: Callable[[], object] | None = None,
    ) -> T:
        """``await call()`` as a new flight, or join the one running for ``key``.

        ``deadline``: seconds the flight a caller starts is shared (> 0, finite).
        ``on_join``: called (synchronously) when this caller joins another's flight
        instead of starting one, so it can be counted once, not as a call of its own.
        """
        if not (isinstance(deadline, int | float) and math.isfinite(deadline) and deadline > 0):
            raise ValueError(f"'deadline' must be a finite number of seconds > 0: {deadline!r}")
        loop = asyncio.get_running_loop()
        now = loop.time()
        flight = self._flights.get(key)
        if flight is not None and flight.task.get_loop() is loop:
            if now < flight.due:
                self.joined += 1
                if on_join is not None:
                    on_join()
                return await self._join(flight, min(flight.due, now + deadline), now)
            self.overdue += 1
        task = loop.create_task(_await(call))
        flight = _Flight(task, float(deadline), now + deadline)
        self._flights[key] = flight
        task.add_done_callback(lambda done: self._land(key, done))
        self.started += 1
        return await asyncio.shield(task)

    async def _join(self, flight: _Flight[T], due: float, joined_at: float) -> T:
        timeout = asyncio.timeout_at(due)
        try:
            async with timeout:
                return await asyncio.shield(flight.task)
        except TimeoutError:
            if not timeout.expired():
                raise  # the flight's own TimeoutError, shared like any outcome
        self.expired += 1
        raise FlightTimeoutError(
            flight.deadline if due == flight.due else round(due - joined_at, 6)
        )

    def _land(self, key: K, task: asyncio.Task[T]) -> None:
        flight = self._flights.get(key)
        if flight is not None and flight.task is task:
            del self._flights[key]
        # Mark the outcome as seen, so a flight whose callers were all cancelled
        # does not log "exception was never retrieved".
        if not task.cancelled():
            task.exception()


async def _await(call: Callable[[], Awaitable[T]]) -> T:
    return await call()
