"""Per-call timeouts that cost almost nothing: one deadline keeper per event loop.

``asyncio.timeout`` pushes a timer on the loop's heap and cancels it again for
every call: several microseconds, many times the rest of a breaker's work. Almost
every protected call ends long before its deadline, so the keeper does no timer
and no clock work per call at all:

- A call files its task in the keeper's *open generation* for its timeout (one
  dict insert) and removes it when it ends (one dict pop).
- A ticker runs every ``TICK`` seconds, but only while some call is filed. It
  closes the open generations: each one still holding calls becomes due at
  ``close time + timeout``. Every call in it started before the close, so its
  deadline is never early.
- When a closed generation comes due, every task still in it is cancelled, as
  ``asyncio.timeout`` would, and the call site turns that cancellation into
  ``TimeoutError``.

Precision: a timeout never fires before its deadline, and fires within
``2 * TICK`` (10 ms) after it, plus however long the event loop was blocked.

Cancellation stays correct, by the rule ``asyncio.timeout`` applies: the task's
``cancelling()`` count is recorded when a call is filed, and a cancellation is
reported as a timeout only when ``uncancel()`` brings the count back to that
baseline, so an outer cancel, an enclosing ``asyncio.timeout`` or a ``TaskGroup``
is never swallowed or turned into ``TimeoutError``, and a call made while its
task is already being cancelled (cleanup code) still times out.

Known limit: the keeper is cached per thread and checked against the task its
loop is running. An event loop that stopped in one thread and now runs in
another, while the first thread runs a new loop, is not detected; run each
loop in one thread, as asyncio expects. A timed call needs a running asyncio task
(every awaited coroutine has one, unless it is driven by hand with ``send()``);
without one, filing raises RuntimeError, which the breaker reports like any error
of the call.
"""

from __future__ import annotations

import asyncio
import heapq
import sys
import threading
from collections.abc import Awaitable, Callable
from itertools import count
from types import CoroutineType
from typing import Any, TypeVar

TICK = 0.005

T = TypeVar("T")

Generation = dict[object, tuple["asyncio.Task[Any]", int]]
"""Calls filed in one tick for one timeout: key -> (task, its cancelling() when filed)."""

# The running task of each loop. In 3.11 asyncio.current_task is a Python function
# that first asks for the running loop; reading asyncio's own mapping with a loop we
# already know is several times cheaper. From 3.12 current_task is in C, and from
# 3.14 that mapping is no longer filled: use the function there.
# ``current_tasks[loop]`` raises KeyError when the loop runs no task.
if sys.version_info >= (3, 12):

    class _CurrentTasks:
        get = staticmethod(asyncio.current_task)

        def __getitem__(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any]:
            task = asyncio.current_task(loop)
            if task is None:
                raise KeyError(loop)
            return task

    current_tasks: Any = _CurrentTasks()
else:
    current_tasks = asyncio.tasks._current_tasks  # type: ignore[attr-defined]


class _ThreadKeeper(threading.local):
    keeper: DeadlineKeeper | None = None


thread_keeper = _ThreadKeeper()
"""``thread_keeper.keeper``: the keeper last used in this thread, or None."""


