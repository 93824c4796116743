"""RedisLink: what the circuits of one client and key prefix share in one process.

The registered scripts, one pattern subscription for every circuit under the
prefix (:mod:`.redis_subscription`), the offset from this host's clock to Redis TIME,
whether Redis is known down, and one background task that listens and reconnects with
backoff (redis-py's equal jitter), and resyncs every circuit beside it (so a resync of
many circuits holds up no message and no heartbeat). The link knows its circuits only
through :class:`~.redis_members.LinkMember`: it tells them of outages and messages and
asks them to catch up; it never reaches into their state (docs/redis.md, "When Redis
is away").

Deadlines. A caller waits for a script at most its own budget (``op_timeout``);
the script itself runs as a task of the link that the caller's cancellation or
deadline never interrupts, so a reply that was already on its way is never
thrown away: the caller stops waiting, the answer is still read (and a permit it
took is given back). A script unanswered for ``op_timeout`` puts only its own
circuit out of step; the link then PINGs Redis (:meth:`RedisLink.suspect`) to tell
one late reply from an outage. Connecting, subscribing, loading the scripts and catching
up after an outage are the link's own business and get a longer deadline
(:func:`setup_timeout`), so a Redis 150 ms away comes back instead of flapping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias, TypeVar

import redis.asyncio as aioredis
from redis.backoff import EqualJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import MaxConnectionsError, ReadOnlyError

from .._redis_errors import POOL_FULL, REDIS_DOWN, describe, forget_demoted, pool_exhausted
from . import redis_scripts
from .redis_codec import text
from .redis_members import LinkMember, Members
from .redis_subscription import Subscription

logger = logging.getLogger("xnai_core.circuit.redis")

RedisClient: TypeAlias = "aioredis.Redis | aioredis.RedisCluster"
T = TypeVar("T")

# Reconnecting: 50 ms doubling to 5 s, equal jitter (at least half of it waited).
_RECONNECT = EqualJitterBackoff(cap=5.0, base=0.05)
# Set-up (connect, subscribe, load scripts, catch up) gets at least this long...
_SETUP_FLOOR = 5.0
# ...or this many times the circuits' op_timeout.
_SETUP_FACTOR = 10
# Waiting for a connection of a full pool: 1 ms doubling to 20 ms, equal jitter.
_POOL_WAIT = EqualJitterBackoff(cap=0.02, base=0.001)
# A script nobody waits for any more is read until this long after it was sent, then
# dropped (redis-py's retries of it end then); a resend is sent within the same span of
# the first, so every copy is over within a minute: half the request log's horizon.
LATE_CAP = 30.0
# A caller whose deadline passed yields this many times for a reply already received.
_LATE_YIELDS = 8

SCRIPTS = {
    "admit": redis_scripts.ADMIT,
    "success": redis_scripts.SUCCESS,
    "failure": redis_scripts.FAILURE,
    "release": redis_scripts.RELEASE,
    "force": redis_scripts.FORCE,
    "reset": redis_scripts.RESET,
    "read": redis_scripts.READ,
    "reconcile": redis_scripts.RECONCILE,
}


def setup_timeout(op_timeout: float) -> float:
    """The deadline of the link's own work (connecting, catching up)."""
    return max(_SETUP_FLOOR, _SETUP_FACTOR * op_timeout)


@dataclass(slots=True, eq=False)
class ScriptRun:
    """One script sent by the link: the task reading it, and what it is doing."""

    task: asyncio.Task[object] = field(init=False)
    # The link's outage count when it was sent: an answer from before an outage is
    # older than the local decisions made since.
    errors: int = 0
    sent: float = field(default_factory=time.monotonic)
    received: float = 0.0
    waiting_for_pool: bool = False
    # The sender's own count of times it fell out of step when it sent this: an answer
    # sent before its circuit fell out of step alone (a stall) is older than its state.
    detached: int = 0


