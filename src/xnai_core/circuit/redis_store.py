"""RedisStore: a circuit's state shared by every process through one Redis hash.

Every transition is one Lua script (:mod:`.redis_scripts`) making exactly the
decisions of :mod:`.machine`; each process keeps a *mirror* of the hash, fed by
the scripts' replies, by a pub/sub subscription and by a periodic resync, so:

- a successful call on a closed circuit with no failure pending makes no round
  trip (``hot_epoch`` is the mirror's epoch);
- a failure costs one round trip (one EVALSHA); failures of one circuit that
  arrive while its previous FAILURE script is in flight go together in the next
  one, so a burst of N concurrent failures costs two round trips, not N
  connections;
- an open circuit rejects locally until its recovery timeout ends, measured on
  the Redis clock (the mirror keeps an offset to Redis TIME);
- when Redis is unreachable, slow or broken, no Redis error reaches the caller:
  every operation has a deadline (``op_timeout``), and once Redis is known down
  the store applies :mod:`.machine` to its mirror locally, logs one WARNING for
  the outage, reports ``available`` False, and reconnects with backoff. On
  return it reconciles: a circuit forced open here during the outage is written
  back over anything but a forced open one; a circuit this process opened during
  the outage is written back unless Redis holds an open or half-open circuit (or
  a closed one that someone closed after the lineage we knew); otherwise Redis
  wins. A full connection pool is not an outage: a script waits for a
  connection, within its deadline.

One :class:`_RedisLink` per (client, key prefix, event loop) carries the shared
part: the registered scripts, one pattern subscription for all its circuits,
the Redis clock offset, the outage state and the reconnect loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript
from redis.exceptions import MaxConnectionsError

from . import machine, redis_scripts
from .config import CircuitBreakerConfig
from .machine import Admission, CircuitState, Snapshot, Ticket
from .store import TransitionCallback

logger = logging.getLogger("xnai_core.circuit.redis")

RedisClient: TypeAlias = "aioredis.Redis | aioredis.RedisCluster"

DEFAULT_KEY_PREFIX = "xnai:cb:"
DEFAULT_OP_TIMEOUT = 0.25
DEFAULT_RESYNC_INTERVAL = 5.0
# How long the link waits for a pub/sub message before it looks at its other chores.
_POLL = 0.2
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 5.0
# Waiting for a connection of a full pool: first and longest pause between tries.
_POOL_WAIT_MIN = 0.001
_POOL_WAIT_MAX = 0.02
# A reconcile is run again when the circuit changes here during its round trip.
_RECONCILE_TRIES = 3
# Lua numbers are doubles: integers are exact below 2^53 (the scripts enforce it).
_EXACT_LIMIT = 2**53

_SCRIPTS = {
    "admit": redis_scripts.ADMIT,
    "success": redis_scripts.SUCCESS,
    "failure": redis_scripts.FAILURE,
    "release": redis_scripts.RELEASE,
    "force": redis_scripts.FORCE,
    "reset": redis_scripts.RESET,
    "read": redis_scripts.READ,
    "reconcile": redis_scripts.RECONCILE,
}

_STATES = {state.value: state for state in CircuitState}


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "strict")
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string from redis: {value!r}")


def _natural(text: str) -> int:
    if not text.isdigit() or len(text) > 16 or int(text) >= _EXACT_LIMIT:
        raise ValueError(f"expected a decimal integer below 2^53: {text[:40]!r}")
    return int(text)


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


def decode_snapshot(payload: str) -> tuple[str, int, Snapshot]:
    """``(lineage, version, snapshot)`` from a script's encoded snapshot.

    Strict: anything unexpected is a ValueError (the caller logs and resyncs).
    Times come back in seconds on the scripts' clock.
    """
    parts = payload.split(" ")
    if len(parts) != 10:
        raise ValueError(f"a circuit snapshot has 10 fields: {payload[:120]!r}")
    gen, ver, epoch, state, failures, opened_at, successes, next_permit, forced, trials = parts
    if state not in _STATES:
        raise ValueError(f"unknown circuit state: {state!r}")
    if forced not in ("0", "1"):
        raise ValueError(f"'forced' must be 0 or 1: {forced!r}")
    leases: list[tuple[int, float]] = []
    if trials != "-":
        for item in trials.split(","):
            permit, _, expiry = item.partition(":")
            leases.append((_natural(permit), _natural(expiry) / 1_000_000))
    snap = Snapshot(
        state=_STATES[state],
        failure_count=_natural(failures),
        opened_at=_natural(opened_at) / 1_000_000,
        trials=tuple(leases),
        half_open_successes=_natural(successes),
        epoch=_natural(epoch),
        next_permit=_natural(next_permit),
        forced=forced == "1",
    )
    _natural(gen)
    return gen, _natural(ver), snap


@dataclass(slots=True, eq=False)
class _Failures:
    """Failures of one epoch gathered for one FAILURE script (see record_failure)."""

    epoch: int
    count: int = 0
    sent: bool = False
    # True: Redis counted them (or the circuit had moved on, so they count nowhere).
    counted: bool = False


@dataclass(frozen=True, slots=True)
class _Reply:
    """A script's answer, decoded."""

    admitted: int
    permit: int
    retry_after: float | None
    now: float
    gen: str
    ver: int
    snap: Snapshot
    note: str


