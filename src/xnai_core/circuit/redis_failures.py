"""Failure reports of one circuit, batched: one FAILURE script in flight at a time.

docs/redis.md, "One Lua script per transition" (within one process, one FAILURE
script per circuit is in flight at a time: the failures that arrive meanwhile go
together, as a count, in the next one) and "Cancellation-safe" (a batch is sent
once: a cancelled caller never makes another resend it, and every caller of a batch
wakes at once when its answer is in). So a burst of N failing calls costs two round
trips and one connection, not N connections of the client's pool.

Failures that change nothing (an older epoch's, or an open circuit's) cost no round
trip and no queueing (:func:`.machine.failure_changes`). While the store is out of
step with Redis they are counted on the mirror. A batch whose answer was lost is
Redis's to count (resent by request id): it is counted locally too only when Redis
went away before it was sent, or when nothing reached the mirror while it was out.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from . import machine
from .config import CircuitBreakerConfig
from .machine import Ticket
from .redis_requests import Requests
from .redis_view import CircuitMirror
from .redis_wire import Wire

__all__ = ["Batch", "FailureReports"]


@dataclass(slots=True, eq=False)
class Batch:
    """Failures of one epoch gathered for one FAILURE script; ``done`` when answered."""

    epoch: int
    done: asyncio.Future[None]
    count: int = 0


class FailureReports:
    """The failure reports of the circuit ``config`` names."""

    def __init__(
        self,
        config: CircuitBreakerConfig,
        wire: Wire,
        mirror: CircuitMirror,
        requests: Requests,
        op_timeout: float,
    ) -> None:
        self.config = config
        self.op_timeout = op_timeout
        self._wire = wire
        self._mirror = mirror
        self._requests = requests
        # Failures being gathered, and the task sending them (one FAILURE in flight).
        self._gathering: Batch | None = None
        self._sender: asyncio.Task[None] | None = None

    @property
    def sender(self) -> asyncio.Task[None] | None:
        """The task sending the failures (one FAILURE script in flight), if any."""
        return self._sender

    @property
    def idle(self) -> bool:
        """No failure gathered nor on its way."""
        return self._sender is None and self._gathering is None

    def add(self, ticket: Ticket) -> Batch | None:
        """Add a failure to the batch for the next FAILURE script; None if it needs
        no round trip (fenced by a newer epoch or an open circuit, or counted here)."""
        mirror = self._mirror
        if not machine.failure_changes(mirror.snap, ticket):
            return None
        link = self._wire.link
        if not mirror.synced or link is None:
            mirror.apply_locally(_on_failure(self.config, ticket))
            return None
        batch = self._gathering
        if batch is None or batch.epoch != ticket.epoch:
            if batch is not None:
                batch.done.set_result(None)  # an older epoch's failures count nowhere
            batch = self._gathering = Batch(ticket.epoch, link.loop.create_future())
        batch.count += 1
        if self._sender is None:
            mirror.failures_pending = True
            mirror.refresh_hot()
            self._sender = link.spawn(self._send_all(), name="xnai-redis-failures")
        return batch

    async def _send_all(self) -> None:
        """Send the batches one after the other: the batch gathered while one is in
        flight goes next, as one script with its count, which the script applies as
        the machine would one by one."""
        try:
            while (batch := self._gathering) is not None:
                self._gathering = None
                try:
                    await self._send(batch)
                finally:
                    if not batch.done.done():
                        batch.done.set_result(None)
        finally:
            self._sender = None
            self._mirror.failures_pending = False
            self._mirror.refresh_hot()

    async def _send(self, batch: Batch) -> None:
        mirror = self._mirror
        ticket = Ticket(batch.epoch)
        if not machine.failure_changes(mirror.snap, ticket):
            return  # the circuit moved on while they waited: they count nowhere
        if mirror.synced:
            installs = mirror.installs
            reply = await self._requests.ask(
                "failure", (str(batch.epoch), "0", str(batch.count)), self.op_timeout, rid=True
            )
            if reply is not None or mirror.synced:
                return  # counted (or unreadable: Redis ran it, the resync will tell)
            if mirror.installs != installs:
                # Its answer is lost and news reached the mirror while it was out: that
                # news may hold this very batch (it ran, and its message came), so it
                # is not counted here again. It is Redis's to count: resent by request
                # id once Redis answers, it counts there once.
                return
        step = _on_failure(self.config, ticket)
        for _ in range(batch.count):  # Redis went away: count them here
            mirror.apply_locally(step)


def _on_failure(config: CircuitBreakerConfig, ticket: Ticket) -> machine.Step:
    return lambda snap, now: machine.on_failure(snap, config, now, ticket)
