"""RedisStore: a circuit's state shared by every process through one Redis hash.

Every transition is one Lua script (:mod:`.redis_scripts`) making exactly the
decisions of :mod:`.machine`; each process keeps a *mirror* of the hash
(:mod:`.redis_mirror` says which news it takes in), fed by the scripts' replies,
by a pub/sub subscription and by a periodic resync (:mod:`.redis_link`), so:

- a successful call on a closed circuit with no failure pending makes no round
  trip (``hot_epoch`` is the mirror's epoch);
- a failure costs one round trip; failures of one circuit that arrive while its
  previous FAILURE script is in flight go together in the next one;
- an open circuit rejects locally until its recovery timeout ends, measured on
  the Redis clock;
- every script carries a request id and takes effect at most once, whatever the
  client's retry policy; a send is never interrupted by its caller's cancellation
  or deadline, and a permit whose answer was lost is given back when Redis answers;
- when Redis is unreachable, slow or broken, no Redis error reaches the caller: a
  call waits for Redis at most ``op_timeout`` in total, and once Redis is known down
  the store applies :mod:`.machine` to its mirror locally (mode :class:`Local`) and
  reconciles on return by the rule of docs/redis.md.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis

from . import machine
from .config import CircuitBreakerConfig
from .machine import Admission, CircuitState, Snapshot, Ticket
from .redis_codec import Reply, decode_reply, decode_snapshot, message_reply, us
from .redis_link import RedisClient, RedisLink, ScriptRun, backoff, patiently, setup_timeout
from .redis_mirror import Mirrored, Verdict, is_hot, judge
from .redis_wire import Wire
from .store import TransitionCallback

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_OP_TIMEOUT",
    "DEFAULT_RESYNC_INTERVAL",
    "Local",
    "RedisStore",
    "Synced",
    "decode_snapshot",
]

logger = logging.getLogger("xnai_core.circuit.redis")

DEFAULT_KEY_PREFIX = "xnai:cb:"
DEFAULT_OP_TIMEOUT = 0.25
DEFAULT_RESYNC_INTERVAL = 5.0
# A reconcile is run again when the circuit changes here during its round trip.
_RECONCILE_TRIES = 3
# Reports whose lost answer is resolved in the background by resending their request.
_REPORTS = frozenset({"success", "failure", "release"})
# A request is resent only within this long of its first send (seconds); each send is
# read for at most LATE_CAP (30 s) more, and the request log keeps an answer for 120 s
# (HORIZON in redis_scripts), so every copy of a request finds its answer.
_RESEND_HORIZON = 30.0
# What is left of the op_timeout of the call this task is making: set by acquire()
# with the ticket it handed out, used by that ticket's report, so the call's waits for
# Redis (admission, then report) share one budget, however long the call itself ran.
_CALL: contextvars.ContextVar[tuple[Ticket, float] | None] = contextvars.ContextVar(
    "xnai_redis_call", default=None
)


@dataclass(frozen=True, slots=True)
class Synced:
    """In step with Redis: the scripts decide, the mirror follows."""


@dataclass(frozen=True, slots=True)
class Local:
    """Deciding on the mirror alone with the machine: before the first sync
    (``cause`` "starting"), while Redis is away ("outage"), or after a reply of this
    circuit's came late while Redis answered others ("stall"). What the outage rule
    needs on return: whether the circuit opened here, or was forced open here, and
    the epoch of Redis's state the local decisions started from (``based_on``): a
    local opening is written back only over that very state, never over a newer one
    (its failures would then count twice)."""

    cause: str
    opened_here: bool = False
    forced_here: bool = False
    based_on: int = 0


SYNCED = Synced()

Mode = Synced | Local


@dataclass(slots=True, eq=False)
class _Failures:
    """Failures of one epoch gathered for one FAILURE script."""

    epoch: int
    done: asyncio.Future[None]
    count: int = 0


class RedisStore:
    """A circuit's state in one Redis hash, shared by every process that names it.

    ``client`` is a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``; the
    store never closes it. Nothing touches the network until the first call (or
    :meth:`start`). ``op_timeout`` bounds the time a call waits for Redis, in total;
    ``resync_interval`` is how often the mirror is re-read in case a message was
    lost; ``clock`` (seconds) replaces Redis TIME, for tests.
    """

    backend = "redis"

    def __init__(
        self,
        config: CircuitBreakerConfig,
        client: RedisClient,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
        resync_interval: float = DEFAULT_RESYNC_INTERVAL,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"'config' must be a CircuitBreakerConfig: {config!r}")
        if not isinstance(client, aioredis.Redis | aioredis.RedisCluster):
            raise TypeError(
                "'redis_client' must be a redis.asyncio.Redis or redis.asyncio.RedisCluster: "
                f"{type(client).__module__}.{type(client).__qualname__}"
            )
        if not isinstance(key_prefix, str) or not key_prefix:
            raise ValueError(f"'key_prefix' must be a non-empty string: {key_prefix!r}")
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError(f"'key_prefix' must not contain braces (hash tags): {key_prefix!r}")
        for name, value in (("op_timeout", op_timeout), ("resync_interval", resync_interval)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"'{name}' must be > 0 seconds: {value!r}")
            if value != value or value == float("inf"):
                raise ValueError(f"'{name}' must be a finite number of seconds: {value!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"'clock' must be callable or None: {clock!r}")
        # A key the client cannot encode fails every script in redis-py's encoder, which
        # would be taken for Redis being down for every circuit of the client.
        encoder = client.get_encoder()
        for setting, part in (("key_prefix", key_prefix), ("name", config.name)):
            try:
                encoder.encode(part)
            except UnicodeError:
                raise ValueError(
                    f"'{setting}' cannot be sent in the client's encoding "
                    f"({encoder.encoding!r}): {part!r}"
                ) from None
        self.config = config
        self.key = f"{key_prefix}{{{config.name}}}"
        self.channel = self.key
        self.key_prefix = key_prefix
        self.op_timeout = float(op_timeout)
        self.resync_interval = float(resync_interval)
        self._client = client
        self._clock = clock
        self._wire = Wire(
            config,
            self.key,
            op_timeout=self.op_timeout,
            clock=clock,
            on_stall=lambda: self._detach("stall"),
        )
        self._mirror = Snapshot()
        self._gen = ""  # lineage of the mirrored hash; "" until Redis answered once
        self._ver = 0
        self._installs = 0  # bumped on every mirror change: detects races with replies
        self.hot_epoch: int | None = None  # None until the stored state is known
        self._callbacks: list[TransitionCallback] = []
        self._start_lock: asyncio.Lock | None = None
        self._started = False
        self._mode: Mode = Local("starting")
        # Epochs of transitions made locally are negative, so no ticket of the
        # outage can ever match an epoch that Redis hands out.
        self._local_epoch = 0
        self._resetting: int | None = None
        self._admit_lock: asyncio.Lock | None = None
        # Failures being gathered, and the task sending them (one FAILURE in flight).
        self._gathering: _Failures | None = None
        self._sender: asyncio.Task[None] | None = None
        self._writing_back = False
        self.state_losses = 0

    @property
    def _link(self) -> RedisLink | None:
        """The client's link while started (the wire sends through it)."""
        return self._wire.link

    @_link.setter
    def _link(self, link: RedisLink | None) -> None:
        self._wire.link = link

    def __repr__(self) -> str:
        return (
            f"<RedisStore name={self.config.name!r} key={self.key!r} "
            f"state={self._mirror.state.value} available={self.available}>"
        )

    # -- StateStore ----------------------------------------------------------

    @property
    def available(self) -> bool:
        """True while this circuit is kept in step with Redis; False before the first
        sync and while Redis is unreachable (the store then decides locally)."""
        return self._started and self._mode is SYNCED

    @property
    def started(self) -> bool:
        """Whether this process has tried Redis for this circuit yet (a first call or
        :meth:`start`); before that, ``available`` is False but says nothing of Redis."""
        return self._started

    @property
    def mode(self) -> Mode:
        """:class:`Synced`, or :class:`Local` with why and what the outage rule needs."""
        return self._mode

    def snapshot(self) -> Snapshot:
        return self._mirror

    def add_transition_callback(self, callback: TransitionCallback) -> None:
        self._callbacks.append(callback)

    def backend_metrics(self) -> dict[str, Any]:
        """Counters of what happened between this process and Redis (see docs/redis.md)."""
        link = self._link
        return {
            "redis_outages": link.outages if link is not None else 0,
            "redis_subscription_silences": link.silences if link is not None else 0,
            "redis_late_replies": link.late_replies if link is not None else 0,
            "redis_stalls": self._wire.stalls,
            "redis_state_losses": self.state_losses,
            "redis_clock_clamps": self._wire.clock_clamps,
            "redis_replayed_requests": self._wire.replays,
        }

    async def start(self) -> None:
        """Load the stored state and subscribe now; the first call does it otherwise
        (waiting for it at most its ``op_timeout``).

        Never raises for Redis trouble. Waits at most the link's set-up deadline
        (``max(5 s, 10 * op_timeout)``): an unreachable Redis leaves the store deciding
        locally and reconnecting in the background.
        """
        await self._start(time.monotonic() + setup_timeout(self.op_timeout))

    async def _start(self, deadline: float) -> None:
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            link = RedisLink.get(self._client, self.key_prefix)
            self._link = link
            link.register(self)
            if not link.down:
                # The link's first connection subscribes, loads the scripts and
                # syncs this circuit; wait for it, but never past the deadline.
                try:
                    async with asyncio.timeout(_left(deadline)):
                        await link.settled.wait()
                except TimeoutError:
                    pass
                if self._mode is not SYNCED and link.ready.is_set():
                    await self._reconcile(_left(deadline))
            self._started = True
            self._install(self._mirror, self._mirror, None, announce=False)

    def acquire_nowait(self) -> Admission | None:
        if not self._started or self._sender is not None:
            return None  # not loaded yet, or a failure report on its way may open it
        snap = self._mirror
        if snap.state is CircuitState.CLOSED:
            return Admission(Ticket(snap.epoch))
        if self._mode is not SYNCED:
            return self._admit_locally()
        return machine.answer_locally(snap, self.config, self._now())

    async def acquire(self) -> Admission:
        # One deadline for everything this call waits for: loading, the failure
        # report in flight, the admission lock, the ADMIT script, and the report.
        deadline = time.monotonic() + self.op_timeout
        admission = await self._acquire(deadline)
        if admission.ticket is not None:
            _CALL.set((admission.ticket, _left(deadline)))
        return admission

    def _budget(self, ticket: Ticket) -> float:
        """What is left of the call's op_timeout for reporting ``ticket``: the rest of
        its admission's deadline when acquire() handed it out in this task."""
        call = _CALL.get()
        if call is None or call[0] is not ticket:
            return self.op_timeout
        _CALL.set(None)
        return call[1]

    async def _acquire(self, deadline: float) -> Admission:
        if not self._started:
            await self._start(deadline)
        sender = self._sender
        if sender is not None and _left(deadline) > 0:
            await patiently(sender, _left(deadline))
        answer = self.acquire_nowait()
        if answer is not None:
            return answer
        # Past the recovery timeout, or half-open with permits left: Redis decides.
        # One admission script at a time per process: when the circuit half-opens
        # under load, the callers after the first few find the permits gone in the
        # mirror instead of each asking Redis.
        if self._admit_lock is None:
            self._admit_lock = asyncio.Lock()
        try:
            async with asyncio.timeout(_left(deadline)):
                await self._admit_lock.acquire()
        except TimeoutError:
            return Admission(None, None)  # Redis is slow to hand out permits: not now
        try:
            snap = self._mirror
            if snap.state is CircuitState.CLOSED:
                return Admission(Ticket(snap.epoch))
            if self._mode is not SYNCED:
                return self._admit_locally()
            answer = machine.answer_locally(snap, self.config, self._now())
            if answer is not None:
                return answer
            return await self._admit_remotely(deadline)
        finally:
            self._admit_lock.release()

    async def _admit_remotely(self, deadline: float) -> Admission:
        link = self._link
        assert link is not None
        rid = link.request_id()
        installs = self._installs
        run = self._wire.send("admit", (), rid)
        try:
            settled = await link.settle(run, _left(deadline))
        except asyncio.CancelledError:
            self._give_back_later(run, rid)  # the caller left: its permit goes back
            raise
        reply = self._wire.read(run, "admit", rid) if settled else None
        if not settled:
            self._wire.deadline_passed(run)
        if reply is None or self._take(reply, None, installs) is Verdict.LOST:
            # No usable answer (Redis away, unreadable, lost state): whatever the
            # script took is given back as soon as Redis answers.
            self._give_back_later(run, rid)
            return self._admit_locally() if self._mode is not SYNCED else Admission(None, None)
        if reply.admitted == 1:
            return Admission(Ticket(reply.snap.epoch, reply.permit))
        return Admission(None, reply.retry_after)

    async def record_success(self, ticket: Ticket) -> None:
        budget = self._budget(ticket)
        snap = self._mirror
        if not machine.success_changes(snap, ticket):
            return  # nothing to change, here as in Redis
        step = _on_success(self.config, ticket)
        if self._mode is not SYNCED:
            self._apply_locally(step)
            return
        after: Callable[[], None] | None = None
        if snap.state is CircuitState.CLOSED:
            if self._resetting == ticket.epoch:
                return  # a reset of this epoch's failures is on its way
            self._resetting = ticket.epoch

            def after() -> None:
                self._resetting = None

        await self._report(
            "success", (str(ticket.epoch), str(ticket.permit)), budget, step, after=after
        )

    async def record_failure(self, ticket: Ticket) -> None:
        budget = self._budget(ticket)
        batch = self._enqueue_failure(ticket)
        if batch is not None and budget > 0:
            # Every waiter of a batch wakes at once when its answer is in; a caller's
            # cancellation or deadline never stops the send.
            await patiently(batch.done, budget)

    def record_failure_nowait(self, ticket: Ticket) -> Awaitable[object] | None:
        """Queue the failure for the next FAILURE script; what to wait for, if anything.

        A breaker with a fallback falls back without waiting for Redis: the failures of
        a burst share a report, and the next call of this circuit waits for it instead,
        within its own op_timeout. One report is waited for (within the call's budget):
        a lone failure that trips the circuit (the threshold's, or a trial's), so that a
        caller failing one call after another reads the circuit open once it tripped it.
        """
        budget = self._budget(ticket)
        snap, alone = self._mirror, self._sender is None and self._gathering is None
        batch = self._enqueue_failure(ticket)
        if batch is None or budget <= 0 or not alone:
            return None
        trips = snap.failure_count + batch.count >= self.config.failure_threshold
        if snap.state is CircuitState.HALF_OPEN or trips:
            return patiently(batch.done, budget)
        return None

    async def release(self, ticket: Ticket) -> None:
        budget = self._budget(ticket)
        if not machine.release_changes(self._mirror, ticket):
            return
        step = _on_release(ticket)
        if self._mode is not SYNCED:
            self._apply_locally(step)
            return
        await self._report("release", (str(ticket.epoch), str(ticket.permit), ""), budget, step)

    async def force(self, state: CircuitState) -> None:
        deadline = time.monotonic() + self.op_timeout
        if not self._started:
            await self._start(deadline)
        reason = "forced open" if state is CircuitState.OPEN else f"forced {state.value}"

        def step(snap: Snapshot, now: float) -> Snapshot:
            return machine.force(snap, state, now)

        forced = state is CircuitState.OPEN
        if self._mode is SYNCED:
            await self._report(
                "force", (state.value,), _left(deadline), step, reason=reason, forced=forced
            )
            return
        # While Redis is away: an operator's force_open is written back on return.
        self._apply_locally(step, reason, forced=forced)

    async def reset(self) -> None:
        deadline = time.monotonic() + self.op_timeout
        if not self._started:
            await self._start(deadline)

        def fresh(snap: Snapshot, now: float) -> Snapshot:
            return Snapshot(epoch=snap.epoch + 1, next_permit=snap.next_permit)

        if self._mode is SYNCED:
            await self._report("reset", (), _left(deadline), fresh, reason="reset", forced=False)
            return
        self._apply_locally(fresh, "reset", forced=False)

    async def close(self) -> None:
        link, self._link = self._link, None
        self._started = False
        self._mode = Local("starting")
        if link is not None:
            await link.unregister(self)

    async def sync(self) -> bool:
        """Re-read the stored state now; False if Redis could not be asked."""
        if not self._started:
            await self.start()
        if self._mode is not SYNCED:
            return False
        return await self._resync(self.op_timeout)

    # -- LinkMember ----------------------------------------------------------

    def on_outage(self) -> None:
        self._detach("outage")

    def _detach(self, cause: str) -> bool:
        """Fall out of step with Redis: decide locally until :meth:`catch_up`."""
        if self._mode is not SYNCED:
            return False
        self._mode = Local(cause, based_on=self._mirror.epoch)
        self._wire.detached += 1
        return True

    def on_message(self, payload: str) -> None:
        if self._mode is not SYNCED:
            return
        try:
            reply = message_reply(payload)
        except ValueError:
            logger.warning("circuit '%s': ignored an unreadable message", self.config.name)
            return
        self._take(reply, None, -1, remote=True)

    async def catch_up(self) -> bool:
        if self._link is None:
            return True
        wait = setup_timeout(self.op_timeout)
        if self._mode is SYNCED:
            return await self._resync(wait)
        return await self._reconcile(wait)

    # -- failures ------------------------------------------------------------

    def _enqueue_failure(self, ticket: Ticket) -> _Failures | None:
        """Add a failure to the batch for the next FAILURE script; None if it needs
        no round trip (fenced by a newer epoch or an open circuit, or counted here)."""
        if not machine.failure_changes(self._mirror, ticket):
            return None
        link = self._link
        if self._mode is not SYNCED or link is None:
            self._apply_locally(_on_failure(self.config, ticket))
            return None
        batch = self._gathering
        if batch is None or batch.epoch != ticket.epoch:
            if batch is not None:
                batch.done.set_result(None)  # an older epoch's failures count nowhere
            batch = self._gathering = _Failures(ticket.epoch, link.loop.create_future())
        batch.count += 1
        self.hot_epoch = None
        if self._sender is None:
            self._sender = link.spawn(self._send_failures(), name="xnai-redis-failures")
        return batch

    async def _send_failures(self) -> None:
        """One FAILURE script in flight per circuit: the batch gathered meanwhile goes
        next, as one script with its count, which the script applies as the machine
        would one by one. So a burst of N failures costs two round trips, not N
        connections."""
        try:
            while (batch := self._gathering) is not None:
                self._gathering = None
                try:
                    await self._send_batch(batch)
                finally:
                    if not batch.done.done():
                        batch.done.set_result(None)
        finally:
            self._sender = None
            self._refresh_hot()

    async def _send_batch(self, batch: _Failures) -> None:
        ticket = Ticket(batch.epoch)
        if not machine.failure_changes(self._mirror, ticket):
            return  # the circuit moved on while they waited: they count nowhere
        if self._mode is SYNCED:
            installs = self._installs
            reply = await self._ask(
                "failure", (str(batch.epoch), "0", str(batch.count)), self.op_timeout, rid=True
            )
            if reply is not None or self._mode is SYNCED:
                return  # counted (or unreadable: Redis ran it, the resync will tell)
            if self._installs != installs:
                # Its answer is lost and news reached the mirror while it was out: that
                # news may hold this very batch (it ran, and its message came), so it
                # is not counted here again. It is Redis's to count: resent by request
                # id once Redis answers, it counts there once.
                return
        step = _on_failure(self.config, ticket)
        for _ in range(batch.count):  # Redis went away: count them here
            self._apply_locally(step)

    # -- talking to Redis ----------------------------------------------------

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        link = self._link
        return link.redis_now() if link is not None else time.time()

    async def _ask(
        self, script: str, extra: Sequence[str], wait: float, *, rid: bool = False
    ) -> Reply | None:
        """Run ``script``, wait up to ``wait`` and mirror its answer; None as for _read."""
        link = self._link
        if link is None:
            return None
        request = link.request_id() if rid else ""
        installs = self._installs
        run = self._wire.send(script, extra, request)
        if not await link.settle(run, wait):
            self._wire.deadline_passed(run)
            reply = None
        else:
            reply = self._wire.read(run, script, request)
        if reply is not None:
            self._take(reply, None, installs, remote=script == "read")
        elif request and script in _REPORTS:
            self._resolve_later(run, script, extra, request)
        return reply

    async def _call(self, script: str, extra: Sequence[str]) -> Reply | None:
        """Run ``script`` with ``extra`` arguments and return its answer unmirrored
        (tests ask Redis directly with it, as a process whose mirror lags would)."""
        link = self._link
        if link is None:
            return None
        run = self._wire.send(script, extra)
        if not await link.settle(run, self.op_timeout):
            self._wire.deadline_passed(run)
            return None
        return self._wire.read(run, script, "")

    async def _report(
        self,
        script: str,
        extra: Sequence[str],
        budget: float,
        step: Callable[[Snapshot, float], Snapshot],
        *,
        reason: str | None = None,
        forced: bool | None = None,
        after: Callable[[], None] | None = None,
    ) -> None:
        """Send a report as a job of the link and wait for it at most ``budget``.

        The job runs to its end whoever waits: a caller's cancellation or deadline
        never interrupts a send (it would leave the request's effect unknown).
        """
        link = self._link
        assert link is not None

        async def job() -> None:
            try:
                request = link.request_id()
                installs = self._installs
                run = self._wire.send(script, extra, request)
                reply = None
                if await link.settle(run, self.op_timeout):
                    reply = self._wire.read(run, script, request)
                else:
                    self._wire.deadline_passed(run)
                if reply is not None:
                    self._take(reply, reason, installs)
                else:
                    if script in _REPORTS:
                        self._resolve_later(run, script, extra, request)
                    if self._mode is not SYNCED:  # Redis went away: decide here
                        self._apply_locally(step, reason, forced=forced)
            finally:
                if after is not None:
                    after()

        task = link.spawn(job(), name=f"xnai-redis-{script}")
        if budget > 0:
            await patiently(task, budget)

    def _resolve_later(self, run: ScriptRun, script: str, extra: Sequence[str], rid: str) -> None:
        link = self._link
        if link is not None:
            link.spawn(self._resolve(link, run, script, extra, rid), name="xnai-redis-resolve")

    async def _resolve(
        self, link: RedisLink, run: ScriptRun, script: str, extra: Sequence[str], rid: str
    ) -> None:
        """Settle a report whose answer was lost (dropped, late, unreadable, or Redis
        failed meanwhile): it may or may not have run, and if it did not, a trial's
        permit stays held in Redis for its whole lease, wedging the half-open circuit.
        So it is sent again with the same request id once Redis answers: Redis runs it
        if it never did, or replays the first answer (at most once). Tried until Redis
        answers, for less than half the request log's horizon (a resend after that
        could run twice) and never past the lease. A first send still in flight (a
        silent connection may hold it for ever) is not waited for past ``op_timeout``:
        whichever of the two runs first, the other replays it."""
        await asyncio.wait((run.task,), timeout=self.op_timeout)
        until = run.sent + min(self.config.lease_seconds, _RESEND_HORIZON)
        tries = 0
        while self._link is link and not link.closed and time.monotonic() < until:
            if not link.down:
                installs = self._installs
                again = self._wire.send(script, extra, rid)
                if await link.settle(again, setup_timeout(self.op_timeout)):
                    # Never acknowledged: a copy of the first send may still reach Redis
                    # (redis-py retrying it); the request log must still know it then.
                    reply = self._wire.read(again, script, rid, ack=False)
                    if reply is not None:
                        if self._mode is SYNCED:
                            self._take(reply, None, installs)
                        return
                else:
                    self._wire.deadline_passed(again)
            tries += 1
            await asyncio.sleep(backoff(tries))

    def _give_back_later(self, run: ScriptRun, rid: str) -> None:
        link = self._link
        if link is not None:
            link.spawn(self._give_back(link, run, rid), name="xnai-redis-give-back")

    async def _give_back(self, link: RedisLink, run: ScriptRun, rid: str) -> None:
        """Give back the permit an ADMIT nobody will use may have taken.

        Its answer, once in, says whether it took one; if it never comes, RELEASE by
        request id frees whatever that request took, or cancels it if Redis has not
        run it yet. Tried until Redis answers or the lease would have ended anyway.
        """
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
        while self._link is link and not link.closed and time.monotonic() < until:
            if not link.down:
                reply = await self._ask("release", ("", "0", rid), setup_timeout(self.op_timeout))
                if reply is not None:
                    return
            tries += 1
            await asyncio.sleep(backoff(tries))

    async def _resync(self, wait: float) -> bool:
        if self._mode is not SYNCED:
            return False
        return await self._ask("read", (), wait) is not None

    async def _reconcile(self, wait: float) -> bool:
        """Sync with Redis after a start or an outage, by the documented rule.

        The store decides locally until the answer is in, so the circuit may change
        here during the round trip (a trip, a force_open): Redis's answer was made for
        the state sent, so it is not mirrored then, and the rule is applied again to
        the new state. False: still deciding locally (the link tries again later).
        """
        link = self._link
        if link is None:
            return False
        for _ in range(_RECONCILE_TRIES):
            mode = self._mode
            snap = self._mirror
            opened = isinstance(mode, Local) and mode.opened_here
            forced = isinstance(mode, Local) and mode.forced_here and snap.forced
            based_on = mode.based_on if isinstance(mode, Local) else snap.epoch
            rid = link.request_id()
            installs = self._installs
            args = self._reconcile_args(snap, opened, forced, based_on)
            run = self._wire.send("reconcile", args, rid)
            if not await link.settle(run, wait):
                self._wire.deadline_passed(run)
                return False
            reply = self._wire.read(run, "reconcile", rid)
            if reply is None:
                return False
            if self._mode is SYNCED:
                # Another reconcile of this circuit (start() and the link's) won.
                self._take(reply, None, installs, guard=False, remote=True)
                return True
            if self._mirror.epoch != snap.epoch:
                continue
            self._take(reply, None, installs, guard=False, authoritative=True, remote=True)
            self._mode = SYNCED
            self._refresh_hot()
            return True
        return False

    def _reconcile_args(
        self, snap: Snapshot, opened_here: bool, forced_here: bool, based_on: int
    ) -> list[str]:
        return [
            "1" if snap.state is CircuitState.OPEN else "0",
            self._gen,
            "1" if opened_here else "0",
            str(snap.failure_count),
            str(us(snap.opened_at)),
            "1" if snap.forced else "0",
            "1" if forced_here else "0",
            str(based_on),
        ]

    async def _write_back(self, link: RedisLink) -> None:
        """The hash vanished while open here: put the open circuit back by the outage
        rule (over a closed circuit only; an open or half-open one in Redis wins)."""
        try:
            for _ in range(_RECONCILE_TRIES):
                snap = self._mirror
                if snap.state is not CircuitState.OPEN or self._mode is not SYNCED:
                    return  # moved on, or Redis went away: the outage rule takes over
                rid = link.request_id()
                installs = self._installs
                run = self._wire.send(
                    "reconcile", self._reconcile_args(snap, False, False, snap.epoch), rid
                )
                if not await link.settle(run, setup_timeout(self.op_timeout)):
                    self._wire.deadline_passed(run)
                    return
                reply = self._wire.read(run, "reconcile", rid)
                if reply is None:
                    return
                if self._installs == installs:
                    self._take(reply, None, installs, guard=False, authoritative=True, remote=True)
                    return
        finally:
            self._writing_back = False

    # -- the mirror ----------------------------------------------------------

    def _take(
        self,
        reply: Reply,
        reason: str | None,
        installs: int,
        *,
        remote: bool = False,
        guard: bool = True,
        authoritative: bool = False,
    ) -> Verdict:
        """Mirror what Redis said, by the rules of :mod:`.redis_mirror`."""
        # Nothing newer arrived while we waited: this answer is the latest truth.
        authoritative = authoritative or installs == self._installs
        held = Mirrored(self._gen, self._ver, self._mirror)
        verdict = judge(
            held,
            reply.gen,
            reply.ver,
            reply.snap,
            authoritative=authoritative,
            guard=guard and reason is None,
        )
        if verdict is Verdict.STALE:
            return verdict
        if verdict is Verdict.SUPERSEDED:
            if self._link is not None:
                self._link.request_resync()
            return verdict
        if verdict is Verdict.LOST:
            self._lost()
            return verdict
        first = self._gen == ""
        same_lineage = reply.gen == self._gen
        self._gen, self._ver = reply.gen, reply.ver
        old, new = self._mirror, reply.snap
        if not same_lineage and new.state is old.state:
            # A first load, or a hash rebuilt: epochs restart on another scale, but
            # nothing happened to the circuit.
            self._install(old, new, None, announce=False)
            return verdict
        # Mirrored rather than made here: a first load, or a change seen by a read or a
        # message (not the answer to this process's own report or force).
        seen = reason is None and (first or remote)
        if reason is None:
            if first:
                reason = "loaded from redis"
            elif verdict is Verdict.REPLACED:
                reason = "its state in redis was replaced (the key was lost or rebuilt)"
            elif remote:
                reason = f"{machine.transition_reason(old, new)} (in another process)"
        self._install(old, new, reason, remote=seen)
        return verdict

    def _lost(self) -> None:
        link = self._link
        if self._writing_back or link is None:
            return
        self._writing_back = True
        self.state_losses += 1
        logger.warning(
            "circuit '%s': redis key %r lost the open circuit (deleted, flushed, "
            "evicted, or rolled back by a failover or an older snapshot); writing it back",
            self.config.name,
            self.key,
            extra={"breaker": self.config.name, "key": self.key},
        )
        link.spawn(self._write_back(link), name="xnai-redis-write-back")

    def _install(
        self,
        old: Snapshot,
        new: Snapshot,
        reason: str | None,
        *,
        announce: bool = True,
        remote: bool = False,
    ) -> None:
        self._mirror = new
        self._installs += 1
        self.hot_epoch = new.epoch if is_hot(new, self._sender is not None) else None
        if not announce or (new.epoch == old.epoch and new.state is old.state):
            return
        why = reason or machine.transition_reason(old, new)
        for callback in list(self._callbacks):
            try:
                callback(old.state, new.state, why, remote)
            except Exception:
                logger.exception("transition callback of circuit '%s' failed", self.config.name)

    def _refresh_hot(self) -> None:
        snap = self._mirror
        self.hot_epoch = snap.epoch if is_hot(snap, self._sender is not None) else None

    def _relabel(self, old: Snapshot, new: Snapshot, *, episode: bool = False) -> Snapshot:
        """Give a local transition a fresh negative epoch; note a local opening.

        ``episode``: a trial permit taken here in a half-open episode Redis handed out
        (positive epoch): the local trials are an episode of their own, or a local
        ticket would carry a permit id Redis hands to another process, and its report
        would count against that process's trial once Redis answers again.
        """
        if new.epoch == old.epoch and not (episode and new.epoch > 0):
            return new
        self._local_epoch -= 1
        mode = self._mode
        opened = new.state is CircuitState.OPEN and old.state is not CircuitState.OPEN
        if opened and isinstance(mode, Local):
            self._mode = replace(mode, opened_here=True)
        return replace(new, epoch=self._local_epoch)

    def _apply_locally(
        self,
        step: Callable[[Snapshot, float], Snapshot],
        reason: str | None = None,
        *,
        forced: bool | None = None,
    ) -> None:
        if forced is not None and isinstance(self._mode, Local):
            self._mode = replace(self._mode, forced_here=forced)
        old = self._mirror
        new = self._relabel(old, step(old, self._now()))
        if new is not old:
            self._install(old, new, reason)

    def _admit_locally(self) -> Admission:
        old = self._mirror
        admission, new = machine.admit(old, self.config, self._now())
        took = admission.ticket is not None and admission.ticket.permit != 0
        relabelled = self._relabel(old, new, episode=took)
        if relabelled is not old:
            # A local episode of a half-open circuit is no transition to announce.
            self._install(old, relabelled, None, announce=relabelled.state is not old.state)
        ticket = admission.ticket
        if ticket is not None and relabelled.epoch != new.epoch:
            admission = Admission(Ticket(relabelled.epoch, ticket.permit), admission.retry_after)
        return admission


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _on_success(
    config: CircuitBreakerConfig, ticket: Ticket
) -> Callable[[Snapshot, float], Snapshot]:
    return lambda snap, now: machine.on_success(snap, config, now, ticket)


def _on_failure(
    config: CircuitBreakerConfig, ticket: Ticket
) -> Callable[[Snapshot, float], Snapshot]:
    return lambda snap, now: machine.on_failure(snap, config, now, ticket)


def _on_release(ticket: Ticket) -> Callable[[Snapshot, float], Snapshot]:
    return lambda snap, now: machine.on_release(snap, ticket)
