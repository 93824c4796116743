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
busy. Catch it *before* ``REDIS_DOWN`` and wait for a connection. A
``BlockingConnectionPool`` raises nothing: it waits for a connection inside the command,
where that wait looks like Redis not answering; :func:`pool_exhausted` tells beforehand.
:func:`when_pool_free` runs one command within a deadline, waiting out a full pool of
either kind, and raises :class:`PoolBusy` (no outage either) if no connection came in time.

A ``READONLY`` reply (``ReadOnlyError``) means the connection reached a replica: a master
demoted by a failover while the connection stayed open (a managed Redis's endpoint that
moved to the new primary, a ``REPLICAOF`` by hand). redis-py keeps such a connection in
its pool, so every later write on it would meet the replica again.
:func:`forget_demoted` drops the pool's idle connections, so the next ones are made
afresh (the endpoint resolved again; a Sentinel-managed pool asks the sentinels).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

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

from . import _backoff

__all__ = [
    "POOL_FULL",
    "REDIS_DOWN",
    "PoolBusy",
    "describe",
    "forget_demoted",
    "pool_exhausted",
    "when_pool_free",
]

T = TypeVar("T")

logger = logging.getLogger("xnai_core")

# Closing idle sockets takes no round trip; bounded anyway.
_FORGET_DEADLINE = 1.0

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


def pool_exhausted(client: object) -> bool:
    """Whether the client's connection pool has no connection to give now (every one in
    use by someone, the application's own calls included); False when it cannot tell (a
    cluster client, a pool of another kind). Asked right before a command, in the same
    turn of the loop, it says whether the command would wait for a connection."""
    pool = getattr(client, "connection_pool", None)
    can_get = getattr(pool, "can_get_connection", None)
    if not callable(can_get):
        return False
    try:
        return not can_get()
    except Exception:
        return False


_POOL_WAIT = (0.001, 0.05)  # seconds: first and longest wait for a free connection


class PoolBusy(Exception):
    """No connection of the client's own pool came free within the deadline: this process
    is busy (the application holds every connection), Redis was not asked. No outage:
    what Redis holds (a peer's lease, a shared state) is simply not known right now."""


async def when_pool_free(client: object, call: Callable[[], Awaitable[T]], timeout: float) -> T:
    """``await call()`` (one Redis command of ``client``) within ``timeout`` seconds, waiting
    out a full pool: one that raises ``MaxConnectionsError`` and a ``BlockingConnectionPool``
    that would wait inside the command (:func:`pool_exhausted`) are both asked again with a
    short backoff. Raises :class:`PoolBusy` if the pool is still full at the deadline; the
    builtin ``TimeoutError`` if Redis had the command and did not answer in time (an
    outage, :data:`REDIS_DOWN`, as any other error ``call`` raises)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    waits = 0
    while True:
        if not pool_exhausted(client):
            try:
                async with asyncio.timeout_at(deadline):
                    return await call()
            except POOL_FULL:
                pass
        waits += 1
        left = deadline - loop.time()
        if left <= 0:
            raise PoolBusy(f"no free connection in the client's pool within {timeout:g}s")
        low, high = _POOL_WAIT
        await asyncio.sleep(
            min(left, _backoff.delay(waits, base=low, cap=high, rand=random.random()))
        )


_DESCRIBED_LENGTH = 200


def describe(error: BaseException) -> str:
    """``TypeName: message`` of a Redis error for one line of a log or a command's
    answer: credentials masked (a reply may quote anything), at most 200 characters."""
    from ._redact import redact  # _redact imports nothing of ours; kept lazy all the same

    text = " ".join(redact(str(error)).split())
    if len(text) > _DESCRIBED_LENGTH:
        text = text[: _DESCRIBED_LENGTH - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def forget_demoted(client: object, exc: BaseException) -> None:
    """After ``exc``: if it is ``READONLY``, drop ``client``'s idle pooled connections.

    A connection in use is left alone (its own next write fails the same way and comes
    here too). A cluster client is left alone: it follows its slots map itself. Never
    raises.
    """
    if not isinstance(exc, ReadOnlyError):
        return
    pool = getattr(client, "connection_pool", None)
    disconnect = getattr(pool, "disconnect", None)
    if disconnect is None:
        return
    try:
        async with asyncio.timeout(_FORGET_DEADLINE):
            await disconnect(inuse_connections=False)
    except Exception:
        logger.debug("dropping the connections that reached a replica failed", exc_info=True)
