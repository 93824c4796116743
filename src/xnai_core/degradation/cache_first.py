"""CacheFirstStrategy: answer from a cache before calling the primary, and when it fails.

Per call, with ``ttl`` and ``stale_if_error`` in seconds:

1. age < ttl: the cached answer is served and the primary is not called
   (not degraded: ``source`` is this strategy, ``degraded`` False); an entry from more
   than :data:`CLOCK_SKEW` in the future (the clock stepped back) is not fresh.
2. otherwise the primary is called, once for all concurrent callers of the same
   key (single flight, shared until its deadline), and its answer is stored behind
   the caller's back: the answer never waits for the cache's write.
3. if the primary fails and age < ttl + stale_if_error, the cached answer is
   served as a degraded answer (stale-if-error, RFC 5861); else this strategy
   declines and the manager tries the next one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .._redact import redact_cut
from .._singleflight import SingleFlight
from .._validation import check_seconds
from .cache import CacheBackend, CacheEntry, MemoryCache
from .cache_keys import UnkeyableError, default_cache_key
from .call import ServiceCall
from .errors import StrategyDeclinedError
from .protocols import GuardAnswer, Proceed
from .reasons import describe_error

logger = logging.getLogger("xnai_core.degradation")

KeyFunc = Callable[..., str | None]
"""Called with the primary's arguments; returns the cache key, or None to skip the cache."""

_MAX_WARNINGS = 256

DEFAULT_FLIGHT_DEADLINE = 60.0
"""Seconds a primary call is shared by concurrent callers of one key when the service
has no timeout of its own (``ServiceDegradationManager(timeout=None)``)."""

FLIGHT_GRACE = 0.05
"""Added to the service's timeout to make a flight's deadline, so the call's own timeout
(which every caller of the flight then shares) fires first; the deadline is a backstop."""

CLOCK_SKEW = 1.0
"""Seconds an entry may seem to come from the future and still be fresh: the clocks of
processes sharing a Redis cache differ by that little. An entry from further ahead was
stored before the wall clock stepped back (an NTP step, a VM restored from a snapshot):
its age is unknown, so it is not served as fresh (it may still stand in, stale-if-error)."""

MAX_PENDING_WRITES = 256
"""Cache writes in progress at most; an answer past this bound is not stored (counted)."""


