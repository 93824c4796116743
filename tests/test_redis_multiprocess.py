"""Real OS processes sharing one Redis-backed circuit (tests/redis_worker.py)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import PrivateRedis
from tests.redis_helpers import (
    collect,
    kill_leftovers,
    release_workers,
    spawn_worker,
    wait_until_ready,
    worker_result,
)
from xnai_core import CircuitOpenError, CircuitState, create_redis_circuit_breaker

pytestmark = pytest.mark.slow

PROCESSES = 8


@pytest.fixture
async def admin(private_redis: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(private_redis.url, decode_responses=True)
    yield client
    await client.aclose()


def spec(server: PrivateRedis, scenario: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": server.url,
        "prefix": "xnai:cb:",
        "name": "svc",
        "scenario": scenario,
        **extra,
    }


async def stored(admin: aioredis.Redis) -> dict[str, str]:
    raw: dict[str, str] = await admin.hgetall("xnai:cb:{svc}")  # type: ignore[assignment]
    return raw


async def test_exact_threshold_with_processes_failing_at_once(
    private_redis: PrivateRedis, admin: aioredis.Redis
) -> None:
    """8 processes fail at once: every failure counts, the circuit opens at exactly 50, once."""
    config = {"failure_threshold": 50, "recovery_timeout": 60}
    tag = uuid.uuid4().hex[:8]
    ready, go = f"test:{tag}:ready", f"test:{tag}:go"
    orders = spec(private_redis, "fail", config=config, rounds=[5, 3], ready_key=ready, go_key=go)
    workers = [spawn_worker({**orders, "id": index}) for index in range(PROCESSES)]
    pubsub = admin.pubsub()
    try:
        await wait_until_ready(admin, ready, PROCESSES)
        await release_workers(admin, go, PROCESSES)
        # Round 1: 8 x 5 failures at once, below the threshold: none may be lost.
        await wait_until_ready(admin, f"{ready}:1", PROCESSES)
        first = await stored(admin)
        assert (first["state"], first["failures"]) == ("closed", "40")
        await pubsub.subscribe("xnai:cb:{svc}")
        # Round 2: 8 x 3 more at once: the 10th of them opens the circuit, the rest are stale.
        await release_workers(admin, f"{go}:1", PROCESSES)
        results = await collect(workers)
    finally:
        kill_leftovers(workers)
    assert sum(r["rounds"][0]["failed"] for r in results) == 40
    assert sum(r["failed"] + r["rejected"] for r in results) == 24
    final = await stored(admin)
    assert (final["state"], final["failures"]) == ("open", "50")
    assert int(final["epoch"]) == int(first["epoch"]) + 1
    published = []
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            published.append(message["data"].split(" ")[3])
    await pubsub.aclose()
    assert published.count("open") == 1


async def _trip(server: PrivateRedis, **config: Any) -> None:
    client = aioredis.Redis.from_url(server.url)
    breaker = create_redis_circuit_breaker("svc", client, **{"failure_threshold": 1, **config})

    async def boom() -> None:
        raise RuntimeError("down")

    try:
        with pytest.raises(RuntimeError):
            await breaker.call(boom)
        assert breaker.state is CircuitState.OPEN
    finally:
        await breaker.close()
        await client.aclose()


async def test_half_open_permits_are_cluster_wide(
    private_redis: PrivateRedis, admin: aioredis.Redis
) -> None:
    """8 processes x 20 concurrent callers after the recovery timeout: 3 trial calls in all."""
    config = {"failure_threshold": 1, "recovery_timeout": 0.5, "half_open_max_calls": 3}
    await _trip(private_redis, recovery_timeout=0.5, half_open_max_calls=3)
    specs = [spec(private_redis, "half_open", config=config, count=20, hold=0.3) for _ in range(8)]
    tag = uuid.uuid4().hex[:8]
    ready, go = f"test:{tag}:ready", f"test:{tag}:go"
    workers = [
        spawn_worker({**item, "id": i, "ready_key": ready, "go_key": go})
        for i, item in enumerate(specs)
    ]
    try:
        await wait_until_ready(admin, ready, len(workers))
        opened_at = int((await stored(admin))["opened_at"]) / 1e6
        seconds, micros = await admin.time()
        await asyncio.sleep(max(0.0, opened_at + 0.5 - (seconds + micros / 1e6)) + 0.05)
        await release_workers(admin, go, len(workers))
        results = await collect(workers)
    finally:
        kill_leftovers(workers)
    assert sum(r["trials"] for r in results) == 3
    assert sum(r["rejected"] for r in results) == 8 * 20 - 3
    assert (await stored(admin))["state"] == "closed"


LEASE = 3.0  # long enough that a loaded machine still sees the permit held at first


async def test_a_killed_probers_lease_expires(
    private_redis: PrivateRedis, admin: aioredis.Redis
) -> None:
    """A process dies holding the only trial permit: the circuit is not wedged past the lease."""
    config: dict[str, Any] = {
        "failure_threshold": 1,
        "recovery_timeout": 0.2,
        "half_open_max_calls": 1,
    }
    await _trip(private_redis, **config)
    await asyncio.sleep(0.25)
    holding = f"test:{uuid.uuid4().hex[:8]}:holding"
    prober = spawn_worker(
        spec(
            private_redis,
            "hold_permit",
            config={**config, "half_open_lease": LEASE, "timeout": None},
            holding_key=holding,
            id="prober",
        )
    )
    try:
        assert await admin.blpop([holding], timeout=30) is not None
    finally:
        prober.send_signal(signal.SIGKILL)
        prober.communicate()
    client = aioredis.Redis.from_url(private_redis.url)
    breaker = create_redis_circuit_breaker(
        "svc", client, half_open_lease=LEASE, timeout=None, **config
    )

    async def ok() -> str:
        return "ok"

    try:
        with pytest.raises(CircuitOpenError) as refused:
            await breaker.call(ok)
        assert refused.value.state == "half_open"  # the dead prober still holds the permit
        # Once its lease ends the permit is free again: poll (bounded) instead of
        # sleeping a fixed time, so a loaded machine cannot make this flaky.
        admitted = None
        for _ in range(200):
            await asyncio.sleep(0.1)
            with contextlib.suppress(CircuitOpenError):
                admitted = await breaker.call(ok)
                break
        assert admitted == "ok"
        assert breaker.state is CircuitState.CLOSED
    finally:
        await breaker.close()
        await client.aclose()


async def test_state_is_kept_across_process_restarts(
    private_redis: PrivateRedis, admin: aioredis.Redis
) -> None:
    """One process trips the circuit and exits; a new process finds it open."""
    config = {"failure_threshold": 2, "recovery_timeout": 60}
    tripped = worker_result(spawn_worker(spec(private_redis, "trip", config=config)))
    assert tripped["state"] == "open"
    later = worker_result(spawn_worker(spec(private_redis, "probe", config=config)))
    assert later["outcome"] == "rejected"
    assert 50 < later["retry_after"] <= 60


async def test_another_process_sees_a_trip_through_pub_sub(
    private_redis: PrivateRedis, admin: aioredis.Redis
) -> None:
    """A watcher process (resync every 60 s) sees the trip made here long before any resync."""
    config = {"failure_threshold": 1, "recovery_timeout": 60}
    tag = uuid.uuid4().hex[:8]
    ready, go = f"test:{tag}:ready", f"test:{tag}:go"
    watcher = spawn_worker(
        spec(
            private_redis, "watch", config=config, resync_interval=60, id=0,
            ready_key=ready, go_key=go,
        )
    )  # fmt: skip
    try:
        await wait_until_ready(admin, ready, 1)
        await release_workers(admin, go, 1)
        await asyncio.sleep(0.1)
        await _trip(private_redis, recovery_timeout=60)
        tripped_at = time.time()
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, worker_result, watcher, 30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    assert result["seen_at"] is not None
    assert result["seen_at"] - tripped_at < 5.0  # pub/sub, not the 60 s resync
