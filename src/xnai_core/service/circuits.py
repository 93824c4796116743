"""Reading and steering the application's shared circuits in Redis, through the library.

Every read and change goes through the same store the application's breakers use
(:func:`~xnai_core.create_redis_circuit_breaker`'s :class:`~xnai_core.RedisStore`), never
by touching hash fields: the stored format is the library's business, and a forced state
written here reaches every running breaker the way its own transitions do (pub/sub, then
the periodic resync). Only the key *names* are read directly, as documented
(``<key_prefix>{<name>}``), to list the circuits that exist.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .. import CircuitState, RedisStore, create_redis_circuit_breaker
from .._redis_errors import REDIS_DOWN, describe

__all__ = ["CircuitView", "RedisUnavailableError", "SharedCircuits"]

T = TypeVar("T")
_SCAN_LIMIT = 10_000
_GLOB_SPECIAL = "*?[]\\"


class RedisUnavailableError(ConnectionError):
    """Raised when Redis did not answer, so nothing was read or changed there."""


@dataclass(frozen=True, slots=True)
class CircuitView:
    """One shared circuit as Redis holds it (times in seconds since the epoch)."""

    name: str
    state: str
    failures: int
    forced_open: bool
    opened_at: float | None
    retry_after: float | None
    trials_in_flight: int
    exists: bool = True

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state,
            "failures": self.failures,
            "forced_open": self.forced_open,
            "opened_at": self.opened_at,
            "retry_after": self.retry_after,
            "trials_in_flight": self.trials_in_flight,
            "exists": self.exists,
        }


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in _GLOB_SPECIAL else c for c in text)


class SharedCircuits:
    """The circuits under one key prefix of one Redis.

    ``recovery_timeout`` is the breakers' own (Redis does not store it): it only
    serves to compute "retry after" for display. Use as ``async with``.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        key_prefix: str = "xnai:cb:",
        recovery_timeout: float = 60.0,
        timeout: float = 2.0,
    ) -> None:
        self._client = client
        self.key_prefix = key_prefix
        self.recovery_timeout = recovery_timeout
        self.timeout = timeout
        # Circuits the config names: listed even before the application first uses them.
        self.configured_names: tuple[str, ...] = ()

    async def __aenter__(self) -> SharedCircuits:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def key(self, name: str) -> str:
        return f"{self.key_prefix}{{{name}}}"

    async def _ask(self, what: str, awaitable: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except REDIS_DOWN as exc:
            raise RedisUnavailableError(
                f"Redis did not answer ({what}): {type(exc).__name__}"
            ) from None
        except RedisError as exc:
            # No Redis on that port (InvalidResponse), or one refusing the command (a
            # proxy without SCAN): nothing read or changed either, said in one line.
            raise RedisUnavailableError(
                f"Redis did not answer as Redis ({what}): {describe(exc)}"
            ) from None

    async def names(self, also: Iterable[str] = ()) -> list[str]:
        """Names of the circuits stored under the prefix (plus ``also``), sorted."""
        found = set(also)
        pattern = f"{_glob_escape(self.key_prefix)}{{*}}"

        async def scan() -> None:
            async for key in self._client.scan_iter(match=pattern, count=500, _type="HASH"):
                text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
                inner = text[len(self.key_prefix) :]
                if inner.startswith("{") and inner.endswith("}") and len(inner) > 2:
                    found.add(inner[1:-1])
                if len(found) >= _SCAN_LIMIT:
                    return

        await self._ask("SCAN", scan())
        return sorted(found)

    async def exists(self, name: str) -> bool:
        return bool(await self._ask("EXISTS", self._client.exists(self.key(name))))

    async def view(self, name: str) -> CircuitView:
        """The circuit's state; a circuit never stored reads as fresh and closed."""
        if not await self.exists(name):
            return CircuitView(name, "closed", 0, False, None, None, 0, exists=False)
        store = await self._open(name)
        try:
            return await self._view(name, store)
        finally:
            await store.close()

    async def views(self, names: Iterable[str]) -> list[CircuitView]:
        return [await self.view(name) for name in names]

    async def force(self, name: str, action: str) -> CircuitView:
        """``open`` (held until closed or reset), ``close`` or ``reset`` the circuit for every
        process; the answer is the state Redis holds afterwards."""
        store = await self._open(name)
        try:
            if action == "open":
                await store.force(CircuitState.OPEN)
            elif action == "close":
                await store.force(CircuitState.CLOSED)
            elif action == "reset":
                await store.reset()
            else:
                raise ValueError(f"'action' must be open, close or reset: {action!r}")
            if not store.available:
                # The store fell back to its local state: nothing reached Redis.
                raise RedisUnavailableError(f"Redis did not answer ({action} {name!r})")
            return await self._view(name, store)
        finally:
            await store.close()

    async def _open(self, name: str) -> RedisStore:
        breaker = create_redis_circuit_breaker(
            name,
            self._client,
            key_prefix=self.key_prefix,
            recovery_timeout=self.recovery_timeout,
            op_timeout=self.timeout,
        )
        store = breaker.store
        assert isinstance(store, RedisStore)
        try:
            # Within this client's timeout, as every other request here: the store's own
            # set-up deadline (20 s at a 2 s op_timeout) is for a long-lived breaker that
            # must come up over a slow link, not for a command an operator waits on.
            async with asyncio.timeout(self.timeout):
                await store.start()
        except TimeoutError:
            await store.close()
            raise RedisUnavailableError(f"Redis did not answer (reading {name!r})") from None
        if not store.available:
            await store.close()
            raise RedisUnavailableError(f"Redis did not answer (reading {name!r})")
        return store

    async def _view(self, name: str, store: RedisStore) -> CircuitView:
        if not await store.sync():
            raise RedisUnavailableError(f"Redis did not answer (reading {name!r})")
        snap = store.snapshot()
        seconds, micros = await self._ask("TIME", self._client.time())
        now = float(seconds) + float(micros) / 1e6
        opened_at = snap.opened_at if snap.state is not CircuitState.CLOSED else None
        retry_after = None
        if snap.state is CircuitState.OPEN and not snap.forced:
            retry_after = max(0.0, snap.opened_at + self.recovery_timeout - now)
        live = [expiry for _, expiry in snap.trials if expiry > now]
        return CircuitView(
            name=name,
            state=snap.state.value,
            failures=snap.failure_count,
            forced_open=snap.forced,
            opened_at=opened_at,
            retry_after=retry_after,
            trials_in_flight=len(live),
        )


def format_time(value: float | None) -> str:
    if value is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
