"""RedisStore: a circuit's state shared by every process through one Redis hash.

Every transition is one Lua script (:mod:`.redis_scripts`) making exactly the
decisions of :mod:`.machine`; each process keeps a *mirror* of the hash
(:mod:`.redis_view`; :mod:`.redis_mirror` says which news it takes in), fed by the
scripts' replies, by a pub/sub subscription and by a periodic resync
(:mod:`.redis_link`), so:

- a successful call on a closed circuit with no failure pending makes no round
  trip (``hot_epoch`` is the mirror's epoch);
- a failure costs one round trip; failures of one circuit that arrive while its
  previous FAILURE script is in flight go together in the next one
  (:mod:`.redis_failures`);
- an open circuit rejects locally until its recovery timeout ends, measured on
  the Redis clock;
- every script carries a request id and takes effect at most once, whatever the
  client's retry policy; a send is never interrupted by its caller's cancellation
  or deadline, and a permit whose answer was lost is given back when Redis answers
  (:mod:`.redis_requests`);
- when Redis is unreachable, slow or broken, no Redis error reaches the caller: a
  call waits for Redis at most ``op_timeout`` in total (docs/redis.md, "One deadline
  per call": this module), and once Redis is known down the store applies
  :mod:`.machine` to its mirror locally (mode :class:`Local`) and reconciles on
  return by the rule of docs/redis.md (:mod:`.redis_reconcile`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from .._redact import redact
from .._validation import check_seconds
from . import machine
from .config import CircuitBreakerConfig, lease_margin
from .machine import Admission, CircuitState, Snapshot, Step, Ticket
from .redis_admission import Admissions, left
from .redis_codec import Reply, decode_snapshot, message_reply
from .redis_failures import FailureReports
from .redis_link import RedisClient, RedisLink, patiently, setup_timeout
from .redis_reconcile import Reconciler
from .redis_requests import Requests
from .redis_view import SYNCED, CircuitMirror, Local, Mode, Synced
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
# What is left of the op_timeout of the call this task is making: set by acquire()
# with the ticket it handed out, used by that ticket's report, so the call's waits for
# Redis (admission, then report) share one budget, however long the call itself ran.
_CALL: contextvars.ContextVar[tuple[Ticket, float] | None] = contextvars.ContextVar(
    "xnai_redis_call", default=None
)


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
        _check(config, client, key_prefix, op_timeout, resync_interval, clock)
        self.config = config
        self.key = f"{key_prefix}{{{config.name}}}"
        self.channel = self.key
        self.key_prefix = key_prefix
        self.op_timeout = float(op_timeout)
        self.resync_interval = float(resync_interval)
        self.client = client
        self.hot_epoch: int | None = None  # None until the stored state is known
        self._wire = wire = Wire(
            config,
            self.key,
            op_timeout=self.op_timeout,
            clock=clock,
            on_stall=lambda: self._detach("stall"),
        )
        self._mirror = mirror = CircuitMirror(
            config, self, now=wire.now, lost=self._lost, stale=self._stale
        )
        self._requests = requests = Requests(config, wire, mirror, self.op_timeout)
        self._failures = failures = FailureReports(config, wire, mirror, requests, self.op_timeout)
        self._admissions = Admissions(config, wire, mirror, requests, failures)
        self._reconciler = Reconciler(config, self.key, wire, mirror, self.op_timeout)
        self._start_lock: asyncio.Lock | None = None
        self._started = False
        self._closed = False
        self._resetting: int | None = None

    def __repr__(self) -> str:
        return (
            f"<RedisStore name={redact(self.config.name)!r} key={redact(self.key)!r} "
            f"state={self._mirror.snap.state.value} available={self.available}>"
        )

    @property
    def link(self) -> RedisLink | None:
        """The client's link while started (what the circuits of one client share)."""
        return self._wire.link

    @property
    def mirror(self) -> CircuitMirror:
        """This process's copy of the circuit (diagnostics and tests)."""
        return self._mirror

    async def run_script(self, script: str, extra: tuple[str, ...] = ()) -> Reply | None:
        """Run ``script`` and return its decoded answer without mirroring it, or None
        (tests ask Redis with it as a process whose mirror lags would)."""
        return await self._requests.call(script, extra)

    # -- StateStore ----------------------------------------------------------

    @property
    def available(self) -> bool:
        """True while this circuit is kept in step with Redis; False before the first
        sync and while Redis is unreachable (the store then decides locally)."""
        return self._started and self._mirror.mode is SYNCED

    @property
    def started(self) -> bool:
        """Whether this process has tried Redis for this circuit yet (a first call or
        :meth:`start`); before that, ``available`` is False but says nothing of Redis."""
        return self._started

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` stopped this store (until a call or :meth:`start`
        starts it again); a metrics scrape leaves a closed store alone."""
        return self._closed

    @property
    def mode(self) -> Mode:
        """:class:`Synced`, or :class:`Local` with why and what the outage rule needs."""
        return self._mirror.mode

    def snapshot(self) -> Snapshot:
        return self._mirror.snap

    def add_transition_callback(self, callback: TransitionCallback) -> None:
        self._mirror.callbacks.append(callback)

    def backend_metrics(self) -> dict[str, Any]:
        """Counters of what happened between this process and Redis (see docs/redis.md)."""
        link = self._wire.link
        return {
            "redis_outages": link.outages if link is not None else 0,
            "redis_subscription_silences": link.silences if link is not None else 0,
            "redis_late_replies": link.late_replies if link is not None else 0,
            "redis_stalls": self._wire.stalls,
            "redis_state_losses": self._reconciler.state_losses,
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
            link = RedisLink.get(self.client, self.key_prefix)
            self._wire.link = link
            link.register(self)
            if not link.down:
                # The link's first connection subscribes, loads the scripts and
                # syncs this circuit; wait for it, but never past the deadline.
                try:
                    async with asyncio.timeout(left(deadline)):
                        await link.settled.wait()
                except TimeoutError:
                    pass
                if self._mirror.mode is not SYNCED and link.ready.is_set():
                    await self._reconciler.reconcile(left(deadline))
            self._started = True
            self._closed = False
            snap = self._mirror.snap
            self._mirror.install(snap, snap, None, announce=False)

    def acquire_nowait(self) -> Admission | None:
        mirror = self._mirror
        if not self._started or mirror.failures_pending:
            return None  # not loaded yet, or a failure report on its way may open it
        snap = mirror.snap
        if snap.state is CircuitState.CLOSED:
            return Admission(Ticket(snap.epoch))
        if mirror.mode is not SYNCED:
            return mirror.admit_locally()
        return machine.answer_locally(snap, self.config, mirror.now())

    async def acquire(self) -> Admission:
        # One deadline for everything this call waits for: loading, the failure
        # report in flight, the admission lock, the ADMIT script, and the report.
        deadline = time.monotonic() + self.op_timeout
        admission = await self._acquire(deadline)
        if admission.ticket is not None:
            _CALL.set((admission.ticket, left(deadline)))
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
        return await self._admissions.admit(deadline, self.acquire_nowait)

    async def record_success(self, ticket: Ticket) -> None:
        budget = self._budget(ticket)
        mirror = self._mirror
        snap = mirror.snap
        if not machine.success_changes(snap, ticket):
            return  # nothing to change, here as in Redis
        step = _on_success(self.config, ticket)
        if mirror.mode is not SYNCED:
            mirror.apply_locally(step)
            return
        after: Callable[[], None] | None = None
        if snap.state is CircuitState.CLOSED:
            if self._resetting == ticket.epoch:
                return  # a reset of this epoch's failures is on its way
            self._resetting = ticket.epoch

            def after() -> None:
                self._resetting = None

        await self._requests.report(
            "success", (str(ticket.epoch), str(ticket.permit)), budget, step, after=after
        )

    async def record_failure(self, ticket: Ticket) -> None:
        budget = self._budget(ticket)
        batch = self._failures.add(ticket)
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
        failures = self._failures
        snap, alone = self._mirror.snap, failures.idle
        batch = failures.add(ticket)
        if batch is None or budget <= 0 or not alone:
            return None
        if machine.trips(snap, self.config, batch.count):
            return patiently(batch.done, budget)
        return None

    async def release(self, ticket: Ticket) -> None:
        budget = self._budget(ticket)
        mirror = self._mirror
        if not machine.release_changes(mirror.snap, ticket):
            return
        step = _on_release(ticket)
        if mirror.mode is not SYNCED:
            mirror.apply_locally(step)
            return
        await self._requests.report(
            "release", (str(ticket.epoch), str(ticket.permit), ""), budget, step
        )

    async def force(self, state: CircuitState) -> None:
        deadline = time.monotonic() + self.op_timeout
        if not self._started:
            await self._start(deadline)
        reason = machine.force_reason(state)

        def step(snap: Snapshot, now: float) -> Snapshot:
            return machine.force(snap, state, now)

        forced = state is CircuitState.OPEN
        if self._mirror.mode is SYNCED:
            await self._requests.report(
                "force", (state.value,), left(deadline), step, reason=reason, forced=forced
            )
            return
        # While Redis is away: an operator's force_open is written back on return.
        self._mirror.apply_locally(step, reason, forced=forced)

    async def reset(self) -> None:
        deadline = time.monotonic() + self.op_timeout
        if not self._started:
            await self._start(deadline)

        def fresh(snap: Snapshot, now: float) -> Snapshot:
            return machine.reset(snap)

        if self._mirror.mode is SYNCED:
            await self._requests.report(
                "reset", (), left(deadline), fresh, reason="reset", forced=False
            )
            return
        self._mirror.apply_locally(fresh, "reset", forced=False)

    async def close(self) -> None:
        link, self._wire.link = self._wire.link, None
        self._started = False
        self._closed = True
        self._mirror.mode = Local("starting")
        if link is not None:
            await link.unregister(self)

    async def sync(self) -> bool:
        """Re-read the stored state now; False if Redis could not be asked."""
        if not self._started:
            await self.start()
        if self._mirror.mode is not SYNCED:
            return False
        return await self._resync(self.op_timeout)

    # -- LinkMember ----------------------------------------------------------

    def on_outage(self) -> None:
        self._detach("outage")

    def on_message(self, payload: str) -> None:
        if self._mirror.mode is not SYNCED:
            return
        try:
            reply = message_reply(payload)
        except ValueError:
            logger.warning("circuit '%s': ignored an unreadable message", redact(self.config.name))
            return
        self._mirror.hear(reply)

    async def catch_up(self) -> bool:
        if self._wire.link is None:
            return True
        wait = setup_timeout(self.op_timeout)
        if self._mirror.mode is SYNCED:
            return await self._resync(wait)
        return await self._reconciler.reconcile(wait)

    # -- the mirror's news ---------------------------------------------------

    def _detach(self, cause: str) -> bool:
        """Fall out of step with Redis: decide locally until :meth:`catch_up`."""
        if not self._mirror.detach(cause):
            return False
        self._wire.detached += 1
        return True

    async def _resync(self, wait: float) -> bool:
        if self._mirror.mode is not SYNCED:
            return False
        return await self._requests.ask("read", (), wait) is not None

    def _lost(self) -> None:
        self._reconciler.lost()

    def _stale(self) -> None:
        link = self._wire.link
        if link is not None:
            link.request_resync()


def _check(
    config: CircuitBreakerConfig,
    client: RedisClient,
    key_prefix: str,
    op_timeout: float,
    resync_interval: float,
    clock: Callable[[], float] | None,
) -> None:
    """RedisStore's arguments, refused with a clear error naming the setting."""
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
    check_seconds("op_timeout", op_timeout)
    check_seconds("resync_interval", resync_interval)
    margin = lease_margin(float(op_timeout))
    if config.timeout is not None and config.lease_seconds < config.timeout + margin:
        # A trial's permit must outlive the trial: its timeout plus the round trips of its
        # admission and its report, each up to op_timeout (create_redis_circuit_breaker
        # grows a default lease to fit; a config built by hand must say so itself).
        raise ValueError(
            f"'half_open_lease' must be >= 'timeout' + 2 x 'op_timeout' "
            f"({config.timeout + margin:g}): {config.lease_seconds:g}"
        )
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
                f"({encoder.encoding!r}): {redact(part)!r}"
            ) from None


def _on_success(config: CircuitBreakerConfig, ticket: Ticket) -> Step:
    return lambda snap, now: machine.on_success(snap, config, now, ticket)


def _on_release(ticket: Ticket) -> Step:
    return lambda snap, now: machine.on_release(snap, ticket)
