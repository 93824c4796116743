"""Admitting a call to a shared circuit: from the mirror when it can, else one ADMIT.

docs/redis.md, "A local mirror" (an open circuit rejects locally until its recovery
timeout has passed on the Redis clock; a half-open circuit whose permits are all
taken rejects locally too: :func:`.machine.answer_locally`), "One deadline per call"
(the failure report in flight, the admission lock and the ADMIT script share the
call's deadline) and "Cancellation-safe" (an admission whose caller left, or whose
answer was lost or came too late, gives its permit back in the background).

One ADMIT script at a time per process and circuit: when the circuit half-opens
under load, the callers after the first few find the permits gone in the mirror
instead of each asking Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from . import machine
from .config import CircuitBreakerConfig
from .machine import Admission, CircuitState, Ticket
from .redis_failures import FailureReports
from .redis_link import patiently
from .redis_mirror import Verdict
from .redis_requests import Requests
from .redis_view import CircuitMirror
from .redis_wire import Wire

__all__ = ["Admissions", "left"]


class Admissions:
    """Admissions of the circuit ``config`` names."""

    def __init__(
        self,
        config: CircuitBreakerConfig,
        wire: Wire,
        mirror: CircuitMirror,
        requests: Requests,
        failures: FailureReports,
    ) -> None:
        self.config = config
        self._wire = wire
        self._mirror = mirror
        self._requests = requests
        self._failures = failures
        self._lock: asyncio.Lock | None = None

    async def admit(self, deadline: float, nowait: Callable[[], Admission | None]) -> Admission:
        """Admit a call or reject it, waiting for Redis until ``deadline`` at most;
        ``nowait()`` is the store's answer without a round trip, if it has one."""
        sender = self._failures.sender
        if sender is not None and left(deadline) > 0:
            # A failure report on its way may open the circuit: wait for it.
            await patiently(sender, left(deadline))
        answer = nowait()
        if answer is not None:
            return answer
        # Past the recovery timeout, or half-open with permits left: Redis decides.
        if self._lock is None:
            self._lock = asyncio.Lock()
        try:
            async with asyncio.timeout(left(deadline)):
                await self._lock.acquire()
        except TimeoutError:
            return Admission(None, None)  # Redis is slow to hand out permits: not now
        try:
            mirror = self._mirror
            snap = mirror.snap
            if snap.state is CircuitState.CLOSED:
                return Admission(Ticket(snap.epoch))
            if not mirror.synced:
                return mirror.admit_locally()
            answer = machine.answer_locally(snap, self.config, mirror.now())
            if answer is not None:
                return answer
            return await self._admit_remotely(deadline)
        finally:
            self._lock.release()

    async def _admit_remotely(self, deadline: float) -> Admission:
        wire, mirror = self._wire, self._mirror
        link = wire.link
        assert link is not None
        rid = link.request_id()
        installs = mirror.installs
        run = self._requests.send("admit", (), rid)
        try:
            settled = await link.settle(run, left(deadline))
        except asyncio.CancelledError:
            self._requests.give_back_later(run, rid)  # the caller left: its permit goes back
            raise
        reply = wire.read(run, "admit", rid) if settled else None
        if not settled:
            wire.deadline_passed(run)
        if reply is None or mirror.take(reply, None, installs, answers=rid) is Verdict.LOST:
            # No usable answer (Redis away, unreadable, lost state): whatever the
            # script took is given back as soon as Redis answers.
            self._requests.give_back_later(run, rid)
            return mirror.admit_locally() if not mirror.synced else Admission(None, None)
        if reply.admitted == 1:
            return Admission(Ticket(reply.snap.epoch, reply.permit))
        return Admission(None, reply.retry_after)


def left(deadline: float) -> float:
    """Seconds left until ``deadline`` (``time.monotonic()``), never negative."""
    return max(0.0, deadline - time.monotonic())
