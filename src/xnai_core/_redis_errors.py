"""What "Redis is down" means, in one place, for the whole package.

Every part that talks to Redis (the shared circuit store, the Redis cache, the recovery
coordinator, the Redis health check) treats exactly these exceptions as "Redis cannot be
used right now": it degrades to its local behaviour, says so once, and tries again later.
Any other exception (a ``WRONGTYPE`` reply, a script error, a bug of ours) is not an outage
and surfaces (or, where no Redis error may reach a caller, is logged with its traceback).

- ``redis.exceptions.ConnectionError`` and its subclasses (refused, reset, busy loading,
  max clients, authentication that the server refused at connect), except a full pool
  (below);
- ``redis.exceptions.TimeoutError`` and the builtin ``TimeoutError`` (a socket or an
  ``asyncio`` deadline);
- ``OSError``: a socket error that redis-py did not wrap;
- a cluster that is down or resharding (``ClusterDownError``, ``TryAgainError``,
  ``RedisClusterException``), and a write that reached a demoted replica during a
  failover (``ReadOnlyError``);
- a server that refuses us: an ACL without the needed command (``NoPermissionError``,
  ``NOPERM``) and a full ``maxmemory`` with ``noeviction`` (``OutOfMemoryError``, ``OOM``).

``POOL_FULL`` (``MaxConnectionsError``: every connection of the client's own pool is in
use) is a ``ConnectionError`` subclass but no outage: Redis is fine, this process is
busy. Catch it *before* ``REDIS_DOWN`` and wait for a connection.
"""

from __future__ import annotations

import builtins

from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    MaxConnectionsError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    TimeoutError,
    TryAgainError,
)

__all__ = ["POOL_FULL", "REDIS_DOWN"]

REDIS_DOWN: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    builtins.TimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,
    RedisClusterException,
    NoPermissionError,
    OutOfMemoryError,
)

POOL_FULL: tuple[type[BaseException], ...] = (MaxConnectionsError,)
