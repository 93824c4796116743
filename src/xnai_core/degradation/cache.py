"""Caches for CacheFirstStrategy: bounded in-process LRU, and Redis holding JSON.

Both store a :class:`CacheEntry` (the value and when it was stored) and forget
it ``keep_for`` seconds later; whether an entry is fresh or only good enough
for stale-if-error is the strategy's decision, made from ``stored_at``.

``RedisCache`` never raises for a Redis problem on the call path: an
unreachable, hung or erroring server is a miss on ``get`` and a skipped write
on ``set``, logged once per outage. ``clear()``, an administrative act whose
caller must know whether stale answers remain, raises :class:`CacheClearError`.
Values are JSON (never pickle, never eval); a value JSON cannot represent
exactly is not stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .errors import CacheClearError
from .reasons import describe_error

logger = logging.getLogger("xnai_core.degradation")

StatValue = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A cached answer and the time it was stored (seconds, on the strategy's clock)."""

    value: object
    stored_at: float


@runtime_checkable
class CacheBackend(Protocol):
    """Where CacheFirstStrategy keeps answers."""

    async def get(self, key: str) -> CacheEntry | None:
        """The entry under ``key``, or None (absent, expired or unreadable)."""
        ...

    async def set(self, key: str, entry: CacheEntry, keep_for: float) -> None:
        """Store ``entry`` under ``key`` and forget it ``keep_for`` seconds later."""
        ...

    async def delete(self, key: str) -> None:
        """Forget ``key``."""
        ...

    async def clear(self) -> int:
        """Forget every entry; returns how many were removed."""
        ...

    def get_stats(self) -> dict[str, StatValue]:
        """Counters and settings, JSON-serialisable."""
        ...


class MemoryCache:
    """An in-process cache of at most ``max_entries`` entries, least recently used out first.

    Values are kept as they are (not copied): treat cached answers as read-only.
    ``clock`` (seconds) decides expiry; inject one in tests.
    """

    def __init__(self, max_entries: int = 1024, *, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(max_entries, int) or isinstance(max_entries, bool):
            raise TypeError(f"'max_entries' must be an int: {max_entries!r}")
        if max_entries < 1:
            raise ValueError(f"'max_entries' must be >= 1: {max_entries!r}")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[CacheEntry, float]] = OrderedDict()
        self._evictions = 0

    def __repr__(self) -> str:
        return f"MemoryCache(max_entries={self.max_entries}, entries={len(self._entries)})"

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CacheEntry | None:
        """The entry under ``key`` unless it has expired; marks it recently used."""
        item = self._entries.get(key)
        if item is None:
            return None
        entry, expires_at = item
        if self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    async def set(self, key: str, entry: CacheEntry, keep_for: float) -> None:
        """Store ``entry``; evicts the least recently used entries beyond ``max_entries``."""
        self._entries[key] = (entry, self._clock() + keep_for)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self._evictions += 1

    async def delete(self, key: str) -> None:
        """Forget ``key`` (no error if absent)."""
        self._entries.pop(key, None)

    async def clear(self) -> int:
        """Forget everything."""
        count = len(self._entries)
        self._entries.clear()
        return count

    def get_stats(self) -> dict[str, StatValue]:
        """Size, bound and evictions."""
        return {
            "backend": "memory",
            "entries": len(self._entries),
            "max_entries": self.max_entries,
            "evictions": self._evictions,
        }


