"""Per-call timeouts that cost almost nothing: one deadline keeper per event loop.

``asyncio.timeout`` pushes a timer handle on the loop's heap and cancels it again
for every call, about 3.4 us on a 2-core machine: many times the rest of a
breaker's work. Almost every protected call ends long before its deadline, so a
keeper here files each deadline in a coarse bucket (a dict keyed by
``ceil(deadline / TICK)``) and arms ONE loop timer, for the earliest bucket. A call
that ends removes its entry (two dict operations). When a bucket comes due, every
task still in it is cancelled, exactly as ``asyncio.timeout`` would, and the call
site turns that cancellation into ``TimeoutError``.

Precision: a timeout never fires before its deadline, and fires within ``TICK``
(5 ms) after it, plus however long the event loop is blocked at that moment.

Cancellation stays correct: the task's ``cancelling()`` count is recorded when the
deadline is armed, and a cancellation is reported as a timeout only when the
keeper caused it and nothing else asked for one (the rule ``asyncio.timeout``
applies), so an outer cancel, an enclosing ``asyncio.timeout`` or a ``TaskGroup``
is never swallowed.
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import weakref
from itertools import count

TICK = 0.005
_INVERSE_TICK = 1.0 / TICK

Token = tuple[int, int]
"""(bucket index, sequence number): what ``arm`` hands out and ``disarm`` takes back."""

_Entry = tuple[asyncio.Task[object], int]


class DeadlineKeeper:
    """The deadlines of every call in flight on one event loop.

    Used only from its own loop's thread. Holds no strong reference to the loop,
    so a closed loop and its keeper can be collected.
    """

    __slots__ = ("__weakref__", "_buckets", "_due", "_fired", "_handle", "_seq")

    def __init__(self) -> None:
        self._buckets: dict[int, dict[int, _Entry]] = {}
        self._due: list[int] = []  # bucket indices, a heap; may hold emptied ones
        self._fired: dict[int, _Entry] = {}  # seq -> entry, cancelled and not yet disarmed
        self._handle: asyncio.TimerHandle | None = None
        self._seq = count()

    def __len__(self) -> int:
        """Deadlines armed and not yet disarmed (fired ones included)."""
        return sum(map(len, self._buckets.values())) + len(self._fired)

    def arm(self, loop: asyncio.AbstractEventLoop, timeout: float) -> Token:
        """File a deadline ``timeout`` seconds from now for the current task."""
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a deadline needs a running task")
        index = int((loop.time() + timeout) * _INVERSE_TICK) + 1
        seq = next(self._seq)
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = {}
            heapq.heappush(self._due, index)
            if self._handle is None or self._due[0] == index:
                self._rearm(loop)
        bucket[seq] = (task, task.cancelling())
        return index, seq

    def disarm(self, token: Token) -> bool:
        """Remove a deadline; False when it had already fired (see :meth:`expired`)."""
        index, seq = token
        bucket = self._buckets.get(index)
        if bucket is None or bucket.pop(seq, None) is None:
            return False
        if not bucket:
            del self._buckets[index]
        return True

    def settle_fired(self, token: Token) -> bool:
        """For a deadline that fired: take back our cancellation.

        Returns True when the task's cancellation came from this deadline alone
        (the call timed out), False when someone else cancelled the task too.
        """
        entry = self._fired.pop(token[1], None)
        if entry is None:
            return False
        task, baseline = entry
        return task.uncancel() <= baseline

    def _rearm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._handle is not None:
            self._handle.cancel()
        # Emptied buckets leave stale indices behind; skip them before arming.
        while self._due and self._due[0] not in self._buckets:
            heapq.heappop(self._due)
        if self._due:
            self._handle = loop.call_at(self._due[0] * TICK, self._fire)
        else:
            self._handle = None

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        self._handle = None
        # The loop may run a timer up to its clock resolution early; allow for it.
        now = loop.time() + 1e-6
        while self._due and self._due[0] * TICK <= now:
            bucket = self._buckets.pop(heapq.heappop(self._due), None)
            if not bucket:
                continue
            for seq, entry in bucket.items():
                task = entry[0]
                if not task.done():
                    self._fired[seq] = entry
                    task.cancel()
        self._rearm(loop)


_keepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DeadlineKeeper] = (
    weakref.WeakKeyDictionary()
)
_keepers_lock = threading.Lock()


def keeper_for(loop: asyncio.AbstractEventLoop) -> DeadlineKeeper:
    """The keeper of ``loop``, created on first use."""
    with _keepers_lock:
        keeper = _keepers.get(loop)
        if keeper is None:
            keeper = _keepers[loop] = DeadlineKeeper()
        return keeper
