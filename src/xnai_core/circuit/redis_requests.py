"""One circuit's requests to Redis, and what becomes of one whose answer was lost.

docs/redis.md, "At most once" and "Cancellation-safe". A request is a script sent
with a request id as a job of the client's link: a caller's cancellation or deadline
only stops that caller waiting, never the send. Its answer goes into the mirror
(:class:`~.redis_view.CircuitMirror`). An answer that was lost (dropped, late,
unreadable, or Redis failed meanwhile) leaves the request's effect unknown, so it is
settled in the background as soon as Redis answers:

- a report (success, failure, release) is sent again with the same request id:
  Redis runs it if it never did, or replays its first answer (resent for at most
  30 s after the first send, half the request log's horizon);
- an admission nobody will use gives back the permit it may have taken: RELEASE by
  request id frees it, or marks the request cancelled if Redis has not run it yet.

So a permit never waits for its lease because of a lost answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from .config import CircuitBreakerConfig
from .machine import Step
from .redis_codec import Reply, decode_reply
from .redis_link import RedisLink, ScriptRun, backoff, patiently, setup_timeout
from .redis_view import CircuitMirror
from .redis_wire import Wire

__all__ = ["Requests"]

# Reports whose lost answer is resolved in the background by resending their request.
_REPORTS = frozenset({"success", "failure", "release"})
# A request is resent only within this long of its first send (seconds); each send is
# read for at most LATE_CAP (30 s) more, and the request log keeps an answer for 120 s
# (HORIZON in redis_scripts), so every copy of a request finds its answer.
_RESEND_HORIZON = 30.0


class Requests:
    """Requests of the circuit ``config`` names, over ``wire``, answered into ``mirror``."""

    def __init__(
        self, config: CircuitBreakerConfig, wire: Wire, mirror: CircuitMirror, op_timeout: float
    ) -> None:
        self.config = config
        self.op_timeout = op_timeout
        self._wire = wire
        self._mirror = mirror

    async def ask(
        self, script: str, extra: Sequence[str], wait: float, *, rid: bool = False
    ) -> Reply | None:
        """Run ``script``, wait up to ``wait`` and mirror its answer; None as for
        :meth:`.Wire.read`. ``rid``: carry a request id (a lost report is resolved)."""
        link = self._wire.link
        if link is None:
            return None
        mirror = self._mirror
        request = link.request_id() if rid else ""
        installs = mirror.installs
        run = self.send(script, extra, request)
        if not await link.settle(run, wait):
            self._wire.deadline_passed(run)
            reply = None
        else:
            reply = self._wire.read(run, script, request)
        if reply is not None:
            mirror.take(reply, None, installs, answers=request)
        elif request and script in _REPORTS:
            self.resolve_later(run, script, extra, request)
        return reply

    def send(
        self, script: str, extra: Sequence[str], rid: str, reason: str | None = None
    ) -> ScriptRun:
        """Send ``script`` as this store's request ``rid`` ("": none), whose transition
        is called ``reason`` (None: in the machine's words): news of it, whether its
        message, its answer or a read comes first, is of this store's own change."""
        if rid:
            self._mirror.expect(rid, reason)
        return self._wire.send(script, extra, rid)

    async def call(self, script: str, extra: Sequence[str]) -> Reply | None:
        """Run ``script`` with ``extra`` arguments and return its answer unmirrored
        (tests ask Redis directly with it, as a process whose mirror lags would)."""
        link = self._wire.link
        if link is None:
            return None
        run = self._wire.send(script, extra)
        if not await link.settle(run, self.op_timeout):
            self._wire.deadline_passed(run)
            return None
        return self._wire.read(run, script, "")

    async def report(
        self,
        script: str,
        extra: Sequence[str],
        budget: float,
        step: Step,
        *,
        reason: str | None = None,
        forced: bool | None = None,
        after: Callable[[], None] | None = None,
    ) -> None:
        """Send a report as a job of the link and wait for it at most ``budget``.

        The job runs to its end whoever waits: a caller's cancellation or deadline
        never interrupts a send (it would leave the request's effect unknown). Should
        Redis go away meanwhile, ``step`` is applied locally instead.
        """
        link = self._wire.link
        assert link is not None
        wire, mirror = self._wire, self._mirror

        async def job() -> None:
            try:
                request = link.request_id()
                installs = mirror.installs
                run = self.send(script, extra, request, reason)
                reply = None
                if await link.settle(run, self.op_timeout):
                    reply = wire.read(run, script, request)
                else:
                    wire.deadline_passed(run)
                if reply is not None:
                    mirror.take(reply, reason, installs, answers=request)
                else:
                    if script in _REPORTS:
                        self.resolve_later(run, script, extra, request)
                    if not mirror.synced:  # Redis went away: decide here
                        mirror.apply_locally(step, reason, forced=forced)
            finally:
                if after is not None:
                    after()

        task = link.spawn(job(), name=f"xnai-redis-{script}")
        if budget > 0:
            await patiently(task, budget)

    # -- lost answers --------------------------------------------------------

    def resolve_later(self, run: ScriptRun, script: str, extra: Sequence[str], rid: str) -> None:
        link = self._wire.link
        if link is not None:
            link.spawn(self._resolve(link, run, script, extra, rid), name="xnai-redis-resolve")

    async def _resolve(
        self, link: RedisLink, run: ScriptRun, script: str, extra: Sequence[str], rid: str
    ) -> None:
        """Settle a report whose answer was lost: it may or may not have run, and if it
        did not, a trial's permit stays held in Redis for its whole lease, wedging the
        half-open circuit. So it is sent again with the same request id once Redis
        answers: Redis runs it if it never did, or replays the first answer (at most
        once). Tried until Redis answers, for less than half the request log's horizon
        (a resend after that could run twice) and never past the lease. A first send
        still in flight (a silent connection may hold it for ever) is not waited for
        past ``op_timeout``: whichever of the two runs first, the other replays it."""
        await asyncio.wait((run.task,), timeout=self.op_timeout)
        until = run.sent + min(self.config.lease_seconds, _RESEND_HORIZON)
        tries = 0
        wire, mirror = self._wire, self._mirror
        while wire.link is link and not link.closed and time.monotonic() < until:
            if not link.down:
                installs = mirror.installs
                again = self.send(script, extra, rid)
                if await link.settle(again, setup_timeout(self.op_timeout)):
                    # Never acknowledged: a copy of the first send may still reach Redis
                    # (redis-py retrying it); the request log must still know it then.
                    reply = wire.read(again, script, rid, ack=False)
                    if reply is not None:
                        if mirror.synced:
                            mirror.take(reply, None, installs, answers=rid)
                        else:
                            mirror.answered(rid)
                        return
                else:
                    wire.deadline_passed(again)
            tries += 1
            await asyncio.sleep(backoff(tries))

    def give_back_later(self, run: ScriptRun, rid: str) -> None:
        """Give back the permit the admission ``run`` (request ``rid``) may have taken:
        its caller left, or its answer was lost or came too late."""
        link = self._wire.link
        if link is not None:
            link.spawn(self._give_back(link, run, rid), name="xnai-redis-give-back")

    async def _give_back(self, link: RedisLink, run: ScriptRun, rid: str) -> None:
        """Its answer, once in, says whether it took a permit; if it never comes,
        RELEASE by request id frees whatever that request took, or cancels it if Redis
        has not run it yet. Tried until Redis answers or the lease would have ended
        anyway."""
        await asyncio.wait((run.task,))
        task = run.task
        if not task.cancelled() and task.exception() is None:
            try:
                reply = decode_reply(task.result())
            except ValueError:
                reply = None
            if reply is not None and (reply.admitted != 1 or reply.permit == 0):
                return  # it took nothing
        until = time.monotonic() + self.config.lease_seconds
        tries = 0
        while self._wire.link is link and not link.closed and time.monotonic() < until:
            if not link.down:
                reply = await self.ask("release", ("", "0", rid), setup_timeout(self.op_timeout))
                if reply is not None:
                    return
            tries += 1
            await asyncio.sleep(backoff(tries))
