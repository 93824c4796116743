"""RedisHealthChecker: PING and INFO through a ``redis.asyncio`` client."""

from __future__ import annotations

import time
from collections.abc import Mapping

import redis.asyncio as aioredis

from .._redis_url import client_from_url
from .checker import DEFAULT_TIMEOUT, HealthChecker
from .redact import redact_url, url_secrets

__all__ = ["RedisClient", "RedisHealthChecker"]


RedisClient = aioredis.Redis | aioredis.RedisCluster
"""The clients :class:`RedisHealthChecker` accepts."""


def _connection_kwargs(client: RedisClient) -> Mapping[str, object]:
    """The client's connection settings, read defensively.

    A ``Redis`` keeps them on its connection pool; a ``RedisCluster`` has no pool
    and keeps them on itself (and its nodes manager).
    """
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        kwargs = getattr(pool, "connection_kwargs", None)
    else:
        kwargs = getattr(client, "connection_kwargs", None)
        if not isinstance(kwargs, Mapping):
            manager = getattr(client, "nodes_manager", None)
            kwargs = getattr(manager, "connection_kwargs", None)
    return kwargs if isinstance(kwargs, Mapping) else {}


def _cluster_node_names(client: RedisClient) -> list[str]:
    """``host:port`` of the cluster's known nodes (startup nodes before discovery)."""
    manager = getattr(client, "nodes_manager", None)
    names: set[str] = set()
    for attribute in ("nodes_cache", "startup_nodes"):
        nodes = getattr(manager, attribute, None)
        if isinstance(nodes, Mapping) and nodes:
            for node in list(nodes.values()):
                host, port = getattr(node, "host", None), getattr(node, "port", None)
                if host is not None and port is not None:
                    names.add(f"{host}:{port}")
            if names:
                break
    return sorted(names)


def _flat_info(info: object) -> Mapping[str, object]:
    """INFO as one node's mapping, whether the client answered for one node or several."""
    if not isinstance(info, Mapping):
        return {}
    if "redis_version" in info or not info:
        return info
    per_node = [value for value in info.values() if isinstance(value, Mapping)]
    return per_node[0] if per_node and len(per_node) == len(info) else info


class RedisHealthChecker(HealthChecker):
    """Checks Redis: PING latency plus INFO facts (role, memory, clients, version).

    Uses the ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` client you
    pass (never closed here), or a ``Redis`` built from ``url`` and owned by the
    checker. On a cluster, PING goes to every primary (all must answer) and INFO
    comes from the client's default node.
    """

    component_type = "datastore"

    def __init__(
        self,
        name: str = "redis",
        redis_client: RedisClient | None = None,
        *,
        url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        degraded_threshold: float | None = None,
    ) -> None:
        super().__init__(name, timeout=timeout, degraded_threshold=degraded_threshold)
        if redis_client is None and url is None:
            raise ValueError("'redis_client' or 'url' must be given: None")
        self._client = redis_client
        self._url = url
        self._owns_client = redis_client is None
        self._secrets: tuple[str, ...] = url_secrets(url) if url else ()
        if redis_client is not None:
            password = _connection_kwargs(redis_client).get("password")
            if isinstance(password, str) and password:
                self._secrets = (password,)

    def describe(self) -> dict[str, object]:
        if self._url is not None:
            return {"url": redact_url(self._url)}
        assert self._client is not None
        if isinstance(self._client, aioredis.RedisCluster):
            return {"cluster_nodes": _cluster_node_names(self._client)}
        kwargs = _connection_kwargs(self._client)
        if "path" in kwargs:
            return {"address": f"unix:{kwargs['path']}", "db": kwargs.get("db", 0)}
        return {
            "address": f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}",
            "db": kwargs.get("db", 0),
        }

    def secrets(self) -> tuple[str, ...]:
        return self._secrets

    def _get_client(self) -> RedisClient:
        if self._client is None:
            assert self._url is not None
            self._client = client_from_url(self._url)  # redis+sentinel:// too
        return self._client

    async def probe(self) -> Mapping[str, object]:
        client = self._get_client()
        started = time.perf_counter()
        if isinstance(client, aioredis.RedisCluster):
            # Every primary must answer: a cluster missing one cannot serve its slots.
            await client.ping(target_nodes=aioredis.RedisCluster.PRIMARIES)
        else:
            await client.ping()
        ping_latency = time.perf_counter() - started
        info = _flat_info(await client.info())
        details: dict[str, object] = {"ping_latency": ping_latency}
        for key in (
            "role",
            "redis_version",
            "used_memory",
            "used_memory_human",
            "connected_clients",
        ):
            value = info.get(key)
            details[key] = value.decode() if isinstance(value, bytes) else value
        return details

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
