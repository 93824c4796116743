"""RedisCache: answers shared between processes through Redis, as exact JSON.

Redis being down is a miss, not an error, and it costs a call nothing measurable after
the first failure:

- every operation is bounded by ``op_timeout``, whatever the client's own retry policy
  (redis-py retries a refused connection with backoff by default);
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
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .. import _backoff
from .._redis_errors import REDIS_DOWN
from .._validation import check_seconds
from .cache import CacheEntry, StatValue
from .cache_codec import UnencodableError, decode, encode
from .errors import CacheClearError
from .reasons import describe_error

logger = logging.getLogger("xnai_core.degradation")

_CLEAR_BATCH = 500


class RedisCache:
    """Answers in Redis as JSON under ``prefix``, shared by every process using the prefix.

    Each operation is bounded by ``op_timeout`` seconds. After one finds Redis down, the
    cache skips Redis (misses, dropped writes) until a background probe gets an answer;
    the probe backs off from ``probe_interval`` to ``probe_max_interval`` seconds, with
    jitter. Redis expires each key after ``keep_for`` (ttl plus the stale window).

    Values are exact JSON (see ``cache_codec``): what would not come back as it went in
    (a namedtuple, an enum, a subclass of a builtin, a set) is not cached, logged once
    per type. ``random`` draws the jitter (inject one in tests).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "xnai:cache:",
        op_timeout: float = 0.5,
        probe_interval: float = 0.5,
        probe_max_interval: float = 30.0,
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
        self._random = random
        self._down = False
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
            async with asyncio.timeout(self.op_timeout):
                raw = await self.client.get(self.prefix + key)
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
            async with asyncio.timeout(self.op_timeout):
                await self.client.set(self.prefix + key, payload, px=millis)
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
            async with asyncio.timeout(self.op_timeout):
                await self.client.delete(self.prefix + key)
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
        ``probes`` (PINGs while down), ``reply_errors``, ``malformed_entries``,
        ``unserialisable_values``."""
        return {
            "backend": "redis",
            "prefix": self.prefix,
            "available": not self._down,
            "errors": self._errors,
            "skipped_while_down": self._skipped,
            "writes_dropped": self._writes_dropped,
            "probes": self._probes,
            "reply_errors": self._reply_errors,
            "malformed_entries": self._malformed,
            "unserialisable_values": self._unserialisable,
        }

    async def _unlink(self, batch: list[bytes | str]) -> int:
        async with asyncio.timeout(self.op_timeout):
            return int(await self.client.unlink(*batch))

    # -- down and back up ------------------------------------------------------------

    def _went_down(self, exc: BaseException) -> None:
        self._errors += 1
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
            try:
                async with asyncio.timeout(self.op_timeout):
                    await self.client.ping()
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
