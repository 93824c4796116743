"""Single flight: concurrent requests for the same key share one call.

The first caller for a key starts the call as a task; every caller that arrives
while it runs awaits the same task. The task is shielded: a cancelled caller
stops waiting, but the call goes on for the others (and, for a cache, still
stores its answer). Each caller gets the result or the exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Deduplicates concurrent calls by key, within one process and event loop."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Task[T]] = {}
        self.started = 0
        self.joined = 0

    def __len__(self) -> int:
        """How many flights are in the air."""
        return len(self._flights)

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, or join the flight already running for ``key``."""
        loop = asyncio.get_running_loop()
        task = self._flights.get(key)
        if task is None or task.get_loop() is not loop:
            task = loop.create_task(_await(call))
            self._flights[key] = task
            task.add_done_callback(lambda done: self._land(key, done))
            self.started += 1
        else:
            self.joined += 1
        return await asyncio.shield(task)

    def _land(self, key: str, task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        # Mark the outcome as seen, so a flight whose callers were all cancelled
        # does not log "exception was never retrieved".
        if not task.cancelled():
            task.exception()


async def _await(call: Callable[[], Awaitable[T]]) -> T:
    return await call()
