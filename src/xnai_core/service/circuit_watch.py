"""The application's shared circuits as the service sees them: one mirror breaker each.

The service never calls through these breakers; each one's store follows the circuit in
Redis (its pub/sub messages and periodic resync), so reading a state costs nothing, and
the dashboard's open/close/reset act through the breaker's own ``force_open`` /
``force_close`` / ``reset``, which every process sees. Names come from the config and
from a periodic SCAN of the documented key names (``<key_prefix>{<name>}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

import redis.asyncio as aioredis

from .. import CircuitBreakerRegistry, CircuitState, create_redis_circuit_breaker
from .._redact import redact, shown_as
from .circuits import SharedCircuits

# A name is masked once: redaction is not free, and the page polls every second.
_shown = functools.lru_cache(maxsize=4096)(redact)

__all__ = ["CircuitWatch"]

logger = logging.getLogger("xnai_core.service")

DISCOVERY_INTERVAL = 10.0
MAX_CIRCUITS = 1000


class CircuitWatch:
    """Mirror breakers for every circuit under ``key_prefix``, kept in ``registry``."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        key_prefix: str,
        names: tuple[str, ...],
        recovery_timeout: float,
        discovery_interval: float = DISCOVERY_INTERVAL,
    ) -> None:
        self._client = client
        self.key_prefix = key_prefix
        self.names = names
        self.recovery_timeout = recovery_timeout
        self.registry = CircuitBreakerRegistry()
        self._discovery_interval = discovery_interval
        self._task: asyncio.Task[None] | None = None
        self._reachable = True
        self._shared = SharedCircuits(
            client, key_prefix=key_prefix, recovery_timeout=recovery_timeout
        )

    async def start(self) -> None:
        await self.discover()
        self._task = asyncio.get_running_loop().create_task(
            self._discover_forever(), name="xnai-service-circuit-discovery"
        )

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for breaker in list(self.registry):
            with contextlib.suppress(Exception):
                await breaker.close()

    async def discover(self) -> None:
        """Add a mirror for every circuit not yet known (Redis away: try again later)."""
        try:
            names = await self._shared.names(self.names)
        except ConnectionError as exc:
            if self._reachable:
                # Said once per outage: the dashboard's circuits stop following Redis.
                logger.warning(
                    "circuits: %s; those shown may be out of date until it answers",
                    exc,
                )
            self._reachable = False
            names = list(self.names)
        else:
            if not self._reachable:
                logger.warning("circuits: Redis answers again")
            self._reachable = True
        for name in names[:MAX_CIRCUITS]:
            if name in self.registry:
                continue
            breaker = create_redis_circuit_breaker(
                name,
                self._client,
                key_prefix=self.key_prefix,
                recovery_timeout=self.recovery_timeout,
            )
            self.registry.register(breaker)
            await breaker.store.start()  # type: ignore[attr-defined]

    async def _discover_forever(self) -> None:
        while True:
            await asyncio.sleep(self._discovery_interval)
            try:
                await self.discover()
            except Exception:  # a bug must not end discovery silently, nor the service
                logger.exception("circuit discovery failed")

    def find(self, shown: str) -> str | None:
        """The circuit's name for a name as :meth:`view` shows it (masked), or None."""
        return shown_as(shown, (breaker.name for breaker in self.registry))

    async def act(self, name: str, action: str) -> dict[str, object]:
        """``open``, ``close`` or ``reset`` a known circuit for every process."""
        breaker = self.registry.get(name)
        if action == "open":
            await breaker.force_open()
        elif action == "close":
            await breaker.force_close()
        elif action == "reset":
            await breaker.reset()
        else:
            raise ValueError(f"'action' must be open, close or reset: {action!r}")
        if not breaker.store.available:
            raise ConnectionError("Redis did not answer: the change reached no other process")
        return self.view(name)

    def view(self, name: str) -> dict[str, object]:
        breaker = self.registry.get(name)
        snap = breaker.store.snapshot()
        now = time.time()
        retry_after = None
        if snap.state is CircuitState.OPEN and not snap.forced:
            retry_after = max(0.0, snap.opened_at + self.recovery_timeout - now)
        return {
            # Masked: a name may hold a credential (a URL's password); find() maps it back.
            "name": _shown(name),
            "state": snap.state.value,
            "failures": snap.failure_count,
            "forced_open": snap.forced,
            "opened_at": snap.opened_at if snap.state is not CircuitState.CLOSED else None,
            "retry_after": retry_after,
            "redis_available": breaker.store.available,
        }

    def views(self) -> list[dict[str, object]]:
        return [self.view(breaker.name) for breaker in sorted(self.registry, key=lambda b: b.name)]