class DeadlineKeeper:
    """The deadlines of every timed call in flight on one event loop.

    Used only from its loop's thread.
    """

    __slots__ = ("_closed", "_due_handle", "_fired", "_order", "loop", "open", "ticker")

    # file_deadline (and its inlined copy in CircuitBreaker.call) reads `open`
    # directly: it runs on every timed call. While `open` holds a generation, the
    # ticker is armed (new_generation arms it), so a call need not check.

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.open: dict[float, Generation] = {}  # timeout -> the generation filling now
        # Closed generations by due time: (due, tie-breaker, generation).
        self._closed: list[tuple[float, int, Generation]] = []
        self._order = count()
        self._fired: dict[object, tuple[asyncio.Task[Any], int]] = {}
        self.ticker: asyncio.TimerHandle | None = None
        self._due_handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Calls filed and not yet taken back (fired ones included)."""
        filed = sum(map(len, self.open.values()))
        return filed + sum(len(gen) for _, _, gen in self._closed) + len(self._fired)

    def new_generation(self, timeout: float) -> Generation:
        """Open a generation for ``timeout``, and the ticker that will close it."""
        generation: Generation = {}
        self.open[timeout] = generation
        if self.ticker is None:
            self.ticker = self.loop.call_later(TICK, self._tick)
        return generation

    def settle_fired(self, key: object) -> bool:
        """For a call whose deadline fired: take back the keeper's cancellation.

        Returns True when the task's cancellation came from its deadline alone
        (the call timed out); False when someone else cancelled the task too.
        """
        entry = self._fired.pop(key, None)
        if entry is None:
            return False
        task, baseline = entry
        return task.uncancel() <= baseline

    def _tick(self) -> None:
        self.ticker = None
        now = self.loop.time()
        for timeout, gen in self.open.items():
            if gen:
                heapq.heappush(self._closed, (now + timeout, next(self._order), gen))
        self.open = {}
        self._fire_due()

    def _fire_due(self) -> None:
        if self._due_handle is not None:
            self._due_handle.cancel()  # re-armed below, for the earliest due time
            self._due_handle = None
        # The loop may run a timer up to its clock resolution early; allow for it.
        now = self.loop.time() + 1e-6
        closed = self._closed
        while closed and (closed[0][0] <= now or not closed[0][2]):
            due, _, gen = heapq.heappop(closed)
            if due > now:
                continue  # emptied before it came due: every call in it ended
            for key, entry in gen.items():
                task = entry[0]
                if not task.done():
                    self._fired[key] = entry
                    task.cancel()
            gen.clear()
        if closed:
            self._due_handle = self.loop.call_at(closed[0][0], self._fire_due)


def keeper_and_task() -> tuple[DeadlineKeeper, asyncio.Task[Any]]:
    """This thread's keeper for the running loop (made on first use) and the running task."""
    loop = asyncio.get_running_loop()
    keeper = thread_keeper.keeper
    if keeper is None or keeper.loop is not loop:
        keeper = thread_keeper.keeper = DeadlineKeeper(loop)
    task = current_tasks.get(loop)
    if task is None:
        raise RuntimeError("a deadline needs a running asyncio task")
    return keeper, task


def file_deadline(key: object, timeout: float) -> tuple[DeadlineKeeper, Generation]:
    """File the current task's deadline under ``key`` (unique while the call runs).

    Returns the keeper and the generation the call was filed in: the call site pops
    ``key`` from that generation when the call ends (None back means the deadline
    fired; then :meth:`DeadlineKeeper.settle_fired`).

    The keeper of this thread's running loop is cached per thread. The cache is
    checked by asking asyncio which task that loop is running: a loop that is not
    running in this thread has none, so only the first call in a new loop pays
    for ``get_running_loop``.
    """
    try:
        # None raises AttributeError on .loop below: the first call in this thread.
        keeper: DeadlineKeeper = thread_keeper.keeper  # type: ignore[assignment]
        task = current_tasks[keeper.loop]
    except (AttributeError, KeyError):
        keeper, task = keeper_and_task()
    try:
        generation = keeper.open[timeout]
    except KeyError:
        generation = keeper.new_generation(timeout)
    generation[key] = (task, task.cancelling())
    return keeper, generation


def pending_deadlines() -> int:
    """Deadlines still filed on this thread's current keeper (for tests and diagnostics)."""
    keeper = thread_keeper.keeper
    return 0 if keeper is None else len(keeper)


async def wait_within(
    awaitable: Awaitable[T], timeout: float, on_timeout: Callable[[], BaseException]
) -> T:
    """Await ``awaitable``; if it outlives ``timeout``, cancel it and raise ``on_timeout()``.

    ``asyncio.timeout`` semantics at the keeper's price: an outside cancellation
    stays a cancellation, and a result that arrives despite the cancel is kept.
    """
    # The key must be unique while the call runs: a coroutine object is, a future
    # may be awaited by several callers at once.
    key = awaitable if type(awaitable) is CoroutineType else object()
    keeper, generation = file_deadline(key, timeout)
    try:
        result = await awaitable
    except asyncio.CancelledError:
        if generation.pop(key, None) is None and keeper.settle_fired(key):
            raise on_timeout() from None
        raise
    except BaseException:
        if generation.pop(key, None) is None:
            keeper.settle_fired(key)
        raise
    if generation.pop(key, None) is None:
        keeper.settle_fired(key)
    return result
