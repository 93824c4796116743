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

What answered may also be no Redis at all (an HTTP server on the port a URL names:
``InvalidResponse``), or one that refuses the command (a proxy without ``SCAN``:
``ResponseError``): no outage either, but a one-shot command or a listing that cannot go on
says so in one line, :func:`describe` (type and message, credentials masked, bounded).

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

__all__ = ["POOL_FULL", "REDIS_DOWN", "describe"]

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


_DESCRIBED_LENGTH = 200


def describe(error: BaseException) -> str:
    """``TypeName: message`` of a Redis error for one line of a log or a command's
    answer: credentials masked (a reply may quote anything), at most 200 characters."""
    from ._redact import redact  # _redact imports nothing of ours; kept lazy all the same

    text = " ".join(redact(str(error)).split())
    if len(text) > _DESCRIBED_LENGTH:
        text = text[: _DESCRIBED_LENGTH - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