def _decode_reply(raw: object) -> _Reply:
    if not isinstance(raw, list) or len(raw) != 6:
        raise ValueError(f"a circuit script answers with 6 items: {raw!r:.200}")
    try:
        admitted, permit, retry, now = (int(item) for item in raw[:4])
    except TypeError as exc:
        raise ValueError(f"a circuit script answers with integers first: {raw!r:.200}") from exc
    gen, ver, snap = decode_snapshot(_text(raw[4]))
    return _Reply(
        admitted=admitted,
        permit=permit,
        retry_after=None if retry < 0 else retry / 1_000_000,
        now=now / 1_000_000,
        gen=gen,
        ver=ver,
        snap=snap,
        note=_text(raw[5]),
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text[:200]}" if text else name


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class _RedisLink:
    """What the circuits of one client and key prefix share in one process.

    Registered scripts, one PSUBSCRIBE for all circuits under the prefix, the
    offset from this host's monotonic clock to Redis TIME, whether Redis is known
    down, and the task that listens, resyncs and reconnects with backoff.
    """

    _links: ClassVar[weakref.WeakKeyDictionary[Any, dict[str, _RedisLink]]] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def get(cls, client: RedisClient, prefix: str) -> _RedisLink:
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
        self.pattern = _glob_escape(prefix) + "*"
        self.scripts: dict[str, AsyncScript] = {
            name: client.register_script(text) for name, text in _SCRIPTS.items()
        }
        # Redis TIME runs on the wall clock; until we hear from it, assume ours.
        self.offset = time.time() - time.monotonic()
        self.down = False
        self.down_since = 0.0
        self.last_error: str | None = None
        # Bumped by every failed operation: an answer that was in flight meanwhile is
        # older than the local decisions made since, and is not mirrored.
        self.errors = 0
        # A store saw something odd (an older lineage): resync at the next poll.
        self.resync_soon = False
        self.closed = False
        self._stores: dict[str, weakref.WeakSet[RedisStore]] = {}
        self._task: asyncio.Task[None] | None = None
        self._pubsub: PubSub | None = None
        # Set while subscribed with every circuit synced; cleared on any failure.
        self.ready = asyncio.Event()
        # Set once the first connection attempt is over, whichever way it went.
        self.settled = asyncio.Event()

    # -- membership ----------------------------------------------------------

    def register(self, store: RedisStore) -> None:
        self._stores.setdefault(store.channel, weakref.WeakSet()).add(store)
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._run(), name=f"xnai-redis-link:{self.prefix}")

    async def unregister(self, store: RedisStore) -> None:
        members = self._stores.get(store.channel)
        if members is not None:
            members.discard(store)
            if not members:
                del self._stores[store.channel]
        if not self._live_stores():
            await self.aclose()

    def _live_stores(self) -> list[RedisStore]:
        return [store for members in list(self._stores.values()) for store in list(members)]

    async def aclose(self) -> None:
        self.closed = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        await self._drop_pubsub()
        by_prefix = self._links.get(self.client)
        if by_prefix is not None and by_prefix.get(self.prefix) is self:
            del by_prefix[self.prefix]

    # -- clock ---------------------------------------------------------------

    def redis_now(self) -> float:
        """This host's estimate of Redis TIME, in seconds."""
        return time.monotonic() + self.offset

    def observe_time(self, redis_now: float, sent: float, received: float) -> None:
        # The server read its clock somewhere in the round trip: assume the middle.
        self.offset = redis_now - (sent + received) / 2

    # -- outages -------------------------------------------------------------

    def mark_down(self, exc: BaseException) -> None:
        """Redis failed us: every circuit of this link decides locally from now on."""
        self.last_error = _describe(exc)
        self.errors += 1
        self.ready.clear()
        self.settled.set()
        if not self.down:
            self.down = True
            self.down_since = time.monotonic()
            logger.warning(
                "redis unreachable for circuit breakers under %r (%s); "
                "deciding on local state until it answers again",
                self.prefix,
                self.last_error,
                extra={"key_prefix": self.prefix, "error": self.last_error},
            )
        for store in self._live_stores():
            store._enter_local()

    def request_resync(self) -> None:
        """Re-read every circuit at the next poll instead of at the next interval."""
        self.resync_soon = True

    def _mark_up(self) -> None:
        if self.down:
            self.down = False
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
            await self._drop_pubsub()
            raise

    async def _serve(self) -> None:
        backoff = _BACKOFF_MIN
        next_resync = 0.0
        while not self.closed:
            stores = self._live_stores()
            if not stores:
                # Every store was dropped without close(): nothing left to serve.
                await self.aclose()
                return
            interval = min(store.resync_interval for store in stores)
            deadline = min(store.op_timeout for store in stores)
            if self._pubsub is None or self.down:
                self.ready.clear()
                await self._drop_pubsub()
                error: Exception | None = None
                try:
                    await self._subscribe(deadline)
                    await self._load_scripts(deadline)
                    synced = await self._recover(stores)
                except Exception as exc:
                    error, synced = exc, False
                if self.closed:
                    return
                if not synced:
                    # A failed script has marked us down already, with its own error.
                    if error is not None or not self.down:
                        self.mark_down(error or ConnectionError("a circuit could not sync"))
                    await self._drop_pubsub()
                    await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                    continue
                backoff = _BACKOFF_MIN
                self._mark_up()
                self.ready.set()
                self.settled.set()
                next_resync = time.monotonic() + interval
            del stores
            try:
                async with asyncio.timeout(_POLL + deadline):
                    assert self._pubsub is not None
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_POLL
                    )
            except Exception as exc:
                if not self.closed:
                    self.mark_down(exc)
                continue
            if message is not None:
                self._dispatch(message)
            if not self.down and (self.resync_soon or time.monotonic() >= next_resync):
                next_resync = time.monotonic() + interval
                self.resync_soon = False
                # A lost message is caught here, and a store still deciding
                # locally (it joined while we reconnected) is brought in.
                await self._recover(self._live_stores())

    async def _subscribe(self, deadline: float) -> None:
        async with asyncio.timeout(deadline * 2):
            client = self.client
            if isinstance(client, aioredis.RedisCluster):
                # Classic pub/sub is broadcast to every node: any node will do.
                await client.initialize()
                pubsub: PubSub = client.pubsub(node=client.get_random_node())
            else:
                pubsub = client.pubsub()
            self._pubsub = pubsub
            await pubsub.psubscribe(self.pattern)
            while True:
                message = await pubsub.get_message(timeout=deadline)
                if message is not None and message.get("type") == "psubscribe":
                    return

    async def _load_scripts(self, deadline: float) -> None:
        # EVALSHA would reload a missing script itself, but at the price of two more
        # round trips on some caller's failure: load them all up front instead
        # (after every reconnect too: a restarted server has forgotten them).
        scripts = list(self.scripts.values())
        async with asyncio.timeout(deadline * 2):
            client = self.client
            if isinstance(client, aioredis.RedisCluster):
                shas = [await client.script_load(script.script) for script in scripts]
            else:
                async with client.pipeline(transaction=False) as pipe:
                    for script in scripts:
                        pipe.script_load(script.script)
                    shas = await pipe.execute()
        for script, sha in zip(scripts, shas, strict=True):
            script.sha = _text(sha)

    async def _recover(self, stores: Sequence[RedisStore]) -> bool:
        """Reconcile the circuits deciding locally; resync the others (messages were missed).

        False as soon as Redis fails (back off before asking anything else). A circuit
        whose answer could not be used (unreadable, or changed here meanwhile) is a
        problem of that circuit alone: it keeps deciding locally and is tried again at
        the next resync, and the others go on.
        """
        errors = self.errors
        for store in stores:
            if self.closed:
                return False
            if store._link is not self:
                continue  # closed meanwhile
            await (store._reconcile() if store._local else store._resync())
            if self.errors != errors:
                return False
        return True

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except Exception:  # a dead connection may fail to say goodbye
                logger.debug("closing a redis subscription failed", exc_info=True)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") != "pmessage":
            return
        try:
            channel = _text(message["channel"])
            payload = _text(message["data"])
        except (KeyError, ValueError):
            logger.warning("ignored an unreadable circuit message under %r", self.prefix)
            return
        members = self._stores.get(channel)
        if members:
            for store in list(members):
                store._on_message(payload)


