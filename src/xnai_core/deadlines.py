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

Cancellation stays correct: the task's ``cancelling()`` count is recorded when
the call is filed, and a cancellation is reported as a timeout only when the
keeper caused it and nothing else asked for one (the rule ``asyncio.timeout``
applies), so an outer cancel, an enclosing ``asyncio.timeout`` or a ``TaskGroup``
is never swallowed.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
from itertools import count
from typing import Any

TICK = 0.005

Generation = dict[object, tuple["asyncio.Task[Any]", int]]
"""Calls filed in one tick for one timeout: key -> (task, cancelling() when filed)."""

# The running task of each loop, as asyncio itself records it. asyncio.current_task
# is a Python function in 3.11 that first asks for the running loop; reading this
# mapping with a loop we already know is several times cheaper.
_current_tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] = asyncio.tasks._current_tasks  # type: ignore[attr-defined]
_thread_keeper = threading.local()


class DeadlineKeeper:
    """The deadlines of every timed call in flight on one event loop.

    Used only from its loop's thread.
    """

    __slots__ = ("_closed", "_due_handle", "_fired", "_order", "_ticker", "loop", "open")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.open: dict[float, Generation] = {}  # timeout -> the generation filling now
        # Closed generations by due time: (due, tie-breaker, generation).
        self._closed: list[tuple[float, int, Generation]] = []
        self._order = count()
        self._fired: dict[object, tuple[asyncio.Task[Any], int]] = {}
        self._ticker: asyncio.TimerHandle | None = None
        self._due_handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Calls filed and not yet taken back (fired ones included)."""
        filed = sum(map(len, self.open.values()))
        return filed + sum(len(gen) for _, _, gen in self._closed) + len(self._fired)

    def file(self, task: asyncio.Task[Any], key: object, timeout: float) -> Generation:
        """File ``task`` under ``key`` (unique while the call runs) with ``timeout``."""
        gen = self.open.get(timeout)
        if gen is None:
            gen = self.open[timeout] = {}
        gen[key] = (task, task.cancelling())
        if self._ticker is None:
            self._ticker = self.loop.call_later(TICK, self._tick)
        return gen

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
        self._ticker = None
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


def _keeper_of_running_loop() -> DeadlineKeeper:
    keeper: DeadlineKeeper | None = getattr(_thread_keeper, "keeper", None)
    loop = asyncio.get_running_loop()
    if keeper is None or keeper.loop is not loop:
        keeper = _thread_keeper.keeper = DeadlineKeeper(loop)
    return keeper


def file_deadline(key: object, timeout: float) -> tuple[DeadlineKeeper, Generation]:
    """File the current task's deadline; returns what :func:`drop_deadline` needs.

    The keeper of this thread's running loop is cached per thread. The cache is
    checked by asking asyncio which task that loop is running: a loop that is not
    running in this thread has none, so only the first call in a new loop pays
    for ``get_running_loop``.
    """
    keeper: DeadlineKeeper | None = getattr(_thread_keeper, "keeper", None)
    task = None if keeper is None else _current_tasks.get(keeper.loop)
    if task is None:
        keeper = _keeper_of_running_loop()
        task = _current_tasks.get(keeper.loop)
        if task is None:
            raise RuntimeError("a deadline needs a running asyncio task")
    assert keeper is not None
    return keeper, keeper.file(task, key, timeout)


def pending_deadlines() -> int:
    """Deadlines still filed on this thread's current keeper (for tests and diagnostics)."""
    keeper: DeadlineKeeper | None = getattr(_thread_keeper, "keeper", None)
    return 0 if keeper is None else len(keeper)
