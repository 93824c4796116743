"""Redis clients from URLs: redis-py's own schemes, and ``redis+sentinel://`` for Sentinel.

redis-py reads ``redis://``, ``rediss://`` and ``unix://`` URLs, but has none for Redis
Sentinel. Where xnai-core takes a URL from configuration (the service's ``redis_url``,
``XNAI_REDIS_URL``, the command's ``--redis-url``) it also takes::

    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service[/db]

the sentinels' addresses (port 26379 when none is given), the name they monitor the
master under, and its database (0 by default). The credentials are the master's; the
sentinels are asked without them. The client is ``Sentinel([...]).master_for(service)``:
every connection it opens asks the sentinels for the master, so it follows failovers.
Closing it closes the sentinels' connections too. A malformed URL is a ``ValueError``
whose message shows the URL with its password masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

from ._redact import redact_url

__all__ = ["SENTINEL_SCHEME", "SentinelUrl", "client_from_url", "parse_sentinel_url"]

SENTINEL_SCHEME = "redis+sentinel://"
_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A ``redis+sentinel://`` URL taken apart."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None

    def __repr__(self) -> str:
        # The password never shows.
        return f"SentinelUrl(sentinels={self.sentinels!r}, service={self.service!r}, db={self.db})"


def is_sentinel_url(url: str) -> bool:
    return url[: len(SENTINEL_SCHEME)].lower() == SENTINEL_SCHEME


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Take ``url`` apart; ValueError (password masked) if it is not a usable one."""
    shown = redact_url(url)
    if not is_sentinel_url(url):
        raise ValueError(f"'redis_url' must start with {SENTINEL_SCHEME}: {shown!r}")
    rest = url[len(SENTINEL_SCHEME) :]
    if "?" in rest or "#" in rest:
        raise ValueError(f"'redis_url' of Sentinel takes no query or fragment: {shown!r}")
    location, slash, path = rest.partition("/")
    userinfo, at, hosts = location.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    sentinels = tuple(_address(item, shown) for item in hosts.split(","))
    service, _, db = path.partition("/")
    if not slash or not service:
        raise ValueError(f"'redis_url' needs the master's service name after the hosts: {shown!r}")
    db = db.rstrip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise ValueError(
            f"'redis_url' database (after the service name) must be a number: {shown!r}"
        )
    return SentinelUrl(sentinels, unquote(service), int(db or 0), username, password)


def _address(item: str, shown: str) -> tuple[str, int]:
    try:
        parts = urlsplit(f"//{item}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, 0
    if not host or port == 0:
        raise ValueError(
            f"'redis_url' needs each sentinel as host[:port], a port from 1 to 65535: {shown!r}"
        )
    return host, port or _SENTINEL_PORT


class _SentinelMaster(aioredis.Redis):
    """The master client of a Sentinel: closing it closes the sentinels' connections."""

    sentinel_client: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        sentinel, self.sentinel_client = self.sentinel_client, None
        if sentinel is not None:
            for client in sentinel.sentinels:
                await client.aclose()


def client_from_url(url: str, **options: Any) -> aioredis.Redis:
    """A ``redis.asyncio.Redis`` for ``url``; ``options`` go to every connection (and to
    the sentinels' too, for ``socket_*`` options). ValueError if ``url`` is unusable."""
    if not is_sentinel_url(url):
        return aioredis.Redis.from_url(url, **options)
    parsed = parse_sentinel_url(url)
    sockets = {key: value for key, value in options.items() if key.startswith("socket_")}
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sockets)
    client = sentinel.master_for(
        parsed.service,
        redis_class=_SentinelMaster,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **options,
    )
    assert isinstance(client, _SentinelMaster)
    client.sentinel_client = sentinel
    return client