class RedisStore:
    """A circuit's state in one Redis hash, shared by every process that names it.

    ``client`` is a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``; the
    store never closes it. Nothing touches the network until the first call (or
    :meth:`start`). ``op_timeout`` bounds every Redis operation a call waits for;
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
        self.config = config
        self.key = f"{key_prefix}{{{config.name}}}"
        self.channel = self.key
        self.key_prefix = key_prefix
        self.op_timeout = float(op_timeout)
        self.resync_interval = float(resync_interval)
        self._client = client
        self._clock = clock
        self._config_args = (
            str(config.failure_threshold),
            str(_us(config.recovery_timeout)),
            str(config.half_open_max_calls),
            str(_us(config.lease_seconds)),
        )
        self._mirror = Snapshot()
        self._gen = ""  # lineage of the mirrored hash; "" until Redis answered once
        self._ver = 0
        self._installs = 0  # bumped on every mirror change: detects races with replies
        self.hot_epoch: int | None = None  # None until the stored state is known
        self._callbacks: list[TransitionCallback] = []
        self._link: _RedisLink | None = None
        self._start_lock: asyncio.Lock | None = None
        self._started = False
        # Deciding locally: before the first sync, and while Redis is away.
        self._local = True
        self._opened_locally = False
        self._forced_locally = False
        # Epochs of transitions made locally are negative, so no ticket of the
        # outage can ever match an epoch that Redis hands out.
        self._local_epoch = 0
        self._resetting: int | None = None
        self._admit_lock: asyncio.Lock | None = None
        # Failures waiting for the FAILURE script in flight; one in flight at a time.
        self._failures: _Failures | None = None
        self._failure_lock: asyncio.Lock | None = None
        self._unreadable_logged = False

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
        return self._started and not self._local

    def snapshot(self) -> Snapshot:
        return self._mirror

    def add_transition_callback(self, callback: TransitionCallback) -> None:
        self._callbacks.append(callback)

    async def start(self) -> None:
        """Load the stored state and subscribe now; the first call does it otherwise.

        Never raises for Redis trouble: an unreachable Redis leaves the store
        deciding locally and reconnecting in the background.
        """
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            link = _RedisLink.get(self._client, self.key_prefix)
            self._link = link
            link.register(self)
            if not link.down:
                # The link's first connection subscribes, loads the scripts and
                # syncs this circuit; wait for it, but never past the deadline.
                try:
                    async with asyncio.timeout(self.op_timeout):
                        await link.settled.wait()
                except TimeoutError:
                    pass
                if self._local and link.ready.is_set():
                    await self._reconcile()
            self._started = True
            self._install(self._mirror, self._mirror, None, announce=False)

    def acquire_nowait(self) -> Admission | None:
        if not self._started:
            return None
        snap = self._mirror
        if snap.state is CircuitState.CLOSED:
            return Admission(Ticket(snap.epoch))
        if self._local:
            return self._admit_locally()
        return self._answer_locally(snap)

    async def acquire(self) -> Admission:
        if not self._started:
            await self.start()
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
            async with asyncio.timeout(self.op_timeout):
                await self._admit_lock.acquire()
        except TimeoutError:
            return Admission(None, None)  # Redis is slow to hand out permits: not now
        try:
            snap = self._mirror
            if snap.state is CircuitState.CLOSED:
                return Admission(Ticket(snap.epoch))
            if self._local:
                return self._admit_locally()
            answer = self._answer_locally(snap)
            if answer is not None:
                return answer
            reply = await self._call("admit", ())
        finally:
            self._admit_lock.release()
        if reply is None:
            # Redis went away: decide here. Or its answer was unusable: not now.
            return self._admit_locally() if self._local else Admission(None, None)
        if reply.admitted == 1:
            return Admission(Ticket(reply.snap.epoch, reply.permit))
        return Admission(None, reply.retry_after)

    def _answer_locally(self, snap: Snapshot) -> Admission | None:
        """The mirror's own answer for an open or half-open circuit; None: ask Redis."""
        now = self._now()
        if snap.state is CircuitState.OPEN:
            return machine.open_rejection(snap, self.config, now)
        # Half-open and every permit taken: no need to ask Redis to say no.
        live = [expiry for _, expiry in snap.trials if expiry > now]
        if len(live) + snap.half_open_successes >= self.config.half_open_max_calls:
            return Admission(None, None)
        return None

    async def record_success(self, ticket: Ticket) -> None:
        snap = self._mirror
        if ticket.epoch != snap.epoch:
            return  # an older epoch's result changes nothing, here as in Redis
        if self._local:
            self._apply_locally(lambda s, now: machine.on_success(s, self.config, now, ticket))
            return
        if snap.state is CircuitState.CLOSED:
            if snap.failure_count == 0 or self._resetting == ticket.epoch:
                return  # nothing to reset, or a reset of this epoch is on its way
            self._resetting = ticket.epoch
            try:
                reply = await self._call("success", (str(ticket.epoch), str(ticket.permit)))
            finally:
                self._resetting = None
        elif snap.state is CircuitState.HALF_OPEN and ticket.permit:
            reply = await self._call("success", (str(ticket.epoch), str(ticket.permit)))
        else:
            return
        if reply is None and self._local:
            self._apply_locally(lambda s, now: machine.on_success(s, self.config, now, ticket))

    async def record_failure(self, ticket: Ticket) -> None:
        snap = self._mirror
        if ticket.epoch != snap.epoch or snap.state is CircuitState.OPEN:
            return
        if not self._local:
            counted = await self._count_failure(ticket.epoch)
            if counted or not self._local:
                return  # counted in Redis (or moot); else Redis went away: count it here
        self._apply_locally(lambda s, now: machine.on_failure(s, self.config, now, ticket))

    async def _count_failure(self, epoch: int) -> bool:
        """Count one failure of ``epoch`` in Redis; False if Redis did not answer.

        One FAILURE script in flight per circuit: failures arriving meanwhile join one
        batch, sent as one script with their count when the one in flight is back. So
        a burst of concurrent failures costs two round trips and one connection, not
        one connection each (which would empty the client's pool), and the script
        applies them as the machine would one by one.
        """
        batch = self._failures
        if batch is None or batch.epoch != epoch:
            batch = self._failures = _Failures(epoch)
        batch.count += 1
        if self._failure_lock is None:
            self._failure_lock = asyncio.Lock()
        async with self._failure_lock:
            if not batch.sent:
                # Whoever gets here first sends the batch, with every failure in it.
                if self._failures is batch:
                    self._failures = None
                batch.sent = True
                try:
                    batch.counted = await self._send_failures(batch)
                except BaseException:
                    batch.sent = False  # cancelled: the next one waiting sends it
                    raise
        return batch.counted

    async def _send_failures(self, batch: _Failures) -> bool:
        snap = self._mirror
        if self._local:
            return False
        if batch.epoch != snap.epoch or snap.state is CircuitState.OPEN:
            return True  # the circuit moved on: these failures count nowhere
        reply = await self._call("failure", (str(batch.epoch), "0", str(batch.count)))
        # No reply and still in step: Redis ran the script, its answer was unusable.
        return reply is not None or not self._local

    async def release(self, ticket: Ticket) -> None:
        snap = self._mirror
        if (
            not ticket.permit
            or ticket.epoch != snap.epoch
            or snap.state is not CircuitState.HALF_OPEN
        ):
            return
        if not self._local:
            reply = await self._call("release", (str(ticket.epoch), str(ticket.permit)))
            if reply is not None or not self._local:
                return
        self._apply_locally(lambda s, now: machine.on_release(s, ticket))

    async def force(self, state: CircuitState) -> None:
        if not self._started:
            await self.start()
        reason = "forced open" if state is CircuitState.OPEN else f"forced {state.value}"
        if not self._local:
            reply = await self._call("force", (state.value,), reason=reason)
            if reply is not None or not self._local:
                return
        # While Redis is away: an operator's force_open is written back on return.
        self._forced_locally = state is CircuitState.OPEN
        self._apply_locally(lambda s, now: machine.force(s, state, now), reason)

    async def reset(self) -> None:
        if not self._started:
            await self.start()
        if not self._local:
            reply = await self._call("reset", (), reason="reset")
            if reply is not None or not self._local:
                return
        self._forced_locally = False

        def fresh(snap: Snapshot, now: float) -> Snapshot:
            return Snapshot(epoch=snap.epoch + 1, next_permit=snap.next_permit)

        self._apply_locally(fresh, "reset")

    async def close(self) -> None:
        link, self._link = self._link, None
        self._started = False
        self._local = True
        if link is not None:
            await link.unregister(self)

    async def sync(self) -> bool:
        """Re-read the stored state now; False if Redis could not be asked."""
        if not self._started:
            await self.start()
        if self._local:
            return False
        return await self._resync()

    # -- talking to Redis ----------------------------------------------------

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        link = self._link
        return link.redis_now() if link is not None else time.time()

    async def _call(
        self,
        script: str,
        extra: Sequence[str],
        *,
        reason: str | None = None,
        authoritative: bool = False,
        remote: bool = False,
        adopt: bool = True,
    ) -> _Reply | None:
        """Run one script within the deadline and mirror its answer (unless ``adopt``
        is False).

        None when there is no answer to act on: Redis failed (the link is now down and
        the store decides locally); Redis failed elsewhere while this script ran (the
        store has been deciding locally since, so this answer is older than its state);
        or the answer could not be read (a problem of this circuit alone: logged, and
        the next resync tries again; the store stays in step with Redis).
        """
        link = self._link
        if link is None:
            return None
        now_arg = "" if self._clock is None else str(_us(self._clock()))
        args = [now_arg, self.channel, *self._config_args, *extra]
        installs = self._installs
        errors = link.errors
        pool_full = False
        sent = time.monotonic()
        try:
            async with asyncio.timeout(self.op_timeout):
                wait = _POOL_WAIT_MIN
                while True:
                    try:
                        raw = await link.scripts[script](keys=[self.key], args=args)
                        break
                    except MaxConnectionsError:
                        # Every connection of the client's pool is taken (many calls at
                        # once, or the application's own): that is no outage. Wait for
                        # one to come back, within the deadline, as a blocking pool would.
                        pool_full = True
                        await asyncio.sleep(wait * (0.5 + random.random() / 2))
                        wait = min(wait * 2, _POOL_WAIT_MAX)
        except Exception as exc:
            # Refused, hung past the deadline, killed mid-reply, OOM, NOPERM: whatever
            # it is, the caller must not see it. Decide locally instead.
            if pool_full and isinstance(exc, TimeoutError):
                exc = MaxConnectionsError(
                    f"no connection of the client's pool came free within {self.op_timeout}s"
                )
            link.mark_down(exc)
            return None
        if link.errors != errors or self._link is not link:
            return None
        try:
            reply = _decode_reply(raw)
        except ValueError as exc:
            self._log_unreadable(script, exc)
            return None
        self._unreadable_logged = False
        if self._clock is None:
            link.observe_time(reply.now, sent, time.monotonic())
        if reply.note:
            self._log_note(reply.note)
        if adopt:
            # Nothing newer arrived while we waited: this answer is the latest truth.
            authoritative = authoritative or installs == self._installs
            self._adopt(reply, reason, authoritative, remote=remote)
        return reply

    async def _resync(self) -> bool:
        if self._local:
            return False
        return await self._call("read", (), remote=True) is not None

    async def _reconcile(self) -> bool:
        """Sync with Redis after a start or an outage, by the documented rule.

        The store decides locally until the answer is in, so the circuit may change
        here during the round trip (a trip, a force_open): Redis's answer was made for
        the state sent, so it is not mirrored then, and the rule is applied again to
        the new state. False: still deciding locally (the link tries again later).
        """
        for _ in range(_RECONCILE_TRIES):
            snap = self._mirror
            args = (
                "1" if snap.state is CircuitState.OPEN else "0",
                self._gen,
                "1" if self._opened_locally else "0",
                str(snap.failure_count),
                str(_us(snap.opened_at)),
                "1" if snap.forced else "0",
                "1" if self._forced_locally and snap.forced else "0",
            )
            reply = await self._call("reconcile", args, adopt=False)
            if reply is None:
                return False
            if not self._local:
                # Another reconcile of this circuit (start() and the link's) won.
                self._adopt(reply, None, False)
                return True
            if self._mirror.epoch != snap.epoch:
                continue
            self._adopt(reply, None, True)
            self._local = False
            self._opened_locally = False
            self._forced_locally = False
            return True
        return False

    def _log_unreadable(self, script: str, exc: ValueError) -> None:
        """An answer that does not decode: this circuit's problem, logged once until
        an answer decodes again; the mirror keeps its last known state."""
        if self._unreadable_logged:
            return
        self._unreadable_logged = True
        logger.warning(
            "circuit '%s': could not read redis's answer to %s (%s); keeping the last "
            "known state until an answer can be read",
            self.config.name,
            script,
            _describe(exc),
            extra={"breaker": self.config.name, "key": self.key},
        )

    def _log_note(self, note: str) -> None:
        for item in note.split(";"):
            if item.startswith("malformed:"):
                logger.warning(
                    "circuit '%s': malformed state in redis key %r (field %r); reset to closed",
                    self.config.name,
                    self.key,
                    item.partition(":")[2],
                    extra={"breaker": self.config.name, "key": self.key},
                )
            elif item == "pushed":
                logger.warning(
                    "circuit '%s': opened here while redis was away; written back to redis",
                    self.config.name,
                    extra={"breaker": self.config.name, "key": self.key},
                )

    def _on_message(self, payload: str) -> None:
        if self._local:
            return
        try:
            gen, ver, snap = decode_snapshot(payload)
        except ValueError:
            logger.warning("circuit '%s': ignored an unreadable message", self.config.name)
            return
        self._adopt(_Reply(-1, 0, None, 0.0, gen, ver, snap, ""), None, False, remote=True)

    # -- the mirror ----------------------------------------------------------

    def _adopt(
        self, reply: _Reply, reason: str | None, authoritative: bool, *, remote: bool = False
    ) -> None:
        """Mirror what Redis said, unless we already mirror something newer."""
        same_lineage = reply.gen == self._gen
        if not authoritative:
            if same_lineage:
                if reply.ver <= self._ver:
                    return  # older news of the hash we mirror
            elif self._gen and int(reply.gen) < int(self._gen):
                # News of a hash replaced since by the one we mirror (it was deleted
                # and created again). Or ours is the odd one (a failover to a server
                # whose clock is behind): only Redis can tell, so ask it.
                if self._link is not None:
                    self._link.request_resync()
                return
        first = self._gen == ""
        self._gen, self._ver = reply.gen, reply.ver
        old, new = self._mirror, reply.snap
        if not same_lineage and new.state is old.state:
            # A first load, or a hash rebuilt (flushed, malformed): epochs restart
            # on another scale, but nothing happened to the circuit.
            self._install(old, new, None, announce=False)
            return
        if reason is None and (first or remote):
            why = machine.transition_reason(old, new)
            reason = "loaded from redis" if first else f"{why} (in another process)"
        self._install(old, new, reason)

    def _install(
        self, old: Snapshot, new: Snapshot, reason: str | None, *, announce: bool = True
    ) -> None:
        self._mirror = new
        self._installs += 1
        hot = new.state is CircuitState.CLOSED and new.failure_count == 0
        self.hot_epoch = new.epoch if hot else None
        if not announce or (new.epoch == old.epoch and new.state is old.state):
            return
        why = reason or machine.transition_reason(old, new)
        for callback in list(self._callbacks):
            try:
                callback(old.state, new.state, why)
            except Exception:
                logger.exception("transition callback of circuit '%s' failed", self.config.name)

    def _enter_local(self) -> None:
        if not self._local:
            self._local = True
            self._opened_locally = False
            self._forced_locally = False

    def _relabel(self, old: Snapshot, new: Snapshot) -> Snapshot:
        """Give a local transition a fresh negative epoch; note a local opening."""
        if new.epoch == old.epoch:
            return new
        self._local_epoch -= 1
        if new.state is CircuitState.OPEN and old.state is not CircuitState.OPEN:
            self._opened_locally = True
        return replace(new, epoch=self._local_epoch)

    def _apply_locally(
        self, step: Callable[[Snapshot, float], Snapshot], reason: str | None = None
    ) -> None:
        old = self._mirror
        new = self._relabel(old, step(old, self._now()))
        if new is not old:
            self._install(old, new, reason)

    def _admit_locally(self) -> Admission:
        old = self._mirror
        admission, new = machine.admit(old, self.config, self._now())
        relabelled = self._relabel(old, new)
        if relabelled is not old:
            self._install(old, relabelled, None)
        ticket = admission.ticket
        if ticket is not None and relabelled.epoch != new.epoch:
            admission = Admission(Ticket(relabelled.epoch, ticket.permit), admission.retry_after)
        return admission
