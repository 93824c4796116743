"""Fixtures of the Redis-backed circuit tests that break Redis: ``direct`` (what the
private server really holds) and ``stores`` (RedisStores, each on its own client, through
the fault proxy or not), ``outside_proxy`` (a fault proxy on a thread of its own, that
keeps forwarding while the test's event loop is stalled). A test module uses them with
``pytest_plugins = ["tests.redis_fixtures"]`` (a plugin module, so it is never imported
directly: pytest must import it itself to rewrite its asserts)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import PrivateRedis
from tests.fault_proxy import FaultProxy
from tests.redis_helpers import Factory
from xnai_core import CircuitBreakerConfig, RedisStore


@pytest.fixture
async def direct(private_redis: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
    """A client straight to the private server: what Redis really holds."""
    client = aioredis.Redis(host="127.0.0.1", port=private_redis.port)
    yield client
    await client.aclose()


@pytest.fixture
async def stores(private_redis: PrivateRedis, fault_proxy: FaultProxy) -> AsyncIterator[Factory]:
    """``stores(config, proxied=True, **options)``: a RedisStore on its own client (one
    client stands for one process), through the proxy unless ``proxied=False``."""
    made: list[tuple[RedisStore, aioredis.Redis]] = []

    def make(config: CircuitBreakerConfig, *, proxied: bool = True, **options: Any) -> RedisStore:
        port = fault_proxy.port if proxied else private_redis.port
        client = aioredis.Redis(host="127.0.0.1", port=port)
        store = RedisStore(config, client, **options)
        made.append((store, client))
        return store

    yield make
    fault_proxy.heal()
    for store, client in made:
        await store.close()
        await client.aclose()


@pytest.fixture
def outside_proxy(private_redis: PrivateRedis) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` on an event loop of its own thread: unlike the in-loop
    ``fault_proxy``, it keeps forwarding (and delaying) while the test's loop is
    stalled, as the network does, so a reply can arrive during a stall."""
    proxy = FaultProxy(private_redis.port)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(proxy.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(proxy.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
