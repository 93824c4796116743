"""A replica whose Redis client has no free connection (its pool held by the application)
is not a replica without Redis: its peers coordinate through a Redis that is up, so it
must not act alone (two restarts for one outage)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from tests.conftest import SHARED_REDIS_URL
from tests.redis_helpers import eventually
from tests.test_recovery_manager import FakeClock
from xnai_core.recovery import RecoveryCoordinator, RecoveryManager, RecoveryRule
from xnai_core.recovery.coordination import Turn

H, U = "healthy", "unhealthy"


class BusyClient:
    """A client whose only connection the test holds: a BlockingConnectionPool (commands
    wait for a connection) or a plain ConnectionPool at max_connections (they raise)."""

    def __init__(self, blocking: bool) -> None:
        kwargs = aioredis.Redis.from_url(SHARED_REDIS_URL).connection_pool.connection_kwargs
        if blocking:
            self.pool: aioredis.ConnectionPool = aioredis.BlockingConnectionPool(
                max_connections=1, timeout=30, **kwargs
            )
        else:
            self.pool = aioredis.ConnectionPool(max_connections=1, **kwargs)
        self.client = aioredis.Redis(connection_pool=self.pool)
        self.held: Connection | None = None

    async def hold(self) -> None:
        connection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        assert isinstance(connection, Connection)
        self.held = connection
        assert not self.pool.can_get_connection()

    async def free(self) -> None:
        if self.held is not None:
            await self.pool.release(self.held)
            self.held = None

    async def aclose(self) -> None:
        await self.free()
        await self.client.aclose()
        await self.pool.aclose()


@pytest.fixture(params=["blocking", "full"])
async def busy(request: pytest.FixtureRequest) -> AsyncIterator[BusyClient]:
    client = BusyClient(blocking=request.param == "blocking")
    yield client
    await client.aclose()


async def test_a_busy_pool_is_waited_out_within_the_deadline_then_answers_busy(
    shared_redis: aioredis.Redis, key_prefix: str, busy: BusyClient
) -> None:
    """The coordinator's call waits for a connection up to its ``timeout``: one that
    frees in time is used (the real answer), and a pool still full at the deadline
    answers BUSY, not None (Redis away: act alone)."""
    peer = RecoveryCoordinator(shared_redis, key_prefix=key_prefix)
    mine = RecoveryCoordinator(busy.client, key_prefix=key_prefix, timeout=0.5)
    assert await peer.take_turn("llm", 30.0) is Turn.ACT
    await busy.hold()
    assert await mine.take_turn("llm", 30.0) is Turn.BUSY
    assert await mine.acquire("llm", 30.0) is None  # cannot know: as when Redis is away
    freeing = asyncio.get_running_loop().call_later(0.1, asyncio.ensure_future, busy.free())
    try:
        assert await mine.take_turn("llm", 30.0) is Turn.WAIT  # the peer's lease, seen
    finally:
        freeing.cancel()
    assert await shared_redis.get(peer.lease_key("llm")) == peer.token.encode()


async def test_a_replica_whose_pool_is_busy_does_not_restart_beside_its_peer(
    shared_redis: aioredis.Redis, key_prefix: str, busy: BusyClient
) -> None:
    """One replica restarts the service and sees it recover (its settle record holds the
    others off); the other replica, its client's pool held by the application, took that
    for Redis away and restarted the service a second time."""
    calls: list[str] = []
    clock = FakeClock()
    clients = {"a": shared_redis, "b": busy.client}
    managers: dict[str, RecoveryManager] = {}
    for name, client in clients.items():
        managers[name] = RecoveryManager(
            clock=clock,
            sleep=clock.sleep,
            random=lambda: 0.5,
            wall_clock=clock,
            coordinator=RecoveryCoordinator(client, key_prefix=key_prefix, timeout=0.5),
        )

        async def restart(service: str, name: str = name) -> None:
            calls.append(name)
            await managers[name].on_status_change(service, U, H, None)  # healed, seen here

        managers[name].add_rule(
            RecoveryRule("llm", "restart_service", recovery_func=restart, cooldown=60.0)
        )
    a, b = managers["a"], managers["b"]

    def deferred() -> int:
        return int(b.get_recovery_stats()["services"]["llm"]["deferred_to_peer"])  # type: ignore[index]

    try:
        await busy.hold()
        await a.on_status_change("llm", H, U, None)
        await a.wait_idle()
        assert calls == ["a"]
        await b.on_status_change("llm", H, U, None)  # b's view lags: still unhealthy
        await eventually(lambda: len(calls) > 1 or deferred() > 0, timeout=20)
        assert calls == ["a"]
        await busy.free()  # the application gives its connection back
        await asyncio.sleep(0.2)  # b looks again: the settle record holds it off
        assert calls == ["a"]
        await b.on_status_change("llm", U, H, None)
        await b.wait_idle()
        assert calls == ["a"]
    finally:
        await busy.free()
        for manager in managers.values():
            await manager.aclose()