class CacheFirstStrategy:
    """Serve from ``cache`` first, fill it from the primary, fall back to stale entries.

    ``cache`` defaults to a fresh :class:`MemoryCache` (1024 entries) of this
    strategy's own; pass a :class:`RedisCache` to share answers between
    processes. ``key_func(*args, **kwargs)`` names the entry for a call (None:
    do not cache this call); keys are scoped by service name. Without it, the
    default key (see ``cache_keys``) caches only calls it can key safely and
    skips the cache, with one warning, for the others (lambdas, closures,
    bound methods, objects as arguments). ``clock`` returns seconds; it must
    agree between processes sharing a Redis cache, hence wall time by default.

    A primary call is shared by the callers of its key until its deadline: the
    service's timeout (plus :data:`FLIGHT_GRACE`), or ``flight_deadline`` seconds
    when the service has none. Answers are written to the cache in the background
    (at most :data:`MAX_PENDING_WRITES` at a time); :meth:`flush` waits for them.
    """

    def __init__(
        self,
        cache: CacheBackend | None = None,
        *,
        ttl: float = 300.0,
        stale_if_error: float = 0.0,
        key_func: KeyFunc | None = None,
        clock: Callable[[], float] = time.time,
        name: str = "CacheFirstStrategy",
        flight_deadline: float = DEFAULT_FLIGHT_DEADLINE,
    ) -> None:
        if cache is not None and not isinstance(cache, CacheBackend):
            raise TypeError(f"'cache' must be a CacheBackend (MemoryCache, RedisCache): {cache!r}")
        self.ttl = check_seconds("ttl", ttl)
        self.stale_if_error = check_seconds("stale_if_error", stale_if_error, allow_zero=True)
        self.flight_deadline = check_seconds("flight_deadline", flight_deadline)
        if key_func is not None and not callable(key_func):
            raise TypeError(f"'key_func' must be callable or None: {key_func!r}")
        if not callable(clock):
            raise TypeError(f"'clock' must be callable: {clock!r}")
        if not isinstance(name, str) or not name:
            raise TypeError(f"'name' must be a non-empty string: {name!r}")
        self.cache: CacheBackend = cache if cache is not None else MemoryCache(clock=clock)
        self.key_func = key_func
        self.name = name
        self._clock = clock
        self._flights: SingleFlight[str, object] = SingleFlight()
        # Answers on their way to the cache: served from here until written, so a caller
        # right behind a flight neither misses nor calls the primary again.
        self._writing: dict[str, CacheEntry] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._writes_dropped = 0
        self._warned: set[str] = set()
        self._hits = 0
        self._misses = 0
        self._stale_served = 0
        self._declined = 0
        self._bypassed = 0
        self._cache_errors = 0

    def __repr__(self) -> str:
        return (
            f"CacheFirstStrategy({self.cache!r}, ttl={self.ttl:g}, "
            f"stale_if_error={self.stale_if_error:g}, name={self.name!r})"
        )

    async def guard(self, call: ServiceCall, proceed: Proceed) -> object:
        """A fresh cached answer, or the primary's (one call per key at a time), stored."""
        key = self.cache_key(call)
        if key is None:
            return await proceed()
        entry = await self._lookup(key)
        if entry is not None and -CLOCK_SKEW <= self._clock() - entry.stored_at < self.ttl:
            self._hits += 1
            return GuardAnswer(entry.value, source=self.name, degraded=False)
        self._misses += 1

        async def fill() -> object:
            value = await proceed()
            # An inner guard's substitute (a breaker's fallback) is not the
            # service's answer and must not be served as fresh later.
            if type(value) is not GuardAnswer:
                self._store_behind(key, CacheEntry(value, self._clock()))
            return value

        def joined() -> None:
            call.notes.coalesced = True

        deadline = self.flight_deadline if call.timeout is None else call.timeout + FLIGHT_GRACE
        return await self._flights.run(key, fill, deadline=deadline, on_join=joined, abandon=True)

    async def execute(self, call: ServiceCall, error: Exception) -> object:
        """The cached answer if it is younger than ttl + stale_if_error; else decline."""
        key = self.cache_key(call)
        if key is None:
            self._declined += 1
            raise StrategyDeclinedError(f"{self.name}: this call is not cached")
        entry = await self._lookup(key)
        if entry is None:
            self._declined += 1
            raise StrategyDeclinedError(f"{self.name}: no cached answer")
        age = self._clock() - entry.stored_at
        limit = self.ttl + self.stale_if_error
        if age >= limit:
            self._declined += 1
            raise StrategyDeclinedError(
                f"{self.name}: cached answer is {age:.3f}s old, "
                f"past ttl + stale_if_error ({limit:g}s)"
            )
        self._stale_served += 1
        return entry.value

    def cache_key(self, call: ServiceCall) -> str | None:
        """The key ``call`` is cached under (scoped by service), or None if it is not cached."""
        if self.key_func is not None:
            try:
                key = self.key_func(*call.args, **call.kwargs)
            except Exception as exc:
                key = None
                why = f"key_func raised {describe_error(exc)}"
                self._warn_unkeyable(call.service_name, why, bug=True)
            else:
                if key is not None and not isinstance(key, str):
                    # The key is built from the call's arguments: it may hold a token.
                    why = f"'key_func' must return a str or None: {redact_cut(repr(key), 200)}"
                    self._warn_unkeyable(call.service_name, why, bug=True)
                    key = None
            if key is None:
                self._bypassed += 1
                return None
            return _scoped(call.service_name, key)
        try:
            digest = default_cache_key(call)
        except UnkeyableError as exc:
            self._bypassed += 1
            self._warn_unkeyable(call.service_name, str(exc))
            return None
        return _scoped(call.service_name, digest)

    async def clear(self) -> int:
        """Empty the cache (for a RedisCache, every key under its prefix); returns how many
        entries went. A RedisCache that fails or hangs raises :class:`CacheClearError`.

        Answers still on their way to the cache are dropped first, so none lands after
        the clear (a write Redis already applied is removed by the clear itself)."""
        writes = list(self._writes)
        for task in writes:
            task.cancel()
        await asyncio.gather(*writes, return_exceptions=True)
        self._writing.clear()
        return await self.cache.clear()

    def get_stats(self) -> dict[str, object]:
        """Hit, miss, stale and single-flight counters, plus the cache's own stats."""
        return {
            "ttl": self.ttl,
            "stale_if_error": self.stale_if_error,
            "hits": self._hits,
            "misses": self._misses,
            "stale_served": self._stale_served,
            "declined": self._declined,
            "bypassed": self._bypassed,
            "primary_flights": self._flights.started,
            "coalesced_calls": self._flights.joined,
            "flights_expired": self._flights.expired,
            "flights_overdue": self._flights.overdue,
            "pending_writes": len(self._writes),
            "writes_dropped": self._writes_dropped,
            "cache_errors": self._cache_errors,
            "cache": self.cache.get_stats(),
        }

    async def flush(self) -> None:
        """Wait until every answer handed to the cache so far has been written (or dropped)."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def _lookup(self, key: str) -> CacheEntry | None:
        pending = self._writing.get(key)
        return pending if pending is not None else await self._get(key)

    def _store_behind(self, key: str, entry: CacheEntry) -> None:
        """Write ``entry`` in the background; the answer does not wait for the cache."""
        if len(self._writes) >= MAX_PENDING_WRITES:
            self._writes_dropped += 1
            return
        self._writing[key] = entry
        task = asyncio.get_running_loop().create_task(self._write(key, entry))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, key: str, entry: CacheEntry) -> None:
        try:
            await self._set(key, entry)
        finally:
            if self._writing.get(key) is entry:
                del self._writing[key]

    async def _get(self, key: str) -> CacheEntry | None:
        # The built-in caches never raise; a user's backend that does is a miss,
        # so a broken cache cannot take the service down with it.
        try:
            return await self.cache.get(key)
        except Exception as exc:
            self._cache_failure("get", exc)
            return None

    async def _set(self, key: str, entry: CacheEntry) -> None:
        try:
            await self.cache.set(key, entry, self.ttl + self.stale_if_error)
        except Exception as exc:
            self._cache_failure("set", exc)

    def _cache_failure(self, operation: str, exc: Exception) -> None:
        self._cache_errors += 1
        if self._cache_errors == 1:
            logger.warning(
                "%s: cache %s failed, treated as a miss (logged once): %s",
                self.name,
                operation,
                describe_error(exc),
                extra={"strategy": self.name},
            )

    def _warn_unkeyable(self, service_name: str, why: str, *, bug: bool = False) -> None:
        # Once per service and cause: a resilience layer must not turn a bad key
        # into an outage, nor hide it, nor flood the log.
        marker = f"{service_name}\0{why}"
        if marker in self._warned or len(self._warned) >= _MAX_WARNINGS:
            return
        self._warned.add(marker)
        if bug:
            logger.error(
                "service %r: %s skips the cache for this call: %s",
                service_name,
                self.name,
                why,
                extra={"service": service_name, "strategy": self.name},
            )
            return
        logger.warning(
            "service %r: %s skips the cache for this call: %s; pass key_func to cache it",
            service_name,
            self.name,
            why,
            extra={"service": service_name, "strategy": self.name},
        )


def _scoped(service_name: str, key: str) -> str:
    """``key`` within ``service_name``'s scope. The name's length leads, so no two
    (service, key) pairs meet: ``("a:b", "c")`` and ``("a", "b:c")`` differ."""
    return f"{len(service_name)}:{service_name}:{key}"
