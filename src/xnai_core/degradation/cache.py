"""What CacheFirstStrategy keeps answers in: the protocol, and the in-process LRU.

Every cache stores a :class:`CacheEntry` (the value and when it was stored) and
forgets it ``keep_for`` seconds later; whether an entry is fresh or only good
enough for stale-if-error is the strategy's decision, made from ``stored_at``.
The Redis cache has a module of its own (``redis_cache``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .._validation import check_size

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
        check_size("max_entries", max_entries)
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
