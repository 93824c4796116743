"""A per-service notification lane: jobs run in order, off the check loop.

Alert handlers, recovery callbacks and the recovery hook may be slow (a webhook,
a service restart). They run here, one after another, so a check never waits
for them and their order per service is kept. The queue is bounded: if a hook is
stuck, the oldest pending jobs are dropped (and logged), never memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("xnai_core.health.monitor")

Job = Callable[[], Awaitable[None]]


class Lane:
    """Runs queued jobs one at a time in a task that exists only while there is work."""

    def __init__(self, label: str, limit: int = 256) -> None:
        self._label = label
        self._pending: deque[Job] = deque(maxlen=limit)
        self._worker: asyncio.Task[None] | None = None
        self._dropped = 0

    def push(self, job: Job) -> None:
        """Queue ``job``; start the worker if it is idle. Needs a running loop."""
        if len(self._pending) == self._pending.maxlen:
            self._dropped += 1
            logger.warning(
                "notification queue full, dropping the oldest job",
                extra={"lane": self._label, "dropped": self._dropped},
            )
        self._pending.append(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(
                self._drain(), name=f"xnai-health-notify-{self._label}"
            )

    def runs_in(self, task: asyncio.Task[Any] | None) -> bool:
        """True if ``task`` is this lane's worker (a job of this lane is calling)."""
        return task is not None and task is self._worker

    async def _drain(self) -> None:
        me = asyncio.current_task()
        # A worker detached by aclose() (closed from inside its own job) stops
        # after that job: a later push() starts a fresh worker, never two at once.
        while self._pending and self._worker is me:
            job = self._pending.popleft()
            try:
                await job()
            except Exception:
                logger.exception("notification failed", extra={"lane": self._label})

    async def idle(self) -> None:
        """Wait until every queued job has run.

        Called from one of this lane's own jobs, it returns at once: a job cannot
        wait for itself (nor for the jobs queued behind it).
        """
        current = asyncio.current_task()
        while self._worker is not None and not self._worker.done():
            worker = self._worker
            if worker is current:
                return
            try:
                await asyncio.shield(worker)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if worker.cancelled() and (current is None or not current.cancelling()):
                    return  # the lane was closed under us: nothing left to wait for
                raise

    async def aclose(self, spare: asyncio.Task[Any] | None = None) -> None:
        """Drop pending jobs and cancel the running one.

        A job never cancels or awaits itself: called from inside one of this
        lane's jobs (or when the worker is ``spare``), the running job is left to
        finish and nothing queued runs after it.
        """
        self._pending.clear()
        worker, self._worker = self._worker, None
        if worker is None or worker.done():
            return
        if worker is asyncio.current_task() or worker is spare:
            return
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
