"""What "Redis is down" means, in one place, for the whole package.

Every part that talks to Redis (the shared circuit store, the Redis cache, the recovery
coordinator, the Redis health check) treats exactly these exceptions as "Redis cannot be
reached right now": it degrades to its local behaviour, says so once, and tries again later.
Any other exception (a ``WRONGTYPE`` reply, a script error, a bug of ours) is not an outage
and surfaces.

- ``redis.exceptions.ConnectionError`` and its subclasses (refused, reset, busy loading,
  max clients, authentication that the server refused at connect);
- ``redis.exceptions.TimeoutError`` and the builtin ``TimeoutError`` (a socket or an
  ``asyncio`` deadline);
- ``OSError``: a socket error that redis-py did not wrap;
- a cluster that is down or resharding (``ClusterDownError``, ``TryAgainError``,
  ``RedisClusterException``), and a write that reached a demoted replica during a
  failover (``ReadOnlyError``).
"""

from __future__ import annotations

import builtins

from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    ReadOnlyError,
    RedisClusterException,
    TimeoutError,
    TryAgainError,
)

__all__ = ["REDIS_DOWN"]

REDIS_DOWN: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    builtins.TimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,
    RedisClusterException,
)