class RedisCache:
    """Answers in Redis as JSON under ``prefix``, shared by every process using the prefix.

    Each operation is bounded by ``op_timeout`` seconds, so a hung server costs
    at most that per lookup. Give ``client`` its own ``socket_timeout`` too if
    it serves other work. Redis expires each key after ``keep_for`` (ttl plus
    the stale window), so nothing outlives its use.

    JSON is strict here: dict keys must be strings and floats finite; tuples
    come back as lists. Other values are not cached (logged once per type).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "xnai:cache:",
        op_timeout: float = 0.5,
    ) -> None:
        if not callable(getattr(client, "get", None)) or not callable(getattr(client, "set", None)):
            raise TypeError(f"'client' must be a redis.asyncio.Redis: {client!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"'prefix' must be a non-empty string: {prefix!r}")
        if not isinstance(op_timeout, int | float) or isinstance(op_timeout, bool):
            raise TypeError(f"'op_timeout' must be a number of seconds: {op_timeout!r}")
        if not (math.isfinite(op_timeout) and op_timeout > 0):
            raise ValueError(f"'op_timeout' must be > 0 seconds: {op_timeout!r}")
        self.client = client
        self.prefix = prefix
        self.op_timeout = float(op_timeout)
        self._available = True
        self._errors = 0
        self._malformed = 0
        self._unserialisable = 0
        self._warned_types: set[str] = set()

    def __repr__(self) -> str:
        # The client's repr may hold a password; only our own settings show.
        return f"RedisCache(prefix={self.prefix!r}, op_timeout={self.op_timeout:g})"

    @property
    def available(self) -> bool:
        """False from a failed Redis operation until the next one that works."""
        return self._available

    async def get(self, key: str) -> CacheEntry | None:
        """The entry under ``key``; None when absent, unreadable, or Redis is unreachable."""
        try:
            async with asyncio.timeout(self.op_timeout):
                raw = await self.client.get(self.prefix + key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
            return None
        self._mark_up()
        if raw is None:
            return None
        entry = _decode(raw)
        if entry is None:
            self._malformed += 1
            if self._malformed == 1:
                logger.warning(
                    "malformed cache entry under prefix %r treated as a miss (logged once)",
                    self.prefix,
                    extra={"cache_prefix": self.prefix},
                )
        return entry

    async def set(self, key: str, entry: CacheEntry, keep_for: float) -> None:
        """Store ``entry`` as JSON with a Redis expiry; skipped if Redis is unreachable."""
        problem = _json_problem(entry.value)
        if problem is not None:
            self._unserialisable += 1
            if problem not in self._warned_types:
                self._warned_types.add(problem)
                logger.warning(
                    "answer not cached in Redis: %s is not exact JSON (logged once per type)",
                    problem,
                    extra={"cache_prefix": self.prefix},
                )
            return
        payload = json.dumps(
            {"v": entry.value, "t": entry.stored_at}, allow_nan=False, separators=(",", ":")
        )
        millis = max(1, math.ceil(keep_for * 1000))
        try:
            async with asyncio.timeout(self.op_timeout):
                await self.client.set(self.prefix + key, payload, px=millis)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
            return
        self._mark_up()

    async def delete(self, key: str) -> None:
        """Forget ``key``; a Redis problem is logged, not raised."""
        try:
            async with asyncio.timeout(self.op_timeout):
                await self.client.delete(self.prefix + key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
            return
        self._mark_up()

    async def clear(self) -> int:
        """Remove every key under the prefix (SCAN + UNLINK); returns how many went.

        Each round trip (a SCAN page, an UNLINK batch) is bounded by ``op_timeout``.
        If one fails, hangs past it, or Redis cannot be reached, the clear stops and
        raises :class:`CacheClearError` (a ``ConnectionError``) saying how many keys
        were removed: a cache that may still hold stale answers is not reported as
        cleared.
        """
        removed = 0
        keys = self.client.scan_iter(match=_glob_escape(self.prefix) + "*", count=500)
        try:
            batch: list[bytes | str] = []
            while True:
                async with asyncio.timeout(self.op_timeout):
                    try:
                        key = await anext(keys)
                    except StopAsyncIteration:
                        break
                batch.append(key)
                if len(batch) >= 500:
                    removed += await self._unlink(batch)
                    batch.clear()
            if batch:
                removed += await self._unlink(batch)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc)
            hung = isinstance(exc, TimeoutError) and not str(exc)
            reason = f"no answer within {self.op_timeout:g}s" if hung else describe_error(exc)
            raise CacheClearError(self.prefix, removed, reason) from exc
        finally:
            await _close_quietly(keys)
        self._mark_up()
        return removed

    async def _unlink(self, batch: list[bytes | str]) -> int:
        async with asyncio.timeout(self.op_timeout):
            return int(await self.client.unlink(*batch))

    def get_stats(self) -> dict[str, StatValue]:
        """Availability and error counters."""
        return {
            "backend": "redis",
            "prefix": self.prefix,
            "available": self._available,
            "errors": self._errors,
            "malformed_entries": self._malformed,
            "unserialisable_values": self._unserialisable,
        }

    def _mark_down(self, exc: BaseException) -> None:
        self._errors += 1
        if self._available:
            self._available = False
            logger.warning(
                "redis cache unavailable, serving misses: %s",
                describe_error(exc),
                extra={"cache_prefix": self.prefix},
            )

    def _mark_up(self) -> None:
        if not self._available:
            self._available = True
            logger.info("redis cache available again", extra={"cache_prefix": self.prefix})


async def _close_quietly(keys: AsyncIterator[object]) -> None:
    """Close a SCAN iterator cut short; it may hold a connection a hung server never frees."""
    aclose = getattr(keys, "aclose", None)
    if aclose is None:
        return
    with contextlib.suppress(Exception):
        await aclose()


def _decode(raw: bytes | str) -> CacheEntry | None:
    """The entry in ``raw``, or None when it is not what :meth:`RedisCache.set` writes."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or "v" not in data:
        return None
    stored_at = data.get("t")
    if not isinstance(stored_at, int | float) or isinstance(stored_at, bool):
        return None
    return CacheEntry(data["v"], float(stored_at))


def _json_problem(value: object, depth: int = 0) -> str | None:
    """None if ``value`` survives a JSON round trip (tuples as lists), else what does not."""
    if depth > 100:
        return "a structure nested deeper than 100 levels"
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "a non-finite float"
    if isinstance(value, list | tuple):
        for item in value:
            problem = _json_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"a dict key of type {type(key).__name__}"
            problem = _json_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    return f"a value of type {type(value).__name__}"


def _glob_escape(text: str) -> str:
    """``text`` with Redis glob metacharacters escaped, for SCAN MATCH."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
