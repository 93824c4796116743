"""Replicas act once per outage even when Redis loses the coordination keys mid-episode.

A private redis-server (flushed, or restarted empty, while the holder's restart settles):
the peer already saw the holder's settle record, so it keeps honouring it from its own
clock and does not restart the service the holder just restarted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from tests.conftest import PrivateRedis
from tests.recovery_services import close_replicas, restarting_replica, web_healthy_again
from xnai_core.recovery import RecoveryCoordinator, RecoveryManager


def _replica(
    who: str, client: aioredis.Redis, restarts: list[str], verify_interval: float
) -> RecoveryManager:
    return restarting_replica(
        who,
        RecoveryCoordinator(client, key_prefix="lost"),
        restarts,
        verify_interval=verify_interval,
        backoff_base=0.1,
        backoff_max=0.1,
        grace_period=3.0,
        stable_period=10.0,
    )


async def _until(predicate: Callable[[], bool], bound: float = 10.0) -> None:
    deadline = time.monotonic() + bound
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def _state(manager: RecoveryManager) -> object:
    return manager.get_recovery_stats()["services"]["web"]["state"]  # type: ignore[index]


@pytest.mark.parametrize("loss", ["flushdb", "restart_empty", "clock_forward"])
async def test_coordination_keys_lost_mid_grace_do_not_buy_a_second_restart(
    private_redis: PrivateRedis, loss: str
) -> None:
    """The holder restarted the service and waits for health; Redis loses every key (or its
    clock jumps so the record looks stale); the peer, still seeing the service down, does
    not restart it again within the settle window it saw."""
    restarts: list[str] = []
    clients = [aioredis.Redis(host="127.0.0.1", port=private_redis.port) for _ in range(2)]
    # The holder renews its lease slowly (every 0.75 s of its grace), the peer looks every
    # 0.05 s: after the loss, the peer looks before the holder writes anything back.
    holder = _replica("holder", clients[0], restarts, verify_interval=1.0)
    peer = _replica("peer", clients[1], restarts, verify_interval=0.05)
    try:
        await holder.on_status_change("web", "healthy", "unhealthy", None)
        await _until(lambda: _state(holder) == "verifying")
        await peer.on_status_change("web", "healthy", "unhealthy", None)
        await _until(
            lambda: peer.get_recovery_stats()["services"]["web"]["deferred_to_peer"] == 1  # type: ignore[index]
        )
        if loss == "flushdb":
            await clients[0].flushdb()
        elif loss == "restart_empty":
            private_redis.kill()
            private_redis.start()
        else:
            # Redis's clock steps an hour forward: the record looks an hour older and the
            # lease (expiry follows the same clock) is gone.
            coordinator = RecoveryCoordinator(clients[0], key_prefix="lost")
            raw = await clients[0].get(coordinator.settle_key("web"))
            assert isinstance(raw, bytes)
            record = raw.decode()
            owner, at, window = record.rsplit("|", 2)
            stepped = f"{owner}|{int(at) - 3_600_000}|{window}"
            await clients[0].set(coordinator.settle_key("web"), stepped, keepttl=True)
            await clients[0].delete(coordinator.lease_key("web"))
        await asyncio.sleep(1.0)  # twenty of the peer's polls
        assert restarts == ["holder"]
        await web_healthy_again((holder, peer))
        assert restarts == ["holder"]
    finally:
        await close_replicas((holder, peer), clients)
