"""The monitor's scheduler: one task per service, fixed delay after each run ends.

The first run waits ``jitter(interval)`` seconds (clamped to the interval) so a
fleet of checks does not start at once; each next run starts ``interval`` seconds
after the previous one *ends*, so runs of one service never overlap and a slow
service is not checked more often than it answers. A run that raises is logged
and the schedule goes on. Uses the loop's clock only (``asyncio.sleep``), so a
virtual-time loop runs hours of schedule in milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Scheduler", "uniform_jitter"]


def uniform_jitter(interval: float) -> float:
    """The default first-run delay: uniform over the interval (as the kubelet does)."""
    return random.uniform(0.0, interval)


class Scheduler:
    """Runs each service's check on its schedule in a task of its own."""

    def __init__(self, jitter: Callable[[float], float], log: logging.Logger) -> None:
        self._jitter = jitter
        self._log = log
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, interval: float, run: Callable[[], Awaitable[object]]) -> None:
        """Start ``name``'s schedule (no-op if it runs already). Needs a running loop."""
        task = self._tasks.get(name)
        if task is None or task.done():
            self._spawn(name, interval, run, None)

    def replace(self, name: str, interval: float, run: Callable[[], Awaitable[object]]) -> None:
        """Go on with ``name``'s schedule in a new task, its next run ``interval`` from now.

        For a schedule whose task is stuck in a run that ignores cancellation: the
        old task ends after that run, whenever it returns.
        """
        if name in self._tasks:
            self._spawn(name, interval, run, interval)

    def _spawn(
        self, name: str, interval: float, run: Callable[[], Awaitable[object]], delay: float | None
    ) -> None:
        self._tasks[name] = asyncio.get_running_loop().create_task(
            self._loop(name, interval, run, delay), name=f"xnai-health-{name}"
        )

    def detach(self, name: str) -> asyncio.Task[None] | None:
        """Stop scheduling ``name``; returns its task for the caller to cancel and await.

        A schedule detached from inside its own run ends after that run.
        """
        return self._tasks.pop(name, None)

    def detach_all(self) -> list[asyncio.Task[None]]:
        """:meth:`detach` every schedule."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        return tasks

    async def _loop(
        self,
        name: str,
        interval: float,
        run: Callable[[], Awaitable[object]],
        delay: float | None,
    ) -> None:
        me = asyncio.current_task()
        if delay is None:
            delay = min(max(self._jitter(interval), 0.0), interval)
        await asyncio.sleep(delay)
        while self._tasks.get(name) is me:
            try:
                await run()
            except Exception:
                # A bug must not end this service's monitoring.
                self._log.exception("health check loop error", extra={"xnai.service": name})
            if self._tasks.get(name) is not me:
                return
            await asyncio.sleep(interval)

    def task_of(self, name: str) -> asyncio.Task[Any] | None:
        """The schedule task of ``name``, if any."""
        return self._tasks.get(name)
