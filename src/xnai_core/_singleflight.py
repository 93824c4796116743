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
- the caller that starts a flight waits for it as long as it runs, or, with
  ``bounded=True``, until the deadline as a joiner does (the flight goes on);
- a caller arriving after the deadline does not join: it starts a fresh flight, so one hung
  call never blocks its key. The late flight runs on for the caller that started it (whose
  call carries its own timeout, if it has one) and lands without disturbing the fresh one;
- with ``abandon=True``, a flight that nobody waits for any more (every caller cancelled or
  gone at the deadline) is cancelled at its deadline, so a hung call its callers left does
  not hold its task and connection for ever (before: one more per deadline, without end).
  Until then it runs on, as it would for others who joined.

Flights live within one process and event loop; a flight started on another loop is never
joined.

:meth:`SingleFlight.run_here` starts a flight in the caller's own task instead of a new
one, for a caller that would only wait for it anyway (the health monitor's scheduled
runs): no task, no shield and, until someone joins, no future per call. Making a task
per run cost 500 checks a second four times the young collections, whose promotions
fed the full collections that set the schedule's tail lag. Such a flight ends if its
caller is cancelled; whoever joined it is then cancelled too.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

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
    task: asyncio.Task[Any]  # runs the call: its own task, or the caller's (run_here)
    deadline: float  # seconds, as given
    due: float  # the loop's time when it stops being shared
    here: bool = False  # runs in its caller's task: joiners wait on `outcome`
    outcome: asyncio.Future[T] | None = None  # made when the first caller joins
    abandon: bool = False  # cancel it at `due` if nobody waits for it then
    waiting: int = 0  # callers waiting for it now
    timer: asyncio.TimerHandle | None = None  # the check at `due`, once nobody waits


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
        bounded: bool = False,
        abandon: bool = False,
    ) -> T:
        """``await call()`` as a new flight, or join the one running for ``key``.

        ``deadline``: seconds the flight a caller starts is shared (> 0, finite).
        ``on_join``: called (synchronously) when this caller joins another's flight
        instead of starting one, so it can be counted once, not as a call of its own.
        ``bounded``: the caller that starts the flight stops waiting at its deadline
        too, as a joiner does (:class:`FlightTimeoutError`; the flight goes on).
        ``abandon``: the flight this caller starts is cancelled at its deadline if nobody
        waits for it then (every caller cancelled, or gone at the deadline).
        """
        loop, now, flight = self._joinable(key, deadline)
        if flight is not None:
            if on_join is not None:
                on_join()
            return await self._join(flight, min(flight.due, now + deadline), now)
        task = loop.create_task(_await(call))
        flight = _Flight(task, float(deadline), now + deadline, abandon=abandon)
        self._flights[key] = flight
        task.add_done_callback(lambda done: self._land(key, done))
        self.started += 1
        if bounded:
            return await self._join(flight, flight.due, now)
        flight.waiting += 1
        try:
            return await asyncio.shield(task)
        finally:
            self._left(flight)

    async def run_here(self, key: K, call: Callable[[], Awaitable[T]], *, deadline: float) -> T:
        """As :meth:`run`, but a flight this caller starts runs in its own task.

        Cancelling this caller ends the call, and whoever joined it is cancelled too.
        """
        _, now, flight = self._joinable(key, deadline)
        if flight is not None:
            return await self._join(flight, min(flight.due, now + deadline), now)
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("run_here() must be called from a task")
        flight = _Flight(task, float(deadline), now + deadline, here=True)
        self._flights[key] = flight
        self.started += 1
        try:
            result = await call()
        except BaseException as exc:
            self._land_here(key, flight, exc, None)
            raise
        self._land_here(key, flight, None, result)
        return result

    def _joinable(
        self, key: K, deadline: float
    ) -> tuple[asyncio.AbstractEventLoop, float, _Flight[T] | None]:
        """The running loop, its time, and the flight for ``key`` a caller may join now."""
        if not (isinstance(deadline, int | float) and math.isfinite(deadline) and deadline > 0):
            raise ValueError(f"'deadline' must be a finite number of seconds > 0: {deadline!r}")
        loop = asyncio.get_running_loop()
        now = loop.time()
        flight = self._flights.get(key)
        if flight is None or flight.task.get_loop() is not loop:
            return loop, now, None
        if now < flight.due:
            self.joined += 1
            return loop, now, flight
        self.overdue += 1
        return loop, now, None

    def _land_here(
        self, key: K, flight: _Flight[T], error: BaseException | None, result: T | None
    ) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        outcome = flight.outcome
        if outcome is None or outcome.done():
            return
        if isinstance(error, asyncio.CancelledError):
            outcome.cancel()
        elif error is not None:
            outcome.set_exception(error)
            outcome.exception()  # seen: no "never retrieved" log if every joiner left
        else:
            outcome.set_result(result)  # type: ignore[arg-type]

    async def _join(self, flight: _Flight[T], due: float, joined_at: float) -> T:
        shared: asyncio.Future[T]
        if flight.here:
            if flight.outcome is None:
                flight.outcome = flight.task.get_loop().create_future()
            shared = flight.outcome
        else:
            shared = flight.task
        timeout = asyncio.timeout_at(due)
        flight.waiting += 1
        try:
            try:
                async with timeout:
                    return await asyncio.shield(shared)
            except TimeoutError:
                if not timeout.expired():
                    raise  # the flight's own TimeoutError, shared like any outcome
            # On a loop lagging past the deadline, the flight's own end (its call's
            # timeout) may have come in the same pass: let it land first.
            await asyncio.sleep(0)
            if shared.done() and not shared.cancelled():
                return shared.result()
            self.expired += 1
            raise FlightTimeoutError(
                flight.deadline if due == flight.due else round(due - joined_at, 6)
            )
        finally:
            self._left(flight)

    def _left(self, flight: _Flight[T]) -> None:
        """A caller stopped waiting for ``flight``: the last one out of an abandoning
        flight leaves it its deadline, then it is cancelled if nobody came back."""
        flight.waiting -= 1
        if not flight.abandon or flight.waiting or flight.task.done() or flight.timer:
            return
        loop = flight.task.get_loop()
        flight.timer = loop.call_at(flight.due, self._abandon_if_alone, flight)

    @staticmethod
    def _abandon_if_alone(flight: _Flight[T]) -> None:
        flight.timer = None
        if not flight.waiting and not flight.task.done():
            flight.task.cancel()

    def _land(self, key: K, task: asyncio.Task[T]) -> None:
        flight = self._flights.get(key)
        if flight is not None and flight.task is task:
            del self._flights[key]
            if flight.timer is not None:
                flight.timer.cancel()
                flight.timer = None
        # Mark the outcome as seen, so a flight whose callers were all cancelled
        # does not log "exception was never retrieved".
        if not task.cancelled():
            task.exception()


async def _await(call: Callable[[], Awaitable[T]]) -> T:
    return await call()
