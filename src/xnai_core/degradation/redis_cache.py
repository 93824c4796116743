"""RedisCache: answers shared between processes through Redis, as exact JSON.

Redis being down is a miss, not an error, and it costs a call nothing measurable after
the first failure:

- every operation is bounded by ``op_timeout``, whatever the client's own retry policy
  (redis-py retries a refused connection with backoff by default), or twice that when
  the event loop itself was stalled meanwhile;
- an operation that finds Redis down (``REDIS_DOWN``: refused, reset, timed out, hung)
  marks the cache *down*; while it is down, lookups are misses and writes are dropped
  (both counted) without touching the network;
- one background probe at a time PINGs Redis, waiting between tries with exponential
  backoff and jitter (``probe_interval`` doubling up to ``probe_max_interval``); the first
  answer marks the cache up again. One WARNING when it goes down, one INFO when it is back.

Any other Redis error (a ``WRONGTYPE`` reply, say) is a miss for that key, counted and
logged once, and says nothing about the server being down. ``clear()``, an administrative
act whose caller must know whether stale answers remain, always tries, and raises
:class:`CacheClearError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random as _random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import MaxConnectionsError, ReadOnlyError, RedisError

from .. import _backoff
from .._redis_errors import POOL_FULL, REDIS_DOWN, forget_demoted, pool_exhausted
from .._validation import check_seconds, check_size
from ..circuit.redis_link import patiently
from .cache import CacheEntry, StatValue
from .cache_codec import UnencodableError, decode, encode
from .errors import CacheClearError
from .reasons import describe_error

logger = logging.getLogger("xnai_core.degradation")

T = TypeVar("T")

_CLEAR_BATCH = 500
_POOL_WAIT = (0.001, 0.05)  # seconds: first and longest wait for a free connection
_STALL = 0.05  # seconds: a deadline noticed this late means the event loop was stalled
_CANCEL_TRIES, _CANCEL_WAIT = 5, 0.05  # cancelling an operation: tries, seconds after each


class _Busy(Exception):
    """No turn (``max_lookups``/``max_writes``) or no free connection of the client's pool
    came within ``op_timeout``: this process is busy; Redis was not asked."""


DEFAULT_MAX_LOOKUPS = 64
"""Lookups (and deletes) of one cache in flight at most by default."""

DEFAULT_MAX_WRITES = 16
"""Writes of one cache in flight at most by default. With the lookups, well below
redis-py's pool of 100 connections: a cache on a hung or slow Redis never takes every
connection the rest of the application shares with it."""


class RedisCache:
    """Answers in Redis as JSON under ``prefix``, shared by every process using the prefix.

    Each operation is bounded by ``op_timeout`` seconds. After one finds Redis down, the
    cache skips Redis (misses, dropped writes) until a background probe gets an answer;
    the probe backs off from ``probe_interval`` to ``probe_max_interval`` seconds, with
    jitter. Redis expires each key after ``keep_for`` (ttl plus the stale window).

    Values are exact JSON (see ``cache_codec``): what would not come back as it went in
    (a namedtuple, an enum, a subclass of a builtin, a set) is not cached, logged once
    per type. ``random`` draws the jitter (inject one in tests).

    At most ``max_lookups`` lookups and ``max_writes`` writes are in flight at a time;
    the others wait their turn, within the same ``op_timeout``. A caller that gets no
    turn, or no connection of the client's pool (``MaxConnectionsError``: this process is
    busy), in time is a miss (counted in ``busy``; a write also in ``writes_dropped``),
    never an outage: so a Redis slow or hung never drains the connection pool the
    client's other users share, and a burst of callers never makes a healthy Redis look
    down.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "xnai:cache:",
        op_timeout: float = 0.5,
        probe_interval: float = 0.5,
        probe_max_interval: float = 30.0,
        max_lookups: int = DEFAULT_MAX_LOOKUPS,
        max_writes: int = DEFAULT_MAX_WRITES,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not callable(getattr(client, "get", None)) or not callable(getattr(client, "set", None)):
            raise TypeError(f"'client' must be a redis.asyncio.Redis: {client!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"'prefix' must be a non-empty string: {prefix!r}")
        self.client = client
        self.prefix = prefix
        self.op_timeout = check_seconds("op_timeout", op_timeout)
        self.probe_interval = check_seconds("probe_interval", probe_interval)
        self.probe_max_interval = check_seconds("probe_max_interval", probe_max_interval)
        if self.probe_max_interval < self.probe_interval:
            raise ValueError(
                f"'probe_max_interval' must be >= 'probe_interval' ({self.probe_interval:g}): "
                f"{probe_max_interval!r}"
            )
        self.max_lookups = check_size("max_lookups", max_lookups)
        self.max_writes = check_size("max_writes", max_writes)
        self._in_flight = {"lookup": 0, "write": 0}
        self._busy = 0
        self._turns: dict[str, asyncio.Semaphore] = {}
        self._turns_loop: asyncio.AbstractEventLoop | None = None
        self._enders: set[asyncio.Future[None]] = set()
        self._random = random
        self._down = False
        self._demoted = False
        self._probe: asyncio.Task[None] | None = None
        self._errors = 0
        self._skipped = 0
        self._writes_dropped = 0
        self._probes = 0
        self._reply_errors = 0
        self._malformed = 0
        self._unserialisable = 0
        self._warned_types: set[str] = set()

    def __repr__(self) -> str:
        # The client's repr may hold a password; only our own settings show.
        return f"RedisCache(prefix={self.prefix!r}, op_timeout={self.op_timeout:g})"

    @property
    def available(self) -> bool:
        """False from an operation that found Redis down until a probe gets an answer."""
        return not self._down

    async def get(self, key: str) -> CacheEntry | None:
        """The entry under ``key``; None when absent, unreadable, or Redis is down."""
        if self._down:
            self._skipped += 1
            self._start_probe()
            return None
        try:
            raw = await self._bounded("lookup", lambda: self.client.get(self.prefix + key))
        except _Busy:
            return None
        except REDIS_DOWN as exc:
            self._went_down(exc)
            return None
        except RedisError as exc:
            self._reply_error(exc)
            return None
        if raw is None:
            return None
        decoded = decode(raw)
        if decoded is None:
            self._malformed += 1
            if self._malformed == 1:
                logger.warning(
                    "malformed cache entry under prefix %r treated as a miss (logged once)",
                    self.prefix,
                    extra={"cache_prefix": self.prefix},
                )
            return None
        return CacheEntry(*decoded)

    async def set(self, key: str, entry: CacheEntry, keep_for: float) -> None:
        """Store ``entry`` with a Redis expiry; dropped (and counted) while Redis is down."""
        try:
            payload = encode(entry.value, entry.stored_at)
        except UnencodableError as exc:
            self._unserialisable += 1
            if exc.problem not in self._warned_types and len(self._warned_types) < 256:
                self._warned_types.add(exc.problem)
                logger.warning(
                    "answer not cached in Redis: %s is not exact JSON (logged once per type)",
                    exc.problem,
                    extra={"cache_prefix": self.prefix},
                )
            return
        if self._down:
            self._writes_dropped += 1
            self._start_probe()
            return
        millis = max(1, math.ceil(keep_for * 1000))
        try:
            await self._bounded(
                "write", lambda: self.client.set(self.prefix + key, payload, px=millis)
            )
        except _Busy:
            self._writes_dropped += 1  # no turn in time: the writes ahead of it hang
        except REDIS_DOWN as exc:
            self._writes_dropped += 1
            self._went_down(exc)
        except RedisError as exc:
            self._reply_error(exc)

    async def delete(self, key: str) -> None:
        """Forget ``key``; skipped while Redis is down, a Redis problem is logged, not raised."""
        if self._down:
            self._skipped += 1
            self._start_probe()
            return
        try:
            await self._bounded("lookup", lambda: self.client.delete(self.prefix + key))
        except _Busy:
            return
        except REDIS_DOWN as exc:
            self._went_down(exc)
        except RedisError as exc:
            self._reply_error(exc)

    async def clear(self) -> int:
        """Remove every key under the prefix (SCAN + UNLINK); returns how many went.

        Each round trip (a SCAN page, an UNLINK batch) is bounded by ``op_timeout``.
        If one fails, hangs past it, or Redis cannot be reached, the clear stops and
        raises :class:`CacheClearError` (a ``ConnectionError``) saying how many keys
        were removed: a cache that may still hold stale answers is not reported as
        cleared. It tries even while the cache is marked down.
        """
        removed = 0
        keys = self.client.scan_iter(match=_glob_escape(self.prefix) + "*", count=_CLEAR_BATCH)
        try:
            batch: list[bytes | str] = []
            while True:
                async with asyncio.timeout(self.op_timeout):
                    try:
                        key = await anext(keys)
                    except StopAsyncIteration:
                        break
                batch.append(key)
                if len(batch) >= _CLEAR_BATCH:
                    removed += await self._unlink(batch)
                    batch.clear()
            if batch:
                removed += await self._unlink(batch)
        except (RedisError, OSError, TimeoutError) as exc:
            if isinstance(exc, REDIS_DOWN):
                self._went_down(exc)
            hung = isinstance(exc, TimeoutError) and not str(exc)
            reason = f"no answer within {self.op_timeout:g}s" if hung else describe_error(exc)
            raise CacheClearError(self.prefix, removed, reason) from exc
        finally:
            await _close_quietly(keys)
        self._came_back()
        return removed

    async def aclose(self) -> None:
        """Stop the background probe, if one runs (the client is yours to close)."""
        probe, self._probe = self._probe, None
        if probe is not None and not probe.done():
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe

    def get_stats(self) -> dict[str, StatValue]:
        """Availability and counters: ``errors`` (operations that found Redis down),
        ``skipped_while_down`` (lookups and deletes not tried), ``writes_dropped``,
        ``busy`` (operations that got no turn or no connection within ``op_timeout``:
        misses and dropped writes, not an outage), ``lookups_in_flight``,
        ``writes_in_flight``, ``probes`` (PINGs while down), ``reply_errors``,
        ``malformed_entries``, ``unserialisable_values``."""
        return {
            "backend": "redis",
            "prefix": self.prefix,
            "available": not self._down,
            "errors": self._errors,
            "skipped_while_down": self._skipped,
            "writes_dropped": self._writes_dropped,
            "busy": self._busy,
            "lookups_in_flight": self._in_flight["lookup"],
            "writes_in_flight": self._in_flight["write"],
            "probes": self._probes,
            "reply_errors": self._reply_errors,
            "malformed_entries": self._malformed,
            "unserialisable_values": self._unserialisable,
        }

    async def _bounded(self, kind: str, operation: Callable[[], Awaitable[T]]) -> T:
        """``operation()`` in its turn among the cache's ``kind`` operations (``"lookup"``,
        ``"write"``, ``"probe"``: no limit), all within ``op_timeout``. Raises what the
        operation raises, ``TimeoutError`` if Redis did not answer in time, or
        :class:`_Busy` (counted) if no turn or no free connection came in time.

        The operation runs as a task of its own, so the deadline does not tear it down
        mid-reply: when it passes, the loop gets a few more turns first (the reply may
        already sit in the socket). If the deadline came late, the loop itself was stalled
        (a blocking callback) and Redis may not even have been asked yet: the operation
        gets one more ``op_timeout``. Only then is it cancelled.
        """
        asked = [False]
        task = asyncio.ensure_future(self._in_turn(kind, operation, asked))
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            done = await patiently(task, self.op_timeout)
            if not done and loop.time() - started > self.op_timeout + _STALL:
                done = await patiently(task, self.op_timeout)
        except BaseException:
            # Our caller left: so does its operation (in the background: the caller's
            # cancellation is not held up by the operation's).
            ender = asyncio.ensure_future(_end(task))
            self._enders.add(ender)
            ender.add_done_callback(self._enders.discard)
            raise
        if done:
            return task.result()
        await _end(task)
        if not asked[0]:
            self._busy += 1
            raise _Busy
        raise TimeoutError

    async def _in_turn(
        self, kind: str, operation: Callable[[], Awaitable[T]], asked: list[bool]
    ) -> T:
        """``operation()`` once a turn is free, tried again with backoff while the client's
        pool is full; ``asked[0]`` is True while Redis has the request."""
        turn = self._turn(kind)
        async with turn if turn is not None else contextlib.nullcontext():
            self._in_flight[kind] = self._in_flight.get(kind, 0) + 1
            try:
                waits = 0
                while True:
                    asked[0] = True
                    try:
                        if pool_exhausted(self.client):
                            # A BlockingConnectionPool would wait for a connection inside
                            # the command, where that wait looks like Redis not answering:
                            # wait here instead, as for a full pool that raises.
                            raise MaxConnectionsError("every connection of the pool is in use")
                        return await operation()
                    except POOL_FULL:
                        asked[0] = False
                        waits += 1
                        low, high = _POOL_WAIT
                        rand = self._random()
                        await asyncio.sleep(_backoff.delay(waits, base=low, cap=high, rand=rand))
            finally:
                self._in_flight[kind] -= 1

    def _turn(self, kind: str) -> asyncio.Semaphore | None:
        """The semaphore bounding ``kind`` on the running loop (None: no bound)."""
        limit = {"lookup": self.max_lookups, "write": self.max_writes}.get(kind)
        if limit is None:
            return None
        loop = asyncio.get_running_loop()
        if self._turns_loop is not loop:
            self._turns_loop, self._turns = loop, {}
        turn = self._turns.get(kind)
        if turn is None:
            turn = self._turns[kind] = asyncio.Semaphore(limit)
        return turn

    async def _unlink(self, batch: list[bytes | str]) -> int:
        async with asyncio.timeout(self.op_timeout):
            return int(await self.client.unlink(*batch))

    # -- down and back up ------------------------------------------------------------

    def _went_down(self, exc: BaseException) -> None:
        self._errors += 1
        if isinstance(exc, ReadOnlyError):
            # A connection left on a demoted master: the probe drops it before it PINGs
            # (a replica answers PING, and the next write would meet it again).
            self._demoted = True
        if not self._down:
            self._down = True
            logger.warning(
                "redis cache unavailable, serving misses until it answers again: %s",
                _outage_reason(exc, self.op_timeout),
                extra={"cache_prefix": self.prefix},
            )
        self._start_probe()

    def _came_back(self) -> None:
        if self._down:
            self._down = False
            logger.info("redis cache available again", extra={"cache_prefix": self.prefix})

    def _start_probe(self) -> None:
        """Make sure one probe runs, on this loop (one left on a closed loop never ends)."""
        loop = asyncio.get_running_loop()
        probe = self._probe
        if probe is not None and not probe.done() and probe.get_loop() is loop:
            return
        self._probe = loop.create_task(self._probe_until_back())

    async def _probe_until_back(self) -> None:
        """PING with backoff until Redis answers; the only Redis traffic while down."""
        attempt = 0
        while self._down:
            attempt += 1
            # Equal jitter: at least half the step is waited, so probes never bunch up.
            await asyncio.sleep(
                _backoff.delay(
                    attempt,
                    base=self.probe_interval,
                    cap=self.probe_max_interval,
                    rand=self._random(),
                    jitter=0.5,
                )
            )
            self._probes += 1
            if self._demoted:
                self._demoted = False
                await forget_demoted(self.client, ReadOnlyError())
            try:
                await self._bounded("probe", self.client.ping)
            except _Busy:
                continue
            except REDIS_DOWN:
                continue
            except RedisError:
                pass  # it answered, if with an error: reachable
            self._came_back()

    def _reply_error(self, exc: RedisError) -> None:
        self._reply_errors += 1
        if self._reply_errors == 1:
            logger.warning(
                "redis cache error treated as a miss (logged once): %s",
                describe_error(exc),
                extra={"cache_prefix": self.prefix},
            )


async def _end(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait for its end, cancelling again while it goes on: redis-py
    (8.2) can swallow a cancellation that lands inside its retry loop, and would then
    wait for a hung server's reply for ever."""
    for _ in range(_CANCEL_TRIES):
        task.cancel()
        await asyncio.wait((task,), timeout=_CANCEL_WAIT)
        if task.done():
            if not task.cancelled():
                task.exception()  # retrieved: an error after the deadline is not news
            return


def _outage_reason(exc: BaseException, op_timeout: float) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {op_timeout:g}s"
    return describe_error(exc)


async def _close_quietly(keys: AsyncIterator[object]) -> None:
    """Close a SCAN iterator cut short; it may hold a connection a hung server never frees."""
    aclose = getattr(keys, "aclose", None)
    if aclose is None:
        return
    with contextlib.suppress(Exception):
        await aclose()


def _glob_escape(text: str) -> str:
    """``text`` with Redis glob metacharacters escaped, for SCAN MATCH."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