class RedisLink:
    """The shared part of every circuit on one client, key prefix and event loop."""

    _links: ClassVar[weakref.WeakKeyDictionary[Any, dict[str, RedisLink]]] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def get(cls, client: RedisClient, prefix: str) -> RedisLink:
        loop = asyncio.get_running_loop()
        by_prefix = cls._links.setdefault(client, {})
        link = by_prefix.get(prefix)
        if link is None or link.loop is not loop or link.closed:
            link = by_prefix[prefix] = cls(client, prefix, loop)
        return link

    def __init__(self, client: RedisClient, prefix: str, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.prefix = prefix
        self.loop = loop
        self.subscription = Subscription(client, prefix)
        self.scripts: dict[str, AsyncScript] = {
            name: client.register_script(source) for name, source in SCRIPTS.items()
        }
        # Request ids: this link's random name and a counter (see redis_scripts).
        self._name = os.urandom(6).hex()
        self._requests = 0
        # Redis TIME runs on the wall clock; until we hear from it, assume ours.
        self.offset = time.time() - time.monotonic()
        self.down = False
        self.down_since = 0.0
        self.last_error: str | None = None
        # Bumped by every failed operation: an answer that was in flight meanwhile is
        # older than the local decisions made since, and is not mirrored.
        self.errors = 0
        self.closed = False
        # Counters for get_metrics().
        self.outages = 0
        self.late_replies = 0
        self._probe: asyncio.Task[None] | None = None
        self._resyncing: asyncio.Task[None] | None = None
        self._resync_soon = False
        self._members = Members()
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._logged_unexpected = False
        # Set while subscribed with every circuit synced; cleared on any failure.
        self.ready = asyncio.Event()
        # Set once the first connection attempt is over, whichever way it went.
        self.settled = asyncio.Event()

    # -- membership ----------------------------------------------------------

    def register(self, member: LinkMember) -> None:
        """Serve ``member`` until it unregisters or is garbage-collected."""
        self._members.add(member)
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run(), name=f"xnai-redis-link:{self.prefix}")

    async def unregister(self, member: LinkMember) -> None:
        self._members.remove(member)
        if not self._members:
            await self.aclose()

    def members(self) -> list[LinkMember]:
        """The circuits served now (strong references: do not keep the list)."""
        return self._members.alive()

    @property
    def silences(self) -> int:
        """Subscriptions found dead by the heartbeat and replaced."""
        return self.subscription.silences

    @property
    def channels(self) -> int:
        """How many circuits (channels) the link serves: its bookkeeping's size."""
        return len(self._members)

    async def aclose(self) -> None:
        self.closed = True
        task, self._task = self._task, None
        jobs = [job for job in self._jobs if job is not asyncio.current_task()]
        for job in jobs:
            job.cancel()
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            jobs.append(task)
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError
        await self.subscription.close()
        by_prefix = self._links.get(self.client)
        if by_prefix is not None and by_prefix.get(self.prefix) is self:
            del by_prefix[self.prefix]

    # -- requests ------------------------------------------------------------

    def request_id(self) -> str:
        """A request id no other request of any process carries."""
        self._requests += 1
        return f"{self._name}:{self._requests}"

    def spawn(self, coro: Coroutine[Any, Any, T], name: str = "xnai-redis-job") -> asyncio.Task[T]:
        """Run ``coro`` as the link's background job (cancelled when the link closes)."""
        job = self.loop.create_task(coro, name=name)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return job

    def send(self, name: str, keys: Sequence[str], args: Sequence[str]) -> ScriptRun:
        """Start script ``name``; its task runs to its end whoever waits for it."""
        run = ScriptRun(errors=self.errors)
        run.task = self.spawn(self._send(run, name, keys, args), name=f"xnai-redis-{name}")
        return run

    async def _send(
        self, run: ScriptRun, name: str, keys: Sequence[str], args: Sequence[str]
    ) -> object:
        script = self.scripts[name]
        waits = 0
        async with asyncio.timeout(LATE_CAP):
            while True:
                try:
                    if pool_exhausted(self.client):
                        # A BlockingConnectionPool would wait inside the script, where
                        # the wait looks like Redis not answering: wait here instead.
                        raise MaxConnectionsError("every connection of the pool is in use")
                    raw = await script(keys=keys, args=args)
                    run.received = time.monotonic()
                    return raw
                except POOL_FULL:
                    # Every connection of the client's pool is taken (many calls at
                    # once, or the application's own): no outage. Wait for one, as a
                    # blocking pool would; the caller's own deadline still holds.
                    run.waiting_for_pool = True
                    await asyncio.sleep(_POOL_WAIT.compute(waits))
                    waits += 1
                    run.waiting_for_pool = False

    async def settle(self, run: ScriptRun, seconds: float) -> bool:
        """Wait up to ``seconds`` for ``run``; True if it has ended.

        Never cancels it. When the deadline passes, the loop gets a few more turns
        first: after a stall (a blocking callback) the reply may already sit in the
        socket, and a timeout that fired late must not throw it away.
        """
        return await patiently(run.task, seconds)

    def note_late_reply(self) -> None:
        """A script answered after its caller had stopped waiting: Redis is alive."""
        self.late_replies += 1
        if self.down:
            self._wake.set()  # try to reconnect now rather than after the backoff

    # -- clock ---------------------------------------------------------------

    def redis_now(self) -> float:
        """This host's estimate of Redis TIME, in seconds."""
        return time.monotonic() + self.offset

    def observe_time(self, redis_now: float, sent: float, received: float) -> None:
        """Redis read its clock (``redis_now``) somewhere between ``sent`` and
        ``received``: the offset lies between the two ends. The estimate is kept while
        it fits (a slow round trip or a stalled loop narrows nothing, and its middle
        can be off by half of it); one that no longer fits (the clock stepped, or the
        estimate came from a slow round trip) moves to the middle."""
        low, high = redis_now - received, redis_now - sent
        if not low <= self.offset <= high:
            self.offset = (low + high) / 2

    # -- outages -------------------------------------------------------------

    def mark_down(self, exc: BaseException) -> None:
        """Redis failed us: every circuit of this link decides locally from now on.

        ``exc`` is one of :data:`REDIS_DOWN` (a WARNING once per outage) or anything
        else Redis refused us with (logged with its traceback once: it may be a bug).
        """
        self.last_error = describe(exc)
        self.errors += 1
        self.ready.clear()
        self.settled.set()
        if isinstance(exc, ReadOnlyError) and not self.closed:
            # The connection reached a demoted master: the reconnect must not reuse it.
            self.spawn(forget_demoted(self.client, exc), name="xnai-redis-forget-demoted")
        if not isinstance(exc, REDIS_DOWN) and not self._logged_unexpected:
            self._logged_unexpected = True
            logger.error(
                "unexpected error from redis for circuit breakers under %r",
                self.prefix,
                exc_info=exc,
                extra={"key_prefix": self.prefix},
            )
        if not self.down:
            self.down = True
            self.outages += 1
            self.down_since = time.monotonic()
            logger.warning(
                "redis unreachable for circuit breakers under %r (%s); "
                "deciding on local state until it answers again",
                self.prefix,
                self.last_error,
                extra={"key_prefix": self.prefix, "error": self.last_error},
            )
        for member in self.members():
            member.on_outage()

    def suspect(self, exc: BaseException, wait: float) -> None:
        """A script stayed unanswered for ``wait`` seconds: one late reply, or Redis away?

        A PING (on any connection of the pool) answers it: no answer within ``wait``
        either, and Redis is marked down for every circuit (``exc`` says why); an answer,
        and the circuits re-read at once (the one whose reply was late decides locally
        until then). A stall of one connection is no outage of the client.
        """
        if self.down or self.closed or self._probe is not None:
            return
        self._probe = self.spawn(self._ping(exc, wait), name="xnai-redis-probe")

    async def _ping(self, exc: BaseException, wait: float) -> None:
        try:
            # Waited for as a script is (never cancelled by the wait itself): a PONG
            # that arrived while the event loop was blocked past ``wait`` is read before
            # the deadline is believed, so a stall is not taken for an outage.
            ping = self.spawn(self._pong(), name="xnai-redis-ping")
            if not await patiently(ping, wait):
                ping.cancel()
                if not self.closed:
                    self.mark_down(exc)
                return
            if ping.cancelled():
                return  # the link is closing
            error = ping.exception()
            if error is None or isinstance(error, POOL_FULL):
                # Redis answered, or every connection is busy (this process, not
                # Redis): re-read the circuits.
                self.request_resync()
            elif not self.closed:
                self.mark_down(error)
        finally:
            self._probe = None

    async def _pong(self) -> object:
        if pool_exhausted(self.client):  # a blocking pool would wait: no answer either
            raise MaxConnectionsError("every connection of the pool is in use")
        return await self.client.ping()

    def request_resync(self) -> None:
        """Re-read every circuit at the next poll instead of at the next interval."""
        self._resync_soon = True

    def _mark_up(self) -> None:
        if self.down:
            self.down = False
            self._logged_unexpected = False
            logger.info(
                "redis answers again for circuit breakers under %r after %.1fs; state reconciled",
                self.prefix,
                time.monotonic() - self.down_since,
                extra={"key_prefix": self.prefix},
            )

    # -- the background task -------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._serve()
        except asyncio.CancelledError:
            # Closed, or the loop is shutting down (asyncio.run cancels what is left):
            # say goodbye on the subscription's connection either way.
            await self.subscription.drop()
            raise

    async def _serve(self) -> None:
        failures = 0
        next_resync = 0.0
        while not self.closed:
            # What the circuits want, without holding on to them across a wait: a
            # dropped breaker must be collectable whatever the link is doing.
            members = self.members()
            if not members:
                # Every circuit was dropped without close(): nothing left to serve.
                await self.aclose()
                return
            interval = min(member.resync_interval for member in members)
            setup = setup_timeout(max(member.op_timeout for member in members))
            del members
            if not self.subscription.open or self.down:
                self.ready.clear()
                synced = await self._connect(setup)
                if self.closed:
                    return
                if not synced:
                    failures += 1
                    await self._pause(backoff(failures))
                    continue
                failures = 0
                self._mark_up()
                self.ready.set()
                self.settled.set()
                next_resync = time.monotonic() + interval
            if not await self.subscription.listen(
                setup, self._members.deliver, self.request_resync
            ):
                continue  # the subscription broke or fell silent: subscribe again
            due = self._resync_soon or time.monotonic() >= next_resync
            if due and not self.down and self._resyncing is None:
                next_resync = time.monotonic() + interval
                self._resync_soon = False
                # A lost message is caught here, and a circuit still deciding
                # locally (it joined while we reconnected) is brought in. A job of its
                # own: with many circuits it takes many round trips, and the messages
                # (a trip elsewhere) and the heartbeat must not wait for it.
                self._resyncing = self.spawn(self._resync(), name="xnai-redis-resync")

    async def _pause(self, seconds: float) -> None:
        self._wake.clear()
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _resync(self) -> None:
        try:
            await self._catch_up()
        finally:
            self._resyncing = None

    async def _connect(self, setup: float) -> bool:
        """Subscribe, load the scripts, and bring every circuit in step (every
        subscription is followed by a resync: messages may have been missed)."""
        subscription = self.subscription
        if self._resyncing is not None:
            # A resync from before the outage ends at its next circuit (Redis failed
            # since); one catch-up of a circuit at a time.
            await asyncio.wait((self._resyncing,))
        try:
            async with asyncio.timeout(setup):
                await subscription.subscribe()
                await self._load_scripts()
        except Exception as exc:
            if not self.closed:
                self.mark_down(exc)
            await subscription.drop()
            return False
        if not await self._catch_up():
            await subscription.drop()
            return False
        subscription.heard()
        return True

    async def _load_scripts(self) -> None:
        # EVALSHA would reload a missing script itself, but at the price of two more
        # round trips on some caller's failure: load them all up front instead
        # (after every reconnect too: a restarted server has forgotten them).
        scripts = list(self.scripts.values())
        client = self.client
        if isinstance(client, aioredis.RedisCluster):
            shas = [await client.script_load(script.script) for script in scripts]
        else:
            async with client.pipeline(transaction=False) as pipe:
                for script in scripts:
                    pipe.script_load(script.script)
                shas = await pipe.execute()
        for script, sha in zip(scripts, shas, strict=True):
            script.sha = text(sha)

    async def _catch_up(self) -> bool:
        """Catch every circuit up; False as soon as Redis fails (back off first).

        A circuit whose answer could not be used (unreadable, or changed here
        meanwhile) is a problem of that circuit alone: it keeps deciding locally, is
        tried again at the next resync, and the others go on.
        """
        errors = self.errors
        for ref in self._members.refs():
            member = ref()
            if member is None:
                continue
            if self.closed:
                return False
            await member.catch_up()
            del member
            if self.errors != errors:
                return False
        return True


def backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` (>= 1) failed attempts in a row to reach Redis:
    redis-py's equal jitter, at least half of ``min(5 s, 50 ms * 2**(failures-1))``."""
    return _RECONNECT.compute(failures - 1)


async def patiently(waited: asyncio.Future[Any], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``waited`` (never cancelling it); True if it is done.

    When the time is up, the loop gets a few more turns first: after a stall (a
    blocking callback) the answer may already sit in a socket or a callback queue, and
    a deadline that fired late must not throw it away.
    """
    if not waited.done() and seconds > 0:
        await asyncio.wait((waited,), timeout=seconds)
    for _ in range(_LATE_YIELDS):
        if waited.done():
            break
        await asyncio.sleep(0)
    return waited.done()
