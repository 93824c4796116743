"""create_redis_circuit_breaker: the seed's one-liner for a breaker shared through Redis."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import redis.asyncio as aioredis

from .._validation import check_seconds
from ..redis_manager import RedisConnectionManager
from .breaker import CircuitBreaker, Fallback
from .config import CircuitBreakerConfig, ExceptionTypes, lease_margin
from .redis_store import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_OP_TIMEOUT,
    DEFAULT_RESYNC_INTERVAL,
    RedisStore,
)

# RedisConnectionManager is re-exported: the package face imports it from here.
__all__ = ["RedisConnectionManager", "create_redis_circuit_breaker"]


def create_redis_circuit_breaker(
    name: str,
    redis_client: aioredis.Redis | aioredis.RedisCluster | RedisConnectionManager,
    failure_threshold: int = 5,
    recovery_timeout: float = 60,
    timeout: float | None = 30,
    fallback_func: Fallback | None = None,
    half_open_max_calls: int = 3,
    expected_exception: ExceptionTypes = Exception,
    *,
    half_open_lease: float | None = None,
    key_prefix: str = DEFAULT_KEY_PREFIX,
    op_timeout: float = DEFAULT_OP_TIMEOUT,
    resync_interval: float = DEFAULT_RESYNC_INTERVAL,
    clock: Callable[[], float] | None = None,
) -> CircuitBreaker:
    """A :class:`CircuitBreaker` whose state every process shares through Redis.

    A plain function: it touches no network, so it works before Redis is
    reachable (or resolvable). ``redis_client`` is a ``redis.asyncio.Redis``, a
    ``redis.asyncio.RedisCluster`` or a :class:`RedisConnectionManager`; the
    breaker never closes it. The state lives in the hash ``<key_prefix>{<name>}``.
    ``op_timeout`` bounds every Redis operation a call may wait for;
    ``resync_interval`` is how often the local mirror is re-read; ``clock``
    (seconds) replaces Redis TIME, for tests. ``half_open_lease`` must outlast
    ``timeout`` by ``max(1, 2 * op_timeout)`` seconds (the admission's and the report's
    round trips). See docs/redis.md.
    """
    client = (
        redis_client.client if isinstance(redis_client, RedisConnectionManager) else redis_client
    )
    config = CircuitBreakerConfig(
        name=name,
        failure_threshold=failure_threshold,
        recovery_timeout=recovery_timeout,
        timeout=timeout,
        half_open_max_calls=half_open_max_calls,
        expected_exception=expected_exception,
        half_open_lease=half_open_lease,
    )

    def store_for(config: CircuitBreakerConfig) -> RedisStore:
        return RedisStore(
            config,
            client,
            key_prefix=key_prefix,
            op_timeout=op_timeout,
            resync_interval=resync_interval,
            clock=clock,
        )

    margin = lease_margin(check_seconds("op_timeout", op_timeout))
    if half_open_lease is None and config.timeout is not None:
        # A trial's permit must outlive the trial: its timeout plus the Redis round trips
        # of its admission and its report, each up to op_timeout. The default lease grows
        # to fit; a lease given too short is refused by the store.
        lease = config.timeout + max(config.recovery_timeout, margin)
        if config.lease_seconds < lease:
            config = replace(config, half_open_lease=lease)
    return CircuitBreaker(config, fallback_func, store=store_for(config))
